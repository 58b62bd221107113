//! The host firewall ([`weft_proto::hostfw`], [`crate::model`]'s `hostfw`):
//! - `GET /v1/admin/firewall`: the declared file in force, its version, and
//!   the nodes it gives a firewall;
//! - `PUT /v1/admin/firewall` `{text, expect_version?}`: replace it (400
//!   `firewall_invalid` with every mistake's line; 409 on a stale version);
//!   each node whose compiled spec changed receives it in its map;
//! - `POST /v1/admin/firewall/check` `{text}`: validate without storing, and
//!   name the nodes it would select;
//! - `GET /v1/admin/firewall/rules[?node=]`, `POST /v1/admin/firewall/rules`
//!   (an [`AllowRuleRequest`]), `DELETE /v1/admin/firewall/rules/{id}`: the
//!   dynamic rules.
//!
//! [`sweep`] removes expired dynamic rules every [`SWEEP_EVERY`] (the agent
//! closes them at their expiry by itself; this keeps the controller's maps and
//! listings true).

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use tokio::sync::watch;
use weft_policy::hostfw::MAX_FIREWALL_BYTES;
use weft_proto::hostfw::{
    AllowRuleRequest, FirewallDoc, FirewallRuleInfo, FirewallRuleList, SetFirewallRequest,
};

use super::{AdminAuth, ApiJson, ApiPath, ApiQuery, AppState};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::model::{Actor, AllowRule, RevokeRule, SetFirewall, SweepFirewall};

/// How often expired dynamic rules are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Largest `PUT`/`check` body: the largest file, escaped in JSON, and room.
const MAX_BODY: usize = 2 * MAX_FIREWALL_BYTES + 16 * 1024;

impl super::Versioned for SetFirewallRequest {
    fn api_version(&self) -> Option<u32> {
        None
    }
}

impl super::Versioned for AllowRuleRequest {
    fn api_version(&self) -> Option<u32> {
        None
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/firewall", get(show).put(set))
        .route("/v1/admin/firewall/check", post(check))
        .route_layer(DefaultBodyLimit::max(MAX_BODY))
        .route("/v1/admin/firewall/rules", get(rules).post(allow))
        .route(
            "/v1/admin/firewall/rules/{id}",
            axum::routing::delete(revoke),
        )
}

async fn show(State(st): State<AppState>, _: AdminAuth) -> Json<FirewallDoc> {
    let world = st.engine.world().read().await;
    Json(world.firewall_doc())
}

async fn set(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<SetFirewallRequest>,
) -> Result<Json<FirewallDoc>, ApiError> {
    let op = SetFirewall {
        text: req.text,
        expect_version: req.expect_version,
    };
    Ok(Json(st.engine.execute(Actor::Admin, op).await?))
}

async fn check(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<SetFirewallRequest>,
) -> Result<Json<FirewallDoc>, ApiError> {
    let world = st.engine.world().read().await;
    Ok(Json(world.check_firewall(&req.text)?))
}

#[derive(Deserialize)]
struct RulesQuery {
    node: Option<String>,
}

async fn rules(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiQuery(q): ApiQuery<RulesQuery>,
) -> Result<Json<FirewallRuleList>, ApiError> {
    let world = st.engine.world().read().await;
    Ok(Json(FirewallRuleList {
        rules: world.firewall_rules(q.node.as_deref())?,
    }))
}

async fn allow(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<AllowRuleRequest>,
) -> Result<(StatusCode, Json<FirewallRuleInfo>), ApiError> {
    let info = st.engine.execute(Actor::Admin, AllowRule(req)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn revoke(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FirewallRuleInfo>, ApiError> {
    Ok(Json(
        st.engine.execute(Actor::Admin, RevokeRule { id }).await?,
    ))
}

/// Runs [`SweepFirewall`] every [`SWEEP_EVERY`] until `shutdown` turns true.
pub async fn sweep(engine: Engine, shutdown: watch::Receiver<bool>) {
    super::every(SWEEP_EVERY, shutdown, || async {
        match engine.execute(Actor::System, SweepFirewall).await {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(rules = ?gone, "expired host firewall rules removed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "removing expired host firewall rules failed"),
        }
    })
    .await;
}
