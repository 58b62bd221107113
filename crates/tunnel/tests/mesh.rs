//! Several `Node`s against each other over an in-memory network with loss and
//! reordering. Real WireGuard handshakes and encryption; no sockets, no TUN.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
#![allow(
    clippy::disallowed_methods,
    reason = "the harness needs one real Instant to start virtual time from"
)]

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use support::ipv4;
use weft_identity::{Difficulty, Identity, SearchOptions};
use weft_proto::NodeKey;
use weft_tunnel::path::PathKind;
use weft_tunnel::{
    Dest, DropReason, Event, NetOutcome, NetworkConfig, Node, NodeConfig, PeerConfig, TunOutcome,
};

struct Host {
    node: Node,
    underlay: SocketAddr,
    overlay: IpAddr,
    tun_rx: Vec<Vec<u8>>,
    events: Vec<Event>,
}

struct Datagram {
    from: SocketAddr,
    src_key: NodeKey,
    to: Dest,
    bytes: Vec<u8>,
}

/// A tiny seeded network: drops and reorders datagrams on demand.
struct Net {
    hosts: Vec<Host>,
    wire: Vec<Datagram>,
    rng: u64,
    loss_pct: u64,
    reorder: bool,
    /// Every datagram that crossed the wire, for replay tests.
    captured: Vec<Datagram>,
    /// Direct UDP between these host indices is blocked (both directions).
    blocked: Vec<(usize, usize)>,
    /// The simulated clock for the nodes' own timers.
    clock: Instant,
    /// Datagrams delivered through the relay.
    relayed: usize,
}

impl Net {
    fn new(n: usize) -> Self {
        let ids: Vec<Identity> = (0..n)
            .map(|_| {
                Identity::mint(
                    &mut rand_core::OsRng,
                    Difficulty::new(0).unwrap(),
                    &SearchOptions::default(),
                    &AtomicBool::new(false),
                    |_| {},
                )
                .unwrap()
            })
            .collect();
        let now = Instant::now();
        let hosts: Vec<Host> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Host {
                node: Node::new(id.node_key(), *id.x25519_secret(), [i as u8; 32], now),
                underlay: SocketAddr::from(([192, 0, 2, 10 + i as u8], 51820)),
                overlay: IpAddr::from([100, 64, 0, 10 + i as u8]),
                tun_rx: Vec::new(),
                events: Vec::new(),
            })
            .collect();
        let mut net = Net {
            hosts,
            wire: Vec::new(),
            rng: 42,
            loss_pct: 0,
            reorder: false,
            captured: Vec::new(),
            blocked: Vec::new(),
            clock: Instant::now(),
            relayed: 0,
        };
        net.configure_all();
        net
    }

    fn configure_all(&mut self) {
        let peers: Vec<PeerConfig> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| PeerConfig {
                key: h.node.key(),
                name: format!("n{i}"),
                addresses: vec![(0, h.overlay)],
                endpoints: vec![h.underlay],
                routes: vec![],
            })
            .collect();
        for h in &mut self.hosts {
            let cfg = NodeConfig {
                policy: Some(weft_policy::allow_all("test")),
                networks: vec![NetworkConfig {
                    local_addresses: vec![h.overlay],
                    serves: vec![],
                }],
                peers: peers.clone(),
                services: Vec::new(),
            };
            h.node.apply_config(self.clock, &cfg);
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn idx(&self, addr: SocketAddr) -> Option<usize> {
        self.hosts.iter().position(|h| h.underlay == addr)
    }

    fn idx_key(&self, key: NodeKey) -> Option<usize> {
        self.hosts.iter().position(|h| h.node.key() == key)
    }

    /// Tells every node the relay is up.
    fn relay_up(&mut self) {
        let now = self.clock;
        for i in 0..self.hosts.len() {
            self.hosts[i].node.set_relay_available(now, true);
            self.drain(i);
        }
    }

    /// Advances the clock and runs every node's timers, then the network.
    fn tick(&mut self, dt: std::time::Duration) {
        self.clock += dt;
        let now = self.clock;
        for i in 0..self.hosts.len() {
            self.hosts[i].node.handle_timeout(now);
            self.drain(i);
        }
        self.run();
    }

    fn path(&self, i: usize, j: usize) -> PathKind {
        let key = self.hosts[j].node.key();
        self.hosts[i]
            .node
            .peer_status(self.clock)
            .into_iter()
            .find(|p| p.key == key)
            .map(|p| p.path)
            .unwrap()
    }

    /// Host `i` writes `pkt` into its TUN.
    fn send_from_tun(&mut self, i: usize, pkt: &[u8]) -> Option<DropReason> {
        let mut out = vec![0u8; 2048];
        let from = self.hosts[i].underlay;
        let src_key = self.hosts[i].node.key();
        let now = self.clock;
        let res = self.hosts[i].node.handle_tun_packet(now, 0, pkt, &mut out);
        let dropped = match res {
            TunOutcome::Send { dst, datagram } => {
                self.wire.push(Datagram {
                    from,
                    src_key,
                    to: dst,
                    bytes: datagram.to_vec(),
                });
                None
            }
            TunOutcome::Reply(r) => {
                self.hosts[i].tun_rx.push(r.to_vec());
                None
            }
            TunOutcome::Queued => None,
            TunOutcome::Dropped(r) => Some(r),
        };
        self.drain(i);
        dropped
    }

    fn drain(&mut self, i: usize) {
        let from = self.hosts[i].underlay;
        let src_key = self.hosts[i].node.key();
        while let Some(t) = self.hosts[i].node.poll_transmit() {
            self.wire.push(Datagram {
                from,
                src_key,
                to: t.dst,
                bytes: t.payload,
            });
        }
        while let Some(e) = self.hosts[i].node.poll_event() {
            self.hosts[i].events.push(e);
        }
    }

    /// Delivers one datagram to its destination host.
    fn deliver(&mut self, d: Datagram) -> Option<NetOutcomeOwned> {
        let mut out = vec![0u8; 2048];
        let now = self.clock;
        let (i, res) = match d.to {
            Dest::Udp(to) => {
                let i = self.idx(to)?;
                let j = self.idx(d.from);
                if j.is_some_and(|j| {
                    self.blocked.contains(&(i, j)) || self.blocked.contains(&(j, i))
                }) {
                    return None;
                }
                (
                    i,
                    self.hosts[i]
                        .node
                        .handle_datagram(now, d.from, &d.bytes, &mut out),
                )
            }
            Dest::Relay(key) => {
                let i = self.idx_key(key)?;
                self.relayed += 1;
                (
                    i,
                    self.hosts[i]
                        .node
                        .handle_relay_frame(now, d.src_key, &d.bytes, &mut out),
                )
            }
        };
        let owned = match res {
            NetOutcome::WriteTun { net, packet } => {
                assert_eq!(net, 0);
                self.hosts[i].tun_rx.push(packet.to_vec());
                NetOutcomeOwned::Tun
            }
            NetOutcome::Handled => NetOutcomeOwned::Handled,
            NetOutcome::Dropped(r) => NetOutcomeOwned::Dropped(r),
        };
        self.drain(i);
        Some(owned)
    }

    /// Runs until the wire is empty (bounded, so a livelock fails the test).
    fn run(&mut self) {
        for _ in 0..100_000 {
            if self.wire.is_empty() {
                return;
            }
            let pick = if self.reorder {
                (self.rand() % self.wire.len() as u64) as usize
            } else {
                0
            };
            let d = self.wire.remove(pick);
            self.captured.push(Datagram {
                from: d.from,
                src_key: d.src_key,
                to: d.to,
                bytes: d.bytes.clone(),
            });
            if self.loss_pct > 0 && self.rand() % 100 < self.loss_pct {
                continue;
            }
            self.deliver(d);
        }
        panic!("network did not go quiet");
    }
}

#[derive(Debug, PartialEq)]
enum NetOutcomeOwned {
    Tun,
    Handled,
    Dropped(DropReason),
}

fn payload(n: u32) -> Vec<u8> {
    let mut p = vec![0u8; 64];
    p[..4].copy_from_slice(&n.to_be_bytes());
    p
}

/// Brings up sessions between all pairs and returns the net.
fn mesh(n: usize) -> Net {
    let mut net = Net::new(n);
    for i in 0..n {
        for j in 0..n {
            if i != j {
                let pkt = ipv4(net.hosts[i].overlay, net.hosts[j].overlay, &payload(0));
                assert_eq!(net.send_from_tun(i, &pkt), None);
                net.run();
            }
        }
    }
    for h in &mut net.hosts {
        h.tun_rx.clear();
    }
    net
}

#[test]
fn three_nodes_handshake_and_deliver_queued_packets() {
    let mut net = Net::new(3);
    let pkt = ipv4(net.hosts[0].overlay, net.hosts[1].overlay, &payload(7));
    assert_eq!(net.send_from_tun(0, &pkt), None);
    net.run();
    // The first packet waited for the handshake and then arrived intact.
    assert_eq!(net.hosts[1].tun_rx, vec![pkt.clone()]);
    assert!(
        net.hosts[0]
            .events
            .iter()
            .any(|e| matches!(e, Event::PeerUp { .. }))
    );
    assert!(
        net.hosts[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::PeerUp { .. }))
    );

    let mut net = mesh(3);
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                let pkt = ipv4(
                    net.hosts[i].overlay,
                    net.hosts[j].overlay,
                    &payload(100 + i as u32),
                );
                assert_eq!(net.send_from_tun(i, &pkt), None);
            }
        }
    }
    net.run();
    for h in &net.hosts {
        assert_eq!(
            h.tun_rx.len(),
            2,
            "each node gets one packet from each peer"
        );
    }
    for h in &net.hosts {
        let d = h.node.drops();
        assert_eq!(d.total() - d.get(DropReason::StaleHandshake), 0, "{d:?}");
    }
}

/// `peer_status` counts data packets and their plaintext bytes per peer, both
/// ways, the first one (queued behind the handshake) included; handshakes
/// are not data.
#[test]
fn peer_status_counts_data_packets_and_bytes() {
    let mut net = Net::new(2);
    let pkts: Vec<Vec<u8>> = (0..3)
        .map(|n| ipv4(net.hosts[0].overlay, net.hosts[1].overlay, &payload(n)))
        .collect();
    for p in &pkts {
        net.send_from_tun(0, p);
        net.run();
    }
    assert_eq!(net.hosts[1].tun_rx.len(), 3);
    let bytes: u64 = pkts.iter().map(|p| p.len() as u64).sum();
    let key0 = net.hosts[0].node.key();
    let key1 = net.hosts[1].node.key();
    let sender = net.hosts[0].node.peer_status(net.clock);
    let to1 = sender.iter().find(|p| p.key == key1).expect("peer 1");
    assert_eq!((to1.tx_packets, to1.tx_bytes), (3, bytes));
    assert_eq!((to1.rx_packets, to1.rx_bytes), (0, 0));
    let receiver = net.hosts[1].node.peer_status(net.clock);
    let from0 = receiver.iter().find(|p| p.key == key0).expect("peer 0");
    assert_eq!((from0.rx_packets, from0.rx_bytes), (3, bytes));
    assert_eq!(from0.tx_packets, 0);
}

#[test]
fn loss_and_reordering_deliver_a_clean_subset() {
    let mut net = mesh(2);
    net.loss_pct = 20;
    net.reorder = true;
    let sent: Vec<Vec<u8>> = (0..300)
        .map(|n| ipv4(net.hosts[0].overlay, net.hosts[1].overlay, &payload(n)))
        .collect();
    for p in &sent {
        net.send_from_tun(0, p);
    }
    net.run();
    let got = &net.hosts[1].tun_rx;
    // Every delivered packet is one that was sent, intact, and delivered once.
    let mut seen = BTreeMap::new();
    for p in got {
        assert!(sent.contains(p), "corrupted packet delivered");
        *seen.entry(p.clone()).or_insert(0) += 1;
    }
    assert!(seen.values().all(|&c| c == 1), "duplicate delivery");
    assert!(
        got.len() > 180 && got.len() < 300,
        "~80% expected, got {}",
        got.len()
    );
    assert_eq!(net.hosts[1].node.drops().get(DropReason::Replay), 0);
}

#[test]
fn spoofed_inner_source_is_dropped_and_counted() {
    let mut net = mesh(3);
    // Node 0 sends to node 1 a packet claiming node 2's overlay address.
    let spoofed = ipv4(net.hosts[2].overlay, net.hosts[1].overlay, &payload(1));
    assert_eq!(net.send_from_tun(0, &spoofed), None);
    let d = net.wire.remove(0);
    assert_eq!(
        net.deliver(d),
        Some(NetOutcomeOwned::Dropped(DropReason::SpoofedSource))
    );
    assert!(net.hosts[1].tun_rx.is_empty());
    assert_eq!(net.hosts[1].node.drops().get(DropReason::SpoofedSource), 1);
    let status = net.hosts[1].node.peer_status(net.clock);
    let from0 = status
        .iter()
        .find(|p| p.key == net.hosts[0].node.key())
        .unwrap();
    assert_eq!(from0.drops.get(DropReason::SpoofedSource), 1);

    // Packets not addressed to the receiver are refused too.
    let elsewhere = ipv4(
        net.hosts[0].overlay,
        IpAddr::from([100, 64, 0, 12]),
        &payload(2),
    );
    net.send_from_tun(0, &elsewhere);
    net.run();
    assert!(net.hosts[1].tun_rx.is_empty());
}

#[test]
fn unauthenticated_datagrams_never_reach_the_tun() {
    let mut net = mesh(2);
    let a = net.hosts[0].underlay;
    let b = net.hosts[1].underlay;
    let a_key = net.hosts[0].node.key();
    // Capture a genuine data datagram to replay and mangle.
    net.captured.clear();
    let pkt = ipv4(net.hosts[0].overlay, net.hosts[1].overlay, &payload(9));
    net.send_from_tun(0, &pkt);
    net.run();
    assert_eq!(net.hosts[1].tun_rx.len(), 1);
    let genuine = net
        .captured
        .iter()
        .find(|d| d.bytes.first() == Some(&4))
        .unwrap()
        .bytes
        .clone();
    net.hosts[1].tun_rx.clear();

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("replay", genuine.clone()),
        ("truncated", genuine[..genuine.len() - 5].to_vec()),
        ("empty", vec![]),
        ("garbage", vec![0xAB; 200]),
        ("short header", vec![4, 0, 0]),
    ];
    let mut flipped = genuine.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    cases.push(("bit flip", flipped));
    // Plaintext IP packet dressed as a data message for the real session index.
    let mut forged = genuine[..16].to_vec();
    forged[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    forged.extend_from_slice(&pkt);
    forged.extend_from_slice(&[0u8; 16]);
    cases.push(("forged data", forged));
    // A handshake initiation of the right size with random content.
    let mut hs = vec![0u8; 148];
    hs[0] = 1;
    for (i, b) in hs.iter_mut().enumerate().skip(4) {
        *b = (i * 7) as u8;
    }
    cases.push(("forged handshake", hs));

    for (name, bytes) in cases {
        let before = net.hosts[1].node.drops().total();
        let res = net.deliver(Datagram {
            from: a,
            src_key: a_key,
            to: Dest::Udp(b),
            bytes,
        });
        assert!(
            matches!(res, Some(NetOutcomeOwned::Dropped(_))),
            "{name}: {res:?}"
        );
        assert_eq!(
            net.hosts[1].node.drops().total(),
            before + 1,
            "{name} not counted"
        );
    }
    assert!(net.hosts[1].tun_rx.is_empty());
    assert!(net.hosts[1].node.drops().get(DropReason::Replay) >= 1);

    // The session still works afterwards.
    net.send_from_tun(0, &pkt);
    net.run();
    assert_eq!(net.hosts[1].tun_rx, vec![pkt]);
}

#[test]
fn unknown_destination_gets_icmp_unreachable() {
    let mut net = mesh(2);
    let pkt = ipv4(
        net.hosts[0].overlay,
        IpAddr::from([100, 64, 9, 9]),
        &payload(3),
    );
    assert_eq!(net.send_from_tun(0, &pkt), None);
    let reply = net.hosts[0]
        .tun_rx
        .pop()
        .expect("an ICMP error back to the sender");
    let v = weft_tunnel::ip::IpView::parse(&reply).unwrap();
    assert_eq!(v.protocol, weft_tunnel::ip::proto::ICMP);
    assert_eq!(v.dst, net.hosts[0].overlay);
    assert_eq!(net.hosts[0].node.drops().get(DropReason::NoRoute), 1);
    assert!(net.wire.is_empty(), "nothing goes on the wire");
}

#[test]
fn removed_peer_is_cut_off_at_once() {
    let mut net = mesh(3);
    // Node 1's map no longer has node 0.
    let peers: Vec<PeerConfig> = net.hosts[1..]
        .iter()
        .map(|h| PeerConfig {
            key: h.node.key(),
            name: String::new(),
            addresses: vec![(0, h.overlay)],
            endpoints: vec![h.underlay],
            routes: vec![],
        })
        .collect();
    let cfg = NodeConfig {
        policy: Some(weft_policy::allow_all("test")),
        networks: vec![NetworkConfig {
            local_addresses: vec![net.hosts[1].overlay],
            serves: vec![],
        }],
        peers,
        services: Vec::new(),
    };
    {
        let now = net.clock;
        net.hosts[1].node.apply_config(now, &cfg);
    }

    let pkt = ipv4(net.hosts[0].overlay, net.hosts[1].overlay, &payload(5));
    net.send_from_tun(0, &pkt);
    net.run();
    assert!(net.hosts[1].tun_rx.is_empty());
    assert!(net.hosts[1].node.drops().get(DropReason::UnknownSession) >= 1);
    assert!(
        net.hosts[1]
            .node
            .peer_status(net.clock)
            .iter()
            .all(|p| p.key != net.hosts[0].node.key())
    );
    // Node 2 still talks to node 1.
    let ok = ipv4(net.hosts[2].overlay, net.hosts[1].overlay, &payload(6));
    net.send_from_tun(2, &ok);
    net.run();
    assert_eq!(net.hosts[1].tun_rx, vec![ok]);
}

#[test]
fn roaming_peer_is_followed() {
    let mut net = mesh(2);
    let new_addr = SocketAddr::from(([198, 51, 100, 7], 40000));
    net.hosts[0].underlay = new_addr;
    let pkt = ipv4(net.hosts[0].overlay, net.hosts[1].overlay, &payload(1));
    net.send_from_tun(0, &pkt);
    net.run();
    assert_eq!(net.hosts[1].tun_rx.len(), 1);
    assert!(net.hosts[1].events.iter().any(
        |e| matches!(e, Event::PathChanged { path: PathKind::Direct(a), .. } if *a == new_addr)
    ));
    // Replies go to the new address.
    let back = ipv4(net.hosts[1].overlay, net.hosts[0].overlay, &payload(2));
    net.send_from_tun(1, &back);
    assert_eq!(net.wire.last().map(|d| d.to), Some(Dest::Udp(new_addr)));
    net.run();
    assert_eq!(net.hosts[0].tun_rx, vec![back]);
}

#[test]
fn networks_are_isolated_from_each_other() {
    let mut net = mesh(2);
    // Node 0 is also in a second network (index 1) where node 1 is not a member.
    let a_net1 = IpAddr::from([100, 80, 0, 1]);
    let peers = vec![PeerConfig {
        key: net.hosts[1].node.key(),
        name: "n1".into(),
        addresses: vec![(0, net.hosts[1].overlay)],
        endpoints: vec![net.hosts[1].underlay],
        routes: vec![],
    }];
    let cfg = NodeConfig {
        policy: Some(weft_policy::allow_all("test")),
        networks: vec![
            NetworkConfig {
                local_addresses: vec![net.hosts[0].overlay],
                serves: vec![],
            },
            NetworkConfig {
                local_addresses: vec![a_net1],
                serves: vec![],
            },
        ],
        peers,
        services: Vec::new(),
    };
    {
        let now = net.clock;
        net.hosts[0].node.apply_config(now, &cfg);
    }
    // Node 1 aims at node 0's address in the other network: it must not get in.
    let sneaky = ipv4(net.hosts[1].overlay, a_net1, &payload(1));
    // Node 1 has no route to that address at all...
    assert_eq!(net.send_from_tun(1, &sneaky), None);
    assert!(net.wire.is_empty());
    // ...and a hand-crafted peer config that routes it anyway is refused at node 0.
    let peers = vec![PeerConfig {
        key: net.hosts[0].node.key(),
        name: "n0".into(),
        addresses: vec![(0, net.hosts[0].overlay), (0, a_net1)],
        endpoints: vec![net.hosts[0].underlay],
        routes: vec![],
    }];
    let cfg = NodeConfig {
        policy: Some(weft_policy::allow_all("test")),
        networks: vec![NetworkConfig {
            local_addresses: vec![net.hosts[1].overlay],
            serves: vec![],
        }],
        peers,
        services: Vec::new(),
    };
    {
        let now = net.clock;
        net.hosts[1].node.apply_config(now, &cfg);
    }
    net.send_from_tun(1, &sneaky);
    net.run();
    assert!(net.hosts[0].tun_rx.is_empty());
    assert_eq!(net.hosts[0].node.drops().get(DropReason::SpoofedSource), 1);
    // Traffic in the shared network still flows.
    let ok = ipv4(net.hosts[1].overlay, net.hosts[0].overlay, &payload(2));
    net.send_from_tun(1, &ok);
    net.run();
    assert_eq!(net.hosts[0].tun_rx, vec![ok]);
}

#[test]
fn relay_carries_traffic_at_once_then_direct_takes_over() {
    let mut net = Net::new(2);
    net.relay_up();
    let pkt = ipv4(net.hosts[0].overlay, net.hosts[1].overlay, &payload(1));
    net.send_from_tun(0, &pkt);
    net.run();
    assert_eq!(
        net.hosts[1].tun_rx,
        vec![pkt.clone()],
        "first packet delivered"
    );
    // Discovery runs on the timers: a pong makes the path direct.
    net.tick(std::time::Duration::from_millis(10));
    assert!(
        matches!(net.path(0, 1), PathKind::Direct(_)),
        "{:?}",
        net.path(0, 1)
    );
    assert!(matches!(net.path(1, 0), PathKind::Direct(_)));
    let relayed = net.relayed;
    net.send_from_tun(0, &pkt);
    net.run();
    assert_eq!(net.relayed, relayed, "direct traffic avoids the relay");
    assert_eq!(net.hosts[1].tun_rx.len(), 2);
}

#[test]
fn blocked_direct_path_stays_on_relay_and_failover_recovers() {
    let mut net = Net::new(2);
    net.relay_up();
    net.blocked.push((0, 1));
    let pkt = ipv4(net.hosts[0].overlay, net.hosts[1].overlay, &payload(1));
    net.send_from_tun(0, &pkt);
    net.run();
    for _ in 0..5 {
        net.tick(std::time::Duration::from_secs(1));
    }
    assert_eq!(net.path(0, 1), PathKind::Relay);
    net.send_from_tun(0, &pkt);
    net.run();
    assert_eq!(net.hosts[1].tun_rx.len(), 2, "relayed traffic arrives");

    // Unblock: the periodic probe upgrades to direct.
    net.blocked.clear();
    for _ in 0..4 {
        net.tick(std::time::Duration::from_secs(1));
    }
    assert!(
        matches!(net.path(0, 1), PathKind::Direct(_)),
        "{:?}",
        net.path(0, 1)
    );

    // Cut the direct path mid-flow: within the trust window it falls back to the
    // relay and packets keep arriving.
    net.blocked.push((0, 1));
    let mut fell_back = None;
    for step in 1..=10 {
        net.tick(std::time::Duration::from_millis(500));
        if net.path(0, 1) == PathKind::Relay {
            fell_back = Some(step);
            break;
        }
    }
    assert!(fell_back.is_some(), "fell back to the relay within 5 s");
    let before = net.hosts[1].tun_rx.len();
    net.send_from_tun(0, &pkt);
    net.run();
    assert_eq!(net.hosts[1].tun_rx.len(), before + 1);
    assert!(net.hosts[0].events.iter().any(|e| matches!(
        e,
        Event::PathChanged {
            path: PathKind::Relay,
            ..
        }
    )));
}

#[test]
fn forged_and_unsolicited_discovery_is_dropped() {
    let mut net = mesh(2);
    let a = net.hosts[0].underlay;
    let b = net.hosts[1].underlay;
    let a_key = net.hosts[0].node.key();
    // Garbage after the magic, and a well-formed message under the wrong key.
    let mut junk = weft_tunnel::disco::MAGIC.to_vec();
    junk.extend_from_slice(a_key.as_bytes());
    junk.extend_from_slice(&[0u8; 40]);
    let wrong = weft_tunnel::disco::DiscoKey::from_shared(&[7; 32]).seal(
        &a_key,
        [1; 12],
        &weft_tunnel::disco::Disco::Pong { tx: 1, observed: a },
    );
    for bytes in [junk, wrong] {
        let res = net.deliver(Datagram {
            from: a,
            src_key: a_key,
            to: Dest::Udp(b),
            bytes,
        });
        assert_eq!(res, Some(NetOutcomeOwned::Dropped(DropReason::BadDisco)));
    }
}

/// Compiles `policy_text` for a mesh whose hosts are named n0, n1, ... and tagged
/// by `tags[i]`.
fn compile_policy(net: &Net, tags: &[&str], policy_text: &str) -> weft_policy::Compiled {
    let nodes = net
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| weft_policy::NodeFacts {
            services: Vec::new(),
            ssh_port: None,
            name: format!("n{i}"),
            tags: vec![tags[i].to_owned()],
            networks: vec![weft_policy::Membership {
                network: "lab".into(),
                addrs: vec![h.overlay],
            }],
            routed_subnets: vec![],
        })
        .collect();
    let inv = weft_policy::Inventory::new(nodes).unwrap();
    let policy = weft_policy::parse(policy_text).unwrap();
    weft_policy::compile(&policy, &inv)
}

fn set_policy(net: &mut Net, i: usize, policy: Option<weft_policy::CompiledPolicy>) {
    let peers: Vec<PeerConfig> = net
        .hosts
        .iter()
        .enumerate()
        .map(|(j, h)| PeerConfig {
            key: h.node.key(),
            name: format!("n{j}"),
            addresses: vec![(0, h.overlay)],
            endpoints: vec![h.underlay],
            routes: vec![],
        })
        .collect();
    let cfg = NodeConfig {
        policy,
        networks: vec![NetworkConfig {
            local_addresses: vec![net.hosts[i].overlay],
            serves: vec![],
        }],
        peers,
        services: Vec::new(),
    };
    let now = net.clock;
    net.hosts[i].node.apply_config(now, &cfg);
    net.drain(i);
}

fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    let mut p = ipv4(src, dst, &t);
    p[9] = 6;
    let c = weft_tunnel::ip::checksum(&[&p[..10], &[0, 0], &p[12..20]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

/// web (n0) may open TCP to db (n1) on port 5432; nothing else is allowed.
const WEB_TO_DB_5432: &str = r#"
[[rule]]
name = "web to db"
action = "allow"
from = ["tag:web"]
to = ["tag:db"]
proto = "tcp"
ports = [5432]
"#;

/// Two hosts, web (n0) and db (n1), each enforcing its part of `WEB_TO_DB_5432`.
fn web_and_db() -> Net {
    let mut net = mesh(2);
    let compiled = compile_policy(&net, &["web", "db"], WEB_TO_DB_5432);
    set_policy(&mut net, 0, compiled.node("n0").cloned());
    set_policy(&mut net, 1, compiled.node("n1").cloned());
    net.run();
    net
}

#[test]
fn policy_is_enforced_on_egress_and_ingress_statefully() {
    let mut net = web_and_db();
    let (web, db) = (net.hosts[0].overlay, net.hosts[1].overlay);

    // web -> db:5432 passes, and db's reply (SYN-ACK) passes back.
    let syn = tcp(web, db, 40000, 5432, 0x02);
    assert_eq!(net.send_from_tun(0, &syn), None);
    net.run();
    assert_eq!(net.hosts[1].tun_rx, vec![syn]);
    let synack = tcp(db, web, 5432, 40000, 0x12);
    assert_eq!(net.send_from_tun(1, &synack), None);
    net.run();
    assert_eq!(net.hosts[0].tun_rx, vec![synack]);

    // web -> db:22 is refused on egress with an ICMP "prohibited" to the sender.
    let ssh = tcp(web, db, 40001, 22, 0x02);
    net.hosts[0].tun_rx.clear();
    assert_eq!(net.send_from_tun(0, &ssh), None);
    let reply = net.hosts[0].tun_rx.pop().expect("ICMP prohibited");
    assert_eq!((reply[20], reply[21]), (3, 13));
    assert!(net.wire.is_empty());
    assert_eq!(net.hosts[0].node.drops().get(DropReason::PolicyNoRule), 1);

    // db may not open a connection to web.
    let back = tcp(db, web, 40002, 8080, 0x02);
    net.send_from_tun(1, &back);
    net.run();
    assert_eq!(net.hosts[1].node.drops().get(DropReason::PolicyNoRule), 1);

    // A web node that ignores its policy is still stopped at db's ingress.
    set_policy(&mut net, 0, Some(weft_policy::allow_all("n0")));
    net.hosts[1].tun_rx.clear();
    net.send_from_tun(0, &ssh);
    net.run();
    assert!(net.hosts[1].tun_rx.is_empty());
    assert_eq!(net.hosts[1].node.drops().get(DropReason::PolicyNoRule), 2);
    let st = net.hosts[1].node.peer_status(net.clock);
    let web_key = net.hosts[0].node.key();
    let web_peer = st.iter().find(|p| p.key == web_key).unwrap();
    // db's own refused egress to web plus web's refused ingress, both about web.
    assert_eq!(web_peer.drops.get(DropReason::PolicyNoRule), 2);
    assert!(
        net.hosts[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::PolicyDrop { .. }))
    );

    // Removing the rule ends the open flow: further packets of it are dropped.
    let closed = compile_policy(&net, &["web", "db"], "");
    set_policy(&mut net, 1, closed.node("n1").cloned());
    let more = tcp(web, db, 40000, 5432, 0x10);
    net.send_from_tun(0, &more);
    net.run();
    assert!(!net.hosts[1].tun_rx.contains(&more));
}

#[test]
fn a_direct_path_going_quiet_refreshes_the_reflexive_address_at_once() {
    // Roaming: when our own underlay address changes, every direct path goes
    // quiet. The node asks STUN again at once (not at the next 20 s refresh),
    // so peers learn the new reflexive address quickly.
    let mut net = Net::new(2);
    net.relay_up();
    let stun = SocketAddr::from(([198, 51, 100, 1], 3478));
    let now = net.clock;
    net.hosts[0].node.set_stun_servers(now, vec![stun]);
    let pkt = ipv4(net.hosts[0].overlay, net.hosts[1].overlay, &payload(1));
    net.send_from_tun(0, &pkt);
    net.run();
    net.tick(std::time::Duration::from_millis(10));
    assert!(matches!(net.path(0, 1), PathKind::Direct(_)));
    let stun_requests = |net: &Net| {
        net.captured
            .iter()
            .filter(|d| d.to == Dest::Udp(stun))
            .count()
    };
    let before = stun_requests(&net);
    assert!(before >= 1, "the first STUN request went out");

    net.blocked.push((0, 1));
    let mut fell_back = false;
    for _ in 0..10 {
        net.tick(std::time::Duration::from_millis(500));
        if net.path(0, 1) == PathKind::Relay {
            fell_back = true;
            break;
        }
    }
    assert!(fell_back, "fell back to the relay");
    net.tick(std::time::Duration::from_millis(10));
    assert!(
        stun_requests(&net) > before,
        "a new STUN request within 10 ms of the fallback, well before the 20 s refresh"
    );
}

/// Counter increments between two snapshots, per reason (global and per peer).
fn counter_delta(
    before: &(
        weft_tunnel::DropCounters,
        Vec<(NodeKey, weft_tunnel::DropCounters)>,
    ),
    after: &(
        weft_tunnel::DropCounters,
        Vec<(NodeKey, weft_tunnel::DropCounters)>,
    ),
) -> Vec<(Option<NodeKey>, DropReason, u64)> {
    let mut d = Vec::new();
    for r in DropReason::ALL {
        d.push((None, r, after.0.get(r) - before.0.get(r)));
        for ((k, a), (_, b)) in after.1.iter().zip(&before.1) {
            d.push((Some(*k), r, a.get(r) - b.get(r)));
        }
    }
    d
}

fn counters(
    net: &Net,
    i: usize,
) -> (
    weft_tunnel::DropCounters,
    Vec<(NodeKey, weft_tunnel::DropCounters)>,
) {
    let h = &net.hosts[i].node;
    (
        h.drops().clone(),
        h.peer_status(net.clock)
            .into_iter()
            .map(|p| (p.key, p.drops))
            .collect(),
    )
}

const WEB_TO_DB: &str = r#"
[[rule]]
name = "web to db"
action = "allow"
from = ["tag:web"]
to = ["tag:db"]
proto = "tcp"
ports = [5432]
"#;

#[test]
fn a_tun_batch_does_exactly_what_the_packets_one_by_one_do() {
    use weft_tunnel::batch::{DatagramBatch, PacketBatch};
    let mut net = mesh(3);
    let compiled = compile_policy(&net, &["web", "db", "db"], WEB_TO_DB);
    for i in 0..3 {
        set_policy(&mut net, i, compiled.node(&format!("n{i}")).cloned());
    }
    net.run();
    let (web, db1, db2) = (
        net.hosts[0].overlay,
        net.hosts[1].overlay,
        net.hosts[2].overlay,
    );
    let packets = |round: u16| {
        vec![
            tcp(web, db1, 40000 + round, 5432, 0x02), // allowed, peer 1
            tcp(web, db2, 40000 + round, 5432, 0x02), // allowed, peer 2
            tcp(web, db1, 40000 + round, 22, 0x02),   // policy: ICMP prohibited
            ipv4(web, IpAddr::from([100, 64, 0, 99]), b"x"), // no route: ICMP unreachable
            vec![0x45, 0, 0],                         // malformed
            tcp(web, db1, 40100 + round, 5432, 0x02), // allowed, peer 1 again
            tcp(web, db1, 40200 + round, 5432, 0x02), // allowed, peer 1 again
        ]
    };

    // One by one.
    let before = counters(&net, 0);
    for p in packets(0) {
        net.send_from_tun(0, &p);
    }
    let one_wire: Vec<(Dest, usize)> = net.wire.iter().map(|d| (d.to, d.bytes.len())).collect();
    net.run();
    let one = (
        std::mem::take(&mut net.hosts[0].tun_rx),
        std::mem::take(&mut net.hosts[1].tun_rx),
        std::mem::take(&mut net.hosts[2].tun_rx),
    );
    let one_counts = counter_delta(&before, &counters(&net, 0));

    // The same packets again, as one batch.
    let before = counters(&net, 0);
    let mut out = DatagramBatch::new(256, 2);
    let mut replies = PacketBatch::new(10, 1);
    let now = net.clock;
    let batch = packets(0);
    net.hosts[0].node.handle_tun_batch(
        now,
        0,
        batch.iter().map(Vec::as_slice),
        &mut out,
        &mut replies,
    );
    let (from, src_key) = (net.hosts[0].underlay, net.hosts[0].node.key());
    let batch_wire: Vec<(Dest, usize)> = out.datagrams().map(|(d, b)| (d, b.len())).collect();
    for (to, bytes) in out.datagrams() {
        net.wire.push(Datagram {
            from,
            src_key,
            to,
            bytes: bytes.to_vec(),
        });
    }
    for (n, r) in replies.packets() {
        assert_eq!(n, 0);
        net.hosts[0].tun_rx.push(r.to_vec());
    }
    net.drain(0);
    net.run();
    let batched = (
        std::mem::take(&mut net.hosts[0].tun_rx),
        std::mem::take(&mut net.hosts[1].tun_rx),
        std::mem::take(&mut net.hosts[2].tun_rx),
    );
    let batch_counts = counter_delta(&before, &counters(&net, 0));

    assert_eq!(batch_wire, one_wire);
    assert_eq!(batched, one);
    assert_eq!(batch_counts, one_counts);
    assert_eq!(one.1.len(), 3);
    assert_eq!(one.2.len(), 1);
    assert_eq!(one.0.len(), 2, "two ICMP errors for the local sender");
    // Datagrams to one peer, equal sizes, stay in one run for one GSO send.
    assert!(out.runs().any(|(r, _)| r.count() >= 2));
}

#[test]
fn a_datagram_batch_does_exactly_what_the_datagrams_one_by_one_do() {
    use weft_tunnel::batch::PacketBatch;
    let mut net = mesh(3);
    let compiled = compile_policy(&net, &["web", "db", "db"], WEB_TO_DB);
    // Host 1 enforces; host 0 sends whatever it is told (its policy is off).
    set_policy(&mut net, 1, compiled.node("n1").cloned());
    net.run();
    let (web, db1, db2) = (
        net.hosts[0].overlay,
        net.hosts[1].overlay,
        net.hosts[2].overlay,
    );
    let from = net.hosts[0].underlay;
    // Host 0 encrypts a mix for host 1; returns the datagrams.
    let seal = |net: &mut Net, round: u16| -> Vec<Vec<u8>> {
        let plain = [
            tcp(web, db1, 41000 + round, 5432, 0x02), // allowed
            tcp(db2, db1, 41000 + round, 5432, 0x02), // spoofed source (host 2's)
            tcp(web, db1, 41000 + round, 22, 0x02),   // ingress policy drop
            tcp(web, db1, 41100 + round, 5432, 0x02), // allowed
        ];
        let mut ds = Vec::new();
        for p in plain {
            let mut buf = vec![0u8; 2048];
            let now = net.clock;
            match net.hosts[0].node.handle_tun_packet(now, 0, &p, &mut buf) {
                TunOutcome::Send { datagram, .. } => ds.push(datagram.to_vec()),
                other => panic!("not sent: {other:?}"),
            }
        }
        let replay = ds[0].clone();
        ds.push(replay); // replayed
        ds.push(vec![1, 2, 3, 4, 5]); // not WireGuard
        ds
    };

    let set_a = seal(&mut net, 0);
    let set_b = seal(&mut net, 1);

    let before = counters(&net, 1);
    let now = net.clock;
    let mut one = Vec::new();
    for d in &set_a {
        let mut out = vec![0u8; 2048];
        if let NetOutcome::WriteTun { net: n, packet } =
            net.hosts[1].node.handle_datagram(now, from, d, &mut out)
        {
            one.push((n, packet.to_vec()));
        }
    }
    net.drain(1);
    let one_counts = counter_delta(&before, &counters(&net, 1));

    let before = counters(&net, 1);
    let mut out = PacketBatch::new(10, 2);
    net.hosts[1]
        .node
        .handle_datagram_batch(now, from, set_b.iter().map(Vec::as_slice), &mut out);
    net.drain(1);
    let batched: Vec<(usize, Vec<u8>)> = out.packets().map(|(n, p)| (n, p.to_vec())).collect();
    let batch_counts = counter_delta(&before, &counters(&net, 1));

    assert_eq!(one.len(), 2, "only the allowed, authentic packets");
    // Same shape: the allowed packets of round 0 and of round 1 differ only in
    // their ports, so compare what was delivered and what was counted.
    assert_eq!(batched.len(), one.len());
    for ((n1, p1), (n2, p2)) in one.iter().zip(&batched) {
        assert_eq!(n1, n2);
        assert_eq!(p1.len(), p2.len());
    }
    assert_eq!(batch_counts, one_counts);
    for r in [
        DropReason::SpoofedSource,
        DropReason::PolicyNoRule,
        DropReason::Replay,
        DropReason::NotWireGuard,
    ] {
        assert_eq!(net.hosts[1].node.drops().get(r), 2, "{r:?}");
    }
}

/// Host 0 reaches a subnet behind gateways 1 (rank 0) and 2 (rank 1).
fn gateways() -> (Net, IpAddr) {
    let mut net = mesh(3);
    let lan: weft_policy::IpNet = "10.9.0.0/24".parse().unwrap();
    let peer = |net: &Net, i: usize, routes: Vec<(usize, weft_policy::IpNet, u32)>| PeerConfig {
        key: net.hosts[i].node.key(),
        name: format!("n{i}"),
        addresses: vec![(0, net.hosts[i].overlay)],
        endpoints: vec![net.hosts[i].underlay],
        routes,
    };
    let now = net.clock;
    let client = NodeConfig {
        policy: Some(weft_policy::allow_all("test")),
        networks: vec![NetworkConfig {
            local_addresses: vec![net.hosts[0].overlay],
            serves: vec![],
        }],
        peers: vec![
            peer(&net, 1, vec![(0, lan, 0)]),
            peer(&net, 2, vec![(0, lan, 1)]),
        ],
        services: Vec::new(),
    };
    net.hosts[0].node.apply_config(now, &client);
    for g in [1, 2] {
        let cfg = NodeConfig {
            policy: Some(weft_policy::allow_all("test")),
            networks: vec![NetworkConfig {
                local_addresses: vec![net.hosts[g].overlay],
                serves: vec![lan],
            }],
            peers: vec![peer(&net, 0, vec![])],
            services: Vec::new(),
        };
        net.hosts[g].node.apply_config(now, &cfg);
    }
    (net, IpAddr::from([10, 9, 0, 5]))
}

#[test]
fn a_subnet_is_reached_through_its_gateway_and_answers_come_back() {
    let (mut net, lan_host) = gateways();
    let out = ipv4(net.hosts[0].overlay, lan_host, &payload(1));
    assert_eq!(net.send_from_tun(0, &out), None);
    net.run();
    assert_eq!(net.hosts[1].tun_rx, vec![out], "rank 0 gateway carries it");
    assert!(net.hosts[2].tun_rx.is_empty());
    // The answer from inside the subnet is accepted from its gateway...
    let back = ipv4(lan_host, net.hosts[0].overlay, &payload(2));
    net.send_from_tun(1, &back);
    net.run();
    assert_eq!(net.hosts[0].tun_rx, vec![back]);
    // ...but a source outside the gateway's subnets is spoofed.
    let spoof = ipv4(
        IpAddr::from([10, 8, 0, 5]),
        net.hosts[0].overlay,
        &payload(3),
    );
    net.send_from_tun(1, &spoof);
    net.run();
    assert_eq!(net.hosts[0].tun_rx.len(), 1);
    assert_eq!(net.hosts[0].node.drops().get(DropReason::SpoofedSource), 1);
    // A destination in no routed subnet has no route (ICMP unreachable).
    let stray = ipv4(
        net.hosts[0].overlay,
        IpAddr::from([10, 7, 0, 1]),
        &payload(4),
    );
    let before = net.hosts[0].node.drops().get(DropReason::NoRoute);
    net.send_from_tun(0, &stray);
    assert_eq!(
        net.hosts[0].node.drops().get(DropReason::NoRoute),
        before + 1
    );
}

#[test]
fn a_gateway_whose_path_dies_is_skipped_for_the_next_one() {
    let (mut net, lan_host) = gateways();
    net.blocked.push((0, 1));
    // The direct path to gateway 1 goes stale (trusted for 3 s without news).
    for _ in 0..5 {
        net.tick(std::time::Duration::from_secs(1));
    }
    let out = ipv4(net.hosts[0].overlay, lan_host, &payload(1));
    assert_eq!(net.send_from_tun(0, &out), None);
    net.run();
    assert_eq!(net.hosts[2].tun_rx, vec![out], "rank 1 gateway took over");
    // Gateway 1 back: it carries the subnet again.
    net.blocked.clear();
    for _ in 0..3 {
        net.tick(std::time::Duration::from_secs(1));
    }
    let out = ipv4(net.hosts[0].overlay, lan_host, &payload(2));
    net.send_from_tun(0, &out);
    net.run();
    assert_eq!(net.hosts[1].tun_rx.last(), Some(&out));
}

/// Host `i`'s configuration as `configure_all` builds it, with `policy` and the
/// peers' endpoints moved to `port` (a map event that changes only endpoints).
fn config_with(
    net: &Net,
    i: usize,
    policy: Option<weft_policy::CompiledPolicy>,
    port: u16,
) -> NodeConfig {
    let peers = net
        .hosts
        .iter()
        .enumerate()
        .map(|(j, h)| PeerConfig {
            key: h.node.key(),
            name: format!("n{j}"),
            addresses: vec![(0, h.overlay)],
            endpoints: vec![SocketAddr::new(h.underlay.ip(), port)],
            routes: vec![],
        })
        .collect();
    NodeConfig {
        policy,
        networks: vec![NetworkConfig {
            local_addresses: vec![net.hosts[i].overlay],
            serves: vec![],
        }],
        peers,
        services: Vec::new(),
    }
}

#[test]
fn a_map_without_a_policy_drops_every_packet() {
    let mut net = mesh(2);
    let (a, b) = (net.hosts[0].overlay, net.hosts[1].overlay);
    // Both enforce nothing-in-particular first: traffic flows.
    net.run();
    let probe = tcp(a, b, 40000, 80, 0x02);
    assert_eq!(net.send_from_tun(0, &probe), None);
    net.run();
    assert_eq!(net.hosts[1].tun_rx, vec![probe]);

    // Host 0's map carries no policy: every packet it would send is dropped,
    // counted as no_policy (and the sender gets an ICMP "prohibited").
    set_policy(&mut net, 0, None);
    assert!(
        net.hosts[0]
            .events
            .iter()
            .any(|e| matches!(e, Event::PolicyRejected { why } if why.contains("no usable access policy"))),
        "the change is reported"
    );
    net.hosts[1].tun_rx.clear();
    for (sport, dport, flags) in [(40001, 80, 0x02), (40002, 443, 0x10), (53, 53, 0x12)] {
        net.send_from_tun(0, &tcp(a, b, sport, dport, flags));
    }
    let mut icmp = ipv4(a, b, &[8, 0, 0, 0, 0, 1, 0, 1]);
    icmp[9] = 1;
    net.send_from_tun(0, &icmp);
    net.run();
    assert!(net.hosts[1].tun_rx.is_empty());
    assert_eq!(net.hosts[0].node.drops().get(DropReason::NoPolicy), 4);

    // Host 1 without a policy drops what arrives, too (ingress), even from a
    // peer that lets everything out.
    set_policy(&mut net, 0, Some(weft_policy::allow_all("n0")));
    set_policy(&mut net, 1, None);
    let late = tcp(a, b, 40003, 80, 0x02);
    assert_eq!(net.send_from_tun(0, &late), None);
    net.run();
    assert!(net.hosts[1].tun_rx.is_empty());
    assert_eq!(net.hosts[1].node.drops().get(DropReason::NoPolicy), 1);

    // Reported once per change, not per map event: a second map without a
    // policy (only endpoints moved) adds no event.
    let before = net.hosts[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::PolicyRejected { .. }))
        .count();
    let cfg = config_with(&net, 1, None, 40000);
    let now = net.clock;
    net.hosts[1].node.apply_config(now, &cfg);
    net.drain(1);
    let after = net.hosts[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::PolicyRejected { .. }))
        .count();
    assert_eq!((before, after), (1, 1));
}

#[test]
fn an_endpoint_only_map_change_keeps_the_policy_and_its_flows() {
    let mut net = web_and_db();
    let (web, db) = (net.hosts[0].overlay, net.hosts[1].overlay);
    // web opens a flow to db; db's reply is admitted by conntrack only (no rule
    // lets db open anything towards web).
    let syn = tcp(web, db, 40000, 5432, 0x02);
    assert_eq!(net.send_from_tun(0, &syn), None);
    net.run();
    assert_eq!(net.hosts[1].tun_rx, vec![syn]);

    // A map event that moves only web's endpoint (same policy, compiled anew:
    // equal, not the same allocation) reaches db.
    let again = compile_policy(&net, &["web", "db"], WEB_TO_DB_5432);
    let cfg = config_with(&net, 1, again.node("n1").cloned(), 51000);
    let now = net.clock;
    net.hosts[1].node.apply_config(now, &cfg);
    net.drain(1);
    assert!(
        !net.hosts[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::PolicyRejected { .. }))
    );
    // The flow survived: db's reply still passes its egress and web's ingress.
    let synack = tcp(db, web, 5432, 40000, 0x12);
    let dropped = net.hosts[1].node.drops().total();
    let _ = net.send_from_tun(1, &synack);
    assert_eq!(
        net.hosts[1].node.drops().total(),
        dropped,
        "db dropped its reply"
    );
    // And a packet db opens itself is still refused: the policy is in force.
    let open = tcp(db, web, 40010, 22, 0x02);
    let _ = net.send_from_tun(1, &open);
    assert_eq!(net.hosts[1].node.drops().get(DropReason::PolicyNoRule), 1);
}

#[test]
fn usage_counts_each_flow_once_per_direction_on_both_nodes_and_survives_a_policy_loss() {
    let mut net = web_and_db();
    let (web, db) = (net.hosts[0].overlay, net.hosts[1].overlay);
    let (web_key, db_key) = (net.hosts[0].node.key(), net.hosts[1].node.key());
    let syn = tcp(web, db, 40000, 5432, 0x02);
    let synack = tcp(db, web, 5432, 40000, 0x12);
    net.send_from_tun(0, &syn);
    net.run();
    net.send_from_tun(1, &synack);
    net.run();
    // A refused packet counts nowhere.
    net.send_from_tun(0, &tcp(web, db, 40001, 22, 0x02));
    net.run();
    // (The mesh's setup traffic has buckets of its own.)
    let one = |u: &weft_tunnel::NodeUsage| {
        let mut b = u.buckets.iter().filter(|b| b.proto == 6);
        let first = *b.next().expect("a TCP bucket");
        assert!(b.next().is_none(), "{u:?}");
        first
    };
    let w = one(&net.hosts[0].node.usage());
    assert_eq!((w.peer, w.port, w.proto), (Some(db_key), 5432, 6));
    assert_eq!(
        (w.counts.tx_bytes, w.counts.rx_bytes, w.counts.flows),
        (syn.len() as u64, synack.len() as u64, 1)
    );
    let d = one(&net.hosts[1].node.usage());
    assert_eq!((d.peer, d.port), (Some(web_key), 5432));
    assert_eq!(
        (d.counts.rx_bytes, d.counts.tx_bytes, d.counts.tx_packets),
        (syn.len() as u64, synack.len() as u64, 1)
    );
    // A map without a policy drops the engine: its counts are kept, and the
    // next engine carries on from them.
    set_policy(&mut net, 0, None);
    assert_eq!(one(&net.hosts[0].node.usage()), w);
    let compiled = compile_policy(&net, &["web", "db"], WEB_TO_DB_5432);
    set_policy(&mut net, 0, compiled.node("n0").cloned());
    assert_eq!(one(&net.hosts[0].node.usage()), w);
    net.send_from_tun(0, &tcp(web, db, 40002, 5432, 0x02));
    net.run();
    let again = one(&net.hosts[0].node.usage());
    assert_eq!(again.counts.flows, 2);
    assert_eq!(again.counts.tx_bytes, 2 * syn.len() as u64);
}

#[test]
fn refused_new_attempts_are_summarised_by_direction_and_peer_and_reset_when_read() {
    let mut net = web_and_db();
    let (web, db) = (net.hosts[0].overlay, net.hosts[1].overlay);
    let (web_key, db_key) = (net.hosts[0].node.key(), net.hosts[1].node.key());
    // web sweeps 30 of db's ports: its own egress policy refuses all but 5432.
    for port in 5420..5450u16 {
        net.send_from_tun(0, &tcp(web, db, 40000 + port, port, 0x02));
        net.run();
    }
    let seen = net.hosts[0].node.take_refusals();
    let egress = &seen.by_peer[&(weft_policy::Direction::Egress, db_key)];
    assert_eq!(egress.attempts, 29);
    assert_eq!(egress.ports.len(), 29);
    assert!(!egress.ports.contains(&5432));
    assert_eq!(egress.addrs.iter().copied().collect::<Vec<_>>(), vec![db]);
    assert_eq!(seen.by_peer.len(), 1, "{seen:?}");
    // Read and reset: the next window starts empty; db saw nothing.
    assert!(net.hosts[0].node.take_refusals().by_peer.is_empty());
    assert!(net.hosts[1].node.take_refusals().by_peer.is_empty());

    // A web that ignores its policy is refused at db's ingress instead.
    set_policy(&mut net, 0, Some(weft_policy::allow_all("n0")));
    for port in [22u16, 23, 25, 80] {
        net.send_from_tun(0, &tcp(web, db, 41000 + port, port, 0x02));
        net.run();
    }
    // Segments of no flow that open nothing (a stray ACK) are not attempts.
    net.send_from_tun(0, &tcp(web, db, 41999, 443, 0x10));
    net.run();
    let seen = net.hosts[1].node.take_refusals();
    let ingress = &seen.by_peer[&(weft_policy::Direction::Ingress, web_key)];
    assert_eq!(ingress.attempts, 4);
    assert_eq!(
        ingress.ports.iter().copied().collect::<Vec<_>>(),
        vec![22, 23, 25, 80]
    );
    assert!(net.hosts[0].node.take_refusals().by_peer.is_empty());
}

#[test]
fn an_underlay_change_makes_peers_follow_at_once_and_asks_stun_again() {
    // The link monitor saw our default route move to another link: our source
    // address is new. Without a word from us the peer keeps sending into the
    // old address until its trust in it lapses (3 s); after
    // `underlay_changed` it follows at once, before any packet of ours.
    let mut net = mesh(2);
    let stun = SocketAddr::from(([198, 51, 100, 1], 3478));
    let now = net.clock;
    net.hosts[0].node.set_stun_servers(now, vec![stun]);
    net.drain(0);
    net.run();
    let stun_requests = |net: &Net| {
        net.captured
            .iter()
            .filter(|d| d.to == Dest::Udp(stun))
            .count()
    };
    let before = stun_requests(&net);
    let new_addr = SocketAddr::from(([198, 51, 100, 7], 40000));
    net.hosts[0].underlay = new_addr;
    let now = net.clock;
    net.hosts[0].node.underlay_changed(now);
    net.drain(0);
    net.run();
    assert_eq!(
        net.path(1, 0),
        PathKind::Direct(new_addr),
        "the peer follows the new address with no time passing"
    );
    assert!(stun_requests(&net) > before, "STUN asked again at once");
    // The peer's packets reach us at the new address.
    let back = ipv4(net.hosts[1].overlay, net.hosts[0].overlay, &payload(9));
    net.send_from_tun(1, &back);
    assert_eq!(net.wire.last().map(|d| d.to), Some(Dest::Udp(new_addr)));
    net.run();
    assert_eq!(net.hosts[0].tun_rx, vec![back]);
}

#[test]
fn an_underlay_change_brings_a_relayed_peer_back_to_direct_at_once() {
    // Direct was blocked long enough that probing slowed to every 3 s; the
    // underlay change (a new network that lets UDP through) probes every
    // candidate at once, so direct wins over the relay with no time passing.
    let mut net = Net::new(2);
    net.relay_up();
    net.blocked.push((0, 1));
    let pkt = ipv4(net.hosts[0].overlay, net.hosts[1].overlay, &payload(1));
    net.send_from_tun(0, &pkt);
    net.run();
    for _ in 0..8 {
        net.tick(std::time::Duration::from_secs(1));
    }
    assert_eq!(net.path(0, 1), PathKind::Relay);
    net.blocked.clear();
    // Without the change nothing is probed for a while.
    net.tick(std::time::Duration::from_millis(1));
    assert_eq!(net.path(0, 1), PathKind::Relay, "no probe due yet");
    let now = net.clock;
    net.hosts[0].node.underlay_changed(now);
    net.drain(0);
    net.run();
    assert!(
        matches!(net.path(0, 1), PathKind::Direct(_)),
        "{:?}",
        net.path(0, 1)
    );
}
