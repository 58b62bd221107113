//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the
//! corpus replay test (`tests/fuzz_corpora.rs`), so CI exercises exactly what the
//! fuzzer runs, on stable Rust. No function here may panic on any input; the
//! assertions inside are the properties being fuzzed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use weft_identity::{Identity, ProofOfWork};
use weft_proto::NodeKey;

use crate::disco::{self, Disco, DiscoKey};
use crate::ip::{self, IpView, Unreachable};
use crate::wg::endpoint::Endpoint;
use crate::{
    Backend, Dest, MIN_OUT_BUF, NetOutcome, NetworkConfig, Node, NodeConfig, PeerConfig,
    ServiceNat, WG_OVERHEAD,
};
use weft_proto::service::{Health, ServicePort, ServiceProto};

/// The IP header view, ports, and both ICMP unreachable replies (into buffers of
/// every interesting size), for IPv4 and IPv6 senders.
pub fn ip_packet(data: &[u8]) {
    let Ok(view) = IpView::parse(data) else {
        return;
    };
    assert!(view.header_len <= view.total_len && view.total_len <= data.len());
    if let Some((_, _)) = view.ports(data) {
        assert!(view.header_len + 4 <= data.len());
    }
    let froms = [
        IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0xfd7a, 0, 0, 0, 0, 0, 0, 1)),
    ];
    let mut out = vec![0u8; 1500];
    for from in froms {
        for kind in [
            Unreachable::Host,
            Unreachable::Prohibited,
            Unreachable::Port,
        ] {
            for size in [0, 27, 28, 47, 48, 60, 1280, 1500] {
                let buf = &mut out[..size];
                let Some(n) = ip::icmp_error(data, &view, from, buf, kind) else {
                    continue;
                };
                assert!(n <= size);
                // The reply is itself a well-formed packet from `from` to the sender,
                // and never something we would answer again.
                let reply = IpView::parse(&buf[..n]);
                assert!(
                    matches!(reply, Ok(r) if r.src == from && r.dst == view.src && r.total_len == n),
                    "reply {reply:?}"
                );
                if let Ok(r) = reply {
                    assert_eq!(
                        ip::icmp_error(&buf[..n], &r, from, &mut [0u8; 1500], kind),
                        None
                    );
                }
            }
        }
    }
    let _ = ip::icmp_unreachable(data, &view, froms[0], &mut out);
}

/// The discovery key both fuzzing peers share (any fixed 32 bytes).
const DISCO_SHARED: [u8; 32] = [7; 32];

/// Seals arbitrary body bytes exactly as [`DiscoKey::seal`] would seal a valid
/// body, so the fuzzer reaches the body parser behind authentication.
fn seal_raw(sender: &NodeKey, nonce: [u8; 12], body: &[u8]) -> Vec<u8> {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(b"weft/disco/v1");
    h.update(DISCO_SHARED);
    let k: [u8; 32] = h.finalize().into();
    let Ok(unbound) = UnboundKey::new(&CHACHA20_POLY1305, &k) else {
        return Vec::new();
    };
    let key = LessSafeKey::new(unbound);
    let mut out = Vec::new();
    out.extend_from_slice(disco::MAGIC);
    out.extend_from_slice(sender.as_bytes());
    out.extend_from_slice(&nonce);
    let mut sealed = body.to_vec();
    let aad = Aad::from(&out[..40]);
    if let Ok(tag) =
        key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), aad, &mut sealed)
    {
        sealed.extend_from_slice(tag.as_ref());
    }
    out.extend_from_slice(&sealed);
    out
}

/// Discovery messages: the raw datagram through `sender` and `open`, and the
/// same bytes (after the first) as an authenticated body; what opens re-seals to
/// something that opens the same.
pub fn disco_message(data: &[u8]) {
    let key = DiscoKey::from_shared(&DISCO_SHARED);
    let _ = disco::is_disco(data);
    let _ = disco::sender(data);
    let _ = key.open(data);

    let me = NodeKey::from_bytes([9; 32]);
    let sealed = seal_raw(&me, [3; 12], data);
    if let Ok(msg) = key.open(&sealed) {
        assert_eq!(disco::sender(&sealed), Ok(me));
        let again = key.seal(&me, [4; 12], &msg);
        assert!(again.len() <= disco::MAX_LEN);
        assert_eq!(key.open(&again), Ok(msg));
        match msg {
            Disco::Ping { .. } => assert_eq!(data.len(), 9),
            Disco::Pong { observed, .. } => {
                assert_eq!(data.len(), if observed.is_ipv4() { 16 } else { 28 });
            }
        }
    }
}

/// Reads a little structured input: op bytes and length-prefixed chunks.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    /// A chunk whose length is the next two bytes (little endian), cut to what is left.
    fn chunk(&mut self) -> &'a [u8] {
        let lo = self.byte().unwrap_or(0);
        let hi = self.byte().unwrap_or(0);
        let n = usize::from(u16::from_le_bytes([lo, hi])).min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }
}

struct Harness {
    node: Node,
    /// The peer as a bare WireGuard endpoint: it encrypts whatever plaintext the
    /// fuzzer gives it, which a well-behaved `Node` would never send.
    peer: Endpoint,
    peer_key: NodeKey,
    peer_addr: SocketAddr,
    /// The node's own underlay address, as the peer sees it.
    node_addr: SocketAddr,
    now: Instant,
    /// The last datagrams the peer sent to the node (for replays and tampering).
    sent: Vec<Vec<u8>>,
    buf: Vec<u8>,
}

impl Harness {
    fn new(now: Instant) -> Self {
        let me = Identity::from_parts(&[1; 32], ProofOfWork { nonce: 0 });
        let them = Identity::from_parts(&[2; 32], ProofOfWork { nonce: 0 });
        let peer_addr = SocketAddr::from(([192, 0, 2, 2], 51820));
        let mut node = Node::new(me.node_key(), *me.x25519_secret(), [5; 32], now);
        node.apply_config(
            now,
            &NodeConfig {
                networks: vec![NetworkConfig {
                    local_addresses: vec![
                        IpAddr::from([100, 64, 0, 1]),
                        IpAddr::V6(Ipv6Addr::new(0xfd7a, 0, 0, 0, 0, 0, 0, 1)),
                    ],
                    serves: vec!["10.1.0.0/16".parse().unwrap_or_else(|_| unreachable!())],
                }],
                peers: vec![PeerConfig {
                    key: them.node_key(),
                    name: "peer".into(),
                    addresses: vec![
                        (0, IpAddr::from([100, 64, 0, 2])),
                        (0, IpAddr::V6(Ipv6Addr::new(0xfd7a, 0, 0, 0, 0, 0, 0, 2))),
                    ],
                    endpoints: vec![peer_addr],
                    routes: vec![(
                        0,
                        "10.2.0.0/16".parse().unwrap_or_else(|_| unreachable!()),
                        0,
                    )],
                }],
                policy: Some(weft_policy::allow_all("test")),
                // A service VIP whose one backend is the peer: TUN packets to
                // it and the peer's replies run through the VIP translation.
                services: vec![ServiceNat {
                    name: "db".into(),
                    net: 0,
                    vip: Ipv4Addr::new(100, 127, 255, 1),
                    ports: vec![
                        ServicePort {
                            port: 5432,
                            proto: ServiceProto::Tcp,
                        },
                        ServicePort {
                            port: 53,
                            proto: ServiceProto::Udp,
                        },
                    ],
                    backends: vec![Backend {
                        addr: Ipv4Addr::new(100, 64, 0, 2),
                        health: Health::Healthy,
                    }],
                }],
            },
        );
        let Some(peer) = Endpoint::new(
            *them.x25519_secret(),
            [6; 32],
            me.x25519_public(),
            77,
            None,
            now,
            SystemTime::UNIX_EPOCH,
        ) else {
            unreachable!("a valid key")
        };
        Self {
            node,
            peer,
            peer_key: them.node_key(),
            peer_addr,
            node_addr: SocketAddr::from(([192, 0, 2, 1], 51820)),
            now,
            sent: Vec::new(),
            buf: vec![0u8; 65_536 + WG_OVERHEAD],
        }
    }

    /// Delivers one datagram from the peer (over UDP from its endpoint, or through
    /// the relay) and checks what comes out.
    fn deliver(&mut self, datagram: &[u8], relay: bool) {
        let outcome = if relay {
            self.node
                .handle_relay_frame(self.now, self.peer_key, datagram, &mut self.buf)
        } else {
            self.node
                .handle_datagram(self.now, self.peer_addr, datagram, &mut self.buf)
        };
        if let NetOutcome::WriteTun { net, packet } = outcome {
            // Only authenticated packets from the peer's addresses to ours reach
            // the TUN (a reply to a VIP flow from the VIP, on a service port).
            assert_eq!(net, 0);
            let view = IpView::parse(packet);
            assert!(view.is_ok(), "{view:?}");
            if let Ok(v) = view {
                if v.src == IpAddr::V4(Ipv4Addr::new(100, 127, 255, 1)) {
                    let sport = v.ports(packet).map(|p| p.0);
                    assert!(
                        matches!(
                            (v.protocol, sport),
                            (ip::proto::TCP, Some(5432)) | (ip::proto::UDP, Some(53))
                        ),
                        "a VIP source on {} port {sport:?}",
                        v.protocol
                    );
                    return;
                }
                assert!(
                    matches!(v.src, IpAddr::V4(a) if a == Ipv4Addr::new(100, 64, 0, 2)
                        || (a.octets()[..2] == [10, 2]))
                        || v.src == IpAddr::V6(Ipv6Addr::new(0xfd7a, 0, 0, 0, 0, 0, 0, 2)),
                    "spoofed source {} reached the TUN",
                    v.src
                );
            }
        }
    }

    /// Sends a datagram from the peer and remembers it.
    fn send_from_peer(&mut self, datagram: Vec<u8>, relay: bool) {
        self.deliver(&datagram, relay);
        if self.sent.len() >= 8 {
            self.sent.remove(0);
        }
        self.sent.push(datagram);
    }

    /// Moves the node's transmits to the peer and the peer's answers back, until
    /// both are quiet (bounded), draining events on the way.
    fn pump(&mut self) {
        for _ in 0..16 {
            while self.node.poll_event().is_some() {}
            let Some(t) = self.node.poll_transmit() else {
                return;
            };
            if !matches!(t.dst, Dest::Udp(a) if a == self.peer_addr)
                && t.dst != Dest::Relay(self.peer_key)
            {
                continue;
            }
            let replies = self
                .peer
                .receive(self.now, self.node_addr, &t.payload)
                .map(|r| r.replies)
                .unwrap_or_default();
            for r in replies {
                self.send_from_peer(r, false);
            }
        }
    }

    /// The peer encrypts `plaintext` (whatever it is) and sends it.
    fn peer_sends(&mut self, plaintext: &[u8], relay: bool) {
        let msg = match self.peer.send(self.now, plaintext) {
            Ok((_, msg)) if !msg.is_empty() => msg,
            _ => return,
        };
        self.send_from_peer(msg, relay);
        self.pump();
    }
}

/// The tunnel core's datagram path with the fuzzer as a WireGuard peer: a `Node`
/// with a fixed key and one peer, driven by a little program read from `data`
/// (raw datagrams from the peer's endpoint or another address, relay frames,
/// arbitrary plaintext encrypted by the peer's real session, replays and
/// tampering of what the peer sent, time passing, packets from the node's TUN),
/// draining every output. Properties: no panic, and only authenticated packets
/// from the peer's own addresses reach the TUN.
pub fn tunnel_datagram(data: &[u8]) {
    #[expect(
        clippy::disallowed_methods,
        reason = "the harness needs one real Instant to start virtual time from"
    )]
    let start = Instant::now();
    let mut h = Harness::new(start);
    h.pump();
    let mut r = Reader(data);
    let mut ops = 0;
    while let Some(op) = r.byte() {
        ops += 1;
        if ops > 64 {
            break;
        }
        match op % 10 {
            0 => {
                let d = r.chunk().to_vec();
                h.send_from_peer(d, false);
                h.pump();
            }
            1 => {
                let d = r.chunk().to_vec();
                h.peer_sends(&d, false);
            }
            2 => {
                let d = r.chunk().to_vec();
                h.peer_sends(&d, true);
            }
            3 => {
                // Replay one of the peer's recent datagrams.
                let i = usize::from(r.byte().unwrap_or(0));
                if !h.sent.is_empty() {
                    let d = h.sent[i % h.sent.len()].clone();
                    h.deliver(&d, false);
                    h.pump();
                }
            }
            4 => {
                // Tamper with one: flip a byte, or cut it short.
                let i = usize::from(r.byte().unwrap_or(0));
                let at = usize::from(r.byte().unwrap_or(0));
                let x = r.byte().unwrap_or(0);
                if !h.sent.is_empty() {
                    let mut d = h.sent[i % h.sent.len()].clone();
                    if x == 0 {
                        d.truncate(at);
                    } else if !d.is_empty() {
                        let n = d.len();
                        d[at % n] ^= x;
                    }
                    h.deliver(&d, false);
                    h.pump();
                }
            }
            5 => {
                // Time passes (up to ~4 min), timers run.
                let secs = u64::from(r.byte().unwrap_or(0));
                h.now += Duration::from_millis(secs * 1000 + 1);
                h.node.handle_timeout(h.now);
                let _ = h.node.poll_timeout();
                h.pump();
            }
            6 => {
                // A packet from the node's own TUN.
                let d = r.chunk().to_vec();
                let mut out = vec![0u8; d.len() + WG_OVERHEAD + MIN_OUT_BUF];
                let _ = h.node.handle_tun_packet(h.now, 0, &d, &mut out);
                h.pump();
            }
            7 => {
                // A datagram from an address that is no peer's endpoint.
                let d = r.chunk().to_vec();
                let from = SocketAddr::from(([198, 51, 100, 9], 40000));
                let _ = h.node.handle_datagram(h.now, from, &d, &mut h.buf);
                h.pump();
            }
            8 => {
                let up = r.byte().unwrap_or(0) & 1 == 1;
                h.node.set_relay_available(h.now, up);
                h.pump();
            }
            _ => {
                // A disco message sealed with the real pair key: a ping or pong.
                let body = r.chunk();
                let me = Identity::from_parts(&[1; 32], ProofOfWork { nonce: 0 });
                let Some(shared) = h.peer.local.dh(&me.x25519_public()) else {
                    return;
                };
                let key = DiscoKey::from_shared(&shared);
                let msg = match body.first() {
                    Some(b) if b & 1 == 0 => Disco::Ping {
                        tx: u64::from(body.len() as u32),
                    },
                    _ => Disco::Pong {
                        tx: u64::from(body.len() as u32),
                        observed: SocketAddr::from(([203, 0, 113, 5], 4242)),
                    },
                };
                let d = key.seal(&h.peer_key, [1; 12], &msg);
                h.send_from_peer(d, false);
                h.pump();
            }
        }
    }
    let _ = h.node.peer_status(h.now);
    let _ = h.node.drops();
}
