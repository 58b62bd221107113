//! The simulator: hosts running a [`Node`] each, an underlay with links and
//! NATs, a relay, a STUN server, and a virtual clock that jumps to the next
//! thing due.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use weft_identity::{Identity, ProofOfWork};
use weft_proto::NodeKey;
use weft_tunnel::path::PathKind;
use weft_tunnel::{Event, Node, NodeConfig, PeerStatus};

use crate::control::{Control, NodeView, PolicyError};
use crate::nat::{Nat, NatConfig};
use crate::rng::SimRng;
use crate::trace::Trace;

mod wire;

/// The STUN server every node queries (the relay's STUN port in real life).
pub const STUN_SERVER: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 3478);

/// One host's access link: both directions of a datagram between two hosts
/// cross both hosts' links (latencies add, losses add, jitters add).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// One-way latency.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per datagram; datagrams
    /// overtake each other when it exceeds their spacing (reordering).
    pub jitter: Duration,
    /// Loss, per million datagrams.
    pub loss_ppm: u32,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss_ppm: 0,
        }
    }
}

/// How to build one host.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostSpec {
    /// Its NAT, if it sits behind one.
    pub nat: Option<NatConfig>,
    /// Its access link.
    pub link: Link,
}

/// How to build a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds every random choice.
    pub seed: u64,
    /// The hosts, named `n0`, `n1`, … in this order.
    pub hosts: Vec<HostSpec>,
    /// Extra one-way latency through the relay (on top of both links).
    pub relay_latency: Duration,
    /// Whether nodes query the STUN server (and advertise what it says).
    pub stun: bool,
    /// Whether to record the trace text (lines are counted either way).
    pub trace: bool,
}

impl SimConfig {
    /// `n` public hosts on default links, STUN on, tracing on.
    pub fn new(seed: u64, n: usize) -> Self {
        Self {
            seed,
            hosts: vec![HostSpec::default(); n],
            relay_latency: Duration::from_millis(5),
            stun: true,
            trace: true,
        }
    }
}

/// A packet a host's TUN received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// When (virtual time since the start).
    pub at: Duration,
    /// The packet's id ([`packet::make`]), if it carries one.
    pub id: Option<u64>,
    /// The packet.
    pub packet: Vec<u8>,
    /// How old the receiver's current session with the sender was
    /// (`since_handshake` of its peer status), when it has one.
    pub key_age: Option<Duration>,
}

/// One simulated machine.
pub struct Host {
    /// `n0`, `n1`, ….
    pub name: String,
    /// Its identity.
    pub key: NodeKey,
    /// The system under test.
    pub node: Node,
    /// Its own underlay address (private when behind a NAT).
    pub local: SocketAddr,
    /// Its overlay address.
    pub overlay: IpAddr,
    /// Its NAT.
    pub nat: Option<Nat>,
    /// Its access link.
    pub link: Link,
    /// Whether its access link is up.
    pub up: bool,
    /// Whether it keeps a relay connection (when the relay and its link are up).
    pub relay_wanted: bool,
    relay_told: bool,
    /// Packets its TUN received.
    pub tun: Vec<Arrival>,
    /// Its node's events.
    pub events: Vec<(Duration, Event)>,
    reflexive: Vec<SocketAddr>,
    config: Option<NodeConfig>,
    advertised: Vec<SocketAddr>,
}

impl Host {
    /// The address it is reached at from outside.
    pub fn public_ip(&self) -> IpAddr {
        self.nat.as_ref().map_or(self.local.ip(), |n| n.external)
    }
}

#[derive(Debug)]
enum Flight {
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        to: Option<usize>,
        bytes: Vec<u8>,
    },
    Relay {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
}

/// Something that changed how a host is reached (link, NAT, relay, advertised
/// endpoints), with the host it concerns; a reference model uses these to
/// know when paths were in flux.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PathEvent {
    /// When.
    pub at: Duration,
    /// The host.
    pub host: usize,
}

/// The simulation. See the crate docs.
pub struct Sim {
    base: Instant,
    now: Duration,
    rng: SimRng,
    /// The hosts, by index.
    pub hosts: Vec<Host>,
    /// The controller.
    pub control: Control,
    relay_up: bool,
    relay_latency: Duration,
    cut: BTreeSet<(usize, usize)>,
    wire: BTreeMap<(Duration, u64), Flight>,
    seq: u64,
    /// The trace.
    pub trace: Trace,
    /// Every change to how a host is reached, in time order.
    pub path_events: Vec<PathEvent>,
    scratch: Vec<u8>,
    steps: u64,
    next_id: u64,
    /// Per host: the instant its `handle_timeout` last ran, how many calls
    /// in a row at that instant left its timer still due, and whether the
    /// current spell of stale timers was traced.
    timer_ran: Vec<(Option<Duration>, u8, bool)>,
    /// Times a node's `poll_timeout` was still at or before `now` after two
    /// calls of `handle_timeout(now)` in a row (a drive-contract breach: a
    /// real shell would spin until its clock moved on; the simulation moves
    /// its clock 1 ms). One call that leaves work due at once is allowed (a
    /// shell polls again with a zero timeout).
    pub stale_timers: u64,
}

/// Steps without the clock advancing before the simulation is declared
/// livelocked.
const MAX_STEPS_AT_ONE_INSTANT: u64 = 100_000;
/// Calls of `handle_timeout` at one instant that leave the timer still due
/// before it counts as stale.
const STALE_AFTER_CALLS: u8 = 2;
/// How far the clock moves when only timers that stayed due are left.
const STALE_TIMER_STEP: Duration = Duration::from_millis(1);

impl Sim {
    /// Builds the hosts (keys and node seeds from `cfg.seed`), makes every host
    /// a member with a policy that allows nothing, and applies the maps.
    pub fn new(cfg: &SimConfig) -> Self {
        #[expect(
            clippy::disallowed_methods,
            reason = "the one real instant: the base of virtual time; traces print offsets from it only"
        )]
        let base = Instant::now();
        let mut rng = SimRng::new(cfg.seed);
        let hosts = cfg
            .hosts
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let id = Identity::from_parts(&rng.bytes32(), ProofOfWork { nonce: 0 });
                let seed = rng.bytes32();
                let octet = 10 + i as u8;
                let local = match spec.nat {
                    Some(_) => SocketAddr::from(([10, octet, 0, 2], 51820)),
                    None => SocketAddr::from(([192, 0, 2, octet], 51820)),
                };
                Host {
                    name: format!("n{i}"),
                    key: id.node_key(),
                    node: Node::new(id.node_key(), *id.x25519_secret(), seed, base),
                    local,
                    overlay: IpAddr::from([100, 64, 0, octet]),
                    nat: spec
                        .nat
                        .map(|c| Nat::new(IpAddr::from([203, 0, 113, octet]), c)),
                    link: spec.link,
                    up: true,
                    relay_wanted: true,
                    relay_told: false,
                    tun: Vec::new(),
                    events: Vec::new(),
                    reflexive: Vec::new(),
                    config: None,
                    advertised: Vec::new(),
                }
            })
            .collect::<Vec<_>>();
        let n = hosts.len();
        let mut sim = Self {
            base,
            now: Duration::ZERO,
            rng,
            hosts,
            control: Control::new(n),
            relay_up: false,
            relay_latency: cfg.relay_latency,
            cut: BTreeSet::new(),
            wire: BTreeMap::new(),
            seq: 0,
            trace: Trace::new(cfg.trace),
            path_events: Vec::new(),
            scratch: vec![0u8; 70_000],
            steps: 0,
            next_id: 0,
            timer_ran: vec![(None, 0, false); n],
            stale_timers: 0,
        };
        if cfg.stun {
            let now = sim.instant();
            for i in 0..n {
                sim.hosts[i].node.set_stun_servers(now, vec![STUN_SERVER]);
                sim.drain(i);
            }
        }
        // Every member with an empty policy: the text always parses.
        let _ = sim.apply_maps();
        sim
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The virtual clock as the nodes see it (`now` for their inputs).
    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// The hosts in host `i`'s current map, by index.
    pub fn peers_of(&self, i: usize) -> Vec<usize> {
        let Some(cfg) = self.hosts[i].config.as_ref() else {
            return Vec::new();
        };
        cfg.peers
            .iter()
            .filter_map(|p| self.host_of(&p.key))
            .collect()
    }

    /// What host `i`'s node says about its peer host `j` now.
    pub fn peer_status(&self, i: usize, j: usize) -> Option<PeerStatus> {
        let key = self.hosts[j].key;
        self.hosts[i]
            .node
            .peer_status(self.instant())
            .into_iter()
            .find(|p| p.key == key)
    }

    /// The path host `i` uses for host `j` (`None` when `j` is not its peer).
    pub fn path(&self, i: usize, j: usize) -> PathKind {
        self.peer_status(i, j).map_or(PathKind::None, |p| p.path)
    }

    fn offset(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.base)
    }

    /// The host index of `key`.
    pub fn host_of(&self, key: &NodeKey) -> Option<usize> {
        self.hosts.iter().position(|h| h.key == *key)
    }

    fn name_of(&self, key: &NodeKey) -> String {
        self.host_of(key)
            .map_or_else(|| "unknown".to_owned(), |i| self.hosts[i].name.clone())
    }

    fn event_path(&mut self, host: usize) {
        let at = self.now;
        self.path_events.push(PathEvent { at, host });
    }

    // ----- controller -------------------------------------------------------

    /// Recomputes every node's map from [`Sim::control`] and applies the ones
    /// that changed.
    pub fn apply_maps(&mut self) -> Result<(), PolicyError> {
        let views: Vec<NodeView> = self
            .hosts
            .iter()
            .map(|h| NodeView {
                name: h.name.clone(),
                key: h.key,
                overlay: h.overlay,
                local: h.local,
                reflexive: h.reflexive.clone(),
            })
            .collect();
        let configs = self.control.configs(&views)?;
        for (i, v) in views.iter().enumerate() {
            let adv = self.control.endpoints(i, v);
            if adv != self.hosts[i].advertised {
                self.hosts[i].advertised = adv;
                self.event_path(i);
            }
        }
        let now = self.instant();
        for (i, cfg) in configs.into_iter().enumerate() {
            if self.hosts[i].config.as_ref() == Some(&cfg) {
                continue;
            }
            let peers: Vec<&str> = cfg.peers.iter().map(|p| p.name.as_str()).collect();
            let line = format!(
                "map {} peers=[{}] policy={}",
                self.hosts[i].name,
                peers.join(","),
                match &cfg.policy {
                    None => "off".to_owned(),
                    Some(p) => format!("{} in {} out", p.inbound.len(), p.outbound.len()),
                }
            );
            self.trace.line(self.now, || line);
            self.hosts[i].node.apply_config(now, &cfg);
            self.hosts[i].config = Some(cfg);
            self.drain(i);
        }
        Ok(())
    }

    // ----- faults ---------------------------------------------------------------

    /// Takes host `i`'s access link down or up (its relay connection with it).
    pub fn set_link(&mut self, i: usize, up: bool) {
        if self.hosts[i].up != up {
            self.hosts[i].up = up;
            let name = self.hosts[i].name.clone();
            self.trace.line(self.now, || {
                format!("link {name} {}", if up { "up" } else { "down" })
            });
            self.event_path(i);
            self.sync_relay();
        }
    }

    /// Blocks (`cut`) or unblocks direct datagrams between hosts `i` and `j`.
    pub fn set_cut(&mut self, i: usize, j: usize, cut: bool) {
        let pair = (i.min(j), i.max(j));
        let changed = if cut {
            self.cut.insert(pair)
        } else {
            self.cut.remove(&pair)
        };
        if changed {
            self.trace.line(self.now, || {
                format!(
                    "{} n{}-n{}",
                    if cut { "cut" } else { "heal" },
                    pair.0,
                    pair.1
                )
            });
            self.event_path(i);
            self.event_path(j);
        }
    }

    /// Takes the relay down or up.
    pub fn set_relay(&mut self, up: bool) {
        if self.relay_up != up {
            self.relay_up = up;
            self.trace.line(self.now, || {
                format!("relay {}", if up { "up" } else { "down" })
            });
            for i in 0..self.hosts.len() {
                self.event_path(i);
            }
            self.sync_relay();
        }
    }

    /// Whether host `i` keeps a relay connection.
    pub fn set_relay_wanted(&mut self, i: usize, wanted: bool) {
        if self.hosts[i].relay_wanted != wanted {
            self.hosts[i].relay_wanted = wanted;
            self.event_path(i);
            self.sync_relay();
        }
    }

    /// Host `i`'s NAT forgets its mappings (new external ports from now on).
    pub fn rebind_nat(&mut self, i: usize) {
        if let Some(nat) = self.hosts[i].nat.as_mut() {
            nat.rebind();
            let name = self.hosts[i].name.clone();
            self.trace.line(self.now, || format!("nat {name} rebind"));
            self.event_path(i);
        }
    }

    /// Whether host `i` is connected to the relay now.
    pub fn relay_connected(&self, i: usize) -> bool {
        let h = &self.hosts[i];
        self.relay_up && h.up && h.relay_wanted
    }

    /// Whether direct datagrams between `i` and `j` are blocked.
    pub fn is_cut(&self, i: usize, j: usize) -> bool {
        self.cut.contains(&(i.min(j), i.max(j)))
    }

    fn sync_relay(&mut self) {
        let now = self.instant();
        for i in 0..self.hosts.len() {
            let on = self.relay_connected(i);
            if self.hosts[i].relay_told != on {
                self.hosts[i].relay_told = on;
                self.hosts[i].node.set_relay_available(now, on);
                self.drain(i);
            }
        }
    }

    // ----- time ----------------------------------------------------------------------

    /// The next instant something is due: a node's timer or a delivery. A
    /// timer still due after it ran twice at this instant counts as due 1 ms
    /// later (the time a spinning shell's clock would take to move).
    fn next_due(&self) -> Option<Duration> {
        let timers = self
            .hosts
            .iter()
            .zip(&self.timer_ran)
            .filter_map(|(h, ran)| {
                let t = self.offset(h.node.poll_timeout()?.0);
                Some(match ran {
                    (Some(at), STALE_AFTER_CALLS.., _) if *at == self.now && t <= self.now => {
                        self.now + STALE_TIMER_STEP
                    }
                    _ => t,
                })
            })
            .min();
        let wire = self.wire.keys().next().map(|k| k.0);
        [timers, wire].into_iter().flatten().min()
    }

    /// Runs everything due up to `end` (virtual time since the start), then
    /// sets the clock to `end`. The clock jumps from one due thing to the next.
    ///
    /// # Panics
    /// When the clock stops advancing for [`MAX_STEPS_AT_ONE_INSTANT`] steps
    /// (a livelock: a timer that stays due after it ran, or datagrams that
    /// never stop), naming each node's next timer.
    pub fn run_until(&mut self, end: Duration) {
        let mut same = 0u64;
        while let Some(next) = self.next_due().filter(|t| *t <= end) {
            self.steps += 1;
            if next > self.now {
                same = 0;
            }
            same += 1;
            if same > MAX_STEPS_AT_ONE_INSTANT {
                panic!("{}", self.livelock());
            }
            self.now = self.now.max(next);
            if let Some(entry) = self.wire.first_entry()
                && entry.key().0 <= self.now
            {
                let f = entry.remove();
                self.arrive(f);
                continue;
            }
            let now = self.instant();
            for i in 0..self.hosts.len() {
                let (at, calls, traced) = self.timer_ran[i];
                let calls = if at == Some(self.now) { calls } else { 0 };
                let due = self.hosts[i].node.poll_timeout();
                if due.is_none_or(|(t, _)| t > now) || calls >= STALE_AFTER_CALLS {
                    continue;
                }
                self.hosts[i].node.handle_timeout(now);
                self.drain(i);
                let after = self.hosts[i].node.poll_timeout();
                let calls = if after.is_some_and(|(t, _)| t <= now) {
                    calls + 1
                } else {
                    0
                };
                let mut traced = traced && calls > 0;
                if calls >= STALE_AFTER_CALLS {
                    self.stale_timers += 1;
                    if !traced {
                        traced = true;
                        let name = self.hosts[i].name.clone();
                        let (t, why) = after.unwrap_or((now, ""));
                        let at = crate::trace::stamp(self.offset(t));
                        self.trace.line(self.now, || {
                            format!(
                                "stale-timer {name} {why} due {at} still due after handle_timeout"
                            )
                        });
                    }
                }
                self.timer_ran[i] = (Some(self.now), calls, traced);
            }
        }
        self.now = self.now.max(end);
    }

    fn livelock(&self) -> String {
        let mut s = format!("simulation livelocked at {:?}:", self.now);
        for h in &self.hosts {
            let due = h.node.poll_timeout().map(|(t, why)| (self.offset(t), why));
            s.push_str(&format!(" {} next timer {due:?};", h.name));
        }
        s.push_str(&format!(" {} datagrams in flight", self.wire.len()));
        s
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    /// Steps taken so far (timer wake-ups plus deliveries).
    pub fn steps(&self) -> u64 {
        self.steps
    }
}
