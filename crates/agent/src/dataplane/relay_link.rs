//! The relay link: connects to the map's relay, forwards what it delivers to
//! the I/O thread as commands (frames, link up and down), and holds the client
//! the node's relayed datagrams leave through ([`RelayOut`]).

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::task::JoinHandle;
use weft_api_client::Trust;
use weft_identity::Identity;
use weft_proto::NodeKey;
use weft_proto::netmap::Relay;
use weft_relay_client::{RelayClient, RelayClientConfig, RelayEvent, RelayEvents};

use super::commands::{Command, Commands, NotSent};
use super::tun::Tun;
use crate::clock;

/// The relay client relayed datagrams leave through, if any (set by the relay
/// link, read by the I/O thread and the UDP-send worker).
#[derive(Clone, Default)]
pub(crate) struct RelayOut(Arc<RwLock<Option<Arc<RelayClient>>>>);

impl RelayOut {
    fn set(&self, client: Option<Arc<RelayClient>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = client;
    }

    fn get(&self) -> Option<Arc<RelayClient>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sends one datagram to `peer` over the relay (dropped without a link).
    pub(super) fn send(&self, peer: NodeKey, payload: &[u8]) {
        match self.get() {
            Some(r) => {
                if let Err(e) = r.send(peer, payload) {
                    tracing::trace!(%peer, error = %e, "relay send dropped");
                }
            }
            None => tracing::trace!(%peer, "no relay link: datagram dropped"),
        }
    }
}

/// The relay this node uses, and the task reading from it.
pub(super) struct RelayLink {
    cmds: Commands<Tun>,
    out: RelayOut,
    task: Option<(Relay, JoinHandle<()>)>,
}

impl RelayLink {
    pub(super) fn new(cmds: Commands<Tun>, out: RelayOut) -> Self {
        Self {
            cmds,
            out,
            task: None,
        }
    }

    /// Connects to `relay` (or disconnects with `None`), and points the core's
    /// STUN discovery at the relay's STUN server.
    pub(super) async fn set(&mut self, relay: Option<Relay>, identity: &Arc<Identity>) {
        if self.task.as_ref().map(|(r, _)| r) == relay.as_ref() {
            return;
        }
        if let Some((old, task)) = self.task.take() {
            task.abort();
            self.out.set(None);
            self.cmds.tell(Command::RelayAvailable(false));
            tracing::info!(url = %old.url, "left relay");
        }
        let Some(relay) = relay else {
            self.cmds.tell(Command::StunServers(Vec::new()));
            return;
        };
        let stun = stun_server(&relay).await;
        self.cmds
            .tell(Command::StunServers(stun.into_iter().collect()));
        let trust = match relay
            .tls_fingerprint
            .as_deref()
            .map(weft_api_client::parse_fingerprint)
        {
            Some(Ok(fp)) => Trust::Fingerprint(fp),
            Some(Err(e)) => {
                tracing::warn!(url = %relay.url, error = %e, "relay fingerprint unusable; not using this relay");
                return;
            }
            None => Trust::SystemRoots,
        };
        let cfg = RelayClientConfig::new(relay.url.clone(), trust, identity.node_key());
        let id = identity.clone();
        match RelayClient::connect(
            cfg,
            Arc::new(move |ctx: &str, msg: &[u8]| id.sign(ctx, msg)),
        ) {
            Ok((client, events)) => {
                self.out.set(Some(Arc::new(client)));
                let task = tokio::spawn(reader(events, self.cmds.clone()));
                tracing::info!(url = %relay.url, "connecting to relay");
                self.task = Some((relay, task));
            }
            Err(e) => tracing::warn!(url = %relay.url, error = %e, "cannot use relay"),
        }
    }

    /// Leaves the relay (on `weft down` and shutdown).
    pub(super) fn shutdown(&mut self) {
        if let Some((_, t)) = self.task.take() {
            t.abort();
        }
        self.out.set(None);
        self.cmds.send(Command::RelayAvailable(false)).ok();
    }

    /// The relay in use, if any.
    pub(super) fn current(&self) -> Option<Relay> {
        self.task.as_ref().map(|(r, _)| r.clone())
    }

    /// The relay's URL and whether the link is up.
    pub(super) fn connected(&self) -> Option<(String, bool)> {
        let url = self.task.as_ref().map(|(r, _)| r.url.clone())?;
        Some((url, self.out.get().is_some_and(|r| r.is_connected())))
    }
}

/// The relay's STUN server: its URL's host with the map's STUN port.
pub(crate) async fn stun_server(relay: &Relay) -> Option<SocketAddr> {
    let port = relay.stun_port?;
    let (host, _) = url_host_port(&relay.url);
    match tokio::net::lookup_host((host, port)).await {
        Ok(mut addrs) => addrs.find(SocketAddr::is_ipv4),
        Err(e) => {
            tracing::warn!(%host, error = %e, "cannot resolve the relay's STUN server");
            None
        }
    }
}

/// A relay URL's host (without brackets) and port, if it names one.
pub(crate) fn url_host_port(url: &str) -> (&str, Option<u16>) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, p.parse().ok()),
        _ => (hostport, None),
    };
    (host.trim_start_matches('[').trim_end_matches(']'), port)
}

/// Hands what the relay delivers to the I/O thread, logging the link's
/// outages (one line when the relay becomes unreachable, one when it is back;
/// it was a WARN per retry, every 5 s).
async fn reader(mut events: RelayEvents, cmds: Commands<Tun>) {
    use weft_relay_client::OutageNote;
    let mut outage = weft_relay_client::OutageLog::default();
    while let Some(ev) = events.recv().await {
        let now = clock::now();
        let cmd = match ev {
            RelayEvent::Packet { src, payload } => Command::RelayFrame {
                src,
                payload: payload.to_vec(),
            },
            RelayEvent::Connected => {
                match outage.recovered(now) {
                    Some(OutageNote::Back { after, failures }) => tracing::info!(
                        down_s = after.as_secs(),
                        failed_attempts = failures,
                        "relay back after {:.0} s",
                        after.as_secs_f64()
                    ),
                    _ => tracing::info!("relay connected"),
                }
                Command::RelayAvailable(true)
            }
            RelayEvent::Disconnected { error, retry_in } => {
                let retry_in_ms = retry_in.as_millis() as u64;
                match outage.failed(now) {
                    Some(OutageNote::Down) => tracing::warn!(
                        %error,
                        "relay unreachable; retrying (logged again when it is back, or every 5 min)"
                    ),
                    Some(OutageNote::StillDown { for_, failures }) => tracing::warn!(
                        %error,
                        failed_attempts = failures,
                        "relay still unreachable after {:.0} s; retrying",
                        for_.as_secs_f64()
                    ),
                    _ => tracing::debug!(%error, retry_in_ms, "relay disconnected"),
                }
                Command::RelayAvailable(false)
            }
            RelayEvent::Restarting { retry_after } => {
                tracing::info!(
                    retry_after_ms = retry_after.as_millis() as u64,
                    "relay restarting"
                );
                Command::RelayAvailable(false)
            }
            RelayEvent::PeerGone { key, .. } => {
                tracing::debug!(peer = %key, "relay: peer not connected there");
                continue;
            }
        };
        match cmds.send(cmd) {
            Ok(()) => {}
            Err(NotSent::Full) => tracing::trace!("I/O thread busy: relay event dropped"),
            Err(NotSent::Gone) => return,
        }
    }
}
