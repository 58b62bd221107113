//! SSH through the mesh (node endpoints):
//! - `POST /v1/node/ssh/server`: the node's SSH server (port and host key) or
//!   its absence; the model validates, stores and audits a change.
//! - `POST /v1/node/ssh/sessions`: sessions the node's server saw, each
//!   audited once (`ssh.session`, `ssh.refused`).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use weft_proto::ssh::{SshServerReport, SshSessionReport};

use super::{ApiJson, AppState, NodeAuth};
use crate::error::ApiError;
use crate::model::{Actor, ReportSshServer, ReportSshSessions};

impl super::Versioned for SshServerReport {
    fn api_version(&self) -> Option<u32> {
        None
    }
}

impl super::Versioned for SshSessionReport {
    fn api_version(&self) -> Option<u32> {
        None
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/node/ssh/server", post(server))
        .route("/v1/node/ssh/sessions", post(sessions))
}

async fn server(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(report): ApiJson<SshServerReport>,
) -> Result<StatusCode, ApiError> {
    let op = ReportSshServer {
        node: auth.id,
        report,
    };
    st.engine.execute(Actor::Node(auth.key), op).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn sessions(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(report): ApiJson<SshSessionReport>,
) -> Result<StatusCode, ApiError> {
    let op = ReportSshSessions {
        node: auth.id,
        report,
    };
    st.engine.execute(Actor::Node(auth.key), op).await?;
    Ok(StatusCode::NO_CONTENT)
}
