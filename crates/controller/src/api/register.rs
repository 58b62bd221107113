//! Registration: `POST /v1/register/challenge`, then `POST /v1/register`.
//!
//! The handler checks what needs no state (challenge freshness, the signature
//! over `challenge || SHA-256(token)`, the proof-of-work bits) on the request's
//! own task, so those costs spread over all cores; the engine then checks the
//! token and allocates addresses, serialized with every other write.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::{OsRng, RngCore as _};
use weft_identity::{ProofOfWork, verify_signature};
use weft_proto::api::{
    API_VERSION, CHALLENGE_LEN, ChallengeResponse, REGISTER_SIGNATURE_CONTEXT, RegisterRequest,
    RegisterResponse, register_signed_message,
};

use super::{ApiJson, AppState};
use crate::clock;
use crate::error::ApiError;
use crate::model::{Actor, Op, Output, Registration};
use crate::secret::{self, MAX_SECRET_LEN, NODE_PREFIX, SecretHash};
use crate::validate;

/// Outstanding challenges: random, single use, short-lived, bounded in number.
pub struct Challenges {
    // Lookup and retain only; never iterated in an order that matters.
    map: Mutex<HashMap<[u8; CHALLENGE_LEN], Instant>>,
    ttl: Duration,
    cap: usize,
}

impl Challenges {
    /// An empty set.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
            cap,
        }
    }

    /// Issues a new challenge valid until `now + ttl`.
    pub fn issue(&self, now: Instant) -> Result<[u8; CHALLENGE_LEN], ApiError> {
        let mut c = [0u8; CHALLENGE_LEN];
        OsRng.fill_bytes(&mut c);
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= self.cap {
            map.retain(|_, expiry| *expiry > now);
        }
        if map.len() >= self.cap {
            return Err(ApiError::Unavailable {
                code: "too_many_challenges",
                message: "too many registrations in flight; retry in a minute".into(),
            });
        }
        map.insert(c, now + self.ttl);
        Ok(c)
    }

    /// Consumes a challenge; `false` if unknown, used or expired.
    pub fn consume(&self, c: &[u8; CHALLENGE_LEN], now: Instant) -> bool {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(c).is_some_and(|expiry| expiry > now)
    }

    /// The lifetime of a challenge.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

pub(super) async fn challenge(
    State(st): State<AppState>,
) -> Result<Json<ChallengeResponse>, ApiError> {
    let c = st.challenges.issue(clock::now())?;
    Ok(Json(ChallengeResponse {
        challenge: URL_SAFE_NO_PAD.encode(c),
        expires_in_secs: st.challenges.ttl().as_secs(),
    }))
}

fn decode_fixed<const N: usize>(
    s: &str,
    code: &'static str,
    what: &str,
) -> Result<[u8; N], ApiError> {
    let bad = || {
        ApiError::invalid(
            code,
            format!("{what} must be {N} bytes of unpadded URL-safe base64"),
        )
    };
    if s.len() > N * 2 {
        return Err(bad());
    }
    URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(bad)
}

pub(super) async fn register(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    if req.token.is_empty() || req.token.len() > MAX_SECRET_LEN {
        return Err(ApiError::InvalidToken);
    }
    let challenge: [u8; CHALLENGE_LEN] =
        decode_fixed(&req.challenge, "invalid_challenge", "challenge")?;
    let signature: [u8; 64] = decode_fixed(&req.signature, "invalid_signature", "signature")?;
    if let Some(name) = &req.name {
        validate::name("node", name)?;
    }
    if let Some(h) = &req.hostname {
        validate::hostname(h)?;
    }
    if !st.challenges.consume(&challenge, clock::now()) {
        return Err(ApiError::invalid(
            "invalid_challenge",
            "challenge is unknown, expired or already used; request a new one",
        ));
    }
    let message = register_signed_message(&challenge, &req.token);
    verify_signature(
        &req.node_key,
        REGISTER_SIGNATURE_CONTEXT,
        &message,
        &signature,
    )
    .map_err(|_| ApiError::BadSignature)?;
    let pow_bits = ProofOfWork {
        nonce: req.pow_nonce,
    }
    .achieved(&req.node_key);
    let (credential, credential_hash) = secret::generate(NODE_PREFIX, &mut OsRng);
    let op = Op::Register(Registration {
        node_key: req.node_key,
        token_hash: SecretHash::of(&req.token),
        pow_bits,
        name: req.name.clone(),
        hostname: req.hostname.clone(),
        credential_hash,
    });
    match st.engine.execute(Actor::Node(req.node_key), op).await? {
        Output::Registered { name, addresses } => Ok(Json(RegisterResponse {
            api_version: API_VERSION,
            node_key: req.node_key,
            name,
            credential,
            addresses,
        })),
        _ => Err(ApiError::Internal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_single_use_expiring_and_bounded() {
        let t0 = clock::now();
        let ch = Challenges::new(Duration::from_secs(60), 2);
        let a = ch.issue(t0).unwrap();
        assert!(ch.consume(&a, t0));
        assert!(!ch.consume(&a, t0), "single use");
        let b = ch.issue(t0).unwrap();
        assert!(!ch.consume(&b, t0 + Duration::from_secs(61)), "expired");
        ch.issue(t0).unwrap();
        ch.issue(t0).unwrap();
        assert_eq!(ch.issue(t0).unwrap_err().code(), "too_many_challenges");
        // Expired ones are purged to make room.
        assert!(ch.issue(t0 + Duration::from_secs(61)).is_ok());
    }
}
