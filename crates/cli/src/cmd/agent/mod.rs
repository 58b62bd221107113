//! Commands that talk to the local agent over its Unix socket. This module:
//! the socket, one request/response, and `status`; [`up`]: `up` and `down`;
//! [`explain`]: `why` and `why-blocked`; [`ping`]: `ping`; [`metrics`]:
//! `metrics`; [`events`]: `events`; [`dns`]: `dns log` and `dns stats`;
//! [`run`]: `run` (workload namespaces); [`node`]: `node get` (the node API,
//! not the local API); [`ssh`]: `ssh` (the system's ssh to a node's
//! `weftd --ssh`); [`service`]: `service list|advertise`;
//! [`consume`]: `service listen|intercept`.

mod consume;
mod dns;
mod events;
mod explain;
mod hostfw;
mod metrics;
mod node;
mod ping;
mod run;
mod service;
mod ssh;
#[cfg(test)]
mod tests;
mod underlay;
mod up;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use weft_proto::local::{AgentStatus, LocalRequest, LocalResponse};

use crate::CodedError;
use crate::clock::unix_ms;

pub use dns::{DnsCmd, dns};
pub use events::events;
pub(crate) use events::render as render_event;
pub(crate) use explain::resolve_peer;
pub use explain::{WhyArgs, WhyBlockedArgs, why, why_blocked};
pub use metrics::{MetricsArgs, metrics};
pub use node::{NodeArgs, node};
pub use ping::{PingArgs, ping};
pub use run::{RunArgs, run};
pub use service::{ServiceCmd, service};
pub use ssh::{SshArgs, ssh};
pub use up::{UpArgs, down, up};

/// Where the agent listens.
#[derive(Debug, Clone, Args)]
pub struct SocketArg {
    /// The agent's local API socket.
    #[arg(long, global = true, env = "WEFT_SOCKET", default_value = weft_proto::local::DEFAULT_SOCKET)]
    pub socket: PathBuf,
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
        _ => bail!("the agent answered a different question"),
    }
}

pub(crate) fn status_of(socket: &Path) -> anyhow::Result<AgentStatus> {
    let (status, _) = expect_ok(call(socket, &LocalRequest::Status)?)?;
    status
        .map(|b| *b)
        .context("the agent's answer has no status")
}

/// `weft status`.
pub fn status(sock: &SocketArg, json: bool) -> anyhow::Result<ExitCode> {
    let st = status_of(&sock.socket)?;
    if json {
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
        let at = c
            .address
            .as_deref()
            .filter(|a| !c.url.contains(*a))
            .map_or(String::new(), |a| format!(" ({a})"));
        let _ = writeln!(
            o,
            "controller {}{at}  {conn}, map version {ver}{cache}",
            c.url
        );
        if c.urls.len() > 1 {
            let _ = writeln!(
                o,
                "          controllers: {} (moved {} times)",
                c.urls.join(", "),
                c.failovers
            );
        }
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
    if let Some(fw) = &st.forwarding {
        let sent = fw.last_sent_ms.map_or_else(
            || "never".to_owned(),
            |t| format!("{}s ago", now_ms.saturating_sub(t) / 1000),
        );
        let _ = writeln!(
            o,
            "metrics   forwarded every {}s, last sent {sent}; outbox: {} queued, {} dropped",
            fw.interval_ms / 1000,
            fw.queued,
            fw.dropped
        );
        if let Some(e) = &fw.last_error {
            let _ = writeln!(o, "          forwarding error: {}", safe(e));
        }
    }
    if let Some(t) = &st.tasks {
        let _ = writeln!(
            o,
            "tasks     {} running; results: {} delivered, {} waiting, {} lost",
            t.running, t.delivered, t.waiting, t.lost
        );
    }
    if let Some(s) = &st.ssh {
        ssh::render_status(&mut o, s);
    }
    if let Some(fw) = &st.host_firewall {
        hostfw::render(&mut o, fw, now_ms);
    }
    if let Some(u) = &st.underlay {
        underlay::render(&mut o, u, now_ms);
    }
    if let Some(s) = &st.services {
        service::render_status(&mut o, s);
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

pub(in crate::cmd) fn human_bytes(n: u64) -> String {
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
