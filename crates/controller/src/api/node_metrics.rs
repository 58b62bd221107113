//! Forwarded metrics: `POST /v1/node/metrics` (node: a batch of samples) and
//! `GET /v1/admin/nodes/{node}/metrics?since=` (admin: the node's history).
//! The history itself is [`crate::history`].

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use weft_proto::samples::{
    MAX_UPLOAD_SAMPLES, MetricsAccepted, MetricsUpload, NodeMetrics, SampleError,
};

use super::{AdminAuth, ApiJson, ApiPath, ApiQuery, AppState, NodeAuth};
use crate::clock;
use crate::error::ApiError;
use crate::history::WINDOW_MS;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/node/metrics", post(upload))
        .route("/v1/admin/nodes/{node}/metrics", get(history))
}

async fn upload(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(req): ApiJson<MetricsUpload>,
) -> Result<Json<MetricsAccepted>, ApiError> {
    if req.samples.is_empty() || req.samples.len() > MAX_UPLOAD_SAMPLES {
        return Err(ApiError::invalid(
            "invalid_samples",
            format!("send 1 to {MAX_UPLOAD_SAMPLES} samples"),
        ));
    }
    for s in &req.samples {
        s.validate().map_err(|e| match e {
            SampleError::Version(_) => {
                ApiError::invalid("unsupported_sample_version", e.to_string())
            }
            SampleError::Invalid { .. } => ApiError::invalid("invalid_samples", e.to_string()),
        })?;
    }
    let got = st.history.add(
        auth.key,
        &req.samples,
        req.outbox_dropped,
        clock::now_unix_ms(),
    );
    Ok(Json(got))
}

#[derive(Deserialize)]
struct Since {
    /// Unix milliseconds; default: the whole window.
    since: Option<u64>,
}

async fn history(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(sel): ApiPath<String>,
    ApiQuery(q): ApiQuery<Since>,
) -> Result<Json<NodeMetrics>, ApiError> {
    super::admin::bounded_selector(&sel)?;
    let (key, name) = {
        let world = st.engine.world().read().await;
        let node = world.find_node(&sel).ok_or_else(|| {
            ApiError::not_found(
                "node_not_found",
                format!("no node with key or name {sel:?}"),
            )
        })?;
        (node.rec.node_key, node.rec.name.clone())
    };
    let now = clock::now_unix_ms();
    let since = q.since.unwrap_or(now.saturating_sub(WINDOW_MS));
    Ok(Json(st.history.view(key, name, since, now)))
}
