//! The overlay zone: which names exist under the overlay domains and what they
//! answer. Pure (no I/O, no clock); built from the network map, swapped whole.
//!
//! Names, for every network `N` with domain `D` (default `weft.internal`) and every
//! member `n` of it (this node included):
//!
//! - `n.N.D` always answers `n`'s addresses in `N` (A: IPv4, AAAA: IPv6);
//! - `n.D` answers the same when exactly one network under `D` has a member named
//!   `n`. When several do (the same node in `prod` and `dev`), the short name is
//!   ambiguous and does not exist (NXDOMAIN): answering one of them would pick a
//!   network for the user, and the full name always works;
//! - `D` itself and `N.D` exist without addresses (NOERROR, no data; `D` has the
//!   SOA), so a resolver never concludes from a negative answer that the names
//!   below them are gone (RFC 8020);
//! - every other name under `D` does not exist (NXDOMAIN). The zone is
//!   authoritative for all of `D`: those names are never forwarded upstream, so
//!   overlay names do not leak to the underlay resolver.
//!
//! Named services (the map's `services`: only those the policy lets this node
//! use) add, for every service `s` of network `N`:
//!
//! - `s.svc.N.D` answers A with the service's virtual IP; AAAA has no data
//!   (NOERROR, empty: VIPs are IPv4 only);
//! - `svc.N.D` exists without data while `N` has a service here; every other
//!   name under it, like a service this node may not use, does not exist
//!   (NXDOMAIN, from the rule above).
//!
//! Reverse names of overlay addresses (`2.0.64.100.in-addr.arpa`, and the
//! `ip6.arpa` nibble form) answer PTR with the full names holding that address,
//! so reverse lookups (ping, ssh, logs) stay on the host too. Other reverse names
//! are not ours (the same prefixes may be used elsewhere) and are forwarded.
//!
//! `weft.internal` is always one of the domains, even when no network uses it (an
//! empty zone, before the first map): its names are never forwarded.
//!
//! Matching is ASCII case-insensitive and ignores one trailing dot.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use weft_proto::netmap::{DEFAULT_DNS_DOMAIN, NetworkMap};

/// TTL of every overlay answer, in seconds. Zero: resolvers and caches in front of
/// us (systemd-resolved, nscd) do not keep them, so a rename or a join is visible
/// as soon as the new zone is swapped in. The queries stay on loopback.
pub const OVERLAY_TTL: u32 = 0;

/// Longest name (RFC 1035: 255 octets on the wire, 253 in text without the dot).
const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// One node in one network, as the map describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The node's name (a DNS label).
    pub name: String,
    /// The network's name (a DNS label).
    pub network: String,
    /// The network's DNS domain, for example `weft.internal`.
    pub domain: String,
    /// The node's IPv4 address in the network.
    pub ipv4: Option<Ipv4Addr>,
    /// The node's IPv6 address in the network.
    pub ipv6: Option<Ipv6Addr>,
}

/// One service this node may use, as the map lists it: `name.svc.network.domain`
/// answers `vip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// The service's name (a DNS label).
    pub name: String,
    /// Its network's name (a DNS label).
    pub network: String,
    /// The network's DNS domain.
    pub domain: String,
    /// The service's virtual IP.
    pub vip: Ipv4Addr,
}

/// The label under a network that holds its services: `<s>.svc.<network>.<domain>`.
pub const SERVICE_LABEL: &str = "svc";

/// The service records of a network map: every listed service whose network
/// is in the map (its domain comes from the network).
pub fn services_from_map(map: &NetworkMap) -> Vec<ServiceRecord> {
    map.services
        .iter()
        .filter_map(|s| {
            let net = map.networks.iter().find(|n| n.name == s.network)?;
            Some(ServiceRecord {
                name: s.name.clone(),
                network: s.network.clone(),
                domain: net.dns_domain.clone(),
                vip: s.vip,
            })
        })
        .collect()
}

/// The records of a network map: this node and its peers, in every network.
pub fn records_from_map(map: &NetworkMap) -> Vec<Record> {
    let mut out = Vec::new();
    for net in &map.networks {
        out.push(Record {
            name: map.node.name.clone(),
            network: net.name.clone(),
            domain: net.dns_domain.clone(),
            ipv4: Some(net.ipv4),
            ipv6: net.ipv6,
        });
        for peer in &net.peers {
            out.push(Record {
                name: peer.name.clone(),
                network: net.name.clone(),
                domain: net.dns_domain.clone(),
                ipv4: Some(peer.ipv4),
                ipv6: peer.ipv6,
            });
        }
    }
    out
}

/// The record types the zone distinguishes; everything else is [`QueryType::Other`]
/// (answered with no data for names that exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Start of authority (answered at a domain apex).
    Soa,
    /// Reverse pointer (answered for overlay addresses).
    Ptr,
    /// `ANY`: every address of the name (and the SOA at an apex).
    Any,
    /// Any other type.
    Other,
}

/// Response code of an authoritative answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// The name exists (the answer may still be empty: no data of that type).
    NoError,
    /// The name does not exist.
    NxDomain,
}

/// Data of one answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// The apex's SOA.
    Soa(Soa),
    /// A full overlay name (lowercase, no trailing dot), for a reverse name.
    Ptr(String),
}

/// The SOA of one overlay domain. The zone is generated, so only `serial` and
/// `minimum` (the negative-caching TTL, [`OVERLAY_TTL`]) matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    /// The domain (apex), lowercase, without trailing dot.
    pub apex: String,
    /// Primary server name: `ns.<apex>`.
    pub mname: String,
    /// Responsible mailbox: `hostmaster.<apex>`.
    pub rname: String,
    /// Zone serial (see [`Zone::with_serial`]).
    pub serial: u32,
    /// Negative-caching TTL, seconds.
    pub minimum: u32,
}

/// What the zone says about one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name is not under an overlay domain: forward it.
    NotAuthoritative,
    /// The name is under an overlay domain: this is the final answer.
    Authoritative {
        /// NOERROR or NXDOMAIN.
        rcode: Rcode,
        /// Answer records (owner: the queried name). Empty for NXDOMAIN and no data.
        records: Vec<RecordData>,
        /// The SOA of the enclosing domain (the authority section of negative
        /// answers).
        soa: Soa,
    },
}

/// Addresses of one existing name (empty for names that exist without data).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Addrs {
    v4: BTreeSet<Ipv4Addr>,
    v6: BTreeSet<Ipv6Addr>,
}

/// An immutable overlay zone; build a new one on every map change and swap it in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    serial: u32,
    /// Overlay domains, lowercase, no trailing dot.
    apexes: BTreeSet<String>,
    /// Every existing name under an apex (apexes and empty non-terminals included).
    names: BTreeMap<String, Addrs>,
    /// Reverse names of overlay addresses -> the full names that hold them.
    reverse: BTreeMap<String, BTreeSet<String>>,
    /// Records skipped because a label or the name was not valid DNS.
    rejected: Vec<String>,
}

impl Zone {
    /// Builds the zone. Records whose node, network or domain is not a valid
    /// hostname (letters, digits, hyphens; labels 1..=63, names up to 253) are
    /// skipped and listed by [`Zone::rejected`].
    pub fn from_records(records: Vec<Record>) -> Self {
        Self::with_services(records, Vec::new())
    }

    /// Builds the zone of nodes and services. Like nodes, services whose name,
    /// network or domain is not a valid hostname are skipped and listed by
    /// [`Zone::rejected`].
    pub fn with_services(records: Vec<Record>, services: Vec<ServiceRecord>) -> Self {
        let mut zone = Zone {
            serial: 1,
            ..Zone::default()
        };
        // (domain, node) -> networks with that node, for the short names.
        let mut short: BTreeMap<(String, String), BTreeMap<String, Addrs>> = BTreeMap::new();
        for r in records {
            let name = r.name.to_ascii_lowercase();
            let network = r.network.to_ascii_lowercase();
            let domain = normalize(&r.domain);
            let full = format!("{name}.{network}.{domain}");
            if !is_label(&name) || !is_label(&network) || !is_hostname(&domain) || !fits(&full) {
                zone.rejected
                    .push(format!("{}.{}.{}", r.name, r.network, r.domain));
                continue;
            }
            let mut addrs = Addrs::default();
            addrs.v4.extend(r.ipv4);
            addrs.v6.extend(r.ipv6);
            zone.apexes.insert(domain.clone());
            zone.insert(&full, &domain, &addrs);
            let reverse_names = addrs
                .v4
                .iter()
                .map(|ip| reverse_v4(*ip))
                .chain(addrs.v6.iter().map(|ip| reverse_v6(*ip)));
            for rev in reverse_names {
                zone.reverse.entry(rev).or_default().insert(full.clone());
            }
            let nets = short.entry((domain, name)).or_default();
            let entry = nets.entry(network).or_default();
            entry.v4.extend(addrs.v4);
            entry.v6.extend(addrs.v6);
        }
        for ((domain, name), nets) in short {
            let mut nets = nets.into_values();
            if let (Some(addrs), None) = (nets.next(), nets.next()) {
                let fqdn = format!("{name}.{domain}");
                if fits(&fqdn) {
                    zone.insert(&fqdn, &domain, &addrs);
                }
            }
        }
        for svc in services {
            let name = svc.name.to_ascii_lowercase();
            let network = svc.network.to_ascii_lowercase();
            let domain = normalize(&svc.domain);
            let full = format!("{name}.{SERVICE_LABEL}.{network}.{domain}");
            if !is_label(&name) || !is_label(&network) || !is_hostname(&domain) || !fits(&full) {
                zone.rejected.push(format!(
                    "{}.{SERVICE_LABEL}.{}.{}",
                    svc.name, svc.network, svc.domain
                ));
                continue;
            }
            let mut addrs = Addrs::default();
            addrs.v4.insert(svc.vip);
            zone.apexes.insert(domain.clone());
            zone.insert(&full, &domain, &addrs);
            zone.reverse
                .entry(reverse_v4(svc.vip))
                .or_default()
                .insert(full);
        }
        // The default domain is always ours, even with no network using it (before
        // the first map, or with custom domains only): its names never leak.
        zone.apexes.insert(DEFAULT_DNS_DOMAIN.to_owned());
        for apex in &zone.apexes {
            zone.names.entry(apex.clone()).or_default();
        }
        zone
    }

    /// The zone of a network map ([`records_from_map`], [`services_from_map`]).
    pub fn from_map(map: &NetworkMap) -> Self {
        Self::with_services(records_from_map(map), services_from_map(map))
    }

    /// Sets the SOA serial, for example from the map version (wrapping to 32 bits).
    #[must_use]
    pub fn with_serial(mut self, serial: u32) -> Self {
        self.serial = serial;
        self
    }

    /// The overlay domains (lowercase, no trailing dot).
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.apexes.iter().map(String::as_str)
    }

    /// Names of records skipped as invalid.
    pub fn rejected(&self) -> &[String] {
        &self.rejected
    }

    /// Whether `name` is under (or is) an overlay domain, that is, answered here
    /// and never forwarded.
    pub fn is_authoritative_for(&self, name: &str) -> bool {
        let name = normalize(name);
        self.apex_of(&name).is_some() || self.reverse.contains_key(&name)
    }

    /// Answers a query for `name` (presentation format) of type `qtype`.
    pub fn answer(&self, name: &str, qtype: QueryType) -> Answer {
        let name = normalize(name);
        let Some(apex) = self.apex_of(&name) else {
            return self.answer_reverse(&name, qtype);
        };
        let soa = self.soa(apex);
        let Some(addrs) = self.names.get(&name) else {
            return Answer::Authoritative {
                rcode: Rcode::NxDomain,
                records: Vec::new(),
                soa,
            };
        };
        let mut records = Vec::new();
        if matches!(qtype, QueryType::A | QueryType::Any) {
            records.extend(addrs.v4.iter().copied().map(RecordData::A));
        }
        if matches!(qtype, QueryType::Aaaa | QueryType::Any) {
            records.extend(addrs.v6.iter().copied().map(RecordData::Aaaa));
        }
        if matches!(qtype, QueryType::Soa | QueryType::Any) && name == apex {
            records.push(RecordData::Soa(soa.clone()));
        }
        Answer::Authoritative {
            rcode: Rcode::NoError,
            records,
            soa,
        }
    }

    /// PTR for the reverse name of an overlay address; anything else is not ours.
    fn answer_reverse(&self, name: &str, qtype: QueryType) -> Answer {
        let Some(targets) = self.reverse.get(name) else {
            return Answer::NotAuthoritative;
        };
        let records = if matches!(qtype, QueryType::Ptr | QueryType::Any) {
            targets.iter().cloned().map(RecordData::Ptr).collect()
        } else {
            Vec::new()
        };
        let apex = if name.ends_with(".ip6.arpa") {
            "ip6.arpa"
        } else {
            "in-addr.arpa"
        };
        Answer::Authoritative {
            rcode: Rcode::NoError,
            records,
            soa: self.soa(apex),
        }
    }

    /// The SOA of `apex`.
    fn soa(&self, apex: &str) -> Soa {
        Soa {
            apex: apex.to_owned(),
            mname: format!("ns.{apex}"),
            rname: format!("hostmaster.{apex}"),
            serial: self.serial,
            minimum: OVERLAY_TTL,
        }
    }

    /// The longest overlay domain that `name` (normalized) is at or under.
    fn apex_of(&self, name: &str) -> Option<&str> {
        self.apexes
            .iter()
            .filter(|apex| is_at_or_under(name, apex))
            .max_by_key(|apex| apex.len())
            .map(String::as_str)
    }

    /// Adds `addrs` to `fqdn` and makes every name between it and `apex` exist.
    fn insert(&mut self, fqdn: &str, apex: &str, addrs: &Addrs) {
        let entry = self.names.entry(fqdn.to_owned()).or_default();
        entry.v4.extend(addrs.v4.iter().copied());
        entry.v6.extend(addrs.v6.iter().copied());
        let mut rest = fqdn;
        while let Some((_, parent)) = rest.split_once('.') {
            if !is_at_or_under(parent, apex) {
                break;
            }
            self.names.entry(parent.to_owned()).or_default();
            rest = parent;
        }
    }
}

/// `d.c.b.a.in-addr.arpa` for `a.b.c.d`.
fn reverse_v4(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{d}.{c}.{b}.{a}.in-addr.arpa")
}

/// The `ip6.arpa` name of `ip`: 32 nibbles, least significant first.
fn reverse_v6(ip: Ipv6Addr) -> String {
    let mut out = String::with_capacity(72);
    for byte in ip.octets().iter().rev() {
        out.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
    }
    out.push_str("ip6.arpa");
    out
}

/// Lowercase, without one trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn is_at_or_under(name: &str, apex: &str) -> bool {
    name == apex
        || name
            .strip_suffix(apex)
            .is_some_and(|head| head.ends_with('.') && head.len() > 1)
}

fn fits(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
}

/// A hostname label: letters, digits and inner hyphens, 1..=63 octets.
fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn is_hostname(name: &str) -> bool {
    fits(name) && name.split('.').all(is_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, network: &str, v4: [u8; 4], v6: Option<&str>) -> Record {
        Record {
            name: name.into(),
            network: network.into(),
            domain: "weft.internal".into(),
            ipv4: Some(Ipv4Addr::from(v4)),
            ipv6: v6.map(|s| s.parse().unwrap()),
        }
    }

    fn zone() -> Zone {
        Zone::from_records(vec![
            rec("db", "prod", [100, 64, 0, 2], Some("fd00::2")),
            rec("web", "prod", [100, 64, 0, 3], None),
            rec("web", "dev", [100, 65, 0, 3], None),
            rec("laptop", "dev", [100, 65, 0, 9], None),
        ])
    }

    fn addrs(answer: Answer) -> (Rcode, Vec<RecordData>) {
        match answer {
            Answer::Authoritative { rcode, records, .. } => (rcode, records),
            Answer::NotAuthoritative => panic!("not authoritative"),
        }
    }

    #[test]
    fn full_name_answers_a_and_aaaa() {
        let z = zone();
        let (rcode, records) = addrs(z.answer("db.prod.weft.internal", QueryType::A));
        assert_eq!(rcode, Rcode::NoError);
        assert_eq!(records, vec![RecordData::A(Ipv4Addr::new(100, 64, 0, 2))]);
        let (_, records) = addrs(z.answer("db.prod.weft.internal.", QueryType::Aaaa));
        assert_eq!(records, vec![RecordData::Aaaa("fd00::2".parse().unwrap())]);
    }

    #[test]
    fn names_are_case_insensitive_with_optional_trailing_dot() {
        let z = zone();
        for name in ["DB.Prod.WEFT.internal", "db.prod.weft.internal."] {
            let (_, records) = addrs(z.answer(name, QueryType::A));
            assert_eq!(records.len(), 1, "{name}");
        }
    }

    #[test]
    fn unambiguous_short_name_answers() {
        let z = zone();
        let (rcode, records) = addrs(z.answer("db.weft.internal", QueryType::A));
        assert_eq!(rcode, Rcode::NoError);
        assert_eq!(records, vec![RecordData::A(Ipv4Addr::new(100, 64, 0, 2))]);
        let (_, records) = addrs(z.answer("laptop.weft.internal", QueryType::A));
        assert_eq!(records, vec![RecordData::A(Ipv4Addr::new(100, 65, 0, 9))]);
    }

    #[test]
    fn ambiguous_short_name_does_not_exist_but_full_names_do() {
        let z = zone();
        let (rcode, records) = addrs(z.answer("web.weft.internal", QueryType::A));
        assert_eq!(rcode, Rcode::NxDomain);
        assert!(records.is_empty());
        let (_, records) = addrs(z.answer("web.dev.weft.internal", QueryType::A));
        assert_eq!(records, vec![RecordData::A(Ipv4Addr::new(100, 65, 0, 3))]);
    }

    #[test]
    fn missing_type_is_no_data_not_nxdomain() {
        let z = zone();
        let (rcode, records) = addrs(z.answer("web.prod.weft.internal", QueryType::Aaaa));
        assert_eq!(rcode, Rcode::NoError);
        assert!(records.is_empty());
        let (rcode, _) = addrs(z.answer("web.prod.weft.internal", QueryType::Other));
        assert_eq!(rcode, Rcode::NoError);
    }

    #[test]
    fn unknown_names_under_the_domain_are_nxdomain_never_forwarded() {
        let z = zone();
        for name in [
            "nope.prod.weft.internal",
            "nope.weft.internal",
            "x.db.prod.weft.internal",
            "db.staging.weft.internal",
        ] {
            let (rcode, _) = addrs(z.answer(name, QueryType::A));
            assert_eq!(rcode, Rcode::NxDomain, "{name}");
            assert!(z.is_authoritative_for(name));
        }
    }

    #[test]
    fn apex_and_network_names_exist_without_data() {
        let z = zone();
        let (rcode, records) = addrs(z.answer("prod.weft.internal", QueryType::A));
        assert_eq!((rcode, records.len()), (Rcode::NoError, 0));
        let (rcode, records) = addrs(z.answer("weft.internal", QueryType::A));
        assert_eq!((rcode, records.len()), (Rcode::NoError, 0));
        let (_, records) = addrs(z.answer("WEFT.internal.", QueryType::Soa));
        let [RecordData::Soa(soa)] = records.as_slice() else {
            panic!("{records:?}")
        };
        assert_eq!(soa.apex, "weft.internal");
        // Not at the apex: no SOA in the answer.
        let (_, records) = addrs(z.answer("db.prod.weft.internal", QueryType::Soa));
        assert!(records.is_empty());
    }

    #[test]
    fn other_names_are_not_ours() {
        let z = zone();
        for name in [
            "example.com",
            "internal",
            "xweft.internal",
            "weft.internal.example",
        ] {
            assert_eq!(
                z.answer(name, QueryType::A),
                Answer::NotAuthoritative,
                "{name}"
            );
            assert!(!z.is_authoritative_for(name));
        }
    }

    #[test]
    fn empty_zone_still_owns_the_default_domain() {
        let z = Zone::from_records(Vec::new());
        let (rcode, _) = addrs(z.answer("db.prod.weft.internal", QueryType::A));
        assert_eq!(rcode, Rcode::NxDomain);
        assert_eq!(
            z.answer("example.com", QueryType::A),
            Answer::NotAuthoritative
        );
    }

    #[test]
    fn overlay_addresses_have_reverse_names() {
        let z = zone();
        let (rcode, records) = addrs(z.answer("2.0.64.100.in-addr.arpa.", QueryType::Ptr));
        assert_eq!(rcode, Rcode::NoError);
        assert_eq!(
            records,
            vec![RecordData::Ptr("db.prod.weft.internal".into())]
        );
        let v6 = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
        let (_, records) = addrs(z.answer(v6, QueryType::Ptr));
        assert_eq!(
            records,
            vec![RecordData::Ptr("db.prod.weft.internal".into())]
        );
        assert!(z.is_authoritative_for(v6));
        let (rcode, records) = addrs(z.answer("2.0.64.100.in-addr.arpa", QueryType::A));
        assert_eq!((rcode, records.len()), (Rcode::NoError, 0));
        // Other addresses are not ours.
        assert_eq!(
            z.answer("1.2.0.192.in-addr.arpa", QueryType::Ptr),
            Answer::NotAuthoritative
        );
        assert!(!z.is_authoritative_for("99.0.64.100.in-addr.arpa"));
    }

    #[test]
    fn any_returns_every_address() {
        let z = zone();
        let (_, records) = addrs(z.answer("db.prod.weft.internal", QueryType::Any));
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn node_named_like_a_network_keeps_both() {
        let z = Zone::from_records(vec![
            rec("prod", "lab", [100, 66, 0, 1], None),
            rec("db", "prod", [100, 64, 0, 2], None),
        ]);
        let (_, records) = addrs(z.answer("prod.weft.internal", QueryType::A));
        assert_eq!(records, vec![RecordData::A(Ipv4Addr::new(100, 66, 0, 1))]);
        let (_, records) = addrs(z.answer("db.prod.weft.internal", QueryType::A));
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn separate_domains_resolve_short_names_separately() {
        let mut other = rec("web", "corp", [10, 9, 0, 1], None);
        other.domain = "Corp.Example.".into();
        let z = Zone::from_records(vec![rec("web", "prod", [100, 64, 0, 3], None), other]);
        let (_, records) = addrs(z.answer("web.weft.internal", QueryType::A));
        assert_eq!(records, vec![RecordData::A(Ipv4Addr::new(100, 64, 0, 3))]);
        let (_, records) = addrs(z.answer("web.corp.example", QueryType::A));
        assert_eq!(records, vec![RecordData::A(Ipv4Addr::new(10, 9, 0, 1))]);
        assert_eq!(
            z.domains().collect::<Vec<_>>(),
            ["corp.example", "weft.internal"]
        );
    }

    #[test]
    fn invalid_names_are_rejected_not_served() {
        let z = Zone::from_records(vec![
            rec("bad name", "prod", [100, 64, 0, 4], None),
            rec("-x", "prod", [100, 64, 0, 5], None),
            rec("ok", "prod", [100, 64, 0, 6], None),
        ]);
        assert_eq!(z.rejected().len(), 2);
        let (rcode, _) = addrs(z.answer("ok.weft.internal", QueryType::A));
        assert_eq!(rcode, Rcode::NoError);
    }

    #[test]
    fn a_rename_is_a_new_zone() {
        let before = zone();
        let after = Zone::from_records(vec![rec("database", "prod", [100, 64, 0, 2], None)]);
        assert_eq!(
            addrs(after.answer("db.prod.weft.internal", QueryType::A)).0,
            Rcode::NxDomain
        );
        assert_eq!(
            addrs(before.answer("db.prod.weft.internal", QueryType::A)).0,
            Rcode::NoError
        );
        assert_eq!(
            addrs(after.answer("database.weft.internal", QueryType::A))
                .1
                .len(),
            1
        );
    }

    fn svc(name: &str, network: &str, vip: [u8; 4]) -> ServiceRecord {
        ServiceRecord {
            name: name.into(),
            network: network.into(),
            domain: "weft.internal".into(),
            vip: Ipv4Addr::from(vip),
        }
    }

    fn zone_with_services() -> Zone {
        Zone::with_services(
            vec![
                rec("db1", "prod", [100, 64, 0, 2], None),
                rec("web", "dev", [100, 65, 0, 3], None),
            ],
            vec![
                svc("db", "prod", [100, 127, 255, 1]),
                svc("Cache", "prod", [100, 127, 255, 2]),
            ],
        )
    }

    #[test]
    fn a_service_name_answers_its_vip_and_aaaa_has_no_data() {
        let z = zone_with_services();
        let (rcode, records) = addrs(z.answer("db.svc.prod.weft.internal", QueryType::A));
        assert_eq!(rcode, Rcode::NoError);
        assert_eq!(
            records,
            vec![RecordData::A(Ipv4Addr::new(100, 127, 255, 1))]
        );
        let (_, records) = addrs(z.answer("CACHE.svc.prod.weft.internal.", QueryType::A));
        assert_eq!(
            records,
            vec![RecordData::A(Ipv4Addr::new(100, 127, 255, 2))]
        );
        let (rcode, records) = addrs(z.answer("db.svc.prod.weft.internal", QueryType::Aaaa));
        assert_eq!((rcode, records.len()), (Rcode::NoError, 0));
        let (_, records) = addrs(z.answer("db.svc.prod.weft.internal", QueryType::Any));
        assert_eq!(records.len(), 1);
        // Nodes are unchanged.
        let (_, records) = addrs(z.answer("db1.prod.weft.internal", QueryType::A));
        assert_eq!(records, vec![RecordData::A(Ipv4Addr::new(100, 64, 0, 2))]);
    }

    #[test]
    fn services_not_listed_are_nxdomain_and_never_forwarded() {
        let z = zone_with_services();
        for name in [
            // Not in this node's map (the policy does not let it use them).
            "secret.svc.prod.weft.internal",
            // In another network than the one asked.
            "db.svc.dev.weft.internal",
            "x.db.svc.prod.weft.internal",
            // No short form.
            "db.svc.weft.internal",
            "db.weft.internal",
        ] {
            let (rcode, records) = addrs(z.answer(name, QueryType::A));
            assert_eq!((rcode, records.len()), (Rcode::NxDomain, 0), "{name}");
            assert!(z.is_authoritative_for(name), "{name}");
        }
        // The service label itself exists without data while a service does.
        let (rcode, records) = addrs(z.answer("svc.prod.weft.internal", QueryType::A));
        assert_eq!((rcode, records.len()), (Rcode::NoError, 0));
        // A node without any usable service: everything under svc is NXDOMAIN.
        let z = Zone::from_records(vec![rec("db1", "prod", [100, 64, 0, 2], None)]);
        for name in ["db.svc.prod.weft.internal", "svc.prod.weft.internal"] {
            let (rcode, _) = addrs(z.answer(name, QueryType::A));
            assert_eq!(rcode, Rcode::NxDomain, "{name}");
        }
    }

    #[test]
    fn a_vip_has_a_reverse_name_and_bad_service_names_are_rejected() {
        let z = zone_with_services();
        let (_, records) = addrs(z.answer("1.255.127.100.in-addr.arpa", QueryType::Ptr));
        assert_eq!(
            records,
            vec![RecordData::Ptr("db.svc.prod.weft.internal".into())]
        );
        let z = Zone::with_services(
            vec![],
            vec![
                svc("bad name", "prod", [100, 127, 255, 9]),
                svc("ok", "prod", [100, 127, 255, 8]),
            ],
        );
        assert_eq!(z.rejected(), ["bad name.svc.prod.weft.internal"]);
        let (rcode, _) = addrs(z.answer("ok.svc.prod.weft.internal", QueryType::A));
        assert_eq!(rcode, Rcode::NoError);
    }

    #[test]
    fn a_node_named_svc_keeps_its_address_beside_the_services() {
        let z = Zone::with_services(
            vec![rec("svc", "prod", [100, 64, 0, 7], None)],
            vec![svc("db", "prod", [100, 127, 255, 1])],
        );
        let (_, records) = addrs(z.answer("svc.prod.weft.internal", QueryType::A));
        assert_eq!(records, vec![RecordData::A(Ipv4Addr::new(100, 64, 0, 7))]);
        let (_, records) = addrs(z.answer("db.svc.prod.weft.internal", QueryType::A));
        assert_eq!(
            records,
            vec![RecordData::A(Ipv4Addr::new(100, 127, 255, 1))]
        );
    }

    #[test]
    fn from_map_includes_this_node_and_peers() {
        use weft_proto::NodeKey;
        use weft_proto::netmap::{NetworkView, Peer, SelfNode};
        let map = NetworkMap {
            api_version: weft_proto::api::API_VERSION,
            version: 7,
            node: SelfNode {
                node_key: NodeKey::from_bytes([1; 32]),
                name: "me".into(),
                tags: vec![],
            },
            networks: vec![NetworkView {
                name: "prod".into(),
                ipv4_cidr: "100.64.0.0/10".parse().unwrap(),
                ipv6_prefix: None,
                dns_domain: DEFAULT_DNS_DOMAIN.into(),
                ipv4: Ipv4Addr::new(100, 64, 0, 1),
                ipv6: Some("fd00::1".parse().unwrap()),
                peers: vec![Peer {
                    node_key: NodeKey::from_bytes([2; 32]),
                    name: "db".into(),
                    tags: vec![],
                    ipv4: Ipv4Addr::new(100, 64, 0, 2),
                    ipv6: None,
                    endpoints: vec![],
                    last_seen_ms: None,
                    online: true,
                }],
                routes: vec![],
                serves: vec![],
                anomaly: None,
            }],
            relays: vec![],
            policy: None,
            data: vec![],
            secrets: vec![],
            host_firewall: None,
            dns_blocklist: None,
            services: vec![weft_proto::service::ServiceView {
                name: "pg".into(),
                network: "prod".into(),
                vip: Ipv4Addr::new(100, 127, 255, 1),
                fqdn: "pg.svc.prod.weft.internal".into(),
                ports: vec!["5432/tcp".parse().unwrap()],
                instances: vec![],
            }],
            provides: vec![],
            ssh_hosts: vec![],
        };
        let z = Zone::from_map(&map);
        let (_, records) = addrs(z.answer("pg.svc.prod.weft.internal", QueryType::A));
        assert_eq!(
            records,
            vec![RecordData::A(Ipv4Addr::new(100, 127, 255, 1))]
        );
        let (_, records) = addrs(z.answer("me.prod.weft.internal", QueryType::Any));
        assert_eq!(records.len(), 2);
        let (_, records) = addrs(z.answer("db.weft.internal", QueryType::A));
        assert_eq!(records, vec![RecordData::A(Ipv4Addr::new(100, 64, 0, 2))]);
    }
}
