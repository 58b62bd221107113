//! The configured consumers (`STATE_DIR/service-consumers.json`, 0600,
//! written atomically), their checks, and which service of the map each one
//! reaches. Pure apart from the file.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};
use weft_proto::service::{ConsumeMode, Consumer, ServiceProto, ServiceView, check_service_name};

/// The file, in the state directory.
pub(crate) const FILE: &str = "service-consumers.json";

/// Most consumers on one node.
pub(crate) const MAX_CONSUMERS: usize = 256;

/// The file's form.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    consumers: Vec<Consumer>,
}

/// The consumers in the file; `Ok(empty)`: no file. A file that does not
/// parse, or holds a consumer `weft service listen|intercept` would refuse, is
/// an error naming it and what to do (the file is left as it is).
pub(crate) fn load(dir: &Path) -> Result<Vec<Consumer>, String> {
    const WHAT_TO_DO: &str = "no service listener or interception runs and none can be added or \
         removed; move the file aside (or fix it) and restart weftd, then add the consumers \
         again with `weft service listen|intercept`";
    let path = dir.join(FILE);
    let damaged = |why: String| crate::state_file::damaged(&path, &why, WHAT_TO_DO);
    let Some(saved) = crate::state_file::load::<Saved>(&path, WHAT_TO_DO)? else {
        return Ok(Vec::new());
    };
    if saved.consumers.len() > MAX_CONSUMERS {
        return Err(damaged(format!(
            "{} consumers, at most {MAX_CONSUMERS}",
            saved.consumers.len()
        )));
    }
    for (i, c) in saved.consumers.iter().enumerate() {
        check(c).map_err(&damaged)?;
        if let Some(other) = saved.consumers[..i].iter().find(|o| same_place(o, c)) {
            return Err(damaged(format!(
                "{} and {} use the same address",
                label(other),
                label(c)
            )));
        }
    }
    Ok(saved.consumers)
}

/// Writes `consumers` (0600, atomically; blocking: call off the runtime).
pub(crate) fn save(dir: &Path, consumers: &[Consumer]) -> Result<(), String> {
    crate::state_file::save(
        &dir.join(FILE),
        &Saved {
            consumers: consumers.to_vec(),
        },
    )
}

/// `db listen 127.0.0.1:15432` / `db (network prod) intercept 10.1.2.3:5432`.
pub(crate) fn label(c: &Consumer) -> String {
    let net = c
        .network
        .as_deref()
        .map_or(String::new(), |n| format!(" (network {n})"));
    let port = c.port.map_or(String::new(), |p| format!(" port {p}"));
    match &c.mode {
        ConsumeMode::Listen { listen } => format!("{}{net} listen {listen}{port}", c.service),
        ConsumeMode::Intercept { original } => {
            format!("{}{net} intercept {original}{port}", c.service)
        }
    }
}

/// Whether two consumers take the same local address or original
/// destination (there can be one consumer per address).
pub(crate) fn same_place(a: &Consumer, b: &Consumer) -> bool {
    match (&a.mode, &b.mode) {
        (ConsumeMode::Listen { listen: x }, ConsumeMode::Listen { listen: y }) => x == y,
        (ConsumeMode::Intercept { original: x }, ConsumeMode::Intercept { original: y }) => x == y,
        _ => false,
    }
}

/// Checks what a consumer names: a service name, a network name when given,
/// a port when given, a listen address with a port, an original destination
/// that is an IPv4 address a host could send to (not loopback, unspecified,
/// multicast or broadcast) with a port.
pub(crate) fn check(c: &Consumer) -> Result<(), String> {
    check_service_name(&c.service).map_err(|e| e.to_string())?;
    if let Some(n) = &c.network
        && (n.is_empty() || n.len() > 63 || n.chars().any(|ch| ch.is_control()))
    {
        return Err(format!("invalid network name {n:?}"));
    }
    if c.port == Some(0) {
        return Err("port 0 is not a service port".into());
    }
    match &c.mode {
        ConsumeMode::Listen { listen } => {
            if listen.port() == 0 {
                return Err(format!(
                    "listen address {listen} has no port: give ADDR:PORT, e.g. 127.0.0.1:15432"
                ));
            }
        }
        ConsumeMode::Intercept { original } => check_original(*original)?,
    }
    Ok(())
}

fn check_original(original: SocketAddr) -> Result<(), String> {
    let IpAddr::V4(ip) = original.ip() else {
        return Err(format!(
            "cannot intercept {original}: interception is IPv4 only"
        ));
    };
    if original.port() == 0 {
        return Err(format!(
            "original destination {original} has no port: give IP:PORT, e.g. 10.1.2.3:5432"
        ));
    }
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Err(format!(
            "cannot intercept {ip}: give the address applications send to (not loopback, \
             unspecified, multicast or broadcast); for a local address use `weft service listen`"
        ));
    }
    Ok(())
}

/// Where a consumer goes: its service as the map lists it and the TCP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) view: ServiceView,
    pub(crate) port: u16,
}

/// The service `c` names in `services` (the map's), with the port to reach:
/// by name, in `c.network` when given, else the only network that has one of
/// that name; the port `c.port` (one of the service's TCP ports) or the
/// service's first TCP port. Listeners and interception carry TCP only.
pub(crate) fn resolve(c: &Consumer, services: &[ServiceView]) -> Result<Target, String> {
    let found: Vec<&ServiceView> = services
        .iter()
        .filter(|s| s.name == c.service && c.network.as_ref().is_none_or(|n| *n == s.network))
        .collect();
    let view = match found.as_slice() {
        [] => {
            let net = c
                .network
                .as_deref()
                .map_or(String::new(), |n| format!(" in network {n}"));
            return Err(format!(
                "service {}{net} is not in this node's map: the controller has no such service, \
                 or the policy does not let this node reach any of its instances \
                 (`weft service list` shows what this node may use)",
                c.service
            ));
        }
        [one] => *one,
        many => {
            let nets: Vec<&str> = many.iter().map(|s| s.network.as_str()).collect();
            return Err(format!(
                "service {} exists in networks {}: name one with --network",
                c.service,
                nets.join(", ")
            ));
        }
    };
    let tcp: Vec<u16> = view
        .ports
        .iter()
        .filter(|p| p.proto == ServiceProto::Tcp)
        .map(|p| p.port)
        .collect();
    let port = match c.port {
        Some(p) if tcp.contains(&p) => p,
        Some(p) => {
            let ports: Vec<String> = view.ports.iter().map(ToString::to_string).collect();
            return Err(format!(
                "service {} has no TCP port {p} (its ports: {}); listeners and interception \
                 carry TCP only",
                c.service,
                ports.join(", ")
            ));
        }
        None => *tcp.first().ok_or_else(|| {
            format!(
                "service {} has no TCP port; listeners and interception carry TCP only",
                c.service
            )
        })?,
    };
    Ok(Target {
        view: view.clone(),
        port,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::net::Ipv4Addr;
    use std::os::unix::fs::PermissionsExt as _;

    use weft_proto::NodeKey;
    use weft_proto::service::{Health, ServiceInstance, parse_ports, service_fqdn};

    use super::*;

    pub(crate) fn view(name: &str, network: &str, ports: &str) -> ServiceView {
        ServiceView {
            name: name.into(),
            network: network.into(),
            vip: Ipv4Addr::new(100, 127, 255, 1),
            fqdn: service_fqdn(name, network, "weft.internal"),
            ports: parse_ports(ports).unwrap(),
            instances: vec![ServiceInstance {
                node_key: NodeKey::from_bytes([1; 32]),
                node: "db1".into(),
                addr: Ipv4Addr::new(100, 64, 0, 1),
                health: Health::Healthy,
                checked_ms: None,
            }],
        }
    }

    fn listen(service: &str, addr: &str) -> Consumer {
        Consumer {
            service: service.into(),
            network: None,
            mode: ConsumeMode::Listen {
                listen: addr.parse().unwrap(),
            },
            port: None,
        }
    }

    fn intercept(service: &str, addr: &str) -> Consumer {
        Consumer {
            mode: ConsumeMode::Intercept {
                original: addr.parse().unwrap(),
            },
            ..listen(service, "127.0.0.1:1")
        }
    }

    #[test]
    fn consumers_survive_a_restart_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Ok(vec![]));
        let cs = vec![
            listen("db", "127.0.0.1:15432"),
            intercept("db", "10.1.2.3:5432"),
        ];
        save(dir.path(), &cs).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(dir.path()).unwrap(), cs);
    }

    #[test]
    fn a_damaged_file_is_named_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, b"{\"consumers\": [").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.contains("service-consumers.json is damaged"), "{err}");
        assert!(err.contains("move the file aside"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"consumers\": [");
        // A consumer the command would refuse is damage too, and so are two
        // consumers on one address.
        save(dir.path(), &[intercept("db", "127.0.0.1:5432")]).unwrap();
        assert!(load(dir.path()).unwrap_err().contains("not loopback"));
        save(
            dir.path(),
            &[listen("db", "127.0.0.1:1"), listen("web", "127.0.0.1:1")],
        )
        .unwrap();
        assert!(load(dir.path()).unwrap_err().contains("same address"));
    }

    #[test]
    fn checks_refuse_what_cannot_work() {
        assert!(check(&listen("db", "127.0.0.1:15432")).is_ok());
        assert!(check(&listen("DB", "127.0.0.1:15432")).is_err());
        assert!(check(&listen("db", "127.0.0.1:0")).is_err());
        assert!(check(&intercept("db", "10.1.2.3:5432")).is_ok());
        for bad in ["[fd00::1]:5432", "10.1.2.3:0", "0.0.0.0:1", "224.0.0.1:1"] {
            assert!(check(&intercept("db", bad)).is_err(), "{bad}");
        }
        let mut c = listen("db", "127.0.0.1:1");
        c.port = Some(0);
        assert!(check(&c).is_err());
    }

    #[test]
    fn resolve_finds_the_service_and_its_tcp_port() {
        let services = vec![
            view("db", "prod", "53/udp,5432/tcp,5433"),
            view("db", "dev", "5432"),
            view("dns", "prod", "53/udp"),
        ];
        let mut c = listen("db", "127.0.0.1:1");
        let e = resolve(&c, &services).unwrap_err();
        assert!(
            e.contains("networks prod, dev: name one with --network"),
            "{e}"
        );
        c.network = Some("prod".into());
        let t = resolve(&c, &services).unwrap();
        assert_eq!((t.view.network.as_str(), t.port), ("prod", 5432));
        c.port = Some(5433);
        assert_eq!(resolve(&c, &services).unwrap().port, 5433);
        c.port = Some(53);
        let e = resolve(&c, &services).unwrap_err();
        assert!(e.contains("no TCP port 53"), "{e}");
        let e = resolve(&listen("dns", "127.0.0.1:1"), &services).unwrap_err();
        assert!(e.contains("carry TCP only"), "{e}");
        let e = resolve(&listen("web", "127.0.0.1:1"), &services).unwrap_err();
        assert!(e.contains("not in this node's map"), "{e}");
    }

    #[test]
    fn labels_and_places() {
        let a = listen("db", "127.0.0.1:15432");
        assert_eq!(label(&a), "db listen 127.0.0.1:15432");
        let mut b = intercept("db", "10.1.2.3:5432");
        b.network = Some("prod".into());
        assert_eq!(label(&b), "db (network prod) intercept 10.1.2.3:5432");
        assert!(same_place(&a, &listen("web", "127.0.0.1:15432")));
        assert!(!same_place(&a, &b));
    }
}
