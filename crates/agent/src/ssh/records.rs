//! Session records on their way to the controller: each login (accepted or
//! refused) and each session's end is kept in the agent's outbox
//! (`STATE_DIR/ssh-sessions-outbox.json`: bounded, on disk, kept across
//! restarts, a damaged file moved aside and named in `weft status`) and
//! uploaded by `POST /v1/node/ssh/sessions`, which the controller applies
//! once per (node, id, ended). The server itself is reported by `POST
//! /v1/node/ssh/server` at start and on every new controller connection.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use weft_api_client::Client;
use weft_proto::local::FailureStatus;
use weft_proto::ssh::{
    MAX_SESSION_COMMAND, MAX_SESSION_RECORDS, SshServerInfo, SshServerReport, SshSessionRecord,
    SshSessionReport,
};

use crate::ctl::{self, LinkState};
use crate::outbox::{Keyed, Kind, Tracked};
use crate::state::Credential;

/// The outbox file in the state directory.
pub(crate) const FILE: &str = "ssh-sessions-outbox.json";
/// Records kept for the controller at most.
const MAX_PENDING: usize = 4096;
/// Records per upload (well under the controller's body limit).
const BATCH: usize = 64;
/// How often waiting records are sent while nothing new happens.
const RETRY: Duration = Duration::from_secs(5);
const KIND: Kind = Kind {
    file: FILE,
    what: "SSH session records",
    sent: "uploaded",
    area: "ssh",
    status: "SSH sessions outbox",
};

impl Keyed for SshSessionRecord {
    fn idempotency_key(&self) -> String {
        format!("{}/{}", self.id, self.ended_ms.is_some())
    }
}

/// The records of this agent's SSH server.
pub(crate) struct Records {
    pending: Mutex<Tracked<SshSessionRecord>>,
    wake: Notify,
    /// This run's first id part (weftd's start, Unix ms).
    run_ms: u64,
    next: AtomicU64,
}

impl Records {
    /// Opens the outbox in `dir`.
    pub(crate) fn open(dir: &Path, now_ms: u64) -> Self {
        Self {
            pending: Mutex::new(Tracked::open(dir, KIND, MAX_PENDING, now_ms)),
            wake: Notify::new(),
            run_ms: now_ms,
            next: AtomicU64::new(1),
        }
    }

    /// A new record id (`<run start ms>-<counter>`).
    pub(crate) fn new_id(&self) -> String {
        format!(
            "{}-{}",
            self.run_ms,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Keeps `r` (on disk before it returns) and wakes the uploader.
    pub(crate) fn push(&self, mut r: SshSessionRecord) {
        if let Some(c) = r.command.as_mut() {
            cut(c, MAX_SESSION_COMMAND);
        }
        if let Some(c) = r.reason.as_mut() {
            cut(c, MAX_SESSION_COMMAND);
        }
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.outbox_mut().push(r);
        p.save();
        drop(p);
        self.wake.notify_one();
    }

    /// Records waiting for the controller.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.lock().outbox().len()
    }

    /// For `weft status` (area `ssh`).
    pub(crate) fn failures(&self) -> Vec<FailureStatus> {
        self.lock().failures()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked<SshSessionRecord>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn oldest(&self, n: usize) -> Vec<SshSessionRecord> {
        self.lock().outbox().oldest(n)
    }

    fn taken(&self, n: usize, lost: bool) {
        let mut p = self.lock();
        p.outbox_mut().taken(n);
        if lost {
            p.outbox_mut().count_dropped(n as u64);
        }
        p.save();
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The controller link the uploader uses (`None`: not joined, or down).
pub(crate) type LinkCtx = Option<(Credential, watch::Receiver<LinkState>)>;

/// Reports `server` on every new controller connection and uploads the
/// waiting records, until `link`'s sender is dropped.
pub(crate) async fn uploader(
    records: Arc<Records>,
    server: Option<SshServerInfo>,
    mut link: watch::Receiver<LinkCtx>,
) {
    let report = SshServerReport { server };
    let mut client: Option<Client> = None;
    let mut state: Option<watch::Receiver<LinkState>> = None;
    let mut reported = false;
    let mut tick = tokio::time::interval(RETRY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                let l = link.borrow_and_update().clone();
                client = l.as_ref().and_then(|(c, _)| {
                    ctl::client_for(c)
                        .inspect_err(|e| tracing::warn!("SSH session records cannot be uploaded: {e:#}"))
                        .ok()
                });
                state = l.map(|(_, s)| s);
                reported = false;
            }
            () = connected(&mut state) => reported = false,
            _ = tick.tick() => {}
            () = records.wake.notified() => {}
        }
        let Some(c) = client.as_ref() else { continue };
        if !reported {
            match c.report_ssh_server(&report).await {
                Ok(()) => reported = true,
                Err(e) if e.is_permanent() => {
                    tracing::warn!(error = %e, "the controller refused this node's SSH server report");
                    reported = true;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reporting the SSH server failed; will retry")
                }
            }
        }
        upload(c, &records).await;
    }
}

/// Waits until the link (re)connects (never without one).
async fn connected(state: &mut Option<watch::Receiver<LinkState>>) {
    let Some(s) = state.as_mut() else {
        return std::future::pending().await;
    };
    let mut was = s.borrow().connected;
    loop {
        if s.changed().await.is_err() {
            *state = None;
            return std::future::pending().await;
        }
        let now = s.borrow_and_update().connected;
        if now && !was {
            return;
        }
        was = now;
    }
}

async fn upload(c: &Client, records: &Records) {
    loop {
        let batch = records.oldest(BATCH.min(MAX_SESSION_RECORDS));
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        match c
            .report_ssh_sessions(&SshSessionReport { sessions: batch })
            .await
        {
            Ok(()) => records.taken(n, false),
            Err(e) if e.is_permanent() => {
                tracing::warn!(error = %e, records = n, "the controller refused SSH session records; dropped");
                records.taken(n, true);
            }
            Err(e) => {
                tracing::debug!(error = %e, "uploading SSH session records failed; will retry");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, ended: Option<u64>) -> SshSessionRecord {
        SshSessionRecord {
            id: id.into(),
            from_node: Some("ops".into()),
            from_addr: "100.64.0.2".parse().unwrap(),
            user: "deploy".into(),
            accepted: true,
            reason: None,
            command: Some("é".repeat(MAX_SESSION_COMMAND)),
            started_ms: 1,
            ended_ms: ended,
        }
    }

    #[test]
    fn ssh_records_start_and_end_are_kept_across_restarts_and_commands_cut() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(dir.path(), 5);
        let id = r.new_id();
        assert_eq!(id, "5-1");
        r.push(rec(&id, None));
        r.push(rec(&id, Some(9)));
        r.push(rec(&id, Some(9)));
        assert_eq!(r.pending(), 2, "start and end, the end once");
        drop(r);
        let r = Records::open(dir.path(), 6);
        let got = r.oldest(10);
        assert_eq!(got.len(), 2);
        assert!(got[0].command.as_ref().unwrap().len() <= MAX_SESSION_COMMAND);
        r.taken(2, false);
        assert_eq!(r.pending(), 0);
        assert!(r.failures().is_empty());
    }
}
