//! Subnet routes: the agent's advertisement, the admin's list, add, approve,
//! reject and withdraw; and removing a node from one network.

use axum::extract::State;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use http::StatusCode;
use weft_proto::api::{AdvertiseRoutesRequest, LeaveResponse, RouteList, RouteRequest};

use super::{AdminAuth, ApiJson, ApiPath, AppState, NodeAuth, views};
use crate::error::ApiError;
use crate::model::{Actor, AdvertiseRoutes, ChangeRoute, LeaveNetwork, RouteOp};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/node/routes", post(advertise))
        .route("/v1/admin/routes", get(list).post(add))
        .route("/v1/admin/routes/approve", post(approve))
        .route("/v1/admin/routes/reject", post(reject))
        .route("/v1/admin/routes/withdraw", post(withdraw))
        .route("/v1/admin/networks/{network}/members/{node}", delete(leave))
}

impl super::Versioned for AdvertiseRoutesRequest {
    fn api_version(&self) -> Option<u32> {
        None
    }
}

impl super::Versioned for RouteRequest {
    fn api_version(&self) -> Option<u32> {
        None
    }
}

/// Longest prefix text, node selector or network name a route request may carry.
const MAX_FIELD: usize = 128;

fn bounded(req: &RouteRequest) -> Result<(), ApiError> {
    if req.node.len() > MAX_FIELD
        || req.prefix.len() > MAX_FIELD
        || req.network.as_ref().is_some_and(|n| n.len() > MAX_FIELD)
    {
        return Err(ApiError::invalid(
            "invalid_route",
            format!("node, prefix and network are at most {MAX_FIELD} bytes"),
        ));
    }
    Ok(())
}

async fn advertise(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(req): ApiJson<AdvertiseRoutesRequest>,
) -> Result<StatusCode, ApiError> {
    if req.routes.iter().any(|r| r.len() > MAX_FIELD) {
        return Err(ApiError::invalid(
            "invalid_cidr",
            format!("a route is at most {MAX_FIELD} bytes"),
        ));
    }
    let op = AdvertiseRoutes {
        node: auth.id,
        routes: req.routes,
    };
    st.engine.execute(Actor::Node(auth.key), op).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list(State(st): State<AppState>, _: AdminAuth) -> Json<RouteList> {
    let world = st.engine.world().read().await;
    Json(RouteList {
        routes: views::routes(&world),
    })
}

async fn run(st: &AppState, op: RouteOp, req: RouteRequest) -> Result<Json<RouteList>, ApiError> {
    bounded(&req)?;
    let changed = st
        .engine
        .execute(Actor::Admin, ChangeRoute { op, req })
        .await?;
    Ok(Json(RouteList {
        routes: changed.iter().map(views::route).collect(),
    }))
}

async fn add(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<RouteRequest>,
) -> Result<Json<RouteList>, ApiError> {
    run(&st, RouteOp::Add, req).await
}

async fn approve(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<RouteRequest>,
) -> Result<Json<RouteList>, ApiError> {
    run(&st, RouteOp::Approve, req).await
}

async fn reject(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<RouteRequest>,
) -> Result<Json<RouteList>, ApiError> {
    run(&st, RouteOp::Reject, req).await
}

async fn withdraw(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<RouteRequest>,
) -> Result<Json<RouteList>, ApiError> {
    run(&st, RouteOp::Withdraw, req).await
}

async fn leave(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath((network, node)): ApiPath<(String, String)>,
) -> Result<Json<LeaveResponse>, ApiError> {
    if network.len() > MAX_FIELD || node.len() > MAX_FIELD {
        return Err(ApiError::not_found("not_found", "no such network or node"));
    }
    let left = st
        .engine
        .execute(Actor::Admin, LeaveNetwork { network, node })
        .await?;
    Ok(Json(LeaveResponse {
        node: left.node,
        network: left.network,
    }))
}
