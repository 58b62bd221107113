//! The data plane's I/O shell: TUN devices and the UDP socket around the sans-IO
//! [`weft_tunnel::Node`].
//!
//! Tasks: one reader per TUN device, one UDP reader, one timer task. Each takes the
//! node's lock only while the core processes one input (never across an await),
//! drains the core's transmit queue, then does its I/O. Packet buffers are
//! allocated once per task and reused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use anyhow::Context as _;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tun_rs::{AsyncDevice, DeviceBuilder};
use weft_tunnel::{
    Dest, DropCounters, Event, NetIndex, NetOutcome, Node, NodeConfig, PeerStatus, Transmit,
    TunOutcome,
};

use crate::clock;

/// Largest packet the TUN hands us (no offloads yet) plus WireGuard overhead.
const BUF_LEN: usize = 65_536 + 64;

type Tuns = Arc<RwLock<BTreeMap<NetIndex, Arc<AsyncDevice>>>>;

/// The running data plane.
pub(crate) struct Dataplane {
    node: Arc<Mutex<Node>>,
    udp: Arc<UdpSocket>,
    tuns: Tuns,
    tun_tasks: BTreeMap<NetIndex, (String, JoinHandle<()>)>,
    io_tasks: Vec<JoinHandle<()>>,
    port: u16,
}

fn lock(node: &Mutex<Node>) -> MutexGuard<'_, Node> {
    // A panic while holding the lock leaves the core in a consistent state (every
    // mutation is one call), so keep going rather than crash the agent.
    node.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Dataplane {
    /// Binds the UDP socket and starts the UDP and timer tasks.
    pub(crate) async fn start(node: Node, port: u16) -> anyhow::Result<Self> {
        let udp = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))
            .await
            .with_context(|| format!("binding the data-plane UDP socket on port {port}"))?;
        let port = udp.local_addr()?.port();
        let udp = Arc::new(udp);
        let node = Arc::new(Mutex::new(node));
        let tuns: Tuns = Arc::default();
        let io_tasks = vec![
            tokio::spawn(udp_reader(node.clone(), udp.clone(), tuns.clone())),
            tokio::spawn(timer_task(node.clone(), udp.clone())),
        ];
        tracing::info!(port, "data plane listening");
        Ok(Self {
            node,
            udp,
            tuns,
            tun_tasks: BTreeMap::new(),
            io_tasks,
            port,
        })
    }

    /// The bound UDP port.
    pub(crate) fn port(&self) -> u16 {
        self.port
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
                self.tuns
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
                    self.tuns
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(*slot, dev.clone());
                    let task =
                        tokio::spawn(tun_reader(*slot, dev, self.node.clone(), self.udp.clone()));
                    self.tun_tasks.insert(*slot, (name.clone(), task));
                    tracing::info!(interface = %name, "created TUN device");
                }
                Err(e) => errors.push(format!("creating TUN device {name}: {e}")),
            }
        }
        errors
    }

    /// Applies a new configuration to the core.
    pub(crate) async fn apply(&self, cfg: &NodeConfig) {
        let mut tx = Vec::new();
        {
            let mut node = lock(&self.node);
            node.apply_config(clock::now(), cfg);
            drain(&mut node, &mut tx);
        }
        flush(&self.udp, &mut tx).await;
    }

    /// Per-peer status and global drop counters.
    pub(crate) fn status(&self) -> (Vec<PeerStatus>, DropCounters) {
        let node = lock(&self.node);
        (node.peer_status(clock::now()), node.drops().clone())
    }

    /// Stops every task and closes every TUN device.
    pub(crate) fn shutdown(&mut self) {
        for (_, (_, t)) in std::mem::take(&mut self.tun_tasks) {
            t.abort();
        }
        for t in self.io_tasks.drain(..) {
            t.abort();
        }
        self.tuns
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Moves the core's queued transmits into `tx` and logs its events.
fn drain(node: &mut Node, tx: &mut Vec<Transmit>) {
    while let Some(t) = node.poll_transmit() {
        tx.push(t);
    }
    while let Some(e) = node.poll_event() {
        match e {
            Event::PeerUp { key } => tracing::info!(peer = %key, "peer session established"),
            Event::PeerDown { key } => tracing::info!(peer = %key, "peer session expired"),
            Event::PathChanged { key, path } => {
                tracing::info!(peer = %key, path = ?path, "peer path changed")
            }
            Event::PeerRejected { key, why } => {
                tracing::warn!(peer = %key, why, "peer ignored")
            }
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
                tracing::error!(why, "policy from the controller unusable: denying everything")
            }
        }
    }
}

async fn flush(udp: &UdpSocket, tx: &mut Vec<Transmit>) {
    for t in tx.drain(..) {
        match t.dst {
            Dest::Udp(dst) => {
                if let Err(e) = udp.send_to(&t.payload, dst).await {
                    tracing::debug!(%dst, error = %e, "sending datagram failed");
                }
            }
            Dest::Relay(peer) => {
                // No relay link yet in this build; the core only routes via the relay
                // after `set_relay_available(true)`.
                tracing::trace!(%peer, "no relay link: datagram dropped");
            }
        }
    }
}

async fn tun_reader(
    slot: NetIndex,
    dev: Arc<AsyncDevice>,
    node: Arc<Mutex<Node>>,
    udp: Arc<UdpSocket>,
) {
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
            let mut node = lock(&node);
            let act = match node.handle_tun_packet(clock::now(), slot, &buf[..n], &mut out) {
                TunOutcome::Send { dst, datagram } => Act::Send(dst, datagram.len()),
                TunOutcome::Reply(p) => Act::Reply(p.len()),
                TunOutcome::Queued | TunOutcome::Dropped(_) => Act::Nothing,
            };
            drain(&mut node, &mut tx);
            act
        };
        match act {
            Act::Send(Dest::Udp(dst), len) => {
                if let Err(e) = udp.send_to(&out[..len], dst).await {
                    tracing::trace!(%dst, error = %e, "send failed");
                }
            }
            Act::Send(dst @ Dest::Relay(_), len) => tx.push(Transmit {
                dst,
                payload: out[..len].to_vec(),
            }),
            Act::Reply(len) => {
                let _ = dev.send(&out[..len]).await;
            }
            Act::Nothing => {}
        }
        if !tx.is_empty() {
            flush(&udp, &mut tx).await;
        }
    }
}

async fn udp_reader(node: Arc<Mutex<Node>>, udp: Arc<UdpSocket>, tuns: Tuns) {
    let mut buf = vec![0u8; BUF_LEN];
    let mut out = vec![0u8; BUF_LEN];
    let mut tx = Vec::new();
    loop {
        let (n, from) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here (ECONNREFUSED etc.); they are not fatal.
                tracing::trace!(error = %e, "UDP receive error");
                continue;
            }
        };
        let write = {
            let mut node = lock(&node);
            let w = match node.handle_datagram(clock::now(), from, &buf[..n], &mut out) {
                NetOutcome::WriteTun { net, packet } => Some((net, packet.len())),
                NetOutcome::Handled | NetOutcome::Dropped(_) => None,
            };
            drain(&mut node, &mut tx);
            w
        };
        if let Some((net, len)) = write {
            let dev = tuns
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&net)
                .cloned();
            if let Some(dev) = dev
                && let Err(e) = dev.send(&out[..len]).await
            {
                tracing::trace!(error = %e, "TUN write failed");
            }
        }
        if !tx.is_empty() {
            flush(&udp, &mut tx).await;
        }
    }
}

async fn timer_task(node: Arc<Mutex<Node>>, udp: Arc<UdpSocket>) {
    let mut tx = Vec::new();
    loop {
        let deadline = {
            let mut node = lock(&node);
            node.handle_timeout(clock::now());
            drain(&mut node, &mut tx);
            node.poll_timeout()
        };
        flush(&udp, &mut tx).await;
        match deadline {
            Some((at, _why)) => tokio::time::sleep_until(at.into()).await,
            None => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}
