//! weft's shared vocabulary: the types that cross process and machine boundaries.
//!
//! This crate owns the node key type ([`NodeKey`]), IP prefixes ([`net`]), the
//! controller API bodies ([`api`]), the per-node network map and its versioned
//! deltas ([`netmap`]) and Server-Sent Events framing ([`sse`]); later, the
//! disco/relay frame codecs. It performs no I/O: no sockets, files, clocks, async
//! or logging. Parsers here are bounded and return errors, never panic.

pub mod api;
pub mod local;
pub mod net;
pub mod netmap;
pub mod sse;

mod key;

pub use key::{KeyDecodeError, NodeKey};
