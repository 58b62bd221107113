//! A WireGuard stranger: handshake initiations from fresh random keys (in no
//! map) to a node, as the hidden `weft-lab __wg-stranger` sends them for the
//! unauthorized-peer case. The initiations are well formed and carry a valid
//! MAC1 for the target's key, so the target gets as far as looking the sender's
//! key up (and must refuse it, counting `unknown_peer`).

use std::io::Read as _;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
pub use weft_proto::NodeKey;

use crate::error::{LabError, Result};

/// Sends `count` handshake initiations, each from a new random key, to the node
/// with identity `peer` at `to`, 20 ms apart. Returns how many were sent.
pub fn send_initiations(peer: &NodeKey, to: SocketAddr, count: u32) -> Result<u32> {
    let public = weft_identity::x25519_public_of(peer)
        .map_err(|e| LabError::Probe(format!("node key {peer} has no X25519 form: {e}")))?;
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| LabError::io("cannot bind UDP", e))?;
    let mut buf = vec![0u8; 256];
    let mut sent = 0;
    for i in 0..count {
        let secret = StaticSecret::from(random_32()?);
        let mut tunn = Tunn::new(secret, PublicKey::from(public), None, None, i, None);
        if let TunnResult::WriteToNetwork(init) = tunn.format_handshake_initiation(&mut buf, false)
        {
            sock.send_to(init, to)
                .map_err(|e| LabError::io(format!("cannot send to {to}"), e))?;
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(sent)
}

fn random_32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| LabError::io("cannot read /dev/urandom", e))?;
    Ok(b)
}

/// A node gone rogue: with the identity in `identity_file` (a real node's key),
/// completes its own WireGuard handshake with the node `peer` at `to` and sends
/// it `count` UDP packets `<tag>-<n>` from inner source `src` to `dst:port` (any
/// `src`: this sender has no egress checks). Returns how many were sent.
pub fn send_as(
    identity_file: &std::path::Path,
    peer: &NodeKey,
    to: SocketAddr,
    inner: (std::net::Ipv4Addr, std::net::Ipv4Addr, u16),
    count: u32,
    tag: &str,
) -> Result<u32> {
    let id = weft_identity::keyfile::load(identity_file)
        .map_err(|e| LabError::Probe(format!("cannot load {}: {e}", identity_file.display())))?;
    let public = weft_identity::x25519_public_of(peer)
        .map_err(|e| LabError::Probe(format!("node key {peer} has no X25519 form: {e}")))?;
    let index = u32::from_le_bytes(random_32()?[..4].try_into().unwrap_or_default()) >> 8;
    let mut tunn = Tunn::new(
        StaticSecret::from(*id.x25519_secret()),
        PublicKey::from(public),
        None,
        None,
        index,
        None,
    );
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| LabError::io("cannot bind UDP", e))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| LabError::io("cannot set a timeout", e))?;
    let send = |b: &[u8]| {
        sock.send_to(b, to)
            .map_err(|e| LabError::io(format!("cannot send to {to}"), e))
    };
    let mut out = vec![0u8; 2048];
    let mut buf = vec![0u8; 2048];
    let mut ready = false;
    for _ in 0..10 {
        if let TunnResult::WriteToNetwork(init) = tunn.format_handshake_initiation(&mut out, true) {
            send(init)?;
        }
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let mut r = tunn.decapsulate(Some(from.ip()), &buf[..n], &mut out);
        // Send what the session wants sent (a keepalive confirming it), until done.
        while let TunnResult::WriteToNetwork(b) = r {
            send(b)?;
            r = tunn.decapsulate(None, &[], &mut out);
        }
        if tunn.time_since_last_handshake().is_some() {
            ready = true;
            break;
        }
    }
    if !ready {
        return Err(LabError::Probe(format!("no handshake with {to}")));
    }
    let (src, dst, port) = inner;
    let mut sent = 0;
    for i in 0..count {
        let packet = ipv4_udp(src, dst, port, format!("{tag}-{i}").as_bytes());
        if let TunnResult::WriteToNetwork(b) = tunn.encapsulate(&packet, &mut out) {
            send(b)?;
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(sent)
}

/// An IPv4 UDP packet (UDP checksum 0: none, as IPv4 allows).
fn ipv4_udp(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = u16::try_from(20 + udp_len).unwrap_or(u16::MAX);
    let mut p = Vec::with_capacity(20 + udp_len);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&u16::try_from(udp_len).unwrap_or(u16::MAX).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = ipv4_udp([100, 64, 0, 3].into(), [100, 64, 0, 2].into(), 9, b"x");
        assert_eq!(p.len(), 29);
        // A header with its checksum in place sums to 0xffff (checksum 0).
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(&p[26..28], &[0, 0]);
    }
}
