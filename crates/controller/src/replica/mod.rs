//! Several replicas on one database: the writer's side.
//!
//! Any replica accepts writes. Its writer ([`crate::engine`]) commits each
//! batch while it holds the database-wide write lock
//! ([`Store::begin_exclusive`]), and first replays every change the other
//! replicas committed since its state's last one ([`Replica::catch_up`]):
//! each is run on the in-memory state and published to this replica's
//! streams exactly like a local batch ([`crate::model::World::replay`]), so
//! versions are global and gap-free and every replica publishes the same
//! deltas for a version. Then it applies its own operations and commits
//! their writes with their change row ([`Replica::change_row`]).
//!
//! When idle, the writer still catches up: a store's change listener
//! (PostgreSQL `LISTEN`) or, without one, a poll of the newest seq every
//! [`POLL`] wakes it ([`Replica::tick`]). Every [`HEARTBEAT_EVERY`] it writes
//! its heartbeat; a replica whose heartbeat is older than [`STALE_AFTER`]
//! is dead and its presence is withdrawn ([`crate::model::ReplicaGone`]),
//! so its nodes that did not reconnect elsewhere go offline within
//! `STALE_AFTER + HEARTBEAT_EVERY` (20 s). A replica that died before this
//! one started (a restart) is withdrawn only [`RESTART_GRACE`]
//! after the start, so a fleet coming back after a restart does not flap.
//!
//! A replay that diverges, a gap in the log (pruned past this replica's
//! last change) or a failed commit makes the replica reload its state from
//! the store under the lock and end every stream (agents resynchronise).
//! While it is behind or cannot reach the store, [`Replica::catching_up`]
//! is set (`/readyz` answers not ready).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore as _};
use tracing::{info, warn};
use weft_proto::netmap::Relay;

use crate::clock;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::model::{AnyOp, ChangeBody, Outcome, RecordedOp, World};
use crate::netmap;
use crate::relay_feed::RelayFeed;
use crate::store::{ChangeRecord, ReplicaRecord, Store, StoreError, Write};

/// How often an idle writer looks for other replicas' changes.
pub const POLL: Duration = Duration::from_millis(200);
/// How often a replica writes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A replica whose heartbeat is older than this is dead.
pub const STALE_AFTER: Duration = Duration::from_secs(15);
/// How long after its start a replica waits before it withdraws the
/// presence of a replica that died before it started (a restart: the fleet
/// comes back meanwhile, and a node back in time never flaps offline).
pub const RESTART_GRACE: Duration = Duration::from_secs(60);
/// Changes kept in the log; a replica further behind reloads everything.
pub const CHANGES_KEPT: u64 = 20_000;
/// Changes read at once while catching up.
const CATCH_UP_CHUNK: usize = 256;

/// Where published batches go: this replica's streams and relay feed.
pub struct Fanout<'a> {
    /// The map streams.
    pub hub: &'a Hub,
    /// The relay member feed.
    pub feed: &'a RelayFeed,
    /// Timings.
    pub metrics: &'a Metrics,
}

impl Fanout<'_> {
    /// Publishes a committed batch's outcome (local or replayed).
    pub fn publish(&self, w: &World, o: &Outcome) {
        let started = clock::now();
        let out = netmap::compile(w, o);
        let pushed = self.hub.publish(w, &out, &o.touched.evicted);
        self.metrics
            .fanout(clock::now().saturating_duration_since(started), pushed);
        self.feed.publish(w, &o.touched);
    }

    /// After the state was reloaded: every stream ends and resynchronises.
    pub fn reset(&self, w: &World) {
        self.hub.evict_all();
        self.feed.reset(w);
    }
}

/// Loads the state consistently with the changes log (under the write
/// lock): the snapshot, the presence rows and the newest seq it includes.
pub fn load(store: &mut dyn Store, relays: Vec<Relay>) -> Result<World, StoreError> {
    store.begin_exclusive()?;
    let read = read_all(store);
    let released = store.rollback_exclusive();
    let (snap, presence, seq) = read?;
    released?;
    let mut w = World::from_snapshot(snap, relays);
    w.load_presence(&presence);
    w.change_seq = seq;
    Ok(w)
}

type Loaded = (
    crate::store::StoreSnapshot,
    Vec<crate::store::PresenceRecord>,
    u64,
);

fn read_all(store: &mut dyn Store) -> Result<Loaded, StoreError> {
    Ok((
        store.load()?,
        store.load_presence()?,
        store.last_change_seq()?,
    ))
}

/// Begins a new map version at a start (`serve::prepare`), recorded in the
/// changes log so every replica moves with it: a stream resuming from before
/// the start gets a snapshot from the starting replica (its replay ring is
/// empty), not an empty replay. If other replicas committed changes since
/// `w` was loaded, `w` is loaded again first.
pub fn bump(store: &mut dyn Store, w: &mut World) -> Result<(), StoreError> {
    store.begin_exclusive()?;
    if store.last_change_seq().inspect_err(|_| {
        let _ = store.rollback_exclusive();
    })? != w.change_seq
    {
        match read_all(store) {
            Ok((snap, presence, seq)) => {
                let relays = std::mem::take(&mut w.relays);
                *w = World::from_snapshot(snap, relays);
                w.load_presence(&presence);
                w.change_seq = seq;
            }
            Err(e) => {
                let _ = store.rollback_exclusive();
                return Err(e);
            }
        }
    }
    let now = clock::now_unix_ms();
    let body = ChangeBody {
        now_ms: now,
        bump: true,
        version: w.version + 1,
        writes: 1,
        ..ChangeBody::default()
    };
    let change = ChangeRecord {
        seq: w.change_seq + 1,
        replica: format!("start-{}", std::process::id()),
        at_ms: now,
        body: serde_json::to_string(&body).unwrap_or_default(),
    };
    store.commit_exclusive(&[Write::SetMapVersion(body.version), Write::Change(change)])?;
    w.version = body.version;
    w.change_seq += 1;
    Ok(())
}

/// This replica, as its writer sees it.
pub struct Replica {
    /// Its id (unique per process start; names its presence rows).
    pub id: String,
    started_ms: u64,
    started: Instant,
    /// The state must be reloaded before anything else.
    reload: bool,
    last_heartbeat: Option<Instant>,
    last_prune: Option<Instant>,
    /// Replicas this one saw alive (their death is not a restart's).
    seen_alive: BTreeSet<String>,
    catching_up: Arc<AtomicBool>,
    /// This replica's presence rows may be gone: another replica withdrew
    /// it (it stalled past [`STALE_AFTER`]) or its state was reloaded.
    withdrawn: bool,
}

impl Replica {
    /// A new replica id: the process id and random bits.
    pub fn new() -> Self {
        Self {
            id: format!("{}-{:08x}", std::process::id(), OsRng.next_u32()),
            started_ms: clock::now_unix_ms(),
            started: clock::now(),
            reload: false,
            last_heartbeat: None,
            last_prune: None,
            seen_alive: BTreeSet::new(),
            catching_up: Arc::new(AtomicBool::new(true)),
            withdrawn: false,
        }
    }

    /// Set while this replica is behind the log or cannot reach the store.
    pub fn catching_up(&self) -> Arc<AtomicBool> {
        self.catching_up.clone()
    }

    /// Marks the state for a reload before the next batch (a commit failed).
    pub fn must_reload(&mut self) {
        self.reload = true;
        self.catching_up.store(true, Ordering::Release);
    }

    /// Whether this replica's presence was withdrawn (or its state
    /// reloaded) since the last call: the streams it holds must be
    /// announced again ([`crate::model::StreamPresence`]), else their nodes
    /// stay offline for every replica while their streams live here.
    pub fn take_withdrawn(&mut self) -> bool {
        std::mem::take(&mut self.withdrawn)
    }

    /// The store failed: not ready until a catch-up succeeds.
    pub fn unavailable(&self) {
        self.catching_up.store(true, Ordering::Release);
    }

    /// Starts the replica (before it serves): catches up from the loaded
    /// state's seq and writes its first heartbeat.
    pub fn start(
        &mut self,
        store: &mut dyn Store,
        w: &mut World,
        out: &Fanout<'_>,
    ) -> Result<(), StoreError> {
        store.begin_exclusive()?;
        let r = self.catch_up(store, w, out);
        let released = store.rollback_exclusive();
        r?;
        released?;
        self.heartbeat(store)?;
        self.catching_up.store(false, Ordering::Release);
        info!(replica = %self.id, version = w.version, seq = w.change_seq, "replica started");
        Ok(())
    }

    fn row(&self, w: &World, now_ms: u64, body: &ChangeBody) -> ChangeRecord {
        ChangeRecord {
            seq: w.change_seq + 1,
            replica: self.id.clone(),
            at_ms: now_ms,
            // Serializing plain data cannot fail; an empty body would make
            // the replicas reload, which is safe.
            body: serde_json::to_string(body).unwrap_or_default(),
        }
    }

    /// The change row of a local batch that made `writes` writes (before
    /// its change row), or `None` when it wrote nothing. `ops` are the
    /// batch's successful operations as recorded (`None`: one cannot be).
    pub fn change_row(
        &self,
        w: &World,
        now_ms: u64,
        ops: Vec<Option<RecordedOp>>,
        writes: usize,
    ) -> Option<ChangeRecord> {
        if writes == 0 {
            return None;
        }
        let opaque = ops.iter().any(Option::is_none);
        let body = ChangeBody {
            now_ms,
            ops: if opaque {
                Vec::new()
            } else {
                ops.into_iter().flatten().collect()
            },
            opaque,
            bump: false,
            version: w.version,
            writes,
        };
        Some(self.row(w, now_ms, &body))
    }

    /// Holding the write lock: replays and publishes every change after
    /// `w.change_seq`; reloads the state instead when it must, when the log
    /// has a gap or a replay diverges.
    pub fn catch_up(
        &mut self,
        store: &mut dyn Store,
        w: &mut World,
        out: &Fanout<'_>,
    ) -> Result<(), StoreError> {
        if self.reload {
            return self.reload(store, w, out);
        }
        loop {
            let changes = store.changes_since(w.change_seq, CATCH_UP_CHUNK)?;
            let Some(first) = changes.first() else {
                return Ok(());
            };
            if first.seq != w.change_seq + 1 {
                warn!(
                    have = w.change_seq,
                    next = first.seq,
                    "the changes log no longer holds the changes after this replica's state; reloading"
                );
                return self.reload(store, w, out);
            }
            for c in changes {
                let mut me_gone = false;
                let replayed = serde_json::from_str::<ChangeBody>(&c.body)
                    .map_err(|e| format!("change {} does not parse: {e}", c.seq))
                    .and_then(|body| {
                        // Another replica found this one dead: it stalled
                        // past STALE_AFTER, and is back.
                        me_gone = body.ops.iter().any(
                            |r| matches!(&r.op, AnyOp::ReplicaGone(g) if g.replica == self.id),
                        );
                        w.replay(c.seq, body).map_err(|d| d.to_string())
                    });
                if me_gone {
                    warn!(replica = %self.id, by = %c.replica, "another replica withdrew this replica's presence (it stalled); announcing its streams again");
                    self.withdrawn = true;
                }
                match replayed {
                    Ok(replayed) => {
                        w.change_seq = c.seq;
                        if let Some(o) = &replayed.outcome {
                            out.publish(w, o);
                        }
                        // A node streaming from here hears of a task another
                        // replica created (or offered again) at once.
                        for (node, task) in &replayed.tasks {
                            out.hub.notify_task(*node, task);
                        }
                    }
                    Err(why) => {
                        warn!(%why, replica = %c.replica, "reloading the state from the store");
                        return self.reload(store, w, out);
                    }
                }
            }
        }
    }

    /// Holding the write lock: reloads the state and ends every stream.
    fn reload(
        &mut self,
        store: &mut dyn Store,
        w: &mut World,
        out: &Fanout<'_>,
    ) -> Result<(), StoreError> {
        let (snap, presence, seq) = read_all(store)?;
        let relays = std::mem::take(&mut w.relays);
        let online = w.online_nodes();
        *w = World::from_snapshot(snap, relays);
        if presence.is_empty() {
            // A store without presence rows: this replica's own view.
            w.restore_online(&online);
        } else {
            w.load_presence(&presence);
        }
        w.change_seq = seq;
        self.reload = false;
        // The rows loaded may lack this replica's (withdrawn meanwhile).
        self.withdrawn = true;
        out.reset(w);
        info!(seq, version = w.version, "state reloaded from the store");
        Ok(())
    }

    /// Catches up if other replicas committed changes (or a reload is
    /// due), without a batch of its own: takes the lock only then.
    pub fn sync(
        &mut self,
        store: &mut dyn Store,
        world: &tokio::sync::RwLock<World>,
        out: &Fanout<'_>,
    ) -> Result<(), StoreError> {
        let have = world.blocking_read().change_seq;
        if !self.reload && store.last_change_seq()? <= have {
            self.catching_up.store(false, Ordering::Release);
            return Ok(());
        }
        self.catching_up.store(true, Ordering::Release);
        store.begin_exclusive()?;
        let mut w = world.blocking_write();
        let r = self.catch_up(store, &mut w, out);
        drop(w);
        let released = store.rollback_exclusive();
        r?;
        released?;
        self.catching_up.store(false, Ordering::Release);
        Ok(())
    }

    /// The periodic work: catch up when idle, heartbeat, prune the log.
    /// Returns the dead replicas whose presence to withdraw.
    pub fn tick(
        &mut self,
        store: &mut dyn Store,
        world: &tokio::sync::RwLock<World>,
        out: &Fanout<'_>,
    ) -> Vec<String> {
        if let Err(e) = self.sync(store, world, out) {
            self.unavailable();
            warn!(error = %e, "catching up with the other replicas failed");
            return Vec::new();
        }
        let now = clock::now();
        if self
            .last_heartbeat
            .is_some_and(|t| now.saturating_duration_since(t) < HEARTBEAT_EVERY)
        {
            return Vec::new();
        }
        let rows = match self.heartbeat(store) {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "writing this replica's heartbeat failed");
                return Vec::new();
            }
        };
        if self
            .last_prune
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60))
        {
            self.last_prune = Some(now);
            let seq = world.blocking_read().change_seq;
            if seq > CHANGES_KEPT
                && let Err(e) = store.prune_changes(seq - CHANGES_KEPT)
            {
                warn!(error = %e, "pruning the changes log failed");
            }
        }
        let now_ms = clock::now_unix_ms();
        let stale = u64::try_from(STALE_AFTER.as_millis()).unwrap_or(u64::MAX);
        let alive: BTreeSet<&str> = rows
            .iter()
            .filter(|r| r.heartbeat_ms.saturating_add(stale) >= now_ms)
            .map(|r| r.id.as_str())
            .collect();
        self.seen_alive
            .extend(alive.iter().map(|id| (*id).to_owned()));
        // A replica that died before this one started (a restart): its
        // nodes get RESTART_GRACE to come back here before they go offline.
        let settled = now.saturating_duration_since(self.started) >= RESTART_GRACE;
        let w = world.blocking_read();
        let mut dead: BTreeSet<String> = w.holders().replicas();
        dead.extend(rows.iter().map(|r| r.id.clone()));
        dead.retain(|id| {
            *id != self.id
                && !alive.contains(id.as_str())
                && (settled || self.seen_alive.contains(id))
        });
        dead.into_iter().collect()
    }

    fn heartbeat(&mut self, store: &mut dyn Store) -> Result<Vec<ReplicaRecord>, StoreError> {
        let rows = store.heartbeat(&ReplicaRecord {
            id: self.id.clone(),
            started_ms: self.started_ms,
            heartbeat_ms: clock::now_unix_ms(),
        })?;
        self.last_heartbeat = Some(clock::now());
        Ok(rows)
    }
}

impl Default for Replica {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
