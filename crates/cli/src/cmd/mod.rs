//! Subcommands, one module each.

pub mod agent;
pub mod identity;
pub mod netcheck;
pub mod policy;
pub(crate) mod progress;
