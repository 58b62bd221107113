//! `GET /healthz`: unauthenticated liveness.

use axum::Json;
use axum::extract::State;
use weft_proto::api::{API_VERSION, Health};

use super::AppState;

pub(super) async fn healthz(State(st): State<AppState>) -> Json<Health> {
    let map_version = st.engine.world().read().await.version;
    Json(Health {
        status: "ok".into(),
        api_version: API_VERSION,
        map_version,
    })
}
