//! SSH through the mesh, the controller's side: each node's SSH server as it
//! reports it ([`ReportSshServer`]: port and host key, audited
//! `node.ssh_server` when it changes; the port is the node's `ssh_port` fact,
//! so the policy's `[[ssh]]` rules apply to it), the sessions its server saw
//! ([`ReportSshSessions`]: each record audited once, `ssh.session` or
//! `ssh.refused`, deduplicated by (node, id, end)), and every node's
//! `ssh_hosts` (the servers its compiled policy's `ssh_outbound` lets it log
//! in to, with their reported host keys), recomputed when a batch closes;
//! exactly the nodes whose list changed receive `MapChange::SshHosts`.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde_json::json;
use weft_proto::ssh::{
    MAX_HOST_KEY, MAX_SESSION_COMMAND, MAX_SESSION_RECORDS, SshHost, SshServerReport,
    SshSessionRecord, SshSessionReport,
};

use super::{Actor, Batch, NodeId, Touched, World};
use crate::error::ApiError;
use crate::store::Write;
use crate::store::ssh::{SshRows, SshSeenRecord, SshServerRecord, SshWrite};

/// Longest record id accepted.
const MAX_RECORD_ID: usize = 64;
/// Longest user name or node name in a record (a refused login may ask for
/// any name; the agent cuts it).
const MAX_NAME: usize = 64;
/// Audited record keys kept for deduplication (the oldest are forgotten
/// first; an agent replays its outbox within hours, not weeks).
const MAX_SEEN: usize = 200_000;

/// The SSH aggregate.
#[derive(Debug, Default)]
pub(super) struct Ssh {
    /// Each serving node's (port, host key).
    servers: BTreeMap<NodeId, (u16, String)>,
    /// Audited records (node, id, ended), with the order they came in.
    seen: BTreeSet<(NodeId, String, bool)>,
    seen_order: std::collections::VecDeque<(NodeId, String, bool)>,
    /// Each node's `ssh_hosts` as last published.
    hosts: BTreeMap<NodeId, Vec<SshHost>>,
}

impl Ssh {
    /// From the stored rows (the host lists are computed by
    /// [`World::compute_all_ssh_hosts`]).
    pub(super) fn load(rows: SshRows) -> Self {
        let mut s = Ssh::default();
        for r in rows.servers {
            s.servers.insert(r.node_id, (r.port, r.host_key));
        }
        for r in rows.seen {
            s.remember((r.node_id, r.record_id, r.ended));
        }
        s
    }

    fn remember(&mut self, key: (NodeId, String, bool)) -> bool {
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.seen_order.push_back(key);
        while self.seen_order.len() > MAX_SEEN {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// A node reports its SSH server (or that it serves none).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReportSshServer {
    /// The node (authenticated).
    pub node: NodeId,
    /// The report.
    pub report: SshServerReport,
}

/// A node reports sessions its SSH server saw.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReportSshSessions {
    /// The node (authenticated).
    pub node: NodeId,
    /// The records.
    pub report: SshSessionReport,
}

operation!(ReportSshServer => (), |op, w, batch, actor, now_ms| {
    w.report_ssh_server(batch, actor, op, now_ms)
});

operation!(ReportSshSessions => (), |op, w, batch, actor, now_ms| {
    w.report_ssh_sessions(batch, actor, op, now_ms)
});

fn bad(code: &'static str, e: impl Into<String>) -> ApiError {
    ApiError::invalid(code, e)
}

/// Checks a host key line: `ssh-ed25519 <base64 of the SSH wire key>`, no
/// comment, at most [`MAX_HOST_KEY`] bytes.
pub(crate) fn check_host_key(line: &str) -> Result<(), String> {
    if line.len() > MAX_HOST_KEY {
        return Err(format!("host key longer than {MAX_HOST_KEY} bytes"));
    }
    let mut parts = line.split(' ');
    let (Some(algo), Some(b64), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("host key is not one 'ssh-ed25519 BASE64' line".into());
    };
    if algo != "ssh-ed25519" {
        return Err(format!("host key type {algo:?} is not ssh-ed25519"));
    }
    let wire = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("host key is not base64: {e}"))?;
    // string "ssh-ed25519", string of 32 bytes.
    let mut want = Vec::with_capacity(51);
    want.extend_from_slice(&11u32.to_be_bytes());
    want.extend_from_slice(b"ssh-ed25519");
    want.extend_from_slice(&32u32.to_be_bytes());
    if wire.len() != 51 || wire[..19] != want[..] {
        return Err("host key is not an encoded Ed25519 public key".into());
    }
    Ok(())
}

fn check_record(r: &SshSessionRecord) -> Result<(), String> {
    if r.id.is_empty()
        || r.id.len() > MAX_RECORD_ID
        || !r
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "record id {:?} is not 1..={MAX_RECORD_ID} of [A-Za-z0-9_-]",
            r.id
        ));
    }
    if r.user.is_empty() || r.user.len() > MAX_NAME || r.user.chars().any(char::is_control) {
        return Err(format!(
            "record {}: user name is empty, too long or has control characters",
            r.id
        ));
    }
    if r.from_node.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
        return Err(format!("record {}: from_node too long", r.id));
    }
    if r.command
        .as_ref()
        .is_some_and(|c| c.len() > MAX_SESSION_COMMAND)
        || r.reason
            .as_ref()
            .is_some_and(|c| c.len() > MAX_SESSION_COMMAND)
    {
        return Err(format!(
            "record {}: command or reason longer than {MAX_SESSION_COMMAND} bytes",
            r.id
        ));
    }
    if r.ended_ms.is_some_and(|e| e < r.started_ms) {
        return Err(format!("record {}: ends before it starts", r.id));
    }
    if !r.accepted && r.ended_ms.is_none() {
        return Err(format!("record {}: a refusal has no end", r.id));
    }
    Ok(())
}

impl World {
    /// The node's SSH port, when it serves SSH (its `ssh_port` fact).
    pub(super) fn ssh_port(&self, node: NodeId) -> Option<u16> {
        self.ssh.servers.get(&node).map(|(p, _)| *p)
    }

    /// The node's `ssh_hosts` (as last computed).
    pub fn node_ssh_hosts(&self, node: NodeId) -> Vec<SshHost> {
        self.ssh.hosts.get(&node).cloned().unwrap_or_default()
    }

    fn report_ssh_server(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: ReportSshServer,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let node = self.node(op.node).ok_or(ApiError::Unauthorized)?;
        let (id, key, name) = (node.rec.id, node.rec.node_key, node.rec.name.clone());
        let new = match op.report.server {
            Some(s) => {
                if s.port == 0 {
                    return Err(bad("invalid_ssh_server", "port 0"));
                }
                check_host_key(&s.host_key).map_err(|e| bad("invalid_ssh_server", e))?;
                Some((s.port, s.host_key))
            }
            None => None,
        };
        let old = self.ssh.servers.get(&id).cloned();
        if old == new {
            return Ok(());
        }
        match &new {
            Some((port, host_key)) => {
                batch
                    .writes
                    .push(Write::Ssh(SshWrite::PutServer(SshServerRecord {
                        node_id: id,
                        port: *port,
                        host_key: host_key.clone(),
                        reported_at_ms: now_ms,
                    })));
                self.ssh.servers.insert(id, (*port, host_key.clone()));
            }
            None => {
                batch.writes.push(Write::Ssh(SshWrite::DeleteServer(id)));
                self.ssh.servers.remove(&id);
            }
        }
        self.audit(
            batch,
            actor,
            "node.ssh_server",
            name,
            match &new {
                Some((port, host_key)) => json!({ "port": port, "host_key": host_key }),
                None => json!({ "server": null }),
            },
            now_ms,
        );
        if old.as_ref().map(|o| o.0) != new.as_ref().map(|n| n.0) {
            // The port is a policy fact.
            batch.touched.policy_nodes.insert(key);
        }
        self.refresh_ssh_hosts(&mut batch.touched);
        Ok(())
    }

    fn report_ssh_sessions(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: ReportSshSessions,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let sessions = op.report.sessions;
        if sessions.len() > MAX_SESSION_RECORDS {
            return Err(bad(
                "invalid_ssh_sessions",
                format!("at most {MAX_SESSION_RECORDS} records per report"),
            ));
        }
        for r in &sessions {
            check_record(r).map_err(|e| bad("invalid_ssh_sessions", e))?;
        }
        let node = self.node(op.node).ok_or(ApiError::Unauthorized)?;
        let (id, server) = (node.rec.id, node.rec.name.clone());
        for r in sessions {
            let ended = r.ended_ms.is_some();
            if !self.ssh.remember((id, r.id.clone(), ended)) {
                continue;
            }
            batch.writes.push(Write::Ssh(SshWrite::Seen(SshSeenRecord {
                node_id: id,
                record_id: r.id.clone(),
                ended,
                at_ms: now_ms,
            })));
            let (action, state) = match (r.accepted, ended) {
                (false, _) => ("ssh.refused", "refused"),
                (true, false) => ("ssh.session", "open"),
                (true, true) => ("ssh.session", "closed"),
            };
            let mut detail = json!({
                "session": r.id,
                "state": state,
                "server": server,
                "user": r.user,
                "from_node": r.from_node,
                "from_addr": r.from_addr.to_string(),
                "started_ms": r.started_ms,
            });
            if let Some(obj) = detail.as_object_mut() {
                if let Some(c) = &r.command {
                    obj.insert("command".into(), json!(c));
                }
                if let Some(why) = &r.reason {
                    obj.insert("reason".into(), json!(why));
                }
                if let (true, Some(end)) = (r.accepted, r.ended_ms) {
                    obj.insert("ended_ms".into(), json!(end));
                    obj.insert("duration_ms".into(), json!(end - r.started_ms));
                }
            }
            let at = r.ended_ms.unwrap_or(r.started_ms);
            self.audit(
                batch,
                actor,
                action,
                format!("{}@{server}", r.user),
                detail,
                at,
            );
        }
        Ok(())
    }

    /// Computes node `node`'s `ssh_hosts` from its compiled policy's
    /// `ssh_outbound` and the servers' reports, sorted by node name.
    fn compute_ssh_hosts(&self, node: NodeId) -> Vec<SshHost> {
        let Some(me) = self.node(node).filter(|n| !n.rec.disabled) else {
            return Vec::new();
        };
        let Some(policy) = self.node_policy(node) else {
            return Vec::new();
        };
        let mut hosts = Vec::new();
        for g in &policy.ssh_outbound {
            let Some(server) = self
                .find_node(&g.peer)
                .filter(|s| !s.rec.disabled && s.rec.name == g.peer)
            else {
                continue;
            };
            let Some((port, host_key)) = self.ssh.servers.get(&server.rec.id) else {
                continue;
            };
            // The server's address in a network both are members of, one
            // the grant lists first.
            let shared = server
                .memberships
                .values()
                .filter(|m| me.memberships.contains_key(&m.network_id))
                .filter_map(|m| Some((self.network(m.network_id)?.rec.name.clone(), m.ipv4)));
            let mut candidates: Vec<(String, std::net::Ipv4Addr)> = shared.collect();
            candidates.sort();
            let granted = |a: &std::net::Ipv4Addr| {
                g.addrs
                    .iter()
                    .any(|n| n.contains(&std::net::IpAddr::V4(*a)))
            };
            let Some((network, addr)) = candidates
                .iter()
                .find(|(_, a)| granted(a))
                .or(candidates.first())
                .cloned()
            else {
                continue;
            };
            let mut users = g.users.clone();
            users.sort();
            users.dedup();
            hosts.push(SshHost {
                node_key: server.rec.node_key,
                node: server.rec.name.clone(),
                network,
                addr,
                port: *port,
                host_key: host_key.clone(),
                users,
            });
        }
        hosts.sort_by(|a, b| a.node.cmp(&b.node));
        hosts.dedup_by(|a, b| a.node == b.node);
        hosts
    }

    /// Recomputes every enabled node's `ssh_hosts`; the nodes whose list
    /// changed are marked in `touched` (and only those).
    pub(super) fn refresh_ssh_hosts(&mut self, touched: &mut Touched) {
        let ids: Vec<NodeId> = self.nodes.values().map(|n| n.rec.id).collect();
        let mut next = BTreeMap::new();
        for id in ids {
            let hosts = self.compute_ssh_hosts(id);
            let before = self
                .ssh
                .hosts
                .get(&id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if before != hosts.as_slice() {
                touched.ssh_hosts.insert(id);
            }
            if !hosts.is_empty() {
                next.insert(id, hosts);
            }
        }
        self.ssh.hosts = next;
    }

    /// At start: every node's list, nothing marked.
    pub(super) fn compute_all_ssh_hosts(&mut self) {
        self.refresh_ssh_hosts(&mut Touched::default());
    }
}
