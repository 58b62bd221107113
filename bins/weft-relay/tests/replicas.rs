//! The real `weft-relay` following two replicas of the real
//! `weft-controller` (one SQLite database, `--controller URL1,URL2`): when
//! the replica it follows drains (SIGTERM), the relay obeys its `reconnect`
//! notice, moves to the other replica and resumes the member stream by
//! delta (one snapshot in all); the nodes it serves stay connected, and a
//! node that registers meanwhile on the other replica is let in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and wait on the real clock"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use weft_relay_client::RelayEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_moves_the_relay_which_resumes_by_delta() {
    let dir = tempfile::tempdir().unwrap();
    let (a, token) = setup(&dir.path().join("a"), &dir.path().join("relay")).await;
    let b = a.replica(&dir.path().join("b"));
    let urls = format!("{},{}", a.url, b.url);
    let relay = Relay::start_urls(&dir.path().join("relay"), &a, &urls, "127.0.0.1:0", &[]);
    let x = identity();
    register(&a, &token, &x).await;
    let (_cx, mut ex) = client(&relay, &x);
    connected(&mut ex).await;
    wait_log(&relay, "member stream started with a snapshot").await;
    // The relay starts on one of the two (spread by its token): drain that one.
    let on_a = relay
        .log()
        .lines()
        .find(|l| l.contains("reported to the controller"))
        .expect("reported")
        .contains(&a.url);
    let (mut draining, other) = if on_a { (a, b) } else { (b, a) };
    let started = Instant::now();
    let status = draining.sigterm();
    assert!(status.success(), "{status}");
    assert!(
        draining.log().contains("relay_streams=1"),
        "the relay's stream was told to reconnect"
    );
    wait_log(&relay, "the controller asked to reconnect elsewhere").await;
    wait_log(&relay, "member stream resumed").await;
    eprintln!(
        "relay resumed on the other replica {:?} after SIGTERM",
        started.elapsed()
    );

    // A node registered on the other replica meanwhile is let in.
    let y = identity();
    register(&other, &token, &y).await;
    let (_cy, mut ey) = client(&relay, &y);
    connected(&mut ey).await;
    let log = relay.log();
    assert_eq!(
        log.matches("member stream started with a snapshot").count(),
        1,
        "resumed by delta, never a second snapshot:\n{log}"
    );
    assert!(log.contains(&format!("controller={}", other.url)), "{log}");
    assert!(!log.contains("refusing every node"), "{log}");
    // x was never disconnected: the set never went stale.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), ex.recv()).await {
        assert!(
            !matches!(ev, RelayEvent::Disconnected { .. }),
            "x lost its session: {ev:?}"
        );
    }
}
