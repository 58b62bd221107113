//! A userspace link impairment ("wire"): delay, jitter and loss for kernels
//! without `sch_netem`.
//!
//! A wire is spliced into a node's link inside the segment's switch namespace.
//! Normally the node's veth peer (`p3`, say) is a port of the switch's bridge
//! `br0`. With a wire, `p3` leaves the bridge and a second veth pair joins it:
//! `p3w` (unbridged, the wire's other end) and `p3b` (a port of `br0`). Two
//! threads of the lab's owner process bridge frames between `p3` and `p3w` with
//! `AF_PACKET` raw sockets, one per direction:
//!
//! ```text
//! node eth0 ── p3 ⇄ [wire threads: delay queue, loss] ⇄ p3w ── p3b ── br0
//! ```
//!
//! Each direction holds every frame in a FIFO until `arrival + delay` (plus a
//! random jitter that never reorders: a frame is never due before the one ahead
//! of it) and drops it first with the configured probability, so a ping across
//! a wire of delay D sees an RTT of about 2·D. Frames keep their kernel metadata
//! (checksum offload, GSO) through `PACKET_VNET_HDR`, so TCP segmentation and
//! partial checksums cross the wire unchanged. The wire's own transmissions,
//! which packet sockets also see (`PACKET_OUTGOING`), are ignored.
//!
//! The queue per direction is bounded ([`QUEUE_LIMIT_BYTES`]); a frame that does
//! not fit is dropped and counted, like a full router buffer.

#![allow(
    unsafe_code,
    reason = "AF_PACKET sockets have no safe std equivalent; each call is wrapped once below"
)]

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cmd;
use crate::error::{LabError, Result};
use crate::netem::Impairment;

/// The most bytes one direction holds in its delay queue (about 100 ms of a
/// 300 Mbit/s stream).
pub const QUEUE_LIMIT_BYTES: usize = 4 << 20;

/// How long a wire thread sleeps at most before checking for a stop request.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// `sizeof(struct virtio_net_hdr)`, prefixed to every frame with `PACKET_VNET_HDR`.
const VNET_HDR_LEN: usize = 10;

/// Receive buffer: a 64 KiB GSO frame plus headers, with room to spare.
const FRAME_BUF: usize = 128 << 10;

/// Frame counters of one direction of a wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Frames delivered to the other side.
    pub forwarded: u64,
    /// Frames dropped by the loss probability.
    pub lost: u64,
    /// Frames dropped because the delay queue was full.
    pub overflow: u64,
    /// Frames the kernel refused to send (counted, then dropped).
    pub send_errors: u64,
}

/// Frame counters of a wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireStats {
    /// From the node into the segment.
    pub outbound: DirectionStats,
    /// From the segment to the node.
    pub inbound: DirectionStats,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    lost: AtomicU64,
    overflow: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            overflow: self.overflow.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }
}

/// Parameters shared with the threads; changed at runtime by [`Wire::set`].
struct Shared {
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
    loss_ppm: AtomicU32,
    stop: AtomicBool,
    outbound: Counters,
    inbound: Counters,
}

impl Shared {
    fn set(&self, imp: &Impairment) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.delay_us.store(us(imp.delay), Ordering::Relaxed);
        self.jitter_us.store(us(imp.jitter), Ordering::Relaxed);
        self.loss_ppm.store(imp.loss_ppm, Ordering::Relaxed);
    }
}

/// A running wire on one link. Dropping it stops its threads; [`Wire::remove`]
/// also restores the direct link.
pub(crate) struct Wire {
    switch_ns: String,
    port: String,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("switch_ns", &self.switch_ns)
            .field("port", &self.port)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The unbridged end of the wire's veth pair for switch port `port`.
pub(crate) fn wire_ifname(port: &str) -> String {
    format!("{port}w")
}

/// The bridged end of the wire's veth pair for switch port `port`.
pub(crate) fn bridge_ifname(port: &str) -> String {
    format!("{port}b")
}

impl Wire {
    /// Splices a wire with `imp` into switch port `port` of the switch namespace
    /// `switch_ns` (see the module doc).
    pub(crate) fn insert(switch_ns: &str, port: &str, imp: &Impairment) -> Result<Self> {
        let w = wire_ifname(port);
        let b = bridge_ifname(port);
        crate::names::validate_ifname(&w)?;
        crate::names::validate_ifname(&b)?;
        cmd::ip_batch(
            Some(switch_ns),
            &format!("link add name {w} type veth peer name {b}\nlink set {w} up\n"),
        )?;
        let sockets = open_packet_sockets(switch_ns, [port, &w]);
        let [port_fd, wire_fd] = match sockets {
            Ok(fds) => fds,
            Err(e) => {
                let _ = cmd::ip_batch(Some(switch_ns), &format!("link del {w}\n"));
                return Err(e);
            }
        };
        let shared = Arc::new(Shared {
            delay_us: AtomicU64::new(0),
            jitter_us: AtomicU64::new(0),
            loss_ppm: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            outbound: Counters::default(),
            inbound: Counters::default(),
        });
        shared.set(imp);
        let port_fd = Arc::new(port_fd);
        let wire_fd = Arc::new(wire_fd);
        let seed = seed();
        let mut threads = Vec::new();
        for (outbound, rx, tx) in [
            (true, Arc::clone(&port_fd), Arc::clone(&wire_fd)),
            (false, Arc::clone(&wire_fd), Arc::clone(&port_fd)),
        ] {
            let for_thread = Arc::clone(&shared);
            let name = format!("wire-{port}-{}", if outbound { "out" } else { "in" });
            let rng = Rng::new(seed ^ u64::from(outbound));
            let spawned = std::thread::Builder::new()
                .name(name)
                .spawn(move || run_direction(&rx, &tx, &for_thread, outbound, rng));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop_threads(&shared, &mut threads);
                    let _ = cmd::ip_batch(Some(switch_ns), &format!("link del {w}\n"));
                    return Err(LabError::io("cannot start a wire thread", e));
                }
            }
        }
        let wire = Self {
            switch_ns: switch_ns.to_owned(),
            port: port.to_owned(),
            shared,
            threads,
        };
        // Only now swap the bridge ports: the threads already forward.
        cmd::ip_batch(
            Some(switch_ns),
            &format!("link set {port} nomaster\nlink set {b} master br0\nlink set {b} up\n"),
        )?;
        tracing::debug!(switch_ns, port, ?imp, "wire inserted");
        Ok(wire)
    }

    /// Changes the impairment; frames already queued keep their due time.
    pub(crate) fn set(&self, imp: &Impairment) {
        self.shared.set(imp);
    }

    /// The frame counters so far.
    pub(crate) fn stats(&self) -> WireStats {
        WireStats {
            outbound: self.shared.outbound.snapshot(),
            inbound: self.shared.inbound.snapshot(),
        }
    }

    /// Stops the wire and plugs the node's port straight into the bridge again.
    pub(crate) fn remove(mut self) -> Result<()> {
        stop_threads(&self.shared, &mut self.threads);
        let w = wire_ifname(&self.port);
        cmd::ip_batch(
            Some(&self.switch_ns),
            &format!(
                "link del {w}\nlink set {} master br0\nlink set {} up\n",
                self.port, self.port
            ),
        )
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        stop_threads(&self.shared, &mut self.threads);
    }
}

fn stop_threads(shared: &Shared, threads: &mut Vec<JoinHandle<()>>) {
    shared.stop.store(true, Ordering::Relaxed);
    for t in threads.drain(..) {
        let _ = t.join();
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    #[allow(clippy::cast_possible_truncation, reason = "mixing bits for a seed")]
    let t = t as u64;
    t ^ (u64::from(std::process::id()) << 32) | 1
}

/// xorshift64*: enough randomness for a loss decision, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0), bias negligible for the small n used here.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Queued {
    due: Instant,
    frame: Vec<u8>,
}

/// One direction: frames read from `rx` are written to `tx` after the delay.
fn run_direction(rx: &OwnedFd, tx: &OwnedFd, shared: &Shared, outbound: bool, mut rng: Rng) {
    let counters = if outbound {
        &shared.outbound
    } else {
        &shared.inbound
    };
    let mut queue: VecDeque<Queued> = VecDeque::new();
    let mut queued_bytes = 0_usize;
    let mut last_due: Option<Instant> = None;
    let mut buf = vec![0_u8; FRAME_BUF];
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while queue.front().is_some_and(|q| q.due <= now) {
            if let Some(q) = queue.pop_front() {
                queued_bytes -= q.frame.len();
                transmit(tx, &q.frame, counters);
            }
        }
        let wait = queue
            .front()
            .map_or(MAX_WAIT, |q| q.due.saturating_duration_since(now))
            .min(MAX_WAIT);
        if !wait_readable(rx.as_raw_fd(), wait) {
            continue;
        }
        // Drain everything the socket holds.
        while let Some(len) = recv_frame(rx.as_raw_fd(), &mut buf) {
            let loss = shared.loss_ppm.load(Ordering::Relaxed);
            if loss > 0 && rng.below(1_000_000) < u64::from(loss) {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let delay = Duration::from_micros(shared.delay_us.load(Ordering::Relaxed));
            let jitter_us = shared.jitter_us.load(Ordering::Relaxed);
            let now = Instant::now();
            let mut due = now + delay;
            if jitter_us > 0 {
                let offset = rng.below(2 * jitter_us + 1);
                due = (due + Duration::from_micros(offset))
                    .checked_sub(Duration::from_micros(jitter_us))
                    .unwrap_or(now)
                    .max(now);
            }
            // Never reorder: a frame is not due before the one ahead of it.
            if let Some(prev) = last_due {
                due = due.max(prev);
            }
            if due <= now && queue.is_empty() {
                transmit(tx, &buf[..len], counters);
                continue;
            }
            if queued_bytes + len > QUEUE_LIMIT_BYTES {
                counters.overflow.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            last_due = Some(due);
            queued_bytes += len;
            queue.push_back(Queued {
                due,
                frame: buf[..len].to_vec(),
            });
        }
    }
}

fn transmit(tx: &OwnedFd, frame: &[u8], counters: &Counters) {
    if send_frame(tx.as_raw_fd(), frame) {
        counters.forwarded.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.send_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens one `AF_PACKET` socket per interface inside namespace `netns` (from a
/// short-lived thread that enters it: sockets keep their namespace).
fn open_packet_sockets(netns: &str, ifaces: [&str; 2]) -> Result<[OwnedFd; 2]> {
    let path = format!("/run/netns/{netns}");
    let ns = File::open(&path).map_err(|e| LabError::io(format!("cannot open {path}"), e))?;
    let ifaces = ifaces.map(str::to_owned);
    let opened = std::thread::scope(|s| {
        s.spawn(|| -> Result<[OwnedFd; 2]> {
            crate::sys::enter_netns(ns.as_raw_fd())
                .map_err(|e| LabError::io(format!("cannot enter {netns}"), e))?;
            let [a, b] = &ifaces;
            Ok([open_packet_socket(a)?, open_packet_socket(b)?])
        })
        .join()
    });
    opened.map_err(|_| {
        LabError::io(
            "wire socket thread panicked",
            std::io::Error::other("panic"),
        )
    })?
}

fn open_packet_socket(ifname: &str) -> Result<OwnedFd> {
    let ctx = |what: &str, e| LabError::io(format!("wire on `{ifname}`: {what}"), e);
    let index = if_index(ifname).map_err(|e| ctx("no such interface", e))?;
    let proto = u16::to_be(u16::try_from(libc::ETH_P_ALL).unwrap_or(3));
    // SAFETY: socket() has no memory preconditions; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(ctx("socket(AF_PACKET)", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a freshly created descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_opt(fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)
        .map_err(|e| ctx("PACKET_VNET_HDR", e))?;
    // Older kernels lack PACKET_IGNORE_OUTGOING; the receive path also checks
    // the packet type.
    let _ = set_int_opt(fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1);
    let _ = set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20);
    let _ = set_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
    addr.sll_protocol = proto;
    addr.sll_ifindex = index;
    // SAFETY: addr is a valid sockaddr_ll and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd,
            std::ptr::from_ref(&addr).cast(),
            socklen(size_of::<libc::sockaddr_ll>()),
        )
    };
    if rc != 0 {
        return Err(ctx("bind", std::io::Error::last_os_error()));
    }
    Ok(sock)
}

fn socklen(n: usize) -> libc::socklen_t {
    libc::socklen_t::try_from(n).unwrap_or(libc::socklen_t::MAX)
}

fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: value lives across the call and the length matches an i32.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            socklen(size_of::<i32>()),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn if_index(name: &str) -> std::io::Result<i32> {
    let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    i32::try_from(index).map_err(std::io::Error::other)
}

/// Waits up to `wait` for `fd` to become readable.
fn wait_readable(fd: RawFd, wait: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(wait.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(wait.subsec_nanos()),
    };
    // SAFETY: pfd and ts are valid for the call; no signal mask is passed.
    let rc = unsafe { libc::ppoll(&raw mut pfd, 1, &raw const ts, std::ptr::null()) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

/// Receives one frame (with its virtio-net header) without blocking; skips
/// frames this host sent itself. `None` when the socket is empty.
fn recv_frame(fd: RawFd, buf: &mut [u8]) -> Option<usize> {
    loop {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
        let mut from_len = socklen(size_of::<libc::sockaddr_ll>());
        // SAFETY: buf and from are valid for writes of the given lengths.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                std::ptr::from_mut(&mut from).cast(),
                &raw mut from_len,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        };
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        if n <= VNET_HDR_LEN {
            continue;
        }
        return Some(n);
    }
}

/// Sends one frame (virtio-net header first) on the socket's bound interface.
fn send_frame(fd: RawFd, frame: &[u8]) -> bool {
    loop {
        // SAFETY: frame is valid for reads of its length.
        let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
        if n >= 0 {
            return true;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_loss_rate_is_close_to_the_probability() {
        let mut rng = Rng::new(42);
        let n = 200_000;
        let lost = (0..n).filter(|_| rng.below(1_000_000) < 10_000).count();
        // 1 % of 200 000 = 2 000, standard deviation about 44.
        assert!((1_800..2_200).contains(&lost), "{lost}");
    }

    #[test]
    fn wire_interface_names_fit() {
        crate::names::validate_ifname(&wire_ifname("p254")).unwrap();
        crate::names::validate_ifname(&bridge_ifname("p254")).unwrap();
    }
}
