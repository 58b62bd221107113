//! weft's shared vocabulary: the types that cross process and machine boundaries.
//!
//! This crate owns the node key type ([`NodeKey`]), IP prefixes ([`net`]), the
//! controller API bodies ([`api`]), a node's host facts ([`facts`]: bounded,
//! every field optional), the per-node network map and its versioned
//! deltas ([`netmap`]), Server-Sent Events framing ([`sse`]), the relay's
//! controller API bodies ([`relay_api`]; the relay frame codec is in
//! `weft-relay-core`), the STUN Binding codec ([`stun`]), and remote tasks
//! and their limits ([`task`]), a node's host firewall ([`hostfw`]), the DNS blocklist ([`dnsblock`]), what a node runs and its integrity
//! ([`integrity`]). It performs no I/O: no sockets, files, clocks,
//! async or logging. Parsers here are bounded
//! and return errors, never panic; each has a fuzz target in `fuzz/` whose
//! committed corpus `tests/fuzz_corpora.rs` replays through [`fuzzing`].

// Hash iteration order must not reach output (see clippy.toml).
#![warn(clippy::iter_over_hash_type)]

pub mod api;
pub mod data;
pub mod dnsblock;
pub mod events;
pub mod facts;
pub mod hostfw;
pub mod icmp;
pub mod integrity;
pub mod ipfmt;
pub mod local;
pub mod net;
pub mod netmap;
pub mod policy;
pub mod relay_api;
pub mod samples;
pub mod service;
pub mod sse;
pub mod ssh;
pub mod stun;
pub mod task;
pub mod text;
pub mod usage;
pub mod workload;

#[doc(hidden)]
pub mod fuzzing;

mod key;

pub use key::{KeyDecodeError, NodeKey};
