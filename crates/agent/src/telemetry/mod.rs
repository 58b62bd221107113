//! Fleet telemetry (issue 16): what the agent knows about its host and its
//! own health, and where that goes.
//!
//! - `facts`: best-effort host inventory (OS, kernel, CPU, memory, weftd's
//!   version and binary hash) read from `/proc`, `/sys` and `/etc/os-release`,
//!   reported at join and when it changes.
//! - `metrics`: the agent's Prometheus registry (`AgentMetrics`, families named
//!   `weft_agent_…`), filled at scrape time from the data plane's status, the
//!   resolver's counters and `/proc/self`; served by `weftd --metrics-listen`
//!   and through the local API (`weft metrics`).
//! - `forward`: a compact sample sent to the controller every 30 s, with a
//!   bounded on-disk outbox while the controller is away.
//! - `usage`: per-peer and per-port bytes and flows from the data plane's own
//!   conntrack, plus the `--usage-file` sidecar bridge.
//! - `anomaly`: a small explainable detector over the agent's own counters;
//!   its events go to the controller, to `weft events` and to metrics.
//!
//! The supervisor holds the running parts as one [`Telemetry`]: started
//! together, told of the controller link and of each map in one call, their
//! failures listed together in `weft status`.

mod anomaly;
pub(crate) mod facts;
mod forward;
pub(crate) mod http;
pub(crate) mod metrics;
mod process;
mod usage;
mod usage_file;

pub(crate) use anomaly::clip_to;

use std::sync::Arc;

use tokio::sync::watch;
use weft_dns::DnsStats;
use weft_proto::local::{FailureStatus, ForwardingStatus, LocalResponse};
use weft_proto::netmap::NetworkMap;

use crate::ctl::LinkState;
use crate::dataplane::Dataplane;
use crate::state::Credential;
use crate::supervisor::AgentConfig;

/// The agent's running telemetry (the supervisor holds it for the agent's
/// life; each part's task stops when it is dropped).
pub(crate) struct Telemetry {
    metrics: Arc<metrics::AgentMetrics>,
    usage: usage::Usage,
    forward: forward::Forwarder,
    anomaly: anomaly::Anomaly,
}

impl Telemetry {
    /// Starts usage uploads, metrics forwarding and the anomaly detector over
    /// the data plane `dp`, and the metrics registry (the resolver's counters
    /// from `dns`). Nothing is sent before [`Telemetry::set_link`].
    pub(crate) fn start(cfg: &AgentConfig, dp: &Dataplane, dns: DnsStats) -> Self {
        let metrics = Arc::new(metrics::AgentMetrics::new(dns.clone()));
        Self {
            usage: usage::Usage::start(cfg, dp),
            anomaly: anomaly::Anomaly::start(cfg, dp.probe(), metrics.clone(), dns),
            forward: forward::Forwarder::start(cfg.state_dir.clone(), dp.probe()),
            metrics,
        }
    }

    /// The controller link: the node's credential and the link's state, or
    /// `None` (not joined, or down: nothing is read for the controller or
    /// sent then).
    pub(crate) fn set_link(&self, link: Option<(&Credential, &watch::Receiver<LinkState>)>) {
        let cred = link.map(|(c, _)| c.clone());
        self.usage.set_link(cred.clone());
        self.forward.set_link(cred);
        self.anomaly
            .set_link(link.map(|(c, state)| (c.clone(), state.clone())));
    }

    /// A new network map (the detector's thresholds and this node's name).
    pub(crate) fn set_map(&self, map: &NetworkMap) {
        self.anomaly.set_map(map);
    }

    /// The Prometheus registry (scrapes, reconciler passes).
    pub(crate) fn metrics(&self) -> &metrics::AgentMetrics {
        &self.metrics
    }

    /// An event the agent raised outside the detector (a host firewall
    /// rollback): in `weft events`, metrics and the upload to the controller.
    pub(crate) fn raise(&self, event: weft_proto::events::AnomalyEvent) {
        self.anomaly.raise(event);
    }

    /// `weft events`.
    pub(crate) fn events(&self) -> LocalResponse {
        self.anomaly.local()
    }

    /// For `weft status`: the metrics forwarding figures.
    pub(crate) fn forwarding(&self) -> ForwardingStatus {
        self.forward.status()
    }

    /// For `weft status`: every telemetry failure (a refused usage file or
    /// upload, a damaged or unwritable metrics or anomaly events outbox).
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        [
            self.usage.failures(),
            self.forward.failures(),
            self.anomaly.failures(),
        ]
        .concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::DataplaneConfig;
    use crate::dns::DnsMode;

    /// What `weft status` lists from telemetry includes the anomaly events
    /// outbox that was found damaged and moved aside, as long as it is there.
    #[tokio::test]
    async fn a_damaged_anomaly_events_outbox_is_among_the_telemetry_failures() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("events-outbox.json"), b"{not json").unwrap();
        let cfg = AgentConfig {
            state_dir: dir.path().to_owned(),
            socket: dir.path().join("weftd.sock"),
            port: 0,
            mint_difficulty: weft_identity::Difficulty::new(0).unwrap(),
            join: None,
            dns: DnsMode::Off,
            dns_resolver: crate::DnsResolverOptions::default(),
            dataplane: DataplaneConfig::default(),
            usage_file: None,
            metrics_listen: None,
            node_api: None,
            tasks: crate::TaskSettings::default(),
            firewall_rollback: std::time::Duration::from_secs(10),
            workload_subnet: crate::WorkloadSubnet::default(),
            ssh_port: None,
        };
        let node = weft_tunnel::Node::new(
            weft_proto::NodeKey::from_bytes([1; 32]),
            [2; 32],
            [3; 32],
            crate::clock::now(),
        );
        let mut dp = Dataplane::start(node, 0, DataplaneConfig::default())
            .await
            .unwrap();
        let telemetry = Telemetry::start(&cfg, &dp, DnsStats::default());
        let aside = crate::outbox::damaged_files_of(dir.path(), "events-outbox.json");
        assert_eq!(aside.len(), 1, "moved aside at start");
        let failures = telemetry.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].area, "telemetry");
        assert_eq!(failures[0].what, aside[0].display().to_string());
        std::fs::remove_file(&aside[0]).unwrap();
        assert!(telemetry.failures().is_empty());
        drop(telemetry);
        dp.shutdown();
    }
}
