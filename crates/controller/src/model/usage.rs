//! Usage accounting's rules: turning uploaded monotonic counters into growth,
//! and growth into the rows an admin asks for.
//!
//! Each series (a node's traffic with one peer to one service, its overflow
//! bucket, or one sidecar user's bytes) keeps its last uploaded value. A new
//! value adds `new - last` to the current hour's bucket, unless it is a reset,
//! which adds the new value whole (counted from zero):
//! - any counter went down;
//! - flow series: the agent run changed (`run_id`: the agent restarted);
//! - user series: the sidecar's `core_uptime_sec` went down (it restarted;
//!   the agent restarting does not reset the sidecar's counters).
//!
//! A delta is never negative. The store only holds the rows
//! ([`crate::store::usage`]).

use std::collections::BTreeMap;

use weft_proto::NodeKey;
use weft_proto::usage::{
    USAGE_BUCKET_MS, UsageBy, UsageCounters, UsageRow, UsageUpload, proto_name,
};

use crate::store::Write;
use crate::store::usage::{
    SeriesKey, SeriesKind, USAGE_RETENTION_MS, UsageBucketRecord, UsageCounterRecord, UsageSum,
};

/// The series an upload carries, with the epoch each is measured in.
fn series(upload: &UsageUpload) -> Vec<(SeriesKey, u64, UsageCounters)> {
    let mut out = Vec::with_capacity(upload.series());
    for f in &upload.flows {
        let key = if f.other {
            SeriesKey {
                kind: SeriesKind::Other,
                peer: String::new(),
                proto: 0,
                port: 0,
                user: String::new(),
            }
        } else {
            SeriesKey {
                kind: SeriesKind::Flow,
                peer: f.peer.map(|k| k.to_string()).unwrap_or_default(),
                proto: f.proto,
                port: f.port,
                user: String::new(),
            }
        };
        out.push((key, 0, f.counters));
    }
    if let Some(s) = &upload.sidecar {
        for (user, bytes) in &s.user_bytes {
            let key = SeriesKey {
                kind: SeriesKind::User,
                peer: String::new(),
                proto: 0,
                port: 0,
                user: user.clone(),
            };
            let counters = UsageCounters {
                tx_bytes: *bytes,
                ..UsageCounters::default()
            };
            out.push((key, s.core_uptime_sec, counters));
        }
    }
    out
}

/// What a series grew by since `last` (see the module docs for resets).
pub fn growth(
    last: Option<&UsageCounterRecord>,
    kind: SeriesKind,
    run_id: &str,
    epoch: u64,
    now: &UsageCounters,
) -> UsageCounters {
    let Some(last) = last else {
        return *now;
    };
    let restarted = match kind {
        SeriesKind::Flow | SeriesKind::Other => last.run_id != run_id,
        SeriesKind::User => epoch < last.epoch,
    };
    if restarted {
        return *now;
    }
    now.since(&last.counters).unwrap_or(*now)
}

/// Series one node may have at most: its data plane's buckets (1,024 by
/// default) and overflow bucket, a sidecar's users (at most 10,000 per file)
/// and room for peers and users that come and go. A series beyond it is not
/// stored (counted in [`Rollup::refused`]), so a node cannot grow the store
/// without bound.
pub const MAX_NODE_SERIES: usize = 16_384;

/// Uploads folded into store writes, one batch at a time: the writer loads a
/// node's last values once ([`Rollup::load`]), adds every upload of the batch
/// in order (a later upload of the same series sees the earlier one), then
/// commits [`Rollup::into_writes`] in one transaction.
#[derive(Debug, Default)]
pub struct Rollup {
    last: BTreeMap<(u64, SeriesKey), UsageCounterRecord>,
    loaded: std::collections::BTreeSet<u64>,
    writes: Vec<Write>,
    newest_ms: u64,
    per_node: BTreeMap<u64, usize>,
    refused: u64,
}

impl Rollup {
    /// Whether `node`'s last values are loaded.
    pub fn loaded(&self, node: u64) -> bool {
        self.loaded.contains(&node)
    }

    /// Takes `node`'s last values from the store.
    pub fn load(&mut self, node: u64, records: Vec<UsageCounterRecord>) {
        self.loaded.insert(node);
        *self.per_node.entry(node).or_default() += records.len();
        for r in records {
            self.last.insert((node, r.key.clone()), r);
        }
    }

    /// Adds one upload of `node`, received at `now_ms`.
    pub fn add(&mut self, node: u64, upload: &UsageUpload, now_ms: u64) {
        let bucket_ms = now_ms - now_ms % USAGE_BUCKET_MS;
        self.newest_ms = self.newest_ms.max(now_ms);
        for (key, epoch, counters) in series(upload) {
            let slot = (node, key);
            let last = self.last.get(&slot);
            if last.is_none() {
                let n = self.per_node.entry(node).or_default();
                if *n >= MAX_NODE_SERIES {
                    self.refused += 1;
                    continue;
                }
                *n += 1;
            }
            if last.is_some_and(|l| {
                l.counters == counters && l.run_id == upload.run_id && l.epoch == epoch
            }) {
                continue; // nothing moved
            }
            let delta = growth(last, slot.1.kind, &upload.run_id, epoch, &counters);
            if !delta.is_zero() {
                self.writes.push(Write::UsageAdd(UsageBucketRecord {
                    node_id: node,
                    bucket_ms,
                    key: slot.1.clone(),
                    delta,
                }));
            }
            let record = UsageCounterRecord {
                node_id: node,
                key: slot.1.clone(),
                run_id: upload.run_id.clone(),
                epoch,
                counters,
                updated_ms: now_ms,
            };
            self.writes.push(Write::UsageCounter(record.clone()));
            self.last.insert(slot, record);
        }
    }

    /// Series not stored because their node has [`MAX_NODE_SERIES`] already.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// The writes, with the pruning of buckets past the retention.
    pub fn into_writes(mut self) -> Vec<Write> {
        if !self.writes.is_empty() {
            let cutoff = self.newest_ms.saturating_sub(USAGE_RETENTION_MS);
            self.writes
                .push(Write::UsagePrune(cutoff - cutoff % USAGE_BUCKET_MS));
        }
        self.writes
    }
}

/// How usage rows name things.
pub trait Names {
    /// A node's name by id (`None`: removed since).
    fn node(&self, id: u64) -> Option<String>;
    /// A node's name by key (`None`: not a node any more).
    fn peer(&self, key: &NodeKey) -> Option<String>;
}

/// Groups window sums into rows for `by`, largest total first (then by name).
/// Flow and overflow series count for node, peer and port; user series only
/// for user.
pub fn rows(by: UsageBy, sums: &[UsageSum], names: &impl Names) -> Vec<UsageRow> {
    let node_name = |id: u64| {
        names
            .node(id)
            .unwrap_or_else(|| format!("(removed node {id})"))
    };
    // (node, peer, proto, port, user) of each row.
    type Group = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<u16>,
        Option<String>,
    );
    let mut groups: BTreeMap<Group, UsageCounters> = BTreeMap::new();
    for s in sums {
        let user = s.key.kind == SeriesKind::User;
        if user != (by == UsageBy::User) {
            continue;
        }
        let group: Group = match by {
            UsageBy::Node => (Some(node_name(s.node_id)), None, None, None, None),
            UsageBy::Peer => (
                Some(node_name(s.node_id)),
                Some(peer_label(&s.key, names)),
                None,
                None,
                None,
            ),
            UsageBy::Port if s.key.kind == SeriesKind::Other => {
                (None, None, Some("(other)".into()), None, None)
            }
            UsageBy::Port => (
                None,
                None,
                Some(proto_name(s.key.proto)),
                Some(s.key.port),
                None,
            ),
            UsageBy::User => (None, None, None, None, Some(s.key.user.clone())),
        };
        groups.entry(group).or_default().add(&s.counters);
    }
    let mut out: Vec<UsageRow> = groups
        .into_iter()
        .map(|((node, peer, proto, port, user), counters)| {
            let mut row = UsageRow {
                node,
                peer,
                proto,
                port,
                user,
                ..UsageRow::default()
            };
            if by == UsageBy::User {
                row.bytes = Some(counters.tx_bytes);
            } else {
                row.counters = counters;
            }
            row
        })
        .collect();
    let total = |r: &UsageRow| {
        r.bytes
            .unwrap_or(0)
            .saturating_add(r.counters.tx_bytes)
            .saturating_add(r.counters.rx_bytes)
    };
    // Stable: equal totals keep the groups' order (by name).
    out.sort_by_key(|r| std::cmp::Reverse(total(r)));
    out
}

fn peer_label(key: &SeriesKey, names: &impl Names) -> String {
    if key.kind == SeriesKind::Other {
        return "(other)".into();
    }
    if key.peer.is_empty() {
        return "(unknown)".into();
    }
    key.peer
        .parse::<NodeKey>()
        .ok()
        .and_then(|k| names.peer(&k))
        .unwrap_or_else(|| key.peer.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::usage::{FlowUsage, SidecarUsage};

    const RUN1: &str = "11111111111111111111111111111111";
    const RUN2: &str = "22222222222222222222222222222222";

    fn peer() -> NodeKey {
        NodeKey::from_bytes([7; 32])
    }

    fn upload(run: &str, tx: u64, rx: u64, flows: u64) -> UsageUpload {
        UsageUpload {
            run_id: run.into(),
            started_at_ms: 1,
            at_ms: 2,
            flows: vec![FlowUsage {
                peer: Some(peer()),
                port: 5201,
                proto: 6,
                other: false,
                counters: UsageCounters {
                    tx_bytes: tx,
                    rx_bytes: rx,
                    tx_packets: 0,
                    rx_packets: 0,
                    flows,
                },
            }],
            sidecar: None,
        }
    }

    fn users(uptime: u64, alice: u64) -> UsageUpload {
        UsageUpload {
            run_id: RUN1.into(),
            sidecar: Some(SidecarUsage {
                core_uptime_sec: uptime,
                user_bytes: [("alice".to_string(), alice)].into(),
            }),
            ..UsageUpload::default()
        }
    }

    /// Runs uploads through one rollup per upload (as separate batches would),
    /// returning the bytes each added (tx, rx).
    fn deltas(uploads: &[UsageUpload]) -> Vec<(u64, u64)> {
        let mut last: Vec<UsageCounterRecord> = Vec::new();
        let mut out = Vec::new();
        for (i, u) in uploads.iter().enumerate() {
            let mut r = Rollup::default();
            r.load(1, last.clone());
            r.add(1, u, 10_000 + i as u64);
            let mut added = (0, 0);
            for w in r.into_writes() {
                match w {
                    Write::UsageAdd(b) => {
                        added.0 += b.delta.tx_bytes;
                        added.1 += b.delta.rx_bytes;
                    }
                    Write::UsageCounter(c) => {
                        last.retain(|l| l.key != c.key);
                        last.push(c);
                    }
                    _ => {}
                }
            }
            out.push(added);
        }
        out
    }

    #[test]
    fn growth_is_the_difference_of_monotonic_counters() {
        let got = deltas(&[
            upload(RUN1, 100, 10, 1),
            upload(RUN1, 250, 10, 1),
            upload(RUN1, 250, 10, 1),
            upload(RUN1, 400, 30, 2),
        ]);
        assert_eq!(got, [(100, 10), (150, 0), (0, 0), (150, 20)]);
    }

    #[test]
    fn a_counter_going_down_is_a_reset_counted_from_zero_never_negative() {
        let got = deltas(&[
            upload(RUN1, 1000, 500, 3),
            // Same run, but tx went down (the data plane was rebuilt): reset.
            upload(RUN1, 40, 600, 3),
            upload(RUN1, 90, 650, 3),
        ]);
        assert_eq!(got, [(1000, 500), (40, 600), (50, 50)]);
    }

    #[test]
    fn a_new_agent_run_is_a_reset_even_when_the_counters_grew() {
        let got = deltas(&[
            upload(RUN1, 1000, 0, 1),
            // The agent restarted and already counted more than before.
            upload(RUN2, 1500, 0, 1),
            upload(RUN2, 1600, 0, 1),
        ]);
        assert_eq!(got, [(1000, 0), (1500, 0), (100, 0)]);
    }

    /// The agent's usage outbox after an outage across a weftd restart: the
    /// old run's last totals (sent once, maybe twice) before the new run's.
    #[test]
    fn a_runs_last_totals_replayed_before_the_next_run_count_once() {
        let got = deltas(&[
            upload(RUN1, 1000, 0, 1),
            // The controller was away; weftd restarted; its outbox sends
            // the old run's last totals first, twice (an answer was lost).
            upload(RUN1, 1400, 0, 1),
            upload(RUN1, 1400, 0, 1),
            upload(RUN2, 300, 0, 1),
        ]);
        assert_eq!(got, [(1000, 0), (400, 0), (0, 0), (300, 0)]);
    }

    #[test]
    fn a_sidecar_restart_is_a_reset_an_agent_restart_is_not() {
        let mut after_agent_restart = users(120, 700);
        after_agent_restart.run_id = RUN2.into();
        let got = deltas(&[
            users(60, 500),
            after_agent_restart,
            // The sidecar restarted (uptime went down) and counted 800 already.
            users(10, 800),
            users(40, 300),
        ]);
        assert_eq!(got, [(500, 0), (200, 0), (800, 0), (300, 0)]);
    }

    #[test]
    fn two_uploads_of_one_batch_see_each_other_and_old_buckets_are_pruned() {
        let mut r = Rollup::default();
        r.load(1, vec![]);
        r.add(
            1,
            &upload(RUN1, 100, 0, 1),
            USAGE_RETENTION_MS + 5 * USAGE_BUCKET_MS,
        );
        r.add(
            1,
            &upload(RUN1, 130, 0, 1),
            USAGE_RETENTION_MS + 5 * USAGE_BUCKET_MS,
        );
        let writes = r.into_writes();
        let adds: Vec<u64> = writes
            .iter()
            .filter_map(|w| match w {
                Write::UsageAdd(b) => Some(b.delta.tx_bytes),
                _ => None,
            })
            .collect();
        assert_eq!(adds, [100, 30]);
        assert_eq!(writes.last(), Some(&Write::UsagePrune(5 * USAGE_BUCKET_MS)));
    }

    #[test]
    fn a_node_has_a_bounded_number_of_series() {
        let mut r = Rollup::default();
        let full: Vec<UsageCounterRecord> = (0..MAX_NODE_SERIES)
            .map(|i| UsageCounterRecord {
                node_id: 1,
                key: SeriesKey {
                    kind: SeriesKind::User,
                    peer: String::new(),
                    proto: 0,
                    port: 0,
                    user: format!("u{i}"),
                },
                run_id: RUN1.into(),
                epoch: 0,
                counters: UsageCounters::default(),
                updated_ms: 0,
            })
            .collect();
        r.load(1, full);
        r.load(2, vec![]);
        // A known series still counts; a new one is refused; another node is
        // not affected.
        let mut known = users(1, 9);
        known.sidecar.as_mut().unwrap().user_bytes = [("u0".to_string(), 9)].into();
        r.add(1, &known, 1);
        r.add(1, &upload(RUN1, 100, 0, 1), 1);
        r.add(2, &upload(RUN1, 100, 0, 1), 1);
        assert_eq!(r.refused(), 1);
        let nodes: Vec<u64> = r
            .into_writes()
            .iter()
            .filter_map(|w| match w {
                Write::UsageAdd(b) => Some(b.node_id),
                _ => None,
            })
            .collect();
        assert_eq!(nodes, [1, 2]);
    }

    struct N;
    impl Names for N {
        fn node(&self, id: u64) -> Option<String> {
            (id == 1).then(|| "web".to_string())
        }
        fn peer(&self, key: &NodeKey) -> Option<String> {
            (*key == peer()).then(|| "db".to_string())
        }
    }

    fn sum(node_id: u64, kind: SeriesKind, peer: &str, port: u16, user: &str, tx: u64) -> UsageSum {
        UsageSum {
            node_id,
            key: SeriesKey {
                kind,
                peer: peer.into(),
                proto: 6,
                port,
                user: user.into(),
            },
            counters: UsageCounters {
                tx_bytes: tx,
                rx_bytes: 1,
                flows: 1,
                ..UsageCounters::default()
            },
        }
    }

    #[test]
    fn rows_group_by_node_peer_port_and_user_largest_first() {
        let k = peer().to_string();
        let sums = [
            sum(1, SeriesKind::Flow, &k, 5201, "", 100),
            sum(1, SeriesKind::Flow, &k, 22, "", 5),
            sum(2, SeriesKind::Flow, "", 5201, "", 1000),
            sum(1, SeriesKind::Other, "", 0, "", 7),
            sum(1, SeriesKind::User, "", 0, "alice", 50),
            sum(2, SeriesKind::User, "", 0, "alice", 25),
        ];
        let by_node = rows(UsageBy::Node, &sums, &N);
        assert_eq!(by_node.len(), 2);
        assert_eq!(by_node[0].node.as_deref(), Some("(removed node 2)"));
        assert_eq!(by_node[1].node.as_deref(), Some("web"));
        assert_eq!(by_node[1].counters.tx_bytes, 112);
        assert_eq!(by_node[1].counters.flows, 3);
        let by_peer = rows(UsageBy::Peer, &sums, &N);
        let peers: Vec<_> = by_peer.iter().map(|r| r.peer.clone().unwrap()).collect();
        assert_eq!(peers, ["(unknown)", "db", "(other)"]);
        let by_port = rows(UsageBy::Port, &sums, &N);
        assert_eq!(by_port[0].port, Some(5201));
        assert_eq!(by_port[0].counters.tx_bytes, 1100);
        assert!(
            by_port
                .iter()
                .any(|r| r.proto.as_deref() == Some("(other)"))
        );
        let by_user = rows(UsageBy::User, &sums, &N);
        assert_eq!(by_user.len(), 1);
        assert_eq!(by_user[0].user.as_deref(), Some("alice"));
        assert_eq!(by_user[0].bytes, Some(75));
    }
}
