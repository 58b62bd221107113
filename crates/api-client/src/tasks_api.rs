//! Remote tasks: the admin's create, list, show and cancel (the admin token),
//! and the node's lease and result (its credential). What `weft admin task`
//! and weftd's task runner call.

use http::Method;
use weft_proto::task::{
    CreateTaskRequest, LeaseRequest, LeasedTask, ResultAck, RunState, TaskList, TaskResult,
    TaskView,
};

use crate::ClientError;
use crate::client::{Client, escape};

impl Client {
    /// `POST /v1/admin/tasks`: the task with one run per target node.
    pub async fn create_task(&self, req: &CreateTaskRequest) -> Result<TaskView, ClientError> {
        self.request(Method::POST, "/v1/admin/tasks", Some(req))
            .await
    }

    /// `GET /v1/admin/tasks[?node=&state=&limit=]`: newest first, without
    /// script bodies or outputs.
    pub async fn list_tasks(
        &self,
        node: Option<&str>,
        state: Option<RunState>,
        limit: Option<usize>,
    ) -> Result<TaskList, ClientError> {
        let mut query = Vec::new();
        if let Some(n) = node {
            query.push(format!("node={}", escape(n)));
        }
        if let Some(s) = state {
            query.push(format!("state={s}"));
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        let mut path = "/v1/admin/tasks".to_owned();
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// `GET /v1/admin/tasks/{id}`: the task with every run's result.
    pub async fn show_task(&self, id: &str) -> Result<TaskView, ClientError> {
        self.request::<(), _>(
            Method::GET,
            &format!("/v1/admin/tasks/{}", escape(id)),
            None,
        )
        .await
    }

    /// `GET /v1/admin/tasks/{id}?results=false`: where each run stands, without
    /// the results (cheap to poll).
    pub async fn task_progress(&self, id: &str) -> Result<TaskView, ClientError> {
        let path = format!("/v1/admin/tasks/{}?results=false", escape(id));
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/admin/tasks/{id}/cancel`.
    pub async fn cancel_task(&self, id: &str) -> Result<TaskView, ClientError> {
        self.request::<(), _>(
            Method::POST,
            &format!("/v1/admin/tasks/{}/cancel", escape(id)),
            None,
        )
        .await
    }

    /// `POST /v1/node/tasks/lease`: this node's lease of a task it was told of.
    pub async fn lease_task(&self, task_id: &str) -> Result<LeasedTask, ClientError> {
        let req = LeaseRequest {
            task_id: task_id.to_owned(),
        };
        self.request(Method::POST, "/v1/node/tasks/lease", Some(&req))
            .await
    }

    /// `POST /v1/node/tasks/result`: a run's result under its lease.
    pub async fn submit_task_result(&self, result: &TaskResult) -> Result<ResultAck, ClientError> {
        self.request(Method::POST, "/v1/node/tasks/result", Some(result))
            .await
    }
}
