//! The lab's error type: one enum, each variant saying what failed and, where a
//! system command failed, its full command line and stderr.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, driving or tearing down a lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The process is not root; namespaces and nftables need `CAP_SYS_ADMIN`/`CAP_NET_ADMIN`.
    #[error("weft-lab needs root (network namespaces, nftables): run as root / with sudo")]
    NotRoot,
    /// A system command (`ip`, `nft`, `tc`, a spawned helper) exited unsuccessfully.
    #[error("`{cmdline}` failed ({status}): {stderr}")]
    Command {
        /// The full command line, shell-quoted for copy-paste.
        cmdline: String,
        /// The exit status as text.
        status: String,
        /// The command's stderr (trimmed).
        stderr: String,
    },
    /// An I/O operation (spawning, reading a log, creating a directory) failed.
    #[error("{context}")]
    Io {
        /// What was being done, including the path or command involved.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The declared topology is inconsistent (duplicate or unknown names, bad characters).
    #[error("invalid topology: {0}")]
    Topology(String),
    /// A node name that the lab does not know.
    #[error("unknown node `{0}` in this lab")]
    UnknownNode(String),
    /// A wait helper gave up.
    #[error("timed out after {waited:?} waiting for {what}{detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it waited.
        waited: Duration,
        /// Extra context (for example the tail of a process log), possibly empty.
        detail: String,
    },
    /// A spawned process exited while the lab was waiting for it to become ready.
    #[error("{0}")]
    ProcessExited(Box<ProcessExit>),
    /// A delay or jitter impairment was requested but the kernel has no `sch_netem`.
    #[error(
        "link delay/jitter needs the kernel's netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel lacks \
         (packet loss still works, through nftables): `{cmdline}`: {stderr}"
    )]
    NetemUnavailable {
        /// The `tc` command that failed.
        cmdline: String,
        /// Its stderr.
        stderr: String,
    },
    /// A sibling binary (`weft-lab`, `weftd`, ...) could not be found.
    #[error(
        "binary `{name}` not found (looked in: {searched}); run `cargo build --workspace --bins` first, \
         or set WEFT_BIN_DIR to the directory holding it"
    )]
    BinaryNotFound {
        /// The binary's file name.
        name: String,
        /// The directories that were searched, comma-separated.
        searched: String,
    },
    /// A probe or observer helper produced output the lab could not understand.
    #[error("bad probe output: {0}")]
    Probe(String),
}

/// Details of [`LabError::ProcessExited`].
#[derive(Debug, thiserror::Error)]
#[error("process `{name}` on `{node}` exited ({status}) while waiting for {what}; log {log}:\n{tail}", log = log.display())]
pub struct ProcessExit {
    /// The node (namespace) the process ran in.
    pub node: String,
    /// The name given at spawn.
    pub name: String,
    /// Its exit status.
    pub status: String,
    /// What was awaited.
    pub what: String,
    /// The path of its log file.
    pub log: PathBuf,
    /// The last lines of its log.
    pub tail: String,
}

/// The lab's result type.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
