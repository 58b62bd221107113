//! weft controller: the source of desired state.
//!
//! Agents register (join token + key + proof of work + signature over a fresh
//! challenge), then hold a Server-Sent Events stream of their network map and
//! report endpoints and liveness; admins manage networks, join tokens and nodes.
//!
//! # Layout
//! - [`model`]: the state in memory ([`model::World`]), one module per
//!   aggregate (networks, tokens, nodes, relays, policy, routes), each owning
//!   its operations: an [`model::Operation`] returns its own typed result.
//!   Pure: validates, mutates, and records row writes and what changed; a
//!   closed batch yields its [`model::Outcome`]. The access policy (versioned,
//!   validated, compiled per node after every relevant batch) is
//!   `model::policy`.
//! - [`netmap`]: pure compiler from the state to one node's map and from a
//!   batch's outcome to per-node deltas.
//! - [`store`]: the persistence trait (load, apply a batch atomically, read the
//!   audit log) and its SQLite driver; migrations in `migrations/`.
//! - [`engine`]: the single writer. A dedicated thread takes queued operations in
//!   batches, applies them to the state, commits them in one durable transaction,
//!   and only then publishes deltas to the [`hub`] and answers the callers.
//! - [`hub`]: per-node stream subscriptions, the replay ring for `Last-Event-ID`.
//! - [`metrics`]: the Prometheus registry (`GET /metrics`): counters and
//!   latency histograms updated where things happen, state gauges computed
//!   from the model at scrape time.
//! - [`relay_feed`]: the member set relays may serve and the relay streams that
//!   follow it.
//! - [`history`]: each node's forwarded metrics, a fixed ring of one-minute
//!   buckets (24 h) in memory.
//! - [`api`]: the HTTP handlers, one module per resource, and the JSON views
//!   of the state (`api::views`); [`error`] maps every failure to a status and
//!   `{code, message}`.
//! - [`serve`]: TLS/plain listener, connection handling, graceful shutdown:
//!   `run(config, listener, shutdown)`.
//! - [`cli`]: the `weft-controller` command line (`serve`, `admin ...`).
//!
//! [`clock`] is the one module that reads the clock.

pub mod api;
pub mod cli;
pub mod clock;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod netmap;
pub mod relay_feed;
pub mod replica;
pub mod secret;
pub mod serve;
pub mod store;
pub mod tls;
pub mod validate;
