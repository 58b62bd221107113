//! One checked, read-only view of an IPv4 or IPv6 packet: the header fields the
//! data plane and the policy matcher need, and where the transport header starts.
//!
//! The tunnel core routes, checks sources and builds ICMP errors from it; the
//! matcher reads its [`crate::FiveTuple`] from it ([`crate::FiveTuple::from_view`]),
//! so a packet is parsed once and both agree on what it is. Every offset is
//! checked at construction ([`IpView::parse`]); nothing here panics on any input
//! (property tests below).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::matcher::PacketError;

/// Most IPv6 extension headers walked before a packet is refused as malformed.
pub const MAX_EXT_HEADERS: usize = 8;

/// IPv6 next-header values of the extension headers that are walked: hop-by-hop
/// options, routing, fragment, authentication header, destination options.
const EXT_HEADERS: [u8; 5] = [0, 43, 44, 51, 60];

/// Validated header fields of an IPv4 or IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpView {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol: IPv4's protocol field; for IPv6 the next header after
    /// the extension headers (at most [`MAX_EXT_HEADERS`] of them).
    pub protocol: u8,
    /// Length of the fixed IP header in bytes (IPv4 IHL·4, IPv6 40).
    pub header_len: usize,
    /// Where the transport header starts: `header_len` plus the IPv6 extension
    /// headers. Never beyond `total_len`.
    pub transport_offset: usize,
    /// Total length the header claims (never more than the buffer).
    pub total_len: usize,
    /// A non-first fragment: it carries no transport header.
    pub fragment: bool,
}

impl IpView {
    /// Parses the headers; the buffer may carry trailing bytes beyond
    /// `total_len`, which no accessor reads.
    #[inline]
    pub fn parse(pkt: &[u8]) -> Result<Self, PacketError> {
        let first = *pkt.first().ok_or(PacketError::Truncated)?;
        match first >> 4 {
            4 => Self::parse_v4(pkt, first),
            6 => Self::parse_v6(pkt),
            _ => Err(PacketError::Version),
        }
    }

    #[inline]
    fn parse_v4(pkt: &[u8], first: u8) -> Result<Self, PacketError> {
        let h = pkt.get(..20).ok_or(PacketError::Truncated)?;
        let header_len = usize::from(first & 0x0f) * 4;
        if header_len < 20 {
            return Err(PacketError::Header);
        }
        let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if total_len < header_len || total_len > pkt.len() {
            return Err(PacketError::Truncated);
        }
        let frag_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
        Ok(Self {
            src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
            dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
            protocol: h[9],
            header_len,
            transport_offset: header_len,
            total_len,
            fragment: frag_offset != 0,
        })
    }

    fn parse_v6(pkt: &[u8]) -> Result<Self, PacketError> {
        let h = pkt.get(..40).ok_or(PacketError::Truncated)?;
        let total_len = 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
        if total_len > pkt.len() {
            return Err(PacketError::Truncated);
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        dst.copy_from_slice(&h[24..40]);
        let (protocol, transport_offset, fragment) = walk_extensions(&pkt[..total_len], h[6])?;
        Ok(Self {
            src: IpAddr::V6(Ipv6Addr::from(src)),
            dst: IpAddr::V6(Ipv6Addr::from(dst)),
            protocol,
            header_len: 40,
            transport_offset,
            total_len,
            fragment,
        })
    }

    /// The transport header and payload (empty for a packet that has none).
    #[inline]
    pub fn transport<'a>(&self, pkt: &'a [u8]) -> &'a [u8] {
        pkt.get(self.transport_offset..self.total_len)
            .unwrap_or_default()
    }

    /// Source and destination ports for TCP/UDP (None for other protocols, a
    /// non-first fragment, or a packet too short to carry them).
    pub fn ports(&self, pkt: &[u8]) -> Option<(u16, u16)> {
        if self.fragment
            || (self.protocol != crate::ip_proto::TCP && self.protocol != crate::ip_proto::UDP)
        {
            return None;
        }
        let t = self.transport(pkt).get(..4)?;
        Some((
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
        ))
    }
}

/// Walks IPv6 extension headers from `next` (the fixed header's next header)
/// inside `pkt` (cut to the packet's total length). Returns the transport
/// protocol, its offset, and whether this is a non-first fragment (the walk
/// stops there: what follows is not a header).
fn walk_extensions(pkt: &[u8], mut next: u8) -> Result<(u8, usize, bool), PacketError> {
    let mut off = 40;
    let mut walked = 0;
    while EXT_HEADERS.contains(&next) {
        walked += 1;
        if walked > MAX_EXT_HEADERS {
            return Err(PacketError::Header);
        }
        let ext = pkt.get(off..off + 8).ok_or(PacketError::Truncated)?;
        let (len, fragment) = match next {
            44 => (8, u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0),
            51 => ((usize::from(ext[1]) + 2) * 4, false),
            _ => ((usize::from(ext[1]) + 1) * 8, false),
        };
        next = ext[0];
        off += len;
        if off > pkt.len() {
            return Err(PacketError::Truncated);
        }
        if fragment {
            return Ok((next, off, true));
        }
    }
    Ok((next, off, false))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use proptest::prelude::*;

    fn v6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        p[4..6].copy_from_slice(&(rest.len() as u16).to_be_bytes());
        p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn ipv4_header_and_bounds() {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p.extend_from_slice(&[0x12, 0x34, 0, 53, 0, 8, 0, 0]);
        p.extend_from_slice(&[0xee; 5]); // trailing bytes beyond total_len
        let v = IpView::parse(&p).unwrap();
        assert_eq!((v.protocol, v.header_len, v.transport_offset), (17, 20, 20));
        assert_eq!(v.total_len, 28);
        assert_eq!(v.transport(&p).len(), 8);
        assert_eq!(v.ports(&p), Some((0x1234, 53)));
        assert_eq!(IpView::parse(&p[..19]), Err(PacketError::Truncated));
        assert_eq!(IpView::parse(&p[..27]), Err(PacketError::Truncated));
        p[0] = 0x44;
        assert_eq!(IpView::parse(&p), Err(PacketError::Header));
        p[0] = 0x55;
        assert_eq!(IpView::parse(&p), Err(PacketError::Version));
        assert_eq!(IpView::parse(&[]), Err(PacketError::Truncated));
    }

    #[test]
    fn ipv4_non_first_fragment_has_no_ports() {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 10, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p.extend_from_slice(&[0x12, 0x34, 0, 53, 0, 8, 0, 0]);
        let v = IpView::parse(&p).unwrap();
        assert!(v.fragment);
        assert_eq!(v.ports(&p), None);
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        // hop-by-hop (8 bytes) -> destination options (16 bytes) -> UDP
        let mut rest = vec![60, 0, 0, 0, 0, 0, 0, 0];
        rest.extend_from_slice(&[17, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend_from_slice(&[0x12, 0x34, 0, 53, 0, 8, 0, 0]);
        let p = v6(0, &rest);
        let v = IpView::parse(&p).unwrap();
        assert_eq!((v.protocol, v.header_len, v.transport_offset), (17, 40, 64));
        assert_eq!(v.ports(&p), Some((0x1234, 53)));
        assert!(!v.fragment);
        // A plain packet: the fixed header's next header.
        let p = v6(6, &[0; 20]);
        let v = IpView::parse(&p).unwrap();
        assert_eq!((v.protocol, v.transport_offset), (6, 40));
    }

    #[test]
    fn ipv6_fragments_and_bad_chains() {
        // A non-first fragment of UDP: the walk stops at the fragment header.
        let p = v6(44, &[17, 0, 0, 0x10, 0, 0, 0, 1, 0xaa, 0xbb]);
        let v = IpView::parse(&p).unwrap();
        assert!(v.fragment);
        assert_eq!((v.protocol, v.transport_offset), (17, 48));
        assert_eq!(v.ports(&p), None);
        // A first fragment (offset 0) goes on to the transport header.
        let p = v6(44, &[17, 0, 0, 0x01, 0, 0, 0, 1, 0x12, 0x34, 0, 53]);
        let v = IpView::parse(&p).unwrap();
        assert!(!v.fragment);
        assert_eq!(v.ports(&p), Some((0x1234, 53)));
        // An extension header running past the packet.
        assert_eq!(
            IpView::parse(&v6(0, &[17, 4, 0, 0, 0, 0, 0, 0])),
            Err(PacketError::Truncated)
        );
        assert_eq!(IpView::parse(&v6(0, &[17, 0])), Err(PacketError::Truncated));
        // Too many extension headers.
        let chain: Vec<u8> = (0..=MAX_EXT_HEADERS)
            .flat_map(|_| [0u8, 0, 0, 0, 0, 0, 0, 0])
            .collect();
        assert_eq!(IpView::parse(&v6(0, &chain)), Err(PacketError::Header));
        // The payload length claims more than the buffer holds.
        let mut p = v6(6, &[0; 20]);
        p.truncate(50);
        assert_eq!(IpView::parse(&p), Err(PacketError::Truncated));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_stays_in_bounds(
            bytes in proptest::collection::vec(any::<u8>(), 0..160)
        ) {
            if let Ok(v) = IpView::parse(&bytes) {
                prop_assert!(v.header_len <= v.transport_offset);
                prop_assert!(v.transport_offset <= v.total_len);
                prop_assert!(v.total_len <= bytes.len());
                let _ = v.ports(&bytes);
                let _ = v.transport(&bytes);
            }
        }

        #[test]
        fn v6_chains_never_panic(
            next in prop::sample::select(vec![0u8, 6, 17, 43, 44, 51, 58, 60]),
            rest in proptest::collection::vec(any::<u8>(), 0..120)
        ) {
            let p = v6(next, &rest);
            if let Ok(v) = IpView::parse(&p) {
                prop_assert!(v.transport_offset <= v.total_len && v.total_len <= p.len());
                let _ = crate::FiveTuple::from_view(&v, &p);
            }
        }
    }
}
