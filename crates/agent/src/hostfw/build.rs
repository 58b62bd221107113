//! The controller's spec turned into the table weft-netcfg renders (pure):
//! the admin's rules as they are, plus what weft itself always needs so it
//! never cuts itself off: its UDP port in and out, TCP to the controller and
//! the relays, UDP to the relays' STUN servers, and everything on the overlay
//! interfaces (`weft*`; the overlay policy governs that traffic).
//!
//! Rules naming a domain match the domain's named sets (`d4_<n>`, `d6_<n>`,
//! `n` the domain's index among the spec's domains in sorted order), which
//! [`super::domains`] keeps filled.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use weft_netcfg::hostfw::{Chain, HostFirewall, HostFwRule, L4};
use weft_proto::hostfw::{
    ChainPolicy, DEFAULT_MANAGEMENT_PORTS, Direction, HostAddr, HostFirewallSpec, HostRule, Proto,
    RuleAction,
};

/// Interfaces of the overlay (the data plane's TUNs).
const OVERLAY_IFACES: &str = "weft*";

/// What weft needs open for itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Own {
    /// The data plane's UDP port (0: not known yet, no rule).
    pub(crate) listen_port: u16,
    /// TCP endpoints: the controller's and the relays'.
    pub(crate) tcp: BTreeSet<(IpAddr, u16)>,
    /// UDP endpoints: the relays' STUN servers.
    pub(crate) udp: BTreeSet<(IpAddr, u16)>,
}

/// The domains a spec names, sorted (index = set number).
pub(crate) fn domains(spec: &HostFirewallSpec) -> Vec<String> {
    spec.rules
        .iter()
        .flat_map(|r| &r.peers)
        .filter_map(|p| match p {
            HostAddr::Domain(d) => Some(d.clone()),
            HostAddr::Cidr(_) => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The names of the sets holding domain number `n`'s addresses.
pub(crate) fn set_names(n: usize) -> (String, String) {
    (format!("d4_{n}"), format!("d6_{n}"))
}

/// The table for `spec`, with weft's own allowances and the domains' sets
/// filled from `resolved` (domain -> addresses; a domain not there yet has
/// empty sets, so its rules match nothing until it resolves).
pub(crate) fn build(
    spec: &HostFirewallSpec,
    own: &Own,
    resolved: &BTreeMap<String, BTreeSet<IpAddr>>,
) -> HostFirewall {
    let names = domains(spec);
    let mut sets = BTreeMap::new();
    for (n, d) in names.iter().enumerate() {
        let (s4, s6) = set_names(n);
        let addrs = resolved.get(d).cloned().unwrap_or_default();
        let (v4, v6): (BTreeSet<IpAddr>, BTreeSet<IpAddr>) =
            addrs.into_iter().partition(IpAddr::is_ipv4);
        sets.insert(s4, v4);
        sets.insert(s6, v6);
    }
    let mut rules: Vec<HostFwRule> = spec.rules.iter().map(|r| rule(r, &names)).collect();
    rules.extend(own_rules(own));
    HostFirewall {
        input_drop: spec.input == ChainPolicy::Drop,
        output_drop: spec.output == ChainPolicy::Drop,
        forward_drop: spec.forward == ChainPolicy::Drop,
        log_drops: spec.log_drops,
        management: spec.management.clone(),
        management_ports: if spec.management_ports.is_empty() {
            DEFAULT_MANAGEMENT_PORTS.to_vec()
        } else {
            spec.management_ports.clone()
        },
        rules,
        sets,
    }
}

fn rule(r: &HostRule, domains: &[String]) -> HostFwRule {
    let mut addrs = Vec::new();
    let mut sets = Vec::new();
    for p in &r.peers {
        match p {
            HostAddr::Cidr(net) => addrs.push(*net),
            HostAddr::Domain(d) => {
                if let Some(n) = domains.iter().position(|x| x == d) {
                    let (s4, s6) = set_names(n);
                    sets.push(s4);
                    sets.push(s6);
                }
            }
        }
    }
    HostFwRule {
        chain: match r.direction {
            Direction::In => Chain::Input,
            Direction::Out => Chain::Output,
            Direction::Forward => Chain::Forward,
        },
        accept: r.action == RuleAction::Accept,
        proto: match r.proto {
            Proto::Any => None,
            Proto::Tcp => Some(L4::Tcp),
            Proto::Udp => Some(L4::Udp),
            Proto::Icmp => Some(L4::Icmp),
        },
        ports: r.ports.iter().map(|p| (p.start, p.end)).collect(),
        addrs,
        sets,
        iface: None,
        sport: Vec::new(),
        no_syn: false,
        comment: format!("weft:{}", r.id),
        expires_at_ms: r.expires_at_ms,
    }
}

/// weft's own accept rules (after the admin's: a drop the admin wrote still
/// wins, which is what the rollback guards against).
fn own_rules(own: &Own) -> Vec<HostFwRule> {
    let base = |chain, comment: &str| HostFwRule {
        chain,
        accept: true,
        proto: None,
        ports: Vec::new(),
        addrs: Vec::new(),
        sets: Vec::new(),
        iface: None,
        sport: Vec::new(),
        no_syn: false,
        comment: format!("weft:own-{comment}"),
        expires_at_ms: None,
    };
    let mut rules = Vec::new();
    for (chain, what) in [
        (Chain::Input, "overlay-in"),
        (Chain::Output, "overlay-out"),
        (Chain::Forward, "overlay-fwd"),
    ] {
        rules.push(HostFwRule {
            iface: Some(OVERLAY_IFACES.to_owned()),
            ..base(chain, what)
        });
    }
    if own.listen_port != 0 {
        let p = own.listen_port;
        rules.push(HostFwRule {
            proto: Some(L4::Udp),
            ports: vec![(p, p)],
            ..base(Chain::Input, "udp-in")
        });
        rules.push(HostFwRule {
            proto: Some(L4::Udp),
            sport: vec![(p, p)],
            ..base(Chain::Output, "udp-out")
        });
    }
    for (i, (ip, port)) in own.tcp.iter().enumerate() {
        rules.push(HostFwRule {
            proto: Some(L4::Tcp),
            ports: vec![(*port, *port)],
            addrs: vec![IpNet::from(*ip)],
            ..base(Chain::Output, &format!("tcp-{i}"))
        });
        // Its answers, by source address and port rather than by conntrack
        // state: a connection opened before the table existed (the map
        // stream) is picked up mid-stream by conntrack as `new`, which the
        // established/related base rule does not let in. Segments without
        // SYN only, so a spoofed source cannot open a connection to a
        // listening port through this rule.
        rules.push(HostFwRule {
            proto: Some(L4::Tcp),
            sport: vec![(*port, *port)],
            no_syn: true,
            addrs: vec![IpNet::from(*ip)],
            ..base(Chain::Input, &format!("tcp-in-{i}"))
        });
    }
    for (i, (ip, port)) in own.udp.iter().enumerate() {
        rules.push(HostFwRule {
            proto: Some(L4::Udp),
            ports: vec![(*port, *port)],
            addrs: vec![IpNet::from(*ip)],
            ..base(Chain::Output, &format!("stun-{i}"))
        });
    }
    rules
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use weft_proto::hostfw::PortRange;

    use super::*;

    fn spec(rules: Vec<HostRule>) -> HostFirewallSpec {
        HostFirewallSpec {
            version: 4,
            input: ChainPolicy::Drop,
            output: ChainPolicy::Accept,
            forward: ChainPolicy::Drop,
            management: vec!["192.0.2.0/24".parse().unwrap()],
            management_ports: Vec::new(),
            log_drops: true,
            rules,
        }
    }

    fn rule(id: &str, action: RuleAction, peers: Vec<HostAddr>) -> HostRule {
        HostRule {
            id: id.to_owned(),
            direction: Direction::In,
            action,
            proto: Proto::Tcp,
            ports: vec![PortRange { start: 80, end: 81 }],
            peers,
            comment: String::new(),
            expires_at_ms: Some(5000),
        }
    }

    #[test]
    fn the_spec_maps_onto_the_table_with_weft_s_own_allowances() {
        let own = Own {
            listen_port: 41641,
            tcp: [("198.51.100.1".parse().unwrap(), 8443)].into(),
            udp: [("198.51.100.2".parse().unwrap(), 3478)].into(),
        };
        let s = spec(vec![rule(
            "dyn:7",
            RuleAction::Accept,
            vec![HostAddr::Cidr("10.0.0.0/8".parse().unwrap())],
        )]);
        let fw = build(&s, &own, &BTreeMap::new());
        assert!(fw.input_drop && !fw.output_drop && fw.forward_drop && fw.log_drops);
        assert_eq!(fw.management_ports, vec![22], "the default management port");
        let r = &fw.rules[0];
        assert_eq!(r.comment, "weft:dyn:7");
        assert_eq!(
            (r.chain, r.accept, r.proto),
            (Chain::Input, true, Some(L4::Tcp))
        );
        assert_eq!(r.ports, vec![(80, 81)]);
        assert_eq!(r.addrs, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(r.expires_at_ms, Some(5000));
        let own_of = |c: &str| fw.rules.iter().find(|r| r.comment == c).unwrap();
        let udp_in = own_of("weft:own-udp-in");
        assert_eq!(
            (udp_in.chain, udp_in.ports.clone()),
            (Chain::Input, vec![(41641, 41641)])
        );
        let udp_out = own_of("weft:own-udp-out");
        assert_eq!(
            (udp_out.chain, udp_out.sport.clone()),
            (Chain::Output, vec![(41641, 41641)])
        );
        let ctl = own_of("weft:own-tcp-0");
        assert_eq!(ctl.addrs, vec!["198.51.100.1/32".parse::<IpNet>().unwrap()]);
        assert_eq!(
            (ctl.chain, ctl.ports.clone()),
            (Chain::Output, vec![(8443, 8443)])
        );
        let answers = own_of("weft:own-tcp-in-0");
        assert_eq!(answers.addrs, ctl.addrs, "the controller's answers come in");
        assert_eq!(
            (answers.chain, answers.sport.clone()),
            (Chain::Input, vec![(8443, 8443)])
        );
        assert!(answers.no_syn, "answers never open a connection");
        assert_eq!(own_of("weft:own-stun-0").proto, Some(L4::Udp));
        for c in [
            "weft:own-overlay-in",
            "weft:own-overlay-out",
            "weft:own-overlay-fwd",
        ] {
            assert_eq!(own_of(c).iface.as_deref(), Some("weft*"));
        }
        let comments: BTreeSet<&str> = fw.rules.iter().map(|r| r.comment.as_str()).collect();
        assert_eq!(comments.len(), fw.rules.len(), "comments are unique");
    }

    #[test]
    fn domains_become_sets_split_by_family() {
        let s = spec(vec![
            rule(
                "line:3",
                RuleAction::Drop,
                vec![HostAddr::Domain("b.example".into())],
            ),
            rule(
                "line:4",
                RuleAction::Accept,
                vec![
                    HostAddr::Domain("a.example".into()),
                    HostAddr::Cidr("10.1.0.0/16".parse().unwrap()),
                ],
            ),
        ]);
        assert_eq!(domains(&s), vec!["a.example", "b.example"]);
        let resolved: BTreeMap<String, BTreeSet<IpAddr>> = [(
            "a.example".to_owned(),
            ["192.0.2.7".parse().unwrap(), "2001:db8::7".parse().unwrap()].into(),
        )]
        .into();
        let fw = build(&s, &Own::default(), &resolved);
        assert_eq!(fw.rules[0].sets, vec!["d4_1", "d6_1"], "b.example is #1");
        assert!(fw.rules[0].addrs.is_empty());
        assert_eq!(fw.rules[1].sets, vec!["d4_0", "d6_0"]);
        assert_eq!(fw.rules[1].addrs.len(), 1);
        assert_eq!(fw.sets["d4_0"], ["192.0.2.7".parse().unwrap()].into());
        assert_eq!(fw.sets["d6_0"], ["2001:db8::7".parse().unwrap()].into());
        assert!(
            fw.sets["d4_1"].is_empty() && fw.sets["d6_1"].is_empty(),
            "not resolved yet"
        );
        assert!(
            !fw.rules.iter().any(|r| r.comment == "weft:own-udp-in"),
            "no port known yet: no rule"
        );
    }
}
