//! weft-sim: a deterministic simulation of several `weft-tunnel` [`Node`]s, for
//! tests only (never a non-dev dependency).
//!
//! - **Virtual time.** One real `Instant` is read at start as the base; the
//!   clock is an offset from it that jumps to the earliest of every node's
//!   `poll_timeout` and every pending delivery ([`Sim::run_until`]), so ten
//!   virtual minutes of WireGuard timers run in milliseconds.
//! - **Underlay.** Each host has an access link ([`Link`]: latency, jitter that
//!   reorders, loss) that can go down; direct datagrams between two hosts can
//!   be cut; a host may sit behind a [`Nat`] with RFC 4787 mapping and filtering
//!   behaviours and idle timeouts, which can rebind. A STUN server answers with
//!   the address it saw, and the simulated controller ([`Control`]) puts the
//!   reflexive addresses a node reports into its peers' maps.
//! - **Relay.** Frames addressed to a peer's key reach it while both are
//!   connected (relay up, links up); nodes are told when their connection
//!   comes and goes (`set_relay_available`).
//! - **Randomness.** One [`SimRng`] seeded by the scenario: identities, node
//!   seeds, loss, jitter, NAT ports.
//! - **Trace.** Every send, delivery, drop, map and node event as a line with
//!   its virtual time ([`Trace`]), comparable byte for byte between runs.
//!
//! Driving follows the tunnel's contract: every input carries `now`, then
//! `poll_transmit` and `poll_event` are drained and `poll_timeout` re-read.
//!
//! [`Node`]: weft_tunnel::Node

pub mod control;
pub mod nat;
pub mod packet;
pub mod rng;
mod sim;
pub mod trace;

pub use control::{Advertised, Control, PolicyError};
pub use nat::{Filtering, Mapping, Nat, NatConfig};
pub use rng::SimRng;
pub use sim::{Arrival, Host, HostSpec, Link, PathEvent, STUN_SERVER, Sim, SimConfig};
pub use trace::Trace;
