//! `POST /v1/node/report`: an agent's liveness, candidate endpoints and (when
//! they changed) host facts.
//!
//! A report naming a loopback, unspecified, multicast or broadcast endpoint (or
//! port 0) is refused (`invalid_endpoints`); endpoints inside an overlay
//! network are dropped and the rest kept.

use axum::extract::State;
use http::StatusCode;
use weft_proto::api::ReportRequest;
use weft_proto::net::unusable_endpoint;

use super::{ApiJson, AppState, NodeAuth};
use crate::error::ApiError;
use crate::model::{Actor, Report};
use crate::validate::{self, MAX_ENDPOINTS};

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
        // Loopback, unspecified, multicast or broadcast: peers would send to
        // themselves or to nobody. (Endpoints in overlay space are dropped by
        // the model, which knows the networks.)
        if let Some((bad, why)) = eps
            .iter()
            .find_map(|e| unusable_endpoint(e).map(|why| (e, why)))
        {
            return Err(ApiError::invalid(
                "invalid_endpoints",
                format!("{bad} is not a usable endpoint ({why})"),
            ));
        }
    }
    if let Some(f) = &req.facts {
        validate::facts(f)?;
    }
    st.engine
        .execute(
            Actor::Node(auth.key),
            Report {
                node: auth.id,
                endpoints: req.endpoints,
                facts: req.facts,
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
