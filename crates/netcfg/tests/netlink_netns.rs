//! The real netlink executor, in throwaway network namespaces.
//!
//! Needs root (creating namespaces); without it every test fails saying so, never
//! skips. Each test makes its own namespace `wnc-<pid>-<n>`, removed on drop (also
//! on panic), and only ever touches that namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::sched::{CloneFlags, setns};
use weft_netcfg::exec::linux::NetlinkExecutor;
use weft_netcfg::{
    Action, DesiredState, ExecError, Executor, LinkSpec, Reconciler, ReconcilerConfig, RouteSpec,
    TeardownScope, reconcile_once, teardown,
};

use common::Netns;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn desired() -> DesiredState {
    DesiredState::default().with_link(
        "weft0",
        LinkSpec::up(1380)
            .with_addr(net("100.64.0.2/10"))
            .with_addr(net("fd7a:115c:a1e0::2/48"))
            .with_route(RouteSpec::new(net("100.64.0.0/10")))
            .with_route(RouteSpec::new(net("fd7a:115c:a1e0::/48")))
            .with_route(RouteSpec::with_metric(net("10.20.0.0/16"), 50)),
    )
}

fn lines(actions: &[Action]) -> Vec<String> {
    actions.iter().map(ToString::to_string).collect()
}

/// Weft's routes in the namespace, both families, as `ip` prints them.
fn weft_routes(ns: &Netns) -> Vec<String> {
    let mut routes: Vec<String> = ns
        .ip(&["-4", "route", "show", "proto", "119"])
        .lines()
        .map(str::to_owned)
        .collect();
    routes.extend(
        ns.ip(&["-6", "route", "show", "proto", "119"])
            .lines()
            .map(str::to_owned),
    );
    routes
}

fn assert_configured(ns: &Netns) {
    let link = ns.ip(&["link", "show", "weft0"]);
    assert!(link.contains("mtu 1380") && link.contains(",UP"), "{link}");
    let addrs = ns.ip(&["-o", "addr", "show", "dev", "weft0"]);
    assert!(addrs.contains("inet 100.64.0.2/10"), "{addrs}");
    assert!(addrs.contains("inet6 fd7a:115c:a1e0::2/48"), "{addrs}");
    let routes = weft_routes(ns);
    assert_eq!(routes.len(), 3, "{routes:#?}");
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("10.20.0.0/16 dev weft0") && r.contains("metric 50"))
    );
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("100.64.0.0/10 dev weft0"))
    );
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("fd7a:115c:a1e0::/48 dev weft0") && r.contains("metric 1024"))
    );
    // NOPREFIXROUTE: the kernel added no prefix routes of its own.
    let kernel = ns.ip(&["route", "show", "proto", "kernel"]);
    assert!(!kernel.contains("100.64.0.0/10"), "{kernel}");
}

#[test]
fn converges_from_a_bare_interface() {
    let ns = Netns::with_weft0();
    let mut exec = ns.executor();
    let report = reconcile_once(&mut exec, &desired());
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(report.converged, "{report:?}");
    assert_eq!(
        lines(&report.applied),
        [
            "set mtu 1380 on weft0",
            "set link weft0 up",
            "add address 100.64.0.2/10 to weft0",
            "add address fd7a:115c:a1e0::2/48 to weft0",
            "add route 10.20.0.0/16 metric 50 dev weft0",
            "add route 100.64.0.0/10 dev weft0",
            "add route fd7a:115c:a1e0::/48 dev weft0",
        ]
    );
    assert_configured(&ns);
    // The observation reads back exactly what was desired.
    let observed = exec.observe().unwrap();
    let spec = &desired().links["weft0"];
    let link = &observed.links["weft0"];
    assert_eq!((link.mtu, link.up), (1380, true));
    assert_eq!(link.addrs, spec.addrs);
    assert_eq!(link.routes, spec.routes);
}

#[test]
fn drift_is_restored_by_the_next_pass() {
    let ns = Netns::with_weft0();
    let mut exec = ns.executor();
    #[expect(
        clippy::disallowed_methods,
        reason = "the test drives the reconciler in real time"
    )]
    let now = Instant::now();
    let mut reconciler = Reconciler::new(ReconcilerConfig::default(), 1);
    reconciler.set_desired(desired(), now);
    assert!(reconciler.handle_timeout(&mut exec, now).unwrap().converged);

    // Someone removes the overlay route and address and changes the MTU by hand.
    ns.ip(&[
        "route",
        "del",
        "100.64.0.0/10",
        "dev",
        "weft0",
        "proto",
        "119",
    ]);
    ns.ip(&["addr", "del", "fd7a:115c:a1e0::2/48", "dev", "weft0"]);
    ns.ip(&["link", "set", "weft0", "mtu", "1500"]);

    // The next drift check is due within 5 s, and repairs it.
    let (at, why) = reconciler.poll_timeout().unwrap();
    assert!(
        at - now <= Duration::from_secs(5),
        "{why} at +{:?}",
        at - now
    );
    let report = reconciler.handle_timeout(&mut exec, at).unwrap();
    assert!(report.converged, "{report:?}");
    assert_eq!(
        lines(&report.applied),
        [
            "set mtu 1380 on weft0",
            "add address fd7a:115c:a1e0::2/48 to weft0",
            "add route 100.64.0.0/10 dev weft0",
        ]
    );
    assert_configured(&ns);
}

#[test]
fn foreign_objects_survive_plans_and_teardown() {
    let ns = Netns::with_weft0();
    // A non-weft interface with an address and a route, non-weft routes on weft0,
    // and a weft-named veth whose kernel-made IPv6 link-local weft must not claim.
    ns.ip(&[
        "link", "add", "eth9", "type", "veth", "peer", "name", "weft1",
    ]);
    ns.ip(&["link", "set", "eth9", "up"]);
    ns.ip(&["link", "set", "weft1", "up"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth9"]);
    ns.ip(&["route", "add", "198.51.100.0/24", "dev", "eth9"]);
    let mut exec = ns.executor();
    assert!(reconcile_once(&mut exec, &desired()).converged);
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "dev",
        "weft0",
        "proto",
        "static",
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8::/32",
        "dev",
        "weft0",
        "proto",
        "static",
    ]);
    let foreign = |ns: &Netns| {
        (
            ns.ip(&["-4", "-o", "addr", "show", "dev", "eth9"]),
            ns.ip(&["route", "show", "dev", "eth9"]),
            ns.ip(&["-6", "route", "show", "proto", "static"]),
        )
    };
    let before = foreign(&ns);
    // The kernel adds the link-local once the carrier is up, asynchronously.
    let mut link_local = addresses(&ns, "weft1");
    for _ in 0..50 {
        if !link_local.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        link_local = addresses(&ns, "weft1");
    }
    assert!(
        link_local.iter().any(|a| a.starts_with("fe80::")),
        "no link-local on weft1: {link_local:?}"
    );

    let with_weft1 = desired().with_link("weft1", LinkSpec::up(1500));
    let report = reconcile_once(&mut exec, &with_weft1);
    assert!(report.converged && report.applied.is_empty(), "{report:?}");
    let static4 = ns.ip(&["-4", "route", "show", "proto", "static"]);
    assert!(static4.contains("203.0.113.0/24 dev weft0"), "{static4}");
    // (Teardown removes weft0's last IPv4 address, upon which the kernel itself
    // flushes every IPv4 route via weft0; IPv6 routes stay.)
    let report = teardown(&mut exec, &TeardownScope::All);
    assert!(report.converged && report.failed.is_empty(), "{report:?}");

    let after = foreign(&ns);
    assert_eq!(after, before);
    assert!(after.2.contains("2001:db8::/32 dev weft0"), "{}", after.2);
    assert_eq!(addresses(&ns, "weft1"), link_local);
}

/// The addresses on an interface (`inet`/`inet6` words of `ip -o addr`), without flags
/// that change by themselves (IPv6 `tentative` ends when DAD does).
fn addresses(ns: &Netns, dev: &str) -> Vec<String> {
    ns.ip(&["-o", "addr", "show", "dev", dev])
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .skip_while(|w| !w.starts_with("inet"))
                .nth(1)
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn teardown_leaves_no_weft_route_or_address() {
    let ns = Netns::with_weft0();
    let mut exec = ns.executor();
    assert!(reconcile_once(&mut exec, &desired()).converged);
    // A weft-tagged route on another interface is weft's too.
    ns.ip(&[
        "link", "add", "eth9", "type", "veth", "peer", "name", "eth8",
    ]);
    ns.ip(&["link", "set", "eth9", "up"]);
    ns.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "dev",
        "eth9",
        "proto",
        "119",
    ]);

    let report = teardown(&mut exec, &TeardownScope::All);
    assert!(report.converged && report.failed.is_empty(), "{report:?}");
    assert_eq!(report.applied.len(), 6, "{:#?}", lines(&report.applied));
    assert!(weft_routes(&ns).is_empty(), "{:#?}", weft_routes(&ns));
    let addrs = ns.ip(&["-o", "addr", "show", "dev", "weft0", "scope", "global"]);
    assert!(addrs.is_empty(), "{addrs}");
    assert!(exec.observe().unwrap().is_clean());
    // The interface itself is the data plane's: still there.
    ns.ip(&["link", "show", "weft0"]);
}

#[test]
fn a_restarted_executor_finds_nothing_to_do_and_adds_no_duplicates() {
    let ns = Netns::with_weft0();
    assert!(reconcile_once(&mut ns.executor(), &desired()).converged);
    let routes = weft_routes(&ns);
    let addrs = ns.ip(&["-o", "addr", "show", "dev", "weft0", "scope", "global"]);

    // As after kill -9 and restart: a fresh executor and a fresh reconciler.
    let mut exec = ns.executor();
    let report = reconcile_once(&mut exec, &desired());
    assert!(report.converged && report.applied.is_empty(), "{report:?}");
    // Re-adding an existing address replaces it; it is not duplicated.
    exec.apply(&Action::AddAddress {
        link: "weft0".into(),
        addr: net("100.64.0.2/10"),
    })
    .unwrap();
    assert_eq!(weft_routes(&ns), routes);
    assert_eq!(
        ns.ip(&["-o", "addr", "show", "dev", "weft0", "scope", "global"]),
        addrs
    );
}

#[test]
fn a_failing_action_is_reported_without_stopping_the_others() {
    let ns = Netns::with_weft0();
    let mut exec = ns.executor();
    let mut bad = desired();
    bad.links.get_mut("weft0").unwrap().mtu = Some(70_000); // above the TUN maximum
    let report = reconcile_once(&mut exec, &bad);
    assert!(!report.converged);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    let (action, error) = &report.failed[0];
    assert_eq!(action.to_string(), "set mtu 70000 on weft0");
    assert_eq!(error.errno(), Some(libc::EINVAL));
    let text = error.to_string();
    assert!(
        text.starts_with("set mtu 70000 on weft0: Invalid argument"),
        "{text}"
    );
    assert!(
        text.contains("mtu greater than device maximum"),
        "no extended ack: {text}"
    );
    assert_eq!(report.applied.len(), 6, "{:#?}", lines(&report.applied));
    assert_eq!(lines(&report.remaining), ["set mtu 70000 on weft0"]);

    // An action on a missing interface names it; deleting from it is a no-op.
    let missing = RouteSpec::new(net("100.64.0.0/10"));
    let err = exec
        .apply(&Action::AddRoute {
            link: "weft9".into(),
            route: missing,
        })
        .unwrap_err();
    assert!(
        matches!(err, ExecError::NoSuchLink { ref link, .. } if link == "weft9"),
        "{err}"
    );
    exec.apply(&Action::DeleteRoute {
        link: "weft9".into(),
        route: missing,
    })
    .unwrap();
}

#[test]
fn leaving_one_network_empties_only_its_interface() {
    let ns = Netns::with_weft0();
    ns.ip(&["tuntap", "add", "mode", "tun", "name", "weft1"]);
    let mut exec = ns.executor();
    let both = desired().with_link(
        "weft1",
        LinkSpec::up(1280)
            .with_addr(net("100.80.0.2/12"))
            .with_route(RouteSpec::new(net("100.80.0.0/12"))),
    );
    assert!(reconcile_once(&mut exec, &both).converged);
    let report = teardown(
        &mut exec,
        &TeardownScope::Links(BTreeSet::from(["weft1".to_owned()])),
    );
    assert!(report.converged, "{report:?}");
    assert_eq!(
        lines(&report.applied),
        [
            "delete route 100.80.0.0/12 dev weft1",
            "delete address 100.80.0.2/12 from weft1"
        ]
    );
    assert_configured(&ns);
}

#[test]
fn address_changes_and_link_down_converge_in_one_pass() {
    let ns = Netns::with_weft0();
    let mut exec = ns.executor();
    assert!(reconcile_once(&mut exec, &desired()).converged);

    // A new overlay address: removing the only IPv4 address makes the kernel flush
    // the IPv4 routes via weft0, which the same pass puts back.
    let mut moved = desired();
    let spec = moved.links.get_mut("weft0").unwrap();
    spec.addrs.remove(&net("100.64.0.2/10"));
    spec.addrs.insert(net("100.64.0.3/10"));
    let report = reconcile_once(&mut exec, &moved);
    assert!(report.converged, "{report:?}");
    assert_eq!(
        lines(&report.applied),
        [
            "delete address 100.64.0.2/10 from weft0",
            "add address 100.64.0.3/10 to weft0",
            "add route 10.20.0.0/16 metric 50 dev weft0",
            "add route 100.64.0.0/10 dev weft0",
        ]
    );

    // Down: routes go, and the kernel drops IPv6 addresses, which are put back.
    let mut down = moved.clone();
    down.links.get_mut("weft0").unwrap().up = false;
    let report = reconcile_once(&mut exec, &down);
    assert!(report.converged, "{report:?}");
    assert!(weft_routes(&ns).is_empty());
    assert_eq!(
        addresses(&ns, "weft0"),
        ["100.64.0.3/10", "fd7a:115c:a1e0::2/48"]
    );

    // And up again.
    let report = reconcile_once(&mut exec, &moved);
    assert!(report.converged, "{report:?}");
    assert_eq!(weft_routes(&ns).len(), 3);
}

#[test]
fn an_ipv4_only_link_has_no_ipv6_and_gets_it_back_with_an_ipv6_network() {
    let ns = Netns::with_weft0();
    let path = format!("/run/netns/{}", ns.name);
    // The sysctl (like `net.ipv4.ip_forward` and `nft`) is the calling thread's
    // namespace's, as in an agent running in one namespace: the whole test runs
    // on a thread inside the test's namespace.
    let ns_name = ns.name.clone();
    std::thread::spawn(move || {
        setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        let ns = Netns { name: ns_name };
        let mut exec = NetlinkExecutor::new().unwrap();
        let sysctl = || {
            std::fs::read_to_string("/proc/sys/net/ipv6/conf/weft0/disable_ipv6")
                .unwrap()
                .trim()
                .to_owned()
        };
        let v4_only = DesiredState::default().with_link(
            "weft0",
            LinkSpec::up(1280)
                .with_addr(net("100.64.0.2/10"))
                .with_route(RouteSpec::new(net("100.64.0.0/10"))),
        );
        let report = reconcile_once(&mut exec, &v4_only);
        assert!(report.converged, "{report:?}");
        let applied = lines(&report.applied);
        let at = |l: &str| applied.iter().position(|a| a == l).unwrap();
        assert!(
            at("set ipv6 off on weft0") < at("set link weft0 up"),
            "{applied:?}"
        );
        assert_eq!(sysctl(), "1");
        // Up, and no link-local address: the kernel has nothing to send from.
        assert!(ns.ip(&["link", "show", "weft0"]).contains(",UP"));
        assert_eq!(ns.ip(&["-6", "address", "show", "dev", "weft0"]).trim(), "");
        assert!(reconcile_once(&mut exec, &v4_only).applied.is_empty());

        // The network gains an IPv6 prefix: IPv6 on, then the address, one pass.
        let report = reconcile_once(&mut exec, &desired());
        assert!(report.converged, "{report:?}");
        let applied = lines(&report.applied);
        let at = |l: &str| applied.iter().position(|a| a == l).unwrap();
        assert!(
            at("set ipv6 on on weft0") < at("add address fd7a:115c:a1e0::2/48 to weft0"),
            "{applied:?}"
        );
        assert_eq!(sysctl(), "0");
        assert_configured(&ns);
        // Dropping `ns` here would delete the namespace twice; the outer one does.
        std::mem::forget(ns);
    })
    .join()
    .unwrap();
}
