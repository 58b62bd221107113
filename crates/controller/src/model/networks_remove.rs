//! Deleting a network: its memberships (each member gets a map without the
//! network; a node left in no network keeps its identity, credential, data
//! and secrets), its members' routes there, its services with their
//! instances and its service range, the data entries scoped to it, its
//! place in join tokens (a token left granting no network is revoked) and,
//! when the policy still holds it as generated, its default rule. One
//! operation, so one batch, one transaction and one map version; audited
//! as `network.remove` with what went.
//!
//! What members receive: a delta (`Touched::left`) with
//! `MapChange::NetworkRemove` (the network goes whole from their maps, its
//! peers, routes and names with it) and whatever else changed for them
//! (policy, data, services, host firewall), not a snapshot: a member that
//! is also in a large network gets a few changes, not that network again.
//! Peers that stay in other networks get deltas only where the policy's
//! visibility changed. No `PeerRemove` is sent per member and peer: nobody
//! remains in the network to receive one, so a network of n members costs
//! n messages, not n².

use std::collections::BTreeSet;

use serde_json::json;
use weft_policy::{Rule, render_rule};

use super::{Actor, Batch, NetId, NodeId, World};
use crate::error::ApiError;
use crate::store::Write;
use crate::store::services::ServiceWrite;

/// Admin: delete the network named `name`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RemoveNetwork {
    /// The network's name.
    pub name: String,
}

/// What deleting a network removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRemoved {
    /// The network's name.
    pub network: String,
    /// How many nodes were members.
    pub members: u64,
    /// How many of them are now in no network (they stay registered).
    pub orphaned: u64,
    /// Subnet routes that went with it.
    pub routes: u64,
    /// Its services' names, sorted.
    pub services: Vec<String>,
    /// Data entries scoped to it that went.
    pub data_keys: u64,
    /// Join tokens that still grant other networks, without this one.
    pub tokens_changed: Vec<u64>,
    /// Join tokens that granted only this network: revoked.
    pub tokens_revoked: Vec<u64>,
    /// Whether its generated default rule was taken out of the policy (an
    /// edited policy is left as it is: a rule naming a network that does
    /// not exist matches no node).
    pub policy_rule_removed: bool,
}

operation!(RemoveNetwork => NetworkRemoved, |op, w, batch, actor, now_ms| {
    w.remove_network(batch, actor, &op.name, now_ms)
});

impl World {
    /// `weft admin network remove NAME`.
    fn remove_network(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        name: &str,
        now_ms: u64,
    ) -> Result<NetworkRemoved, ApiError> {
        let net_id = self.networks.id_by_name(name).ok_or_else(|| {
            ApiError::not_found("network_not_found", format!("no network named {name:?}"))
        })?;
        let services = self.remove_network_services(batch, net_id);
        let (members, orphaned) = self.remove_network_members(batch, net_id, name);
        let data = self.data_forget_network(net_id);
        let data_keys = data.len() as u64;
        if !data.is_empty() {
            // Their resolved data may change (the network's entries went).
            batch.touched.data.extend(members.iter().copied());
        }
        batch.writes.extend(data);
        let (mut tokens_changed, mut tokens_revoked) = (Vec::new(), Vec::new());
        for t in self.tokens.drop_network(net_id) {
            if t.revoked && t.networks.is_empty() {
                tokens_revoked.push(t.id);
            } else {
                tokens_changed.push(t.id);
            }
            batch.writes.push(Write::PutToken(t));
        }
        let routes = self.forget_network(net_id);
        batch.writes.push(Write::DeleteNetwork(net_id));
        let policy_rule_removed = self.drop_default_rule(batch, actor, name, now_ms);
        let out = NetworkRemoved {
            network: name.to_owned(),
            members: members.len() as u64,
            orphaned,
            routes,
            services,
            data_keys,
            tokens_changed,
            tokens_revoked,
            policy_rule_removed,
        };
        self.audit(
            batch,
            actor,
            "network.remove",
            name.to_owned(),
            json!({
                "members": out.members,
                "orphaned": out.orphaned,
                "routes": out.routes,
                "services": out.services,
                "data_keys": out.data_keys,
                "tokens_changed": out.tokens_changed,
                "tokens_revoked": out.tokens_revoked,
                "policy_rule_removed": out.policy_rule_removed,
            }),
            now_ms,
        );
        Ok(out)
    }

    /// What [`crate::store::Write::DeleteNetwork`] deletes beyond the rows
    /// deleted one by one: the network itself, its routes and its service
    /// range (also for replaying another replica's batch). Returns how many
    /// routes went.
    pub(super) fn forget_network(&mut self, net: NetId) -> u64 {
        let before = self.routes.len();
        self.routes.retain(|(n, _, _), _| *n != net);
        self.services.ranges.remove(&net);
        self.networks.remove(net);
        (before - self.routes.len()) as u64
    }

    /// Removes the network's services, their instances and its service
    /// range; returns the services' names.
    fn remove_network_services(&mut self, batch: &mut Batch, net: NetId) -> Vec<String> {
        let sids: Vec<(u64, String)> = self
            .services
            .in_network(net)
            .map(|s| (s.id, s.name.clone()))
            .collect();
        if !sids.is_empty() {
            // Consumers' and providers' lists change (providers may be in
            // other networks too).
            self.mark_network(batch, net);
        }
        for (sid, name) in &sids {
            let offers: Vec<NodeId> = self.services.offers(*sid).map(|i| i.node_id).collect();
            for id in offers {
                self.services.remove_instance(*sid, id);
                self.mark_provider(batch, id);
            }
            self.services.services.remove(sid);
            self.services.by_name.remove(&(net, name.clone()));
            batch
                .writes
                .push(Write::Services(ServiceWrite::DeleteService(*sid)));
        }
        if !sids.is_empty() {
            self.bump_registry(batch);
        }
        let mut names: Vec<String> = sids.into_iter().map(|(_, n)| n).collect();
        names.sort();
        names
    }

    /// Ends every membership in network `net` (named `name`); returns the
    /// members and how many of them are now in no network.
    fn remove_network_members(
        &mut self,
        batch: &mut Batch,
        net: NetId,
        name: &str,
    ) -> (BTreeSet<NodeId>, u64) {
        let members: BTreeSet<NodeId> = self
            .networks
            .get(&net)
            .map(|n| n.members.clone())
            .unwrap_or_default();
        let mut orphaned = 0;
        for id in &members {
            let Some(node) = self.nodes.get_mut(id) else {
                continue;
            };
            if node.memberships.remove(&net).is_none() {
                continue;
            }
            if node.memberships.is_empty() {
                orphaned += 1;
            }
            // It drops the network from its map (a delta); its policy facts
            // (memberships) changed: recompiled with the nodes that saw it.
            batch
                .touched
                .left
                .entry(*id)
                .or_default()
                .insert(name.to_owned());
            batch.touched.policy_nodes.insert(node.rec.node_key);
            batch.touched.hostfw.insert(*id);
            batch.writes.push(Write::DeleteMembership {
                node_id: *id,
                network_id: net,
            });
        }
        (members, orphaned)
    }

    /// Takes the network's default rule out of the policy when the policy
    /// holds it exactly as it was generated; returns whether it did.
    fn drop_default_rule(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        name: &str,
        now_ms: u64,
    ) -> bool {
        let rule = render_rule(&Rule::network_members(name));
        let text = &self.policy.rec.text;
        let Some(at) = text.find(&rule) else {
            return false;
        };
        // Exactly that block: at a line's start, followed by the end, a
        // blank line, a comment or the next table (not by more keys of an
        // edited rule, which would fall to the rule before).
        let rest = text[at + rule.len()..].trim_start_matches([' ', '\t', '\n', '\r']);
        let whole = (at == 0 || text[..at].ends_with('\n'))
            && (rest.is_empty() || rest.starts_with("[[") || rest.starts_with('#'));
        if !whole {
            return false;
        }
        // The blank line `with_network` put before it goes too.
        let start = if text[..at].ends_with("\n\n") {
            at - 1
        } else {
            at
        };
        let mut new = String::with_capacity(text.len());
        new.push_str(&text[..start]);
        new.push_str(&text[at + rule.len()..]);
        match weft_policy::parse(&new) {
            Ok(parsed) => {
                self.put_policy(batch, actor, new, parsed, "network.remove", now_ms);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
#[path = "networks_remove_tests.rs"]
mod tests;
