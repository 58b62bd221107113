//! `weft why` (a peer's path: candidates, tries, answers) and `weft
//! why-blocked` (the live policy's verdict), both asked of the agent.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use weft_proto::local::{AgentStatus, ExplainRequest, LocalRequest, LocalResponse};

use super::{SocketArg, call, status_of};
use crate::CodedError;

/// Finds a peer by name, `name.network`, full DNS name, or overlay address.
pub(crate) fn resolve_peer<'a>(
    st: &'a AgentStatus,
    what: &str,
) -> anyhow::Result<(&'a weft_proto::local::PeerStatus, IpAddr)> {
    st.resolve_peer(what).map_err(anyhow::Error::msg)
}

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// Peer name (`db`, `db.prod`), or overlay IP.
    peer: String,
}

/// `weft why PEER`: which path a peer uses and why (candidates tried, answers).
pub fn why(sock: &SocketArg, a: WhyArgs, json: bool) -> anyhow::Result<ExitCode> {
    let st = status_of(&sock.socket)?;
    let (p, ip) = resolve_peer(&st, &a.peer)?;
    if json {
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
}

/// `weft why-blocked PEER --port N`: the live policy verdict on this node for a
/// new connection to (or, with `--inbound`, from) a peer, and the rule that
/// decided. Exit status 0 when allowed, 3 when blocked.
pub fn why_blocked(sock: &SocketArg, a: WhyBlockedArgs, json: bool) -> anyhow::Result<ExitCode> {
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
        _ => bail!("the agent does not support why-blocked (upgrade weftd)"),
    };
    let drops: u64 = p.drops.values().sum();
    if json {
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
