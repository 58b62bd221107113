//! Asking the upstream resolvers (tokio): UDP from a fresh random port with a
//! random id, TCP when the answer is truncated, the next upstream on a timeout,
//! an error, SERVFAIL or REFUSED.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::handler::{self, EDNS_PAYLOAD, Pending};

/// How long one upstream gets to answer over UDP. glibc waits 5 s for us, so two
/// upstreams fit.
pub(crate) const UDP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP exchange (connect, send, receive) may take.
pub(crate) const TCP_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks each upstream in turn; the first usable answer, else the last SERVFAIL or
/// REFUSED received, else `None`.
pub(crate) async fn forward(pending: &Pending, upstreams: &[SocketAddr]) -> Option<Message> {
    let mut last = None;
    for &upstream in upstreams {
        let id = random_id();
        let Ok(query) = handler::upstream_query(pending, id) else {
            return None;
        };
        let mut answer = match udp_exchange(upstream, &query, id, pending).await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%upstream, "upstream UDP: {e}");
                continue;
            }
        };
        if answer.metadata.truncation {
            match tcp_exchange(upstream, &query, id, pending).await {
                Ok(m) => answer = m,
                Err(e) => {
                    tracing::debug!(%upstream, "upstream TCP: {e}");
                    continue;
                }
            }
        }
        if matches!(
            answer.metadata.response_code,
            ResponseCode::ServFail | ResponseCode::Refused
        ) {
            last = Some(answer);
            continue;
        }
        return Some(answer);
    }
    last
}

fn random_id() -> u16 {
    (OsRng.next_u32() & 0xffff) as u16
}

async fn udp_exchange(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    pending: &Pending,
) -> Result<Message, String> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    socket.connect(upstream).await.map_err(|e| e.to_string())?;
    socket.send(query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(EDNS_PAYLOAD).max(4096)];
    let wait = async {
        loop {
            let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Anything that is not the answer to this query (a late answer to
            // an earlier one, a spoofing attempt) is ignored.
            if let Ok(m) = Message::from_vec(&buf[..n])
                && handler::answers(&m, id, &pending.question)
            {
                return Ok(m);
            }
        }
    };
    timeout(UDP_TIMEOUT, wait)
        .await
        .map_err(|_| "timed out".to_owned())?
}

async fn tcp_exchange(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    pending: &Pending,
) -> Result<Message, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream)
            .await
            .map_err(|e| e.to_string())?;
        let len = u16::try_from(query.len()).map_err(|_| "query too long".to_owned())?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.map_err(|e| e.to_string())?;
        let len = stream.read_u16().await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; usize::from(len)];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let m = Message::from_vec(&buf).map_err(|e| e.to_string())?;
        if handler::answers(&m, id, &pending.question) {
            Ok(m)
        } else {
            Err("answer does not match the query".to_owned())
        }
    };
    timeout(TCP_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}
