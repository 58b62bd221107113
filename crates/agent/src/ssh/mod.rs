//! `weftd --ssh`: an SSH server on this node's overlay addresses, for the
//! nodes the policy's `[[ssh]]` rules let log in (issue 19).
//!
//! - [`hostkey`]: `STATE_DIR/ssh_host_ed25519_key` (0600, made once; damaged
//!   → the server does not start and `weft status` says why).
//! - [`access`]: the connection's overlay source address → the client node →
//!   its grant in this node's compiled policy (`ssh_inbound`) → the local
//!   users it may log in as. The `none` method is accepted only then.
//! - [`server`]: listeners on the overlay addresses (never a wildcard),
//!   connections, `direct-tcpip` forwarding.
//! - [`process`]: exec, shell with a pty, the `sftp` subsystem, each as the
//!   local user through its login shell, in a session of its own.
//! - [`records`]: session records through the outbox to the controller
//!   (`ssh.session`, `ssh.refused` in its audit log) and the server report
//!   (port and host key, published in the maps of the nodes that may log in).
//!
//! Also here: the answer to `weft ssh`'s question (which nodes this node may
//! log in to, with their host keys: [`hosts`]).

mod access;
mod hostkey;
mod process;
mod records;
mod server;
mod sys;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_proto::local::{FailureStatus, LocalResponse};
use weft_proto::netmap::NetworkMap;
use weft_proto::policy::MapPolicy;
use weft_proto::ssh::{SshServerInfo, SshServerStatus};

use crate::clock;
use crate::ctl::LinkState;
use crate::state::Credential;

pub(crate) use records::LinkCtx;

/// The SSH server as the supervisor holds it (also when `--ssh` is off: it
/// then reports "no server" to the controller, so a node that stopped
/// serving leaves the maps).
pub(crate) struct Ssh {
    /// `--ssh-port` when `--ssh` is on.
    port: Option<u16>,
    shared: Option<Arc<server::Shared>>,
    host_key: String,
    /// Why it is not serving (the host key), since when.
    error: Option<(String, u64)>,
    addrs: watch::Sender<Vec<IpAddr>>,
    link: watch::Sender<LinkCtx>,
    records: Arc<records::Records>,
    tasks: Vec<JoinHandle<()>>,
}

impl Ssh {
    /// Starts the server when `port` is set (`weftd --ssh`), and the
    /// reporter in every case.
    pub(crate) fn start(port: Option<u16>, state_dir: &Path) -> Self {
        let now = clock::unix_ms();
        let records = Arc::new(records::Records::open(state_dir, now));
        let (addrs, addrs_rx) = watch::channel(Vec::new());
        let (link, link_rx) = watch::channel(None);
        let mut ssh = Self {
            port,
            shared: None,
            host_key: String::new(),
            error: None,
            addrs,
            link,
            records: records.clone(),
            tasks: Vec::new(),
        };
        let mut info = None;
        if let Some(port) = port {
            match hostkey::load_or_create(state_dir)
                .and_then(|k| hostkey::public_line(&k).map(|p| (k, p)))
            {
                Ok((key, public)) => {
                    let shared = Arc::new(server::Shared {
                        policy: Mutex::new(None),
                        peers: Mutex::new(BTreeMap::new()),
                        refusals: Mutex::new(BTreeMap::new()),
                        records: records.clone(),
                        open: Default::default(),
                        total: Default::default(),
                        refused: Default::default(),
                        listening: Mutex::new(Vec::new()),
                        bind_errors: Mutex::new(BTreeMap::new()),
                    });
                    ssh.tasks.push(tokio::spawn(server::listen(
                        shared.clone(),
                        Arc::new(server::config(key)),
                        port,
                        addrs_rx,
                    )));
                    info = Some(SshServerInfo {
                        port,
                        host_key: public.clone(),
                    });
                    ssh.host_key = public;
                    ssh.shared = Some(shared);
                }
                Err(e) => {
                    tracing::error!("the SSH server does not start: {e}");
                    ssh.error = Some((e, now));
                }
            }
        }
        ssh.tasks
            .push(tokio::spawn(records::uploader(records, info, link_rx)));
        ssh
    }

    /// A new map: the addresses to listen on and the policy's grants.
    pub(crate) fn set_map(&self, map: &NetworkMap) {
        let Some(shared) = &self.shared else { return };
        let policy = match &map.policy {
            Some(MapPolicy::Compiled(p)) => Some(p.clone()),
            _ => None,
        };
        *shared.policy.lock().unwrap_or_else(PoisonError::into_inner) = policy;
        *shared.peers.lock().unwrap_or_else(PoisonError::into_inner) = map
            .networks
            .iter()
            .flat_map(|n| &n.peers)
            .flat_map(|p| {
                std::iter::once(IpAddr::V4(p.ipv4))
                    .chain(p.ipv6.map(IpAddr::V6))
                    .map(move |a| (a, p.name.clone()))
            })
            .collect();
        let mut addrs: Vec<IpAddr> = map
            .networks
            .iter()
            .flat_map(|n| std::iter::once(IpAddr::V4(n.ipv4)).chain(n.ipv6.map(IpAddr::V6)))
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        self.addrs.send_if_modified(|a| {
            let changed = *a != addrs;
            *a = addrs;
            changed
        });
    }

    /// No map in force (`weft down`): stop listening.
    pub(crate) fn clear_map(&self) {
        if let Some(shared) = &self.shared {
            *shared.policy.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        self.addrs.send_if_modified(|a| {
            let changed = !a.is_empty();
            a.clear();
            changed
        });
    }

    /// The controller link to report through (`None`: not joined, or down).
    pub(crate) fn set_link(&self, link: Option<(&Credential, &watch::Receiver<LinkState>)>) {
        self.link
            .send_replace(link.map(|(c, s)| (c.clone(), s.clone())));
    }

    /// `weft status`'s SSH section (`None` without `--ssh`).
    pub(crate) fn status(&self) -> Option<SshServerStatus> {
        self.port?;
        let mut status = SshServerStatus {
            host_key: self.host_key.clone(),
            error: self.error.as_ref().map(|(e, _)| e.clone()),
            ..Default::default()
        };
        if let Some(s) = &self.shared {
            status.listening = s
                .listening
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            status.sessions_open = s.open.load(Ordering::Relaxed);
            status.sessions_total = s.total.load(Ordering::Relaxed);
            status.refused_total = s.refused.load(Ordering::Relaxed);
            let errors = s.bind_errors.lock().unwrap_or_else(PoisonError::into_inner);
            if !errors.is_empty() {
                status.error = Some(errors.values().cloned().collect::<Vec<_>>().join("; "));
            }
        }
        Some(status)
    }

    /// For `weft status` (area `ssh`): a host key that stops the server,
    /// addresses it cannot listen on, the records outbox's failures.
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        let mut f = self.records.failures();
        if let Some((e, since)) = &self.error {
            f.push(FailureStatus {
                area: "ssh".into(),
                what: hostkey::FILE.into(),
                error: e.clone(),
                since_unix_ms: *since,
            });
        }
        if let Some(s) = &self.shared {
            let now = clock::unix_ms();
            for (a, e) in s
                .bind_errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                f.push(FailureStatus {
                    area: "ssh".into(),
                    what: format!("listener {a}"),
                    error: e.clone(),
                    since_unix_ms: now,
                });
            }
        }
        f
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// `weft ssh`: the nodes this node may log in to (the map's `ssh_hosts`)
/// and the DNS domain of each network.
pub(crate) fn hosts(map: Option<&NetworkMap>) -> LocalResponse {
    let Some(map) = map else {
        return LocalResponse::Error {
            code: "no_map".into(),
            message: "this node has no network map yet: run `weft up` and check `weft status`"
                .into(),
        };
    };
    LocalResponse::SshHosts {
        hosts: map.ssh_hosts.clone(),
        domains: map
            .networks
            .iter()
            .map(|n| (n.name.clone(), n.dns_domain.clone()))
            .collect(),
    }
}
