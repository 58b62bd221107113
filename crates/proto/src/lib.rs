//! weft's shared vocabulary: the types that cross process and machine boundaries.
//!
//! This crate owns the node key type ([`NodeKey`]) and, as later layers land, the
//! controller API types, network map and its versioned deltas, and the disco/relay
//! frame codecs. It performs no I/O: no sockets, files, clocks, async or logging.
//! Parsers here are bounded and return [`DecodeError`]-style errors, never panic.

mod key;

pub use key::{KeyDecodeError, NodeKey};
