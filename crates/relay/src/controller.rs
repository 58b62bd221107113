//! The relay's link to the controller: report the relay's TLS fingerprint and
//! STUN port, then follow the member stream and feed the core.
//!
//! Every failure (controller unreachable, stream broken, token refused) sends
//! [`MembershipUpdate::LinkDown`] and retries with exponential backoff (250 ms
//! to 30 s). The core keeps the last member set for its grace period and then
//! refuses everyone, so a relay that cannot reach its controller fails closed.
//!
//! With several controller URLs (`--controller URL1,URL2`: replicas), a
//! failure or the end of the member stream moves to the next URL after a
//! random wait under 2 s, and the backoff applies once every URL failed in
//! a row. A controller shutting down sends `reconnect` first: the link
//! moves to the next URL after a random wait within the spread it asks
//! for, without declaring the member set stale.
//!
//! The member stream resumes: the link keeps the member set it was told
//! (and its version) and reconnects with `Last-Event-ID`, on the same
//! controller or another replica, which sends the deltas since (a
//! snapshot only when it no longer has them all). Once the stream is open
//! again the core gets the kept set back, then the deltas.
//!
//! One failure is not retried: a controller certificate this relay does not
//! trust (a wrong or missing `--pin-sha256`, or a CA it lacks). Retrying cannot
//! help, so [`follow`] ends with a message that names the fingerprint the
//! controller presented and what to pass, and the relay exits with it.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};
use weft_api_client::{Client, ClientError, MembersStreamEvent, format_fingerprint};
use weft_proto::NodeKey;
use weft_proto::relay_api::{MembersEvent, RelayReportRequest};

use weft_relay_core::MembershipUpdate;

/// Link settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// A controller client that sends the relay token as bearer.
    pub client: Client,
    /// Its URLs, comma-separated (for the message when a certificate is not
    /// trusted).
    pub controller_url: String,
    /// What to report at every (re)connect.
    pub report: RelayReportRequest,
    /// The relay's name, if the operator gave one: a token of another relay is
    /// then refused (logged, and the link stays down).
    pub expected_name: Option<String>,
    /// Longest silence on the member stream (the controller sends keepalives
    /// every 15 s by default).
    pub idle_timeout: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The longest random wait before moving to the next controller URL.
const FAILOVER_SPREAD: Duration = Duration::from_secs(2);

/// What to tell the operator when the controller at `url` presented a
/// certificate this relay does not trust (`e`, whose certificate had the
/// SHA-256 `seen`): the fingerprint it presented, and the flags that would
/// trust it.
pub fn untrusted_message(url: &str, e: &ClientError, seen: &[u8; 32]) -> String {
    let seen = format_fingerprint(seen);
    format!(
        "the controller's TLS certificate is not trusted ({e}). The controller at {url} presented \
         {seen}. If that is the fingerprint your controller prints at start (\"TLS certificate \
         fingerprint: ...\"), pass --pin-sha256 {seen}; or pass --ca-file with the CA certificate \
         that signed the controller's certificate"
    )
}

/// How a session with the controller ended (`Err(())`: before its
/// stream opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The stream opened, then broke or ended.
    Broke,
    /// The controller asked to reconnect elsewhere within this spread.
    Moved(Duration),
}

/// The member set as the link was last told, to resume from.
#[derive(Debug, Default)]
struct Kept {
    /// The version of the last member event (its `Last-Event-ID`).
    version: Option<u64>,
    members: BTreeSet<NodeKey>,
}

impl Kept {
    /// Takes a stream event in; returns the update for the core.
    fn take(&mut self, ev: MembersEvent) -> MembershipUpdate {
        self.version = Some(ev.version());
        match ev {
            MembersEvent::Snapshot(s) => {
                debug!(
                    members = s.members.len(),
                    version = s.version,
                    "member snapshot"
                );
                self.members = s.members.iter().copied().collect();
                MembershipUpdate::Snapshot(s.members)
            }
            MembersEvent::Delta(d) => {
                debug!(
                    added = d.added.len(),
                    removed = d.removed.len(),
                    version = d.version,
                    "member delta"
                );
                self.members.extend(d.added.iter().copied());
                for k in &d.removed {
                    self.members.remove(k);
                }
                MembershipUpdate::Delta {
                    added: d.added,
                    removed: d.removed,
                }
            }
        }
    }
}

/// Runs the link until `stop` becomes `true` (or the receiver of `tx` is gone).
/// Ends early with the message to exit with when the controller's certificate
/// is not trusted (see [`untrusted_message`]).
pub async fn follow(
    cfg: LinkConfig,
    tx: mpsc::Sender<MembershipUpdate>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut backoff = BACKOFF_MIN;
    let urls = cfg.client.urls().len();
    let mut failed_in_row = 0;
    let kept = Mutex::new(Kept::default());
    let kept_lock = || {
        kept.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let untrusted: Mutex<Option<(ClientError, [u8; 32])>> = Mutex::new(None);
        let session = async {
            let info = cfg.client.relay_report(&cfg.report).await.map_err(|e| {
                if let Some(seen) = e.untrusted_certificate() {
                    *untrusted
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((e, seen));
                } else if e.is_permanent() {
                    error!(error = %e, "the controller refused this relay (is the relay token valid?)");
                } else {
                    warn!(error = %e, "cannot report to the controller");
                }
            })?;
            if let Some(want) = &cfg.expected_name
                && *want != info.name
            {
                error!(token_of = %info.name, name = %want, "the relay token belongs to another relay; not serving");
                return Err(());
            }
            info!(name = %info.name, url = %info.url, controller = %cfg.client.current().url, "reported to the controller");
            let from = kept_lock().version;
            let mut stream = cfg
                .client
                .relay_members_stream_from(from, cfg.idle_timeout)
                .await
                .map_err(|e| warn!(error = %e, "cannot open the member stream"))?;
            if let Some(version) = from {
                // The set as last told is current again; the deltas since
                // (or a snapshot) follow.
                let members: Vec<NodeKey> = kept_lock().members.iter().copied().collect();
                info!(version, members = members.len(), controller = %cfg.client.current().url, "member stream resumed");
                tx.send(MembershipUpdate::Snapshot(members))
                    .await
                    .map_err(|_| ())?;
            }
            loop {
                match stream.next_event().await {
                    Some(Ok(MembersStreamEvent::Members(ev))) => {
                        if matches!(ev, MembersEvent::Snapshot(_)) {
                            info!(version = ev.version(), resumed_from = ?from, "member stream started with a snapshot");
                        }
                        let update = kept_lock().take(ev);
                        tx.send(update).await.map_err(|_| ())?;
                    }
                    Some(Ok(MembersStreamEvent::Reconnect(n))) => {
                        info!(reason = %n.reason, within_ms = n.within_ms, "the controller asked to reconnect elsewhere");
                        return Ok(Ended::Moved(Duration::from_millis(n.within_ms)));
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "member stream broke");
                        return Ok(Ended::Broke);
                    }
                    None => {
                        warn!("the controller ended the member stream");
                        return Ok(Ended::Broke);
                    }
                }
            }
        };
        let outcome: Result<Ended, ()> = tokio::select! {
            _ = stop.changed() => return Ok(()),
            r = session => r,
        };
        let untrusted = untrusted
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((e, seen)) = untrusted {
            let msg = untrusted_message(&cfg.controller_url, &e, &seen);
            error!("{msg}");
            let _ = tx.send(MembershipUpdate::LinkDown).await;
            return Err(msg);
        }
        // Asked to move: the set is not stale, the next stream resumes it.
        let moved = match outcome {
            Ok(Ended::Moved(spread)) => Some(spread),
            _ => None,
        };
        if moved.is_none() && tx.send(MembershipUpdate::LinkDown).await.is_err() {
            return Ok(());
        }
        // A stream that delivered before breaking resets the backoff.
        if matches!(outcome, Ok(Ended::Broke | Ended::Moved(_))) {
            backoff = BACKOFF_MIN;
            failed_in_row = 0;
        }
        failed_in_row += 1;
        // The next URL, or the next address of a name with several.
        let to = cfg.client.fail_over();
        let wait = if let Some(spread) = moved {
            info!(to = %to, "moving to the next controller URL");
            weft_api_client::jitter(spread.min(FAILOVER_SPREAD.saturating_mul(5)))
        } else if urls > 1 {
            info!(to = %to, "moving to the next controller URL");
            if failed_in_row < urls {
                weft_api_client::jitter(FAILOVER_SPREAD)
            } else {
                backoff
            }
        } else {
            backoff
        };
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        if wait == backoff {
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

#[cfg(test)]
mod tests;
