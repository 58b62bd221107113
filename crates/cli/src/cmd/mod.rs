//! Subcommands, one module each.

pub mod admin;
pub mod agent;
pub mod controller;
pub(crate) mod format;
pub mod identity;
pub mod netcheck;
pub mod policy;
pub(crate) mod progress;
