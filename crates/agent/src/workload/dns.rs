//! Name resolution for bridged workloads. A workload sees the node's
//! `/etc/resolv.conf`; when that names a loopback resolver (systemd-resolved's
//! 127.0.0.53, weft's own), the workload's own loopback has none. So its
//! namespace sends DNS for 127.0.0.0/8 to the gateway (`plan::dns_script`),
//! where this relay passes each query to the node's first nameserver and the
//! answer back. Bounded: at most [`MAX_INFLIGHT`] queries at once, each
//! waiting at most [`TIMEOUT`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

const MAX_INFLIGHT: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(5);
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The relay on `GATEWAY:53` (UDP and TCP); dropped, it stops.
pub(crate) struct Relay(Vec<JoinHandle<()>>);

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the relay on the gateway address (the bridge must have it).
pub(crate) async fn start(gateway: Ipv4Addr) -> Result<Relay, String> {
    let at = SocketAddr::from((gateway, 53));
    let udp = UdpSocket::bind(at)
        .await
        .map_err(|e| format!("DNS relay on {at}/udp: {e}"))?;
    let tcp = TcpListener::bind(at)
        .await
        .map_err(|e| format!("DNS relay on {at}/tcp: {e}"))?;
    let limit = Arc::new(Semaphore::new(MAX_INFLIGHT));
    Ok(Relay(vec![
        tokio::spawn(serve_udp(Arc::new(udp), limit.clone())),
        tokio::spawn(serve_tcp(tcp, limit)),
    ]))
}

/// The first `nameserver` of the node's resolv.conf (port 53).
fn upstream() -> Option<SocketAddr> {
    let text = std::fs::read_to_string(RESOLV_CONF).ok()?;
    first_nameserver(&text).map(|ip| SocketAddr::new(ip, 53))
}

pub(crate) fn first_nameserver(text: &str) -> Option<IpAddr> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next().and_then(|a| a.split('%').next()?.parse().ok()))
            .flatten()
    })
}

async fn serve_udp(socket: Arc<UdpSocket>, limit: Arc<Semaphore>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue; // too many in flight: the client retries
        };
        let (query, socket) = (buf[..n].to_vec(), socket.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = ask_udp(&query).await {
                let _ = socket.send_to(&answer, from).await;
            }
        });
    }
}

async fn ask_udp(query: &[u8]) -> Option<Vec<u8>> {
    let to = upstream()?;
    let bind: SocketAddr = if to.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind).await.ok()?;
    s.connect(to).await.ok()?;
    s.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(TIMEOUT, s.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

async fn serve_tcp(listener: TcpListener, limit: Arc<Semaphore>) {
    loop {
        let Ok((mut inner, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let Some(to) = upstream() else {
                return;
            };
            let Ok(Ok(mut outer)) = tokio::time::timeout(TIMEOUT, TcpStream::connect(to)).await
            else {
                return;
            };
            let _ = tokio::time::timeout(
                TIMEOUT * 6,
                tokio::io::copy_bidirectional(&mut inner, &mut outer),
            )
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::first_nameserver;

    #[test]
    fn the_first_nameserver_is_the_upstream() {
        let conf = "# managed\nsearch lan\nnameserver 127.0.0.53\nnameserver 10.0.0.1\n";
        assert_eq!(first_nameserver(conf), Some("127.0.0.53".parse().unwrap()));
        assert_eq!(
            first_nameserver("nameserver fe80::1%eth0\n"),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(first_nameserver("search x\n"), None);
    }
}
