//! weft relay: carries already-encrypted WireGuard packets between nodes that
//! cannot reach each other directly, over TLS on TCP (works where only 443/tcp
//! leaves a network), addressed by node key. It never sees plaintext. It also
//! answers STUN Binding requests on UDP so nodes learn their reflexive address.
//!
//! # Layout
//! - [`server`]: the tokio shell: TLS accept, one reader and one writer task per
//!   connection around the sans-IO core ([`weft_relay_core::RelayCore`]), the
//!   STUN responder, graceful shutdown (`Restarting` to every client):
//!   `run(config, listener, stun, members, shutdown)`.
//! - [`controller`]: the link to the controller: reports the relay's TLS
//!   fingerprint and STUN port, follows the member stream, feeds the core.
//! - [`metrics`]: the Prometheus registry, read from the core and the STUN
//!   counters at scrape time, and its plain-HTTP listener (`--metrics-listen`).
//! - [`tls`]: certificate loading/generation (TLS 1.3, ALPN `weft-relay/1`).
//! - [`cli`]: the `weft-relay` command line.
//!
//! The wire format is [`weft_relay_core::frame`]; the STUN codec is
//! `weft_proto::stun`. The client agents use is `weft-relay-client`, a crate of
//! its own, so an agent does not link this server.
//! `clock` is the one module that reads the clock.

pub mod cli;
pub mod controller;
pub mod metrics;
pub mod server;
pub mod tls;

mod clock;
