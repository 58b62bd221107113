//! The controller's Prometheus metrics: one `prometheus-client` registry,
//! every name under `weft_controller_`.
//!
//! Counters and histograms are updated where things happen (the engine times
//! each commit and fan-out, the registration handler counts results, the HTTP
//! layer counts requests); gauges that describe the state (nodes by state, map
//! version, open map streams) are computed from the model at scrape time, so
//! they cannot drift from it.
//!
//! Labels have bounded values only: a node state, a result or API error code,
//! a route template (axum's `MatchedPath`, never the raw path), a method from a
//! fixed list, a status code this server produces. Never a node key, a name or
//! an address.
//!
//! The output is the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]), which
//! every Prometheus-compatible scraper reads.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::model::World;

/// The `Content-Type` of a scrape: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the latency histograms: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: &'static str,
    status: u16,
}

/// What one publish queued to map streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Delta frames queued.
    pub deltas: u64,
    /// Snapshot frames queued (resyncs).
    pub snapshots: u64,
    /// Frames not queued because a stream's queue was full (it resyncs).
    pub lagged: u64,
}

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    nodes: Family<StateLabel, Gauge>,
    map_streams: Gauge,
    map_version: Gauge,
    registrations: Family<ResultLabel, Counter>,
    map_versions_published: Counter,
    map_frames: Family<KindLabel, Counter>,
    map_lagged: Counter,
    fanout: Histogram,
    commits: Family<ResultLabel, Counter>,
    commit_seconds: Histogram,
    http_requests: Family<HttpLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family, counters at zero.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("weft_controller"),
            nodes: Family::default(),
            map_streams: Gauge::default(),
            map_version: Gauge::default(),
            registrations: Family::default(),
            map_versions_published: Counter::default(),
            map_frames: Family::default(),
            map_lagged: Counter::default(),
            fanout: Histogram::new(LATENCY_BUCKETS),
            commits: Family::default(),
            commit_seconds: Histogram::new(LATENCY_BUCKETS),
            http_requests: Family::default(),
        };
        let registry = &mut m.registry;
        registry.register(
            "nodes",
            "Registered nodes by state: online (a map stream open long enough), offline, or disabled by an admin",
            m.nodes.clone(),
        );
        registry.register(
            "map_streams",
            "Open map streams (SSE), all nodes",
            m.map_streams.clone(),
        );
        registry.register(
            "map_version",
            "Current network map version",
            m.map_version.clone(),
        );
        registry.register(
            "registrations",
            "Registration attempts that reached the handler, by result (ok or the API error code)",
            m.registrations.clone(),
        );
        registry.register(
            "map_versions_published",
            "Map versions published to streams (committed batches that changed a map)",
            m.map_versions_published.clone(),
        );
        registry.register(
            "map_frames_queued",
            "Map frames publishes queued to open streams, by kind (delta; snapshot: a resync after a change that needs one)",
            m.map_frames.clone(),
        );
        registry.register(
            "map_frames_lagged",
            "Map frames not queued because a stream's queue was full (that stream resyncs with a snapshot)",
            m.map_lagged.clone(),
        );
        registry.register_with_unit(
            "fanout",
            "Time from a batch's commit to its maps being queued to every open stream",
            Unit::Seconds,
            m.fanout.clone(),
        );
        registry.register(
            "store_commits",
            "Store transactions (one per batch of operations), by result (ok, failed)",
            m.commits.clone(),
        );
        registry.register_with_unit(
            "store_commit",
            "Time to commit one batch to the store (durable: includes the fsync)",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status code",
            m.http_requests.clone(),
        );
        // Known results start at zero, so a rate exists before the first event.
        for result in ["ok", "failed"] {
            drop(m.commits.get_or_create(&ResultLabel { result }));
        }
        drop(m.registrations.get_or_create(&ResultLabel { result: "ok" }));
        for kind in ["delta", "snapshot"] {
            drop(m.map_frames.get_or_create(&KindLabel { kind }));
        }
        m
    }

    /// Counts a registration that ended with `result`: `ok` or an API error code.
    pub fn registration(&self, result: &'static str) {
        self.registrations
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Records one store commit.
    pub fn commit(&self, took: Duration, ok: bool) {
        self.commit_seconds.observe(took.as_secs_f64());
        let result = if ok { "ok" } else { "failed" };
        self.commits.get_or_create(&ResultLabel { result }).inc();
    }

    /// Records one publish: what it queued, and how long after the commit.
    pub fn fanout(&self, took: Duration, pushed: Pushed) {
        self.fanout.observe(took.as_secs_f64());
        self.map_versions_published.inc();
        self.map_frames
            .get_or_create(&KindLabel { kind: "delta" })
            .inc_by(pushed.deltas);
        self.map_frames
            .get_or_create(&KindLabel { kind: "snapshot" })
            .inc_by(pushed.snapshots);
        self.map_lagged.inc_by(pushed.lagged);
    }

    /// Counts an HTTP request. `route` is a route template (or `unmatched`);
    /// its parameters are written `:name` (`/v1/admin/nodes/:node`), as braces
    /// in a label value trip simple text-format parsers.
    pub fn http_request(&self, route: &str, method: &http::Method, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.replace('{', ":").replace('}', ""),
                method: method_label(method),
                status,
            })
            .inc();
    }

    /// Refreshes the gauges from the state and encodes every family.
    pub fn render(&self, world: &World, streams: usize) -> Result<String, std::fmt::Error> {
        let (mut online, mut offline, mut disabled) = (0i64, 0i64, 0i64);
        for n in world.nodes_by_name(None) {
            match (n.rec.disabled, n.online) {
                (true, _) => disabled += 1,
                (false, true) => online += 1,
                (false, false) => offline += 1,
            }
        }
        for (state, v) in [
            ("online", online),
            ("offline", offline),
            ("disabled", disabled),
        ] {
            self.nodes.get_or_create(&StateLabel { state }).set(v);
        }
        self.map_version
            .set(i64::try_from(world.version).unwrap_or(i64::MAX));
        self.map_streams
            .set(i64::try_from(streams).unwrap_or(i64::MAX));
        let mut out = String::with_capacity(8 * 1024);
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// A method as a label: the standard ones by name, anything else `other`
/// (a client chooses the method; its spelling must not grow the series).
fn method_label(m: &http::Method) -> &'static str {
    use http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::model::World;
    use crate::store::StoreSnapshot;
    use prometheus_parse::{Scrape, Value};

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    fn value(s: &Scrape, name: &str, label: Option<(&str, &str)>) -> Value {
        s.samples
            .iter()
            .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} {label:?} missing"))
            .value
            .clone()
    }

    #[test]
    fn every_family_parses_with_its_type_and_counts_move() {
        let m = Metrics::new();
        m.registration("ok");
        m.registration("invalid_token");
        m.commit(Duration::from_millis(3), true);
        m.commit(Duration::from_millis(3), false);
        m.fanout(
            Duration::from_micros(300),
            Pushed {
                deltas: 5,
                snapshots: 1,
                lagged: 2,
            },
        );
        m.http_request("/v1/admin/nodes/{node}", &http::Method::GET, 200);
        m.http_request(
            "unmatched",
            &http::Method::from_bytes(b"BREW").unwrap(),
            404,
        );
        let world = World::from_snapshot(StoreSnapshot::default(), Vec::new());
        let text = m.render(&world, 7).unwrap();
        let s = parse(&text);

        assert_eq!(
            value(&s, "weft_controller_nodes", Some(("state", "online"))),
            Value::Gauge(0.0)
        );
        assert_eq!(
            value(&s, "weft_controller_map_streams", None),
            Value::Gauge(7.0)
        );
        assert!(matches!(
            value(&s, "weft_controller_map_version", None),
            Value::Gauge(_)
        ));
        assert_eq!(
            value(
                &s,
                "weft_controller_registrations_total",
                Some(("result", "invalid_token"))
            ),
            Value::Counter(1.0)
        );
        assert_eq!(
            value(
                &s,
                "weft_controller_store_commits_total",
                Some(("result", "failed"))
            ),
            Value::Counter(1.0)
        );
        assert_eq!(
            value(
                &s,
                "weft_controller_map_frames_queued_total",
                Some(("kind", "delta"))
            ),
            Value::Counter(5.0)
        );
        assert_eq!(
            value(&s, "weft_controller_map_frames_lagged_total", None),
            Value::Counter(2.0)
        );
        assert_eq!(
            value(&s, "weft_controller_map_versions_published_total", None),
            Value::Counter(1.0)
        );
        for h in [
            "weft_controller_fanout_seconds",
            "weft_controller_store_commit_seconds",
        ] {
            let Value::Histogram(b) = value(&s, h, None) else {
                panic!("{h} is not a histogram");
            };
            assert!(b.last().is_some_and(|c| c.count >= 1.0), "{h}: {b:?}");
        }
        assert_eq!(
            value(
                &s,
                "weft_controller_http_requests_total",
                Some(("route", "/v1/admin/nodes/:node"))
            ),
            Value::Counter(1.0)
        );
        // A made-up method is `other`, not its own series.
        assert_eq!(
            value(
                &s,
                "weft_controller_http_requests_total",
                Some(("method", "other"))
            ),
            Value::Counter(1.0)
        );
        assert!(!text.contains("BREW"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }
}
