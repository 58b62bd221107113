//! Subcommands, one module each.

pub mod agent;
pub mod identity;
pub(crate) mod progress;
