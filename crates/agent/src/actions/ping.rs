//! `ping PEER`: ICMP echoes to a peer's overlay address, through the tunnel,
//! the way `weft ping` sends them (`weft_proto::icmp`), with the path the
//! data plane uses for the peer.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use serde_json::json;

use super::{ActionContext, Done, Request};
use crate::clock;

/// Echo requests sent.
pub(super) const COUNT: u16 = 3;
/// How long each waits for its reply.
pub(super) const WAIT: Duration = Duration::from_secs(2);
/// Pause between requests.
const GAP: Duration = Duration::from_millis(200);

pub(super) async fn ping(ctx: &ActionContext, what: &str) -> Done {
    let status = match ctx.ask(Request::Status).await {
        Ok(s) => s,
        Err(e) => return Done::failed(String::new(), e),
    };
    let (peer, ip) = match status.resolve_peer(what) {
        Ok((p, ip)) => (p.clone(), ip),
        Err(e) => return Done::failed(String::new(), e),
    };
    if !ip.is_ipv4() {
        return Done::failed(String::new(), "ping supports IPv4 overlay addresses");
    }
    let echoes = tokio::task::spawn_blocking(move || echoes(ip, COUNT, WAIT)).await;
    let rtts = match echoes {
        Ok(Ok(rtts)) => rtts,
        Ok(Err(e)) => return Done::failed(String::new(), e),
        Err(e) => return Done::failed(String::new(), format!("the ping task failed: {e}")),
    };
    let received = rtts.iter().flatten().count();
    let ms = |d: &Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let out = json!({
        "peer": peer.name,
        "address": ip,
        "path": peer.path,
        "endpoint": peer.endpoint,
        "sent": COUNT,
        "received": received,
        "rtt_ms": rtts.iter().map(|r| r.as_ref().map(ms)).collect::<Vec<_>>(),
    });
    let text = format!("{out:#}\n");
    if received == 0 {
        Done::failed(
            text,
            format!(
                "no reply from {} ({ip}) to {COUNT} echo requests",
                peer.name
            ),
        )
    } else {
        Done::ok(text)
    }
}

/// Sends `count` echo requests to `ip`, one at a time; the round trip of each
/// (`None`: no reply within `wait`).
pub(super) fn echoes(
    ip: IpAddr,
    count: u16,
    wait: Duration,
) -> Result<Vec<Option<Duration>>, String> {
    let (socket, raw) = icmp_socket()?;
    // A raw socket sees every echo reply on the host: ours carry this id. A
    // ping socket gets only its own (the kernel sets and checks the id).
    #[expect(clippy::cast_possible_truncation, reason = "an ICMP id is 16 bits")]
    let id = raw.then_some(std::process::id() as u16);
    let mut rtts = Vec::new();
    for seq in 1..=count {
        let pkt = weft_proto::icmp::echo_request(id.unwrap_or(0), seq);
        let start = clock::now();
        socket
            .send_to(&pkt, SocketAddr::new(ip, 0))
            .map_err(|e| format!("sending an echo request to {ip}: {e}"))?;
        let deadline = start + wait;
        let mut rtt = None;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(clock::now());
            if left.is_zero() {
                break;
            }
            socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| format!("ICMP socket: {e}"))?;
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if weft_proto::icmp::is_echo_reply(&buf[..n], from.ip(), ip, seq, id) {
                        rtt = Some(clock::now().saturating_duration_since(start));
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(format!("receiving from {ip}: {e}")),
            }
        }
        rtts.push(rtt);
        if seq < count {
            std::thread::sleep(GAP);
        }
    }
    Ok(rtts)
}

/// An ICMP socket: a ping socket if allowed, else a raw one (`true`).
fn icmp_socket() -> Result<(UdpSocket, bool), String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    let open = |ty| {
        socket(
            AddressFamily::Inet,
            ty,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )
    };
    open(SockType::Datagram)
        .map(|fd| (UdpSocket::from(fd), false))
        .or_else(|_| open(SockType::Raw).map(|fd| (UdpSocket::from(fd), true)))
        .map_err(|e| {
            format!("opening an ICMP socket (needs CAP_NET_RAW or net.ipv4.ping_group_range): {e}")
        })
}
