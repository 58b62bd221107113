//! `netcheck`: what the underlay lets this node do, from the agent: a STUN
//! Binding request to every relay of the map that runs a STUN server (from one
//! fresh UDP socket, so two answers tell how the NAT maps), the TCP connect time
//! of each relay's TLS port, and what the data plane itself knows (its
//! reflexive addresses, whether its relay link is up). `weft netcheck` is the
//! interactive version on the command line.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpStream, UdpSocket};
use weft_proto::netmap::Relay;
use weft_proto::stun;

use super::{ActionContext, Done, Request};
use crate::clock;
use crate::dataplane::{stun_server, url_host_port};

/// How long a STUN server or a TCP connect may take.
const WAIT: Duration = Duration::from_secs(3);
/// STUN requests are resent this often until [`WAIT`].
const RESEND: Duration = Duration::from_millis(250);

pub(super) async fn netcheck(ctx: &ActionContext) -> Done {
    let status = match ctx.ask(Request::Status).await {
        Ok(s) => s,
        Err(e) => return Done::failed(String::new(), e),
    };
    let mut relays = Vec::new();
    let mut mapped = Vec::new();
    let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await;
    for relay in &status.relays {
        let stun = match (&socket, stun_server(relay).await) {
            (Ok(sock), Some(server)) => {
                let (seen, rtt) = stun_probe(sock, server).await;
                if let Some(seen) = seen {
                    mapped.push(seen);
                }
                json!({"server": server, "mapped": seen, "rtt_ms": rtt.map(ms)})
            }
            (Err(e), Some(server)) => {
                json!({"server": server, "error": format!("no UDP socket: {e}")})
            }
            (_, None) => serde_json::Value::Null,
        };
        let tcp = tcp_probe(relay).await;
        relays.push(json!({
            "relay": relay.name.clone().unwrap_or_else(|| relay.url.clone()),
            "url": relay.url,
            "stun": stun,
            "tcp": tcp,
        }));
    }
    mapped.sort();
    mapped.dedup();
    let udp = !mapped.is_empty();
    let reachable = relays
        .iter()
        .any(|r| r["tcp"]["connect_ms"].is_number() || r["stun"]["mapped"].is_string());
    let mapping = match mapped.len() {
        0 => "unknown",
        1 if relays
            .iter()
            .filter(|r| r["stun"]["mapped"].is_string())
            .count()
            >= 2 =>
        {
            "endpoint-independent"
        }
        1 => "unknown",
        _ => "endpoint-dependent",
    };
    let out = json!({
        "udp": udp,
        "mapping": mapping,
        "mapped": mapped,
        "relays": relays,
        "dataplane_reflexive": status.reflexive,
        "relay_link": status.relay.as_ref().map(|r| json!({"url": r.url, "connected": r.connected})),
    });
    let text = format!("{out:#}\n");
    // No relay in the map: nothing to reach, and nothing failed.
    if status.relays.is_empty() || reachable {
        Done::ok(text)
    } else {
        Done::failed(text, "no relay of the map answered (STUN or TCP)")
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One STUN Binding transaction with `server`: the address it saw and the round
/// trip (`None`: no answer within [`WAIT`]).
async fn stun_probe(
    sock: &UdpSocket,
    server: SocketAddr,
) -> (Option<SocketAddr>, Option<Duration>) {
    let mut id = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    let mut msg = Vec::new();
    stun::encode_binding_request(&id, true, &mut msg);
    let start = clock::now();
    let deadline = start + WAIT;
    let mut buf = [0u8; 1500];
    while clock::now() < deadline {
        if sock.send_to(&msg, server).await.is_err() {
            return (None, None);
        }
        let until = (clock::now() + RESEND).min(deadline);
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(until.into(), sock.recv_from(&mut buf)).await
        {
            if from != server {
                continue;
            }
            let Ok(resp) = stun::parse_binding_response(&buf[..n]) else {
                continue;
            };
            if resp.transaction_id != id {
                continue;
            }
            return (
                Some(resp.mapped),
                Some(clock::now().saturating_duration_since(start)),
            );
        }
    }
    (None, None)
}

/// The TCP connect time of the relay's TLS port (its URL's port, 443 by default).
async fn tcp_probe(relay: &Relay) -> serde_json::Value {
    let (host, port) = url_host_port(&relay.url);
    let port = port.unwrap_or(443);
    let start = clock::now();
    match tokio::time::timeout(WAIT, TcpStream::connect((host, port))).await {
        Ok(Ok(s)) => json!({
            "address": s.peer_addr().ok(),
            "connect_ms": ms(clock::now().saturating_duration_since(start)),
        }),
        Ok(Err(e)) => json!({"address": format!("{host}:{port}"), "error": e.to_string()}),
        Err(_) => {
            json!({"address": format!("{host}:{port}"), "error": format!("no answer within {} s", WAIT.as_secs())})
        }
    }
}
