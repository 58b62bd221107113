//! Persistence: a dumb, transactional row store.
//!
//! All business rules (address allocation, token accounting, names) run in memory
//! in [`crate::model`] against the loaded state; what reaches the store is a list
//! of row-level [`Write`]s applied in **one transaction** per batch. A driver
//! therefore implements three methods and no logic, which is what makes a second
//! driver (PostgreSQL, for several replicas) a driver and not a rewrite. The
//! schema also enforces the invariants that matter (unique address per network,
//! unique key, unique name), so a logic bug fails a commit instead of persisting
//! a duplicate.
//!
//! Durability contract: [`Store::apply`] returns `Ok` only after the transaction
//! is durable. The controller acknowledges a request only after that.

pub mod challenges;
pub mod data;
pub mod dns_blocklist;
pub mod hostfw;
pub mod integrity;
pub mod postgres;
pub mod services;
pub mod sqlite;
pub mod ssh;
pub mod tasks;
pub mod testing;
pub mod usage;

#[cfg(test)]
pub(crate) mod row_suites;

#[cfg(test)]
pub(crate) mod replication_tests;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use weft_proto::NodeKey;
use weft_proto::facts::HostFacts;
use weft_proto::net::{Ipv4Net, Ipv6Net};

use crate::secret::SecretHash;

/// Why the store failed. Never caused by user input: the model validates first.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database engine reported an error (I/O, corruption, constraint).
    #[error("database error: {0}")]
    Db(String),
    /// The database cannot be reached right now (PostgreSQL down or
    /// restarting, the connection lost): the call did nothing durable, and a
    /// later one may work (the API answers 503).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A stored value does not parse (manual edits or corruption).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database was written by a newer controller.
    #[error(
        "database schema version {found} is newer than this controller knows ({known}); upgrade weft-controller"
    )]
    SchemaTooNew {
        /// Version in the database.
        found: u32,
        /// Newest version this build has.
        known: u32,
    },
    /// The database file is missing, empty or not a weft database.
    #[error(
        "{} {why}. It held every network, node, join token and the admin token. \
         Restore it from a backup (stop the controller first), or start with --init to move \
         what is there aside and create an empty database deliberately (a new admin token; \
         every node must register again)",
        path.display()
    )]
    NotWeft {
        /// The database file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// A network row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRecord {
    /// Controller-assigned id.
    pub id: u64,
    /// Unique name (DNS label).
    pub name: String,
    /// IPv4 prefix.
    pub ipv4_cidr: Ipv4Net,
    /// IPv6 prefix.
    pub ipv6_prefix: Option<Ipv6Net>,
    /// DNS domain.
    pub dns_domain: String,
    /// Required proof-of-work bits.
    pub pow_difficulty: u32,
    /// Unix seconds.
    pub created_at: u64,
    /// The admin's anomaly thresholds (`None`: the agents' defaults).
    pub anomaly: Option<weft_proto::events::AnomalyThresholds>,
}

/// A node row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Controller-assigned id.
    pub id: u64,
    /// Identity key.
    pub node_key: NodeKey,
    /// Unique name (DNS label).
    pub name: String,
    /// Reported host name.
    pub hostname: Option<String>,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// Disabled by an admin.
    pub disabled: bool,
    /// SHA-256 of the node credential.
    pub credential_hash: SecretHash,
    /// Reported endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Unix seconds.
    pub last_seen: Option<u64>,
    /// The `last_seen` peers were last told about (maps carry it), Unix
    /// seconds: a liveness report moves `last_seen` without publishing, so a
    /// controller loading the row must not publish `last_seen` in its place.
    pub seen_published: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
    /// The host facts it last reported (boxed: most writes of a node row
    /// are liveness reports, and the facts would triple the row's size).
    pub facts: Option<Box<HostFacts>>,
    /// When they last changed, Unix milliseconds.
    pub facts_changed_ms: Option<u64>,
}

/// A node's membership in a network, with its addresses there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipRecord {
    /// The node.
    pub node_id: u64,
    /// The network.
    pub network_id: u64,
    /// IPv4 address (unique in the network).
    pub ipv4: Ipv4Addr,
    /// IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// The join token used.
    pub token_id: Option<u64>,
    /// Unix seconds.
    pub joined_at: u64,
}

/// Where a subnet route stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteState {
    /// Advertised, waiting for an admin.
    Pending,
    /// Approved: in the maps.
    Approved,
    /// Rejected by an admin; advertising it again does not bring it back.
    Rejected,
}

impl RouteState {
    /// The stored and shown text.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteState::Pending => "pending",
            RouteState::Approved => "approved",
            RouteState::Rejected => "rejected",
        }
    }

    /// Parses [`RouteState::as_str`] text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(RouteState::Pending),
            "approved" => Some(RouteState::Approved),
            "rejected" => Some(RouteState::Rejected),
            _ => None,
        }
    }
}

/// Who created a subnet route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteSource {
    /// The node's agent advertised it (`weft up --advertise-routes`).
    Node,
    /// An admin set it (`weft-controller admin route add`).
    Admin,
}

impl RouteSource {
    /// The stored and shown text.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSource::Node => "node",
            RouteSource::Admin => "admin",
        }
    }

    /// Parses [`RouteSource::as_str`] text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "node" => Some(RouteSource::Node),
            "admin" => Some(RouteSource::Admin),
            _ => None,
        }
    }
}

/// A subnet a gateway node offers in one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRecord {
    /// The gateway node.
    pub node_id: u64,
    /// The network.
    pub network_id: u64,
    /// The subnet.
    pub prefix: Ipv4Net,
    /// Pending, approved, rejected.
    pub state: RouteState,
    /// Node or admin.
    pub source: RouteSource,
    /// When it was approved (Unix milliseconds): orders the gateways of a subnet.
    pub approved_at: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
}

/// A join token row (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Controller-assigned id.
    pub id: u64,
    /// SHA-256 of the token.
    pub token_hash: SecretHash,
    /// Free text.
    pub description: Option<String>,
    /// Tags given to joining nodes.
    pub tags: BTreeSet<String>,
    /// Network ids granted.
    pub networks: BTreeSet<u64>,
    /// `None` = unlimited.
    pub max_uses: Option<u32>,
    /// Registrations so far.
    pub uses: u32,
    /// Unix seconds.
    pub expires_at: u64,
    /// Revoked by an admin.
    pub revoked: bool,
    /// Unix seconds.
    pub created_at: u64,
}

/// A relay row (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRecord {
    /// Controller-assigned id.
    pub id: u64,
    /// Unique name (DNS label).
    pub name: String,
    /// URL handed to nodes.
    pub url: String,
    /// SHA-256 of the relay token.
    pub token_hash: SecretHash,
    /// `sha256:<hex>` of its TLS certificate, as reported.
    pub tls_fingerprint: Option<String>,
    /// Its STUN port, as reported.
    pub stun_port: Option<u16>,
    /// Unix seconds.
    pub created_at: u64,
    /// Last report, Unix seconds.
    pub last_seen: Option<u64>,
}

/// One version of the access policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    /// Version (1, 2, ...).
    pub version: u64,
    /// The policy text.
    pub text: String,
    /// Who set it (`admin`, `system`).
    pub author: String,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// An audit row.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Sequence number.
    pub id: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// `admin` or `node:<key>`.
    pub actor: String,
    /// For example `node.rename`.
    pub action: String,
    /// Network name, node key, token id.
    pub target: String,
    /// JSON details (never secrets).
    pub detail: serde_json::Value,
}

/// Events kept in the log at most; older ones are deleted as new ones arrive.
pub const EVENTS_KEPT: u64 = 100_000;

/// An anomaly event as the log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// The node that raised it.
    pub node_id: u64,
    /// Its name when the event arrived.
    pub node_name: String,
    /// Its key.
    pub node_key: NodeKey,
    /// Unix milliseconds.
    pub received_at_ms: u64,
    /// The event.
    pub event: weft_proto::events::AnomalyEvent,
}

/// Which events to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this node's.
    pub node_id: Option<u64>,
    /// Only those received at or after this (Unix milliseconds).
    pub since_ms: Option<u64>,
    /// At most this many (the newest), returned oldest first.
    pub limit: u32,
}

/// Everything the controller loads at start.
#[derive(Debug, Default)]
pub struct StoreSnapshot {
    /// The last map version handed out.
    pub map_version: u64,
    /// SHA-256 of the admin token, once created.
    pub admin_hash: Option<SecretHash>,
    /// All networks.
    pub networks: Vec<NetworkRecord>,
    /// All nodes.
    pub nodes: Vec<NodeRecord>,
    /// All memberships.
    pub memberships: Vec<MembershipRecord>,
    /// All join tokens.
    pub tokens: Vec<TokenRecord>,
    /// All relays.
    pub relays: Vec<RelayRecord>,
    /// The newest policy version, if one was ever stored.
    pub policy: Option<PolicyRecord>,
    /// All subnet routes.
    pub routes: Vec<RouteRecord>,
    /// Highest audit id so far (0 if none).
    pub max_audit_id: u64,
    /// Remote tasks and their runs (results stay in the store).
    pub tasks: tasks::TasksSnapshot,
    /// Node data and sealed secrets.
    pub data: data::DataRows,
    /// Hook approvals, expected weftd hashes, nodes' integrity reports.
    pub integrity: integrity::IntegritySnapshot,
    /// The DNS blocklist, if one is set.
    pub dns_blocklist: Option<dns_blocklist::DnsBlocklistRecord>,
    /// The host firewall file in force and the dynamic rules.
    pub hostfw: hostfw::HostFwRows,
    /// SSH servers and audited session keys.
    pub ssh: ssh::SshRows,
    /// The service registry: ranges, services, instances.
    pub services: services::ServiceRows,
    /// The key registration challenges are MACed with, once created.
    pub challenge_key: Option<challenges::ChallengeKey>,
    /// The challenges of registrations, until they expire.
    pub used_challenges: Vec<challenges::UsedChallengeRecord>,
}

/// One row-level change. A batch of them is applied atomically.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Insert or replace a network.
    PutNetwork(NetworkRecord),
    /// Insert or replace a node.
    PutNode(NodeRecord),
    /// Delete a node and its memberships.
    DeleteNode(u64),
    /// Insert or replace a membership.
    PutMembership(MembershipRecord),
    /// Insert or replace a join token.
    PutToken(TokenRecord),
    /// Insert or replace a relay.
    PutRelay(RelayRecord),
    /// Delete a relay.
    DeleteRelay(u64),
    /// Insert or replace a subnet route.
    PutRoute(RouteRecord),
    /// Delete a subnet route.
    DeleteRoute {
        /// The gateway node.
        node_id: u64,
        /// The network.
        network_id: u64,
        /// The subnet.
        prefix: Ipv4Net,
    },
    /// Delete one membership (the node leaves one network) and the node's
    /// routes in that network.
    DeleteMembership {
        /// The node.
        node_id: u64,
        /// The network.
        network_id: u64,
    },
    /// Append a policy version.
    PutPolicy(PolicyRecord),
    /// Append an audit record.
    Audit(AuditRecord),
    /// Delete the audit records with `id <= through_id` (audit retention;
    /// the sweep that emits it is itself audited, with a higher id).
    AuditPrune {
        /// The newest id deleted.
        through_id: u64,
    },
    /// Delete a network and every row that names it: memberships, the
    /// members' routes there, its service range, its services with their
    /// instances, and data entries scoped to it. The model deletes those
    /// rows one by one first; a driver deletes what is left, so no foreign
    /// key is left dangling. Join tokens are rewritten by `PutToken`.
    DeleteNetwork(u64),
    /// Append anomaly events (one already held, by node and event id, is
    /// skipped) and delete the oldest beyond [`EVENTS_KEPT`].
    Events(Vec<EventRecord>),
    /// Upsert a usage series' last uploaded value.
    UsageCounter(usage::UsageCounterRecord),
    /// Add a usage series' growth to its bucket.
    UsageAdd(usage::UsageBucketRecord),
    /// Delete usage buckets that start before this (Unix milliseconds).
    UsagePrune(u64),
    /// A node data or sealed secret row.
    Data(data::DataWrite),
    /// Replace the DNS blocklist (`None`: delete it).
    DnsBlocklist(Option<dns_blocklist::DnsBlocklistRecord>),
    /// A host firewall file version or dynamic rule row.
    HostFw(hostfw::HostFwWrite),
    /// An SSH row.
    Ssh(ssh::SshWrite),
    /// A service registry row.
    Services(services::ServiceWrite),
    /// Insert a task, or record its cancellation.
    PutTask(tasks::TaskRecord),
    /// Insert or replace a task's run.
    PutTaskRun(tasks::TaskRunRecord),
    /// Insert a run's result (a run has at most one).
    PutTaskResult(tasks::TaskResultRecord),
    /// Delete a task with its runs and results.
    DeleteTask(String),
    /// Insert an approved hook hash (an existing one is kept).
    PutHookApproval(integrity::HookApprovalRecord),
    /// Delete approved hashes of a hook: one, or all of them (`sha256: None`).
    DeleteHookApproval {
        /// The hook's name.
        name: String,
        /// The hash, or every hash of the hook.
        sha256: Option<String>,
    },
    /// Insert or replace the expected weftd hash of a version.
    PutExpected(integrity::ExpectedRecord),
    /// Insert or replace a node's last integrity report.
    PutNodeIntegrity(integrity::NodeIntegrityRecord),
    /// Persist the map version counter.
    SetMapVersion(u64),
    /// Persist the admin token hash.
    SetAdminHash(SecretHash),
    /// The challenge key, or a used registration challenge.
    Challenge(challenges::ChallengeWrite),
    /// A replica started (`online`) or stopped holding a map stream of a
    /// node: insert or delete its `presence` row.
    Presence {
        /// The replica.
        replica: String,
        /// The node.
        node_id: u64,
        /// Whether the replica now holds a stream of it.
        online: bool,
    },
    /// A replica is gone (stopped, or its heartbeat went stale): delete its
    /// `presence` rows and its `replicas` row.
    ReplicaGone(String),
    /// Append a batch to the changes log (the last write of a batch
    /// committed through [`Store::commit_exclusive`]; PostgreSQL also
    /// `NOTIFY weft_changes` with the seq, in the same transaction).
    Change(ChangeRecord),
}

/// One committed batch in the changes log, as the other replicas replay it
/// ([`Write::Change`], [`Store::changes_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// Gap-free sequence number (1, 2, ...), the last one + 1, chosen by the
    /// committing replica under the write lock.
    pub seq: u64,
    /// The replica that committed it.
    pub replica: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The batch as the engine serializes it (JSON); opaque to the store.
    pub body: String,
}

/// A running replica's heartbeat row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// Its id (unique per process start).
    pub id: String,
    /// When it started, Unix milliseconds.
    pub started_ms: u64,
    /// Its last heartbeat, Unix milliseconds.
    pub heartbeat_ms: u64,
}

/// A replica holds a map stream of a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PresenceRecord {
    /// The replica.
    pub replica: String,
    /// The node.
    pub node_id: u64,
}

/// Wakes a replica's writer when another replica committed a change
/// ([`Store::change_listener`]; PostgreSQL: its own connection, `LISTEN
/// weft_changes`).
pub trait ChangeListener: Send + 'static {
    /// Waits until another replica may have committed a change (`Ok(true)`)
    /// or `timeout` passed (`Ok(false)`). An error (the connection dropped)
    /// makes the engine poll [`Store::last_change_seq`] and ask for a new
    /// listener later; a missed notification costs only latency, because
    /// the writer always catches up from the log before each batch.
    fn wait(&mut self, timeout: std::time::Duration) -> Result<bool, StoreError>;
}

/// What an audit retention sweep deletes ([`Store::audit_cut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCut {
    /// The newest id to delete: every record with `id <= through_id` goes.
    pub through_id: u64,
    /// How many records that is.
    pub count: u64,
}

/// Which audit records to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// At most this many (newest first).
    pub limit: u32,
    /// Only ids below this (paging).
    pub before_id: Option<u64>,
    /// Only this target.
    pub target: Option<String>,
}

/// A persistence driver.
pub trait Store: Send + 'static {
    /// Reads everything the controller keeps in memory.
    fn load(&mut self) -> Result<StoreSnapshot, StoreError>;
    /// Applies `writes` in one transaction; returns once it is durable.
    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError>;

    // ---- replication: several controller processes on one database ----
    //
    // The engine's writer, per batch: `begin_exclusive`, `changes_since`
    // (replays the other replicas' batches), applies its own operations,
    // then `commit_exclusive` with its writes and its change row. The
    // defaults describe a store no other process writes: no lock, no log.

    /// Begins the exclusive write section: takes the database-wide write
    /// lock (PostgreSQL: `BEGIN`, then `SELECT pg_advisory_xact_lock(...)`;
    /// SQLite: an exclusive `flock` on `<db>-writer`, held until the commit,
    /// whose own transaction is `BEGIN IMMEDIATE`), so that at most one
    /// replica is between this and [`Store::commit_exclusive`] or
    /// [`Store::rollback_exclusive`]. In between, [`Store::load`],
    /// [`Store::load_presence`], [`Store::changes_since`] and
    /// [`Store::last_change_seq`] see every other replica's commits (on
    /// PostgreSQL they read inside that transaction; `apply` is not called
    /// in between, only `commit_exclusive`).
    fn begin_exclusive(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Inside the exclusive transaction: applies `writes` (their last one is
    /// usually the batch's [`Write::Change`]; a duplicate `seq` fails the
    /// commit) and commits, releasing the lock; returns once durable. On
    /// error the transaction is rolled back and the lock released too.
    fn commit_exclusive(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        self.apply(writes)
    }

    /// Ends the exclusive transaction without writing (releases the lock).
    fn rollback_exclusive(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The changes with `seq > after`, oldest first, at most `limit`. A
    /// first seq above `after + 1` means the log was pruned past `after`:
    /// the caller reloads everything.
    fn changes_since(&mut self, after: u64, limit: usize) -> Result<Vec<ChangeRecord>, StoreError> {
        let _ = (after, limit);
        Ok(Vec::new())
    }

    /// The newest seq in the log (0: none).
    fn last_change_seq(&mut self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Deletes the changes with `seq <= through` (the log stays bounded).
    fn prune_changes(&mut self, through: u64) -> Result<(), StoreError> {
        let _ = through;
        Ok(())
    }

    /// Upserts this replica's heartbeat row (its own short transaction) and
    /// returns every replica's row.
    fn heartbeat(&mut self, me: &ReplicaRecord) -> Result<Vec<ReplicaRecord>, StoreError> {
        Ok(vec![me.clone()])
    }

    /// Every `presence` row.
    fn load_presence(&mut self) -> Result<Vec<PresenceRecord>, StoreError> {
        Ok(Vec::new())
    }

    /// A listener woken by other replicas' commits, on its own connection;
    /// `None`: the engine polls [`Store::last_change_seq`] instead.
    fn change_listener(&mut self) -> Result<Option<Box<dyn ChangeListener>>, StoreError> {
        Ok(None)
    }

    /// Reads audit records, newest first.
    fn audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Reads the last uploaded value of each of a node's usage series.
    fn usage_counters(
        &mut self,
        node_id: u64,
    ) -> Result<Vec<usage::UsageCounterRecord>, StoreError>;
    /// Sums each usage series' buckets that start at or after `since_ms`.
    fn usage_sums(&mut self, since_ms: u64) -> Result<Vec<usage::UsageSum>, StoreError>;
    /// Reads anomaly events with their log sequence numbers, oldest first.
    fn events(&mut self, query: &EventQuery) -> Result<Vec<(u64, EventRecord)>, StoreError>;
    /// Reads the results of a task's runs.
    fn task_results(&mut self, task_id: &str) -> Result<Vec<tasks::TaskResultRecord>, StoreError>;
    /// Which audit records a retention sweep deletes: every record up to the
    /// newest one older than `older_than_ms` (`None`: no age limit), and
    /// every record beyond the newest `keep` (`None`: no count limit).
    /// `None` when nothing is to be deleted. Records are deleted by id
    /// prefix ([`Write::AuditPrune`]), so a record with an out-of-order time
    /// goes with its older neighbours.
    fn audit_cut(
        &mut self,
        older_than_ms: Option<u64>,
        keep: Option<u64>,
    ) -> Result<Option<AuditCut>, StoreError> {
        let _ = (older_than_ms, keep);
        Err(StoreError::Db(
            "this store driver does not implement audit retention (Store::audit_cut)".into(),
        ))
    }
    /// Checks that the database answers (a readiness probe): a trivial
    /// query, no write.
    fn ping(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The admin token's hash and the challenge key, which a start settles
    /// under the write lock (`serve`); drivers read just those rows.
    fn start_rows(&mut self) -> Result<challenges::StartRows, StoreError> {
        let snap = self.load()?;
        Ok(challenges::StartRows {
            admin_hash: snap.admin_hash,
            challenge_key: snap.challenge_key,
        })
    }
}

/// Network deletion and audit retention, run by each driver's tests.
#[cfg(test)]
pub(crate) mod ops_tests;

/// The behaviour every driver must have; run by each driver's tests.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn net(id: u64, name: &str, cidr: &str) -> NetworkRecord {
        NetworkRecord {
            id,
            name: name.into(),
            ipv4_cidr: cidr.parse().unwrap(),
            ipv6_prefix: Some("fd00:1::/48".parse().unwrap()),
            dns_domain: "weft.internal".into(),
            pow_difficulty: 8,
            created_at: 1,
            anomaly: None,
        }
    }

    fn node(id: u64, name: &str) -> NodeRecord {
        NodeRecord {
            id,
            node_key: NodeKey::from_bytes([id as u8; 32]),
            name: name.into(),
            hostname: Some("host".into()),
            tags: ["a".to_string()].into(),
            disabled: false,
            credential_hash: SecretHash::of(name),
            endpoints: vec!["192.0.2.1:51820".parse().unwrap()],
            last_seen: Some(5),
            seen_published: Some(4),
            created_at: 2,
            facts: Some(Box::new(HostFacts {
                kernel_version: Some("6.1.0".into()),
                cpu_cores: Some(4),
                ..HostFacts::default()
            })),
            facts_changed_ms: Some(2_000),
        }
    }

    fn member(node_id: u64, network_id: u64, last: u8) -> MembershipRecord {
        MembershipRecord {
            node_id,
            network_id,
            ipv4: Ipv4Addr::new(100, 64, 0, last),
            ipv6: None,
            token_id: None,
            joined_at: 3,
        }
    }

    pub(crate) fn store_suite<S: Store>(open: impl Fn() -> S) {
        let mut s = open();
        let empty = s.load().unwrap();
        assert_eq!(empty.map_version, 0);
        assert!(empty.admin_hash.is_none());

        let token = TokenRecord {
            id: 1,
            token_hash: SecretHash::of("t"),
            description: None,
            tags: BTreeSet::new(),
            networks: [1].into(),
            max_uses: Some(2),
            uses: 0,
            expires_at: 100,
            revoked: false,
            created_at: 1,
        };
        s.apply(&[
            Write::PutNetwork(net(1, "lab", "100.64.0.0/24")),
            Write::PutToken(token.clone()),
            Write::PutNode(node(1, "a")),
            Write::PutMembership(MembershipRecord {
                token_id: Some(1),
                ..member(1, 1, 2)
            }),
            Write::SetMapVersion(7),
            Write::SetAdminHash(SecretHash::of("admin")),
            Write::Audit(AuditRecord {
                id: 1,
                at_ms: 9,
                actor: "admin".into(),
                action: "network.create".into(),
                target: "lab".into(),
                detail: serde_json::json!({"cidr": "100.64.0.0/24"}),
            }),
        ])
        .unwrap();

        // A batch that violates uniqueness is rolled back as a whole.
        let err = s.apply(&[
            Write::PutNode(node(2, "b")),
            Write::PutMembership(member(2, 1, 2)),
        ]);
        assert!(err.is_err());

        drop(s);
        let mut s = open();
        let snap = s.load().unwrap();
        assert_eq!(snap.map_version, 7);
        assert_eq!(snap.admin_hash, Some(SecretHash::of("admin")));
        assert_eq!(snap.networks, vec![net(1, "lab", "100.64.0.0/24")]);
        assert_eq!(snap.nodes, vec![node(1, "a")]);
        assert_eq!(snap.memberships.len(), 1);
        assert_eq!(snap.tokens, vec![token.clone()]);
        assert_eq!(snap.max_audit_id, 1);

        // Upserts replace; deletes cascade to memberships.
        let mut renamed = node(1, "a2");
        renamed.disabled = true;
        renamed.facts = Some(Box::new(HostFacts {
            kernel_version: Some("6.8.0".into()),
            ..HostFacts::default()
        }));
        renamed.facts_changed_ms = Some(3_000);
        s.apply(&[
            Write::PutNode(renamed.clone()),
            Write::PutToken(TokenRecord { uses: 1, ..token }),
        ])
        .unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.nodes, vec![renamed]);
        assert_eq!(snap.tokens[0].uses, 1);
        s.apply(&[Write::DeleteNode(1)]).unwrap();
        let snap = s.load().unwrap();
        assert!(snap.nodes.is_empty() && snap.memberships.is_empty());

        // Relays: insert, update, unique names, delete.
        let relay = RelayRecord {
            id: 1,
            name: "fra1".into(),
            url: "https://relay.example.net".into(),
            token_hash: SecretHash::of("r"),
            tls_fingerprint: None,
            stun_port: None,
            created_at: 4,
            last_seen: None,
        };
        s.apply(&[Write::PutRelay(relay.clone())]).unwrap();
        let reported = RelayRecord {
            tls_fingerprint: Some(format!("sha256:{}", "a".repeat(64))),
            stun_port: Some(3478),
            last_seen: Some(9),
            ..relay.clone()
        };
        s.apply(&[Write::PutRelay(reported.clone())]).unwrap();
        assert_eq!(s.load().unwrap().relays, vec![reported]);
        let dup = RelayRecord {
            id: 2,
            token_hash: SecretHash::of("r2"),
            ..relay
        };
        assert!(s.apply(&[Write::PutRelay(dup)]).is_err());
        s.apply(&[Write::DeleteRelay(1)]).unwrap();
        assert!(s.load().unwrap().relays.is_empty());

        // Policy versions: the newest is loaded.
        assert!(s.load().unwrap().policy.is_none());
        let p1 = PolicyRecord {
            version: 1,
            text: "# one".into(),
            author: "admin".into(),
            at_ms: 5,
        };
        let p2 = PolicyRecord {
            version: 2,
            text: "# two".into(),
            ..p1.clone()
        };
        s.apply(&[Write::PutPolicy(p1.clone())]).unwrap();
        s.apply(&[Write::PutPolicy(p2.clone())]).unwrap();
        assert_eq!(s.load().unwrap().policy, Some(p2));
        assert!(
            s.apply(&[Write::PutPolicy(p1)]).is_err(),
            "versions are unique"
        );

        let audit = s
            .audit(&AuditQuery {
                limit: 10,
                before_id: None,
                target: Some("lab".into()),
            })
            .unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].detail["cidr"], "100.64.0.0/24");
        let none = s
            .audit(&AuditQuery {
                limit: 10,
                before_id: Some(1),
                target: None,
            })
            .unwrap();
        assert!(none.is_empty());
    }
}
