//! A client with several controller URLs against stand-in controllers on
//! loopback: calls move past a URL that does not answer, and a map
//! subscription moves to the next URL when its stream breaks or the
//! controller sends `reconnect`, resuming with `Last-Event-ID` (the next
//! controller answers with a delta, not a snapshot).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use weft_api_client::{Client, ClientConfig};
use weft_proto::api::API_VERSION;
use weft_proto::netmap::{
    EVENT_DELTA, EVENT_RECONNECT, EVENT_SNAPSHOT, MapDelta, MapEvent, NetworkMap, ReconnectNotice,
    SelfNode, StreamEvent,
};
use weft_proto::sse;

/// What a stand-in does after the stream's first event.
#[derive(Clone, Copy)]
enum Then {
    /// Keeps the stream open.
    Hold,
    /// Closes the connection (the controller died).
    Close,
    /// Sends `reconnect` (the controller is shutting down), then holds.
    Reconnect,
}

/// A stand-in controller: answers `GET /healthz` and `GET /v1/map/stream`
/// (a snapshot of version 5, or the delta to 6 when the request resumes
/// from 5). Returns its URL and the `Last-Event-ID` of each stream request.
async fn stand_in(then: Then) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if head.starts_with("get /healthz") {
                    let body = r#"{"status":"ok","api_version":1,"map_version":5}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                    return;
                }
                let last = head
                    .lines()
                    .find_map(|l| l.strip_prefix("last-event-id:"))
                    .map(|v| v.trim().to_owned());
                log.lock().unwrap().push(last.clone());
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n".to_vec();
                sse::encode_retry(&mut out, 2000);
                let first = if last.as_deref() == Some("5") {
                    MapEvent::Delta(MapDelta {
                        api_version: API_VERSION,
                        version: 6,
                        changes: vec![],
                    })
                } else {
                    MapEvent::Snapshot(map(5))
                };
                let name = match first {
                    MapEvent::Snapshot(_) => EVENT_SNAPSHOT,
                    MapEvent::Delta(_) => EVENT_DELTA,
                };
                let id = first.version().to_string();
                sse::encode_event(&mut out, Some(&id), Some(name), &first.to_json());
                if matches!(then, Then::Reconnect) {
                    let notice = ReconnectNotice {
                        within_ms: 300,
                        reason: "controller shutting down".into(),
                    };
                    sse::encode_event(&mut out, None, Some(EVENT_RECONNECT), &notice.to_json());
                }
                if conn.write_all(&out).await.is_err() {
                    return;
                }
                match then {
                    Then::Close => {}
                    Then::Hold | Then::Reconnect => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                }
            });
        }
    });
    (url, seen)
}

fn map(version: u64) -> NetworkMap {
    NetworkMap {
        api_version: API_VERSION,
        version,
        node: SelfNode {
            node_key: weft_proto::NodeKey::from_bytes([1; 32]),
            name: "me".into(),
            tags: vec![],
        },
        networks: vec![],
        relays: vec![],
        policy: None,
        data: vec![],
        secrets: vec![],
        host_firewall: None,
        dns_blocklist: None,
        services: vec![],
        provides: vec![],
        ssh_hosts: vec![],
    }
}

fn client(first: &str, more: &[&str]) -> Client {
    Client::new(ClientConfig {
        more_urls: more.iter().map(|u| (*u).to_owned()).collect(),
        ..ClientConfig::new(first)
    })
    .unwrap()
}

/// A loopback URL where nothing listens (connection refused).
async fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

async fn next(sub: &mut weft_api_client::MapSubscription) -> StreamEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("no permanent error")
}

#[tokio::test]
async fn a_call_moves_past_a_url_that_does_not_answer_and_stays_there() {
    let dead = dead_url().await;
    let (live, _) = stand_in(Then::Hold).await;
    let c = client(&dead, &[&live]);
    assert_eq!(c.urls(), vec![dead.clone(), live.clone()]);
    assert_eq!(c.current().url, dead);
    let h = c.health().await.unwrap();
    assert_eq!(h.map_version, 5);
    let now = c.current();
    assert_eq!(now.url, live, "the URL that answered stays in use");
    assert_eq!(now.moves, 1);
    assert_eq!(
        now.address.map(|a| a.to_string()),
        live.strip_prefix("http://").map(str::to_owned)
    );
    // The next call goes there at once.
    c.health().await.unwrap();
    assert_eq!(c.current().moves, 1);

    // Every URL dead: the first URL's error is reported.
    let (d1, d2) = (dead_url().await, dead_url().await);
    let err = client(&d1, &[&d2]).health().await.unwrap_err();
    assert!(err.to_string().contains("connecting to 127.0.0.1"), "{err}");
}

#[tokio::test]
async fn a_reconnect_notice_moves_the_subscription_to_the_next_url_which_sends_a_delta() {
    let (draining, seen_a) = stand_in(Then::Reconnect).await;
    let (other, seen_b) = stand_in(Then::Hold).await;
    let c = client(&draining, &[&other]);
    let mut sub = c.subscribe_map(None, Duration::from_secs(30));
    let first = next(&mut sub).await;
    assert!(
        matches!(&first, StreamEvent::Map(MapEvent::Snapshot(m)) if m.version == 5),
        "{first:?}"
    );
    let started = tokio::time::Instant::now();
    let second = next(&mut sub).await;
    assert!(
        matches!(&second, StreamEvent::Map(MapEvent::Delta(d)) if d.version == 6),
        "resumed by delta, not a snapshot: {second:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "within the notice's spread"
    );
    assert_eq!(sub.client().current().url, other);
    assert_eq!(*seen_a.lock().unwrap(), vec![None]);
    assert_eq!(*seen_b.lock().unwrap(), vec![Some("5".to_owned())]);
}

#[tokio::test]
async fn a_broken_stream_moves_to_the_next_url_and_resumes_from_its_version() {
    let (dies, seen_a) = stand_in(Then::Close).await;
    let (other, seen_b) = stand_in(Then::Hold).await;
    let c = client(&dies, &[&other]);
    let mut sub = c.subscribe_map(None, Duration::from_secs(30));
    assert!(matches!(
        next(&mut sub).await,
        StreamEvent::Map(MapEvent::Snapshot(_))
    ));
    let started = tokio::time::Instant::now();
    let ev = next(&mut sub).await;
    assert!(
        matches!(&ev, StreamEvent::Map(MapEvent::Delta(d)) if d.version == 6),
        "{ev:?}"
    );
    // A random wait under 2 s, then one connection.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sub.client().current().url, other);
    assert_eq!(seen_a.lock().unwrap().len(), 1);
    assert_eq!(*seen_b.lock().unwrap(), vec![Some("5".to_owned())]);
}

#[tokio::test]
async fn urls_are_checked_and_bounded() {
    let err = Client::new(ClientConfig {
        more_urls: vec!["http://10.0.0.1:8443".into()],
        ..ClientConfig::new("https://c.example:8443")
    })
    .unwrap_err();
    assert!(err.to_string().contains("cleartext"), "{err}");
    let many: Vec<String> = (0..16).map(|i| format!("https://c{i}.example")).collect();
    let err = Client::new(ClientConfig {
        more_urls: many,
        ..ClientConfig::new("https://c.example")
    })
    .unwrap_err();
    assert!(err.to_string().contains("at most 16"), "{err}");
    // Duplicates count once.
    let c = client(
        "http://127.0.0.1:1",
        &["http://127.0.0.1:1", "http://127.0.0.1:2"],
    );
    assert_eq!(c.urls().len(), 2);
    // The spread seed picks where a client starts.
    let starts: std::collections::BTreeSet<String> = (0..8)
        .map(|seed| {
            Client::new(ClientConfig {
                more_urls: vec!["http://127.0.0.1:2".into()],
                spread_seed: seed,
                ..ClientConfig::new("http://127.0.0.1:1")
            })
            .unwrap()
            .current()
            .url
        })
        .collect();
    assert_eq!(starts.len(), 2);
}

/// A stand-in controller that answers every request with `status` and a JSON
/// error body; returns its URL and the request lines it got.
async fn answers(status: u16) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + 4 + length {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + length);
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    log.lock().unwrap().push(line);
                    let body = if status == 200 {
                        r#"{"status":"ok","api_version":1,"map_version":5}"#.to_owned()
                    } else {
                        r#"{"code":"storage_unavailable","message":"retry later"}"#.to_owned()
                    };
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_call_safe_to_repeat_moves_past_a_503_a_creation_does_not() {
    let (sick, seen_sick) = answers(503).await;
    let (well, seen_well) = answers(200).await;
    let c = client(&sick, &[&well]);
    // A read answered 503 goes to the next URL, which stays in use.
    assert_eq!(c.health().await.unwrap().map_version, 5);
    assert_eq!(c.current().url, well);
    assert_eq!(c.current().moves, 1);
    assert_eq!(seen_sick.lock().unwrap().len(), 1);
    assert_eq!(seen_well.lock().unwrap().len(), 1);

    // A creation answered 503 is not sent again: the caller gets the 503.
    let c = client(&sick, &[&well]);
    let req = weft_proto::task::CreateTaskRequest {
        target: weft_proto::task::TaskTarget::Node("n1".into()),
        kind: weft_proto::task::TaskKind::Action(weft_proto::task::Action::Netcheck),
        timeout_secs: None,
        output_cap_bytes: None,
        deadline_secs: None,
    };
    let err = c.create_task(&req).await.unwrap_err();
    assert!(
        matches!(&err, weft_api_client::ClientError::Api { status: 503, .. }),
        "{err}"
    );
    assert_eq!(c.current().url, sick, "still on the first URL");
    assert_eq!(seen_well.lock().unwrap().len(), 1, "never sent to the next");
    assert_eq!(
        seen_sick.lock().unwrap().last().unwrap(),
        "post /v1/admin/tasks http/1.1"
    );

    // A report (it sets state) is safe: it goes to the next URL.
    let req = weft_proto::api::ReportRequest::default();
    // The stand-in answers the health body; the report ignores bodies.
    c.report(&req).await.unwrap();
    assert_eq!(c.current().url, well);
    assert_eq!(
        seen_well.lock().unwrap().last().unwrap(),
        "post /v1/node/report http/1.1"
    );

    // Every URL answers 503: each is tried once, the 503 is the answer.
    let (sick2, seen_sick2) = answers(503).await;
    let before = seen_sick.lock().unwrap().len();
    let err = client(&sick, &[&sick2]).health().await.unwrap_err();
    assert!(
        matches!(&err, weft_api_client::ClientError::Api { status: 503, .. }),
        "{err}"
    );
    assert_eq!(seen_sick.lock().unwrap().len(), before + 1);
    assert_eq!(seen_sick2.lock().unwrap().len(), 1);
}
