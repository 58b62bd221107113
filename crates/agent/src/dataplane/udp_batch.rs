//! Batched UDP I/O for the data plane: many datagrams to one address in one
//! `sendmsg` (`UDP_SEGMENT`, UDP GSO); many messages in one `recvmmsg`, each
//! with `UDP_GRO` a run of datagrams from one sender. The core lines datagrams
//! up for such sends in a [`weft_tunnel::batch::DatagramBatch`].
//!
//! GSO and GRO are probed when the socket is set up (logged once when the
//! kernel lacks them): without GSO each datagram is its own send, without GRO
//! each message of a `recvmmsg` is one datagram.
//!
//! The socket is non-blocking and owned by the data plane's I/O thread (not
//! registered with the async runtime); sends that find its buffer full either
//! wait for room ([`Wait::Room`], the data path: backpressure) or drop
//! ([`Wait::No`], control traffic such as handshakes and keepalives, which the
//! protocols retry).
//!
//! The shell reaches the socket through [`UdpIo`]: the real socket here, an
//! in-memory twin in the shell's tests.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, getsockopt,
    recvmmsg, sendmsg, setsockopt, sockopt,
};

/// Receive buffer for one (possibly GRO-coalesced) message.
pub(crate) const RECV_BUF: usize = 65_536;

/// The UDP socket as the data plane uses it (non-blocking; writable is
/// signalled on its file descriptor).
pub(crate) trait UdpIo: AsFd + Send + Sync + 'static {
    /// One datagram.
    fn send_to(&self, data: &[u8], dst: SocketAddr) -> io::Result<usize>;
    /// One `sendmsg` of `data` cut into datagrams of `seg` bytes (`UDP_SEGMENT`).
    fn send_gso(&self, data: &[u8], seg: u16, dst: SocketAddr) -> io::Result<usize>;
    /// One `recvmmsg` of up to `want` messages (at most [`MAX_MESSAGES`]), the
    /// i-th into `buf`'s i-th [`RECV_BUF`] chunk, each described in `got`.
    fn recv_messages(&self, buf: &mut [u8], want: usize, got: &mut Vec<Message>) -> io::Result<()>;
    /// Whether `UDP_SEGMENT` sends are supported.
    fn probe_gso(&self) -> bool;
    /// Turns `UDP_GRO` receives on; whether that worked.
    fn enable_gro(&self) -> bool;
}

impl UdpIo for UdpSocket {
    fn send_to(&self, data: &[u8], dst: SocketAddr) -> io::Result<usize> {
        UdpSocket::send_to(self, data, dst)
    }

    fn send_gso(&self, data: &[u8], seg: u16, dst: SocketAddr) -> io::Result<usize> {
        let addr = SockaddrStorage::from(dst);
        sendmsg(
            self.as_raw_fd(),
            &[IoSlice::new(data)],
            &[ControlMessage::UdpGsoSegments(&seg)],
            MsgFlags::empty(),
            Some(&addr),
        )
        .map_err(io::Error::from)
    }

    fn recv_messages(&self, buf: &mut [u8], want: usize, got: &mut Vec<Message>) -> io::Result<()> {
        let mut chunks = buf.chunks_mut(RECV_BUF);
        let mut iovs: [[IoSliceMut<'_>; 1]; MAX_MESSAGES] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        // Fresh headers per call: the kernel shrinks each header's control
        // length to what it wrote and nix does not restore it, so a reused
        // header loses the GRO segment size (MSG_CTRUNC) after a message that
        // carried none.
        let mut headers =
            MultiHeaders::<SockaddrStorage>::preallocate(want, Some(gro_cmsg_space()));
        let msgs = recvmmsg(
            self.as_raw_fd(),
            &mut headers,
            iovs.iter_mut().take(want),
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
        for m in msgs {
            let mut seg = m.bytes;
            if let Ok(cmsgs) = m.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::UdpGroSegments(s) = c
                        && let Ok(s) = usize::try_from(s)
                        && s > 0
                    {
                        seg = s;
                    }
                }
            }
            let from = if m.flags.contains(MsgFlags::MSG_TRUNC) {
                Err(Refused::Truncated)
            } else {
                m.address
                    .as_ref()
                    .and_then(socket_addr)
                    .ok_or(Refused::NotIp)
            };
            got.push(Message {
                len: m.bytes,
                seg: seg.max(1),
                from,
            });
        }
        Ok(())
    }

    fn probe_gso(&self) -> bool {
        getsockopt(self, sockopt::UdpGsoSegment).is_ok()
    }

    fn enable_gro(&self) -> bool {
        setsockopt(self, sockopt::UdpGroSegment, &true).is_ok()
    }
}

/// Which offloads the socket has.
#[derive(Debug)]
pub(crate) struct Offloads {
    /// `UDP_SEGMENT` sends; cleared (once, logged) if the kernel refuses one.
    gso: AtomicBool,
    /// `UDP_GRO` receives.
    pub(crate) gro: bool,
}

impl Offloads {
    /// Probes GSO and turns GRO on; `enabled: false` keeps both off.
    pub(crate) fn setup(udp: &impl UdpIo, enabled: bool) -> Self {
        if !enabled {
            tracing::info!("UDP GSO/GRO disabled by configuration");
            return Self {
                gso: AtomicBool::new(false),
                gro: false,
            };
        }
        let gso = udp.probe_gso();
        let gro = udp.enable_gro();
        if !gso {
            tracing::warn!("kernel lacks UDP GSO (UDP_SEGMENT): one send per datagram");
        }
        if !gro {
            tracing::warn!("kernel lacks UDP GRO: one datagram per received message");
        }
        tracing::debug!(gso, gro, "UDP offloads");
        Self {
            gso: AtomicBool::new(gso),
            gro,
        }
    }

    /// Whether GSO sends are on.
    pub(crate) fn gso_on(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    fn disable_gso(&self, e: &io::Error) {
        if self.gso.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, "UDP GSO send refused; falling back to one send per datagram");
        }
    }
}

/// What a send does when the socket's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Wait (up to [`FULL_WAIT_MS`]) for room: the data path, where waiting is
    /// backpressure on the reader.
    Room,
    /// Drop the datagram: callers on the async runtime must not block.
    No,
}

/// The longest a data-path send waits for room in a full socket buffer.
const FULL_WAIT_MS: u8 = 100;

/// Runs `op` (a non-blocking send); on `EAGAIN` with [`Wait::Room`] waits for
/// the socket to become writable and tries once more.
fn with_room<T>(
    udp: &impl UdpIo,
    wait: Wait,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    match op() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && wait == Wait::Room => {
            let mut fds = [PollFd::new(udp.as_fd(), PollFlags::POLLOUT)];
            let _ = poll(&mut fds, PollTimeout::from(FULL_WAIT_MS));
            op()
        }
        r => r,
    }
}

/// Sends one datagram; returns whether it failed (1) or not (0).
pub(crate) fn send_one(udp: &impl UdpIo, dst: SocketAddr, data: &[u8], wait: Wait) -> u64 {
    match with_room(udp, wait, || udp.send_to(data, dst)) {
        Ok(_) => 0,
        Err(e) => {
            tracing::trace!(%dst, error = %e, "sending datagram failed");
            1
        }
    }
}

/// Sends `data`, datagrams of `seg` bytes back to back (the last may be
/// shorter), to `dst`: one `sendmsg` with `UDP_SEGMENT` when there are several
/// and the kernel supports it, else one send each. Returns the sends that
/// failed.
pub(crate) fn send_segments(
    udp: &impl UdpIo,
    off: &Offloads,
    dst: SocketAddr,
    data: &[u8],
    seg: usize,
    wait: Wait,
) -> u64 {
    let seg = seg.max(1);
    if data.len() > seg
        && off.gso_on()
        && let Ok(seg16) = u16::try_from(seg)
    {
        let sent = with_room(udp, wait, || udp.send_gso(data, seg16, dst));
        match sent {
            Ok(_) => return 0,
            // EIO: the device cannot checksum-offload segments; EINVAL/EOPNOTSUPP:
            // this kernel cannot segment this send. Fall back for good.
            Err(e)
                if [Errno::EIO, Errno::EINVAL, Errno::EOPNOTSUPP]
                    .iter()
                    .any(|c| e.raw_os_error() == Some(*c as i32)) =>
            {
                off.disable_gso(&e);
            }
            Err(e) => {
                tracing::trace!(%dst, error = %e, "sending datagrams failed");
                return 1;
            }
        }
    }
    data.chunks(seg).map(|d| send_one(udp, dst, d, wait)).sum()
}

/// Most messages one [`Receiver::recv`] takes (each a datagram, or with GRO a
/// run of datagrams from one sender).
pub(crate) const MAX_MESSAGES: usize = 32;

/// One message of a [`Receiver::recv`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message {
    pub(crate) len: usize,
    /// The GRO segment size (`len` without GRO).
    pub(crate) seg: usize,
    /// The sender, or why the message is not handed on.
    pub(crate) from: Result<SocketAddr, Refused>,
}

/// Receives many messages per `recvmmsg`, each into its own [`RECV_BUF`]
/// buffer (one allocation, made resident only as far as datagrams fill it).
pub(crate) struct Receiver {
    buf: Vec<u8>,
    got: Vec<Message>,
}

/// Why a received message is not handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Longer than its buffer: cut off by the kernel.
    Truncated,
    /// The sender is not an IP address.
    NotIp,
}

impl Receiver {
    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0u8; MAX_MESSAGES * RECV_BUF],
            got: Vec::with_capacity(MAX_MESSAGES),
        }
    }

    /// One `recvmmsg` of up to `want` messages (1 to [`MAX_MESSAGES`]),
    /// without waiting. Returns how many arrived: fewer than `want` means the
    /// socket was empty (no further receive needed), `WouldBlock` that nothing
    /// was queued.
    pub(crate) fn recv(&mut self, udp: &impl UdpIo, want: usize) -> io::Result<usize> {
        let want = want.clamp(1, MAX_MESSAGES);
        self.got.clear();
        udp.recv_messages(&mut self.buf, want, &mut self.got)?;
        Ok(self.got.len())
    }

    /// The messages of the last [`Receiver::recv`]: sender, GRO segment size
    /// and bytes (datagrams of that size back to back, the last may be
    /// shorter), or why the message is refused.
    pub(crate) fn messages(
        &self,
    ) -> impl Iterator<Item = Result<(SocketAddr, usize, &[u8]), Refused>> + '_ {
        self.got
            .iter()
            .zip(self.buf.chunks(RECV_BUF))
            .map(|(m, b)| m.from.map(|from| (from, m.seg, &b[..m.len.min(b.len())])))
    }
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// The control-message space a GRO receive needs.
pub(crate) fn gro_cmsg_space() -> Vec<u8> {
    nix::cmsg_space!(i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_send_and_gro_receive_round_trip_between_sockets() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind b");
        a.set_nonblocking(true).expect("nonblocking a");
        b.set_nonblocking(true).expect("nonblocking b");
        let off_a = Offloads::setup(&a, true);
        let off_b = Offloads::setup(&b, true);
        let to = b.local_addr().expect("addr b");
        let mut data = Vec::new();
        for i in 0..10u8 {
            data.extend(std::iter::repeat_n(i, if i == 9 { 300 } else { 1000 }));
        }
        let mut rx = Receiver::new();
        // First a lone datagram (no GRO control message), then the burst: the
        // burst's segment size must still come through.
        a.send_to(b"lone", to).expect("send lone");
        let lone = loop {
            match rx.recv(&b, MAX_MESSAGES) {
                Ok(_) => break rx.messages().next().expect("one message").expect("whole"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("receive: {e}"),
            }
        };
        assert_eq!(lone.2, b"lone");
        send_segments(&a, &off_a, to, &data, 1000, Wait::Room);
        let mut got = Vec::new();
        while got.len() < 10 {
            // Non-blocking: the datagrams are queued or on their way over loopback.
            match rx.recv(&b, MAX_MESSAGES) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                Err(e) => panic!("receive: {e}"),
            }
            for m in rx.messages() {
                let (from, seg, bytes) = m.expect("a whole datagram from an IP sender");
                assert_eq!(from, a.local_addr().expect("addr a"));
                if !off_b.gro {
                    assert_eq!(seg, bytes.len());
                }
                got.extend(bytes.chunks(seg).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got.len(), 10);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.len(), if i == 9 { 300 } else { 1000 });
            assert!(d.iter().all(|x| usize::from(*x) == i));
        }
    }

    /// Without GRO each message is one datagram: one `recvmmsg` takes many, from
    /// several senders of both families (headers are not reused with a shrunken
    /// address length), and reports fewer than asked once the socket is empty.
    #[test]
    fn recvmmsg_takes_many_senders_of_both_families_and_reports_empty() {
        let rx_sock = UdpSocket::bind("[::]:0").expect("a dual-stack socket (needs IPv6 loopback)");
        rx_sock.set_nonblocking(true).expect("nonblocking");
        let port = rx_sock.local_addr().expect("addr").port();
        let v4: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind v4"))
            .collect();
        let v6 = UdpSocket::bind("[::1]:0").expect("bind v6");
        let mut sent = Vec::new();
        for round in 0..2u8 {
            for (i, s) in v4.iter().enumerate() {
                let payload = vec![round * 10 + u8::try_from(i).expect("small"); 100 + i];
                s.send_to(&payload, ("127.0.0.1", port)).expect("send v4");
                sent.push((s.local_addr().expect("addr"), payload));
            }
            let payload = vec![round * 10 + 9; 1400];
            v6.send_to(&payload, ("::1", port)).expect("send v6");
            sent.push((v6.local_addr().expect("addr"), payload));
        }
        let mut rx = Receiver::new();
        let mut got = Vec::new();
        for _ in 0..1000 {
            if got.len() == sent.len() {
                break;
            }
            match rx.recv(&rx_sock, MAX_MESSAGES) {
                Ok(n) => {
                    assert!(n < MAX_MESSAGES, "fewer than asked: the socket was emptied");
                    for m in rx.messages() {
                        let (from, seg, bytes) = m.expect("whole datagram");
                        assert_eq!(seg, bytes.len(), "no GRO: one datagram per message");
                        let from = match from {
                            SocketAddr::V6(a) => a
                                .ip()
                                .to_ipv4_mapped()
                                .map_or(from, |ip| SocketAddr::from((ip, a.port()))),
                            v4 => v4,
                        };
                        got.push((from, bytes.to_vec()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("receive: {e}"),
            }
        }
        assert_eq!(got, sent, "every datagram, in order, with its sender");
        let e = rx.recv(&rx_sock, 4).expect_err("empty socket");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
