//! Several replicas: another replica's batches replayed into this one's state,
//! and presence held by several replicas.
//!
//! Every replica's writer commits its batch together with a change row (the
//! changes log) while it holds the database-wide write lock, after it has
//! replayed every earlier change. A change records the batch's operations as
//! they were applied ([`AnyOp`], each with its actor), its time, the map
//! version after it and how many writes it made. Replaying it here runs the
//! same operations on the same state at the same time, so it makes the same
//! writes, moves the version the same way and yields the same [`Outcome`]:
//! the deltas every replica publishes for a version are the same, and an
//! agent can resume by `Last-Event-ID` on any replica. A replay that does
//! not end on the recorded version and write count has diverged
//! ([`Diverged`]); so has a change holding an operation this build cannot
//! replay. The engine then reloads the state from the store.
//!
//! Presence: a node is online while any replica holds one of its map
//! streams. Each replica's debounced stream transitions arrive as
//! [`StreamPresence`] (stored as `presence` rows, so a replica that starts
//! later loads them); a replica found dead (stale heartbeat) is withdrawn by
//! [`ReplicaGone`].

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{
    Actor, AdvertiseRoutes, AdvertiseService, AllowRule, ApproveHook, Batch, CancelTask,
    ChallengedRegistration, ChangeRoute, ClearDnsBlocklist, CreateService, CreateTask,
    DecideInstance, ExpectWeftd, LeaseTask, LeaveNetwork, NewNetwork, NewRelay, NewToken, NodeId,
    Outcome, PruneAudit, RecordEvents, Registration, RemoveNetwork, RemoveNode, RemoveRelay,
    RemoveService, Report, ReportHealth, ReportIntegrity, ReportRelay, ReportSshServer,
    ReportSshSessions, RevokeHook, RevokeRule, RevokeToken, RotateKey, SetData, SetDnsBlocklist,
    SetFirewall, SetNetworkAnomaly, SetPolicy, SetPresence, SetSecret, SubmitResult, SweepFirewall,
    SweepTasks, UnsetData, UnsetSecret, UpdateNode, World,
};
use crate::store::{PresenceRecord, Write};

/// `replayable!(A, B, ...)` defines [`AnyOp`] with one variant per operation
/// type, named after it.
macro_rules! replayable {
    ($($op:ident),* $(,)?) => {
        /// An operation as the changes log records it: every operation type
        /// another replica can replay.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[allow(clippy::large_enum_variant)]
        pub enum AnyOp {
            $(
                #[allow(missing_docs)]
                $op($op),
            )*
        }

        impl AnyOp {
            /// `op` recorded, if its type is one this build replays (else
            /// the replicas replaying its batch reload their state).
            pub fn record(op: &dyn Any) -> Option<AnyOp> {
                $(
                    if let Some(op) = op.downcast_ref::<$op>() {
                        return Some(AnyOp::$op(op.clone()));
                    }
                )*
                None
            }

            /// Runs it (its result is the caller's, on the replica that
            /// committed it; here only its effect matters).
            fn apply(self, world: &mut World, batch: &mut Batch, actor: &Actor, now_ms: u64) {
                match self {
                    $(AnyOp::$op(op) => {
                        let _ = world.apply(batch, actor, op, now_ms);
                    })*
                }
            }
        }
    };
}

replayable!(
    AdvertiseRoutes,
    AdvertiseService,
    AllowRule,
    ApproveHook,
    CancelTask,
    ChallengedRegistration,
    ChangeRoute,
    ClearDnsBlocklist,
    CreateService,
    CreateTask,
    DecideInstance,
    ExpectWeftd,
    LeaseTask,
    LeaveNetwork,
    NewNetwork,
    NewRelay,
    NewToken,
    PruneAudit,
    RecordEvents,
    Registration,
    RemoveNetwork,
    RemoveNode,
    RemoveRelay,
    RemoveService,
    Report,
    ReportHealth,
    ReportIntegrity,
    ReportRelay,
    ReportSshServer,
    ReportSshSessions,
    RevokeHook,
    RevokeRule,
    RevokeToken,
    RotateKey,
    SetData,
    SetDnsBlocklist,
    SetFirewall,
    SetNetworkAnomaly,
    SetPolicy,
    SetPresence,
    SetSecret,
    SubmitResult,
    SweepFirewall,
    SweepTasks,
    UnsetData,
    UnsetSecret,
    UpdateNode,
    StreamPresence,
    ReplicaGone,
);

/// One operation of a recorded batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedOp {
    /// Who asked.
    pub actor: Actor,
    /// What.
    pub op: AnyOp,
}

/// A batch as the changes log records it (a change row's body).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChangeBody {
    /// The batch's time (Unix ms), as its operations saw it.
    pub now_ms: u64,
    /// The operations that succeeded, in order (failed ones changed
    /// nothing).
    pub ops: Vec<RecordedOp>,
    /// The batch held an operation this build cannot record: replicas
    /// reload their state instead of replaying it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub opaque: bool,
    /// A replica's start: the map version moves by one, nothing else
    /// changes (streams resuming from before it get a snapshot from the
    /// replica that started; see `serve::prepare`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bump: bool,
    /// The map version after the batch.
    pub version: u64,
    /// How many writes the batch made (its change row not counted).
    pub writes: usize,
}

/// A replay did not end where the replica that committed the batch ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replaying change {seq} diverged: {why}")]
pub struct Diverged {
    /// The change.
    pub seq: u64,
    /// What differed.
    pub why: String,
}

/// Which replicas hold each node's map streams.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holders {
    by_node: BTreeMap<NodeId, BTreeSet<String>>,
}

impl Holders {
    /// The replicas holding `node`'s streams.
    pub fn of(&self, node: NodeId) -> Option<&BTreeSet<String>> {
        self.by_node.get(&node)
    }

    /// Every replica holding some stream.
    pub fn replicas(&self) -> BTreeSet<String> {
        self.by_node.values().flatten().cloned().collect()
    }
}

/// Replica `replica` started (`online`) or stopped holding a map stream of
/// `node` (debounced, like [`SetPresence`] on one replica). The node is
/// online while any replica holds one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPresence {
    /// The replica.
    pub replica: String,
    /// The node.
    pub node: NodeId,
    /// Whether the replica now holds a stream of it.
    pub online: bool,
}

/// Replica `replica` is gone: every stream it held is closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaGone {
    /// The replica.
    pub replica: String,
}

operation!(StreamPresence => (), |op, w, batch, actor, now_ms| {
    w.stream_presence(batch, actor, op, now_ms);
    Ok(())
});

operation!(ReplicaGone => usize, |op, w, batch, actor, now_ms| {
    Ok(w.replica_gone(batch, actor, &op.replica, now_ms))
});

impl World {
    /// The replicas holding streams, by node.
    pub fn holders(&self) -> &Holders {
        &self.holders
    }

    /// Takes the stored presence rows (after [`World::from_snapshot`]):
    /// their nodes are online. Rows of unknown nodes are skipped.
    pub fn load_presence(&mut self, rows: &[PresenceRecord]) {
        self.holders = Holders::default();
        let mut online = Vec::new();
        for r in rows {
            if self.node(r.node_id).is_some() {
                let set = self.holders.by_node.entry(r.node_id).or_default();
                if set.is_empty() {
                    online.push(r.node_id);
                }
                set.insert(r.replica.clone());
            }
        }
        self.restore_online(&online);
    }

    fn stream_presence(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: StreamPresence,
        now_ms: u64,
    ) {
        if self.node(op.node).is_none() {
            self.holders.by_node.remove(&op.node);
            return;
        }
        let set = self.holders.by_node.entry(op.node).or_default();
        let changed = if op.online {
            set.insert(op.replica.clone())
        } else {
            set.remove(&op.replica)
        };
        let any = !set.is_empty();
        if !any {
            self.holders.by_node.remove(&op.node);
        }
        if changed {
            batch.writes.push(Write::Presence {
                replica: op.replica,
                node_id: op.node,
                online: op.online,
            });
        }
        // Also when this replica's own view did not change: a node taken as
        // online at a start without presence rows goes offline this way.
        let _ = self.apply(
            batch,
            actor,
            SetPresence {
                node: op.node,
                online: any,
            },
            now_ms,
        );
    }

    fn replica_gone(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        replica: &str,
        now_ms: u64,
    ) -> usize {
        let mut offline = Vec::new();
        let mut held = 0;
        self.holders.by_node.retain(|node, set| {
            if set.remove(replica) {
                held += 1;
                if set.is_empty() {
                    offline.push(*node);
                }
            }
            !set.is_empty()
        });
        batch.writes.push(Write::ReplicaGone(replica.to_owned()));
        for node in offline {
            let _ = self.apply(
                batch,
                actor,
                SetPresence {
                    node,
                    online: false,
                },
                now_ms,
            );
        }
        held
    }

    /// Replays change `seq` (committed by another replica): runs its
    /// operations and closes the batch. Returns the outcome to publish, as
    /// for a local batch, and the `task` events to send after it
    /// ([`Replayed`]); [`Diverged`] if it did not end on the recorded
    /// version and write count, or cannot be replayed (the caller reloads).
    pub fn replay(&mut self, seq: u64, body: ChangeBody) -> Result<Replayed, Diverged> {
        let diverged = |why: String| Diverged { seq, why };
        if body.opaque {
            return Err(diverged(
                "it holds an operation this build cannot replay".into(),
            ));
        }
        if body.bump {
            if body.version != self.version + 1 {
                return Err(diverged(format!(
                    "a start at version {} follows version {}",
                    body.version, self.version
                )));
            }
            self.version = body.version;
            return Ok(Replayed::default());
        }
        let mut batch = Batch::default();
        let mut tasks = Vec::new();
        for r in body.ops {
            self.replay_op(&mut batch, r, body.now_ms, &mut tasks);
        }
        let outcome = self.finish_batch(&mut batch);
        if self.version != body.version || batch.writes.len() != body.writes {
            return Err(diverged(format!(
                "it ended at version {} with {} writes here, {} with {} where it was committed",
                self.version,
                batch.writes.len(),
                body.version,
                body.writes
            )));
        }
        Ok(Replayed { outcome, tasks })
    }
}

/// What replaying a change yields.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The outcome to publish, as for a local batch.
    pub outcome: Option<Outcome>,
    /// The `task` events the committing replica sent after the batch
    /// (`(node, task id)`), for this replica's streams (see the `notices`
    /// module).
    pub tasks: Vec<(NodeId, String)>,
}

mod notices;

#[cfg(test)]
mod tests;
