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

use crate::CodedError;

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
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Print the result as JSON (errors too).
    #[arg(long)]
    pub(crate) json: bool,
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
    /// Refused here: host bits set (192.168.50.1/24), the default route, and
    /// loopback, link-local, multicast or reserved space.
    #[arg(long, value_delimiter = ',', value_name = "CIDR[,CIDR...]", value_parser = route_arg)]
    advertise_routes: Option<Vec<String>>,
    /// Wait at most this long (seconds) for the node to be registered, to have
    /// its network map and to have configured its interfaces; 0 returns once the
    /// agent took the request. Exits non-zero when something failed or the
    /// time ran out, with the reason.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    timeout: u64,
    /// Print the resulting status as JSON (errors too; progress stays on stderr).
    #[arg(long)]
    pub(crate) json: bool,
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
    /// Print the replies and the summary as JSON (errors too).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Sends one request and returns the response.
pub fn call(socket: &Path, req: &LocalRequest) -> anyhow::Result<LocalResponse> {
    let mut s = UnixStream::connect(socket).map_err(|e| CodedError {
        code: "agent_unreachable".into(),
        message: format!(
            "cannot reach the weft agent at {}: {e} (is weftd running? are you root or in group weft?)",
            socket.display()
        ),
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
        LocalResponse::Error { code, message } => Err(CodedError { code, message }.into()),
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
    // Names come from the controller: control, bidirectional and zero-width
    // characters are shown escaped, never interpreted by the terminal.
    use weft_proto::text::escape_for_display as safe;
    let mut o = String::new();
    let name = safe(st.name.as_deref().unwrap_or("(not joined)"));
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
            let _ = writeln!(o, "          last error: {}", safe(e));
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
    let now_ms = unix_ms();
    for f in &st.failures {
        let ago = now_ms.saturating_sub(f.since_unix_ms) / 1000;
        let _ = writeln!(
            o,
            "failing   {} {}: {}  (for {ago}s)",
            f.area, f.what, f.error
        );
    }
    for n in &st.networks {
        let _ = writeln!(
            o,
            "network   {}  {}  {}  ({})",
            safe(&n.name),
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
            let seen = p
                .last_seen_secs
                .map_or_else(|| "never seen".to_owned(), |s| format!("seen {s}s ago"));
            let path = match p.path_age_secs {
                _ if !p.online => format!("offline ({seen})"),
                Some(s) if !p.path.is_empty() => format!("{} ({s}s)", p.path),
                _ if !p.path.is_empty() => p.path.clone(),
                _ => p.endpoint.clone().unwrap_or_else(|| "-".into()),
            };
            let _ = writeln!(
                o,
                "{:<16} {:<16} {:<30} {:>9} {:>10} {:>10}  {}",
                safe(&p.name),
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
    let deadline = now() + Duration::from_secs(a.timeout);
    wait_minted(&sock.socket, deadline)?;
    if let LocalRequest::Up(UpRequest {
        token: Some(_),
        controller,
        ..
    }) = &req
    {
        eprintln!(
            "registering with {}…",
            controller.as_deref().unwrap_or("the controller")
        );
    }
    let (_, message) = expect_ok(call(&sock.socket, &req)?)?;
    if a.timeout == 0 {
        if a.json {
            println!("{}", serde_json::json!({ "message": message }));
        } else {
            println!("{}", if message.is_empty() { "up" } else { &message });
        }
        return Ok(ExitCode::SUCCESS);
    }
    let st = wait_up(&sock.socket, deadline, a.timeout)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        println!("{}", up_summary(&st));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--advertise-routes` values: an IPv4 subnet that can be routed (the same
/// check as the controller's, `weft_proto::net::check_routable_v4`), or "" for
/// none.
fn route_arg(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(String::new());
    }
    let prefix: weft_proto::net::Ipv4Net = text
        .parse()
        .map_err(|e| format!("{text:?} is not an IPv4 subnet such as 192.168.50.0/24: {e}"))?;
    weft_proto::net::check_routable_v4(&prefix).map_err(|e| format!("{prefix} {e}"))?;
    Ok(prefix.to_string())
}

/// Waits while the agent mints its identity, showing its progress.
fn wait_minted(socket: &Path, deadline: Instant) -> anyhow::Result<()> {
    let mut shown: Option<Instant> = None;
    loop {
        match call(socket, &LocalRequest::Status)? {
            LocalResponse::Error { code, message } if code == "minting" => {
                if now() >= deadline {
                    bail!("timed out: {message}");
                }
                if shown.is_none_or(|t| now().duration_since(t) >= Duration::from_secs(5)) {
                    eprintln!("{message}");
                    shown = Some(now());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            _ => return Ok(()),
        }
    }
}

/// Where a `weft up` stands, judged from one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpStage {
    /// Still on the way: what it waits for.
    Waiting(String),
    /// Something failed (kept failing for a while: `weft up` fails).
    Failing(String),
    /// Registered, map in hand, system configured.
    Done,
}

/// The pure decision behind `weft up`'s wait.
pub(crate) fn up_stage(st: &AgentStatus) -> UpStage {
    if !st.failures.is_empty() {
        let list: Vec<String> = st
            .failures
            .iter()
            .map(|f| format!("{} {}: {}", f.area, f.what, f.error))
            .collect();
        return UpStage::Failing(list.join("; "));
    }
    let Some(c) = &st.controller else {
        return UpStage::Failing("the node has not joined a controller".into());
    };
    if st.state != "up" {
        return UpStage::Waiting(format!("the agent is {}", st.state));
    }
    if !c.connected && c.last_error_permanent {
        return UpStage::Failing(format!(
            "the controller refused this node: {}",
            c.last_error.as_deref().unwrap_or("no reason given")
        ));
    }
    if !c.connected {
        return UpStage::Waiting(match &c.last_error {
            Some(e) => format!("connecting to the controller (last error: {e})"),
            None => "connecting to the controller".into(),
        });
    }
    if c.map_version.is_none() || c.from_cache {
        return UpStage::Waiting("waiting for the network map".into());
    }
    if !st.networks.is_empty() && !st.reconcile.converged {
        return UpStage::Waiting("configuring interfaces and routes".into());
    }
    UpStage::Done
}

/// How long a failure must last before `weft up` gives up on it (the
/// reconciler retries a transient one within this).
const FAILING_GRACE: Duration = Duration::from_secs(4);

/// Polls status until the node is up, something keeps failing, or `deadline`.
fn wait_up(socket: &Path, deadline: Instant, timeout_s: u64) -> anyhow::Result<AgentStatus> {
    let mut last_shown = String::new();
    let mut failing_since: Option<Instant> = None;
    loop {
        let st = status_of(socket)?;
        let stage = up_stage(&st);
        match &stage {
            UpStage::Done => return Ok(st),
            UpStage::Failing(why) => {
                let since = *failing_since.get_or_insert_with(now);
                if now().duration_since(since) >= FAILING_GRACE {
                    bail!("{why} (see `weft status`)");
                }
            }
            UpStage::Waiting(what) => {
                failing_since = None;
                if *what != last_shown {
                    eprintln!("{what}…");
                    last_shown.clone_from(what);
                }
            }
        }
        if now() >= deadline {
            let what = match stage {
                UpStage::Waiting(w) | UpStage::Failing(w) => w,
                UpStage::Done => String::new(),
            };
            bail!("not up after {timeout_s} s: {what} (`weft up --timeout SECONDS` waits longer)");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The line `weft up` ends with.
fn up_summary(st: &AgentStatus) -> String {
    let name = st.name.as_deref().unwrap_or("this node");
    let nets: Vec<String> = st
        .networks
        .iter()
        .map(|n| format!("{} {}", n.name, n.addresses.join(" ")))
        .collect();
    if nets.is_empty() {
        format!("up: {name} (in no network yet)")
    } else {
        format!("up: {name} in {}", nets.join(", "))
    }
}

/// `weft down`.
pub fn down(sock: &SocketArg, a: DownArgs) -> anyhow::Result<ExitCode> {
    let (_, message) = expect_ok(call(&sock.socket, &LocalRequest::Down)?)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "state": "down", "message": message })
        );
    } else {
        println!("{}", if message.is_empty() { "down" } else { &message });
    }
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
    /// Print the peer's path and candidates as JSON (errors too).
    #[arg(long)]
    pub(crate) json: bool,
}

/// `weft why PEER`: which path a peer uses and why (candidates tried, answers).
pub fn why(sock: &SocketArg, a: WhyArgs) -> anyhow::Result<ExitCode> {
    let st = status_of(&sock.socket)?;
    let (p, ip) = resolve_peer(&st, &a.peer)?;
    if a.json {
        let v = serde_json::json!({
            "peer": p.name,
            "address": ip,
            "online": p.online,
            "last_seen_secs": p.last_seen_secs,
            "path": p.path,
            "path_age_secs": p.path_age_secs,
            "candidates": p.candidates,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
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
    /// Protocol: tcp, udp, icmp, or any (tcp and udp at --port, and icmp;
    /// allowed only if all three are).
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp", "icmp", "any"])]
    proto: String,
    /// Destination port (tcp/udp/any): the peer's port, or this node's with --inbound.
    #[arg(long, required_if_eq_any = [("proto", "tcp"), ("proto", "udp"), ("proto", "any")])]
    port: Option<u16>,
    /// Ask about the peer opening a connection to this node instead.
    #[arg(long)]
    inbound: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `weft why-blocked PEER --port N`: the live policy verdict on this node for a
/// new connection to (or, with `--inbound`, from) a peer, and the rule that
/// decided. Exit status 0 when allowed, 3 when blocked.
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
        LocalResponse::Error { code, message } => return Err(CodedError { code, message }.into()),
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
        ExitCode::from(crate::exit::DENIED)
    })
}

/// `weft ping`: ICMP echo to a peer's overlay address through the tunnel.
pub fn ping(sock: &SocketArg, a: PingArgs) -> anyhow::Result<ExitCode> {
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
        let mut pkt = [0u8; 64];
        pkt[0] = 8; // echo request
        pkt[4..6].copy_from_slice(&id.unwrap_or(0).to_be_bytes());
        pkt[6..8].copy_from_slice(&seq16.to_be_bytes());
        pkt[8..16].copy_from_slice(b"weftping");
        let c = icmp_checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
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
                    if !a.json {
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
                    if !a.json {
                        println!("seq={seq}: {e}");
                    }
                    break;
                }
            }
        }
        if !got && !a.json {
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
    if a.json {
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

#[expect(
    clippy::disallowed_methods,
    reason = "the CLI measures round-trip times"
)]
fn now() -> Instant {
    Instant::now()
}

#[expect(
    clippy::disallowed_methods,
    reason = "the CLI shows how long a failure has lasted"
)]
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

/// Whether `pkt` (from `from`) is the echo reply to our request `seq` to
/// `peer`: the type, the sender and the sequence number, and with a raw
/// socket (`id`) our identifier; anything else (another ping's reply, a reply
/// from elsewhere) is not ours.
fn is_our_reply(pkt: &[u8], from: IpAddr, peer: IpAddr, seq: u16, id: Option<u16>) -> bool {
    // Raw sockets include the IP header; ping sockets do not (and an ICMP
    // header never starts with 4 in its high nibble: echo reply is type 0).
    let off = match pkt.first() {
        Some(b) if b >> 4 == 4 => usize::from(b & 0xf) * 4,
        _ => 0,
    };
    let Some(icmp) = pkt.get(off..).filter(|m| m.len() >= 8) else {
        return false;
    };
    icmp[0] == 0
        && from == peer
        && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
        && id.is_none_or(|id| u16::from_be_bytes([icmp[4], icmp[5]]) == id)
}

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

#[cfg(test)]
mod tests {
    use weft_proto::local::{ControllerStatus, FailureStatus, NetworkStatus, ReconcileStatus};

    use std::collections::BTreeMap;

    use super::*;

    fn status() -> AgentStatus {
        AgentStatus {
            node_key: weft_proto::NodeKey::from_bytes([1; 32]),
            name: Some("n1".into()),
            state: "up".into(),
            controller: Some(ControllerStatus {
                url: "https://c:8443".into(),
                connected: true,
                map_version: Some(3),
                from_cache: false,
                last_error: None,
                last_error_permanent: false,
            }),
            networks: vec![NetworkStatus {
                name: "prod".into(),
                interface: "weft0".into(),
                addresses: vec!["100.64.0.2".into()],
                cidr: "100.64.0.0/10".into(),
                dns_domain: "weft.internal".into(),
                routes: Vec::new(),
                serves: Vec::new(),
            }],
            peers: Vec::new(),
            drops: BTreeMap::new(),
            reconcile: ReconcileStatus {
                converged: true,
                failures: Vec::new(),
            },
            listen_port: 51820,
            relay: None,
            relays: Vec::new(),
            reflexive: Vec::new(),
            failures: Vec::new(),
        }
    }

    #[test]
    fn up_waits_for_the_link_the_map_and_the_system() {
        assert_eq!(up_stage(&status()), UpStage::Done);
        let mut st = status();
        st.controller.as_mut().unwrap().connected = false;
        st.controller.as_mut().unwrap().last_error = Some("connection refused".into());
        assert!(matches!(up_stage(&st), UpStage::Waiting(w) if w.contains("connection refused")));
        let mut st = status();
        st.controller.as_mut().unwrap().from_cache = true;
        assert!(matches!(up_stage(&st), UpStage::Waiting(w) if w.contains("map")));
        let mut st = status();
        st.reconcile.converged = false;
        assert!(matches!(up_stage(&st), UpStage::Waiting(w) if w.contains("configuring")));
    }

    #[test]
    fn advertised_routes_are_checked_before_sending() {
        assert_eq!(route_arg(" 192.168.50.0/24").unwrap(), "192.168.50.0/24");
        assert_eq!(route_arg("").unwrap(), "");
        let e = route_arg("192.168.50.1/24").unwrap_err();
        assert!(e.contains("did you mean 192.168.50.0/24"), "{e}");
        assert!(
            route_arg("0.0.0.0/0")
                .unwrap_err()
                .contains("default route")
        );
        assert!(route_arg("127.0.0.0/8").is_err());
        assert!(route_arg("fd00::/64").is_err());
    }

    #[test]
    fn only_our_echo_reply_counts() {
        let peer: IpAddr = "100.64.0.3".parse().unwrap();
        let other: IpAddr = "100.64.0.4".parse().unwrap();
        // Ping socket: ICMP header first, the kernel handles the id.
        let mut reply = [0u8; 16];
        reply[4..6].copy_from_slice(&77u16.to_be_bytes());
        reply[6..8].copy_from_slice(&5u16.to_be_bytes());
        assert!(is_our_reply(&reply, peer, peer, 5, None));
        assert!(!is_our_reply(&reply, other, peer, 5, None), "wrong source");
        assert!(!is_our_reply(&reply, peer, peer, 6, None), "wrong sequence");
        // Raw socket: IP header first, and the id must be ours.
        let mut raw = vec![0x45u8];
        raw.extend_from_slice(&[0; 19]);
        raw.extend_from_slice(&reply);
        assert!(is_our_reply(&raw, peer, peer, 5, Some(77)));
        assert!(
            !is_our_reply(&raw, peer, peer, 5, Some(78)),
            "another ping's id"
        );
        let mut request = reply;
        request[0] = 8;
        assert!(!is_our_reply(&request, peer, peer, 5, None), "not a reply");
        assert!(!is_our_reply(&reply[..7], peer, peer, 5, None));
    }

    #[test]
    fn up_fails_on_any_failure() {
        let mut st = status();
        st.failures.push(FailureStatus {
            area: "tun".into(),
            what: "weft0".into(),
            error: "creating TUN device weft0: Operation not permitted".into(),
            since_unix_ms: 1,
        });
        assert!(
            matches!(up_stage(&st), UpStage::Failing(w) if w.contains("tun weft0: creating TUN"))
        );
        let mut st = status();
        st.controller = None;
        assert!(matches!(up_stage(&st), UpStage::Failing(_)));
        let mut st = status();
        let c = st.controller.as_mut().unwrap();
        c.connected = false;
        c.last_error = Some("controller answered 401: unknown credential".into());
        c.last_error_permanent = true;
        assert!(matches!(up_stage(&st), UpStage::Failing(w) if w.contains("401")));
    }

    #[test]
    fn status_escapes_spoofing_characters_in_names() {
        let mut st = status();
        st.name = Some("web\u{202e}1".into());
        let out = render_status(&st);
        assert!(out.contains("node      web\\u{202e}1"), "{out}");
        assert!(!out.contains('\u{202e}'), "{out:?}");
    }
}
