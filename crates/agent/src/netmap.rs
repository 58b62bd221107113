//! Pure translation of a controller [`NetworkMap`] into what the data plane and
//! the reconciler need: interface slots, the tunnel's [`NodeConfig`] and the
//! interfaces' desired addresses and routes. No I/O; unit-tested.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use weft_policy::CompiledPolicy;
use weft_proto::NodeKey;
use weft_proto::netmap::NetworkMap;
use weft_proto::policy::MapPolicy;
use weft_tunnel::{Backend, NetIndex, NetworkConfig, NodeConfig, PeerConfig, ServiceNat};

/// Prefix of every interface weft creates.
pub const IFACE_PREFIX: &str = "weft";

/// Overlay MTU: 1500 minus IPv6 (40) + UDP (8) + WireGuard (32) headers, so it fits
/// any underlay path with a 1500-byte MTU whatever the address family.
pub const OVERLAY_MTU: u32 = 1420;

/// Stable assignment of networks to TUN slots (`weft0`, `weft1`, ...): a network
/// keeps its slot while it stays in the map; a new one takes the lowest free slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    by_name: BTreeMap<String, NetIndex>,
}

impl Slots {
    /// Updates the assignment for the networks in `map`; returns it.
    pub fn assign(&mut self, map: &NetworkMap) -> &BTreeMap<String, NetIndex> {
        self.by_name
            .retain(|name, _| map.networks.iter().any(|n| &n.name == name));
        for n in &map.networks {
            if !self.by_name.contains_key(&n.name) {
                let used: Vec<NetIndex> = self.by_name.values().copied().collect();
                let free = (0..).find(|i| !used.contains(i)).unwrap_or(0);
                self.by_name.insert(n.name.clone(), free);
            }
        }
        &self.by_name
    }

    /// Current assignment.
    pub fn get(&self) -> &BTreeMap<String, NetIndex> {
        &self.by_name
    }
}

/// The interface name of a slot.
pub fn ifname(slot: NetIndex) -> String {
    format!("{IFACE_PREFIX}{slot}")
}

/// One interface as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    /// Network name.
    pub network: String,
    /// Slot / tunnel network index.
    pub slot: NetIndex,
    /// Interface name.
    pub ifname: String,
    /// Addresses with the network's prefix length (`100.64.0.2/10`).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes through the interface (network prefixes, routed subnets and
    /// the VIPs (/32) of the services this node may use).
    pub routes: Vec<(IpAddr, u8)>,
    /// Subnets this node is a gateway for in the network (forwarded and
    /// masqueraded from the overlay).
    pub serves: Vec<(IpAddr, u8)>,
    /// Routed subnets for status: `PREFIX via GATEWAY[, then BACKUP...]`.
    pub subnet_routes: Vec<String>,
    /// MTU.
    pub mtu: u32,
    /// DNS domain (for status; DNS is a later issue).
    pub dns_domain: String,
    /// CIDR text (for status).
    pub cidr: String,
}

/// Everything derived from one map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// Data-plane configuration.
    pub node: NodeConfig,
    /// Interfaces, by slot.
    pub interfaces: Vec<InterfacePlan>,
    /// Peer names and the networks they share with us, for status.
    pub peer_networks: BTreeMap<NodeKey, Vec<String>>,
    /// Why every packet is denied, when the map has no usable access policy
    /// (`None` when it has one). Shown in status; logged when it changes.
    pub policy_problem: Option<String>,
}

/// Heard from within this long: online, whatever the controller says.
pub const HEARD_FRESH: std::time::Duration = std::time::Duration::from_secs(5);
/// Not heard from for this long: offline, whatever the controller says (relayed
/// peers send keepalives every 25 s; a quiet direct path is pinged every second).
pub const HEARD_STALE: std::time::Duration = std::time::Duration::from_secs(40);

/// Whether a peer is online for `weft status`, and seconds since it was last
/// seen: from the local path (`heard_ago`: since something authenticated came
/// from it) and the map (`map_online`: it holds a map stream;
/// `map_last_seen_ms`: Unix milliseconds, like `now_unix_ms`).
pub fn peer_liveness(
    heard_ago: Option<std::time::Duration>,
    map_online: bool,
    map_last_seen_ms: Option<u64>,
    now_unix_ms: u64,
) -> (bool, Option<u64>) {
    let online = match heard_ago {
        Some(h) if h < HEARD_FRESH => true,
        Some(h) if h >= HEARD_STALE => false,
        _ => map_online,
    };
    let last_seen = heard_ago
        .map(|h| h.as_secs())
        .or_else(|| map_last_seen_ms.map(|t| now_unix_ms.saturating_sub(t) / 1000));
    (online, last_seen)
}

/// Translates `map` using (and updating) `slots`.
pub fn derive(map: &NetworkMap, slots: &mut Slots) -> Derived {
    let assignment = slots.assign(map).clone();
    let width = assignment.values().copied().max().map_or(0, |m| m + 1);
    let mut networks = vec![NetworkConfig::default(); width];
    let mut interfaces = Vec::new();
    let mut peers: BTreeMap<NodeKey, PeerConfig> = BTreeMap::new();
    let mut peer_networks: BTreeMap<NodeKey, Vec<String>> = BTreeMap::new();

    for n in &map.networks {
        let Some(&slot) = assignment.get(&n.name) else {
            continue;
        };
        let mut addresses = vec![(IpAddr::V4(n.ipv4), n.ipv4_cidr.prefix_len())];
        let mut routes = vec![(IpAddr::V4(n.ipv4_cidr.network()), n.ipv4_cidr.prefix_len())];
        let mut cidr = n.ipv4_cidr.to_string();
        if let (Some(v6), Some(prefix)) = (n.ipv6, n.ipv6_prefix) {
            addresses.push((IpAddr::V6(v6), prefix.prefix_len()));
            routes.push((IpAddr::V6(prefix.network()), prefix.prefix_len()));
            cidr = format!("{cidr} {prefix}");
        }
        let net_of =
            |p: &weft_proto::net::Ipv4Net| IpNet::new(IpAddr::V4(p.network()), p.prefix_len()).ok();
        for r in &n.routes {
            routes.push((IpAddr::V4(r.prefix.network()), r.prefix.prefix_len()));
        }
        // The virtual IPs of the services this node may use in the network
        // (the map lists no other): the tunnel maps them to instances.
        for svc in map.services.iter().filter(|svc| svc.network == n.name) {
            routes.push((IpAddr::V4(svc.vip), 32));
        }
        let serves: Vec<IpNet> = n.serves.iter().filter_map(net_of).collect();
        networks[slot] = NetworkConfig {
            local_addresses: addresses.iter().map(|(a, _)| *a).collect(),
            serves: serves.clone(),
        };
        interfaces.push(InterfacePlan {
            network: n.name.clone(),
            slot,
            ifname: ifname(slot),
            addresses,
            routes,
            serves: serves
                .iter()
                .map(|p| (p.network(), p.prefix_len()))
                .collect(),
            subnet_routes: n
                .routes
                .iter()
                .map(|r| {
                    let name = |k: &NodeKey| {
                        n.peers
                            .iter()
                            .find(|p| p.node_key == *k)
                            .map_or_else(|| k.to_string(), |p| p.name.clone())
                    };
                    let mut line = format!("{} via {}", r.prefix, name(&r.via));
                    for b in &r.backups {
                        let _ = write!(line, ", then {}", name(b));
                    }
                    line
                })
                .collect(),
            mtu: OVERLAY_MTU,
            dns_domain: n.dns_domain.clone(),
            cidr,
        });
        for p in &n.peers {
            if p.node_key == map.node.node_key {
                continue;
            }
            let entry = peers.entry(p.node_key).or_insert_with(|| PeerConfig {
                key: p.node_key,
                name: p.name.clone(),
                addresses: Vec::new(),
                endpoints: Vec::new(),
                routes: Vec::new(),
            });
            entry.addresses.push((slot, IpAddr::V4(p.ipv4)));
            if let Some(v6) = p.ipv6 {
                entry.addresses.push((slot, IpAddr::V6(v6)));
            }
            for e in &p.endpoints {
                if !entry.endpoints.contains(e) {
                    entry.endpoints.push(*e);
                }
            }
            for r in &n.routes {
                let rank = std::iter::once(&r.via)
                    .chain(&r.backups)
                    .position(|k| *k == p.node_key);
                if let (Some(rank), Some(net)) = (rank, net_of(&r.prefix)) {
                    entry
                        .routes
                        .push((slot, net, u32::try_from(rank).unwrap_or(u32::MAX)));
                }
            }
            peer_networks
                .entry(p.node_key)
                .or_default()
                .push(n.name.clone());
        }
    }
    interfaces.sort_by_key(|i| i.slot);
    Derived {
        node: NodeConfig {
            networks,
            peers: peers.into_values().collect(),
            // The compiled access policy the map carries. Without a usable one
            // the tunnel denies every packet (fail closed).
            policy: match &map.policy {
                Some(MapPolicy::Compiled(p)) => Some(CompiledPolicy::clone(p)),
                Some(MapPolicy::Unreadable(_)) | None => None,
            },
            services: service_nat(map, &assignment),
        },
        interfaces,
        peer_networks,
        policy_problem: policy_problem(map.policy.as_ref()),
    }
}

/// The services this node may use, for the tunnel's VIP translation: each in
/// its network's slot, with its instances' overlay addresses and health (a
/// service of a network the node is not in is left out).
fn service_nat(map: &NetworkMap, slots: &BTreeMap<String, NetIndex>) -> Vec<ServiceNat> {
    map.services
        .iter()
        .filter_map(|s| {
            Some(ServiceNat {
                name: s.name.clone(),
                net: *slots.get(&s.network)?,
                vip: s.vip,
                ports: s.ports.clone(),
                backends: s
                    .instances
                    .iter()
                    .map(|i| Backend {
                        addr: i.addr,
                        health: i.health,
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Why a map's policy cannot be enforced (None when it can): the tunnel then
/// denies every packet.
fn policy_problem(policy: Option<&MapPolicy>) -> Option<String> {
    match policy {
        Some(MapPolicy::Compiled(_)) => None,
        Some(MapPolicy::Unreadable(u)) => Some(format!(
            "the map's access policy cannot be used ({u}); denying all traffic"
        )),
        None => Some(
            "the map carries no access policy (is the controller older than this weftd?); denying all traffic"
                .to_owned(),
        ),
    }
}

/// The candidate endpoints this node reports: every non-loopback, non-weft host
/// address with the data-plane port.
pub fn host_candidates(addrs: &[(String, IpAddr)], port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = addrs
        .iter()
        .filter(|(ifname, ip)| {
            !ifname.starts_with(IFACE_PREFIX)
                && !ip.is_loopback()
                && !ip.is_unspecified()
                && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
        })
        .map(|(_, ip)| SocketAddr::new(*ip, port))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_peer_is_online_when_heard_or_on_the_controller() {
        use std::time::Duration;
        let s = Duration::from_secs;
        // Heard a moment ago: online even if the controller has not caught up.
        assert_eq!(peer_liveness(Some(s(1)), false, None, 0), (true, Some(1)));
        // A while ago: the controller decides.
        assert_eq!(peer_liveness(Some(s(20)), true, None, 0), (true, Some(20)));
        assert_eq!(
            peer_liveness(Some(s(20)), false, None, 0),
            (false, Some(20))
        );
        // Long ago: offline (a stopped peer whose direct path was "direct (107s)").
        assert_eq!(
            peer_liveness(Some(s(107)), true, None, 0),
            (false, Some(107))
        );
        // Never heard: the map says, with its last-seen time (Unix ms), in
        // whole seconds ago.
        assert_eq!(
            peer_liveness(None, false, Some(900_000), 1_000_999),
            (false, Some(100))
        );
        assert_eq!(peer_liveness(None, true, None, 1_000_000), (true, None));
    }

    use super::*;
    use std::net::Ipv4Addr;
    use weft_proto::netmap::{NetworkView, Peer, SelfNode};

    fn key(b: u8) -> NodeKey {
        NodeKey::from_bytes([b; 32])
    }

    fn net(name: &str, cidr: &str, me: [u8; 4], peers: &[(u8, [u8; 4])]) -> NetworkView {
        NetworkView {
            name: name.into(),
            ipv4_cidr: cidr.parse().unwrap(),
            ipv6_prefix: None,
            dns_domain: "weft.internal".into(),
            ipv4: Ipv4Addr::from(me),
            ipv6: None,
            peers: peers
                .iter()
                .map(|(k, ip)| Peer {
                    node_key: key(*k),
                    name: format!("p{k}"),
                    tags: vec![],
                    ipv4: Ipv4Addr::from(*ip),
                    ipv6: None,
                    endpoints: vec![SocketAddr::from(([192, 0, 2, *k], 51820))],
                    last_seen_ms: None,
                    online: true,
                })
                .collect(),
            routes: vec![],
            serves: vec![],
            anomaly: None,
        }
    }

    fn map(networks: Vec<NetworkView>) -> NetworkMap {
        NetworkMap {
            api_version: weft_proto::api::API_VERSION,
            version: 1,
            node: SelfNode {
                node_key: key(1),
                name: "me".into(),
                tags: vec![],
            },
            networks,
            relays: vec![],
            policy: None,
            data: vec![],
            secrets: vec![],
            host_firewall: None,
            dns_blocklist: None,
            services: vec![],
            provides: vec![],
            ssh_hosts: vec![],
        }
    }

    #[test]
    fn one_network_becomes_weft0_with_peers() {
        let m = map(vec![net(
            "prod",
            "100.64.0.0/10",
            [100, 64, 0, 2],
            &[(2, [100, 64, 0, 3])],
        )]);
        let d = derive(&m, &mut Slots::default());
        assert_eq!(d.interfaces.len(), 1);
        let i = &d.interfaces[0];
        assert_eq!(i.ifname, "weft0");
        assert_eq!(i.addresses, vec![(IpAddr::from([100, 64, 0, 2]), 10)]);
        assert_eq!(i.routes, vec![(IpAddr::from([100, 64, 0, 0]), 10)]);
        assert_eq!(d.node.peers.len(), 1);
        assert_eq!(
            d.node.peers[0].addresses,
            vec![(0, IpAddr::from([100, 64, 0, 3]))]
        );
        assert_eq!(
            d.node.networks[0].local_addresses,
            vec![IpAddr::from([100, 64, 0, 2])]
        );
    }

    #[test]
    fn routed_subnets_go_to_their_gateways_in_rank_order() {
        let mut n = net(
            "prod",
            "100.64.0.0/24",
            [100, 64, 0, 2],
            &[(2, [100, 64, 0, 3]), (3, [100, 64, 0, 4])],
        );
        let lan: weft_proto::net::Ipv4Net = "10.1.0.0/24".parse().unwrap();
        n.routes = vec![weft_proto::netmap::SubnetRoute {
            prefix: lan,
            via: key(3),
            backups: vec![key(2)],
        }];
        n.serves = vec!["192.168.9.0/24".parse().unwrap()];
        let d = derive(&map(vec![n]), &mut Slots::default());
        let lan_net: IpNet = "10.1.0.0/24".parse().unwrap();
        let by_key = |k: u8| {
            d.node
                .peers
                .iter()
                .find(|p| p.key == key(k))
                .unwrap()
                .routes
                .clone()
        };
        assert_eq!(by_key(3), vec![(0, lan_net, 0)]);
        assert_eq!(by_key(2), vec![(0, lan_net, 1)]);
        assert!(
            d.interfaces[0]
                .routes
                .contains(&(IpAddr::from([10, 1, 0, 0]), 24))
        );
        assert_eq!(
            d.node.networks[0].serves,
            vec!["192.168.9.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            d.interfaces[0].serves,
            vec![(IpAddr::from([192, 168, 9, 0]), 24)]
        );
    }

    #[test]
    fn service_vips_are_routed_through_their_network_only() {
        let a = net("a", "100.64.0.0/16", [100, 64, 0, 2], &[]);
        let b = net("b", "100.65.0.0/16", [100, 65, 0, 2], &[]);
        let mut m = map(vec![a, b]);
        let svc = |name: &str, network: &str, last: u8| weft_proto::service::ServiceView {
            name: name.into(),
            network: network.into(),
            vip: Ipv4Addr::new(100, 127, 255, last),
            fqdn: format!("{name}.svc.{network}.weft.internal"),
            ports: vec!["5432/tcp".parse().unwrap()],
            instances: vec![],
        };
        m.services = vec![svc("db", "a", 1), svc("web", "b", 2), svc("x", "gone", 3)];
        let d = derive(&m, &mut Slots::default());
        let vips = |i: usize| -> Vec<(IpAddr, u8)> {
            d.interfaces[i]
                .routes
                .iter()
                .copied()
                .filter(|(_, p)| *p == 32)
                .collect()
        };
        assert_eq!(vips(0), [(IpAddr::from([100, 127, 255, 1]), 32)]);
        assert_eq!(vips(1), [(IpAddr::from([100, 127, 255, 2]), 32)]);
        // The network's own prefix stays first (the firewall reads it there).
        assert_eq!(
            d.interfaces[0].routes[0],
            (IpAddr::from([100, 64, 0, 0]), 16)
        );
        // No service in the map: no VIP route.
        m.services.clear();
        let d = derive(&m, &mut Slots::default());
        assert!(
            d.interfaces
                .iter()
                .all(|i| i.routes.iter().all(|(_, p)| *p != 32))
        );
    }

    #[test]
    fn slots_are_stable_across_changes() {
        let mut slots = Slots::default();
        let a = net("a", "100.64.0.0/16", [100, 64, 0, 2], &[]);
        let b = net("b", "100.65.0.0/16", [100, 65, 0, 2], &[]);
        let c = net("c", "100.66.0.0/16", [100, 66, 0, 2], &[]);
        derive(&map(vec![a.clone(), b.clone()]), &mut slots);
        assert_eq!(slots.get().get("b"), Some(&1));
        // a leaves: b keeps weft1, c takes the free weft0.
        let d = derive(&map(vec![b, c]), &mut slots);
        assert_eq!(slots.get().get("b"), Some(&1));
        assert_eq!(slots.get().get("c"), Some(&0));
        assert_eq!(d.node.networks.len(), 2);
        assert_eq!(
            d.interfaces
                .iter()
                .map(|i| i.ifname.as_str())
                .collect::<Vec<_>>(),
            ["weft0", "weft1"]
        );
    }

    #[test]
    fn peer_in_two_networks_is_one_peer_with_both_addresses() {
        let m = map(vec![
            net(
                "a",
                "100.64.0.0/16",
                [100, 64, 0, 2],
                &[(2, [100, 64, 0, 3])],
            ),
            net(
                "b",
                "100.65.0.0/16",
                [100, 65, 0, 2],
                &[(2, [100, 65, 0, 3])],
            ),
        ]);
        let d = derive(&m, &mut Slots::default());
        assert_eq!(d.node.peers.len(), 1);
        assert_eq!(d.node.peers[0].addresses.len(), 2);
        assert_eq!(d.node.peers[0].endpoints.len(), 1, "endpoints deduplicated");
        assert_eq!(
            d.peer_networks[&key(2)],
            vec!["a".to_owned(), "b".to_owned()]
        );
    }

    #[test]
    fn policy_comes_from_the_map_and_fails_closed() {
        let mut m = map(vec![net(
            "prod",
            "100.64.0.0/10",
            [100, 64, 0, 2],
            &[(2, [100, 64, 0, 3])],
        )]);
        // No policy: the tunnel gets none (it denies everything), and why is said.
        let d = derive(&m, &mut Slots::default());
        assert!(d.node.policy.is_none());
        let why = d.policy_problem.expect("a reason");
        assert!(why.contains("no access policy"), "{why}");
        let wire = |v: serde_json::Value| serde_json::from_value::<MapPolicy>(v).unwrap();
        m.policy = Some(wire(serde_json::json!({
            "version": 1,
            "node": "me",
            "rules": [{"id": 0, "line": 3, "action": "allow"}],
            "inbound": [],
            "outbound": [{"rule": 0, "action": "allow", "proto": "tcp", "ports": [{"first": 5432, "last": 5432}],
                "local": ["100.64.0.2/32"], "peers": ["100.64.0.3/32"]}],
            "visible_peers": ["p2"],
        })));
        let d = derive(&m, &mut Slots::default());
        assert_eq!(d.policy_problem, None);
        let p = d.node.policy.expect("policy");
        assert_eq!(p.node, "me");
        assert_eq!(p.outbound.len(), 1);
        assert_eq!(p.visible_peers, vec!["p2".to_owned()]);
        // Garbage, or a version this build does not read: no policy (deny
        // all), not enforcement off, and the reason names the problem.
        for (bad, says) in [
            (serde_json::json!({"node": 7}), "does not parse"),
            (serde_json::json!({"version": 9, "node": "me"}), "version 9"),
        ] {
            m.policy = Some(wire(bad));
            let d = derive(&m, &mut Slots::default());
            assert!(d.node.policy.is_none());
            let why = d.policy_problem.expect("a reason");
            assert!(
                why.contains(says) && why.contains("denying all traffic"),
                "{why}"
            );
        }
    }

    #[test]
    fn services_reach_the_tunnel_in_their_networks_slot_with_health() {
        use weft_proto::service::{Health, ServiceInstance, ServiceView};
        let a = net(
            "a",
            "100.64.0.0/16",
            [100, 64, 0, 2],
            &[(1, [100, 64, 0, 3])],
        );
        let b = net("b", "100.65.0.0/16", [100, 65, 0, 2], &[]);
        let mut m = map(vec![a, b]);
        let inst = |last: u8, health| ServiceInstance {
            node_key: NodeKey::from_bytes([last; 32]),
            node: format!("n{last}"),
            addr: Ipv4Addr::new(100, 65, 0, last),
            health,
            checked_ms: None,
        };
        let view = |network: &str, instances| ServiceView {
            name: "db".into(),
            network: network.into(),
            vip: Ipv4Addr::new(100, 127, 255, 1),
            fqdn: format!("db.svc.{network}.weft.internal"),
            ports: vec!["5432/tcp".parse().unwrap()],
            instances,
        };
        m.services = vec![
            view(
                "b",
                vec![inst(3, Health::Healthy), inst(4, Health::Unhealthy)],
            ),
            view("not-a-member", vec![inst(5, Health::Healthy)]),
        ];
        let mut slots = Slots::default();
        let d = derive(&m, &mut slots);
        let slot_b = d.interfaces.iter().find(|i| i.network == "b").unwrap().slot;
        assert_eq!(
            d.node.services,
            vec![ServiceNat {
                name: "db".into(),
                net: slot_b,
                vip: Ipv4Addr::new(100, 127, 255, 1),
                ports: vec!["5432/tcp".parse().unwrap()],
                backends: vec![
                    Backend {
                        addr: Ipv4Addr::new(100, 65, 0, 3),
                        health: Health::Healthy
                    },
                    Backend {
                        addr: Ipv4Addr::new(100, 65, 0, 4),
                        health: Health::Unhealthy
                    },
                ],
            }]
        );
        // A health flip is a different NodeConfig, so the supervisor applies it.
        m.services[0].instances[1].health = Health::Healthy;
        let flipped = derive(&m, &mut slots);
        assert_ne!(flipped.node, d.node);
        assert_eq!(flipped.node.services[0].backends[1].health, Health::Healthy);
    }

    #[test]
    fn candidates_skip_loopback_link_local_and_weft() {
        let addrs = vec![
            ("lo".to_owned(), IpAddr::from([127, 0, 0, 1])),
            ("eth0".to_owned(), IpAddr::from([10, 1, 0, 2])),
            ("weft0".to_owned(), IpAddr::from([100, 64, 0, 2])),
            ("eth0".to_owned(), "fe80::1".parse().unwrap()),
            ("eth1".to_owned(), "2001:db8::5".parse().unwrap()),
        ];
        let c = host_candidates(&addrs, 51820);
        assert_eq!(
            c,
            vec![
                "10.1.0.2:51820".parse::<SocketAddr>().unwrap(),
                "[2001:db8::5]:51820".parse().unwrap()
            ]
        );
    }
}
