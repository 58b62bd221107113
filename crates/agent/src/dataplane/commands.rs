//! The I/O thread's command channel: everything that is not a packet from a
//! TUN or the UDP socket reaches the node through here. A bounded queue plus
//! an eventfd in the thread's `poll(2)`: a sender queues, then writes the
//! eventfd; the thread reads the eventfd, then drains the queue, so no command
//! is left waiting and a packet never pays for the queue.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::oneshot;
use weft_proto::NodeKey;
use weft_tunnel::{DropCounters, NetIndex, NodeConfig, PeerStatus};

use super::io_stats::IoStats;

/// Commands queued at most (a full queue means a stuck I/O thread: relay
/// frames are dropped, like datagrams on a full socket).
const QUEUE: usize = 1024;

/// What the I/O thread is asked to do. `T` is the TUN device type.
pub(crate) enum Command<T> {
    /// Apply a new configuration (from the network map).
    Apply(Box<NodeConfig>),
    /// Close the devices of `remove`, take up those of `add`; `done` is
    /// answered once the thread polls the new set (removed devices closed).
    Tuns {
        remove: Vec<NetIndex>,
        add: Vec<(NetIndex, Arc<T>)>,
        done: oneshot::Sender<()>,
    },
    /// A WireGuard message the relay delivered from `src`.
    RelayFrame { src: NodeKey, payload: Vec<u8> },
    /// The relay link came up or went down.
    RelayAvailable(bool),
    /// Where the node's STUN discovery asks (empty: nowhere).
    StunServers(Vec<SocketAddr>),
    /// The host's underlay changed (link monitoring): STUN again, re-probe
    /// every path, let peers roam to the new source address.
    UnderlayChanged,
    /// Per-peer status, the global drop counters and the I/O figures.
    Status(oneshot::Sender<DataplaneStatus>),
    /// The policy verdict a packet would get now, explained.
    Explain {
        dir: weft_policy::Direction,
        packet: weft_policy::FiveTuple,
        reply: oneshot::Sender<Option<(bool, String)>>,
    },
    /// The refused new connection attempts since the last ask (the anomaly
    /// detector's scan signal); the node starts a fresh summary.
    Refusals(oneshot::Sender<weft_tunnel::Refusals>),
    /// Usage per peer and service port since the node started (monotonic
    /// counters from the policy's connection table).
    Usage(oneshot::Sender<weft_tunnel::NodeUsage>),
    /// Replace the node (`restart-dataplane`, a rotated identity): the new one
    /// gets the last configuration, relay availability and STUN servers; its
    /// sessions start afresh. `done` is answered once it is in place.
    Replace {
        node: Box<weft_tunnel::Node>,
        done: oneshot::Sender<()>,
    },
    /// End the thread.
    Stop,
}

/// What [`Command::Status`] answers: read by `weft status` and by metrics
/// scrapes (the figures are kept by the I/O thread; a query copies them).
#[derive(Debug, Clone, Default)]
pub(crate) struct DataplaneStatus {
    pub(crate) peers: Vec<PeerStatus>,
    /// Drops not attributed to a peer plus all peers'.
    pub(crate) drops: DropCounters,
    pub(crate) io: IoStats,
}

/// The sending side (cloned by the supervisor's handle and the relay link).
pub(crate) struct Commands<T> {
    tx: SyncSender<Command<T>>,
    wake: Arc<EventFd>,
}

impl<T> Clone for Commands<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

/// Why a command was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotSent {
    /// The queue is full.
    Full,
    /// The I/O thread is gone.
    Gone,
}

impl<T> Commands<T> {
    /// Queues `cmd` and wakes the thread; never blocks.
    pub(crate) fn send(&self, cmd: Command<T>) -> Result<(), NotSent> {
        self.tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => NotSent::Full,
            TrySendError::Disconnected(_) => NotSent::Gone,
        })?;
        if let Err(e) = self.wake.write(1) {
            tracing::warn!(error = %e, "cannot wake the data plane's I/O thread");
        }
        Ok(())
    }

    /// [`Commands::send`], logging a command that could not be queued.
    pub(crate) fn tell(&self, cmd: Command<T>) {
        if let Err(why) = self.send(cmd) {
            tracing::warn!(?why, "the data plane's I/O thread did not take a command");
        }
    }

    /// Sends the command `make` builds around a reply channel and waits for the
    /// reply (`None`: the thread is gone or its queue full).
    pub(crate) async fn ask<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<R>) -> Command<T>,
    ) -> Option<R> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply)).ok()?;
        answer.await.ok()
    }
}

/// The I/O thread's side.
pub(crate) struct Inbox<T> {
    rx: Receiver<Command<T>>,
    wake: Arc<EventFd>,
}

impl<T> Inbox<T> {
    /// The eventfd to poll for readability.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// After the eventfd fired: resets it (then drain with [`Inbox::next`]).
    pub(crate) fn reset(&self) {
        let _ = self.wake.read();
    }

    /// The next queued command (`None`: the queue is empty, or every sender is
    /// gone).
    pub(crate) fn next(&self) -> Option<Command<T>> {
        self.rx.try_recv().ok()
    }
}

/// A command channel: the eventfd is non-blocking (the thread reads it only
/// after `poll` says it fired).
pub(crate) fn channel<T>() -> io::Result<(Commands<T>, Inbox<T>)> {
    let wake = Arc::new(EventFd::from_flags(
        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
    )?);
    let (tx, rx) = sync_channel(QUEUE);
    Ok((
        Commands {
            tx,
            wake: wake.clone(),
        },
        Inbox { rx, wake },
    ))
}
