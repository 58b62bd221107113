//! Registration: `POST /v1/register/challenge`, then `POST /v1/register`.
//!
//! The handler checks what needs no state (challenge freshness, the signature
//! over `challenge || SHA-256(token)`, the proof-of-work bits) on the request's
//! own task, so those costs spread over all cores; the engine then checks the
//! token and allocates addresses, serialized with every other write.

use std::net::IpAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::{OsRng, RngCore as _};
use ring::hmac;
use subtle::ConstantTimeEq as _;
use weft_identity::{ProofOfWork, verify_signature};
use weft_proto::api::{
    API_VERSION, CHALLENGE_LEN, ChallengeResponse, REGISTER_SIGNATURE_CONTEXT, RegisterRequest,
    RegisterResponse, register_signed_message,
};

use super::{ApiJson, AppState, Peer};
use crate::clock;
use crate::error::ApiError;
use crate::model::ChallengeRefusal;
use crate::model::{Actor, ChallengedRegistration, Registered, Registration};
use crate::secret::{self, MAX_SECRET_LEN, NODE_PREFIX, SecretHash};
use crate::store::challenges::{ChallengeKey, ChallengeTag, TAG_LEN, UsedChallengeRecord};
use crate::validate;

/// Bytes of a challenge that are authenticated: issue time and a random nonce.
const BODY_LEN: usize = 16;
const _: () = assert!(BODY_LEN + TAG_LEN == CHALLENGE_LEN);
/// Domain separation for the MAC (v2: the issue time is Unix ms, shared by
/// every replica, not one process's monotonic clock).
const MAC_CONTEXT: &[u8] = b"weft-register-challenge-v2";
/// A challenge issued up to this far in the future (by a replica whose
/// clock is ahead) is still accepted.
const MAX_SKEW_MS: u64 = 5_000;

/// Stateless registration challenges, valid on every replica.
///
/// A challenge is `issued_ms (8 bytes, big endian, Unix ms) || nonce (8
/// random bytes) || HMAC-SHA256(key, context || those 16 bytes)[..16]`. The
/// key is kept in the database (created once, under the write lock, by the
/// first start: `serve`), so every replica issues and checks the same
/// challenges: one issued by replica A is accepted by B. Issuing one stores
/// nothing, and checking one needs only the key and the clock, so no number
/// of challenge requests can crowd out another client's.
///
/// Single use: a registration signs `challenge || SHA-256(token)` with the
/// node key, so a challenge cannot be moved to another key or token, but a
/// captured registration could be sent again while the challenge is fresh,
/// and a successful registration rotates the node's credential and returns
/// the new one. So the registration's batch records the challenge as used,
/// and refuses one already recorded
/// ([`ChallengedRegistration`](crate::model::ChallengedRegistration)): the
/// set lives in the state every replica shares, is replicated with the
/// registration, and is bounded (entries expire with the challenge; when
/// `max_used` are live the controller answers 503 rather than forget one
/// early). A failed registration uses nothing.
pub struct Challenges {
    key: hmac::Key,
    ttl: Duration,
    max_used: u32,
}

impl Challenges {
    /// Challenges with a random key (tests; a controller always uses
    /// [`Challenges::with_key`]).
    pub fn new(ttl: Duration, max_used: usize) -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self::with_key(&ChallengeKey(key), ttl, max_used)
    }

    /// Challenges MACed with `key`, valid for `ttl`, with at most `max_used`
    /// successful registrations remembered per `ttl`.
    pub fn with_key(key: &ChallengeKey, ttl: Duration, max_used: usize) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key.0),
            ttl,
            max_used: u32::try_from(max_used.max(1)).unwrap_or(u32::MAX),
        }
    }

    fn tag(&self, body: &[u8]) -> ChallengeTag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(MAC_CONTEXT);
        ctx.update(body);
        let full = ctx.sign();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Issues a challenge valid until `now_ms + ttl`. Stores nothing.
    pub fn issue(&self, now_ms: u64) -> [u8; CHALLENGE_LEN] {
        let mut c = [0u8; CHALLENGE_LEN];
        c[..8].copy_from_slice(&now_ms.to_be_bytes());
        OsRng.fill_bytes(&mut c[8..BODY_LEN]);
        let tag = self.tag(&c[..BODY_LEN]);
        c[BODY_LEN..].copy_from_slice(&tag);
        c
    }

    /// Checks the MAC and freshness; returns the challenge's tag and expiry
    /// (whether it was used is the registration batch's to decide).
    pub fn verify(
        &self,
        c: &[u8; CHALLENGE_LEN],
        now_ms: u64,
    ) -> Result<UsedChallengeRecord, ChallengeRefusal> {
        let tag = self.tag(&c[..BODY_LEN]);
        if !bool::from(tag.ct_eq(&c[BODY_LEN..])) {
            return Err(ChallengeRefusal::Forged);
        }
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&c[..8]);
        let issued = u64::from_be_bytes(ms);
        // Our own MAC on a time further ahead than the replicas' skew:
        // refuse it rather than trust it.
        if issued > now_ms.saturating_add(MAX_SKEW_MS) {
            return Err(ChallengeRefusal::Forged);
        }
        let expires_ms = issued.saturating_add(self.ttl_ms());
        if now_ms >= expires_ms {
            return Err(ChallengeRefusal::Expired);
        }
        Ok(UsedChallengeRecord { tag, expires_ms })
    }

    /// The lifetime of a challenge.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Live used challenges kept at most.
    pub fn max_used(&self) -> u32 {
        self.max_used
    }
}

/// Per-source rate limit of the unauthenticated endpoints: 429 with
/// `Retry-After` when a source has used up its burst.
pub(super) async fn limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    // The accept loop attaches the peer address; without it (in-process tests)
    // every request counts as one unspecified source.
    let ip = req
        .extensions()
        .get::<Peer>()
        .map_or(IpAddr::from([0u8; 4]), |c| c.0.ip());
    match st.limiter.check(ip, clock::now()) {
        Ok(()) => next.run(req).await,
        Err(wait) => ApiError::RateLimited {
            retry_after_secs: wait.as_secs().saturating_add(1),
        }
        .into_response(),
    }
}

pub(super) async fn challenge(
    State(st): State<AppState>,
) -> Result<Json<ChallengeResponse>, ApiError> {
    let c = st.challenges.issue(clock::now_unix_ms());
    Ok(Json(ChallengeResponse {
        challenge: URL_SAFE_NO_PAD.encode(c),
        expires_in_secs: st.challenges.ttl().as_secs(),
    }))
}

pub(super) fn decode_fixed<const N: usize>(
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
    let result = register_checked(&st, req).await;
    st.engine.metrics().registration(match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    });
    result
}

async fn register_checked(
    st: &AppState,
    req: RegisterRequest,
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
    if let Some(f) = &req.facts {
        validate::facts(f)?;
    }
    // Cheap checks first: a forged or stale challenge costs one HMAC.
    let used = st.challenges.verify(&challenge, clock::now_unix_ms())?;
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
    // Single use, in the batch: the signature binds the challenge to this
    // key and token, so only a replay of this very registration can
    // collide, on this replica or another.
    let op = ChallengedRegistration {
        challenge: used,
        max_used: st.challenges.max_used(),
        registration: Registration {
            node_key: req.node_key,
            token_hash: SecretHash::of(&req.token),
            pow_bits,
            name: req.name.clone(),
            hostname: req.hostname.clone(),
            facts: req.facts,
            credential_hash,
        },
    };
    let Registered { name, addresses } = st.engine.execute(Actor::Node(req.node_key), op).await?;
    Ok(Json(RegisterResponse {
        api_version: API_VERSION,
        node_key: req.node_key,
        name,
        credential,
        addresses,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);
    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn issuing_stores_nothing_and_a_fresh_challenge_verifies_on_any_holder_of_the_key() {
        let key = ChallengeKey([3; 32]);
        let a = Challenges::with_key(&key, TTL, 4);
        let b = Challenges::with_key(&key, TTL, 4);
        let c = a.issue(T0);
        let used = b.verify(&c, T0 + 59_000).unwrap();
        assert_eq!(used.expires_ms, T0 + 60_000);
        assert_eq!(a.verify(&c, T0).unwrap(), used, "the same tag everywhere");
        assert_ne!(a.issue(T0), c, "random nonce");
        // A replica whose clock is a little behind the issuer's accepts it.
        assert!(b.verify(&c, T0 - MAX_SKEW_MS).is_ok());
    }

    #[test]
    fn forged_tampered_and_expired_challenges_are_refused() {
        let ch = Challenges::new(TTL, 4);
        let c = ch.issue(T0);
        // Every bit matters: time, nonce and MAC.
        for byte in [0, 7, 8, 15, 16, 31] {
            let mut bad = c;
            bad[byte] ^= 1;
            assert_eq!(
                ch.verify(&bad, T0),
                Err(ChallengeRefusal::Forged),
                "byte {byte}"
            );
        }
        // Random bytes, and a challenge under another key (another database).
        let mut random = [0u8; CHALLENGE_LEN];
        OsRng.fill_bytes(&mut random);
        assert_eq!(ch.verify(&random, T0), Err(ChallengeRefusal::Forged));
        let other = Challenges::new(TTL, 4);
        assert_eq!(
            ch.verify(&other.issue(T0), T0),
            Err(ChallengeRefusal::Forged)
        );
        // Moving the issue time forward needs a new MAC.
        let later = ch.issue(T0 + 30_000);
        let mut moved = c;
        moved[..8].copy_from_slice(&later[..8]);
        assert_eq!(
            ch.verify(&moved, T0 + 61_000),
            Err(ChallengeRefusal::Forged)
        );
        assert_eq!(ch.verify(&c, T0 + 60_000), Err(ChallengeRefusal::Expired));
        // Issued further ahead than the skew allows.
        assert_eq!(
            ch.verify(&ch.issue(T0 + MAX_SKEW_MS + 1), T0),
            Err(ChallengeRefusal::Forged)
        );
    }
}
