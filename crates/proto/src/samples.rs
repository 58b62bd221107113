//! Forwarded metrics (issue 16, part 3): the compact sample an agent takes every
//! [`SAMPLE_INTERVAL_MS`], the upload that carries a batch of them
//! (`POST /v1/node/metrics`), and the per-node history the controller serves
//! (`GET /v1/admin/nodes/{node}/metrics?since=`).
//!
//! A sample holds interval totals (what happened since the previous sample of
//! the same agent run), not counters: a peer whose counters went backwards (it
//! was removed and added again) counts from zero. `agent_start_ms` and `seq`
//! (1, 2, 3, … per agent run) make restarts and gaps visible: the controller
//! counts a sequence number it never received as missing and ignores one it
//! already has (a retried upload).
//!
//! Versioned: [`Sample::v`] is [`SAMPLE_VERSION`]; a controller refuses an
//! upload with a version it does not know (`400 unsupported_sample_version`).

use serde::{Deserialize, Serialize};

use crate::NodeKey;

/// The sample format of this build.
pub const SAMPLE_VERSION: u32 = 1;

/// How often an agent takes a sample, in milliseconds (30 s).
pub const SAMPLE_INTERVAL_MS: u64 = 30_000;

/// Samples per upload at most (half an hour of them). A full upload of samples
/// with every field at its largest is about 31 KiB of JSON (tested under
/// 40 KiB), inside the controller's 64 KiB body limit.
pub const MAX_UPLOAD_SAMPLES: usize = 60;

/// The longest interval one sample may cover (one hour): a longer one is a
/// clock jump, not a measurement.
pub const MAX_SAMPLE_INTERVAL_MS: u64 = 3_600_000;

/// The largest RTT a sample may carry (ten minutes, in microseconds).
pub const MAX_RTT_US: u64 = 600_000_000;

/// The most peers a sample may count (direct plus relayed).
pub const MAX_PEERS: u32 = 1_000_000;

/// The resolution of the controller's history: one-minute buckets.
pub const HISTORY_RESOLUTION_MS: u64 = 60_000;

/// Buckets the controller keeps per node: 24 h at one-minute resolution.
pub const HISTORY_BUCKETS: usize = 1440;

/// One sample: what the data plane did during `interval_ms` before `at_ms`.
/// Fields a later build adds within the same version are optional, so unknown
/// fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Format version ([`SAMPLE_VERSION`]).
    pub v: u32,
    /// When it was taken (Unix milliseconds).
    pub at_ms: u64,
    /// 1 for the first sample of an agent run, then one more per sample.
    pub seq: u64,
    /// When this agent run started (Unix milliseconds): a new value is a restart.
    pub agent_start_ms: u64,
    /// The time the totals cover, in milliseconds.
    pub interval_ms: u64,
    /// Plaintext bytes received from all peers.
    pub rx_bytes: u64,
    /// Plaintext bytes sent to all peers.
    pub tx_bytes: u64,
    /// Packets received from all peers (`None`: this agent does not count them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_packets: Option<u64>,
    /// Packets sent to all peers (`None`: not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_packets: Option<u64>,
    /// Packets dropped, for every reason.
    pub drops: u64,
    /// Of those, refused by the access policy (no rule, a deny rule, no policy).
    pub drops_policy: u64,
    /// Of those, failing authentication (bad MAC or tag, replay, unknown
    /// session or peer, spoofed inner source).
    pub drops_auth: u64,
    /// Of those, with nowhere to go (no route, no path to the peer).
    pub drops_route: u64,
    /// Peers reached directly when the sample was taken.
    pub peers_direct: u32,
    /// Peers reached through the relay when the sample was taken.
    pub peers_relayed: u32,
    /// Median RTT over the direct peers with a measurement, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_median_us: Option<u64>,
    /// Largest RTT over the direct peers with a measurement, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_max_us: Option<u64>,
    /// How long the last upload to the controller took, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_rtt_us: Option<u64>,
}

/// Why a sample was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// `v` is not [`SAMPLE_VERSION`].
    #[error("sample version {0} is not supported (this build reads version {SAMPLE_VERSION})")]
    Version(u32),
    /// A field is out of its range.
    #[error("sample {seq}: {what}")]
    Invalid {
        /// The sample's sequence number.
        seq: u64,
        /// What is wrong.
        what: &'static str,
    },
}

impl Sample {
    /// Checks the ranges the format promises (the version first).
    pub fn validate(&self) -> Result<(), SampleError> {
        if self.v != SAMPLE_VERSION {
            return Err(SampleError::Version(self.v));
        }
        let bad = |what| {
            Err(SampleError::Invalid {
                seq: self.seq,
                what,
            })
        };
        if self.seq == 0 {
            return bad("seq starts at 1");
        }
        if self.at_ms == 0 || self.agent_start_ms == 0 {
            return bad("at_ms and agent_start_ms must be set");
        }
        if self.agent_start_ms > self.at_ms {
            return bad("agent_start_ms is after at_ms");
        }
        if self.interval_ms > MAX_SAMPLE_INTERVAL_MS {
            return bad("interval_ms is longer than an hour");
        }
        if self.drops_policy > self.drops
            || self.drops_auth > self.drops
            || self.drops_route > self.drops
        {
            return bad("a drop subtotal exceeds the total");
        }
        if self.peers_direct.saturating_add(self.peers_relayed) > MAX_PEERS {
            return bad("too many peers");
        }
        let rtts = [self.rtt_median_us, self.rtt_max_us, self.control_rtt_us];
        if rtts.iter().flatten().any(|r| *r > MAX_RTT_US) {
            return bad("an RTT is longer than ten minutes");
        }
        if let (Some(m), Some(x)) = (self.rtt_median_us, self.rtt_max_us)
            && m > x
        {
            return bad("rtt_median_us exceeds rtt_max_us");
        }
        Ok(())
    }
}

/// `POST /v1/node/metrics`: samples in the order they were taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsUpload {
    /// API version (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
    /// 1 to [`MAX_UPLOAD_SAMPLES`] samples, oldest first.
    pub samples: Vec<Sample>,
    /// Samples the agent's outbox dropped (full) since it was created: a total,
    /// not a delta.
    #[serde(default)]
    pub outbox_dropped: u64,
}

/// The answer to an upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsAccepted {
    /// Samples added to the history.
    pub accepted: u32,
    /// Samples already received (a retried upload), ignored.
    pub duplicates: u32,
    /// Samples outside the history's window (older than 24 h, or more than
    /// five minutes ahead of the controller's clock), ignored.
    pub out_of_window: u32,
}

/// One minute of a node's history: the sum (traffic, drops) or the worst
/// (RTT) of the samples taken in it; peers as the last sample saw them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsPoint {
    /// Start of the minute (Unix milliseconds).
    pub at_ms: u64,
    /// Samples in this minute.
    pub samples: u32,
    /// The time those samples cover, in milliseconds (rates are totals over this).
    pub interval_ms: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received (`None`: not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_packets: Option<u64>,
    /// Packets sent (`None`: not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_packets: Option<u64>,
    /// Drops, all reasons.
    pub drops: u64,
    /// Policy drops.
    pub drops_policy: u64,
    /// Authentication drops.
    pub drops_auth: u64,
    /// No-route drops.
    pub drops_route: u64,
    /// Direct peers (last sample of the minute).
    pub peers_direct: u32,
    /// Relayed peers (last sample of the minute).
    pub peers_relayed: u32,
    /// The largest median peer RTT of the minute, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_median_us: Option<u64>,
    /// The largest peer RTT of the minute, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_max_us: Option<u64>,
    /// The largest control-plane RTT of the minute, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_rtt_us: Option<u64>,
}

/// `GET /v1/admin/nodes/{node}/metrics?since=`: a node's forwarded history,
/// kept in the controller's memory (a controller restart starts it afresh).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// The node.
    pub node_key: NodeKey,
    /// Its name.
    pub name: String,
    /// Width of a point ([`HISTORY_RESOLUTION_MS`]).
    pub resolution_ms: u64,
    /// How far back the history reaches at most (24 h).
    pub window_ms: u64,
    /// Points at or after `since`, oldest first; minutes without samples are absent.
    pub points: Vec<MetricsPoint>,
    /// The agent run the last sample came from (Unix ms; `None`: no sample yet).
    #[serde(default)]
    pub agent_start_ms: Option<u64>,
    /// The last sequence number received from that run.
    #[serde(default)]
    pub last_seq: Option<u64>,
    /// Samples received since the controller started (all runs).
    pub received: u64,
    /// Sequence numbers skipped within an agent run (samples lost on the way).
    pub missing: u64,
    /// Samples received twice (ignored).
    pub duplicates: u64,
    /// Samples outside the window (ignored).
    pub out_of_window: u64,
    /// The agent's count of samples its outbox dropped (as last reported).
    pub outbox_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64) -> Sample {
        Sample {
            v: SAMPLE_VERSION,
            at_ms: 1_800_000_000_000,
            seq,
            agent_start_ms: 1_799_999_000_000,
            interval_ms: SAMPLE_INTERVAL_MS,
            ..Sample::default()
        }
    }

    #[test]
    fn samples_are_checked() {
        assert_eq!(sample(1).validate(), Ok(()));
        let mut s = sample(1);
        s.v = 2;
        assert_eq!(s.validate(), Err(SampleError::Version(2)));
        for (change, why) in [
            (
                (|s: &mut Sample| s.seq = 0) as fn(&mut Sample),
                "seq starts",
            ),
            (|s| s.at_ms = 0, "must be set"),
            (|s| s.agent_start_ms = s.at_ms + 1, "after at_ms"),
            (|s| s.interval_ms = MAX_SAMPLE_INTERVAL_MS + 1, "hour"),
            (|s| s.drops_policy = 1, "subtotal"),
            (|s| s.peers_direct = MAX_PEERS, "ok"),
            (
                |s| {
                    s.peers_direct = MAX_PEERS;
                    s.peers_relayed = 1;
                },
                "peers",
            ),
            (|s| s.rtt_max_us = Some(MAX_RTT_US + 1), "ten minutes"),
            (
                |s| {
                    s.rtt_median_us = Some(5);
                    s.rtt_max_us = Some(4);
                },
                "exceeds",
            ),
        ] {
            let mut s = sample(3);
            change(&mut s);
            match s.validate() {
                Ok(()) => assert_eq!(why, "ok"),
                Err(e) => assert!(e.to_string().contains(why), "{e} vs {why}"),
            }
        }
    }

    #[test]
    fn a_full_upload_fits_the_controllers_body_limit() {
        let big = Sample {
            v: SAMPLE_VERSION,
            at_ms: u64::MAX,
            seq: u64::MAX,
            agent_start_ms: u64::MAX,
            interval_ms: MAX_SAMPLE_INTERVAL_MS,
            rx_bytes: u64::MAX,
            tx_bytes: u64::MAX,
            rx_packets: Some(u64::MAX),
            tx_packets: Some(u64::MAX),
            drops: u64::MAX,
            drops_policy: u64::MAX,
            drops_auth: u64::MAX,
            drops_route: u64::MAX,
            peers_direct: u32::MAX,
            peers_relayed: u32::MAX,
            rtt_median_us: Some(MAX_RTT_US),
            rtt_max_us: Some(MAX_RTT_US),
            control_rtt_us: Some(MAX_RTT_US),
        };
        let up = MetricsUpload {
            api_version: Some(crate::api::API_VERSION),
            samples: vec![big; MAX_UPLOAD_SAMPLES],
            outbox_dropped: u64::MAX,
        };
        let len = serde_json::to_vec(&up)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        assert!(len < 40 * 1024, "{len}");
    }
}
