//! The local node API: what workloads on this node may learn about it, over a
//! Unix socket (`weftd --node-api-socket`, default `/run/weft/node.sock`).
//!
//! HTTP/1.1 with JSON bodies, `GET` only:
//! - `GET /v1/metadata`: `{name, node_key, tags, addresses, networks: [{name,
//!   ipv4, ipv6, dns_name}], map_version}`;
//! - `GET /v1/data`: `{data: [{key, value, version}], map_version}`: the
//!   key/value data the admin set for this node, its tags or its networks
//!   (resolved by the controller: node over tag over network);
//! - `GET /v1/data/{key}`: `{key, value, version}`;
//! - `GET /v1/secrets/{key}`: `{key, version, value, value_base64}`: the
//!   secret opened here with this node's X25519 key (the controller only ever
//!   holds the sealed box); `value` only when the plaintext is UTF-8;
//! - `GET /v1/services`: `{services: [{name, network, fqdn, vip, ports,
//!   instances: [{node, addr, health}]}], map_version}`: the named services
//!   this node may use (the policy allows it), for discovery by workloads.
//!
//! Errors are `{"error": {"code", "message"}}`: 403 `forbidden` (the message
//! says who may), 404 `not_found` (unknown key or path), 405
//! `method_not_allowed`, 503 `no_map` (no network map yet), 500
//! `undecryptable` (a secret sealed to another key).
//!
//! # Access
//!
//! The socket is 0660 `root:GROUP` with `--node-api-group GROUP`, else 0600
//! (root only); every connection's peer is then read with `SO_PEERCRED`:
//! root reads everything; uids of `--node-api-secret-uids` read everything
//! too; members of the group (primary or supplementary) read metadata and
//! data; everyone else is refused. See [`access`].

mod access;
mod server;
mod socket;
mod view;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_identity::Identity;
use weft_proto::netmap::NetworkMap;

pub use access::Access;

/// `weftd --node-api-socket`, `--node-api-group`, `--node-api-secret-uids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeApiConfig {
    /// Where to listen.
    pub socket: PathBuf,
    /// Who may read what.
    pub access: Access,
}

/// The running node API (or none); dropping it stops the server and removes
/// its socket.
#[derive(Debug, Default)]
pub(crate) struct NodeApi {
    view: Option<watch::Sender<Option<Arc<server::Served>>>>,
    task: Option<JoinHandle<()>>,
    _socket: Option<socket::SocketFile>,
}

impl Drop for NodeApi {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl NodeApi {
    /// Binds the socket and serves (nothing for `None`): a socket that cannot
    /// be bound is an error. Until the first [`NodeApi::set_map`] every
    /// request that passes the access check is answered 503 `no_map`.
    pub(crate) async fn start(cfg: Option<&NodeApiConfig>) -> anyhow::Result<NodeApi> {
        let Some(cfg) = cfg else {
            return Ok(NodeApi::default());
        };
        let gid = cfg.access.group.as_ref().map(|(_, gid)| *gid);
        let (listener, file) = socket::bind(&cfg.socket, gid).await?;
        let (tx, rx) = watch::channel(None);
        let shared = Arc::new(server::Shared {
            access: cfg.access.clone(),
            served: rx,
        });
        tracing::info!(
            socket = %cfg.socket.display(),
            group = cfg.access.group.as_ref().map(|(name, _)| name.as_str()),
            secret_uids = ?cfg.access.secret_uids,
            "node API listening"
        );
        Ok(NodeApi {
            view: Some(tx),
            task: Some(tokio::spawn(server::serve(listener, shared))),
            _socket: Some(file),
        })
    }

    /// Serves what `map` says from now on, opening its secrets with
    /// `identity` (the agent's identity when it applied the map: after a key
    /// rotation the next map comes with the new one).
    pub(crate) fn set_map(&self, map: &NetworkMap, identity: &Arc<Identity>) {
        if let Some(tx) = &self.view {
            let view = view::View::of(map);
            tx.send_if_modified(|old| {
                if let Some(old) = old
                    && old.view == view
                    && Arc::ptr_eq(&old.identity, identity)
                {
                    return false;
                }
                *old = Some(Arc::new(server::Served {
                    view,
                    identity: identity.clone(),
                }));
                true
            });
        }
    }
}

/// A `--node-api-group` name to its gid (through NSS, like every group
/// lookup of the agent).
pub fn group_by_name(name: &str) -> anyhow::Result<(String, u32)> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok((name.to_owned(), g.gid.as_raw())),
        Ok(None) => anyhow::bail!("--node-api-group {name}: no such group"),
        Err(e) => anyhow::bail!("--node-api-group {name}: looking the group up failed: {e}"),
    }
}

/// One `--node-api-secret-uids` entry: a numeric uid or a user name.
pub fn uid_of(text: &str) -> anyhow::Result<u32> {
    let text = text.trim();
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(text) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => anyhow::bail!("{text:?} is neither a uid nor a user name"),
        Err(e) => anyhow::bail!("looking up user {text:?} failed: {e}"),
    }
}

#[cfg(test)]
mod tests;
