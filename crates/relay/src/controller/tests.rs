//! The link against two stand-in controllers on loopback: the first sends a
//! snapshot and then the `reconnect` notice; the link moves to the second,
//! resuming with `Last-Event-ID`, gets the delta it missed, and never tells
//! the core its set went stale.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use weft_api_client::ClientConfig;
use weft_proto::api::API_VERSION;
use weft_proto::netmap::{EVENT_RECONNECT, ReconnectNotice};
use weft_proto::relay_api::{MemberDelta, MemberSnapshot};
use weft_proto::sse;

use super::*;

fn key(i: u8) -> NodeKey {
    NodeKey::from_bytes([i; 32])
}

/// A stand-in controller: answers `POST /v1/relay/report` and the member
/// stream (a snapshot of version 5 holding key 1, or, resumed from 5, the
/// delta to 6 adding key 2), then the `reconnect` notice when `drain`.
/// Returns its URL and the `Last-Event-ID` of each stream request.
async fn stand_in(drain: bool) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
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
                    if head.starts_with("post /v1/relay/report") {
                        let body = r#"{"name":"fra1","url":"https://relay.example.net:443","created_at_ms":1}"#;
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let last = head
                        .lines()
                        .find_map(|l| l.strip_prefix("last-event-id:"))
                        .map(|v| v.trim().to_owned());
                    log.lock().unwrap().push(last.clone());
                    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n".to_vec();
                    let ev = if last.as_deref() == Some("5") {
                        MembersEvent::Delta(MemberDelta {
                            api_version: API_VERSION,
                            version: 6,
                            added: vec![key(2)],
                            removed: vec![],
                        })
                    } else {
                        MembersEvent::Snapshot(MemberSnapshot {
                            api_version: API_VERSION,
                            version: 5,
                            members: vec![key(1)],
                        })
                    };
                    let id = ev.version().to_string();
                    sse::encode_event(&mut out, Some(&id), Some(ev.event_name()), &ev.to_json());
                    if drain {
                        let notice = ReconnectNotice {
                            within_ms: 300,
                            reason: "controller shutting down".into(),
                        };
                        sse::encode_event(&mut out, None, Some(EVENT_RECONNECT), &notice.to_json());
                    }
                    if conn.write_all(&out).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_reconnect_notice_moves_the_link_which_resumes_by_delta() {
    let (draining, seen_a) = stand_in(true).await;
    let (other, seen_b) = stand_in(false).await;
    let client = Client::new(ClientConfig {
        more_urls: vec![other.clone()],
        ..ClientConfig::new(draining.clone())
    })
    .unwrap();
    let cfg = LinkConfig {
        client: client.clone(),
        controller_url: format!("{draining},{other}"),
        report: RelayReportRequest::default(),
        expected_name: None,
        idle_timeout: Duration::from_secs(30),
    };
    let (tx, mut rx) = mpsc::channel(16);
    let (stop_tx, stop) = watch::channel(false);
    let link = tokio::spawn(follow(cfg, tx, stop));
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an update within 5 s")
            .expect("the link is running")
    };
    let started = tokio::time::Instant::now();
    assert_eq!(next().await, MembershipUpdate::Snapshot(vec![key(1)]));
    // Moved: the kept set first (no LinkDown: it is not stale), then the
    // delta the other controller sent for the version it resumed from.
    assert_eq!(next().await, MembershipUpdate::Snapshot(vec![key(1)]));
    assert_eq!(
        next().await,
        MembershipUpdate::Delta {
            added: vec![key(2)],
            removed: vec![]
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "within the spread"
    );
    assert_eq!(client.current().url, other);
    assert_eq!(*seen_a.lock().unwrap(), vec![None]);
    assert_eq!(*seen_b.lock().unwrap(), vec![Some("5".to_owned())]);
    stop_tx.send(true).unwrap();
    assert_eq!(link.await.unwrap(), Ok(()));
}
