//! The shell's tests over the in-memory twins: two I/O threads, each owning a
//! real node, wired through twin UDP sockets, fed and read through twin TUNs.
//! Real WireGuard handshakes and encryption; no root, no kernel devices.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use weft_identity::{Difficulty, Identity, SearchOptions};
use weft_tunnel::{NetworkConfig, Node, NodeConfig, PeerConfig};

use super::commands::{Command, Commands};
use super::io_loop::{self, Parts, poll_wait};
use super::relay_link::RelayOut;
use super::twins::{TwinTun, TwinUdp, wait_for};
use super::udp_batch::Offloads;
use super::{Dataplane, DataplaneConfig};
use crate::clock;

fn identity() -> Identity {
    Identity::mint(
        &mut rand_core::OsRng,
        Difficulty::new(0).expect("difficulty 0"),
        &SearchOptions::default(),
        &AtomicBool::new(false),
        |_| {},
    )
    .expect("mint")
}

/// An IPv4/UDP packet from `src` to `dst` carrying `payload`.
fn ipv4(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let len = 28 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(len).expect("small").to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&s.octets());
    p[16..20].copy_from_slice(&d.octets());
    let c = weft_tunnel::ip::checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(
        &u16::try_from(8 + payload.len())
            .expect("small")
            .to_be_bytes(),
    );
    p[28..].copy_from_slice(payload);
    p
}

/// The policy of a lab where every node may reach every other (compiled as
/// the controller does): `hosts` are (name, overlay address).
fn allow_all(hosts: &[(&str, IpAddr)]) -> weft_policy::Compiled {
    let nodes = hosts
        .iter()
        .map(|(name, addr)| weft_policy::NodeFacts {
            services: Vec::new(),
            ssh_port: None,
            name: (*name).to_owned(),
            tags: vec![],
            networks: vec![weft_policy::Membership {
                network: "lab".into(),
                addrs: vec![*addr],
            }],
            routed_subnets: vec![],
        })
        .collect();
    let inventory = weft_policy::Inventory::new(nodes).expect("inventory");
    let policy = weft_policy::parse("[[rule]]\naction = \"allow\"\nfrom = [\"*\"]\nto = [\"*\"]\n")
        .expect("policy");
    weft_policy::compile(&policy, &inventory)
}

/// Sends a command built around a reply channel and waits for the answer.
fn ask<R>(
    cmds: &Commands<TwinTun>,
    make: impl FnOnce(oneshot::Sender<R>) -> Command<TwinTun>,
) -> R {
    let (tx, rx) = oneshot::channel();
    cmds.send(make(tx)).expect("queued");
    rx.blocking_recv().expect("answered")
}

/// One shell: its I/O thread, its twins and its addresses.
struct Host {
    id: Identity,
    cmds: Commands<TwinTun>,
    thread: Option<JoinHandle<()>>,
    tun: Arc<TwinTun>,
    udp: Arc<TwinUdp>,
    overlay: IpAddr,
}

impl Host {
    fn start(i: u8, tun: Arc<TwinTun>, udp: Arc<TwinUdp>, pipelined: bool) -> Self {
        let id = identity();
        let node = Node::new(id.node_key(), *id.x25519_secret(), [i; 32], clock::now());
        let offloads = Offloads::setup(&*udp, true);
        let (reflexive, _) = watch::channel(Vec::new());
        let (cmds, thread) = io_loop::spawn::<TwinTun, _>(Parts {
            node,
            udp: udp.clone(),
            offloads,
            relay: RelayOut::default(),
            reflexive,
            pipelined,
        })
        .expect("I/O thread");
        let t = tun.clone();
        ask(&cmds, |done| Command::Tuns {
            remove: Vec::new(),
            add: vec![(0, t)],
            done,
        });
        Self {
            id,
            cmds,
            thread: Some(thread),
            tun,
            udp,
            overlay: IpAddr::from([100, 64, 0, 10 + i]),
        }
    }

    fn name(&self) -> String {
        format!("n{}", self.overlay)
    }

    /// Makes `peer` this host's only peer, under `policy`.
    fn peer_with(&self, peer: &Host, policy: &weft_policy::Compiled) {
        let cfg = NodeConfig {
            policy: policy.node(&self.name()).cloned(),
            networks: vec![NetworkConfig {
                local_addresses: vec![self.overlay],
                serves: vec![],
            }],
            peers: vec![PeerConfig {
                key: peer.id.node_key(),
                name: peer.name(),
                addresses: vec![(0, peer.overlay)],
                endpoints: vec![peer.udp.addr],
                routes: vec![],
            }],
            services: Vec::new(),
        };
        self.cmds.tell(Command::Apply(Box::new(cfg)));
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.cmds.tell(Command::Stop);
            t.join().expect("the I/O thread ends cleanly");
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i], 51820))
}

/// Two shells peered over twin UDP sockets: `a`'s socket refuses GSO when
/// `a_gso` is false; TUNs with or without the virtio-net header (`vnet`).
fn pair(vnet: bool, a_gso: bool, pipelined: bool) -> (Host, Host) {
    let (ua, ub) = (
        TwinUdp::new(addr(1), a_gso, true),
        TwinUdp::new(addr(2), true, true),
    );
    TwinUdp::connect(&ua, &ub);
    let a = Host::start(1, TwinTun::new(vnet), ua, pipelined);
    let b = Host::start(2, TwinTun::new(vnet), ub, pipelined);
    let policy = allow_all(&[(&a.name(), a.overlay), (&b.name(), b.overlay)]);
    a.peer_with(&b, &policy);
    b.peer_with(&a, &policy);
    (a, b)
}

/// Sends single packets from `a` until one reaches `b` (path discovery and the
/// handshake done); returns how many `b` has received.
fn warm_up(a: &Host, b: &Host) -> usize {
    wait_for("the first packet through the tunnel", || {
        a.tun.inject([ipv4(a.overlay, b.overlay, b"warm-up")]);
        std::thread::sleep(Duration::from_millis(20));
        let n = b.tun.written().len();
        (n > 0).then_some(n)
    })
}

/// `count` packets of equal size, numbered.
fn burst(a: &Host, b: &Host, count: u8) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| ipv4(a.overlay, b.overlay, &[i; 1000]))
        .collect()
}

/// Waits until `b` has written `want` packets after the first `skip`; returns them.
fn received(b: &Host, skip: usize, want: usize) -> Vec<Vec<u8>> {
    wait_for("the burst at the far TUN", || {
        let w = b.tun.written();
        (w.len() >= skip + want).then(|| w[skip..].to_vec())
    })
}

/// A batch read from the TUN twin (one read: a whole burst, as a split
/// super-packet) is encrypted and leaves as one GSO send of that many
/// datagrams on the UDP twin; the far shell delivers every packet, in order.
#[test]
fn a_batch_read_from_the_tun_leaves_as_one_gso_send_and_arrives_in_order() {
    let (a, b) = pair(true, true, false);
    let skip = warm_up(&a, &b);
    let packets = burst(&a, &b, 8);
    let sends_before = a.udp.sent().len();
    a.tun.inject(packets.clone());
    assert_eq!(received(&b, skip, 8), packets);
    assert!(
        a.tun.reads().contains(&8),
        "one read took the whole burst: {:?}",
        a.tun.reads()
    );
    let gso: Vec<_> = a.udp.sent()[sends_before..]
        .iter()
        .filter(|s| s.gso && s.dst == b.udp.addr)
        .cloned()
        .collect();
    assert_eq!(gso.len(), 1, "one GSO send for the burst: {gso:?}");
    assert_eq!(gso[0].datagrams, 8);
}

/// A status query returns the I/O thread's batch sizes and per-peer packet
/// counts (what metrics scrape): the burst of 8 is one TUN read of 8 segments
/// and one output batch of 8 datagrams on `a`, 8 more packets received by `b`,
/// and no I/O error on either side.
#[test]
fn status_reports_batch_sizes_packets_and_io_errors() {
    let (a, b) = pair(true, true, false);
    let skip = warm_up(&a, &b);
    let before = ask(&b.cmds, Command::Status).peers[0].rx_packets;
    let packets = burst(&a, &b, 8);
    a.tun.inject(packets.clone());
    assert_eq!(received(&b, skip, 8), packets);
    let sa = ask(&a.cmds, Command::Status);
    let in_8 = |h: &super::io_stats::BatchSizes| {
        h.buckets()
            .iter()
            .find(|(bound, _)| *bound == 8.0)
            .map_or(0, |(_, n)| *n)
    };
    let io = &sa.io.batches;
    assert!(io.tun_read.sum() > 8, "{io:?}");
    assert_eq!(in_8(&io.tun_read), 1, "one read of 5 to 8 segments: {io:?}");
    assert_eq!(in_8(&io.udp_send), 1, "the burst left as one batch: {io:?}");
    assert!(sa.peers[0].tx_packets >= 9, "{:?}", sa.peers[0]);
    let sb = wait_for("b to count the burst", || {
        let s = ask(&b.cmds, Command::Status);
        (s.peers[0].rx_packets >= before + 8).then_some(s)
    });
    assert!(sb.io.batches.udp_recv.sum() >= 9, "{:?}", sb.io);
    assert!(sb.io.batches.tun_write.count() >= 1, "{:?}", sb.io);
    for s in [&sa, &sb] {
        assert!(
            s.io.errors.iter().all(|(_, n)| *n == 0),
            "{:?}",
            s.io.errors
        );
    }
}

/// A UDP twin that refuses GSO sends (EIO, as a device without checksum
/// offload does) makes the shell fall back to one send per datagram, for
/// good, and everything still arrives in order.
#[test]
fn a_udp_socket_that_refuses_gso_makes_the_shell_fall_back_and_still_deliver() {
    let (a, b) = pair(true, false, false);
    let skip = warm_up(&a, &b);
    let sends_before = a.udp.sent().len();
    let first = burst(&a, &b, 6);
    a.tun.inject(first.clone());
    assert_eq!(received(&b, skip, 6), first);
    let second = burst(&a, &b, 6);
    a.tun.inject(second.clone());
    assert_eq!(received(&b, skip + 6, 6), second);
    let sends = &a.udp.sent()[sends_before..];
    assert!(
        sends.iter().all(|s| !s.gso),
        "no GSO send got through: {sends:?}"
    );
    let data = sends.iter().filter(|s| s.dst == b.udp.addr).count();
    assert!(data >= 12, "one send per datagram: {sends:?}");
    assert_eq!(a.udp.refused_gso(), 1, "GSO tried once, then off for good");
}

/// Large batches go to the output workers (pipelined) and still arrive
/// complete and in order, in both directions of the hand-off (UDP sends on
/// one side, TUN writes on the other); a TUN without offloads is read one
/// packet per read.
#[test]
fn handed_over_batches_arrive_in_order_and_a_tun_without_offloads_reads_one_at_a_time() {
    let (a, b) = pair(false, true, true);
    let skip = warm_up(&a, &b);
    let mut all = Vec::new();
    for _ in 0..5 {
        let p = burst(&a, &b, 20);
        a.tun.inject(p.clone());
        all.extend(p);
    }
    assert_eq!(received(&b, skip, all.len()), all);
    assert!(a.tun.reads().iter().all(|n| *n == 1), "one packet per read");
}

/// Datagrams that arrive before the first configuration wait in the socket:
/// a peer that learned of this node first is not dropped as unknown, and is
/// answered once the configuration arrives.
#[test]
fn datagrams_wait_for_the_first_configuration() {
    let (ua, ub) = (
        TwinUdp::new(addr(1), true, true),
        TwinUdp::new(addr(2), true, true),
    );
    TwinUdp::connect(&ua, &ub);
    let a = Host::start(1, TwinTun::new(true), ua, false);
    let b = Host::start(2, TwinTun::new(true), ub, false);
    let policy = allow_all(&[(&a.name(), a.overlay), (&b.name(), b.overlay)]);
    a.peer_with(&b, &policy);
    // `a` starts discovery and handshakes at once; `b` knows nothing yet.
    wait_for("a datagram from a to b", || {
        a.udp
            .sent()
            .iter()
            .any(|s| s.dst == b.udp.addr)
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(50));
    let drops = ask(&b.cmds, Command::Status).drops;
    assert_eq!(
        drops.nonzero().count(),
        0,
        "nothing read before the configuration"
    );
    b.peer_with(&a, &policy);
    warm_up(&a, &b);
    let drops = ask(&b.cmds, Command::Status).drops;
    let drops: Vec<_> = drops.nonzero().collect();
    assert!(
        drops.is_empty(),
        "no datagram dropped as unknown: {drops:?}"
    );
}

/// A command wakes the loop at once: a status query is answered in far less
/// than the node's timer tick (250 ms), which is the longest `poll` would
/// otherwise sleep.
#[test]
fn a_command_wakes_the_loop() {
    let (a, b) = pair(true, true, false);
    let mut waits = Vec::new();
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(37));
        let t = clock::now();
        let peers = ask(&a.cmds, Command::Status).peers;
        waits.push(clock::now() - t);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].key, b.id.node_key());
    }
    waits.sort();
    assert!(
        // Unwoken, answers would wait for the next timer tick: 125 ms median.
        waits[waits.len() / 2] < Duration::from_millis(60),
        "median answer time {:?}",
        waits[waits.len() / 2]
    );
}

/// The node's timers run in the loop (there is no timer task): after an input
/// that makes a timer due at once (STUN servers set), the loop re-reads the
/// node's deadline and the STUN request leaves without any packet traffic.
#[test]
fn the_loop_runs_the_nodes_timers_and_rereads_the_deadline_after_an_input() {
    let udp = TwinUdp::new(addr(1), true, true);
    let stun = TwinUdp::new(addr(9), true, true);
    TwinUdp::connect(&udp, &stun);
    let a = Host::start(1, TwinTun::new(true), udp, false);
    a.cmds.tell(Command::StunServers(vec![stun.addr]));
    wait_for("a STUN request from the timers", || {
        a.udp
            .sent()
            .iter()
            .any(|s| s.dst == stun.addr)
            .then_some(())
    });
}

/// The `poll` timeout is the node's deadline, rounded up (never early), and
/// zero once it has passed.
#[test]
fn poll_waits_until_the_deadline_rounded_up() {
    use nix::poll::PollTimeout;
    let now = clock::now();
    assert_eq!(poll_wait(None, now), PollTimeout::NONE);
    assert_eq!(poll_wait(Some(now), now), PollTimeout::ZERO);
    assert_eq!(
        poll_wait(Some(now - Duration::from_secs(1)), now),
        PollTimeout::ZERO
    );
    assert_eq!(
        poll_wait(Some(now + Duration::from_micros(1500)), now),
        PollTimeout::from(2u16)
    );
    assert_eq!(
        poll_wait(Some(now + Duration::from_millis(250)), now),
        PollTimeout::from(250u16)
    );
}

/// A TUN that cannot be opened with offloads is opened without them.
#[test]
fn a_tun_without_offloads_is_opened_without_them() {
    let asked = std::sync::Mutex::new(Vec::new());
    let open = |offload: bool| {
        asked.lock().expect("lock").push(offload);
        if offload {
            Err(std::io::Error::other("no TUNSETOFFLOAD"))
        } else {
            Ok("plain")
        }
    };
    assert_eq!(
        super::tun::open_with("weft9", true, open).expect("opened"),
        "plain"
    );
    assert_eq!(*asked.lock().expect("lock"), vec![true, false]);
    asked.lock().expect("lock").clear();
    assert_eq!(
        super::tun::open_with("weft9", false, open).expect("opened"),
        "plain"
    );
    assert_eq!(
        *asked.lock().expect("lock"),
        vec![false],
        "offloads not asked for"
    );
}

/// A TUN set change is answered once the loop polls the new set, and the
/// removed device is let go of (closed for a real device).
#[test]
fn a_removed_tun_is_let_go_of_before_the_change_is_answered() {
    let tun = TwinTun::new(true);
    let a = Host::start(1, tun.clone(), TwinUdp::new(addr(1), true, true), false);
    assert!(Arc::strong_count(&tun) > 2, "the loop holds the device");
    ask(&a.cmds, |done| Command::Tuns {
        remove: vec![0],
        add: Vec::new(),
        done,
    });
    assert_eq!(
        Arc::strong_count(&tun),
        2,
        "only the test's handles are left"
    );
}

/// A running data plane is not reported stopped, nor is one shut down on
/// purpose; shutdown joins the I/O thread.
#[tokio::test]
async fn io_stopped_only_when_the_thread_ends_unasked() {
    let node = Node::new(
        weft_proto::NodeKey::from_bytes([1; 32]),
        [2; 32],
        [3; 32],
        clock::now(),
    );
    let mut dp = Dataplane::start(node, 0, DataplaneConfig::default())
        .await
        .expect("start");
    assert_ne!(dp.port(), 0);
    assert!(!dp.io_stopped());
    assert!(dp.status().await.is_some(), "the thread answers");
    dp.shutdown();
    assert!(dp.io.is_none());
    assert!(!dp.io_stopped());
}

/// `restart-dataplane` (and a rotated key): a node put in place of the running
/// one gets the last configuration (its peer is there at once, with fresh
/// counters and no session) and reaches the peer again through a new
/// handshake; the TUN and the socket are the same.
#[test]
fn a_replaced_node_keeps_the_configuration_and_reaches_the_peer_again() {
    let (a, b) = pair(true, true, false);
    let skip = warm_up(&a, &b);
    let before = ask(&a.cmds, Command::Status);
    assert!(before.peers[0].tx_packets > 0);
    let fresh = Node::new(
        a.id.node_key(),
        *a.id.x25519_secret(),
        [9; 32],
        clock::now(),
    );
    ask(&a.cmds, |done| Command::Replace {
        node: Box::new(fresh),
        done,
    });
    let after = ask(&a.cmds, Command::Status);
    assert_eq!(after.peers.len(), 1, "the configuration was applied");
    assert_eq!(after.peers[0].key, b.id.node_key());
    assert_eq!(after.peers[0].tx_packets, 0, "a fresh core");
    assert!(after.peers[0].since_handshake.is_none(), "no session yet");
    let packets = burst(&a, &b, 4);
    a.tun.inject(packets.clone());
    let got = wait_for("the burst after the replacement", || {
        let w = b.tun.written();
        let got: Vec<_> = w[skip..]
            .iter()
            .filter(|p| packets.contains(p))
            .cloned()
            .collect();
        (got.len() == 4).then_some(got)
    });
    assert_eq!(got, packets);
    assert!(
        ask(&a.cmds, Command::Status).peers[0]
            .since_handshake
            .is_some()
    );
}
