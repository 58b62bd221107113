//! One provided service's health check: the probe (a TCP connect, or an
//! HTTP/1.1 `GET` with a 2xx/3xx status) against this node's own overlay
//! address in the service's network, and the verdict it feeds, which flips
//! only after [`HEALTH_THRESHOLD`] consecutive results that disagree with it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use weft_proto::service::{
    HEALTH_THRESHOLD, Health, HealthCheck, MAX_HEALTH_DETAIL, ProvidedService, ServiceProto,
};

/// The most of an HTTP answer read to find its status line.
const MAX_STATUS_LINE: usize = 1024;

/// What to check for one provided service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The service as the map lists it.
    pub(crate) service: ProvidedService,
    /// This node's overlay address in the service's network (`None`: the map
    /// has no such network; the check fails saying so).
    pub(crate) addr: Option<Ipv4Addr>,
}

impl Target {
    /// `(network, name)`: how verdicts are keyed.
    pub(crate) fn key(&self) -> (String, String) {
        (self.service.network.clone(), self.service.name.clone())
    }
}

/// Runs one check of `target`, bounded by `timeout`. `Err` says why it
/// failed, in words.
pub(crate) async fn probe(target: &Target, timeout: Duration) -> Result<(), String> {
    let port = target
        .service
        .ports
        .iter()
        .find(|p| p.proto == ServiceProto::Tcp)
        .map(|p| p.port);
    let (Some(port), check) = (port, &target.service.health) else {
        // A UDP-only service has nothing to connect to: like `none`.
        return Ok(());
    };
    if *check == HealthCheck::None {
        return Ok(());
    }
    let Some(ip) = target.addr else {
        return Err(format!(
            "this node has no address in network {:?} (not in the map)",
            target.service.network
        ));
    };
    let addr = SocketAddr::from((ip, port));
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        match check {
            HealthCheck::Http { path } => http_get(&mut stream, addr, path).await,
            HealthCheck::Tcp | HealthCheck::None => Ok(()),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer from {addr} within {} ms",
            timeout.as_millis()
        )),
    }
}

/// `GET path` on `stream`; healthy on a 2xx or 3xx status.
async fn http_get(stream: &mut TcpStream, addr: SocketAddr, path: &str) -> Result<(), String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: weftd-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending the request to {addr}: {e}"))?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let status = http_status(&line).ok_or_else(|| {
        format!(
            "GET {path}: not an HTTP answer: {:?}",
            clip(line.trim_end())
        )
    })?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {path} answered {status}"))
    }
}

/// The status of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
fn http_status(line: &str) -> Option<u16> {
    let mut parts = line.split_ascii_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// At most [`MAX_HEALTH_DETAIL`] bytes of `s`, cut at a character boundary.
pub(crate) fn clip(s: &str) -> String {
    let mut end = s.len().min(MAX_HEALTH_DETAIL);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The local verdict of one provided service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// What is reported: `Unknown` until [`HEALTH_THRESHOLD`] results agree.
    pub(crate) health: Health,
    /// When the last check ran (Unix milliseconds).
    pub(crate) checked_ms: Option<u64>,
    /// The last failure, in words (cleared by a success).
    pub(crate) detail: Option<String>,
    /// Consecutive results that disagree with `health`.
    streak: u32,
}

impl Verdict {
    /// Records one check's result at `now_ms`; `true` when the verdict flipped.
    pub(crate) fn record(&mut self, result: Result<(), String>, now_ms: u64) -> bool {
        let seen = if result.is_ok() {
            Health::Healthy
        } else {
            Health::Unhealthy
        };
        self.checked_ms = Some(now_ms);
        self.detail = result.err().map(|e| clip(&e));
        if seen == self.health {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        if self.streak >= HEALTH_THRESHOLD {
            self.health = seen;
            self.streak = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use weft_proto::service::ServicePort;

    fn target(port: u16, health: HealthCheck) -> Target {
        Target {
            service: ProvidedService {
                name: "db".into(),
                network: "prod".into(),
                ports: vec![ServicePort {
                    port,
                    proto: ServiceProto::Tcp,
                }],
                health,
            },
            addr: Some(Ipv4Addr::LOCALHOST),
        }
    }

    const T: Duration = Duration::from_millis(800);

    #[test]
    fn a_verdict_flips_only_after_the_threshold() {
        let mut v = Verdict::default();
        assert_eq!(v.health, Health::Unknown);
        assert!(!v.record(Ok(()), 1));
        assert!(v.record(Ok(()), 2), "second success: healthy");
        assert_eq!((v.health, v.checked_ms), (Health::Healthy, Some(2)));
        // One failure is noise: still healthy, but its detail shows.
        assert!(!v.record(Err("refused".into()), 3));
        assert_eq!(v.health, Health::Healthy);
        assert_eq!(v.detail.as_deref(), Some("refused"));
        // A success in between resets the streak.
        assert!(!v.record(Ok(()), 4));
        assert_eq!(v.detail, None);
        assert!(!v.record(Err("refused".into()), 5));
        assert!(v.record(Err("refused".into()), 6));
        assert_eq!(v.health, Health::Unhealthy);
        // Staying unhealthy is no flip.
        assert!(!v.record(Err("refused".into()), 7));
        let mut v = Verdict::default();
        v.record(Err("x".repeat(1000)), 1);
        assert_eq!(v.detail.unwrap().len(), MAX_HEALTH_DETAIL);
    }

    #[test]
    fn status_lines_parse_strictly() {
        assert_eq!(http_status("HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(http_status("HTTP/1.0 302"), Some(302));
        for bad in [
            "",
            "SSH-2.0-OpenSSH",
            "HTTP/1.1 2000 X",
            "HTTP/1.1 abc",
            "HTTP/2 200",
        ] {
            assert_eq!(http_status(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn tcp_checks_connect_and_name_the_failure() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(probe(&target(port, HealthCheck::Tcp), T).await, Ok(()));
        drop(l);
        let e = probe(&target(port, HealthCheck::Tcp), T).await.unwrap_err();
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        // `none`, and a UDP-only service, need nothing listening.
        assert_eq!(probe(&target(port, HealthCheck::None), T).await, Ok(()));
        let mut udp = target(port, HealthCheck::Tcp);
        udp.service.ports[0].proto = ServiceProto::Udp;
        assert_eq!(probe(&udp, T).await, Ok(()));
        // No address in the network: fails saying so.
        let mut gone = target(port, HealthCheck::Tcp);
        gone.addr = None;
        assert!(probe(&gone, T).await.unwrap_err().contains("prod"));
    }

    /// Serves one HTTP answer per connection with `status`; `None`: accepts
    /// and never answers.
    async fn http_server(status: Option<&'static str>) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    assert!(buf[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
                    match status {
                        Some(line) => {
                            let _ = s.write_all(line.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(5)).await,
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn http_checks_want_2xx_or_3xx_within_the_timeout() {
        let check = HealthCheck::Http {
            path: "/healthz".into(),
        };
        for (line, ok) in [
            ("HTTP/1.1 200 OK\r\n\r\n", true),
            ("HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n", true),
            ("HTTP/1.1 503 Service Unavailable\r\n\r\n", false),
            ("garbage\r\n", false),
        ] {
            let port = http_server(Some(line)).await;
            let r = probe(&target(port, check.clone()), T).await;
            assert_eq!(r.is_ok(), ok, "{line:?}: {r:?}");
        }
        let port = http_server(Some("HTTP/1.1 500 Oops\r\n\r\n")).await;
        let e = probe(&target(port, check.clone()), T).await.unwrap_err();
        assert_eq!(e, "GET /healthz answered 500");
        let port = http_server(None).await;
        let e = probe(&target(port, check), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.contains("within 200 ms"), "{e}");
    }
}
