//! `GET /v1/map` and the SSE stream `GET /v1/map/stream`.
//!
//! The stream starts with `retry: 2000`, then either the deltas after the
//! client's `Last-Event-ID` (when the replay ring still covers them) or a
//! snapshot, then every later delta as it is committed. Each event's id is the
//! map version it brings the node to. A comment line every keepalive interval
//! lets an idle agent tell a live stream from a dead one. After the snapshot
//! (or the replayed deltas) comes a `task` event (no id) for every task the
//! node should lease now, and later ones as tasks are created or their leases
//! expire. The stream ends when the node is disabled or removed, or the
//! controller shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use weft_proto::netmap::NetworkMap;
use weft_proto::sse;

use super::{AppState, NodeAuth};
use crate::clock;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::hub::{Frame, Subscription, snapshot_frame, task_frame};
use crate::model::NodeId;
use crate::netmap;

pub(super) async fn get_map(
    State(st): State<AppState>,
    auth: NodeAuth,
) -> Result<Json<NetworkMap>, ApiError> {
    let world = st.engine.world().read().await;
    netmap::snapshot(&world, auth.id)
        .map(Json)
        .ok_or(ApiError::NodeDisabled)
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| bad_id())?.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > 20 {
        return Err(bad_id());
    }
    s.parse().map(Some).map_err(|_| bad_id())
}

fn bad_id() -> ApiError {
    ApiError::invalid(
        "invalid_last_event_id",
        "Last-Event-ID must be a map version (a decimal number)",
    )
}

/// Unsubscribes and reports the stream closed when the response body is dropped
/// (client gone, node evicted, shutdown).
struct StreamGuard {
    engine: Engine,
    node: NodeId,
    sub_id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.engine.hub().unsubscribe(self.node, self.sub_id);
        self.engine.presence(self.node, false);
    }
}

struct StreamState {
    initial: std::vec::IntoIter<Bytes>,
    sub: Subscription,
    engine: Engine,
    keepalive: Interval,
    shutdown: watch::Receiver<bool>,
    last_version: u64,
    _guard: Arc<StreamGuard>,
}

pub(super) async fn stream(
    State(st): State<AppState>,
    auth: NodeAuth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last = last_event_id(&headers)?;
    // The pending tasks are read under the same lock as the subscription:
    // a task created later reaches the new stream as an event.
    let (sub, initial, tasks) = {
        let world = st.engine.world().read().await;
        let (sub, initial) = st.engine.hub().subscribe(&world, auth.id, last)?;
        (
            sub,
            initial,
            world.pending_tasks(auth.id, clock::now_unix_ms()),
        )
    };
    st.engine.presence(auth.id, true);
    let guard = Arc::new(StreamGuard {
        engine: st.engine.clone(),
        node: auth.id,
        sub_id: sub.id,
    });
    let mut head = Vec::new();
    sse::encode_retry(&mut head, 2000);
    let last_version = initial
        .last()
        .map_or(last.unwrap_or(0), |f: &Frame| f.version);
    let mut chunks = vec![Bytes::from(head)];
    chunks.extend(initial.into_iter().map(|f| f.bytes));
    chunks.extend(tasks.iter().map(|t| task_frame(t).bytes));
    let period = st.cfg.keepalive;
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = StreamState {
        initial: chunks.into_iter(),
        sub,
        engine: st.engine.clone(),
        keepalive,
        shutdown: st.shutdown.clone(),
        last_version,
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

/// The next bytes to send, or `None` to end the stream.
async fn next_chunk(s: &mut StreamState) -> Option<Bytes> {
    if let Some(b) = s.initial.next() {
        return Some(b);
    }
    loop {
        if *s.shutdown.borrow() {
            return None;
        }
        if s.sub.lagged.swap(false, Ordering::AcqRel) {
            // The queue overflowed and frames were dropped: replace the backlog
            // with a snapshot. Holding the read lock means nothing is published
            // meanwhile, so every frame queued now is older than the snapshot.
            let world = s.engine.world().read().await;
            while s.sub.rx.try_recv().is_ok() {}
            let frame = snapshot_frame(&world, s.sub.node)?;
            s.last_version = frame.version;
            // Task events may have been among the dropped frames.
            let tasks = world.pending_tasks(s.sub.node, clock::now_unix_ms());
            s.initial = tasks
                .iter()
                .map(|t| task_frame(t).bytes)
                .collect::<Vec<_>>()
                .into_iter();
            return Some(frame.bytes);
        }
        tokio::select! {
            biased;
            _ = s.shutdown.changed() => return None,
            frame = s.sub.rx.recv() => {
                let frame = frame?;
                if frame.task {
                    return Some(frame.bytes);
                }
                if frame.version <= s.last_version {
                    continue;
                }
                s.last_version = frame.version;
                return Some(frame.bytes);
            }
            _ = s.keepalive.tick() => {
                let mut out = Vec::new();
                sse::encode_comment(&mut out, "keepalive");
                return Some(Bytes::from(out));
            }
        }
    }
}
