//! The data plane's I/O shell: TUN devices, the UDP socket and the relay link
//! around the sans-IO [`weft_tunnel::Node`].
//!
//! One owner: the I/O thread (`weft-io`, [`io_loop`]) owns the node alone.
//! Everything else reaches it through [`commands`]: map applies, TUN set
//! changes, relay frames and relay state (from the [`relay_link`] task), STUN
//! servers, and status and explain queries (answered on oneshot channels). A
//! command wakes the thread's `poll(2)` through an eventfd; the queue is drained
//! only when that eventfd fires, so packets pay nothing for it. The `poll`
//! timeout is the node's [`Node::poll_timeout`], re-read after every input: the
//! node's timers run on the same thread, with no timer task and no lock.
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
//! per direction ([`workers`]: UDP sends, TUN writes) so that reading and crypto
//! overlap with output; small ones are done inline while the worker is idle.
//!
//! Batching (issue 8): TUN devices ([`tun`]) are opened with a virtio-net header
//! and TSO/USO, so one read hands over a TCP/UDP super-packet of up to 64 KiB,
//! split into MTU-sized segments; the segments are encrypted back to back and
//! every run of them to one peer address leaves in one `sendmsg` with
//! `UDP_SEGMENT` ([`udp`], [`udp_batch`]). The UDP socket receives with
//! `recvmmsg`, each message with `UDP_GRO` a run of datagrams from one sender,
//! and decrypted packets go back to the TUN coalesced (GRO on the write side).
//! Without an offload the TUN and UDP sends fall back to one packet per syscall,
//! UDP receives to one datagram per message.
//!
//! The TUN device and the UDP socket are reached through small traits
//! ([`tun::TunDevice`], [`udp_batch::UdpIo`]) whose in-memory twins (`twins`,
//! tests only) let the shell's batching, hand-off and fallback run without root.

mod commands;
mod io_loop;
pub(crate) mod io_stats;
mod relay_link;
#[cfg(test)]
mod tests;
mod tun;
#[cfg(test)]
mod twins;
mod udp;
mod udp_batch;
#[cfg(test)]
mod vip_offload;
mod workers;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle as ThreadHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
use weft_identity::Identity;
use weft_proto::netmap::Relay;
use weft_tunnel::{DropCounters, NetIndex, Node, NodeConfig, PeerStatus};

pub(crate) use commands::DataplaneStatus;
use commands::{Command, Commands};
use relay_link::{RelayLink, RelayOut};
pub(crate) use relay_link::{stun_server, url_host_port};
use tun::Tun;
use udp_batch::Offloads;

/// Largest datagram or packet handled one at a time, plus WireGuard overhead.
const BUF_LEN: usize = 65_536 + 64;
/// Room kept in front of every packet written to a TUN for its virtio-net header.
const HDR: usize = VIRTIO_NET_HDR_LEN;
/// Packets per batch (segments of one TUN read; datagrams decrypted per TUN flush).
const BATCH: usize = IDEAL_BATCH_SIZE;
/// How long the supervisor waits for the I/O thread to take up a new TUN set.
const TUN_SYNC: Duration = Duration::from_secs(1);

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

/// The running data plane, as the supervisor holds it: a handle to the I/O
/// thread (which owns the node) and the relay link.
pub(crate) struct Dataplane {
    cmds: Commands<Tun>,
    io: Option<ThreadHandle<()>>,
    /// Interface name per TUN slot (the devices themselves are the I/O thread's).
    tun_names: BTreeMap<NetIndex, String>,
    relay: RelayLink,
    reflexive: watch::Receiver<Vec<SocketAddr>>,
    port: u16,
    offload: bool,
}

/// A cloneable handle for readers that run on their own schedule (the anomaly
/// detector): the I/O thread answers it like any other command.
#[derive(Clone)]
pub(crate) struct Probe(Commands<Tun>);

impl Probe {
    /// [`Dataplane::counters`], from a handle (`None`: the I/O thread is gone).
    pub(crate) async fn status(&self) -> Option<DataplaneStatus> {
        self.0.ask(Command::Status).await
    }

    /// The refused new connection attempts since the last call, reset.
    pub(crate) async fn take_refusals(&self) -> Option<weft_tunnel::Refusals> {
        self.0.ask(Command::Refusals).await
    }
}

impl Probe {
    /// Tells the node that the host's underlay changed (it acts at once; see
    /// [`weft_tunnel::Node::underlay_changed`]).
    pub(crate) fn underlay_changed(&self) -> Result<(), commands::NotSent> {
        self.0.send(Command::UnderlayChanged)
    }

    /// Usage per peer and service port since the node started (`None`: the
    /// I/O thread is gone).
    pub(crate) async fn usage(&self) -> Option<weft_tunnel::NodeUsage> {
        self.0.ask(Command::Usage).await
    }
}

impl Dataplane {
    /// A [`Probe`] of this data plane.
    pub(crate) fn probe(&self) -> Probe {
        Probe(self.cmds.clone())
    }

    /// Binds the UDP socket and starts the I/O thread, which takes `node`.
    pub(crate) async fn start(node: Node, port: u16, cfg: DataplaneConfig) -> anyhow::Result<Self> {
        let udp = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))
            .with_context(|| format!("binding the data-plane UDP socket on port {port}"))?;
        udp.set_nonblocking(true)
            .context("making the data-plane UDP socket non-blocking")?;
        let port = udp.local_addr()?.port();
        udp::size_socket_buffers(&udp);
        let offloads = Offloads::setup(&udp, cfg.offload);
        let (gso, gro) = (offloads.gso_on(), offloads.gro);
        let (reflexive_tx, reflexive) = watch::channel(Vec::new());
        let relay_out = RelayOut::default();
        let pipelined = cfg.pipelined();
        let (cmds, io) = io_loop::spawn::<Tun, _>(io_loop::Parts {
            node,
            udp: Arc::new(udp),
            offloads,
            relay: relay_out.clone(),
            reflexive: reflexive_tx,
            pipelined,
        })
        .context("starting the data plane's I/O thread")?;
        tracing::info!(
            port,
            udp_gso = gso,
            udp_gro = gro,
            pipelined,
            "data plane listening"
        );
        #[cfg(feature = "unenforced-benchmark-only")]
        tracing::warn!(
            "BENCHMARK BUILD: access policy enforcement is compiled out; every packet passes"
        );
        Ok(Self {
            relay: RelayLink::new(cmds.clone(), relay_out),
            cmds,
            io: Some(io),
            tun_names: BTreeMap::new(),
            reflexive,
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
        self.reflexive.clone()
    }

    /// Makes the set of TUN devices match `wanted` (slot → interface name):
    /// creates missing ones (off the async runtime), closes removed ones (their
    /// interfaces disappear with everything on them). Returns per-interface
    /// errors.
    pub(crate) async fn ensure_tuns(
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
            // The device closes when the I/O thread lets go of it: wait for that,
            // so the name is free again for a device created below.
            self.sync_tuns(stale.clone(), Vec::new()).await;
            for slot in stale {
                if let Some(name) = self.tun_names.remove(&slot) {
                    tracing::info!(interface = %name, "closed TUN device");
                }
            }
        }
        let mtu16 = u16::try_from(mtu).unwrap_or(1420);
        let mut added = Vec::new();
        for (slot, name) in wanted {
            if self.tun_names.contains_key(slot) {
                continue;
            }
            let (owned, offload) = (name.clone(), self.offload);
            let dev = tokio::task::spawn_blocking(move || tun::open(&owned, mtu16, offload))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match dev {
                Ok(dev) => {
                    tracing::info!(interface = %name, offloads = dev.vnet, "created TUN device");
                    added.push((*slot, Arc::new(dev)));
                    self.tun_names.insert(*slot, name.clone());
                }
                Err(e) => errors.push((name.clone(), format!("creating TUN device {name}: {e}"))),
            }
        }
        if !added.is_empty() {
            self.sync_tuns(Vec::new(), added).await;
        }
        errors
    }

    /// Hands a change of the TUN set to the I/O thread and waits (up to
    /// [`TUN_SYNC`]) until it runs with the new set.
    async fn sync_tuns(&self, remove: Vec<NetIndex>, add: Vec<(NetIndex, Arc<Tun>)>) {
        let asked = self.cmds.ask(|done| Command::Tuns { remove, add, done });
        if !matches!(tokio::time::timeout(TUN_SYNC, asked).await, Ok(Some(()))) {
            tracing::warn!("the data plane's I/O thread did not pick up the TUN change");
        }
    }

    /// Whether the I/O thread has ended without being asked to (a panic, or
    /// `poll` failing): the data plane no longer moves packets.
    pub(crate) fn io_stopped(&self) -> bool {
        self.io.as_ref().is_some_and(ThreadHandle::is_finished)
    }

    /// Connects to `relay` (or disconnects with `None`), and points the core's
    /// STUN discovery at the relay's STUN server.
    pub(crate) async fn set_relay(&mut self, relay: Option<Relay>, identity: &Arc<Identity>) {
        self.relay.set(relay, identity).await;
    }

    /// Applies a new configuration to the core (in order with every other
    /// command).
    pub(crate) fn apply(&self, cfg: &NodeConfig) {
        self.cmds.tell(Command::Apply(Box::new(cfg.clone())));
    }

    /// Per-peer status and global drop counters (`None`: the I/O thread is gone).
    pub(crate) async fn status(&self) -> Option<(Vec<PeerStatus>, DropCounters)> {
        self.counters().await.map(|s| (s.peers, s.drops))
    }

    /// [`Dataplane::status`] with the I/O figures (batch sizes, I/O errors),
    /// for metrics (`None`: the I/O thread is gone).
    pub(crate) async fn counters(&self) -> Option<DataplaneStatus> {
        self.cmds.ask(Command::Status).await
    }

    /// The policy verdict `packet` would get now, explained (`weft why-blocked`):
    /// `Ok(None)` before the first map brings a policy, `Err` when the I/O
    /// thread is gone.
    pub(crate) async fn explain(
        &self,
        dir: weft_policy::Direction,
        packet: &weft_policy::FiveTuple,
    ) -> anyhow::Result<Option<(bool, String)>> {
        let packet = *packet;
        self.cmds
            .ask(|reply| Command::Explain { dir, packet, reply })
            .await
            .context("the data plane's I/O thread is not running")
    }

    /// Replaces the node the I/O thread owns with `node` (it gets the current
    /// configuration; sessions start afresh), and reconnects the relay as
    /// `identity` (the node's key may be new). The TUN devices and the UDP
    /// socket stay.
    pub(crate) async fn replace_node(
        &mut self,
        node: Node,
        identity: &Arc<Identity>,
    ) -> anyhow::Result<()> {
        let node = Box::new(node);
        self.cmds
            .ask(|done| Command::Replace { node, done })
            .await
            .context("the data plane's I/O thread is not running")?;
        if let Some(relay) = self.relay.current() {
            self.relay.set(None, identity).await;
            self.relay.set(Some(relay), identity).await;
        }
        Ok(())
    }

    /// Leaves the relay (on `weft down`).
    pub(crate) fn shutdown_relay(&mut self) {
        self.relay.shutdown();
    }

    /// Whether the relay link is up.
    pub(crate) fn relay_connected(&self) -> Option<(String, bool)> {
        self.relay.connected()
    }

    /// Stops every thread and task and closes every TUN device.
    pub(crate) fn shutdown(&mut self) {
        if let Some(thread) = self.io.take() {
            self.cmds.tell(Command::Stop);
            // It finishes the batch in hand (microseconds), lets go of its
            // devices and returns.
            if thread.join().is_err() {
                tracing::error!("the data plane's I/O thread panicked");
            }
        }
        self.relay.shutdown();
        self.tun_names.clear();
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}
