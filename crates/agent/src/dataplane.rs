//! The data plane's I/O shell: TUN devices, the UDP socket and the relay link
//! around the sans-IO [`weft_tunnel::Node`].
//!
//! Threads and tasks: one I/O thread (`weft-io`) reads every TUN device and the
//! UDP socket; a relay reader and a timer task run on the async runtime. Each
//! takes the node's lock only while the core processes one batch of input,
//! drains the core's transmit queue, then does its I/O. Packet buffers are
//! allocated once per thread or task and reused.
//!
//! Latency (issue 8): the I/O thread sleeps in one `poll(2)` over all of its
//! file descriptors and handles what is ready inline, so a packet costs one
//! thread wake-up per tunnel crossing, on the CPU the packet arrived on. The TUN
//! devices and the UDP socket are not registered with the async runtime (a
//! registered descriptor would wake a runtime worker for every packet too).
//! Measured with a minimal C forwarder on this kind of VM (`bench/README.md`):
//! one poll loop per end adds 0.12 ms of ping RTT over raw veth, one thread per
//! direction 0.155 ms, because the reply then wakes a second thread, often on the
//! other CPU. With more than one CPU, large batches are handed to a worker thread
//! per direction (UDP sends, TUN writes) so that reading and crypto overlap with
//! output; small ones are done inline while the worker is idle.
//!
//! Batching (issue 8): TUN devices are opened with a virtio-net header and
//! TSO/USO, so one read hands over a TCP/UDP super-packet of up to 64 KiB, split
//! into MTU-sized segments; the segments are encrypted back to back and every run
//! of them to one peer address leaves in one `sendmsg` with `UDP_SEGMENT`. The UDP
//! socket receives with `recvmmsg`, each message with `UDP_GRO` a run of
//! datagrams from one sender, and decrypted packets go back to the TUN
//! coalesced (GRO on the write side). Without an offload the TUN and UDP sends
//! fall back to one packet per syscall, UDP receives to one datagram per message.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle as ThreadHandle;
use std::time::Duration;

use anyhow::Context as _;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tun_rs::{DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};
use weft_api_client::Trust;
use weft_identity::Identity;
use weft_proto::netmap::Relay;
use weft_relay_client::{RelayClient, RelayClientConfig, RelayEvent, RelayEvents};
use weft_tunnel::batch::{DatagramBatch, MAX_SEGMENTS, PacketBatch};
use weft_tunnel::{
    Dest, DropCounters, Event, MIN_OUT_BUF, NetIndex, NetOutcome, Node, NodeConfig, PeerStatus,
    Transmit, WG_OVERHEAD,
};

use crate::clock;
use crate::udp_batch::{self, Offloads, Wait};

/// Largest datagram or packet handled one at a time, plus WireGuard overhead.
const BUF_LEN: usize = 65_536 + 64;
/// Room kept in front of every packet written to a TUN for its virtio-net header.
const HDR: usize = VIRTIO_NET_HDR_LEN;
/// Packets per batch (segments of one TUN read; datagrams decrypted per TUN flush).
const BATCH: usize = IDEAL_BATCH_SIZE;

/// The data plane's settings (`weftd --offload`, `--pipeline`; their
/// environment variables are read there, at the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Ask for TUN and UDP offloads (`false`: one packet per syscall, for
    /// comparisons and for testing the fallback path).
    pub offload: bool,
    /// Hand large batches' output to a worker thread per direction: `None`
    /// decides by the CPUs this process may use (more than one: yes).
    pub pipeline: Option<bool>,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            offload: true,
            pipeline: None,
        }
    }
}

impl DataplaneConfig {
    /// Whether output goes to worker threads: on one CPU the hop between
    /// threads is pure cost.
    fn pipelined(&self) -> bool {
        self.pipeline
            .unwrap_or_else(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
    }
}

/// A TUN device (non-blocking; a TUN write never waits), whether it speaks the
/// virtio-net header (offloads on), and the largest segment a read splits into.
struct Tun {
    dev: SyncDevice,
    vnet: bool,
    seg_len: usize,
}

impl Tun {
    /// Writes one packet held in `framed[HDR..]` (the first [`HDR`] bytes are
    /// scratch for the header).
    fn write_one(&self, framed: &mut [u8]) {
        let res = if self.vnet {
            // GSO_NONE, checksum complete: an ordinary packet.
            framed[..HDR].fill(0);
            self.dev.send(framed)
        } else {
            self.dev.send(&framed[HDR..])
        };
        if let Err(e) = res {
            tracing::trace!(error = %e, "TUN write failed");
        }
    }
}

/// State shared by the data-plane tasks.
struct Shared {
    node: Mutex<Node>,
    udp: UdpSocket,
    udp_offloads: Offloads,
    tuns: RwLock<BTreeMap<NetIndex, Arc<Tun>>>,
    relay: RwLock<Option<Arc<RelayClient>>>,
    reflexive: watch::Sender<Vec<SocketAddr>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Node> {
        // A panic while holding the lock leaves the core consistent (every mutation
        // is one call), so keep going rather than crash the agent.
        self.node.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tun(&self, net: NetIndex) -> Option<Arc<Tun>> {
        self.tuns
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&net)
            .cloned()
    }

    fn relay(&self) -> Option<Arc<RelayClient>> {
        self.relay
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Moves the core's queued transmits into `tx` and handles its events.
    fn drain(&self, node: &mut Node, tx: &mut Vec<Transmit>) {
        while let Some(t) = node.poll_transmit() {
            tx.push(t);
        }
        while let Some(e) = node.poll_event() {
            log_event(&e);
            if let Event::ReflexiveAddresses { addrs } = e {
                self.reflexive.send_replace(addrs);
            }
        }
    }

    /// Sends one datagram; `wait` says what a full socket buffer does.
    fn send(&self, dst: Dest, payload: &[u8], wait: Wait) {
        match dst {
            Dest::Udp(addr) => udp_batch::send_one(&self.udp, addr, payload, wait),
            Dest::Relay(peer) => match self.relay() {
                Some(r) => {
                    if let Err(e) = r.send(peer, payload) {
                        tracing::trace!(%peer, error = %e, "relay send dropped");
                    }
                }
                None => tracing::trace!(%peer, "no relay link: datagram dropped"),
            },
        }
    }

    fn flush(&self, tx: &mut Vec<Transmit>, wait: Wait) {
        for t in tx.drain(..) {
            self.send(t.dst, &t.payload, wait);
        }
    }

    /// Sends the datagrams of a batch, one GSO send per run to a UDP address
    /// (waiting for room in the socket's buffer: the data path).
    fn send_batch(&self, batch: &DatagramBatch) {
        for (run, data) in batch.runs() {
            match run.dst {
                Dest::Udp(addr) => udp_batch::send_segments(
                    &self.udp,
                    &self.udp_offloads,
                    addr,
                    data,
                    run.seg,
                    Wait::Room,
                ),
                Dest::Relay(_) => {
                    for d in data.chunks(run.seg.max(1)) {
                        self.send(run.dst, d, Wait::Room);
                    }
                }
            }
        }
    }
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

/// The running data plane.
pub(crate) struct Dataplane {
    shared: Arc<Shared>,
    /// Interface name per TUN slot (the devices themselves are in `shared`).
    tun_names: BTreeMap<NetIndex, String>,
    io: Option<(Arc<LoopCtl>, ThreadHandle<()>)>,
    timer_task: Option<JoinHandle<()>>,
    relay_task: Option<(Relay, JoinHandle<()>)>,
    port: u16,
    offload: bool,
}

impl Dataplane {
    /// Binds the UDP socket and starts the I/O thread and the timer task.
    pub(crate) async fn start(node: Node, port: u16, cfg: DataplaneConfig) -> anyhow::Result<Self> {
        let udp = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))
            .with_context(|| format!("binding the data-plane UDP socket on port {port}"))?;
        udp.set_nonblocking(true)
            .context("making the data-plane UDP socket non-blocking")?;
        let port = udp.local_addr()?.port();
        size_socket_buffers(&udp);
        let udp_offloads = Offloads::setup(&udp, cfg.offload);
        let (reflexive, _) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            node: Mutex::new(node),
            udp,
            udp_offloads,
            tuns: RwLock::default(),
            relay: RwLock::default(),
            reflexive,
        });
        let ctl = Arc::new(LoopCtl::new().context("creating the I/O thread's wake-up eventfd")?);
        let pipelined = cfg.pipelined();
        let io = {
            let (sh, ctl) = (shared.clone(), ctl.clone());
            std::thread::Builder::new()
                .name("weft-io".into())
                .spawn(move || io_loop(&sh, &ctl, pipelined))
                .context("starting the data plane's I/O thread")?
        };
        let timer_task = tokio::spawn(timer_task(shared.clone()));
        tracing::info!(
            port,
            udp_gso = shared.udp_offloads.gso_on(),
            udp_gro = shared.udp_offloads.gro,
            pipelined,
            "data plane listening"
        );
        #[cfg(feature = "unenforced-benchmark-only")]
        tracing::warn!(
            "BENCHMARK BUILD: access policy enforcement is compiled out; every packet passes"
        );
        Ok(Self {
            shared,
            tun_names: BTreeMap::new(),
            io: Some((ctl, io)),
            timer_task: Some(timer_task),
            relay_task: None,
            port,
            offload: cfg.offload,
        })
    }

    /// The bound UDP port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// This node's reflexive addresses as STUN servers see them (changes notify).
    pub(crate) fn reflexive(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.shared.reflexive.subscribe()
    }

    /// Makes the set of TUN devices match `wanted` (slot → interface name):
    /// creates missing ones, closes removed ones (their interfaces disappear with
    /// everything on them). Returns per-interface errors.
    pub(crate) fn ensure_tuns(
        &mut self,
        wanted: &BTreeMap<NetIndex, String>,
        mtu: u32,
    ) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let stale: Vec<NetIndex> = self
            .tun_names
            .iter()
            .filter(|(slot, name)| wanted.get(slot) != Some(*name))
            .map(|(slot, _)| *slot)
            .collect();
        if !stale.is_empty() {
            for slot in &stale {
                self.shared
                    .tuns
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(slot);
            }
            // The device closes when the I/O thread lets go of it: wait for that,
            // so the name is free again when this returns.
            self.sync_io();
            for slot in stale {
                if let Some(name) = self.tun_names.remove(&slot) {
                    tracing::info!(interface = %name, "closed TUN device");
                }
            }
        }
        let mut added = false;
        for (slot, name) in wanted {
            if self.tun_names.contains_key(slot) {
                continue;
            }
            let mtu16 = u16::try_from(mtu).unwrap_or(1420);
            let build = |offload: bool| {
                // Down: the reconciler brings it up once it is configured (IPv6
                // off first on an IPv4-only network, so the kernel sends nothing
                // of its own into the overlay).
                let dev = DeviceBuilder::new()
                    .name(name)
                    .mtu(mtu16)
                    .offload(offload)
                    .enable(false)
                    .build_sync()?;
                dev.set_nonblocking(true)?;
                io::Result::Ok(dev)
            };
            let dev = match self.offload.then(|| build(true)) {
                Some(Ok(dev)) => Ok(dev),
                Some(Err(e)) => {
                    tracing::warn!(interface = %name, error = %e, "TUN offloads (virtio-net header, TSO) unavailable; one packet per read");
                    build(false)
                }
                None => build(false),
            };
            match dev {
                Ok(dev) => {
                    let vnet = dev.tcp_gso();
                    let dev = Arc::new(Tun {
                        dev,
                        vnet,
                        // One read: a super-packet (up to 64 KiB behind its
                        // virtio-net header) split into segments of at most the MTU.
                        seg_len: usize::from(mtu16).max(1500) + 64,
                    });
                    self.shared
                        .tuns
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(*slot, dev);
                    self.tun_names.insert(*slot, name.clone());
                    added = true;
                    tracing::info!(interface = %name, offloads = vnet, "created TUN device");
                }
                Err(e) => errors.push((name.clone(), format!("creating TUN device {name}: {e}"))),
            }
        }
        if added {
            self.sync_io();
        }
        errors
    }

    /// Whether the I/O thread has ended without being asked to (a panic, or
    /// `poll` failing): the data plane no longer moves packets.
    pub(crate) fn io_stopped(&self) -> bool {
        self.io
            .as_ref()
            .is_some_and(|(ctl, t)| t.is_finished() && !ctl.stop.load(Ordering::Acquire))
    }

    /// Tells the I/O thread that the set of TUN devices changed and waits (up to
    /// a second) until it runs with the new set.
    fn sync_io(&self) {
        let Some((ctl, thread)) = &self.io else {
            return;
        };
        let want = ctl.wanted.fetch_add(1, Ordering::AcqRel) + 1;
        ctl.poke();
        let deadline = clock::now() + Duration::from_secs(1);
        while ctl.seen.load(Ordering::Acquire) < want {
            if thread.is_finished() || clock::now() > deadline {
                tracing::warn!("the data plane's I/O thread did not pick up the TUN change");
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Connects to `relay` (or disconnects with `None`), and points the core's
    /// STUN discovery at the relay's STUN server.
    pub(crate) async fn set_relay(&mut self, relay: Option<Relay>, identity: &Arc<Identity>) {
        if self.relay_task.as_ref().map(|(r, _)| r) == relay.as_ref() {
            return;
        }
        if let Some((old, task)) = self.relay_task.take() {
            task.abort();
            *self
                .shared
                .relay
                .write()
                .unwrap_or_else(PoisonError::into_inner) = None;
            self.shared.lock().set_relay_available(clock::now(), false);
            tracing::info!(url = %old.url, "left relay");
        }
        let Some(relay) = relay else {
            self.shared
                .lock()
                .set_stun_servers(clock::now(), Vec::new());
            return;
        };
        let stun = stun_server(&relay).await;
        self.shared
            .lock()
            .set_stun_servers(clock::now(), stun.into_iter().collect());
        let trust = match relay
            .tls_fingerprint
            .as_deref()
            .map(weft_api_client::parse_fingerprint)
        {
            Some(Ok(fp)) => Trust::Fingerprint(fp),
            Some(Err(e)) => {
                tracing::warn!(url = %relay.url, error = %e, "relay fingerprint unusable; not using this relay");
                return;
            }
            None => Trust::SystemRoots,
        };
        let cfg = RelayClientConfig::new(relay.url.clone(), trust, identity.node_key());
        let id = identity.clone();
        match RelayClient::connect(
            cfg,
            Arc::new(move |ctx: &str, msg: &[u8]| id.sign(ctx, msg)),
        ) {
            Ok((client, events)) => {
                *self
                    .shared
                    .relay
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(client));
                let task = tokio::spawn(relay_reader(events, self.shared.clone()));
                tracing::info!(url = %relay.url, "connecting to relay");
                self.relay_task = Some((relay, task));
            }
            Err(e) => tracing::warn!(url = %relay.url, error = %e, "cannot use relay"),
        }
    }

    /// Applies a new configuration to the core.
    pub(crate) async fn apply(&self, cfg: &NodeConfig) {
        let mut tx = Vec::new();
        {
            let mut node = self.shared.lock();
            node.apply_config(clock::now(), cfg);
            self.shared.drain(&mut node, &mut tx);
        }
        self.shared.flush(&mut tx, Wait::No);
    }

    /// Per-peer status and global drop counters.
    pub(crate) fn status(&self) -> (Vec<PeerStatus>, DropCounters) {
        let node = self.shared.lock();
        (node.peer_status(clock::now()), node.drops().clone())
    }

    /// The policy verdict `packet` would get now, explained (`weft why-blocked`);
    /// `None` before the first map brings a policy.
    pub(crate) fn explain(
        &self,
        dir: weft_policy::Direction,
        packet: &weft_policy::FiveTuple,
    ) -> Option<(bool, String)> {
        self.shared.lock().explain(dir, packet, clock::now())
    }

    /// Leaves the relay (on `weft down`).
    pub(crate) fn shutdown_relay(&mut self) {
        if let Some((_, t)) = self.relay_task.take() {
            t.abort();
        }
        *self
            .shared
            .relay
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.shared.lock().set_relay_available(clock::now(), false);
    }

    /// Whether the relay link is up.
    pub(crate) fn relay_connected(&self) -> Option<(String, bool)> {
        let url = self.relay_task.as_ref().map(|(r, _)| r.url.clone())?;
        Some((url, self.shared.relay().is_some_and(|r| r.is_connected())))
    }

    /// Stops every thread and task and closes every TUN device.
    pub(crate) fn shutdown(&mut self) {
        if let Some((ctl, thread)) = self.io.take() {
            ctl.stop.store(true, Ordering::Release);
            ctl.poke();
            // It finishes the batch in hand (microseconds) and returns.
            if thread.join().is_err() {
                tracing::error!("the data plane's I/O thread panicked");
            }
        }
        if let Some(t) = self.timer_task.take() {
            t.abort();
        }
        if let Some((_, t)) = self.relay_task.take() {
            t.abort();
        }
        self.tun_names.clear();
        self.shared
            .tuns
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        *self
            .shared
            .relay
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Socket buffer size asked for. The default (~208 KiB) overflows at a few
/// hundred Mbit/s: bench/dataplane measured 20% of tunnel datagrams dropped at the
/// receiver with it, none with 4 MiB (and 1.5x the throughput).
const SOCKET_BUFFER: usize = 4 << 20;

/// Raises the UDP socket's buffers past `net.core.{r,w}mem_max` when root
/// (`SO_RCVBUFFORCE`), else as far as the limits allow.
fn size_socket_buffers(udp: &UdpSocket) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(udp, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(udp, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(udp, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(udp, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    let rcv = getsockopt(udp, sockopt::RcvBuf).unwrap_or(0);
    let snd = getsockopt(udp, sockopt::SndBuf).unwrap_or(0);
    tracing::debug!(rcvbuf = rcv, sndbuf = snd, "UDP socket buffers");
    if rcv < SOCKET_BUFFER {
        tracing::warn!(
            rcvbuf = rcv,
            "could not raise the UDP receive buffer to 4 MiB (not root?); expect drops under load"
        );
    }
}

/// The relay's STUN server: its URL's host with the map's STUN port.
async fn stun_server(relay: &Relay) -> Option<SocketAddr> {
    let port = relay.stun_port?;
    let rest = relay
        .url
        .split_once("://")
        .map_or(relay.url.as_str(), |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => hostport,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::net::lookup_host((host, port)).await {
        Ok(mut addrs) => addrs.find(SocketAddr::is_ipv4),
        Err(e) => {
            tracing::warn!(%host, error = %e, "cannot resolve the relay's STUN server");
            None
        }
    }
}

/// Batches in flight per direction when output is handed to a worker thread.
const POOL: usize = 4;
/// Largest datagram batch (bytes) sent inline while the UDP worker is idle: a
/// ping, an ACK, a few interactive packets. Handing it over would cost a thread
/// wake-up on another CPU for nothing to overlap with.
const INLINE_BYTES: usize = 4096;
/// Largest batch of decrypted packets written inline while the TUN worker is idle.
const INLINE_PACKETS: usize = 4;

/// A thread doing one direction's output for the I/O thread. Filled batches go
/// to it, emptied ones come back; at most [`POOL`] exist, so a slow worker holds
/// the I/O thread back instead of queueing without bound. Order is kept: the
/// I/O thread does a batch itself only while the worker holds none.
struct Worker<B> {
    full: SyncSender<B>,
    empty: Receiver<B>,
    made: usize,
    /// Batches handed over and not yet done.
    pending: Arc<AtomicUsize>,
}

impl<B: Send + 'static> Worker<B> {
    /// Starts a worker running `work` on each batch (which leaves it empty). It
    /// ends when this handle is dropped.
    fn spawn(name: &str, mut work: impl FnMut(&mut B) + Send + 'static) -> io::Result<Self> {
        let (full_tx, full_rx) = sync_channel::<B>(POOL);
        let (empty_tx, empty_rx) = sync_channel::<B>(POOL);
        let pending = Arc::new(AtomicUsize::new(0));
        let done = pending.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(mut b) = full_rx.recv() {
                    work(&mut b);
                    done.fetch_sub(1, Ordering::AcqRel);
                    if empty_tx.send(b).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            full: full_tx,
            empty: empty_rx,
            made: 1,
            pending,
        })
    }

    /// [`Worker::spawn`] when `pipelined`; a worker that cannot start is logged
    /// and its output done inline.
    fn start_if(
        pipelined: bool,
        name: &str,
        work: impl FnMut(&mut B) + Send + 'static,
    ) -> Option<Self> {
        if !pipelined {
            return None;
        }
        Self::spawn(name, work)
            .map_err(|e| tracing::warn!(worker = name, error = %e, "cannot start; doing its output inline"))
            .ok()
    }

    /// Whether every batch handed over is done (so output done inline now
    /// cannot overtake one).
    fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Hands `filled` over and returns an empty batch to fill next (`None` when
    /// the worker is gone).
    fn pass(&mut self, filled: B, make: impl FnOnce() -> B) -> Option<B> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.full.send(filled).ok()?;
        match self.empty.try_recv() {
            Ok(b) => Some(b),
            Err(_) if self.made < POOL => {
                self.made += 1;
                Some(make())
            }
            Err(_) => self.empty.recv().ok(),
        }
    }
}

/// Hands `batch` to the worker in `slot` when it is `large` or the worker still
/// holds earlier batches (so nothing done inline overtakes them), leaving the
/// batch it gives back (or a new one from `make`) in its place. `false`: the caller does it inline. A
/// worker found gone is dropped, and its output is done inline from then on.
fn hand_over<B: Send + 'static>(
    slot: &mut Option<Worker<B>>,
    batch: &mut B,
    large: bool,
    placeholder: impl FnOnce() -> B,
    make: impl Fn() -> B,
) -> bool {
    let Some(w) = slot.as_mut() else {
        return false;
    };
    if !large && w.idle() {
        return false;
    }
    let filled = std::mem::replace(batch, placeholder());
    match w.pass(filled, &make) {
        Some(b) => *batch = b,
        None => {
            tracing::warn!("output worker gone; doing its output inline");
            *slot = None;
            *batch = make();
        }
    }
    true
}

/// Control of the I/O thread.
struct LoopCtl {
    /// Wakes the thread's `poll`.
    wake: EventFd,
    stop: AtomicBool,
    /// Bumped on every change to `Shared::tuns`.
    wanted: AtomicU64,
    /// The generation of the TUN set the thread runs with.
    seen: AtomicU64,
}

impl LoopCtl {
    fn new() -> io::Result<Self> {
        Ok(Self {
            wake: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
            stop: AtomicBool::new(false),
            wanted: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        })
    }

    fn poke(&self) {
        if let Err(e) = self.wake.write(1) {
            tracing::warn!(error = %e, "cannot wake the data plane's I/O thread");
        }
    }
}

/// The I/O thread: one `poll` over the wake-up eventfd, the UDP socket and
/// every TUN device; whatever is ready is handled inline.
fn io_loop(sh: &Arc<Shared>, ctl: &LoopCtl, pipelined: bool) {
    let mut udp = UdpSide::new(sh, pipelined);
    let mut tun = TunSide::new(sh, pipelined);
    loop {
        // A new generation of the TUN set: pick it up and tell `sync_io`.
        let want = ctl.wanted.load(Ordering::Acquire);
        let devs: Vec<(NetIndex, Arc<Tun>)> = sh
            .tuns
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(s, d)| (*s, d.clone()))
            .collect();
        tun.fit(devs.iter().map(|(_, d)| d.seg_len).max().unwrap_or(0));
        ctl.seen.store(want, Ordering::Release);
        // [wake, udp, tun...], built once per generation (no allocation per wait).
        let ev = PollFlags::POLLIN;
        let mut fds: Vec<PollFd<'_>> = [ctl.wake.as_fd(), sh.udp.as_fd()]
            .into_iter()
            .chain(devs.iter().map(|(_, d)| d.dev.as_fd()))
            .map(|fd| PollFd::new(fd, ev))
            .collect();
        loop {
            if ctl.stop.load(Ordering::Acquire) {
                return;
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "poll failed; the data plane's I/O thread stops");
                    return;
                }
            }
            let is_ready = |fd: &PollFd<'_>| {
                fd.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLERR | PollFlags::POLLHUP)
                })
            };
            if is_ready(&fds[1]) {
                udp.read(sh);
            }
            for (i, (slot, dev)) in devs.iter().enumerate() {
                if !is_ready(&fds[2 + i]) {
                    continue;
                }
                // A super-packet means a bulk flow: read on without a `poll` in
                // between (a few times, so the other descriptors get their turn).
                for _ in 0..TUN_READS_PER_WAKE {
                    match tun.read(sh, *slot, dev) {
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
                let _ = ctl.wake.read();
                if ctl.wanted.load(Ordering::Acquire) != want {
                    break;
                }
            }
        }
    }
}

/// Reads of one TUN per wake-up while they keep returning super-packets.
const TUN_READS_PER_WAKE: usize = 8;

/// What one TUN read found.
enum TunRead {
    /// A super-packet (several segments): more are likely queued.
    Bulk,
    /// A single packet, nothing, or a packet dropped: back to `poll`.
    Done,
    /// The device cannot be read any more.
    Failed,
}

/// The TUN side of the I/O thread: reads, encrypts, sends. Buffers are shared
/// by all devices (one is read at a time).
struct TunSide {
    raw: Vec<u8>,
    /// One buffer per segment of a read, each as long as the longest segment.
    segs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    batch: DatagramBatch,
    replies: PacketBatch,
    tx: Vec<Transmit>,
    worker: Option<Worker<DatagramBatch>>,
}

impl TunSide {
    fn new(sh: &Arc<Shared>, pipelined: bool) -> Self {
        let sh = sh.clone();
        let worker = Worker::start_if(pipelined, "weft-udp-tx", move |b: &mut DatagramBatch| {
            sh.send_batch(b);
            b.clear();
        });
        let mut side = Self {
            raw: vec![0u8; HDR + 65_535],
            segs: Vec::new(),
            sizes: vec![0; BATCH],
            batch: DatagramBatch::new(0, 0),
            replies: PacketBatch::new(HDR, 4),
            tx: Vec::new(),
            worker,
        };
        side.fit(1500 + 64);
        side
    }

    fn new_batch(seg_len: usize) -> DatagramBatch {
        DatagramBatch::new((seg_len + WG_OVERHEAD).max(MIN_OUT_BUF), BATCH)
    }

    /// The segment length the buffers hold.
    fn seg_len(&self) -> usize {
        self.segs.first().map_or(0, Vec::len)
    }

    /// Makes the segment buffers hold segments of `seg_len` bytes.
    fn fit(&mut self, seg_len: usize) {
        if seg_len > self.seg_len() {
            self.segs = vec![vec![0u8; seg_len]; BATCH];
            self.batch = Self::new_batch(seg_len);
        }
    }

    /// One read from `dev` and what follows from it.
    fn read(&mut self, sh: &Shared, slot: NetIndex, dev: &Tun) -> TunRead {
        let read = if dev.vnet {
            dev.dev
                .recv_multiple(&mut self.raw, &mut self.segs, &mut self.sizes, 0)
        } else {
            // Read into the large buffer: a packet longer than the MTU is the
            // core's to refuse, not a read error.
            dev.dev.recv(&mut self.raw).map(|n| {
                self.sizes[0] = n;
                1
            })
        };
        let n = match read {
            Ok(n) => n.min(self.sizes.len()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TunRead::Done,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return TunRead::Done,
            // The kernel handed over an offload packet tun-rs cannot split: drop it.
            Err(e) if e.raw_os_error().is_none() => {
                tracing::debug!(slot, error = %e, "unusable packet from the TUN dropped");
                return TunRead::Done;
            }
            Err(e) => {
                tracing::warn!(slot, error = %e, "reading from TUN failed; no longer reading this interface");
                return TunRead::Failed;
            }
        };
        {
            let mut node = sh.lock();
            let now = clock::now();
            if dev.vnet {
                let packets = self.segs[..n]
                    .iter()
                    .zip(&self.sizes)
                    .map(|(s, len)| &s[..(*len).min(s.len())]);
                node.handle_tun_batch(now, slot, packets, &mut self.batch, &mut self.replies);
            } else {
                let packet = &self.raw[..self.sizes[0].min(self.raw.len())];
                node.handle_tun_batch(now, slot, [packet], &mut self.batch, &mut self.replies);
            }
            sh.drain(&mut node, &mut self.tx);
        }
        if !self.batch.is_empty() {
            let seg_len = self.seg_len();
            let large = self.batch.bytes() > INLINE_BYTES;
            let empty = || DatagramBatch::new(0, 0);
            if !hand_over(&mut self.worker, &mut self.batch, large, empty, || {
                Self::new_batch(seg_len)
            }) {
                sh.send_batch(&self.batch);
                self.batch.clear();
            }
        }
        if !self.replies.is_empty() {
            let (bufs, _) = self.replies.buffers_mut();
            for r in bufs {
                dev.write_one(r);
            }
            self.replies.clear();
        }
        if !self.tx.is_empty() {
            sh.flush(&mut self.tx, Wait::Room);
        }
        if n > 1 { TunRead::Bulk } else { TunRead::Done }
    }
}

/// The UDP side of the I/O thread: receives, decrypts, writes to the TUNs.
struct UdpSide {
    rx: udp_batch::Receiver,
    /// Most datagrams one received message can hold: [`MAX_SEGMENTS`] with
    /// GRO, else 1.
    per_message: usize,
    out: PacketBatch,
    writer: TunWriter,
    tx: Vec<Transmit>,
    worker: Option<Worker<PacketBatch>>,
}

impl UdpSide {
    fn new(sh: &Arc<Shared>, pipelined: bool) -> Self {
        let per_message = if sh.udp_offloads.gro { MAX_SEGMENTS } else { 1 };
        let sh = sh.clone();
        let mut w = TunWriter::new();
        let worker = Worker::start_if(pipelined, "weft-tun-tx", move |b: &mut PacketBatch| {
            w.write(&sh, b)
        });
        Self {
            rx: udp_batch::Receiver::new(),
            per_message,
            out: Self::new_batch(),
            writer: TunWriter::new(),
            tx: Vec::new(),
            worker,
        }
    }

    fn new_batch() -> PacketBatch {
        // tun-rs coalesces a flow's packets into its first buffer only when that
        // buffer has room for the whole 64 KiB write (it never reallocates).
        PacketBatch::with_room(HDR, BATCH, 2 * HDR + 65_535)
    }

    /// Receives until the socket is empty or the batch is full, then writes
    /// the decrypted packets. Each `recvmmsg` asks for as many messages as the
    /// batch has room for; getting fewer means the socket was empty, and when
    /// that leaves only a few packets the next receive is left to `poll` (a
    /// ping costs no receive that finds nothing).
    fn read(&mut self, sh: &Shared) {
        loop {
            let want = (BATCH.saturating_sub(self.out.len()) / self.per_message)
                .clamp(1, udp_batch::MAX_MESSAGES);
            match self.rx.recv(&sh.udp, want) {
                Ok(got) => {
                    let mut node = sh.lock();
                    let now = clock::now();
                    for m in self.rx.messages() {
                        match m {
                            Ok((from, seg, bytes)) => {
                                node.handle_datagram_batch(
                                    now,
                                    from,
                                    bytes.chunks(seg),
                                    &mut self.out,
                                );
                            }
                            Err(why) => tracing::trace!(?why, "UDP message dropped"),
                        }
                    }
                    sh.drain(&mut node, &mut self.tx);
                    // Fewer than asked: the socket was empty. For a few packets
                    // (a ping, ACKs) leave the next receive to `poll`; in a bulk
                    // flow more arrived while these were decrypted, so read on.
                    if got < want && self.out.len() <= INLINE_PACKETS {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors surface here (ECONNREFUSED etc.); they are not fatal.
                Err(e) => tracing::trace!(error = %e, "UDP receive error"),
            }
            // Room for another full message without growing the batch?
            if self.out.len() + self.per_message > BATCH {
                break;
            }
        }
        if !self.out.is_empty() {
            let large = self.out.len() > INLINE_PACKETS;
            let empty = || PacketBatch::new(HDR, 0);
            if !hand_over(
                &mut self.worker,
                &mut self.out,
                large,
                empty,
                Self::new_batch,
            ) {
                self.writer.write(sh, &mut self.out);
            }
        }
        if !self.tx.is_empty() {
            sh.flush(&mut self.tx, Wait::Room);
        }
    }
}

/// Writes decrypted packets to their TUNs, GRO-coalesced.
struct TunWriter {
    gro: GROTable,
    group: Vec<Vec<u8>>,
    /// The networks of a mixed batch (reused: no allocation per batch).
    distinct: Vec<NetIndex>,
}

impl TunWriter {
    fn new() -> Self {
        Self {
            gro: GROTable::default(),
            group: Vec::new(),
            distinct: Vec::new(),
        }
    }

    /// Writes `packets` (one coalesced write per flow and network) and empties it.
    fn write(&mut self, sh: &Shared, packets: &mut PacketBatch) {
        let (bufs, nets) = packets.buffers_mut();
        let Some(&first) = nets.first() else {
            return;
        };
        if nets.iter().all(|n| *n == first) {
            if let Some(dev) = sh.tun(first)
                && let Err(e) = dev.dev.send_multiple(&mut self.gro, bufs, HDR)
            {
                tracing::trace!(error = %e, "TUN write failed");
            }
            packets.clear();
            return;
        }
        // Several networks in one batch: one coalesced write per network, order
        // kept within each.
        self.distinct.clear();
        self.distinct.extend_from_slice(nets);
        self.distinct.sort_unstable();
        self.distinct.dedup();
        for i in 0..self.distinct.len() {
            let net = self.distinct[i];
            self.group.clear();
            for (b, n) in bufs.iter_mut().zip(nets) {
                if *n == net {
                    self.group.push(std::mem::take(b));
                }
            }
            if let Some(dev) = sh.tun(net)
                && let Err(e) = dev.dev.send_multiple(&mut self.gro, &mut self.group, HDR)
            {
                tracing::trace!(error = %e, "TUN write failed");
            }
            // Give the buffers back for reuse.
            let mut back = self.group.drain(..);
            for (b, n) in bufs.iter_mut().zip(nets) {
                if *n == net
                    && let Some(g) = back.next()
                {
                    *b = g;
                }
            }
        }
        packets.clear();
    }
}

async fn relay_reader(mut events: RelayEvents, sh: Arc<Shared>) {
    use weft_relay_client::OutageNote;
    let mut framed = vec![0u8; HDR + BUF_LEN];
    let mut tx = Vec::new();
    // One line when the relay becomes unreachable, one when it is back (it
    // was a WARN per retry, every 5 s).
    let mut outage = weft_relay_client::OutageLog::default();
    while let Some(ev) = events.recv().await {
        let write = {
            let mut node = sh.lock();
            let now = clock::now();
            let w = match ev {
                RelayEvent::Packet { src, payload } => {
                    match node.handle_relay_frame(now, src, &payload, &mut framed[HDR..]) {
                        NetOutcome::WriteTun { net, packet } => Some((net, packet.len())),
                        NetOutcome::Handled | NetOutcome::Dropped(_) => None,
                    }
                }
                RelayEvent::Connected => {
                    match outage.recovered(now) {
                        Some(OutageNote::Back { after, failures }) => tracing::info!(
                            down_s = after.as_secs(),
                            failed_attempts = failures,
                            "relay back after {:.0} s",
                            after.as_secs_f64()
                        ),
                        _ => tracing::info!("relay connected"),
                    }
                    node.set_relay_available(now, true);
                    None
                }
                RelayEvent::Disconnected { error, retry_in } => {
                    let retry_in_ms = retry_in.as_millis() as u64;
                    match outage.failed(now) {
                        Some(OutageNote::Down) => tracing::warn!(
                            %error,
                            "relay unreachable; retrying (logged again when it is back, or every 5 min)"
                        ),
                        Some(OutageNote::StillDown { for_, failures }) => tracing::warn!(
                            %error,
                            failed_attempts = failures,
                            "relay still unreachable after {:.0} s; retrying",
                            for_.as_secs_f64()
                        ),
                        _ => tracing::debug!(%error, retry_in_ms, "relay disconnected"),
                    }
                    node.set_relay_available(now, false);
                    None
                }
                RelayEvent::Restarting { retry_after } => {
                    tracing::info!(
                        retry_after_ms = retry_after.as_millis() as u64,
                        "relay restarting"
                    );
                    node.set_relay_available(now, false);
                    None
                }
                RelayEvent::PeerGone { key, .. } => {
                    tracing::debug!(peer = %key, "relay: peer not connected there");
                    None
                }
            };
            sh.drain(&mut node, &mut tx);
            w
        };
        if let Some((net, len)) = write
            && let Some(dev) = sh.tun(net)
        {
            dev.write_one(&mut framed[..HDR + len]);
        }
        if !tx.is_empty() {
            sh.flush(&mut tx, Wait::No);
        }
    }
}

async fn timer_task(sh: Arc<Shared>) {
    let mut tx = Vec::new();
    loop {
        let deadline = {
            let mut node = sh.lock();
            node.handle_timeout(clock::now());
            sh.drain(&mut node, &mut tx);
            node.poll_timeout()
        };
        sh.flush(&mut tx, Wait::No);
        match deadline {
            Some((at, _why)) => tokio::time::sleep_until(at.into()).await,
            None => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-off keeps order, bounds what is in flight, recycles batches and
    /// reports idle only once everything handed over is done (the condition
    /// for doing a batch inline without overtaking one).
    #[test]
    fn worker_keeps_order_and_reports_idle_only_when_done() {
        let done = Arc::new(Mutex::new(Vec::new()));
        let seen = done.clone();
        let mut w = Worker::spawn("test-worker", move |b: &mut Vec<u32>| {
            std::thread::sleep(Duration::from_millis(1));
            seen.lock().expect("lock").extend(b.drain(..));
        })
        .expect("spawn");
        let mut made = 0;
        let mut batch = Vec::new();
        for i in 0..50u32 {
            batch.push(i);
            if i % 5 == 4 {
                batch = w
                    .pass(std::mem::take(&mut batch), || {
                        made += 1;
                        Vec::new()
                    })
                    .expect("worker alive");
                assert!(batch.is_empty(), "a recycled batch comes back empty");
            }
        }
        assert!(
            made < POOL,
            "at most {POOL} batches exist, made {made} more"
        );
        let deadline = clock::now() + Duration::from_secs(10);
        while !w.idle() {
            assert!(clock::now() < deadline, "worker never became idle");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*done.lock().expect("lock"), (0..50).collect::<Vec<_>>());
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
        dp.shutdown();
        assert!(dp.io.is_none());
        assert!(!dp.io_stopped());
    }

    /// The I/O thread picks up added and removed TUN sets and stops on request.
    #[test]
    fn io_thread_follows_generations_and_stops() {
        let ctl = Arc::new(LoopCtl::new().expect("eventfd"));
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        udp.set_nonblocking(true).expect("nonblocking");
        let offloads = Offloads::setup(&udp, false);
        let (reflexive, _) = watch::channel(Vec::new());
        let node = Node::new(
            weft_proto::NodeKey::from_bytes([1; 32]),
            [2; 32],
            [3; 32],
            clock::now(),
        );
        let sh = Arc::new(Shared {
            node: Mutex::new(node),
            udp,
            udp_offloads: offloads,
            tuns: RwLock::default(),
            relay: RwLock::default(),
            reflexive,
        });
        let thread = {
            let (sh, ctl) = (sh.clone(), ctl.clone());
            std::thread::spawn(move || io_loop(&sh, &ctl, true))
        };
        for _ in 0..3 {
            let want = ctl.wanted.fetch_add(1, Ordering::AcqRel) + 1;
            ctl.poke();
            let deadline = clock::now() + Duration::from_secs(5);
            while ctl.seen.load(Ordering::Acquire) < want {
                assert!(clock::now() < deadline, "generation {want} never seen");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        ctl.stop.store(true, Ordering::Release);
        ctl.poke();
        thread.join().expect("I/O thread ends cleanly");
    }
}
