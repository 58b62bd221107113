//! `admin node …`: list, show, rename, tag, disable, enable, remove nodes.

use clap::Subcommand;
use weft_api_client::Client;
use weft_proto::api::{NodeInfo, UpdateNodeRequest};

use super::print_json;
use crate::cmd::format::{datetime, out, safe, table};

#[derive(Debug, Subcommand)]
pub(super) enum NodeCmd {
    /// List nodes.
    List {
        /// Only members of this network.
        #[arg(long)]
        network: Option<String>,
    },
    /// Show one node (by key or name).
    Show {
        /// Key or name.
        node: String,
    },
    /// Rename a node.
    Rename {
        /// Key or name.
        node: String,
        /// New name (a DNS label).
        new_name: String,
    },
    /// Replace a node's tags (no tags clears them).
    Tag {
        /// Key or name.
        node: String,
        /// The new tags.
        tags: Vec<String>,
    },
    /// Disable a node: out of every map, credential refused.
    Disable {
        /// Key or name.
        node: String,
    },
    /// Enable a disabled node.
    Enable {
        /// Key or name.
        node: String,
    },
    /// Remove a node (it must register again to come back).
    Remove {
        /// Key or name.
        node: String,
    },
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

pub(super) async fn run(c: &Client, cmd: NodeCmd, json: bool) -> anyhow::Result<()> {
    let patch = |p: UpdateNodeRequest| p;
    let info = match cmd {
        NodeCmd::List { network } => {
            let list = c.list_nodes(network.as_deref()).await?;
            if json {
                return print_json(&list);
            }
            out(&nodes_table(&list.nodes));
            return Ok(());
        }
        NodeCmd::Show { node } => c.show_node(&node).await?,
        NodeCmd::Rename { node, new_name } => {
            c.update_node(
                &node,
                &patch(UpdateNodeRequest {
                    name: Some(new_name),
                    ..Default::default()
                }),
            )
            .await?
        }
        NodeCmd::Tag { node, tags } => {
            c.update_node(
                &node,
                &patch(UpdateNodeRequest {
                    tags: Some(tags),
                    ..Default::default()
                }),
            )
            .await?
        }
        NodeCmd::Disable { node } => {
            c.update_node(
                &node,
                &UpdateNodeRequest {
                    disabled: Some(true),
                    ..Default::default()
                },
            )
            .await?
        }
        NodeCmd::Enable { node } => {
            c.update_node(
                &node,
                &UpdateNodeRequest {
                    disabled: Some(false),
                    ..Default::default()
                },
            )
            .await?
        }
        NodeCmd::Remove { node } => {
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
