//! Debounced presence on the real controller binary: a node whose map stream
//! flaps costs its peers nothing (no map version, no `peer_upsert`); a stream
//! that stays up makes the node online once, and a node gone for longer than
//! the grace period goes offline once.

#![allow(clippy::expect_used, reason = "test helpers fail loudly")]
#![allow(
    clippy::disallowed_methods,
    reason = "the test measures real delays of a real controller"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use weft_api_client::{Client, MapStream};
use weft_proto::NodeKey;
use weft_proto::netmap::{MapChange, MapEvent};

const ONLINE_AFTER: Duration = Duration::from_millis(1500);
const OFFLINE_AFTER: Duration = Duration::from_millis(2500);
const IDLE: Duration = Duration::from_secs(10);

/// The `online` value of every `peer_upsert` about `who` that arrives on `s`
/// within `window`, with when it arrived.
async fn upserts_about(s: &mut MapStream, who: NodeKey, window: Duration) -> Vec<(bool, Instant)> {
    let end = tokio::time::Instant::now() + window;
    let mut seen = Vec::new();
    while let Ok(ev) = tokio::time::timeout_at(end, s.next_map()).await {
        let ev = ev.expect("stream ended").expect("stream error");
        if let MapEvent::Delta(d) = ev {
            for ch in &d.changes {
                if let MapChange::PeerUpsert { peer, .. } = ch
                    && peer.node_key == who
                {
                    seen.push((peer.online, Instant::now()));
                }
            }
        }
    }
    seen
}

/// Opens a map stream and waits for its snapshot (the server holds it then).
async fn open(c: &Client) -> MapStream {
    let mut s = c.map_stream(None, IDLE).await.expect("open the map stream");
    let first = tokio::time::timeout(Duration::from_secs(10), s.next_map())
        .await
        .expect("no snapshot within 10 s")
        .expect("stream ended")
        .expect("stream error");
    assert!(matches!(first, MapEvent::Snapshot(_)));
    s
}

async fn version(c: &Client) -> u64 {
    c.health().await.expect("healthz").map_version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_stream_costs_peers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(
        dir.path(),
        &[
            "--online-after-ms",
            "1500",
            "--offline-after-ms",
            "2500",
            "--keepalive-secs",
            "1",
        ],
    );
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 0).await;
    let client = ctl.client();
    let (a_id, b_id) = (identity(0), identity(0));
    let a = register(&client, &tok, &a_id).await.unwrap();
    let b = register(&client, &tok, &b_id).await.unwrap();
    let ca = client.with_bearer(&a.credential).unwrap();
    let cb = client.with_bearer(&b.credential).unwrap();
    let b_key = b_id.node_key();

    // A watches; let its own presence settle first.
    let mut sa = open(&ca).await;
    tokio::time::sleep(ONLINE_AFTER + Duration::from_millis(500)).await;
    assert!(admin.show_node(&a.name).await.unwrap().online);
    let v0 = version(&client).await;

    // B's stream flaps 20 times, each shorter than the online delay.
    let t0 = Instant::now();
    for _ in 0..20 {
        let s = open(&cb).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("20 flaps of B's stream took {:?}", t0.elapsed());
    // Past every window the flaps could have started: nothing reached A.
    let seen = upserts_about(&mut sa, b_key, ONLINE_AFTER + OFFLINE_AFTER).await;
    assert!(seen.is_empty(), "A got peer_upsert for B: {seen:?}");
    assert_eq!(version(&client).await, v0, "the map version moved");
    assert!(!admin.show_node(&b.name).await.unwrap().online);

    // B stays up past the online delay: A hears about it exactly once.
    let t1 = Instant::now();
    let sb = open(&cb).await;
    let seen = upserts_about(&mut sa, b_key, ONLINE_AFTER + Duration::from_millis(1500)).await;
    assert_eq!(seen.len(), 1, "A must see B online exactly once: {seen:?}");
    assert!(seen[0].0);
    let took = seen[0].1 - t1;
    eprintln!("B online for A {took:?} after its stream opened");
    assert!(took >= ONLINE_AFTER, "{took:?}");
    assert_eq!(version(&client).await, v0 + 1);
    assert!(admin.show_node(&b.name).await.unwrap().online);

    // Reconnects within the grace period cost nothing either.
    drop(sb);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = open(&cb).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    }
    let sb = open(&cb).await;
    let seen = upserts_about(&mut sa, b_key, OFFLINE_AFTER + Duration::from_millis(500)).await;
    assert!(seen.is_empty(), "A got peer_upsert for B: {seen:?}");
    assert_eq!(version(&client).await, v0 + 1, "the map version moved");

    // B gone for good: offline once, after the grace period.
    drop(sb);
    let t2 = Instant::now();
    let seen = upserts_about(&mut sa, b_key, OFFLINE_AFTER + Duration::from_millis(1500)).await;
    assert_eq!(seen.len(), 1, "A must see B offline exactly once: {seen:?}");
    assert!(!seen[0].0);
    let took = seen[0].1 - t2;
    eprintln!("B offline for A {took:?} after its stream closed");
    assert!(took >= OFFLINE_AFTER, "{took:?}");
    assert_eq!(version(&client).await, v0 + 2);
    let node = admin.show_node(&b.name).await.unwrap();
    assert!(!node.online);
    assert!(node.last_seen_ms.is_some());
}
