//! The reconcile loop, teardown and scheduler against the in-memory kernel (no root).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use weft_netcfg::exec::fake::Permanence;
use weft_netcfg::{
    Action, DesiredState, Executor, FakeKernel, LinkSpec, Reconciler, ReconcilerConfig, RouteSpec,
    TeardownScope, WEFT_ROUTE_PROTOCOL, reconcile_once, teardown,
};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn overlay_route() -> RouteSpec {
    RouteSpec::new(net("100.64.0.0/10"))
}

fn desired() -> DesiredState {
    DesiredState::default().with_link(
        "weft0",
        LinkSpec::up(1280)
            .with_addr(net("100.64.0.2/10"))
            .with_addr(net("fd7a::2/48"))
            .with_route(overlay_route())
            .with_route(RouteSpec::new(net("fd7a::/48"))),
    )
}

/// A kernel with the data plane's fresh `weft0` and a foreign `eth0`.
fn kernel() -> FakeKernel {
    let mut k = FakeKernel::new();
    k.add_link("weft0", 1500);
    k.add_link("eth0", 1500);
    k.set_up("eth0", true);
    k.add_address("eth0", net("192.0.2.10/24"), Permanence::Permanent);
    k.add_route("eth0", RouteSpec::new(net("0.0.0.0/0")), 4);
    k
}

fn lines(actions: &[Action]) -> Vec<String> {
    actions.iter().map(ToString::to_string).collect()
}

#[expect(clippy::disallowed_methods, reason = "tests need some base instant")]
fn t0() -> Instant {
    Instant::now()
}

#[test]
fn converges_from_a_fresh_interface() {
    let mut k = kernel();
    let report = reconcile_once(&mut k, &desired());
    assert!(report.converged, "{report:?}");
    assert!(report.failed.is_empty());
    assert_eq!(report.applied.len(), 6);
    let again = reconcile_once(&mut k, &desired());
    assert!(again.converged && again.applied.is_empty());
}

#[test]
fn drift_is_repaired_and_reported() {
    let mut k = kernel();
    assert!(reconcile_once(&mut k, &desired()).converged);
    assert!(k.remove_route("weft0", overlay_route(), WEFT_ROUTE_PROTOCOL));
    assert!(k.remove_address("weft0", net("fd7a::2/48")));
    let report = reconcile_once(&mut k, &desired());
    assert!(report.converged);
    assert_eq!(
        lines(&report.applied),
        [
            "add address fd7a::2/48 to weft0",
            "add route 100.64.0.0/10 dev weft0"
        ]
    );
}

#[test]
fn a_failing_action_does_not_stop_the_others() {
    let mut k = kernel();
    let bad = Action::AddAddress {
        link: "weft0".into(),
        addr: net("100.64.0.2/10"),
    };
    k.fail(bad.clone(), libc::EPERM, 1);
    let report = reconcile_once(&mut k, &desired());
    assert!(!report.converged);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, bad);
    assert_eq!(report.failed[0].1.errno(), Some(libc::EPERM));
    assert!(
        report.failed[0]
            .1
            .to_string()
            .starts_with("add address 100.64.0.2/10 to weft0: ")
    );
    assert_eq!(report.applied.len(), 5);
    assert_eq!(
        lines(&report.remaining),
        ["add address 100.64.0.2/10 to weft0"]
    );
    // The fault is spent: the next pass finishes the job.
    let report = reconcile_once(&mut k, &desired());
    assert!(report.converged);
    assert_eq!(
        lines(&report.applied),
        ["add address 100.64.0.2/10 to weft0"]
    );
}

#[test]
fn a_missing_interface_is_waited_for() {
    let mut k = kernel();
    k.remove_link("weft0");
    let report = reconcile_once(&mut k, &desired());
    assert!(!report.converged);
    assert!(report.applied.is_empty() && report.failed.is_empty());
    assert_eq!(report.waiting_for, ["weft0"]);
    k.add_link("weft0", 1500);
    assert!(reconcile_once(&mut k, &desired()).converged);
}

#[test]
fn observation_failures_are_reported() {
    let mut k = kernel();
    k.fail_observe(1);
    let report = reconcile_once(&mut k, &desired());
    assert!(!report.converged);
    assert!(report.observe_error.is_some());
    assert!(report.applied.is_empty());
}

#[test]
fn teardown_removes_weft_objects_only() {
    let mut k = kernel();
    k.add_link("weft1", 1280);
    let both = desired().with_link(
        "weft1",
        LinkSpec::up(1280)
            .with_addr(net("100.80.0.2/12"))
            .with_route(RouteSpec::new(net("100.80.0.0/12"))),
    );
    assert!(reconcile_once(&mut k, &both).converged);
    k.add_route(
        "eth0",
        RouteSpec::new(net("198.51.100.0/24")),
        WEFT_ROUTE_PROTOCOL,
    ); // an orphan
    let foreign = k.foreign();

    // Leaving one network: only weft1 is emptied.
    let report = teardown(
        &mut k,
        &TeardownScope::Links(BTreeSet::from(["weft1".to_owned()])),
    );
    assert!(report.converged, "{report:?}");
    let left = k.observe().unwrap();
    assert!(left.links["weft1"].addrs.is_empty() && left.links["weft1"].routes.is_empty());
    assert_eq!(left.links["weft0"].addrs.len(), 2);
    assert_eq!(left.orphan_routes.len(), 1);

    // weft down: everything of weft's goes, nothing else.
    let report = teardown(&mut k, &TeardownScope::All);
    assert!(report.converged && report.failed.is_empty());
    assert!(k.observe().unwrap().is_clean());
    assert_eq!(k.foreign(), foreign);
}

#[test]
fn reconciler_schedules_checks_retries_and_waits() {
    let now = t0();
    let mut k = kernel();
    let mut r = Reconciler::new(ReconcilerConfig::default(), 7);
    assert_eq!(r.poll_timeout(), None);
    r.set_desired(desired(), now);
    assert_eq!(
        r.poll_timeout(),
        Some((now, "reconcile: desired state changed"))
    );

    // Converged: next pass is the drift check, 2 s later; nothing runs before.
    assert!(r.handle_timeout(&mut k, now).unwrap().converged);
    assert!(r.is_converged());
    let (at, why) = r.poll_timeout().unwrap();
    assert_eq!(
        (at, why),
        (now + Duration::from_secs(2), "reconcile: drift check")
    );
    assert!(
        r.handle_timeout(&mut k, now + Duration::from_secs(1))
            .is_none()
    );

    // Drift found at the check.
    k.remove_route("weft0", overlay_route(), WEFT_ROUTE_PROTOCOL);
    let report = r.handle_timeout(&mut k, at).unwrap();
    assert_eq!(
        lines(&report.applied),
        ["add route 100.64.0.0/10 dev weft0"]
    );

    // A failure backs off (250 ms minus jitter), doubling while it persists.
    let now = at + Duration::from_secs(2);
    let bad = Action::AddRoute {
        link: "weft0".into(),
        route: overlay_route(),
    };
    k.remove_route("weft0", overlay_route(), WEFT_ROUTE_PROTOCOL);
    k.fail(bad, libc::EEXIST, 2);
    assert_eq!(r.handle_timeout(&mut k, now).unwrap().failed.len(), 1);
    let (retry1, why) = r.poll_timeout().unwrap();
    assert_eq!(why, "reconcile: retry after failure");
    assert!(retry1 > now && retry1 <= now + Duration::from_millis(250));
    assert_eq!(r.handle_timeout(&mut k, retry1).unwrap().failed.len(), 1);
    let (retry2, _) = r.poll_timeout().unwrap();
    assert!(
        retry2 - retry1 > Duration::from_millis(250)
            && retry2 - retry1 <= Duration::from_millis(500)
    );
    assert!(r.handle_timeout(&mut k, retry2).unwrap().converged);
    assert_eq!(r.poll_timeout().unwrap().1, "reconcile: drift check");

    // A new desired link that does not exist yet is polled for.
    let more = desired().with_link("weft1", LinkSpec::up(1280));
    r.set_desired(more, retry2);
    assert_eq!(
        r.handle_timeout(&mut k, retry2).unwrap().waiting_for,
        ["weft1"]
    );
    assert_eq!(
        r.poll_timeout(),
        Some((
            retry2 + Duration::from_millis(500),
            "reconcile: waiting for interface"
        ))
    );

    // Shutdown removes everything and stops the schedule.
    let report = r.shutdown(&mut k);
    assert!(report.converged);
    assert!(k.observe().unwrap().is_clean());
    assert_eq!(r.poll_timeout(), None);
}
