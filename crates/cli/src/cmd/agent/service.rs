//! `weft service list` and `weft service advertise`: the named services this
//! node may use and provides, through the agent. (`weft service listen` and
//! `intercept` are in [`super::consume`].)

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use weft_proto::local::{LocalRequest, LocalResponse};
use weft_proto::service::{
    AdvertiseServiceRequest, ConsumeMode, ConsumerStatus, HealthCheck, LocalServices, ServicePort,
};

use super::{SocketArg, call};
use crate::CodedError;
use crate::cmd::format::{datetime, out, safe, table};

/// `weft service ...`.
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Show the services this node may use (name, DNS name, virtual IP,
    /// ports, instances with their health, whether the VIP is routed), the
    /// listeners and interceptions configured for them, and the services
    /// this node provides with its local health check. Only services the
    /// policy lets this node use are listed (the others do not resolve).
    List,
    /// Offer to provide a service from this node (the controller keeps it
    /// pending until an admin runs `weft admin service approve NAME --node
    /// THIS_NODE`), or withdraw the offer with --withdraw. Once approved, this
    /// agent checks the local instance every second on its own overlay
    /// address and reports its health.
    Advertise(AdvertiseArgs),
    /// Consume a service through a local TCP listener: weftd listens on
    /// ADDR:PORT (e.g. 127.0.0.1:15432) and carries each stream over the
    /// overlay to a healthy instance (for hosts where the route to the
    /// virtual IP is unwanted). TCP only. Kept across restarts; --remove
    /// stops it.
    Listen(super::consume::ListenArgs),
    /// Transparently intercept TCP connections to ORIGINAL_IP:PORT (an
    /// address applications already use) made on or forwarded through this
    /// host, and carry them to the service (nft TPROXY into weftd). IPv4 and
    /// TCP only. Kept across restarts; --remove stops it.
    Intercept(super::consume::InterceptArgs),
}

/// `weft service advertise` options.
#[derive(Debug, Args)]
pub struct AdvertiseArgs {
    /// The service's name (a DNS label: lowercase letters, digits, '-').
    pub name: String,
    /// The ports: PORT[/tcp|/udp][,...], for example `5432` or
    /// `5432/tcp,5433/tcp`. The service listens on them on this node's
    /// overlay address; consumers reach the same ports on its virtual IP.
    #[arg(long, value_name = "PORTS", value_parser = parse_ports,
          required_unless_present = "withdraw")]
    pub port: Option<PortList>,
    /// The network (needed when this node is in several).
    #[arg(long)]
    pub network: Option<String>,
    /// How this agent checks the local instance: `tcp` (connect to the first
    /// TCP port), `http:/PATH` (GET PATH, healthy on 2xx/3xx) or `none`.
    #[arg(long, value_name = "CHECK", default_value = "tcp", value_parser = parse_health)]
    pub health: HealthCheck,
    /// Withdraw the offer (and stop being an instance).
    #[arg(long, conflicts_with = "port")]
    pub withdraw: bool,
}

/// A parsed `--port` list (one clap value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(pub Vec<ServicePort>);

fn parse_ports(s: &str) -> Result<PortList, String> {
    weft_proto::service::parse_ports(s)
        .map(PortList)
        .map_err(|e| e.to_string())
}

fn parse_health(s: &str) -> Result<HealthCheck, String> {
    s.parse()
        .map_err(|e: weft_proto::service::ServiceError| e.to_string())
}

/// Runs `weft service ...`.
pub fn service(sock: &SocketArg, cmd: ServiceCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        ServiceCmd::List => list(sock, json),
        ServiceCmd::Advertise(a) => advertise(sock, a, json),
        ServiceCmd::Listen(a) => super::consume::listen(sock, a, json),
        ServiceCmd::Intercept(a) => super::consume::intercept(sock, a, json),
    }
}

/// The agent's [`LocalServices`].
pub(crate) fn fetch(sock: &SocketArg) -> anyhow::Result<LocalServices> {
    match call(&sock.socket, &LocalRequest::Services)? {
        LocalResponse::Services(s) => Ok(*s),
        LocalResponse::Error { code, message } => Err(CodedError { code, message }.into()),
        _ => bail!("the agent does not serve services (upgrade weftd)"),
    }
}

fn list(sock: &SocketArg, json: bool) -> anyhow::Result<ExitCode> {
    let services = fetch(sock)?;
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&services)?));
    } else {
        out(&render(&services));
    }
    Ok(ExitCode::SUCCESS)
}

fn advertise(sock: &SocketArg, a: AdvertiseArgs, json: bool) -> anyhow::Result<ExitCode> {
    weft_proto::service::check_service_name(&a.name)?;
    let req = AdvertiseServiceRequest {
        name: a.name,
        network: a.network,
        ports: if a.withdraw {
            Vec::new()
        } else {
            a.port.map(|p| p.0).unwrap_or_default()
        },
        health: a.health,
    };
    match call(&sock.socket, &LocalRequest::ServiceAdvertise(req))? {
        LocalResponse::Ok { message, .. } => {
            if json {
                out(&format!("{}\n", serde_json::json!({ "message": message })));
            } else {
                out(&format!("{}\n", safe(&message)));
            }
            Ok(ExitCode::SUCCESS)
        }
        LocalResponse::Error { code, message } => Err(CodedError { code, message }.into()),
        _ => bail!("the agent answered a different question (upgrade weftd)"),
    }
}

/// What a consumer is, in words: `listen 127.0.0.1:15432` or `intercept
/// 10.1.2.3:5432`, with its port when not the first.
pub(crate) fn consumer_mode(c: &ConsumerStatus) -> String {
    let mut s = match &c.consumer.mode {
        ConsumeMode::Listen { listen } => format!("listen {listen}"),
        ConsumeMode::Intercept { original } => format!("intercept {original}"),
    };
    if let Some(p) = c.consumer.port {
        let _ = write!(s, " -> port {p}");
    }
    s
}

fn consumer_line(c: &ConsumerStatus) -> String {
    let state = match (&c.error, c.active) {
        (Some(e), _) => format!("failing: {e}"),
        (None, true) => "active".to_owned(),
        (None, false) => "inactive".to_owned(),
    };
    format!(
        "{}  {state}; {} streams ({} open), {} bytes",
        consumer_mode(c),
        c.streams_total,
        c.streams_open,
        c.bytes
    )
}

/// Human output of `weft service list`.
pub(crate) fn render(s: &LocalServices) -> String {
    let mut o = String::new();
    if s.services.is_empty() {
        o.push_str("no services this node may use\n");
    } else {
        let rows: Vec<Vec<String>> = s
            .services
            .iter()
            .map(|st| {
                let v = &st.service;
                let ports: Vec<String> = v.ports.iter().map(ToString::to_string).collect();
                let instances: Vec<String> = v
                    .instances
                    .iter()
                    .map(|i| format!("{} {} {}", i.node, i.addr, i.health))
                    .collect();
                vec![
                    v.name.clone(),
                    v.fqdn.clone(),
                    if st.vip_routed {
                        v.vip.to_string()
                    } else {
                        format!("{} (not routed)", v.vip)
                    },
                    ports.join(","),
                    instances.join(", "),
                ]
            })
            .collect();
        o.push_str(&table(
            &["SERVICE", "NAME", "VIP", "PORTS", "INSTANCES"],
            &rows,
        ));
        for st in &s.services {
            for c in &st.consumers {
                let _ = writeln!(
                    o,
                    "consumer  {}: {}",
                    safe(&st.service.name),
                    safe(&consumer_line(c))
                );
            }
        }
    }
    for c in &s.orphans {
        let _ = writeln!(
            o,
            "consumer  {} (not in the map: removed, or the policy no longer allows it): {}",
            safe(&c.consumer.service),
            safe(&consumer_line(c))
        );
    }
    if !s.provides.is_empty() {
        o.push('\n');
        let rows: Vec<Vec<String>> = s
            .provides
            .iter()
            .map(|p| {
                let ports: Vec<String> = p.service.ports.iter().map(ToString::to_string).collect();
                vec![
                    p.service.name.clone(),
                    p.service.network.clone(),
                    ports.join(","),
                    p.service.health.to_string(),
                    p.health.to_string(),
                    p.checked_ms.map_or_else(|| "-".to_owned(), datetime),
                    p.detail.clone().unwrap_or_default(),
                ]
            })
            .collect();
        o.push_str(&table(
            &[
                "PROVIDES", "NETWORK", "PORTS", "CHECK", "HEALTH", "CHECKED", "DETAIL",
            ],
            &rows,
        ));
    }
    o
}

/// `weft status`'s lines for services: one per service this node may use
/// (name, VIP, healthy instances) and per provided service (its check).
pub(crate) fn render_status(o: &mut String, s: &LocalServices) {
    for st in &s.services {
        let v = &st.service;
        let healthy = v
            .instances
            .iter()
            .filter(|i| i.health == weft_proto::service::Health::Healthy)
            .count();
        let routed = if st.vip_routed { "" } else { ", not routed" };
        let _ = writeln!(
            o,
            "service   {}  {}  {healthy}/{} instances healthy{routed}",
            safe(&v.fqdn),
            v.vip,
            v.instances.len()
        );
    }
    for p in &s.provides {
        let _ = writeln!(
            o,
            "provides  {} ({})  check {}: {}{}",
            safe(&p.service.name),
            safe(&p.service.network),
            p.service.health,
            p.health,
            p.detail
                .as_deref()
                .map(|d| format!(" ({})", safe(d)))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use weft_proto::NodeKey;
    use weft_proto::service::{
        Consumer, Health, LocalProvidedStatus, LocalServiceStatus, ProvidedService,
        ServiceInstance, ServiceView,
    };

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: ServiceCmd,
    }

    #[test]
    fn advertise_parses_ports_and_health_and_withdraw_needs_no_port() {
        let t = T::try_parse_from([
            "t",
            "advertise",
            "db",
            "--port",
            "5432,5433/tcp",
            "--health",
            "http:/healthz",
        ])
        .unwrap();
        let ServiceCmd::Advertise(a) = t.cmd else {
            panic!("not advertise")
        };
        assert_eq!(a.port.unwrap().0.len(), 2);
        assert_eq!(a.health.to_string(), "http:/healthz");
        let t = T::try_parse_from(["t", "advertise", "db", "--withdraw"]).unwrap();
        assert!(matches!(
            t.cmd,
            ServiceCmd::Advertise(AdvertiseArgs { withdraw: true, .. })
        ));
        // A port is needed unless withdrawing; both together are refused.
        assert!(T::try_parse_from(["t", "advertise", "db"]).is_err());
        assert!(T::try_parse_from(["t", "advertise", "db", "--port", "1", "--withdraw"]).is_err());
        assert!(T::try_parse_from(["t", "advertise", "db", "--port", "0"]).is_err());
        assert!(
            T::try_parse_from(["t", "advertise", "db", "--port", "1", "--health", "grpc"]).is_err()
        );
    }

    #[test]
    fn list_shows_instances_health_consumers_and_provided_checks() {
        let s = LocalServices {
            services: vec![LocalServiceStatus {
                service: ServiceView {
                    name: "db".into(),
                    network: "prod".into(),
                    vip: "100.127.255.1".parse().unwrap(),
                    fqdn: "db.svc.prod.weft.internal".into(),
                    ports: vec!["5432/tcp".parse().unwrap()],
                    instances: vec![ServiceInstance {
                        node_key: NodeKey::from_bytes([1; 32]),
                        node: "db1".into(),
                        addr: "100.64.0.2".parse().unwrap(),
                        health: Health::Unhealthy,
                        checked_ms: None,
                    }],
                },
                vip_routed: false,
                consumers: vec![ConsumerStatus {
                    consumer: Consumer {
                        service: "db".into(),
                        network: None,
                        mode: ConsumeMode::Listen {
                            listen: "127.0.0.1:15432".parse().unwrap(),
                        },
                        port: None,
                    },
                    active: true,
                    streams_total: 3,
                    streams_open: 1,
                    bytes: 10,
                    error: None,
                }],
            }],
            provides: vec![LocalProvidedStatus {
                service: ProvidedService {
                    name: "cache".into(),
                    network: "prod".into(),
                    ports: vec!["6379/tcp".parse().unwrap()],
                    health: HealthCheck::Tcp,
                },
                health: Health::Healthy,
                checked_ms: Some(0),
                detail: None,
            }],
            orphans: vec![],
        };
        let text = render(&s);
        assert!(text.contains("db.svc.prod.weft.internal"), "{text}");
        assert!(text.contains("100.127.255.1 (not routed)"), "{text}");
        assert!(text.contains("db1 100.64.0.2 unhealthy"), "{text}");
        assert!(
            text.contains("listen 127.0.0.1:15432  active; 3 streams (1 open)"),
            "{text}"
        );
        assert!(text.contains("cache"), "{text}");
        assert!(text.contains("healthy"), "{text}");
        assert!(render(&LocalServices::default()).contains("no services"));
        let mut o = String::new();
        render_status(&mut o, &s);
        assert_eq!(
            o,
            "service   db.svc.prod.weft.internal  100.127.255.1  0/1 instances healthy, not routed\n\
             provides  cache (prod)  check tcp: healthy\n"
        );
    }
}
