//! The data plane's I/O shell: TUN devices, the UDP socket and the relay link
//! around the sans-IO [`weft_tunnel::Node`].
//!
//! Tasks: one reader per TUN device, one UDP reader, one relay reader (while a
//! relay is configured), one timer task. Each takes the node's lock only while the
//! core processes one batch of input (never across an await), drains the core's
//! transmit queue, then does its I/O. Packet buffers are allocated once per task
//! and reused.
//!
//! Batching (issue 8): TUN devices are opened with a virtio-net header and
//! TSO/USO, so one read hands over a TCP/UDP super-packet of up to 64 KiB, split
//! into MTU-sized segments; the segments are encrypted back to back and every run
//! of them to one peer address leaves in one `sendmsg` with `UDP_SEGMENT`. The UDP
//! socket receives with `UDP_GRO` (one read, many datagrams), and decrypted
//! packets go back to the TUN coalesced (GRO on the write side). Each offload
//! falls back to one packet per syscall when the kernel or device lacks it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use anyhow::Context as _;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tun_rs::{AsyncDevice, DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
use weft_api_client::Trust;
use weft_identity::Identity;
use weft_proto::netmap::Relay;
use weft_relay::client::{RelayClient, RelayClientConfig, RelayEvent, RelayEvents};
use weft_tunnel::batch::{DatagramBatch, MAX_SEGMENTS, PacketBatch};
use weft_tunnel::{
    Dest, DropCounters, Event, MIN_OUT_BUF, NetIndex, NetOutcome, Node, NodeConfig, PeerStatus,
    Transmit, WG_OVERHEAD,
};

use crate::clock;
use crate::udp_batch::{self, Offloads, RECV_BUF};

/// Largest datagram or packet handled one at a time, plus WireGuard overhead.
const BUF_LEN: usize = 65_536 + 64;
/// Room kept in front of every packet written to a TUN for its virtio-net header.
const HDR: usize = VIRTIO_NET_HDR_LEN;
/// Packets per batch (segments of one TUN read; datagrams decrypted per TUN flush).
const BATCH: usize = IDEAL_BATCH_SIZE;

/// Whether the data plane asks for TUN and UDP offloads (`WEFTD_OFFLOAD=0` turns
/// them off: for comparisons and for testing the fallback path).
fn offloads_wanted() -> bool {
    std::env::var_os("WEFTD_OFFLOAD").is_none_or(|v| v != "0")
}

/// A TUN device and whether it speaks the virtio-net header (offloads on).
struct Tun {
    dev: AsyncDevice,
    vnet: bool,
}

impl Tun {
    /// Writes one packet held in `framed[HDR..]` (the first [`HDR`] bytes are
    /// scratch for the header).
    async fn write_one(&self, framed: &mut [u8]) {
        let res = if self.vnet {
            // GSO_NONE, checksum complete: an ordinary packet.
            framed[..HDR].fill(0);
            self.dev.send(framed).await
        } else {
            self.dev.send(&framed[HDR..]).await
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

    async fn send(&self, dst: Dest, payload: &[u8]) {
        match dst {
            Dest::Udp(addr) => {
                if let Err(e) = self.udp.send_to(payload, addr).await {
                    tracing::trace!(%addr, error = %e, "sending datagram failed");
                }
            }
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

    async fn flush(&self, tx: &mut Vec<Transmit>) {
        for t in tx.drain(..) {
            self.send(t.dst, &t.payload).await;
        }
    }

    /// Sends the datagrams of a batch, one GSO send per run to a UDP address.
    async fn send_batch(&self, batch: &DatagramBatch) {
        for (run, data) in batch.runs() {
            match run.dst {
                Dest::Udp(addr) => {
                    udp_batch::send_segments(&self.udp, &self.udp_offloads, addr, data, run.seg)
                        .await;
                }
                Dest::Relay(_) => {
                    for d in data.chunks(run.seg.max(1)) {
                        self.send(run.dst, d).await;
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
    tun_tasks: BTreeMap<NetIndex, (String, JoinHandle<()>)>,
    io_tasks: Vec<JoinHandle<()>>,
    relay_task: Option<(Relay, JoinHandle<()>)>,
    port: u16,
}

impl Dataplane {
    /// Binds the UDP socket and starts the UDP and timer tasks.
    pub(crate) async fn start(node: Node, port: u16) -> anyhow::Result<Self> {
        let udp = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))
            .await
            .with_context(|| format!("binding the data-plane UDP socket on port {port}"))?;
        let port = udp.local_addr()?.port();
        size_socket_buffers(&udp);
        let udp_offloads = Offloads::setup(&udp, offloads_wanted());
        let (reflexive, _) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            node: Mutex::new(node),
            udp,
            udp_offloads,
            tuns: RwLock::default(),
            relay: RwLock::default(),
            reflexive,
        });
        let io_tasks = vec![
            tokio::spawn(udp_reader(shared.clone())),
            tokio::spawn(timer_task(shared.clone())),
        ];
        tracing::info!(
            port,
            udp_gso = shared.udp_offloads.gso_on(),
            udp_gro = shared.udp_offloads.gro,
            pipelined = pipelined(),
            "data plane listening"
        );
        #[cfg(feature = "unenforced-benchmark-only")]
        tracing::warn!(
            "BENCHMARK BUILD: access policy enforcement is compiled out; every packet passes"
        );
        Ok(Self {
            shared,
            tun_tasks: BTreeMap::new(),
            io_tasks,
            relay_task: None,
            port,
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
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let stale: Vec<NetIndex> = self
            .tun_tasks
            .iter()
            .filter(|(slot, (name, _))| wanted.get(slot) != Some(name))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in stale {
            if let Some((name, task)) = self.tun_tasks.remove(&slot) {
                task.abort();
                self.shared
                    .tuns
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&slot);
                tracing::info!(interface = %name, "closed TUN device");
            }
        }
        for (slot, name) in wanted {
            if self.tun_tasks.contains_key(slot) {
                continue;
            }
            let mtu16 = u16::try_from(mtu).unwrap_or(1420);
            let build = |offload: bool| {
                DeviceBuilder::new()
                    .name(name)
                    .mtu(mtu16)
                    .offload(offload)
                    .build_async()
            };
            let dev = match offloads_wanted().then(|| build(true)) {
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
                    let dev = Arc::new(Tun { dev, vnet });
                    self.shared
                        .tuns
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(*slot, dev.clone());
                    let task = tokio::spawn(tun_reader(
                        *slot,
                        dev,
                        self.shared.clone(),
                        usize::from(mtu16),
                    ));
                    self.tun_tasks.insert(*slot, (name.clone(), task));
                    tracing::info!(interface = %name, offloads = vnet, "created TUN device");
                }
                Err(e) => errors.push(format!("creating TUN device {name}: {e}")),
            }
        }
        errors
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
        self.shared.flush(&mut tx).await;
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

    /// Stops every task and closes every TUN device.
    pub(crate) fn shutdown(&mut self) {
        for (_, (_, t)) in std::mem::take(&mut self.tun_tasks) {
            t.abort();
        }
        for t in self.io_tasks.drain(..) {
            t.abort();
        }
        if let Some((_, t)) = self.relay_task.take() {
            t.abort();
        }
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

/// Batches in flight per direction when the I/O is handed to a second task.
const POOL: usize = 4;

/// Whether each reader hands its batches' I/O to a second task, so reading and
/// crypto overlap with sending on another core (`WEFTD_PIPELINE=0/1` overrides;
/// by default only when this process may use more than one CPU: on one, the hop
/// between tasks is pure cost).
fn pipelined() -> bool {
    match std::env::var("WEFTD_PIPELINE").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => std::thread::available_parallelism().is_ok_and(|n| n.get() > 1),
    }
}

/// The producer's end of a hand-off: filled batches go to the consumer task,
/// emptied ones come back (at most [`POOL`] exist, so a slow consumer holds the
/// producer back instead of queueing without bound).
struct Handoff<B> {
    full: mpsc::Sender<B>,
    empty: mpsc::Receiver<B>,
    made: usize,
}

/// A hand-off and the consumer's ends (filled batches in, emptied ones back).
fn handoff<B>() -> (Handoff<B>, mpsc::Receiver<B>, mpsc::Sender<B>) {
    let (full_tx, full_rx) = mpsc::channel(POOL);
    let (empty_tx, empty_rx) = mpsc::channel(POOL);
    (
        Handoff {
            full: full_tx,
            empty: empty_rx,
            made: 1,
        },
        full_rx,
        empty_tx,
    )
}

impl<B> Handoff<B> {
    /// Passes `filled` on and returns an empty batch to fill next (`None` when
    /// the consumer is gone).
    async fn pass(&mut self, filled: B, make: impl FnOnce() -> B) -> Option<B> {
        self.full.send(filled).await.ok()?;
        match self.empty.try_recv() {
            Ok(b) => Some(b),
            Err(_) if self.made < POOL => {
                self.made += 1;
                Some(make())
            }
            Err(_) => self.empty.recv().await,
        }
    }
}

/// Sends the batches a TUN reader hands over.
async fn udp_sender(
    sh: Arc<Shared>,
    mut full: mpsc::Receiver<DatagramBatch>,
    empty: mpsc::Sender<DatagramBatch>,
) {
    while let Some(mut b) = full.recv().await {
        sh.send_batch(&b).await;
        b.clear();
        if empty.send(b).await.is_err() {
            return;
        }
    }
}

async fn tun_reader(slot: NetIndex, dev: Arc<Tun>, sh: Arc<Shared>, mtu: usize) {
    // One read: a super-packet (up to 64 KiB behind its virtio-net header) split
    // into segments of at most the MTU; without offloads, one packet.
    let seg_len = mtu.max(1500) + 64;
    let mut raw = vec![0u8; HDR + 65_535];
    let mut segs = vec![vec![0u8; seg_len]; if dev.vnet { BATCH } else { 1 }];
    let mut sizes = vec![0usize; segs.len()];
    let slots = segs.len();
    let new_batch = || DatagramBatch::new((seg_len + WG_OVERHEAD).max(MIN_OUT_BUF), slots);
    let mut batch = new_batch();
    let mut replies = PacketBatch::new(HDR, 4);
    let mut tx = Vec::new();
    let mut pipe = pipelined().then(|| {
        let (h, full, empty) = handoff();
        // Ends by itself when this reader (and with it `h`) goes away.
        tokio::spawn(udp_sender(sh.clone(), full, empty));
        h
    });
    loop {
        let read = if dev.vnet {
            dev.dev
                .recv_multiple(&mut raw, &mut segs, &mut sizes, 0)
                .await
        } else {
            // Read into the large buffer: a packet longer than the MTU is the
            // core's to refuse, not a read error.
            dev.dev.recv(&mut raw).await.map(|n| {
                sizes[0] = n;
                1
            })
        };
        let n = match read {
            Ok(n) => n.min(sizes.len()),
            // The kernel handed over an offload packet tun-rs cannot split: drop it.
            Err(e) if e.raw_os_error().is_none() => {
                tracing::debug!(slot, error = %e, "unusable packet from the TUN dropped");
                continue;
            }
            Err(e) => {
                tracing::warn!(slot, error = %e, "reading from TUN failed; stopping this interface's reader");
                return;
            }
        };
        {
            let mut node = sh.lock();
            let now = clock::now();
            if dev.vnet {
                let packets = segs[..n]
                    .iter()
                    .zip(&sizes)
                    .map(|(s, len)| &s[..(*len).min(s.len())]);
                node.handle_tun_batch(now, slot, packets, &mut batch, &mut replies);
            } else {
                let packet = &raw[..sizes[0].min(raw.len())];
                node.handle_tun_batch(now, slot, [packet], &mut batch, &mut replies);
            }
            sh.drain(&mut node, &mut tx);
        }
        if !batch.is_empty() {
            match pipe.as_mut() {
                Some(h) => {
                    let filled = std::mem::replace(&mut batch, DatagramBatch::new(0, 0));
                    match h.pass(filled, new_batch).await {
                        Some(b) => batch = b,
                        None => {
                            tracing::warn!(
                                slot,
                                "UDP sender task gone; stopping this interface's reader"
                            );
                            return;
                        }
                    }
                }
                None => {
                    sh.send_batch(&batch).await;
                    batch.clear();
                }
            }
        }
        if !replies.is_empty() {
            let (bufs, _) = replies.buffers_mut();
            for r in bufs {
                dev.write_one(r).await;
            }
            replies.clear();
        }
        if !tx.is_empty() {
            sh.flush(&mut tx).await;
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
    async fn write(&mut self, sh: &Shared, packets: &mut PacketBatch) {
        let (bufs, nets) = packets.buffers_mut();
        let Some(&first) = nets.first() else {
            return;
        };
        if nets.iter().all(|n| *n == first) {
            if let Some(dev) = sh.tun(first)
                && let Err(e) = dev.dev.send_multiple(&mut self.gro, bufs, HDR).await
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
                && let Err(e) = dev
                    .dev
                    .send_multiple(&mut self.gro, &mut self.group, HDR)
                    .await
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

/// Writes the batches a UDP reader hands over.
async fn tun_writer(
    sh: Arc<Shared>,
    mut full: mpsc::Receiver<PacketBatch>,
    empty: mpsc::Sender<PacketBatch>,
) {
    let mut w = TunWriter::new();
    while let Some(mut b) = full.recv().await {
        w.write(&sh, &mut b).await;
        if empty.send(b).await.is_err() {
            return;
        }
    }
}

async fn udp_reader(sh: Arc<Shared>) {
    let mut buf = vec![0u8; RECV_BUF];
    let mut cmsg = udp_batch::gro_cmsg_space();
    // tun-rs coalesces a flow's packets into its first buffer only when that
    // buffer has room for the whole 64 KiB write (it never reallocates).
    let new_batch = || PacketBatch::with_room(HDR, BATCH, 2 * HDR + 65_535);
    let mut out = new_batch();
    let mut writer = TunWriter::new();
    let mut tx = Vec::new();
    let mut pipe = pipelined().then(|| {
        let (h, full, empty) = handoff();
        tokio::spawn(tun_writer(sh.clone(), full, empty));
        h
    });
    loop {
        let mut got = sh
            .udp
            .async_io(Interest::READABLE, || {
                udp_batch::recv_segments(&sh.udp, &mut buf, &mut cmsg)
            })
            .await;
        loop {
            match got {
                Ok((n, from, seg)) => {
                    let mut node = sh.lock();
                    let datagrams = buf[..n.min(buf.len())].chunks(seg);
                    node.handle_datagram_batch(clock::now(), from, datagrams, &mut out);
                    sh.drain(&mut node, &mut tx);
                }
                // ICMP errors surface here (ECONNREFUSED etc.); they are not fatal.
                Err(e) => tracing::trace!(error = %e, "UDP receive error"),
            }
            // Room for another full GRO read without growing the batch?
            if out.len() + MAX_SEGMENTS > BATCH {
                break;
            }
            got = match sh.udp.try_io(Interest::READABLE, || {
                udp_batch::recv_segments(&sh.udp, &mut buf, &mut cmsg)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                r => r,
            };
        }
        if !out.is_empty() {
            match pipe.as_mut() {
                Some(h) => {
                    let filled = std::mem::replace(&mut out, PacketBatch::new(HDR, 0));
                    match h.pass(filled, new_batch).await {
                        Some(b) => out = b,
                        None => {
                            tracing::warn!("TUN writer task gone; writing inline");
                            pipe = None;
                            out = new_batch();
                        }
                    }
                }
                None => writer.write(&sh, &mut out).await,
            }
        }
        if !tx.is_empty() {
            sh.flush(&mut tx).await;
        }
    }
}

async fn relay_reader(mut events: RelayEvents, sh: Arc<Shared>) {
    let mut framed = vec![0u8; HDR + BUF_LEN];
    let mut tx = Vec::new();
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
                    tracing::info!("relay connected");
                    node.set_relay_available(now, true);
                    None
                }
                RelayEvent::Disconnected { error, retry_in } => {
                    tracing::warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "relay disconnected");
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
            dev.write_one(&mut framed[..HDR + len]).await;
        }
        if !tx.is_empty() {
            sh.flush(&mut tx).await;
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
        sh.flush(&mut tx).await;
        match deadline {
            Some((at, _why)) => tokio::time::sleep_until(at.into()).await,
            None => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}
