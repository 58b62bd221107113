//! Join tokens: creation, revocation, and whether one can be used now (a
//! registration consumes a use: see `nodes`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::json;

use super::{Actor, Batch, World, secs, secs_to_ms};
use crate::error::ApiError;
use crate::secret::SecretHash;
use crate::store::{TokenRecord, Write};

/// Admin: create a join token (validated request).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewToken {
    /// Network names.
    pub networks: Vec<String>,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// Unix seconds.
    pub expires_at: u64,
    /// `None` = unlimited.
    pub max_uses: Option<u32>,
    /// Free text.
    pub description: Option<String>,
    /// Hash of the generated secret.
    pub hash: SecretHash,
}

/// The join tokens, by id, with their index by secret hash; ids are handed
/// out here.
#[derive(Debug, Default)]
pub(super) struct Tokens {
    rows: BTreeMap<u64, TokenRecord>,
    // Lookup only, never iterated.
    by_hash: HashMap<SecretHash, u64>,
    next_id: u64,
}

impl Tokens {
    /// From the stored rows.
    pub(super) fn load(rows: Vec<TokenRecord>) -> Tokens {
        let mut tokens = Tokens {
            next_id: 1,
            ..Tokens::default()
        };
        for t in rows {
            tokens.next_id = tokens.next_id.max(t.id + 1);
            tokens.insert(t);
        }
        tokens
    }

    fn insert(&mut self, t: TokenRecord) {
        self.by_hash.insert(t.token_hash, t.id);
        self.rows.insert(t.id, t);
    }

    /// The token whose secret hashes to `hash`.
    pub(super) fn by_hash(&self, hash: &SecretHash) -> Option<&TokenRecord> {
        self.by_hash.get(hash).and_then(|id| self.rows.get(id))
    }

    /// Counts one use of token `id` (a registration that joined a network);
    /// returns the row to persist.
    pub(super) fn count_use(&mut self, id: u64) -> Option<&TokenRecord> {
        let t = self.rows.get_mut(&id)?;
        t.uses = t.uses.saturating_add(1);
        Some(t)
    }

    /// Network `net` is gone: takes it out of every token that grants it
    /// (a token left granting no network is revoked); returns the rows to
    /// persist.
    pub(super) fn drop_network(&mut self, net: u64) -> Vec<TokenRecord> {
        let mut out = Vec::new();
        for t in self.rows.values_mut() {
            if t.networks.remove(&net) {
                if t.networks.is_empty() {
                    t.revoked = true;
                }
                out.push(t.clone());
            }
        }
        out
    }
}

/// Admin: revoke a join token, by id.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct RevokeToken(pub u64);

/// Whether a token can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// It can.
    Active,
    /// An admin revoked it.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Every use is spent.
    Exhausted,
}

impl TokenStatus {
    /// Of `t` at `now_ms`.
    pub fn of(t: &TokenRecord, now_ms: u64) -> TokenStatus {
        if t.revoked {
            TokenStatus::Revoked
        } else if secs(now_ms) >= t.expires_at {
            TokenStatus::Expired
        } else if t.max_uses.is_some_and(|max| t.uses >= max) {
            TokenStatus::Exhausted
        } else {
            TokenStatus::Active
        }
    }

    /// The name the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Active => "active",
            TokenStatus::Revoked => "revoked",
            TokenStatus::Expired => "expired",
            TokenStatus::Exhausted => "exhausted",
        }
    }

    /// `Ok` if a registration may use the token, else why not.
    pub(super) fn usable(self) -> Result<(), ApiError> {
        let (code, message) = match self {
            TokenStatus::Active => return Ok(()),
            TokenStatus::Revoked => ("token_revoked", "join token was revoked"),
            TokenStatus::Expired => ("token_expired", "join token has expired"),
            TokenStatus::Exhausted => ("token_exhausted", "join token has been used up"),
        };
        Err(ApiError::TokenGone {
            code,
            message: message.to_owned(),
        })
    }
}

/// A token as an operation left it, or a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The row.
    pub rec: TokenRecord,
    /// Its networks' names, sorted.
    pub networks: Vec<String>,
    /// Whether it can be used (at the time of the operation or listing).
    pub status: TokenStatus,
}

operation!(NewToken => Token, |op, w, batch, actor, now_ms| {
    w.create_token(batch, actor, op, now_ms)
});

operation!(RevokeToken => Token, |op, w, batch, actor, now_ms| {
    w.revoke_token(batch, actor, op.0, now_ms)
});

impl World {
    /// `t` with its networks' names and its status at `now_ms`.
    pub fn token(&self, t: &TokenRecord, now_ms: u64) -> Token {
        let mut networks: Vec<String> = t
            .networks
            .iter()
            .filter_map(|id| self.networks.get(id).map(|n| n.rec.name.clone()))
            .collect();
        networks.sort();
        Token {
            rec: t.clone(),
            networks,
            status: TokenStatus::of(t, now_ms),
        }
    }

    /// All tokens, by id.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> + '_ {
        self.tokens.rows.values()
    }

    fn create_token(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        t: NewToken,
        now_ms: u64,
    ) -> Result<Token, ApiError> {
        let mut networks = BTreeSet::new();
        for name in &t.networks {
            let id = self.networks.id_by_name(name).ok_or_else(|| {
                ApiError::not_found("network_not_found", format!("no network named {name:?}"))
            })?;
            networks.insert(id);
        }
        let id = self.tokens.next_id;
        self.tokens.next_id += 1;
        let rec = TokenRecord {
            id,
            token_hash: t.hash,
            description: t.description,
            tags: t.tags,
            networks,
            max_uses: t.max_uses,
            uses: 0,
            expires_at: t.expires_at,
            revoked: false,
            created_at: secs(now_ms),
        };
        batch.writes.push(Write::PutToken(rec.clone()));
        let token = self.token(&rec, now_ms);
        self.tokens.insert(rec);
        let r = &token.rec;
        self.audit(
            batch,
            actor,
            "token.create",
            format!("token:{id}"),
            json!({"networks": token.networks, "tags": r.tags, "max_uses": r.max_uses, "expires_at_ms": secs_to_ms(r.expires_at)}),
            now_ms,
        );
        Ok(token)
    }

    fn revoke_token(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        id: u64,
        now_ms: u64,
    ) -> Result<Token, ApiError> {
        let t = self.tokens.rows.get_mut(&id).ok_or_else(|| {
            ApiError::not_found("token_not_found", format!("no token with id {id}"))
        })?;
        t.revoked = true;
        let rec = t.clone();
        batch.writes.push(Write::PutToken(rec.clone()));
        self.audit(
            batch,
            actor,
            "token.revoke",
            format!("token:{id}"),
            json!({}),
            now_ms,
        );
        Ok(self.token(&rec, now_ms))
    }
}
