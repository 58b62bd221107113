//! IP prefixes (CIDRs) as they appear in the API: `100.64.0.0/10`, `fd7a:115c::/48`.
//!
//! Parsing is strict: the address must be the network address (no host bits set),
//! so a typo like `100.64.0.1/10` is reported instead of silently widened.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a string is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Longer than any valid CIDR (bounds the work).
    #[error("CIDR is too long")]
    TooLong,
    /// No `/prefix` part.
    #[error("CIDR must be ADDRESS/PREFIX, for example 100.64.0.0/10")]
    MissingPrefix,
    /// The address part does not parse.
    #[error("CIDR address is not a valid IP address of the right family")]
    BadAddress,
    /// The prefix length does not parse or is too long for the family.
    #[error("CIDR prefix length is not a number in range")]
    BadPrefix,
    /// Bits beyond the prefix are set.
    #[error("CIDR address has host bits set; did you mean {0}?")]
    HostBitsSet(String),
}

/// An IPv4 prefix with no host bits set.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

/// An IPv6 prefix with no host bits set.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv6Net {
    addr: Ipv6Addr,
    prefix: u8,
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

fn split(s: &str) -> Result<(&str, u8), CidrError> {
    // "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128" is 49 characters.
    if s.len() > 50 {
        return Err(CidrError::TooLong);
    }
    let (addr, prefix) = s.split_once('/').ok_or(CidrError::MissingPrefix)?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CidrError::BadPrefix);
    }
    let prefix: u8 = prefix.parse().map_err(|_| CidrError::BadPrefix)?;
    Ok((addr, prefix))
}

impl Ipv4Net {
    /// Builds a prefix; fails when `prefix > 32` or host bits are set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError::BadPrefix);
        }
        let bits = u32::from(addr);
        let net = bits & mask32(prefix);
        if net != bits {
            return Err(CidrError::HostBitsSet(format!(
                "{}/{prefix}",
                Ipv4Addr::from(net)
            )));
        }
        Ok(Self { addr, prefix })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses in the prefix (2^(32 - prefix)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The address at `offset` from the network address, if inside the prefix.
    pub fn nth(&self, offset: u64) -> Option<Ipv4Addr> {
        if offset >= self.size() {
            return None;
        }
        let offset = u32::try_from(offset).ok()?;
        Some(Ipv4Addr::from(u32::from(self.addr) + offset))
    }

    /// The offset of `ip` from the network address, if inside the prefix.
    pub fn offset_of(&self, ip: Ipv4Addr) -> Option<u64> {
        let bits = u32::from(ip);
        (bits & mask32(self.prefix) == u32::from(self.addr))
            .then(|| u64::from(bits - u32::from(self.addr)))
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.offset_of(ip).is_some()
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let p = self.prefix.min(other.prefix);
        u32::from(self.addr) & mask32(p) == u32::from(other.addr) & mask32(p)
    }
}

impl Ipv6Net {
    /// Builds a prefix; fails when `prefix > 128` or host bits are set.
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 128 {
            return Err(CidrError::BadPrefix);
        }
        let bits = u128::from(addr);
        let net = bits & mask128(prefix);
        if net != bits {
            return Err(CidrError::HostBitsSet(format!(
                "{}/{prefix}",
                Ipv6Addr::from(net)
            )));
        }
        Ok(Self { addr, prefix })
    }

    /// The network address.
    pub fn network(&self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// The address at `offset` from the network address, if inside the prefix.
    pub fn nth(&self, offset: u128) -> Option<Ipv6Addr> {
        let host_bits = 128 - u32::from(self.prefix);
        if host_bits < 128 && offset >> host_bits != 0 {
            return None;
        }
        Some(Ipv6Addr::from(u128::from(self.addr) | offset))
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask128(self.prefix) == u128::from(self.addr)
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        let p = self.prefix.min(other.prefix);
        u128::from(self.addr) & mask128(p) == u128::from(other.addr) & mask128(p)
    }
}

/// Why a prefix cannot be an overlay network or a routed subnet.
///
/// Its `Display` text completes a sentence that starts with the prefix, as in
/// `format!("route {prefix} {err}")`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unroutable {
    /// `/0`: every address.
    #[error("is a default route; only subnets can be routed")]
    Default,
    /// It overlaps address space that is never a unicast subnet (named).
    #[error("overlaps {0}, which cannot be routed")]
    Reserved(&'static str),
}

/// IPv4 space that is never an overlay network or a gateway's subnet.
const RESERVED_V4: [(Ipv4Addr, u8, &str); 6] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (0.0.0.0/8)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (127.0.0.0/8)"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local (169.254.0.0/16)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (224.0.0.0/4)"),
    (
        Ipv4Addr::new(255, 255, 255, 255),
        32,
        "broadcast (255.255.255.255)",
    ),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (240.0.0.0/4)"),
];

/// IPv6 space that is never an overlay network.
const RESERVED_V6: [(Ipv6Addr, u8, &str); 5] = [
    (
        Ipv6Addr::UNSPECIFIED,
        128,
        "the unspecified address (::/128)",
    ),
    (Ipv6Addr::LOCALHOST, 128, "loopback (::1/128)"),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "IPv4-mapped space (::ffff:0:0/96)",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local (fe80::/10)",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast (ff00::/8)",
    ),
];

/// The one check of "can this be a subnet": an overlay network's IPv4 CIDR and
/// a gateway's subnet route (controller and CLI) both go through it. Refuses
/// the default route and any prefix overlapping "this network" (0.0.0.0/8),
/// loopback, link-local, multicast, reserved (240.0.0.0/4) or broadcast space.
pub fn check_routable_v4(prefix: &Ipv4Net) -> Result<(), Unroutable> {
    if prefix.prefix_len() == 0 {
        return Err(Unroutable::Default);
    }
    // Name the range that holds the prefix if there is one (a /32 broadcast is
    // "broadcast", not "reserved"), else the first it overlaps.
    let hits = RESERVED_V4.iter().filter_map(|(addr, len, what)| {
        let r = Ipv4Net::new(*addr, *len).ok()?;
        r.overlaps(prefix)
            .then_some((r.prefix_len() <= prefix.prefix_len(), *what))
    });
    match hits.clone().find(|h| h.0).or_else(|| hits.clone().next()) {
        Some((_, what)) => Err(Unroutable::Reserved(what)),
        None => Ok(()),
    }
}

/// [`check_routable_v4`] for an overlay network's IPv6 prefix: refuses the
/// default route and any prefix overlapping the unspecified or loopback
/// address, IPv4-mapped space, link-local (fe80::/10) or multicast (ff00::/8).
pub fn check_routable_v6(prefix: &Ipv6Net) -> Result<(), Unroutable> {
    if prefix.prefix_len() == 0 {
        return Err(Unroutable::Default);
    }
    let hits = RESERVED_V6.iter().filter_map(|(addr, len, what)| {
        let r = Ipv6Net::new(*addr, *len).ok()?;
        r.overlaps(prefix)
            .then_some((r.prefix_len() <= prefix.prefix_len(), *what))
    });
    match hits.clone().find(|h| h.0).or_else(|| hits.clone().next()) {
        Some((_, what)) => Err(Unroutable::Reserved(what)),
        None => Ok(()),
    }
}

impl FromStr for Ipv4Net {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = split(s)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| CidrError::BadAddress)?;
        Self::new(addr, prefix)
    }
}

impl FromStr for Ipv6Net {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = split(s)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| CidrError::BadAddress)?;
        Self::new(addr, prefix)
    }
}

/// Why `ep` can never be a peer's underlay endpoint, or `None` when it may be:
/// port 0, the unspecified address, loopback (it would name the sender itself),
/// multicast or the IPv4 broadcast address (IPv4-mapped IPv6 forms included).
/// Used by the controller on what nodes report and by agents on what maps say.
pub fn unusable_endpoint(ep: &std::net::SocketAddr) -> Option<&'static str> {
    let ip = ep.ip().to_canonical();
    if ep.port() == 0 {
        Some("port 0")
    } else if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip == std::net::IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("the broadcast address")
    } else {
        None
    }
}

macro_rules! text_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}", self.addr, self.prefix)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
text_impls!(Ipv4Net);
text_impls!(Ipv6Net);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_rejects() {
        let n: Ipv4Net = "100.64.0.0/10".parse().unwrap();
        assert_eq!(n.size(), 1 << 22);
        assert_eq!(n.nth(1), Some(Ipv4Addr::new(100, 64, 0, 1)));
        assert_eq!(n.nth(1 << 22), None);
        assert!(n.contains(Ipv4Addr::new(100, 127, 255, 255)));
        assert!(!n.contains(Ipv4Addr::new(100, 128, 0, 0)));
        assert_eq!(
            "100.64.0.1/10".parse::<Ipv4Net>(),
            Err(CidrError::HostBitsSet("100.64.0.0/10".into()))
        );
        assert_eq!(
            "100.64.0.0/33".parse::<Ipv4Net>(),
            Err(CidrError::BadPrefix)
        );
        assert_eq!(
            "100.64.0.0".parse::<Ipv4Net>(),
            Err(CidrError::MissingPrefix)
        );
        assert_eq!("fd00::/8".parse::<Ipv4Net>(), Err(CidrError::BadAddress));
        assert_eq!("1.2.3.0/+8".parse::<Ipv4Net>(), Err(CidrError::BadPrefix));
        let v6: Ipv6Net = "fd7a:115c:a1e0::/48".parse().unwrap();
        assert_eq!(v6.nth(5), Some("fd7a:115c:a1e0::5".parse().unwrap()));
        assert!(v6.contains("fd7a:115c:a1e0:1::1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Ipv4Net>().unwrap().overlaps(&n));
        assert!(!"10.0.0.0/8".parse::<Ipv4Net>().unwrap().overlaps(&n));
    }

    #[test]
    fn routable_prefixes() {
        let v4 = |s: &str| check_routable_v4(&s.parse().unwrap());
        assert_eq!(v4("192.168.50.0/24"), Ok(()));
        assert_eq!(v4("100.64.0.0/10"), Ok(()));
        assert_eq!(v4("0.0.0.0/0"), Err(Unroutable::Default));
        for (cidr, what) in [
            ("0.0.0.0/8", "this network"),
            ("0.0.0.0/16", "this network"),
            ("127.0.0.0/8", "loopback"),
            ("127.0.0.1/32", "loopback"),
            ("96.0.0.0/3", "loopback"),
            ("169.254.0.0/16", "link-local"),
            ("169.254.7.0/24", "link-local"),
            ("224.0.0.0/4", "multicast"),
            ("239.1.0.0/16", "multicast"),
            ("240.0.0.0/4", "reserved"),
            ("255.255.255.255/32", "broadcast"),
        ] {
            let e = v4(cidr).unwrap_err().to_string();
            assert!(e.contains(what), "{cidr}: {e}");
        }
        let v6 = |s: &str| check_routable_v6(&s.parse().unwrap());
        assert_eq!(v6("fd7a:115c:a1e0::/48"), Ok(()));
        assert_eq!(v6("2001:db8::/32"), Ok(()));
        assert_eq!(v6("::/0"), Err(Unroutable::Default));
        for (cidr, what) in [
            ("::/128", "unspecified"),
            ("::1/128", "loopback"),
            ("::/96", "unspecified"),
            ("::ffff:0:0/96", "IPv4-mapped"),
            ("fe80::/10", "link-local"),
            ("fe80::/64", "link-local"),
            ("ff00::/8", "multicast"),
            ("ff02::/16", "multicast"),
            ("f000::/4", "link-local"),
        ] {
            let e = v6(cidr).unwrap_err().to_string();
            assert!(e.contains(what), "{cidr}: {e}");
        }
    }

    #[test]
    fn unusable_endpoints() {
        let bad = |s: &str| unusable_endpoint(&s.parse().unwrap());
        assert_eq!(bad("192.0.2.1:41641"), None);
        assert_eq!(bad("[2001:db8::1]:41641"), None);
        assert_eq!(bad("10.0.0.1:41641"), None);
        for (ep, what) in [
            ("192.0.2.1:0", "port 0"),
            ("0.0.0.0:41641", "unspecified"),
            ("[::]:41641", "unspecified"),
            ("127.0.0.1:41641", "loopback"),
            ("127.9.9.9:41641", "loopback"),
            ("[::1]:41641", "loopback"),
            ("[::ffff:127.0.0.1]:41641", "loopback"),
            ("224.0.0.251:5353", "multicast"),
            ("[ff02::1]:41641", "multicast"),
            ("255.255.255.255:41641", "broadcast"),
        ] {
            assert!(
                bad(ep).is_some_and(|r| r.contains(what)),
                "{ep}: {:?}",
                bad(ep)
            );
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,60}") {
            let _ = s.parse::<Ipv4Net>();
            let _ = s.parse::<Ipv6Net>();
        }

        #[test]
        fn round_trip(a in any::<u32>(), p in 0u8..=32) {
            let net = Ipv4Net::new(Ipv4Addr::from(a & mask32(p)), p).unwrap();
            prop_assert_eq!(net.to_string().parse::<Ipv4Net>(), Ok(net));
            prop_assert_eq!(net.offset_of(net.network()), Some(0));
        }
    }
}
