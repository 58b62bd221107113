//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the
//! corpus replay test (`tests/fuzz_corpora.rs`), so CI exercises exactly what the
//! fuzzer runs, on stable Rust. Each function must not panic on any input; the
//! assertions inside are the properties being fuzzed (what parses, re-encodes
//! to something that parses the same).

use crate::netmap::MapEvent;
use crate::relay_api::MembersEvent;
use crate::sse::{SseLimits, SseParser};
use crate::stun;

/// Cuts `data` into chunks whose sizes come from the data itself (the first
/// byte seeds them), so the fuzzer explores how streams are split. Also used by
/// the relay frame target in `weft-relay-core`.
pub fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (seed, mut rest) = match data.split_first() {
        Some((s, r)) => (usize::from(*s), r),
        None => (0, data),
    };
    let mut i = 0usize;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        i += 1;
        let n = (1 + (seed.wrapping_mul(i) % 97)).min(rest.len());
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

/// The STUN request and response parsers, and the server's answer to whatever
/// parses as a request.
pub fn stun_message(data: &[u8]) {
    let _ = stun::is_stun(data);
    if let Ok(req) = stun::parse_binding_request(data) {
        for from in ["192.0.2.1:32853", "[2001:db8::7]:1"] {
            let from = from
                .parse()
                .unwrap_or(std::net::SocketAddr::from(([0; 4], 0)));
            let mut out = Vec::new();
            stun::encode_binding_response(&req, from, &mut out);
            let modern = matches!(req.transaction_id, stun::TransactionId::Modern(_));
            if modern {
                assert!(stun::is_stun(&out));
                match stun::parse_binding_response(&out) {
                    Ok(resp) => {
                        assert!(req.unknown_required.is_empty());
                        assert_eq!(resp.mapped, from);
                    }
                    Err(e) => {
                        assert_eq!(e, stun::StunError::ErrorResponse(420));
                        assert!(!req.unknown_required.is_empty());
                    }
                }
            }
        }
    }
    let _ = stun::parse_binding_response(data);
}

/// The SSE parser with small limits over a stream split at arbitrary points.
pub fn sse_parser(data: &[u8]) {
    let limits = SseLimits {
        max_line: 256,
        max_data: 512,
    };
    let mut p = SseParser::new(limits);
    for chunk in chunks(data) {
        if p.feed(chunk).is_err() {
            break;
        }
        while let Some(ev) = p.next_event() {
            // Lossy UTF-8 may expand each byte to 3.
            assert!(ev.data.len() <= limits.max_data * 3);
        }
    }
    let _ = p.last_event_id();
}

/// Map and member event decoding: `event \0 id \0 data`.
pub fn map_event_decode(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == 0);
    let event = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let id = parts.next().map(String::from_utf8_lossy);
    let body = String::from_utf8_lossy(parts.next().unwrap_or_default());
    if let Ok(ev) = MapEvent::decode(&event, id.as_deref(), &body) {
        let again = MapEvent::decode(
            ev.event_name(),
            Some(&ev.version().to_string()),
            &ev.to_json(),
        );
        assert_eq!(again, Ok(ev));
    }
    if let Ok(ev) = MembersEvent::decode(&event, &body) {
        assert_eq!(MembersEvent::decode(ev.event_name(), &ev.to_json()), Ok(ev));
    }
}

/// The local API's JSON, both ways: `data[0]` even, the agent reading a request
/// line (as `weftd` does: at most [`MAX_REQUEST_LEN`] bytes, trailing whitespace
/// trimmed); odd, the CLI reading the agent's response line. What decodes
/// re-encodes to JSON that decodes the same.
///
/// [`MAX_REQUEST_LEN`]: crate::local::MAX_REQUEST_LEN
pub fn local_api(data: &[u8]) {
    use crate::local::{LocalRequest, LocalResponse, MAX_REQUEST_LEN};
    let Some((&which, line)) = data.split_first() else {
        return;
    };
    let line = String::from_utf8_lossy(line);
    if which & 1 == 0 {
        if line.len() > MAX_REQUEST_LEN {
            return;
        }
        if let Ok(req) = serde_json::from_str::<LocalRequest>(line.trim_end()) {
            let json = serde_json::to_string(&req);
            assert!(json.is_ok());
            let again = json.map(|j| serde_json::from_str::<LocalRequest>(&j).ok());
            assert_eq!(again.ok().flatten(), Some(req));
        }
    } else if let Ok(resp) = serde_json::from_str::<LocalResponse>(line.trim_end()) {
        let json = serde_json::to_string(&resp);
        assert!(json.is_ok());
        let again = json.map(|j| serde_json::from_str::<LocalResponse>(&j).ok());
        assert_eq!(again.ok().flatten(), Some(resp));
    }
}

/// The DNS blocklist file parser ([`crate::dnsblock::parse_list`]) on
/// arbitrary text: what parses is sorted, unique and valid, verifies against
/// its own reference, and parses again to itself from one name a line.
pub fn dns_blocklist(data: &[u8]) {
    use crate::dnsblock::{BlockMode, DnsBlocklist, is_block_name, parse_list};
    let text = String::from_utf8_lossy(data);
    match parse_list(&text) {
        Ok(domains) => {
            assert!(domains.iter().all(|d| is_block_name(d)));
            assert!(domains.windows(2).all(|w| w[0] < w[1]));
            let again = parse_list(&domains.join("\n"));
            assert_eq!(again.as_ref(), Ok(&domains));
            let list = DnsBlocklist {
                version: 1,
                mode: BlockMode::Zero,
                domains,
            };
            assert_eq!(list.verify(&list.to_ref()), Ok(()));
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            assert!(errors.len() <= crate::dnsblock::MAX_ERRORS);
            for e in &errors {
                let _ = e.to_string();
            }
        }
    }
}
