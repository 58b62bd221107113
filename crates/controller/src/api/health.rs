//! The probes, both unauthenticated (public rate limit):
//!
//! - `GET /healthz`, liveness: the process answers (with the API and map
//!   versions). Restart the process when it does not.
//! - `GET /readyz`, readiness: 200 when this controller should get traffic;
//!   503 with the reasons while it shuts down, catches up with the other
//!   replicas' changes, or its store does not answer within
//!   [`READY_TIMEOUT`] (the writer's thread runs a trivial query, so a
//!   writer stuck in a long batch or a database that is down both show).
//!   Take the replica out of the load balancer, do not restart it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use weft_proto::api::{API_VERSION, ErrorBody, Health, ReadyStatus};

use super::AppState;

/// How long `/readyz` waits for the store to answer.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness depends on beyond the store, set by the parts that know.
#[derive(Debug, Default)]
pub struct Readiness {
    catching_up: AtomicBool,
    shutting_down: AtomicBool,
}

impl Readiness {
    /// The controller stopped accepting connections and drains its streams.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// This replica is replaying other replicas' changes (`true`) or has
    /// caught up (`false`).
    pub fn set_catching_up(&self, on: bool) {
        self.catching_up.store(on, Ordering::Relaxed);
    }

    /// Whether it is catching up.
    pub fn catching_up(&self) -> bool {
        self.catching_up.load(Ordering::Relaxed)
    }
}

pub(super) async fn healthz(State(st): State<AppState>) -> Json<Health> {
    let map_version = st.engine.world().read().await.version;
    Json(Health {
        status: "ok".into(),
        api_version: API_VERSION,
        map_version,
    })
}

fn reason(code: &str, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code: code.into(),
        message: message.into(),
    }
}

pub(super) async fn readyz(State(st): State<AppState>) -> Response {
    let mut reasons = Vec::new();
    if st.readiness.shutting_down.load(Ordering::Relaxed) || *st.shutdown.borrow() {
        reasons.push(reason(
            "shutting_down",
            "this controller is shutting down; its streams move to another replica",
        ));
    }
    if st.readiness.catching_up() {
        reasons.push(reason(
            "catching_up",
            "this replica is applying other replicas' changes",
        ));
    }
    let ping = st.engine.read_store(|s| s.ping());
    match tokio::time::timeout(READY_TIMEOUT, ping).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => reasons.push(reason("store_unavailable", e.to_string())),
        Err(_) => reasons.push(reason(
            "store_slow",
            format!(
                "the store did not answer within {} s",
                READY_TIMEOUT.as_secs()
            ),
        )),
    }
    let ready = reasons.is_empty();
    let body = ReadyStatus {
        status: if ready { "ready" } else { "not_ready" }.into(),
        api_version: API_VERSION,
        reasons,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
