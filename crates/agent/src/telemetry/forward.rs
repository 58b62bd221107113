//! Metrics forwarding (issue 16, part 3): every [`SAMPLE_INTERVAL_MS`] the
//! forwarder asks the data plane for its counters, turns the difference from
//! the previous snapshot into a [`Sample`], queues it in the [`Outbox`] and
//! uploads the outbox, oldest first, in batches of at most
//! [`MAX_UPLOAD_SAMPLES`] (`POST /v1/node/metrics`). While the controller is
//! unreachable the outbox keeps the samples on disk (bounded; see
//! [`crate::outbox`]) and the next tick replays them in order.
//!
//! It runs while the node is joined and up (the supervisor hands it the
//! credential with the controller link, and `None` on `weft down`); its
//! sequence numbers count for the whole agent run, so the controller sees a
//! restart (a new `agent_start_ms`) and any gap.
//!
//! A controller that refuses a batch as invalid (a 4xx other than 401, 403,
//! 408 or 429) would refuse it forever: the batch is dropped, logged and counted
//! with the outbox's drops, so one bad sample cannot block the rest.
//!
//! Tests shorten the interval with the environment variable
//! `WEFT_METRICS_FORWARD_INTERVAL_MS` (milliseconds, 100 to 30000; anything
//! else is ignored with a warning).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_proto::NodeKey;
use weft_proto::local::{FailureStatus, ForwardingStatus};
use weft_proto::samples::{
    MAX_RTT_US, MAX_SAMPLE_INTERVAL_MS, MAX_UPLOAD_SAMPLES, MetricsUpload, SAMPLE_INTERVAL_MS,
    SAMPLE_VERSION, Sample,
};
use weft_tunnel::path::PathKind;
use weft_tunnel::{DropCounters, DropReason, PeerStatus};

use crate::clock;
use crate::ctl::{self, TrustSettings};
use crate::dataplane::Probe;
use crate::outbox::{self, Kind, MAX_ENTRIES, Outbox, Tracked};
use crate::state::Credential;

/// The environment variable that shortens the interval (tests).
pub(crate) const INTERVAL_ENV: &str = "WEFT_METRICS_FORWARD_INTERVAL_MS";
/// The longest an upload may take before it counts as failed.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How the outbox is named in log lines and in `weft status`.
const OUTBOX_KIND: Kind = Kind {
    file: outbox::FILE,
    what: "metrics",
    sent: "forwarded",
    area: "telemetry",
    status: "metrics outbox",
};

/// Drop reasons the sample counts as refused by the policy.
const POLICY: [DropReason; 3] = [
    DropReason::PolicyNoRule,
    DropReason::PolicyDenied,
    DropReason::NoPolicy,
];
/// Drop reasons the sample counts as failed authentication.
const AUTH: [DropReason; 5] = [
    DropReason::BadAuth,
    DropReason::Replay,
    DropReason::UnknownSession,
    DropReason::UnknownPeer,
    DropReason::SpoofedSource,
];
/// Drop reasons the sample counts as having nowhere to go.
const ROUTE: [DropReason; 2] = [DropReason::NoRoute, DropReason::NoPath];

/// One peer's counters at a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PeerCounters {
    pub(crate) rx_bytes: u64,
    pub(crate) tx_bytes: u64,
    pub(crate) rx_packets: u64,
    pub(crate) tx_packets: u64,
}

/// The data plane's counters at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) mono: Instant,
    pub(crate) at_ms: u64,
    pub(crate) peers: BTreeMap<NodeKey, PeerCounters>,
    pub(crate) drops: DropCounters,
    pub(crate) direct: u32,
    pub(crate) relayed: u32,
    /// RTT of every direct peer with a measurement, in microseconds.
    pub(crate) rtts_us: Vec<u64>,
}

impl Snapshot {
    /// From the data plane's status.
    pub(crate) fn from_status(
        mono: Instant,
        at_ms: u64,
        peers: &[PeerStatus],
        drops: &DropCounters,
    ) -> Self {
        let mut s = Self {
            mono,
            at_ms,
            peers: BTreeMap::new(),
            drops: drops.clone(),
            direct: 0,
            relayed: 0,
            rtts_us: Vec::new(),
        };
        for p in peers {
            s.peers.insert(
                p.key,
                PeerCounters {
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                    rx_packets: p.rx_packets,
                    tx_packets: p.tx_packets,
                },
            );
            match p.path {
                PathKind::Direct(addr) => {
                    s.direct += 1;
                    let rtt = p
                        .candidates
                        .iter()
                        .find(|(a, _)| *a == addr)
                        .and_then(|(_, c)| c.last_rtt);
                    if let Some(rtt) = rtt {
                        s.rtts_us
                            .push(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
                    }
                }
                PathKind::Relay => s.relayed += 1,
                PathKind::None => {}
            }
        }
        s
    }
}

/// The sample for the interval from `prev` to `cur` (pure). Counters that went
/// backwards (a peer removed and added again, a restarted data plane) count
/// from zero; a peer that appeared counts whole; one that left counts nothing
/// (its last interval is lost with it).
pub(crate) fn sample(
    prev: &Snapshot,
    cur: &Snapshot,
    seq: u64,
    agent_start_ms: u64,
    control_rtt_us: Option<u64>,
) -> Sample {
    let delta = |now: u64, before: u64| if now >= before { now - before } else { now };
    let mut s = Sample {
        v: SAMPLE_VERSION,
        at_ms: cur.at_ms,
        seq,
        agent_start_ms: agent_start_ms.min(cur.at_ms),
        interval_ms: u64::try_from(cur.mono.saturating_duration_since(prev.mono).as_millis())
            .unwrap_or(u64::MAX)
            .min(MAX_SAMPLE_INTERVAL_MS),
        rx_packets: Some(0),
        tx_packets: Some(0),
        peers_direct: cur.direct,
        peers_relayed: cur.relayed,
        control_rtt_us: control_rtt_us.map(|r| r.min(MAX_RTT_US)),
        ..Sample::default()
    };
    let mut rx_packets = 0u64;
    let mut tx_packets = 0u64;
    for (key, now) in &cur.peers {
        let before = prev.peers.get(key).copied().unwrap_or_default();
        s.rx_bytes = s
            .rx_bytes
            .saturating_add(delta(now.rx_bytes, before.rx_bytes));
        s.tx_bytes = s
            .tx_bytes
            .saturating_add(delta(now.tx_bytes, before.tx_bytes));
        rx_packets = rx_packets.saturating_add(delta(now.rx_packets, before.rx_packets));
        tx_packets = tx_packets.saturating_add(delta(now.tx_packets, before.tx_packets));
    }
    s.rx_packets = Some(rx_packets);
    s.tx_packets = Some(tx_packets);
    let drops = |reasons: &[DropReason]| -> u64 {
        reasons
            .iter()
            .map(|r| delta(cur.drops.get(*r), prev.drops.get(*r)))
            .fold(0u64, u64::saturating_add)
    };
    s.drops = drops(&DropReason::ALL);
    s.drops_policy = drops(&POLICY);
    s.drops_auth = drops(&AUTH);
    s.drops_route = drops(&ROUTE);
    let mut rtts = cur.rtts_us.clone();
    rtts.sort_unstable();
    if let Some(max) = rtts.last() {
        s.rtt_max_us = Some((*max).min(MAX_RTT_US));
        s.rtt_median_us = Some(rtts[(rtts.len() - 1) / 2].min(MAX_RTT_US));
    }
    s
}

/// The sampling interval: [`SAMPLE_INTERVAL_MS`], or the test override.
fn interval() -> Duration {
    let default = Duration::from_millis(SAMPLE_INTERVAL_MS);
    let Ok(v) = std::env::var(INTERVAL_ENV) else {
        return default;
    };
    match v.parse::<u64>() {
        Ok(ms) if (100..=SAMPLE_INTERVAL_MS).contains(&ms) => {
            tracing::info!(
                interval_ms = ms,
                "{INTERVAL_ENV}: forwarding metrics more often (tests)"
            );
            Duration::from_millis(ms)
        }
        _ => {
            tracing::warn!(value = %v, "{INTERVAL_ENV} must be 100 to 30000 (ms); ignored");
            default
        }
    }
}

/// What the forwarder shows in `weft status`.
#[derive(Debug, Clone, Default)]
struct Shown {
    status: ForwardingStatus,
    failures: Vec<FailureStatus>,
}

/// The running forwarder (the supervisor holds it for the agent's life).
pub(crate) struct Forwarder {
    link: watch::Sender<Option<Credential>>,
    shown: watch::Receiver<Shown>,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Starts the task: samples from `source`, the outbox in `state_dir`.
    pub(crate) fn start(state_dir: PathBuf, source: Probe) -> Self {
        let (link, link_rx) = watch::channel(None);
        let (shown_tx, shown) = watch::channel(Shown::default());
        let task = tokio::spawn(run(state_dir, source, link_rx, shown_tx));
        Self { link, shown, task }
    }

    /// Where to send (the node's credential), or `None`: not joined, or down
    /// (no samples are taken then).
    pub(crate) fn set_link(&self, cred: Option<Credential>) {
        self.link.send_replace(cred);
    }

    /// For `weft status`: the forwarding figures.
    pub(crate) fn status(&self) -> ForwardingStatus {
        self.shown.borrow().status.clone()
    }

    /// For `weft status`: what is failing (area `telemetry`).
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        self.shown.borrow().failures.clone()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The uploading side: the client for the current credential.
struct Uploader {
    client: Option<weft_api_client::Client>,
    control_rtt_us: Option<u64>,
    last_error: Option<String>,
    last_sent_ms: Option<u64>,
    /// The controller's last refusal, logged once (a controller without this
    /// endpoint refuses every batch).
    last_refusal: Option<String>,
}

impl Uploader {
    fn set(&mut self, cred: Option<&Credential>) {
        self.client = cred.and_then(|c| {
            let trust = TrustSettings {
                ca_file: c.ca_file.clone(),
                pin_sha256: c.pin_sha256.clone(),
                allow_insecure_http: c.allow_insecure_http,
            };
            ctl::client(&c.controller_list(), &trust, Some(&c.credential))
                .inspect_err(|e| tracing::warn!("metrics forwarding: {e:#}"))
                .ok()
        });
    }

    /// Uploads the outbox, oldest first, until it is empty or an upload fails.
    async fn flush(&mut self, outbox: &mut Outbox) {
        let Some(client) = self.client.clone() else {
            return;
        };
        while outbox.len() > 0 {
            let batch = outbox.oldest(MAX_UPLOAD_SAMPLES);
            let req = MetricsUpload {
                api_version: Some(weft_proto::api::API_VERSION),
                samples: batch,
                outbox_dropped: outbox.dropped(),
            };
            let started = clock::now();
            let result = tokio::time::timeout(UPLOAD_TIMEOUT, client.upload_metrics(&req)).await;
            let n = req.samples.len();
            match result {
                Ok(Ok(got)) => {
                    let rtt = clock::now().saturating_duration_since(started);
                    self.control_rtt_us = Some(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
                    self.last_sent_ms = Some(clock::unix_ms());
                    if self.last_error.take().is_some() || n > 1 {
                        tracing::info!(
                            samples = n,
                            duplicates = got.duplicates,
                            waiting = outbox.len() - n,
                            "metrics forwarded (outbox replayed)"
                        );
                    }
                    outbox.taken(n);
                }
                Ok(Err(e)) if refused_for_good(&e) => {
                    let why = e.to_string();
                    if self.last_refusal.as_ref() != Some(&why) {
                        tracing::warn!(
                            error = %why,
                            samples = n,
                            "the controller refused forwarded metrics; dropped and counted \
                             (logged again when the reason changes)"
                        );
                    }
                    self.last_refusal = Some(why);
                    outbox.taken(n);
                    outbox.count_dropped(n as u64);
                }
                Ok(Err(e)) => return self.failed(e.to_string(), outbox),
                Err(_) => return self.failed("the upload timed out".into(), outbox),
            }
        }
    }

    fn failed(&mut self, error: String, outbox: &Outbox) {
        // Samples taken while the controller is away have no control RTT.
        self.control_rtt_us = None;
        if self.last_error.is_none() {
            tracing::info!(
                error = %error,
                waiting = outbox.len(),
                "cannot forward metrics; keeping them in the outbox (logged again when they go through)"
            );
        }
        self.last_error = Some(error);
    }
}

/// A 4xx answer that retrying will not change (not auth, timeout or rate).
pub(super) fn refused_for_good(e: &weft_api_client::ClientError) -> bool {
    e.status()
        .is_some_and(|s| (400..500).contains(&s) && ![401, 403, 408, 429].contains(&s))
}

async fn run(
    dir: PathBuf,
    source: Probe,
    mut link: watch::Receiver<Option<Credential>>,
    shown: watch::Sender<Shown>,
) {
    let agent_start_ms = clock::unix_ms();
    let mut pending = match Tracked::try_open(&dir, OUTBOX_KIND, MAX_ENTRIES, agent_start_ms) {
        Ok(o) => o,
        Err(e) => {
            // Unreadable (not damaged): leave the file alone, forward nothing.
            tracing::error!("metrics forwarding is off: {e:#}");
            shown.send_replace(Shown {
                failures: vec![FailureStatus {
                    area: OUTBOX_KIND.area.into(),
                    what: OUTBOX_KIND.status.into(),
                    error: format!("{e:#}"),
                    since_unix_ms: agent_start_ms,
                }],
                ..Shown::default()
            });
            return;
        }
    };
    let mut up = Uploader {
        client: None,
        control_rtt_us: None,
        last_error: None,
        last_sent_ms: None,
        last_refusal: None,
    };
    up.set(link.borrow_and_update().as_ref());
    let every = interval();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev: Option<Snapshot> = None;
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                up.set(link.borrow_and_update().as_ref());
                continue;
            }
        }
        let Some(st) = source.status().await else {
            // The I/O thread is gone; the supervisor exits soon.
            continue;
        };
        let cur = Snapshot::from_status(clock::now(), clock::unix_ms(), &st.peers, &st.drops);
        if let (Some(p), true) = (&prev, up.client.is_some()) {
            seq += 1;
            let s = sample(p, &cur, seq, agent_start_ms, up.control_rtt_us);
            pending.outbox_mut().push(s);
        }
        prev = Some(cur);
        up.flush(pending.outbox_mut()).await;
        pending.save();
        shown.send_replace(Shown {
            status: ForwardingStatus {
                interval_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
                last_seq: seq,
                queued: pending.outbox().len() as u64,
                dropped: pending.outbox().dropped(),
                last_sent_ms: up.last_sent_ms,
                last_error: up.last_error.clone(),
            },
            failures: pending.failures(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> NodeKey {
        NodeKey::from_bytes([n; 32])
    }

    fn snap(t0: Instant, secs: u64, peers: &[(u8, u64, u64)], drops: &[DropReason]) -> Snapshot {
        let mut d = DropCounters::default();
        for r in drops {
            d.add(*r);
        }
        Snapshot {
            mono: t0 + Duration::from_secs(secs),
            at_ms: 1_800_000_000_000 + secs * 1000,
            peers: peers
                .iter()
                .map(|(k, rx, tx)| {
                    (
                        key(*k),
                        PeerCounters {
                            rx_bytes: *rx,
                            tx_bytes: *tx,
                            rx_packets: rx / 100,
                            tx_packets: tx / 100,
                        },
                    )
                })
                .collect(),
            drops: d,
            direct: 2,
            relayed: 1,
            rtts_us: vec![3000, 1000, 2000, 9000],
        }
    }

    #[test]
    fn a_sample_is_the_difference_of_two_snapshots() {
        let t0 = clock::now();
        let a = snap(
            t0,
            0,
            &[(1, 1000, 500), (2, 100, 100)],
            &[DropReason::NoRoute],
        );
        let b = snap(
            t0,
            30,
            &[(1, 5000, 700), (2, 300, 100)],
            &[
                DropReason::NoRoute,
                DropReason::NoRoute,
                DropReason::PolicyDenied,
                DropReason::Replay,
                DropReason::BadStun,
            ],
        );
        let s = sample(&a, &b, 7, 1_799_000_000_000, Some(1234));
        assert_eq!(s.validate(), Ok(()));
        assert_eq!((s.seq, s.interval_ms, s.at_ms), (7, 30_000, b.at_ms));
        assert_eq!((s.rx_bytes, s.tx_bytes), (4200, 200));
        assert_eq!((s.rx_packets, s.tx_packets), (Some(42), Some(2)));
        assert_eq!(s.drops, 4);
        assert_eq!((s.drops_policy, s.drops_auth, s.drops_route), (1, 1, 1));
        assert_eq!((s.peers_direct, s.peers_relayed), (2, 1));
        // Median of four is the lower middle; the max is the max.
        assert_eq!((s.rtt_median_us, s.rtt_max_us), (Some(2000), Some(9000)));
        assert_eq!(s.control_rtt_us, Some(1234));
    }

    #[test]
    fn only_a_refusal_retrying_cannot_cure_drops_a_batch() {
        use weft_api_client::ClientError;
        let api = |status| ClientError::Api {
            status,
            body: weft_proto::api::ErrorBody {
                code: "x".into(),
                message: "y".into(),
            },
        };
        for s in [400, 404, 413, 422] {
            assert!(refused_for_good(&api(s)), "{s}");
        }
        // A revoked or not-yet-valid credential, a timeout, a rate limit, a
        // server error, an unreachable controller: kept for the next try.
        for s in [401, 403, 408, 429, 500, 503] {
            assert!(!refused_for_good(&api(s)), "{s}");
        }
        let down = ClientError::Connect {
            addr: "198.18.0.10:8443".into(),
            why: "refused".into(),
            refused_cert: None,
        };
        assert!(!refused_for_good(&down));
    }

    #[test]
    fn counters_that_reset_count_from_zero() {
        let t0 = clock::now();
        let a = snap(t0, 0, &[(1, 10_000, 10_000), (3, 50, 50)], &[]);
        // Peer 1 was removed and added again (its counters restarted), peer 2
        // is new, peer 3 left.
        let b = snap(t0, 30, &[(1, 400, 100), (2, 700, 0)], &[]);
        let s = sample(&a, &b, 1, 1, None);
        assert_eq!((s.rx_bytes, s.tx_bytes), (1100, 100));
        // Drop counters that went backwards (a new data plane) too.
        let mut a2 = snap(t0, 0, &[], &[DropReason::BadAuth, DropReason::BadAuth]);
        let b2 = snap(t0, 30, &[], &[DropReason::BadAuth]);
        assert_eq!(sample(&a2, &b2, 1, 1, None).drops_auth, 1);
        // No RTT measured: none reported; a clock that jumped: capped, valid.
        a2.rtts_us.clear();
        let mut c = a2.clone();
        c.mono = a2.mono + Duration::from_secs(7200);
        let s = sample(&a2, &c, 2, u64::MAX, None);
        assert_eq!((s.rtt_median_us, s.rtt_max_us), (None, None));
        assert_eq!(s.interval_ms, MAX_SAMPLE_INTERVAL_MS);
        assert_eq!(s.validate(), Ok(()));
    }
}
