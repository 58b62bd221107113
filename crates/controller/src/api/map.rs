//! `GET /v1/map` and the SSE stream `GET /v1/map/stream`.
//!
//! The stream starts with `retry: 2000`, then either the deltas after the
//! client's `Last-Event-ID` (when the replay ring still covers them) or a
//! snapshot, then every later delta as it is committed. The response starts at
//! once; the first frames wait for the stream's turn ([`crate::hub::Hub::admit`]:
//! a few opens at a time, in order, so a fleet reconnecting at once queues
//! instead of timing out), with keepalives while it waits. Each event's id is the
//! map version it brings the node to. A comment line every keepalive interval
//! lets an idle agent tell a live stream from a dead one. After the snapshot
//! (or the replayed deltas) comes a `task` event (no id) for every task the
//! node should lease now, and later ones as tasks are created or their leases
//! expire. The stream ends when the node is disabled or removed, or the
//! controller shuts down.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::{Interval, MissedTickBehavior};
use weft_proto::netmap::NetworkMap;
use weft_proto::sse;

use super::{AppState, NodeAuth};
use crate::clock;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::hub::{Subscription, task_frame};
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

/// The `Last-Event-ID` header: a map version (map and relay member streams).
pub(super) fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
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

type Admission = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

struct StreamState {
    initial: std::vec::IntoIter<Bytes>,
    /// Waiting for the turn to compute the first frames (resuming after this
    /// `Last-Event-ID`); `None` once they were sent.
    opening: Option<(Admission, Option<u64>)>,
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
    let hub = st.engine.hub();
    let sub = hub.open(auth.id)?;
    st.engine.presence(auth.id, true);
    let guard = Arc::new(StreamGuard {
        engine: st.engine.clone(),
        node: auth.id,
        sub_id: sub.id,
    });
    let mut head = Vec::new();
    sse::encode_retry(&mut head, 2000);
    let period = st.cfg.keepalive;
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = StreamState {
        initial: vec![Bytes::from(head)].into_iter(),
        opening: Some((Box::pin(hub.admit()), last)),
        sub,
        engine: st.engine.clone(),
        keepalive,
        shutdown: st.shutdown.clone(),
        last_version: last.unwrap_or(0),
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

fn keepalive_comment() -> Bytes {
    let mut out = Vec::new();
    sse::encode_comment(&mut out, "keepalive");
    Bytes::from(out)
}

/// Waits for the stream's turn, then queues its first frames: the replay or
/// snapshot, then a `task` event per task to lease now (read under the same
/// lock: a task created later reaches the stream as an event). `Err` carries
/// a chunk to send meanwhile (a keepalive); `Ok(false)`: end the stream.
async fn open(s: &mut StreamState) -> Result<bool, Bytes> {
    let Some((admission, last)) = s.opening.as_mut() else {
        return Ok(true);
    };
    let permit = tokio::select! {
        biased;
        _ = s.shutdown.changed() => return Ok(false),
        p = admission => p,
        _ = s.keepalive.tick() => return Err(keepalive_comment()),
    };
    let last = *last;
    s.opening = None;
    // Resuming from a version another replica published a moment ago: catch
    // up first (bounded), so the stream gets deltas here, not a snapshot.
    let have = s.engine.world().read().await.version;
    if let Some(l) = last
        && l > have
    {
        s.engine
            .reach_version(l, std::time::Duration::from_secs(2))
            .await;
    }
    let world = s.engine.world().read().await;
    let Some(frames) = s.engine.hub().initial(&world, &mut s.sub, last) else {
        return Ok(false);
    };
    let tasks = world.pending_tasks(s.sub.node, clock::now_unix_ms());
    drop(world);
    drop(permit);
    if let Some(f) = frames.last() {
        s.last_version = f.version;
    }
    let mut chunks: Vec<Bytes> = frames.into_iter().flat_map(|f| f.into_chunks()).collect();
    chunks.extend(tasks.iter().map(|t| task_frame(t).bytes));
    s.initial = chunks.into_iter();
    Ok(true)
}

/// The next bytes to send, or `None` to end the stream.
async fn next_chunk(s: &mut StreamState) -> Option<Bytes> {
    if let Some(b) = s.initial.next() {
        return Some(b);
    }
    match open(s).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(keepalive) => return Some(keepalive),
    }
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
            let frame = s.engine.hub().snapshot(&world, s.sub.node)?;
            s.last_version = frame.version;
            // Task events may have been among the dropped frames.
            let tasks = world.pending_tasks(s.sub.node, clock::now_unix_ms());
            drop(world);
            let mut chunks: Vec<Bytes> = frame.into_chunks().collect();
            chunks.extend(tasks.iter().map(|t| task_frame(t).bytes));
            s.initial = chunks.into_iter();
            return s.initial.next();
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
                // A snapshot pushed on a resync comes in several parts.
                let mut chunks = frame.into_chunks();
                let first = chunks.next();
                s.initial = chunks.collect::<Vec<_>>().into_iter();
                return first;
            }
            _ = s.keepalive.tick() => return Some(keepalive_comment()),
        }
    }
}
