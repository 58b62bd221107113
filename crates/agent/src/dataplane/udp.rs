//! The UDP side: where the node's datagrams go ([`Output`]: the UDP socket,
//! batched, or the relay link) and receiving, decrypting and handing packets
//! to the TUN writer ([`UdpSide`]).

use std::io;
use std::net::UdpSocket;
use std::sync::Arc;

use weft_tunnel::batch::{DatagramBatch, MAX_SEGMENTS, PacketBatch};
use weft_tunnel::{Dest, Transmit};

use super::io_loop::Owner;
use super::io_stats::{BatchSizes, IoErrors, IoOp};
use super::relay_link::RelayOut;
use super::tun::{TunDevice, TunTable, TunWriter};
use super::udp_batch::{self, Offloads, UdpIo, Wait};
use super::workers::{INLINE_PACKETS, Worker, hand_over};
use super::{BATCH, HDR};
use crate::clock;

/// Where the node's datagrams go: the UDP socket (shared by the I/O thread
/// and the UDP-send worker) or the relay link.
pub(super) struct Output<U> {
    pub(super) udp: Arc<U>,
    pub(super) offloads: Arc<Offloads>,
    pub(super) relay: RelayOut,
    /// Failed sends are counted here (from whichever thread sends).
    pub(super) errors: Arc<IoErrors>,
}

impl<U> Clone for Output<U> {
    fn clone(&self) -> Self {
        Self {
            udp: self.udp.clone(),
            offloads: self.offloads.clone(),
            relay: self.relay.clone(),
            errors: self.errors.clone(),
        }
    }
}

impl<U: UdpIo> Output<U> {
    /// Sends one datagram; `wait` says what a full socket buffer does.
    pub(super) fn send(&self, dst: Dest, payload: &[u8], wait: Wait) {
        match dst {
            Dest::Udp(addr) => {
                let failed = udp_batch::send_one(&*self.udp, addr, payload, wait);
                self.count_failed(failed);
            }
            Dest::Relay(peer) => self.relay.send(peer, payload),
        }
    }

    fn count_failed(&self, failed: u64) {
        self.errors.add(IoOp::UdpSend, failed);
    }

    pub(super) fn flush(&self, tx: &mut Vec<Transmit>, wait: Wait) {
        for t in tx.drain(..) {
            self.send(t.dst, &t.payload, wait);
        }
    }

    /// Sends the datagrams of a batch, one GSO send per run to a UDP address
    /// (waiting for room in the socket's buffer: the data path).
    pub(super) fn send_batch(&self, batch: &DatagramBatch) {
        for (run, data) in batch.runs() {
            match run.dst {
                Dest::Udp(addr) => self.count_failed(udp_batch::send_segments(
                    &*self.udp,
                    &self.offloads,
                    addr,
                    data,
                    run.seg,
                    Wait::Room,
                )),
                Dest::Relay(_) => {
                    for d in data.chunks(run.seg.max(1)) {
                        self.send(run.dst, d, Wait::Room);
                    }
                }
            }
        }
    }
}

/// The UDP side of the I/O thread: receives, decrypts, writes to the TUNs.
pub(super) struct UdpSide {
    rx: udp_batch::Receiver,
    /// Most datagrams one received message can hold: [`MAX_SEGMENTS`] with
    /// GRO, else 1.
    per_message: usize,
    out: PacketBatch,
    writer: TunWriter,
    tx: Vec<Transmit>,
    worker: Option<Worker<PacketBatch>>,
    /// Datagrams per `recvmmsg`.
    pub(super) recv_sizes: BatchSizes,
    /// Decrypted packets per TUN write batch.
    pub(super) write_sizes: BatchSizes,
}

impl UdpSide {
    pub(super) fn new<T: TunDevice, U: UdpIo>(
        own: &Owner<U>,
        tuns: &TunTable<T>,
        pipelined: bool,
    ) -> Self {
        let per_message = if own.out.offloads.gro {
            MAX_SEGMENTS
        } else {
            1
        };
        let tuns = tuns.clone();
        let mut w = TunWriter::new(own.out.errors.clone());
        let worker = Worker::start_if(pipelined, "weft-tun-tx", move |b: &mut PacketBatch| {
            w.write(&tuns, b)
        });
        Self {
            rx: udp_batch::Receiver::new(),
            per_message,
            out: Self::new_batch(),
            writer: TunWriter::new(own.out.errors.clone()),
            tx: Vec::new(),
            worker,
            recv_sizes: BatchSizes::default(),
            write_sizes: BatchSizes::default(),
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
    pub(super) fn read<T: TunDevice, U: UdpIo>(&mut self, own: &mut Owner<U>, tuns: &TunTable<T>) {
        loop {
            let want = (BATCH.saturating_sub(self.out.len()) / self.per_message)
                .clamp(1, udp_batch::MAX_MESSAGES);
            match self.rx.recv(&*own.out.udp, want) {
                Ok(got) => {
                    let now = clock::now();
                    let mut datagrams = 0;
                    for m in self.rx.messages() {
                        match m {
                            Ok((from, seg, bytes)) => {
                                datagrams += bytes.len().div_ceil(seg.max(1));
                                own.node.handle_datagram_batch(
                                    now,
                                    from,
                                    bytes.chunks(seg),
                                    &mut self.out,
                                );
                            }
                            Err(why) => {
                                tracing::trace!(?why, "UDP message dropped");
                                own.out.errors.add(IoOp::UdpRecv, 1);
                            }
                        }
                    }
                    self.recv_sizes.record(datagrams);
                    own.drain(&mut self.tx);
                    // Fewer than asked: the socket was empty. For a few packets
                    // (a ping, ACKs) leave the next receive to `poll`; in a bulk
                    // flow more arrived while these were decrypted, so read on.
                    if got < want && self.out.len() <= INLINE_PACKETS {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors surface here (ECONNREFUSED etc.); they are not fatal.
                Err(e) => {
                    tracing::trace!(error = %e, "UDP receive error");
                    own.out.errors.add(IoOp::UdpRecv, 1);
                }
            }
            // Room for another full message without growing the batch?
            if self.out.len() + self.per_message > BATCH {
                break;
            }
        }
        if !self.out.is_empty() {
            self.write_sizes.record(self.out.len());
            let large = self.out.len() > INLINE_PACKETS;
            let empty = || PacketBatch::new(HDR, 0);
            if !hand_over(
                &mut self.worker,
                &mut self.out,
                large,
                empty,
                Self::new_batch,
            ) {
                self.writer.write(tuns, &mut self.out);
            }
        }
        if !self.tx.is_empty() {
            own.out.flush(&mut self.tx, Wait::Room);
        }
    }
}

/// Socket buffer size asked for. The default (~208 KiB) overflows at a few
/// hundred Mbit/s: bench/dataplane measured 20% of tunnel datagrams dropped at the
/// receiver with it, none with 4 MiB (and 1.5x the throughput).
const SOCKET_BUFFER: usize = 4 << 20;

/// Raises the UDP socket's buffers past `net.core.{r,w}mem_max` when root
/// (`SO_RCVBUFFORCE`), else as far as the limits allow.
pub(super) fn size_socket_buffers(udp: &UdpSocket) {
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
