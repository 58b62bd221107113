//! Registration: `POST /v1/register/challenge`, then `POST /v1/register`.
//!
//! The handler checks what needs no state (challenge freshness, the signature
//! over `challenge || SHA-256(token)`, the proof-of-work bits) on the request's
//! own task, so those costs spread over all cores; the engine then checks the
//! token and allocates addresses, serialized with every other write.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
use crate::model::{Actor, Registered, Registration};
use crate::secret::{self, MAX_SECRET_LEN, NODE_PREFIX, SecretHash};
use crate::validate;

/// Bytes of a challenge that are authenticated: issue time and a random nonce.
const BODY_LEN: usize = 16;
/// Bytes of HMAC-SHA256 kept in a challenge (128 bits).
const TAG_LEN: usize = CHALLENGE_LEN - BODY_LEN;
/// Domain separation for the MAC.
const MAC_CONTEXT: &[u8] = b"weft-register-challenge-v1";

/// A challenge's identity in the replay set.
type Tag = [u8; TAG_LEN];

/// Why a challenge is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeRefusal {
    /// Not issued by this controller process (forged, tampered, or issued before
    /// a restart).
    Forged,
    /// Older than its lifetime.
    Expired,
    /// Already used by a registration.
    Used,
    /// Too many registrations completed within one challenge lifetime.
    Full,
}

impl From<ChallengeRefusal> for ApiError {
    fn from(r: ChallengeRefusal) -> Self {
        let message = match r {
            ChallengeRefusal::Forged => {
                "challenge was not issued by this controller (or it restarted since); request a new one"
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

/// Stateless registration challenges.
///
/// A challenge is `issued_ms (8 bytes, big endian, on this process's monotonic
/// clock) || nonce (8 random bytes) || HMAC-SHA256(key, context || those 16
/// bytes)[..16]`, with a key made at start and never stored: issuing one stores
/// nothing, and checking one needs only the key and the clock, so no number of
/// challenge requests can crowd out another client's. A restart invalidates the
/// challenges in flight (clients ask again, as they did when challenges lived
/// in memory).
///
/// Single use: a registration signs `challenge || SHA-256(token)` with the node
/// key, so a challenge cannot be moved to another key or token, but a captured
/// registration could be sent again while the challenge is fresh, and a
/// successful registration rotates the node's credential and returns the new
/// one. So a challenge is reserved (by its MAC) once its MAC, freshness and
/// signature check, kept if the registration succeeds, and released if it fails
/// (replaying a failed registration can gain nothing the first attempt did not).
/// The set therefore only holds challenges of successful registrations (which
/// need a valid join token) younger than the lifetime, plus those in flight; it
/// is bounded, and when full the controller answers 503 rather than forget a
/// challenge early.
pub struct Challenges {
    key: hmac::Key,
    epoch: Instant,
    ttl: Duration,
    used: Mutex<Used>,
    max_used: usize,
}

#[derive(Default)]
struct Used {
    // Lookup only; never iterated in an order that matters.
    by_tag: HashMap<Tag, Instant>,
    // (tag, expiry) in reservation order, which is expiry order up to the
    // lifetime; may name tags already released.
    queue: VecDeque<(Tag, Instant)>,
}

impl Challenges {
    /// Challenges valid for `ttl`, with at most `max_used` successful
    /// registrations remembered per `ttl`.
    pub fn new(ttl: Duration, max_used: usize) -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            epoch: clock::now(),
            ttl,
            used: Mutex::new(Used::default()),
            max_used: max_used.max(1),
        }
    }

    fn tag(&self, body: &[u8]) -> Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(MAC_CONTEXT);
        ctx.update(body);
        let full = ctx.sign();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }

    /// Issues a challenge valid until `now + ttl`. Stores nothing.
    pub fn issue(&self, now: Instant) -> [u8; CHALLENGE_LEN] {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        let mut c = [0u8; CHALLENGE_LEN];
        c[..8].copy_from_slice(&ms.to_be_bytes());
        OsRng.fill_bytes(&mut c[8..BODY_LEN]);
        let tag = self.tag(&c[..BODY_LEN]);
        c[BODY_LEN..].copy_from_slice(&tag);
        c
    }

    /// Checks the MAC and freshness; returns the challenge's tag and expiry.
    pub fn verify(
        &self,
        c: &[u8; CHALLENGE_LEN],
        now: Instant,
    ) -> Result<(Tag, Instant), ChallengeRefusal> {
        let tag = self.tag(&c[..BODY_LEN]);
        if !bool::from(tag.ct_eq(&c[BODY_LEN..])) {
            return Err(ChallengeRefusal::Forged);
        }
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&c[..8]);
        let issued = self
            .epoch
            .checked_add(Duration::from_millis(u64::from_be_bytes(ms)))
            .ok_or(ChallengeRefusal::Forged)?;
        let expiry = issued + self.ttl;
        // Issued in the future cannot happen with our own MAC on a monotonic
        // clock; refuse it rather than trust it.
        if issued > now {
            return Err(ChallengeRefusal::Forged);
        }
        if now >= expiry {
            return Err(ChallengeRefusal::Expired);
        }
        Ok((tag, expiry))
    }

    /// Marks a verified challenge used. Dropping the returned reservation
    /// without [`Reservation::keep`] releases it.
    pub fn reserve(
        &self,
        c: &[u8; CHALLENGE_LEN],
        now: Instant,
    ) -> Result<Reservation<'_>, ChallengeRefusal> {
        let (tag, expiry) = self.verify(c, now)?;
        let mut used = self.lock();
        while let Some(&(t, exp)) = used.queue.front() {
            if exp > now {
                break;
            }
            used.queue.pop_front();
            if used.by_tag.get(&t).is_some_and(|e| *e <= now) {
                used.by_tag.remove(&t);
            }
        }
        if used.by_tag.contains_key(&tag) {
            return Err(ChallengeRefusal::Used);
        }
        if used.by_tag.len() >= self.max_used {
            return Err(ChallengeRefusal::Full);
        }
        // Released tags leave stale queue entries; compact now and then so the
        // queue stays within twice the set.
        if used.queue.len() >= 2 * self.max_used {
            let Used { by_tag, queue } = &mut *used;
            queue.retain(|(t, _)| by_tag.contains_key(t));
        }
        used.by_tag.insert(tag, expiry);
        used.queue.push_back((tag, expiry));
        Ok(Reservation {
            set: self,
            tag,
            keep: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Used> {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lifetime of a challenge.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// A challenge marked used while its registration runs.
pub struct Reservation<'a> {
    set: &'a Challenges,
    tag: Tag,
    keep: bool,
}

impl Reservation<'_> {
    /// The registration succeeded: the challenge stays used until it expires.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.set.lock().by_tag.remove(&self.tag);
        }
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
    let c = st.challenges.issue(clock::now());
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
    st.challenges.verify(&challenge, clock::now())?;
    let message = register_signed_message(&challenge, &req.token);
    verify_signature(
        &req.node_key,
        REGISTER_SIGNATURE_CONTEXT,
        &message,
        &signature,
    )
    .map_err(|_| ApiError::BadSignature)?;
    // Single use, from here: the signature binds the challenge to this key and
    // token, so only a replay of this very registration can collide.
    let reservation = st.challenges.reserve(&challenge, clock::now())?;
    let pow_bits = ProofOfWork {
        nonce: req.pow_nonce,
    }
    .achieved(&req.node_key);
    let (credential, credential_hash) = secret::generate(NODE_PREFIX, &mut OsRng);
    let op = Registration {
        node_key: req.node_key,
        token_hash: SecretHash::of(&req.token),
        pow_bits,
        name: req.name.clone(),
        hostname: req.hostname.clone(),
        facts: req.facts,
        credential_hash,
    };
    let Registered { name, addresses } = st.engine.execute(Actor::Node(req.node_key), op).await?;
    reservation.keep();
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

    #[test]
    fn issuing_stores_nothing_and_a_fresh_challenge_verifies() {
        let ch = Challenges::new(TTL, 4);
        let t0 = clock::now();
        for _ in 0..100_000 {
            ch.issue(t0);
        }
        assert!(ch.lock().by_tag.is_empty() && ch.lock().queue.is_empty());
        let c = ch.issue(t0);
        assert!(ch.verify(&c, t0 + Duration::from_secs(59)).is_ok());
        assert_ne!(ch.issue(t0), c, "random nonce");
    }

    #[test]
    fn forged_tampered_and_expired_challenges_are_refused() {
        let ch = Challenges::new(TTL, 4);
        let t0 = clock::now();
        let c = ch.issue(t0);
        // Every bit matters: time, nonce and MAC.
        for byte in [0, 7, 8, 15, 16, 31] {
            let mut bad = c;
            bad[byte] ^= 1;
            assert_eq!(
                ch.verify(&bad, t0),
                Err(ChallengeRefusal::Forged),
                "byte {byte}"
            );
        }
        // Random bytes, and a challenge from another process (another key).
        let mut random = [0u8; CHALLENGE_LEN];
        OsRng.fill_bytes(&mut random);
        assert_eq!(ch.verify(&random, t0), Err(ChallengeRefusal::Forged));
        let other = Challenges::new(TTL, 4);
        assert_eq!(
            ch.verify(&other.issue(t0), t0),
            Err(ChallengeRefusal::Forged)
        );
        // Moving the issue time forward needs a new MAC.
        let later = ch.issue(t0 + Duration::from_secs(30));
        let mut moved = c;
        moved[..8].copy_from_slice(&later[..8]);
        assert_eq!(
            ch.verify(&moved, t0 + Duration::from_secs(61)),
            Err(ChallengeRefusal::Forged)
        );
        assert_eq!(ch.verify(&c, t0 + TTL), Err(ChallengeRefusal::Expired));
        assert_eq!(
            ch.reserve(&c, t0 + TTL).err(),
            Some(ChallengeRefusal::Expired)
        );
    }

    #[test]
    fn a_kept_challenge_is_single_use_and_a_released_one_is_not() {
        let ch = Challenges::new(TTL, 2);
        let t0 = clock::now();
        let a = ch.issue(t0);
        ch.reserve(&a, t0).unwrap().keep();
        assert_eq!(ch.reserve(&a, t0).err(), Some(ChallengeRefusal::Used));
        // In flight counts as used too.
        let b = ch.issue(t0);
        let r = ch.reserve(&b, t0).unwrap();
        assert_eq!(ch.reserve(&b, t0).err(), Some(ChallengeRefusal::Used));
        // A failed registration releases it.
        drop(r);
        // The set is bounded: when full, refuse rather than forget early...
        let held = ch.reserve(&b, t0).unwrap();
        let c = ch.issue(t0);
        assert_eq!(ch.reserve(&c, t0).err(), Some(ChallengeRefusal::Full));
        drop(held);
        // ...and expired entries make room.
        let d = ch.issue(t0 + TTL);
        ch.reserve(&d, t0 + TTL).unwrap().keep();
        // Released tags cannot grow the queue without bound.
        for _ in 0..1000 {
            let e = ch.issue(t0 + TTL);
            drop(ch.reserve(&e, t0 + TTL).unwrap());
        }
        assert!(ch.lock().queue.len() <= 4, "{}", ch.lock().queue.len());
    }
}
