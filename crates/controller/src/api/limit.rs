//! Per-source rate limits for the requests anyone can make without a
//! credential, and a summary of refusals that is logged at most once per
//! interval instead of once per request. Three budgets per source:
//!
//! - **registration** (`--register-burst`, `--register-per-minute`):
//!   `POST /v1/register/challenge` and `POST /v1/register`, the costly ones
//!   (signature and proof-of-work checks, then a write);
//! - **public** (`--public-burst`, `--public-per-minute`): `GET /healthz`,
//!   `GET /readyz` and paths that do not exist (404);
//! - **failed authentication** (`--auth-fail-burst`,
//!   `--auth-fail-per-minute`): each 401 answer takes one; a source that has
//!   none left gets 429 with `Retry-After` on every request (the probes
//!   aside) until it has one again, so guessing credentials, or a node
//!   retrying with a dead one, is slowed without slowing anyone else.
//!
//! A source is a client IPv4 address, or the /64 of an IPv6 address (one host
//! usually holds a whole /64). Each source has a token bucket; the table of
//! buckets is bounded, and when it is full the oldest entry is forgotten.
//! Forgetting a bucket only ever forgives: the source starts again with a full
//! burst, so eviction can make the limit looser for a source, never stricter,
//! and one source flooding the table cannot get another source refused.
//!
//! **Per replica, not shared.** With several replicas each keeps its own
//! buckets, in memory, and a source spread over N replicas gets N times the
//! budget. That is deliberate: each budget protects the CPU of the replica
//! that does the work (challenge MACs, signature and proof-of-work checks,
//! credential hashing, JSON), and N replicas have N times that CPU. What is
//! shared is protected where it is shared: a registration that passes still
//! needs a valid join token, whose uses are counted by the writer under the
//! database's write lock (exact across replicas), and addresses are handed
//! out under the same lock; credentials and tokens are 256-bit secrets, so
//! there is no guessing budget worth sharing. A counter in the database
//! would put a database write behind every unauthenticated request, which
//! is the load these limits exist to keep off it. Where a total per source
//! matters, set each replica's limits to the total divided by N.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use tracing::warn;

use super::AppState;
use crate::clock;
use crate::error::ApiError;

/// The client address of a connection, attached to each of its requests by
/// the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Limit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests a source may make at once.
    pub burst: u32,
    /// Requests per minute a source regains.
    pub per_minute: u32,
    /// Sources tracked at most (oldest forgotten first).
    pub max_sources: usize,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            burst: 30,
            per_minute: 60,
            max_sources: 16_384,
        }
    }
}

impl RateLimit {
    /// The public budget's defaults (`/healthz`, `/readyz`, unknown paths):
    /// a load balancer probing every replica every second from one address
    /// uses a tenth of it.
    pub const PUBLIC: RateLimit = RateLimit {
        burst: 120,
        per_minute: 600,
        max_sources: 16_384,
    };
    /// The failed-authentication budget's defaults: an admin mistyping a
    /// token, or a node whose credential died retrying with backoff, stays
    /// well inside it.
    pub const AUTH_FAIL: RateLimit = RateLimit {
        burst: 30,
        per_minute: 60,
        max_sources: 16_384,
    };
}

/// The client address of a request: the accept loop attaches it; without
/// it (in-process tests) every request counts as one unspecified source.
pub(super) fn source(req: &Request) -> IpAddr {
    req.extensions()
        .get::<Peer>()
        .map_or(IpAddr::from([0u8; 4]), |c| c.0.ip())
}

fn refused(wait: Duration) -> Response {
    ApiError::RateLimited {
        retry_after_secs: wait.as_secs().saturating_add(1),
    }
    .into_response()
}

/// Middleware of the public endpoints (`/healthz`, `/readyz`): one request
/// from the source's public budget.
pub(super) async fn public(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match st.public_limiter.check(source(&req), clock::now()) {
        Ok(()) => next.run(req).await,
        Err(wait) => refused(wait),
    }
}

/// The fallback: 404 for a path that does not exist, from the source's
/// public budget (429 when it has none left).
pub(super) async fn not_found(State(st): State<AppState>, req: Request) -> Response {
    match st.public_limiter.check(source(&req), clock::now()) {
        Ok(()) => ApiError::not_found("not_found", "no such endpoint").into_response(),
        Err(wait) => refused(wait),
    }
}

/// Middleware of every endpoint but the probes: a source with no failed
/// authentication left in its budget gets 429; a 401 answer takes one.
pub(super) async fn auth_failures(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let ip = source(&req);
    if let Err(wait) = st.auth_limiter.peek(ip, clock::now()) {
        return refused(wait);
    }
    let resp = next.run(req).await;
    if resp.status() == http::StatusCode::UNAUTHORIZED {
        st.auth_limiter.charge(ip, clock::now());
    }
    resp
}

/// The key a source is counted under.
fn source_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            // The /64, marked so it cannot collide with an IPv4 key.
            None => (u128::from(v6) & !((1u128 << 64) - 1)) | 1,
        },
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
    refused: u64,
    ip: IpAddr,
}

struct Table {
    buckets: HashMap<u128, Bucket>,
    // Insertion order; holds exactly the keys of `buckets`.
    order: VecDeque<u128>,
    // Refusals since the last summary.
    refused: u64,
    last_summary: Option<Instant>,
}

/// What [`Limiter::take`] does with a source's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Takes one; refused below one.
    Take,
    /// Only looks; refused below one.
    Peek,
    /// Takes one whatever is left, down to empty; never refused.
    Charge,
}

/// Token buckets per source.
pub struct Limiter {
    name: &'static str,
    cfg: RateLimit,
    summary_every: Duration,
    table: Mutex<Table>,
}

impl Limiter {
    /// A limiter that logs a refusal summary at most once per `summary_every`.
    pub fn new(cfg: RateLimit, summary_every: Duration) -> Self {
        Self::named("registration", cfg, summary_every)
    }

    /// A limiter whose refusal summary names it `name`.
    pub fn named(name: &'static str, cfg: RateLimit, summary_every: Duration) -> Self {
        Self {
            name,
            cfg,
            summary_every,
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                order: VecDeque::new(),
                refused: 0,
                last_summary: None,
            }),
        }
    }

    /// Takes one request from `ip`'s bucket; on refusal, how long until the next
    /// request would be accepted.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.take(ip, now, Mode::Take)
    }

    /// Whether `ip` has a request left, without taking it; on refusal, how
    /// long until it has (the refusal is counted in the summary).
    pub fn peek(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.take(ip, now, Mode::Peek)
    }

    /// Takes one request from `ip`'s bucket whether or not it has one left
    /// (down to empty): charges a request that already happened, such as a
    /// failed authentication.
    pub fn charge(&self, ip: IpAddr, now: Instant) {
        let _ = self.take(ip, now, Mode::Charge);
    }

    fn take(&self, ip: IpAddr, now: Instant, mode: Mode) -> Result<(), Duration> {
        let burst = f64::from(self.cfg.burst.max(1));
        let rate = f64::from(self.cfg.per_minute.max(1)) / 60.0;
        let key = source_key(ip);
        let mut t = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !t.buckets.contains_key(&key) {
            if mode == Mode::Peek {
                // A source without a bucket has its whole burst; only
                // sources that spent some are tracked.
                return Ok(());
            }
            while t.buckets.len() >= self.cfg.max_sources.max(1) {
                let Some(old) = t.order.pop_front() else {
                    break;
                };
                t.buckets.remove(&old);
            }
            t.order.push_back(key);
            t.buckets.insert(
                key,
                Bucket {
                    tokens: burst,
                    at: now,
                    refused: 0,
                    ip,
                },
            );
        }
        let Some(b) = t.buckets.get_mut(&key) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        match mode {
            Mode::Charge => {
                b.tokens = (b.tokens - 1.0).max(0.0);
                return Ok(());
            }
            Mode::Take if b.tokens >= 1.0 => {
                b.tokens -= 1.0;
                return Ok(());
            }
            Mode::Peek if b.tokens >= 1.0 => return Ok(()),
            Mode::Take | Mode::Peek => {}
        }
        b.refused += 1;
        let wait = Duration::from_secs_f64((1.0 - b.tokens) / rate);
        t.refused += 1;
        self.summarize(&mut t, now);
        Err(wait)
    }

    /// One WARN per interval: how many requests were refused, from how many
    /// sources, and the busiest one.
    fn summarize(&self, t: &mut Table, now: Instant) {
        if t.last_summary
            .is_some_and(|last| now.saturating_duration_since(last) < self.summary_every)
        {
            return;
        }
        let mut sources = 0u64;
        let mut top: Option<(IpAddr, u64)> = None;
        for b in t.buckets.values_mut() {
            if b.refused > 0 {
                sources += 1;
                if top.is_none_or(|(_, n)| b.refused > n) {
                    top = Some((b.ip, b.refused));
                }
                b.refused = 0;
            }
        }
        let (top_source, top_refused) = top.map_or((None, 0), |(ip, n)| (Some(ip), n));
        warn!(
            refused = t.refused,
            sources,
            top_source = top_source.map(|ip| ip.to_string()).unwrap_or_default(),
            top_refused,
            interval_secs = self.summary_every.as_secs(),
            limit = self.name,
            "rate limit: refused unauthenticated requests (429); next summary in one interval at the earliest"
        );
        t.refused = 0;
        t.last_summary = Some(now);
    }

    /// Sources tracked now.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .buckets
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter(burst: u32, per_minute: u32, max_sources: usize) -> Limiter {
        Limiter::new(
            RateLimit {
                burst,
                per_minute,
                max_sources,
            },
            Duration::from_secs(10),
        )
    }

    #[test]
    fn burst_then_refused_then_refilled() {
        let l = limiter(3, 60, 16);
        let t0 = clock::now();
        for _ in 0..3 {
            assert!(l.check(ip("192.0.2.1"), t0).is_ok());
        }
        let wait = l.check(ip("192.0.2.1"), t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another source is not affected.
        assert!(l.check(ip("192.0.2.2"), t0).is_ok());
        // One token a second comes back.
        assert!(
            l.check(ip("192.0.2.1"), t0 + Duration::from_secs(1))
                .is_ok()
        );
        assert!(
            l.check(ip("192.0.2.1"), t0 + Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = limiter(1, 1, 16);
        let t0 = clock::now();
        assert!(l.check(ip("2001:db8:1:2::1"), t0).is_ok());
        assert!(l.check(ip("2001:db8:1:2::ffff"), t0).is_err(), "same /64");
        assert!(l.check(ip("2001:db8:1:3::1"), t0).is_ok(), "another /64");
        assert!(l.check(ip("198.51.100.7"), t0).is_ok());
        assert!(l.check(ip("::ffff:198.51.100.7"), t0).is_err());
    }

    #[test]
    fn charges_empty_the_bucket_and_peeks_take_nothing() {
        let l = limiter(2, 60, 16);
        let t0 = clock::now();
        let a = ip("192.0.2.1");
        for _ in 0..10 {
            assert!(l.peek(a, t0).is_ok(), "a peek takes nothing");
        }
        // Failed authentications are charged even past empty; the bucket
        // does not go below empty.
        for _ in 0..5 {
            l.charge(a, t0);
        }
        let wait = l.peek(a, t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(l.check(a, t0).is_err());
        assert!(l.peek(ip("192.0.2.2"), t0).is_ok(), "others unaffected");
        // One a second comes back, from empty.
        assert!(l.peek(a, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn table_is_bounded_and_eviction_only_forgives() {
        let l = limiter(1, 1, 4);
        let t0 = clock::now();
        assert!(l.check(ip("192.0.2.1"), t0).is_ok());
        assert!(l.check(ip("192.0.2.1"), t0).is_err());
        for i in 0..100u8 {
            let _ = l.check(IpAddr::from([10, 0, 0, i]), t0);
            assert!(l.sources() <= 4);
        }
        // 192.0.2.1 was forgotten: it gets a fresh burst, never a stricter limit.
        assert!(l.check(ip("192.0.2.1"), t0).is_ok());
    }
}
