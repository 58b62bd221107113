//! The single writer: batches operations, commits them durably, then publishes.
//!
//! One dedicated thread owns the store. It takes every queued operation (up to
//! [`MAX_BATCH`]), applies them one by one to the in-memory state under the write
//! lock, commits all their writes in **one** transaction (group commit: one fsync
//! for the whole batch), then publishes the resulting deltas under the same lock,
//! and only then answers the callers. So:
//! - an answered request is durable (it survived the commit's fsync);
//! - readers never see state that is not committed;
//! - concurrent registrations are serialized, so addresses never collide;
//! - every batch that changes a map gets the next version, persisted with it.
//!
//! Several replicas may share the database ([`crate::replica`]): the writer
//! holds the database-wide write lock from before it catches up with the
//! other replicas' changes (replayed and published like its own batches)
//! until its batch and the batch's change row are committed. A `Tick` every
//! [`replica::POLL`] catches up when idle, writes the heartbeat and withdraws
//! dead replicas' presence.
//!
//! If a commit fails, the state is reloaded from the store (undoing the batch in
//! memory), every caller in the batch gets `503 storage_unavailable`, and all
//! streams are closed so agents resynchronise.
//!
//! Map streams opening and closing go to a second thread, `weft-presence`,
//! which debounces them ([`Presence`]) and queues an operation only when a
//! node really goes online or offline for this replica ([`StreamPresence`]);
//! a flapping stream costs nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use tokio::sync::{RwLock, mpsc, oneshot};
use tracing::{error, info};

use crate::clock;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::model::{
    Actor, AnyOp, Batch, NodeId, Operation, Presence, PresenceConfig, RecordedOp, ReplicaGone,
    StreamPresence, World,
};
use crate::relay_feed::RelayFeed;
use crate::replica::{self, Fanout, Replica};
use crate::store::tasks::TaskResultRecord;
use crate::store::usage::UsageSum;
use crate::store::{AuditQuery, AuditRecord, EventQuery, EventRecord, Store, StoreError, Write};
use weft_proto::usage::UsageUpload;

/// Most operations committed in one transaction.
pub const MAX_BATCH: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

enum Cmd {
    Op(Box<dyn Queued>),
    Presence(NodeId, bool),
    Audit(AuditQuery, Reply<Vec<AuditRecord>>),
    Usage(NodeId, Box<UsageUpload>, Reply<()>),
    UsageSums(u64, Reply<Vec<UsageSum>>),
    Events(EventQuery, Reply<Vec<(u64, EventRecord)>>),
    TaskResults(String, Reply<Vec<TaskResultRecord>>),
    /// Time for the replica's periodic work ([`Replica::tick`]).
    Tick,
    /// Catch up with the other replicas now; answered when done.
    Sync(oneshot::Sender<()>),
    /// A read of the store on the writer's thread, after the batch.
    Read(StoreRead),
    Shutdown,
}

/// A read [`Engine::read_store`] queues: it answers its caller itself.
type StoreRead = Box<dyn FnOnce(&mut dyn Store) + Send>;

/// An operation waiting for the writer, its type erased: the writer applies
/// it in a batch, then answers its caller once the batch's commit is known.
trait Queued: Send {
    /// Applies it to the state and keeps its result. Returns it as the
    /// changes log records it if it succeeded (`Some(None)`: it succeeded
    /// but its type cannot be recorded); `None` if it failed.
    fn apply(
        &mut self,
        world: &mut World,
        batch: &mut Batch,
        now_ms: u64,
    ) -> Option<Option<RecordedOp>>;
    /// Answers the caller: its result if the batch committed, else its own
    /// error or `storage_unavailable`.
    fn answer(self: Box<Self>, committed: bool);
}

/// One operation, its caller (none for presence changes) and, once applied,
/// its result.
struct Pending<O: Operation> {
    actor: Actor,
    op: Option<O>,
    result: Option<Result<O::Output, ApiError>>,
    reply: Option<Reply<O::Output>>,
}

impl<O: Operation> Queued for Pending<O> {
    fn apply(
        &mut self,
        world: &mut World,
        batch: &mut Batch,
        now_ms: u64,
    ) -> Option<Option<RecordedOp>> {
        let op = self.op.take()?;
        let recorded = AnyOp::record(&op).map(|op| RecordedOp {
            actor: self.actor.clone(),
            op,
        });
        let result = world.apply(batch, &self.actor, op, now_ms);
        let ok = result.is_ok();
        self.result = Some(result);
        ok.then_some(recorded)
    }

    fn answer(self: Box<Self>, committed: bool) {
        if let (Some(reply), Some(r)) = (self.reply, self.result) {
            let _ = reply.send(if committed {
                r
            } else {
                r.and(Err(unavailable()))
            });
        }
    }
}

/// What the presence thread hears.
enum StreamEvent {
    Opened(NodeId),
    Closed(NodeId),
    /// This replica's presence was withdrawn: announce every node online
    /// here again.
    Reannounce,
    Stop,
}

/// A handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Cmd>,
    presence: std_mpsc::Sender<StreamEvent>,
    world: Arc<RwLock<World>>,
    hub: Arc<Hub>,
    relay_feed: Arc<RelayFeed>,
    metrics: Arc<Metrics>,
    catching_up: Arc<AtomicBool>,
}

/// The writer and presence threads; join them after [`Engine::shutdown`].
pub struct EngineThread(JoinHandle<()>, JoinHandle<()>);

impl EngineThread {
    /// Waits for the writer to finish its queue and stop.
    pub fn join(self) {
        if self.0.join().is_err() {
            error!("the store writer thread panicked");
        }
        if self.1.join().is_err() {
            error!("the presence thread panicked");
        }
    }
}

fn unavailable() -> ApiError {
    ApiError::Unavailable {
        code: "storage_unavailable",
        message: "the controller's store is not available; retry later".into(),
    }
}

impl Engine {
    /// Starts the writer thread over `store`, with `world` loaded from it;
    /// it times every commit and fan-out into `metrics`.
    pub fn start<S: Store>(
        mut store: S,
        mut world: World,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Engine, EngineThread)> {
        // Presence held by replicas is stored (model::remote) and survives a
        // restart. A database without presence rows (the first start after
        // the upgrade): nodes seen lately stay online while their streams
        // come back (model::presence), so a restart is no presence storm.
        let assumed = if world.holders().replicas().is_empty() {
            crate::model::assumed_online(&world, clock::now_unix_ms() / 1000)
        } else {
            Vec::new()
        };
        world.restore_online(&assumed);
        let relay_feed = Arc::new(RelayFeed::new(&world));
        let mut replica = Replica::new();
        replica
            .start(
                &mut store,
                &mut world,
                &Fanout {
                    hub: &hub,
                    feed: &relay_feed,
                    metrics: &metrics,
                },
            )
            .map_err(|e| std::io::Error::other(format!("starting the replica: {e}")))?;
        let catching_up = replica.catching_up();
        let listener = match store.change_listener() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other replicas' changes; polling only");
                None
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (presence, events) = std_mpsc::channel();
        let world = Arc::new(RwLock::new(world));
        let presence_thread = {
            let cfg = hub.config().presence;
            let tx = tx.clone();
            std::thread::Builder::new()
                .name("weft-presence".into())
                .spawn(move || presence_loop(cfg, &assumed, &events, &tx))?
        };
        let thread = {
            let world = world.clone();
            let hub = hub.clone();
            let feed = relay_feed.clone();
            let metrics = metrics.clone();
            let presence = presence.clone();
            std::thread::Builder::new()
                .name("weft-store".into())
                .spawn(move || {
                    let out = Fanout {
                        hub: &hub,
                        feed: &feed,
                        metrics: &metrics,
                    };
                    writer(store, replica, &world, &out, &presence, rx);
                })?
        };
        if let Some(mut listener) = listener {
            // Wakes the writer as soon as another replica commits (the poll
            // below catches up anyway, later, when a notification is lost).
            let tx = tx.clone();
            std::thread::Builder::new()
                .name("weft-replica-listen".into())
                .spawn(move || {
                    loop {
                        match listener.wait(std::time::Duration::from_secs(1)) {
                            Ok(true) => {
                                if tx.send(Cmd::Tick).is_err() {
                                    return;
                                }
                            }
                            Ok(false) if tx.is_closed() => return,
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "listening for other replicas' changes failed; polling only");
                                return;
                            }
                        }
                    }
                })?;
        }
        {
            // Wakes the writer for its periodic work; ends with the writer.
            let tx = tx.clone();
            std::thread::Builder::new()
                .name("weft-replica-tick".into())
                .spawn(move || {
                    while tx.send(Cmd::Tick).is_ok() {
                        std::thread::sleep(replica::POLL);
                    }
                })?;
        }
        Ok((
            Engine {
                tx,
                presence,
                world,
                hub,
                relay_feed,
                metrics,
                catching_up,
            },
            EngineThread(thread, presence_thread),
        ))
    }

    /// Queues an operation and waits until it is committed (or refused);
    /// returns the operation's own result.
    pub async fn execute<O: Operation>(&self, actor: Actor, op: O) -> Result<O::Output, ApiError> {
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            actor,
            op: Some(op),
            result: None,
            reply: Some(reply),
        };
        self.tx
            .send(Cmd::Op(Box::new(pending)))
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Records that a map stream of `node` opened or closed (fire and forget;
    /// debounced before it changes anything).
    pub fn presence(&self, node: NodeId, up: bool) {
        let _ = self.presence.send(if up {
            StreamEvent::Opened(node)
        } else {
            StreamEvent::Closed(node)
        });
    }

    /// Reads the audit log.
    pub async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Audit(query, reply))
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Reads the anomaly event log.
    pub async fn events(&self, query: EventQuery) -> Result<Vec<(u64, EventRecord)>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Events(query, reply))
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Reads the results of a task's runs.
    pub async fn task_results(&self, task_id: String) -> Result<Vec<TaskResultRecord>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::TaskResults(task_id, reply))
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Runs `read` on the store, on the writer's thread after the batch in
    /// progress (readiness probes, the audit retention sweep). A store
    /// error is logged and answered as `storage_unavailable`.
    pub async fn read_store<T, F>(&self, read: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: StoreRead = Box::new(move |store: &mut dyn Store| {
            let r = read(store).map_err(|e| {
                error!(error = %e, "reading the store failed");
                unavailable()
            });
            let _ = reply.send(r);
        });
        self.tx.send(Cmd::Read(job)).map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Rolls a node's usage upload into the usage buckets (its own
    /// transaction, after the batch of operations it arrived with).
    pub async fn usage_upload(&self, node: NodeId, upload: UsageUpload) -> Result<(), ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Usage(node, Box::new(upload), reply))
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Each usage series' growth since `since_ms` (bucket starts).
    pub async fn usage_sums(&self, since_ms: u64) -> Result<Vec<UsageSum>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::UsageSums(since_ms, reply))
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }

    /// The state (read it; only the writer writes).
    pub fn world(&self) -> &Arc<RwLock<World>> {
        &self.world
    }

    /// The fan-out hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The relay member feed.
    pub fn relay_feed(&self) -> &Arc<RelayFeed> {
        &self.relay_feed
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether this replica is behind the other replicas' changes or cannot
    /// reach the store (`/readyz` is false then).
    pub fn catching_up(&self) -> bool {
        self.catching_up.load(Ordering::Acquire)
    }

    /// Catches up with the other replicas' changes now (a credential one of
    /// them just created is known here when this returns).
    pub async fn catch_up(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Sync(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits (at most `limit`) until this replica's state reaches map
    /// version `version`, catching up meanwhile: a stream resuming from a
    /// version another replica published just now gets its deltas here, not
    /// a snapshot. Returns whether it did.
    pub async fn reach_version(&self, version: u64, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.world.read().await.version >= version {
                return true;
            }
            if tokio::time::Instant::now() >= deadline || self.tx.send(Cmd::Tick).is_err() {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Asks the writer to stop after the operations already queued.
    pub fn shutdown(&self) {
        let _ = self.presence.send(StreamEvent::Stop);
        let _ = self.tx.send(Cmd::Shutdown);
    }
}

/// The presence thread: feeds stream events into the tracker with the time
/// they arrived and queues each debounced transition for the writer.
fn presence_loop(
    cfg: PresenceConfig,
    assumed: &[NodeId],
    events: &std_mpsc::Receiver<StreamEvent>,
    tx: &mpsc::UnboundedSender<Cmd>,
) {
    let mut tracker = Presence::new(cfg);
    tracker.assume_online(assumed, clock::now(), crate::model::RESTART_GRACE);
    loop {
        let event = match tracker.next_deadline() {
            None => events.recv().ok(),
            Some(at) => match events.recv_timeout(at.saturating_duration_since(clock::now())) {
                Ok(e) => Some(e),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => Some(StreamEvent::Stop),
            },
        };
        match event {
            Some(StreamEvent::Opened(node)) => tracker.opened(node, clock::now()),
            Some(StreamEvent::Closed(node)) => tracker.closed(node, clock::now()),
            Some(StreamEvent::Reannounce) => {
                for node in tracker.online_nodes() {
                    if tx.send(Cmd::Presence(node, true)).is_err() {
                        return;
                    }
                }
            }
            Some(StreamEvent::Stop) => return,
            None if tracker.next_deadline().is_none() => return, // every sender gone
            None => {}
        }
        for (node, online) in tracker.poll(clock::now()) {
            if tx.send(Cmd::Presence(node, online)).is_err() {
                return;
            }
        }
    }
}

fn writer<S: Store>(
    mut store: S,
    mut replica: Replica,
    world: &RwLock<World>,
    out: &Fanout<'_>,
    presence: &std_mpsc::Sender<StreamEvent>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut ops = Vec::new();
        let mut audits = Vec::new();
        let mut usages = Vec::new();
        let mut usage_reads = Vec::new();
        let mut event_reads = Vec::new();
        let mut result_reads = Vec::new();
        let mut store_reads: Vec<StoreRead> = Vec::new();
        let mut stop = false;
        let mut tick = false;
        let mut synced = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Op(op) => ops.push(op),
                Cmd::Presence(node, online) => ops.push(Box::new(Pending {
                    actor: Actor::Admin,
                    op: Some(StreamPresence {
                        replica: replica.id.clone(),
                        node,
                        online,
                    }),
                    result: None,
                    reply: None,
                })),
                Cmd::Tick => tick = true,
                Cmd::Sync(reply) => {
                    tick = true;
                    synced.push(reply);
                }
                Cmd::Audit(q, reply) => audits.push((q, reply)),
                Cmd::Usage(node, upload, reply) => usages.push((node, upload, reply)),
                Cmd::UsageSums(since, reply) => usage_reads.push((since, reply)),
                Cmd::Events(q, reply) => event_reads.push((q, reply)),
                Cmd::TaskResults(id, reply) => result_reads.push((id, reply)),
                Cmd::Read(read) => store_reads.push(read),
                Cmd::Shutdown => stop = true,
            }
            if ops.len() < MAX_BATCH && !stop {
                next = rx.try_recv().ok();
            }
        }
        if !ops.is_empty() {
            commit_batch(&mut store, &mut replica, world, out, ops);
        }
        if tick {
            let dead = replica.tick(&mut store, world, out);
            if !dead.is_empty() {
                info!(replicas = ?dead, "withdrawing the presence of replicas that stopped");
                let ops = dead
                    .into_iter()
                    .map(|replica| -> Box<dyn Queued> {
                        Box::new(Pending {
                            actor: Actor::System,
                            op: Some(ReplicaGone { replica }),
                            result: None,
                            reply: None,
                        })
                    })
                    .collect();
                commit_batch(&mut store, &mut replica, world, out, ops);
            }
        }
        if replica.take_withdrawn() {
            // The presence thread knows which nodes are online here.
            let _ = presence.send(StreamEvent::Reannounce);
        }
        for reply in synced {
            let _ = reply.send(());
        }
        for (q, reply) in audits {
            let r = store.audit(&q).map_err(|e| {
                error!(error = %e, "reading the audit log failed");
                unavailable()
            });
            let _ = reply.send(r);
        }
        for (q, reply) in event_reads {
            let r = store.events(&q).map_err(|e| {
                error!(error = %e, "reading the event log failed");
                unavailable()
            });
            let _ = reply.send(r);
        }
        for (id, reply) in result_reads {
            let r = store.task_results(&id).map_err(|e| {
                error!(error = %e, "reading task results failed");
                unavailable()
            });
            let _ = reply.send(r);
        }
        serve_usage(&mut store, usages, usage_reads);
        for read in store_reads {
            read(&mut store);
        }
        if stop {
            break;
        }
    }
}

fn commit_batch<S: Store>(
    store: &mut S,
    replica: &mut Replica,
    world: &RwLock<World>,
    out: &Fanout<'_>,
    mut ops: Vec<Box<dyn Queued>>,
) {
    // The database-wide write lock, then the other replicas' changes: this
    // batch applies to the state every earlier change made.
    if let Err(e) = store.begin_exclusive() {
        error!(error = %e, ops = ops.len(), "the store is not available; refusing the batch");
        replica.unavailable();
        for op in ops {
            op.answer(false);
        }
        return;
    }
    let mut w = world.blocking_write();
    if let Err(e) = replica.catch_up(store, &mut w, out) {
        error!(error = %e, ops = ops.len(), "catching up with the other replicas failed; refusing the batch");
        let _ = store.rollback_exclusive();
        replica.must_reload();
        drop(w);
        for op in ops {
            op.answer(false);
        }
        return;
    }
    let now = clock::now_unix_ms();
    let mut batch = Batch::default();
    let mut recorded = Vec::new();
    for op in &mut ops {
        if let Some(r) = op.apply(&mut w, &mut batch, now) {
            recorded.push(r);
        }
    }
    let outcome = w.finish_batch(&mut batch);
    let change = replica.change_row(&w, now, recorded, batch.writes.len());
    let changed = change.is_some();
    if let Some(c) = change {
        batch.writes.push(Write::Change(c));
    }
    let started = clock::now();
    let applied = store.commit_exclusive(&batch.writes);
    let committed = clock::now();
    out.metrics.commit(
        committed.saturating_duration_since(started),
        applied.is_ok(),
    );
    match applied {
        Ok(()) => {
            if changed {
                w.change_seq += 1;
            }
            if let Some(o) = &outcome {
                out.publish(&w, o);
            }
            drop(w);
            for write in &batch.writes {
                if let Write::Audit(a) = write {
                    info!(actor = %a.actor, action = %a.action, target = %a.target, "state changed");
                }
            }
            for op in ops {
                op.answer(true);
            }
        }
        Err(e) => {
            error!(error = %e, ops = ops.len(), "commit failed; reloading state from the store");
            // Undo the batch in memory: reload under the lock, now if the
            // store answers, else before the next batch.
            replica.must_reload();
            let reloaded = store.begin_exclusive().and_then(|()| {
                let r = replica.catch_up(store, &mut w, out);
                let released = store.rollback_exclusive();
                r.and(released)
            });
            if let Err(e) = reloaded {
                error!(error = %e, "reloading state failed; the controller keeps serving reads of possibly uncommitted state until the store is back");
                out.hub.evict_all();
            }
            drop(w);
            for op in ops {
                op.answer(false);
            }
        }
    }
}

type UsageIngest = (NodeId, Box<UsageUpload>, Reply<()>);

/// Rolls the usage uploads of one pass into the buckets in one transaction
/// ([`crate::model::usage::Rollup`]), then answers the usage reads.
fn serve_usage<S: Store>(
    store: &mut S,
    uploads: Vec<UsageIngest>,
    reads: Vec<(u64, Reply<Vec<UsageSum>>)>,
) {
    if !uploads.is_empty() {
        let now = clock::now_unix_ms();
        let mut rollup = crate::model::usage::Rollup::default();
        let mut result = Ok(());
        for (node, upload, _) in &uploads {
            if !rollup.loaded(*node) {
                match store.usage_counters(*node) {
                    Ok(last) => rollup.load(*node, last),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            rollup.add(*node, upload, now);
        }
        if rollup.refused() > 0 {
            tracing::warn!(
                series = rollup.refused(),
                "usage series not stored: their node has the most series it may have"
            );
        }
        let result = result.and_then(|()| store.apply(&rollup.into_writes()));
        if let Err(e) = &result {
            error!(error = %e, uploads = uploads.len(), "storing usage failed");
        }
        for (_, _, reply) in uploads {
            let _ = reply.send(result.as_ref().map(|_| ()).map_err(|_| unavailable()));
        }
    }
    for (since, reply) in reads {
        let _ = reply.send(store.usage_sums(since).map_err(|e| {
            error!(error = %e, "reading usage failed");
            unavailable()
        }));
    }
}
