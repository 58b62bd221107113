//! Named services ([`weft_proto::service`], [`crate::model`]'s `services`):
//! - `POST /v1/admin/services` (a [`CreateServiceRequest`]): create a
//!   service, or replace one with `replace` (409 `service_exists` without);
//! - `GET /v1/admin/services`: every service with its instances' health;
//! - `GET|DELETE /v1/admin/services/{network}/{name}`: show / remove one;
//! - `POST /v1/admin/services/{network}/{name}/{approve|reject}/{node}`:
//!   decide on a node's offer;
//! - `POST /v1/node/services/advertise` (an [`AdvertiseServiceRequest`]):
//!   a node offers (or, with no ports, withdraws) a service it provides;
//! - `POST /v1/node/services/health` (a [`HealthReport`]): its instances'
//!   health (204).

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use weft_proto::service::{
    AdvertiseServiceRequest, AdvertiseServiceResponse, CreateServiceRequest, HealthReport,
    MAX_HEALTH_DETAIL, MAX_HEALTH_REPORTS, ServiceInfo, ServiceList,
};

use super::{AdminAuth, ApiJson, ApiPath, AppState, NodeAuth};
use crate::error::ApiError;
use crate::model::{
    Actor, AdvertiseService, CreateService, DecideInstance, RemoveService, ReportHealth,
};

/// Longest node selector or network name a request may carry (a key is 43
/// characters, names are DNS labels).
const MAX_FIELD: usize = 128;

/// Largest health report body: every check at its bounds, and room.
const MAX_HEALTH_BODY: usize = MAX_HEALTH_REPORTS * (2 * MAX_FIELD + 2 * MAX_HEALTH_DETAIL + 128);

macro_rules! unversioned {
    ($($t:ty),*) => {$(
        impl super::Versioned for $t {
            fn api_version(&self) -> Option<u32> {
                None
            }
        }
    )*};
}
unversioned!(CreateServiceRequest, AdvertiseServiceRequest, HealthReport);

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/node/services/health", post(health))
        .route_layer(DefaultBodyLimit::max(MAX_HEALTH_BODY))
        .route("/v1/admin/services", get(list).post(create))
        .route(
            "/v1/admin/services/{network}/{name}",
            get(show).delete(remove),
        )
        .route(
            "/v1/admin/services/{network}/{name}/{verb}/{node}",
            post(decide),
        )
        .route("/v1/node/services/advertise", post(advertise))
}

fn too_long(what: &str) -> ApiError {
    ApiError::invalid(
        "invalid_field",
        format!("{what} is longer than {MAX_FIELD} bytes"),
    )
}

fn bounded(what: &str, s: &str) -> Result<(), ApiError> {
    if s.len() > MAX_FIELD {
        return Err(too_long(what));
    }
    Ok(())
}

async fn create(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<CreateServiceRequest>,
) -> Result<(StatusCode, Json<ServiceInfo>), ApiError> {
    bounded("network", &req.network)?;
    if let Some(n) = req.nodes.iter().find(|n| n.len() > MAX_FIELD) {
        return Err(too_long(&format!(
            "node {:?}",
            n.chars().take(32).collect::<String>()
        )));
    }
    let replace = req.replace;
    let info = st.engine.execute(Actor::Admin, CreateService(req)).await?;
    let status = if replace {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(info)))
}

async fn list(State(st): State<AppState>, _: AdminAuth) -> Json<ServiceList> {
    let world = st.engine.world().read().await;
    Json(world.service_list())
}

async fn show(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath((network, name)): ApiPath<(String, String)>,
) -> Result<Json<ServiceInfo>, ApiError> {
    let world = st.engine.world().read().await;
    Ok(Json(world.service_by_name(&network, &name)?))
}

async fn remove(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath((network, name)): ApiPath<(String, String)>,
) -> Result<Json<ServiceInfo>, ApiError> {
    let op = RemoveService { network, name };
    Ok(Json(st.engine.execute(Actor::Admin, op).await?))
}

async fn decide(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiPath((network, name, verb, node)): ApiPath<(String, String, String, String)>,
) -> Result<Json<ServiceInfo>, ApiError> {
    let approve = match verb.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(ApiError::not_found("not_found", "no such endpoint")),
    };
    bounded("node", &node)?;
    let op = DecideInstance {
        network,
        name,
        node,
        approve,
    };
    Ok(Json(st.engine.execute(Actor::Admin, op).await?))
}

async fn advertise(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(req): ApiJson<AdvertiseServiceRequest>,
) -> Result<Json<AdvertiseServiceResponse>, ApiError> {
    if let Some(n) = &req.network {
        bounded("network", n)?;
    }
    let op = AdvertiseService { node: auth.id, req };
    Ok(Json(st.engine.execute(Actor::Node(auth.key), op).await?))
}

async fn health(
    State(st): State<AppState>,
    auth: NodeAuth,
    ApiJson(report): ApiJson<HealthReport>,
) -> Result<StatusCode, ApiError> {
    if let Some(c) = report
        .checks
        .iter()
        .find(|c| c.network.len() > MAX_FIELD || c.service.len() > MAX_FIELD)
    {
        return Err(too_long(&format!(
            "the check of {:?}",
            c.service.chars().take(32).collect::<String>()
        )));
    }
    let op = ReportHealth {
        node: auth.id,
        report,
    };
    st.engine.execute(Actor::Node(auth.key), op).await?;
    Ok(StatusCode::NO_CONTENT)
}
