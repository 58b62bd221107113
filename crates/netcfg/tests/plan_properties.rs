//! Property tests of the planner against the in-memory kernel (no root needed):
//! convergent, idempotent, owned-only, stable order.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use proptest::prelude::*;
use weft_netcfg::exec::fake::{FakeRoute, Permanence};
use weft_netcfg::{
    Action, DesiredState, Executor, FakeKernel, LinkSpec, ObservedState, RouteSpec,
    WEFT_ROUTE_PROTOCOL, is_managed_address, is_weft_link, plan,
};

const WEFT_LINKS: [&str; 3] = ["weft0", "weft1", "weft2"];
const ADDRS: [&str; 7] = [
    "100.64.0.1/10",
    "100.64.0.2/10",
    "100.64.0.3/32",
    "10.0.0.1/24",
    "fd7a::1/48",
    "fd7a::2/128",
    "fe80::1/64",
];
const ROUTES: [(&str, u32); 7] = [
    ("100.64.0.0/10", 0),
    ("100.64.0.0/10", 5),
    ("10.1.0.0/16", 0),
    ("0.0.0.0/0", 100),
    ("fd7a::/48", 0),
    ("fd7a::/48", 7),
    ("::/0", 0),
];
const MTUS: [u32; 3] = [1280, 1420, 1500];
const STATIC: u8 = 4; // RTPROT_STATIC: someone else's routes

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn addrs() -> impl Strategy<Value = BTreeSet<IpNet>> {
    proptest::collection::btree_set(proptest::sample::select(&ADDRS[..]), 0..4)
        .prop_map(|s| s.into_iter().map(net).collect())
}

fn routes() -> impl Strategy<Value = BTreeSet<RouteSpec>> {
    proptest::collection::btree_set(proptest::sample::select(&ROUTES[..]), 0..4).prop_map(|s| {
        s.into_iter()
            .map(|(dst, metric)| RouteSpec::with_metric(net(dst), metric))
            .collect()
    })
}

#[derive(Debug, Clone)]
struct KernelLink {
    mtu: u32,
    up: bool,
    addrs: BTreeSet<IpNet>,
    weft_routes: BTreeSet<RouteSpec>,
    static_routes: BTreeSet<RouteSpec>,
    kernel_addr: bool,
}

fn kernel_link() -> impl Strategy<Value = KernelLink> {
    (
        proptest::sample::select(&MTUS[..]),
        any::<bool>(),
        addrs(),
        routes(),
        routes(),
        any::<bool>(),
    )
        .prop_map(
            |(mtu, up, addrs, weft_routes, static_routes, kernel_addr)| KernelLink {
                mtu,
                up,
                addrs,
                weft_routes,
                static_routes,
                kernel_addr,
            },
        )
}

/// A kernel holding some weft links in any state, plus foreign objects: `eth0` with
/// addresses and routes (some tagged as weft's: orphans), routes of another protocol
/// on weft links, kernel-made link-local addresses.
fn kernel() -> impl Strategy<Value = FakeKernel> {
    (
        proptest::collection::vec(proptest::option::of(kernel_link()), 3),
        kernel_link(),
    )
        .prop_map(|(weft, eth0)| {
            let mut k = FakeKernel::new();
            for (name, link) in WEFT_LINKS.iter().zip(weft).chain([(&"eth0", Some(eth0))]) {
                let Some(link) = link else { continue };
                k.add_link(name, link.mtu);
                k.set_up(name, link.up);
                for a in &link.addrs {
                    k.add_address(name, *a, Permanence::Permanent);
                }
                if link.kernel_addr {
                    k.add_address(name, net("fe80::abcd/64"), Permanence::Kernel);
                }
                for r in &link.weft_routes {
                    k.add_route(name, *r, WEFT_ROUTE_PROTOCOL);
                }
                for r in &link.static_routes {
                    k.add_route(name, *r, STATIC);
                }
            }
            k
        })
}

fn link_spec() -> impl Strategy<Value = LinkSpec> {
    (
        proptest::option::of(proptest::sample::select(&MTUS[..])),
        any::<bool>(),
        addrs(),
        routes(),
    )
        .prop_map(|(mtu, up, addrs, routes)| LinkSpec {
            mtu,
            up,
            addrs,
            routes,
        })
}

/// Desired links among weft0..weft3 (weft3 never exists: waited for) and sometimes
/// a foreign name the planner must ignore.
fn desired() -> impl Strategy<Value = DesiredState> {
    proptest::collection::btree_map(
        proptest::sample::select(&["weft0", "weft1", "weft2", "weft3", "eth0"][..]),
        link_spec(),
        0..5,
    )
    .prop_map(|links| DesiredState {
        links: links.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ..DesiredState::default()
    })
}

/// Applies every action, asserting none fails.
fn apply_all(kernel: &mut FakeKernel, actions: &[Action]) {
    for action in actions {
        if let Err(e) = kernel.apply(action) {
            panic!("{action} failed: {e}\nkernel: {kernel:#?}");
        }
    }
}

/// The kernel state `desired` should produce from `before`: desired links that exist
/// hold exactly their spec (no routes while down); other weft links hold nothing.
fn expected(desired: &DesiredState, before: &ObservedState) -> ObservedState {
    let mut out = ObservedState::default();
    for (name, link) in &before.links {
        let mut link = link.clone();
        match desired.links.get(name) {
            Some(spec) => {
                link.mtu = spec.mtu.unwrap_or(link.mtu);
                link.up = spec.up;
                link.addrs = spec
                    .addrs
                    .iter()
                    .copied()
                    .filter(is_managed_address)
                    .collect();
                link.routes = if spec.up {
                    spec.routes.clone()
                } else {
                    BTreeSet::new()
                };
                // IPv6 only where the link carries it.
                link.ipv6_disabled = link.ipv6_disabled.map(|_| !spec.wants_ipv6());
            }
            None => {
                link.addrs.clear();
                link.routes.clear();
            }
        }
        out.links.insert(name.clone(), link);
    }
    out
}

/// Non-weft interfaces (rendered), foreign routes, unmanaged addresses on weft links.
type Untouchable = (
    BTreeMap<String, String>,
    BTreeSet<FakeRoute>,
    BTreeSet<(String, IpNet)>,
);

/// Objects that weft must not touch, except what the kernel itself drops from a weft
/// link that weft set down (its routes and IPv6 addresses), turned IPv6 off on (its
/// IPv6 addresses and routes) or took the last IPv4 address from (its IPv4 routes).
fn foreign_outside(
    kernel: &FakeKernel,
    set_down: &BTreeSet<String>,
    lost_ipv4: &BTreeSet<String>,
    v6_off: &BTreeSet<String>,
) -> Untouchable {
    let f = kernel.foreign();
    let links = f
        .links
        .iter()
        .map(|(n, l)| (n.clone(), format!("{l:?}")))
        .collect();
    let routes = f
        .routes
        .into_iter()
        .filter(|r| !set_down.contains(&r.dev))
        .filter(|r| !(lost_ipv4.contains(&r.dev) && r.route.dst().addr().is_ipv4()))
        .filter(|r| !(v6_off.contains(&r.dev) && r.route.dst().addr().is_ipv6()))
        .collect();
    let addrs = f
        .kernel_addrs
        .into_iter()
        .filter(|(n, _)| !set_down.contains(n))
        .filter(|(n, a)| a.addr().is_ipv4() || !v6_off.contains(n))
        .collect();
    (links, routes, addrs)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn applying_a_plan_converges_and_replanning_is_empty(mut kernel in kernel(), desired in desired()) {
        let before = kernel.observe().unwrap();
        let first = plan(&desired, &before);
        apply_all(&mut kernel, &first.actions);
        let after = kernel.observe().unwrap();

        // Idempotent: nothing left to do.
        let again = plan(&desired, &after);
        prop_assert!(again.is_empty(), "second plan not empty:\n{again}\nfirst:\n{first}");
        prop_assert_eq!(&again.waiting_for, &first.waiting_for);
        // Convergent: the weft part of the kernel is exactly the desired state.
        prop_assert_eq!(after, expected(&desired, &before));
    }

    #[test]
    fn plans_only_touch_weft_objects(mut kernel in kernel(), desired in desired()) {
        let before = kernel.observe().unwrap();
        let p = plan(&desired, &before);
        let set_down: BTreeSet<String> = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::SetLinkUp { up: false, .. }))
            .map(|a| a.link().to_owned())
            .collect();
        let v6_off: BTreeSet<String> = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::SetIpv6 { on: false, .. }))
            .map(|a| a.link().to_owned())
            .collect();
        let deleted: BTreeSet<(&str, IpNet)> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::DeleteAddress { link, addr } => Some((link.as_str(), *addr)),
                _ => None,
            })
            .collect();
        let lost_ipv4: BTreeSet<String> = kernel
            .links()
            .iter()
            .filter(|(name, link)| {
                let mut v4 = link.addrs.keys().filter(|a| a.addr().is_ipv4()).peekable();
                v4.peek().is_some() && v4.all(|a| deleted.contains(&(name.as_str(), *a)))
            })
            .map(|(name, _)| name.clone())
            .collect();
        let foreign_before = foreign_outside(&kernel, &set_down, &lost_ipv4, &v6_off);
        for action in &p.actions {
            match action {
                Action::DeleteRoute { link, route } => prop_assert!(
                    kernel.routes().contains(&FakeRoute { dev: link.clone(), route: *route, protocol: WEFT_ROUTE_PROTOCOL }),
                    "{action} deletes a route that is not weft's"
                ),
                other => prop_assert!(is_weft_link(other.link()), "{other} touches a foreign link"),
            }
        }
        apply_all(&mut kernel, &p.actions);
        prop_assert_eq!(foreign_outside(&kernel, &set_down, &lost_ipv4, &v6_off), foreign_before);
    }

    #[test]
    fn plans_are_ordered_and_deterministic(kernel in kernel(), desired in desired()) {
        let mut kernel = kernel;
        let observed = kernel.observe().unwrap();
        let p = plan(&desired, &observed);
        prop_assert!(p.actions.windows(2).all(|w| w[0].phase() <= w[1].phase()), "phases out of order:\n{p}");
        let unique: BTreeSet<_> = p.actions.iter().collect();
        prop_assert_eq!(unique.len(), p.actions.len(), "duplicate actions");
        // Same inputs, rebuilt independently: same plan.
        prop_assert_eq!(plan(&desired.clone(), &observed.clone()), p);
        let rebuilt = DesiredState {
            links: desired.links.clone().into_iter().rev().collect(),
            ..DesiredState::default()
        };
        prop_assert_eq!(plan(&rebuilt, &observed), plan(&desired, &observed));
    }
}
