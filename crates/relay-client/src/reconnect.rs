//! The client task: one session after another, with backoff between them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use weft_proto::NodeKey;

use crate::session::{End, Session};
use crate::types::{RelayClientError, RelayEvent};

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const REFUSED_MIN: Duration = Duration::from_secs(1);
const REFUSED_MAX: Duration = Duration::from_secs(30);

pub(crate) async fn run(s: Session, mut out: mpsc::Receiver<(NodeKey, Bytes)>) {
    let mut backoff = BACKOFF_MIN;
    let mut refused = REFUSED_MIN;
    loop {
        let end = s.session(&mut out).await;
        s.stats.connected.store(0, Ordering::Relaxed);
        let delay = match end {
            End::Stop => return,
            End::Restarting(hint) => {
                backoff = BACKOFF_MIN;
                refused = REFUSED_MIN;
                let hint = hint.clamp(Duration::from_millis(50), BACKOFF_MAX);
                if s.events
                    .send(RelayEvent::Restarting { retry_after: hint })
                    .await
                    .is_err()
                {
                    return;
                }
                jitter(hint)
            }
            End::Failed { error, established } => {
                if established {
                    backoff = BACKOFF_MIN;
                    refused = REFUSED_MIN;
                }
                let permanent = matches!(
                    &error,
                    RelayClientError::Refused(r) | RelayClientError::Closed(r) if r.is_permanent()
                );
                let delay = jitter(if permanent {
                    let d = refused;
                    refused = (refused * 2).min(REFUSED_MAX);
                    d
                } else {
                    let d = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    d
                });
                tracing::debug!(relay = %s.url, error = %error, retry_in = ?delay, "relay session ended");
                if s.events
                    .send(RelayEvent::Disconnected {
                        error,
                        retry_in: delay,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                delay
            }
        };
        // Wait, dropping what the caller sends meanwhile (it was told).
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                p = out.recv() => match p {
                    Some(_) => { s.stats.send_dropped.fetch_add(1, Ordering::Relaxed); }
                    None => return,
                },
            }
        }
    }
}

/// `d` ± 20 %.
fn jitter(d: Duration) -> Duration {
    use rand_core::RngCore as _;
    let permille = 800 + u64::from(rand_core::OsRng.next_u32() % 401);
    d * u32::try_from(permille).unwrap_or(1000) / 1000
}
