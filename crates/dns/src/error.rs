//! Errors of the DNS service and of the system configuration it owns.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why the DNS service could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// Reading or writing a file failed (permissions, read-only `/etc`, a full
    /// disk).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The listening socket could not be bound (another resolver holds the port,
    /// or not root for port 53).
    #[error("cannot listen for DNS on {addr} ({proto}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The listen address is not a loopback address; the resolver only serves
    /// this host.
    #[error("DNS listen address {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    /// The file is something weft will not manage.
    #[error("{}: not managing it: {reason}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The backup of the original resolv.conf is unreadable (edited or
    /// truncated by hand).
    #[error("{}: bad resolv.conf backup: {reason}", path.display())]
    BadBackup {
        /// The backup metadata file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// This process runs in a network namespace other than the host's, but the
    /// resolver configuration it would manage is the host's own file (see
    /// [`crate::system::NamespaceView::host_file_conflict`]). Permanent: retrying
    /// changes nothing until the namespace gets its own file.
    #[error(
        "{}: not managing it: weftd runs in a network namespace other than the host's \
         ({netns}), but this is the host's file, and writing it would break the host's DNS. \
         Give the namespace its own file (create {} and start weftd with \
         `ip netns exec NAME`, which mounts it over /etc/resolv.conf), or run weftd with \
         --dns off",
        path.display(),
        private.display()
    )]
    HostFileInNamespace {
        /// The resolver configuration (`/etc/resolv.conf`).
        path: PathBuf,
        /// This process's network namespace: its `ip netns` name, else
        /// `net:[INODE]`.
        netns: String,
        /// The namespace's own file to create (`/etc/netns/NAME/resolv.conf`).
        private: PathBuf,
    },
    /// The TLS side of DNS-over-TLS upstreams could not be set up (no CA
    /// certificates, an unreadable CA file).
    #[error("DNS over TLS: {what}: {reason}")]
    Tls {
        /// What was being set up.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The query log file could not be opened.
    #[error("DNS query log {}: {source}", path.display())]
    QueryLog {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An external command (`resolvectl`) failed.
    #[error("`{command}`: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output or why it could not run.
        message: String,
    },
}

impl DnsError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
