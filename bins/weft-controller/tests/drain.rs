//! Several controller URLs and the controller's drain, on the real binary:
//! SIGTERM tells every map stream to reconnect elsewhere (a `reconnect`
//! event with the configured spread) before closing it; a client whose URL
//! in use dies moves to its next URL and resumes with `Last-Event-ID`, and
//! the controller answers with the deltas it missed, not a snapshot.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail loudly"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "the test measures real delays of a real controller"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use weft_api_client::{Client, ClientConfig, Trust};
use weft_proto::api::UpdateNodeRequest;
use weft_proto::netmap::{MapEvent, StreamEvent};

const IDLE: Duration = Duration::from_secs(10);

/// A TCP forwarder to `to` on a loopback port of its own: a second URL of
/// the same controller, which the test can cut (every connection through it
/// ends at once, as when a replica dies).
struct Proxy {
    port: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(to: String) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let list = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let to = to.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                list.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Proxy { port, tasks }
    }

    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_every_stream_to_reconnect_elsewhere_before_closing() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(dir.path(), &["--drain-spread-secs", "3"]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 0).await;
    let client = ctl.client();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let reg = register(&client, &tok, &identity(0)).await.unwrap();
        let c = client.with_bearer(&reg.credential).unwrap();
        let mut s = c.map_stream(None, IDLE).await.unwrap();
        let first = tokio::time::timeout(IDLE, s.next()).await.unwrap();
        assert!(matches!(
            first,
            Some(Ok(StreamEvent::Map(MapEvent::Snapshot(_))))
        ));
        streams.push(s);
    }
    let stopping = std::thread::spawn(move || {
        let status = ctl.sigterm(Duration::from_secs(15));
        (status, ctl.log())
    });
    for s in &mut streams {
        // The notice comes before the stream ends (map deltas may precede it).
        let notice = loop {
            match tokio::time::timeout(IDLE, s.next()).await {
                Ok(Some(Ok(StreamEvent::Reconnect(n)))) => break n,
                Ok(Some(Ok(StreamEvent::Map(MapEvent::Delta(_)) | StreamEvent::Task(_)))) => {}
                other => panic!("expected a reconnect notice, got {other:?}"),
            }
        };
        assert_eq!(notice.within_ms, 3000);
        assert!(notice.reason.contains("shutting down"), "{notice:?}");
        // Streams that obey go away; the controller does not wait for the rest.
    }
    streams.truncate(1);
    let (status, log) = stopping.join().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        log.contains("map streams told to reconnect elsewhere") && log.contains("streams=3"),
        "{log}"
    );
    // The one stream left open was ended after the drain wait.
    let end = tokio::time::timeout(Duration::from_secs(5), streams[0].next()).await;
    assert!(matches!(end, Ok(None | Some(Err(_)))), "{end:?}");
}

async fn next(sub: &mut weft_api_client::MapSubscription) -> StreamEvent {
    tokio::time::timeout(IDLE, sub.next())
        .await
        .expect("an event within 10 s")
        .expect("no permanent error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_to_its_next_url_and_resumes_by_delta() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(dir.path(), &[]);
    let admin = ctl.admin();
    let tok = network_with_token(&admin, "lab", "100.64.0.0/24", 0).await;
    let reg = register(&ctl.client(), &tok, &identity(0)).await.unwrap();

    // Two URLs of one controller: through the forwarder first, then direct.
    let proxy = Proxy::start(ctl.addr.clone()).await;
    let direct = ctl.url.clone();
    let via_proxy = direct.replace(&ctl.addr, &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(via_proxy, direct);
    let node = Client::new(ClientConfig {
        trust: Trust::Fingerprint(ctl.fingerprint.expect("TLS")),
        more_urls: vec![direct.clone()],
        ..ClientConfig::new(via_proxy.clone())
    })
    .unwrap()
    .with_bearer(&reg.credential)
    .unwrap();
    let mut sub = node.subscribe_map(None, IDLE);
    let ev = next(&mut sub).await;
    let StreamEvent::Map(MapEvent::Snapshot(mut map)) = ev else {
        panic!("expected the snapshot first, got {ev:?}");
    };
    assert_eq!(sub.client().current().url, via_proxy);
    let tag = |t: &str| UpdateNodeRequest {
        tags: Some(vec![t.to_owned()]),
        ..Default::default()
    };
    admin.update_node(&reg.name, &tag("one")).await.unwrap();
    let ev = next(&mut sub).await;
    let StreamEvent::Map(MapEvent::Delta(d)) = ev else {
        panic!("expected a delta, got {ev:?}");
    };
    map.apply(&d).unwrap();
    let before = map.version;

    // The URL in use dies; a change is made while the node is away.
    proxy.cut();
    admin.update_node(&reg.name, &tag("two")).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut deltas = 0;
    while map.node.tags != vec!["two".to_owned()] {
        match next(&mut sub).await {
            StreamEvent::Map(MapEvent::Delta(d)) => {
                map.apply(&d).unwrap();
                deltas += 1;
                assert!(d.version > before);
            }
            StreamEvent::Map(MapEvent::Snapshot(m)) => {
                panic!(
                    "resumed with a snapshot (version {}), not deltas",
                    m.version
                )
            }
            StreamEvent::Task(_) | StreamEvent::Reconnect(_) => {}
        }
    }
    eprintln!(
        "back on the next URL by {deltas} delta(s) {:?} after the cut",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let now = sub.client().current();
    assert_eq!(now.url, direct, "moved to the next URL");
    assert!(now.moves >= 1);
    // Equal to a fresh snapshot (whose version is the controller's, moved by
    // changes that did not concern this node).
    let mut fresh = node.map().await.unwrap();
    assert!(fresh.version >= map.version);
    fresh.version = map.version;
    assert_eq!(map, fresh, "the resumed map equals a fresh snapshot");
}
