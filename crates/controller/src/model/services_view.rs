//! What the service registry looks like from outside: each node's map lists
//! (services it may use, services it provides), the policy facts of
//! providers, the admin API's views, and which nodes a closing batch really
//! changed.
//!
//! A node's `services`: for every service in a network it is a member of, the
//! approved instances other than itself whose address its compiled policy
//! lets it reach on one of the service's ports (outbound TCP or UDP, from its
//! own address in that network), each with its health; a service is listed
//! only with at least one instance. Its `provides`: the services it is an
//! approved instance of.

use std::collections::BTreeSet;
use std::net::IpAddr;

use weft_policy::{Direction, FiveTuple, Matcher, ServiceFact, tcp_flags};
use weft_proto::service::{
    AdminInstance, Health, ProvidedService, ServiceInfo, ServiceInstance, ServiceList,
    ServiceProto, ServiceView, service_fqdn,
};

use super::services::{NodeLists, ServiceId, no_check};
use super::{NetId, NodeId, NodeState, Touched, World};
use crate::error::ApiError;
use crate::store::Write;
use crate::store::services::{InstanceState, ServiceRecord};

/// The source port of the probe packets the policy is asked about (any
/// ephemeral port: rules name destination ports).
const PROBE_PORT: u16 = 49_152;

impl World {
    /// The services `node` is an approved instance of, as the policy sees
    /// them (its `NodeFacts.services`).
    pub(super) fn service_facts(&self, n: &NodeState) -> Vec<ServiceFact> {
        let mut v: Vec<ServiceFact> = self
            .services
            .provided_by(n.rec.id)
            .filter(|s| n.memberships.contains_key(&s.network_id))
            .filter_map(|s| {
                Some(ServiceFact {
                    name: s.name.clone(),
                    network: self.networks.get(&s.network_id)?.rec.name.clone(),
                    ports: s.ports.clone(),
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.network, &a.name).cmp(&(&b.network, &b.name)));
        v
    }

    /// An instance's health as consumers see it: `Unhealthy` while its
    /// provider is offline; for a service without a check, healthy while
    /// online; else the last report (`Unknown` before one).
    fn instance_health(&self, s: &ServiceRecord, provider: &NodeState) -> Health {
        if !provider.online {
            Health::Unhealthy
        } else if no_check(&s.health, &s.ports) {
            Health::Healthy
        } else {
            self.services
                .health
                .get(&(s.id, provider.rec.id))
                .map_or(Health::Unknown, |r| r.health)
        }
    }

    /// The enabled approved instances of `s` with their address in its
    /// network.
    fn live_instances<'a>(
        &'a self,
        s: &'a ServiceRecord,
    ) -> impl Iterator<Item = (&'a NodeState, std::net::Ipv4Addr)> + 'a {
        self.services.approved(s.id).filter_map(|id| {
            let n = self.nodes.get(&id).filter(|n| !n.rec.disabled)?;
            Some((n, n.memberships.get(&s.network_id)?.ipv4))
        })
    }

    /// What `id`'s map carries about services (empty for a disabled or
    /// missing node).
    pub fn node_service_lists(&self, id: NodeId) -> NodeLists {
        let Some(me) = self.nodes.get(&id).filter(|n| !n.rec.disabled) else {
            return (Vec::new(), Vec::new());
        };
        let mut provides: Vec<ProvidedService> = self
            .services
            .provided_by(id)
            .filter(|s| me.memberships.contains_key(&s.network_id))
            .filter_map(|s| {
                Some(ProvidedService {
                    name: s.name.clone(),
                    network: self.networks.get(&s.network_id)?.rec.name.clone(),
                    ports: s.ports.clone(),
                    health: s.health.clone(),
                })
            })
            .collect();
        provides.sort_by(|a, b| (&a.network, &a.name).cmp(&(&b.network, &b.name)));
        // Indexing a compiled policy costs more than everything else here; a
        // node none of whose networks has a service (the common case) needs
        // no index.
        if !me
            .memberships
            .keys()
            .any(|n| self.services.in_network(*n).next().is_some())
        {
            return (Vec::new(), provides);
        }
        let matcher = match self.node_policy(id).map(|p| Matcher::new(p)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::error!(node = id, error = %e, "a compiled policy does not index; no services listed");
                return (Vec::new(), provides);
            }
            None => return (Vec::new(), provides),
        };
        let mut services = Vec::new();
        for (net_id, m) in &me.memberships {
            let Some(net) = self.networks.get(net_id) else {
                continue;
            };
            let me_addr = IpAddr::V4(m.ipv4);
            for s in self.services.in_network(*net_id) {
                let mut instances: Vec<ServiceInstance> = self
                    .live_instances(s)
                    .filter(|(p, _)| p.rec.id != id)
                    .filter(|(_, addr)| {
                        s.ports.iter().any(|p| {
                            let to = IpAddr::V4(*addr);
                            let t = match p.proto {
                                ServiceProto::Tcp => {
                                    FiveTuple::tcp(me_addr, PROBE_PORT, to, p.port, tcp_flags::SYN)
                                }
                                ServiceProto::Udp => {
                                    FiveTuple::udp(me_addr, PROBE_PORT, to, p.port)
                                }
                            };
                            matcher.evaluate(Direction::Egress, &t).is_allow()
                        })
                    })
                    .map(|(p, addr)| ServiceInstance {
                        node_key: p.rec.node_key,
                        node: p.rec.name.clone(),
                        addr,
                        health: self.instance_health(s, p),
                        checked_ms: None,
                    })
                    .collect();
                if instances.is_empty() {
                    continue;
                }
                instances.sort_by_key(|i| i.node_key);
                services.push(ServiceView {
                    name: s.name.clone(),
                    network: net.rec.name.clone(),
                    vip: s.vip,
                    fqdn: service_fqdn(&s.name, &net.rec.name, &net.rec.dns_domain),
                    ports: s.ports.clone(),
                    instances,
                });
            }
        }
        services.sort_by(|a, b| (&a.network, &a.name).cmp(&(&b.network, &b.name)));
        (services, provides)
    }

    /// `id`'s lists as the last closed batch left them (what deltas carry).
    pub fn service_lists(&self, id: NodeId) -> NodeLists {
        self.services.maps.get(&id).cloned().unwrap_or_default()
    }

    /// Computes every enabled node's lists (at load).
    pub(super) fn compute_all_service_lists(&mut self) {
        let ids: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| !n.rec.disabled)
            .map(|n| n.rec.id)
            .collect();
        self.services.maps = ids
            .into_iter()
            .map(|id| (id, self.node_service_lists(id)))
            .filter(|(_, l)| !l.0.is_empty() || !l.1.is_empty())
            .collect();
    }

    /// The members of the networks where `node` is an approved instance.
    fn provider_audience(&self, node: NodeId, only: Option<NetId>) -> Vec<NodeId> {
        let nets: BTreeSet<NetId> = self
            .services
            .provided_by(node)
            .map(|s| s.network_id)
            .filter(|n| only.is_none_or(|o| o == *n))
            .collect();
        nets.iter()
            .filter_map(|n| self.networks.get(n))
            .flat_map(|n| n.members.iter().copied())
            .collect()
    }

    /// When a batch closes (after the policies are recompiled): recomputes
    /// the lists of the nodes it may have changed (marked by operations,
    /// nodes whose compiled policy changed or that get a fresh snapshot,
    /// and the audience of providers whose name, membership, state or
    /// presence changed) and leaves in `touched.services` exactly those whose
    /// lists changed. Offers of nodes that left the service's network or were
    /// removed are forgotten here (`writes`).
    pub(super) fn refresh_services(
        &mut self,
        touched: &mut Touched,
        policy_changed: &BTreeSet<NodeId>,
        writes: &mut Vec<Write>,
    ) {
        let mut candidates: BTreeSet<NodeId> = std::mem::take(&mut touched.services);
        if self.services.instances.is_empty() && self.services.maps.is_empty() {
            return;
        }
        candidates.extend(policy_changed.iter().copied());
        candidates.extend(touched.resync.iter().copied());
        if !touched.policy_nodes.is_empty() {
            let nodes = &self.nodes;
            let gone = self.services.drop_orphans(
                |node, net| {
                    nodes
                        .get(&node)
                        .is_some_and(|n| n.memberships.contains_key(&net))
                },
                writes,
            );
            for net in gone {
                if let Some(n) = self.networks.get(&net) {
                    candidates.extend(n.members.iter().copied());
                }
            }
            self.services.maps.retain(|id, _| nodes.get(id).is_some());
            self.services
                .provider_online
                .retain(|id, _| nodes.get(id).is_some());
        }
        for key in &touched.policy_nodes {
            if let Some(id) = self.nodes.id_by_key(key) {
                candidates.insert(id);
                candidates.extend(self.provider_audience(id, None));
            }
        }
        // Presence changes of providers: their instances' health. (Other
        // entry changes, such as endpoints, change no service list.)
        let keys: BTreeSet<&weft_proto::NodeKey> = touched.entries.iter().map(|(_, k)| k).collect();
        for key in keys {
            let Some(n) = self.find_node_by_key(key) else {
                continue;
            };
            let (id, online) = (n.rec.id, n.online);
            if !self.services.by_node.contains_key(&id) {
                continue;
            }
            if self.services.provider_online.insert(id, online) == Some(online) {
                continue;
            }
            if !online {
                // A provider that comes back reports again.
                self.services.health.retain(|(_, node), _| *node != id);
            }
            candidates.extend(self.provider_audience(id, None));
        }
        for id in candidates {
            let enabled = self.nodes.get(&id).is_some_and(|n| !n.rec.disabled);
            if !enabled {
                self.services.maps.remove(&id);
                continue;
            }
            // Only non-empty lists are kept (absent: both empty).
            let lists = self.node_service_lists(id);
            let empty = lists.0.is_empty() && lists.1.is_empty();
            let same = match self.services.maps.get(&id) {
                None => empty,
                Some(old) => *old == lists,
            };
            if same {
                continue;
            }
            if empty {
                self.services.maps.remove(&id);
            } else {
                self.services.maps.insert(id, lists);
            }
            touched.services.insert(id);
        }
    }

    /// The admin view of service `sid`.
    pub(super) fn service_info(&self, sid: ServiceId) -> Result<ServiceInfo, ApiError> {
        let s = self.services.services.get(&sid).ok_or_else(|| {
            ApiError::not_found("service_not_found", format!("no service with id {sid}"))
        })?;
        let net = self.networks.get(&s.network_id).ok_or_else(|| {
            ApiError::not_found("network_not_found", "the service's network is gone")
        })?;
        let mut instances: Vec<AdminInstance> = self
            .services
            .approved(sid)
            .filter_map(|id| {
                let n = self.nodes.get(&id)?;
                let addr = n.memberships.get(&s.network_id)?.ipv4;
                let reported = self.services.health.get(&(sid, id));
                Some(AdminInstance {
                    node: n.rec.name.clone(),
                    addr,
                    health: if n.rec.disabled {
                        Health::Unhealthy
                    } else {
                        self.instance_health(s, n)
                    },
                    checked_ms: reported.map(|r| r.checked_ms),
                    detail: reported.and_then(|r| r.detail.clone()),
                    online: n.online,
                })
            })
            .collect();
        instances.sort_by(|a, b| a.node.cmp(&b.node));
        let mut pending: Vec<String> = self
            .services
            .offers(sid)
            .filter(|i| i.state == InstanceState::Pending)
            .filter_map(|i| self.nodes.get(&i.node_id).map(|n| n.rec.name.clone()))
            .collect();
        pending.sort();
        Ok(ServiceInfo {
            name: s.name.clone(),
            network: net.rec.name.clone(),
            vip: s.vip,
            fqdn: service_fqdn(&s.name, &net.rec.name, &net.rec.dns_domain),
            ports: s.ports.clone(),
            health: s.health.clone(),
            instances,
            pending,
            version: s.version,
        })
    }

    /// `GET /v1/admin/services`: every service, by network and name.
    pub fn service_list(&self) -> ServiceList {
        let mut services: Vec<ServiceInfo> = self
            .services
            .services
            .keys()
            .filter_map(|sid| self.service_info(*sid).ok())
            .collect();
        services.sort_by(|a, b| (&a.network, &a.name).cmp(&(&b.network, &b.name)));
        ServiceList {
            version: self.services.version,
            services,
        }
    }

    /// `GET /v1/admin/services/{network}/{name}`.
    pub fn service_by_name(&self, network: &str, name: &str) -> Result<ServiceInfo, ApiError> {
        let net = self.networks.id_by_name(network).ok_or_else(|| {
            ApiError::not_found("network_not_found", format!("no network named {network:?}"))
        })?;
        let sid = self
            .services
            .by_name
            .get(&(net, name.to_owned()))
            .ok_or_else(|| {
                ApiError::not_found(
                    "service_not_found",
                    format!("no service {name:?} in network {network:?} (list them: weft admin service list)"),
                )
            })?;
        self.service_info(*sid)
    }
}
