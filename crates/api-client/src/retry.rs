//! Which calls go to the controller's next URL when the one in use answers
//! `503 Service Unavailable` (pure).
//!
//! A replica answers 503 when it cannot reach the database, is catching up
//! after losing it, or is shutting down. Another replica may well answer,
//! so a call with several URLs is tried on the next one, but only when
//! sending it twice cannot do twice what it asks. A 503 almost always means
//! nothing was committed, but not always: when the connection to the
//! database breaks during the commit, the controller cannot know whether it
//! landed and answers 503. So:
//!
//! - `GET`, `HEAD`: reads.
//! - `PUT`, `DELETE`, `PATCH /v1/admin/nodes/…`: they set or remove a
//!   named thing (a policy or firewall document, data, a secret, a hook
//!   approval, node fields); doing it again leaves the same state. (A
//!   `DELETE` that did land the first time answers "not found" the second.)
//! - `POST`s that set state or are deduplicated by the controller:
//!   - node and relay reports (`/v1/node/report`, `/v1/relay/report`,
//!     `/v1/node/integrity`, `/v1/node/services/health`,
//!     `/v1/node/ssh/server`, `/v1/node/routes`,
//!     `/v1/node/services/advertise`): the latest state replaces the last;
//!   - uploads deduplicated by the controller: `/v1/node/usage` (monotonic
//!     counters, diffed per series), `/v1/node/events`, `/v1/node/metrics`
//!     and `/v1/node/ssh/sessions` (idempotency keys, one record each);
//!   - `/v1/node/tasks/lease` (the same lease while it lives) and
//!     `/v1/node/tasks/result` (idempotent by task and lease);
//!   - `/v1/register/challenge` (writes nothing) and `/v1/register`: its
//!     challenge is single-use across replicas, so a registration that did
//!     land the first time is refused the second, never made twice;
//!   - pure checks: `/v1/admin/policy/check`, `/v1/admin/firewall/check`;
//!   - `/v1/admin/tasks/{id}/cancel` (cancelling twice is cancelling once).
//! - Never: `POST`s that create something whose id or secret the controller
//!   draws (networks, join tokens, relays, tasks, services, firewall rules,
//!   routes, service decisions), and `/v1/node/rotate-key`. A second try
//!   could make a second one; the caller gets the 503 and decides.

use http::Method;

/// `POST` paths that are safe to send again (see the module docs).
const SAFE_POSTS: &[&str] = &[
    "/v1/node/report",
    "/v1/relay/report",
    "/v1/node/integrity",
    "/v1/node/services/health",
    "/v1/node/ssh/server",
    "/v1/node/ssh/sessions",
    "/v1/node/routes",
    "/v1/node/services/advertise",
    "/v1/node/usage",
    "/v1/node/events",
    "/v1/node/metrics",
    "/v1/node/tasks/lease",
    "/v1/node/tasks/result",
    "/v1/register/challenge",
    "/v1/register",
    "/v1/admin/policy/check",
    "/v1/admin/firewall/check",
];

/// Whether a call answered with 503 may be sent again to another URL of
/// the controller (`path` as the client builds it, without the URL's base
/// path; a query string is ignored).
pub(crate) fn safe_after_503(method: &Method, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    match *method {
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE => true,
        Method::PATCH => path.starts_with("/v1/admin/nodes/"),
        Method::POST => {
            SAFE_POSTS.contains(&path)
                || (path.starts_with("/v1/admin/tasks/") && path.ends_with("/cancel"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settings_and_deduplicated_uploads_are_retried_creations_are_not() {
        let safe = |m: Method, p: &str| safe_after_503(&m, p);
        assert!(safe(Method::GET, "/v1/admin/nodes?network=lab"));
        assert!(safe(Method::PUT, "/v1/admin/policy"));
        assert!(safe(Method::DELETE, "/v1/admin/tokens/3"));
        assert!(safe(Method::PATCH, "/v1/admin/nodes/n1"));
        assert!(safe(Method::POST, "/v1/node/report"));
        assert!(safe(Method::POST, "/v1/node/tasks/result"));
        assert!(safe(Method::POST, "/v1/register"));
        assert!(safe(Method::POST, "/v1/admin/tasks/tsk_1/cancel"));
        // The controller draws an id or a secret: a second try could make
        // a second one.
        for p in [
            "/v1/admin/networks",
            "/v1/admin/tokens",
            "/v1/admin/relays",
            "/v1/admin/tasks",
            "/v1/admin/services",
            "/v1/admin/firewall/rules",
            "/v1/admin/routes",
            "/v1/node/rotate-key",
        ] {
            assert!(!safe(Method::POST, p), "{p}");
        }
        assert!(!safe(Method::PATCH, "/v1/admin/other"));
        assert!(!safe(Method::POST, "/v1/node/report/extra"));
    }
}
