//! Host facts against the real controller binary: stored at registration,
//! replaced by a report that changes them (with a `node.facts` audit entry
//! naming what changed, and none when nothing did), kept across a restart,
//! shown by `weft admin node list/show`, and refused with a clear 400 when
//! out of bounds.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::*;
use weft_proto::api::{RegisterRequest, ReportRequest};
use weft_proto::facts::{HostFacts, Virtualization};

fn facts() -> HostFacts {
    HostFacts {
        os_name: Some("Ubuntu".into()),
        os_version: Some("24.04".into()),
        arch: Some("x86_64".into()),
        cpu_cores: Some(4),
        cpu_model: Some("AMD EPYC 7B13".into()),
        memory_total_bytes: Some(16 << 30),
        swap_total_bytes: Some(0),
        kernel_version: Some("6.8.0-49-generic".into()),
        hostname: Some("web-1".into()),
        boot_time_ms: Some(1_733_400_000_000),
        virtualization: Virtualization::Vm,
        virtualization_tech: Some("kvm".into()),
        weftd_version: Some("0.1.0".into()),
        weftd_sha256: Some("ab".repeat(32)),
        ..HostFacts::default()
    }
}

fn report(facts: HostFacts) -> ReportRequest {
    ReportRequest {
        facts: Some(facts),
        ..ReportRequest::default()
    }
}

/// The `node.facts` audit entries for `key`, newest first.
async fn facts_audits(admin: &weft_api_client::Client, key: &str) -> Vec<serde_json::Value> {
    admin
        .audit(100, None, Some(key))
        .await
        .unwrap()
        .entries
        .into_iter()
        .filter(|e| e.action == "node.facts")
        .map(|e| e.detail)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_are_stored_at_registration_audited_on_change_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let client = ctl.client();
    let id = identity(8);
    let key = id.node_key().to_string();
    let req = |facts: HostFacts| RegisterRequest {
        api_version: None,
        token: tok.clone(),
        node_key: id.node_key(),
        pow_nonce: id.pow().nonce,
        challenge: String::new(),
        signature: String::new(),
        name: Some("web-1".into()),
        hostname: None,
        facts: Some(facts),
    };

    // Out of bounds at registration: a clear 400, nothing registered.
    let bad = HostFacts {
        weftd_sha256: Some("not-a-hash".into()),
        ..facts()
    };
    let (status, code, msg) = refused(client.register_signed(req(bad), |c, m| id.sign(c, m)).await);
    assert_eq!((status, code.as_str()), (400, "invalid_facts"), "{msg}");
    assert!(msg.contains("facts.weftd_sha256"), "{msg}");
    assert!(admin.list_nodes(None).await.unwrap().nodes.is_empty());

    // Stored at registration, with one audit entry.
    let reg = client
        .register_signed(req(facts()), |c, m| id.sign(c, m))
        .await
        .unwrap();
    let node = admin.show_node("web-1").await.unwrap();
    assert_eq!(node.facts, Some(facts()));
    let first_change = node.facts_changed_ms.expect("a change time");
    let audits = facts_audits(&admin, &key).await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert_eq!(
        audits[0]["changed"]["kernel_version"]["to"],
        "6.8.0-49-generic"
    );

    // The same facts again, or a boot time a second off: nothing changes.
    let node_client = client.with_bearer(&reg.credential).unwrap();
    let jitter = HostFacts {
        boot_time_ms: Some(1_733_400_001_000),
        ..facts()
    };
    for same in [facts(), jitter] {
        node_client.report(&report(same)).await.unwrap();
    }
    node_client.report(&ReportRequest::default()).await.unwrap();
    assert_eq!(facts_audits(&admin, &key).await.len(), 1);
    let node = admin.show_node("web-1").await.unwrap();
    assert_eq!(node.facts, Some(facts()));
    assert_eq!(node.facts_changed_ms, Some(first_change));

    // A kernel upgrade and a reboot: stored, audited with both values.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let upgraded = HostFacts {
        kernel_version: Some("6.8.0-50-generic".into()),
        boot_time_ms: Some(1_733_500_000_000),
        ..facts()
    };
    node_client.report(&report(upgraded.clone())).await.unwrap();
    let audits = facts_audits(&admin, &key).await;
    assert_eq!(audits.len(), 2, "{audits:?}");
    assert_eq!(
        audits[0]["changed"],
        serde_json::json!({
            "boot_time_ms": {"from": 1_733_400_000_000u64, "to": 1_733_500_000_000u64},
            "kernel_version": {"from": "6.8.0-49-generic", "to": "6.8.0-50-generic"},
        })
    );
    assert_eq!(audits[0]["name"], "web-1");

    // Too large on a report: a clear 400, the stored facts stay.
    let long = HostFacts {
        cpu_model: Some("x".repeat(300)),
        ..upgraded.clone()
    };
    let (status, code, msg) = refused(node_client.report(&report(long)).await);
    assert_eq!((status, code.as_str()), (400, "invalid_facts"));
    assert!(
        msg.contains("facts.cpu_model: 300 bytes, at most 256"),
        "{msg}"
    );
    let spoof = HostFacts {
        hostname: Some("web\u{202e}1".into()),
        ..upgraded.clone()
    };
    let (status, _, msg) = refused(node_client.report(&report(spoof)).await);
    assert_eq!(status, 400);
    assert!(
        msg.contains("facts.hostname") && msg.contains("U+202E"),
        "{msg}"
    );
    assert_eq!(
        admin.show_node("web-1").await.unwrap().facts,
        Some(upgraded.clone())
    );

    // Kept across a restart; shown by the CLI.
    ctl.sigterm(Duration::from_secs(10));
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    assert_eq!(
        admin.show_node("web-1").await.unwrap().facts,
        Some(upgraded)
    );
    let (ok, list, err) = ctl.cli(&["node", "list"]);
    assert!(ok, "{err}");
    let header = list.lines().next().unwrap();
    assert!(
        header.contains("OS") && header.ends_with("VERSION  ARCH"),
        "{list}"
    );
    assert!(list.contains("Ubuntu 24.04  0.1.0    x86_64"), "{list}");
    let (ok, show, err) = ctl.cli(&["node", "show", "web-1"]);
    assert!(ok, "{err}");
    assert!(show.contains("kernel    6.8.0-50-generic"), "{show}");
    assert!(
        show.contains(&format!("sha256    {}", "ab".repeat(32))),
        "{show}"
    );
    let (ok, json, err) = ctl.cli(&["node", "show", "web-1", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["facts"]["virtualization"], "vm");
    assert_eq!(v["facts"]["memory_total_bytes"], 16u64 << 30);
}
