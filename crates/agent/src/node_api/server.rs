//! The node API's HTTP/1.1 server: one `SO_PEERCRED` reading per connection,
//! then JSON answers to `GET` requests (see the module docs of `node_api`).

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine as _;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use weft_identity::Identity;

use super::access::{Access, Peer, Resource, supplementary_groups};
use super::view::View;

/// Connections served at once (more are closed at once; see `crate::http1`
/// for the other bounds).
const MAX_CONNECTIONS: usize = 32;

/// What the API serves: the view of the last map, and the identity that
/// opens its secrets.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) view: View,
    pub(crate) identity: Arc<Identity>,
}

/// What every connection's handler shares.
pub(crate) struct Shared {
    pub(crate) access: Access,
    pub(crate) served: watch::Receiver<Option<Arc<Served>>>,
}

/// Accepts connections until the task is aborted.
pub(crate) async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    crate::http1::accept_bounded(listener, MAX_CONNECTIONS, "node API", |stream| {
        connection(stream, shared.clone())
    })
    .await;
}

async fn connection(stream: UnixStream, shared: Arc<Shared>) {
    // SO_PEERCRED: the credentials the kernel recorded at connect(2).
    let peer = match stream.peer_cred() {
        Ok(cred) => Arc::new(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            groups: cred
                .pid()
                .map(|pid| supplementary_groups(pid, cred.uid()))
                .unwrap_or_default(),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "node API: cannot read the peer's credentials; closing");
            return;
        }
    };
    let svc = service_fn(move |req| {
        let (shared, peer) = (shared.clone(), peer.clone());
        async move { Ok::<_, Infallible>(answer(&req, &shared, &peer)) }
    });
    crate::http1::serve(stream, svc, "node API").await;
}

/// The routes, by what they read.
enum Route<'a> {
    Metadata,
    DataList,
    Services,
    Data(&'a str),
    Secret(&'a str),
}

fn route(path: &str) -> Option<Route<'_>> {
    match path {
        "/v1/metadata" => Some(Route::Metadata),
        "/v1/data" => Some(Route::DataList),
        "/v1/services" => Some(Route::Services),
        _ => {
            if let Some(key) = path.strip_prefix("/v1/data/") {
                Some(Route::Data(key))
            } else {
                path.strip_prefix("/v1/secrets/").map(Route::Secret)
            }
        }
    }
}

/// `{"error": {"code", "message"}}`, as the controller's API answers errors.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    json(status, &body)
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

#[derive(Serialize)]
struct DataList<'a> {
    data: &'a [super::view::DataItem],
    map_version: u64,
}

#[derive(Serialize)]
struct ServiceList<'a> {
    services: &'a [super::view::ServiceItem],
    map_version: u64,
}

#[derive(Serialize)]
struct SecretBody<'a> {
    key: &'a str,
    version: u64,
    /// The plaintext when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    /// The plaintext, always (binary secrets).
    value_base64: String,
}

fn answer<B>(req: &Request<B>, shared: &Shared, peer: &Peer) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let Some(route) = route(path) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such path: the node API serves GET /v1/metadata, /v1/data, /v1/data/{key}, \
             /v1/secrets/{key} and /v1/services",
        );
    };
    if req.method() != Method::GET {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the node API is read-only: use GET",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return r;
    }
    let what = match route {
        Route::Secret(_) => Resource::Secret,
        _ => Resource::Data,
    };
    // Access first: a refused caller learns nothing about which keys exist.
    if let Err(why) = shared.access.check(peer, what) {
        tracing::info!(uid = peer.uid, path, "node API refused: {why}");
        return error(StatusCode::FORBIDDEN, "forbidden", &why);
    }
    let Some(served) = shared.served.borrow().clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_map",
            "this node has no network map yet (not joined, or the controller has not \
             answered since the first start)",
        );
    };
    let view = &served.view;
    match route {
        Route::Metadata => json(StatusCode::OK, &view.metadata),
        Route::DataList => json(
            StatusCode::OK,
            &DataList {
                data: &view.data,
                map_version: view.metadata.map_version,
            },
        ),
        Route::Services => json(
            StatusCode::OK,
            &ServiceList {
                services: &view.services,
                map_version: view.metadata.map_version,
            },
        ),
        Route::Data(key) => match view.data(key) {
            Some(item) => json(StatusCode::OK, item),
            None => error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no data key {key:?} for this node"),
            ),
        },
        Route::Secret(key) => {
            let Some(secret) = view.secret(key) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no secret {key:?} for this node"),
                );
            };
            let opened = base64::engine::general_purpose::STANDARD
                .decode(&secret.sealed)
                .map_err(|e| format!("not base64: {e}"))
                .and_then(|sealed| {
                    weft_identity::sealed::open(&served.identity.x25519_secret(), &sealed)
                        .map_err(|e| e.to_string())
                });
            match opened {
                Ok(plain) => json(
                    StatusCode::OK,
                    &SecretBody {
                        key,
                        version: secret.version,
                        value: std::str::from_utf8(&plain).ok(),
                        value_base64: base64::engine::general_purpose::STANDARD.encode(&plain),
                    },
                ),
                Err(why) => {
                    tracing::warn!(key, "node API: secret cannot be opened: {why}");
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "undecryptable",
                        &format!(
                            "secret {key:?} cannot be opened with this node's key ({why}); \
                             set it again (weft admin secret set) if the node's key changed"
                        ),
                    )
                }
            }
        }
    }
}
