//! Anomaly events: what an agent's detector raises, what it uploads with
//! `POST /v1/node/events`, what `weft events` and `GET /v1/admin/events` show,
//! and the per-network thresholds the controller carries to agents in the map.
//!
//! Every event is explainable on its own: which signal ([`AnomalyKind`]), the
//! peer and target when there is one, the value observed in the window, the
//! baseline it broke ([`Baseline`]: an EWMA mean and standard deviation with
//! the z-score, or a fixed threshold with the ratio) and one sentence a person
//! reads.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::NodeKey;

/// Most events in one upload.
pub const MAX_EVENTS_PER_UPLOAD: usize = 64;
/// Longest summary sentence, in bytes.
pub const MAX_SUMMARY_LEN: usize = 512;
/// Most detail entries per event.
pub const MAX_DETAILS: usize = 16;
/// Longest detail key or value, and longest peer name or target, in bytes.
pub const MAX_FIELD_LEN: usize = 256;
/// Most events `GET /v1/admin/events` returns at once.
pub const MAX_EVENTS_LISTED: u32 = 1000;

/// Which signal an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// Unusual outbound volume to one peer (possible exfiltration).
    OutboundVolume,
    /// Many new connection attempts the policy refused (a scan), in either
    /// direction.
    Scan,
    /// A sudden spike in drops of one reason (policy, firewall, data plane).
    DropSpike,
    /// The controller's answer to the agent's report took unusually long.
    ControlLatency,
    /// What the node runs (weftd's binary, a hook) differs from what the
    /// admin expects or approved. Raised by the controller, not the agent
    /// (see [`crate::integrity`]).
    IntegrityMismatch,
    /// A host firewall change cut the node off its controller and the agent
    /// restored the previous ruleset (see [`crate::hostfw`]).
    FirewallRollback,
    /// A spike of lookups the resolver answered from the controller's DNS
    /// blocklist (see [`crate::dnsblock`]): a program calling listed domains.
    DnsBlocked,
}

impl AnomalyKind {
    /// All kinds, in display order.
    pub const ALL: [AnomalyKind; 7] = [
        AnomalyKind::OutboundVolume,
        AnomalyKind::Scan,
        AnomalyKind::DropSpike,
        AnomalyKind::ControlLatency,
        AnomalyKind::IntegrityMismatch,
        AnomalyKind::FirewallRollback,
        AnomalyKind::DnsBlocked,
    ];

    /// A stable snake_case name (JSON, metrics label, CLI).
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::OutboundVolume => "outbound_volume",
            AnomalyKind::Scan => "scan",
            AnomalyKind::DropSpike => "drop_spike",
            AnomalyKind::ControlLatency => "control_latency",
            AnomalyKind::IntegrityMismatch => "integrity_mismatch",
            AnomalyKind::FirewallRollback => "firewall_rollback",
            AnomalyKind::DnsBlocked => "dns_blocked",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The baseline an observation broke.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Baseline {
    /// An exponentially weighted moving average of earlier windows.
    Ewma {
        /// Its mean.
        mean: f64,
        /// Its standard deviation (after the floor the detector applies).
        stddev: f64,
        /// How many standard deviations above the mean the observation is.
        zscore: f64,
    },
    /// A fixed threshold.
    Threshold {
        /// The threshold.
        threshold: f64,
        /// Observation divided by threshold.
        ratio: f64,
    },
    /// A value the admin expects or approved: any difference is the anomaly
    /// (no statistics; `observed` counts what differs).
    Expected,
}

/// One anomaly, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyEvent {
    /// Unique per node (milliseconds of `at_ms` times 1000 plus a counter):
    /// the controller ignores an event it already holds, so a retried upload
    /// does not duplicate it.
    pub id: u64,
    /// When it was raised (Unix milliseconds).
    pub at_ms: u64,
    /// The signal.
    pub kind: AnomalyKind,
    /// The peer on the other end, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// That peer's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_key: Option<NodeKey>,
    /// What was targeted (a scan's target node and addresses, the peer an
    /// outbound volume went to, the controller), in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The value observed in the window.
    pub observed: f64,
    /// Its unit (`bytes`, `distinct ports`, `drops`, `ms`).
    pub unit: String,
    /// The baseline it broke.
    pub baseline: Baseline,
    /// The window the observation covers, in seconds.
    pub window_secs: u32,
    /// Further evidence (`direction`, `attempts`, `ports`, `reason`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
    /// One sentence: what happened and by how much.
    pub summary: String,
}

/// Why an uploaded event is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A number is not finite or is negative.
    #[error("event {id}: {field} is not a finite, non-negative number")]
    Number {
        /// The event.
        id: u64,
        /// The field.
        field: &'static str,
    },
    /// A text field is empty, too long, or holds control characters.
    #[error("event {id}: {field} {why}")]
    Text {
        /// The event.
        id: u64,
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// Too many detail entries.
    #[error("event {id}: more than {MAX_DETAILS} details")]
    TooManyDetails {
        /// The event.
        id: u64,
    },
}

fn check_text(
    id: u64,
    field: &'static str,
    s: &str,
    max: usize,
    empty_ok: bool,
) -> Result<(), EventError> {
    let why = if s.len() > max {
        Some("is too long")
    } else if s.is_empty() && !empty_ok {
        Some("is empty")
    } else if crate::text::find_spoofing_char(s).is_some() {
        Some("holds control, bidirectional or zero-width characters")
    } else {
        None
    };
    match why {
        Some(why) => Err(EventError::Text { id, field, why }),
        None => Ok(()),
    }
}

impl AnomalyEvent {
    /// Checks what the controller stores: finite numbers, bounded text
    /// without characters that spoof a terminal.
    pub fn validate(&self) -> Result<(), EventError> {
        let id = self.id;
        let numbers: Vec<(&'static str, f64)> = match self.baseline {
            Baseline::Ewma {
                mean,
                stddev,
                zscore,
            } => vec![("mean", mean), ("stddev", stddev), ("zscore", zscore.abs())],
            Baseline::Threshold { threshold, ratio } => {
                vec![("threshold", threshold), ("ratio", ratio)]
            }
            Baseline::Expected => Vec::new(),
        };
        for (field, v) in [("observed", self.observed)].into_iter().chain(numbers) {
            if !v.is_finite() || v < 0.0 {
                return Err(EventError::Number { id, field });
            }
        }
        check_text(id, "summary", &self.summary, MAX_SUMMARY_LEN, false)?;
        check_text(id, "unit", &self.unit, MAX_FIELD_LEN, false)?;
        if let Some(p) = &self.peer {
            check_text(id, "peer", p, MAX_FIELD_LEN, false)?;
        }
        if let Some(t) = &self.target {
            check_text(id, "target", t, MAX_FIELD_LEN, false)?;
        }
        if self.details.len() > MAX_DETAILS {
            return Err(EventError::TooManyDetails { id });
        }
        for (k, v) in &self.details {
            check_text(id, "a detail key", k, MAX_FIELD_LEN, false)?;
            check_text(id, "a detail value", v, MAX_FIELD_LEN, true)?;
        }
        Ok(())
    }
}

/// `POST /v1/node/events`: events the agent raised, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEventsRequest {
    /// [`crate::api::API_VERSION`], if the client says.
    #[serde(default)]
    pub api_version: Option<u32>,
    /// At most [`MAX_EVENTS_PER_UPLOAD`].
    pub events: Vec<AnomalyEvent>,
}

/// One event in the controller's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEntry {
    /// The log's sequence number.
    pub seq: u64,
    /// The node that raised it (its name when it was received).
    pub node: String,
    /// Its key.
    pub node_key: NodeKey,
    /// When the controller received it (Unix milliseconds).
    pub received_at_ms: u64,
    /// The event.
    pub event: AnomalyEvent,
}

/// `GET /v1/admin/events` and the agent's `weft events`: newest last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    /// The events.
    pub events: Vec<EventEntry>,
}

/// Anomaly thresholds of one network, set by the admin; a field left unset
/// takes the agent's default (given with each field). Carried to agents in the map
/// ([`crate::netmap::NetworkView::anomaly`]); an agent in several networks
/// takes, field by field, the most sensitive (lowest) value any of them sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyThresholds {
    /// A scan: distinct refused destination ports to or from one peer in a
    /// window (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_ports: Option<u32>,
    /// A scan: distinct refused destination addresses to or from one peer in
    /// a window (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_addrs: Option<u32>,
    /// The window the agent counts in, in seconds (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u32>,
    /// How many standard deviations above its baseline a value must be (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zscore: Option<u32>,
    /// Outbound volume to one peer in a window below this many MiB never
    /// alarms (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_min_mib: Option<u32>,
    /// Drops of one reason in a window below this never alarm (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drops_min: Option<u32>,
    /// A controller round trip below this many milliseconds never alarms
    /// (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_min_ms: Option<u32>,
    /// Seconds of baseline a signal needs before it may alarm (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_secs: Option<u32>,
    /// After an event, the same signal for the same peer stays quiet this
    /// many seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_secs: Option<u32>,
}

impl AnomalyThresholds {
    /// Whether no field is set (every default applies).
    pub fn is_empty(&self) -> bool {
        *self == AnomalyThresholds::default()
    }

    /// Field by field, the lower of the two values that are set.
    pub fn most_sensitive(&self, other: &AnomalyThresholds) -> AnomalyThresholds {
        let min = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        AnomalyThresholds {
            scan_ports: min(self.scan_ports, other.scan_ports),
            scan_addrs: min(self.scan_addrs, other.scan_addrs),
            window_secs: min(self.window_secs, other.window_secs),
            zscore: min(self.zscore, other.zscore),
            volume_min_mib: min(self.volume_min_mib, other.volume_min_mib),
            drops_min: min(self.drops_min, other.drops_min),
            latency_min_ms: min(self.latency_min_ms, other.latency_min_ms),
            warmup_secs: min(self.warmup_secs, other.warmup_secs),
            cooldown_secs: min(self.cooldown_secs, other.cooldown_secs),
        }
    }

    /// Checks the ranges the controller accepts; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(&str, Option<u32>, u32, u32); 9] = [
            ("scan_ports", self.scan_ports, 2, 65_535),
            ("scan_addrs", self.scan_addrs, 2, 65_535),
            ("window_secs", self.window_secs, 1, 3600),
            ("zscore", self.zscore, 1, 1000),
            ("volume_min_mib", self.volume_min_mib, 1, 1 << 20),
            ("drops_min", self.drops_min, 1, u32::MAX),
            ("latency_min_ms", self.latency_min_ms, 1, 600_000),
            ("warmup_secs", self.warmup_secs, 0, 86_400),
            ("cooldown_secs", self.cooldown_secs, 0, 86_400),
        ];
        for (name, v, lo, hi) in checks {
            if let Some(v) = v
                && !(lo..=hi).contains(&v)
            {
                return Err(format!("{name} must be between {lo} and {hi} (got {v})"));
            }
        }
        Ok(())
    }
}

/// `PUT /v1/admin/networks/{name}/anomaly`: replaces the network's thresholds
/// (an empty object: every default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetAnomalyRequest {
    /// [`crate::api::API_VERSION`], if the client says.
    #[serde(default)]
    pub api_version: Option<u32>,
    /// The thresholds.
    pub thresholds: AnomalyThresholds,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AnomalyEvent {
        AnomalyEvent {
            id: 1,
            at_ms: 2,
            kind: AnomalyKind::Scan,
            peer: Some("b".into()),
            peer_key: None,
            target: Some("b (100.64.0.3)".into()),
            observed: 40.0,
            unit: "distinct ports".into(),
            baseline: Baseline::Threshold {
                threshold: 20.0,
                ratio: 2.0,
            },
            window_secs: 10,
            details: [("direction".to_owned(), "egress".to_owned())].into(),
            summary: "a scan".into(),
        }
    }

    #[test]
    fn events_round_trip_and_bad_ones_are_named() {
        let e = event();
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""kind":"scan""#), "{json}");
        assert!(json.contains(r#""type":"threshold""#), "{json}");
        assert_eq!(serde_json::from_str::<AnomalyEvent>(&json).unwrap(), e);
        assert_eq!(e.validate(), Ok(()));
        let nan = AnomalyEvent {
            observed: f64::NAN,
            ..event()
        };
        assert!(matches!(
            nan.validate(),
            Err(EventError::Number {
                field: "observed",
                ..
            })
        ));
        let spoof = AnomalyEvent {
            summary: "ok\u{202e}gnp".into(),
            ..event()
        };
        assert!(matches!(spoof.validate(), Err(EventError::Text { .. })));
        let long = AnomalyEvent {
            summary: "x".repeat(MAX_SUMMARY_LEN + 1),
            ..event()
        };
        assert!(long.validate().is_err());
        let mut many = event();
        for i in 0..=MAX_DETAILS {
            many.details.insert(format!("k{i}"), String::new());
        }
        assert_eq!(many.validate(), Err(EventError::TooManyDetails { id: 1 }));
        assert!(serde_json::from_str::<AnomalyEvent>(r#"{"id":1,"evil":2}"#).is_err());
    }

    #[test]
    fn thresholds_merge_to_the_most_sensitive_and_check_ranges() {
        let a = AnomalyThresholds {
            scan_ports: Some(30),
            zscore: Some(4),
            ..Default::default()
        };
        let b = AnomalyThresholds {
            scan_ports: Some(10),
            cooldown_secs: Some(60),
            ..Default::default()
        };
        let m = a.most_sensitive(&b);
        assert_eq!(m.scan_ports, Some(10));
        assert_eq!(m.zscore, Some(4));
        assert_eq!(m.cooldown_secs, Some(60));
        assert!(AnomalyThresholds::default().is_empty());
        assert!(m.validate().is_ok());
        let bad = AnomalyThresholds {
            window_secs: Some(0),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("window_secs"));
        let req: SetAnomalyRequest =
            serde_json::from_str(r#"{"thresholds":{"scan_ports":5}}"#).unwrap();
        assert_eq!(req.thresholds.scan_ports, Some(5));
    }
}
