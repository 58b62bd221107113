//! The I/O thread (`weft-io`): the node's only owner. One `poll(2)` over the
//! command eventfd, the UDP socket and every TUN device, with the node's
//! [`Node::poll_timeout`] as the timeout (re-read after every input); whatever
//! is ready is handled inline, then the node's timers when due.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::sync::{oneshot, watch};
use weft_tunnel::{Event, NetIndex, NetOutcome, Node, Transmit};

use super::commands::{self, Command, Commands, DataplaneStatus, Inbox};
use super::io_stats::{Batches, IoStats};
use super::relay_link::RelayOut;
use super::tun::{self, TUN_READS_PER_WAKE, TunDevice, TunRead, TunSide, TunTable};
use super::udp::{Output, UdpSide};
use super::udp_batch::{Offloads, UdpIo, Wait};
use super::{BUF_LEN, HDR};
use crate::clock;

/// What the I/O thread starts with.
pub(crate) struct Parts<U> {
    pub(crate) node: Node,
    pub(crate) udp: Arc<U>,
    pub(crate) offloads: Offloads,
    pub(crate) relay: RelayOut,
    pub(crate) reflexive: watch::Sender<Vec<SocketAddr>>,
    pub(crate) pipelined: bool,
}

/// Starts the I/O thread; it runs until [`Command::Stop`] (or until `poll`
/// fails) and closes its devices on the way out.
pub(crate) fn spawn<T: TunDevice, U: UdpIo>(
    parts: Parts<U>,
) -> io::Result<(Commands<T>, JoinHandle<()>)> {
    let (cmds, inbox) = commands::channel()?;
    let thread = std::thread::Builder::new()
        .name("weft-io".into())
        .spawn(move || IoLoop::new(parts).run(&inbox))?;
    Ok((cmds, thread))
}

/// The node and where its output goes: what the TUN and UDP sides work on.
pub(super) struct Owner<U> {
    pub(super) node: Node,
    pub(super) out: Output<U>,
    reflexive: watch::Sender<Vec<SocketAddr>>,
}

impl<U: UdpIo> Owner<U> {
    /// Moves the core's queued transmits into `tx` and handles its events
    /// (after every input, per the drive contract).
    pub(super) fn drain(&mut self, tx: &mut Vec<Transmit>) {
        while let Some(t) = self.node.poll_transmit() {
            tx.push(t);
        }
        while let Some(e) = self.node.poll_event() {
            log_event(&e);
            if let Event::ReflexiveAddresses { addrs } = e {
                self.reflexive.send_replace(addrs);
            }
        }
    }

    /// Drains the core and sends its control datagrams at once (dropped on a
    /// full socket buffer; the protocols retry).
    fn drain_and_flush(&mut self, tx: &mut Vec<Transmit>) {
        self.drain(tx);
        self.out.flush(tx, Wait::No);
    }
}

/// What the commands of one wake-up ask of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The TUN set changed: poll the new one.
    NewDevices,
    Stop,
}

struct IoLoop<T, U> {
    own: Owner<U>,
    tuns: TunTable<T>,
    /// The devices polled, in slot order.
    devs: Vec<(NetIndex, Arc<T>)>,
    tun: TunSide,
    udp: UdpSide,
    /// Control datagrams from commands and timers.
    tx: Vec<Transmit>,
    /// A relay frame decrypted for the TUN (with room for the header).
    framed: Vec<u8>,
    /// Answered once the loop polls the TUN set they asked for.
    synced: Vec<oneshot::Sender<()>>,
    /// Whether a configuration has been applied: until then datagrams wait in
    /// the socket (a peer that learned of this node first would otherwise be
    /// dropped as unknown, and its handshake wait for a retry).
    configured: bool,
    /// What the node was told, for a replacement node ([`Command::Replace`]).
    told: Told,
}

/// The last configuration, relay availability and STUN servers given to the
/// node: a replacement is given them too.
#[derive(Default)]
struct Told {
    cfg: Option<Box<weft_tunnel::NodeConfig>>,
    relay_up: bool,
    stun: Vec<SocketAddr>,
}

impl<T: TunDevice, U: UdpIo> IoLoop<T, U> {
    fn new(parts: Parts<U>) -> Self {
        let own = Owner {
            node: parts.node,
            out: Output {
                udp: parts.udp,
                offloads: Arc::new(parts.offloads),
                relay: parts.relay,
                errors: Arc::default(),
            },
            reflexive: parts.reflexive,
        };
        let tuns = TunTable::default();
        Self {
            tun: TunSide::new(&own, parts.pipelined),
            udp: UdpSide::new(&own, &tuns, parts.pipelined),
            own,
            tuns,
            devs: Vec::new(),
            tx: Vec::new(),
            framed: vec![0u8; HDR + BUF_LEN],
            synced: Vec::new(),
            configured: false,
            told: Told::default(),
        }
    }

    fn run(mut self, inbox: &Inbox<T>) {
        let udp = self.own.out.udp.clone();
        loop {
            let devs = self.devs.clone();
            self.tun
                .fit(devs.iter().map(|(_, d)| d.seg_len()).max().unwrap_or(0));
            // The devices removed are closed now (the previous set is dropped).
            for done in self.synced.drain(..) {
                let _ = done.send(());
            }
            // [wake, udp, tun...], built once per TUN set (no allocation per wait).
            let ev = PollFlags::POLLIN;
            let mut fds: Vec<PollFd<'_>> = [inbox.fd(), udp.as_fd()]
                .into_iter()
                .chain(devs.iter().map(|(_, d)| d.as_fd()))
                .map(|fd| PollFd::new(fd, ev))
                .collect();
            if !self.configured {
                fds[1].set_events(PollFlags::empty());
            }
            loop {
                let timeout = self.timers(clock::now());
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed; the data plane's I/O thread stops");
                        self.tuns.clear();
                        return;
                    }
                }
                let is_ready = |fd: &PollFd<'_>| {
                    fd.revents().is_some_and(|r| {
                        r.intersects(PollFlags::POLLIN | PollFlags::POLLERR | PollFlags::POLLHUP)
                    })
                };
                if is_ready(&fds[1]) {
                    self.udp.read(&mut self.own, &self.tuns);
                }
                for (i, (slot, dev)) in devs.iter().enumerate() {
                    if !is_ready(&fds[2 + i]) {
                        continue;
                    }
                    // A super-packet means a bulk flow: read on without a `poll` in
                    // between (a few times, so the other descriptors get their turn).
                    for _ in 0..TUN_READS_PER_WAKE {
                        match self.tun.read(&mut self.own, *slot, &**dev) {
                            TunRead::Bulk => {}
                            TunRead::Done => break,
                            TunRead::Failed => {
                                // Reads fail for good: stop polling it (the
                                // supervisor closes it).
                                fds[2 + i].set_events(PollFlags::empty());
                                break;
                            }
                        }
                    }
                }
                if is_ready(&fds[0]) {
                    let flow = self.commands(inbox);
                    if self.configured {
                        fds[1].set_events(ev);
                    }
                    match flow {
                        Flow::Continue => {}
                        Flow::NewDevices => break,
                        Flow::Stop => {
                            self.tuns.clear();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Runs the node's timers when due; returns how long `poll` may sleep
    /// (until the node's next deadline).
    fn timers(&mut self, now: Instant) -> PollTimeout {
        let mut at = self.own.node.poll_timeout().map(|(at, _)| at);
        if at.is_some_and(|at| at <= now) {
            self.own.node.handle_timeout(now);
            self.own.drain_and_flush(&mut self.tx);
            at = self.own.node.poll_timeout().map(|(at, _)| at);
        }
        poll_wait(at, now)
    }

    /// Takes every queued command (after the eventfd fired).
    fn commands(&mut self, inbox: &Inbox<T>) -> Flow {
        inbox.reset();
        let mut flow = Flow::Continue;
        while let Some(cmd) = inbox.next() {
            match self.command(cmd) {
                Flow::Stop => return Flow::Stop,
                Flow::NewDevices => flow = Flow::NewDevices,
                Flow::Continue => {}
            }
        }
        flow
    }

    fn command(&mut self, cmd: Command<T>) -> Flow {
        let now = clock::now();
        let node = &mut self.own.node;
        match cmd {
            Command::Apply(cfg) => {
                node.apply_config(now, &cfg);
                self.told.cfg = Some(cfg);
                self.configured = true;
            }
            Command::Replace {
                node: mut fresh,
                done,
            } => {
                fresh.set_stun_servers(now, self.told.stun.clone());
                fresh.set_relay_available(now, self.told.relay_up);
                if let Some(cfg) = &self.told.cfg {
                    fresh.apply_config(now, cfg);
                }
                *node = *fresh;
                let _ = done.send(());
            }
            Command::Tuns { remove, add, done } => {
                self.devs = self.tuns.change(&remove, add);
                self.synced.push(done);
                return Flow::NewDevices;
            }
            Command::RelayFrame { src, payload } => {
                let write =
                    match node.handle_relay_frame(now, src, &payload, &mut self.framed[HDR..]) {
                        NetOutcome::WriteTun { net, packet } => Some((net, packet.len())),
                        NetOutcome::Handled | NetOutcome::Dropped(_) => None,
                    };
                if let Some((net, len)) = write
                    && let Some(dev) = self.tuns.get(net)
                {
                    tun::write_one(&*dev, &mut self.framed[..HDR + len], &self.own.out.errors);
                }
            }
            Command::RelayAvailable(up) => {
                self.told.relay_up = up;
                node.set_relay_available(now, up);
            }
            Command::StunServers(servers) => {
                self.told.stun.clone_from(&servers);
                node.set_stun_servers(now, servers);
            }
            Command::UnderlayChanged => node.underlay_changed(now),
            Command::Status(reply) => {
                let batches = Batches {
                    tun_read: self.tun.read_sizes.clone(),
                    udp_send: self.tun.send_sizes.clone(),
                    udp_recv: self.udp.recv_sizes.clone(),
                    tun_write: self.udp.write_sizes.clone(),
                };
                let _ = reply.send(DataplaneStatus {
                    peers: node.peer_status(now),
                    drops: node.drops().clone(),
                    io: IoStats::new(&batches, &self.own.out.errors),
                });
            }
            Command::Explain { dir, packet, reply } => {
                let _ = reply.send(node.explain(dir, &packet, now));
            }
            Command::Refusals(reply) => {
                let _ = reply.send(node.take_refusals());
            }
            Command::Usage(reply) => {
                let _ = reply.send(node.usage());
            }
            Command::Stop => return Flow::Stop,
        }
        self.own.drain_and_flush(&mut self.tx);
        Flow::Continue
    }
}

/// The `poll` timeout that wakes at `deadline` (rounded up to whole
/// milliseconds, so the wake-up is never early); none without a deadline.
pub(super) fn poll_wait(deadline: Option<Instant>, now: Instant) -> PollTimeout {
    let Some(at) = deadline else {
        return PollTimeout::NONE;
    };
    let ms = at.saturating_duration_since(now).as_micros().div_ceil(1000);
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

fn log_event(e: &Event) {
    match e {
        Event::PeerUp { key } => tracing::info!(peer = %key, "peer session established"),
        Event::PeerDown { key } => tracing::info!(peer = %key, "peer session expired"),
        Event::PathChanged { key, path } => {
            tracing::info!(peer = %key, path = ?path, "peer path changed")
        }
        Event::PeerRejected { key, why } => tracing::warn!(peer = %key, why, "peer ignored"),
        Event::PolicyDrop {
            key,
            direction,
            explanation,
            suppressed,
        } => tracing::info!(
            peer = %key,
            ?direction,
            suppressed,
            "policy dropped a packet: {explanation}"
        ),
        Event::PolicyRejected { why } => {
            tracing::error!(
                why,
                "policy from the controller unusable: denying everything"
            )
        }
        Event::ReflexiveAddresses { addrs } => {
            tracing::info!(?addrs, "reflexive addresses (as STUN servers see us)")
        }
    }
}
