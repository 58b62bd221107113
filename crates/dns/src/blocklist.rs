//! The DNS blocklist the controller pushes ([`weft_proto::dnsblock`]): which
//! names the resolver refuses to resolve, and the answer they get instead.
//!
//! A listed domain blocks itself and every name under it (`ads.example.com`
//! blocks `x.ads.example.com`, not `example.com`). Overlay names are answered
//! before the blocklist is asked; everything else the resolver sees (overlay
//! mode forwards only what the system routes to it) is checked before the
//! cache and the upstreams, so a blocked name never leaves the host.
//!
//! Memory is bounded: at most [`MAX_ENTRIES`] names of at most 253 bytes, kept
//! in one string with a sorted offset table (about the list's text plus 4
//! bytes a name); a lookup is one binary search per label of the name.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, PoisonError, RwLock};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use weft_proto::dnsblock::{BlockMode, DnsBlocklist, MAX_ENTRIES, MAX_NAME_LEN, is_block_name};

/// TTL of the `0.0.0.0` / `::` answers of [`BlockMode::Zero`]: short, so an
/// unblocked name resolves again soon after the list changes.
pub const BLOCKED_TTL: u32 = 60;

/// Why a list cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlocklistError {
    /// More names than [`MAX_ENTRIES`].
    #[error("the blocklist has {0} names, more than {MAX_ENTRIES}")]
    TooLarge(usize),
    /// A name that is not a valid blocklist domain.
    #[error("the blocklist holds an invalid name {0:?}")]
    InvalidName(String),
}

/// A blocklist ready for lookups. The default is empty (blocks nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocklist {
    version: u64,
    mode: BlockMode,
    /// Every name, back to back.
    text: String,
    /// Start of each name in `text`, in the names' sorted order; the name
    /// ends where the next one starts (the last at `text.len()`).
    starts: Vec<u32>,
}

impl Blocklist {
    /// Builds the lookup table of `list` (its names checked; sorted and
    /// de-duplicated here whatever their order).
    pub fn new(list: &DnsBlocklist) -> Result<Self, BlocklistError> {
        if list.domains.len() > MAX_ENTRIES {
            return Err(BlocklistError::TooLarge(list.domains.len()));
        }
        if let Some(bad) = list.domains.iter().find(|d| !is_block_name(d)) {
            let shown: String = bad.chars().take(64).collect();
            return Err(BlocklistError::InvalidName(shown));
        }
        let mut names: Vec<&str> = list.domains.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        let mut text = String::with_capacity(names.iter().map(|n| n.len()).sum());
        let mut starts = Vec::with_capacity(names.len());
        for n in names {
            // At most MAX_ENTRIES * MAX_NAME_LEN bytes: fits in u32.
            starts.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
            text.push_str(n);
        }
        Ok(Self {
            version: list.version,
            mode: list.mode,
            text,
            starts,
        })
    }

    /// The list's version (0 for the empty default).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// What a blocked name gets.
    pub fn mode(&self) -> BlockMode {
        self.mode
    }

    /// How many names it lists.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether it lists nothing.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    fn name(&self, i: usize) -> &str {
        let start = self.starts[i] as usize;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.text.len(), |e| *e as usize);
        &self.text[start..end]
    }

    fn contains(&self, name: &str) -> bool {
        let (mut lo, mut hi) = (0, self.starts.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid).cmp(name) {
                std::cmp::Ordering::Equal => return true,
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        false
    }

    /// Whether `name` (any case, with or without the trailing dot) is
    /// blocked, by itself or by a listed parent domain; what it gets if so.
    pub fn lookup(&self, name: &str) -> Option<BlockMode> {
        if self.is_empty() {
            return None;
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return None;
        }
        let lower;
        let mut rest = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        // The name, then each parent with at least two labels (a listed name
        // always has two).
        loop {
            let (_, parent) = rest.split_once('.')?;
            if self.contains(rest) {
                return Some(self.mode);
            }
            rest = parent;
        }
    }
}

/// Where the resolver finds the blocklist in force: a shared handle the agent
/// keeps across restarts of the service (like [`crate::DnsStats`]) and
/// replaces when a new list arrives; the next query sees it. Clones share the
/// slot; two handles are equal when they are the same slot.
#[derive(Debug, Clone, Default)]
pub struct BlocklistSlot(Arc<RwLock<Arc<Blocklist>>>);

impl BlocklistSlot {
    /// Puts `list` in force ([`Blocklist::default`]: none).
    pub fn set(&self, list: Arc<Blocklist>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = list;
    }

    /// The list in force.
    pub fn get(&self) -> Arc<Blocklist> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl PartialEq for BlocklistSlot {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for BlocklistSlot {}

/// The answer to a blocked `question` in `mode`, built on `response` (the
/// client's response skeleton: id, flags, question, EDNS): NXDOMAIN, or for
/// [`BlockMode::Zero`] `0.0.0.0` (A), `::` (AAAA) and no records for any
/// other type (NOERROR), with [`BLOCKED_TTL`].
pub fn answer(mut response: Message, question: &Query, mode: BlockMode) -> Message {
    match mode {
        BlockMode::Nxdomain => response.metadata.response_code = ResponseCode::NXDomain,
        BlockMode::Zero => {
            response.metadata.response_code = ResponseCode::NoError;
            let rdata = match question.query_type {
                RecordType::A => Some(RData::A(A(Ipv4Addr::UNSPECIFIED))),
                RecordType::AAAA => Some(RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED))),
                _ => None,
            };
            if let Some(rdata) = rdata {
                response.add_answer(Record::from_rdata(
                    question.name.clone(),
                    BLOCKED_TTL,
                    rdata,
                ));
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::Name;

    use super::*;

    fn list(mode: BlockMode, names: &[&str]) -> Blocklist {
        Blocklist::new(&DnsBlocklist {
            version: 3,
            mode,
            domains: names.iter().map(|n| (*n).to_owned()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn a_listed_domain_blocks_itself_and_what_is_under_it_only() {
        let b = list(
            BlockMode::Nxdomain,
            &["ads.example.com", "tracker.net", "a.b.c.example"],
        );
        assert_eq!(b.len(), 3);
        for blocked in [
            "ads.example.com",
            "ads.example.com.",
            "X.Ads.Example.COM",
            "deep.x.ads.example.com",
            "tracker.net",
            "www.tracker.net",
            "a.b.c.example",
            "z.a.b.c.example",
        ] {
            assert_eq!(b.lookup(blocked), Some(BlockMode::Nxdomain), "{blocked}");
        }
        for free in [
            "example.com",
            "xads.example.com",
            "ads.example.com.evil.org",
            "net",
            "b.c.example",
            "c.example",
            "tracker.network",
            "",
            ".",
        ] {
            assert_eq!(b.lookup(free), None, "{free}");
        }
        assert_eq!(Blocklist::default().lookup("ads.example.com"), None);
    }

    #[test]
    fn unsorted_input_is_sorted_and_bad_input_refused() {
        let b = list(BlockMode::Zero, &["z.example", "a.example", "z.example"]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.lookup("www.z.example"), Some(BlockMode::Zero));
        assert_eq!(b.lookup("a.example"), Some(BlockMode::Zero));
        assert_eq!(b.version(), 3);
        let bad = DnsBlocklist {
            version: 1,
            mode: BlockMode::Zero,
            domains: vec!["Not A Name".into()],
        };
        assert!(matches!(
            Blocklist::new(&bad),
            Err(BlocklistError::InvalidName(_))
        ));
        let huge = DnsBlocklist {
            version: 1,
            mode: BlockMode::Zero,
            domains: vec!["a.example".into(); MAX_ENTRIES + 1],
        };
        assert_eq!(
            Blocklist::new(&huge),
            Err(BlocklistError::TooLarge(MAX_ENTRIES + 1))
        );
    }

    #[test]
    fn a_full_list_is_held_compactly_and_looked_up() {
        let domains: Vec<String> = (0..MAX_ENTRIES)
            .map(|i| format!("host{i}.tracker{}.example", i % 1000))
            .collect();
        let text_len: usize = domains.iter().map(String::len).sum();
        let b = Blocklist::new(&DnsBlocklist {
            version: 1,
            mode: BlockMode::Nxdomain,
            domains,
        })
        .unwrap();
        assert_eq!(b.len(), MAX_ENTRIES);
        assert_eq!(b.text.len(), text_len);
        assert_eq!(b.starts.capacity(), MAX_ENTRIES);
        assert_eq!(
            b.lookup("cdn.host499999.tracker999.example"),
            Some(BlockMode::Nxdomain)
        );
        assert_eq!(b.lookup("host499999.tracker998.example"), None);
    }

    fn skeleton(name: &str, t: RecordType) -> (Message, Query) {
        let q = Query::query(Name::from_ascii(name).unwrap(), t);
        let mut m = Message::response(7, OpCode::Query);
        m.metadata.message_type = MessageType::Response;
        m.add_query(q.clone());
        (m, q)
    }

    #[test]
    fn answers_are_nxdomain_or_unspecified_addresses() {
        let (m, q) = skeleton("ads.example.com.", RecordType::A);
        let nx = answer(m, &q, BlockMode::Nxdomain);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(nx.answers.is_empty());

        let (m, q) = skeleton("ads.example.com.", RecordType::A);
        let zero = answer(m, &q, BlockMode::Zero);
        assert_eq!(zero.metadata.response_code, ResponseCode::NoError);
        assert_eq!(zero.answers.len(), 1);
        assert_eq!(zero.answers[0].ttl, BLOCKED_TTL);
        assert_eq!(zero.answers[0].data, RData::A(A(Ipv4Addr::UNSPECIFIED)));

        let (m, q) = skeleton("ads.example.com.", RecordType::AAAA);
        let zero6 = answer(m, &q, BlockMode::Zero);
        assert_eq!(
            zero6.answers[0].data,
            RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED))
        );

        let (m, q) = skeleton("ads.example.com.", RecordType::MX);
        let nodata = answer(m, &q, BlockMode::Zero);
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
    }
}
