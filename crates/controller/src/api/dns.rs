//! The DNS blocklist ([`weft_proto::dnsblock`]):
//! - `PUT /v1/admin/dns/blocklist` `{text, mode}`: parse (hosts or domain-list
//!   format; 400 `dns_blocklist_invalid` naming the lines) and replace the list;
//!   every node's map then carries its new reference.
//! - `GET /v1/admin/dns/blocklist[?domains=true]`: what is set (`blocklist`:
//!   null when none), with the domains only when asked.
//! - `DELETE /v1/admin/dns/blocklist`: remove it (`cleared`: whether there was
//!   one).
//! - `GET /v1/node/dns/blocklist` (node): the list itself `{version, mode,
//!   domains}`; the agent checks it against its map's reference. 404
//!   `no_dns_blocklist` when none is set.
//!
//! The admin's file may be up to 16 MiB: this route takes bodies up to
//! [`MAX_BODY`] (the router's default limit is far smaller), and the file is
//! parsed on the blocking pool, off the world's lock.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::HeaderMap;
use serde::Deserialize;
use weft_proto::dnsblock::{
    DnsBlocklistInfo, DnsBlocklistStatus, MAX_TEXT_BYTES, SetDnsBlocklistRequest, parse_list,
};

use super::{AdminAuth, ApiQuery, AppState, NodeAuth};
use crate::error::ApiError;
use crate::model::{Actor, Blocklist, ClearDnsBlocklist, SetDnsBlocklist, World};

/// Largest `PUT` body: the largest file, every byte escaped twice over in
/// JSON at worst for newlines and quotes, and room for the rest.
pub(super) const MAX_BODY: usize = 2 * MAX_TEXT_BYTES + 64 * 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/dns/blocklist", get(show).put(set).delete(clear))
        .route_layer(DefaultBodyLimit::max(MAX_BODY))
        .route("/v1/node/dns/blocklist", get(fetch))
}

fn info(b: &Blocklist, with_domains: bool) -> DnsBlocklistInfo {
    DnsBlocklistInfo {
        version: b.reference.version,
        mode: b.reference.mode,
        entries: b.reference.entries,
        sha256: b.reference.sha256.clone(),
        set_by: b.rec.set_by.clone(),
        set_at_ms: b.rec.set_at_ms,
        domains: with_domains.then(|| b.rec.list.domains.clone()),
    }
}

fn enabled_nodes(w: &World) -> usize {
    w.node_ids()
        .filter(|id| w.node(*id).is_some_and(|n| !n.rec.disabled))
        .count()
}

#[derive(Deserialize)]
struct ShowQuery {
    #[serde(default)]
    domains: bool,
}

async fn show(
    State(st): State<AppState>,
    _: AdminAuth,
    ApiQuery(q): ApiQuery<ShowQuery>,
) -> Json<DnsBlocklistStatus> {
    let world = st.engine.world().read().await;
    Json(DnsBlocklistStatus {
        blocklist: world.dns_blocklist().map(|b| info(b, q.domains)),
        cleared: None,
        nodes_changed: None,
    })
}

async fn set(
    State(st): State<AppState>,
    _: AdminAuth,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<DnsBlocklistStatus>, ApiError> {
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(super::is_json_media_type);
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|e| {
        if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit: MAX_BODY }
        } else {
            ApiError::invalid("bad_body", "could not read the request body")
        }
    })?;
    let parsed = tokio::task::spawn_blocking(move || {
        let req: SetDnsBlocklistRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid("invalid_body", super::clip(e.to_string())))?;
        let domains = parse_list(&req.text).map_err(|errs| {
            let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
            ApiError::invalid(
                "dns_blocklist_invalid",
                format!("the blocklist does not parse:\n{}", lines.join("\n")),
            )
        })?;
        Ok::<_, ApiError>(SetDnsBlocklist {
            domains,
            mode: req.mode,
        })
    })
    .await
    .map_err(|_| ApiError::Internal)??;
    let bl = st.engine.execute(Actor::Admin, parsed).await?;
    let world = st.engine.world().read().await;
    Ok(Json(DnsBlocklistStatus {
        blocklist: Some(info(&bl, false)),
        cleared: None,
        nodes_changed: Some(enabled_nodes(&world)),
    }))
}

async fn clear(
    State(st): State<AppState>,
    _: AdminAuth,
) -> Result<Json<DnsBlocklistStatus>, ApiError> {
    let cleared = st.engine.execute(Actor::Admin, ClearDnsBlocklist).await?;
    let world = st.engine.world().read().await;
    Ok(Json(DnsBlocklistStatus {
        blocklist: None,
        cleared: Some(cleared),
        nodes_changed: Some(if cleared { enabled_nodes(&world) } else { 0 }),
    }))
}

async fn fetch(State(st): State<AppState>, _: NodeAuth) -> Result<Response, ApiError> {
    let cache = {
        let world = st.engine.world().read().await;
        world.dns_blocklist().map(Blocklist::body_cache)
    };
    let Some(cache) = cache else {
        return Err(ApiError::not_found(
            "no_dns_blocklist",
            "no DNS blocklist is set",
        ));
    };
    // Encoded outside the lock, once for every node that fetches this list.
    let body = Bytes::from_owner(cache.get());
    Ok(([(http::header::CONTENT_TYPE, "application/json")], body).into_response())
}
