//! Relays: the admin API that registers them, and the relay API they use to
//! report themselves and follow the member set.
//!
//! A relay authenticates with its relay token (`weft_relay_…`, shown once at
//! creation, stored hashed). The member stream starts with `retry: 2000` and a
//! `members` snapshot (or, resuming with `Last-Event-ID`, the deltas after
//! it: [`crate::relay_feed`]), then sends a `members_delta` whenever nodes
//! are registered, disabled, enabled or removed, and a keepalive comment
//! every keepalive interval. A controller shutting down sends `reconnect`
//! first. It ends when the relay is removed or the controller stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use rand_core::OsRng;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use weft_proto::relay_api::{
    CreateRelayRequest, CreateRelayResponse, MemberSnapshot, RelayInfo, RelayList,
    RelayReportRequest, RelayUrl, is_tls_fingerprint,
};
use weft_proto::sse;

use super::{AdminAuth, ApiJson, ApiPath, AppState, bearer, views};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::model::{Actor, NewRelay, RelayId, RelayReport, RemoveRelay, ReportRelay};
use crate::relay_feed::RelaySubscription;
use crate::secret::{self, RELAY_PREFIX};
use crate::validate;

/// Open member streams allowed per relay.
const STREAMS_PER_RELAY: usize = 4;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/relays", get(list).post(create))
        .route("/v1/admin/relays/{name}", get(show).delete(remove))
        .route("/v1/relay/report", post(report))
        .route("/v1/relay/members", get(members))
        .route("/v1/relay/members/stream", get(stream))
}

/// An authenticated relay.
pub struct RelayAuth {
    /// Its id.
    pub id: RelayId,
    /// Its name.
    pub name: String,
}

impl FromRequestParts<AppState> for RelayAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let hash = bearer(parts)?;
        let world = state.engine.world().read().await;
        let relay = world.relay_by_token(&hash).ok_or(ApiError::Unauthorized)?;
        Ok(RelayAuth {
            id: relay.id,
            name: relay.name.clone(),
        })
    }
}

fn with_connected(st: &AppState, id: RelayId, mut info: RelayInfo) -> RelayInfo {
    info.connected = st.engine.relay_feed().is_connected(id);
    info
}

async fn create(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<CreateRelayRequest>,
) -> Result<(StatusCode, Json<CreateRelayResponse>), ApiError> {
    validate::name("relay", &req.name)?;
    let url =
        RelayUrl::parse(&req.url).map_err(|e| ApiError::invalid("invalid_url", e.to_string()))?;
    let (token, hash) = secret::generate(RELAY_PREFIX, &mut OsRng);
    let op = NewRelay {
        name: req.name,
        url: url.to_string(),
        hash,
    };
    let info = views::relay(&st.engine.execute(Actor::Admin, op).await?);
    Ok((
        StatusCode::CREATED,
        Json(CreateRelayResponse { token, info }),
    ))
}

async fn list(State(st): State<AppState>, _: AdminAuth) -> Json<RelayList> {
    let infos = views::relays(&*st.engine.world().read().await);
    Json(RelayList {
        relays: infos
            .into_iter()
            .map(|(id, info)| with_connected(&st, id, info))
            .collect(),
    })
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found("relay_not_found", format!("no relay named {name:?}"))
}

async fn show(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<RelayInfo>, ApiError> {
    let world = st.engine.world().read().await;
    let r = world.relay_by_name(&name).ok_or_else(|| not_found(&name))?;
    Ok(Json(with_connected(&st, r.id, views::relay(r))))
}

async fn remove(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if name.len() > 64 {
        return Err(not_found(&name));
    }
    st.engine.execute(Actor::Admin, RemoveRelay(name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn report(
    State(st): State<AppState>,
    auth: RelayAuth,
    ApiJson(req): ApiJson<RelayReportRequest>,
) -> Result<Json<RelayInfo>, ApiError> {
    if let Some(fp) = &req.tls_fingerprint
        && !is_tls_fingerprint(fp)
    {
        return Err(ApiError::invalid(
            "invalid_fingerprint",
            "tls_fingerprint must be sha256:<64 lowercase hex digits>",
        ));
    }
    if req.stun_port == Some(0) {
        return Err(ApiError::invalid(
            "invalid_port",
            "stun_port must be 1 to 65535",
        ));
    }
    let op = ReportRelay {
        relay: auth.id,
        report: RelayReport {
            tls_fingerprint: req.tls_fingerprint,
            stun_port: req.stun_port,
        },
    };
    let rec = st.engine.execute(Actor::Relay(auth.name), op).await?;
    Ok(Json(with_connected(&st, auth.id, views::relay(&rec))))
}

async fn members(State(st): State<AppState>, _: RelayAuth) -> Json<MemberSnapshot> {
    let world = st.engine.world().read().await;
    Json(st.engine.relay_feed().snapshot(&world))
}

/// Unsubscribes when the response body is dropped.
struct StreamGuard {
    engine: Engine,
    sub_id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.engine.relay_feed().unsubscribe(self.sub_id);
    }
}

struct StreamState {
    initial: std::vec::IntoIter<Bytes>,
    sub: RelaySubscription,
    engine: Engine,
    keepalive: Interval,
    shutdown: watch::Receiver<bool>,
    _guard: Arc<StreamGuard>,
}

async fn stream(
    State(st): State<AppState>,
    auth: RelayAuth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last = super::map::last_event_id(&headers)?;
    // Resuming from a version another replica published a moment ago:
    // catch up first (bounded), so the relay gets deltas, not a snapshot.
    if let Some(l) = last
        && l > st.engine.world().read().await.version
    {
        st.engine.reach_version(l, Duration::from_secs(2)).await;
    }
    let feed = st.engine.relay_feed().clone();
    let (sub, first) = {
        let world = st.engine.world().read().await;
        feed.subscribe(&world, auth.id, STREAMS_PER_RELAY, last)
            .ok_or_else(|| ApiError::TooMany {
                code: "too_many_streams",
                message: format!("at most {STREAMS_PER_RELAY} member streams per relay"),
            })?
    };
    let guard = Arc::new(StreamGuard {
        engine: st.engine.clone(),
        sub_id: sub.id,
    });
    let mut head = Vec::new();
    sse::encode_retry(&mut head, 2000);
    let period = st.cfg.keepalive;
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut initial = vec![Bytes::from(head)];
    initial.extend(first);
    let state = StreamState {
        initial: initial.into_iter(),
        sub,
        engine: st.engine.clone(),
        keepalive,
        shutdown: st.shutdown.clone(),
        _guard: guard,
    };
    let body = futures_util::stream::unfold(state, |mut s| async move {
        let chunk = next_chunk(&mut s).await?;
        Some((Ok::<Bytes, Infallible>(chunk), s))
    });
    Ok((
        [
            (http::header::CONTENT_TYPE, "text/event-stream"),
            (http::header::CACHE_CONTROL, "no-cache"),
            (http::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

async fn next_chunk(s: &mut StreamState) -> Option<Bytes> {
    if let Some(b) = s.initial.next() {
        return Some(b);
    }
    if *s.shutdown.borrow() {
        return None;
    }
    if s.sub.lagged.swap(false, Ordering::AcqRel) {
        // Replace the backlog with a snapshot; holding the read lock means
        // nothing is published meanwhile.
        let world = s.engine.world().read().await;
        while s.sub.rx.try_recv().is_ok() {}
        return Some(s.engine.relay_feed().snapshot_event(&world));
    }
    tokio::select! {
        biased;
        _ = s.shutdown.changed() => None,
        ev = s.sub.rx.recv() => ev,
        _ = s.keepalive.tick() => {
            let mut out = Vec::new();
            sse::encode_comment(&mut out, "keepalive");
            Some(Bytes::from(out))
        }
    }
}
