//! Usage accounting (issue 16, part 4): what an agent uploads
//! (`POST /v1/node/usage`) and what the controller answers
//! (`GET /v1/admin/usage?by=node|peer|port|user&since=<ms>`).
//!
//! An upload carries **monotonic counters**, not deltas:
//! - per (peer, service port, protocol), bytes, packets and flows the data plane
//!   counted in its connection table since the agent started
//!   ([`UsageUpload::run_id`] names that run: a new run starts from zero);
//! - the byte counters per user that a sidecar (a proxy that counts its own
//!   users) wrote to `weftd --usage-file`, with the sidecar's own uptime
//!   ([`SidecarUsage::core_uptime_sec`]): a smaller uptime is a sidecar restart.
//!
//! The controller does the diffing: a counter that goes down, a new run (flow
//! series) or a smaller `core_uptime_sec` (user series) is a reset, and the new
//! value counts from zero; a delta is never negative. An agent with more series
//! than fit one upload ([`MAX_UPLOAD_SERIES`]) sends several uploads with the
//! same run and time: each series stands alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeKey;

/// How often an agent uploads usage, in milliseconds (30 s).
pub const USAGE_INTERVAL_MS: u64 = 30_000;

/// Series (flow buckets plus users) in one upload at most. A full upload with
/// every number at its largest and the longest user ids is about 40 KiB of
/// JSON (tested), inside the controller's 64 KiB body limit.
pub const MAX_UPLOAD_SERIES: usize = 200;

/// The longest user id (bytes of UTF-8).
pub const MAX_USER_ID: usize = 128;

/// The most users a usage file may name.
pub const MAX_USERS: usize = 10_000;

/// The largest usage file the agent reads (1 MiB).
pub const MAX_USAGE_FILE: u64 = 1024 * 1024;

/// The length of a run id (hex digits).
pub const RUN_ID_LEN: usize = 32;

/// Bytes, packets and flows of one series (or one result row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounters {
    /// Bytes this node sent (IP packet lengths).
    pub tx_bytes: u64,
    /// Bytes this node received.
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Flows opened.
    pub flows: u64,
}

impl UsageCounters {
    /// Adds `o` (saturating).
    pub fn add(&mut self, o: &UsageCounters) {
        self.tx_bytes = self.tx_bytes.saturating_add(o.tx_bytes);
        self.rx_bytes = self.rx_bytes.saturating_add(o.rx_bytes);
        self.tx_packets = self.tx_packets.saturating_add(o.tx_packets);
        self.rx_packets = self.rx_packets.saturating_add(o.rx_packets);
        self.flows = self.flows.saturating_add(o.flows);
    }

    /// `self - earlier`, or `None` when any counter went down (a reset).
    pub fn since(&self, earlier: &UsageCounters) -> Option<UsageCounters> {
        Some(UsageCounters {
            tx_bytes: self.tx_bytes.checked_sub(earlier.tx_bytes)?,
            rx_bytes: self.rx_bytes.checked_sub(earlier.rx_bytes)?,
            tx_packets: self.tx_packets.checked_sub(earlier.tx_packets)?,
            rx_packets: self.rx_packets.checked_sub(earlier.rx_packets)?,
            flows: self.flows.checked_sub(earlier.flows)?,
        })
    }

    /// Whether every counter is zero.
    pub fn is_zero(&self) -> bool {
        *self == UsageCounters::default()
    }
}

/// One flow series: traffic with one peer to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowUsage {
    /// The peer (`None`: a peer the data plane could not number, or the
    /// overflow bucket when `other` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<NodeKey>,
    /// The destination port of the flows' opening packets (0: ICMP, other
    /// protocols).
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, …).
    pub proto: u8,
    /// The overflow bucket: flows opened while the data plane's bucket table
    /// was full (peer, port and proto are then 0/none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub other: bool,
    /// Counters since the agent run started.
    #[serde(flatten)]
    pub counters: UsageCounters,
}

/// What a sidecar's usage file said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarUsage {
    /// The sidecar's uptime in seconds when it wrote the file.
    pub core_uptime_sec: u64,
    /// Bytes per user id since the sidecar started (all users in the file, or
    /// this upload's share of them).
    pub user_bytes: BTreeMap<String, u64>,
}

/// `POST /v1/node/usage` body. The node is the authenticated caller, never a
/// field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageUpload {
    /// Random id of this agent run ([`RUN_ID_LEN`] lowercase hex digits).
    pub run_id: String,
    /// When the run started (Unix milliseconds).
    pub started_at_ms: u64,
    /// When the counters were read (Unix milliseconds).
    pub at_ms: u64,
    /// Flow series.
    #[serde(default)]
    pub flows: Vec<FlowUsage>,
    /// The sidecar's user counters, when `--usage-file` is set and the file
    /// was valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarUsage>,
}

impl UsageUpload {
    /// The series it carries (flows plus users).
    pub fn series(&self) -> usize {
        self.flows.len() + self.sidecar.as_ref().map_or(0, |s| s.user_bytes.len())
    }

    /// Checks the bounds and shapes the controller enforces; the reason on
    /// failure.
    pub fn validate(&self) -> Result<(), String> {
        if self.run_id.len() != RUN_ID_LEN
            || !self
                .run_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!("run_id must be {RUN_ID_LEN} lowercase hex digits"));
        }
        if self.series() > MAX_UPLOAD_SERIES {
            return Err(format!(
                "at most {MAX_UPLOAD_SERIES} series per upload (flows plus users)"
            ));
        }
        if let Some(f) = self.flows.iter().find(|f| f.other && f.peer.is_some()) {
            return Err(format!(
                "the overflow bucket names a peer ({})",
                f.peer.map(|k| k.to_string()).unwrap_or_default()
            ));
        }
        if let Some(s) = &self.sidecar {
            for user in s.user_bytes.keys() {
                check_user_id(user)?;
            }
        }
        Ok(())
    }
}

/// Whether `id` is an acceptable user id: 1 to [`MAX_USER_ID`] bytes, no
/// control characters.
pub fn check_user_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("a user id is empty".into());
    }
    if id.len() > MAX_USER_ID {
        return Err(format!("a user id is longer than {MAX_USER_ID} bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("user id {id:?} has a control character"));
    }
    Ok(())
}

/// How `GET /v1/admin/usage` groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageBy {
    /// One row per reporting node (flow traffic).
    Node,
    /// One row per (node, peer).
    Peer,
    /// One row per (protocol, service port), fleet-wide.
    Port,
    /// One row per sidecar user id, fleet-wide (bytes from usage files).
    User,
}

impl UsageBy {
    /// The query-string and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageBy::Node => "node",
            UsageBy::Peer => "peer",
            UsageBy::Port => "port",
            UsageBy::User => "user",
        }
    }

    /// Parses [`UsageBy::as_str`].
    pub fn parse(s: &str) -> Option<UsageBy> {
        match s {
            "node" => Some(UsageBy::Node),
            "peer" => Some(UsageBy::Peer),
            "port" => Some(UsageBy::Port),
            "user" => Some(UsageBy::User),
            _ => None,
        }
    }
}

/// One row of a usage answer: the fields of its grouping are set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The reporting node's name (by node, by peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The peer's name, its key when it is no longer a node, `(other)` for the
    /// overflow bucket, `(unknown)` for an unnumbered peer (by peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Protocol name (`tcp`, `udp`, `icmp`, …, or the number) (by port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Service port (by port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Sidecar user id (by user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Counters over the window (by user: the user's bytes are in `bytes`,
    /// the rest zero).
    #[serde(flatten)]
    pub counters: UsageCounters,
    /// The sidecar's bytes for this user (by user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// `GET /v1/admin/usage` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// The grouping.
    pub by: UsageBy,
    /// Start of the window (Unix milliseconds), rounded down to a bucket.
    pub since_ms: u64,
    /// The rollup's resolution (milliseconds per bucket).
    pub bucket_ms: u64,
    /// Rows, largest total bytes first.
    pub rows: Vec<UsageRow>,
}

/// The controller's rollup resolution: one-hour buckets.
pub const USAGE_BUCKET_MS: u64 = 3_600_000;

/// A protocol number's name as usage rows show it.
pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(flows: usize, users: usize, user_len: usize) -> UsageUpload {
        let max = UsageCounters {
            tx_bytes: u64::MAX,
            rx_bytes: u64::MAX,
            tx_packets: u64::MAX,
            rx_packets: u64::MAX,
            flows: u64::MAX,
        };
        UsageUpload {
            run_id: "0123456789abcdef0123456789abcdef".into(),
            started_at_ms: u64::MAX,
            at_ms: u64::MAX,
            flows: (0..flows)
                .map(|i| FlowUsage {
                    peer: Some(NodeKey::from_bytes([i as u8; 32])),
                    port: u16::MAX,
                    proto: u8::MAX,
                    other: false,
                    counters: max,
                })
                .collect(),
            sidecar: (users > 0).then(|| SidecarUsage {
                core_uptime_sec: u64::MAX,
                user_bytes: (0..users)
                    .map(|i| (format!("{i:0>user_len$}"), u64::MAX))
                    .collect(),
            }),
        }
    }

    #[test]
    fn a_full_upload_fits_the_controllers_body_limit() {
        for (flows, users) in [(MAX_UPLOAD_SERIES, 0), (0, MAX_UPLOAD_SERIES), (100, 100)] {
            let u = upload(flows, users, MAX_USER_ID);
            assert_eq!(u.validate(), Ok(()));
            let n = serde_json::to_vec(&u).unwrap().len();
            assert!(n < 60 * 1024, "{flows} flows, {users} users: {n} bytes");
        }
        assert!(upload(MAX_UPLOAD_SERIES, 1, 4).validate().is_err());
    }

    #[test]
    fn validation_refuses_bad_run_ids_users_and_a_named_overflow_bucket() {
        let mut u = upload(1, 1, 4);
        u.run_id = "XYZ".into();
        assert!(u.validate().unwrap_err().contains("run_id"));
        let mut u = upload(1, 0, 4);
        u.flows[0].other = true;
        assert!(u.validate().unwrap_err().contains("overflow"));
        for bad in ["", "  ", "a\nb"] {
            let mut u = upload(0, 0, 4);
            u.sidecar = Some(SidecarUsage {
                core_uptime_sec: 1,
                user_bytes: [(bad.to_string(), 1)].into(),
            });
            assert!(u.validate().is_err(), "{bad:?}");
        }
        assert!(check_user_id(&"a".repeat(MAX_USER_ID + 1)).is_err());
    }

    #[test]
    fn counters_subtract_only_forward() {
        let a = UsageCounters {
            tx_bytes: 10,
            rx_bytes: 5,
            ..Default::default()
        };
        let b = UsageCounters {
            tx_bytes: 15,
            rx_bytes: 5,
            flows: 1,
            ..Default::default()
        };
        assert_eq!(b.since(&a).map(|d| (d.tx_bytes, d.flows)), Some((5, 1)));
        assert_eq!(a.since(&b), None);
    }

    #[test]
    fn json_shape_is_flat_and_omits_defaults() {
        let f = FlowUsage {
            peer: None,
            port: 5201,
            proto: 6,
            other: false,
            counters: UsageCounters {
                tx_bytes: 1,
                ..Default::default()
            },
        };
        let v = serde_json::to_value(f).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"port": 5201, "proto": 6, "tx_bytes": 1, "rx_bytes": 0,
                "tx_packets": 0, "rx_packets": 0, "flows": 0})
        );
        assert_eq!(UsageBy::parse("peer"), Some(UsageBy::Peer));
        assert_eq!(UsageBy::parse("x"), None);
    }
}
