//! A checked, read-only view of the IP header fields the data plane needs, and the
//! ICMP "destination unreachable" replies it generates.
//!
//! The view itself lives in `weft-policy` ([`IpView`]), so the data plane and the
//! matcher read a packet the same way; every accessor is bounds-checked at
//! construction ([`IpView::parse`]); nothing here panics on any input (there is a
//! property test for that).

use std::net::IpAddr;

/// Why bytes are not an IP packet we accept.
pub use weft_policy::PacketError as IpError;
/// IP protocol numbers the data plane cares about.
pub use weft_policy::ip_proto as proto;
/// The checked packet view, shared with the policy matcher (one parser: IPv4,
/// IPv6 with its extension headers walked, bounded).
pub use weft_policy::packet::IpView;

/// Which "destination unreachable" to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// No such host (no peer has the address).
    Host,
    /// Communication administratively prohibited (the access policy said no).
    Prohibited,
    /// Port unreachable (a service VIP on a port the service does not have).
    Port,
}

/// Builds an ICMP "host unreachable" for `original`; see [`icmp_error`].
pub fn icmp_unreachable(
    original: &[u8],
    view: &IpView,
    from: IpAddr,
    out: &mut [u8],
) -> Option<usize> {
    icmp_error(original, view, from, out, Unreachable::Host)
}

/// Builds an ICMP "destination unreachable" of `kind` for `original` into `out`,
/// sent from `from` (this node's overlay address) back to the original sender.
/// Returns the length written, or None when no reply is due (ICMP errors are never
/// answered with ICMP errors, and the address families must match).
pub fn icmp_error(
    original: &[u8],
    view: &IpView,
    from: IpAddr,
    out: &mut [u8],
    kind: Unreachable,
) -> Option<usize> {
    match (view.src, from) {
        (IpAddr::V4(to), IpAddr::V4(from)) => {
            if view.protocol == proto::ICMP {
                // Only echo requests (type 8) get an error back, never errors.
                let icmp_type = *original.get(view.transport_offset)?;
                if icmp_type != 8 {
                    return None;
                }
            }
            // RFC 792: the original IP header plus the first 8 bytes of its payload.
            let quoted = original.len().min(view.header_len + 8);
            let len = 20 + 8 + quoted;
            let out = out.get_mut(..len)?;
            out.fill(0);
            out[0] = 0x45;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            out[8] = 64; // TTL
            out[9] = proto::ICMP;
            out[12..16].copy_from_slice(&from.octets());
            out[16..20].copy_from_slice(&to.octets());
            let c = checksum(&[&out[..20]]);
            out[10..12].copy_from_slice(&c.to_be_bytes());
            out[20] = 3; // destination unreachable
            out[21] = match kind {
                Unreachable::Host => 1,
                Unreachable::Prohibited => 13,
                Unreachable::Port => 3,
            };
            out[28..].copy_from_slice(&original[..quoted]);
            let c = checksum(&[&out[20..]]);
            out[22..24].copy_from_slice(&c.to_be_bytes());
            Some(len)
        }
        (IpAddr::V6(to), IpAddr::V6(from)) => {
            if view.protocol == proto::ICMPV6 {
                // Only informational messages (type >= 128) get an error back.
                let icmp_type = *original.get(view.transport_offset)?;
                if icmp_type < 128 {
                    return None;
                }
            }
            // RFC 4443: as much of the original as fits in the minimum MTU.
            let quoted = original.len().min(1280 - 48);
            let payload_len = 8 + quoted;
            let len = 40 + payload_len;
            let out = out.get_mut(..len)?;
            out.fill(0);
            out[0] = 0x60;
            out[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
            out[6] = proto::ICMPV6;
            out[7] = 64; // hop limit
            out[8..24].copy_from_slice(&from.octets());
            out[24..40].copy_from_slice(&to.octets());
            out[40] = 1; // destination unreachable
            out[41] = match kind {
                Unreachable::Host => 3,       // address unreachable
                Unreachable::Prohibited => 1, // administratively prohibited
                Unreachable::Port => 4,
            };
            out[48..].copy_from_slice(&original[..quoted]);
            let mut pseudo = [0u8; 40];
            pseudo[..16].copy_from_slice(&from.octets());
            pseudo[16..32].copy_from_slice(&to.octets());
            pseudo[32..36].copy_from_slice(&(payload_len as u32).to_be_bytes());
            pseudo[39] = proto::ICMPV6;
            let c = checksum(&[&pseudo, &out[40..]]);
            out[42..44].copy_from_slice(&c.to_be_bytes());
            Some(len)
        }
        _ => None,
    }
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// RFC 1624 (eqn. 3): the Internet checksum `sum` of data in which the 4
/// bytes `old` became `new` (an IPv4 address, in the header or the TCP/UDP
/// pseudo-header), without summing the data again: `~(~sum + ~old + new)`.
///
/// This is for a complete checksum. A partial one (a virtio-net
/// `NEEDS_CSUM` packet's field holds the pseudo-header sum, not its
/// complement) takes the inverse: `!checksum_replace4(!partial, old, new)`;
/// the tunnel core never sees one (tun-rs completes them on read).
pub fn checksum_replace4(sum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let mut acc = u32::from(!sum);
    for i in [0, 2] {
        acc += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        acc += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal IPv4 packet with a UDP-ish payload.
    pub(crate) fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, payload: &[u8]) -> Vec<u8> {
        let len = 20 + payload.len();
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = protocol;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = checksum(&[&p[..20]]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..].copy_from_slice(payload);
        p
    }

    #[test]
    fn parses_ipv4_and_ports() {
        let p = ipv4(
            [100, 64, 0, 2],
            [100, 64, 0, 3],
            proto::UDP,
            &[0x12, 0x34, 0x00, 0x35, 0, 0, 0, 0],
        );
        let v = IpView::parse(&p).unwrap();
        assert_eq!(v.src, IpAddr::from([100, 64, 0, 2]));
        assert_eq!(v.dst, IpAddr::from([100, 64, 0, 3]));
        assert_eq!(v.ports(&p), Some((0x1234, 53)));
        assert_eq!(IpView::parse(&p[..19]), Err(IpError::Truncated));
    }

    #[test]
    fn icmp_unreachable_v4_is_well_formed() {
        let p = ipv4(
            [100, 64, 0, 2],
            [100, 64, 9, 9],
            proto::UDP,
            &[1, 2, 3, 4, 5, 6, 7, 8, 9],
        );
        let v = IpView::parse(&p).unwrap();
        let mut out = [0u8; 128];
        let n = icmp_unreachable(&p, &v, IpAddr::from([100, 64, 0, 2]), &mut out).unwrap();
        let r = IpView::parse(&out[..n]).unwrap();
        assert_eq!(r.protocol, proto::ICMP);
        assert_eq!(r.dst, v.src);
        assert_eq!(checksum(&[&out[..20]]), 0, "IP header checksum");
        assert_eq!(checksum(&[&out[20..n]]), 0, "ICMP checksum");
        assert_eq!((out[20], out[21]), (3, 1));
        // No error about an error.
        let err = &out[..n];
        let ev = IpView::parse(err).unwrap();
        assert_eq!(
            icmp_unreachable(err, &ev, IpAddr::from([1, 1, 1, 1]), &mut [0u8; 128]),
            None
        );
    }

    /// The view walks IPv6 extension headers, so an ICMPv6 error behind a
    /// hop-by-hop header is recognised as an error and never answered, while an
    /// echo request behind one is.
    #[test]
    fn icmpv6_behind_an_extension_header_is_seen() {
        let packet = |icmp_type: u8| {
            let mut p = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
            p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            p.extend_from_slice(&[proto::ICMPV6, 0, 0, 0, 0, 0, 0, 0]);
            p.extend_from_slice(&[icmp_type, 0, 0, 0, 0, 1, 0, 1]);
            p
        };
        let from: IpAddr = "fd00::9".parse().unwrap();
        let error = packet(1);
        let v = IpView::parse(&error).unwrap();
        assert_eq!((v.protocol, v.transport_offset), (proto::ICMPV6, 48));
        assert_eq!(icmp_unreachable(&error, &v, from, &mut [0u8; 1500]), None);
        let echo = packet(128);
        let v = IpView::parse(&echo).unwrap();
        assert!(icmp_unreachable(&echo, &v, from, &mut [0u8; 1500]).is_some());
    }

    proptest! {
        #[test]
        fn parse_and_reply_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(v) = IpView::parse(&bytes) {
                prop_assert!(v.total_len <= bytes.len());
                let _ = v.ports(&bytes);
                let mut out = [0u8; 1500];
                let _ = icmp_unreachable(&bytes, &v, IpAddr::from([10, 0, 0, 1]), &mut out);
                let _ = icmp_unreachable(&bytes, &v, IpAddr::from([0u16; 8]), &mut out);
            }
        }
    }
}
