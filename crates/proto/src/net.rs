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
