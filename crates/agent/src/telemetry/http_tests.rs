//! The metrics listener in process: where it may listen, and what it serves
//! to a client speaking plain HTTP/1.1 over TCP (a fake supervisor renders a
//! real registry).

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::*;
use crate::telemetry::metrics::{AgentMetrics, Live};

fn listen(addr: &str, public: bool) -> MetricsListen {
    MetricsListen {
        addr: addr.parse().expect("addr"),
        public,
    }
}

#[test]
fn loopback_and_overlay_addresses_are_allowed_anything_else_only_when_forced() {
    let overlay: Vec<IpAddr> = vec!["100.64.0.5".parse().expect("ip")];
    assert_eq!(
        placement(&listen("127.0.0.1:9100", false), &overlay).expect("loopback"),
        Placement::Now
    );
    assert_eq!(
        placement(&listen("[::1]:9100", false), &[]).expect("loopback v6"),
        Placement::Now
    );
    assert_eq!(
        placement(&listen("100.64.0.5:9100", false), &overlay).expect("overlay"),
        Placement::Overlay
    );
    for refused in [
        "192.168.1.10:9100",
        "0.0.0.0:9100",
        "[::]:9100",
        "100.64.0.6:9100",
    ] {
        let err = placement(&listen(refused, false), &overlay)
            .expect_err(refused)
            .to_string();
        assert!(
            err.contains("--metrics-listen-public") && err.contains("100.64.0.5"),
            "{err}"
        );
        assert_eq!(
            placement(&listen(refused, true), &overlay).expect("forced"),
            Placement::Now
        );
    }
    let err = placement(&listen("100.64.0.5:9100", false), &[])
        .expect_err("no map yet")
        .to_string();
    assert!(err.contains("no network map yet"), "{err}");
}

/// A fake supervisor: answers every metrics request with a real rendering.
fn supervisor() -> mpsc::Sender<ApiCall> {
    let (tx, mut rx) = mpsc::channel::<ApiCall>(4);
    tokio::spawn(async move {
        let metrics = AgentMetrics::new(weft_dns::DnsStats::default());
        while let Some((req, reply)) = rx.recv().await {
            let LocalRequest::Metrics { openmetrics } = req else {
                continue;
            };
            let text = metrics
                .render(Live::default(), openmetrics)
                .expect("render");
            let content_type = if openmetrics {
                crate::telemetry::metrics::OPENMETRICS
            } else {
                crate::telemetry::metrics::PROMETHEUS_TEXT
            };
            let _ = reply.send(LocalResponse::Metrics {
                content_type: content_type.into(),
                text,
            });
        }
    });
    tx
}

async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(listener, supervisor()));
    addr
}

/// One request; returns (status line, headers, body).
async fn get(addr: SocketAddr, request: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_lowercase(), body.to_owned())
}

#[tokio::test]
async fn get_metrics_serves_a_parsable_exposition_in_the_format_asked() {
    let addr = server().await;
    let (status, headers, body) = get(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.contains("200"), "{status}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    let scrape =
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "weft_agent_reconcile_passes_total"),
        "{body}"
    );

    let (status, headers, body) = get(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.contains("200"), "{status}");
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
}

#[tokio::test]
async fn other_paths_are_404_and_other_methods_405() {
    let addr = server().await;
    let (status, _, _) = get(
        addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.contains("404"), "{status}");
    let (status, headers, _) = get(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.contains("405"), "{status}");
    assert!(headers.contains("allow: get, head"), "{headers}");
}

/// Header bytes beyond the bound end the connection instead of growing a
/// buffer.
#[tokio::test]
async fn oversized_requests_are_refused() {
    let addr = server().await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains(" 200 "), "{text}");
}
