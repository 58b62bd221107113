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

/// What readiness depends on beyond the store and the engine: set by the
/// server when it stops accepting.
#[derive(Debug, Default)]
pub struct Readiness {
    shutting_down: AtomicBool,
}

impl Readiness {
    /// The controller stopped accepting connections and drains its streams.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
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
    if st.engine.catching_up() {
        reasons.push(reason(
            "catching_up",
            "this replica is behind the other replicas' changes (or cannot reach the database to catch up)",
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use axum::extract::State;
    use http::StatusCode;
    use tokio::sync::watch;

    use super::{Readiness, readyz};
    use crate::api::{ApiConfig, AppState, Challenges, Limiter, RateLimit};
    use crate::engine::Engine;
    use crate::hub::{Hub, HubConfig};
    use crate::metrics::Metrics;
    use crate::model::World;
    use crate::store::sqlite::SqliteStore;
    use crate::store::tasks::TaskResultRecord;
    use crate::store::usage::{UsageCounterRecord, UsageSum};
    use crate::store::{
        AuditQuery, AuditRecord, EventQuery, EventRecord, Store, StoreError, StoreSnapshot, Write,
    };

    /// SQLite whose `ping` fails while `down` is set.
    struct Flaky {
        inner: SqliteStore,
        down: Arc<AtomicBool>,
    }

    impl Store for Flaky {
        fn load(&mut self) -> Result<StoreSnapshot, StoreError> {
            self.inner.load()
        }
        fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
            self.inner.apply(writes)
        }
        fn audit(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
            self.inner.audit(q)
        }
        fn usage_counters(&mut self, node: u64) -> Result<Vec<UsageCounterRecord>, StoreError> {
            self.inner.usage_counters(node)
        }
        fn usage_sums(&mut self, since_ms: u64) -> Result<Vec<UsageSum>, StoreError> {
            self.inner.usage_sums(since_ms)
        }
        fn events(&mut self, q: &EventQuery) -> Result<Vec<(u64, EventRecord)>, StoreError> {
            self.inner.events(q)
        }
        fn task_results(&mut self, id: &str) -> Result<Vec<TaskResultRecord>, StoreError> {
            self.inner.task_results(id)
        }
        fn ping(&mut self) -> Result<(), StoreError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError::Db("connection refused".into()));
            }
            self.inner.ping()
        }
    }

    async fn status(st: &AppState) -> (StatusCode, serde_json::Value) {
        let resp = readyz(State(st.clone())).await;
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_until_the_store_fails_or_the_server_shuts_down() {
        let mut inner = SqliteStore::open_in_memory().unwrap();
        let world = World::from_snapshot(inner.load().unwrap(), Vec::new());
        let down = Arc::new(AtomicBool::new(false));
        let store = Flaky {
            inner,
            down: down.clone(),
        };
        let hub = Arc::new(Hub::new(HubConfig::default()));
        let (engine, thread) = Engine::start(store, world, hub, Arc::new(Metrics::new())).unwrap();
        let (shutdown_tx, shutdown) = watch::channel(false);
        let limiter = || Arc::new(Limiter::new(RateLimit::default(), Duration::from_secs(60)));
        let st = AppState {
            engine: engine.clone(),
            challenges: Arc::new(Challenges::new(Duration::from_secs(60), 16)),
            limiter: limiter(),
            public_limiter: limiter(),
            auth_limiter: limiter(),
            readiness: Arc::new(Readiness::default()),
            cfg: Arc::new(ApiConfig::default()),
            shutdown,
            history: Arc::default(),
        };

        let (code, body) = status(&st).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ready");
        assert_eq!(body["reasons"], serde_json::json!([]));

        // The database stops answering: 503 with the reason, and back.
        down.store(true, Ordering::Relaxed);
        let (code, body) = status(&st).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["reasons"][0]["code"], "store_unavailable");
        down.store(false, Ordering::Relaxed);
        assert_eq!(status(&st).await.0, StatusCode::OK);

        // Shutting down: 503 from the moment the listener stops accepting.
        st.readiness.set_shutting_down();
        let (code, body) = status(&st).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["reasons"][0]["code"], "shutting_down");
        let _ = shutdown_tx.send(true);

        engine.shutdown();
        drop((engine, st));
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
    }
}
