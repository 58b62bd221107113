//! ICMPv4 echo, as `weft ping` and the agent's `ping` action send and match
//! it: the request they send and the test that a received packet is its reply.

use std::net::IpAddr;

/// Bytes of an echo request built by [`echo_request`].
pub const ECHO_LEN: usize = 64;

/// An ICMPv4 echo request with identifier `id`, sequence number `seq` and the
/// payload `weftping`, checksummed.
pub fn echo_request(id: u16, seq: u16) -> [u8; ECHO_LEN] {
    let mut pkt = [0u8; ECHO_LEN];
    pkt[0] = 8; // echo request
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[6..8].copy_from_slice(&seq.to_be_bytes());
    pkt[8..16].copy_from_slice(b"weftping");
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    pkt
}

/// Whether `pkt` (from `from`) is the echo reply to our request `seq` to
/// `peer`: the type, the sender and the sequence number, and with a raw
/// socket (`id`) our identifier; anything else (another ping's reply, a reply
/// from elsewhere) is not ours. Raw sockets deliver the IP header too, ping
/// sockets do not; both are understood.
pub fn is_echo_reply(pkt: &[u8], from: IpAddr, peer: IpAddr, seq: u16, id: Option<u16>) -> bool {
    // An ICMP header never starts with 4 in its high nibble (echo reply is type 0).
    let off = match pkt.first() {
        Some(b) if b >> 4 == 4 => usize::from(b & 0xf) * 4,
        _ => 0,
    };
    let Some(icmp) = pkt.get(off..).filter(|m| m.len() >= 8) else {
        return false;
    };
    icmp[0] == 0
        && from == peer
        && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
        && id.is_none_or(|id| u16::from_be_bytes([icmp[4], icmp[5]]) == id)
}

/// The Internet checksum (RFC 1071) of `b`.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[allow(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_checksums_to_zero() {
        let p = echo_request(7, 9);
        assert_eq!(checksum(&p), 0);
        assert_eq!(&p[4..8], &[0, 7, 0, 9]);
    }
}
