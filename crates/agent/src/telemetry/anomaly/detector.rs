//! The detector: pure, deterministic, fed values and `now` by the shell once
//! per window (and once per controller report for the latency), returning the
//! events to raise, each with its evidence.
//!
//! Signals:
//! - outbound volume per peer per window (exfiltration): EWMA baseline and
//!   z-score, a warm-up, an absolute floor (`volume_min_mib`);
//! - refused new connection attempts per peer and direction (a scan): a hard
//!   threshold of distinct destination ports or addresses per window, no
//!   warm-up (a sweep is a sweep on the first day too);
//! - drops per reason per window: EWMA and z-score, warm-up, floor
//!   (`drops_min`); policy drops are not reported again as a spike in a
//!   window that already raised a scan (the scan explains them);
//! - the controller's report round trip: EWMA and z-score, warm-up, floor
//!   (`latency_min_ms`);
//! - lookups the resolver answered from the controller's DNS blocklist per
//!   window (a program calling home to a listed domain): EWMA and z-score,
//!   warm-up, the drops' floor (`drops_min`: a blocked lookup is a dropped
//!   query).
//!
//! After an event, the same signal for the same subject stays quiet for the
//! cooldown: one incident, one event.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use weft_policy::Direction;
use weft_proto::NodeKey;
use weft_proto::events::{AnomalyEvent, AnomalyKind, AnomalyThresholds, Baseline};
use weft_tunnel::{DropCounters, DropReason, Refusals, RefusedAttempts};

use super::ewma::Ewma;

const MIB: f64 = 1024.0 * 1024.0;
/// Ports listed in a scan event's details at most.
const PORTS_LISTED: usize = 24;

/// The thresholds in force: the map's, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Settings {
    pub(crate) scan_ports: u32,
    pub(crate) scan_addrs: u32,
    pub(crate) window: Duration,
    pub(crate) z: f64,
    pub(crate) volume_min_bytes: u64,
    pub(crate) drops_min: u64,
    pub(crate) latency_min: Duration,
    pub(crate) warmup: Duration,
    pub(crate) cooldown: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_thresholds(&AnomalyThresholds::default())
    }
}

impl Settings {
    /// `t`'s values, the defaults where it sets none.
    pub(crate) fn from_thresholds(t: &AnomalyThresholds) -> Self {
        let secs = |v: Option<u32>, d: u32| Duration::from_secs(u64::from(v.unwrap_or(d)));
        Self {
            scan_ports: t.scan_ports.unwrap_or(20),
            scan_addrs: t.scan_addrs.unwrap_or(20),
            window: secs(t.window_secs, 10).max(Duration::from_secs(1)),
            z: f64::from(t.zscore.unwrap_or(6)),
            volume_min_bytes: u64::from(t.volume_min_mib.unwrap_or(64)) << 20,
            drops_min: u64::from(t.drops_min.unwrap_or(100)),
            latency_min: Duration::from_millis(u64::from(t.latency_min_ms.unwrap_or(500))),
            warmup: secs(t.warmup_secs, 300),
            cooldown: secs(t.cooldown_secs, 300),
        }
    }
}

/// One peer as the data plane reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerSample {
    pub(crate) key: NodeKey,
    pub(crate) name: String,
    pub(crate) addresses: Vec<IpAddr>,
    /// Plaintext bytes sent to it so far.
    pub(crate) tx_bytes: u64,
}

/// What the shell read from the data plane at the end of a window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window<'a> {
    pub(crate) now: Instant,
    pub(crate) unix_ms: u64,
    pub(crate) peers: &'a [PeerSample],
    /// Drop counters so far, by reason.
    pub(crate) drops: &'a DropCounters,
    /// Refused new attempts since the previous window.
    pub(crate) refusals: &'a Refusals,
    /// Lookups answered from the DNS blocklist so far (the resolver's counter).
    pub(crate) dns_blocked: u64,
}

/// A cumulative counter and the baseline of its per-window increase.
#[derive(Debug, Clone)]
struct Counter {
    last: u64,
    baseline: Ewma,
}

impl Counter {
    /// The increase since the last reading (a counter that went backwards
    /// restarted: all of it is new).
    fn delta(&mut self, now_value: u64) -> u64 {
        let d = if now_value >= self.last {
            now_value - self.last
        } else {
            now_value
        };
        self.last = now_value;
        d
    }
}

/// The detector's state. See the module docs.
#[derive(Debug)]
pub(crate) struct Detector {
    settings: Settings,
    /// This node's name, for sentences.
    me: String,
    volume: BTreeMap<NodeKey, Counter>,
    drops: BTreeMap<DropReason, Counter>,
    dns_blocked: Option<Counter>,
    latency: Option<Ewma>,
    last_window: Option<Instant>,
    quiet_until: BTreeMap<(AnomalyKind, String), Instant>,
    seq: u64,
}

/// A statistical signal's candidate event, before the sentence.
struct Spike {
    kind: AnomalyKind,
    subject: String,
    observed: f64,
    unit: &'static str,
    mean: f64,
    stddev: f64,
    z: f64,
}

impl Detector {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            me: "this node".into(),
            volume: BTreeMap::new(),
            drops: BTreeMap::new(),
            dns_blocked: None,
            latency: None,
            last_window: None,
            quiet_until: BTreeMap::new(),
            seq: 0,
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// New thresholds (from a map); the baselines learned so far are kept.
    pub(crate) fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// This node's name, used in the sentences.
    pub(crate) fn set_name(&mut self, name: &str) {
        name.clone_into(&mut self.me);
    }

    /// Judges one window; returns the events to raise, oldest signal first.
    pub(crate) fn window(&mut self, w: &Window<'_>) -> Vec<AnomalyEvent> {
        let s = self.settings;
        // A late tick covers more time: scale the counters to one window.
        let scale = match self.last_window.replace(w.now) {
            Some(prev) if w.now > prev => {
                (s.window.as_secs_f64() / (w.now - prev).as_secs_f64()).clamp(0.25, 4.0)
            }
            _ => 1.0,
        };
        let mut out = Vec::new();
        self.scans(w, &mut out);
        let scanned = !out.is_empty();

        let names: BTreeMap<NodeKey, &PeerSample> = w.peers.iter().map(|p| (p.key, p)).collect();
        self.volume.retain(|k, _| names.contains_key(k));
        for p in w.peers {
            let Some(c) = self.volume.get_mut(&p.key) else {
                self.volume.insert(
                    p.key,
                    Counter {
                        last: p.tx_bytes,
                        baseline: Ewma::new(w.now),
                    },
                );
                continue;
            };
            let x = c.delta(p.tx_bytes) as f64 * scale;
            let spike = judge(
                &mut c.baseline,
                &s,
                w.now,
                x,
                s.volume_min_bytes as f64,
                1.0,
            );
            if let Some((mean, stddev, z)) = spike {
                let subject = p.key.to_string();
                if let Some(mut e) = self.raise(
                    w,
                    Spike {
                        kind: AnomalyKind::OutboundVolume,
                        subject,
                        observed: x,
                        unit: "bytes",
                        mean,
                        stddev,
                        z,
                    },
                ) {
                    e.peer = Some(p.name.clone());
                    e.peer_key = Some(p.key);
                    e.target = Some(node_label(&p.name, &p.addresses));
                    e.summary = format!(
                        "outbound traffic to peer {} was {:.1} MiB in {} s, {:.1} standard \
                         deviations above its baseline of {:.1} MiB (± {:.1} MiB): possible \
                         exfiltration",
                        p.name,
                        x / MIB,
                        s.window.as_secs(),
                        z,
                        mean / MIB,
                        stddev / MIB
                    );
                    out.push(e);
                }
            }
        }

        for reason in DropReason::ALL {
            let now_value = w.drops.get(reason);
            let c = self.drops.entry(reason).or_insert_with(|| Counter {
                last: now_value,
                baseline: Ewma::new(w.now),
            });
            let x = c.delta(now_value) as f64 * scale;
            let spike = judge(&mut c.baseline, &s, w.now, x, s.drops_min as f64, 1.0);
            let explained =
                scanned && matches!(reason, DropReason::PolicyNoRule | DropReason::PolicyDenied);
            if let (Some((mean, stddev, z)), false) = (spike, explained)
                && let Some(mut e) = self.raise(
                    w,
                    Spike {
                        kind: AnomalyKind::DropSpike,
                        subject: reason.as_str().to_owned(),
                        observed: x,
                        unit: "drops",
                        mean,
                        stddev,
                        z,
                    },
                )
            {
                e.details.insert("reason".into(), reason.as_str().into());
                e.summary = format!(
                    "{} dropped {:.0} packets ({}) in {} s, {:.1} standard deviations above \
                     the baseline of {:.1} (± {:.1})",
                    self.me,
                    x,
                    reason.as_str(),
                    s.window.as_secs(),
                    z,
                    mean,
                    stddev
                );
                out.push(e);
            }
        }
        out.extend(self.blocked_lookups(w, scale));
        out
    }

    /// A spike of lookups answered from the DNS blocklist.
    fn blocked_lookups(&mut self, w: &Window<'_>, scale: f64) -> Option<AnomalyEvent> {
        let s = self.settings;
        let c = self.dns_blocked.get_or_insert_with(|| Counter {
            last: w.dns_blocked,
            baseline: Ewma::new(w.now),
        });
        let x = c.delta(w.dns_blocked) as f64 * scale;
        let (mean, stddev, z) = judge(&mut c.baseline, &s, w.now, x, s.drops_min as f64, 1.0)?;
        let mut e = self.raise(
            w,
            Spike {
                kind: AnomalyKind::DnsBlocked,
                subject: String::new(),
                observed: x,
                unit: "lookups",
                mean,
                stddev,
                z,
            },
        )?;
        e.target = Some("the DNS blocklist".into());
        e.summary = format!(
            "{} looked up {:.0} names on the DNS blocklist in {} s, {:.1} standard deviations \
             above the baseline of {:.1} (± {:.1}): a program on this host may be calling a \
             listed domain (see `weft dns stats` and `weft dns log`)",
            self.me,
            x,
            s.window.as_secs(),
            z,
            mean,
            stddev
        );
        Some(e)
    }

    /// Judges one controller report round trip.
    pub(crate) fn report_rtt(
        &mut self,
        now: Instant,
        unix_ms: u64,
        rtt: Duration,
    ) -> Option<AnomalyEvent> {
        let s = self.settings;
        let x = rtt.as_secs_f64() * 1000.0;
        let baseline = self.latency.get_or_insert_with(|| Ewma::new(now));
        let (mean, stddev, z) = judge(
            baseline,
            &s,
            now,
            x,
            s.latency_min.as_secs_f64() * 1000.0,
            1.0,
        )?;
        let w = Window {
            now,
            unix_ms,
            peers: &[],
            drops: &DropCounters::default(),
            refusals: &Refusals::default(),
            dns_blocked: 0,
        };
        let mut e = self.raise(
            &w,
            Spike {
                kind: AnomalyKind::ControlLatency,
                subject: String::new(),
                observed: x,
                unit: "ms",
                mean,
                stddev,
                z,
            },
        )?;
        e.target = Some("the controller".into());
        e.window_secs = 0;
        e.summary = format!(
            "the controller answered {}'s report in {:.0} ms, {:.1} standard deviations above \
             its baseline of {:.0} ms (± {:.0} ms)",
            self.me, x, z, mean, stddev
        );
        Some(e)
    }

    fn scans(&mut self, w: &Window<'_>, out: &mut Vec<AnomalyEvent>) {
        let s = self.settings;
        for ((dir, key), r) in &w.refusals.by_peer {
            let (ports, addrs) = (r.ports.len() as f64, r.addrs.len() as f64);
            let by_ports = ports >= f64::from(s.scan_ports);
            let by_addrs = addrs >= f64::from(s.scan_addrs);
            if !by_ports && !by_addrs {
                continue;
            }
            let subject = format!("{}:{key}", dir_str(*dir));
            if !self.cooled(AnomalyKind::Scan, &subject, w.now) {
                continue;
            }
            let (observed, threshold, unit) = if by_ports {
                (ports, f64::from(s.scan_ports), "distinct ports")
            } else {
                (addrs, f64::from(s.scan_addrs), "distinct addresses")
            };
            let peer = w.peers.iter().find(|p| p.key == *key);
            let peer_name = peer.map_or_else(|| short_key(key), |p| p.name.clone());
            let addr_list: Vec<IpAddr> = r.addrs.iter().copied().collect();
            let (target, summary) = match dir {
                Direction::Egress => {
                    let target = node_label(&peer_name, &addr_list);
                    let summary = format!(
                        "{} tried {} new connections to {} on {} in {} s, refused by its \
                         policy: a scan from this node ({} {unit}, threshold {})",
                        self.me,
                        r.attempts,
                        port_phrase(r),
                        target,
                        s.window.as_secs(),
                        observed,
                        threshold
                    );
                    (target, summary)
                }
                Direction::Ingress => {
                    let target = node_label(&self.me, &addr_list);
                    let summary = format!(
                        "peer {peer_name} tried {} new connections to {} on {} in {} s, \
                         refused by policy: a scan of this node ({} {unit}, threshold {})",
                        r.attempts,
                        port_phrase(r),
                        target,
                        s.window.as_secs(),
                        observed,
                        threshold
                    );
                    (target, summary)
                }
            };
            let mut details = BTreeMap::new();
            details.insert("direction".into(), dir_str(*dir).into());
            details.insert("attempts".into(), r.attempts.to_string());
            details.insert("distinct_ports".into(), r.ports.len().to_string());
            details.insert("distinct_addrs".into(), r.addrs.len().to_string());
            details.insert("ports".into(), ports_sample(r));
            if r.truncated {
                // Some ports or addresses were past the data plane's bound.
                details.insert("truncated".into(), "true".into());
            }
            out.push(AnomalyEvent {
                id: self.next_id(w.unix_ms),
                at_ms: w.unix_ms,
                kind: AnomalyKind::Scan,
                peer: Some(peer_name),
                peer_key: Some(*key),
                target: Some(target),
                observed,
                unit: unit.into(),
                baseline: Baseline::Threshold {
                    threshold,
                    ratio: observed / threshold,
                },
                window_secs: window_secs(s.window),
                details,
                summary: clip(summary),
            });
            self.quiet_until
                .insert((AnomalyKind::Scan, subject), w.now + s.cooldown);
        }
    }

    /// An event for `spike` unless its subject is cooling down (then `None`);
    /// starts its cooldown.
    fn raise(&mut self, w: &Window<'_>, spike: Spike) -> Option<AnomalyEvent> {
        if !self.cooled(spike.kind, &spike.subject, w.now) {
            return None;
        }
        self.quiet_until
            .insert((spike.kind, spike.subject), w.now + self.settings.cooldown);
        Some(AnomalyEvent {
            id: self.next_id(w.unix_ms),
            at_ms: w.unix_ms,
            kind: spike.kind,
            peer: None,
            peer_key: None,
            target: None,
            observed: spike.observed,
            unit: spike.unit.into(),
            baseline: Baseline::Ewma {
                mean: spike.mean,
                stddev: spike.stddev,
                zscore: spike.z,
            },
            window_secs: window_secs(self.settings.window),
            details: BTreeMap::new(),
            summary: String::new(),
        })
    }

    fn cooled(&mut self, kind: AnomalyKind, subject: &str, now: Instant) -> bool {
        let key = (kind, subject.to_owned());
        match self.quiet_until.get(&key) {
            Some(until) if now < *until => false,
            Some(_) => {
                self.quiet_until.remove(&key);
                true
            }
            None => true,
        }
    }

    fn next_id(&mut self, unix_ms: u64) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        unix_ms.saturating_mul(1000).saturating_add(self.seq % 1000)
    }
}

/// Scores `x` against `baseline` and learns it. `Some((mean, stddev, z))`
/// when it alarms: the baseline is warm, `x` is at least `floor` and `z`
/// standard deviations above the mean.
fn judge(
    baseline: &mut Ewma,
    s: &Settings,
    now: Instant,
    x: f64,
    floor: f64,
    unit: f64,
) -> Option<(f64, f64, f64)> {
    let warm = baseline.warm(now, s.warmup);
    let score = baseline.score(x, unit);
    baseline.update(x, warm.then_some((s.z, unit)));
    (warm && x >= floor && score.z >= s.z).then_some((score.mean, score.stddev, score.z))
}

fn dir_str(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
    }
}

fn window_secs(w: Duration) -> u32 {
    u32::try_from(w.as_secs()).unwrap_or(u32::MAX)
}

fn short_key(k: &NodeKey) -> String {
    k.to_string().chars().take(12).collect()
}

/// `name (addr, addr, …)`, at most four addresses.
fn node_label(name: &str, addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return name.to_owned();
    }
    let mut s = format!("{name} (");
    for (i, a) in addrs.iter().take(4).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{a}");
    }
    if addrs.len() > 4 {
        let _ = write!(s, ", +{} more", addrs.len() - 4);
    }
    s.push(')');
    clip_to(s, weft_proto::events::MAX_FIELD_LEN)
}

fn port_phrase(r: &RefusedAttempts) -> String {
    match r.ports.len() {
        0 => "its addresses".into(),
        1 => "1 port".into(),
        n => format!("{n} distinct ports"),
    }
}

/// The first ports, comma-separated, with how many more.
fn ports_sample(r: &RefusedAttempts) -> String {
    let mut s = String::new();
    for (i, p) in r.ports.iter().take(PORTS_LISTED).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{p}");
    }
    if r.ports.len() > PORTS_LISTED {
        let _ = write!(s, ",… (+{} more)", r.ports.len() - PORTS_LISTED);
    }
    s
}

/// Cuts a sentence to what the controller accepts.
fn clip(s: String) -> String {
    clip_to(s, weft_proto::events::MAX_SUMMARY_LEN)
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub(crate) fn clip_to(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
