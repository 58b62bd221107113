//! Remote tasks:
//! - `POST /v1/admin/tasks` (admin): create a task for a node, tag or network
//!   (every limit checked before anything can be leased); nodes with an open
//!   map stream get a `task` event at once, the others when their stream opens.
//! - `GET /v1/admin/tasks?node=&state=&limit=` (admin): newest first, without
//!   script bodies or outputs.
//! - `GET /v1/admin/tasks/{id}[?results=false]` (admin): the task with every
//!   run's result (without them: where each run stands, for polling).
//! - `POST /v1/admin/tasks/{id}/cancel` (admin): cancel runs without a result.
//! - `POST /v1/node/tasks/lease` (node): lease this node's run; the answer holds
//!   execution fields only.
//! - `POST /v1/node/tasks/result` (node): a run's result, checked against the
//!   task's caps; idempotent by task and lease.
//!
//! A sweep every [`SWEEP_EVERY`] expires runs past their deadline and makes runs
//! whose lease expired leasable again (their node gets a `task` event again).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use rand_core::{OsRng, RngCore as _};
use serde::Deserialize;
use tokio::sync::watch;
use weft_proto::task::{
    CreateTaskRequest, LeaseRequest, LeasedTask, ResultAck, RunState, TaskList, TaskResult,
    TaskView, check_id,
};

use super::{AdminAuth, ApiJson, ApiPath, ApiQuery, AppState, NodeAuth, Versioned};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::model::{Actor, CancelTask, CreateTask, LeaseTask, SubmitResult, SweepTasks, TaskQuery};

/// How often leases and deadlines are checked.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Largest create body: a 64 KiB script, JSON-escaped (up to 6 bytes a byte).
const MAX_CREATE_BODY: usize = 512 * 1024;
/// Largest result body: two 256 KiB outputs, JSON-escaped, and the rest.
const MAX_RESULT_BODY: usize = 4 * 1024 * 1024;
/// Tasks listed by default and at most.
const DEFAULT_LISTED: usize = 50;
const MAX_LISTED: usize = 1000;

impl Versioned for CreateTaskRequest {
    fn api_version(&self) -> Option<u32> {
        None
    }
}

impl Versioned for LeaseRequest {
    fn api_version(&self) -> Option<u32> {
        None
    }
}

impl Versioned for TaskResult {
    fn api_version(&self) -> Option<u32> {
        None
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/admin/tasks",
            post(create)
                .layer(DefaultBodyLimit::max(MAX_CREATE_BODY))
                .get(list),
        )
        .route("/v1/admin/tasks/{id}", get(show))
        .route("/v1/admin/tasks/{id}/cancel", post(cancel))
        .route("/v1/node/tasks/lease", post(lease))
        .route(
            "/v1/node/tasks/result",
            post(result).layer(DefaultBodyLimit::max(MAX_RESULT_BODY)),
        )
}

/// `prefix_` and 16 random bytes in hex.
fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}_{hex}")
}

/// The body, with a 413 that names this route's own limit.
fn body<T>(b: Result<ApiJson<T>, ApiError>, limit: usize) -> Result<T, ApiError> {
    match b {
        Ok(ApiJson(v)) => Ok(v),
        Err(ApiError::PayloadTooLarge { .. }) => Err(ApiError::PayloadTooLarge { limit }),
        Err(e) => Err(e),
    }
}

async fn create(
    State(st): State<AppState>,
    _: AdminAuth,
    req: Result<ApiJson<CreateTaskRequest>, ApiError>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let req = body(req, MAX_CREATE_BODY)?;
    let op = CreateTask {
        id: new_id("tsk"),
        req,
    };
    let view = st.engine.execute(Actor::Admin, op).await?;
    notify_runs(&st.engine, &view.id).await;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Sends a `task` event to every open stream of the task's nodes.
async fn notify_runs(engine: &Engine, task_id: &str) {
    let world = engine.world().read().await;
    if let Some(t) = world.task(task_id) {
        for node in t.runs.keys() {
            engine.hub().notify_task(*node, task_id);
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    node: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<TaskList>, ApiError> {
    let limit = p.limit.unwrap_or(DEFAULT_LISTED);
    if !(1..=MAX_LISTED).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_query",
            format!("limit must be 1 to {MAX_LISTED}"),
        ));
    }
    let state = p
        .state
        .map(|s| {
            RunState::parse(&s).ok_or_else(|| {
                ApiError::invalid(
                    "invalid_query",
                    "state must be pending, leased, done, cancelled or expired",
                )
            })
        })
        .transpose()?;
    let world = st.engine.world().read().await;
    let node = match &p.node {
        None => None,
        Some(sel) => Some(
            world
                .find_node(sel)
                .ok_or_else(|| ApiError::not_found("node_not_found", format!("no node {sel:?}")))?
                .rec
                .id,
        ),
    };
    let tasks = world.task_list(&TaskQuery { node, state, limit });
    Ok(Json(TaskList { tasks }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowParams {
    results: Option<bool>,
}

async fn show(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<ShowParams>,
) -> Result<Json<TaskView>, ApiError> {
    let not_found = || ApiError::not_found("task_not_found", format!("no task with id {id:?}"));
    if check_id("id", &id).is_err() {
        return Err(not_found());
    }
    if p.results == Some(false) {
        let world = st.engine.world().read().await;
        return Ok(Json(world.task(&id).ok_or_else(not_found)?.view(true)));
    }
    // The runs first, then the results: the engine stores a result before
    // the next request it serves, so every run done in this copy has its
    // result in the store. A result that came in meanwhile belongs to a run
    // this copy still shows running, and is left out until the next read.
    let task = st
        .engine
        .world()
        .read()
        .await
        .task(&id)
        .cloned()
        .ok_or_else(not_found)?;
    let results: BTreeMap<u64, TaskResult> = st
        .engine
        .task_results(id.clone())
        .await?
        .into_iter()
        .filter(|r| {
            task.runs
                .get(&r.node_id)
                .is_some_and(|run| run.state == RunState::Done)
        })
        .map(|r| (r.node_id, r.result))
        .collect();
    Ok(Json(task.view_with_results(&results)))
}

async fn cancel(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TaskView>, ApiError> {
    let view = st.engine.execute(Actor::Admin, CancelTask { id }).await?;
    Ok(Json(view))
}

async fn lease(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> Result<Json<LeasedTask>, ApiError> {
    check_id("task_id", &req.task_id)
        .map_err(|e| ApiError::invalid("invalid_body", e.to_string()))?;
    let op = LeaseTask {
        node: auth.id,
        task_id: req.task_id,
        lease_id: new_id("lse"),
    };
    let leased = st.engine.execute(Actor::Node(auth.key), op).await?;
    Ok(Json(leased))
}

async fn result(
    State(st): State<AppState>,
    auth: NodeAuth,
    res: Result<ApiJson<TaskResult>, ApiError>,
) -> Result<Json<ResultAck>, ApiError> {
    let res = body(res, MAX_RESULT_BODY)?;
    let op = SubmitResult {
        node: auth.id,
        result: res,
    };
    let ack = st.engine.execute(Actor::Node(auth.key), op).await?;
    Ok(Json(ack))
}

/// Runs [`SweepTasks`] every [`SWEEP_EVERY`] until `shutdown` turns true, and
/// sends a `task` event for each run whose lease expired.
pub async fn sweep(engine: Engine, shutdown: watch::Receiver<bool>) {
    super::every(SWEEP_EVERY, shutdown, || async {
        match engine.execute(Actor::System, SweepTasks).await {
            Ok(again) => {
                for (node, task) in again {
                    engine.hub().notify_task(node, &task);
                }
            }
            Err(e) => tracing::warn!(error = %e, "checking task leases and deadlines failed"),
        }
    })
    .await;
}
