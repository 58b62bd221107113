//! The sans-IO half of the weft relay: what goes over the wire and what the
//! relay decides, with no I/O. Used by the relay server (`weft-relay`) and by
//! the relay client agents use (`weft-relay-client`), which depend on this
//! crate and not on each other.
//!
//! - [`frame`]: the frame codec (length-prefixed binary frames inside TLS 1.3,
//!   ALPN `weft-relay/1`) and the login message.
//! - [`RelayCore`]: the relay's state machine (sessions by node key, member set
//!   with fail-closed grace, forwarding, per-client bounded queues, drop
//!   counters, `PeerGone`/`Restarting` notices).
//! - [`outage`]: when a shell logs about a link that fails and retries.
//!
//! No tokio, no files, no processes, no clock and no OS randomness: every input
//! carries `now`, and the login nonce comes from the caller.

// Hash iteration order must not reach output (see clippy.toml).
#![warn(clippy::iter_over_hash_type)]

pub mod frame;
pub mod outage;

mod machine;

#[doc(hidden)]
pub mod fuzzing;

pub use machine::{
    Action, ClientStats, ConnId, CoreConfig, Counters, DropReason, Event, MembershipState,
    MembershipUpdate, Outbound, QueueDepths, RelayCore,
};
