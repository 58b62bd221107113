//! Batched UDP I/O for the data plane: many datagrams to one address in one
//! `sendmsg` (`UDP_SEGMENT`, UDP GSO), many datagrams from one address in one
//! `recvmsg` (`UDP_GRO`). The core lines datagrams up for such sends in a
//! [`weft_tunnel::batch::DatagramBatch`].
//!
//! Each feature is probed when the socket is set up and falls back to one
//! syscall per datagram when the kernel lacks it (logged once).
//!
//! The socket is non-blocking and owned by the data plane's I/O thread (not
//! registered with the async runtime); sends that find its buffer full either
//! wait for room ([`Wait::Room`], the data path: backpressure) or drop
//! ([`Wait::No`], control traffic sent from async tasks, which the protocols
//! retry).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, getsockopt, recvmsg, sendmsg,
    setsockopt, sockopt,
};

/// Receive buffer for one (possibly GRO-coalesced) read.
pub(crate) const RECV_BUF: usize = 65_536;

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
    pub(crate) fn setup(udp: &UdpSocket, enabled: bool) -> Self {
        if !enabled {
            tracing::info!("UDP GSO/GRO disabled by configuration");
            return Self {
                gso: AtomicBool::new(false),
                gro: false,
            };
        }
        let gso = getsockopt(udp, sockopt::UdpGsoSegment).is_ok();
        let gro = setsockopt(udp, sockopt::UdpGroSegment, &true).is_ok();
        if !gso {
            tracing::warn!("kernel lacks UDP GSO (UDP_SEGMENT): one send per datagram");
        }
        if !gro {
            tracing::warn!("kernel lacks UDP GRO: one receive per datagram");
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
    udp: &UdpSocket,
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

/// Sends one datagram.
pub(crate) fn send_one(udp: &UdpSocket, dst: SocketAddr, data: &[u8], wait: Wait) {
    if let Err(e) = with_room(udp, wait, || udp.send_to(data, dst)) {
        tracing::trace!(%dst, error = %e, "sending datagram failed");
    }
}

/// Sends `data`, datagrams of `seg` bytes back to back (the last may be
/// shorter), to `dst`: one `sendmsg` with `UDP_SEGMENT` when there are several
/// and the kernel supports it, else one send each.
pub(crate) fn send_segments(
    udp: &UdpSocket,
    off: &Offloads,
    dst: SocketAddr,
    data: &[u8],
    seg: usize,
    wait: Wait,
) {
    let seg = seg.max(1);
    if data.len() > seg
        && off.gso_on()
        && let Ok(seg16) = u16::try_from(seg)
    {
        let addr = SockaddrStorage::from(dst);
        let sent = with_room(udp, wait, || {
            sendmsg(
                udp.as_raw_fd(),
                &[IoSlice::new(data)],
                &[ControlMessage::UdpGsoSegments(&seg16)],
                MsgFlags::empty(),
                Some(&addr),
            )
            .map_err(io::Error::from)
        });
        match sent {
            Ok(_) => return,
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
                return;
            }
        }
    }
    for d in data.chunks(seg) {
        send_one(udp, dst, d, wait);
    }
}

/// One receive, without waiting: `(bytes, sender, segment size)`. With GRO the
/// bytes are several datagrams of `segment size` back to back (the last may be
/// shorter); without, one datagram (`segment size` = bytes). Truncated reads and
/// senders that are not IP are refused as `InvalidData`.
pub(crate) fn recv_segments(
    udp: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<(usize, SocketAddr, usize)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(udp.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())
        .map_err(io::Error::from)?;
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram truncated",
        ));
    }
    let n = msg.bytes;
    let mut seg = n;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::UdpGroSegments(s) = c
                && let Ok(s) = usize::try_from(s)
                && s > 0
            {
                seg = s;
            }
        }
    }
    let from =
        msg.address.as_ref().and_then(socket_addr).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "sender is not an IP address")
        })?;
    Ok((n, from, seg.max(1)))
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
        let off_a = Offloads::setup(&a, true);
        let off_b = Offloads::setup(&b, true);
        let to = b.local_addr().expect("addr b");
        let mut data = Vec::new();
        for i in 0..10u8 {
            data.extend(std::iter::repeat_n(i, if i == 9 { 300 } else { 1000 }));
        }
        send_segments(&a, &off_a, to, &data, 1000, Wait::Room);
        let mut got = Vec::new();
        let mut buf = vec![0u8; RECV_BUF];
        let mut cmsg = gro_cmsg_space();
        while got.len() < 10 {
            // `b` blocks: the datagrams are already queued or on their way.
            let (n, from, seg) = recv_segments(&b, &mut buf, &mut cmsg).expect("receive");
            assert_eq!(from, a.local_addr().expect("addr a"));
            if !off_b.gro {
                assert_eq!(seg, n);
            }
            got.extend(buf[..n].chunks(seg).map(<[u8]>::to_vec));
        }
        assert_eq!(got.len(), 10);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.len(), if i == 9 { 300 } else { 1000 });
            assert!(d.iter().all(|x| usize::from(*x) == i));
        }
    }
}
