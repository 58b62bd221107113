//! Hooks and integrity against the real controller binary: a node's report
//! is judged against the expected weftd hash and the approved hook hashes,
//! the state shows in `node list` and `GET /v1/admin/integrity`, a mismatch
//! is an `integrity_mismatch` event in the event log, approvals are audited,
//! bad input is refused, and everything survives a restart.

#![allow(clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use common::*;
use weft_proto::events::AnomalyKind;
use weft_proto::integrity::{ExpectRequest, HookHash, IntegrityReport, IntegrityState};

fn h(c: char) -> String {
    c.to_string().repeat(64)
}

fn report(weftd: char, hooks: &[(&str, char)]) -> IntegrityReport {
    IntegrityReport {
        api_version: None,
        weftd_version: "0.1.0".into(),
        weftd_sha256: h(weftd),
        hooks: hooks
            .iter()
            .map(|(n, c)| HookHash {
                name: (*n).into(),
                sha256: h(*c),
            })
            .collect(),
        hooks_error: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_judged_shown_raised_as_events_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let client = ctl.client();
    let a = register(&client, &tok, &identity(8)).await.unwrap();
    let ac = client.with_bearer(&a.credential).unwrap();

    let node_state = |list: weft_proto::api::NodeList| {
        list.nodes
            .iter()
            .find(|n| n.name == a.name)
            .map(|n| n.integrity)
    };
    assert_eq!(
        node_state(admin.list_nodes(None).await.unwrap()),
        Some(IntegrityState::Unknown),
        "no report yet"
    );

    // Nothing expected for its version: unknown, said why.
    let r = ac.report_integrity(&report('a', &[])).await.unwrap();
    assert_eq!(r.state, IntegrityState::Unknown);
    assert!(r.reasons[0].contains("no expected sha256"), "{r:?}");

    // Expected and approved: ok.
    let req = ExpectRequest {
        api_version: None,
        version: "0.1.0".into(),
        sha256: h('a'),
    };
    admin.expect_weftd(&req).await.unwrap();
    admin.approve_hook("backup", &h('c')).await.unwrap();
    let r = ac
        .report_integrity(&report('a', &[("backup", 'c')]))
        .await
        .unwrap();
    assert_eq!(r.state, IntegrityState::Ok, "{r:?}");
    assert_eq!(
        admin.show_node(&a.name).await.unwrap().integrity,
        IntegrityState::Ok
    );

    // The hook file changed: mismatch, an event, shown everywhere.
    let r = ac
        .report_integrity(&report('a', &[("backup", 'd')]))
        .await
        .unwrap();
    assert_eq!(r.state, IntegrityState::Mismatch);
    let events = admin.events(Some(&a.name), None, None).await.unwrap();
    let ev: Vec<_> = events
        .events
        .iter()
        .filter(|e| e.event.kind == AnomalyKind::IntegrityMismatch)
        .collect();
    assert_eq!(ev.len(), 1, "{events:?}");
    assert!(ev[0].event.summary.contains("hook backup is"), "{ev:?}");
    let all = admin.integrity(None).await.unwrap();
    assert_eq!(all.expected.len(), 1);
    assert_eq!(all.nodes[0].state, IntegrityState::Mismatch);
    assert_eq!(
        all.nodes[0].report.as_ref().unwrap().hooks[0].sha256,
        h('d')
    );
    let one = admin.integrity(Some(&a.name)).await.unwrap();
    assert_eq!(one.nodes.len(), 1);

    // Audited: the approval, the expectation and each change of state.
    let audit = admin.audit(50, None, None).await.unwrap();
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    for want in ["hook.approve", "integrity.expect", "node.integrity"] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }

    // Refusals: bad input, no credential, a node on the admin API, revoking
    // what is not approved.
    let mut bad = report('a', &[]);
    bad.weftd_sha256 = "nothex".into();
    let (status, code, _) = refused(ac.report_integrity(&bad).await);
    assert_eq!((status, code.as_str()), (400, "invalid_integrity"));
    let (status, _, _) = refused(client.report_integrity(&report('a', &[])).await);
    assert_eq!(status, 401);
    let (status, _, _) = refused(ac.approve_hook("backup", &h('d')).await);
    assert_eq!(status, 401);
    let (status, code, _) = refused(admin.approve_hook("../x", &h('d')).await);
    assert_eq!((status, code.as_str()), (400, "invalid_integrity"));
    let (status, code, _) = refused(admin.revoke_hook("nothing", None).await);
    assert_eq!((status, code.as_str()), (404, "hook_not_approved"));

    // A restart judges the same rows the same way (and raises nothing new).
    ctl.kill9();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    assert_eq!(
        admin.show_node(&a.name).await.unwrap().integrity,
        IntegrityState::Mismatch
    );
    assert_eq!(
        admin.list_hook_approvals().await.unwrap().approvals.len(),
        1
    );
    // Approving the new content resolves it at once.
    admin.approve_hook("backup", &h('d')).await.unwrap();
    assert_eq!(
        admin.show_node(&a.name).await.unwrap().integrity,
        IntegrityState::Ok
    );
    let events = admin.events(Some(&a.name), None, None).await.unwrap();
    assert_eq!(events.events.len(), 1, "no new event after the restart");
    // Revoking every hash: the hook never runs; not a mismatch.
    let left = admin.revoke_hook("backup", None).await.unwrap();
    assert!(left.approvals.is_empty());
}
