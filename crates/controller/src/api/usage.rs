//! Usage accounting: `POST /v1/node/usage` (node: monotonic counters of its
//! flows and of its sidecar's users) and `GET /v1/admin/usage?by=&since=`
//! (admin: growth over a window, grouped). The rules are
//! [`crate::model::usage`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use weft_proto::NodeKey;
use weft_proto::usage::{USAGE_BUCKET_MS, UsageBy, UsageReport, UsageUpload};

use super::{AdminAuth, ApiJson, ApiQuery, AppState, NodeAuth};
use crate::clock;
use crate::error::ApiError;
use crate::model::World;
use crate::model::usage::{Names, rows};

/// The window `GET /v1/admin/usage` covers without `since`: a day.
const DEFAULT_WINDOW_MS: u64 = 24 * 3_600_000;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/node/usage", post(upload))
        .route("/v1/admin/usage", get(query))
}

impl super::Versioned for UsageUpload {
    fn api_version(&self) -> Option<u32> {
        None
    }
}

async fn upload(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(req): ApiJson<UsageUpload>,
) -> Result<StatusCode, ApiError> {
    req.validate()
        .map_err(|why| ApiError::invalid("invalid_usage", why))?;
    st.engine.usage_upload(auth.id, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct UsageParams {
    /// `node` (default), `peer`, `port` or `user`.
    by: Option<String>,
    /// Unix milliseconds; default: a day ago.
    since: Option<u64>,
}

struct WorldNames<'a>(&'a World);

impl Names for WorldNames<'_> {
    fn node(&self, id: u64) -> Option<String> {
        self.0.node(id).map(|n| n.rec.name.clone())
    }

    fn peer(&self, key: &NodeKey) -> Option<String> {
        self.0.find_node_by_key(key).map(|n| n.rec.name.clone())
    }
}

async fn query(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiQuery(p): ApiQuery<UsageParams>,
) -> Result<Json<UsageReport>, ApiError> {
    let by = match p.by.as_deref() {
        None => UsageBy::Node,
        Some(s) => UsageBy::parse(s).ok_or_else(|| {
            ApiError::invalid("invalid_query", "by must be node, peer, port or user")
        })?,
    };
    let now = clock::now_unix_ms();
    let since = p.since.unwrap_or(now.saturating_sub(DEFAULT_WINDOW_MS));
    if since > now {
        return Err(ApiError::invalid(
            "invalid_query",
            "since is in the future (Unix milliseconds expected)",
        ));
    }
    let since = since - since % USAGE_BUCKET_MS;
    let sums = st.engine.usage_sums(since).await?;
    let world = st.engine.world().read().await;
    Ok(Json(UsageReport {
        by,
        since_ms: since,
        bucket_ms: USAGE_BUCKET_MS,
        rows: rows(by, &sums, &WorldNames(&world)),
    }))
}
