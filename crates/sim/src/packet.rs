//! Test packets that carry an id, and names for datagrams in traces.

use std::net::IpAddr;

use weft_tunnel::ip::checksum;

/// Marks the payload of a packet the simulation made.
const MAGIC: &[u8; 8] = b"weft-sim";

/// Transport of a test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// UDP.
    Udp,
    /// TCP (a SYN: it opens a flow).
    Tcp,
}

impl Proto {
    /// The policy language's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// An IPv4 packet from `src:sport` to `dst:dport` whose payload carries `id`.
/// Only IPv4 addresses are used by the simulation; others give an empty packet.
pub fn make(proto: Proto, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, id: u64) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        return Vec::new();
    };
    let mut payload = Vec::with_capacity(16);
    payload.extend_from_slice(MAGIC);
    payload.extend_from_slice(&id.to_be_bytes());
    let l4_len = match proto {
        Proto::Udp => 8,
        Proto::Tcp => 20,
    };
    let len = 20 + l4_len + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = match proto {
        Proto::Udp => 17,
        Proto::Tcp => 6,
    };
    p[12..16].copy_from_slice(&s.octets());
    p[16..20].copy_from_slice(&d.octets());
    let c = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    match proto {
        Proto::Udp => p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes()),
        Proto::Tcp => {
            p[32] = 5 << 4;
            p[33] = 0x02;
        }
    }
    p[20 + l4_len..].copy_from_slice(&payload);
    p
}

/// The id a packet made by [`make`] carries.
pub fn id_of(packet: &[u8]) -> Option<u64> {
    let tail = packet.get(packet.len().checked_sub(16)?..)?;
    if &tail[..8] != MAGIC {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&tail[8..]);
    Some(u64::from_be_bytes(b))
}

/// What a datagram on the underlay is, for traces.
pub fn kind(datagram: &[u8]) -> &'static str {
    if weft_tunnel::disco::is_disco(datagram) {
        return "disco";
    }
    if weft_proto::stun::is_stun(datagram) {
        return "stun";
    }
    match (datagram.first(), datagram.len()) {
        (Some(1), 148) => "wg-init",
        (Some(2), 92) => "wg-resp",
        (Some(3), 64) => "wg-cookie",
        (Some(4), 32) => "wg-keepalive",
        (Some(4), _) => "wg-data",
        _ => "other",
    }
}

/// FNV-1a of the bytes: a trace names a datagram's content without printing it.
pub fn digest(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_packets_parse_and_carry_their_id() {
        for proto in [Proto::Udp, Proto::Tcp] {
            let p = make(
                proto,
                "100.64.0.1".parse().unwrap(),
                "100.64.0.2".parse().unwrap(),
                40000,
                80,
                77,
            );
            let t = weft_policy::FiveTuple::parse(&p).unwrap();
            let ports = format!("{:?}", t.transport);
            assert!(ports.contains("40000") && ports.contains("80"), "{ports}");
            assert_eq!(id_of(&p), Some(77));
        }
        assert_eq!(id_of(b"short"), None);
    }
}
