//! Applying one row-level [`Write`] inside a batch's transaction.

use postgres::GenericClient;

use super::{
    Db, data, dns_blocklist, events, hostfw, integrity, ops, replicas, services, ssh, tasks, usage,
};
use crate::store::sqlite::{json_list, to_i64};
use crate::store::{StoreError, Write};

fn put_meta<C: GenericClient>(
    db: &mut Db<'_, C>,
    key: &str,
    value: &str,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO meta (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&key, &value],
    )?;
    Ok(())
}

pub(super) fn apply_one<C: GenericClient>(db: &mut Db<'_, C>, w: &Write) -> Result<(), StoreError> {
    match w {
        Write::PutNetwork(n) => {
            db.exec(
                "INSERT INTO networks (id, name, ipv4_cidr, ipv6_prefix, dns_domain, pow_difficulty, created_at, anomaly)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, ipv4_cidr = excluded.ipv4_cidr,
                   ipv6_prefix = excluded.ipv6_prefix, dns_domain = excluded.dns_domain,
                   pow_difficulty = excluded.pow_difficulty, anomaly = excluded.anomaly",
                &[
                    &to_i64(n.id),
                    &n.name,
                    &n.ipv4_cidr.to_string(),
                    &n.ipv6_prefix.map(|p| p.to_string()),
                    &n.dns_domain,
                    &i64::from(n.pow_difficulty),
                    &to_i64(n.created_at),
                    &n.anomaly.and_then(|a| serde_json::to_string(&a).ok()),
                ],
            )?;
        }
        Write::PutNode(n) => {
            db.exec(
                "INSERT INTO nodes (id, node_key, name, hostname, tags, disabled, credential_hash, endpoints, last_seen, created_at, facts, facts_changed_ms, seen_published)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (id) DO UPDATE SET node_key = excluded.node_key, name = excluded.name, hostname = excluded.hostname,
                   tags = excluded.tags, disabled = excluded.disabled,
                   credential_hash = excluded.credential_hash, endpoints = excluded.endpoints,
                   last_seen = excluded.last_seen, facts = excluded.facts,
                   facts_changed_ms = excluded.facts_changed_ms, seen_published = excluded.seen_published",
                &[
                    &to_i64(n.id),
                    &n.node_key.to_string(),
                    &n.name,
                    &n.hostname,
                    &json_list(&n.tags),
                    &n.disabled,
                    &n.credential_hash.to_string(),
                    &json_list(&n.endpoints),
                    &n.last_seen.map(to_i64),
                    &to_i64(n.created_at),
                    &n.facts.as_ref().and_then(|f| serde_json::to_string(f).ok()),
                    &n.facts_changed_ms.map(to_i64),
                    &n.seen_published.map(to_i64),
                ],
            )?;
        }
        Write::DeleteNode(id) => {
            db.exec("DELETE FROM nodes WHERE id = $1", &[&to_i64(*id)])?;
        }
        Write::PutMembership(m) => {
            db.exec(
                "INSERT INTO memberships (node_id, network_id, ipv4, ipv6, token_id, joined_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (node_id, network_id) DO UPDATE SET ipv4 = excluded.ipv4,
                   ipv6 = excluded.ipv6, token_id = excluded.token_id",
                &[
                    &to_i64(m.node_id),
                    &to_i64(m.network_id),
                    &m.ipv4.to_string(),
                    &m.ipv6.map(|a| a.to_string()),
                    &m.token_id.map(to_i64),
                    &to_i64(m.joined_at),
                ],
            )?;
        }
        Write::PutToken(t) => {
            db.exec(
                "INSERT INTO join_tokens (id, token_hash, description, tags, networks, max_uses, uses, expires_at, revoked, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (id) DO UPDATE SET uses = excluded.uses, revoked = excluded.revoked,
                   description = excluded.description, networks = excluded.networks",
                &[
                    &to_i64(t.id),
                    &t.token_hash.to_string(),
                    &t.description,
                    &json_list(&t.tags),
                    &json_list(&t.networks),
                    &t.max_uses.map(i64::from),
                    &i64::from(t.uses),
                    &to_i64(t.expires_at),
                    &t.revoked,
                    &to_i64(t.created_at),
                ],
            )?;
        }
        Write::PutRelay(r) => {
            db.exec(
                "INSERT INTO relays (id, name, url, token_hash, tls_fingerprint, stun_port, created_at, last_seen)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url,
                   tls_fingerprint = excluded.tls_fingerprint, stun_port = excluded.stun_port,
                   last_seen = excluded.last_seen",
                &[
                    &to_i64(r.id),
                    &r.name,
                    &r.url,
                    &r.token_hash.to_string(),
                    &r.tls_fingerprint,
                    &r.stun_port.map(i64::from),
                    &to_i64(r.created_at),
                    &r.last_seen.map(to_i64),
                ],
            )?;
        }
        Write::PutRoute(r) => {
            db.exec(
                "INSERT INTO routes (node_id, network_id, prefix, state, source, approved_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (node_id, network_id, prefix) DO UPDATE SET state = excluded.state,
                   source = excluded.source, approved_at = excluded.approved_at",
                &[
                    &to_i64(r.node_id),
                    &to_i64(r.network_id),
                    &r.prefix.to_string(),
                    &r.state.as_str(),
                    &r.source.as_str(),
                    &r.approved_at.map(to_i64),
                    &to_i64(r.created_at),
                ],
            )?;
        }
        Write::DeleteRoute {
            node_id,
            network_id,
            prefix,
        } => {
            db.exec(
                "DELETE FROM routes WHERE node_id = $1 AND network_id = $2 AND prefix = $3",
                &[&to_i64(*node_id), &to_i64(*network_id), &prefix.to_string()],
            )?;
        }
        Write::DeleteMembership {
            node_id,
            network_id,
        } => {
            let (node, net) = (to_i64(*node_id), to_i64(*network_id));
            db.exec(
                "DELETE FROM routes WHERE node_id = $1 AND network_id = $2",
                &[&node, &net],
            )?;
            db.exec(
                "DELETE FROM memberships WHERE node_id = $1 AND network_id = $2",
                &[&node, &net],
            )?;
        }
        Write::DeleteRelay(id) => {
            db.exec("DELETE FROM relays WHERE id = $1", &[&to_i64(*id)])?;
        }
        Write::PutPolicy(p) => {
            db.exec(
                "INSERT INTO policy_versions (version, text, author, at_ms) VALUES ($1, $2, $3, $4)",
                &[&to_i64(p.version), &p.text, &p.author, &to_i64(p.at_ms)],
            )?;
        }
        Write::Audit(a) => {
            db.exec(
                "INSERT INTO audit_log (id, at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &to_i64(a.id),
                    &to_i64(a.at_ms),
                    &a.actor,
                    &a.action,
                    &a.target,
                    &a.detail.to_string(),
                ],
            )?;
        }
        Write::AuditPrune { through_id } => ops::audit_prune(db, *through_id)?,
        Write::DeleteNetwork(id) => ops::delete_network(db, *id)?,
        Write::Events(records) => events::insert(db, records)?,
        Write::PutHookApproval(r) => integrity::put_approval(db, r)?,
        Write::DeleteHookApproval { name, sha256 } => {
            integrity::delete_approval(db, name, sha256.as_deref())?
        }
        Write::PutExpected(r) => integrity::put_expected(db, r)?,
        Write::PutNodeIntegrity(r) => integrity::put_report(db, r)?,
        Write::PutTask(t) => tasks::put_task(db, t)?,
        Write::PutTaskRun(r) => tasks::put_run(db, r)?,
        Write::PutTaskResult(r) => tasks::put_result(db, r)?,
        Write::DeleteTask(id) => tasks::delete_task(db, id)?,
        Write::Data(w) => data::apply(db, w)?,
        Write::DnsBlocklist(r) => dns_blocklist::put(db, r.as_ref())?,
        Write::HostFw(w) => hostfw::apply(db, w)?,
        Write::Ssh(w) => ssh::apply(db, w)?,
        Write::Services(w) => services::apply(db, w)?,
        Write::UsageCounter(r) => usage::put_counter(db, r)?,
        Write::UsageAdd(r) => usage::add_bucket(db, r)?,
        Write::UsagePrune(before) => usage::prune(db, *before)?,
        Write::SetMapVersion(v) => put_meta(db, "map_version", &v.to_string())?,
        Write::SetAdminHash(h) => put_meta(db, "admin_hash", &h.to_string())?,
        Write::Challenge(w) => super::challenges::apply(db, w)?,
        Write::Presence {
            replica,
            node_id,
            online,
        } => replicas::put_presence(db, replica, *node_id, *online)?,
        Write::ReplicaGone(id) => replicas::replica_gone(db, id)?,
        Write::Change(c) => replicas::put_change(db, c)?,
    }
    Ok(())
}
