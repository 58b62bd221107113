//! Named services: the registry (services, their instances, each network's
//! service range and the VIPs from it), the operations on it, and the
//! providers' health reports.
//!
//! Rules:
//! - A service belongs to one network and has a unique name there. Its VIP
//!   comes from the network's service range, a /24 inside 100.64.0.0/10
//!   allocated at the network's first service, top-down from
//!   100.127.255.0/24, overlapping no network's CIDR, no other range and no
//!   approved subnet route. The VIP stays for the service's life.
//! - An admin creates a service with its instance nodes, approved at once
//!   (`service.create`, or `service.replace` with `replace`). A node may
//!   advertise a service: its offer is `pending` until an admin approves it
//!   (`service.advertise`, `service.approve`, `service.reject`); a rejected
//!   offer stays rejected when advertised again (or withdrawn). Advertising
//!   a new name creates the service (origin `node`) without instances; the
//!   node side (offers, health reports) is `services_node`.
//! - Only approved instances are in maps and in the policy's facts
//!   (`service:NAME` selectors); a change of a node's instances upserts its
//!   facts into the live policy (`touched.policy_nodes`).
//! - Health is runtime state: the provider's last report, `Unhealthy` while
//!   the provider is offline, `Unknown` before a report. A change of verdict
//!   is audited as `service.health` (Healthy↔Unhealthy only).
//! - Operations mark the nodes whose map lists may have changed in
//!   `touched.services`; when the batch closes
//!   ([`World::refresh_services`], in `services_view`) only those whose lists
//!   really changed stay there and receive `MapChange::Services`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::json;
use weft_proto::net::Ipv4Net;
use weft_proto::service::{
    AdvertiseServiceRequest, AdvertiseServiceResponse, CreateServiceRequest, Health, HealthCheck,
    HealthReport, MAX_INSTANCES, MAX_SERVICES, ProvidedService, SERVICE_RANGE_PREFIX_LEN,
    ServiceInfo, ServicePort, ServiceView, check_ports, check_service_name,
};

use super::nodes::node_not_found;
use super::{Actor, Batch, NetId, NodeId, World};
use crate::error::ApiError;
use crate::store::Write;
use crate::store::services::{
    InstanceRecord, InstanceState, ServiceOrigin, ServiceRangeRecord, ServiceRecord, ServiceRows,
    ServiceWrite,
};

/// A service id.
pub(super) type ServiceId = u64;

/// The lists a node's map carries: services it may use, services it provides.
pub(super) type NodeLists = (Vec<ServiceView>, Vec<ProvidedService>);

/// A provider's last report about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reported {
    pub(super) health: Health,
    pub(super) checked_ms: u64,
    pub(super) detail: Option<String>,
}

/// The registry and its indexes.
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Bumped by every change of services or instances (not by health).
    pub(super) version: u64,
    pub(super) ranges: BTreeMap<NetId, Ipv4Net>,
    pub(super) services: BTreeMap<ServiceId, ServiceRecord>,
    pub(super) by_name: BTreeMap<(NetId, String), ServiceId>,
    pub(super) instances: BTreeMap<(ServiceId, NodeId), InstanceRecord>,
    pub(super) by_node: BTreeMap<NodeId, BTreeSet<ServiceId>>,
    pub(super) health: BTreeMap<(ServiceId, NodeId), Reported>,
    /// Whether each node with offers was online when its lists were last
    /// refreshed (a change of presence changes its instances' health).
    pub(super) provider_online: BTreeMap<NodeId, bool>,
    pub(super) next_id: ServiceId,
    /// Each enabled node's lists as its map carries them, when not both
    /// empty (for finding the nodes a batch really changed).
    pub(super) maps: BTreeMap<NodeId, NodeLists>,
}

impl Registry {
    /// From the stored rows, keeping those whose network and node exist.
    pub(super) fn load(
        rows: ServiceRows,
        net_exists: impl Fn(NetId) -> bool,
        node_exists: impl Fn(NodeId) -> bool,
    ) -> Registry {
        let mut r = Registry {
            version: rows.version,
            next_id: 1,
            ..Registry::default()
        };
        for range in rows.ranges.into_iter().filter(|g| net_exists(g.network_id)) {
            r.ranges.insert(range.network_id, range.prefix);
        }
        for s in rows.services {
            r.next_id = r.next_id.max(s.id + 1);
            if net_exists(s.network_id) {
                r.insert_service(s);
            }
        }
        for i in rows.instances {
            if r.services.contains_key(&i.service_id) && node_exists(i.node_id) {
                r.put_instance(i);
            }
        }
        r
    }

    pub(super) fn insert_service(&mut self, s: ServiceRecord) {
        self.by_name.insert((s.network_id, s.name.clone()), s.id);
        self.services.insert(s.id, s);
    }

    fn put_instance(&mut self, i: InstanceRecord) {
        self.by_node
            .entry(i.node_id)
            .or_default()
            .insert(i.service_id);
        self.instances.insert((i.service_id, i.node_id), i);
    }

    pub(super) fn remove_instance(
        &mut self,
        sid: ServiceId,
        node: NodeId,
    ) -> Option<InstanceRecord> {
        if let Some(set) = self.by_node.get_mut(&node) {
            set.remove(&sid);
            if set.is_empty() {
                self.by_node.remove(&node);
                self.provider_online.remove(&node);
            }
        }
        self.health.remove(&(sid, node));
        self.instances.remove(&(sid, node))
    }

    /// The offers of service `sid`, by node.
    pub(super) fn offers(&self, sid: ServiceId) -> impl Iterator<Item = &InstanceRecord> + '_ {
        self.instances
            .range((sid, NodeId::MIN)..=(sid, NodeId::MAX))
            .map(|(_, i)| i)
    }

    /// The approved instances of service `sid`.
    pub(super) fn approved(&self, sid: ServiceId) -> impl Iterator<Item = NodeId> + '_ {
        self.offers(sid)
            .filter(|i| i.state == InstanceState::Approved)
            .map(|i| i.node_id)
    }

    /// The services of network `net`, by name.
    pub(super) fn in_network(&self, net: NetId) -> impl Iterator<Item = &ServiceRecord> + '_ {
        self.by_name
            .range((net, String::new())..)
            .take_while(move |((n, _), _)| *n == net)
            .filter_map(|(_, id)| self.services.get(id))
    }

    /// The services node `node` has an approved instance of.
    pub(super) fn provided_by(&self, node: NodeId) -> impl Iterator<Item = &ServiceRecord> + '_ {
        self.by_node
            .get(&node)
            .into_iter()
            .flatten()
            .filter(move |sid| {
                self.instances
                    .get(&(**sid, node))
                    .is_some_and(|i| i.state == InstanceState::Approved)
            })
            .filter_map(|sid| self.services.get(sid))
    }

    /// Forgets the rows of nodes that no longer exist or are no longer
    /// members of their service's network; returns the networks where an
    /// approved instance went.
    pub(super) fn drop_orphans(
        &mut self,
        is_member: impl Fn(NodeId, NetId) -> bool,
        writes: &mut Vec<Write>,
    ) -> BTreeSet<NetId> {
        let gone: Vec<(ServiceId, NodeId, NetId, bool)> = self
            .instances
            .values()
            .filter_map(|i| {
                let net = self.services.get(&i.service_id)?.network_id;
                (!is_member(i.node_id, net)).then_some((
                    i.service_id,
                    i.node_id,
                    net,
                    i.state == InstanceState::Approved,
                ))
            })
            .collect();
        let mut nets = BTreeSet::new();
        for (sid, node, net, approved) in gone {
            self.remove_instance(sid, node);
            writes.push(Write::Services(ServiceWrite::DeleteInstance {
                service_id: sid,
                node_id: node,
            }));
            if approved {
                nets.insert(net);
            }
        }
        nets
    }
}

/// Whether `check` means "no check" for a service with `ports`: `none`, or a
/// TCP/HTTP check of a service without a TCP port.
pub(super) fn no_check(check: &HealthCheck, ports: &[ServicePort]) -> bool {
    matches!(check, HealthCheck::None)
        || !ports
            .iter()
            .any(|p| p.proto == weft_proto::service::ServiceProto::Tcp)
}

/// Admin: create a service (`replace`: replace an existing one's instances,
/// ports and check; its VIP stays).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CreateService(pub CreateServiceRequest);

/// Admin: remove a service (its instances and pending offers go; its VIP is
/// free again).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RemoveService {
    /// The network's name.
    pub network: String,
    /// The service's name.
    pub name: String,
}

/// Admin: approve or reject a node's offer of a service.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DecideInstance {
    /// The network's name.
    pub network: String,
    /// The service's name.
    pub name: String,
    /// The node (key or name).
    pub node: String,
    /// Approve (else reject).
    pub approve: bool,
}

/// Node: offer (or withdraw) a service this node provides.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AdvertiseService {
    /// The advertising node.
    pub node: NodeId,
    /// What it offers.
    pub req: AdvertiseServiceRequest,
}

/// Node: its instances' health.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReportHealth {
    /// The reporting node.
    pub node: NodeId,
    /// The checks.
    pub report: HealthReport,
}

operation!(CreateService => ServiceInfo, |op, w, batch, actor, now_ms| {
    w.create_service(batch, actor, op.0, now_ms)
});

operation!(RemoveService => ServiceInfo, |op, w, batch, actor, now_ms| {
    w.remove_service(batch, actor, &op.network, &op.name, now_ms)
});

operation!(DecideInstance => ServiceInfo, |op, w, batch, actor, now_ms| {
    w.decide_instance(batch, actor, &op, now_ms)
});

operation!(AdvertiseService => AdvertiseServiceResponse, |op, w, batch, actor, now_ms| {
    w.advertise_service(batch, actor, op.node, op.req, now_ms)
});

operation!(ReportHealth => (), |op, w, batch, actor, now_ms| {
    w.report_health(batch, actor, op.node, op.report, now_ms)
});

pub(super) fn service_not_found(network: &str, name: &str) -> ApiError {
    ApiError::not_found(
        "service_not_found",
        format!("no service {name:?} in network {network:?} (list them: weft admin service list)"),
    )
}

pub(super) fn network_not_found(name: &str) -> ApiError {
    ApiError::not_found("network_not_found", format!("no network named {name:?}"))
}

/// Checks a port list and returns it sorted and de-duplicated.
pub(super) fn checked_ports(mut ports: Vec<ServicePort>) -> Result<Vec<ServicePort>, ApiError> {
    ports.sort();
    ports.dedup();
    check_ports(&ports).map_err(|e| {
        ApiError::invalid(
            "invalid_ports",
            format!("ports: {e} (give at least one, such as 5432/tcp)"),
        )
    })?;
    Ok(ports)
}

pub(super) fn checked_name(name: &str) -> Result<(), ApiError> {
    check_service_name(name).map_err(|e| ApiError::invalid("invalid_service_name", e.to_string()))
}

pub(super) fn checked_health(h: &HealthCheck) -> Result<(), ApiError> {
    h.check()
        .map_err(|e| ApiError::invalid("invalid_health_check", e.to_string()))
}

pub(super) fn show_ports(ports: &[ServicePort]) -> Vec<String> {
    ports.iter().map(ToString::to_string).collect()
}

/// The `n`th /24 from the top of 100.64.0.0/10 (0: 100.127.255.0/24).
fn candidate_range(n: u32) -> Option<Ipv4Net> {
    let top = u32::from(Ipv4Addr::new(100, 127, 255, 0));
    let bottom = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    let addr = top.checked_sub(n.checked_mul(256)?)?;
    if addr < bottom {
        return None;
    }
    Ipv4Net::new(Ipv4Addr::from(addr), SERVICE_RANGE_PREFIX_LEN).ok()
}

impl World {
    /// The service range overlapping `cidr`, with its network's name (for
    /// refusing a new network).
    pub(super) fn service_range_overlapping(&self, cidr: &Ipv4Net) -> Option<(Ipv4Net, String)> {
        self.services
            .ranges
            .iter()
            .find(|(_, r)| r.overlaps(cidr))
            .map(|(net, r)| {
                let name = self
                    .networks
                    .get(net)
                    .map(|n| n.rec.name.clone())
                    .unwrap_or_default();
                (*r, name)
            })
    }

    /// Network `net`'s service range, allocated (and recorded) if it has none.
    fn service_range(&mut self, batch: &mut Batch, net: NetId) -> Result<Ipv4Net, ApiError> {
        if let Some(r) = self.services.ranges.get(&net) {
            return Ok(*r);
        }
        let free = |c: &Ipv4Net| {
            !self.networks.values().any(|n| n.rec.ipv4_cidr.overlaps(c))
                && !self.services.ranges.values().any(|r| r.overlaps(c))
                && self.route_overlapping(c).is_none()
        };
        let range = (0..)
            .map_while(candidate_range)
            .find(free)
            .ok_or_else(|| {
                ApiError::conflict(
                    "no_service_range",
                    "no /24 inside 100.64.0.0/10 is free of network CIDRs, other service ranges and subnet routes; a network's services need one",
                )
            })?;
        self.services.ranges.insert(net, range);
        batch.writes.push(Write::Services(ServiceWrite::PutRange(
            ServiceRangeRecord {
                network_id: net,
                prefix: range,
            },
        )));
        Ok(range)
    }

    /// A free VIP in network `net`'s range (the lowest).
    pub(super) fn free_vip(&mut self, batch: &mut Batch, net: NetId) -> Result<Ipv4Addr, ApiError> {
        let range = self.service_range(batch, net)?;
        let used: BTreeSet<Ipv4Addr> = self.services.in_network(net).map(|s| s.vip).collect();
        (1..range.size().saturating_sub(1))
            .filter_map(|i| range.nth(i))
            .find(|a| !used.contains(a))
            .ok_or_else(|| {
                ApiError::conflict(
                    "service_range_full",
                    format!("the network's service range {range} has no free address: remove a service first"),
                )
            })
    }

    pub(super) fn bump_registry(&mut self, batch: &mut Batch) -> u64 {
        self.services.version += 1;
        batch.writes.push(Write::Services(ServiceWrite::SetVersion(
            self.services.version,
        )));
        self.services.version
    }

    /// Marks every member of `net` as a node whose service lists may have
    /// changed.
    pub(super) fn mark_network(&self, batch: &mut Batch, net: NetId) {
        if let Some(n) = self.networks.get(&net) {
            batch.touched.services.extend(n.members.iter().copied());
        }
    }

    /// `node`'s policy facts changed (its instances).
    pub(super) fn mark_provider(&mut self, batch: &mut Batch, node: NodeId) {
        if let Some(n) = self.nodes.get(&node) {
            batch.touched.policy_nodes.insert(n.rec.node_key);
            batch.touched.services.insert(node);
            self.services.provider_online.insert(node, n.online);
        }
    }

    pub(super) fn put_offer(&mut self, batch: &mut Batch, i: InstanceRecord) {
        batch
            .writes
            .push(Write::Services(ServiceWrite::PutInstance(i.clone())));
        self.services.put_instance(i);
    }

    pub(super) fn delete_offer(&mut self, batch: &mut Batch, sid: ServiceId, node: NodeId) {
        if self.services.remove_instance(sid, node).is_some() {
            batch
                .writes
                .push(Write::Services(ServiceWrite::DeleteInstance {
                    service_id: sid,
                    node_id: node,
                }));
        }
    }

    pub(super) fn find_service(&self, network: &str, name: &str) -> Result<ServiceId, ApiError> {
        let net = self
            .networks
            .id_by_name(network)
            .ok_or_else(|| network_not_found(network))?;
        self.services
            .by_name
            .get(&(net, name.to_owned()))
            .copied()
            .ok_or_else(|| service_not_found(network, name))
    }

    fn create_service(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        req: CreateServiceRequest,
        now_ms: u64,
    ) -> Result<ServiceInfo, ApiError> {
        if let Some(v) = req.expect_version
            && v != self.services.version
        {
            return Err(ApiError::conflict(
                "services_version_mismatch",
                format!(
                    "the service registry is at version {}, not {v}; list the services again",
                    self.services.version
                ),
            ));
        }
        checked_name(&req.name)?;
        checked_health(&req.health)?;
        let ports = checked_ports(req.ports)?;
        let net = self
            .networks
            .id_by_name(&req.network)
            .ok_or_else(|| network_not_found(&req.network))?;
        if req.nodes.is_empty() {
            return Err(ApiError::invalid(
                "no_instances",
                "name at least one provider node (--node NODE[,NODE])",
            ));
        }
        if req.nodes.len() > MAX_INSTANCES {
            return Err(ApiError::invalid(
                "too_many_instances",
                format!("at most {MAX_INSTANCES} provider nodes per service"),
            ));
        }
        let mut nodes = BTreeSet::new();
        for sel in &req.nodes {
            let id = self.node_id_for(sel)?;
            let n = self.nodes.get(&id).ok_or_else(|| node_not_found(sel))?;
            if !n.memberships.contains_key(&net) {
                return Err(ApiError::conflict(
                    "not_a_member",
                    format!(
                        "node {:?} is not a member of network {:?}: a service's instances are members of its network",
                        n.rec.name, req.network
                    ),
                ));
            }
            nodes.insert(id);
        }
        let existing = self.services.by_name.get(&(net, req.name.clone())).copied();
        let (sid, vip, origin, created, action) = match existing {
            Some(sid) if !req.replace => {
                let vip = self.services.services.get(&sid).map(|s| s.vip);
                return Err(ApiError::conflict(
                    "service_exists",
                    format!(
                        "service {:?} exists in network {:?} (VIP {}); change it with --replace, or remove it first",
                        req.name,
                        req.network,
                        vip.map(|v| v.to_string()).unwrap_or_default()
                    ),
                ));
            }
            Some(sid) => {
                let s = self
                    .services
                    .services
                    .get(&sid)
                    .ok_or_else(|| service_not_found(&req.network, &req.name))?;
                (sid, s.vip, s.origin, s.created_at_ms, "service.replace")
            }
            None => {
                if self.services.services.len() >= MAX_SERVICES {
                    return Err(ApiError::conflict(
                        "too_many_services",
                        format!("the controller holds {MAX_SERVICES} services, the most it may"),
                    ));
                }
                let vip = self.free_vip(batch, net)?;
                let sid = self.services.next_id;
                self.services.next_id += 1;
                (sid, vip, ServiceOrigin::Admin, now_ms, "service.create")
            }
        };
        let version = self.bump_registry(batch);
        let rec = ServiceRecord {
            id: sid,
            network_id: net,
            name: req.name.clone(),
            vip,
            ports,
            health: req.health,
            origin,
            version,
            created_at_ms: created,
        };
        batch
            .writes
            .push(Write::Services(ServiceWrite::PutService(rec.clone())));
        self.services.insert_service(rec.clone());
        // Instances: exactly the nodes named, approved; offers from others
        // that were approved go, pending and rejected ones stay.
        let before: BTreeSet<NodeId> = self.services.approved(sid).collect();
        for id in before.difference(&nodes).copied().collect::<Vec<_>>() {
            self.delete_offer(batch, sid, id);
            self.mark_provider(batch, id);
        }
        for id in &nodes {
            let state = self.services.instances.get(&(sid, *id)).map(|i| i.state);
            if state != Some(InstanceState::Approved) {
                self.put_offer(
                    batch,
                    InstanceRecord {
                        service_id: sid,
                        node_id: *id,
                        state: InstanceState::Approved,
                        created_at_ms: now_ms,
                    },
                );
            }
            // Its facts carry the service's ports, which may have changed.
            self.mark_provider(batch, *id);
        }
        self.mark_network(batch, net);
        let names: Vec<String> = nodes
            .iter()
            .filter_map(|id| self.nodes.get(id).map(|n| n.rec.name.clone()))
            .collect();
        self.audit(
            batch,
            actor,
            action,
            format!("{}/{}", req.network, req.name),
            json!({"vip": vip.to_string(), "ports": show_ports(&rec.ports),
                   "health": rec.health.to_string(), "nodes": names, "version": version}),
            now_ms,
        );
        self.service_info(sid)
    }

    fn remove_service(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        network: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<ServiceInfo, ApiError> {
        let sid = self.find_service(network, name)?;
        let info = self.service_info(sid)?;
        let offers: Vec<NodeId> = self.services.offers(sid).map(|i| i.node_id).collect();
        for id in offers {
            self.services.remove_instance(sid, id);
            self.mark_provider(batch, id);
        }
        if let Some(s) = self.services.services.remove(&sid) {
            self.services
                .by_name
                .remove(&(s.network_id, s.name.clone()));
            self.mark_network(batch, s.network_id);
        }
        batch
            .writes
            .push(Write::Services(ServiceWrite::DeleteService(sid)));
        let version = self.bump_registry(batch);
        self.audit(
            batch,
            actor,
            "service.remove",
            format!("{network}/{name}"),
            json!({"vip": info.vip.to_string(), "nodes": info.instances.iter().map(|i| &i.node).collect::<Vec<_>>(), "version": version}),
            now_ms,
        );
        Ok(ServiceInfo { version, ..info })
    }

    fn decide_instance(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: &DecideInstance,
        now_ms: u64,
    ) -> Result<ServiceInfo, ApiError> {
        let sid = self.find_service(&op.network, &op.name)?;
        let id = self.node_id_for(&op.node)?;
        let node = self
            .nodes
            .get(&id)
            .ok_or_else(|| node_not_found(&op.node))?;
        let node_name = node.rec.name.clone();
        let net = self
            .services
            .services
            .get(&sid)
            .map(|s| s.network_id)
            .ok_or_else(|| service_not_found(&op.network, &op.name))?;
        let before = self.services.instances.get(&(sid, id)).map(|i| i.state);
        let after = if op.approve {
            if !node.memberships.contains_key(&net) {
                return Err(ApiError::conflict(
                    "not_a_member",
                    format!(
                        "node {node_name:?} is not a member of network {:?}",
                        op.network
                    ),
                ));
            }
            if before.is_none() && self.services.approved(sid).count() >= MAX_INSTANCES {
                return Err(ApiError::conflict(
                    "too_many_instances",
                    format!(
                        "service {:?} has {MAX_INSTANCES} instances, the most it may",
                        op.name
                    ),
                ));
            }
            InstanceState::Approved
        } else {
            if before.is_none() {
                return Err(ApiError::not_found(
                    "no_offer",
                    format!(
                        "node {node_name:?} has not offered service {:?} in network {:?}; nothing to reject",
                        op.name, op.network
                    ),
                ));
            }
            InstanceState::Rejected
        };
        if before != Some(after) {
            let created_at_ms = self
                .services
                .instances
                .get(&(sid, id))
                .map_or(now_ms, |i| i.created_at_ms);
            self.services.health.remove(&(sid, id));
            self.put_offer(
                batch,
                InstanceRecord {
                    service_id: sid,
                    node_id: id,
                    state: after,
                    created_at_ms,
                },
            );
            let version = self.bump_registry(batch);
            if let Some(s) = self.services.services.get_mut(&sid) {
                s.version = version;
                batch
                    .writes
                    .push(Write::Services(ServiceWrite::PutService(s.clone())));
            }
            if before == Some(InstanceState::Approved) || after == InstanceState::Approved {
                self.mark_provider(batch, id);
                self.mark_network(batch, net);
            }
            self.audit(
                batch,
                actor,
                if op.approve {
                    "service.approve"
                } else {
                    "service.reject"
                },
                format!("{}/{}", op.network, op.name),
                json!({"node": node_name, "from": before.map(InstanceState::as_str), "to": after.as_str()}),
                now_ms,
            );
        }
        self.service_info(sid)
    }
}

#[cfg(test)]
#[path = "services_tests.rs"]
mod tests;
