//! A bounded, TTL-respecting cache of forwarded answers (positive and negative).
//! Pure: every call takes `now`.
//!
//! What is kept: NOERROR answers with records for the smallest TTL among them;
//! NXDOMAIN and no-data answers for the SOA's negative TTL (RFC 2308: the smaller
//! of the SOA record's TTL and its `minimum`), and not at all without an SOA.
//! Truncated answers, errors (SERVFAIL, REFUSED, ...) and TTL 0 are not kept.
//! A hit comes back with every TTL lowered by the time it spent in the cache.
//!
//! [`TtlBounds`] raise short and lower long positive TTLs (`weftd --dns-min-ttl`,
//! `--dns-max-ttl`): the answer's records carry the bounded TTL, to the client
//! and in the cache, so what a client sees and how long weft keeps it agree.
//! Negative answers are only lowered (to the maximum and [`MAX_NEGATIVE_TTL`]): a
//! name created upstream must not stay invisible for the minimum.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::RData;

/// Entries kept at most. A full cache drops expired entries, then the ones that
/// expire first.
pub const DEFAULT_CAPACITY: usize = 4096;
/// Longest a positive answer is kept, seconds, whatever its TTL.
pub const MAX_POSITIVE_TTL: u32 = 3600;
/// Longest a negative answer is kept, seconds (RFC 2308 suggests at most hours;
/// five minutes keeps a name created upstream from staying invisible for long).
pub const MAX_NEGATIVE_TTL: u32 = 300;

/// The TTLs positive answers are kept for, seconds (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlBounds {
    /// Shorter TTLs are raised to this.
    pub min: u32,
    /// Longer TTLs are lowered to this.
    pub max: u32,
}

impl Default for TtlBounds {
    /// The overlay-only resolver's: TTLs as received, at most an hour.
    fn default() -> Self {
        Self {
            min: 0,
            max: MAX_POSITIVE_TTL,
        }
    }
}

impl TtlBounds {
    /// The system resolver's defaults (`weftd --dns system`): 300 s to 86,400 s.
    pub const SYSTEM: Self = Self {
        min: 300,
        max: 86_400,
    };

    /// Checked bounds: `min <= max`, `max` at least 1 s and at most a week.
    pub fn new(min: u32, max: u32) -> Result<Self, String> {
        if max == 0 || max > 7 * 86_400 {
            return Err(format!("DNS max TTL {max} s: must be 1 to 604800 (a week)"));
        }
        if min > max {
            return Err(format!("DNS min TTL {min} s is above the max TTL {max} s"));
        }
        Ok(Self { min, max })
    }

    /// Bounds the TTLs of `response` in place (see the module docs).
    pub fn clamp(&self, response: &mut Message) {
        if response.metadata.truncation {
            return;
        }
        let positive = response.metadata.response_code == ResponseCode::NoError
            && !response.answers.is_empty();
        if positive {
            for r in &mut response.answers {
                r.ttl = r.ttl.clamp(self.min, self.max);
            }
        } else {
            for r in &mut response.authorities {
                r.ttl = r.ttl.min(self.max);
            }
        }
    }
}

/// Cache key: lowercase name (presentation format with trailing dot), type, class.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CacheKey {
    name: String,
    qtype: u16,
    qclass: u16,
}

impl CacheKey {
    /// The key of a question.
    pub fn of(query: &Query) -> Self {
        Self {
            name: query.name.to_lowercase().to_ascii(),
            qtype: u16::from(query.query_type),
            qclass: u16::from(query.query_class),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    response: Message,
    stored: Instant,
    expires: Instant,
}

/// The cache.
#[derive(Debug, Clone)]
pub struct Cache {
    entries: BTreeMap<CacheKey, Entry>,
    capacity: usize,
    hits: u64,
    bounds: TtlBounds,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Cache {
    /// An empty cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            capacity: capacity.max(1),
            hits: 0,
            bounds: TtlBounds::default(),
        }
    }

    /// An empty cache of at most `capacity` entries keeping positive answers
    /// within `bounds`.
    pub fn with_bounds(capacity: usize, bounds: TtlBounds) -> Self {
        Self {
            bounds,
            ..Self::new(capacity)
        }
    }

    /// The TTL bounds it applies.
    pub fn bounds(&self) -> TtlBounds {
        self.bounds
    }

    /// How many lookups found a live entry so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Number of entries (expired ones included until they are looked up or evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached answer for `key` with TTLs lowered by its age, or `None` (an
    /// expired entry is removed).
    pub fn get(&mut self, key: &CacheKey, now: Instant) -> Option<Message> {
        let entry = self.entries.get(key)?;
        if now >= entry.expires {
            self.entries.remove(key);
            return None;
        }
        let age = u32::try_from(now.saturating_duration_since(entry.stored).as_secs())
            .unwrap_or(u32::MAX);
        let mut response = entry.response.clone();
        for record in response
            .answers
            .iter_mut()
            .chain(response.authorities.iter_mut())
            .chain(response.additionals.iter_mut())
        {
            record.decrement_ttl(age);
        }
        self.hits += 1;
        Some(response)
    }

    /// Keeps `response` for `key` if it is cacheable ([`cache_ttl`]); returns whether
    /// it was kept.
    pub fn insert(&mut self, key: CacheKey, response: &Message, now: Instant) -> bool {
        let Some(ttl) = cache_ttl_within(response, self.bounds) else {
            return false;
        };
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.evict(now);
        }
        self.entries.insert(
            key,
            Entry {
                response: response.clone(),
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
            },
        );
        true
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Makes room for one entry: drops expired ones, else the one expiring first.
    fn evict(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.expires > now);
        if self.entries.len() < self.capacity {
            return;
        }
        let first = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.expires)
            .map(|(k, _)| k.clone());
        if let Some(k) = first {
            self.entries.remove(&k);
        }
    }
}

/// How long `response` may be cached, seconds, with the default bounds; `None`
/// when it must not be.
pub fn cache_ttl(response: &Message) -> Option<u32> {
    cache_ttl_within(response, TtlBounds::default())
}

/// How long `response` may be cached within `bounds`, seconds; `None` when it
/// must not be.
pub fn cache_ttl_within(response: &Message, bounds: TtlBounds) -> Option<u32> {
    if response.metadata.truncation {
        return None;
    }
    let ttl = match response.metadata.response_code {
        ResponseCode::NoError if !response.answers.is_empty() => response
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()?
            .clamp(bounds.min, bounds.max),
        ResponseCode::NoError | ResponseCode::NXDomain => response
            .authorities
            .iter()
            .filter_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .min()?
            .min(MAX_NEGATIVE_TTL)
            .min(bounds.max),
        _ => return None,
    };
    (ttl > 0).then_some(ttl)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::OpCode;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record, RecordType};

    use super::*;

    #[expect(
        clippy::disallowed_methods,
        reason = "tests need an arbitrary base instant; every later time is derived from it"
    )]
    fn t0() -> Instant {
        Instant::now()
    }

    fn query(name: &str) -> Query {
        Query::query(Name::from_ascii(name).unwrap(), RecordType::A)
    }

    fn positive(name: &str, ttl: u32) -> Message {
        let mut m = Message::response(1, OpCode::Query);
        m.add_query(query(name));
        m.add_answer(Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            ttl,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        ));
        m
    }

    fn negative(name: &str, rcode: ResponseCode, soa_ttl: u32, minimum: u32) -> Message {
        let mut m = Message::error_msg(1, OpCode::Query, rcode);
        m.add_query(query(name));
        let soa = SOA::new(
            Name::from_ascii("ns.example.").unwrap(),
            Name::from_ascii("hostmaster.example.").unwrap(),
            1,
            3600,
            600,
            86400,
            minimum,
        );
        m.add_authority(Record::from_rdata(
            Name::from_ascii("example.").unwrap(),
            soa_ttl,
            RData::SOA(soa),
        ));
        m
    }

    #[test]
    fn positive_entry_expires_after_its_ttl_and_ages() {
        let t0 = t0();
        let mut cache = Cache::default();
        let key = CacheKey::of(&query("a.example."));
        assert!(cache.insert(key.clone(), &positive("a.example.", 30), t0));
        let hit = cache.get(&key, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(hit.answers[0].ttl, 20);
        assert!(cache.get(&key, t0 + Duration::from_secs(29)).is_some());
        assert!(cache.get(&key, t0 + Duration::from_secs(30)).is_none());
        assert!(cache.is_empty(), "an expired entry is dropped on lookup");
    }

    #[test]
    fn keys_are_case_insensitive() {
        let t0 = t0();
        let mut cache = Cache::default();
        cache.insert(
            CacheKey::of(&query("A.Example.")),
            &positive("a.example.", 30),
            t0,
        );
        assert!(cache.get(&CacheKey::of(&query("a.EXAMPLE.")), t0).is_some());
    }

    #[test]
    fn negative_ttl_is_min_of_soa_ttl_and_minimum_capped() {
        let nx = negative("x.example.", ResponseCode::NXDomain, 60, 30);
        assert_eq!(cache_ttl(&nx), Some(30));
        let nodata = negative("x.example.", ResponseCode::NoError, 20, 900);
        assert_eq!(cache_ttl(&nodata), Some(20));
        let long = negative("x.example.", ResponseCode::NXDomain, 86400, 86400);
        assert_eq!(cache_ttl(&long), Some(MAX_NEGATIVE_TTL));

        let t0 = t0();
        let mut cache = Cache::default();
        let key = CacheKey::of(&query("x.example."));
        assert!(cache.insert(key.clone(), &nx, t0));
        let hit = cache.get(&key, t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(hit.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(hit.authorities[0].ttl, 55);
        assert!(cache.get(&key, t0 + Duration::from_secs(31)).is_none());
    }

    #[test]
    fn uncacheable_answers_are_not_kept() {
        let mut no_soa = Message::error_msg(1, OpCode::Query, ResponseCode::NXDomain);
        no_soa.add_query(query("x.example."));
        let servfail = Message::error_msg(1, OpCode::Query, ResponseCode::ServFail);
        let mut truncated = positive("a.example.", 30);
        truncated.metadata.truncation = true;
        for m in [no_soa, servfail, truncated, positive("a.example.", 0)] {
            assert_eq!(cache_ttl(&m), None, "{m:?}");
        }
        assert_eq!(
            cache_ttl(&positive("a.example.", 999_999)),
            Some(MAX_POSITIVE_TTL)
        );
    }

    /// `--dns-min-ttl 300 --dns-max-ttl 86400`: a 5 s record is kept (and
    /// shown) for 300 s, a week-long one for a day; negative answers are only
    /// lowered.
    #[test]
    fn ttl_bounds_raise_short_and_lower_long_ttls() {
        let b = TtlBounds::SYSTEM;
        let mut short = positive("a.example.", 5);
        b.clamp(&mut short);
        assert_eq!(short.answers[0].ttl, 300);
        let mut long = positive("a.example.", 604_800);
        b.clamp(&mut long);
        assert_eq!(long.answers[0].ttl, 86_400);
        let mut nx = negative("x.example.", ResponseCode::NXDomain, 20, 10);
        b.clamp(&mut nx);
        assert_eq!(nx.authorities[0].ttl, 20, "negative TTLs are not raised");
        assert_eq!(cache_ttl_within(&nx, b), Some(10));

        let t0 = t0();
        let mut cache = Cache::with_bounds(16, b);
        let key = CacheKey::of(&query("a.example."));
        assert!(cache.insert(key.clone(), &positive("a.example.", 5), t0));
        let s = Duration::from_secs;
        assert!(
            cache.get(&key, t0 + s(299)).is_some(),
            "kept for the minimum"
        );
        assert!(cache.get(&key, t0 + s(300)).is_none());
        assert!(cache.insert(key.clone(), &positive("a.example.", 604_800), t0));
        assert!(cache.get(&key, t0 + s(86_399)).is_some());
        assert!(
            cache.get(&key, t0 + s(86_400)).is_none(),
            "kept at most the maximum"
        );
        // Zero TTL with a minimum: kept for the minimum.
        assert_eq!(cache_ttl_within(&positive("a.example.", 0), b), Some(300));
    }

    #[test]
    fn ttl_bounds_are_checked() {
        assert_eq!(TtlBounds::new(300, 86_400), Ok(TtlBounds::SYSTEM));
        assert!(TtlBounds::new(10, 5).unwrap_err().contains("above the max"));
        assert!(TtlBounds::new(0, 0).is_err());
        assert!(TtlBounds::new(0, 700_000).is_err());
    }

    #[test]
    fn full_cache_evicts_expired_then_soonest() {
        let t0 = t0();
        let mut cache = Cache::new(2);
        let k = |n: &str| CacheKey::of(&query(n));
        cache.insert(k("a.example."), &positive("a.example.", 10), t0);
        cache.insert(k("b.example."), &positive("b.example.", 100), t0);
        cache.insert(k("c.example."), &positive("c.example.", 50), t0);
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get(&k("a.example."), t0).is_none(),
            "soonest to expire goes"
        );
        let later = t0 + Duration::from_secs(60);
        cache.insert(k("d.example."), &positive("d.example.", 50), later);
        assert!(cache.get(&k("c.example."), later).is_none());
        assert!(cache.get(&k("b.example."), later).is_some());
        assert!(cache.get(&k("d.example."), later).is_some());
    }
}
