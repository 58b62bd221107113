//! The admin API: networks (create, list, show, delete), join tokens, nodes
//! and the audit log.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use rand_core::OsRng;
use serde::Deserialize;
use weft_identity::Difficulty;
use weft_proto::api::{
    AuditEntry, AuditList, CreateNetworkRequest, CreateTokenRequest, CreateTokenResponse, Network,
    NetworkList, NetworkRemoveResponse, NodeInfo, NodeList, PolicyCheckRequest,
    PolicyCheckResponse, PolicyDoc, SetPolicyRequest, TokenInfo, TokenList, UpdateNodeRequest,
};
use weft_proto::net::{Ipv4Net, Ipv6Net};
use weft_proto::netmap::DEFAULT_DNS_DOMAIN;

use super::{AdminAuth, ApiJson, ApiPath, ApiQuery, AppState, views};
use crate::clock;
use crate::error::ApiError;
use crate::model::{
    Actor, NewNetwork, NewToken, NodePatch, RemoveNetwork, RemoveNode, RevokeToken, SetPolicy,
    UpdateNode,
};
use crate::secret::{self, JOIN_PREFIX};
use crate::store::AuditQuery;
use crate::validate::{self, MAX_DESCRIPTION, MAX_TOKEN_NETWORKS};

/// Longest token lifetime: ten years.
const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/admin/networks",
            get(list_networks).post(create_network),
        )
        .route(
            "/v1/admin/networks/{name}",
            get(show_network).delete(remove_network),
        )
        .route("/v1/admin/tokens", get(list_tokens).post(create_token))
        .route("/v1/admin/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/v1/admin/nodes", get(list_nodes))
        .route(
            "/v1/admin/nodes/{node}",
            get(show_node).patch(update_node).delete(remove_node),
        )
        .route("/v1/admin/audit", get(audit))
        .route("/v1/admin/policy", get(get_policy).put(set_policy))
        .route("/v1/admin/policy/check", axum::routing::post(check_policy))
}

fn invalid_cidr(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid("invalid_cidr", format!("{what}: {e}"))
}

async fn create_network(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<CreateNetworkRequest>,
) -> Result<(StatusCode, Json<Network>), ApiError> {
    validate::name("network", &req.name)?;
    let ipv4_cidr: Ipv4Net = req
        .ipv4_cidr
        .parse()
        .map_err(|e| invalid_cidr("ipv4_cidr", e))?;
    if !(8..=30).contains(&ipv4_cidr.prefix_len()) {
        return Err(invalid_cidr("ipv4_cidr", "prefix length must be 8 to 30"));
    }
    let ipv6_prefix = match &req.ipv6_prefix {
        None => None,
        Some(s) => {
            let p: Ipv6Net = s.parse().map_err(|e| invalid_cidr("ipv6_prefix", e))?;
            if !(8..=96).contains(&p.prefix_len()) {
                return Err(invalid_cidr("ipv6_prefix", "prefix length must be 8 to 96"));
            }
            Some(p)
        }
    };
    let dns_domain = req
        .dns_domain
        .clone()
        .unwrap_or_else(|| DEFAULT_DNS_DOMAIN.to_owned());
    validate::domain(&dns_domain)?;
    let pow = req.pow_difficulty.unwrap_or(Difficulty::DEFAULT.bits());
    Difficulty::new(pow).map_err(|e| ApiError::invalid("invalid_difficulty", e.to_string()))?;
    let op = NewNetwork {
        name: req.name,
        ipv4_cidr,
        ipv6_prefix,
        dns_domain,
        pow_difficulty: pow,
    };
    let net = st.engine.execute(Actor::Admin, op).await?;
    Ok((StatusCode::CREATED, Json(views::network(&net))))
}

async fn list_networks(State(st): State<AppState>, _: AdminAuth) -> Json<NetworkList> {
    let world = st.engine.world().read().await;
    Json(NetworkList {
        networks: views::networks(&world),
    })
}

async fn show_network(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Network>, ApiError> {
    let world = st.engine.world().read().await;
    let net = world.network_by_name(&name).ok_or_else(|| {
        ApiError::not_found("network_not_found", format!("no network named {name:?}"))
    })?;
    Ok(Json(views::network(net)))
}

async fn remove_network(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<NetworkRemoveResponse>, ApiError> {
    validate::name("network", &name)?;
    let r = st
        .engine
        .execute(Actor::Admin, RemoveNetwork { name })
        .await?;
    Ok(Json(NetworkRemoveResponse {
        network: r.network,
        members: r.members,
        orphaned: r.orphaned,
        routes: r.routes,
        services: r.services,
        data_keys: r.data_keys,
        tokens_changed: r.tokens_changed,
        tokens_revoked: r.tokens_revoked,
        policy_rule_removed: r.policy_rule_removed,
    }))
}

async fn create_token(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreateTokenResponse>), ApiError> {
    if req.networks.is_empty() || req.networks.len() > MAX_TOKEN_NETWORKS {
        return Err(ApiError::invalid(
            "invalid_networks",
            format!("name 1 to {MAX_TOKEN_NETWORKS} networks"),
        ));
    }
    for n in &req.networks {
        validate::name("network", n)?;
    }
    validate::tags(&req.tags)?;
    if req.expires_in_secs == 0 || req.expires_in_secs > MAX_TOKEN_LIFETIME_SECS {
        return Err(ApiError::invalid(
            "invalid_expiry",
            "expires_in_secs must be 1 to 315360000 (ten years)",
        ));
    }
    if req.max_uses == Some(0) {
        return Err(ApiError::invalid(
            "invalid_uses",
            "max_uses must be at least 1, or null for unlimited",
        ));
    }
    if let Some(d) = &req.description {
        validate::free_text("invalid_description", "description", d, MAX_DESCRIPTION)?;
    }
    let (token, hash) = secret::generate(JOIN_PREFIX, &mut OsRng);
    let expires_at = clock::now_unix_ms() / 1000 + req.expires_in_secs;
    let op = NewToken {
        networks: req.networks,
        tags: req.tags.into_iter().collect(),
        expires_at,
        max_uses: req.max_uses,
        description: req.description,
        hash,
    };
    let info = views::token(&st.engine.execute(Actor::Admin, op).await?);
    Ok((
        StatusCode::CREATED,
        Json(CreateTokenResponse { token, info }),
    ))
}

async fn list_tokens(State(st): State<AppState>, _: AdminAuth) -> Json<TokenList> {
    let world = st.engine.world().read().await;
    Json(TokenList {
        tokens: views::tokens(&world, clock::now_unix_ms()),
    })
}

async fn revoke_token(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<TokenInfo>, ApiError> {
    let t = st.engine.execute(Actor::Admin, RevokeToken(id)).await?;
    Ok(Json(views::token(&t)))
}

#[derive(Deserialize)]
struct NodeFilter {
    network: Option<String>,
}

async fn list_nodes(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiQuery(filter): ApiQuery<NodeFilter>,
) -> Result<Json<NodeList>, ApiError> {
    let world = st.engine.world().read().await;
    let net = match &filter.network {
        None => None,
        Some(name) => Some(
            world
                .network_by_name(name)
                .ok_or_else(|| {
                    ApiError::not_found("network_not_found", format!("no network named {name:?}"))
                })?
                .rec
                .id,
        ),
    };
    Ok(Json(NodeList {
        nodes: views::nodes(&world, net),
    }))
}

pub(super) fn bounded_selector(sel: &str) -> Result<(), ApiError> {
    if sel.len() > 64 {
        return Err(ApiError::not_found(
            "node_not_found",
            "no node with that key or name",
        ));
    }
    Ok(())
}

async fn show_node(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(sel): ApiPath<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    bounded_selector(&sel)?;
    let world = st.engine.world().read().await;
    let node = world.find_node(&sel).ok_or_else(|| {
        ApiError::not_found(
            "node_not_found",
            format!("no node with key or name {sel:?}"),
        )
    })?;
    Ok(Json(views::node(
        node,
        world.addresses(node),
        world.integrity_state(node.rec.id),
    )))
}

async fn update_node(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(sel): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateNodeRequest>,
) -> Result<Json<NodeInfo>, ApiError> {
    bounded_selector(&sel)?;
    if let Some(name) = &req.name {
        validate::name("node", name)?;
    }
    if let Some(tags) = &req.tags {
        validate::tags(tags)?;
    }
    let patch = NodePatch {
        name: req.name,
        tags: req.tags.map(|t| t.into_iter().collect::<BTreeSet<_>>()),
        disabled: req.disabled,
    };
    let op = UpdateNode { node: sel, patch };
    let n = st.engine.execute(Actor::Admin, op).await?;
    let integrity = st
        .engine
        .world()
        .read()
        .await
        .integrity_state(n.node.rec.id);
    Ok(Json(views::node(&n.node, n.addresses, integrity)))
}

async fn remove_node(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(sel): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    bounded_selector(&sel)?;
    let key = st
        .engine
        .world()
        .read()
        .await
        .find_node(&sel)
        .map(|n| n.rec.node_key);
    st.engine.execute(Actor::Admin, RemoveNode(sel)).await?;
    if let Some(key) = key {
        st.history.forget(&key);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AuditParams {
    limit: Option<u32>,
    before: Option<u64>,
    target: Option<String>,
}

async fn audit(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_query",
            "limit must be 1 to 1000",
        ));
    }
    if p.target.as_ref().is_some_and(|t| t.len() > 128) {
        return Err(ApiError::invalid("invalid_query", "target is too long"));
    }
    let rows = st
        .engine
        .audit(AuditQuery {
            limit,
            before_id: p.before,
            target: p.target,
        })
        .await?;
    Ok(Json(AuditList {
        entries: rows
            .into_iter()
            .map(|r| AuditEntry {
                id: r.id,
                at_ms: r.at_ms,
                actor: r.actor,
                action: r.action,
                target: r.target,
                detail: r.detail,
            })
            .collect(),
    }))
}

async fn get_policy(State(st): State<AppState>, _: AdminAuth) -> Json<PolicyDoc> {
    let world = st.engine.world().read().await;
    Json(views::policy(&world.policy.rec))
}

async fn set_policy(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<SetPolicyRequest>,
) -> Result<Json<PolicyDoc>, ApiError> {
    let op = SetPolicy {
        text: req.text,
        expect_version: req.expect_version,
    };
    let rec = st.engine.execute(Actor::Admin, op).await?;
    Ok(Json(views::policy(&rec)))
}

async fn check_policy(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<PolicyCheckRequest>,
) -> Result<Json<PolicyCheckResponse>, ApiError> {
    let world = st.engine.world().read().await;
    Ok(Json(views::check_policy(&world, &req)?))
}
