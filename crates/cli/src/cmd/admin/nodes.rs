//! `admin node …`: list, show, rename, tag, disable, enable, remove nodes.

use clap::Subcommand;
use weft_api_client::Client;
use weft_proto::api::{NodeInfo, UpdateNodeRequest};
use weft_proto::facts::HostFacts;
use weft_proto::integrity::IntegrityState;

use super::print_json;
use crate::cmd::format::{datetime, out, safe, table};

#[derive(Debug, Subcommand)]
pub(super) enum NodeCmd {
    /// List nodes (OS is the OS name and version, VERSION weftd's, ARCH the
    /// CPU architecture, from the host facts the node reported; `-` until it
    /// reports them).
    List {
        /// Only members of this network.
        #[arg(long)]
        network: Option<String>,
    },
    /// Show one node (by key or name), with every host fact it reported (OS,
    /// kernel, CPU, memory, platform, virtualization, boot time, weftd's
    /// version and the SHA-256 of its binary).
    Show {
        /// Key or name.
        #[arg(allow_hyphen_values = true)]
        node: String,
    },
    /// Rename a node.
    Rename {
        /// Key or name.
        #[arg(allow_hyphen_values = true)]
        node: String,
        /// New name (a DNS label).
        new_name: String,
    },
    /// Replace a node's tags (no tags clears them).
    Tag {
        /// Key or name.
        #[arg(allow_hyphen_values = true)]
        node: String,
        /// The new tags.
        tags: Vec<String>,
    },
    /// Disable a node: out of every map, credential refused.
    Disable {
        /// Key or name.
        #[arg(allow_hyphen_values = true)]
        node: String,
    },
    /// Enable a disabled node.
    Enable {
        /// Key or name.
        #[arg(allow_hyphen_values = true)]
        node: String,
    },
    /// Remove a node (it must register again to come back).
    Remove {
        /// Key or name.
        #[arg(allow_hyphen_values = true)]
        node: String,
    },
    /// The metrics the node forwards (every 30 s) as sparklines: throughput,
    /// drops, peer and controller RTT, with min, max and last; `--json`
    /// prints every one-minute point.
    Metrics(super::metrics::MetricsArgs),
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
                n.integrity.to_string(),
                n.last_seen_ms.map(datetime).unwrap_or_else(|| "-".into()),
                os(n.facts.as_ref()),
                fact(n, |f| f.weftd_version.clone()),
                fact(n, |f| f.arch.clone()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "KEY",
            "ADDRESSES",
            "TAGS",
            "STATE",
            "INTEGRITY",
            "LAST SEEN",
            "OS",
            "VERSION",
            "ARCH",
        ],
        &rows,
    )
}

/// A fact of `n`, or `-`.
fn fact(n: &NodeInfo, get: impl Fn(&HostFacts) -> Option<String>) -> String {
    n.facts.as_ref().and_then(get).unwrap_or_else(|| "-".into())
}

/// OS name and version: `Ubuntu 24.04`, or `-`.
fn os(f: Option<&HostFacts>) -> String {
    let parts: Vec<&str> = f
        .into_iter()
        .flat_map(|f| [f.os_name.as_deref(), f.os_version.as_deref()])
        .flatten()
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// Bytes in binary units: `15.6 GiB`, `512 MiB`, `0 B`.
fn binary_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The host facts as `label: value` lines (absent facts left out).
fn facts_detail(f: &HostFacts, changed_ms: Option<u64>) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    let os = os(Some(f));
    if os != "-" {
        lines.push(("os", os));
    }
    let mut push = |label, v: Option<String>| {
        if let Some(v) = v {
            lines.push((label, v));
        }
    };
    push("kernel", f.kernel_version.clone());
    push("arch", f.arch.clone());
    push(
        "cpu",
        match (f.cpu_cores, &f.cpu_model) {
            (Some(n), Some(m)) => Some(format!("{n} x {m}")),
            (Some(n), None) => Some(format!("{n} cores")),
            (None, m) => m.clone(),
        },
    );
    push(
        "memory",
        f.memory_total_bytes.map(|m| match f.swap_total_bytes {
            Some(s) => format!("{}, swap {}", binary_bytes(m), binary_bytes(s)),
            None => binary_bytes(m),
        }),
    );
    push("platform", f.platform.clone());
    push(
        "virtual",
        Some(match &f.virtualization_tech {
            Some(t) => format!("{} ({t})", f.virtualization),
            None => f.virtualization.to_string(),
        }),
    );
    push("host", f.hostname.clone());
    push("booted", f.boot_time_ms.map(datetime));
    push("weftd", f.weftd_version.clone());
    push("sha256", f.weftd_sha256.clone());
    let mut s = format!(
        "facts (changed {}):\n",
        changed_ms.map(datetime).unwrap_or_else(|| "-".into())
    );
    for (label, v) in lines {
        s.push_str(&format!("  {label:<9} {}\n", safe(&v)));
    }
    s
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
    match &n.facts {
        Some(f) => s.push_str(&facts_detail(f, n.facts_changed_ms)),
        None => s.push_str("facts:     - (not reported yet)\n"),
    }
    if n.integrity != IntegrityState::Ok {
        s.push_str(&format!(
            "integrity: {} (why: weft admin integrity show --node {})\n",
            n.integrity,
            safe(&n.name)
        ));
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
        NodeCmd::Metrics(args) => return super::metrics::run(c, args, json).await,
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

#[cfg(test)]
mod facts_tests {
    use weft_proto::facts::Virtualization;

    use super::*;

    fn node(facts: Option<HostFacts>) -> NodeInfo {
        NodeInfo {
            node_key: weft_proto::NodeKey::from_bytes([7; 32]),
            name: "web-1".into(),
            hostname: Some("web-1".into()),
            tags: vec![],
            disabled: false,
            online: true,
            endpoints: vec![],
            last_seen_ms: Some(1_700_000_000_000),
            created_at_ms: 1_700_000_000_000,
            addresses: vec![],
            facts,
            facts_changed_ms: Some(1_700_000_000_000),
            integrity: IntegrityState::Mismatch,
        }
    }

    #[test]
    fn list_and_show_carry_the_host_facts() {
        let list = nodes_table(&[node(Some(nodes_facts())), node(None)]);
        let mut lines = list.lines();
        let header = lines.next().unwrap();
        assert!(header.ends_with("OS            VERSION  ARCH"), "{list}");
        assert!(
            lines
                .next()
                .unwrap()
                .ends_with("Ubuntu 24.04  0.1.0    x86_64"),
            "{list}"
        );
        assert!(
            lines.next().unwrap().ends_with("-             -        -"),
            "{list}"
        );

        let n = node(Some(HostFacts {
            hostname: Some("web-1.lan".into()),
            ..nodes_facts()
        }));
        let show = node_detail(&n);
        for want in [
            "facts (changed 2023-11-14T22:13:20Z):",
            "  os        Ubuntu 24.04\n",
            "  kernel    6.8.0-49-generic\n",
            "  cpu       4 x AMD EPYC\n",
            "  memory    16.0 GiB, swap 0 B\n",
            "  platform  QEMU Standard PC\\u{202e}\n",
            "  virtual   vm (kvm)\n",
            "  host      web-1.lan\n",
            "  booted    2023-11-14T22:13:20Z\n",
            "  weftd     0.1.0\n",
            &format!("  sha256    {}\n", "ab".repeat(32)),
        ] {
            assert!(show.contains(want), "{want:?} not in\n{show}");
        }
        assert!(node_detail(&node(None)).contains("facts:     - (not reported yet)"));
        // The integrity column, and where to look when it is not ok.
        assert!(header.contains("STATE   INTEGRITY"), "{list}");
        assert!(
            list.lines().nth(1).unwrap().contains("online  mismatch"),
            "{list}"
        );
        assert!(
            show.contains("integrity: mismatch (why: weft admin integrity show --node web-1)"),
            "{show}"
        );
        assert_eq!(binary_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(binary_bytes(512 << 20), "512 MiB");
        assert_eq!(binary_bytes(1000), "1000 B");
    }

    fn nodes_facts() -> HostFacts {
        HostFacts {
            os_name: Some("Ubuntu".into()),
            os_version: Some("24.04".into()),
            arch: Some("x86_64".into()),
            cpu_cores: Some(4),
            cpu_model: Some("AMD EPYC".into()),
            memory_total_bytes: Some(16 << 30),
            swap_total_bytes: Some(0),
            platform: Some("QEMU Standard PC\u{202e}".into()),
            kernel_version: Some("6.8.0-49-generic".into()),
            boot_time_ms: Some(1_700_000_000_000),
            virtualization: Virtualization::Vm,
            virtualization_tech: Some("kvm".into()),
            weftd_version: Some("0.1.0".into()),
            weftd_sha256: Some("ab".repeat(32)),
            ..HostFacts::default()
        }
    }
}
