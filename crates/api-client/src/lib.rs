//! Typed async client for the weft controller API (HTTP/1.1 over rustls, JSON,
//! Server-Sent Events), used by the agent and the command-line tools.
//!
//! - Takes several URLs of one controller (its replicas) and a host name
//!   with several addresses: a connection that fails moves to the next
//!   ([`ClientConfig::more_urls`], [`Client::fail_over`]); the TLS server
//!   name stays the URL's host name. A call answered `503` goes to the
//!   next URL too when sending it twice cannot do twice what it asks
//!   (reads, settings, reports and deduplicated uploads; `retry` lists them
//!   and why).
//! - Refuses `http://` to anything but a loopback host unless
//!   [`ClientConfig::allow_insecure_http`] is set.
//! - Trusts the system roots, a CA file, or a pinned SHA-256 certificate
//!   fingerprint ([`Trust`]); the ring crypto provider.
//! - Sends credentials only in the `Authorization: Bearer` header, never in URLs.
//! - [`MapStream`] parses the map stream with `weft_proto::sse` (bounded) and
//!   tracks the last event id; [`MapSubscription`] reconnects with backoff and
//!   resumes with `Last-Event-ID`, moving to the next controller URL when a
//!   stream breaks or the controller sends `reconnect` (it is shutting down).
//! - Relays use [`Client::relay_report`] and [`MembersStream`] (the member set
//!   they may serve, resumed with `Last-Event-ID` on any replica; the
//!   controller's `reconnect` notice); [`tls_client_config`] gives other TLS clients (the relay
//!   client) the same trust rules.
//!
//! It holds no agent logic and keeps no state beyond a small connection pool.

mod admin_api;
mod client;
mod data_api;
mod dns_api;
mod error;
mod failover;
mod hostfw_api;
mod integrity_api;
mod members;
mod node_api;
mod relay_api;
mod retry;
mod service_api;
mod stream;
mod tasks_api;
mod tls;

pub use client::{Client, ClientConfig, CurrentController, MAX_URLS, Trust};
pub use error::ClientError;
pub use members::{MembersStream, MembersStreamEvent};
pub use stream::{MapStream, MapSubscription, jitter};
pub use tls::{
    SeenCert, format_fingerprint, parse_fingerprint, tls_client_config, tls_client_config_seen,
    tls_failure_hint,
};
