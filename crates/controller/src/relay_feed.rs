//! Member fan-out for relays: the set of node keys a relay may serve, and the
//! streams (`GET /v1/relay/members/stream`) that follow it.
//!
//! The feed keeps a mirror of the member set (every registered, enabled node).
//! The engine calls [`RelayFeed::publish`] under the state write lock right after
//! a batch committed; it re-checks only the keys the batch touched, so its cost
//! is proportional to the change, and pushes one delta to every relay stream.
//! Streams subscribe under the read lock, so a snapshot and the deltas after it
//! never overlap or leave a gap. A stream whose bounded queue overflows is
//! flagged and replaces its backlog with a fresh snapshot, like map streams.
//!
//! Relay streams resume: each event's id is the map version it brings the
//! set to, and the feed keeps the last [`RELAY_RING`] deltas. A relay that
//! reconnects with `Last-Event-ID` gets the deltas after it, if the feed
//! still has every one, else a snapshot (32 bytes of key per member). Every
//! replica publishes the same deltas at the same versions (it replays the
//! same changes), so a relay that moves to another replica resumes there.
//! On drain ([`RelayFeed::drain`]) every stream gets the `reconnect` event
//! map streams get.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;
use weft_proto::NodeKey;
use weft_proto::api::API_VERSION;
use weft_proto::relay_api::{MemberDelta, MemberSnapshot, MembersEvent};
use weft_proto::sse;

use crate::model::{RelayId, Touched, World};

/// Events queued per relay stream before it is flagged as lagged.
pub const RELAY_QUEUE: usize = 256;
/// Member deltas kept for streams that resume.
pub const RELAY_RING: usize = 1024;

struct Sub {
    id: u64,
    relay: RelayId,
    tx: mpsc::Sender<Bytes>,
    lagged: Arc<AtomicBool>,
}

struct Inner {
    members: BTreeSet<NodeKey>,
    subs: Vec<Sub>,
    next_id: u64,
    /// The last deltas, oldest first, by the version each brings the set to.
    ring: VecDeque<(u64, Bytes)>,
    /// Every delta after this version is in `ring`.
    ring_from: u64,
}

/// A relay stream's end of a subscription.
pub struct RelaySubscription {
    /// Subscription id.
    pub id: u64,
    /// The relay.
    pub relay: RelayId,
    /// Encoded SSE events pushed by the engine.
    pub rx: mpsc::Receiver<Bytes>,
    /// Set when events were dropped because the queue was full.
    pub lagged: Arc<AtomicBool>,
}

/// The member mirror and the relay streams.
pub struct RelayFeed {
    inner: Mutex<Inner>,
}

fn encode(ev: &MembersEvent) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    sse::encode_event(
        &mut buf,
        Some(&ev.version().to_string()),
        Some(ev.event_name()),
        &ev.to_json(),
    );
    Bytes::from(buf)
}

impl RelayFeed {
    /// A feed mirroring `world`'s members.
    pub fn new(world: &World) -> Self {
        Self {
            inner: Mutex::new(Inner {
                members: world.relay_members().collect(),
                subs: Vec::new(),
                next_id: 1,
                ring: VecDeque::new(),
                ring_from: world.version,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section is a handful of inserts/removes: a panic cannot
        // leave the mirror half-updated in a way later batches do not repair.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The member set at `world.version`. Call with the state locked.
    pub fn snapshot(&self, world: &World) -> MemberSnapshot {
        MemberSnapshot {
            api_version: API_VERSION,
            version: world.version,
            members: self.lock().members.iter().copied().collect(),
        }
    }

    /// The snapshot as an encoded SSE event. Call with the state locked.
    pub fn snapshot_event(&self, world: &World) -> Bytes {
        encode(&MembersEvent::Snapshot(self.snapshot(world)))
    }

    /// Registers a stream of `relay`; returns it and the events to send
    /// first: the deltas after `last_event_id` if the feed has every one
    /// (none when the relay is up to date), else a snapshot. `None` when
    /// the relay already holds `max_streams`. Call with the state
    /// read-locked.
    pub fn subscribe(
        &self,
        world: &World,
        relay: RelayId,
        max_streams: usize,
        last_event_id: Option<u64>,
    ) -> Option<(RelaySubscription, Vec<Bytes>)> {
        let (tx, rx) = mpsc::channel(RELAY_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut inner = self.lock();
        if inner.subs.iter().filter(|s| s.relay == relay).count() >= max_streams {
            return None;
        }
        let first = match last_event_id {
            Some(last) if last >= inner.ring_from && last <= world.version => inner
                .ring
                .iter()
                .filter(|(v, _)| *v > last)
                .map(|(_, b)| b.clone())
                .collect(),
            _ => vec![encode(&MembersEvent::Snapshot(MemberSnapshot {
                api_version: API_VERSION,
                version: world.version,
                members: inner.members.iter().copied().collect(),
            }))],
        };
        let id = inner.next_id;
        inner.next_id += 1;
        inner.subs.push(Sub {
            id,
            relay,
            tx,
            lagged: lagged.clone(),
        });
        Some((
            RelaySubscription {
                id,
                relay,
                rx,
                lagged,
            },
            first,
        ))
    }

    /// Removes a stream.
    pub fn unsubscribe(&self, id: u64) {
        self.lock().subs.retain(|s| s.id != id);
    }

    /// Open relay streams.
    pub fn stream_count(&self) -> usize {
        self.lock().subs.len()
    }

    /// Tells every relay stream to reconnect elsewhere within `within_ms`
    /// (the controller is shutting down): the `reconnect` event
    /// ([`weft_proto::netmap::ReconnectNotice`]) map streams get. Returns
    /// how many streams it was queued on.
    pub fn drain(&self, within_ms: u64) -> usize {
        let notice = weft_proto::netmap::ReconnectNotice {
            within_ms,
            reason: "controller shutting down".into(),
        };
        let mut buf = Vec::with_capacity(96);
        let name = weft_proto::netmap::EVENT_RECONNECT;
        sse::encode_event(&mut buf, None, Some(name), &notice.to_json());
        let ev = Bytes::from(buf);
        let inner = self.lock();
        inner
            .subs
            .iter()
            .filter(|s| s.tx.try_send(ev.clone()).is_ok())
            .count()
    }

    /// Whether `relay` holds a stream now.
    pub fn is_connected(&self, relay: RelayId) -> bool {
        self.lock().subs.iter().any(|s| s.relay == relay)
    }

    /// Applies what a committed batch touched: pushes a delta of the member set
    /// to every stream if it changed, and closes the streams of removed relays.
    /// Call with the state write-locked.
    pub fn publish(&self, world: &World, touched: &Touched) {
        let mut candidates: BTreeSet<NodeKey> = touched.entries.iter().map(|(_, k)| *k).collect();
        for id in touched
            .resync
            .iter()
            .chain(&touched.self_changed)
            .chain(&touched.evicted)
        {
            if let Some(n) = world.node(*id) {
                candidates.insert(n.rec.node_key);
            }
        }
        let mut inner = self.lock();
        inner
            .subs
            .retain(|s| !touched.evicted_relays.contains(&s.relay));
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for key in candidates {
            let now = world.is_relay_member(&key);
            if now && inner.members.insert(key) {
                added.push(key);
            } else if !now && inner.members.remove(&key) {
                removed.push(key);
            }
        }
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let ev = encode(&MembersEvent::Delta(MemberDelta {
            api_version: API_VERSION,
            version: world.version,
            added,
            removed,
        }));
        for s in &inner.subs {
            if let Err(mpsc::error::TrySendError::Full(_)) = s.tx.try_send(ev.clone()) {
                s.lagged.store(true, Ordering::Release);
            }
        }
        inner.ring.push_back((world.version, ev));
        while inner.ring.len() > RELAY_RING {
            if let Some((v, _)) = inner.ring.pop_front() {
                inner.ring_from = v;
            }
        }
    }

    /// Rebuilds the mirror from a reloaded state and closes every stream (their
    /// relays reconnect and get a fresh snapshot).
    pub fn reset(&self, world: &World) {
        let mut inner = self.lock();
        inner.members = world.relay_members().collect();
        inner.subs.clear();
        inner.ring.clear();
        inner.ring_from = world.version;
    }
}
