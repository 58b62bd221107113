//! The node side of the service registry: a node's offer of a service
//! (`POST /v1/node/services/advertise`: pending until an admin approves it,
//! withdrawn with no ports) and its instances' health reports (`POST
//! /v1/node/services/health`: a change of verdict reaches the consumers and a
//! Healthy/Unhealthy flip is audited as `service.health`).

use serde_json::json;
use weft_proto::service::{
    AdvertiseServiceRequest, AdvertiseServiceResponse, Health, HealthReport, MAX_HEALTH_DETAIL,
    MAX_HEALTH_REPORTS, MAX_INSTANCES, MAX_SERVICES,
};

use super::services::{
    Reported, checked_health, checked_name, checked_ports, network_not_found, service_not_found,
    show_ports,
};
use super::{Actor, Batch, NetId, NodeId, World};
use crate::error::ApiError;
use crate::store::Write;
use crate::store::services::{
    InstanceRecord, InstanceState, ServiceOrigin, ServiceRecord, ServiceWrite,
};

impl World {
    /// The network a node's advertisement is for: the one named, or its only
    /// network.
    fn advertised_network(
        &self,
        node: NodeId,
        network: Option<&str>,
    ) -> Result<(NetId, String), ApiError> {
        let n = self.nodes.get(&node).ok_or(ApiError::Unauthorized)?;
        if let Some(name) = network {
            let net = self
                .networks
                .id_by_name(name)
                .ok_or_else(|| network_not_found(name))?;
            if !n.memberships.contains_key(&net) {
                return Err(ApiError::conflict(
                    "not_a_member",
                    format!("this node is not a member of network {name:?}"),
                ));
            }
            return Ok((net, name.to_owned()));
        }
        let mut nets = n.memberships.keys().copied();
        match (nets.next(), nets.next()) {
            (Some(net), None) => {
                let name = self
                    .networks
                    .get(&net)
                    .map(|x| x.rec.name.clone())
                    .unwrap_or_default();
                Ok((net, name))
            }
            (None, _) => Err(ApiError::conflict(
                "not_a_member",
                "this node is in no network",
            )),
            (Some(_), Some(_)) => Err(ApiError::invalid(
                "network_required",
                "this node is in several networks: say which (--network)",
            )),
        }
    }

    pub(super) fn advertise_service(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        node: NodeId,
        req: AdvertiseServiceRequest,
        now_ms: u64,
    ) -> Result<AdvertiseServiceResponse, ApiError> {
        checked_name(&req.name)?;
        checked_health(&req.health)?;
        let (net, net_name) = self.advertised_network(node, req.network.as_deref())?;
        let node_name = self
            .nodes
            .get(&node)
            .map(|n| n.rec.name.clone())
            .unwrap_or_default();
        let target = format!("{net_name}/{}", req.name);
        let existing = self.services.by_name.get(&(net, req.name.clone())).copied();
        let answer = |state: &str, message: String| AdvertiseServiceResponse {
            state: state.into(),
            message,
        };
        if req.ports.is_empty() {
            // Withdraw the offer (and the instance).
            let Some(sid) = existing.filter(|s| self.services.instances.contains_key(&(*s, node)))
            else {
                return Ok(answer(
                    "withdrawn",
                    format!("this node does not offer {target}; nothing to withdraw"),
                ));
            };
            let was = self.services.instances.get(&(sid, node)).map(|i| i.state);
            if was == Some(InstanceState::Rejected) {
                // A rejection outlives the offer, as a rejected route does.
                return Ok(answer(
                    "withdrawn",
                    format!("this node's offer of {target} was rejected; it stays rejected"),
                ));
            }
            self.delete_offer(batch, sid, node);
            if was == Some(InstanceState::Approved) {
                self.mark_provider(batch, node);
                self.mark_network(batch, net);
            }
            let orphan = self.services.offers(sid).next().is_none()
                && self
                    .services
                    .services
                    .get(&sid)
                    .is_some_and(|s| s.origin == ServiceOrigin::Node);
            if orphan {
                if let Some(s) = self.services.services.remove(&sid) {
                    self.services.by_name.remove(&(s.network_id, s.name));
                }
                batch
                    .writes
                    .push(Write::Services(ServiceWrite::DeleteService(sid)));
            }
            self.bump_registry(batch);
            self.audit(
                batch,
                actor,
                "service.advertise",
                target.clone(),
                json!({"node": node_name, "withdrawn": true, "was": was.map(InstanceState::as_str)}),
                now_ms,
            );
            return Ok(answer(
                "withdrawn",
                format!("this node no longer offers {target}"),
            ));
        }
        let ports = checked_ports(req.ports)?;
        let sid = match existing {
            Some(sid) => {
                let s = self
                    .services
                    .services
                    .get(&sid)
                    .ok_or_else(|| service_not_found(&net_name, &req.name))?;
                if s.ports != ports {
                    return Err(ApiError::conflict(
                        "service_ports_differ",
                        format!(
                            "service {target} has ports {}; offer those (or ask an admin to change them with weft admin service create --replace)",
                            show_ports(&s.ports).join(",")
                        ),
                    ));
                }
                match self.services.instances.get(&(sid, node)).map(|i| i.state) {
                    Some(InstanceState::Approved) => {
                        return Ok(answer(
                            "approved",
                            format!("this node is an instance of {target}"),
                        ));
                    }
                    Some(InstanceState::Pending) => {
                        return Ok(answer(
                            "pending",
                            approve_hint(&target, &req.name, &net_name, &node_name),
                        ));
                    }
                    Some(InstanceState::Rejected) => {
                        return Ok(answer(
                            "rejected",
                            format!(
                                "an admin rejected this node's offer of {target}; it stays rejected until approved: weft admin service approve {} --network {net_name} --node {node_name}",
                                req.name
                            ),
                        ));
                    }
                    None => {}
                }
                if self.services.offers(sid).count() >= MAX_INSTANCES {
                    return Err(ApiError::conflict(
                        "too_many_instances",
                        format!("service {target} has {MAX_INSTANCES} offers, the most it may"),
                    ));
                }
                sid
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
                let rec = ServiceRecord {
                    id: sid,
                    network_id: net,
                    name: req.name.clone(),
                    vip,
                    ports: ports.clone(),
                    health: req.health.clone(),
                    origin: ServiceOrigin::Node,
                    version: self.services.version + 1,
                    created_at_ms: now_ms,
                };
                batch
                    .writes
                    .push(Write::Services(ServiceWrite::PutService(rec.clone())));
                self.services.insert_service(rec);
                sid
            }
        };
        self.put_offer(
            batch,
            InstanceRecord {
                service_id: sid,
                node_id: node,
                state: InstanceState::Pending,
                created_at_ms: now_ms,
            },
        );
        self.bump_registry(batch);
        self.audit(
            batch,
            actor,
            "service.advertise",
            target.clone(),
            json!({"node": node_name, "ports": show_ports(&ports), "health": req.health.to_string(), "new_service": existing.is_none()}),
            now_ms,
        );
        Ok(answer(
            "pending",
            approve_hint(&target, &req.name, &net_name, &node_name),
        ))
    }

    pub(super) fn report_health(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        node: NodeId,
        report: HealthReport,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        if report.checks.len() > MAX_HEALTH_REPORTS {
            return Err(ApiError::invalid(
                "too_many_checks",
                format!("at most {MAX_HEALTH_REPORTS} checks per report"),
            ));
        }
        if let Some(c) = report.checks.iter().find(|c| {
            c.detail
                .as_ref()
                .is_some_and(|d| d.len() > MAX_HEALTH_DETAIL)
        }) {
            return Err(ApiError::invalid(
                "detail_too_long",
                format!(
                    "the detail of {}/{} is longer than {MAX_HEALTH_DETAIL} bytes",
                    c.network.chars().take(64).collect::<String>(),
                    c.service.chars().take(64).collect::<String>()
                ),
            ));
        }
        let node_name = self
            .nodes
            .get(&node)
            .map(|n| n.rec.name.clone())
            .ok_or(ApiError::Unauthorized)?;
        for c in report.checks {
            // A check of something this node no longer provides (a map it
            // had not received yet) is ignored.
            let Ok(sid) = self.find_service(&c.network, &c.service) else {
                continue;
            };
            let approved = self
                .services
                .instances
                .get(&(sid, node))
                .is_some_and(|i| i.state == InstanceState::Approved);
            if !approved {
                continue;
            }
            let new = Reported {
                health: c.health,
                checked_ms: c.checked_ms,
                detail: c.detail,
            };
            let old = self.services.health.insert((sid, node), new.clone());
            let from = old.map_or(Health::Unknown, |o| o.health);
            if from == new.health {
                continue;
            }
            if let Some(s) = self.services.services.get(&sid) {
                let net = s.network_id;
                self.mark_network(batch, net);
            }
            if from != Health::Unknown && new.health != Health::Unknown {
                self.audit(
                    batch,
                    actor,
                    "service.health",
                    format!("{}/{}", c.network, c.service),
                    json!({"node": node_name, "from": from.to_string(), "to": new.health.to_string(), "detail": new.detail}),
                    now_ms,
                );
            }
        }
        Ok(())
    }
}

fn approve_hint(target: &str, name: &str, network: &str, node: &str) -> String {
    format!(
        "this node's offer of {target} waits for an admin: weft admin service approve {name} --network {network} --node {node}"
    )
}
