//! `admin service …`: named services (create, list, show, remove; approve or
//! reject a node's offer).

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use weft_api_client::Client;
use weft_proto::service::{
    CreateServiceRequest, Health, HealthCheck, ServiceInfo, ServicePort, parse_ports,
};

use super::print_json;
use crate::cmd::format::{out, safe, table};

#[derive(Debug, Subcommand)]
pub(crate) enum ServiceCmd {
    /// Create a service: a name in one network, served by provider nodes on
    /// fixed ports, reached by consumers at a stable virtual IP
    /// (`NAME.svc.NETWORK.DOMAIN`).
    ///
    /// The VIP comes from the network's service range (a /24 inside
    /// 100.64.0.0/10 that overlaps no node addresses) and stays for the
    /// service's life. The nodes named are instances at once; each provider
    /// checks its instance (`--health`) and consumers route new flows only to
    /// healthy ones. Who may use it is the policy's business: a rule with `to
    /// = "service:NAME"` (e.g. `from = "tag:web"`).
    ///
    /// Example: `weft admin service create db --network prod --node db1,db2
    /// --port 5432/tcp --health tcp`
    Create(CreateArgs),
    /// List every service: VIP, ports, check, healthy instances, pending
    /// offers.
    List,
    /// Show one service: each instance's health, last check, the last
    /// failure and whether its node is online, and nodes whose offer waits
    /// for approval.
    Show {
        /// The service's name.
        name: String,
        /// Its network (needed when several networks have a service of that
        /// name).
        #[arg(long)]
        network: Option<String>,
    },
    /// Remove a service: consumers lose its name and VIP, its instances and
    /// pending offers go.
    Remove {
        /// The service's name.
        name: String,
        /// Its network (needed when several networks have a service of that
        /// name).
        #[arg(long)]
        network: Option<String>,
    },
    /// Approve a node's offer (`weft service advertise NAME` on the node):
    /// it becomes an instance. Also adds a member node that never offered.
    Approve(DecideArgs),
    /// Reject a node's offer (or remove an approved instance); it stays
    /// rejected when the node advertises again, until approved.
    Reject(DecideArgs),
}

/// `admin service create`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The service's name (a DNS label: lowercase letters, digits, `-`).
    name: String,
    /// The network it belongs to; its instances are members of it.
    #[arg(long)]
    network: String,
    /// The provider nodes (names or keys), comma-separated or repeated.
    #[arg(
        allow_hyphen_values = true,
        long = "node",
        value_delimiter = ',',
        required = true
    )]
    nodes: Vec<String>,
    /// Its ports, `5432/tcp`, `53/udp` or `5432` (tcp), comma-separated or
    /// repeated. Consumers use the same port on the VIP.
    #[arg(long = "port", value_delimiter = ',', required = true, value_parser = parse_port)]
    ports: Vec<ServicePort>,
    /// How providers check their instance: `tcp` (connect to the first TCP
    /// port; the default), `http:/PATH` (GET, healthy on 2xx/3xx) or `none`
    /// (healthy while the node is online).
    #[arg(long, default_value = "tcp", value_parser = parse_health)]
    health: HealthCheck,
    /// Replace an existing service of that name: its instances become
    /// exactly these nodes, its ports and check these; its VIP stays.
    #[arg(long)]
    replace: bool,
    /// Only if the service registry is still at this version (`list`
    /// shows it).
    #[arg(long)]
    expect_version: Option<u64>,
}

/// `admin service approve|reject`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct DecideArgs {
    /// The service's name.
    name: String,
    /// The node (name or key).
    #[arg(allow_hyphen_values = true, long)]
    node: String,
    /// The service's network (needed when several networks have a service
    /// of that name).
    #[arg(long)]
    network: Option<String>,
}

fn parse_port(s: &str) -> Result<ServicePort, String> {
    s.trim().parse().map_err(|e| format!("{e}"))
}

fn parse_health(s: &str) -> Result<HealthCheck, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// The network of service `name`: the one given, else the only network that
/// has a service of that name.
async fn network_of(c: &Client, name: &str, network: Option<String>) -> anyhow::Result<String> {
    if let Some(n) = network {
        return Ok(n);
    }
    let list = c.list_services().await?;
    let nets: Vec<&str> = list
        .services
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.network.as_str())
        .collect();
    match nets.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => bail!("no service named {name:?} (list them: weft admin service list)"),
        several => bail!(
            "services named {name:?} exist in networks {}: say which with --network",
            several.join(", ")
        ),
    }
}

pub(crate) async fn run(c: &Client, cmd: ServiceCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        ServiceCmd::Create(a) => {
            let ports = {
                let text: Vec<String> = a.ports.iter().map(ToString::to_string).collect();
                parse_ports(&text.join(",")).context("--port")?
            };
            let req = CreateServiceRequest {
                name: a.name,
                network: a.network,
                nodes: a.nodes,
                ports,
                health: a.health,
                replace: a.replace,
                expect_version: a.expect_version,
            };
            let info = c.create_service(&req).await?;
            if json {
                print_json(&info)?;
            } else {
                let verb = if a.replace { "replaced" } else { "created" };
                out(&format!("{verb} {}", summary(&info)));
            }
        }
        ServiceCmd::List => {
            let list = c.list_services().await?;
            if json {
                print_json(&list)?;
            } else if list.services.is_empty() {
                out(
                    "no services (create one: weft admin service create NAME --network NET --node NODE --port 5432/tcp)\n",
                );
            } else {
                out(&list_table(&list.services));
                out(&format!("registry version {}\n", list.version));
            }
        }
        ServiceCmd::Show { name, network } => {
            let network = network_of(c, &name, network).await?;
            let info = c.show_service(&network, &name).await?;
            if json {
                print_json(&info)?;
            } else {
                out(&show_text(&info, crate::clock::unix_ms()));
            }
        }
        ServiceCmd::Remove { name, network } => {
            let network = network_of(c, &name, network).await?;
            let info = c.remove_service(&network, &name).await?;
            if json {
                print_json(&info)?;
            } else {
                out(&format!(
                    "removed service {} from network {} (VIP {} is free again)\n",
                    safe(&info.name),
                    safe(&info.network),
                    info.vip
                ));
            }
        }
        ServiceCmd::Approve(a) => decide(c, a, true, json).await?,
        ServiceCmd::Reject(a) => decide(c, a, false, json).await?,
    }
    Ok(())
}

async fn decide(c: &Client, a: DecideArgs, approve: bool, json: bool) -> anyhow::Result<()> {
    let network = network_of(c, &a.name, a.network).await?;
    let info = c
        .decide_service_instance(&network, &a.name, &a.node, approve)
        .await?;
    if json {
        print_json(&info)?;
    } else {
        let what = if approve {
            "approved: it is an instance of"
        } else {
            "rejected: it is not an instance of"
        };
        out(&format!(
            "node {} {what} {}/{}\n",
            safe(&a.node),
            safe(&info.network),
            safe(&info.name)
        ));
        out(&show_text(&info, crate::clock::unix_ms()));
    }
    Ok(())
}

fn ports_text(ports: &[ServicePort]) -> String {
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `service db in network prod: VIP …`.
fn summary(info: &ServiceInfo) -> String {
    let nodes: Vec<&str> = info.instances.iter().map(|i| i.node.as_str()).collect();
    format!(
        "service {} in network {}: VIP {} ({}), ports {}, check {}, {} instance(s): {} (registry version {})\n",
        safe(&info.name),
        safe(&info.network),
        info.vip,
        safe(&info.fqdn),
        ports_text(&info.ports),
        info.health,
        nodes.len(),
        safe(&nodes.join(", ")),
        info.version
    )
}

fn list_table(services: &[ServiceInfo]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let healthy = s
                .instances
                .iter()
                .filter(|i| i.health == Health::Healthy)
                .count();
            vec![
                s.network.clone(),
                s.name.clone(),
                s.vip.to_string(),
                ports_text(&s.ports),
                s.health.to_string(),
                format!("{healthy}/{}", s.instances.len()),
                if s.pending.is_empty() {
                    "-".into()
                } else {
                    s.pending.join(",")
                },
            ]
        })
        .collect();
    table(
        &[
            "NETWORK", "NAME", "VIP", "PORTS", "CHECK", "HEALTHY", "PENDING",
        ],
        &rows,
    )
}

/// How long ago `t` was, in words (`3s ago`, `-` for never).
fn age(now_ms: u64, t: Option<u64>) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let s = now_ms.saturating_sub(t) / 1000;
            match s {
                0..120 => format!("{s}s ago"),
                120..7200 => format!("{}m ago", s / 60),
                _ => format!("{}h ago", s / 3600),
            }
        }
    }
}

fn show_text(info: &ServiceInfo, now_ms: u64) -> String {
    let mut s = summary(info);
    if info.instances.is_empty() {
        s.push_str("no instances: consumers do not list it\n");
    } else {
        let rows: Vec<Vec<String>> = info
            .instances
            .iter()
            .map(|i| {
                vec![
                    i.node.clone(),
                    i.addr.to_string(),
                    i.health.to_string(),
                    age(now_ms, i.checked_ms),
                    if i.online { "yes" } else { "no" }.into(),
                    i.detail.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        s.push_str(&table(
            &["NODE", "ADDRESS", "HEALTH", "CHECKED", "ONLINE", "DETAIL"],
            &rows,
        ));
    }
    for p in &info.pending {
        s.push_str(&format!(
            "pending: {} offers it; approve with: weft admin service approve {} --network {} --node {}\n",
            safe(p),
            safe(&info.name),
            safe(&info.network),
            safe(p)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use weft_proto::service::{AdminInstance, ServiceProto};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ServiceCmd,
    }

    fn parse(args: &[&str]) -> Result<ServiceCmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("service").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn create_takes_lists_and_checks_ports_and_health_early() {
        let ServiceCmd::Create(a) = parse(&[
            "create",
            "db",
            "--network",
            "prod",
            "--node",
            "db1,db2",
            "--node",
            "db3",
            "--port",
            "5432/tcp,53/udp",
            "--health",
            "http:/healthz",
            "--replace",
        ])
        .unwrap() else {
            panic!("not create")
        };
        assert_eq!(a.nodes, ["db1", "db2", "db3"]);
        assert_eq!(a.ports.len(), 2);
        assert_eq!(a.ports[1].proto, ServiceProto::Udp);
        assert_eq!(
            a.health,
            HealthCheck::Http {
                path: "/healthz".into()
            }
        );
        assert!(a.replace);
        let ServiceCmd::Create(a) = parse(&[
            "create",
            "db",
            "--network",
            "p",
            "--node",
            "a",
            "--port",
            "5432",
        ])
        .unwrap() else {
            panic!("not create")
        };
        assert_eq!(a.health, HealthCheck::Tcp);
        for bad in [
            vec![
                "create",
                "db",
                "--network",
                "p",
                "--node",
                "a",
                "--port",
                "0",
            ],
            vec![
                "create",
                "db",
                "--network",
                "p",
                "--node",
                "a",
                "--port",
                "53/icmp",
            ],
            vec![
                "create",
                "db",
                "--network",
                "p",
                "--node",
                "a",
                "--port",
                "5432",
                "--health",
                "grpc",
            ],
            vec!["create", "db", "--network", "p", "--port", "5432"],
            vec!["create", "db", "--node", "a", "--port", "5432"],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decisions_need_a_node_and_show_takes_an_optional_network() {
        assert!(parse(&["approve", "db"]).is_err());
        let ServiceCmd::Reject(a) = parse(&["reject", "db", "--node", "n1"]).unwrap() else {
            panic!("not reject")
        };
        assert_eq!((a.name.as_str(), a.node.as_str()), ("db", "n1"));
        assert!(a.network.is_none());
        assert!(matches!(
            parse(&["show", "db", "--network", "prod"]).unwrap(),
            ServiceCmd::Show {
                network: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn show_lists_instances_with_health_age_and_pending_offers() {
        let info = ServiceInfo {
            name: "db".into(),
            network: "prod".into(),
            vip: "100.127.255.1".parse().unwrap(),
            fqdn: "db.svc.prod.weft.internal".into(),
            ports: parse_ports("5432/tcp").unwrap(),
            health: HealthCheck::Tcp,
            instances: vec![AdminInstance {
                node: "db1".into(),
                addr: "100.64.0.2".parse().unwrap(),
                health: Health::Unhealthy,
                checked_ms: Some(95_000),
                detail: Some("connection refused".into()),
                online: true,
            }],
            pending: vec!["db3".into()],
            version: 4,
        };
        let s = show_text(&info, 100_000);
        assert!(
            s.contains("VIP 100.127.255.1 (db.svc.prod.weft.internal)"),
            "{s}"
        );
        assert!(s.contains("unhealthy"), "{s}");
        assert!(s.contains("5s ago"), "{s}");
        assert!(s.contains("connection refused"), "{s}");
        assert!(
            s.contains("weft admin service approve db --network prod --node db3"),
            "{s}"
        );
        assert_eq!(age(10_000_000, Some(0)), "2h ago");
        assert_eq!(age(0, None), "-");
    }
}
