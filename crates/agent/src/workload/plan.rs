//! The pure side of workload networking: names, addresses, the nft rulesets
//! and what a sweep removes. No I/O; the shell (`sys`) runs what these say.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use weft_proto::workload::{Allow, AllowDest, AllowProto, NetMode};

/// The bridge every bridged workload's veth is a port of. Not `weft*`: the
/// overlay's reconciler owns (and empties) the links named so, and the
/// overlay table's isolation rule drops forwarding between them.
pub(crate) const BRIDGE: &str = weft_netcfg::WORKLOAD_BRIDGE;
/// Host ends of workload veths: `wfwl` + the workload's id (8 hex digits).
pub(crate) const VETH_PREFIX: &str = weft_netcfg::WORKLOAD_VETH_PREFIX;
/// The nftables table of workload networking: NAT out on the node, the
/// `custom` filter inside a workload's namespace.
pub(crate) const TABLE: &str = "inet weft_wl";
/// Inside a bridged workload's namespace: DNS to its loopback goes to the
/// node's relay on the gateway (`workload::dns`).
pub(crate) const DNS_TABLE: &str = "ip weft_wl_dns";
/// The interface name of a bridged workload's veth inside its namespace.
pub(crate) const INNER_IFACE: &str = "eth0";
/// Default subnet of the workload bridge (`weftd --workload-subnet`).
pub const DEFAULT_SUBNET: &str = "10.231.0.0/24";

/// What the agent keeps about one workload, in `STATE_DIR/workloads/ID.json`
/// (written before anything is created, so a SIGKILLed weftd's successor
/// finds every namespace and link it may have left).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) net: NetMode,
    /// Bridged modes: the workload's address on the bridge.
    #[serde(default)]
    pub(crate) address: Option<Ipv4Addr>,
    /// `host-loopback`: forwarded TCP ports.
    #[serde(default)]
    pub(crate) forward: Vec<u16>,
    /// `custom`: the enforced rules, host names resolved.
    #[serde(default)]
    pub(crate) allow: Vec<Allow>,
    /// The namespace's inode (`/proc/PID/ns/net` → `net:[INODE]`); 0 until
    /// it exists.
    #[serde(default)]
    pub(crate) netns_inode: u64,
    pub(crate) created_ms: u64,
}

impl Record {
    /// The host end of its veth (bridged modes).
    pub(crate) fn veth(&self) -> Option<String> {
        self.net.is_bridged().then(|| veth_name(&self.id))
    }
}

pub(crate) fn veth_name(id: &str) -> String {
    format!("{VETH_PREFIX}{id}")
}

/// A workload id: 8 lowercase hex digits (from 4 random bytes).
pub(crate) fn id_from(bytes: [u8; 4]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` is an id [`id_from`] makes (names built from it are safe to
/// pass to `ip` and to use as file names).
pub(crate) fn is_id(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The id in a host veth's name, if it is one of weft's workload veths.
pub(crate) fn veth_id(link: &str) -> Option<&str> {
    link.strip_prefix(VETH_PREFIX).filter(|id| is_id(id))
}

/// The node's address on the bridge: the subnet's first host address.
pub(crate) fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.hosts().next().unwrap_or(subnet.network())
}

/// The lowest free workload address of `subnet` (after the gateway), or
/// `None` when every one is taken.
pub(crate) fn allocate(subnet: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let gw = gateway(subnet);
    subnet.hosts().find(|a| *a != gw && !used.contains(a))
}

/// The node's table `inet weft_wl` while bridged workloads exist: their
/// traffic leaving by any other interface is masqueraded, so the outside sees
/// the node, and the overlay sees the node's overlay address (its policy
/// applies to the workload as if it were the node). Replaces the table
/// atomically.
pub(crate) fn host_script(subnet: Ipv4Net) -> String {
    format!(
        "table {TABLE} {{}}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr {subnet} oifname != \"{BRIDGE}\" counter masquerade comment \"weft:wl-masq\"\n\
         \x20 }}\n\
         }}\n"
    )
}

/// Inside a bridged workload's namespace: queries to a loopback resolver
/// (the node's resolv.conf may name 127.0.0.53) go to the gateway's DNS
/// relay instead, their loopback source masqueraded (with `route_localnet`
/// on the inner interface).
pub(crate) fn dns_script(gateway: Ipv4Addr) -> String {
    format!(
        "table {DNS_TABLE} {{\n\
         \x20 chain output {{\n\
         \x20   type nat hook output priority -100; policy accept;\n\
         \x20   ip daddr 127.0.0.0/8 udp dport 53 dnat to {gateway}:53 comment \"weft:dns\"\n\
         \x20   ip daddr 127.0.0.0/8 tcp dport 53 dnat to {gateway}:53 comment \"weft:dns\"\n\
         \x20 }}\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   oifname \"{INNER_IFACE}\" ip saddr 127.0.0.0/8 masquerade comment \"weft:dns\"\n\
         \x20 }}\n\
         }}\n"
    )
}

/// The `custom` filter inside a workload's namespace: loopback, replies,
/// and new connections only to `allow`; everything else refused at once
/// (TCP reset, ICMP administratively prohibited) and counted. Replaces the
/// table atomically (also when weftd repairs it).
pub(crate) fn custom_script(allow: &[Allow]) -> String {
    let mut rules = String::new();
    for a in allow {
        let AllowDest::Net(net) = &a.dest else {
            continue; // host names are resolved before rendering
        };
        let fam = match net {
            IpNet::V4(_) => "ip",
            IpNet::V6(_) => "ip6",
        };
        let dest = if net.prefix_len() == net.max_prefix_len() {
            net.addr().to_string()
        } else {
            net.to_string()
        };
        let port = match (a.port, a.proto) {
            (None, _) => String::new(),
            (Some(p), AllowProto::Tcp) => format!(" tcp dport {p}"),
            (Some(p), AllowProto::Udp) => format!(" udp dport {p}"),
        };
        rules.push_str(&format!(
            "    {fam} daddr {dest}{port} accept comment \"weft:allow {a}\"\n"
        ));
    }
    format!(
        "table {TABLE} {{}}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \x20 chain output {{\n\
         \x20   type filter hook output priority filter; policy drop;\n\
         \x20   oifname \"lo\" accept\n\
         \x20   ct state established,related accept\n\
         {rules}\
         \x20   meta l4proto tcp counter reject with tcp reset comment \"weft:refused\"\n\
         \x20   counter reject with icmpx admin-prohibited comment \"weft:refused\"\n\
         \x20 }}\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority filter; policy drop;\n\
         \x20   iifname \"lo\" accept\n\
         \x20   ct state established,related accept\n\
         \x20 }}\n\
         }}\n"
    )
}

/// `custom` rules with host names replaced by the addresses they resolved
/// to (`resolved`: name → addresses); a name without addresses is an error.
pub(crate) fn resolve_allow(
    allow: &[Allow],
    resolved: &BTreeMap<String, BTreeSet<IpAddr>>,
) -> Result<Vec<Allow>, String> {
    let mut out = BTreeSet::new();
    for a in allow {
        match &a.dest {
            AllowDest::Net(_) => {
                out.insert(a.clone());
            }
            AllowDest::Host(h) => {
                let addrs = resolved
                    .get(h)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| format!("--allow {a}: {h} did not resolve to any address"))?;
                for ip in addrs {
                    out.insert(Allow {
                        dest: AllowDest::Net(IpNet::from(*ip)),
                        ..a.clone()
                    });
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// What a sweep at start does with one recorded workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leftover {
    /// Processes still run in its namespace: keep it and watch them.
    Adopt,
    /// Nothing runs in it (or it is gone): remove whatever is left.
    Remove,
}

/// Decides the fate of each recorded workload (`running`: processes in its
/// namespace now) and which workload veths found on the node belong to none
/// that is kept (`links`: the link names found).
pub(crate) fn sweep(
    records: &[(Record, usize)],
    links: &BTreeSet<String>,
) -> (Vec<(String, Leftover)>, Vec<String>) {
    let decisions: Vec<(String, Leftover)> = records
        .iter()
        .map(|(r, running)| {
            let fate = if *running > 0 {
                Leftover::Adopt
            } else {
                Leftover::Remove
            };
            (r.id.clone(), fate)
        })
        .collect();
    let kept: BTreeSet<String> = records
        .iter()
        .filter(|(_, running)| *running > 0)
        .filter_map(|(r, _)| r.veth())
        .collect();
    let stray = links
        .iter()
        .filter(|l| veth_id(l).is_some() && !kept.contains(*l))
        .cloned()
        .collect();
    (decisions, stray)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, net: NetMode) -> Record {
        Record {
            id: id.into(),
            net,
            address: None,
            forward: vec![],
            allow: vec![],
            netns_inode: 0,
            created_ms: 0,
        }
    }

    #[test]
    fn names_fit_the_kernels_limits_and_never_start_with_weft() {
        let id = id_from([0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(id, "deadbeef");
        assert!(is_id(&id));
        assert!(!is_id("DEADBEEF") && !is_id("deadbee") && !is_id("../etc/x"));
        for link in [veth_name(&id), BRIDGE.to_owned()] {
            assert!(link.len() <= 15, "{link}");
            assert!(!weft_netcfg::is_weft_link(&link), "{link}");
            assert!(weft_netcfg::is_workload_link(&link), "{link}");
        }
        assert_eq!(veth_id("wfwldeadbeef"), Some("deadbeef"));
        assert_eq!(veth_id(BRIDGE), None);
        assert_eq!(veth_id("wfwlzz"), None);
    }

    #[test]
    fn the_subnet_flag_takes_ipv4_prefixes_of_16_to_29() {
        use super::super::WorkloadSubnet;
        let ok: WorkloadSubnet = "10.5.0.9/24".parse().unwrap();
        assert_eq!(ok.to_string(), "10.5.0.0/24");
        assert_eq!(WorkloadSubnet::default().to_string(), DEFAULT_SUBNET);
        for bad in ["10.0.0.0/8", "10.0.0.0/30", "fd00::/64", "x"] {
            assert!(bad.parse::<WorkloadSubnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_skip_the_gateway_and_those_in_use() {
        let net: Ipv4Net = "10.231.0.0/29".parse().unwrap();
        assert_eq!(gateway(net), Ipv4Addr::new(10, 231, 0, 1));
        let mut used = BTreeSet::new();
        let mut got = vec![];
        while let Some(a) = allocate(net, &used) {
            used.insert(a);
            got.push(a.octets()[3]);
        }
        assert_eq!(got, vec![2, 3, 4, 5, 6]);
        used.remove(&Ipv4Addr::new(10, 231, 0, 4));
        assert_eq!(allocate(net, &used), Some(Ipv4Addr::new(10, 231, 0, 4)));
    }

    #[test]
    fn the_custom_filter_accepts_only_what_is_allowed() {
        let allow: Vec<Allow> = ["10.0.0.5:80", "10.1.0.0/16", "[fd00::1]:53/udp"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let s = custom_script(&allow);
        assert!(s.contains("policy drop;"), "{s}");
        assert!(s.contains("ip daddr 10.0.0.5 tcp dport 80 accept"), "{s}");
        assert!(s.contains("ip daddr 10.1.0.0/16 accept"), "{s}");
        assert!(s.contains("ip6 daddr fd00::1 udp dport 53 accept"), "{s}");
        assert!(s.contains("reject with tcp reset"), "{s}");
        // Nothing accepted but loopback and replies when nothing is allowed.
        let none = custom_script(&[]);
        assert_eq!(none.matches(" accept").count(), 4, "{none}");
    }

    #[test]
    fn loopback_dns_goes_to_the_gateway() {
        let s = dns_script(Ipv4Addr::new(10, 231, 0, 1));
        assert!(
            s.contains("ip daddr 127.0.0.0/8 udp dport 53 dnat to 10.231.0.1:53"),
            "{s}"
        );
        assert!(
            s.contains("ip daddr 127.0.0.0/8 tcp dport 53 dnat to 10.231.0.1:53"),
            "{s}"
        );
        assert!(
            s.contains("oifname \"eth0\" ip saddr 127.0.0.0/8 masquerade"),
            "{s}"
        );
    }

    #[test]
    fn the_node_masquerades_everything_leaving_the_bridge() {
        let s = host_script("10.231.0.0/24".parse().unwrap());
        assert!(s.starts_with("table inet weft_wl {}\ndelete table inet weft_wl\n"));
        assert!(s.contains("ip saddr 10.231.0.0/24 oifname != \"wfbr0\" counter masquerade"));
    }

    #[test]
    fn host_names_become_their_addresses_and_an_unresolved_one_fails() {
        let allow: Vec<Allow> = vec!["db.lab:5432".parse().unwrap(), "10.0.0.1".parse().unwrap()];
        let mut resolved = BTreeMap::new();
        resolved.insert(
            "db.lab".to_owned(),
            ["10.9.0.1".parse().unwrap(), "10.9.0.2".parse().unwrap()].into(),
        );
        let out = resolve_allow(&allow, &resolved).unwrap();
        let shown: Vec<String> = out.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["10.0.0.1", "10.9.0.1:5432/tcp", "10.9.0.2:5432/tcp"]
        );
        resolved.clear();
        assert!(
            resolve_allow(&allow, &resolved)
                .unwrap_err()
                .contains("db.lab")
        );
    }

    #[test]
    fn a_sweep_keeps_what_still_runs_and_removes_the_rest() {
        let records = vec![
            (rec("00000001", NetMode::Bridged), 2),
            (rec("00000002", NetMode::Custom), 0),
            (rec("00000003", NetMode::None), 0),
        ];
        let links: BTreeSet<String> = [
            "wfwl00000001",
            "wfwl00000002",
            "wfwl0000000f",
            "eth0",
            "wfbr0",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let (fates, stray) = sweep(&records, &links);
        assert_eq!(
            fates,
            vec![
                ("00000001".to_owned(), Leftover::Adopt),
                ("00000002".to_owned(), Leftover::Remove),
                ("00000003".to_owned(), Leftover::Remove),
            ]
        );
        assert_eq!(
            stray,
            vec!["wfwl00000002".to_owned(), "wfwl0000000f".to_owned()]
        );
    }
}
