//! Anomaly events and thresholds:
//! - `POST /v1/node/events` (node): events the agent's detector raised; at
//!   most [`MAX_EVENTS_PER_UPLOAD`] per request, each validated (finite
//!   numbers, bounded text without terminal-spoofing characters); an event the
//!   log already holds (same node, same id) is ignored, so retries are safe.
//! - `GET /v1/admin/events?node=&since=&limit=` (admin): the log, oldest first
//!   (the newest `limit`, 100 by default).
//! - `PUT /v1/admin/networks/{name}/anomaly` (admin): the network's thresholds,
//!   carried to its members in their maps.

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use weft_proto::api::Network;
use weft_proto::events::{
    EventEntry, EventList, MAX_EVENTS_LISTED, MAX_EVENTS_PER_UPLOAD, NodeEventsRequest,
    SetAnomalyRequest,
};

use super::{AdminAuth, ApiJson, ApiPath, ApiQuery, AppState, NodeAuth, views};
use crate::error::ApiError;
use crate::model::{Actor, RecordEvents, SetNetworkAnomaly};
use crate::store::EventQuery;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/node/events", post(upload))
        .route("/v1/admin/events", get(list))
        .route("/v1/admin/networks/{name}/anomaly", put(set_thresholds))
}

async fn upload(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(req): ApiJson<NodeEventsRequest>,
) -> Result<StatusCode, ApiError> {
    if req.events.len() > MAX_EVENTS_PER_UPLOAD {
        return Err(ApiError::invalid(
            "too_many_events",
            format!("at most {MAX_EVENTS_PER_UPLOAD} events per request"),
        ));
    }
    for e in &req.events {
        e.validate()
            .map_err(|e| ApiError::invalid("invalid_event", e.to_string()))?;
    }
    if req.events.is_empty() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let op = RecordEvents {
        node: auth.id,
        events: req.events,
    };
    st.engine.execute(Actor::Node(auth.key), op).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    node: Option<String>,
    since: Option<u64>,
    limit: Option<u32>,
}

async fn list(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<EventList>, ApiError> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=MAX_EVENTS_LISTED).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_query",
            format!("limit must be 1 to {MAX_EVENTS_LISTED}"),
        ));
    }
    let node_id = match &p.node {
        None => None,
        Some(sel) => {
            let world = st.engine.world().read().await;
            let node = world
                .find_node(sel)
                .ok_or_else(|| ApiError::not_found("node_not_found", format!("no node {sel:?}")))?;
            Some(node.rec.id)
        }
    };
    let rows = st
        .engine
        .events(EventQuery {
            node_id,
            since_ms: p.since,
            limit,
        })
        .await?;
    Ok(Json(EventList {
        events: rows
            .into_iter()
            .map(|(seq, r)| EventEntry {
                seq,
                node: r.node_name,
                node_key: r.node_key,
                received_at_ms: r.received_at_ms,
                event: r.event,
            })
            .collect(),
    }))
}

async fn set_thresholds(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SetAnomalyRequest>,
) -> Result<Json<Network>, ApiError> {
    let op = SetNetworkAnomaly {
        network: name,
        thresholds: req.thresholds,
    };
    let net = st.engine.execute(Actor::Admin, op).await?;
    Ok(Json(views::network(&net)))
}
