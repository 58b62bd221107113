//! HTTP handlers, one module per resource, and the extractors they share.
//!
//! | Method | Path | Auth | Purpose |
//! |---|---|---|---|
//! | GET | `/healthz` | none | liveness: the process answers (API and map version); public rate limit |
//! | GET | `/readyz` | none | readiness: 200 when this controller should get traffic, 503 with reasons while it shuts down, catches up with other replicas or its store does not answer; public rate limit |
//! | GET | `/metrics` | admin | Prometheus metrics (text format 0.0.4) |
//! | POST | `/v1/register/challenge` | none | a fresh single-use challenge |
//! | POST | `/v1/register` | join token in body | register a key, get a credential |
//! | GET | `/v1/map` | node | the node's map, once |
//! | GET | `/v1/map/stream` | node | SSE: snapshot, then deltas (`Last-Event-ID` resumes) |
//! | POST | `/v1/node/report` | node | liveness and endpoints |
//! | POST | `/v1/node/rotate-key` | node | replace the node's key (signed by the new key; id, name, addresses kept; a retry succeeds) |
//! | POST | `/v1/node/metrics` | node | forwarded metric samples (1 to 60, validated; duplicates ignored) |
//! | GET | `/v1/admin/nodes/{key-or-name}/metrics` | admin | the node's forwarded history, 1-minute points over 24 h (`?since=` Unix ms) |
//! | POST | `/v1/node/events` | node | anomaly events the agent raised (bounded, validated, idempotent) |
//! | GET | `/v1/admin/events` | admin | the anomaly event log (`?node=&since=&limit=`) |
//! | PUT | `/v1/admin/networks/{name}/anomaly` | admin | the network's anomaly thresholds (carried in the map) |
//! | POST | `/v1/node/integrity` | node | weftd's version and SHA-256, every hook's SHA-256, a refused hooks directory; answers the node's integrity (`ok`, `mismatch`, `unknown`) |
//! | GET | `/v1/admin/hooks` | admin | approved hook hashes |
//! | PUT/DELETE | `/v1/admin/hooks/{name}` | admin | approve `{sha256}` / revoke (`?sha256=` one hash, else all) |
//! | PUT | `/v1/admin/integrity/expect` | admin | `{version, sha256}` weftd of that version must have |
//! | GET | `/v1/admin/integrity` | admin | expected hashes and every node's integrity with reasons (`?node=`) |
//! | POST | `/v1/node/usage` | node | usage counters (flows per peer and port, sidecar users) |
//! | GET | `/v1/admin/usage` | admin | usage over a window (`?by=&since=`: by node, peer, port or user) |
//! | POST/GET | `/v1/admin/networks` | admin | create / list networks |
//! | GET/DELETE | `/v1/admin/networks/{name}` | admin | show / delete a network (its memberships, routes, services, data; tokens lose it, revoked if it was their only one; its nodes stay registered) |
//! | POST/GET | `/v1/admin/tokens` | admin | create (secret shown once) / list join tokens |
//! | DELETE | `/v1/admin/tokens/{id}` | admin | revoke a join token |
//! | GET | `/v1/admin/nodes` | admin | list nodes (`?network=`) |
//! | GET/PATCH/DELETE | `/v1/admin/nodes/{key-or-name}` | admin | show / rename, tag, disable, enable / remove |
//! | GET | `/v1/admin/audit` | admin | audit log (`?limit=&before=&target=`) |
//! | GET/PUT | `/v1/admin/policy` | admin | the policy text and version / replace it (400 with lines when it does not parse, 422 when its tests fail) |
//! | POST | `/v1/admin/policy/check` | admin | decide `{from, to, proto, port}` against the policy: verdict per pair, deciding rule and line |
//! | POST/GET | `/v1/admin/relays` | admin | register a relay (token shown once) / list relays |
//! | GET/DELETE | `/v1/admin/relays/{name}` | admin | show / remove a relay |
//! | POST | `/v1/node/routes` | node | the subnets this node advertises (pending until approved; tag `gateway` required) |
//! | GET/POST | `/v1/admin/routes` | admin | list subnet routes / set one on a node (approved) |
//! | POST | `/v1/admin/routes/{approve,reject,withdraw}` | admin | `{node, prefix, network?}` |
//! | DELETE | `/v1/admin/networks/{network}/members/{node}` | admin | remove a node from one network |
//! | GET/PUT/DELETE | `/v1/admin/data` | admin | node data per node, tag or network (`?node=|tag=|network=`, `&resolved=true`); set `{scope, key, value}` / unset `{scope, key}`; carried in maps |
//! | GET/PUT/DELETE | `/v1/admin/secrets` | admin | sealed secrets per node (`?node=`; never values); set `{node, key, sealed}` / unset `{node, key}`; carried in maps |
//! | GET/PUT/DELETE | `/v1/admin/dns/blocklist` | admin | the DNS blocklist: show (`?domains=true`) / set `{text, mode}` (hosts or domain-list format; 400 with lines) / clear; its reference is carried in maps |
//! | GET/PUT | `/v1/admin/firewall` | admin | the host firewall file, its version and the nodes it selects / replace it `{text, expect_version?}` (400 with lines); each node's compiled spec is carried in its map |
//! | POST | `/v1/admin/firewall/check` | admin | validate `{text}` without storing it: the nodes it would select |
//! | GET/POST | `/v1/admin/firewall/rules` | admin | dynamic host firewall rules (`?node=`) / add one `{node, direction, proto, ports, peers, comment, ttl_secs?}` |
//! | DELETE | `/v1/admin/firewall/rules/{id}` | admin | revoke a dynamic rule (`dyn:N` or `N`) |
//! | GET | `/v1/node/dns/blocklist` | node | the blocklist itself `{version, mode, domains}` (404 when none) |
//! | POST/GET | `/v1/admin/tasks` | admin | create a task for `{target: {node\|tag\|network}, kind, timeout_secs?, output_cap_bytes?, deadline_secs?}` (limits checked here) / list tasks (`?node=&state=&limit=`) |
//! | GET | `/v1/admin/tasks/{id}` | admin | a task with every run's result (`?results=false`: where each run stands, for polling) |
//! | POST | `/v1/admin/tasks/{id}/cancel` | admin | cancel the runs that have no result |
//! | POST | `/v1/node/tasks/lease` | node | lease this node's run `{task_id}` (execution fields only; 409 unavailable, 410 expired, 403 integrity mismatch) |
//! | POST | `/v1/node/tasks/result` | node | a run's result under its lease (checked against the caps; idempotent by task and lease; 409 `task_done`) |
//! | POST | `/v1/node/ssh/server` | node | the node's SSH server `{server: {port, host_key} \| null}` (validated; audited `node.ssh_server` on change; the port is its `ssh_port` policy fact, the key goes into the maps of the nodes that may log in) |
//! | POST | `/v1/node/ssh/sessions` | node | sessions its SSH server saw (at most 256 records, validated; each audited once as `ssh.session` or `ssh.refused`) |
//! | POST/GET | `/v1/admin/services` | admin | create (or with `replace`, replace) a service `{name, network, nodes, ports, health?, replace?, expect_version?}` (VIP from the network's service range; 409 `service_exists`) / list every service with its instances' health |
//! | GET/DELETE | `/v1/admin/services/{network}/{name}` | admin | show (instances with health, last check, detail, online; pending offers) / remove a service |
//! | POST | `/v1/admin/services/{network}/{name}/{approve\|reject}/{node}` | admin | decide on a node's offer of the service |
//! | POST | `/v1/node/services/advertise` | node | offer a service this node provides `{name, network?, ports, health?}` (pending until approved; empty `ports` withdraws) |
//! | POST | `/v1/node/services/health` | node | this node's instance checks (at most 256; flips change consumers' maps) |
//! | POST | `/v1/relay/report` | relay | the relay's TLS fingerprint and STUN port |
//! | GET | `/v1/relay/members` | relay | the node keys it may serve, once |
//! | GET | `/v1/relay/members/stream` | relay | SSE: `members` snapshot, then `members_delta`s |
//!
//! Credentials only travel in `Authorization: Bearer`; a query string that looks
//! like it carries one is refused, and query strings are never logged.
//!
//! Requests anyone can make without a credential are rate limited per source
//! (`limit`): registration, the probes and unknown paths, and failed
//! authentications; per replica, for the reasons `limit` gives.

mod admin;
mod data;
mod dns;
mod events;
mod health;
mod hostfw;
mod integrity;
mod limit;
mod map;
mod metrics;
mod node;
mod node_metrics;
mod register;
mod relay;
pub mod retention;
mod rotate_key;
mod routes;
mod services;
mod ssh;
mod tasks;
mod usage;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::FutureExt as _;
use http::request::Parts;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, error, warn};
use weft_proto::NodeKey;
use weft_proto::api::API_VERSION;

use crate::clock;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::model::NodeId;
use crate::secret::{
    ADMIN_PREFIX, JOIN_PREFIX, MAX_SECRET_LEN, NODE_PREFIX, RELAY_PREFIX, SecretHash,
};

pub use health::Readiness;
pub use hostfw::sweep as firewall_sweep;
pub use limit::{Limiter, Peer, RateLimit};
pub use metrics::scrape_router;
pub use register::Challenges;
pub use relay::RelayAuth;
pub use retention::{AuditRetention, sweep as audit_sweep};
pub use tasks::sweep as task_sweep;

/// Runs `tick` every `period` (the first at once; a late tick does not
/// bunch up) until `shutdown` turns true: the controller's sweeps.
pub(super) async fn every<F, Fut>(
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut tick: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = every.tick() => {}
        }
        tick().await;
    }
}

/// Handler settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body in bytes.
    pub max_body: usize,
    /// Interval of SSE keepalive comments.
    pub keepalive: Duration,
    /// Lifetime of a registration challenge.
    pub challenge_ttl: Duration,
    /// Successful registrations remembered (for single use of their challenge)
    /// per challenge lifetime at most; beyond it registration answers 503.
    pub max_used_challenges: usize,
    /// Per-source limit of the registration endpoints.
    pub rate_limit: RateLimit,
    /// Per-source limit of `/healthz`, `/readyz` and unknown paths.
    pub public_rate_limit: RateLimit,
    /// Per-source budget of failed authentications (401 answers).
    pub auth_fail_limit: RateLimit,
    /// At most one WARN summarizing rate-limit refusals per this interval.
    pub refusal_summary_every: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body: 64 * 1024,
            keepalive: Duration::from_secs(15),
            challenge_ttl: Duration::from_secs(60),
            max_used_challenges: 65_536,
            rate_limit: RateLimit::default(),
            public_rate_limit: RateLimit::PUBLIC,
            auth_fail_limit: RateLimit::AUTH_FAIL,
            refusal_summary_every: Duration::from_secs(60),
        }
    }
}

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// Registration challenges (the MAC key every replica shares; the used
    /// set is in the state, `model::challenges`).
    pub challenges: Arc<Challenges>,
    /// Per-source limits of the registration endpoints.
    pub limiter: Arc<Limiter>,
    /// Per-source limits of `/healthz`, `/readyz` and unknown paths.
    pub public_limiter: Arc<Limiter>,
    /// Per-source budgets of failed authentications.
    pub auth_limiter: Arc<Limiter>,
    /// What `/readyz` reports beyond the store and the engine (shutting
    /// down).
    pub readiness: Arc<Readiness>,
    /// Settings.
    pub cfg: Arc<ApiConfig>,
    /// Becomes `true` when the server shuts down (ends map streams).
    pub shutdown: watch::Receiver<bool>,
    /// Forwarded metrics per node (in memory).
    pub history: Arc<crate::history::History>,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let max_body = state.cfg.max_body;
    let unauthenticated = Router::new()
        .route("/v1/register/challenge", post(register::challenge))
        .route("/v1/register", post(register::register))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            register::limit,
        ));
    let probes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route_layer(middleware::from_fn_with_state(state.clone(), limit::public));
    Router::new()
        .merge(probes)
        .route("/metrics", get(metrics::admin_scrape))
        .merge(unauthenticated)
        .route("/v1/map", get(map::get_map))
        .route("/v1/map/stream", get(map::stream))
        .route("/v1/node/report", post(node::report))
        .route("/v1/node/rotate-key", post(rotate_key::rotate_key))
        .merge(admin::routes())
        .merge(data::routes())
        .merge(dns::routes())
        .merge(hostfw::routes())
        .merge(node_metrics::routes())
        .merge(events::routes())
        .merge(integrity::routes())
        .merge(relay::routes())
        .merge(routes::routes())
        .merge(services::routes())
        .merge(usage::routes())
        .merge(tasks::routes())
        .merge(ssh::routes())
        .fallback(limit::not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit::auth_failures,
        ))
        .layer(middleware::from_fn(guard))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .with_state(state)
}

/// Refuses secrets in URLs, logs requests without query strings, and turns a
/// handler panic into a 500 instead of a dropped connection.
async fn guard(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if req.uri().query().is_some_and(query_carries_secret) {
        debug!(%method, %path, "refused a query string that looks like it carries a secret");
        return ApiError::invalid(
            "token_in_url",
            "secrets are never accepted in URLs; send them in the Authorization header or the body",
        )
        .into_response();
    }
    let start = clock::now();
    let resp = match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(_) => {
            error!(%method, %path, "handler panicked");
            ApiError::Internal.into_response()
        }
    };
    let ms = start.elapsed().as_millis();
    let status = resp.status().as_u16();
    if status >= 500 {
        warn!(%method, %path, status, ms, "request failed");
    } else {
        debug!(%method, %path, status, ms, "request");
    }
    resp
}

/// Parameter names (lowercase, without `-`, `_`, `.` or spaces) that name a
/// secret wherever they appear.
const SECRET_NAMES: &[&str] = &[
    "token",
    "accesstoken",
    "refreshtoken",
    "idtoken",
    "authtoken",
    "jointoken",
    "admintoken",
    "credential",
    "credentials",
    "secret",
    "clientsecret",
    "bearer",
    "authorization",
    "auth",
    "apikey",
    "key",
    "privatekey",
    "password",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "session",
    "sessionid",
    "sig",
    "signature",
    "jwt",
];

/// Last words of a parameter name (`join_token`, `x-api-key`) that name a secret.
const SECRET_SUFFIXES: &[&str] = &[
    "token",
    "secret",
    "key",
    "password",
    "passwd",
    "credential",
    "credentials",
    "signature",
    "session",
];

/// Percent-decodes `s` once (`+` is a space, as in forms); bad escapes stay.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether one query parameter name names a secret: decoded (up to three
/// times, so `%2565` counts too), lowercased, any `[..]` suffix cut
/// (`token[]`), and compared without `-`, `_`, `.` and spaces, as a whole
/// (`api-key`, `apiKey`) or by its last word (`join_token`).
fn secret_name(raw: &str) -> bool {
    let mut name = raw.to_owned();
    for _ in 0..3 {
        let next = percent_decode(&name);
        if next == name {
            break;
        }
        name = next;
    }
    let name = name.to_lowercase();
    let name = name.split('[').next().unwrap_or_default().trim();
    let is_sep = |c: char| matches!(c, '-' | '_' | '.' | ' ');
    let squashed: String = name.chars().filter(|c| !is_sep(*c)).collect();
    if SECRET_NAMES.contains(&squashed.as_str()) {
        return true;
    }
    name.rsplit(is_sep)
        .find(|w| !w.is_empty())
        .is_some_and(|last| name.contains(is_sep) && SECRET_SUFFIXES.contains(&last))
}

/// Whether a query string looks like it carries a secret: a parameter named
/// like one, or a value that is a weft secret (`weft_admin_…`, `weft_join_…`,
/// `weft_node_…`, `weft_relay_…`).
fn query_carries_secret(q: &str) -> bool {
    q.split(['&', ';']).any(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if secret_name(key) {
            return true;
        }
        let value = percent_decode(value);
        [ADMIN_PREFIX, JOIN_PREFIX, NODE_PREFIX, RELAY_PREFIX]
            .iter()
            .any(|p| value.trim().starts_with(p))
    })
}

/// Whether a Content-Type header value is exactly `application/json`
/// (parameters such as `charset` are ignored; `application/jsonx` or
/// `application/json-seq` are not JSON).
fn is_json_media_type(v: &str) -> bool {
    v.split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Request bodies that may carry an `api_version`.
pub trait Versioned {
    /// The version the client claims, if any.
    fn api_version(&self) -> Option<u32>;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn api_version(&self) -> Option<u32> { self.api_version }
        }
    )*};
}
versioned!(
    weft_proto::api::RegisterRequest,
    weft_proto::api::ReportRequest,
    weft_proto::api::RotateKeyRequest,
    weft_proto::api::CreateNetworkRequest,
    weft_proto::api::CreateTokenRequest,
    weft_proto::api::UpdateNodeRequest,
    weft_proto::api::SetPolicyRequest,
    weft_proto::api::PolicyCheckRequest,
    weft_proto::samples::MetricsUpload,
    weft_proto::events::NodeEventsRequest,
    weft_proto::events::SetAnomalyRequest,
    weft_proto::integrity::IntegrityReport,
    weft_proto::integrity::ApproveHookRequest,
    weft_proto::integrity::ExpectRequest,
    weft_proto::relay_api::CreateRelayRequest,
    weft_proto::relay_api::RelayReportRequest
);

/// A JSON body: content type checked, size capped, parse errors and unknown
/// API versions mapped to 4xx `{code, message}`.
pub struct ApiJson<T>(pub T);

fn clip(mut s: String) -> String {
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl<T: DeserializeOwned + Versioned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_media_type);
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: state.cfg.max_body,
                }
            } else {
                ApiError::invalid("bad_body", "could not read the request body")
            }
        })?;
        let value: T = serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::invalid("invalid_body", clip(e.to_string()))
            }
            _ => ApiError::invalid("malformed_json", clip(e.to_string())),
        })?;
        check_version(value.api_version())?;
        Ok(ApiJson(value))
    }
}

fn check_version(v: Option<u32>) -> Result<(), ApiError> {
    match v {
        None | Some(API_VERSION) => Ok(()),
        Some(other) => Err(ApiError::invalid(
            "unsupported_api_version",
            format!("api_version {other} is not supported; this controller speaks {API_VERSION}"),
        )),
    }
}

/// Query parameters, with parse errors as 400 `invalid_query`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::invalid("invalid_query", clip(e.body_text())))
    }
}

/// A path parameter, with decoding errors as 400 `invalid_path`.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::invalid("invalid_path", clip(e.body_text())))
    }
}

fn bearer(parts: &Parts) -> Result<SecretHash, ApiError> {
    let value = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized)?
        .to_str()
        .map_err(|_| ApiError::Unauthorized)?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthorized)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > MAX_SECRET_LEN {
        return Err(ApiError::Unauthorized);
    }
    Ok(SecretHash::of(token))
}

/// An authenticated, enabled node.
pub struct NodeAuth {
    /// Its id.
    pub id: NodeId,
    /// Its key.
    pub key: NodeKey,
}

impl FromRequestParts<AppState> for NodeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let hash = bearer(parts)?;
        let mut world = state.engine.world().read().await;
        if world.node_by_credential(&hash).is_none() {
            // Registered through another replica a moment ago?
            drop(world);
            state.engine.catch_up().await;
            world = state.engine.world().read().await;
        }
        let node = world
            .node_by_credential(&hash)
            .ok_or(ApiError::Unauthorized)?;
        if node.rec.disabled {
            return Err(ApiError::NodeDisabled);
        }
        Ok(NodeAuth {
            id: node.rec.id,
            key: node.rec.node_key,
        })
    }
}

/// The admin.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let hash = bearer(parts)?;
        let world = state.engine.world().read().await;
        match &world.admin_hash {
            Some(admin) if admin.ct_eq(&hash) => Ok(AdminAuth),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// `State` re-export for handler signatures.
pub type St = State<AppState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_query_strings_are_found_however_spelled() {
        for q in [
            "token=x",
            "TOKEN=x",
            "tok%65n=x",
            "tok%2565n=x",
            "%74%6f%6b%65%6e=x",
            "token[]=x",
            "token[0]=x",
            "tok%65n%5B%5D=x",
            "a=1&password=x",
            "a=1;passwd=x",
            "key=x",
            "api-key=x",
            "api_key=x",
            "apikey=x",
            "apiKey=x",
            "X-Api-Key=x",
            "access_token=x",
            "access-token=x",
            "refresh_token=x",
            "session=x",
            "sig=x",
            "signature=x",
            "private_key=x",
            "private-key=x",
            "join_token=x",
            "client_secret=x",
            "credential=x",
            "auth=x",
            "bearer=x",
            "authorization=x",
            "token",
            "q=weft_admin_abc",
            "q=%77eft_join_abc",
        ] {
            assert!(query_carries_secret(q), "{q}");
        }
    }

    #[test]
    fn ordinary_query_strings_pass() {
        for q in [
            "network=lab",
            "limit=10&before=5&target=node:a",
            "monkey=1",
            "tokens=all",
            "keyboard=1",
            "q=weft",
            "a%ZZ=1",
            "%=1",
            "",
        ] {
            assert!(!query_carries_secret(q), "{q}");
        }
    }

    #[test]
    fn only_application_json_is_json() {
        for ok in [
            "application/json",
            "Application/JSON",
            " application/json ; charset=utf-8",
            "application/json;charset=UTF-8",
        ] {
            assert!(is_json_media_type(ok), "{ok}");
        }
        for bad in [
            "application/jsonx",
            "application/json-seq",
            "application/json5",
            "application/jsonp; charset=utf-8",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
        ] {
            assert!(!is_json_media_type(bad), "{bad}");
        }
    }
}
