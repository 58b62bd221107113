//! SSH through the mesh: what the map tells an SSH client node and an SSH
//! server node, and what the server reports.
//!
//! `weftd --ssh` runs an SSH server on the node's overlay addresses only. Who
//! may log in as which local user comes from the policy's `[[ssh]]` rules: the
//! server's compiled policy lists its grants
//! ([`crate::policy::CompiledPolicy::ssh_inbound`]), a client's lists the
//! targets it may log in to ([`crate::policy::CompiledPolicy::ssh_outbound`]).
//! The client is identified by the overlay source address of its connection
//! (the tunnel guarantees it), so no SSH key or password is involved. The
//! server's host key is reported to the controller and published in the maps
//! of the nodes that may log in ([`crate::netmap::NetworkMap::ssh_hosts`]), so
//! `weft ssh NODE` connects with no trust-on-first-use prompt.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::NodeKey;

/// Default port of `weftd --ssh` on the overlay addresses.
pub const DEFAULT_SSH_PORT: u16 = 22;
/// Longest OpenSSH public key line accepted (`ssh-ed25519 AAAA...`), in bytes.
pub const MAX_HOST_KEY: usize = 1024;
/// Most session records in one upload.
pub const MAX_SESSION_RECORDS: usize = 256;
/// Longest command recorded for a session (longer ones are cut), in bytes.
pub const MAX_SESSION_COMMAND: usize = 512;
/// Longest local user name.
pub const MAX_USER: usize = 32;

/// Checks a local user name as the policy and the SSH server accept it:
/// `[a-z_][a-z0-9_-]*[$]?`, at most [`MAX_USER`] bytes (the portable POSIX
/// shape that `useradd` accepts), or `*` in a policy rule meaning "the same
/// name the client asks for".
pub fn check_user(user: &str) -> bool {
    let b = user.as_bytes();
    if b.is_empty() || b.len() > MAX_USER {
        return false;
    }
    let body = b.strip_suffix(b"$").unwrap_or(b);
    !body.is_empty()
        && (body[0].is_ascii_lowercase() || body[0] == b'_')
        && body
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// A node this node may log in to, with its host key (in the map).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshHost {
    /// The server node's key.
    pub node_key: NodeKey,
    /// The server node's name.
    pub node: String,
    /// The network whose address is used.
    pub network: String,
    /// The server's overlay IPv4 address there.
    pub addr: Ipv4Addr,
    /// The port `weftd --ssh` listens on.
    pub port: u16,
    /// Its host key, one OpenSSH public key line (`ssh-ed25519 AAAA...`), no
    /// comment.
    pub host_key: String,
    /// The local users this node may log in as there, sorted (from the
    /// policy). The first is `weft ssh`'s default.
    pub users: Vec<String>,
}

/// What `weft status` shows about `weftd --ssh`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshServerStatus {
    /// The addresses it listens on (the overlay addresses, port).
    pub listening: Vec<std::net::SocketAddr>,
    /// Its host key's OpenSSH public line.
    pub host_key: String,
    /// Sessions open now.
    pub sessions_open: u64,
    /// Sessions accepted since start.
    pub sessions_total: u64,
    /// Logins refused since start.
    pub refused_total: u64,
    /// Why it is not serving (bind failure, host key file), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// ---- node → controller (the node's credential) ----

/// `POST /v1/node/ssh/server`: the node's SSH server started (or stopped:
/// `None`). Sent at start and whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshServerReport {
    /// The server, or `None` when `--ssh` is off.
    #[serde(default)]
    pub server: Option<SshServerInfo>,
}

/// A running SSH server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshServerInfo {
    /// The port on the overlay addresses.
    pub port: u16,
    /// The host key, one OpenSSH public key line without comment (at most
    /// [`MAX_HOST_KEY`] bytes).
    pub host_key: String,
}

/// `POST /v1/node/ssh/sessions`: sessions the node's server saw (accepted and
/// refused), each written to the controller's audit log as `ssh.session`
/// (refusals as `ssh.refused`). Carried through the agent's outbox; `id` is
/// the idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSessionReport {
    /// At most [`MAX_SESSION_RECORDS`].
    pub sessions: Vec<SshSessionRecord>,
}

/// One SSH session (or refused login).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSessionRecord {
    /// Unique per server node (`<start ms>-<counter>`); the controller dedupes
    /// on (node, id, ended).
    pub id: String,
    /// The client node's name, when the source address is a known peer.
    #[serde(default)]
    pub from_node: Option<String>,
    /// The connection's overlay source address.
    pub from_addr: IpAddr,
    /// The local user asked for.
    pub user: String,
    /// `true`: logged in; `false`: refused.
    pub accepted: bool,
    /// Why it was refused, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The command (exec) or subsystem (`sftp`), cut to
    /// [`MAX_SESSION_COMMAND`]; `None` for an interactive shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// When it started (Unix milliseconds).
    pub started_ms: u64,
    /// When it ended (Unix milliseconds); `None` in the record sent at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_portable_posix_names() {
        for ok in ["root", "deploy", "_svc", "a-b_c1", "host$"] {
            assert!(check_user(ok), "{ok}");
        }
        for bad in ["", "Root", "1abc", "-x", "a b", "a/b", "$", &"a".repeat(33)] {
            assert!(!check_user(bad), "{bad}");
        }
    }
}
