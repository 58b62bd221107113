//! The TUN side: the device trait (the real device and, in tests, a twin),
//! opening a device with offloads or without, reading and encrypting
//! ([`TunSide`]), and writing decrypted packets back, GRO-coalesced
//! ([`TunWriter`]).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, PoisonError, RwLock};

use tun_rs::{DeviceBuilder, GROTable, SyncDevice};
use weft_tunnel::batch::{DatagramBatch, PacketBatch};
use weft_tunnel::{MIN_OUT_BUF, NetIndex, Transmit, WG_OVERHEAD};

use super::io_loop::Owner;
use super::io_stats::{BatchSizes, IoErrors, IoOp};
use super::udp_batch::{UdpIo, Wait};
use super::workers::{INLINE_BYTES, Worker, hand_over};
use super::{BATCH, HDR};
use crate::clock;

/// A TUN device as the shell uses it (non-blocking: a read that finds
/// nothing returns `WouldBlock`, a write never waits). Readable is signalled
/// on its file descriptor.
pub(crate) trait TunDevice: AsFd + Send + Sync + 'static {
    /// Whether it speaks the virtio-net header (offloads on): reads go
    /// through [`TunDevice::recv_multiple`], writes carry a header.
    fn vnet(&self) -> bool;
    /// The largest segment one read splits into.
    fn seg_len(&self) -> usize;
    /// One packet (without offloads).
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// One read (with offloads): a super-packet in `raw`, split into `segs`
    /// with their `sizes`; returns the number of segments.
    fn recv_multiple(
        &self,
        raw: &mut [u8],
        segs: &mut [Vec<u8>],
        sizes: &mut [usize],
    ) -> io::Result<usize>;
    /// One packet as is (with a virtio-net header in front when [`TunDevice::vnet`]).
    fn send(&self, buf: &[u8]) -> io::Result<usize>;
    /// Packets each at `bufs[i][offset..]` (room for the header in front),
    /// coalesced where `gro` can.
    fn send_multiple(
        &self,
        gro: &mut GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize>;
}

/// A real TUN device, whether it speaks the virtio-net header, and the
/// largest segment a read splits into.
pub(crate) struct Tun {
    dev: SyncDevice,
    pub(crate) vnet: bool,
    seg_len: usize,
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }
}

impl TunDevice for Tun {
    fn vnet(&self) -> bool {
        self.vnet
    }
    fn seg_len(&self) -> usize {
        self.seg_len
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf)
    }
    fn recv_multiple(
        &self,
        raw: &mut [u8],
        segs: &mut [Vec<u8>],
        sizes: &mut [usize],
    ) -> io::Result<usize> {
        self.dev.recv_multiple(raw, segs, sizes, 0)
    }
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.dev.send(buf)
    }
    fn send_multiple(
        &self,
        gro: &mut GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize> {
        self.dev.send_multiple(gro, bufs, offset)
    }
}

/// Opens the TUN device `name`, down (the reconciler brings it up once it is
/// configured: IPv6 off first on an IPv4-only network, so the kernel sends
/// nothing of its own into the overlay), non-blocking, with offloads when
/// `offload` and the kernel has them.
pub(crate) fn open(name: &str, mtu: u16, offload: bool) -> io::Result<Tun> {
    let dev = open_with(name, offload, |offload| {
        let dev = DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(offload)
            .enable(false)
            .build_sync()?;
        dev.set_nonblocking(true)?;
        Ok(dev)
    })?;
    Ok(Tun {
        vnet: dev.tcp_gso(),
        dev,
        // One read: a super-packet (up to 64 KiB behind its virtio-net header)
        // split into segments of at most the MTU.
        seg_len: usize::from(mtu).max(1500) + 64,
    })
}

/// `build(true)` when `offload`, and `build(false)` when that fails (logged)
/// or offloads are not wanted.
pub(crate) fn open_with<D>(
    name: &str,
    offload: bool,
    build: impl Fn(bool) -> io::Result<D>,
) -> io::Result<D> {
    if !offload {
        return build(false);
    }
    build(true).or_else(|e| {
        tracing::warn!(interface = %name, error = %e, "TUN offloads (virtio-net header, TSO) unavailable; one packet per read");
        build(false)
    })
}

/// Writes one packet held in `framed[HDR..]` (the first [`HDR`] bytes are
/// scratch for the header); a failure is counted in `errors`.
pub(super) fn write_one<T: TunDevice>(dev: &T, framed: &mut [u8], errors: &IoErrors) {
    let res = if dev.vnet() {
        // GSO_NONE, checksum complete: an ordinary packet.
        framed[..HDR].fill(0);
        dev.send(framed)
    } else {
        dev.send(&framed[HDR..])
    };
    if let Err(e) = res {
        tracing::trace!(error = %e, "TUN write failed");
        errors.add(IoOp::TunWrite, 1);
    }
}

/// The TUN devices by network, as the I/O thread last set them (read by the
/// TUN-write worker; written only by the I/O thread).
pub(super) struct TunTable<T>(Arc<RwLock<BTreeMap<NetIndex, Arc<T>>>>);

impl<T> Clone for TunTable<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for TunTable<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T> TunTable<T> {
    pub(super) fn get(&self, net: NetIndex) -> Option<Arc<T>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&net)
            .cloned()
    }

    /// Removes `remove`, adds `add`; returns the new set.
    pub(super) fn change(
        &self,
        remove: &[NetIndex],
        add: Vec<(NetIndex, Arc<T>)>,
    ) -> Vec<(NetIndex, Arc<T>)> {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for slot in remove {
            map.remove(slot);
        }
        map.extend(add);
        map.iter().map(|(s, d)| (*s, d.clone())).collect()
    }

    pub(super) fn clear(&self) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Reads of one TUN per wake-up while they keep returning super-packets.
pub(super) const TUN_READS_PER_WAKE: usize = 8;

/// What one TUN read found.
pub(super) enum TunRead {
    /// A super-packet (several segments): more are likely queued.
    Bulk,
    /// A single packet, nothing, or a packet dropped: back to `poll`.
    Done,
    /// The device cannot be read any more.
    Failed,
}

/// The TUN side of the I/O thread: reads, encrypts, sends. Buffers are shared
/// by all devices (one is read at a time).
pub(super) struct TunSide {
    raw: Vec<u8>,
    /// One buffer per segment of a read, each as long as the longest segment.
    segs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    batch: DatagramBatch,
    replies: PacketBatch,
    tx: Vec<Transmit>,
    worker: Option<Worker<DatagramBatch>>,
    /// Segments per read.
    pub(super) read_sizes: BatchSizes,
    /// Datagrams per batch of encrypted output.
    pub(super) send_sizes: BatchSizes,
}

impl TunSide {
    pub(super) fn new<U: UdpIo>(own: &Owner<U>, pipelined: bool) -> Self {
        let out = own.out.clone();
        let worker = Worker::start_if(pipelined, "weft-udp-tx", move |b: &mut DatagramBatch| {
            out.send_batch(b);
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
            read_sizes: BatchSizes::default(),
            send_sizes: BatchSizes::default(),
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
    pub(super) fn fit(&mut self, seg_len: usize) {
        if seg_len > self.seg_len() {
            self.segs = vec![vec![0u8; seg_len]; BATCH];
            self.batch = Self::new_batch(seg_len);
        }
    }

    /// One read from `dev` and what follows from it.
    pub(super) fn read<T: TunDevice, U: UdpIo>(
        &mut self,
        own: &mut Owner<U>,
        slot: NetIndex,
        dev: &T,
    ) -> TunRead {
        let read = if dev.vnet() {
            dev.recv_multiple(&mut self.raw, &mut self.segs, &mut self.sizes)
        } else {
            // Read into the large buffer: a packet longer than the MTU is the
            // core's to refuse, not a read error.
            dev.recv(&mut self.raw).map(|n| {
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
                own.out.errors.add(IoOp::TunRead, 1);
                return TunRead::Done;
            }
            Err(e) => {
                tracing::warn!(slot, error = %e, "reading from TUN failed; no longer reading this interface");
                own.out.errors.add(IoOp::TunRead, 1);
                return TunRead::Failed;
            }
        };
        self.read_sizes.record(n);
        let now = clock::now();
        if dev.vnet() {
            let packets = self.segs[..n]
                .iter()
                .zip(&self.sizes)
                .map(|(s, len)| &s[..(*len).min(s.len())]);
            own.node
                .handle_tun_batch(now, slot, packets, &mut self.batch, &mut self.replies);
        } else {
            let packet = &self.raw[..self.sizes[0].min(self.raw.len())];
            own.node
                .handle_tun_batch(now, slot, [packet], &mut self.batch, &mut self.replies);
        }
        own.drain(&mut self.tx);
        if !self.batch.is_empty() {
            self.send_sizes
                .record(self.batch.runs().map(|(r, _)| r.count()).sum());
            let seg_len = self.seg_len();
            let large = self.batch.bytes() > INLINE_BYTES;
            let empty = || DatagramBatch::new(0, 0);
            if !hand_over(&mut self.worker, &mut self.batch, large, empty, || {
                Self::new_batch(seg_len)
            }) {
                own.out.send_batch(&self.batch);
                self.batch.clear();
            }
        }
        if !self.replies.is_empty() {
            let (bufs, _) = self.replies.buffers_mut();
            for r in bufs {
                write_one(dev, r, &own.out.errors);
            }
            self.replies.clear();
        }
        if !self.tx.is_empty() {
            own.out.flush(&mut self.tx, Wait::Room);
        }
        if n > 1 { TunRead::Bulk } else { TunRead::Done }
    }
}

/// Writes decrypted packets to their TUNs, GRO-coalesced.
pub(super) struct TunWriter {
    gro: GROTable,
    group: Vec<Vec<u8>>,
    /// The networks of a mixed batch (reused: no allocation per batch).
    distinct: Vec<NetIndex>,
    errors: Arc<IoErrors>,
}

impl TunWriter {
    pub(super) fn new(errors: Arc<IoErrors>) -> Self {
        Self {
            gro: GROTable::default(),
            group: Vec::new(),
            distinct: Vec::new(),
            errors,
        }
    }

    /// Writes `packets` (one coalesced write per flow and network) and empties it.
    pub(super) fn write<T: TunDevice>(&mut self, tuns: &TunTable<T>, packets: &mut PacketBatch) {
        let (bufs, nets) = packets.buffers_mut();
        let Some(&first) = nets.first() else {
            return;
        };
        if nets.iter().all(|n| *n == first) {
            if let Some(dev) = tuns.get(first)
                && let Err(e) = dev.send_multiple(&mut self.gro, bufs, HDR)
            {
                tracing::trace!(error = %e, "TUN write failed");
                self.errors.add(IoOp::TunWrite, 1);
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
            if let Some(dev) = tuns.get(net)
                && let Err(e) = dev.send_multiple(&mut self.gro, &mut self.group, HDR)
            {
                tracing::trace!(error = %e, "TUN write failed");
                self.errors.add(IoOp::TunWrite, 1);
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
