//! Hooks and integrity:
//! - `POST /v1/node/integrity` (node): what the agent runs (weftd's version
//!   and SHA-256, every hook's SHA-256, a refused hooks directory); answers
//!   the node's judged state.
//! - `GET /v1/admin/hooks` (admin): the approved hook hashes.
//! - `PUT /v1/admin/hooks/{name}` (admin): approve `{sha256}` for a hook.
//! - `DELETE /v1/admin/hooks/{name}?sha256=` (admin): revoke one approved
//!   hash, or every hash of the hook.
//! - `PUT /v1/admin/integrity/expect` (admin): `{version, sha256}` weftd of
//!   that version must have.
//! - `GET /v1/admin/integrity?node=` (admin): the expected hashes and every
//!   node's state, reasons and last report (one node's with `node`).
//!
//! The rules are [`crate::model`]'s (`judge`); every admin change is audited.
//! A node whose mismatch any of these resolves gets a `task` event for each
//! task waiting for it (its leases of script and hook tasks were refused
//! while it lasted), so it runs them now rather than at its next reconnection.

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use weft_proto::integrity::{
    ApproveHookRequest, ExpectRequest, ExpectedWeftd, HookApprovalList, IntegrityOverview,
    IntegrityReport, NodeIntegrity,
};

use super::{AdminAuth, ApiJson, ApiPath, ApiQuery, AppState, NodeAuth};
use crate::clock;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::model::{Actor, ApproveHook, ExpectWeftd, NodeId, ReportIntegrity, RevokeHook};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/node/integrity", post(report))
        .route("/v1/admin/hooks", get(list_hooks))
        .route("/v1/admin/hooks/{name}", put(approve).delete(revoke))
        .route("/v1/admin/integrity/expect", put(expect))
        .route("/v1/admin/integrity", get(overview))
}

async fn report(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(report): ApiJson<IntegrityReport>,
) -> Result<Json<NodeIntegrity>, ApiError> {
    let op = ReportIntegrity {
        node: auth.id,
        report,
    };
    let blocked = mismatched(&st.engine).await;
    let judged = st.engine.execute(Actor::Node(auth.key), op).await?;
    offer_unblocked(&st.engine, blocked).await;
    Ok(Json(judged))
}

async fn list_hooks(
    State(st): State<AppState>,
    _: AdminAuth,
) -> Result<Json<HookApprovalList>, ApiError> {
    Ok(Json(st.engine.world().read().await.hook_approvals(None)))
}

async fn approve(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ApproveHookRequest>,
) -> Result<Json<HookApprovalList>, ApiError> {
    let op = ApproveHook {
        name,
        sha256: req.sha256,
    };
    let blocked = mismatched(&st.engine).await;
    let list = st.engine.execute(Actor::Admin, op).await?;
    offer_unblocked(&st.engine, blocked).await;
    Ok(Json(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeParams {
    sha256: Option<String>,
}

async fn revoke(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
    ApiQuery(p): ApiQuery<RevokeParams>,
) -> Result<Json<HookApprovalList>, ApiError> {
    let op = RevokeHook {
        name,
        sha256: p.sha256,
    };
    Ok(Json(st.engine.execute(Actor::Admin, op).await?))
}

async fn expect(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<ExpectRequest>,
) -> Result<Json<ExpectedWeftd>, ApiError> {
    let blocked = mismatched(&st.engine).await;
    let expected = st.engine.execute(Actor::Admin, ExpectWeftd(req)).await?;
    offer_unblocked(&st.engine, blocked).await;
    Ok(Json(expected))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverviewParams {
    node: Option<String>,
}

async fn overview(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiQuery(p): ApiQuery<OverviewParams>,
) -> Result<Json<IntegrityOverview>, ApiError> {
    let world = st.engine.world().read().await;
    let mut all = world.integrity_overview();
    if let Some(sel) = &p.node {
        let node = world
            .find_node(sel)
            .ok_or_else(|| ApiError::not_found("node_not_found", format!("no node {sel:?}")))?;
        all.nodes = vec![world.node_integrity(node)];
    }
    Ok(Json(all))
}

/// The nodes whose integrity is a mismatch now.
async fn mismatched(engine: &Engine) -> Vec<NodeId> {
    let world = engine.world().read().await;
    world
        .node_ids()
        .filter(|n| !world.integrity_allows_exec(*n))
        .collect()
}

/// Sends a `task` event for every task waiting for each node of `blocked`
/// that is no longer a mismatch.
async fn offer_unblocked(engine: &Engine, blocked: Vec<NodeId>) {
    let world = engine.world().read().await;
    let now_ms = clock::now_unix_ms();
    for node in blocked {
        if world.integrity_allows_exec(node) {
            for task in world.pending_tasks(node, now_ms) {
                engine.hub().notify_task(node, &task);
            }
        }
    }
}
