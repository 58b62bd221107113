//! Each action through [`run`], against a stand-in supervisor that answers
//! the requests with canned state (the supervisor's own side is tested where
//! it lives: the data plane's replacement in `dataplane::tests`, the resolver's
//! flush in `dns`), and real sockets on loopback.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use weft_identity::{Difficulty, Identity, SearchOptions};
use weft_proto::api::RotateKeyRequest;
use weft_proto::local::AgentStatus;
use weft_proto::task::{Action, TaskLimits, TaskStatus};

use super::*;

fn identity() -> Identity {
    Identity::mint(
        &mut rand_core::OsRng,
        Difficulty::new(0).unwrap(),
        &SearchOptions::default(),
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap()
}

/// A status with one peer `db` at `peer_addr` and the given relays.
fn status(peer_addr: &str, relays: serde_json::Value) -> AgentStatus {
    serde_json::from_value(serde_json::json!({
        "node_key": weft_proto::NodeKey::from_bytes([1; 32]),
        "state": "up",
        "peers": [{
            "name": "db", "node_key": weft_proto::NodeKey::from_bytes([2; 32]),
            "networks": ["lab"], "addresses": [peer_addr], "path": "direct",
            "rx_bytes": 0, "tx_bytes": 0,
        }],
        "relays": relays,
    }))
    .unwrap()
}

/// What the stand-in supervisor answers.
#[derive(Clone)]
struct Canned {
    status: AgentStatus,
    reconciled: Reconciled,
    credential: Option<Credential>,
    identity: Arc<Identity>,
}

fn canned(status: AgentStatus) -> Canned {
    Canned {
        status,
        reconciled: Reconciled::default(),
        credential: None,
        identity: Arc::new(identity()),
    }
}

/// A context whose requests a task answers from `c` (an installed identity is
/// promoted on disk, as the supervisor does).
fn context(dir: &std::path::Path, c: Canned) -> ActionContext {
    let state = StateDir::open(dir).unwrap();
    let (ctx, mut inbox) = channel(state.clone(), Difficulty::new(0).unwrap());
    tokio::spawn(async move {
        while let Some(req) = inbox.recv().await {
            match req {
                Request::Status(r) => drop(r.send(c.status.clone())),
                Request::Reconcile(r) => drop(r.send(c.reconciled.clone())),
                Request::RestartDataplane(r) => drop(r.send(Ok("restarted\n".into()))),
                Request::FlushDns(r) => drop(r.send(Ok(3))),
                Request::KeyContext(r) => {
                    drop(r.send((c.credential.clone(), c.identity.clone())));
                }
                Request::InstallIdentity(_, r) => {
                    drop(r.send(state.promote_next_identity().map_err(|e| e.to_string())));
                }
                Request::FirewallAllow(rule, r) => {
                    drop(r.send(Ok(format!(
                        "opened {} until {:?}\n",
                        rule.id, rule.expires_at_ms
                    ))));
                }
                Request::FirewallRevoke(id, r) => {
                    let why = format!("no task-made firewall rule {id:?}");
                    drop(r.send(Err(if id == "task-diskfull" {
                        NotDone::Failed(why)
                    } else {
                        NotDone::Refused(why)
                    })));
                }
            }
        }
    });
    ctx
}

fn limits(cap: u32) -> TaskLimits {
    TaskLimits {
        timeout_secs: 30,
        output_cap_bytes: cap,
    }
}

#[tokio::test]
async fn ping_reaches_a_peer_by_name_and_fails_for_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    // The peer's "overlay" address is loopback: the echo goes through the kernel.
    let ctx = context(
        dir.path(),
        canned(status("127.0.0.1", serde_json::json!([]))),
    );
    let ping = Action::Ping { peer: "db".into() };
    let r = run(&ctx, "tsk_test", &ping, &limits(64 * 1024)).await;
    assert_eq!(r.status, TaskStatus::Completed, "{r:?}");
    let out: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(out["peer"], "db");
    assert_eq!(out["address"], "127.0.0.1");
    assert_eq!(out["sent"], 3);
    assert_eq!(out["received"], 3);
    assert!(out["rtt_ms"][0].is_number());

    let nobody = Action::Ping {
        peer: "nobody".into(),
    };
    let r = run(&ctx, "tsk_test", &nobody, &limits(64 * 1024)).await;
    assert_eq!(r.status, TaskStatus::Failed);
    assert!(r.error.unwrap().contains("no peer named \"nobody\""));
}

#[tokio::test]
async fn ping_without_a_reply_fails_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // TEST-NET-1: nothing answers (no route or no host), within the waits.
    let ctx = context(
        dir.path(),
        canned(status("192.0.2.77", serde_json::json!([]))),
    );
    let r = run(
        &ctx,
        "tsk_test",
        &Action::Ping {
            peer: "192.0.2.77".into(),
        },
        &limits(1024),
    )
    .await;
    assert_ne!(r.status, TaskStatus::Completed, "{r:?}");
    assert!(r.error.is_some());
}

/// A STUN server on loopback answering Binding requests.
async fn stun_server() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if let Ok(req) = weft_proto::stun::parse_binding_request(&buf[..n]) {
                let mut out = Vec::new();
                weft_proto::stun::encode_binding_response(&req, from, &mut out);
                let _ = sock.send_to(&out, from).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn netcheck_probes_each_relay_by_stun_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let stun = stun_server().await;
    let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relays = serde_json::json!([{
        "url": format!("https://127.0.0.1:{}", tls.local_addr().unwrap().port()),
        "name": "r1",
        "stun_port": stun.port(),
    }]);
    let ctx = context(dir.path(), canned(status("100.64.0.2", relays)));
    let r = run(&ctx, "tsk_test", &Action::Netcheck, &limits(64 * 1024)).await;
    assert_eq!(r.status, TaskStatus::Completed, "{r:?}");
    let out: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(out["udp"], true);
    let relay = &out["relays"][0];
    assert_eq!(relay["relay"], "r1");
    assert_eq!(relay["stun"]["server"], stun.to_string());
    assert!(
        relay["stun"]["mapped"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(relay["tcp"]["connect_ms"].is_number(), "{relay}");
}

#[tokio::test]
async fn netcheck_fails_when_no_relay_answers() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relays = serde_json::json!([{ "url": format!("https://127.0.0.1:{port}") }]);
    let ctx = context(dir.path(), canned(status("100.64.0.2", relays)));
    let r = run(&ctx, "tsk_test", &Action::Netcheck, &limits(64 * 1024)).await;
    assert_eq!(r.status, TaskStatus::Failed, "{r:?}");
    assert_eq!(
        r.error.as_deref(),
        Some("no relay of the map answered (STUN or TCP)")
    );
    let out: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(out["relays"][0]["tcp"]["error"].is_string());
}

#[tokio::test]
async fn diagnostics_bundles_status_logs_routes_and_nft_within_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        canned(status("100.64.0.2", serde_json::json!([]))),
    );
    let mut tee = crate::logring::LogTee::default();
    tee.write_all(b"diagnostics-test: a line the bundle carries\n")
        .unwrap();
    drop(tee);
    let r = run(&ctx, "tsk_test", &Action::Diagnostics, &limits(256 * 1024)).await;
    assert_eq!(r.status, TaskStatus::Completed);
    for part in [
        "== weft status ==\n{",
        "== agent log (last ",
        "== ip route show table all ==\n",
        "== nft list table inet weft ==\n",
    ] {
        assert!(r.stdout.contains(part), "{part:?} missing");
    }
    assert!(
        r.stdout
            .contains("diagnostics-test: a line the bundle carries")
    );
    assert!(r.stdout.contains("\"name\": \"db\""));
    // Just over, at and under the size: cut (and flagged) only under it.
    let size = u32::try_from(r.stdout.len()).unwrap();
    for cap in [size / 2, 512, 1] {
        let small = run(&ctx, "tsk_test", &Action::Diagnostics, &limits(cap)).await;
        assert!(small.stdout.len() <= cap as usize, "cap {cap}");
        assert!(small.stdout_truncated, "cap {cap}");
    }
}

#[tokio::test]
async fn reconcile_reports_the_pass_and_fails_on_failed_actions_or_no_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = canned(status("100.64.0.2", serde_json::json!([])));
    c.reconciled = Reconciled {
        ran: true,
        applied: vec!["add route 10.0.0.0/24 dev weft0".into()],
        failed: vec![],
        converged: true,
    };
    let r = run(
        &context(dir.path(), c.clone()),
        "tsk_test",
        &Action::Reconcile,
        &limits(4096),
    )
    .await;
    assert_eq!(r.status, TaskStatus::Completed);
    assert!(
        r.stdout
            .contains("1 applied, 0 failed; the system matches the map")
    );
    assert!(
        r.stdout
            .contains("applied: add route 10.0.0.0/24 dev weft0")
    );

    c.reconciled.failed = vec!["add address: permission denied".into()];
    c.reconciled.converged = false;
    let r = run(
        &context(dir.path(), c.clone()),
        "tsk_test",
        &Action::Reconcile,
        &limits(4096),
    )
    .await;
    assert_eq!(r.status, TaskStatus::Failed);
    assert!(r.stdout.contains("failed: add address: permission denied"));

    c.reconciled = Reconciled::default();
    let r = run(
        &context(dir.path(), c),
        "tsk_test",
        &Action::Reconcile,
        &limits(4096),
    )
    .await;
    assert_eq!(r.status, TaskStatus::Failed);
    assert!(r.error.unwrap().contains("no reconciler pass ran"));
}

#[tokio::test]
async fn restart_dataplane_and_flush_dns_report_what_the_supervisor_did() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        canned(status("100.64.0.2", serde_json::json!([]))),
    );
    let r = run(&ctx, "tsk_test", &Action::RestartDataplane, &limits(4096)).await;
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (TaskStatus::Completed, "restarted\n")
    );
    let r = run(&ctx, "tsk_test", &Action::FlushDns, &limits(4096)).await;
    assert_eq!(r.status, TaskStatus::Completed);
    assert_eq!(
        r.stdout,
        "overlay DNS cache flushed: 3 cached answers dropped\n"
    );
}

#[tokio::test]
async fn an_action_past_its_timeout_is_timed_out_and_output_is_cut_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    // A supervisor that takes requests and never answers.
    let (ctx, mut inbox) = channel(
        StateDir::open(dir.path()).unwrap(),
        Difficulty::new(0).unwrap(),
    );
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(req) = inbox.recv().await {
            held.push(req);
        }
    });
    let quick = TaskLimits {
        timeout_secs: 1,
        output_cap_bytes: 1024,
    };
    let r = run(&ctx, "tsk_test", &Action::Netcheck, &quick).await;
    assert_eq!(r.status, TaskStatus::TimedOut, "{r:?}");
    assert!(r.error.unwrap().contains("did not finish within 1 s"));
    assert!(
        r.duration_ms >= 1000 && r.duration_ms < 3000,
        "{}",
        r.duration_ms
    );
    // Output over the cap is cut at a character boundary and flagged.
    let ctx = context(
        dir.path(),
        canned(status("100.64.0.2", serde_json::json!([]))),
    );
    let r = run(&ctx, "tsk_test", &Action::FlushDns, &limits(10)).await;
    assert_eq!(
        (r.stdout.as_str(), r.stdout_truncated),
        ("overlay DN", true)
    );
    let r = run(&ctx, "tsk_test", &Action::FlushDns, &limits(52)).await;
    assert!(!r.stdout_truncated, "exactly at the cap: {:?}", r.stdout);
}

/// A stand-in controller: answers each rotate-key request with `answer`
/// (status and JSON body), built from the request's body.
async fn controller(
    answer: impl Fn(&RotateKeyRequest) -> (u16, String) + Send + Sync + 'static,
) -> String {
    crate::stand_in::controller(move |_, body| {
        let req: RotateKeyRequest = serde_json::from_str(body).unwrap();
        answer(&req)
    })
    .await
}

#[tokio::test]
async fn rotate_key_keeps_the_new_key_while_the_controller_is_away_and_finishes_it_later() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut c = canned(status("100.64.0.2", serde_json::json!([])));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    c.credential = Some(crate::stand_in::joined(&format!("http://{closed}")));
    let old = c.identity.node_key();
    let r = run(
        &context(dir.path(), c.clone()),
        "tsk_test",
        &Action::RotateKey,
        &limits(4096),
    )
    .await;
    assert_eq!(r.status, TaskStatus::Failed, "{r:?}");
    assert!(r.error.unwrap().contains("could not be asked"));
    let next = state.next_identity_path();
    let mode = std::fs::metadata(&next).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pending = state.load_next_identity().unwrap().unwrap().node_key();
    assert_ne!(pending, old);

    // The controller is back: the same new key is sent (not a second one),
    // confirmed, and becomes identity.key.
    let url = controller(move |req| {
        assert_eq!((req.old_node_key, req.new_node_key), (old, pending));
        let sig = base64::Engine::decode(&URL_SAFE_NO_PAD_TEST, &req.signature).unwrap();
        weft_identity::verify_signature(
            &req.new_node_key,
            weft_proto::api::ROTATE_KEY_SIGNATURE_CONTEXT,
            &weft_proto::api::rotate_key_signed_message(&req.old_node_key, &req.new_node_key),
            &sig.try_into().unwrap(),
        )
        .unwrap();
        (
            200,
            serde_json::json!({"api_version": 1, "node_key": req.new_node_key, "name": "n1", "rotated": true})
                .to_string(),
        )
    })
    .await;
    c.credential = Some(crate::stand_in::joined(&url));
    let r = run(
        &context(dir.path(), c),
        "tsk_test",
        &Action::RotateKey,
        &limits(4096),
    )
    .await;
    assert_eq!(r.status, TaskStatus::Completed, "{r:?}");
    assert!(r.stdout.contains(&format!("now has key {pending}")));
    assert!(
        r.stdout
            .contains("finished a rotation that had not completed")
    );
    assert!(!next.exists());
    let key = weft_identity::keyfile::load(&dir.path().join("identity.key")).unwrap();
    assert_eq!(key.node_key(), pending);
}

const URL_SAFE_NO_PAD_TEST: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[tokio::test]
async fn a_refused_rotation_keeps_the_old_key_and_moves_the_new_one_aside() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut c = canned(status("100.64.0.2", serde_json::json!([])));
    let url = controller(|_| {
        (
            409,
            r#"{"error":{"code":"key_mismatch","message":"not this node's key"}}"#.into(),
        )
    })
    .await;
    c.credential = Some(crate::stand_in::joined(&url));
    let r = run(
        &context(dir.path(), c),
        "tsk_test",
        &Action::RotateKey,
        &limits(4096),
    )
    .await;
    assert_eq!(r.status, TaskStatus::Failed);
    let e = r.error.unwrap();
    assert!(
        e.contains("refused the new key") && e.contains("identity.next.refused-"),
        "{e}"
    );
    assert!(!state.next_identity_path().exists());
    assert!(
        !dir.path().join("identity.key").exists(),
        "the old key file untouched"
    );
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("identity.next.refused-"))
        .collect();
    assert_eq!(aside.len(), 1);
}

#[tokio::test]
async fn rotate_key_needs_a_joined_node() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        canned(status("100.64.0.2", serde_json::json!([]))),
    );
    let r = run(&ctx, "tsk_test", &Action::RotateKey, &limits(4096)).await;
    assert_eq!(r.status, TaskStatus::Failed);
    assert!(r.error.unwrap().contains("has not joined"));
    assert!(
        !StateDir::open(dir.path())
            .unwrap()
            .next_identity_path()
            .exists()
    );
}

/// At start (`weftd` crashed after writing identity.next, before or after the
/// controller took it): the pending key is finished, once the controller
/// answers, with that same key.
#[tokio::test]
async fn a_pending_rotation_is_finished_at_start_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let pending = identity();
    state.save_next_identity(&pending).unwrap();
    let mut c = canned(status("100.64.0.2", serde_json::json!([])));
    let old = c.identity.node_key();
    let new = pending.node_key();
    // The controller already rotated (a retry): it answers rotated: false.
    let url = controller(move |req| {
        assert_eq!((req.old_node_key, req.new_node_key), (old, new));
        (
            200,
            serde_json::json!({"api_version": 1, "node_key": new, "name": "n1", "rotated": false})
                .to_string(),
        )
    })
    .await;
    c.credential = Some(crate::stand_in::joined(&url));
    let ctx = context(dir.path(), c);
    tokio::time::timeout(Duration::from_secs(10), rotate::resume(ctx))
        .await
        .unwrap();
    assert!(!state.next_identity_path().exists());
    let key = weft_identity::keyfile::load(&dir.path().join("identity.key")).unwrap();
    assert_eq!(key.node_key(), new);
    // Nothing pending: resume returns at once.
    let ctx = context(
        dir.path(),
        canned(status("100.64.0.2", serde_json::json!([]))),
    );
    tokio::time::timeout(Duration::from_secs(1), rotate::resume(ctx))
        .await
        .unwrap();
}

#[tokio::test]
async fn firewall_actions_name_the_rule_after_the_task_and_report_failures() {
    use weft_proto::hostfw::task_rule::TaskRule;
    use weft_proto::hostfw::{PortRange, Proto};
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        canned(status("127.0.0.1", serde_json::json!([]))),
    );
    let allow = Action::FirewallAllow(TaskRule {
        proto: Proto::Tcp,
        ports: vec![PortRange {
            start: 8080,
            end: 8080,
        }],
        from: vec![],
        comment: String::new(),
        for_secs: 60,
    });
    let before = clock::unix_ms();
    let r = run(&ctx, "tsk_0123456789abcdef", &allow, &limits(4096)).await;
    assert_eq!(r.status, TaskStatus::Completed, "{r:?}");
    assert!(
        r.stdout.starts_with("opened task-0123456789ab until Some("),
        "{}",
        r.stdout
    );
    let at: u64 = r.stdout["opened task-0123456789ab until Some(".len()..]
        .trim_end_matches(")\n")
        .parse()
        .unwrap();
    assert!(
        at >= before + 60_000 && at <= clock::unix_ms() + 60_000,
        "{at}"
    );
    let revoke = Action::FirewallRevoke {
        id: "task-nothere".into(),
    };
    let r = run(&ctx, "tsk_x", &revoke, &limits(4096)).await;
    assert_eq!(r.status, TaskStatus::Refused);
    assert!(r.error.unwrap().contains("no task-made firewall rule"));
    let revoke = Action::FirewallRevoke {
        id: "task-diskfull".into(),
    };
    let r = run(&ctx, "tsk_x", &revoke, &limits(4096)).await;
    assert_eq!(r.status, TaskStatus::Failed);
}
