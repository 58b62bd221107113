//! Reading every row the controller keeps in memory ([`Store::load`](crate::store::Store::load)).

use postgres::GenericClient;

use super::{Db, col, data, dns_blocklist, hostfw, integrity, services, ssh, tasks, to_u32};
use crate::secret::SecretHash;
use crate::store::sqlite::{parse, parse_json, to_u64};
use crate::store::{
    MembershipRecord, NetworkRecord, NodeRecord, PolicyRecord, RelayRecord, RouteRecord,
    RouteSource, RouteState, StoreError, StoreSnapshot, TokenRecord,
};

fn meta<C: GenericClient>(db: &mut Db<'_, C>, key: &str) -> Result<Option<String>, StoreError> {
    db.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?
        .map(|r| col(&r, 0))
        .transpose()
}

pub(super) fn load<C: GenericClient>(db: &mut Db<'_, C>) -> Result<StoreSnapshot, StoreError> {
    let mut snap = StoreSnapshot {
        map_version: match meta(db, "map_version")? {
            Some(v) => parse("map_version", &v)?,
            None => 0,
        },
        admin_hash: match meta(db, "admin_hash")? {
            Some(v) => Some(parse::<SecretHash>("admin_hash", &v)?),
            None => None,
        },
        ..StoreSnapshot::default()
    };
    for r in db.query(
        "SELECT id, name, ipv4_cidr, ipv6_prefix, dns_domain, pow_difficulty, created_at, anomaly
         FROM networks ORDER BY id",
        &[],
    )? {
        let v4: String = col(&r, 2)?;
        let v6: Option<String> = col(&r, 3)?;
        let anomaly: Option<String> = col(&r, 7)?;
        snap.networks.push(NetworkRecord {
            id: to_u64(col(&r, 0)?),
            name: col(&r, 1)?,
            ipv4_cidr: parse("network ipv4_cidr", &v4)?,
            ipv6_prefix: v6.map(|s| parse("network ipv6_prefix", &s)).transpose()?,
            dns_domain: col(&r, 4)?,
            pow_difficulty: to_u32("network pow_difficulty", col(&r, 5)?)?,
            created_at: to_u64(col(&r, 6)?),
            anomaly: anomaly
                .map(|a| parse_json("network anomaly", &a))
                .transpose()?,
        });
    }
    for r in db.query(
        "SELECT id, node_key, name, hostname, tags, disabled, credential_hash, endpoints, last_seen,
                created_at, facts, facts_changed_ms, seen_published
         FROM nodes ORDER BY id",
        &[],
    )? {
        let key: String = col(&r, 1)?;
        let tags: String = col(&r, 4)?;
        let cred: String = col(&r, 6)?;
        let endpoints: String = col(&r, 7)?;
        let facts: Option<String> = col(&r, 10)?;
        snap.nodes.push(NodeRecord {
            id: to_u64(col(&r, 0)?),
            node_key: parse("node_key", &key)?,
            name: col(&r, 2)?,
            hostname: col(&r, 3)?,
            tags: parse_json("node tags", &tags)?,
            disabled: col(&r, 5)?,
            credential_hash: parse("credential_hash", &cred)?,
            endpoints: parse_json("node endpoints", &endpoints)?,
            last_seen: col::<Option<i64>>(&r, 8)?.map(to_u64),
            created_at: to_u64(col(&r, 9)?),
            facts: facts
                .map(|f| parse_json("node facts", &f).map(Box::new))
                .transpose()?,
            facts_changed_ms: col::<Option<i64>>(&r, 11)?.map(to_u64),
            seen_published: col::<Option<i64>>(&r, 12)?.map(to_u64),
        });
    }
    for r in db.query(
        "SELECT node_id, network_id, ipv4, ipv6, token_id, joined_at FROM memberships
         ORDER BY node_id, network_id",
        &[],
    )? {
        let v4: String = col(&r, 2)?;
        let v6: Option<String> = col(&r, 3)?;
        snap.memberships.push(MembershipRecord {
            node_id: to_u64(col(&r, 0)?),
            network_id: to_u64(col(&r, 1)?),
            ipv4: parse("membership ipv4", &v4)?,
            ipv6: v6.map(|s| parse("membership ipv6", &s)).transpose()?,
            token_id: col::<Option<i64>>(&r, 4)?.map(to_u64),
            joined_at: to_u64(col(&r, 5)?),
        });
    }
    for r in db.query(
        "SELECT id, token_hash, description, tags, networks, max_uses, uses, expires_at, revoked,
                created_at
         FROM join_tokens ORDER BY id",
        &[],
    )? {
        let hash: String = col(&r, 1)?;
        let tags: String = col(&r, 3)?;
        let networks: String = col(&r, 4)?;
        snap.tokens.push(TokenRecord {
            id: to_u64(col(&r, 0)?),
            token_hash: parse("token_hash", &hash)?,
            description: col(&r, 2)?,
            tags: parse_json("token tags", &tags)?,
            networks: parse_json("token networks", &networks)?,
            max_uses: col::<Option<i64>>(&r, 5)?
                .map(|v| to_u32("token max_uses", v))
                .transpose()?,
            uses: to_u32("token uses", col(&r, 6)?)?,
            expires_at: to_u64(col(&r, 7)?),
            revoked: col(&r, 8)?,
            created_at: to_u64(col(&r, 9)?),
        });
    }
    for r in db.query(
        "SELECT node_id, network_id, prefix, state, source, approved_at, created_at FROM routes
         ORDER BY network_id, prefix, node_id",
        &[],
    )? {
        let prefix: String = col(&r, 2)?;
        let state: String = col(&r, 3)?;
        let source: String = col(&r, 4)?;
        snap.routes.push(RouteRecord {
            node_id: to_u64(col(&r, 0)?),
            network_id: to_u64(col(&r, 1)?),
            prefix: parse("routes.prefix", &prefix)?,
            state: RouteState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("routes.state {state:?}")))?,
            source: RouteSource::parse(&source)
                .ok_or_else(|| StoreError::Corrupt(format!("routes.source {source:?}")))?,
            approved_at: col::<Option<i64>>(&r, 5)?.map(to_u64),
            created_at: to_u64(col(&r, 6)?),
        });
    }
    for r in db.query(
        "SELECT id, name, url, token_hash, tls_fingerprint, stun_port, created_at, last_seen
         FROM relays ORDER BY id",
        &[],
    )? {
        let hash: String = col(&r, 3)?;
        let stun: Option<i64> = col(&r, 5)?;
        snap.relays.push(RelayRecord {
            id: to_u64(col(&r, 0)?),
            name: col(&r, 1)?,
            url: col(&r, 2)?,
            token_hash: parse("relay token_hash", &hash)?,
            tls_fingerprint: col(&r, 4)?,
            stun_port: stun
                .map(|p| {
                    u16::try_from(p)
                        .map_err(|_| StoreError::Corrupt(format!("relay stun_port {p}")))
                })
                .transpose()?,
            created_at: to_u64(col(&r, 6)?),
            last_seen: col::<Option<i64>>(&r, 7)?.map(to_u64),
        });
    }
    snap.policy = db
        .query_opt(
            "SELECT version, text, author, at_ms FROM policy_versions ORDER BY version DESC LIMIT 1",
            &[],
        )?
        .map(|r| {
            Ok::<_, StoreError>(PolicyRecord {
                version: to_u64(col(&r, 0)?),
                text: col(&r, 1)?,
                author: col(&r, 2)?,
                at_ms: to_u64(col(&r, 3)?),
            })
        })
        .transpose()?;
    let max_audit = db.query_opt("SELECT MAX(id) FROM audit_log", &[])?;
    snap.max_audit_id = match max_audit {
        Some(r) => col::<Option<i64>>(&r, 0)?.map_or(0, to_u64),
        None => 0,
    };
    snap.tasks = tasks::load(db)?;
    snap.data = data::load(db)?;
    snap.dns_blocklist = dns_blocklist::load(db)?;
    snap.hostfw = hostfw::load(db)?;
    snap.ssh = ssh::load(db)?;
    snap.services = services::load(db)?;
    snap.challenge_key = super::challenges::key(db)?;
    snap.used_challenges = super::challenges::used(db)?;
    snap.integrity = integrity::load(db)?;
    Ok(snap)
}
