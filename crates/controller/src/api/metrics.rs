//! `GET /metrics`: the Prometheus scrape, and the layer that counts requests.
//!
//! On the API port the scrape needs the admin token (the same check as the
//! admin API). `serve --metrics-listen` serves it again on a plain-HTTP
//! listener of its own without authentication ([`scrape_router`]); the command
//! line refuses a non-loopback address for it unless told otherwise.

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{AdminAuth, AppState};
use crate::error::ApiError;
use crate::metrics::CONTENT_TYPE;

/// `GET /metrics` on the API port (admin token).
pub(super) async fn admin_scrape(State(st): State<AppState>, _admin: AdminAuth) -> Response {
    scrape(&st).await
}

async fn scrape(st: &AppState) -> Response {
    let streams = st.engine.hub().stream_count();
    let text = {
        let world = st.engine.world().read().await;
        st.engine.metrics().render(&world, streams)
    };
    match text {
        Ok(body) => (
            [
                (http::header::CONTENT_TYPE, CONTENT_TYPE),
                (http::header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(_) => ApiError::Internal.into_response(),
    }
}

/// The router of `--metrics-listen`: `GET /metrics` without authentication,
/// 404 for anything else.
pub fn scrape_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(st): State<AppState>| async move { scrape(&st).await }),
        )
        .fallback(|| async { ApiError::not_found("not_found", "only /metrics is served here") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// Counts every answered request by route template (`unmatched` when no route
/// matched: the raw path is never a label), method and status.
pub(super) async fn count(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().clone();
    let resp = next.run(req).await;
    st.engine
        .metrics()
        .http_request(&route, &method, resp.status().as_u16());
    resp
}
