//! `POST /v1/node/report`: an agent's liveness and candidate endpoints.

use axum::extract::State;
use http::StatusCode;
use weft_proto::api::ReportRequest;

use super::{ApiJson, AppState, NodeAuth};
use crate::error::ApiError;
use crate::model::{Actor, Op};
use crate::validate::MAX_ENDPOINTS;

pub(super) async fn report(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(req): ApiJson<ReportRequest>,
) -> Result<StatusCode, ApiError> {
    if let Some(eps) = &req.endpoints {
        if eps.len() > MAX_ENDPOINTS {
            return Err(ApiError::invalid(
                "invalid_endpoints",
                format!("at most {MAX_ENDPOINTS} endpoints"),
            ));
        }
        if let Some(bad) = eps
            .iter()
            .find(|e| e.port() == 0 || e.ip().is_unspecified() || e.ip().is_multicast())
        {
            return Err(ApiError::invalid(
                "invalid_endpoints",
                format!("{bad} is not a usable endpoint"),
            ));
        }
    }
    st.engine
        .execute(Actor::Node(auth.key), Op::Report(auth.id, req.endpoints))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
