//! The agent's Prometheus metrics: [`AgentMetrics`], one `prometheus-client`
//! registry shared as an `Arc`, rendered for `weft metrics` (local API) and
//! `weftd --metrics-listen` (`GET /metrics`, [`super::http`]).
//!
//! # What is measured, and where it comes from
//!
//! Everything is named `weft_agent_…`, in base units (bytes, seconds),
//! counters end in `_total`. Most figures are read at scrape time from what
//! already exists, so metrics add nothing to the packet path:
//!
//! | metric | type | labels | source |
//! |---|---|---|---|
//! | `weft_agent_peer_rx_bytes_total`, `…_tx_bytes_total` | counter | `peer` | data plane status (plaintext bytes) |
//! | `weft_agent_peer_rx_packets_total`, `…_tx_packets_total` | counter | `peer` | data plane status (data packets) |
//! | `weft_agent_peer_path` | gauge (1 = current) | `peer`, `path` = `direct`/`relay`/`none` | data plane status |
//! | `weft_agent_peer_handshake_age_seconds` | gauge | `peer` | time since the session's handshake (absent without a session) |
//! | `weft_agent_peer_rtt_seconds` | gauge | `peer` | last discovery ping RTT of the direct path (absent when relayed) |
//! | `weft_agent_peers` | gauge | | peers in the map |
//! | `weft_agent_drops_total` | counter | `reason` (19 fixed values) | the tunnel core's drop counters |
//! | `weft_agent_io_errors_total` | counter | `op` = `tun_read`/`tun_write`/`udp_recv`/`udp_send` | the I/O thread and its workers |
//! | `weft_agent_io_batch_packets` | histogram | `op` (as above) | packets per batch, kept by the I/O thread |
//! | `weft_agent_dataplane_up` | gauge | | 1 while the I/O thread answers |
//! | `weft_agent_reconcile_passes_total`, `…_reconcile_failures_total` | counter | | reconciler passes, failed actions |
//! | `weft_agent_dns_queries_total`, `…_dns_cache_hits_total`, `…_dns_blocked_total`, `…_dns_upstream_failures_total` | counter | | the resolver's [`weft_dns::DnsStats`] |
//! | `weft_agent_dns_upstream_duration_seconds` | histogram | | time to an upstream's answer |
//! | `weft_agent_controller_connected` | gauge | | 1 while the map stream is up |
//! | `weft_agent_map_version` | gauge | | version of the map in force (absent before the first) |
//! | `weft_agent_process_cpu_seconds_total`, `weft_agent_process_resident_memory_bytes` | counter, gauge | | `/proc/self/stat`, `/proc/self/statm` |
//! | `weft_agent_anomaly_events_total` | counter | `kind` | the anomaly detector ([`AgentMetrics::anomaly`]) |
//!
//! # Label cardinality
//!
//! `peer` is the peer's node name, which the controller keeps unique; the
//! series exist only for the peers of the map in force (they are rendered from
//! the data plane's peer list at each scrape, so a peer that leaves the map
//! leaves the metrics too): at most one set per peer the map gives this node.
//! Every other label takes a fixed, small set of values.

use std::fmt::{self, Write as _};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, MetricEncoder,
    NoLabelSet, prometheus_text, text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;
use weft_dns::DnsStats;
use weft_proto::local::LocalResponse;
use weft_proto::netmap::NetworkMap;
use weft_tunnel::DropReason;
use weft_tunnel::path::PathKind;

use super::process;
use crate::ctl::LinkState;
use crate::dataplane::io_stats::{BatchSizes, IoOp};
use crate::dataplane::{Dataplane, DataplaneStatus};

/// The prefix of every metric name.
const PREFIX: &str = "weft_agent";
/// Content type of the OpenMetrics text.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub(crate) const PROMETHEUS_TEXT: &str = prometheus_text::CONTENT_TYPE;

/// The label of the anomaly counter.
type KindLabel = [(&'static str, &'static str); 1];

/// The agent's registry and the families it updates as things happen; the
/// rest is read at scrape time ([`AgentMetrics::render`]).
#[derive(Debug)]
pub(crate) struct AgentMetrics {
    registry: Registry,
    reconcile_passes: Counter,
    reconcile_failures: Counter,
    anomaly_events: Family<KindLabel, Counter>,
}

/// What a scrape reads from the supervisor's state besides the registry.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// `None`: the data plane's I/O thread did not answer.
    pub(crate) dataplane: Option<DataplaneStatus>,
    pub(crate) controller_connected: bool,
    pub(crate) map_version: Option<u64>,
}

impl AgentMetrics {
    /// A registry with every family; `dns` is the resolver's counters handle.
    pub(crate) fn new(dns: DnsStats) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let reconcile_passes = Counter::default();
        let reconcile_failures = Counter::default();
        let anomaly_events = Family::<KindLabel, Counter>::default();
        registry.register(
            "reconcile_passes",
            "Reconciler passes (observe, plan, apply) over interfaces, routes and firewall",
            reconcile_passes.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciler actions that failed (retried with backoff)",
            reconcile_failures.clone(),
        );
        registry.register(
            "anomaly_events",
            "Anomaly events raised by the agent's detector, by kind",
            anomaly_events.clone(),
        );
        registry.register_collector(Box::new(DnsCollector(dns)));
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry,
            reconcile_passes,
            reconcile_failures,
            anomaly_events,
        }
    }

    /// Counts one reconciler pass and the actions of it that failed.
    pub(crate) fn reconciled(&self, failed: usize) {
        self.reconcile_passes.inc();
        self.reconcile_failures.inc_by(failed as u64);
    }

    /// Counts one anomaly event of `kind` (a fixed name per detector rule:
    /// the label's values must stay few).
    pub(crate) fn anomaly(&self, kind: &'static str) {
        self.anomaly_events.get_or_create(&[("kind", kind)]).inc();
    }

    /// The exposition: OpenMetrics text (ends in `# EOF`) or the Prometheus
    /// text format 0.0.4.
    pub(crate) fn render(&self, live: Live, openmetrics: bool) -> Result<String, fmt::Error> {
        let mut scrape = Registry::with_prefix(PREFIX);
        scrape.register_collector(Box::new(LiveCollector(live)));
        let mut out = String::new();
        if openmetrics {
            text::encode_registry(&mut out, &self.registry)?;
            text::encode_registry(&mut out, &scrape)?;
            text::encode_eof(&mut out)?;
        } else {
            prometheus_text::encode(&mut out, &self.registry)?;
            prometheus_text::encode(&mut out, &scrape)?;
        }
        Ok(out)
    }

    /// Answers `LocalRequest::Metrics` (from `weft metrics` or the metrics
    /// listener): reads the data plane, then renders.
    pub(crate) async fn respond(
        &self,
        openmetrics: bool,
        (dp, link, map): (&Dataplane, &watch::Receiver<LinkState>, Option<&NetworkMap>),
    ) -> LocalResponse {
        let controller_connected = link.borrow().connected;
        let live = Live {
            dataplane: dp.counters().await,
            controller_connected,
            map_version: map.map(|m| m.version),
        };
        match self.render(live, openmetrics) {
            Ok(text) => LocalResponse::Metrics {
                content_type: if openmetrics {
                    OPENMETRICS
                } else {
                    PROMETHEUS_TEXT
                }
                .to_owned(),
                text,
            },
            Err(fmt::Error) => crate::api::error("internal", "encoding the metrics failed"),
        }
    }
}

/// One metric without labels.
fn single<'a>(
    enc: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    unit: Option<&'a Unit>,
    ty: MetricType,
) -> Result<MetricEncoder<'a>, fmt::Error> {
    enc.encode_descriptor(name, help, unit, ty)
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: &impl EncodeCounterValue,
) -> fmt::Result {
    single(enc, name, help, unit, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(v, None)
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: &impl EncodeGaugeValue,
) -> fmt::Result {
    single(enc, name, help, unit, MetricType::Gauge)?.encode_gauge(v)
}

/// One family of counters or gauges: a value per label set.
fn family<L: EncodeLabelSet, V: EncodeCounterValue + EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    (name, help, unit, ty): (&str, &str, Option<&Unit>, MetricType),
    rows: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, ty)?;
    for (labels, v) in rows {
        let mut f = m.encode_family(&labels)?;
        if ty == MetricType::Counter {
            f.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        } else {
            f.encode_gauge(&v)?;
        }
    }
    Ok(())
}

fn batch_histogram(h: &BatchSizes) -> (f64, u64, Vec<(f64, u64)>) {
    (h.sum() as f64, h.count(), h.buckets())
}

/// The resolver's counters.
#[derive(Debug)]
struct DnsCollector(DnsStats);

impl Collector for DnsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let s = self.0.snapshot();
        let q = "Queries the overlay resolver handled (overlay names, cache, forwarded)";
        counter(&mut enc, "dns_queries", q, None, &s.queries)?;
        let h = "Queries answered from the resolver's cache";
        counter(&mut enc, "dns_cache_hits", h, None, &s.cache_hits)?;
        let b = "Lookups answered from the controller's DNS blocklist (NXDOMAIN or 0.0.0.0)";
        counter(&mut enc, "dns_blocked", b, None, &s.blocked)?;
        let f = "Forwarded queries no upstream answered (the client got SERVFAIL)";
        counter(
            &mut enc,
            "dns_upstream_failures",
            f,
            None,
            &s.upstream_failures,
        )?;
        let d = "Time forwarded queries took to an upstream's answer (or to giving up)";
        single(
            &mut enc,
            "dns_upstream_duration",
            d,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            s.upstream_seconds,
            s.upstream_count,
            &s.upstream_buckets,
            None,
        )
    }
}

/// CPU time and resident memory of this process, from `/proc/self`.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        if let Some(cpu) = process::cpu_seconds() {
            let h = "CPU time weftd used, user and system (/proc/self/stat)";
            counter(&mut enc, "process_cpu", h, Some(&Unit::Seconds), &cpu)?;
        }
        if let Some(rss) = process::resident_bytes() {
            let h = "Resident memory of weftd (/proc/self/statm)";
            gauge(
                &mut enc,
                "process_resident_memory",
                h,
                Some(&Unit::Bytes),
                &rss,
            )?;
        }
        Ok(())
    }
}

/// What one scrape read from the supervisor and the data plane.
#[derive(Debug)]
struct LiveCollector(Live);

impl Collector for LiveCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let live = &self.0;
        let connected = i64::from(live.controller_connected);
        let h = "1 while the controller's map stream is connected";
        gauge(&mut enc, "controller_connected", h, None, &connected)?;
        if let Some(v) = live.map_version {
            let h = "Version of the network map in force";
            gauge(&mut enc, "map_version", h, None, &v)?;
        }
        let up = i64::from(live.dataplane.is_some());
        let h = "1 while the data plane's I/O thread answers";
        gauge(&mut enc, "dataplane_up", h, None, &up)?;
        if let Some(dp) = &live.dataplane {
            encode_dataplane(&mut enc, dp)?;
        }
        Ok(())
    }
}

fn encode_dataplane(enc: &mut DescriptorEncoder<'_>, dp: &DataplaneStatus) -> fmt::Result {
    let (c, g) = (MetricType::Counter, MetricType::Gauge);
    let drops = DropReason::ALL.map(|r| ([("reason", r.as_str())], dp.drops.get(r)));
    let h = "Packets and datagrams the data plane dropped, by reason";
    family(enc, ("drops", h, None, c), drops)?;
    let errors = dp.io.errors.map(|(op, n)| ([("op", op.as_str())], n));
    let h = "I/O operations that failed (TUN reads and writes, UDP receives and sends)";
    family(enc, ("io_errors", h, None, c), errors)?;
    let b = &dp.io.batches;
    let batches = [
        (IoOp::TunRead, &b.tun_read),
        (IoOp::TunWrite, &b.tun_write),
        (IoOp::UdpRecv, &b.udp_recv),
        (IoOp::UdpSend, &b.udp_send),
    ];
    let h = "Packets per batch: segments per TUN read, packets per TUN write, datagrams per \
             UDP receive call and per batch of UDP sends";
    let mut m = enc.encode_descriptor("io_batch_packets", h, None, MetricType::Histogram)?;
    for (op, sizes) in batches {
        let (sum, count, buckets) = batch_histogram(sizes);
        m.encode_family(&[("op", op.as_str())])?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }

    let peers = peer_rows(dp);
    let h = "Peers of this node in the map in force";
    gauge(enc, "peers", h, None, &(peers.len() as u64))?;
    let label = |p: &PeerRow| [("peer", p.name.clone())];
    let rows = |f: fn(&PeerRow) -> u64| peers.iter().map(move |p| (label(p), f(p)));
    let by = Some(&Unit::Bytes);
    let h = "Plaintext bytes received from the peer";
    family(enc, ("peer_rx", h, by, c), rows(|p| p.rx_bytes))?;
    let h = "Plaintext bytes sent to the peer";
    family(enc, ("peer_tx", h, by, c), rows(|p| p.tx_bytes))?;
    let h = "Data packets received from the peer";
    family(enc, ("peer_rx_packets", h, None, c), rows(|p| p.rx_packets))?;
    let h = "Data packets sent to the peer";
    family(enc, ("peer_tx_packets", h, None, c), rows(|p| p.tx_packets))?;
    let paths = peers.iter().flat_map(|p| {
        ["direct", "relay", "none"].map(|path| {
            let labels = [("peer", p.name.clone()), ("path", path.to_owned())];
            (labels, u64::from(p.path == path))
        })
    });
    let h = "The path packets to the peer take now (1 on the current path)";
    family(enc, ("peer_path", h, None, g), paths)?;
    let secs = Some(&Unit::Seconds);
    let ages = peers
        .iter()
        .filter_map(|p| p.handshake_age.map(|a| (label(p), a)));
    let h = "Time since the current session's handshake with the peer";
    family(enc, ("peer_handshake_age", h, secs, g), ages)?;
    let rtts = peers.iter().filter_map(|p| p.rtt.map(|r| (label(p), r)));
    let h = "Last round-trip time of the direct path to the peer (discovery pings)";
    family(enc, ("peer_rtt", h, secs, g), rtts)
}

/// One peer as metrics show it.
#[derive(Debug)]
struct PeerRow {
    name: String,
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    path: &'static str,
    handshake_age: Option<f64>,
    rtt: Option<f64>,
}

/// The peers, named for the `peer` label. Names are unique on a controller;
/// should two peers ever share one, the later ones get their node key's
/// prefix appended so that no two series collide.
fn peer_rows(dp: &DataplaneStatus) -> Vec<PeerRow> {
    let mut seen = std::collections::BTreeSet::new();
    dp.peers
        .iter()
        .map(|p| {
            let mut name = p.name.clone();
            if !seen.insert(name.clone()) {
                let key = p.key.to_string();
                let _ = write!(name, "~{}", key.get(..8).unwrap_or(&key));
                seen.insert(name.clone());
            }
            let rtt = match p.path {
                PathKind::Direct(addr) => p
                    .candidates
                    .iter()
                    .find(|(a, _)| *a == addr)
                    .and_then(|(_, c)| c.last_rtt)
                    .map(|d| d.as_secs_f64()),
                _ => None,
            };
            PeerRow {
                name,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                rx_packets: p.rx_packets,
                tx_packets: p.tx_packets,
                path: match p.path {
                    PathKind::Direct(_) => "direct",
                    PathKind::Relay => "relay",
                    PathKind::None => "none",
                },
                handshake_age: p.since_handshake.map(|d| d.as_secs_f64()),
                rtt,
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
