//! The data plane's I/O shell: TUN devices, the UDP socket and the relay link
//! around the sans-IO [`weft_tunnel::Node`].
//!
//! Tasks: one reader per TUN device, one UDP reader, one relay reader (while a
//! relay is configured), one timer task. Each takes the node's lock only while the
//! core processes one input (never across an await), drains the core's transmit
//! queue, then does its I/O. Packet buffers are allocated once per task and reused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use anyhow::Context as _;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tun_rs::{AsyncDevice, DeviceBuilder};
use weft_api_client::Trust;
use weft_identity::Identity;
use weft_proto::netmap::Relay;
use weft_relay::client::{RelayClient, RelayClientConfig, RelayEvent, RelayEvents};
use weft_tunnel::{
    Dest, DropCounters, Event, NetIndex, NetOutcome, Node, NodeConfig, PeerStatus, Transmit,
    TunOutcome,
};

use crate::clock;

/// Largest packet the TUN hands us (no offloads yet) plus WireGuard overhead.
const BUF_LEN: usize = 65_536 + 64;

/// State shared by the data-plane tasks.
struct Shared {
    node: Mutex<Node>,
    udp: UdpSocket,
    tuns: RwLock<BTreeMap<NetIndex, Arc<AsyncDevice>>>,
    relay: RwLock<Option<Arc<RelayClient>>>,
    reflexive: watch::Sender<Vec<SocketAddr>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Node> {
        // A panic while holding the lock leaves the core consistent (every mutation
        // is one call), so keep going rather than crash the agent.
        self.node.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tun(&self, net: NetIndex) -> Option<Arc<AsyncDevice>> {
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
        let (reflexive, _) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            node: Mutex::new(node),
            udp,
            tuns: RwLock::default(),
            relay: RwLock::default(),
            reflexive,
        });
        let io_tasks = vec![
            tokio::spawn(udp_reader(shared.clone())),
            tokio::spawn(timer_task(shared.clone())),
        ];
        tracing::info!(port, "data plane listening");
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
            let dev = DeviceBuilder::new()
                .name(name)
                .mtu(u16::try_from(mtu).unwrap_or(1420))
                .build_async();
            match dev {
                Ok(dev) => {
                    let dev = Arc::new(dev);
                    self.shared
                        .tuns
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(*slot, dev.clone());
                    let task = tokio::spawn(tun_reader(*slot, dev, self.shared.clone()));
                    self.tun_tasks.insert(*slot, (name.clone(), task));
                    tracing::info!(interface = %name, "created TUN device");
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

async fn tun_reader(slot: NetIndex, dev: Arc<AsyncDevice>, sh: Arc<Shared>) {
    let mut buf = vec![0u8; BUF_LEN];
    let mut out = vec![0u8; BUF_LEN];
    let mut tx = Vec::new();
    enum Act {
        Send(Dest, usize),
        Reply(usize),
        Nothing,
    }
    loop {
        let n = match dev.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(slot, error = %e, "reading from TUN failed; stopping this interface's reader");
                return;
            }
        };
        let act = {
            let mut node = sh.lock();
            let act = match node.handle_tun_packet(clock::now(), slot, &buf[..n], &mut out) {
                TunOutcome::Send { dst, datagram } => Act::Send(dst, datagram.len()),
                TunOutcome::Reply(p) => Act::Reply(p.len()),
                TunOutcome::Queued | TunOutcome::Dropped(_) => Act::Nothing,
            };
            sh.drain(&mut node, &mut tx);
            act
        };
        match act {
            Act::Send(dst, len) => sh.send(dst, &out[..len]).await,
            Act::Reply(len) => {
                let _ = dev.send(&out[..len]).await;
            }
            Act::Nothing => {}
        }
        if !tx.is_empty() {
            sh.flush(&mut tx).await;
        }
    }
}

async fn deliver(sh: &Shared, write: Option<(NetIndex, usize)>, out: &[u8]) {
    if let Some((net, len)) = write
        && let Some(dev) = sh.tun(net)
        && let Err(e) = dev.send(&out[..len]).await
    {
        tracing::trace!(error = %e, "TUN write failed");
    }
}

async fn udp_reader(sh: Arc<Shared>) {
    let mut buf = vec![0u8; BUF_LEN];
    let mut out = vec![0u8; BUF_LEN];
    let mut tx = Vec::new();
    loop {
        let (n, from) = match sh.udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here (ECONNREFUSED etc.); they are not fatal.
                tracing::trace!(error = %e, "UDP receive error");
                continue;
            }
        };
        let write = {
            let mut node = sh.lock();
            let w = match node.handle_datagram(clock::now(), from, &buf[..n], &mut out) {
                NetOutcome::WriteTun { net, packet } => Some((net, packet.len())),
                NetOutcome::Handled | NetOutcome::Dropped(_) => None,
            };
            sh.drain(&mut node, &mut tx);
            w
        };
        deliver(&sh, write, &out).await;
        if !tx.is_empty() {
            sh.flush(&mut tx).await;
        }
    }
}

async fn relay_reader(mut events: RelayEvents, sh: Arc<Shared>) {
    let mut out = vec![0u8; BUF_LEN];
    let mut tx = Vec::new();
    while let Some(ev) = events.recv().await {
        let write = {
            let mut node = sh.lock();
            let now = clock::now();
            let w = match ev {
                RelayEvent::Packet { src, payload } => {
                    match node.handle_relay_frame(now, src, &payload, &mut out) {
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
        deliver(&sh, write, &out).await;
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
