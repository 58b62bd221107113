//! Registration challenges used once across replicas.
//!
//! The registration handler checks a challenge's MAC and freshness (with the
//! key every replica shares, `crate::api::register`); whether it was already
//! used is decided here, in the batch, with the registration itself
//! ([`ChallengedRegistration`]): the challenge's tag joins [`World`]'s used
//! set in the same batch as the node, and the change that carries the
//! registration to the other replicas carries it too. A challenge used on
//! one replica is therefore refused on every other, and no two replicas can
//! use one at the same time (batches are serialized by the write lock).
//!
//! The set is bounded: a tag is kept until its challenge expires, plus
//! [`KEEP_AFTER_EXPIRY_MS`] for the replicas' clock skew, and a registration
//! that would hold more than its `max_used` entries is refused (503) rather
//! than forget a challenge early. Pruning is decided by the batch's time, so
//! every replica replaying the batch prunes the same entries.

use std::collections::{BTreeSet, HashMap};

use super::{Actor, Batch, Registered, Registration, World};
use crate::error::ApiError;
use crate::store::Write;
use crate::store::challenges::{ChallengeTag, ChallengeWrite, UsedChallengeRecord};

/// How long a used challenge is kept after it expired: a later batch on a
/// replica whose clock is behind by less than this still sees the
/// challenge as expired, never as unused.
pub const KEEP_AFTER_EXPIRY_MS: u64 = 60_000;

/// Why a challenge is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeRefusal {
    /// Not issued by this installation (forged, tampered, or from another
    /// database's key).
    Forged,
    /// Older than its lifetime.
    Expired,
    /// Already used by a registration (on any replica).
    Used,
    /// Too many registrations completed within one challenge lifetime.
    Full,
}

impl From<ChallengeRefusal> for ApiError {
    fn from(r: ChallengeRefusal) -> Self {
        let message = match r {
            ChallengeRefusal::Forged => {
                "challenge was not issued by this controller; request a new one"
            }
            ChallengeRefusal::Expired => "challenge has expired; request a new one",
            ChallengeRefusal::Used => "challenge was already used; request a new one",
            ChallengeRefusal::Full => {
                return ApiError::Unavailable {
                    code: "too_many_registrations",
                    message: "too many registrations within one minute; retry in a minute".into(),
                };
            }
        };
        ApiError::invalid("invalid_challenge", message)
    }
}

/// A registration on a checked challenge: the registration runs only if the
/// challenge is unused, and uses it if it succeeds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChallengedRegistration {
    /// The challenge's tag and expiry.
    pub challenge: UsedChallengeRecord,
    /// At most this many used challenges kept (the committing replica's
    /// setting, carried so a replay decides the same).
    pub max_used: u32,
    /// The registration.
    pub registration: Registration,
}

operation!(ChallengedRegistration => Registered, |op, w, batch, actor, now_ms| {
    w.register_challenged(batch, actor, op, now_ms)
});

/// The used challenges, by tag and by expiry.
#[derive(Debug, Default)]
pub(super) struct UsedChallenges {
    // Lookup only; never iterated.
    by_tag: HashMap<ChallengeTag, u64>,
    by_expiry: BTreeSet<(u64, ChallengeTag)>,
}

impl UsedChallenges {
    /// From the stored rows.
    pub(super) fn load(rows: Vec<UsedChallengeRecord>) -> Self {
        let mut s = Self::default();
        for r in rows {
            s.insert(r);
        }
        s
    }

    fn insert(&mut self, r: UsedChallengeRecord) {
        if let Some(old) = self.by_tag.insert(r.tag, r.expires_ms) {
            self.by_expiry.remove(&(old, r.tag));
        }
        self.by_expiry.insert((r.expires_ms, r.tag));
    }

    /// How many expire at or before `through_ms`.
    fn expired(&self, through_ms: u64) -> usize {
        self.by_expiry.range(..=(through_ms, [u8::MAX; 16])).count()
    }

    fn prune(&mut self, through_ms: u64) {
        let keep = self
            .by_expiry
            .split_off(&(through_ms.saturating_add(1), [0u8; 16]));
        for (_, tag) in std::mem::replace(&mut self.by_expiry, keep) {
            self.by_tag.remove(&tag);
        }
    }

    /// How many are held.
    pub(super) fn len(&self) -> usize {
        self.by_tag.len()
    }
}

impl World {
    /// Whether the challenge with `tag` was used (and is still remembered).
    pub fn challenge_used(&self, tag: &ChallengeTag) -> bool {
        self.used_challenges.by_tag.contains_key(tag)
    }

    /// How many used challenges are remembered.
    pub fn used_challenge_count(&self) -> usize {
        self.used_challenges.len()
    }

    fn register_challenged(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        op: ChallengedRegistration,
        now_ms: u64,
    ) -> Result<Registered, ApiError> {
        let c = op.challenge;
        if c.expires_ms <= now_ms {
            return Err(ChallengeRefusal::Expired.into());
        }
        if self.challenge_used(&c.tag) {
            return Err(ChallengeRefusal::Used.into());
        }
        let through = now_ms.saturating_sub(KEEP_AFTER_EXPIRY_MS);
        let expired = self.used_challenges.expired(through);
        let max = usize::try_from(op.max_used.max(1)).unwrap_or(usize::MAX);
        if self.used_challenges.len() - expired >= max {
            return Err(ChallengeRefusal::Full.into());
        }
        let out = self.apply(batch, actor, op.registration, now_ms)?;
        if expired > 0 {
            self.used_challenges.prune(through);
            batch.writes.push(Write::Challenge(ChallengeWrite::Prune {
                through_ms: through,
            }));
        }
        self.used_challenges.insert(c);
        batch.writes.push(Write::Challenge(ChallengeWrite::Use(c)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
