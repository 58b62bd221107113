//! Relay membership on the real controller binary: admin registration, the
//! relay's report, the member snapshot and stream, relays in every map.

#![allow(clippy::expect_used, reason = "test helpers fail loudly")]

mod common;

use std::time::Duration;

use common::*;
use weft_api_client::MembersStream;
use weft_proto::api::UpdateNodeRequest;
use weft_proto::netmap::MapEvent;
use weft_proto::relay_api::{CreateRelayRequest, MembersEvent, RelayReportRequest};

async fn next_members(s: &mut MembersStream) -> MembersEvent {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("no member event within 10 s")
        .expect("stream ended")
        .expect("stream error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_register_report_and_follow_the_member_set() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(
        dir.path(),
        &[
            "--relay",
            "https://static.example.net",
            "--keepalive-secs",
            "1",
        ],
    );
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 8).await;
    let c = ctl.client();
    let a = identity(8);
    let ra = register(&c, &tok, &a).await.unwrap();
    let ca = c.with_bearer(&ra.credential).unwrap();

    // Bad requests.
    let bad_url = admin
        .create_relay(&CreateRelayRequest {
            api_version: None,
            name: "fra1".into(),
            url: "http://relay.example.net".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_url.code(), Some("invalid_url"));

    let created = admin
        .create_relay(&CreateRelayRequest {
            api_version: None,
            name: "fra1".into(),
            url: "https://Relay.Example.net/".into(),
        })
        .await
        .unwrap();
    assert!(created.token.starts_with("weft_relay_"));
    assert_eq!(created.info.url, "https://relay.example.net:443");
    let dup = admin
        .create_relay(&CreateRelayRequest {
            api_version: None,
            name: "fra1".into(),
            url: "https://other.example.net".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Some("relay_exists"));

    // Every map lists the registered relay, then the --relay one.
    let map = ca.map().await.unwrap();
    let urls: Vec<_> = map.relays.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "https://relay.example.net:443",
            "https://static.example.net"
        ]
    );
    assert_eq!(map.relays[0].name.as_deref(), Some("fra1"));
    assert_eq!(map.relays[0].tls_fingerprint, None);

    // The relay's API needs the relay token; node and admin tokens do not work.
    let relay = c.with_bearer(&created.token).unwrap();
    assert_eq!(ca.relay_members().await.unwrap_err().status(), Some(401));
    assert_eq!(admin.relay_members().await.unwrap_err().status(), Some(401));
    assert_eq!(relay.map().await.unwrap_err().status(), Some(401));

    // A node holding a map stream gets a fresh snapshot when the relay reports
    // its fingerprint.
    let mut sa = ca.map_stream(None, Duration::from_secs(10)).await.unwrap();
    let fp = format!("sha256:{}", "ab".repeat(32));
    let bad_fp = relay
        .relay_report(&RelayReportRequest {
            api_version: None,
            tls_fingerprint: Some("sha256:xyz".into()),
            stun_port: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fp.code(), Some("invalid_fingerprint"));
    let info = relay
        .relay_report(&RelayReportRequest {
            api_version: None,
            tls_fingerprint: Some(fp.clone()),
            stun_port: Some(3478),
        })
        .await
        .unwrap();
    assert_eq!(info.name, "fra1");
    assert!(info.last_seen_ms.is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, sa.next_map())
            .await
            .expect("no snapshot with the fingerprint")
            .unwrap()
            .unwrap();
        if let MapEvent::Snapshot(m) = ev
            && m.relays[0].tls_fingerprint.as_deref() == Some(fp.as_str())
        {
            assert_eq!(m.relays[0].stun_port, Some(3478));
            break;
        }
    }

    // Members: a snapshot, then deltas as nodes come and go.
    let snap = relay.relay_members().await.unwrap();
    assert_eq!(snap.members, vec![a.node_key()]);
    let mut ms = relay
        .relay_members_stream(Duration::from_secs(10))
        .await
        .unwrap();
    let MembersEvent::Snapshot(s) = next_members(&mut ms).await else {
        panic!("first member event must be a snapshot");
    };
    assert_eq!(s.members, vec![a.node_key()]);
    assert!(admin.show_relay("fra1").await.unwrap().connected);

    let b = identity(8);
    register(&c, &tok, &b).await.unwrap();
    let MembersEvent::Delta(d) = next_members(&mut ms).await else {
        panic!("expected a delta");
    };
    assert_eq!((d.added, d.removed), (vec![b.node_key()], vec![]));

    admin
        .update_node(
            &b.node_key().to_string(),
            &UpdateNodeRequest {
                disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let MembersEvent::Delta(d) = next_members(&mut ms).await else {
        panic!("expected a delta");
    };
    assert_eq!((d.added, d.removed), (vec![], vec![b.node_key()]));
    admin.remove_node(&a.node_key().to_string()).await.unwrap();
    let MembersEvent::Delta(d) = next_members(&mut ms).await else {
        panic!("expected a delta");
    };
    assert_eq!(d.removed, vec![a.node_key()]);
    // Presence changes and reports do not produce member events; keepalives
    // (every second here) keep the stream alive.
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), ms.next())
            .await
            .is_err()
    );

    // The CLI lists it; removing the relay ends its stream and its token.
    let (ok, out, err) = ctl.cli(&["relay", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("fra1") && out.contains(&fp) && out.contains("yes"),
        "{out}"
    );
    let (ok, out, err) = ctl.cli(&["relay", "create", "ams1", "--url", "https://[::1]:4433"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("weft_relay_") && out.contains("https://[::1]:4433"),
        "{out}"
    );
    let (ok, _, err) = ctl.cli(&["relay", "remove", "fra1"]);
    assert!(ok, "{err}");
    let end = tokio::time::timeout(Duration::from_secs(10), ms.next())
        .await
        .expect("the member stream must end when the relay is removed");
    assert!(end.is_none(), "{end:?}");
    assert_eq!(relay.relay_members().await.unwrap_err().status(), Some(401));
    let names: Vec<_> = admin
        .list_relays()
        .await
        .unwrap()
        .relays
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["ams1"]);
    let (ok, _, err) = ctl.cli(&["relay", "remove", "fra1"]);
    assert!(!ok && err.contains("relay_not_found"), "{err}");
    let audit = admin.audit(50, None, Some("relay:fra1")).await.unwrap();
    let actions: Vec<_> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["relay.remove", "relay.report", "relay.create"]);
}
