//! `admin network …` and `admin route …`: overlay networks and the subnet
//! routes their gateways offer.

use std::io::IsTerminal as _;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use weft_api_client::Client;
use weft_proto::api::{CreateNetworkRequest, Network, RouteInfo, RouteRequest};

use super::print_json;
use crate::cmd::format::{datetime, out, table};

#[derive(Debug, Subcommand)]
pub(super) enum NetworkCmd {
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
    },
    /// List networks.
    List,
    /// Show one network.
    Show {
        /// Name.
        name: String,
    },
    /// Set the network's anomaly thresholds (those not given are kept;
    /// defaults when never set); its members receive them in their maps.
    Anomaly(super::events::AnomalyArgs),
    /// Delete a network: every member leaves it (each gets a map without
    /// it; a node left in no network stays registered, with its key, name
    /// and credential), and its subnet routes, services, data entries and
    /// its generated policy rule go; join tokens lose it, and a token that
    /// granted only this network is revoked. Audited as `network.remove`.
    /// Asks for the network's name on a terminal; pass --yes to skip that
    /// (required when stdin is not a terminal).
    Remove {
        /// The network.
        name: String,
        /// Delete without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Remove a node from this network only (its interface, address, routes
    /// and names there go; its other networks stay).
    Leave {
        /// The network.
        name: String,
        /// The node (key or name).
        #[arg(allow_hyphen_values = true)]
        node: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum RouteCmd {
    /// List advertised routes, their state and which gateway carries each.
    List,
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
pub(super) struct RouteArgs {
    /// The gateway node (key or name).
    #[arg(allow_hyphen_values = true)]
    node: String,
    /// The subnet, for example 192.168.50.0/24.
    prefix: String,
    /// The network (needed when the node is in several).
    #[arg(long)]
    network: Option<String>,
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

pub(super) async fn network(c: &Client, cmd: NetworkCmd, json: bool) -> anyhow::Result<()> {
    let nets = match cmd {
        NetworkCmd::Create {
            name,
            cidr,
            ipv6,
            domain,
            pow_difficulty,
        } => {
            let req = CreateNetworkRequest {
                api_version: None,
                name,
                ipv4_cidr: cidr,
                ipv6_prefix: ipv6,
                dns_domain: domain,
                pow_difficulty,
            };
            vec![c.create_network(&req).await?]
        }
        NetworkCmd::List => {
            let list = c.list_networks().await?;
            if json {
                return print_json(&list);
            }
            list.networks
        }
        NetworkCmd::Show { name } => {
            let net = c.show_network(&name).await?;
            if !json {
                out(&networks_table(std::slice::from_ref(&net)));
                out(&format!(
                    "anomaly thresholds: {}\n",
                    super::events::describe(&net.anomaly.unwrap_or_default())
                ));
                return Ok(());
            }
            vec![net]
        }
        NetworkCmd::Anomaly(a) => return super::events::set_anomaly(c, a, json).await,
        NetworkCmd::Remove { name, yes } => return remove(c, &name, yes, json).await,
        NetworkCmd::Leave { name, node } => {
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

/// `weft admin network remove NAME [--yes]`.
async fn remove(c: &Client, name: &str, yes: bool, json: bool) -> anyhow::Result<()> {
    if !yes {
        // Shows what is at stake (and fails early on an unknown network).
        let net = c.show_network(name).await?;
        if json || !std::io::stdin().is_terminal() {
            bail!(
                "refusing to delete network {name} ({} members) without confirmation: stdin is not a terminal to ask on; pass --yes",
                net.node_count
            );
        }
        eprint!(
            "Delete network {name} ({}, {} members)? Its members leave it, its routes, services and data go, tokens that grant only it are revoked.\nType the network's name to confirm: ",
            net.ipv4_cidr, net.node_count
        );
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .context("reading the confirmation")?;
        if answer.trim() != name {
            bail!("not confirmed: network {name} was not deleted");
        }
    }
    let r = c.remove_network(name).await?;
    if json {
        return print_json(&r);
    }
    let list = |ids: &[u64]| {
        if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    out(&format!(
        "network {} deleted: {} members left it ({} now in no network, still registered), {} routes, {} services{}, {} data entries\njoin tokens revoked: {}; still granting other networks: {}\npolicy: {}\n",
        r.network,
        r.members,
        r.orphaned,
        r.routes,
        r.services.len(),
        if r.services.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.services.join(", "))
        },
        r.data_keys,
        list(&r.tokens_revoked),
        list(&r.tokens_changed),
        if r.policy_rule_removed {
            "its generated default rule was removed"
        } else {
            "unchanged (review the rules that name it: weft admin policy show)"
        },
    ));
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

pub(super) async fn route(c: &Client, cmd: RouteCmd, json: bool) -> anyhow::Result<()> {
    let (op, a) = match cmd {
        RouteCmd::List => {
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
    if json {
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
