//! Commands that talk to the local agent over its Unix socket: `status`, `up`,
//! `down`, `ping`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use weft_proto::local::{AgentStatus, ExplainRequest, LocalRequest, LocalResponse, UpRequest};

/// Where the agent listens.
#[derive(Debug, Clone, Args)]
pub struct SocketArg {
    /// The agent's local API socket.
    #[arg(long, global = true, env = "WEFT_SOCKET", default_value = weft_proto::local::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Controller URL, e.g. https://controller.example.net:8443 (first join only).
    #[arg(long, value_name = "URL")]
    controller: Option<String>,
    /// Read the join token from this file ("-" for standard input).
    #[arg(long, value_name = "PATH", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The join token. Prefer --token-file or WEFT_TOKEN: command lines are
    /// visible to other users in `ps`.
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
    /// PEM file with the CA that signed the controller's certificate.
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// Pin the controller's certificate by its SHA-256 fingerprint (hex, as printed
    /// by `weft-controller serve`).
    #[arg(long, value_name = "HEX")]
    pin_sha256: Option<String>,
    /// Allow cleartext http:// to a controller that is not on loopback (insecure).
    #[arg(long)]
    allow_insecure_http: bool,
    /// Name for this node (default: the hostname).
    #[arg(long)]
    name: Option<String>,
    /// Offer these subnets as a gateway, comma-separated IPv4 CIDRs (e.g.
    /// 192.168.50.0/24). They wait for an admin's approval; the node needs the
    /// tag `gateway`. Replaces the subnets offered before; "" offers none.
    #[arg(long, value_delimiter = ',', value_name = "CIDR[,CIDR...]")]
    advertise_routes: Option<Vec<String>>,
}

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

/// Sends one request and returns the response.
pub fn call(socket: &Path, req: &LocalRequest) -> anyhow::Result<LocalResponse> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the weft agent at {} (is weftd running? are you root or in group weft?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reader = BufReader::new(s.take(16 * 1024 * 1024));
    let mut resp = String::new();
    reader.read_line(&mut resp)?;
    serde_json::from_str(&resp).context("the agent sent a malformed answer")
}

fn expect_ok(resp: LocalResponse) -> anyhow::Result<(Option<Box<AgentStatus>>, String)> {
    match resp {
        LocalResponse::Ok { status, message } => Ok((status, message)),
        LocalResponse::Error { code, message } => bail!("{message} ({code})"),
        LocalResponse::Explained { .. } => bail!("the agent answered a different question"),
    }
}

pub(crate) fn status_of(socket: &Path) -> anyhow::Result<AgentStatus> {
    let (status, _) = expect_ok(call(socket, &LocalRequest::Status)?)?;
    status
        .map(|b| *b)
        .context("the agent's answer has no status")
}

/// `weft status`.
pub fn status(sock: &SocketArg, a: StatusArgs) -> anyhow::Result<ExitCode> {
    let st = status_of(&sock.socket)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_status(&st));
    Ok(ExitCode::SUCCESS)
}

/// Human rendering of a status (also used by `weft-lab demo`).
pub fn render_status(st: &AgentStatus) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let name = st.name.as_deref().unwrap_or("(not joined)");
    let _ = writeln!(o, "node      {name}  {}", st.node_key);
    let _ = writeln!(o, "state     {}  (udp port {})", st.state, st.listen_port);
    if let Some(c) = &st.controller {
        let conn = if c.connected {
            "connected"
        } else {
            "disconnected"
        };
        let ver = c.map_version.map_or("-".to_owned(), |v| v.to_string());
        let cache = if c.from_cache { ", map from cache" } else { "" };
        let _ = writeln!(o, "controller {}  {conn}, map version {ver}{cache}", c.url);
        if let Some(e) = &c.last_error {
            let _ = writeln!(o, "          last error: {e}");
        }
    }
    if let Some(r) = &st.relay {
        let c = if r.connected {
            "connected"
        } else {
            "connecting"
        };
        let _ = writeln!(o, "relay     {}  {c}", r.url);
    }
    let conv = if st.reconcile.converged {
        "in sync"
    } else {
        "converging"
    };
    let _ = writeln!(o, "system    {conv}");
    for f in &st.reconcile.failures {
        let _ = writeln!(o, "          failed: {f}");
    }
    for n in &st.networks {
        let _ = writeln!(
            o,
            "network   {}  {}  {}  ({})",
            n.name,
            n.interface,
            n.addresses.join(", "),
            n.cidr
        );
        for r in &n.routes {
            let _ = writeln!(o, "  route   {r}");
        }
        for s in &n.serves {
            let _ = writeln!(o, "  serves  {s} (gateway: forwards and masquerades)");
        }
    }
    if !st.peers.is_empty() {
        let _ = writeln!(
            o,
            "\n{:<16} {:<16} {:<30} {:>9} {:>10} {:>10}  DROPS",
            "PEER", "ADDRESS", "PATH (SINCE)", "HANDSHAKE", "RX", "TX"
        );
        for p in &st.peers {
            let hs = p
                .last_handshake_secs
                .map_or("-".to_owned(), |s| format!("{s}s ago"));
            let drops: Vec<String> = p.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let path = match p.path_age_secs {
                Some(s) if !p.path.is_empty() => format!("{} ({s}s)", p.path),
                _ if !p.path.is_empty() => p.path.clone(),
                _ => p.endpoint.clone().unwrap_or_else(|| "-".into()),
            };
            let _ = writeln!(
                o,
                "{:<16} {:<16} {:<30} {:>9} {:>10} {:>10}  {}",
                p.name,
                p.addresses.first().map_or("-", String::as_str),
                path,
                hs,
                human_bytes(p.rx_bytes),
                human_bytes(p.tx_bytes),
                if drops.is_empty() {
                    "-".to_owned()
                } else {
                    drops.join(" ")
                }
            );
        }
    }
    if !st.drops.is_empty() {
        let drops: Vec<String> = st.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "\ndropped   {}", drops.join(" "));
    }
    o
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

/// `weft up`.
pub fn up(sock: &SocketArg, a: UpArgs) -> anyhow::Result<ExitCode> {
    let token = match (&a.token_file, a.token) {
        (Some(p), _) if p.as_os_str() == "-" => {
            let mut t = String::new();
            std::io::stdin().read_to_string(&mut t)?;
            Some(t.trim().to_owned())
        }
        (Some(p), _) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading token file {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        (None, t) => t,
    };
    let abs = |p: Option<PathBuf>| -> anyhow::Result<Option<String>> {
        p.map(|p| {
            std::path::absolute(&p)
                .map(|p| p.display().to_string())
                .with_context(|| format!("resolving {}", p.display()))
        })
        .transpose()
    };
    let req = LocalRequest::Up(UpRequest {
        controller: a.controller,
        token,
        ca_file: abs(a.ca_file)?,
        pin_sha256: a.pin_sha256,
        allow_insecure_http: a.allow_insecure_http,
        name: a.name,
        advertise_routes: a.advertise_routes.map(|v| {
            v.into_iter()
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect()
        }),
    });
    let (_, message) = expect_ok(call(&sock.socket, &req)?)?;
    println!("{}", if message.is_empty() { "up" } else { &message });
    Ok(ExitCode::SUCCESS)
}

/// `weft down`.
pub fn down(sock: &SocketArg) -> anyhow::Result<ExitCode> {
    let (_, message) = expect_ok(call(&sock.socket, &LocalRequest::Down)?)?;
    println!("{}", if message.is_empty() { "down" } else { &message });
    Ok(ExitCode::SUCCESS)
}

/// Finds a peer by name, `name.network`, full DNS name, or overlay address.
pub(crate) fn resolve_peer<'a>(
    st: &'a AgentStatus,
    what: &str,
) -> anyhow::Result<(&'a weft_proto::local::PeerStatus, IpAddr)> {
    if let Ok(ip) = what.parse::<IpAddr>() {
        let ip_s = ip.to_string();
        if let Some(p) = st.peers.iter().find(|p| p.addresses.contains(&ip_s)) {
            return Ok((p, ip));
        }
        bail!("no peer has overlay address {ip}");
    }
    let mut parts = what.split('.');
    let name = parts.next().unwrap_or_default();
    let network = parts.next();
    let found: Vec<_> = st
        .peers
        .iter()
        .filter(|p| p.name == name && network.is_none_or(|n| p.networks.iter().any(|x| x == n)))
        .collect();
    match found.as_slice() {
        [p] => {
            let ip = p
                .addresses
                .iter()
                .find_map(|a| a.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4))
                .or_else(|| p.addresses.first().and_then(|a| a.parse().ok()))
                .context("peer has no overlay address")?;
            Ok((p, ip))
        }
        [] => bail!("no peer named {what:?} (see `weft status`)"),
        _ => bail!("{what:?} is ambiguous: name the network too, e.g. {name}.NETWORK"),
    }
}

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// Peer name (`db`, `db.prod`), or overlay IP.
    peer: String,
}

/// `weft why PEER`: which path a peer uses and why (candidates tried, answers).
pub fn why(sock: &SocketArg, a: WhyArgs) -> anyhow::Result<ExitCode> {
    let st = status_of(&sock.socket)?;
    let (p, ip) = resolve_peer(&st, &a.peer)?;
    println!(
        "{} ({ip}): path {}",
        p.name,
        if p.path.is_empty() { "-" } else { &p.path }
    );
    if p.candidates.is_empty() {
        println!("  no candidate addresses: the peer reported none (is it online?)");
    }
    for c in &p.candidates {
        let rtt = c
            .rtt_us
            .map_or("-".to_owned(), |us| format!("{:.2} ms", us as f64 / 1e3));
        let origin = if c.learned {
            "learned from its pings"
        } else {
            "from the map"
        };
        let verdict = if c.pongs > 0 {
            "answers"
        } else if c.pings > 0 {
            "no answer (filtered by a NAT or firewall?)"
        } else {
            "not probed yet"
        };
        println!(
            "  {:<24} {origin:<22} pings {:>4}  pongs {:>4}  rtt {rtt:>9}  {verdict}",
            c.addr, c.pings, c.pongs
        );
    }
    if p.path == "relay" {
        println!(
            "  relayed: no candidate answered discovery pings; direct is retried every few seconds"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct WhyBlockedArgs {
    /// Peer name (`db`, `db.prod`), or overlay IP.
    peer: String,
    /// Protocol: tcp, udp or icmp.
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp", "icmp"])]
    proto: String,
    /// Destination port (tcp/udp): the peer's port, or this node's with --inbound.
    #[arg(long, required_if_eq_any = [("proto", "tcp"), ("proto", "udp")])]
    port: Option<u16>,
    /// Ask about the peer opening a connection to this node instead.
    #[arg(long)]
    inbound: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// `weft why-blocked PEER --port N`: the live policy verdict on this node for a
/// new connection to (or, with `--inbound`, from) a peer, and the rule that
/// decided. Exit status 0 when allowed, 1 when blocked.
pub fn why_blocked(sock: &SocketArg, a: WhyBlockedArgs) -> anyhow::Result<ExitCode> {
    let st = status_of(&sock.socket)?;
    let (p, peer_ip) = resolve_peer(&st, &a.peer)?;
    let own_ip = st
        .networks
        .iter()
        .filter(|n| p.networks.contains(&n.name))
        .flat_map(|n| n.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|a| a.is_ipv4() == peer_ip.is_ipv4())
        .with_context(|| {
            format!(
                "this node has no address in a network shared with {}",
                p.name
            )
        })?;
    let (src, dst) = if a.inbound {
        (peer_ip, own_ip)
    } else {
        (own_ip, peer_ip)
    };
    let req = LocalRequest::Explain(ExplainRequest {
        ingress: a.inbound,
        src,
        dst,
        proto: a.proto.clone(),
        port: a.port,
    });
    let (allowed, explanation) = match call(&sock.socket, &req)? {
        LocalResponse::Explained {
            allowed,
            explanation,
        } => (allowed, explanation),
        LocalResponse::Error { code, message } => bail!("{message} ({code})"),
        LocalResponse::Ok { .. } => bail!("the agent does not support why-blocked (upgrade weftd)"),
    };
    let drops: u64 = p.drops.values().sum();
    if a.json {
        let v = serde_json::json!({
            "peer": p.name,
            "allowed": allowed,
            "explanation": explanation,
            "peer_drops": p.drops,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{explanation}");
        if drops > 0 {
            let list: Vec<String> = p.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("drops from/to {} so far: {}", p.name, list.join(", "));
        }
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `weft ping`: ICMP echo to a peer's overlay address through the tunnel.
pub fn ping(sock: &SocketArg, a: PingArgs) -> anyhow::Result<ExitCode> {
    let st = status_of(&sock.socket)?;
    let (peer, ip) = resolve_peer(&st, &a.peer)?;
    let IpAddr::V4(_) = ip else {
        bail!("weft ping supports IPv4 overlay addresses");
    };
    let socket = icmp_socket()?;
    let timeout = Duration::from_secs_f64(a.timeout.clamp(0.1, 60.0));
    socket.set_read_timeout(Some(timeout))?;
    let dst = socket2::SockAddr::from(SocketAddr::new(ip, 0));
    let mut ok = 0u32;
    let mut rtts = Vec::new();
    for seq in 1..=a.count {
        let mut pkt = [0u8; 64];
        pkt[0] = 8; // echo request
        pkt[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
        pkt[8..16].copy_from_slice(b"weftping");
        let c = icmp_checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
        let start = now();
        socket
            .send_to(&pkt, &dst)
            .context("sending the echo request")?;
        let deadline = start + timeout;
        let mut got = false;
        while now() < deadline {
            let mut bytes = [0u8; 1500];
            match (&socket).read(&mut bytes) {
                Ok(n) if n >= 8 => {
                    // Raw sockets include the IP header; ping sockets do not.
                    let off = if bytes[0] >> 4 == 4 {
                        usize::from(bytes[0] & 0xf) * 4
                    } else {
                        0
                    };
                    let Some(icmp) = bytes.get(off..n).filter(|m| m.len() >= 8) else {
                        continue;
                    };
                    if icmp[0] == 0 && u16::from_be_bytes([icmp[6], icmp[7]]) == seq as u16 {
                        let rtt = now().duration_since(start);
                        rtts.push(rtt);
                        ok += 1;
                        got = true;
                        println!(
                            "reply from {} ({ip}) seq={seq} time={:.2} ms via {}",
                            peer.name,
                            rtt.as_secs_f64() * 1e3,
                            peer.endpoint
                                .as_deref()
                                .map_or("-".to_owned(), |e| format!("direct {e}"))
                        );
                        break;
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => {
                    println!("seq={seq}: {e}");
                    break;
                }
            }
        }
        if !got {
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
    if let (Some(min), Some(max)) = (rtts.iter().min(), rtts.iter().max()) {
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

#[expect(
    clippy::disallowed_methods,
    reason = "the CLI measures round-trip times"
)]
fn now() -> Instant {
    Instant::now()
}

fn icmp_socket() -> anyhow::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4))
        .or_else(|_| Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)))
        .context("opening an ICMP socket (needs root or net.ipv4.ping_group_range)")
}

fn icmp_checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
