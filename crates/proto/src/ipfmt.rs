//! IP addresses and prefixes written as text without `core::fmt`.
//!
//! A policy edit at 10,000 nodes encodes one compiled policy per node, each
//! with a few hundred prefixes (every flow rule's peers, in both families):
//! over a million prefixes per edit. `ipnet`'s `Serialize` goes through
//! `Display` and `core::fmt`, and that formatting was half of the
//! controller's CPU for the edit (perf, `cargo bench -p weft-controller-bin
//! --bench fanout -- --nodes 10000`). These writers produce exactly the text
//! of the standard library's `Display` (RFC 5952 for IPv6, with the
//! IPv4-mapped form; tested against it), several times faster; [`nets`] is a
//! `serialize_with` for lists of prefixes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serializer;
use serde::ser::SerializeSeq as _;

/// The longest text of a prefix: a full IPv6 address (39) and `/128`.
pub const MAX_NET_LEN: usize = 43;

/// A small fixed buffer being written to.
struct Buf<'a> {
    out: &'a mut [u8; MAX_NET_LEN],
    len: usize,
}

impl Buf<'_> {
    fn byte(&mut self, b: u8) {
        if let Some(slot) = self.out.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn bytes(&mut self, s: &[u8]) {
        for b in s {
            self.byte(*b);
        }
    }

    /// A number below 1,000 in decimal.
    fn dec(&mut self, v: u8) {
        if v >= 100 {
            self.byte(b'0' + v / 100);
        }
        if v >= 10 {
            self.byte(b'0' + (v / 10) % 10);
        }
        self.byte(b'0' + v % 10);
    }

    /// A 16-bit segment in lowercase hex, without leading zeros.
    fn hex(&mut self, v: u16) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut started = false;
        for shift in [12u32, 8, 4, 0] {
            let d = usize::from((v >> shift) & 0xf);
            if d != 0 || started || shift == 0 {
                started = true;
                self.byte(DIGITS[d]);
            }
        }
    }

    fn v4(&mut self, a: Ipv4Addr) {
        let [a, b, c, d] = a.octets();
        self.dec(a);
        self.byte(b'.');
        self.dec(b);
        self.byte(b'.');
        self.dec(c);
        self.byte(b'.');
        self.dec(d);
    }

    fn segments(&mut self, segs: &[u16]) {
        for (i, s) in segs.iter().enumerate() {
            if i > 0 {
                self.byte(b':');
            }
            self.hex(*s);
        }
    }

    fn v6(&mut self, a: Ipv6Addr) {
        if let Some(v4) = a.to_ipv4_mapped() {
            self.bytes(b"::ffff:");
            self.v4(v4);
            return;
        }
        let segs = a.segments();
        // The longest run of zero segments (the first of equal ones), as
        // the standard library picks it; a single zero is not compressed.
        let (mut best, mut best_len, mut cur, mut cur_len) = (0usize, 0usize, 0usize, 0usize);
        for (i, s) in segs.iter().enumerate() {
            if *s == 0 {
                if cur_len == 0 {
                    cur = i;
                }
                cur_len += 1;
                if cur_len > best_len {
                    best = cur;
                    best_len = cur_len;
                }
            } else {
                cur_len = 0;
            }
        }
        if best_len > 1 {
            self.segments(&segs[..best]);
            self.bytes(b"::");
            self.segments(&segs[best + best_len..]);
        } else {
            self.segments(&segs);
        }
    }
}

/// Writes `addr` as the standard library's `Display` does; returns the text.
pub fn ip(addr: IpAddr, out: &mut [u8; MAX_NET_LEN]) -> &str {
    let mut b = Buf { out, len: 0 };
    match addr {
        IpAddr::V4(a) => b.v4(a),
        IpAddr::V6(a) => b.v6(a),
    }
    let len = b.len;
    as_str(&out[..len])
}

/// Writes `net` as `ipnet`'s `Display` does (`ADDRESS/LEN`); returns the text.
pub fn net<'a>(net: &IpNet, out: &'a mut [u8; MAX_NET_LEN]) -> &'a str {
    let mut b = Buf { out, len: 0 };
    match net {
        IpNet::V4(n) => b.v4(n.addr()),
        IpNet::V6(n) => b.v6(n.addr()),
    }
    b.byte(b'/');
    b.dec(net.prefix_len());
    let len = b.len;
    as_str(&out[..len])
}

/// Only ASCII digits, hex letters, `.`, `:` and `/` are ever written.
fn as_str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// `serialize_with` for a list of prefixes: the same JSON as `ipnet`'s own
/// `Serialize` (an array of strings), without `core::fmt`.
pub fn nets<S: Serializer>(v: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    if !s.is_human_readable() {
        return serde::Serialize::serialize(v, s);
    }
    let mut seq = s.serialize_seq(Some(v.len()))?;
    let mut buf = [0u8; MAX_NET_LEN];
    for n in v {
        seq.serialize_element(net(n, &mut buf))?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(a: IpAddr) {
        let mut buf = [0u8; MAX_NET_LEN];
        assert_eq!(ip(a, &mut buf), a.to_string(), "{a:?}");
    }

    #[test]
    fn edge_addresses_read_as_the_standard_library_writes_them() {
        for s in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "100.64.9.10",
            "::",
            "::1",
            "1::",
            "1::1",
            "1:0:1::",
            "1:0:0:1::",
            "0:1:0:0:1::",
            "1:0:0:2:0:0:0:3",
            "1:0:0:0:2:0:0:3",
            "::ffff:10.1.2.3",
            "::ffff:0.0.0.0",
            "::10.1.2.3",
            "64:ff9b::a01:203",
            "fd7a:115c:a1e0:ab12:4843:cd96:6258:b240",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe80::1:0:0:0",
            "0:0:1:0:0:0:0:1",
        ] {
            let a: IpAddr = s.parse().unwrap();
            check(a);
        }
    }

    #[test]
    fn the_longest_prefixes_fit() {
        let mut buf = [0u8; MAX_NET_LEN];
        let n: IpNet = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"
            .parse()
            .unwrap();
        assert_eq!(net(&n, &mut buf), n.to_string());
        let n: IpNet = "255.255.255.255/32".parse().unwrap();
        assert_eq!(net(&n, &mut buf), n.to_string());
    }

    #[test]
    fn serialize_with_writes_what_ipnet_writes() {
        #[derive(serde::Serialize)]
        struct Fast<'a>(#[serde(serialize_with = "nets")] &'a [IpNet]);
        let v: Vec<IpNet> = ["10.0.0.0/8", "fd00::/8", "::ffff:1.2.3.4/128", "0.0.0.0/0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            serde_json::to_string(&Fast(&v)).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
    }

    /// Segments drawn mostly from 0 and a few values, so zero runs of every
    /// length and position occur.
    fn segment() -> impl Strategy<Value = u16> {
        prop_oneof![4 => Just(0u16), 1 => Just(0xffff), 1 => Just(1), 2 => any::<u16>()]
    }

    proptest! {
        #[test]
        fn every_address_reads_as_the_standard_library_writes_it(
            segs in proptest::array::uniform8(segment()),
            v4 in any::<u32>(),
            len6 in 0u8..=128,
            len4 in 0u8..=32,
        ) {
            let a6 = Ipv6Addr::from(segs);
            check(IpAddr::V6(a6));
            check(IpAddr::V4(Ipv4Addr::from(v4)));
            let mut buf = [0u8; MAX_NET_LEN];
            let n6 = IpNet::new(IpAddr::V6(a6), len6).unwrap();
            prop_assert_eq!(net(&n6, &mut buf), n6.to_string());
            let n4 = IpNet::new(IpAddr::V4(Ipv4Addr::from(v4)), len4).unwrap();
            prop_assert_eq!(net(&n4, &mut buf), n4.to_string());
        }
    }
}
