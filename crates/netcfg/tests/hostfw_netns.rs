//! The host firewall (`inet weft_host`) through the real executor, in
//! throwaway network namespaces: a firewalled namespace and a client
//! namespace joined by a veth pair, real TCP connections between them.
//!
//! Needs root and the `nft` program; without root every test fails saying so.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Netns;
use weft_netcfg::exec::linux::NetlinkExecutor;
use weft_netcfg::{
    Action, Chain, DesiredState, HostFirewall, HostFwRule, L4, TeardownScope, reconcile_once,
    teardown,
};

/// The firewalled namespace (10.77.0.1) and a client namespace (10.77.0.2).
struct Pair {
    host: Netns,
    client: Netns,
    _listeners: Vec<TcpListener>,
}

const HOST: &str = "10.77.0.1";

impl Pair {
    /// Listeners on `ports` in the host namespace.
    fn new(ports: &[u16]) -> Self {
        let host = Netns::new();
        let client = Netns::new();
        host.ip(&[
            "link",
            "add",
            "h0",
            "type",
            "veth",
            "peer",
            "name",
            "c0",
            "netns",
            &client.name,
        ]);
        host.ip(&["addr", "add", "10.77.0.1/24", "dev", "h0"]);
        host.ip(&["link", "set", "h0", "up"]);
        host.ip(&["link", "set", "lo", "up"]);
        client.ip(&["addr", "add", "10.77.0.2/24", "dev", "c0"]);
        client.ip(&["link", "set", "c0", "up"]);
        let ports = ports.to_vec();
        let listeners = host.run(move || {
            ports
                .iter()
                .map(|p| TcpListener::bind(("0.0.0.0", *p)).expect("bind"))
                .collect()
        });
        Self {
            host,
            client,
            _listeners: listeners,
        }
    }

    fn executor(&self) -> NetlinkExecutor {
        self.host.executor()
    }

    /// Reconciles in the host namespace (`nft` runs there).
    fn reconcile(&self, desired: &DesiredState) -> weft_netcfg::ReconcileReport {
        let mut exec = self.executor();
        let desired = desired.clone();
        self.host.run(move || reconcile_once(&mut exec, &desired))
    }

    /// Whether a TCP connection from the client to the host's `port` opens.
    fn open(&self, port: u16) -> bool {
        self.client.run(move || {
            let addr: SocketAddr = format!("{HOST}:{port}").parse().unwrap();
            TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
        })
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "expiry against the real kernel's clock"
)]
fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn allow_tcp(port: u16, id: &str) -> HostFwRule {
    HostFwRule {
        chain: Chain::Input,
        accept: true,
        proto: Some(L4::Tcp),
        ports: vec![(port, port)],
        addrs: Vec::new(),
        sets: Vec::new(),
        iface: None,
        sport: Vec::new(),
        no_syn: false,
        comment: format!("weft:{id}"),
        expires_at_ms: None,
    }
}

fn firewall(rules: Vec<HostFwRule>) -> DesiredState {
    DesiredState {
        host_firewall: Some(HostFirewall {
            input_drop: true,
            log_drops: true,
            management: vec!["10.77.0.0/24".parse().unwrap()],
            management_ports: vec![2222],
            rules,
            ..HostFirewall::default()
        }),
        ..DesiredState::default()
    }
}

fn lines(actions: &[Action]) -> Vec<String> {
    actions.iter().map(ToString::to_string).collect()
}

#[test]
fn applied_firewall_lets_through_only_what_it_allows() {
    let pair = Pair::new(&[8080, 9090, 2222]);
    assert!(pair.open(9090), "no firewall yet: every port is open");
    let desired = firewall(vec![allow_tcp(8080, "line:3")]);
    let report = pair.reconcile(&desired);
    assert!(report.converged, "{report:?}");
    assert_eq!(lines(&report.applied).len(), 1, "{report:?}");
    assert!(pair.open(8080), "allowed port");
    assert!(
        pair.open(2222),
        "management port from the management prefix"
    );
    assert!(!pair.open(9090), "not allowed: dropped");
    // Nothing to do on the next pass (observation matches the rendering).
    let again = pair.reconcile(&desired);
    assert!(again.converged && again.applied.is_empty(), "{again:?}");
    let (ok, listing) = pair.host.nft(&["list", "table", "inet", "weft_host"]);
    assert!(ok, "{listing}");
    assert!(listing.contains("policy drop"), "{listing}");
    assert!(listing.contains("weft:line:3"), "{listing}");
    assert!(listing.contains("log prefix"), "{listing}");
}

#[test]
fn a_flushed_table_is_repaired_and_none_deletes_it() {
    let pair = Pair::new(&[8080, 9090]);
    let desired = firewall(vec![allow_tcp(8080, "line:3")]);
    assert!(pair.reconcile(&desired).converged);
    assert!(!pair.open(9090));
    // A rule added by hand is not weft's: the table is replaced without it.
    let (ok, out) = pair.host.nft(&[
        "insert",
        "rule",
        "inet",
        "weft_host",
        "input",
        "tcp",
        "dport",
        "9090",
        "accept",
    ]);
    assert!(ok, "{out}");
    assert!(pair.open(9090));
    let report = pair.reconcile(&desired);
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert!(!pair.open(9090), "the hand-added rule is gone");
    let (ok, out) = pair.host.nft(&["flush", "table", "inet", "weft_host"]);
    assert!(ok, "{out}");
    assert!(
        !pair.open(8080),
        "flushed: the allow rule is gone, the drop policy stays"
    );
    let report = pair.reconcile(&desired);
    assert_eq!(
        lines(&report.applied),
        [
            "set nftables table inet weft_host: input drop, output accept, forward accept, 1 rules, 0 sets"
        ],
        "{report:?}"
    );
    assert!(report.converged);
    assert!(!pair.open(9090), "repaired");
    assert!(pair.open(8080));

    // A changed rule under the same id is replaced too.
    let changed = firewall(vec![allow_tcp(9090, "line:3")]);
    let report = pair.reconcile(&changed);
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert!(pair.open(9090) && !pair.open(8080));

    let report = pair.reconcile(&DesiredState::default());
    assert_eq!(
        lines(&report.applied),
        ["delete nftables table inet weft_host"]
    );
    let (ok, _) = pair.host.nft(&["list", "table", "inet", "weft_host"]);
    assert!(!ok, "no table left");
    assert!(pair.open(9090) && pair.open(8080));
}

#[test]
fn teardown_removes_the_table() {
    let pair = Pair::new(&[8080]);
    assert!(pair.reconcile(&firewall(Vec::new())).converged);
    assert!(!pair.open(8080));
    let mut exec = pair.executor();
    let report = pair
        .host
        .run(move || teardown(&mut exec, &TeardownScope::All));
    assert!(report.converged, "{report:?}");
    assert_eq!(
        lines(&report.applied),
        ["delete nftables table inet weft_host"]
    );
    assert!(pair.open(8080));
    // Leaving one network does not touch the host firewall.
    assert!(pair.reconcile(&firewall(Vec::new())).converged);
    let mut exec = pair.executor();
    let report = pair.host.run(move || {
        teardown(
            &mut exec,
            &TeardownScope::Links(["weft0".to_owned()].into()),
        )
    });
    assert!(report.applied.is_empty(), "{report:?}");
    assert!(!pair.open(8080));
}

/// The kernel closes an expiring rule by itself (weftd not running any more
/// passes), within 2 s of its expiry; the next pass removes the rule.
#[test]
fn an_expiring_rule_closes_by_itself_within_two_seconds() {
    let pair = Pair::new(&[8080, 9090]);
    let expires = now_ms() + 1500;
    let mut rule = allow_tcp(9090, "dyn:7");
    rule.expires_at_ms = Some(expires);
    let desired = firewall(vec![allow_tcp(8080, "line:3"), rule]);
    assert!(pair.reconcile(&desired).converged);
    assert!(pair.open(9090), "open before its expiry");
    // No reconciler pass from here: the kernel alone.
    let closed_at = loop {
        if !pair.open(9090) {
            break now_ms();
        }
        assert!(now_ms() < expires + 3000, "still open 3 s after its expiry");
        std::thread::sleep(Duration::from_millis(50));
    };
    let late = closed_at.saturating_sub(expires);
    println!("expiring rule closed {late} ms after its expiry (kernel set-element timeout)");
    assert!(
        closed_at + 300 >= expires,
        "closed early: {closed_at} < {expires}"
    );
    assert!(late <= 2000, "closed {late} ms after its expiry");
    assert!(pair.open(8080), "other rules untouched");
    // The next pass takes the expired rule out of the table.
    let report = pair.reconcile(&desired);
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert!(lines(&report.applied)[0].contains("1 rules"), "{report:?}");
    let (_, listing) = pair.host.nft(&["list", "table", "inet", "weft_host"]);
    assert!(!listing.contains("dyn:7"), "{listing}");
}

/// Domain sets: `update_named_sets` replaces the contents atomically and
/// fails on a missing set.
#[test]
fn named_sets_are_updated_and_a_missing_set_fails() {
    let pair = Pair::new(&[8080]);
    let mut rule = allow_tcp(8080, "line:9");
    rule.sets = vec!["d4_1".to_owned(), "d6_1".to_owned()];
    let mut desired = firewall(vec![rule]);
    assert!(pair.reconcile(&desired).converged);
    assert!(!pair.open(8080), "empty domain set: nobody");
    let result = pair.host.run(|| {
        weft_netcfg::exec::linux::update_named_sets(
            "inet",
            "weft_host",
            "d4_1",
            Some("d6_1"),
            &["10.77.0.2".parse().unwrap(), "192.0.2.9".parse().unwrap()].into(),
            &["2001:db8::1".parse().unwrap()].into(),
        )
    });
    result.unwrap();
    assert!(pair.open(8080), "the client's address is in the set");
    let (_, listing) = pair.host.nft(&["list", "set", "inet", "weft_host", "d4_1"]);
    assert!(
        listing.contains("10.77.0.2") && listing.contains("192.0.2.9"),
        "{listing}"
    );
    // The reconciler sees the set differ from the desired (empty) one and
    // restores it; the agent keeps its refreshed answers in the desired state.
    let report = pair.reconcile(&desired);
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert!(!pair.open(8080));
    desired
        .host_firewall
        .as_mut()
        .unwrap()
        .sets
        .insert("d4_1".to_owned(), ["10.77.0.2".parse().unwrap()].into());
    assert!(pair.reconcile(&desired).converged);
    assert!(pair.open(8080));
    let again = pair.reconcile(&desired);
    assert!(again.applied.is_empty(), "{again:?}");

    let missing = pair.host.run(|| {
        weft_netcfg::exec::linux::update_named_sets(
            "inet",
            "weft_host",
            "nope",
            None,
            &["10.77.0.2".parse().unwrap()].into(),
            &Default::default(),
        )
    });
    let err = missing.unwrap_err().to_string();
    assert!(err.contains("nft refused"), "{err}");
    let bad_family = pair.host.run(|| {
        weft_netcfg::exec::linux::update_named_sets(
            "inet4",
            "weft_host",
            "d4_1",
            None,
            &Default::default(),
            &Default::default(),
        )
    });
    assert!(bad_family.is_err());
}

/// The older table `inet weft` (isolation between networks) shares the
/// generation check: deleted by hand, it is back at the very next pass
/// (it used to be listed only about every 30 s).
#[test]
fn the_inet_weft_table_deleted_by_hand_is_back_at_the_next_pass() {
    let pair = Pair::new(&[]);
    let desired = DesiredState {
        firewall: weft_netcfg::FirewallSpec {
            isolate: true,
            ..weft_netcfg::FirewallSpec::default()
        },
        ..DesiredState::default()
    };
    let mut exec = pair.executor();
    let d = desired.clone();
    let (first, idle, repaired) = pair.host.run(move || {
        let first = reconcile_once(&mut exec, &d);
        let idle = reconcile_once(&mut exec, &d);
        let out = std::process::Command::new("nft")
            .args(["delete", "table", "inet", "weft"])
            .status()
            .unwrap();
        assert!(out.success());
        (first, idle, reconcile_once(&mut exec, &d))
    });
    assert!(
        first.converged && idle.applied.is_empty(),
        "{first:?} {idle:?}"
    );
    assert_eq!(
        lines(&repaired.applied),
        ["set nftables table inet weft: no forwarding between weft interfaces"]
    );
    let (ok, _) = pair.host.nft(&["list", "table", "inet", "weft"]);
    assert!(ok);
}

/// Interface wildcards (`weft*` for the overlay) and source ports render to
/// what nft means by them.
#[test]
fn interface_wildcards_and_source_ports_match() {
    let pair = Pair::new(&[8080, 9090]);
    let mut by_iface = allow_tcp(9090, "own-overlay-in");
    by_iface.proto = None;
    by_iface.ports.clear();
    by_iface.iface = Some("h*".to_owned());
    let mut other_iface = allow_tcp(8080, "own-other");
    other_iface.iface = Some("x*".to_owned());
    let desired = firewall(vec![by_iface, other_iface]);
    assert!(pair.reconcile(&desired).converged);
    assert!(pair.open(9090), "h0 matches h*");
    assert!(pair.open(8080), "h* accepts any protocol and port on h0");
    let (_, listing) = pair.host.nft(&["list", "table", "inet", "weft_host"]);
    assert!(listing.contains("iifname \"h*\" accept"), "{listing}");
    // Only the x* rule left: h0 does not match it.
    let mut other_iface = allow_tcp(8080, "own-other");
    other_iface.iface = Some("x*".to_owned());
    assert!(pair.reconcile(&firewall(vec![other_iface])).converged);
    assert!(!pair.open(8080));
    // A source-port rule: connections from ephemeral ports do not match.
    let mut by_sport = allow_tcp(8080, "sport");
    by_sport.sport = vec![(40000, 40000)];
    assert!(pair.reconcile(&firewall(vec![by_sport])).converged);
    assert!(!pair.open(8080), "from an ephemeral port: dropped");
    let (_, listing) = pair.host.nft(&["list", "table", "inet", "weft_host"]);
    assert!(
        listing.contains("tcp sport 40000 tcp dport 8080 accept"),
        "{listing}"
    );
    // A rule for segments without SYN (weft's rule for the controller's
    // answers) never lets a connection be opened.
    let mut answers = allow_tcp(8080, "answers");
    answers.no_syn = true;
    let report = pair.reconcile(&firewall(vec![answers]));
    assert!(report.converged, "{report:?}");
    assert!(!pair.open(8080), "a SYN does not pass a no_syn rule");
    let (_, listing) = pair.host.nft(&["list", "table", "inet", "weft_host"]);
    assert!(listing.contains("tcp flags ack / syn,ack"), "{listing}");
}

/// The gateway table `inet weft` through typed JSON: masquerade in a NAT
/// chain at priority srcnat, isolation in the forward chain, both read back
/// as converged.
#[test]
fn the_gateway_table_renders_through_json() {
    let pair = Pair::new(&[]);
    let desired = DesiredState {
        firewall: weft_netcfg::FirewallSpec {
            overlay: ["100.64.0.0/24".parse().unwrap()].into(),
            masquerade: ["10.1.0.0/24".parse().unwrap()].into(),
            isolate: true,
        },
        ..DesiredState::default()
    };
    let report = pair.reconcile(&desired);
    assert!(report.converged, "{report:?}");
    assert!(pair.reconcile(&desired).applied.is_empty());
    let (ok, listing) = pair.host.nft(&["list", "table", "inet", "weft"]);
    assert!(ok, "{listing}");
    for want in [
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip saddr 100.64.0.0/24 ip daddr 10.1.0.0/24 counter packets 0 bytes 0 masquerade comment \"weft:masq 100.64.0.0/24 10.1.0.0/24\"",
        "type filter hook forward priority filter; policy accept;",
        "iifname \"weft*\" oifname \"weft*\" counter packets 0 bytes 0 drop comment \"weft:isolate\"",
    ] {
        assert!(listing.contains(want), "{want}\n{listing}");
    }
    let report = pair.reconcile(&DesiredState::default());
    assert!(report.converged, "{report:?}");
    let (ok, _) = pair.host.nft(&["list", "table", "inet", "weft"]);
    assert!(!ok, "deleted");
}

/// Whatever a spec may hold renders to something nft takes: overlapping and
/// duplicate prefixes and ports, both families in one rule, every protocol,
/// expiring rules of any protocol, every chain dropping.
#[test]
fn awkward_but_valid_rules_are_accepted_by_nft() {
    let pair = Pair::new(&[8080]);
    let net = |s: &str| s.parse().unwrap();
    let mut rules = Vec::new();
    for (i, proto) in [None, Some(L4::Tcp), Some(L4::Udp), Some(L4::Icmp)]
        .into_iter()
        .enumerate()
    {
        for chain in [Chain::Input, Chain::Output, Chain::Forward] {
            for accept in [true, false] {
                let mut r = allow_tcp(8080, &format!("r{i}-{}-{accept}", chain.name()));
                r.chain = chain;
                r.accept = accept;
                r.proto = proto;
                // Ports with any protocol or ICMP too (th dport).
                r.ports = vec![(80, 80), (80, 80), (70, 90), (1, 65535)];
                r.sport = vec![(1024, 65535), (2000, 3000)];
                r.addrs = vec![
                    net("192.0.2.0/24"),
                    net("192.0.2.7/32"),
                    net("192.0.2.7/32"),
                    net("2001:db8::/32"),
                    net("2001:db8::1/128"),
                    net("0.0.0.0/0"),
                ];
                r.sets = vec!["d4_0".to_owned(), "d6_0".to_owned()];
                r.iface = Some(if accept { "eth*" } else { "lo" }.to_owned());
                r.expires_at_ms = (i % 2 == 0).then(|| now_ms() + 3_600_000);
                rules.push(r);
            }
        }
    }
    let mut desired = firewall(rules);
    let fw = desired.host_firewall.as_mut().unwrap();
    fw.output_drop = true;
    fw.forward_drop = true;
    fw.management = vec![net("10.0.0.0/8"), net("10.1.0.0/16"), net("fd00::/8")];
    fw.management_ports = vec![22, 22, 2222];
    fw.sets.insert(
        "d4_0".to_owned(),
        ["192.0.2.1".parse().unwrap(), "10.77.0.2".parse().unwrap()].into(),
    );
    let report = pair.reconcile(&desired);
    assert!(report.converged, "{report:?}");
    assert!(pair.reconcile(&desired).applied.is_empty());
}
