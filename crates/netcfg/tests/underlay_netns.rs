//! Root tests of the underlay observation (link monitoring) in throwaway
//! network namespaces. They FAIL without root.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use common::Netns;

#[test]
fn the_underlay_lists_links_addresses_and_the_default_routes_interface() {
    let ns = Netns::with_weft0();
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["link", "add", "a0", "type", "veth", "peer", "name", "a1"]);
    ns.ip(&["link", "add", "b0", "type", "veth", "peer", "name", "b1"]);
    for l in ["a0", "a1", "b0", "b1"] {
        ns.ip(&["link", "set", l, "up"]);
    }
    ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "a0"]);
    ns.ip(&["addr", "add", "198.51.100.10/24", "dev", "b0"]);
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.0.2.1",
        "dev",
        "a0",
        "metric",
        "100",
    ]);
    // A lower-priority default via b0, and a better one of weft's own
    // (protocol 119) that must not count.
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.51.100.1",
        "dev",
        "b0",
        "metric",
        "200",
    ]);
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.51.100.1",
        "dev",
        "b0",
        "proto",
        "119",
        "metric",
        "10",
    ]);
    let mut exec = ns.executor();
    let u = exec.observe_underlay().unwrap();
    let names: Vec<&str> = u.links.iter().map(|l| l.name.as_str()).collect();
    assert!(names.contains(&"a0") && names.contains(&"b0"), "{u:?}");
    assert!(!names.contains(&"lo") && !names.contains(&"weft0"), "{u:?}");
    assert!(
        u.others.len() >= 2,
        "lo and weft0 are left out by index: {u:?}"
    );
    let a0 = u.links.iter().find(|l| l.name == "a0").unwrap();
    assert!(a0.up);
    assert!(
        a0.addrs.contains(&"192.0.2.10/24".parse().unwrap()),
        "{a0:?}"
    );
    assert_eq!(u.default_v4.as_deref(), Some("a0"));

    // a0 goes down: its default route goes with it, b0 carries the default.
    ns.ip(&["link", "set", "a0", "down"]);
    let after = exec.observe_underlay().unwrap();
    assert_eq!(after.default_v4.as_deref(), Some("b0"), "{after:?}");
    assert!(!after.links.iter().find(|l| l.name == "a0").unwrap().up);
    let changes = after.changes_since(&u);
    assert!(changes.contains(&"a0 down".to_owned()), "{changes:?}");
    assert!(
        changes.contains(&"IPv4 default route via b0".to_owned()),
        "{changes:?}"
    );
}
