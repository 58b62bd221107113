//! Node data and sealed secrets (admin), carried to nodes in their maps:
//! - `PUT /v1/admin/data` `{scope: {node|tag|network}, key, value}`: set;
//!   `DELETE /v1/admin/data` `{scope, key}`: unset; both answer the entry and
//!   how many nodes' maps changed.
//! - `GET /v1/admin/data[?node=|tag=|network=]`: the stored entries (one
//!   scope, or all); `?node=N&resolved=true`: what node N's map carries.
//! - `PUT /v1/admin/secrets` `{node, key, sealed}`: store a value the admin CLI
//!   sealed to the node's X25519 key (base64; the controller never sees the
//!   plaintext); `DELETE /v1/admin/secrets` `{node, key}`; `GET
//!   /v1/admin/secrets[?node=]`: keys, sizes and versions, never values.
//!
//! Keys never travel in a URL (a query parameter named `key` is refused as a
//! credential-looking parameter by the router's guard), so set, unset and
//! their bodies carry them.

use axum::extract::State;
use axum::routing::put;
use axum::{Json, Router};
use serde::Deserialize;
use weft_proto::data::{
    DataItem, DataList, DataScope, SecretItem, SecretList, SetDataRequest, SetSecretRequest,
    UnsetDataRequest, UnsetSecretRequest, decode_sealed,
};

use super::{AdminAuth, ApiJson, ApiQuery, AppState};
use crate::error::ApiError;
use crate::model::{Actor, DataChanged, SetData, SetSecret, UnsetData, UnsetSecret};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/admin/data",
            put(set_data).delete(unset_data).get(list_data),
        )
        .route(
            "/v1/admin/secrets",
            put(set_secret).delete(unset_secret).get(list_secrets),
        )
}

macro_rules! unversioned {
    ($($t:ty),*) => {$(
        impl super::Versioned for $t {
            fn api_version(&self) -> Option<u32> { None }
        }
    )*};
}
unversioned!(
    SetDataRequest,
    UnsetDataRequest,
    SetSecretRequest,
    UnsetSecretRequest
);

fn answer(changed: DataChanged) -> Json<DataList> {
    Json(DataList {
        entries: changed.item.into_iter().collect(),
        nodes_changed: changed.nodes.len(),
    })
}

async fn set_data(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<SetDataRequest>,
) -> Result<Json<DataList>, ApiError> {
    let changed = st.engine.execute(Actor::Admin, SetData(req)).await?;
    Ok(answer(changed))
}

async fn unset_data(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<UnsetDataRequest>,
) -> Result<Json<DataList>, ApiError> {
    let changed = st.engine.execute(Actor::Admin, UnsetData(req)).await?;
    Ok(answer(changed))
}

#[derive(Deserialize)]
struct DataQuery {
    node: Option<String>,
    tag: Option<String>,
    network: Option<String>,
    #[serde(default)]
    resolved: bool,
}

async fn list_data(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiQuery(q): ApiQuery<DataQuery>,
) -> Result<Json<DataList>, ApiError> {
    let scope = match (q.node, q.tag, q.network) {
        (None, None, None) => None,
        (Some(n), None, None) => Some(DataScope::Node(n)),
        (None, Some(t), None) => Some(DataScope::Tag(t)),
        (None, None, Some(n)) => Some(DataScope::Network(n)),
        _ => {
            return Err(ApiError::invalid(
                "invalid_query",
                "give at most one of node, tag and network",
            ));
        }
    };
    let world = st.engine.world().read().await;
    if q.resolved {
        let Some(DataScope::Node(sel)) = &scope else {
            return Err(ApiError::invalid(
                "invalid_query",
                "resolved=true needs node=NODE",
            ));
        };
        let node = world
            .find_node(sel)
            .ok_or_else(|| ApiError::not_found("node_not_found", format!("no node {sel:?}")))?;
        let name = node.rec.name.clone();
        let entries = world
            .node_data(node.rec.id)
            .0
            .into_iter()
            .map(|e| DataItem {
                scope: DataScope::Node(name.clone()),
                key: e.key,
                value: e.value,
                version: e.version,
                updated_at_ms: 0,
            })
            .collect();
        return Ok(Json(DataList {
            entries,
            nodes_changed: 0,
        }));
    }
    let scope = scope.map(|s| world.scope_ref(&s)).transpose()?;
    Ok(Json(DataList {
        entries: world.data_items(scope.as_ref()),
        nodes_changed: 0,
    }))
}

async fn set_secret(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<SetSecretRequest>,
) -> Result<Json<SecretItem>, ApiError> {
    let sealed = decode_sealed(&req.sealed)
        .map_err(|e| ApiError::invalid("invalid_sealed", e.to_string()))?;
    let op = SetSecret {
        node: req.node,
        key: req.key,
        sealed,
    };
    Ok(Json(st.engine.execute(Actor::Admin, op).await?))
}

async fn unset_secret(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<UnsetSecretRequest>,
) -> Result<Json<SecretList>, ApiError> {
    st.engine.execute(Actor::Admin, UnsetSecret(req)).await?;
    Ok(Json(SecretList {
        secrets: Vec::new(),
    }))
}

#[derive(Deserialize)]
struct SecretQuery {
    node: Option<String>,
}

async fn list_secrets(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiQuery(q): ApiQuery<SecretQuery>,
) -> Result<Json<SecretList>, ApiError> {
    let world = st.engine.world().read().await;
    let node =
        match &q.node {
            Some(sel) => Some(world.find_node(sel).map(|n| n.rec.id).ok_or_else(|| {
                ApiError::not_found("node_not_found", format!("no node {sel:?}"))
            })?),
            None => None,
        };
    Ok(Json(SecretList {
        secrets: world.secret_items(node),
    }))
}
