//! The JSON views of the controller's state: what the admin, node and relay
//! APIs return for networks, nodes, join tokens, relays, routes and the
//! policy, built from the model's values (an operation's typed result or a
//! read of the [`World`]).

use weft_proto::api::{
    self, NodeAddress, NodeInfo, PolicyCheckRequest, PolicyCheckResponse, PolicyDoc,
    PolicyPairDecision, RouteInfo, TokenInfo,
};
use weft_proto::relay_api::RelayInfo;

use crate::error::ApiError;
use crate::model::{NetId, NetState, NodeState, RelayId, RouteStatus, Token, World, secs_to_ms};
use crate::store::{PolicyRecord, RelayRecord};

/// A network.
pub fn network(net: &NetState) -> api::Network {
    api::Network {
        name: net.rec.name.clone(),
        ipv4_cidr: net.rec.ipv4_cidr,
        ipv6_prefix: net.rec.ipv6_prefix,
        dns_domain: net.rec.dns_domain.clone(),
        pow_difficulty: net.rec.pow_difficulty,
        node_count: net.members.len() as u64,
        created_at_ms: secs_to_ms(net.rec.created_at),
        anomaly: net.rec.anomaly,
    }
}

/// All networks, by name.
pub fn networks(w: &World) -> Vec<api::Network> {
    w.networks_by_name().map(network).collect()
}

/// A node with its addresses ([`World::addresses`]) and integrity state
/// ([`World::integrity_state`]).
pub fn node(
    n: &NodeState,
    addresses: Vec<NodeAddress>,
    integrity: weft_proto::integrity::IntegrityState,
) -> NodeInfo {
    NodeInfo {
        node_key: n.rec.node_key,
        name: n.rec.name.clone(),
        hostname: n.rec.hostname.clone(),
        tags: n.rec.tags.iter().cloned().collect(),
        disabled: n.rec.disabled,
        online: n.online,
        endpoints: n.rec.endpoints.clone(),
        last_seen_ms: n.rec.last_seen.map(secs_to_ms),
        created_at_ms: secs_to_ms(n.rec.created_at),
        addresses,
        facts: n.rec.facts.as_deref().cloned(),
        facts_changed_ms: n.rec.facts_changed_ms,
        integrity,
    }
}

/// Nodes by name, optionally only members of a network.
pub fn nodes(w: &World, network: Option<NetId>) -> Vec<NodeInfo> {
    w.nodes_by_name(network)
        .map(|n| node(n, w.addresses(n), w.integrity_state(n.rec.id)))
        .collect()
}

/// A join token.
pub fn token(t: &Token) -> TokenInfo {
    TokenInfo {
        id: t.rec.id,
        networks: t.networks.clone(),
        tags: t.rec.tags.iter().cloned().collect(),
        max_uses: t.rec.max_uses,
        uses: t.rec.uses,
        expires_at_ms: secs_to_ms(t.rec.expires_at),
        created_at_ms: secs_to_ms(t.rec.created_at),
        state: t.status.as_str().to_owned(),
        description: t.rec.description.clone(),
    }
}

/// All join tokens, by id, with their status at `now_ms`.
pub fn tokens(w: &World, now_ms: u64) -> Vec<TokenInfo> {
    w.tokens().map(|t| token(&w.token(t, now_ms))).collect()
}

/// A relay (`connected` is filled in by the caller).
pub fn relay(r: &RelayRecord) -> RelayInfo {
    RelayInfo {
        name: r.name.clone(),
        url: r.url.clone(),
        tls_fingerprint: r.tls_fingerprint.clone(),
        stun_port: r.stun_port,
        created_at_ms: secs_to_ms(r.created_at),
        last_seen_ms: r.last_seen.map(secs_to_ms),
        connected: false,
    }
}

/// All relays, by name.
pub fn relays(w: &World) -> Vec<(RelayId, RelayInfo)> {
    w.relays_by_name().map(|r| (r.id, relay(r))).collect()
}

/// A subnet route.
pub fn route(r: &RouteStatus) -> RouteInfo {
    RouteInfo {
        node: r.node.clone(),
        node_key: r.node_key,
        network: r.network.clone(),
        prefix: r.rec.prefix.to_string(),
        state: r.rec.state.as_str().to_owned(),
        source: r.rec.source.as_str().to_owned(),
        primary: r.primary,
        online: r.online,
    }
}

/// Every subnet route.
pub fn routes(w: &World) -> Vec<RouteInfo> {
    w.routes().map(|r| route(&r)).collect()
}

/// A version of the policy.
pub fn policy(rec: &PolicyRecord) -> PolicyDoc {
    PolicyDoc {
        version: rec.version,
        text: rec.text.clone(),
        author: rec.author.clone(),
        at_ms: rec.at_ms,
    }
}

/// Decides `req` against the policy in force and the current nodes.
pub fn check_policy(w: &World, req: &PolicyCheckRequest) -> Result<PolicyCheckResponse, ApiError> {
    let sel = |what: &str, s: &str| {
        weft_policy::Selector::parse_or_node(s)
            .map_err(|e| ApiError::invalid("invalid_selector", format!("{what}: {e}")))
    };
    let from = sel("from", &req.from)?;
    let to = sel("to", &req.to)?;
    let proto = match req.proto.as_deref() {
        None => weft_policy::Proto::Any,
        Some(p) => p
            .parse()
            .map_err(|e| ApiError::invalid("invalid_proto", format!("proto: {e}")))?,
    };
    // `any` asks about every protocol: tcp and udp at the port, and icmp.
    let services = weft_policy::Service::for_check(proto, req.port)
        .map_err(|e| ApiError::invalid("invalid_service", e.to_string()))?;
    let inv = w.inventory();
    let reports: Vec<_> = services
        .iter()
        .map(|s| (s, w.policy.parsed.check(&inv, &from, &to, *s)))
        .collect();
    let several = reports.len() > 1;
    let pairs = reports
        .iter()
        .flat_map(|(s, r)| r.pairs.iter().map(move |p| (s, p)))
        .map(|(s, p)| PolicyPairDecision {
            from_node: p.from_node.clone(),
            from_addr: p.from_addr,
            to_node: p.to_node.clone(),
            to_addr: p.to_addr,
            verdict: if p.verdict.is_allow() {
                "allow"
            } else {
                "deny"
            }
            .into(),
            rule: p.rule.as_ref().and_then(|r| r.name.clone()),
            rule_number: p.rule.as_ref().map(|r| r.id.0 + 1),
            line: p.rule.as_ref().map(|r| r.line),
            explanation: if several {
                format!("{s}: {p}")
            } else {
                p.to_string()
            },
        })
        .collect();
    Ok(PolicyCheckResponse {
        version: w.policy.rec.version,
        allowed: reports.iter().all(|(_, r)| r.all_allowed()),
        pairs,
        representative: reports.iter().any(|(_, r)| r.representative),
        truncated: reports.iter().any(|(_, r)| r.truncated),
    })
}
