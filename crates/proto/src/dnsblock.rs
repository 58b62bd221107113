//! The DNS blocklist the controller pushes to nodes: its map reference, its
//! fetch body, and the parser of the admin's file.
//!
//! A node's map carries only a [`DnsBlocklistRef`] (version, digest, size and
//! mode); the node fetches the list itself (`GET /v1/node/dns/blocklist` →
//! [`DnsBlocklist`]) when the version changes, checks it against the digest
//! ([`digest`]) and keeps the last good copy. A listed domain blocks itself and
//! every name under it.
//!
//! [`parse_list`] reads the two common formats, mixed freely, one entry a line:
//! hosts format (`0.0.0.0 ads.example.com`, `127.0.0.1 a.example b.example`; the
//! address must be `0.0.0.0`, `127.0.0.1`, `::` or `::1`, and the usual local
//! names such as `localhost` are skipped) and plain domain lists
//! (`ads.example.com`, `*.ads.example.com`). `#` starts a comment. Names are
//! lowercased, stripped of a trailing dot, sorted and de-duplicated. The input is
//! bounded ([`MAX_TEXT_BYTES`], [`MAX_ENTRIES`]).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// At most this many domains in one list.
pub const MAX_ENTRIES: usize = 500_000;
/// At most this many bytes of list text.
pub const MAX_TEXT_BYTES: usize = 16 * 1024 * 1024;
/// At most this many bytes in one domain name.
pub const MAX_NAME_LEN: usize = crate::hostfw::MAX_DOMAIN_LEN;
/// At most this many line errors are reported for one file.
pub const MAX_ERRORS: usize = 20;

/// What a blocked name gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockMode {
    /// NXDOMAIN: the name does not exist.
    #[default]
    Nxdomain,
    /// An answer of `0.0.0.0` (A) or `::` (AAAA); other types get no records.
    Zero,
}

impl BlockMode {
    /// The wire and CLI name: `nxdomain` or `zero`.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockMode::Nxdomain => "nxdomain",
            BlockMode::Zero => "zero",
        }
    }
}

impl fmt::Display for BlockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BlockMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nxdomain" => Ok(BlockMode::Nxdomain),
            "zero" => Ok(BlockMode::Zero),
            other => Err(format!(
                "unknown block mode {:?} (expected nxdomain or zero)",
                crate::text::escape_for_display(&other.chars().take(32).collect::<String>())
            )),
        }
    }
}

/// What a node's map says about its blocklist: enough to know whether its
/// copy is current and to check the one it fetches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsBlocklistRef {
    /// The list's version (changes with every set).
    pub version: u64,
    /// [`digest`] of the list's domains: lowercase hex SHA-256.
    pub sha256: String,
    /// How many domains it has.
    pub entries: u32,
    /// What a blocked name gets.
    pub mode: BlockMode,
}

/// The list itself, as `GET /v1/node/dns/blocklist` and
/// `GET /v1/admin/dns/blocklist` return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsBlocklist {
    /// Its version.
    pub version: u64,
    /// What a blocked name gets.
    pub mode: BlockMode,
    /// The domains, normalized, sorted and de-duplicated.
    pub domains: Vec<String>,
}

impl DnsBlocklist {
    /// The reference a map carries for this list.
    pub fn to_ref(&self) -> DnsBlocklistRef {
        DnsBlocklistRef {
            version: self.version,
            sha256: digest(&self.domains),
            entries: u32::try_from(self.domains.len()).unwrap_or(u32::MAX),
            mode: self.mode,
        }
    }

    /// Checks a fetched list against its map reference: same version and
    /// mode, same digest, and every domain valid, sorted and unique.
    pub fn verify(&self, want: &DnsBlocklistRef) -> Result<(), String> {
        if self.version != want.version {
            return Err(format!(
                "the controller sent blocklist version {}, the map names {}",
                self.version, want.version
            ));
        }
        if self.mode != want.mode {
            return Err(format!(
                "the controller sent mode {}, the map names {}",
                self.mode, want.mode
            ));
        }
        if self.domains.len() > MAX_ENTRIES {
            return Err(format!(
                "the list has {} domains, more than {MAX_ENTRIES}",
                self.domains.len()
            ));
        }
        if let Some(bad) = self.domains.iter().find(|d| !is_block_name(d)) {
            return Err(format!(
                "the list holds an invalid domain {:?}",
                crate::text::escape_for_display(&bad.chars().take(64).collect::<String>())
            ));
        }
        if self.domains.windows(2).any(|w| w[0] >= w[1]) {
            return Err("the list is not sorted and de-duplicated".into());
        }
        let got = digest(&self.domains);
        if got != want.sha256 {
            return Err(format!(
                "the list's sha256 is {got}, the map names {}",
                want.sha256
            ));
        }
        Ok(())
    }
}

/// `PUT /v1/admin/dns/blocklist`: replace the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDnsBlocklistRequest {
    /// The file's text (see [`parse_list`]); refused with line numbers when
    /// it does not parse.
    pub text: String,
    /// What a blocked name gets (default NXDOMAIN).
    #[serde(default)]
    pub mode: BlockMode,
}

/// What the controller holds: `GET`/`PUT /v1/admin/dns/blocklist`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsBlocklistInfo {
    /// The list's version.
    pub version: u64,
    /// What a blocked name gets.
    pub mode: BlockMode,
    /// How many domains it has.
    pub entries: u32,
    /// [`digest`] of its domains.
    pub sha256: String,
    /// Who set it.
    pub set_by: String,
    /// When, Unix milliseconds.
    pub set_at_ms: u64,
    /// The domains (only when asked for: `?domains=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<String>>,
}

/// `GET /v1/admin/dns/blocklist` and `DELETE`: the list, if one is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsBlocklistStatus {
    /// The list (`None`: no blocklist; after `DELETE`: there is none now).
    pub blocklist: Option<DnsBlocklistInfo>,
    /// `DELETE` only: whether a list was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared: Option<bool>,
    /// How many nodes' maps changed (`PUT`, `DELETE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_changed: Option<usize>,
}

/// The digest a [`DnsBlocklistRef`] carries: lowercase hex SHA-256 of the
/// domains joined by `\n` (no trailing newline).
pub fn digest(domains: &[String]) -> String {
    let mut h = Sha256::new();
    for (i, d) in domains.iter().enumerate() {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(d.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// One problem in a blocklist file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListError {
    /// 1-based line number (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

/// Names a hosts file maps to local addresses that are not blocklist entries.
const LOCAL_NAMES: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
];

/// Parses a blocklist file (see the module docs). Returns the domains,
/// normalized, sorted and de-duplicated, or up to [`MAX_ERRORS`] errors with
/// their line numbers.
pub fn parse_list(text: &str) -> Result<Vec<String>, Vec<ListError>> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(vec![ListError {
            line: 0,
            message: format!(
                "the file has {} bytes, more than {MAX_TEXT_BYTES}",
                text.len()
            ),
        }]);
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("");
        let mut words = content.split_whitespace();
        let Some(first) = words.next() else { continue };
        let mut push_err = |message: String| {
            if errors.len() < MAX_ERRORS {
                errors.push(ListError { line, message });
            }
        };
        if let Ok(addr) = first.parse::<IpAddr>() {
            let sink = match addr {
                IpAddr::V4(a) => a.is_unspecified() || a.is_loopback(),
                IpAddr::V6(a) => a.is_unspecified() || a.is_loopback(),
            };
            if !sink {
                push_err(format!(
                    "hosts line maps to {addr}: a blocklist maps names to 0.0.0.0, 127.0.0.1, :: or ::1"
                ));
                continue;
            }
            let mut any = false;
            for name in words {
                any = true;
                let lower = name.to_ascii_lowercase();
                if LOCAL_NAMES.contains(&lower.as_str()) {
                    continue;
                }
                match normalize(name) {
                    Ok(n) => out.push(n),
                    Err(m) => push_err(m),
                }
            }
            if !any {
                push_err(format!("hosts line has an address ({addr}) but no name"));
            }
        } else {
            if words.next().is_some() {
                push_err(
                    "expected one domain a line, or a hosts line `0.0.0.0 NAME...`".to_owned(),
                );
                continue;
            }
            match normalize(first) {
                Ok(n) => out.push(n),
                Err(m) => push_err(m),
            }
        }
        if out.len() > MAX_ENTRIES * 2 {
            // Memory stays bounded however often names repeat.
            out.sort_unstable();
            out.dedup();
            if out.len() > MAX_ENTRIES {
                return Err(vec![too_many(out.len(), "at least ")]);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    out.sort_unstable();
    out.dedup();
    if out.len() > MAX_ENTRIES {
        return Err(vec![too_many(out.len(), "")]);
    }
    Ok(out)
}

fn too_many(n: usize, at_least: &str) -> ListError {
    ListError {
        line: 0,
        message: format!("the list has {at_least}{n} domains, more than {MAX_ENTRIES}"),
    }
}

/// One name of a list, normalized: lowercase, no trailing dot, no leading `*.`.
fn normalize(name: &str) -> Result<String, String> {
    let shown =
        || crate::text::escape_for_display(&name.chars().take(64).collect::<String>()).into_owned();
    let mut n = name.to_ascii_lowercase();
    if let Some(rest) = n.strip_prefix("*.") {
        n = rest.to_owned();
    }
    if let Some(rest) = n.strip_suffix('.') {
        n = rest.to_owned();
    }
    if is_block_name(&n) {
        Ok(n)
    } else if n
        .rsplit('.')
        .next()
        .is_some_and(|tld| !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()))
    {
        Err(format!(
            "{:?} ends in a numeric label: an address, not a domain",
            shown()
        ))
    } else if !n.contains('.') && !n.is_empty() && n.len() <= 63 {
        Err(format!(
            "{:?} is a single label: it would block a whole top-level domain",
            shown()
        ))
    } else {
        Err(format!("{:?} is not a domain name", shown()))
    }
}

/// Whether `name` can be a blocklist entry: a domain as the host firewall
/// takes one ([`crate::hostfw::is_domain`]: lowercase, at least two labels of
/// 1..=63 bytes of `[a-z0-9-]` not starting or ending with `-`, at most
/// [`MAX_NAME_LEN`] bytes, no trailing dot), where `_` may also stand for a
/// letter (`_dmarc.example.com`), and whose last label is not all digits
/// (`0.0.0.60` is an address, and would read as a hosts line).
pub fn is_block_name(name: &str) -> bool {
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if name.contains('_') {
        crate::hostfw::is_domain(&name.replace('_', "a"))
    } else {
        crate::hostfw::is_domain(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_list_formats_mix_and_are_normalized() {
        let text = "# a comment\n\
                    0.0.0.0 Ads.Example.COM tracker.example.net # trailing\n\
                    127.0.0.1 localhost\n\
                    ::1 ip6-localhost ip6-loopback\n\
                    :: v6.example.org\n\
                    \n\
                    plain.example.com.\n\
                    *.wild.example.com\n\
                    ads.example.com\n\
                    _tracking.example.io\n";
        let got = parse_list(text).unwrap();
        assert_eq!(
            got,
            vec![
                "_tracking.example.io",
                "ads.example.com",
                "plain.example.com",
                "tracker.example.net",
                "v6.example.org",
                "wild.example.com",
            ]
        );
    }

    #[test]
    fn errors_carry_their_line_numbers() {
        let text = "good.example.com\n\
                    10.1.2.3 intranet.example.com\n\
                    com\n\
                    bad_name!.example.com\n\
                    *.10.0.0.60\n\
                    two words.example\n\
                    0.0.0.0\n";
        let errs = parse_list(text).unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7]);
        assert!(errs[3].message.contains("numeric label"), "{}", errs[3]);
        assert!(errs[0].message.contains("10.1.2.3"), "{}", errs[0]);
        assert!(errs[1].message.contains("single label"), "{}", errs[1]);
        assert_eq!(errs[0].to_string().split(':').next(), Some("line 2"));
    }

    #[test]
    fn bounds_are_enforced() {
        let big = "a".repeat(MAX_TEXT_BYTES + 1);
        let errs = parse_list(&big).unwrap_err();
        assert_eq!(errs[0].line, 0);
        let many: String = (0..=MAX_ENTRIES)
            .map(|i| format!("n{i}.example\n"))
            .collect();
        let errs = parse_list(&many).unwrap_err();
        assert!(errs[0].message.contains("more than"), "{}", errs[0]);
        // Repeats do not count, however many (and nothing after them is lost).
        let mut repeated = "a.example\n".repeat(MAX_ENTRIES * 2 + 10);
        repeated.push_str("b.example\n");
        assert_eq!(
            parse_list(&repeated).unwrap(),
            vec!["a.example", "b.example"]
        );
        let too_many_errors: String = (0..100).map(|_| "x\n").collect();
        assert_eq!(parse_list(&too_many_errors).unwrap_err().len(), MAX_ERRORS);
        let long = format!("{}.example", "a.".repeat(130));
        assert!(parse_list(&long).is_err());
    }

    #[test]
    fn a_fetched_list_is_verified_against_its_reference() {
        let list = DnsBlocklist {
            version: 3,
            mode: BlockMode::Zero,
            domains: vec!["a.example".into(), "b.example".into()],
        };
        let r = list.to_ref();
        assert_eq!(r.entries, 2);
        assert_eq!(r.sha256, digest(&["a.example".into(), "b.example".into()]));
        assert_eq!(list.verify(&r), Ok(()));
        let mut tampered = list.clone();
        tampered.domains[1] = "c.example".into();
        assert!(tampered.verify(&r).unwrap_err().contains("sha256"));
        let mut unsorted = list.clone();
        unsorted.domains.reverse();
        assert!(unsorted.verify(&r).unwrap_err().contains("sorted"));
        let mut other = list.clone();
        other.version = 4;
        assert!(other.verify(&r).is_err());
        // The wire form of the mode.
        assert_eq!(
            serde_json::to_value(BlockMode::Nxdomain).unwrap(),
            "nxdomain"
        );
        assert_eq!("zero".parse::<BlockMode>(), Ok(BlockMode::Zero));
        assert!("0.0.0.0".parse::<BlockMode>().is_err());
    }

    #[test]
    fn digest_is_of_the_newline_joined_list() {
        // sha256("a.example\nb.example")
        let d = digest(&["a.example".into(), "b.example".into()]);
        let mut h = Sha256::new();
        h.update(b"a.example\nb.example");
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(d, want);
    }
}
