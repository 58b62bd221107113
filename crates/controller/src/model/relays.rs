//! Relays: registered relays (name, URL, token, what each reports about
//! itself), the configured `--relay` URLs, and the members a relay may serve.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;
use weft_proto::NodeKey;
use weft_proto::netmap::Relay;

use crate::error::ApiError;
use crate::secret::SecretHash;
use crate::store::{RelayRecord, Write};

use super::{Actor, Batch, RelayId, World, secs};

/// A validated request to register a relay.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewRelay {
    /// Name (a DNS label).
    pub name: String,
    /// URL (a valid `RelayUrl`).
    pub url: String,
    /// Hash of the generated relay token.
    pub hash: SecretHash,
}

/// What a relay reports about itself (validated).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayReport {
    /// `sha256:<hex>` of its TLS certificate.
    pub tls_fingerprint: Option<String>,
    /// Its STUN port.
    pub stun_port: Option<u16>,
}

/// Admin: remove a relay, by name.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RemoveRelay(pub String);

/// Relay: report its TLS fingerprint and STUN port.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReportRelay {
    /// The reporting relay.
    pub relay: RelayId,
    /// What it reports.
    pub report: RelayReport,
}

operation!(NewRelay => RelayRecord, |op, w, batch, actor, now_ms| {
    w.create_relay(batch, actor, op, now_ms)
});

operation!(RemoveRelay => (), |op, w, batch, actor, now_ms| {
    w.remove_relay(batch, actor, &op.0, now_ms)
});

operation!(ReportRelay => RelayRecord, |op, w, batch, _, now_ms| {
    w.relay_report(batch, op.relay, op.report, now_ms)
});

/// The registered relays, by id, with their indexes by name and by token;
/// ids are handed out here.
#[derive(Debug, Default)]
pub(super) struct Relays {
    rows: BTreeMap<RelayId, RelayRecord>,
    by_name: BTreeMap<String, RelayId>,
    // Lookup only, never iterated.
    by_token: HashMap<SecretHash, RelayId>,
    next_id: RelayId,
}

impl Relays {
    /// From the stored rows.
    pub(super) fn load(rows: Vec<RelayRecord>) -> Relays {
        let mut relays = Relays {
            next_id: 1,
            ..Relays::default()
        };
        for r in rows {
            relays.next_id = relays.next_id.max(r.id + 1);
            relays.insert(r);
        }
        relays
    }

    fn insert(&mut self, r: RelayRecord) {
        self.by_name.insert(r.name.clone(), r.id);
        self.by_token.insert(r.token_hash, r.id);
        self.rows.insert(r.id, r);
    }

    /// Removes the relay named `name`, with its indexes.
    fn remove(&mut self, name: &str) -> Option<RelayRecord> {
        let id = self.by_name.remove(name)?;
        let r = self.rows.remove(&id)?;
        self.by_token.remove(&r.token_hash);
        Some(r)
    }

    /// By name.
    fn values(&self) -> impl Iterator<Item = &RelayRecord> + '_ {
        self.by_name.values().filter_map(|id| self.rows.get(id))
    }
}

impl World {
    /// The relays every map lists: registered relays by name, then the
    /// configured `--relay` URLs.
    pub fn map_relays(&self) -> Vec<Relay> {
        self.registered
            .values()
            .map(|r| Relay {
                url: r.url.clone(),
                name: Some(r.name.clone()),
                tls_fingerprint: r.tls_fingerprint.clone(),
                stun_port: r.stun_port,
            })
            .chain(self.relays.iter().cloned())
            .collect()
    }

    /// The relay holding this token.
    pub fn relay_by_token(&self, hash: &SecretHash) -> Option<&RelayRecord> {
        self.registered
            .by_token
            .get(hash)
            .and_then(|id| self.registered.rows.get(id))
    }

    /// A relay by id.
    pub fn relay(&self, id: RelayId) -> Option<&RelayRecord> {
        self.registered.rows.get(&id)
    }

    /// A relay by name.
    pub fn relay_by_name(&self, name: &str) -> Option<&RelayRecord> {
        self.registered
            .by_name
            .get(name)
            .and_then(|id| self.registered.rows.get(id))
    }

    /// All relays, by name.
    pub fn relays_by_name(&self) -> impl Iterator<Item = &RelayRecord> + '_ {
        self.registered.values()
    }

    /// Whether `key` is a member a relay may serve: a registered, enabled node.
    pub fn is_relay_member(&self, key: &NodeKey) -> bool {
        self.find_node_by_key(key).is_some_and(|n| !n.rec.disabled)
    }

    /// Every key a relay may serve, sorted.
    pub fn relay_members(&self) -> impl Iterator<Item = NodeKey> + '_ {
        self.nodes.enabled_keys()
    }

    /// Every enabled node gets a fresh snapshot: the relay list changed.
    fn resync_all(&self, batch: &mut Batch) {
        batch.touched.resync.extend(
            self.nodes
                .values()
                .filter(|n| !n.rec.disabled)
                .map(|n| n.rec.id),
        );
    }

    fn create_relay(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        r: NewRelay,
        now_ms: u64,
    ) -> Result<RelayRecord, ApiError> {
        if self.registered.by_name.contains_key(&r.name) {
            return Err(ApiError::conflict(
                "relay_exists",
                format!("relay {:?} already exists", r.name),
            ));
        }
        let id = self.registered.next_id;
        self.registered.next_id += 1;
        let rec = RelayRecord {
            id,
            name: r.name.clone(),
            url: r.url,
            token_hash: r.hash,
            tls_fingerprint: None,
            stun_port: None,
            created_at: secs(now_ms),
            last_seen: None,
        };
        batch.writes.push(Write::PutRelay(rec.clone()));
        self.registered.insert(rec.clone());
        self.resync_all(batch);
        self.audit(
            batch,
            actor,
            "relay.create",
            format!("relay:{}", r.name),
            json!({"url": rec.url}),
            now_ms,
        );
        Ok(rec)
    }

    fn remove_relay(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        name: &str,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let rec = self.registered.remove(name).ok_or_else(|| {
            ApiError::not_found("relay_not_found", format!("no relay named {name:?}"))
        })?;
        let id = rec.id;
        batch.writes.push(Write::DeleteRelay(id));
        batch.touched.evicted_relays.insert(id);
        self.resync_all(batch);
        self.audit(
            batch,
            actor,
            "relay.remove",
            format!("relay:{}", rec.name),
            json!({"url": rec.url}),
            now_ms,
        );
        Ok(())
    }

    fn relay_report(
        &mut self,
        batch: &mut Batch,
        id: RelayId,
        report: RelayReport,
        now_ms: u64,
    ) -> Result<RelayRecord, ApiError> {
        let rec = self
            .registered
            .rows
            .get_mut(&id)
            .ok_or(ApiError::Unauthorized)?;
        let changed =
            rec.tls_fingerprint != report.tls_fingerprint || rec.stun_port != report.stun_port;
        let before = json!({"tls_fingerprint": rec.tls_fingerprint, "stun_port": rec.stun_port});
        rec.tls_fingerprint = report.tls_fingerprint;
        rec.stun_port = report.stun_port;
        rec.last_seen = Some(secs(now_ms));
        let rec = rec.clone();
        batch.writes.push(Write::PutRelay(rec.clone()));
        if changed {
            self.resync_all(batch);
            self.audit(
                batch,
                &Actor::Relay(rec.name.clone()),
                "relay.report",
                format!("relay:{}", rec.name),
                json!({"from": before, "to": {"tls_fingerprint": rec.tls_fingerprint, "stun_port": rec.stun_port}}),
                now_ms,
            );
        }
        Ok(rec)
    }
}
