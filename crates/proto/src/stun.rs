//! STUN Binding (RFC 8489, and RFC 3489 requests for old clients): the relay's
//! server side and the agent's client side, so nodes learn their reflexive
//! (public) address.
//!
//! Server: [`parse_binding_request`] checks a datagram strictly (header bits,
//! magic cookie, length equal to the datagram, every attribute inside the
//! message and padded, FINGERPRINT last and correct), then
//! [`encode_binding_response`] answers with XOR-MAPPED-ADDRESS and
//! MAPPED-ADDRESS (only MAPPED-ADDRESS to an RFC 3489 client, which has no magic
//! cookie), plus FINGERPRINT when the request had one. A request carrying a
//! comprehension-required attribute this server does not know (for example
//! USERNAME or MESSAGE-INTEGRITY: the server has no credentials) gets the RFC's
//! 420 (Unknown Attribute) error with UNKNOWN-ATTRIBUTES. A CHANGE-REQUEST that
//! asks for no change (what classic RFC 3489 clients send first) is honoured
//! trivially; one that asks to answer from another address or port gets 420,
//! since the relay has no alternate address (RFC 5780 §7.2).
//!
//! Client: [`encode_binding_request`] and [`parse_binding_response`], which
//! returns the transaction id (the caller matches it against its outstanding
//! requests) and the mapped address, preferring XOR-MAPPED-ADDRESS.
//! [`is_stun`] is a cheap test to tell STUN from WireGuard and disco datagrams
//! on a shared socket.
//!
//! MESSAGE-INTEGRITY is stepped over, never verified (nothing here has a key);
//! attributes after it other than FINGERPRINT are ignored, as RFC 8489 requires.
//! Nothing allocates more than the response and a bounded list; nothing panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The magic cookie of RFC 5389/8489 messages.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;
/// Binding request message type.
pub const BINDING_REQUEST: u16 = 0x0001;
/// Binding success response message type.
pub const BINDING_SUCCESS: u16 = 0x0101;
/// Binding error response message type.
pub const BINDING_ERROR: u16 = 0x0111;

/// MAPPED-ADDRESS.
pub const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
/// CHANGE-REQUEST (RFC 5780; RFC 3489 clients send it with no flag set).
pub const ATTR_CHANGE_REQUEST: u16 = 0x0003;
/// USERNAME.
pub const ATTR_USERNAME: u16 = 0x0006;
/// MESSAGE-INTEGRITY.
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
/// ERROR-CODE.
pub const ATTR_ERROR_CODE: u16 = 0x0009;
/// UNKNOWN-ATTRIBUTES.
pub const ATTR_UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// MESSAGE-INTEGRITY-SHA256.
pub const ATTR_MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
/// XOR-MAPPED-ADDRESS.
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// SOFTWARE.
pub const ATTR_SOFTWARE: u16 = 0x8022;
/// FINGERPRINT.
pub const ATTR_FINGERPRINT: u16 = 0x8028;
/// RFC 5780 OTHER-ADDRESS: the server's alternate address and port, where a
/// client can repeat its request to see whether its NAT maps per destination.
/// Comprehension-optional; encoded like MAPPED-ADDRESS. weft's relay fills in
/// an unspecified IP (`0.0.0.0`) to mean "my address, this port".
pub const ATTR_OTHER_ADDRESS: u16 = 0x802C;

/// XOR constant of FINGERPRINT ("STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// At most this many unknown attributes are listed in a 420 response.
pub const MAX_UNKNOWN_LISTED: usize = 8;

/// Why a datagram is not the STUN message expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than a STUN header.
    #[error("shorter than a STUN header")]
    TooShort,
    /// The first two bits are set, or (responses) the magic cookie is missing.
    #[error("not a STUN message")]
    NotStun,
    /// The header's length is not a multiple of 4 or does not match the datagram.
    #[error("STUN length field does not match the datagram")]
    LengthMismatch,
    /// A STUN message, but not the expected method/class.
    #[error("unexpected STUN message type {0:#06x}")]
    UnexpectedType(u16),
    /// An attribute runs past the end of the message or is not padded.
    #[error("truncated STUN attribute {0:#06x}")]
    TruncatedAttribute(u16),
    /// FINGERPRINT is not the last attribute, has the wrong size, or is wrong.
    #[error("bad STUN FINGERPRINT")]
    BadFingerprint,
    /// An address attribute has an unknown family or the wrong length.
    #[error("bad STUN address attribute {0:#06x}")]
    BadAddress(u16),
    /// The server answered with an error.
    #[error("STUN error response {0}")]
    ErrorResponse(u16),
    /// A success response without a mapped address.
    #[error("STUN response has no mapped address")]
    NoMappedAddress,
}

/// A Binding request's transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionId {
    /// RFC 5389/8489: magic cookie plus 96 bits.
    Modern([u8; 12]),
    /// RFC 3489: 128 bits, no magic cookie.
    Classic([u8; 16]),
}

/// A checked Binding request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRequest {
    /// Its transaction id (echoed in the response).
    pub transaction_id: TransactionId,
    /// It carried a (valid) FINGERPRINT: the response carries one too.
    pub fingerprint: bool,
    /// Comprehension-required attributes this server does not understand (at
    /// most [`MAX_UNKNOWN_LISTED`]): the answer is a 420 error.
    pub unknown_required: Vec<u16>,
}

/// A parsed Binding success response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingResponse {
    /// Transaction id: compare with the request's.
    pub transaction_id: [u8; 12],
    /// The reflexive address the server saw.
    pub mapped: SocketAddr,
    /// The server's alternate address (RFC 5780 OTHER-ADDRESS), if it has one.
    pub other_address: Option<SocketAddr>,
}

const fn crc32_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32: [u32; 256] = crc32_table();

/// CRC-32 (ISO-HDLC, the one FINGERPRINT uses).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = CRC32[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Whether `msg` looks like an RFC 5389/8489 STUN message (header bits, magic
/// cookie, length consistent with the datagram). Cheap; for demultiplexing.
pub fn is_stun(msg: &[u8]) -> bool {
    msg.len() >= HEADER_LEN
        && msg[0] & 0xC0 == 0
        && be32(msg, 4) == MAGIC_COOKIE
        && usize::from(be16(msg, 2)) + HEADER_LEN == msg.len()
        && msg.len().is_multiple_of(4)
}

/// Checks the header; returns the message type and whether it has the cookie.
fn check_header(msg: &[u8]) -> Result<(u16, bool), StunError> {
    if msg.len() < HEADER_LEN {
        return Err(StunError::TooShort);
    }
    if msg[0] & 0xC0 != 0 {
        return Err(StunError::NotStun);
    }
    let len = usize::from(be16(msg, 2));
    if !len.is_multiple_of(4) || len + HEADER_LEN != msg.len() {
        return Err(StunError::LengthMismatch);
    }
    Ok((be16(msg, 0), be32(msg, 4) == MAGIC_COOKIE))
}

/// Walks the attributes of a checked message, calling `visit(type, value)` for
/// each one that counts (not FINGERPRINT, nothing after MESSAGE-INTEGRITY).
/// Verifies FINGERPRINT when present; returns whether it was.
fn walk(
    msg: &[u8],
    mut visit: impl FnMut(u16, &[u8]) -> Result<(), StunError>,
) -> Result<bool, StunError> {
    let mut at = HEADER_LEN;
    let mut after_integrity = false;
    while at < msg.len() {
        if msg.len() - at < 4 {
            return Err(StunError::TruncatedAttribute(0));
        }
        let ty = be16(msg, at);
        let len = usize::from(be16(msg, at + 2));
        let padded = (len + 3) & !3;
        let start = at + 4;
        if msg.len() - start < padded {
            return Err(StunError::TruncatedAttribute(ty));
        }
        let value = &msg[start..start + len];
        if ty == ATTR_FINGERPRINT {
            // Must be last, 4 bytes, over everything before it (with the
            // header length as sent, which covers the FINGERPRINT itself).
            if len != 4 || start + 4 != msg.len() {
                return Err(StunError::BadFingerprint);
            }
            if be32(value, 0) != crc32(&msg[..at]) ^ FINGERPRINT_XOR {
                return Err(StunError::BadFingerprint);
            }
            return Ok(true);
        }
        if !after_integrity {
            visit(ty, value)?;
        }
        if ty == ATTR_MESSAGE_INTEGRITY || ty == ATTR_MESSAGE_INTEGRITY_SHA256 {
            after_integrity = true;
        }
        at = start + padded;
    }
    Ok(false)
}

/// Parses a Binding request strictly (see the module docs).
pub fn parse_binding_request(msg: &[u8]) -> Result<BindingRequest, StunError> {
    let (ty, modern) = check_header(msg)?;
    if ty != BINDING_REQUEST {
        return Err(StunError::UnexpectedType(ty));
    }
    let transaction_id = if modern {
        let mut id = [0u8; 12];
        id.copy_from_slice(&msg[8..20]);
        TransactionId::Modern(id)
    } else {
        let mut id = [0u8; 16];
        id.copy_from_slice(&msg[4..20]);
        TransactionId::Classic(id)
    };
    let mut unknown_required = Vec::new();
    let fingerprint = walk(msg, |ty, value| {
        if ty == ATTR_CHANGE_REQUEST && value == [0, 0, 0, 0] {
            return Ok(());
        }
        // 0x0000-0x7FFF are comprehension-required. SOFTWARE and the like are
        // optional and ignored.
        if ty < 0x8000 && unknown_required.len() < MAX_UNKNOWN_LISTED {
            unknown_required.push(ty);
        }
        Ok(())
    })?;
    Ok(BindingRequest {
        transaction_id,
        fingerprint: fingerprint && modern,
        unknown_required,
    })
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn push_attr(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn address_value(addr: SocketAddr, xor: Option<&[u8; 16]>) -> Vec<u8> {
    let mask = xor.copied().unwrap_or([0; 16]);
    let mut v = vec![0u8];
    let port = addr.port() ^ u16::from_be_bytes([mask[0], mask[1]]);
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(0x01);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend(ip.octets().iter().zip(&mask[..4]).map(|(a, m)| a ^ m));
        }
        IpAddr::V6(ip) => {
            v.push(0x02);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend(ip.octets().iter().zip(&mask).map(|(a, m)| a ^ m));
        }
    }
    v
}

fn finish(out: &mut Vec<u8>, start: usize, fingerprint: bool) {
    let set_len = |out: &mut Vec<u8>| {
        let len = u16::try_from(out.len() - start - HEADER_LEN).unwrap_or(0);
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    };
    if fingerprint {
        // The length must already count the FINGERPRINT attribute.
        let fp_at = out.len();
        out.extend_from_slice(&[0; 8]);
        set_len(out);
        let crc = crc32(&out[start..fp_at]) ^ FINGERPRINT_XOR;
        out.truncate(fp_at);
        push_attr(out, ATTR_FINGERPRINT, &crc.to_be_bytes());
    }
    set_len(out);
}

/// Appends the answer to `req` (seen from `from`) to `out`: a success response
/// with the mapped address, or a 420 error for unknown required attributes.
/// IPv4-mapped IPv6 sources are reported as IPv4.
pub fn encode_binding_response(req: &BindingRequest, from: SocketAddr, out: &mut Vec<u8>) {
    encode_binding_response_with_other(req, from, None, out);
}

/// [`encode_binding_response`] with an OTHER-ADDRESS attribute naming `other`
/// (the server's alternate STUN address) in a success response.
pub fn encode_binding_response_with_other(
    req: &BindingRequest,
    from: SocketAddr,
    other: Option<SocketAddr>,
    out: &mut Vec<u8>,
) {
    let from = canonical(from);
    let start = out.len();
    let error = !req.unknown_required.is_empty();
    let ty = if error {
        BINDING_ERROR
    } else {
        BINDING_SUCCESS
    };
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    // The XOR mask: cookie then transaction id (only the first 4 bytes are used
    // for IPv4 and the port).
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    match &req.transaction_id {
        TransactionId::Modern(id) => {
            out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            out.extend_from_slice(id);
            mask[4..].copy_from_slice(id);
        }
        TransactionId::Classic(id) => out.extend_from_slice(id),
    }
    let modern = matches!(req.transaction_id, TransactionId::Modern(_));
    if error {
        let mut v = vec![0, 0, 4, 20];
        v.extend_from_slice(b"Unknown Attribute");
        push_attr(out, ATTR_ERROR_CODE, &v);
        let list: Vec<u8> = req
            .unknown_required
            .iter()
            .flat_map(|t| t.to_be_bytes())
            .collect();
        push_attr(out, ATTR_UNKNOWN_ATTRIBUTES, &list);
    } else {
        if modern {
            push_attr(
                out,
                ATTR_XOR_MAPPED_ADDRESS,
                &address_value(from, Some(&mask)),
            );
        }
        push_attr(out, ATTR_MAPPED_ADDRESS, &address_value(from, None));
        if let Some(other) = other {
            push_attr(
                out,
                ATTR_OTHER_ADDRESS,
                &address_value(canonical(other), None),
            );
        }
    }
    finish(out, start, req.fingerprint && modern);
}

/// Appends a Binding request with transaction id `id` (random, one per request)
/// to `out`, with a FINGERPRINT if `fingerprint`.
pub fn encode_binding_request(id: &[u8; 12], fingerprint: bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(id);
    finish(out, start, fingerprint);
}

fn decode_address(ty: u16, v: &[u8], mask: Option<&[u8; 16]>) -> Result<SocketAddr, StunError> {
    let m = mask.copied().unwrap_or([0; 16]);
    let bad = StunError::BadAddress(ty);
    if v.len() < 4 {
        return Err(bad);
    }
    let port = be16(v, 2) ^ u16::from_be_bytes([m[0], m[1]]);
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v[4 + i] ^ m[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v[4 + i] ^ m[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(bad),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses a Binding response to a request this side sent. Returns its
/// transaction id and mapped address (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS);
/// an error response becomes [`StunError::ErrorResponse`] with its code.
pub fn parse_binding_response(msg: &[u8]) -> Result<BindingResponse, StunError> {
    let (ty, modern) = check_header(msg)?;
    if !modern {
        return Err(StunError::NotStun);
    }
    if ty != BINDING_SUCCESS && ty != BINDING_ERROR {
        return Err(StunError::UnexpectedType(ty));
    }
    let mut transaction_id = [0u8; 12];
    transaction_id.copy_from_slice(&msg[8..20]);
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(&transaction_id);
    let mut xor = None;
    let mut plain = None;
    let mut error_code = None;
    let mut other_address = None;
    walk(msg, |aty, v| {
        match aty {
            ATTR_OTHER_ADDRESS if other_address.is_none() => {
                other_address = decode_address(aty, v, None).ok();
            }
            ATTR_XOR_MAPPED_ADDRESS if xor.is_none() => {
                xor = Some(decode_address(aty, v, Some(&mask))?);
            }
            ATTR_MAPPED_ADDRESS if plain.is_none() => {
                plain = Some(decode_address(aty, v, None)?);
            }
            ATTR_ERROR_CODE if v.len() >= 4 => {
                error_code = Some(u16::from(v[2] & 0x07) * 100 + u16::from(v[3]));
            }
            _ => {}
        }
        Ok(())
    })?;
    if ty == BINDING_ERROR {
        return Err(StunError::ErrorResponse(error_code.unwrap_or(0)));
    }
    let mapped = xor.or(plain).ok_or(StunError::NoMappedAddress)?;
    Ok(BindingResponse {
        transaction_id,
        mapped: canonical(mapped),
        other_address: other_address.map(canonical),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 5769 §2.1: sample request (SOFTWARE, PRIORITY, ICE-CONTROLLED,
    /// USERNAME, MESSAGE-INTEGRITY, FINGERPRINT).
    const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    /// RFC 5769 §2.2: sample IPv4 response, 192.0.2.1:32853.
    const RFC5769_RESPONSE_V4: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: sample IPv6 response,
    /// [2001:db8:1234:5678:11:2233:4455:6677]:32853.
    const RFC5769_RESPONSE_V6: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    const RFC_ID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn rfc5769_request_parses_and_its_fingerprint_verifies() {
        assert!(is_stun(&RFC5769_REQUEST));
        let req = parse_binding_request(&RFC5769_REQUEST).unwrap();
        assert_eq!(req.transaction_id, TransactionId::Modern(RFC_ID));
        assert!(req.fingerprint);
        // PRIORITY, USERNAME and MESSAGE-INTEGRITY are comprehension-required and
        // this credential-less server does not know them: it answers 420.
        assert_eq!(
            req.unknown_required,
            vec![0x0024, ATTR_USERNAME, ATTR_MESSAGE_INTEGRITY]
        );
        let mut out = Vec::new();
        encode_binding_response(&req, "192.0.2.1:32853".parse().unwrap(), &mut out);
        assert!(is_stun(&out));
        assert_eq!(
            parse_binding_response(&out),
            Err(StunError::ErrorResponse(420))
        );
        // A flipped bit anywhere before the FINGERPRINT is detected.
        let mut bad = RFC5769_REQUEST;
        bad[30] ^= 1;
        assert_eq!(parse_binding_request(&bad), Err(StunError::BadFingerprint));
    }

    #[test]
    fn rfc5769_responses_give_the_documented_addresses() {
        let v4 = parse_binding_response(&RFC5769_RESPONSE_V4).unwrap();
        assert_eq!(v4.transaction_id, RFC_ID);
        assert_eq!(v4.mapped, "192.0.2.1:32853".parse().unwrap());
        let v6 = parse_binding_response(&RFC5769_RESPONSE_V6).unwrap();
        assert_eq!(v6.transaction_id, RFC_ID);
        assert_eq!(
            v6.mapped,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        );
        // Truncated or extended datagrams are refused.
        assert_eq!(
            parse_binding_response(&RFC5769_RESPONSE_V4[..79]),
            Err(StunError::LengthMismatch)
        );
        let mut longer = RFC5769_RESPONSE_V4.to_vec();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(
            parse_binding_response(&longer),
            Err(StunError::LengthMismatch)
        );
    }

    #[test]
    fn our_xor_mapped_address_matches_the_rfc_bytes() {
        let req = BindingRequest {
            transaction_id: TransactionId::Modern(RFC_ID),
            fingerprint: false,
            unknown_required: vec![],
        };
        for (addr, vector, at) in [
            ("192.0.2.1:32853", &RFC5769_RESPONSE_V4[..], 36..48),
            (
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
                &RFC5769_RESPONSE_V6[..],
                36..60,
            ),
        ] {
            let mut out = Vec::new();
            encode_binding_response(&req, addr.parse().unwrap(), &mut out);
            // Our first attribute is XOR-MAPPED-ADDRESS; the RFC's comes after
            // SOFTWARE at offset 36.
            let ours = &out[20..20 + (at.end - at.start)];
            assert_eq!(ours, &vector[at]);
        }
    }

    #[test]
    fn server_answers_a_plain_request_and_the_client_reads_it() {
        for fp in [false, true] {
            let mut req = Vec::new();
            encode_binding_request(&[5; 12], fp, &mut req);
            assert_eq!(req.len(), if fp { 28 } else { 20 });
            assert!(is_stun(&req));
            let parsed = parse_binding_request(&req).unwrap();
            assert_eq!(parsed.fingerprint, fp);
            assert!(parsed.unknown_required.is_empty());
            for from in [
                "198.51.100.7:40000",
                "[2001:db8::1]:1",
                "[::ffff:10.1.2.3]:9",
            ] {
                let from: SocketAddr = from.parse().unwrap();
                let mut resp = Vec::new();
                encode_binding_response(&parsed, from, &mut resp);
                let got = parse_binding_response(&resp).unwrap();
                assert_eq!(got.transaction_id, [5; 12]);
                assert_eq!(got.mapped, canonical(from));
                assert_eq!(resp.len() % 4, 0);
            }
        }
    }

    #[test]
    fn other_address_round_trips_and_keeps_the_fingerprint_last() {
        for fp in [false, true] {
            let mut req = Vec::new();
            encode_binding_request(&[7; 12], fp, &mut req);
            let parsed = parse_binding_request(&req).unwrap();
            let from: SocketAddr = "198.51.100.7:40000".parse().unwrap();
            let other: SocketAddr = "0.0.0.0:3479".parse().unwrap();
            let mut resp = Vec::new();
            encode_binding_response_with_other(&parsed, from, Some(other), &mut resp);
            let got = parse_binding_response(&resp).unwrap();
            assert_eq!(got.mapped, from);
            assert_eq!(got.other_address, Some(other));
            if fp {
                // FINGERPRINT is the last attribute and covers OTHER-ADDRESS.
                let n = resp.len();
                assert_eq!(be16(&resp, n - 8), ATTR_FINGERPRINT);
            }
            let mut plain = Vec::new();
            encode_binding_response(&parsed, from, &mut plain);
            assert_eq!(parse_binding_response(&plain).unwrap().other_address, None);
        }
    }

    #[test]
    fn rfc3489_clients_get_mapped_address_only() {
        let mut req = vec![0x00, 0x01, 0x00, 0x00];
        req.extend_from_slice(&[9; 16]);
        let parsed = parse_binding_request(&req).unwrap();
        assert_eq!(parsed.transaction_id, TransactionId::Classic([9; 16]));
        let mut resp = Vec::new();
        encode_binding_response(&parsed, "203.0.113.5:777".parse().unwrap(), &mut resp);
        assert_eq!(&resp[4..20], &[9; 16]);
        assert_eq!(be16(&resp, 20), ATTR_MAPPED_ADDRESS);
        assert_eq!(resp.len(), 32);
        assert_eq!(
            decode_address(1, &resp[24..32], None).unwrap(),
            "203.0.113.5:777".parse().unwrap()
        );
    }

    #[test]
    fn change_request_without_flags_is_answered_with_flags_refused() {
        for (flags, unknown) in [
            (0u8, vec![]),
            (4, vec![ATTR_CHANGE_REQUEST]),
            (2, vec![ATTR_CHANGE_REQUEST]),
        ] {
            // As the classic `stun` client sends it: no cookie, CHANGE-REQUEST.
            let mut req = vec![0x00, 0x01, 0x00, 0x08];
            req.extend_from_slice(&[7; 16]);
            req.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, flags]);
            let parsed = parse_binding_request(&req).unwrap();
            assert_eq!(parsed.unknown_required, unknown);
        }
    }

    #[test]
    fn strict_parsing_refuses_malformed_requests() {
        let mut good = Vec::new();
        encode_binding_request(&[1; 12], true, &mut good);
        assert_eq!(parse_binding_request(&good[..19]), Err(StunError::TooShort));
        let mut b = good.clone();
        b[0] |= 0x80;
        assert_eq!(parse_binding_request(&b), Err(StunError::NotStun));
        let mut b = good.clone();
        b[3] = 9;
        assert_eq!(parse_binding_request(&b), Err(StunError::LengthMismatch));
        let mut b = good.clone();
        b[1] = 0x11;
        assert!(matches!(
            parse_binding_request(&b),
            Err(StunError::UnexpectedType(_) | StunError::BadFingerprint)
        ));
        // An attribute whose length runs past the end.
        let mut b = Vec::new();
        encode_binding_request(&[1; 12], false, &mut b);
        b.extend_from_slice(&[0x80, 0x22, 0x00, 0x40]);
        b[3] = 4;
        assert_eq!(
            parse_binding_request(&b),
            Err(StunError::TruncatedAttribute(ATTR_SOFTWARE))
        );
        // FINGERPRINT not last.
        let mut b = good.clone();
        b.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        b[3] += 4;
        assert_eq!(parse_binding_request(&b), Err(StunError::BadFingerprint));
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = is_stun(&data);
            if let Ok(req) = parse_binding_request(&data) {
                let mut out = Vec::new();
                encode_binding_response(&req, "192.0.2.9:4".parse().unwrap(), &mut out);
                prop_assert!(check_header(&out).is_ok());
            }
            let _ = parse_binding_response(&data);
        }

        #[test]
        fn cookie_requests_with_random_optional_attributes_round_trip(
            id in any::<[u8; 12]>(),
            soft in proptest::collection::vec(any::<u8>(), 0..40),
            port in any::<u16>(), ip in any::<[u8; 16]>(),
        ) {
            let mut req = Vec::new();
            encode_binding_request(&id, false, &mut req);
            push_attr(&mut req, ATTR_SOFTWARE, &soft);
            let len = u16::try_from(req.len() - HEADER_LEN).unwrap();
            req[2..4].copy_from_slice(&len.to_be_bytes());
            let parsed = parse_binding_request(&req).unwrap();
            let from = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port);
            let mut resp = Vec::new();
            encode_binding_response(&parsed, from, &mut resp);
            prop_assert_eq!(parse_binding_response(&resp).unwrap().mapped, canonical(from));
        }
    }
}
