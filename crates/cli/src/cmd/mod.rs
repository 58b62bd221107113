//! Subcommands, one module each.

pub mod identity;
pub(crate) mod progress;
