//! Named services on the agent side (issue 19): what the map's `services`
//! and `provides` turn into besides DNS names (`weft_dns::zone`) and VIP
//! routes (`netmap::derive`):
//!
//! - the health checker of the services this node provides
//!   ([`check`], [`tasks`]): every [`HEALTH_INTERVAL_MS`] against this
//!   node's own overlay address in the service's network, first TCP port
//!   (TCP connect, or HTTP `GET` wanting 2xx/3xx; `none` is always healthy),
//!   the verdict flipping after [`HEALTH_THRESHOLD`] consecutive results,
//!   reported to the controller on a flip, every 30 s and on every new
//!   controller connection; a report that fails is retried and shown in
//!   `weft status` (area `services`);
//! - `weft service list` ([`local_services`]) and `weft service advertise`
//!   ([`advertise`]).
//!
//! [`HEALTH_INTERVAL_MS`]: weft_proto::service::HEALTH_INTERVAL_MS
//! [`HEALTH_THRESHOLD`]: weft_proto::service::HEALTH_THRESHOLD

mod check;
mod tasks;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_proto::local::{FailureStatus, LocalResponse};
use weft_proto::netmap::NetworkMap;
use weft_proto::service::{
    AdvertiseServiceRequest, ConsumerStatus, LocalProvidedStatus, LocalServiceStatus,
    LocalServices, ServiceView,
};

use crate::ctl::{self, LinkState};
use crate::state::Credential;
use check::Target;
use tasks::Checked;

/// The longest `weft service advertise` waits for the controller.
const ADVERTISE_TIMEOUT: Duration = Duration::from_secs(15);

/// The running checker and reporter (the supervisor holds it for the
/// agent's life; dropping it stops both).
pub(crate) struct Services {
    targets: watch::Sender<Vec<Target>>,
    checked: watch::Receiver<Checked>,
    link: watch::Sender<tasks::LinkInfo>,
    failures: watch::Receiver<Vec<FailureStatus>>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Services {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Services {
    /// Starts the checker (idle until a map lists provided services) and the
    /// reporter (silent until [`Services::set_link`]).
    pub(crate) fn start() -> Self {
        let (targets, targets_rx) = watch::channel(Vec::new());
        let (checked_tx, checked) = watch::channel(Checked::default());
        let (link, link_rx) = watch::channel(None);
        let (failures_tx, failures) = watch::channel(Vec::new());
        let checker = tokio::spawn(tasks::checker(targets_rx, checked_tx));
        let reporter = tokio::spawn(tasks::reporter(link_rx, checked.clone(), failures_tx));
        Self {
            targets,
            checked,
            link,
            failures,
            tasks: [checker, reporter],
        }
    }

    /// The provided services to check from now on (`None`: none, after `weft
    /// down`).
    pub(crate) fn set_map(&self, map: Option<&NetworkMap>) {
        let targets = map.map(targets_of).unwrap_or_default();
        self.targets.send_if_modified(|old| {
            let changed = *old != targets;
            *old = targets;
            changed
        });
    }

    /// Where to report (the node's credential and its link's state), or
    /// `None`: not joined, or down. A new connection gets a report at once.
    pub(crate) fn set_link(&self, link: Option<(&Credential, &watch::Receiver<LinkState>)>) {
        self.link
            .send_replace(link.map(|(c, s)| (c.clone(), s.clone())));
    }

    /// For `weft status`: a health report the controller did not take.
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        self.failures.borrow().clone()
    }

    /// The provided services with their local check's state.
    pub(crate) fn provided(&self, map: Option<&NetworkMap>) -> Vec<LocalProvidedStatus> {
        let checked = self.checked.borrow();
        provided_status(map, &checked.verdicts)
    }
}

/// What the checker checks for `map`: every provided service, on this
/// node's address in its network.
fn targets_of(map: &NetworkMap) -> Vec<Target> {
    map.provides
        .iter()
        .map(|p| Target {
            service: p.clone(),
            addr: map
                .networks
                .iter()
                .find(|n| n.name == p.network)
                .map(|n| n.ipv4),
        })
        .collect()
}

fn provided_status(
    map: Option<&NetworkMap>,
    verdicts: &tasks::Verdicts,
) -> Vec<LocalProvidedStatus> {
    let Some(map) = map else {
        return Vec::new();
    };
    map.provides
        .iter()
        .map(|p| {
            let v = verdicts
                .get(&(p.network.clone(), p.name.clone()))
                .cloned()
                .unwrap_or_default();
            LocalProvidedStatus {
                service: p.clone(),
                health: v.health,
                checked_ms: v.checked_ms,
                detail: v.detail,
            }
        })
        .collect()
}

/// The consumers' statuses by the service they reach, `(network, name)`,
/// and those whose service the map does not list.
pub(crate) type ConsumersByService = (
    BTreeMap<(String, String), Vec<ConsumerStatus>>,
    Vec<ConsumerStatus>,
);

/// `weft service list`: the services `map` lets this node use, whether each
/// VIP is routed (`routed`), the consumers configured for each, and the
/// provided services with their local check (`provides`). A consumer whose
/// service is not listed is an orphan.
pub(crate) fn local_services(
    map: Option<&NetworkMap>,
    routed: impl Fn(&ServiceView) -> bool,
    consumers: ConsumersByService,
    provides: Vec<LocalProvidedStatus>,
) -> LocalServices {
    let (mut by_service, mut orphans) = consumers;
    let mut services: Vec<LocalServiceStatus> = map
        .map(|m| m.services.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| LocalServiceStatus {
            vip_routed: routed(s),
            consumers: by_service
                .remove(&(s.network.clone(), s.name.clone()))
                .unwrap_or_default(),
            service: s.clone(),
        })
        .collect();
    services.sort_by(|a, b| {
        (&a.service.network, &a.service.name).cmp(&(&b.service.network, &b.service.name))
    });
    orphans.extend(by_service.into_values().flatten());
    LocalServices {
        services,
        provides,
        orphans,
    }
}

/// `weft service advertise`: checks the request and forwards it to the
/// controller with the node's credential; answers the controller's message.
pub(crate) async fn advertise(
    cred: Option<Credential>,
    req: AdvertiseServiceRequest,
) -> LocalResponse {
    let bad = |m: String| LocalResponse::Error {
        code: "bad_request".into(),
        message: m,
    };
    if let Err(e) = weft_proto::service::check_service_name(&req.name) {
        return bad(e.to_string());
    }
    if !req.ports.is_empty()
        && let Err(e) = weft_proto::service::check_ports(&req.ports)
    {
        return bad(e.to_string());
    }
    if let Err(e) = req.health.check() {
        return bad(e.to_string());
    }
    let Some(cred) = cred else {
        return LocalResponse::Error {
            code: "not_joined".into(),
            message: "this node has not joined a controller yet: weft up --controller URL \
                      --token-file FILE, then advertise again"
                .into(),
        };
    };
    let client = match ctl::client_for(&cred) {
        Ok(c) => c,
        Err(e) => {
            return LocalResponse::Error {
                code: "controller".into(),
                message: format!("cannot reach the controller: {e:#}"),
            };
        }
    };
    match tokio::time::timeout(ADVERTISE_TIMEOUT, client.advertise_service(&req)).await {
        Ok(Ok(answer)) => LocalResponse::Ok {
            status: None,
            message: format!("{}: {}", answer.state, answer.message),
        },
        Ok(Err(e)) => LocalResponse::Error {
            code: match e.status() {
                Some(404) => "unsupported".into(),
                Some(s) if (400..500).contains(&s) => "refused".into(),
                _ => "controller".into(),
            },
            message: match e.status() {
                Some(404) => format!(
                    "the controller does not know service advertisements ({e}): upgrade it, \
                     or ask an admin to run weft admin service create"
                ),
                Some(s) if (400..500).contains(&s) => {
                    format!("the controller refused the advertisement: {e}")
                }
                _ => format!(
                    "the advertisement did not reach the controller: {e}; check `weft status` \
                     (controller link) and try again"
                ),
            },
        },
        Err(_) => LocalResponse::Error {
            code: "controller".into(),
            message: format!(
                "the controller did not answer within {} s; check `weft status` (controller \
                 link) and try again",
                ADVERTISE_TIMEOUT.as_secs()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use weft_proto::NodeKey;
    use weft_proto::service::{
        ConsumeMode, Consumer, Health, HealthCheck, ProvidedService, ServiceInstance,
    };

    fn view(name: &str, network: &str, last: u8) -> ServiceView {
        ServiceView {
            name: name.into(),
            network: network.into(),
            vip: Ipv4Addr::new(100, 127, 255, last),
            fqdn: format!("{name}.svc.{network}.weft.internal"),
            ports: vec!["5432/tcp".parse().unwrap()],
            instances: vec![ServiceInstance {
                node_key: NodeKey::from_bytes([last; 32]),
                node: "db1".into(),
                addr: Ipv4Addr::new(100, 64, 0, last),
                health: Health::Healthy,
                checked_ms: None,
            }],
        }
    }

    fn consumer(service: &str) -> ConsumerStatus {
        ConsumerStatus {
            consumer: Consumer {
                service: service.into(),
                network: None,
                mode: ConsumeMode::Listen {
                    listen: "127.0.0.1:15432".parse().unwrap(),
                },
                port: None,
            },
            active: true,
            streams_total: 0,
            streams_open: 0,
            bytes: 0,
            error: None,
        }
    }

    fn map() -> NetworkMap {
        let mut m = NetworkMap {
            api_version: weft_proto::api::API_VERSION,
            version: 1,
            node: weft_proto::netmap::SelfNode {
                node_key: NodeKey::from_bytes([9; 32]),
                name: "web".into(),
                tags: vec![],
            },
            networks: vec![],
            relays: vec![],
            policy: None,
            data: vec![],
            secrets: vec![],
            host_firewall: None,
            dns_blocklist: None,
            services: vec![],
            provides: vec![],
            ssh_hosts: vec![],
        };
        m.services = vec![
            view("web", "prod", 2),
            view("db", "prod", 1),
            view("db", "dev", 3),
        ];
        m.provides = vec![ProvidedService {
            name: "cache".into(),
            network: "prod".into(),
            ports: vec!["6379/tcp".parse().unwrap()],
            health: HealthCheck::Tcp,
        }];
        m
    }

    #[test]
    fn the_list_is_sorted_routed_and_carries_consumers_and_orphans() {
        let m = map();
        let mut by = BTreeMap::new();
        by.insert(("prod".to_owned(), "db".to_owned()), vec![consumer("db")]);
        by.insert(
            ("prod".to_owned(), "gone".to_owned()),
            vec![consumer("gone")],
        );
        let l = local_services(
            Some(&m),
            |s| s.network == "prod",
            (by, vec![consumer("old")]),
            Vec::new(),
        );
        let names: Vec<(&str, &str, bool)> = l
            .services
            .iter()
            .map(|s| {
                (
                    s.service.network.as_str(),
                    s.service.name.as_str(),
                    s.vip_routed,
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("dev", "db", false),
                ("prod", "db", true),
                ("prod", "web", true)
            ]
        );
        assert_eq!(l.services[1].consumers.len(), 1);
        let orphans: Vec<&str> = l
            .orphans
            .iter()
            .map(|c| c.consumer.service.as_str())
            .collect();
        assert_eq!(orphans, ["old", "gone"]);
        let empty = local_services(None, |_| true, Default::default(), Vec::new());
        assert_eq!(empty, LocalServices::default());
    }

    #[test]
    fn provided_services_show_their_local_verdict_and_targets_use_our_address() {
        let m = map();
        let mut verdicts = tasks::Verdicts::new();
        let mut v = check::Verdict::default();
        v.record(Err("connecting: refused".into()), 5);
        v.record(Err("connecting: refused".into()), 6);
        verdicts.insert(("prod".into(), "cache".into()), v);
        let p = provided_status(Some(&m), &verdicts);
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].health, p[0].checked_ms, p[0].detail.as_deref()),
            (Health::Unhealthy, Some(6), Some("connecting: refused"))
        );
        // Not checked yet: unknown.
        let p = provided_status(Some(&m), &tasks::Verdicts::new());
        assert_eq!((p[0].health, p[0].checked_ms), (Health::Unknown, None));
        // The map has no network `prod`: no address to check.
        assert_eq!(targets_of(&m)[0].addr, None);
    }

    #[tokio::test]
    async fn advertising_checks_the_request_and_needs_a_join() {
        let req = |name: &str| AdvertiseServiceRequest {
            name: name.into(),
            network: None,
            ports: vec!["5432/tcp".parse().unwrap()],
            health: HealthCheck::Tcp,
        };
        let LocalResponse::Error { code, .. } = advertise(None, req("Bad Name")).await else {
            panic!("accepted a bad name")
        };
        assert_eq!(code, "bad_request");
        let LocalResponse::Error { code, message } = advertise(None, req("db")).await else {
            panic!("advertised without a credential")
        };
        assert_eq!(code, "not_joined");
        assert!(message.contains("weft up"), "{message}");
        // The controller's answer, or its refusal, in words.
        let url = crate::stand_in::controller(|head, body| {
            assert!(head.starts_with("POST /v1/node/services/advertise "), "{head}");
            if body.contains(r#""name":"db""#) {
                (
                    200,
                    r#"{"state":"pending","message":"an admin runs weft admin service approve db --node web"}"#
                        .into(),
                )
            } else {
                (
                    409,
                    r#"{"error":{"code":"ports","message":"the service has other ports"}}"#.into(),
                )
            }
        })
        .await;
        let cred = || Some(crate::stand_in::joined(&url));
        let LocalResponse::Ok { message, .. } = advertise(cred(), req("db")).await else {
            panic!("not answered")
        };
        assert_eq!(
            message,
            "pending: an admin runs weft admin service approve db --node web"
        );
        let LocalResponse::Error { code, message } = advertise(cred(), req("cache")).await else {
            panic!("a refusal was not an error")
        };
        assert_eq!(code, "refused");
        assert!(message.contains("other ports"), "{message}");
    }
}
