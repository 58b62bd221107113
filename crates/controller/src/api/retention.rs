//! Audit retention: a periodic sweep that deletes audit records older than
//! `--audit-retain-days` and beyond the newest `--audit-retain-count`,
//! audited as `audit.prune` with the number deleted ([`PruneAudit`]).
//!
//! The store picks the cut ([`crate::store::Store::audit_cut`]) on the
//! writer's thread; the deletion and its own audit record are one
//! operation, so one transaction. Several replicas each run the sweep: one
//! that runs after another finds nothing due; two that pick the same cut at
//! the same moment delete the rows once and may both record the count.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::clock;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::model::{Actor, PruneAudit};

/// Days an audit record is kept by default: 400 (a year of history plus
/// a margin for an annual review).
pub const DEFAULT_RETAIN_DAYS: u64 = 400;
/// Audit records kept at most by default: 1,000,000 (a few hundred MB of
/// SQLite at most; a busy fleet of 10,000 nodes writes well under that in
/// a year of admin and node events).
pub const DEFAULT_RETAIN_COUNT: u64 = 1_000_000;
/// How often the sweep runs (the first run is at start).
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// What audit records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// Records older than this go (`None`: kept whatever their age).
    pub max_age: Option<Duration>,
    /// At most this many records are kept, the newest (`None`: no limit).
    pub max_count: Option<u64>,
    /// How often the sweep runs.
    pub every: Duration,
}

impl Default for AuditRetention {
    fn default() -> Self {
        Self {
            max_age: Some(Duration::from_secs(DEFAULT_RETAIN_DAYS * 86_400)),
            max_count: Some(DEFAULT_RETAIN_COUNT),
            every: SWEEP_EVERY,
        }
    }
}

impl AuditRetention {
    /// From the command line's values, where 0 means "no limit".
    pub fn from_flags(retain_days: u64, retain_count: u64) -> Self {
        Self {
            max_age: (retain_days > 0)
                .then(|| Duration::from_secs(retain_days.saturating_mul(86_400))),
            max_count: (retain_count > 0).then_some(retain_count),
            every: SWEEP_EVERY,
        }
    }
}

/// One sweep at `now_ms`: deletes what is due and returns how many records
/// went (0: nothing was due, or no limit is set).
pub async fn sweep_once(
    engine: &Engine,
    cfg: AuditRetention,
    now_ms: u64,
) -> Result<u64, ApiError> {
    if cfg.max_age.is_none() && cfg.max_count.is_none() {
        return Ok(0);
    }
    let older_than_ms = cfg
        .max_age
        .map(|age| now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)));
    let keep = cfg.max_count;
    let Some(cut) = engine
        .read_store(move |s| s.audit_cut(older_than_ms, keep))
        .await?
    else {
        return Ok(0);
    };
    let op = PruneAudit {
        through_id: cut.through_id,
        count: cut.count,
        older_than_ms,
        keep,
    };
    engine.execute(Actor::System, op).await?;
    Ok(cut.count)
}

/// Runs [`sweep_once`] every `cfg.every` (the first at once) until
/// `shutdown` turns true.
pub async fn sweep(engine: Engine, cfg: AuditRetention, shutdown: watch::Receiver<bool>) {
    if cfg.max_age.is_none() && cfg.max_count.is_none() {
        info!("audit retention is off: the audit log is kept whole");
        return;
    }
    super::every(cfg.every, shutdown, || async {
        match sweep_once(&engine, cfg, clock::now_unix_ms()).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "audit retention: deleted old audit records"),
            Err(e) => warn!(error = %e, "audit retention sweep failed; retrying at the next one"),
        }
    })
    .await;
}
