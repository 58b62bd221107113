//! `weft up` (join or reconnect, then wait until the node is up) and `weft down`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use weft_proto::local::{AgentStatus, LocalRequest, LocalResponse, UpRequest};

use super::{SocketArg, call, expect_ok, status_of};
use crate::clock::now;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Controller URL, e.g. https://controller.example.net:8443, or several
    /// comma-separated: the replicas of one controller
    /// (https://c1:8443,https://c2:8443). A name with several addresses works
    /// too: each is tried (the certificate must match the name). weftd spreads
    /// nodes over them, moves to the next when the one in use fails or shuts
    /// down, and resumes its map there. With a join token: where to join
    /// (without --controller, a second token joins the controller this node
    /// already uses). Without a token: replaces the URLs a joined node uses.
    #[arg(long, env = "WEFT_CONTROLLER_URL", value_name = "URL[,URL...]")]
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
}

/// `weft up`.
pub fn up(sock: &SocketArg, a: UpArgs, json: bool) -> anyhow::Result<ExitCode> {
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
        if json {
            println!("{}", serde_json::json!({ "message": message }));
        } else {
            println!("{}", if message.is_empty() { "up" } else { &message });
        }
        return Ok(ExitCode::SUCCESS);
    }
    let st = wait_up(&sock.socket, deadline, a.timeout)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        println!("{}", up_summary(&st));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--advertise-routes` values: an IPv4 subnet that can be routed (the same
/// check as the controller's, `weft_proto::net::check_routable_v4`), or "" for
/// none.
pub(super) fn route_arg(text: &str) -> Result<String, String> {
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
    // A refusal of the node is the cause of whatever else fails (every
    // upload to the controller is refused too): it is what `weft up` says.
    if let Some(c) = &st.controller
        && !c.connected
        && c.last_error_permanent
    {
        return UpStage::Failing(format!(
            "the controller refused this node: {}",
            c.last_error.as_deref().unwrap_or("no reason given")
        ));
    }
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
pub fn down(sock: &SocketArg, json: bool) -> anyhow::Result<ExitCode> {
    let (_, message) = expect_ok(call(&sock.socket, &LocalRequest::Down)?)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "state": "down", "message": message })
        );
    } else {
        println!("{}", if message.is_empty() { "down" } else { &message });
    }
    Ok(ExitCode::SUCCESS)
}
