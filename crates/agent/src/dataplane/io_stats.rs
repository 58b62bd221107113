//! What the data plane's I/O counts about itself, for metrics: batch sizes
//! and I/O errors. Read at scrape time through [`super::commands::Command::Status`],
//! never pushed anywhere per packet.
//!
//! Cost on the hot path: batch sizes are plain integers owned by the I/O
//! thread (one add to a bucket per batch, not per packet: no lock, no atomic,
//! no allocation). Errors can happen on the output workers' threads too, so
//! they are relaxed atomics, touched only when an error happens.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the batch-size buckets: 1, 2, 4, … 128 packets (a batch is
/// at most [`super::BATCH`] = 128 packets; larger ones land in `+Inf`).
pub(crate) const BATCH_BOUNDS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// A histogram of packets per batch: count per power-of-two bucket (not
/// cumulative; the last slot is above every bound) and the sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BatchSizes {
    buckets: [u64; BATCH_BOUNDS.len() + 1],
    sum: u64,
}

impl BatchSizes {
    /// Counts one batch of `n` packets (an empty batch is not counted).
    #[inline]
    pub(crate) fn record(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        // The bucket of n: the smallest i with n <= 2^i.
        let i = (usize::BITS - (n - 1).leading_zeros()) as usize;
        self.buckets[i.min(BATCH_BOUNDS.len())] += 1;
        self.sum += n as u64;
    }

    /// Batches counted.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Packets in all batches counted.
    pub(crate) fn sum(&self) -> u64 {
        self.sum
    }

    /// Batches per bucket (not cumulative: the encoder sums them), by upper
    /// bound ([`BATCH_BOUNDS`], then `+Inf`).
    pub(crate) fn buckets(&self) -> Vec<(f64, u64)> {
        BATCH_BOUNDS
            .iter()
            .map(|b| *b as f64)
            .chain([f64::INFINITY])
            .zip(self.buckets)
            .collect()
    }
}

/// Batch sizes per kind of I/O, kept by the I/O thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Batches {
    /// Segments per TUN read (a super-packet split, or 1).
    pub(crate) tun_read: BatchSizes,
    /// Datagrams per batch of encrypted output (one or more GSO sends).
    pub(crate) udp_send: BatchSizes,
    /// Datagrams per `recvmmsg` (each message a GRO run of one or more).
    pub(crate) udp_recv: BatchSizes,
    /// Decrypted packets per TUN write batch (coalesced writes).
    pub(crate) tun_write: BatchSizes,
}

/// I/O errors, counted where they happen (the I/O thread or an output worker).
#[derive(Debug, Default)]
pub(crate) struct IoErrors {
    tun_read: AtomicU64,
    tun_write: AtomicU64,
    udp_recv: AtomicU64,
    udp_send: AtomicU64,
}

/// Which I/O failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoOp {
    TunRead,
    TunWrite,
    UdpRecv,
    UdpSend,
}

impl IoOp {
    /// Every operation, in display order.
    pub(crate) const ALL: [IoOp; 4] = [IoOp::TunRead, IoOp::TunWrite, IoOp::UdpRecv, IoOp::UdpSend];

    /// The `op` label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            IoOp::TunRead => "tun_read",
            IoOp::TunWrite => "tun_write",
            IoOp::UdpRecv => "udp_recv",
            IoOp::UdpSend => "udp_send",
        }
    }
}

impl IoErrors {
    fn slot(&self, op: IoOp) -> &AtomicU64 {
        match op {
            IoOp::TunRead => &self.tun_read,
            IoOp::TunWrite => &self.tun_write,
            IoOp::UdpRecv => &self.udp_recv,
            IoOp::UdpSend => &self.udp_send,
        }
    }

    /// Counts `n` failed `op`s (nothing is touched for 0: the path where
    /// everything works pays nothing).
    #[inline]
    pub(crate) fn add(&self, op: IoOp, n: u64) {
        if n > 0 {
            self.slot(op).fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The count for `op`.
    pub(crate) fn get(&self, op: IoOp) -> u64 {
        self.slot(op).load(Ordering::Relaxed)
    }
}

/// The I/O figures a status query returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IoStats {
    pub(crate) batches: Batches,
    /// Errors per operation, in [`IoOp::ALL`] order.
    pub(crate) errors: [(IoOp, u64); 4],
}

impl Default for IoStats {
    fn default() -> Self {
        Self::new(&Batches::default(), &IoErrors::default())
    }
}

impl IoStats {
    pub(crate) fn new(batches: &Batches, errors: &IoErrors) -> Self {
        Self {
            batches: batches.clone(),
            errors: IoOp::ALL.map(|op| (op, errors.get(op))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_land_in_power_of_two_buckets() {
        let mut b = BatchSizes::default();
        for n in [0, 1, 2, 3, 4, 5, 64, 65, 128, 129, 1000] {
            b.record(n);
        }
        assert_eq!(b.count(), 10, "an empty batch is not counted");
        assert_eq!(b.sum(), 1 + 2 + 3 + 4 + 5 + 64 + 65 + 128 + 129 + 1000);
        let c = b.buckets();
        let at = |bound: f64| c.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(at(1.0), Some(1));
        assert_eq!(at(2.0), Some(1));
        assert_eq!(at(4.0), Some(2), "3 and 4 are <= 4");
        assert_eq!(at(8.0), Some(1));
        assert_eq!(at(64.0), Some(1));
        assert_eq!(at(128.0), Some(2), "65 and 128 are <= 128");
        assert_eq!(at(f64::INFINITY), Some(2));
    }

    #[test]
    fn errors_are_counted_per_operation() {
        let e = IoErrors::default();
        e.add(IoOp::UdpSend, 2);
        e.add(IoOp::TunWrite, 1);
        e.add(IoOp::TunRead, 0);
        let s = IoStats::new(&Batches::default(), &e);
        assert_eq!(
            s.errors,
            [
                (IoOp::TunRead, 0),
                (IoOp::TunWrite, 1),
                (IoOp::UdpRecv, 0),
                (IoOp::UdpSend, 2)
            ]
        );
    }
}
