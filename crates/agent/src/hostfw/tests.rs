//! The shell's self-check and rollback against a stand-in controller.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::time::Duration;

use weft_proto::hostfw::HostFirewallSpec;

use super::*;
use crate::stand_in;

fn spec(version: u64) -> HostFirewallSpec {
    test_spec(version)
}

/// A host firewall over an empty state directory (kept while the test runs).
fn fresh(bound: Duration) -> (HostFw, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (HostFw::new(bound, dir.path()), dir)
}

/// Puts `version` in force with the controller up; the check's generation
/// and deadline.
fn apply(fw: &mut HostFw, version: u64) -> (u64, Instant) {
    let now = clock::now();
    fw.note_controller_up(now);
    match fw
        .set_spec(Some(spec(version)), Own::default(), now)
        .unwrap()
    {
        Next::ApplyAndCheck {
            generation,
            deadline,
        } => (generation, deadline),
        other => panic!("expected a check, got {other:?}"),
    }
}

/// The next event, which must be a check's result: its generation and result.
async fn checked(fw: &mut HostFw) -> (u64, Result<(), String>) {
    match fw.next().await {
        Event::Checked { generation, result } => (generation, result),
        other => panic!("expected the check's result, got {other:?}"),
    }
}

#[tokio::test]
async fn a_change_the_controller_survives_is_kept() {
    let url = stand_in::controller(|head, _| {
        assert!(head.starts_with("GET /healthz"), "{head}");
        (
            200,
            r#"{"status":"ok","api_version":1,"map_version":3}"#.into(),
        )
    })
    .await;
    let mut fw = fresh(Duration::from_secs(5)).0;
    let (generation, deadline) = apply(&mut fw, 1);
    fw.start_check(&stand_in::joined(&url), generation, deadline);
    assert!(fw.status(0).unwrap().checking);
    let (g, result) = checked(&mut fw).await;
    assert_eq!((g, result), (generation, Ok(())));
    fw.check_passed(g);
    let st = fw.status(clock::unix_ms()).unwrap();
    assert_eq!((st.version, st.checking, st.rollbacks), (Some(1), false, 0));
    assert!(fw.desired().unwrap().input_drop);
}

#[tokio::test]
async fn a_change_that_silences_the_controller_is_rolled_back_after_the_bound() {
    // A controller that answers, but never 200: as good as cut off.
    let url = stand_in::controller(|_, _| (503, "{}".into())).await;
    let bound = Duration::from_millis(1200);
    let (mut fw, dir) = fresh(bound);
    let (g1, _) = apply(&mut fw, 1);
    fw.check_passed(g1);
    let started = clock::now();
    let (generation, deadline) = apply(&mut fw, 2);
    fw.start_check(&stand_in::joined(&url), generation, deadline);
    let (g, result) = checked(&mut fw).await;
    let took = started.elapsed();
    assert!(
        took >= bound && took < bound + Duration::from_secs(1),
        "{took:?}"
    );
    let why = result.unwrap_err();
    assert!(why.contains("503"), "{why}");
    let rb = fw.check_failed(g, &why).unwrap();
    assert_eq!((rb.version, rb.restored), (2, Some(1)));
    let st = fw.status(clock::unix_ms()).unwrap();
    assert_eq!(st.version, Some(1));
    assert_eq!(st.wanted_version, Some(2));
    assert_eq!(st.rollbacks, 1);
    assert_eq!(fw.refused(), Some(2));
    assert_eq!(fw.desired().map(|d| d.input_drop), Some(true));
    // The same version again is not applied; a newer one is.
    let now = clock::now();
    assert_eq!(
        fw.set_spec(Some(spec(2)), Own::default(), now).unwrap(),
        Next::Nothing
    );
    // A restarted weftd remembers the rollback (the supervisor saves it).
    HostFw::remember(dir.path(), &fw.memory_of(&rb)).unwrap();
    let mut again = HostFw::new(bound, dir.path());
    assert_eq!(
        again.set_spec(Some(spec(2)), Own::default(), now).unwrap(),
        Next::Nothing,
        "not applied again after a restart"
    );
    assert_eq!(
        again.in_force().map(|s| s.version),
        Some(1),
        "the restored one is"
    );
    assert!(again.desired().is_some());
    assert_eq!(again.status(0).unwrap().last_rollback, Some(rb));
    assert!(matches!(
        fw.set_spec(Some(spec(3)), Own::default(), now).unwrap(),
        Next::ApplyAndCheck { .. }
    ));
}

#[tokio::test]
async fn a_controller_that_does_not_answer_at_all_times_out_each_attempt() {
    // Accepts connections and never answers (as a dropped SYN looks to the
    // caller: nothing comes back).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            held.push(c);
        }
    });
    let check = Selfcheck {
        controller: url,
        ..Selfcheck::default()
    };
    let started = clock::now();
    let err = check_until(&check, started + Duration::from_millis(700))
        .await
        .unwrap_err();
    assert!(err.contains("did not answer"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[test]
fn an_invalid_spec_is_refused_and_nothing_changes() {
    let mut fw = fresh(Duration::from_secs(1)).0;
    let mut bad = spec(1);
    bad.management_ports = vec![0];
    let err = fw
        .set_spec(Some(bad), Own::default(), clock::now())
        .unwrap_err();
    assert!(err.contains("management port 0"), "{err}");
    assert!(fw.desired().is_none());
    assert!(fw.status(0).is_none());
}

#[tokio::test]
async fn own_endpoints_resolve_names_and_keep_the_last_addresses_when_a_lookup_fails() {
    use weft_proto::netmap::Relay;
    let mut map: NetworkMap = serde_json::from_value(serde_json::json!({
        "api_version": 1,
        "version": 1,
        "node": {"name": "n1", "node_key": weft_proto::NodeKey::from_bytes([1; 32])},
        "networks": [],
    }))
    .unwrap_or_else(|e| panic!("a minimal map: {e}"));
    map.relays = vec![Relay {
        stun_port: Some(3478),
        ..Relay::from_url("https://198.51.100.7:443")
    }];
    let cred = stand_in::joined("https://weft-test.invalid:8443");
    let mut cache = Lookups::new();
    let kept: SocketAddr = "192.0.2.1:8443".parse().unwrap();
    cache.insert(("weft-test.invalid".into(), 8443), vec![kept]);
    let own = own_endpoints(Some(&cred), &map, 51820, &mut cache).await;
    assert_eq!(own.listen_port, 51820);
    let tcp: Vec<(IpAddr, u16)> = own.tcp.iter().copied().collect();
    assert_eq!(
        tcp,
        vec![
            ("192.0.2.1".parse().unwrap(), 8443),
            ("198.51.100.7".parse().unwrap(), 443)
        ],
        "the relay's literal address, and the controller's last addresses (.invalid never resolves)"
    );
    assert_eq!(
        own.udp.iter().copied().collect::<Vec<_>>(),
        vec![("198.51.100.7".parse().unwrap(), 3478)]
    );
}

/// A `firewall-allow` rule for task `task` open for `secs` from `now_ms`.
fn task_rule(task: &str, secs: u64, now_ms: u64) -> HostRule {
    use weft_proto::hostfw::task_rule::TaskRule;
    use weft_proto::hostfw::{PortRange, Proto};
    TaskRule {
        proto: Proto::Tcp,
        ports: vec![PortRange {
            start: 8080,
            end: 8080,
        }],
        from: vec!["10.0.0.0/8".parse().unwrap()],
        comment: "deploy".into(),
        for_secs: secs,
    }
    .rule(task, now_ms)
}

#[test]
fn a_task_rule_needs_a_host_firewall_and_is_merged_built_and_listed() {
    let (mut fw, dir) = fresh(Duration::from_secs(5));
    let now_ms = clock::unix_ms();
    let err = fw
        .local_with(task_rule("tsk_aaaa", 60, now_ms), now_ms)
        .unwrap_err();
    assert!(err.contains("no host firewall in force"), "{err}");
    apply(&mut fw, 1);
    let rules = fw
        .local_with(task_rule("tsk_aaaa", 60, now_ms), now_ms)
        .unwrap();
    HostFw::save_local(dir.path(), &rules).unwrap();
    fw.set_local(rules);
    let table = fw.desired().unwrap();
    let r = table
        .rules
        .iter()
        .find(|r| r.comment == "weft:task-aaaa")
        .expect("the task's rule is in the table");
    assert_eq!(r.ports, vec![(8080, 8080)]);
    assert_eq!(r.expires_at_ms, Some(now_ms + 60_000));
    let st = fw.status(now_ms).unwrap();
    assert_eq!(st.version, Some(1), "the map's version");
    assert_eq!(st.rules, 1);
    assert_eq!(st.expiring[0].id, "task-aaaa");
    assert_eq!(st.expiring[0].comment, "deploy");
    // Past its expiry it is neither listed nor built.
    let later = now_ms + 61_000;
    assert_eq!(fw.status(later).unwrap().rules, 0);
    // A restart keeps it (same state directory).
    let again = HostFw::new(Duration::from_secs(5), dir.path());
    assert_eq!(again.local.len(), 1);
    assert!(again.local_error().is_none());
    // Revoke: only a live task-made rule.
    assert!(fw.local_without("task-bbbb", now_ms).is_err());
    assert_eq!(fw.local_without("task-aaaa", now_ms).unwrap(), vec![]);
}

#[test]
fn a_damaged_task_rule_file_is_named_and_blocks_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("firewall-local.json"), b"not json").unwrap();
    let mut fw = HostFw::new(Duration::from_secs(5), dir.path());
    let named = fw.local_error().unwrap().to_owned();
    assert!(named.contains("firewall-local.json is damaged"), "{named}");
    apply(&mut fw, 1);
    let now_ms = clock::unix_ms();
    assert_eq!(
        fw.local_with(task_rule("tsk_aaaa", 60, now_ms), now_ms),
        Err(named.clone())
    );
    assert_eq!(fw.local_without("task-aaaa", now_ms), Err(named));
    assert_eq!(
        std::fs::read(dir.path().join("firewall-local.json")).unwrap(),
        b"not json"
    );
}
