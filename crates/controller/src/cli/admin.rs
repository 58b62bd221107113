//! `weft-controller admin ...`: the admin API from the command line.
//!
//! Talks to a running controller only through `weft-api-client` (no controller
//! internals), so it can move into the `weft` CLI unchanged.
//!
//! Connection settings, in order of precedence:
//! - URL: `--controller`, `$WEFT_CONTROLLER_URL`, else `DATA_DIR/controller.url`.
//! - Admin token: `--token-file`, `$WEFT_ADMIN_TOKEN`, else `DATA_DIR/admin.token`.
//! - Trust: `--fingerprint` or `--ca-file`, else the certificate in
//!   `DATA_DIR/tls/cert.pem` pinned by fingerprint, else the system roots.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use weft_api_client::{Client, ClientConfig, Trust, parse_fingerprint};
use weft_proto::api::{
    AuditEntry, CreateNetworkRequest, CreateTokenRequest, Network, NodeInfo, PolicyCheckRequest,
    RouteInfo, RouteRequest, SetPolicyRequest, TokenInfo, UpdateNodeRequest,
};
use weft_proto::relay_api::{CreateRelayRequest, RelayInfo};

use super::format::{datetime, parse_duration, safe, table};
use super::out;

#[derive(Debug, Args)]
pub(super) struct AdminArgs {
    /// Controller URL, for example `https://controller.example.net:8443`.
    #[arg(long, env = "WEFT_CONTROLLER_URL", value_name = "URL")]
    controller: Option<String>,
    /// The controller's data directory, when on the same machine (supplies the
    /// URL, the admin token and the certificate to pin).
    #[arg(long, env = "WEFT_CONTROLLER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// File holding the admin token (else $WEFT_ADMIN_TOKEN, else DIR/admin.token).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate(s) to trust (PEM).
    #[arg(long, value_name = "FILE", conflicts_with = "fingerprint")]
    ca_file: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 (`sha256:<hex>`).
    #[arg(long, value_name = "FP")]
    fingerprint: Option<String>,
    /// Allow http:// to a non-loopback controller (credentials in cleartext).
    #[arg(long)]
    allow_insecure_http: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Overlay networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Relays (registered relays are in every node's map).
    #[command(subcommand)]
    Relay(RelayCmd),
    /// The access policy (one document, versioned).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Subnet routes offered by gateway nodes (pending until approved).
    #[command(subcommand)]
    Route(RouteCmd),
    /// The audit log (newest first).
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only entries older than this id (paging).
        #[arg(long)]
        before: Option<u64>,
        /// Only entries about this target (network name, node key, `token:<id>`).
        #[arg(long)]
        target: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NetworkCmd {
    /// Create a network.
    Create {
        /// Name (a DNS label).
        name: String,
        /// IPv4 prefix, for example 100.64.0.0/24.
        #[arg(long)]
        cidr: String,
        /// Optional IPv6 prefix, for example fd7a:115c:a1e0::/48.
        #[arg(long)]
        ipv6: Option<String>,
        /// DNS domain (default weft.internal).
        #[arg(long)]
        domain: Option<String>,
        /// Proof-of-work bits a node needs to join (default 24).
        #[arg(long)]
        pow_difficulty: Option<u32>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List networks.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one network.
    Show {
        /// Name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a node from this network only (its interface, address, routes
    /// and names there go; its other networks stay).
    Leave {
        /// The network.
        name: String,
        /// The node (key or name).
        node: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RouteCmd {
    /// List advertised routes, their state and which gateway carries each.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Set a route on a gateway node (approved at once).
    Add(RouteArgs),
    /// Approve a pending route: every peer allowed to reach the subnet gets it.
    Approve(RouteArgs),
    /// Reject a route (it stays rejected even if the node advertises it again).
    Reject(RouteArgs),
    /// Withdraw a route (peers drop it; the gateway stops forwarding to it).
    Withdraw(RouteArgs),
}

#[derive(Debug, Args)]
struct RouteArgs {
    /// The gateway node (key or name).
    node: String,
    /// The subnet, for example 192.168.50.0/24.
    prefix: String,
    /// The network (needed when the node is in several).
    #[arg(long)]
    network: Option<String>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Print the policy text (with `--json`: version, author, time too).
    Show {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Replace the policy with the text of FILE (`-` for stdin). Refused with
    /// line numbers when it does not parse, and when one of its tests fails.
    Set {
        /// The policy file (weft-policy TOML).
        file: PathBuf,
        /// Only if the policy is still at this version.
        #[arg(long)]
        expect_version: Option<u64>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Which rule decides traffic from A to B (exit 0 if allowed, 1 if not).
    Check {
        /// Initiator: a node name or selector (`tag:web`, `network:prod`, ...).
        #[arg(long)]
        from: String,
        /// Destination, same forms.
        #[arg(long)]
        to: String,
        /// tcp, udp, icmp, or any (the default: tcp and udp at --port, and
        /// icmp; allowed only if all three are).
        #[arg(long)]
        proto: Option<String>,
        /// Destination port (tcp, udp and any).
        #[arg(long)]
        port: Option<u16>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Create a join token (the secret is printed once).
    Create {
        /// Network to join (repeatable).
        #[arg(long = "network", required = true)]
        networks: Vec<String>,
        /// Tag for joining nodes (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Lifetime: 30m, 24h, 7d...
        #[arg(long, default_value = "24h")]
        expires_in: String,
        /// Registrations allowed (default 1: one-shot).
        #[arg(long, conflicts_with = "unlimited")]
        uses: Option<u32>,
        /// Any number of registrations until expiry.
        #[arg(long)]
        unlimited: bool,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List join tokens (never their secrets).
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a join token.
    Revoke {
        /// Token id (from `token list`).
        id: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// List nodes.
    List {
        /// Only members of this network.
        #[arg(long)]
        network: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one node (by key or name).
    Show {
        /// Key or name.
        node: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Rename a node.
    Rename {
        /// Key or name.
        node: String,
        /// New name (a DNS label).
        new_name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Replace a node's tags (no tags clears them).
    Tag {
        /// Key or name.
        node: String,
        /// The new tags.
        tags: Vec<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Disable a node: out of every map, credential refused.
    Disable {
        /// Key or name.
        node: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Enable a disabled node.
    Enable {
        /// Key or name.
        node: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a node (it must register again to come back).
    Remove {
        /// Key or name.
        node: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RelayCmd {
    /// Register a relay; its token is printed once (give it to `weft-relay
    /// serve --relay-token-file`).
    Create {
        /// Name (a DNS label).
        name: String,
        /// Where nodes reach it: `https://host[:port]` (port 443 by default).
        #[arg(long)]
        url: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List relays (never their tokens).
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one relay.
    Show {
        /// Name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a relay: its token stops working and it leaves every map.
    Remove {
        /// Name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn read_trimmed(path: &Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(s.trim().to_owned())
}

fn client(a: &AdminArgs) -> anyhow::Result<Client> {
    let url = match (&a.controller, &a.data_dir) {
        (Some(u), _) => u.clone(),
        (None, Some(dir)) => read_trimmed(&dir.join(crate::serve::URL_FILE))
            .context("no --controller given and the data directory has no controller.url (is the controller running?)")?,
        (None, None) => bail!("pass --controller URL (or --data-dir of a local controller)"),
    };
    let token = if let Some(f) = &a.token_file {
        read_trimmed(f)?
    } else if let Ok(t) = std::env::var("WEFT_ADMIN_TOKEN") {
        t.trim().to_owned()
    } else if let Some(dir) = &a.data_dir {
        read_trimmed(&dir.join(crate::serve::ADMIN_TOKEN_FILE))?
    } else {
        bail!("no admin token: pass --token-file, set WEFT_ADMIN_TOKEN, or pass --data-dir");
    };
    let trust = if let Some(fp) = &a.fingerprint {
        Trust::Fingerprint(parse_fingerprint(fp)?)
    } else if let Some(ca) = &a.ca_file {
        Trust::CaFile(ca.clone())
    } else if let Some(cert) = a
        .data_dir
        .as_ref()
        .map(|d| d.join("tls").join("cert.pem"))
        .filter(|p| p.exists())
    {
        let der = CertificateDer::from_pem_file(&cert)
            .with_context(|| format!("reading {}", cert.display()))?;
        Trust::Fingerprint(Sha256::digest(der.as_ref()).into())
    } else {
        Trust::SystemRoots
    };
    let cfg = ClientConfig {
        trust,
        allow_insecure_http: a.allow_insecure_http,
        ..ClientConfig::new(url)
    };
    Ok(Client::new(cfg)?.with_bearer(&token)?)
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(v)?));
    Ok(())
}

/// The policy file does not parse (`policy_invalid`, as the controller says).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PolicyInvalid(String);

/// An error already printed as JSON (`--json`); the caller only exits 1.
#[derive(Debug, thiserror::Error)]
#[error("reported as JSON")]
pub(super) struct ReportedAsJson;

pub(super) fn run(args: AdminArgs) -> anyhow::Result<()> {
    let json = args.command.json();
    let result = (|| {
        let client = client(&args)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(dispatch(&client, args.command))
    })();
    match result {
        Err(e) if json => {
            print_json(&error_json(&e))?;
            Err(ReportedAsJson.into())
        }
        r => r,
    }
}

/// `{"error": {"code": ..., "message": ...}}`: the controller's code when it
/// answered with one, else what failed on this side.
fn error_json(e: &anyhow::Error) -> serde_json::Value {
    use weft_api_client::ClientError as E;
    let code = match e.downcast_ref::<E>() {
        Some(c) => match c {
            E::Api { body, .. } => body.code.clone(),
            E::InvalidUrl(_) => "invalid_url".into(),
            E::InsecureHttp(_) => "insecure_http".into(),
            E::Trust(_) => "tls_trust".into(),
            E::Connect { .. } => "connect_failed".into(),
            E::Timeout(_) => "timeout".into(),
            E::Decode(_) => "unexpected_response".into(),
            _ => "http_error".into(),
        },
        None if e.is::<PolicyInvalid>() => "policy_invalid".into(),
        None => "client_error".into(),
    };
    serde_json::json!({ "error": { "code": code, "message": format!("{e:#}") } })
}

impl AdminCommand {
    /// Whether the subcommand was given `--json`.
    fn json(&self) -> bool {
        match self {
            AdminCommand::Network(
                NetworkCmd::Create { json, .. }
                | NetworkCmd::List { json }
                | NetworkCmd::Show { json, .. }
                | NetworkCmd::Leave { json, .. },
            )
            | AdminCommand::Token(
                TokenCmd::Create { json, .. }
                | TokenCmd::List { json }
                | TokenCmd::Revoke { json, .. },
            )
            | AdminCommand::Node(
                NodeCmd::List { json, .. }
                | NodeCmd::Show { json, .. }
                | NodeCmd::Rename { json, .. }
                | NodeCmd::Tag { json, .. }
                | NodeCmd::Disable { json, .. }
                | NodeCmd::Enable { json, .. }
                | NodeCmd::Remove { json, .. },
            )
            | AdminCommand::Relay(
                RelayCmd::Create { json, .. }
                | RelayCmd::List { json }
                | RelayCmd::Show { json, .. }
                | RelayCmd::Remove { json, .. },
            )
            | AdminCommand::Policy(
                PolicyCmd::Show { json }
                | PolicyCmd::Set { json, .. }
                | PolicyCmd::Check { json, .. },
            )
            | AdminCommand::Audit { json, .. } => *json,
            AdminCommand::Route(
                RouteCmd::List { json }
                | RouteCmd::Add(RouteArgs { json, .. })
                | RouteCmd::Approve(RouteArgs { json, .. })
                | RouteCmd::Reject(RouteArgs { json, .. })
                | RouteCmd::Withdraw(RouteArgs { json, .. }),
            ) => *json,
        }
    }
}

async fn dispatch(c: &Client, cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Network(n) => network(c, n).await,
        AdminCommand::Token(t) => token(c, t).await,
        AdminCommand::Node(n) => node(c, n).await,
        AdminCommand::Relay(r) => relay(c, r).await,
        AdminCommand::Policy(p) => policy(c, p).await,
        AdminCommand::Route(r) => route(c, r).await,
        AdminCommand::Audit {
            limit,
            before,
            target,
            json,
        } => {
            let list = c.audit(limit, before, target.as_deref()).await?;
            if json {
                return print_json(&list);
            }
            out(&audit_table(&list.entries));
            Ok(())
        }
    }
}

fn networks_table(nets: &[Network]) -> String {
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.ipv4_cidr.to_string(),
                n.ipv6_prefix
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                n.dns_domain.clone(),
                n.pow_difficulty.to_string(),
                n.node_count.to_string(),
                datetime(n.created_at_ms),
            ]
        })
        .collect();
    table(
        &["NAME", "IPV4", "IPV6", "DOMAIN", "POW", "NODES", "CREATED"],
        &rows,
    )
}

async fn network(c: &Client, cmd: NetworkCmd) -> anyhow::Result<()> {
    let (nets, json) = match cmd {
        NetworkCmd::Create {
            name,
            cidr,
            ipv6,
            domain,
            pow_difficulty,
            json,
        } => {
            let req = CreateNetworkRequest {
                api_version: None,
                name,
                ipv4_cidr: cidr,
                ipv6_prefix: ipv6,
                dns_domain: domain,
                pow_difficulty,
            };
            (vec![c.create_network(&req).await?], json)
        }
        NetworkCmd::List { json } => {
            let list = c.list_networks().await?;
            if json {
                return print_json(&list);
            }
            (list.networks, false)
        }
        NetworkCmd::Show { name, json } => (vec![c.show_network(&name).await?], json),
        NetworkCmd::Leave { name, node, json } => {
            let left = c.leave_network(&name, &node).await?;
            if json {
                return print_json(&left);
            }
            out(&format!(
                "node {} left network {}\n",
                left.node, left.network
            ));
            return Ok(());
        }
    };
    if json {
        return print_json(nets.first().ok_or_else(|| anyhow!("no network returned"))?);
    }
    out(&networks_table(&nets));
    Ok(())
}

fn routes_table(routes: &[RouteInfo]) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                r.network.clone(),
                r.prefix.clone(),
                r.node.clone(),
                r.state.clone(),
                r.source.clone(),
                if r.primary { "yes" } else { "-" }.into(),
                if r.online { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    table(
        &[
            "NETWORK", "PREFIX", "GATEWAY", "STATE", "SOURCE", "PRIMARY", "ONLINE",
        ],
        &rows,
    )
}

async fn route(c: &Client, cmd: RouteCmd) -> anyhow::Result<()> {
    let (op, a) = match cmd {
        RouteCmd::List { json } => {
            let list = c.list_routes().await?;
            if json {
                return print_json(&list);
            }
            out(&routes_table(&list.routes));
            return Ok(());
        }
        RouteCmd::Add(a) => ("add", a),
        RouteCmd::Approve(a) => ("approve", a),
        RouteCmd::Reject(a) => ("reject", a),
        RouteCmd::Withdraw(a) => ("withdraw", a),
    };
    let req = RouteRequest {
        node: a.node,
        prefix: a.prefix,
        network: a.network,
    };
    let list = c.route(op, &req).await?;
    if a.json {
        return print_json(&list);
    }
    if list.routes.is_empty() {
        out(&format!(
            "route {} of {}: withdrawn\n",
            req.prefix, req.node
        ));
    } else {
        out(&routes_table(&list.routes));
    }
    Ok(())
}

fn uses(t: &TokenInfo) -> String {
    match t.max_uses {
        Some(m) => format!("{}/{m}", t.uses),
        None => format!("{}/unlimited", t.uses),
    }
}

fn tokens_table(tokens: &[TokenInfo]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.networks.join(","),
                if t.tags.is_empty() {
                    "-".into()
                } else {
                    t.tags.join(",")
                },
                uses(t),
                datetime(t.expires_at_ms),
                t.state.clone(),
                t.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NETWORKS",
            "TAGS",
            "USES",
            "EXPIRES",
            "STATE",
            "DESCRIPTION",
        ],
        &rows,
    )
}

async fn token(c: &Client, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            networks,
            tags,
            expires_in,
            uses,
            unlimited,
            description,
            json,
        } => {
            let secs = parse_duration(&expires_in).map_err(|e| anyhow!(e))?;
            let req = CreateTokenRequest {
                api_version: None,
                networks,
                tags,
                expires_in_secs: secs,
                max_uses: if unlimited {
                    None
                } else {
                    Some(uses.unwrap_or(1))
                },
                description,
            };
            let resp = c.create_token(&req).await?;
            if json {
                return print_json(&resp);
            }
            out(&format!(
                "Join token (shown once; store it safely):\n  {}\n\n{}",
                resp.token,
                tokens_table(std::slice::from_ref(&resp.info))
            ));
        }
        TokenCmd::List { json } => {
            let list = c.list_tokens().await?;
            if json {
                return print_json(&list);
            }
            out(&tokens_table(&list.tokens));
        }
        TokenCmd::Revoke { id, json } => {
            let info = c.revoke_token(id).await?;
            if json {
                return print_json(&info);
            }
            out(&tokens_table(std::slice::from_ref(&info)));
        }
    }
    Ok(())
}

fn nodes_table(nodes: &[NodeInfo]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let addrs: Vec<String> = n
                .addresses
                .iter()
                .map(|a| format!("{}={}", a.network, a.ipv4))
                .collect();
            let state = if n.disabled {
                "disabled"
            } else if n.online {
                "online"
            } else {
                "offline"
            };
            vec![
                n.name.clone(),
                n.node_key.to_string(),
                addrs.join(","),
                if n.tags.is_empty() {
                    "-".into()
                } else {
                    n.tags.join(",")
                },
                state.into(),
                n.last_seen_ms.map(datetime).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &["NAME", "KEY", "ADDRESSES", "TAGS", "STATE", "LAST SEEN"],
        &rows,
    )
}

fn node_detail(n: &NodeInfo) -> String {
    let mut s = nodes_table(std::slice::from_ref(n));
    s.push_str(&format!(
        "\nhostname:  {}\n",
        safe(n.hostname.as_deref().unwrap_or("-"))
    ));
    s.push_str(&format!("created:   {}\n", datetime(n.created_at_ms)));
    let eps: Vec<String> = n.endpoints.iter().map(ToString::to_string).collect();
    s.push_str(&format!(
        "endpoints: {}\n",
        if eps.is_empty() {
            "-".into()
        } else {
            eps.join(", ")
        }
    ));
    for a in &n.addresses {
        let v6 = a.ipv6.map(|v| format!(" {v}")).unwrap_or_default();
        s.push_str(&format!("network {}: {}{v6}\n", a.network, a.ipv4));
    }
    s
}

async fn node(c: &Client, cmd: NodeCmd) -> anyhow::Result<()> {
    let patch = |p: UpdateNodeRequest| p;
    let (info, json) = match cmd {
        NodeCmd::List { network, json } => {
            let list = c.list_nodes(network.as_deref()).await?;
            if json {
                return print_json(&list);
            }
            out(&nodes_table(&list.nodes));
            return Ok(());
        }
        NodeCmd::Show { node, json } => (c.show_node(&node).await?, json),
        NodeCmd::Rename {
            node,
            new_name,
            json,
        } => (
            c.update_node(
                &node,
                &patch(UpdateNodeRequest {
                    name: Some(new_name),
                    ..Default::default()
                }),
            )
            .await?,
            json,
        ),
        NodeCmd::Tag { node, tags, json } => (
            c.update_node(
                &node,
                &patch(UpdateNodeRequest {
                    tags: Some(tags),
                    ..Default::default()
                }),
            )
            .await?,
            json,
        ),
        NodeCmd::Disable { node, json } => (
            c.update_node(
                &node,
                &UpdateNodeRequest {
                    disabled: Some(true),
                    ..Default::default()
                },
            )
            .await?,
            json,
        ),
        NodeCmd::Enable { node, json } => (
            c.update_node(
                &node,
                &UpdateNodeRequest {
                    disabled: Some(false),
                    ..Default::default()
                },
            )
            .await?,
            json,
        ),
        NodeCmd::Remove { node, json } => {
            c.remove_node(&node).await?;
            if json {
                return print_json(&serde_json::json!({ "removed": { "node": node } }));
            }
            out(&format!("removed {node}\n"));
            return Ok(());
        }
    };
    if json {
        return print_json(&info);
    }
    out(&node_detail(&info));
    Ok(())
}

async fn policy(c: &Client, cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Show { json } => {
            let doc = c.get_policy().await?;
            if json {
                return print_json(&doc);
            }
            out(&doc.text);
            if !doc.text.ends_with('\n') {
                out("\n");
            }
            Ok(())
        }
        PolicyCmd::Set {
            file,
            expect_version,
            json,
        } => {
            let (text, source) = if file.as_os_str() == "-" {
                let text = std::io::read_to_string(std::io::stdin()).context("reading stdin")?;
                (text, "<stdin>".to_owned())
            } else {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                (text, file.display().to_string())
            };
            // Refused here with the file's name on each error (the controller
            // checks again, and runs the policy's tests against its nodes).
            if let Err(e) = weft_policy::parse(&text) {
                return Err(anyhow::Error::new(PolicyInvalid(e.render(&source, &text))));
            }
            let doc = c
                .set_policy(&SetPolicyRequest {
                    api_version: None,
                    text,
                    expect_version,
                })
                .await?;
            if json {
                return print_json(&doc);
            }
            out(&format!(
                "policy version {} set by {}\n",
                doc.version, doc.author
            ));
            Ok(())
        }
        PolicyCmd::Check {
            from,
            to,
            proto,
            port,
            json,
        } => {
            let r = c
                .check_policy(&PolicyCheckRequest {
                    api_version: None,
                    from,
                    to,
                    proto,
                    port,
                })
                .await?;
            if json {
                print_json(&r)?;
            } else {
                let mut text = String::new();
                if r.pairs.is_empty() {
                    text.push_str("no pair of distinct nodes sharing a network matches\n");
                }
                for p in &r.pairs {
                    text.push_str(&p.explanation);
                    text.push('\n');
                }
                if r.representative {
                    text.push_str(
                        "(a side matched no node; a representative node stood in for it)\n",
                    );
                }
                text.push_str(&format!(
                    "policy version {}: {}\n",
                    r.version,
                    if r.allowed { "allowed" } else { "not allowed" }
                ));
                out(&text);
            }
            if !r.allowed {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn audit_table(entries: &[AuditEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                datetime(e.at_ms),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.detail.to_string(),
            ]
        })
        .collect();
    table(
        &["ID", "TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"],
        &rows,
    )
}

fn relays_table(relays: &[RelayInfo]) -> String {
    let rows: Vec<Vec<String>> = relays
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.url.clone(),
                r.stun_port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                if r.connected { "yes" } else { "no" }.into(),
                r.last_seen_ms.map(datetime).unwrap_or_else(|| "-".into()),
                r.tls_fingerprint.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "URL",
            "STUN",
            "CONNECTED",
            "LAST SEEN",
            "TLS FINGERPRINT",
        ],
        &rows,
    )
}

async fn relay(c: &Client, cmd: RelayCmd) -> anyhow::Result<()> {
    let (info, json) = match cmd {
        RelayCmd::Create { name, url, json } => {
            let resp = c
                .create_relay(&CreateRelayRequest {
                    api_version: None,
                    name,
                    url,
                })
                .await?;
            if json {
                return print_json(&resp);
            }
            out(&format!(
                "Relay token (shown once; put it in the file given to weft-relay --relay-token-file):\n  {}\n\n{}",
                resp.token,
                relays_table(std::slice::from_ref(&resp.info))
            ));
            return Ok(());
        }
        RelayCmd::List { json } => {
            let list = c.list_relays().await?;
            if json {
                return print_json(&list);
            }
            out(&relays_table(&list.relays));
            return Ok(());
        }
        RelayCmd::Show { name, json } => (c.show_relay(&name).await?, json),
        RelayCmd::Remove { name, json } => {
            c.remove_relay(&name).await?;
            if json {
                return print_json(&serde_json::json!({ "removed": { "relay": name } }));
            }
            out(&format!("removed relay {name}\n"));
            return Ok(());
        }
    };
    if json {
        return print_json(&info);
    }
    out(&relays_table(std::slice::from_ref(&info)));
    Ok(())
}
