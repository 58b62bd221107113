//! `weft ping`: ICMP echo over the overlay, with the path each reply took.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use weft_proto::local::AgentStatus;

use super::{SocketArg, resolve_peer, status_of};
use crate::clock::now;

#[derive(Debug, Args)]
pub struct PingArgs {
    /// Peer name (`db`, `db.prod`), or overlay IP.
    peer: String,
    /// Number of echo requests.
    #[arg(short = 'c', long, default_value_t = 3)]
    count: u32,
    /// Seconds to wait for each reply.
    #[arg(short = 'W', long, default_value_t = 2.0)]
    timeout: f64,
}

/// `weft ping`: ICMP echo to a peer's overlay address through the tunnel.
pub fn ping(sock: &SocketArg, a: PingArgs, json: bool) -> anyhow::Result<ExitCode> {
    let st = status_of(&sock.socket)?;
    let (peer, ip) = resolve_peer(&st, &a.peer)?;
    let IpAddr::V4(_) = ip else {
        bail!("weft ping supports IPv4 overlay addresses");
    };
    let (socket, raw) = icmp_socket()?;
    let timeout = Duration::from_secs_f64(a.timeout.clamp(0.1, 60.0));
    socket.set_read_timeout(Some(timeout))?;
    let dst = SocketAddr::new(ip, 0);
    let socket = std::net::UdpSocket::from(socket);
    // A raw socket sees every echo reply on the host: ours carry this id. A
    // ping socket gets only its own (the kernel sets and checks the id).
    #[expect(clippy::cast_possible_truncation, reason = "an ICMP id is 16 bits")]
    let id = raw.then_some(std::process::id() as u16);
    let via = via(peer, &st);
    let mut ok = 0u32;
    let mut rtts = Vec::new();
    let mut replies = Vec::new();
    for seq in 1..=a.count {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "ICMP sequence numbers wrap"
        )]
        let seq16 = seq as u16;
        let pkt = weft_proto::icmp::echo_request(id.unwrap_or(0), seq16);
        let start = now();
        socket
            .send_to(&pkt, dst)
            .context("sending the echo request")?;
        let deadline = start + timeout;
        let mut got = false;
        while now() < deadline {
            let mut bytes = [0u8; 1500];
            socket.set_read_timeout(Some(
                deadline
                    .saturating_duration_since(now())
                    .max(Duration::from_millis(1)),
            ))?;
            match socket.recv_from(&mut bytes) {
                Ok((n, from)) => {
                    if !is_our_reply(&bytes[..n], from.ip(), ip, seq16, id) {
                        continue;
                    }
                    let rtt = now().duration_since(start);
                    rtts.push(rtt);
                    ok += 1;
                    got = true;
                    if !json {
                        println!(
                            "reply from {} ({ip}) seq={seq} time={:.2} ms via {via}",
                            peer.name,
                            rtt.as_secs_f64() * 1e3,
                        );
                    }
                    replies.push(serde_json::json!({
                        "seq": seq, "rtt_ms": rtt.as_secs_f64() * 1e3,
                    }));
                    break;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => {
                    if !json {
                        println!("seq={seq}: {e}");
                    }
                    break;
                }
            }
        }
        if !got && !json {
            println!(
                "no reply from {} ({ip}) seq={seq} within {:.1}s",
                peer.name,
                timeout.as_secs_f64()
            );
        }
        if seq < a.count {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let lost = a.count - ok;
    if json {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let v = serde_json::json!({
            "peer": peer.name,
            "address": ip,
            "via": via,
            "sent": a.count,
            "received": ok,
            "lost": lost,
            "replies": replies,
            "rtt_ms": match (rtts.iter().min(), rtts.iter().max()) {
                (Some(min), Some(max)) => serde_json::json!({
                    "min": ms(min),
                    "avg": rtts.iter().map(ms).sum::<f64>() / rtts.len() as f64,
                    "max": ms(max),
                }),
                _ => serde_json::Value::Null,
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if let (Some(min), Some(max)) = (rtts.iter().min(), rtts.iter().max()) {
        let avg = rtts.iter().map(Duration::as_secs_f64).sum::<f64>() / rtts.len() as f64;
        println!(
            "{} sent, {ok} received, {lost} lost; rtt min/avg/max {:.2}/{:.2}/{:.2} ms",
            a.count,
            min.as_secs_f64() * 1e3,
            avg * 1e3,
            max.as_secs_f64() * 1e3
        );
    } else {
        println!("{} sent, 0 received", a.count);
    }
    Ok(if ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// An ICMP socket: a ping socket if allowed, else a raw one (`true`).
fn icmp_socket() -> anyhow::Result<(socket2::Socket, bool)> {
    use socket2::{Domain, Protocol, Socket, Type};
    Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4))
        .map(|s| (s, false))
        .or_else(|_| {
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map(|s| (s, true))
        })
        .context("opening an ICMP socket (needs root or net.ipv4.ping_group_range)")
}

pub(super) use weft_proto::icmp::is_echo_reply as is_our_reply;

/// How packets reach `peer`, for ping's lines: `direct IP:PORT`, `relay URL`.
fn via(peer: &weft_proto::local::PeerStatus, st: &AgentStatus) -> String {
    if let Some(e) = &peer.endpoint {
        return format!("direct {e}");
    }
    if peer.path == "relay" {
        return st
            .relay
            .as_ref()
            .map_or_else(|| "relay".to_owned(), |r| format!("relay {}", r.url));
    }
    "no path yet".to_owned()
}
