//! The detector, kind by kind: it fires with its evidence, stays quiet during
//! the warm-up and under steady noisy traffic, and raises one event per
//! incident (cooldown).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use weft_policy::Direction;
use weft_proto::NodeKey;
use weft_proto::events::{AnomalyEvent, AnomalyKind, AnomalyThresholds, Baseline};
use weft_tunnel::{DropCounters, DropReason, Refusals, RefusedAttempts};

use super::detector::{Detector, PeerSample, Settings, Window};

const WINDOW: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;

#[expect(
    clippy::disallowed_methods,
    reason = "a test needs some origin instant"
)]
fn t0() -> Instant {
    Instant::now()
}

fn key(b: u8) -> NodeKey {
    NodeKey::from_bytes([b; 32])
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([100, 64, 0, last])
}

/// A deterministic noise source (xorshift), uniform in [0, 1).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 10_000) as f64 / 10_000.0
    }
}

/// Drives a detector window by window.
struct Run {
    d: Detector,
    now: Instant,
    start: Instant,
    tx: u64,
    drops: DropCounters,
    dns_blocked: u64,
    events: Vec<AnomalyEvent>,
}

impl Run {
    fn new(t: AnomalyThresholds) -> Self {
        let now = t0();
        let mut d = Detector::new(Settings::from_thresholds(&t));
        d.set_name("a");
        Self {
            d,
            now,
            start: now,
            tx: 0,
            drops: DropCounters::default(),
            dns_blocked: 0,
            events: Vec::new(),
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// One window in which `tx` bytes went to peer b, `drops` packets were
    /// dropped for `reason`, with these refusals; returns its events.
    fn window(
        &mut self,
        tx: u64,
        reason: DropReason,
        drops: u64,
        refusals: &Refusals,
    ) -> Vec<AnomalyEvent> {
        self.now += WINDOW;
        self.tx += tx;
        for _ in 0..drops {
            self.drops.add(reason);
        }
        let peers = [PeerSample {
            key: key(2),
            name: "b".into(),
            addresses: vec![ip(2)],
            tx_bytes: self.tx,
        }];
        let w = Window {
            now: self.now,
            unix_ms: 1_000_000 + self.elapsed().as_millis() as u64,
            peers: &peers,
            drops: &self.drops,
            refusals,
            dns_blocked: self.dns_blocked,
        };
        let ev = self.d.window(&w);
        self.events.extend(ev.iter().cloned());
        ev
    }

    fn quiet(&mut self, tx: u64) -> Vec<AnomalyEvent> {
        self.window(tx, DropReason::NoRoute, 0, &Refusals::default())
    }
}

/// `n` refused SYNs from a to b's ports 1000.., in direction `dir`.
fn sweep(dir: Direction, peer: NodeKey, n: u16) -> Refusals {
    let mut r = RefusedAttempts::default();
    for port in 0..n {
        r.attempts += 1;
        r.ports.insert(1000 + port);
        r.addrs.insert(if dir == Direction::Egress {
            ip(2)
        } else {
            ip(1)
        });
    }
    Refusals {
        by_peer: [((dir, peer), r)].into(),
        untracked: 0,
    }
}

fn kinds(ev: &[AnomalyEvent]) -> Vec<AnomalyKind> {
    ev.iter().map(|e| e.kind).collect()
}

#[test]
fn a_scan_fires_at_once_names_its_target_and_raises_one_event_per_incident() {
    let mut r = Run::new(AnomalyThresholds::default());
    // No warm-up for a hard threshold: the very first window.
    let ev = r.window(
        0,
        DropReason::PolicyNoRule,
        200,
        &sweep(Direction::Egress, key(2), 200),
    );
    assert_eq!(kinds(&ev), vec![AnomalyKind::Scan], "{ev:?}");
    let e = &ev[0];
    assert_eq!(e.peer.as_deref(), Some("b"));
    assert_eq!(e.peer_key, Some(key(2)));
    assert_eq!(e.target.as_deref(), Some("b (100.64.0.2)"));
    assert_eq!(e.observed, 200.0);
    assert_eq!(e.unit, "distinct ports");
    assert_eq!(
        e.baseline,
        Baseline::Threshold {
            threshold: 20.0,
            ratio: 10.0
        }
    );
    assert_eq!(e.window_secs, 10);
    assert_eq!(e.details["direction"], "egress");
    assert_eq!(e.details["attempts"], "200");
    assert!(
        e.details["ports"].starts_with("1000,1001,"),
        "{:?}",
        e.details
    );
    assert!(
        e.summary.contains("200 distinct ports on b (100.64.0.2)"),
        "{}",
        e.summary
    );
    assert!(e.summary.contains("threshold 20"), "{}", e.summary);
    assert!(e.validate().is_ok(), "{e:?}");

    // The sweep goes on: the cooldown keeps it one event.
    for _ in 0..20 {
        let ev = r.window(
            0,
            DropReason::PolicyNoRule,
            50,
            &sweep(Direction::Egress, key(2), 50),
        );
        assert!(ev.is_empty(), "{ev:?}");
    }
    // Past the cooldown (300 s), a new sweep is a new incident.
    for _ in 0..10 {
        r.quiet(0);
    }
    let ev = r.window(
        0,
        DropReason::NoRoute,
        0,
        &sweep(Direction::Egress, key(2), 25),
    );
    assert_eq!(kinds(&ev), vec![AnomalyKind::Scan]);
    assert_ne!(ev[0].id, e.id);
}

#[test]
fn a_scan_of_this_node_names_the_scanner_and_few_refusals_are_no_scan() {
    let mut r = Run::new(AnomalyThresholds::default());
    assert!(
        r.window(
            0,
            DropReason::NoRoute,
            0,
            &sweep(Direction::Ingress, key(3), 19)
        )
        .is_empty()
    );
    let ev = r.window(
        0,
        DropReason::NoRoute,
        0,
        &sweep(Direction::Ingress, key(3), 40),
    );
    assert_eq!(kinds(&ev), vec![AnomalyKind::Scan]);
    let e = &ev[0];
    // Not in the status: named by its key.
    assert_eq!(e.peer_key, Some(key(3)));
    assert_eq!(e.target.as_deref(), Some("a (100.64.0.1)"));
    assert_eq!(e.details["direction"], "ingress");
    assert!(e.summary.contains("a scan of this node"), "{}", e.summary);
    // A lower threshold set by the admin applies.
    let mut r = Run::new(AnomalyThresholds {
        scan_ports: Some(5),
        ..AnomalyThresholds::default()
    });
    assert_eq!(
        kinds(&r.window(
            0,
            DropReason::NoRoute,
            0,
            &sweep(Direction::Egress, key(2), 5)
        )),
        vec![AnomalyKind::Scan]
    );
}

#[test]
fn steady_noisy_volume_never_fires_and_a_jump_after_warm_up_does() {
    let mut r = Run::new(AnomalyThresholds::default());
    let mut noise = Noise(7);
    // iperf3 at about 50 Mbit/s (62.5 MB per 10 s, ± 15%) from the start,
    // for an hour.
    while r.elapsed() < Duration::from_secs(3600) {
        let tx = (62.5e6 * (0.85 + 0.3 * noise.next())) as u64;
        let ev = r.quiet(tx);
        assert!(ev.is_empty(), "at {:?}: {ev:?}", r.elapsed());
    }
    // Then 1 GiB in one window.
    let ev = r.quiet(1024 * MIB);
    assert_eq!(kinds(&ev), vec![AnomalyKind::OutboundVolume], "{ev:?}");
    let e = &ev[0];
    assert_eq!(e.peer.as_deref(), Some("b"));
    assert_eq!(e.unit, "bytes");
    let Baseline::Ewma {
        mean,
        stddev,
        zscore,
    } = e.baseline
    else {
        panic!("{e:?}")
    };
    assert!((50e6..75e6).contains(&mean), "{mean}");
    assert!(stddev > 0.0 && zscore > 6.0, "{e:?}");
    assert!(e.summary.contains("1024.0 MiB in 10 s"), "{}", e.summary);
    assert!(e.validate().is_ok());
    // The next windows of the same transfer: cooling down.
    assert!(r.quiet(1024 * MIB).is_empty());
}

#[test]
fn volume_during_warm_up_or_below_the_floor_does_not_fire() {
    let mut r = Run::new(AnomalyThresholds::default());
    // Idle, then a burst in the fourth minute: still warming up.
    for _ in 0..20 {
        assert!(r.quiet(1000).is_empty());
    }
    assert!(r.quiet(2048 * MIB).is_empty(), "warm-up");
    // Warm and quiet, then 32 MiB: a huge z-score, but under the 64 MiB floor.
    let mut r = Run::new(AnomalyThresholds::default());
    for _ in 0..40 {
        r.quiet(1000);
    }
    assert!(r.quiet(32 * MIB).is_empty(), "{:?}", r.events);
    // With the admin's floor at 16 MiB it is an event.
    let mut r = Run::new(AnomalyThresholds {
        volume_min_mib: Some(16),
        ..AnomalyThresholds::default()
    });
    for _ in 0..40 {
        r.quiet(1000);
    }
    assert_eq!(kinds(&r.quiet(32 * MIB)), vec![AnomalyKind::OutboundVolume]);
}

#[test]
fn a_drop_spike_fires_after_warm_up_and_not_on_steady_drops_or_a_scan() {
    let mut r = Run::new(AnomalyThresholds::default());
    let mut noise = Noise(3);
    let none = Refusals::default();
    // A spike during the warm-up is not judged.
    assert!(
        r.window(0, DropReason::PolicyDenied, 5000, &none)
            .is_empty()
    );
    // Steady background drops: 20 to 80 per window for an hour.
    while r.elapsed() < Duration::from_secs(3600) {
        let n = 20 + (60.0 * noise.next()) as u64;
        let ev = r.window(0, DropReason::PolicyDenied, n, &none);
        assert!(ev.is_empty(), "at {:?}: {ev:?}", r.elapsed());
    }
    let ev = r.window(0, DropReason::PolicyDenied, 2000, &none);
    assert_eq!(kinds(&ev), vec![AnomalyKind::DropSpike], "{ev:?}");
    assert_eq!(ev[0].details["reason"], "policy_denied");
    assert_eq!(ev[0].observed, 2000.0);
    assert!(
        ev[0]
            .summary
            .contains("dropped 2000 packets (policy_denied)"),
        "{}",
        ev[0].summary
    );
    // Cooldown: the next spike in the same reason is quiet.
    assert!(
        r.window(0, DropReason::PolicyDenied, 2000, &none)
            .is_empty()
    );
    // A spike in another reason is its own signal (warm since the start).
    assert_eq!(
        kinds(&r.window(0, DropReason::SpoofedSource, 500, &none)),
        vec![AnomalyKind::DropSpike]
    );

    // Policy drops caused by a scan: the scan event alone.
    let mut r = Run::new(AnomalyThresholds::default());
    for _ in 0..40 {
        r.quiet(0);
    }
    let ev = r.window(
        0,
        DropReason::PolicyNoRule,
        500,
        &sweep(Direction::Egress, key(2), 200),
    );
    assert_eq!(kinds(&ev), vec![AnomalyKind::Scan], "{ev:?}");
}

#[test]
fn a_spike_of_blocked_lookups_fires_after_warm_up_and_not_on_a_steady_trickle() {
    let mut r = Run::new(AnomalyThresholds::default());
    let mut noise = Noise(5);
    // A burst during the warm-up is not judged.
    r.dns_blocked += 5000;
    assert!(r.quiet(0).is_empty());
    // A steady trickle of blocked lookups (ads in a browser): 0 to 30 per
    // window for an hour.
    while r.elapsed() < Duration::from_secs(3600) {
        r.dns_blocked += (30.0 * noise.next()) as u64;
        let ev = r.quiet(0);
        assert!(ev.is_empty(), "at {:?}: {ev:?}", r.elapsed());
    }
    r.dns_blocked += 900;
    let ev = r.quiet(0);
    assert_eq!(kinds(&ev), vec![AnomalyKind::DnsBlocked], "{ev:?}");
    assert_eq!(ev[0].observed, 900.0);
    assert_eq!(ev[0].unit, "lookups");
    assert_eq!(ev[0].target.as_deref(), Some("the DNS blocklist"));
    assert!(
        ev[0]
            .summary
            .contains("looked up 900 names on the DNS blocklist in 10 s"),
        "{}",
        ev[0].summary
    );
    // One incident, one event.
    r.dns_blocked += 900;
    assert!(r.quiet(0).is_empty());

    // Under the floor (drops_min) nothing fires, however quiet it was.
    let mut r = Run::new(AnomalyThresholds::default());
    for _ in 0..40 {
        r.quiet(0);
    }
    r.dns_blocked += 99;
    assert!(r.quiet(0).is_empty());
    r.dns_blocked += 100;
    assert_eq!(kinds(&r.quiet(0)), vec![AnomalyKind::DnsBlocked]);
}

#[test]
fn control_latency_fires_on_degradation_only_after_warm_up() {
    let mut d = Detector::new(Settings::default());
    let start = t0();
    let mut noise = Noise(11);
    let at = |i: u32| start + Duration::from_secs(30) * i;
    // A slow answer while warming up: not judged.
    assert!(
        d.report_rtt(at(1), 1, Duration::from_millis(3000))
            .is_none()
    );
    // Two hours of reports every 30 s, 20 to 60 ms.
    for i in 2..240 {
        let ms = 20 + (40.0 * noise.next()) as u64;
        assert!(
            d.report_rtt(at(i), 1, Duration::from_millis(ms)).is_none(),
            "{i}"
        );
    }
    // 300 ms is many deviations above, but under the 500 ms floor.
    assert!(
        d.report_rtt(at(240), 1, Duration::from_millis(300))
            .is_none()
    );
    let e = d
        .report_rtt(at(241), 2, Duration::from_millis(2500))
        .expect("degradation");
    assert_eq!(e.kind, AnomalyKind::ControlLatency);
    assert_eq!(e.observed, 2500.0);
    assert_eq!(e.unit, "ms");
    assert_eq!(e.target.as_deref(), Some("the controller"));
    assert!(matches!(e.baseline, Baseline::Ewma { zscore, .. } if zscore > 6.0));
    assert!(e.validate().is_ok());
    // Still slow a report later: the same incident.
    assert!(
        d.report_rtt(at(242), 3, Duration::from_millis(2500))
            .is_none()
    );
}

#[test]
fn steady_refusals_below_the_threshold_are_never_a_scan() {
    let mut r = Run::new(AnomalyThresholds::default());
    let mut noise = Noise(5);
    // A misconfigured client retrying a few refused ports, for an hour.
    while r.elapsed() < Duration::from_secs(3600) {
        let n = 1 + (18.0 * noise.next()) as u16;
        let ev = r.window(
            0,
            DropReason::PolicyNoRule,
            u64::from(n),
            &sweep(Direction::Egress, key(2), n),
        );
        assert!(ev.is_empty(), "at {:?}: {ev:?}", r.elapsed());
    }
}

#[test]
fn a_late_window_is_scaled_to_one_window() {
    let mut r = Run::new(AnomalyThresholds {
        volume_min_mib: Some(1),
        ..AnomalyThresholds::default()
    });
    for _ in 0..60 {
        assert!(r.quiet(10 * MIB).is_empty());
    }
    // The shell was late: 30 s since the last window, at the same rate.
    r.now += 2 * WINDOW;
    assert!(r.quiet(30 * MIB).is_empty(), "{:?}", r.events);
    // The same 30 MiB in one window is an anomaly.
    assert_eq!(kinds(&r.quiet(30 * MIB)), vec![AnomalyKind::OutboundVolume]);
}
