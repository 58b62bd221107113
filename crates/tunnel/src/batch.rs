//! Batches for the hot path: many packets in, many packets out, in buffers that
//! are allocated once and reused, so a shell moves a whole TUN read or UDP read
//! through the core under one lock and with no allocation per packet.
//!
//! - [`DatagramBatch`]: encrypted datagrams back to back in one buffer, grouped in
//!   [`Run`]s — same destination, equal sizes except perhaps the last, within the
//!   kernel's limits — that one UDP GSO send (`UDP_SEGMENT`) can carry.
//! - [`PacketBatch`]: plaintext packets for the TUN, one reused buffer each, with
//!   `headroom` bytes in front (the shell's virtio-net header) and the network
//!   each belongs to.
//!
//! The [`crate::Node`] methods that fill them (`handle_tun_batch`,
//! `handle_datagram_batch`) do per packet exactly what the one-packet methods do.

use crate::node::{Dest, NetIndex};

/// Most datagrams one run holds (the kernel's `UDP_MAX_SEGMENTS` before 6.x).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes one run holds (largest IPv4 UDP payload: 65535 - 20 - 8).
pub const MAX_RUN_BYTES: usize = 65_507;

/// Datagrams in a [`DatagramBatch`] that one GSO send can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Where they go.
    pub dst: Dest,
    /// Offset of the first datagram in the batch's bytes.
    pub start: usize,
    /// Bytes in the run.
    pub len: usize,
    /// Size of each datagram (the last may be shorter).
    pub seg: usize,
    count: usize,
    closed: bool,
}

impl Run {
    /// Number of datagrams in the run.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Encrypted datagrams laid back to back in one reused buffer.
#[derive(Debug, Clone)]
pub struct DatagramBatch {
    buf: Vec<u8>,
    len: usize,
    slot: usize,
    runs: Vec<Run>,
}

impl DatagramBatch {
    /// Room for `slots` datagrams of up to `slot` bytes each (it grows when a
    /// batch needs more, and keeps what it grew).
    pub fn new(slot: usize, slots: usize) -> Self {
        Self {
            buf: vec![0u8; slot * slots.max(1)],
            len: 0,
            slot,
            runs: Vec::with_capacity(slots),
        }
    }

    /// Space for the next datagram: `want` bytes, at least the slot size.
    pub(crate) fn space(&mut self, want: usize) -> &mut [u8] {
        let want = want.max(self.slot);
        if self.buf.len() - self.len < want {
            self.buf.resize(self.len + want, 0);
        }
        &mut self.buf[self.len..self.len + want]
    }

    /// Keeps the first `n` bytes of the last [`DatagramBatch::space`] as a datagram
    /// to `dst`, extending the last run when a GSO send can still carry it.
    pub(crate) fn commit(&mut self, dst: Dest, n: usize) {
        let n = n.min(self.buf.len() - self.len);
        if n == 0 {
            return;
        }
        let start = self.len;
        self.len += n;
        if let Some(r) = self.runs.last_mut()
            && r.dst == dst
            && !r.closed
            && n <= r.seg
            && r.count < MAX_SEGMENTS
            && r.len + n <= MAX_RUN_BYTES
        {
            r.len += n;
            r.count += 1;
            r.closed = n < r.seg;
            return;
        }
        self.runs.push(Run {
            dst,
            start,
            len: n,
            seg: n,
            count: 1,
            closed: false,
        });
    }

    /// The runs, with their bytes, in the order the datagrams were committed.
    pub fn runs(&self) -> impl Iterator<Item = (Run, &[u8])> {
        self.runs
            .iter()
            .map(|r| (*r, &self.buf[r.start..r.start + r.len]))
    }

    /// Every datagram with its destination, in order.
    pub fn datagrams(&self) -> impl Iterator<Item = (Dest, &[u8])> {
        self.runs()
            .flat_map(|(r, bytes)| bytes.chunks(r.seg.max(1)).map(move |d| (r.dst, d)))
    }

    /// Whether nothing is committed.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Bytes committed (all datagrams together).
    pub fn bytes(&self) -> usize {
        self.len
    }

    /// Forgets every datagram, keeping the buffer.
    pub fn clear(&mut self) {
        self.len = 0;
        self.runs.clear();
    }
}

/// Plaintext packets for the TUN devices, each in its own reused buffer behind
/// `headroom` bytes.
#[derive(Debug, Clone)]
pub struct PacketBatch {
    bufs: Vec<Vec<u8>>,
    nets: Vec<NetIndex>,
    len: usize,
    headroom: usize,
}

impl PacketBatch {
    /// `capacity` buffers (more are added when a batch needs them), each with
    /// `headroom` bytes in front of its packet.
    pub fn new(headroom: usize, capacity: usize) -> Self {
        Self::with_room(headroom, capacity, headroom + 2048)
    }

    /// Like [`PacketBatch::new`], each buffer reserving `bytes` (untouched
    /// memory until used): a shell that coalesces packets into the first
    /// buffer of a flow (GRO writes of up to 64 KiB) needs that much room.
    pub fn with_room(headroom: usize, capacity: usize, bytes: usize) -> Self {
        Self {
            bufs: (0..capacity).map(|_| Vec::with_capacity(bytes)).collect(),
            nets: vec![0; capacity],
            len: 0,
            headroom,
        }
    }

    /// Space for the next packet: `want` bytes after the headroom.
    pub(crate) fn space(&mut self, want: usize) -> &mut [u8] {
        if self.len == self.bufs.len() {
            self.bufs.push(Vec::new());
            self.nets.push(0);
        }
        let h = self.headroom;
        let b = &mut self.bufs[self.len];
        // Only the bytes the buffer lacks are filled; the core overwrites the rest.
        if b.len() < h + want {
            b.resize(h + want, 0);
        }
        &mut b[h..]
    }

    /// Keeps the first `n` bytes of the last [`PacketBatch::space`] as a packet for
    /// the TUN of `net`.
    pub(crate) fn commit(&mut self, net: NetIndex, n: usize) {
        let h = self.headroom;
        if let Some(b) = self.bufs.get_mut(self.len) {
            b.truncate(h + n);
            self.nets[self.len] = net;
            self.len += 1;
        }
    }

    /// Pushes a copy of `packet` (not on the hot path: ICMP errors).
    pub(crate) fn push(&mut self, net: NetIndex, packet: &[u8]) {
        self.space(packet.len()).copy_from_slice(packet);
        self.commit(net, packet.len());
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The headroom in front of each packet.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// The packets (without headroom) and their networks, in order.
    pub fn packets(&self) -> impl Iterator<Item = (NetIndex, &[u8])> {
        self.bufs[..self.len]
            .iter()
            .zip(&self.nets)
            .map(|(b, n)| (*n, b.get(self.headroom..).unwrap_or_default()))
    }

    /// The buffers (headroom + packet) and their networks, for the shell's
    /// batched writes; the shell may change the buffers (coalescing), they are
    /// only reused for their capacity.
    pub fn buffers_mut(&mut self) -> (&mut [Vec<u8>], &[NetIndex]) {
        (&mut self.bufs[..self.len], &self.nets[..self.len])
    }

    /// Forgets every packet, keeping the buffers.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use weft_proto::NodeKey;

    fn udp(port: u16) -> Dest {
        Dest::Udp(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    fn put(b: &mut DatagramBatch, dst: Dest, n: usize, fill: u8) {
        b.space(n)[..n].fill(fill);
        b.commit(dst, n);
    }

    fn shape(b: &DatagramBatch) -> Vec<(Dest, usize, usize)> {
        b.runs().map(|(r, d)| (r.dst, d.len(), r.seg)).collect()
    }

    #[test]
    fn equal_datagrams_to_one_address_form_one_run_and_a_shorter_one_ends_it() {
        let mut b = DatagramBatch::new(1500, 16);
        for _ in 0..5 {
            put(&mut b, udp(1), 1452, 7);
        }
        put(&mut b, udp(1), 100, 8);
        put(&mut b, udp(1), 1452, 9);
        assert_eq!(
            shape(&b),
            vec![(udp(1), 5 * 1452 + 100, 1452), (udp(1), 1452, 1452)]
        );
        let (_, bytes) = b.runs().next().expect("a run");
        assert!(bytes[..5 * 1452].iter().all(|x| *x == 7));
        assert!(bytes[5 * 1452..].iter().all(|x| *x == 8));
        let sizes: Vec<usize> = b.datagrams().map(|(_, d)| d.len()).collect();
        assert_eq!(sizes, vec![1452, 1452, 1452, 1452, 1452, 100, 1452]);
    }

    #[test]
    fn a_new_destination_or_a_longer_datagram_starts_a_new_run() {
        let relay = Dest::Relay(NodeKey::from_bytes([4; 32]));
        let mut b = DatagramBatch::new(1500, 16);
        put(&mut b, udp(1), 1000, 1);
        put(&mut b, udp(2), 1000, 2);
        put(&mut b, udp(2), 1200, 3);
        put(&mut b, relay, 1200, 4);
        put(&mut b, relay, 1200, 4);
        assert_eq!(
            shape(&b),
            vec![
                (udp(1), 1000, 1000),
                (udp(2), 1000, 1000),
                (udp(2), 1200, 1200),
                (relay, 2400, 1200),
            ]
        );
    }

    #[test]
    fn runs_respect_the_kernel_limits_on_segments_and_bytes() {
        let mut b = DatagramBatch::new(1500, 4);
        for _ in 0..(MAX_SEGMENTS + 1) {
            put(&mut b, udp(1), 100, 0);
        }
        assert_eq!(
            shape(&b),
            vec![(udp(1), MAX_SEGMENTS * 100, 100), (udp(1), 100, 100)]
        );
        b.clear();
        assert!(b.is_empty());
        for _ in 0..50 {
            put(&mut b, udp(1), 1452, 0);
        }
        let runs = shape(&b);
        assert!(runs.iter().all(|(_, len, _)| *len <= MAX_RUN_BYTES));
        assert_eq!(runs.iter().map(|(_, len, _)| len).sum::<usize>(), 50 * 1452);
        assert_eq!(runs[0].1, (MAX_RUN_BYTES / 1452) * 1452);
    }

    #[test]
    fn packet_batch_keeps_headroom_networks_and_order() {
        let mut p = PacketBatch::new(12, 1);
        p.push(0, b"first");
        p.push(1, b"second, longer");
        p.push(0, b"3");
        let got: Vec<(NetIndex, Vec<u8>)> = p.packets().map(|(n, b)| (n, b.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (0, b"first".to_vec()),
                (1, b"second, longer".to_vec()),
                (0, b"3".to_vec())
            ]
        );
        let (bufs, nets) = p.buffers_mut();
        assert_eq!(nets, &[0, 1, 0]);
        assert_eq!(bufs[1].len(), 12 + 14);
        p.clear();
        assert!(p.is_empty());
        p.push(2, b"again");
        assert_eq!(p.packets().count(), 1);
    }
}
