//! The relay's Prometheus metrics (`weft-relay serve --metrics-listen ADDR`).
//!
//! The numbers live where they are kept: the sans-IO core's counters, session
//! table and queues, and the STUN responder's two counters. One
//! `prometheus-client` registry holds a collector that reads them at scrape
//! time ([`Snapshot`]), so nothing is counted twice and the core stays free of
//! I/O. Every name is under `weft_relay_`; labels are reasons and results from
//! fixed lists, never a node key or an address.
//!
//! The listener is plain HTTP (`GET /metrics`, Prometheus text format 0.0.4,
//! [`CONTENT_TYPE`]) without authentication; the command line refuses a
//! non-loopback address for it unless told otherwise.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::debug;
use weft_relay_core::frame::Reason;
use weft_relay_core::{Counters, DropReason, MembershipState, QueueDepths};

/// The `Content-Type` of a scrape: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every login refusal and session-closing reason the core knows, for labels.
const REASONS: [Reason; 9] = [
    Reason::NotMember,
    Reason::MembershipUnknown,
    Reason::BadSignature,
    Reason::UnsupportedVersion,
    Reason::Replaced,
    Reason::Protocol,
    Reason::IdleTimeout,
    Reason::LoginTimeout,
    Reason::Overloaded,
];

/// What a scrape reads, taken in one go under the core's lock.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The core's counters.
    pub counters: Counters,
    /// Open connections (logged in or not).
    pub connections: usize,
    /// Logged-in sessions.
    pub sessions: usize,
    /// What the outbound queues hold.
    pub queues: QueueDepths,
    /// Frames one connection may queue at most.
    pub queue_capacity_frames: usize,
    /// Where the member set stands.
    pub membership: Option<MembershipState>,
    /// STUN Binding requests answered.
    pub stun_answered: u64,
    /// UDP datagrams on a STUN port that were not a Binding request.
    pub stun_malformed: u64,
}

type Source = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// The relay's registry.
pub struct RelayMetrics {
    registry: Registry,
}

impl RelayMetrics {
    /// A registry whose families are read from `source` at every scrape.
    pub fn new(source: impl Fn() -> Snapshot + Send + Sync + 'static) -> Self {
        let mut registry = Registry::with_prefix("weft_relay");
        registry.register_collector(Box::new(ReadAtScrape {
            source: Arc::new(source),
        }));
        Self { registry }
    }

    /// Encodes every family.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(4 * 1024);
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

struct ReadAtScrape {
    source: Source,
}

impl fmt::Debug for ReadAtScrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadAtScrape")
    }
}

fn reason_label(r: Reason) -> &'static str {
    match r {
        Reason::NotMember => "not_member",
        Reason::MembershipUnknown => "membership_unknown",
        Reason::BadSignature => "bad_signature",
        Reason::UnsupportedVersion => "unsupported_version",
        Reason::Replaced => "replaced",
        Reason::Protocol => "protocol",
        Reason::IdleTimeout => "idle_timeout",
        Reason::LoginTimeout => "login_timeout",
        Reason::Overloaded => "overloaded",
        Reason::Other(_) => "other",
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: usize) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A counter family with one label: `(label value, count)` pairs.
fn counters<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, value)];
        ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Per reason: the known ones (zero included), then the sum of unknown codes.
fn by_reason(map: &std::collections::BTreeMap<Reason, u64>) -> Vec<(&'static str, u64)> {
    let mut out: Vec<(&'static str, u64)> = REASONS
        .iter()
        .map(|r| (reason_label(*r), map.get(r).copied().unwrap_or(0)))
        .collect();
    let other: u64 = map
        .iter()
        .filter(|(r, _)| matches!(r, Reason::Other(_)))
        .map(|(_, n)| *n)
        .sum();
    out.push(("other", other));
    out
}

impl Collector for ReadAtScrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = (self.source)();
        let c = &s.counters;
        gauge(
            &mut enc,
            "connections",
            "Open TLS connections, logged in or not",
            s.connections,
        )?;
        gauge(
            &mut enc,
            "sessions",
            "Logged-in sessions (one per node key)",
            s.sessions,
        )?;
        let (members, state) = match s.membership {
            None | Some(MembershipState::Unknown) => (0, "unknown"),
            Some(MembershipState::Known { members }) => (members, "known"),
            Some(MembershipState::Stale { members, .. }) => (members, "stale"),
        };
        gauge(
            &mut enc,
            "members",
            "Node keys the controller lets this relay serve",
            members,
        )?;
        let mut m = enc.encode_descriptor(
            "membership",
            "Where the member set stands: 1 for the current state (known; stale: controller link lost, within the grace period; unknown: serving nobody)",
            None,
            MetricType::Gauge,
        )?;
        for st in ["known", "stale", "unknown"] {
            let labels = [("state", st)];
            ConstGauge::new(i64::from(st == state)).encode(m.encode_family(&labels)?)?;
        }
        counter(
            &mut enc,
            "connections_accepted",
            "TLS connections accepted",
            c.connections,
        )?;
        let mut logins = vec![("ok", c.logins_ok)];
        logins.extend(by_reason(&c.logins_refused));
        counters(
            &mut enc,
            "logins",
            "Login attempts by result: ok, or the refusal reason",
            "result",
            logins,
        )?;
        counters(
            &mut enc,
            "sessions_closed",
            "Sessions the relay closed, by reason",
            "reason",
            by_reason(&c.sessions_closed),
        )?;
        counter(
            &mut enc,
            "forwarded_frames",
            "Packets forwarded from one node to another",
            c.forwarded_packets,
        )?;
        counter(
            &mut enc,
            "forwarded_bytes",
            "Payload bytes forwarded (the encrypted packets, without framing)",
            c.forwarded_bytes,
        )?;
        counters(
            &mut enc,
            "dropped_frames",
            "Frames dropped, by reason (queue_full counts against the slow receiver)",
            "reason",
            DropReason::ALL.map(|r| (r.as_str(), c.dropped(r))),
        )?;
        counter(
            &mut enc,
            "peer_gone_notices",
            "PeerGone notices sent (destination not connected or gone)",
            c.peer_gone_sent,
        )?;
        gauge(
            &mut enc,
            "queued_frames",
            "Frames waiting in outbound queues, all connections",
            s.queues.frames,
        )?;
        gauge(
            &mut enc,
            "queued_bytes",
            "Payload bytes waiting in outbound queues, all connections",
            s.queues.bytes,
        )?;
        gauge(
            &mut enc,
            "queue_max_frames",
            "Frames in the fullest outbound queue",
            s.queues.max_frames,
        )?;
        gauge(
            &mut enc,
            "queue_capacity_frames",
            "Frames one connection may queue before packets for it are dropped (--queue-packets)",
            s.queue_capacity_frames,
        )?;
        counters(
            &mut enc,
            "stun_requests",
            "UDP datagrams on the STUN ports, by result: answered (a Binding request) or malformed",
            "result",
            [
                ("answered", s.stun_answered),
                ("malformed", s.stun_malformed),
            ],
        )
    }
}

fn respond(metrics: &RelayMetrics, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "only /metrics is served here\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match metrics.render() {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            h.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
    }
}

/// Serves `GET /metrics` on `listener` (plain HTTP, a few connections at once,
/// short timeouts) until `stop` turns true.
pub async fn serve(listener: TcpListener, metrics: RelayMetrics, mut stop: watch::Receiver<bool>) {
    let metrics = Arc::new(metrics);
    let slots = Arc::new(Semaphore::new(16));
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let r = respond(&metrics, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use prometheus_parse::{Scrape, Value};

    fn value(s: &Scrape, name: &str, label: Option<(&str, &str)>) -> Value {
        s.samples
            .iter()
            .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} {label:?} missing"))
            .value
            .clone()
    }

    #[test]
    fn the_collector_reads_the_snapshot_with_names_and_types() {
        let mut counters = Counters {
            connections: 3,
            logins_ok: 2,
            forwarded_packets: 10,
            forwarded_bytes: 1400,
            ..Counters::default()
        };
        counters.drops.insert(DropReason::QueueFull, 4);
        counters.logins_refused.insert(Reason::NotMember, 1);
        counters.logins_refused.insert(Reason::Other(77), 2);
        let snap = Snapshot {
            counters,
            connections: 2,
            sessions: 2,
            queues: QueueDepths {
                frames: 5,
                bytes: 700,
                max_frames: 4,
            },
            queue_capacity_frames: 512,
            membership: Some(MembershipState::Known { members: 9 }),
            stun_answered: 6,
            stun_malformed: 1,
        };
        let m = RelayMetrics::new(move || snap.clone());
        let text = m.render().unwrap();
        let s = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let g = |n: &str| value(&s, n, None);
        assert_eq!(g("weft_relay_sessions"), Value::Gauge(2.0));
        assert_eq!(g("weft_relay_members"), Value::Gauge(9.0));
        assert_eq!(g("weft_relay_queued_bytes"), Value::Gauge(700.0));
        assert_eq!(g("weft_relay_queue_max_frames"), Value::Gauge(4.0));
        assert_eq!(g("weft_relay_forwarded_frames_total"), Value::Counter(10.0));
        assert_eq!(
            g("weft_relay_forwarded_bytes_total"),
            Value::Counter(1400.0)
        );
        let l = |n: &str, k: &str, v: &str| value(&s, n, Some((k, v)));
        assert_eq!(
            l("weft_relay_membership", "state", "known"),
            Value::Gauge(1.0)
        );
        assert_eq!(
            l("weft_relay_membership", "state", "unknown"),
            Value::Gauge(0.0)
        );
        assert_eq!(
            l("weft_relay_dropped_frames_total", "reason", "queue_full"),
            Value::Counter(4.0)
        );
        assert_eq!(
            l("weft_relay_dropped_frames_total", "reason", "malformed"),
            Value::Counter(0.0)
        );
        assert_eq!(
            l("weft_relay_logins_total", "result", "ok"),
            Value::Counter(2.0)
        );
        assert_eq!(
            l("weft_relay_logins_total", "result", "not_member"),
            Value::Counter(1.0)
        );
        // Unknown wire codes share one series.
        assert_eq!(
            l("weft_relay_logins_total", "result", "other"),
            Value::Counter(2.0)
        );
        assert_eq!(
            l("weft_relay_stun_requests_total", "result", "answered"),
            Value::Counter(6.0)
        );
        assert!(s.docs.contains_key("weft_relay_sessions"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }
}
