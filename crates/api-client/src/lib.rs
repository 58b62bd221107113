//! Typed async client for the weft controller API (HTTP/1.1 over rustls, JSON,
//! Server-Sent Events), used by the agent and the command-line tools.
//!
//! - Refuses `http://` to anything but a loopback host unless
//!   [`ClientConfig::allow_insecure_http`] is set.
//! - Trusts the system roots, a CA file, or a pinned SHA-256 certificate
//!   fingerprint ([`Trust`]); the ring crypto provider.
//! - Sends credentials only in the `Authorization: Bearer` header, never in URLs.
//! - [`MapStream`] parses the map stream with `weft_proto::sse` (bounded) and
//!   tracks the last event id; [`MapSubscription`] reconnects with backoff and
//!   resumes with `Last-Event-ID`.
//! - Relays use [`Client::relay_report`] and [`MembersStream`] (the member set
//!   they may serve); [`tls_client_config`] gives other TLS clients (the relay
//!   client) the same trust rules.
//!
//! It holds no agent logic and keeps no state beyond a small connection pool.

mod admin_api;
mod client;
mod data_api;
mod dns_api;
mod error;
mod hostfw_api;
mod integrity_api;
mod members;
mod node_api;
mod relay_api;
mod service_api;
mod stream;
mod tasks_api;
mod tls;

pub use client::{Client, ClientConfig, Trust};
pub use error::ClientError;
pub use members::MembersStream;
pub use stream::{MapStream, MapSubscription};
pub use tls::{
    SeenCert, format_fingerprint, parse_fingerprint, tls_client_config, tls_client_config_seen,
    tls_failure_hint,
};
