//! `admin firewall …`: the host firewall (the declared file: show, set,
//! check; dynamic rules: allow, rules, revoke).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use weft_api_client::Client;
use weft_policy::hostfw::parse_firewall;
use weft_proto::hostfw::{
    AllowRuleRequest, Direction, FirewallDoc, FirewallRuleInfo, HostRule, Proto, SetFirewallRequest,
};

use super::{print_json, read_file_arg};
use crate::cmd::format::{datetime, out, parse_duration, safe, table};

#[derive(Debug, Subcommand)]
pub(crate) enum FirewallCmd {
    /// Print the host firewall file in force (with `--nodes`: the nodes it
    /// gives a firewall instead; with `--json`: version, author, time and
    /// nodes too).
    Show {
        /// List the nodes that have a host firewall, with the line of the
        /// profile that selects each, its rule count and spec version.
        #[arg(long)]
        nodes: bool,
    },
    /// Replace the host firewall file with FILE (`-` for stdin). Refused with
    /// every mistake's line and column when it does not parse. Each node whose
    /// firewall changes receives it in its map; no other node hears of it.
    ///
    /// The file is TOML: `[[firewall]]` profiles, each with `nodes = ["*" |
    /// "tag:TAG" | "node:NAME" | NAME, ...]` (opt-in: the first profile that
    /// selects a node wins, others get no host firewall), `input`/`output`/
    /// `forward = "drop"|"accept"` (defaults drop, accept, accept),
    /// `management = [CIDR, ...]`, `management_ports = [22]`, `log_drops =
    /// true`, and `[[firewall.rule]]` tables: `direction` (in, out, forward),
    /// `action` (accept, drop; drops first), `proto` (any, tcp, udp, icmp),
    /// `port = "80,443,8000-8080"`, `from` (in) / `to` (out, forward) with
    /// CIDRs, addresses or `domain:NAME`, `comment`. See docs/firewall.md.
    Set {
        /// The firewall file.
        file: PathBuf,
        /// Only if the file in force is still at this version.
        #[arg(long)]
        expect_version: Option<u64>,
    },
    /// Check FILE (`-` for stdin) without storing it: every mistake with its
    /// line, else the nodes it would give a host firewall. Exits 1 when it
    /// does not parse.
    Check {
        /// The firewall file.
        file: PathBuf,
    },
    /// Open something on one node on top of the file: a dynamic rule, e.g.
    /// `allow web1 --port 80 --from 192.0.2.0/24 --for 2h`. With `--for`, the
    /// node closes it by itself when it expires, controller or not. Refused
    /// for a node the file gives no host firewall (it lets everything in).
    Allow(AllowArgs),
    /// List the dynamic rules (ids `dyn:N`) and when each expires.
    Rules {
        /// Only this node's (name or key).
        #[arg(allow_hyphen_values = true, long)]
        node: Option<String>,
    },
    /// Remove a dynamic rule by id (`dyn:N` or `N`).
    Revoke {
        /// The rule's id.
        id: String,
    },
}

/// `admin firewall allow`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct AllowArgs {
    /// The node (name or key).
    #[arg(allow_hyphen_values = true)]
    node: String,
    /// in (the default), out or forward.
    #[arg(long, default_value = "in", value_parser = ["in", "out", "forward"])]
    direction: String,
    /// tcp, udp, icmp or any (default: tcp with --port, else any).
    #[arg(long, value_parser = ["tcp", "udp", "icmp", "any"])]
    proto: Option<String>,
    /// Ports, `80`, `80,443` or `8000-8080` (tcp and udp only).
    #[arg(long)]
    port: Option<String>,
    /// A source (direction in): a CIDR, an address or `domain:NAME`;
    /// repeatable. None: anyone.
    #[arg(long)]
    from: Vec<String>,
    /// A destination (direction out or forward), same forms; repeatable.
    #[arg(long)]
    to: Vec<String>,
    /// Why (printable ASCII, at most 128 characters).
    #[arg(long, default_value = "")]
    comment: String,
    /// Remove the rule after this long (`90s`, `15m`, `2h`, `7d`).
    #[arg(long = "for", value_parser = parse_duration)]
    ttl: Option<u64>,
}

/// The firewall file does not parse (the same code as the controller's).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct FirewallInvalid(String);

/// Reads FILE and parses it here first, with its name on each error (the
/// controller checks again).
fn read_checked(file: &std::path::Path) -> anyhow::Result<String> {
    let (text, source) = read_file_arg(file)?;
    if let Err(e) = parse_firewall(&text) {
        return Err(anyhow::Error::new(FirewallInvalid(
            e.render(&source, &text),
        )));
    }
    Ok(text)
}

pub(crate) async fn run(c: &Client, cmd: FirewallCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        FirewallCmd::Show { nodes } => {
            let doc = c.get_firewall().await?;
            if json {
                print_json(&doc)?;
            } else if nodes {
                out(&nodes_text(&doc));
            } else if doc.version == 0 {
                out("# no host firewall file is set: no node has a host firewall\n");
            } else {
                out(&doc.text);
                if !doc.text.ends_with('\n') {
                    out("\n");
                }
            }
        }
        FirewallCmd::Set {
            file,
            expect_version,
        } => {
            let text = read_checked(&file)?;
            let doc = c
                .set_firewall(&SetFirewallRequest {
                    text,
                    expect_version,
                })
                .await?;
            if json {
                print_json(&doc)?;
            } else {
                out(&format!(
                    "host firewall version {} set by {}: {} node(s) have a host firewall\n",
                    doc.version,
                    safe(&doc.author),
                    doc.nodes.len()
                ));
            }
        }
        FirewallCmd::Check { file } => {
            let text = read_checked(&file)?;
            let doc = c
                .check_firewall(&SetFirewallRequest {
                    text,
                    expect_version: None,
                })
                .await?;
            if json {
                print_json(&doc)?;
            } else {
                out(&format!(
                    "{}: ok; it would give {} node(s) a host firewall\n",
                    file.display(),
                    doc.nodes.len()
                ));
                if !doc.nodes.is_empty() {
                    out(&nodes_text(&doc));
                }
            }
        }
        FirewallCmd::Allow(args) => {
            let req = allow_request(args)?;
            let info = c.allow_firewall_rule(&req).await?;
            if json {
                print_json(&info)?;
            } else {
                out(&format!(
                    "rule {} on {}: {}\n",
                    info.id,
                    safe(&info.node),
                    describe(&info.rule)
                ));
            }
        }
        FirewallCmd::Rules { node } => {
            let list = c.firewall_rules(node.as_deref()).await?;
            if json {
                print_json(&list)?;
            } else {
                out(&rules_table(&list.rules));
            }
        }
        FirewallCmd::Revoke { id } => {
            let info = c.revoke_firewall_rule(&id).await?;
            if json {
                print_json(&info)?;
            } else {
                out(&format!(
                    "rule {} on {} revoked: {}\n",
                    info.id,
                    safe(&info.node),
                    describe(&info.rule)
                ));
            }
        }
    }
    Ok(())
}

/// The request `allow` sends, checked here for what needs no controller.
fn allow_request(a: AllowArgs) -> anyhow::Result<AllowRuleRequest> {
    let AllowArgs {
        node,
        direction,
        proto,
        port,
        from,
        to,
        comment,
        ttl: ttl_secs,
    } = a;
    let direction = match direction.as_str() {
        "out" => Direction::Out,
        "forward" => Direction::Forward,
        _ => Direction::In,
    };
    let proto = match proto.as_deref() {
        Some("udp") => Proto::Udp,
        Some("icmp") => Proto::Icmp,
        Some("any") => Proto::Any,
        Some(_) => Proto::Tcp,
        None if port.is_some() => Proto::Tcp,
        None => Proto::Any,
    };
    if port.is_some() && !matches!(proto, Proto::Tcp | Proto::Udp) {
        anyhow::bail!("--port needs --proto tcp or udp");
    }
    let peers = match direction {
        Direction::In if !to.is_empty() => {
            anyhow::bail!(
                "--to names destinations: it needs --direction out or forward (use --from for in)"
            )
        }
        Direction::Out | Direction::Forward if !from.is_empty() => {
            anyhow::bail!(
                "--from names sources: it needs --direction in (use --to for out and forward)"
            )
        }
        Direction::In => from,
        Direction::Out | Direction::Forward => to,
    };
    if ttl_secs == Some(0) {
        anyhow::bail!("--for must be at least 1s");
    }
    Ok(AllowRuleRequest {
        node,
        direction,
        proto,
        ports: port.unwrap_or_default(),
        peers,
        comment,
        ttl_secs,
    })
}

/// `in tcp/80,443 from 192.0.2.0/24 until 2026-12-06T04:00:00Z "why"`.
fn describe(r: &HostRule) -> String {
    let mut s = format!("{} {}", r.direction, r.proto);
    if !r.ports.is_empty() {
        let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
        s.push_str(&format!("/{}", ports.join(",")));
    }
    let side = if r.direction == Direction::In {
        "from"
    } else {
        "to"
    };
    if r.peers.is_empty() {
        s.push_str(&format!(" {side} anyone"));
    } else {
        let peers: Vec<String> = r.peers.iter().map(ToString::to_string).collect();
        s.push_str(&format!(" {side} {}", peers.join(",")));
    }
    match r.expires_at_ms {
        Some(t) => s.push_str(&format!(" until {}", datetime(t))),
        None => s.push_str(" until revoked"),
    }
    if !r.comment.is_empty() {
        s.push_str(&format!(" \"{}\"", safe(&r.comment)));
    }
    s
}

fn nodes_text(doc: &FirewallDoc) -> String {
    if doc.nodes.is_empty() {
        return "no node has a host firewall\n".into();
    }
    let rows: Vec<Vec<String>> = doc
        .nodes
        .iter()
        .map(|n| {
            vec![
                safe(&n.node).into_owned(),
                n.profile_line.to_string(),
                n.rules.to_string(),
                n.version.to_string(),
            ]
        })
        .collect();
    table(&["NODE", "PROFILE LINE", "RULES", "VERSION"], &rows)
}

fn rules_table(rules: &[FirewallRuleInfo]) -> String {
    if rules.is_empty() {
        return "no dynamic firewall rules\n".into();
    }
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|i| {
            let r = &i.rule;
            let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
            let peers: Vec<String> = r.peers.iter().map(ToString::to_string).collect();
            vec![
                i.id.clone(),
                safe(&i.node).into_owned(),
                r.direction.to_string(),
                r.proto.to_string(),
                if ports.is_empty() {
                    "*".into()
                } else {
                    ports.join(",")
                },
                if peers.is_empty() {
                    "*".into()
                } else {
                    peers.join(",")
                },
                r.expires_at_ms.map_or_else(|| "-".into(), datetime),
                safe(&r.comment).into_owned(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NODE", "DIR", "PROTO", "PORTS", "PEERS", "EXPIRES", "COMMENT",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use weft_proto::hostfw::{HostAddr, PortRange, RuleAction};

    use super::*;

    fn req(
        direction: &str,
        proto: Option<&str>,
        port: Option<&str>,
        from: &[&str],
        to: &[&str],
    ) -> anyhow::Result<AllowRuleRequest> {
        allow_request(AllowArgs {
            node: "web1".into(),
            direction: direction.into(),
            proto: proto.map(String::from),
            port: port.map(String::from),
            from: from.iter().map(|s| (*s).to_owned()).collect(),
            to: to.iter().map(|s| (*s).to_owned()).collect(),
            comment: String::new(),
            ttl: Some(7200),
        })
    }

    #[test]
    fn allow_checks_what_needs_no_controller() {
        let r = req("in", None, Some("80"), &["192.0.2.0/24"], &[]).unwrap();
        assert_eq!(r.proto, Proto::Tcp, "a port means tcp by default");
        assert_eq!(r.direction, Direction::In);
        assert_eq!(r.peers, vec!["192.0.2.0/24"]);
        assert_eq!(r.ttl_secs, Some(7200));
        assert_eq!(req("in", None, None, &[], &[]).unwrap().proto, Proto::Any);
        let e = req("in", Some("icmp"), Some("80"), &[], &[]).unwrap_err();
        assert!(
            e.to_string().contains("--port needs --proto tcp or udp"),
            "{e}"
        );
        let e = req("in", None, None, &[], &["10.0.0.1"]).unwrap_err();
        assert!(e.to_string().contains("--direction out"), "{e}");
        let e = req("out", None, None, &["10.0.0.1"], &[]).unwrap_err();
        assert!(e.to_string().contains("--direction in"), "{e}");
        let r = req(
            "out",
            Some("udp"),
            Some("53"),
            &[],
            &["domain:dns.example.com"],
        )
        .unwrap();
        assert_eq!(r.direction, Direction::Out);
        assert_eq!(r.peers, vec!["domain:dns.example.com"]);
    }

    #[test]
    fn rules_read_as_sentences_and_tables() {
        let r = HostRule {
            id: "dyn:3".into(),
            direction: Direction::In,
            action: RuleAction::Accept,
            proto: Proto::Tcp,
            ports: vec![
                PortRange { start: 80, end: 80 },
                PortRange {
                    start: 8000,
                    end: 8080,
                },
            ],
            peers: vec![HostAddr::Cidr("192.0.2.0/24".parse().unwrap())],
            comment: "deploy".into(),
            expires_at_ms: Some(0),
        };
        assert_eq!(
            describe(&r),
            "in tcp/80,8000-8080 from 192.0.2.0/24 until 1970-01-01T00:00:00Z \"deploy\""
        );
        let info = FirewallRuleInfo {
            id: "dyn:3".into(),
            node: "web1".into(),
            rule: r,
            created_by: "admin".into(),
            created_at_ms: 0,
        };
        let t = rules_table(&[info]);
        assert!(t.starts_with("ID"), "{t}");
        assert!(
            t.contains("dyn:3") && t.contains("80,8000-8080") && t.contains("deploy"),
            "{t}"
        );
        assert_eq!(rules_table(&[]), "no dynamic firewall rules\n");
    }
}
