//! In-memory twins of the TUN device and the UDP socket, for the shell's tests
//! (no root, no kernel devices). Each signals readability on an eventfd, so the
//! real `poll(2)` loop runs over them unchanged.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use tun_rs::GROTable;

use super::HDR;
use super::tun::TunDevice;
use super::udp_batch::{Message, RECV_BUF, UdpIo};
use crate::clock;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

/// A queue whose eventfd is readable exactly while it holds something (pushes
/// and pops under its lock, so no wake-up is lost).
struct Signalled<T> {
    queue: Mutex<VecDeque<T>>,
    ready: EventFd,
}

impl<T> Signalled<T> {
    fn new() -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            ready: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .expect("eventfd"),
        }
    }

    fn push(&self, items: impl IntoIterator<Item = T>) {
        let mut q = lock(&self.queue);
        q.extend(items);
        if !q.is_empty() {
            let _ = self.ready.write(1);
        }
    }

    /// Pops up to `max` items (none: `WouldBlock`).
    fn pop(&self, max: usize) -> io::Result<Vec<T>> {
        let mut q = lock(&self.queue);
        let n = max.min(q.len());
        if n == 0 {
            return Err(would_block());
        }
        let items: Vec<T> = q.drain(..n).collect();
        if q.is_empty() {
            let _ = self.ready.read();
        }
        Ok(items)
    }
}

/// Waits (up to 10 s) until `probe` returns something.
pub(super) fn wait_for<R>(what: &str, mut probe: impl FnMut() -> Option<R>) -> R {
    let deadline = clock::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = probe() {
            return r;
        }
        assert!(clock::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The TUN twin: packets the test injects come out of its reads (with
/// `vnet`, up to a batch per read, as a split super-packet would); packets the
/// shell writes are recorded.
pub(super) struct TwinTun {
    vnet: bool,
    kernel: Signalled<Vec<u8>>,
    written: Mutex<Vec<Vec<u8>>>,
    /// Segments per read that returned packets.
    reads: Mutex<Vec<usize>>,
}

impl TwinTun {
    pub(super) fn new(vnet: bool) -> Arc<Self> {
        Arc::new(Self {
            vnet,
            kernel: Signalled::new(),
            written: Mutex::new(Vec::new()),
            reads: Mutex::new(Vec::new()),
        })
    }

    /// Packets the "kernel" hands to the shell (all ready at once).
    pub(super) fn inject(&self, packets: impl IntoIterator<Item = Vec<u8>>) {
        self.kernel.push(packets);
    }

    /// Packets the shell wrote, in order.
    pub(super) fn written(&self) -> Vec<Vec<u8>> {
        lock(&self.written).clone()
    }

    /// Segments per read so far.
    pub(super) fn reads(&self) -> Vec<usize> {
        lock(&self.reads).clone()
    }
}

impl AsFd for TwinTun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.kernel.ready.as_fd()
    }
}

impl TunDevice for TwinTun {
    fn vnet(&self) -> bool {
        self.vnet
    }

    fn seg_len(&self) -> usize {
        1500 + 64
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let p = self.kernel.pop(1)?.remove(0);
        buf[..p.len()].copy_from_slice(&p);
        lock(&self.reads).push(1);
        Ok(p.len())
    }

    fn recv_multiple(
        &self,
        _raw: &mut [u8],
        segs: &mut [Vec<u8>],
        sizes: &mut [usize],
    ) -> io::Result<usize> {
        let packets = self.kernel.pop(segs.len().min(sizes.len()))?;
        for (i, p) in packets.iter().enumerate() {
            segs[i][..p.len()].copy_from_slice(p);
            sizes[i] = p.len();
        }
        lock(&self.reads).push(packets.len());
        Ok(packets.len())
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let packet = if self.vnet { &buf[HDR..] } else { buf };
        lock(&self.written).push(packet.to_vec());
        Ok(buf.len())
    }

    fn send_multiple(
        &self,
        _gro: &mut GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize> {
        let mut w = lock(&self.written);
        let mut n = 0;
        for b in bufs.iter() {
            w.push(b[offset..].to_vec());
            n += b.len() - offset;
        }
        Ok(n)
    }
}

/// One send the UDP twin saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sent {
    pub(super) dst: SocketAddr,
    /// Datagrams in it (several: a GSO send).
    pub(super) datagrams: usize,
    pub(super) gso: bool,
}

/// The UDP twin: what it sends reaches the twin bound to the destination
/// address (see [`TwinUdp::connect`]); every send is recorded. `gso: false`
/// refuses `UDP_SEGMENT` sends with `EIO`, as a device that cannot offload
/// does; `gro: false` delivers one datagram per message.
pub(super) struct TwinUdp {
    pub(super) addr: SocketAddr,
    gso: bool,
    gro: bool,
    inbox: Signalled<(SocketAddr, Vec<u8>, usize)>,
    peers: Mutex<Vec<Weak<TwinUdp>>>,
    sent: Mutex<Vec<Sent>>,
    refused_gso: AtomicUsize,
}

impl TwinUdp {
    pub(super) fn new(addr: SocketAddr, gso: bool, gro: bool) -> Arc<Self> {
        Arc::new(Self {
            addr,
            gso,
            gro,
            inbox: Signalled::new(),
            peers: Mutex::new(Vec::new()),
            sent: Mutex::new(Vec::new()),
            refused_gso: AtomicUsize::new(0),
        })
    }

    /// GSO sends refused so far.
    pub(super) fn refused_gso(&self) -> usize {
        self.refused_gso.load(Ordering::Relaxed)
    }

    /// Wires `a` and `b` to each other.
    pub(super) fn connect(a: &Arc<Self>, b: &Arc<Self>) {
        lock(&a.peers).push(Arc::downgrade(b));
        lock(&b.peers).push(Arc::downgrade(a));
    }

    /// Every send so far.
    pub(super) fn sent(&self) -> Vec<Sent> {
        lock(&self.sent).clone()
    }

    /// `data` cut into datagrams of `seg` bytes arrives at the twin bound to `dst`.
    fn deliver(&self, dst: SocketAddr, data: &[u8], seg: usize) {
        let to = lock(&self.peers)
            .iter()
            .filter_map(Weak::upgrade)
            .find(|p| p.addr == dst);
        let Some(to) = to else { return };
        if to.gro {
            to.inbox.push([(self.addr, data.to_vec(), seg)]);
        } else {
            to.inbox
                .push(data.chunks(seg).map(|d| (self.addr, d.to_vec(), d.len())));
        }
    }
}

impl AsFd for TwinUdp {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inbox.ready.as_fd()
    }
}

impl UdpIo for TwinUdp {
    fn send_to(&self, data: &[u8], dst: SocketAddr) -> io::Result<usize> {
        lock(&self.sent).push(Sent {
            dst,
            datagrams: 1,
            gso: false,
        });
        self.deliver(dst, data, data.len().max(1));
        Ok(data.len())
    }

    fn send_gso(&self, data: &[u8], seg: u16, dst: SocketAddr) -> io::Result<usize> {
        if !self.gso {
            self.refused_gso.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::from_raw_os_error(Errno::EIO as i32));
        }
        let seg = usize::from(seg).max(1);
        lock(&self.sent).push(Sent {
            dst,
            datagrams: data.len().div_ceil(seg),
            gso: true,
        });
        self.deliver(dst, data, seg);
        Ok(data.len())
    }

    fn recv_messages(&self, buf: &mut [u8], want: usize, got: &mut Vec<Message>) -> io::Result<()> {
        for ((from, data, seg), chunk) in self
            .inbox
            .pop(want)?
            .into_iter()
            .zip(buf.chunks_mut(RECV_BUF))
        {
            chunk[..data.len()].copy_from_slice(&data);
            got.push(Message {
                len: data.len(),
                seg,
                from: Ok(from),
            });
        }
        Ok(())
    }

    fn probe_gso(&self) -> bool {
        // Claims support either way: a refusal shows only when a send is tried.
        true
    }

    fn enable_gro(&self) -> bool {
        self.gro
    }
}
