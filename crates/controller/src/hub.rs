//! Map stream fan-out: per-node subscriptions and the replay ring.
//!
//! The engine calls [`Hub::publish`] while it holds the state write lock, right
//! after a batch committed; stream handlers call [`Hub::subscribe`] while holding
//! the read lock. So a new subscriber's snapshot (or replay) and the frames later
//! pushed to it never overlap or leave a gap.
//!
//! A delta shared by many nodes is serialized once; each subscriber gets a cheap
//! reference-counted copy of the bytes through a bounded queue. A subscriber that
//! falls behind (queue full) is not disconnected: it is flagged as lagged and its
//! stream replaces the backlog with a fresh snapshot. Snapshots share each
//! network's peer entries, encoded once per version
//! ([`crate::netmap::shared`]).
//!
//! Stream opens are admitted ([`Hub::admit`]) a few at a time, in arrival
//! order: after a controller restart every agent reconnects at once, and each
//! waits its turn for its snapshot (its stream already open and kept alive)
//! instead of all of them competing for the state lock until they time out.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use weft_proto::netmap::{EVENT_DELTA, EVENT_SNAPSHOT, MapChange, MapEvent};
use weft_proto::sse;
use weft_proto::task::{EVENT_TASK, TaskNotice};

use crate::error::ApiError;
use crate::metrics::Pushed;
use crate::model::{NodeId, PresenceConfig, World};
use crate::netmap::delta::{Delta, SharedEncoding};
use crate::netmap::shared::{SnapshotCache, snapshot_chunks};
use crate::netmap::{self, Outgoing, Payload};

/// One encoded SSE event.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The map version it brings the receiver to (0 for a task event).
    pub version: u64,
    /// A `task` event: not a map version, never skipped as stale.
    pub task: bool,
    /// The encoded event (its first part when `more` is not empty).
    pub bytes: Bytes,
    /// The rest of the event: a snapshot assembled from shared parts.
    pub more: Vec<Bytes>,
}

impl Frame {
    /// A map event from its chunks.
    fn from_chunks(version: u64, chunks: &[Bytes]) -> Frame {
        Frame {
            version,
            task: false,
            bytes: chunks.first().cloned().unwrap_or_default(),
            more: chunks.get(1..).unwrap_or_default().to_vec(),
        }
    }

    /// The event's bytes, in order.
    pub fn into_chunks(self) -> impl Iterator<Item = Bytes> {
        std::iter::once(self.bytes).chain(self.more)
    }
}

/// Hub limits.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Frames queued per subscriber before it is flagged as lagged.
    pub queue: usize,
    /// Versions kept for `Last-Event-ID` replay.
    pub ring_versions: usize,
    /// Recipient ids kept in the ring at most (bounds its memory: 8 bytes each).
    pub ring_recipients: usize,
    /// Encoded delta bytes kept in the ring at most.
    pub ring_bytes: usize,
    /// Open streams allowed per node.
    pub streams_per_node: usize,
    /// When a node's streams make it online or offline for its peers.
    pub presence: PresenceConfig,
    /// Stream opens served (snapshot or replay computed) at once; the others
    /// wait their turn, in order, with their streams kept alive.
    pub open_concurrency: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue: 64,
            ring_versions: 1024,
            ring_recipients: 2_000_000,
            ring_bytes: 16 << 20,
            streams_per_node: 4,
            presence: PresenceConfig::default(),
            open_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
        }
    }
}

struct SubHandle {
    id: u64,
    tx: mpsc::Sender<Frame>,
    lagged: Arc<AtomicBool>,
}

enum RingPayload {
    /// The frame's chunks (slices of the batch's shared encoding among them).
    Delta(Arc<[Bytes]>),
    /// A delta none of whose recipients had a stream here when it was
    /// published: encoded only if one of them resumes from before it. After a
    /// join every node's compiled policy changes, and a replica holds only
    /// its share of the streams (none while a fleet registers), so most such
    /// deltas are never read.
    Pending(Arc<Delta>, Arc<SharedEncoding>),
    Resync,
}

struct RingEntry {
    version: u64,
    groups: Vec<(Arc<[NodeId]>, RingPayload)>,
    /// Encoded bytes it holds: each delta's own, and the shared ones once.
    bytes: usize,
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<RingEntry>,
    recipients: usize,
    bytes: usize,
}

impl RingEntry {
    fn recipients(&self) -> usize {
        self.groups.iter().map(|g| g.0.len()).sum()
    }

    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A stream's end of a subscription.
pub struct Subscription {
    /// Subscription id.
    pub id: u64,
    /// The node.
    pub node: NodeId,
    /// Frames pushed by the engine.
    pub rx: mpsc::Receiver<Frame>,
    /// Set when frames were dropped because the queue was full.
    pub lagged: Arc<AtomicBool>,
}

/// The fan-out hub.
pub struct Hub {
    cfg: HubConfig,
    // Lookup by node only; never iterated.
    subs: Mutex<HashMap<NodeId, Vec<SubHandle>>>,
    ring: Mutex<Ring>,
    next_id: AtomicU64,
    /// Each network's peer list at the current version, for snapshots.
    snapshots: SnapshotCache,
    /// Stream opens being served.
    admission: Arc<Semaphore>,
    /// Bytes encoded for streams (for [`crate::memory::sweep`]).
    encoded: Arc<crate::memory::Encoded>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (every
    // critical section is a single insert/remove), so a poisoned lock is usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Encodes a map event as an SSE frame.
pub fn encode(event: &MapEvent) -> Frame {
    let mut buf = Vec::with_capacity(256);
    let name = match event {
        MapEvent::Snapshot(_) => EVENT_SNAPSHOT,
        MapEvent::Delta(_) => EVENT_DELTA,
    };
    sse::encode_event(
        &mut buf,
        Some(&event.version().to_string()),
        Some(name),
        &event.to_json(),
    );
    Frame {
        version: event.version(),
        task: false,
        bytes: Bytes::from(buf),
        more: Vec::new(),
    }
}

/// A `task` event: no `id:` line (map resume ids stay map versions), and
/// flagged so streams send it whatever the map version.
pub fn task_frame(task_id: &str) -> Frame {
    let mut buf = Vec::with_capacity(64);
    let notice = TaskNotice {
        task_id: task_id.to_owned(),
    };
    sse::encode_event(&mut buf, None, Some(EVENT_TASK), &notice.to_json());
    Frame {
        version: 0,
        task: true,
        bytes: Bytes::from(buf),
        more: Vec::new(),
    }
}

/// The snapshot frame of `node`, if it exists and is enabled.
pub fn snapshot_frame(world: &World, node: NodeId) -> Option<Frame> {
    netmap::snapshot(world, node).map(|m| encode(&MapEvent::Snapshot(m)))
}

impl Hub {
    /// An empty hub.
    pub fn new(cfg: HubConfig) -> Self {
        let admission = Arc::new(Semaphore::new(cfg.open_concurrency.max(1)));
        Self {
            cfg,
            subs: Mutex::new(HashMap::new()),
            ring: Mutex::new(Ring::default()),
            next_id: AtomicU64::new(1),
            snapshots: SnapshotCache::default(),
            admission,
            encoded: Arc::default(),
        }
    }

    /// Bytes encoded for streams so far (deltas and snapshots).
    pub fn encoded(&self) -> Arc<crate::memory::Encoded> {
        Arc::clone(&self.encoded)
    }

    /// The snapshot frame of `node` at the world's version, its peer entries
    /// shared with every other snapshot of this version; `None` if the node
    /// does not exist or is disabled.
    pub fn snapshot(&self, world: &World, node: NodeId) -> Option<Frame> {
        match snapshot_chunks(&self.snapshots, world, node) {
            Some(mut chunks) if !chunks.is_empty() => {
                // Its own part (the shared peer entries are counted once per
                // version, by the cache).
                self.encoded.add(chunks[0].len());
                let bytes = chunks.remove(0);
                Some(Frame {
                    version: world.version,
                    task: false,
                    bytes,
                    more: chunks,
                })
            }
            _ => snapshot_frame(world, node),
        }
    }

    /// Waits for a turn to serve a stream open (first come, first served);
    /// hold the permit while computing its first frames. (`None` only if the
    /// semaphore were closed, which it never is.)
    pub fn admit(&self) -> impl Future<Output = Option<OwnedSemaphorePermit>> + Send + 'static {
        self.admission.clone().acquire_owned().map(Result::ok)
    }

    /// Registers a stream for `node` and returns the frames it must send first:
    /// the deltas after `last_event_id` if the ring still has them all, else a
    /// snapshot. Call with the state read-locked.
    pub fn subscribe(
        &self,
        world: &World,
        node: NodeId,
        last_event_id: Option<u64>,
    ) -> Result<(Subscription, Vec<Frame>), ApiError> {
        let mut sub = self.open(node)?;
        match self.initial(world, &mut sub, last_event_id) {
            Some(frames) => Ok((sub, frames)),
            None => {
                self.unsubscribe(node, sub.id);
                Err(ApiError::NodeDisabled)
            }
        }
    }

    /// Registers a stream for `node`; its first frames come from
    /// [`Hub::initial`]. Frames published meanwhile are queued (and skipped
    /// by the stream when they are not newer than its first frames).
    pub fn open(&self, node: NodeId) -> Result<Subscription, ApiError> {
        let (tx, rx) = mpsc::channel(self.cfg.queue);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut subs = lock(&self.subs);
        let list = subs.entry(node).or_default();
        if list.len() >= self.cfg.streams_per_node {
            if list.is_empty() {
                subs.remove(&node);
            }
            return Err(ApiError::TooMany {
                code: "too_many_streams",
                message: format!("at most {} map streams per node", self.cfg.streams_per_node),
            });
        }
        list.push(SubHandle {
            id,
            tx,
            lagged: lagged.clone(),
        });
        Ok(Subscription {
            id,
            node,
            rx,
            lagged,
        })
    }

    /// The frames an opened stream sends first: the deltas after
    /// `last_event_id` if the ring still has them all, else a snapshot;
    /// `None` if the node is gone or disabled. Call with the state
    /// read-locked: everything queued so far is older, and is dropped.
    pub fn initial(
        &self,
        world: &World,
        sub: &mut Subscription,
        last_event_id: Option<u64>,
    ) -> Option<Vec<Frame>> {
        while sub.rx.try_recv().is_ok() {}
        sub.lagged.store(false, Ordering::Release);
        world.node(sub.node).filter(|n| !n.rec.disabled)?;
        match last_event_id.and_then(|last| self.replay(world.version, sub.node, last)) {
            Some(frames) => Some(frames),
            None => Some(vec![self.snapshot(world, sub.node)?]),
        }
    }

    /// Removes a stream.
    pub fn unsubscribe(&self, node: NodeId, id: u64) {
        let mut subs = lock(&self.subs);
        if let Some(list) = subs.get_mut(&node) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                subs.remove(&node);
            }
        }
    }

    /// The settings.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// Number of open streams.
    pub fn stream_count(&self) -> usize {
        lock(&self.subs).values().map(Vec::len).sum()
    }

    /// Closes every stream (after the state was reloaded).
    pub fn evict_all(&self) {
        lock(&self.subs).clear();
        *lock(&self.ring) = Ring::default();
        self.snapshots.clear();
    }

    /// Sends a `task` event ([`weft_proto::task::TaskNotice`]) to every open
    /// stream of `node`; a node without one gets it when its stream opens.
    /// Returns how many streams it was queued on.
    pub fn notify_task(&self, node: NodeId, task_id: &str) -> usize {
        let frame = task_frame(task_id);
        let subs = lock(&self.subs);
        let Some(list) = subs.get(&node) else {
            return 0;
        };
        let mut queued = 0;
        for s in list {
            match s.tx.try_send(frame.clone()) {
                Ok(()) => queued += 1,
                // The stream resends every pending task after its snapshot.
                Err(mpsc::error::TrySendError::Full(_)) => s.lagged.store(true, Ordering::Release),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        queued
    }

    /// Tells every open stream to reconnect elsewhere within `within_ms`
    /// (the controller is shutting down): a `reconnect` event
    /// ([`weft_proto::netmap::ReconnectNotice`]), queued as an out-of-band
    /// frame (`task: true`: streams send it whatever the map version).
    /// Returns how many streams it was queued on.
    pub fn drain(&self, within_ms: u64) -> usize {
        let notice = weft_proto::netmap::ReconnectNotice {
            within_ms,
            reason: "controller shutting down".into(),
        };
        let mut buf = Vec::with_capacity(96);
        let name = weft_proto::netmap::EVENT_RECONNECT;
        sse::encode_event(&mut buf, None, Some(name), &notice.to_json());
        // Out of band like a task's frame, with the notice as its bytes.
        let mut frame = task_frame("");
        frame.bytes = Bytes::from(buf);
        let subs = lock(&self.subs);
        // Every stream gets the same frame: the order does not matter.
        let all = subs.values().flatten();
        all.filter(|s| s.tx.try_send(frame.clone()).is_ok()).count()
    }

    /// Pushes one version's outgoing payloads to subscribers and records them for
    /// replay; closes the streams of evicted nodes. Call with the state
    /// write-locked, after the batch committed. Returns what it queued.
    pub fn publish(
        &self,
        world: &World,
        outgoing: &[Outgoing],
        evicted: &BTreeSet<NodeId>,
    ) -> Pushed {
        let version = world.version;
        let mut groups = Vec::with_capacity(outgoing.len());
        let mut pushed = Pushed::default();
        let mut bytes = 0;
        // The batch's shared peer changes, encoded once (by list).
        let mut encodings: Vec<(*const MapChange, Arc<SharedEncoding>)> = Vec::new();
        {
            let mut subs = lock(&self.subs);
            for id in evicted {
                subs.remove(id);
            }
            for o in outgoing {
                match &o.payload {
                    Payload::Delta(delta) => {
                        let key = delta.shared().as_ptr();
                        let i = match encodings.iter().position(|e| e.0 == key) {
                            Some(i) => i,
                            None => {
                                let enc = SharedEncoding::new(delta.shared());
                                bytes += enc.bytes.len();
                                encodings.push((key, Arc::new(enc)));
                                encodings.len() - 1
                            }
                        };
                        let enc = &encodings[i].1;
                        if !o.recipients.iter().any(|r| subs.contains_key(r)) {
                            bytes += delta.own_size_estimate();
                            groups.push((
                                o.recipients.clone(),
                                RingPayload::Pending(Arc::clone(delta), Arc::clone(enc)),
                            ));
                            continue;
                        }
                        let (chunks, own) = delta.frame_chunks(enc);
                        bytes += own;
                        let chunks: Arc<[Bytes]> = chunks.into();
                        let frame = Frame::from_chunks(version, &chunks);
                        for r in o.recipients.iter() {
                            if let Some(list) = subs.get(r) {
                                push(list, &frame, &mut pushed, false);
                            }
                        }
                        groups.push((o.recipients.clone(), RingPayload::Delta(chunks)));
                    }
                    Payload::Resync => {
                        for r in o.recipients.iter() {
                            if let Some(list) = subs.get(r)
                                && let Some(frame) = self.snapshot(world, *r)
                            {
                                push(list, &frame, &mut pushed, true);
                            }
                        }
                        groups.push((o.recipients.clone(), RingPayload::Resync));
                    }
                }
            }
        }
        self.encoded.add(bytes);
        let entry = RingEntry {
            version,
            groups,
            bytes,
        };
        let mut ring = lock(&self.ring);
        ring.recipients += entry.recipients();
        ring.bytes += entry.bytes();
        ring.entries.push_back(entry);
        while ring.entries.len() > self.cfg.ring_versions
            || ring.recipients > self.cfg.ring_recipients
            || ring.bytes > self.cfg.ring_bytes
        {
            let Some(old) = ring.entries.pop_front() else {
                break;
            };
            ring.recipients -= old.recipients();
            ring.bytes -= old.bytes();
        }
        pushed
    }

    /// The frames `node` missed after `last`, or `None` when a snapshot is needed.
    fn replay(&self, current: u64, node: NodeId, last: u64) -> Option<Vec<Frame>> {
        if last > current {
            return None;
        }
        if last == current {
            return Some(Vec::new());
        }
        let mut ring = lock(&self.ring);
        let first = ring.entries.front()?.version;
        if first > last + 1 {
            return None;
        }
        let mut frames = Vec::new();
        let Ring { entries, bytes, .. } = &mut *ring;
        for e in entries.iter_mut().filter(|e| e.version > last) {
            for (recipients, payload) in &mut e.groups {
                if recipients.binary_search(&node).is_ok() {
                    match payload {
                        RingPayload::Delta(chunks) => {
                            frames.push(Frame::from_chunks(e.version, chunks));
                        }
                        RingPayload::Pending(delta, enc) => {
                            // Encoded once, for every recipient that resumes.
                            let (chunks, own) = delta.frame_chunks(enc);
                            let chunks: Arc<[Bytes]> = chunks.into();
                            frames.push(Frame::from_chunks(e.version, &chunks));
                            // Counted by its real size from now on (the
                            // ring is trimmed at the next publish).
                            let estimate = delta.own_size_estimate();
                            e.bytes = (e.bytes + own).saturating_sub(estimate);
                            *bytes = (*bytes + own).saturating_sub(estimate);
                            *payload = RingPayload::Delta(chunks);
                        }
                        RingPayload::Resync => return None,
                    }
                }
            }
        }
        Some(frames)
    }
}

fn push(list: &[SubHandle], frame: &Frame, pushed: &mut Pushed, snapshot: bool) {
    for s in list {
        match s.tx.try_send(frame.clone()) {
            Ok(()) if snapshot => pushed.snapshots += 1,
            Ok(()) => pushed.deltas += 1,
            Err(mpsc::error::TrySendError::Full(_)) => {
                pushed.lagged += 1;
                s.lagged.store(true, Ordering::Release);
            }
            // The stream ended; its guard unsubscribes it.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::NodeKey;

    fn bytes(f: Frame) -> Vec<u8> {
        f.into_chunks().flat_map(|c| c.to_vec()).collect()
    }

    fn remove(i: u8) -> MapChange {
        MapChange::PeerRemove {
            network: "lab".into(),
            node_key: NodeKey::from_bytes([i; 32]),
        }
    }

    #[test]
    fn a_delta_nobody_held_a_stream_for_is_encoded_when_one_resumes() {
        let hub = Hub::new(HubConfig::default());
        let mut world = World::default();
        world.version = 7;
        let shared: Arc<[MapChange]> = vec![remove(1), remove(2), remove(3)].into();
        let own = vec![MapChange::NetworkRemove {
            network: "gone".into(),
        }];
        let held = Arc::new(Delta::picked(7, &shared, &[0, 2], Vec::new()));
        let away = Arc::new(Delta::picked(7, &shared, &[1, 2], own));
        let out = [
            Outgoing {
                recipients: Arc::from(vec![1]),
                payload: Payload::Delta(Arc::clone(&held)),
            },
            Outgoing {
                recipients: Arc::from(vec![2, 3]),
                payload: Payload::Delta(Arc::clone(&away)),
            },
        ];
        let mut sub = hub.open(1).unwrap();
        hub.publish(&world, &out, &BTreeSet::new());

        // The held stream got its frame at once; the other delta waits.
        let want_held = encode(&MapEvent::Delta(held.to_map_delta())).bytes.to_vec();
        assert_eq!(bytes(sub.rx.try_recv().unwrap()), want_held);
        {
            let ring = lock(&hub.ring);
            let kinds: Vec<&str> = ring.entries[0]
                .groups
                .iter()
                .map(|g| match g.1 {
                    RingPayload::Delta(_) => "encoded",
                    RingPayload::Pending(..) => "pending",
                    RingPayload::Resync => "resync",
                })
                .collect();
            assert_eq!(kinds, ["encoded", "pending"]);
        }

        // Node 3 resumes from before it: the same bytes an eager encoding
        // gives, and the ring now keeps them (node 2 gets the same).
        let want_away = encode(&MapEvent::Delta(away.to_map_delta())).bytes.to_vec();
        let before = lock(&hub.ring).bytes;
        let frames = hub.replay(7, 3, 6).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(bytes(frames[0].clone()), want_away);
        assert!(matches!(
            lock(&hub.ring).entries[0].groups[1].1,
            RingPayload::Delta(_)
        ));
        // It counts its real size now, not the estimate.
        let after = lock(&hub.ring).bytes;
        let (_, own) = away.frame_chunks(&SharedEncoding::new(&shared));
        assert_eq!(after + away.own_size_estimate(), before + own);
        let again = hub.replay(7, 2, 6).unwrap();
        assert_eq!(bytes(again[0].clone()), want_away);
        // Node 1 resumes its own delta, and nobody else's.
        let mine = hub.replay(7, 1, 6).unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(bytes(mine[0].clone()), want_held);
    }
}
