//! weft-lab builds real network topologies out of Linux network namespaces, so
//! weft's end-to-end tests and its demo run the real binaries (`weftd`,
//! `weft-controller`, `weft-relay`) across a real virtual network: hosts, LANs,
//! a shared "internet" segment, routers with NAT profiles (nftables) and link
//! impairments (`tc netem`). It is an I/O shell: it runs `ip`, `nft` and `tc`,
//! needs root, and removes everything it creates, also after a crash.
//!
//! ```no_run
//! use std::{process::Command, time::Duration};
//! use weft_lab::{Lab, Nat, Net, Topology};
//!
//! let lab = Lab::build(
//!     &Topology::new()
//!         .host("controller", Net::Internet)
//!         .router("home", Net::Internet, Nat::Easy)
//!         .host("a", Net::lan("home")),
//! )?;
//! let mut server = lab.spawn("controller", "observer", Command::new(weft_lab::bin_path("weft-lab")?)
//!     .args(["__udp-observer", "--listen", "0.0.0.0:3478"]))?;
//! server.wait_for_udp_bound(3478, Duration::from_secs(5))?;
//! assert!(lab.ping("a", lab.addr("controller")?)?);
//! # Ok::<(), weft_lab::LabError>(())
//! ```
//!
//! # Layout
//! - [`topology`]: the declarative [`Topology`] builder and its pure [`Plan`]
//!   (names, addresses, routes);
//! - `lab`: [`Lab`], which applies a plan and owns the run;
//! - [`names`]: run ids and namespace/interface naming (`wl-<run id>-<node>`);
//! - [`nat`]: the nftables ruleset of each [`Nat`] profile;
//! - [`netem`]: link [`Impairment`]s (`tc netem`, nftables loss fallback);
//! - [`wire`]: the userspace delay/loss wire used where the kernel has no netem;
//! - [`process`]: [`Process`]es in a node, logs, wait-for-ready helpers;
//! - [`guard`]: run ownership, the reaper, teardown; [`mod@sweep`]: removing runs of
//!   dead owners;
//! - [`resolv`]: every node's private resolv.conf (`/etc/netns/<netns>/`) and
//!   the lab's upstream DNS resolver (dnsmasq on the internet segment);
//! - [`pathbench`]: relay vs direct throughput and RTT (`weft-lab bench-paths`);
//! - [`faults`]: the fault suite (`weft-lab faults`);
//! - [`probe`]: the UDP/TCP probe and observer behind the hidden `weft-lab __*`
//!   subcommands; [`selftest`]: proves every NAT profile behaves as named.
//!
//! Every entry point that touches the system fails with [`LabError::NotRoot`]
//! when not run as root: there is no silent skip.

#![allow(
    clippy::disallowed_methods,
    reason = "the lab is an I/O shell and reads the clock to wait"
)]

mod cmd;
mod error;
pub mod faults;
pub mod grid;
pub mod guard;
mod lab;
pub mod mesh;
pub mod names;
pub mod nat;
pub mod netem;
pub mod pathbench;
pub mod probe;
pub mod process;
pub mod resolv;
pub mod scripts;
pub mod selftest;
pub mod sweep;
mod sys;
pub mod topology;
pub mod wire;

use std::path::PathBuf;

pub use error::{LabError, ProcessExit, Result};
pub use guard::{teardown_active_runs, teardown_run};
pub use lab::{LOG_ROOT, Lab, Netns};
pub use netem::Impairment;
pub use process::{Process, timed_wait, wait_until};
pub use sweep::{SweepReport, sweep};
pub use topology::{Nat, Net, Plan, Topology};
pub use wire::WireStats;

/// The environment variable naming the directory of weft's binaries.
pub const BIN_DIR_ENV: &str = "WEFT_BIN_DIR";

/// Fails with [`LabError::NotRoot`] unless the effective user is root.
pub fn require_root() -> Result<()> {
    if sys::geteuid() == 0 {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Finds the binary `name` (for example `weftd` or `weft-lab`) to run inside a lab:
/// in `$WEFT_BIN_DIR` if set, else next to the current executable or one directory
/// up (so a test binary in `target/debug/deps/` finds `target/debug/weftd`).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        dirs.push(PathBuf::from(dir));
    } else if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        if let Some(parent) = dir.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    for dir in &dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(LabError::BinaryNotFound {
        name: name.to_owned(),
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_say_how_to_build_them() {
        let err = bin_path("no-such-weft-binary").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cargo build --workspace --bins"), "{msg}");
        assert!(msg.contains("no-such-weft-binary"), "{msg}");
    }

    #[test]
    fn not_root_message() {
        assert_eq!(
            LabError::NotRoot.to_string(),
            "weft-lab needs root (network namespaces, nftables): run as root / with sudo"
        );
    }
}
