//! Join tokens.

use std::collections::BTreeSet;

use serde_json::json;
use weft_proto::api::TokenInfo;

use crate::error::ApiError;
use crate::secret::SecretHash;
use crate::store::{TokenRecord, Write};

use super::*;

/// A validated request to create a join token.
#[derive(Debug, Clone)]
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

impl World {
    /// Token info for the admin API.
    pub fn token_info(&self, t: &TokenRecord, now_ms: u64) -> TokenInfo {
        let state = match token_state(t, now_ms) {
            Ok(()) => "active",
            Err(ApiError::TokenGone { code, .. }) => code.trim_start_matches("token_"),
            Err(_) => "invalid",
        };
        let mut networks: Vec<String> = t
            .networks
            .iter()
            .filter_map(|id| self.networks.get(id).map(|n| n.rec.name.clone()))
            .collect();
        networks.sort();
        TokenInfo {
            id: t.id,
            networks,
            tags: t.tags.iter().cloned().collect(),
            max_uses: t.max_uses,
            uses: t.uses,
            expires_at_ms: secs_to_ms(t.expires_at),
            created_at_ms: secs_to_ms(t.created_at),
            state: state.to_owned(),
            description: t.description.clone(),
        }
    }

    /// All tokens, by id.
    pub fn tokens_info(&self, now_ms: u64) -> Vec<TokenInfo> {
        self.tokens
            .values()
            .map(|t| self.token_info(t, now_ms))
            .collect()
    }

    pub(super) fn create_token(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        t: NewToken,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        let mut networks = BTreeSet::new();
        for name in &t.networks {
            let id = self.network_by_name.get(name).ok_or_else(|| {
                ApiError::not_found("network_not_found", format!("no network named {name:?}"))
            })?;
            networks.insert(*id);
        }
        let id = self.next_token_id;
        self.next_token_id += 1;
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
        let info = self.token_info(&rec, now_ms);
        self.token_by_hash.insert(rec.token_hash, id);
        self.tokens.insert(id, rec);
        self.audit(
            batch,
            actor,
            "token.create",
            format!("token:{id}"),
            json!({"networks": info.networks, "tags": info.tags, "max_uses": info.max_uses, "expires_at_ms": info.expires_at_ms}),
            now_ms,
        );
        Ok(Output::Token(info))
    }

    pub(super) fn revoke_token(
        &mut self,
        batch: &mut Batch,
        actor: &Actor,
        id: u64,
        now_ms: u64,
    ) -> Result<Output, ApiError> {
        let t = self.tokens.get_mut(&id).ok_or_else(|| {
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
        Ok(Output::Token(self.token_info(&rec, now_ms)))
    }
}

pub(super) fn token_gone(code: &'static str, message: &str) -> ApiError {
    ApiError::TokenGone {
        code,
        message: message.to_owned(),
    }
}

/// Whether a token can be used now.
pub(super) fn token_state(t: &TokenRecord, now_ms: u64) -> Result<(), ApiError> {
    if t.revoked {
        return Err(token_gone("token_revoked", "join token was revoked"));
    }
    if secs(now_ms) >= t.expires_at {
        return Err(token_gone("token_expired", "join token has expired"));
    }
    if t.max_uses.is_some_and(|max| t.uses >= max) {
        return Err(token_gone("token_exhausted", "join token has been used up"));
    }
    Ok(())
}
