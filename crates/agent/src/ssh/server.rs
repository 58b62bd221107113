//! The SSH server: one listener per overlay address of this node (rebound
//! when the map changes them; never a wildcard address), each connection
//! served by russh with a [`Conn`] handler that authenticates by the source
//! address ([`super::access`]), runs sessions ([`super::process`]) and
//! forwards `direct-tcpip` channels (`ssh -L`).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use weft_proto::policy::CompiledPolicy;
use weft_proto::ssh::SshSessionRecord;

use super::access::{self, LocalUser};
use super::process::{self, Login, What};
use super::records::Records;
use crate::clock;

/// Connections served at once per node (more wait in the listen queue).
const MAX_CONNECTIONS: usize = 64;
/// Channels per connection.
const MAX_CHANNELS: usize = 32;
/// How long a `direct-tcpip` connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Refusals from one source address recorded for the controller at most
/// once per this many milliseconds (all are counted and logged), so a node
/// hammering the port cannot flood the outbox and the audit log.
const REFUSAL_RECORD_EVERY_MS: u64 = 10_000;
/// Source addresses whose last recorded refusal is remembered.
const MAX_REFUSAL_SOURCES: usize = 1024;
/// How often listeners that could not bind are retried.
const REBIND: Duration = Duration::from_secs(2);

/// What connections share.
pub(crate) struct Shared {
    pub(crate) policy: Mutex<Option<Arc<CompiledPolicy>>>,
    /// Peers' overlay addresses → their names (to name who was refused).
    pub(crate) peers: Mutex<BTreeMap<IpAddr, String>>,
    /// When a refusal from each source address was last recorded.
    pub(crate) refusals: Mutex<BTreeMap<IpAddr, u64>>,
    pub(crate) records: Arc<Records>,
    pub(crate) open: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) refused: AtomicU64,
    /// Addresses listened on, and why others are not.
    pub(crate) listening: Mutex<Vec<SocketAddr>>,
    pub(crate) bind_errors: Mutex<BTreeMap<IpAddr, String>>,
}

impl Shared {
    /// Whether a refusal from `from` is recorded now (at most one per
    /// [`REFUSAL_RECORD_EVERY_MS`] per address).
    pub(crate) fn may_record_refusal(&self, from: IpAddr, now_ms: u64) -> bool {
        let mut seen = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        if seen
            .get(&from)
            .is_some_and(|t| now_ms.saturating_sub(*t) < REFUSAL_RECORD_EVERY_MS)
        {
            return false;
        }
        if seen.len() >= MAX_REFUSAL_SOURCES {
            seen.retain(|_, t| now_ms.saturating_sub(*t) < REFUSAL_RECORD_EVERY_MS);
            if seen.len() >= MAX_REFUSAL_SOURCES {
                return false;
            }
        }
        seen.insert(from, now_ms);
        true
    }

    fn policy(&self) -> Option<Arc<CompiledPolicy>> {
        self.policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The russh configuration: the host key, the `none` method only.
pub(crate) fn config(key: PrivateKey) -> russh::server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::None);
    russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-weftd".into()),
        methods,
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        max_auth_attempts: 3,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    }
}

/// Keeps one listener per address of `addrs` (as it changes), until its
/// sender is dropped.
pub(crate) async fn listen(
    shared: Arc<Shared>,
    config: Arc<russh::server::Config>,
    port: u16,
    mut addrs: watch::Receiver<Vec<IpAddr>>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut running: BTreeMap<IpAddr, JoinHandle<()>> = BTreeMap::new();
    let mut retry = tokio::time::interval(REBIND);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wanted: Vec<IpAddr> = addrs.borrow_and_update().clone();
        running.retain(|a, task| {
            let keep = wanted.contains(a) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        let mut errors = BTreeMap::new();
        for a in &wanted {
            if running.contains_key(a) {
                continue;
            }
            let at = SocketAddr::new(*a, port);
            match bind(at) {
                Ok(l) => {
                    tracing::info!(%at, "SSH server listening");
                    running.insert(
                        *a,
                        tokio::spawn(accept(l, shared.clone(), config.clone(), limit.clone())),
                    );
                }
                Err(e) => {
                    errors.insert(*a, format!("cannot listen on {at}: {e}"));
                }
            }
        }
        *shared
            .listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            running.keys().map(|a| SocketAddr::new(*a, port)).collect();
        *shared
            .bind_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = errors;
        tokio::select! {
            changed = addrs.changed() => {
                if changed.is_err() {
                    running.values().for_each(JoinHandle::abort);
                    return;
                }
            }
            _ = retry.tick() => {}
        }
    }
}

/// A listener on `at`; bound even before the address is on the interface
/// (IP_FREEBIND), so a map applied before the reconciler's pass does not
/// fail.
fn bind(at: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if at.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    // IP_FREEBIND applies to IPv6 sockets too.
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::IpFreebind, &true)?;
    s.bind(at)?;
    s.listen(128)
}

async fn accept(
    l: TcpListener,
    shared: Arc<Shared>,
    config: Arc<russh::server::Config>,
    limit: Arc<Semaphore>,
) {
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (stream, from) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an SSH connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let handler = Conn {
            shared: shared.clone(),
            from,
            local,
            login: None,
            refusal_recorded: false,
            channels: HashSet::new(),
        };
        let config = config.clone();
        tokio::spawn(async move {
            match russh::server::run_stream(config, stream, handler).await {
                Ok(session) => {
                    if let Err(e) = session.await {
                        tracing::debug!(%from, error = %e, "SSH connection ended with an error");
                    }
                }
                Err(e) => tracing::debug!(%from, error = %e, "SSH connection setup failed"),
            }
            drop(permit);
        });
    }
}

/// One connection.
struct Conn {
    shared: Arc<Shared>,
    from: SocketAddr,
    local: SocketAddr,
    /// After authentication: the client node and the local user.
    login: Option<(String, LocalUser)>,
    refusal_recorded: bool,
    channels: HashSet<ChannelId>,
}

impl Conn {
    fn refuse(&mut self, user: &str, from_node: Option<String>, reason: String) -> Auth {
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
        let from_node = from_node.or_else(|| {
            self.shared
                .peers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&access::canonical(self.from.ip()))
                .cloned()
        });
        tracing::info!(from = %self.from, %user, %reason, "SSH login refused");
        let now = clock::unix_ms();
        if !self.refusal_recorded && self.shared.may_record_refusal(self.from.ip(), now) {
            self.refusal_recorded = true;
            self.shared.records.push(SshSessionRecord {
                id: self.shared.records.new_id(),
                from_node,
                from_addr: access::canonical(self.from.ip()),
                user: user.chars().take(64).collect(),
                accepted: false,
                reason: Some(reason),
                command: None,
                started_ms: now,
                ended_ms: Some(now),
            });
        }
        Auth::Reject {
            proceed_with_methods: None,
            partial_success: false,
        }
    }

    /// A record of what runs in a new session: its id.
    fn started(
        shared: &Shared,
        login: &(String, LocalUser),
        from: IpAddr,
        what: Option<String>,
    ) -> SshSessionRecord {
        shared.open.fetch_add(1, Ordering::Relaxed);
        shared.total.fetch_add(1, Ordering::Relaxed);
        let r = SshSessionRecord {
            id: shared.records.new_id(),
            from_node: Some(login.0.clone()),
            from_addr: from,
            user: login.1.name.clone(),
            accepted: true,
            reason: None,
            command: what,
            started_ms: clock::unix_ms(),
            ended_ms: None,
        };
        tracing::info!(from = %login.0, user = %login.1.name, command = ?r.command, "SSH session started");
        shared.records.push(r.clone());
        r
    }

    fn ended(shared: &Shared, mut r: SshSessionRecord) {
        shared.open.fetch_sub(1, Ordering::Relaxed);
        r.ended_ms = Some(clock::unix_ms().max(r.started_ms));
        tracing::info!(from = ?r.from_node, user = %r.user, ms = r.ended_ms.unwrap_or(0) - r.started_ms, "SSH session ended");
        shared.records.push(r);
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        let policy = self.shared.policy();
        let node = match access::decide(policy.as_deref(), self.from.ip(), user) {
            Ok(node) => node,
            Err(r) => return Ok(self.refuse(user, r.from_node, r.reason)),
        };
        match LocalUser::lookup(user) {
            Ok(Some(u)) => {
                tracing::info!(from = %self.from, %node, %user, "SSH login accepted");
                self.login = Some((node, u));
                Ok(Auth::Accept)
            }
            Ok(None) => Ok(self.refuse(
                user,
                Some(node),
                format!("there is no local user {user} on this node"),
            )),
            Err(e) => Ok(self.refuse(user, Some(node), e)),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(login) = self.login.clone() else {
            return Ok(false);
        };
        if self.channels.len() >= MAX_CHANNELS {
            return Ok(false);
        }
        self.channels.insert(channel.id());
        let shared = self.shared.clone();
        let from = access::canonical(self.from.ip());
        let l = Login {
            user: login.1.clone(),
            from: self.from,
            local: self.local,
        };
        tokio::spawn(async move {
            let record = Arc::new(Mutex::new(None));
            let r2 = record.clone();
            let s2 = shared.clone();
            let l2 = login.clone();
            process::serve(
                channel,
                l,
                move |what: &What| {
                    let r = Conn::started(&s2, &l2, from, what.recorded());
                    let id = r.id.clone();
                    *r2.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
                    id
                },
                move |_id| {
                    if let Some(r) = record.lock().unwrap_or_else(PoisonError::into_inner).take() {
                        Conn::ended(&shared, r);
                    }
                },
            )
            .await;
        });
        Ok(true)
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" && process::sftp_server().is_some() {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(login) = self.login.clone() else {
            return Ok(false);
        };
        // A user who may not log in may not forward either.
        if login.1.no_login() || host.len() > 255 || self.channels.len() >= MAX_CHANNELS {
            return Ok(false);
        }
        let Ok(port) = u16::try_from(port) else {
            return Ok(false);
        };
        let target = format!("{host}:{port}");
        let stream = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(%target, error = %e, "SSH forwarding: connect failed");
                return Ok(false);
            }
            Err(_) => return Ok(false),
        };
        let shared = self.shared.clone();
        let from = access::canonical(self.from.ip());
        let record = Conn::started(
            &shared,
            &login,
            from,
            Some(format!("direct-tcpip {target}")),
        );
        tokio::spawn(async move {
            let mut ch = channel.into_stream();
            let mut stream = stream;
            let _ = tokio::io::copy_bidirectional(&mut ch, &mut stream).await;
            Conn::ended(&shared, record);
        });
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_from_one_address_are_recorded_at_most_every_ten_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared {
            policy: Mutex::new(None),
            peers: Mutex::new(BTreeMap::new()),
            refusals: Mutex::new(BTreeMap::new()),
            records: Arc::new(Records::open(dir.path(), 0)),
            open: Default::default(),
            total: Default::default(),
            refused: Default::default(),
            listening: Mutex::new(Vec::new()),
            bind_errors: Mutex::new(BTreeMap::new()),
        };
        let a: IpAddr = "100.64.0.4".parse().unwrap();
        let b: IpAddr = "100.64.0.5".parse().unwrap();
        assert!(shared.may_record_refusal(a, 1_000));
        assert!(!shared.may_record_refusal(a, 5_000));
        assert!(shared.may_record_refusal(b, 5_000));
        assert!(shared.may_record_refusal(a, 11_000));
        // The table is bounded: past it, old entries go, fresh ones refuse.
        for i in 0..(MAX_REFUSAL_SOURCES as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            shared.may_record_refusal(ip, 20_000);
        }
        assert!(shared.refusals.lock().unwrap().len() <= MAX_REFUSAL_SOURCES);
    }
}
