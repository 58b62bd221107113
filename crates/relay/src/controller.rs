//! The relay's link to the controller: report the relay's TLS fingerprint and
//! STUN port, then follow the member stream and feed the core.
//!
//! Every failure (controller unreachable, stream broken, token refused) sends
//! [`MembershipUpdate::LinkDown`] and retries with exponential backoff (250 ms
//! to 30 s). The core keeps the last member set for its grace period and then
//! refuses everyone, so a relay that cannot reach its controller fails closed.
//!
//! With several controller URLs (`--controller URL1,URL2`: replicas), a
//! failure or the end of the member stream (a controller shutting down ends
//! it) moves to the next URL after a random wait under 2 s, and the backoff
//! applies once every URL failed in a row. The member stream has no resume:
//! each connection starts with a snapshot.
//!
//! One failure is not retried: a controller certificate this relay does not
//! trust (a wrong or missing `--pin-sha256`, or a CA it lacks). Retrying cannot
//! help, so [`follow`] ends with a message that names the fingerprint the
//! controller presented and what to pass, and the relay exits with it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};
use weft_api_client::{Client, ClientError, format_fingerprint};
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
            let mut stream = cfg
                .client
                .relay_members_stream(cfg.idle_timeout)
                .await
                .map_err(|e| warn!(error = %e, "cannot open the member stream"))?;
            loop {
                match stream.next().await {
                    Some(Ok(MembersEvent::Snapshot(s))) => {
                        debug!(
                            members = s.members.len(),
                            version = s.version,
                            "member snapshot"
                        );
                        tx.send(MembershipUpdate::Snapshot(s.members))
                            .await
                            .map_err(|_| ())?;
                    }
                    Some(Ok(MembersEvent::Delta(d))) => {
                        debug!(
                            added = d.added.len(),
                            removed = d.removed.len(),
                            version = d.version,
                            "member delta"
                        );
                        tx.send(MembershipUpdate::Delta {
                            added: d.added,
                            removed: d.removed,
                        })
                        .await
                        .map_err(|_| ())?;
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "member stream broke");
                        return Ok(true);
                    }
                    None => {
                        warn!("the controller ended the member stream");
                        return Ok(true);
                    }
                }
            }
        };
        let outcome: Result<bool, ()> = tokio::select! {
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
        if tx.send(MembershipUpdate::LinkDown).await.is_err() {
            return Ok(());
        }
        // A stream that delivered before breaking resets the backoff.
        if outcome == Ok(true) {
            backoff = BACKOFF_MIN;
            failed_in_row = 0;
        }
        failed_in_row += 1;
        // The next URL, or the next address of a name with several.
        let to = cfg.client.fail_over();
        let wait = if urls > 1 {
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
