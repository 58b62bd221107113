//! What the resolver does with one client message, without sockets: parse and
//! check it, answer it from the zone or the cache, or say it must be forwarded;
//! then turn the upstream's answer into the client's. Pure: `now` is an argument.

use std::time::Instant;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::blocklist::{self, Blocklist};
use crate::cache::{Cache, CacheKey};
use crate::zone::{self, Answer, QueryType, RecordData, Zone};

/// Largest DNS message read from a client or an upstream over UDP, and the EDNS
/// payload size we advertise: 1232 octets is the DNS Flag Day 2020 value that
/// avoids IP fragmentation on any path.
pub(crate) const EDNS_PAYLOAD: u16 = 1232;
/// Classic UDP limit for clients without EDNS (RFC 1035).
const UDP_CLASSIC: usize = 512;
/// Largest message over TCP (two-octet length prefix).
pub(crate) const TCP_MAX: usize = 65535;

/// How the client's message arrived, which bounds the reply size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// A client query that must go upstream.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// The client's message (header flags, question as asked, EDNS).
    pub(crate) query: Message,
    /// Its question.
    pub(crate) question: Query,
    pub(crate) transport: Transport,
}

/// What to do with a client message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Ask the upstreams, then [`finish`].
    Forward(Box<Pending>),
    /// Not a query (or not even a header): say nothing.
    Drop,
}

/// Where a reply came from (the query log's `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The overlay zone (authoritative).
    Overlay,
    /// The forwarded-answer cache.
    Cache,
    /// An upstream.
    Upstream,
    /// The blocklist.
    Blocked,
    /// Refused or malformed: answered with an error, nothing looked up.
    Local,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Overlay => "overlay",
            Source::Cache => "cache",
            Source::Upstream => "upstream",
            Source::Blocked => "blocked",
            Source::Local => "local",
        }
    }
}

/// What a reply answered, for the query log and the statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Served {
    /// The question's name, lowercase, without the trailing dot.
    pub(crate) name: String,
    pub(crate) qtype: RecordType,
    pub(crate) rcode: ResponseCode,
    pub(crate) source: Source,
}

impl Served {
    pub(crate) fn of(question: &Query, rcode: ResponseCode, source: Source) -> Self {
        let name = question.name.to_lowercase().to_ascii();
        let name = match name.strip_suffix('.') {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => name,
        };
        Self {
            name,
            qtype: question.query_type,
            rcode,
            source,
        }
    }
}

/// Handles one client message.
pub(crate) fn handle(
    zone: &Zone,
    cache: &mut Cache,
    now: Instant,
    bytes: &[u8],
    transport: Transport,
) -> Outcome {
    handle_served(zone, &Blocklist::default(), cache, now, bytes, transport).0
}

/// [`handle`], also saying what a reply answered (`None` for a forward, a drop,
/// or a message without a single question).
pub(crate) fn handle_served(
    zone: &Zone,
    blocked: &Blocklist,
    cache: &mut Cache,
    now: Instant,
    bytes: &[u8],
    transport: Transport,
) -> (Outcome, Option<Served>) {
    let Ok(query) = Message::from_vec(bytes) else {
        return (format_error(bytes), None);
    };
    if query.metadata.message_type != MessageType::Query {
        return (Outcome::Drop, None);
    }
    if query.metadata.op_code != OpCode::Query {
        return (
            reply(&error(&query, ResponseCode::NotImp), &query, transport),
            None,
        );
    }
    let [question] = query.queries.as_slice() else {
        return (
            reply(&error(&query, ResponseCode::FormErr), &query, transport),
            None,
        );
    };
    let question = question.clone();
    if !matches!(question.query_class, DNSClass::IN | DNSClass::ANY) {
        // CHAOS and friends: not ours to answer, not worth forwarding.
        let served = Served::of(&question, ResponseCode::Refused, Source::Local);
        return (
            reply(&error(&query, ResponseCode::Refused), &query, transport),
            Some(served),
        );
    }
    let name = question.name.to_ascii();
    if zone.is_authoritative_for(&name) {
        let answer = zone.answer(&name, query_type(question.query_type));
        let m = authoritative(&query, &question, answer);
        let served = Served::of(&question, m.metadata.response_code, Source::Overlay);
        return (reply(&m, &query, transport), Some(served));
    }
    if let Some(mode) = blocked.lookup(&name) {
        let m = blocklist::answer(response_to(&query), &question, mode);
        let served = Served::of(&question, m.metadata.response_code, Source::Blocked);
        return (reply(&m, &query, transport), Some(served));
    }
    if let Some(cached) = cache.get(&CacheKey::of(&question), now) {
        let m = to_client(&query, cached);
        let served = Served::of(&question, m.metadata.response_code, Source::Cache);
        return (reply(&m, &query, transport), Some(served));
    }
    (
        Outcome::Forward(Box::new(Pending {
            query,
            question,
            transport,
        })),
        None,
    )
}

/// The query sent upstream for `pending`, with message id `id`: the client's
/// question and CD bit, recursion desired, our EDNS payload size. (Not the
/// client's bytes: its id and options stay on this host.)
pub(crate) fn upstream_query(pending: &Pending, id: u16) -> Result<Vec<u8>, ()> {
    upstream_message(pending, id).to_vec().map_err(|_| ())
}

/// [`upstream_query`] before encoding.
pub(crate) fn upstream_message(pending: &Pending, id: u16) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = pending.query.metadata.checking_disabled;
    m.add_query(pending.question.clone());
    m.set_edns(our_edns());
    m
}

/// Whether `response` answers the upstream query `id` for `question`.
pub(crate) fn answers(response: &Message, id: u16, question: &Query) -> bool {
    response.metadata.id == id && answers_question(response, question)
}

/// Whether `response` is a response to `question` (whatever its id).
pub(crate) fn answers_question(response: &Message, question: &Query) -> bool {
    response.metadata.message_type == MessageType::Response
        && matches!(response.queries.as_slice(), [q] if q.name == question.name
            && q.query_type == question.query_type
            && q.query_class == question.query_class)
}

/// The client's reply once the upstreams answered (`Some`, cached when allowed) or
/// all failed (`None`: SERVFAIL).
pub(crate) fn finish(
    pending: &Pending,
    upstream: Option<Message>,
    cache: &mut Cache,
    now: Instant,
) -> Vec<u8> {
    let response = match upstream {
        Some(mut response) => {
            cache.bounds().clamp(&mut response);
            cache.insert(CacheKey::of(&pending.question), &response, now);
            to_client(&pending.query, response)
        }
        None => error(&pending.query, ResponseCode::ServFail),
    };
    match reply(&response, &pending.query, pending.transport) {
        Outcome::Reply(bytes) => bytes,
        Outcome::Forward(_) | Outcome::Drop => Vec::new(),
    }
}

fn query_type(t: RecordType) -> QueryType {
    match t {
        RecordType::A => QueryType::A,
        RecordType::AAAA => QueryType::Aaaa,
        RecordType::SOA => QueryType::Soa,
        RecordType::PTR => QueryType::Ptr,
        RecordType::ANY => QueryType::Any,
        _ => QueryType::Other,
    }
}

fn our_edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    edns
}

/// A response skeleton for `query`: same id, opcode, RD and CD; RA set; the
/// question echoed as asked; EDNS only if the client used it.
fn response_to(query: &Message) -> Message {
    let mut m = Message::response(query.metadata.id, query.metadata.op_code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = query.metadata.checking_disabled;
    m.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        m.set_edns(our_edns());
    }
    m
}

fn error(query: &Message, rcode: ResponseCode) -> Message {
    let mut m = response_to(query);
    m.metadata.response_code = rcode;
    m
}

/// FORMERR for something that has a query header but does not parse; nothing
/// for anything else (too short, or a response: never answer those, no loops).
fn format_error(bytes: &[u8]) -> Outcome {
    let [id_hi, id_lo, flags, ..] = *bytes else {
        return Outcome::Drop;
    };
    if bytes.len() < 12 || flags & 0x80 != 0 {
        return Outcome::Drop;
    }
    let mut m = Message::response(u16::from_be_bytes([id_hi, id_lo]), OpCode::Query);
    m.metadata.response_code = ResponseCode::FormErr;
    m.to_vec().map_or(Outcome::Drop, Outcome::Reply)
}

fn authoritative(query: &Message, question: &Query, answer: Answer) -> Message {
    let mut m = response_to(query);
    let Answer::Authoritative {
        rcode,
        records,
        soa,
    } = answer
    else {
        m.metadata.response_code = ResponseCode::ServFail;
        return m;
    };
    m.metadata.authoritative = true;
    m.metadata.response_code = match rcode {
        zone::Rcode::NoError => ResponseCode::NoError,
        zone::Rcode::NxDomain => ResponseCode::NXDomain,
    };
    let apex = Name::from_ascii(format!("{}.", soa.apex)).unwrap_or_else(|_| Name::root());
    let empty = records.is_empty();
    for data in records {
        let (owner, rdata) = match data {
            RecordData::A(ip) => (question.name.clone(), RData::A(A(ip))),
            RecordData::Aaaa(ip) => (question.name.clone(), RData::AAAA(AAAA(ip))),
            RecordData::Soa(soa) => (apex.clone(), soa_rdata(&soa)),
            RecordData::Ptr(target) => {
                let Ok(target) = Name::from_ascii(format!("{target}.")) else {
                    continue;
                };
                (question.name.clone(), RData::PTR(PTR(target)))
            }
        };
        m.add_answer(Record::from_rdata(owner, zone::OVERLAY_TTL, rdata));
    }
    if empty {
        m.add_authority(Record::from_rdata(apex, zone::OVERLAY_TTL, soa_rdata(&soa)));
    }
    m
}

fn soa_rdata(soa: &zone::Soa) -> RData {
    let name = |s: &str| Name::from_ascii(format!("{s}.")).unwrap_or_else(|_| Name::root());
    // Refresh/retry/expire only matter to secondaries, which a generated loopback
    // zone has none of; the usual values keep tools that print them quiet.
    RData::SOA(SOA::new(
        name(&soa.mname),
        name(&soa.rname),
        soa.serial,
        3600,
        600,
        86400,
        soa.minimum,
    ))
}

/// The upstream's (or the cache's) answer, readdressed to the client: its id, its
/// question as asked, its RD/CD, our EDNS if it used EDNS; not authoritative, no
/// AD (we validate nothing), no signature.
fn to_client(query: &Message, upstream: Message) -> Message {
    let mut m = response_to(query);
    m.metadata.response_code = upstream.metadata.response_code;
    m.answers = upstream.answers;
    m.authorities = upstream.authorities;
    m.additionals = upstream.additionals;
    m
}

/// Encodes `response`, truncating (TC, question only) what does not fit the
/// client's UDP size; an unencodable or oversized TCP answer becomes SERVFAIL.
fn reply(response: &Message, query: &Message, transport: Transport) -> Outcome {
    let limit = match transport {
        Transport::Tcp => TCP_MAX,
        Transport::Udp => query.edns.as_ref().map_or(UDP_CLASSIC, |e| {
            usize::from(e.max_payload().clamp(UDP_CLASSIC as u16, EDNS_PAYLOAD))
        }),
    };
    if let Ok(bytes) = response.to_vec()
        && bytes.len() <= limit
    {
        return Outcome::Reply(bytes);
    }
    let fallback = match transport {
        Transport::Udp => response.truncate(),
        Transport::Tcp => error(query, ResponseCode::ServFail),
    };
    fallback.to_vec().map_or(Outcome::Drop, Outcome::Reply)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::zone::Record as ZoneRecord;

    #[expect(
        clippy::disallowed_methods,
        reason = "tests need an arbitrary base instant"
    )]
    fn t0() -> Instant {
        Instant::now()
    }

    fn zone() -> Zone {
        Zone::from_records(vec![ZoneRecord {
            name: "db".into(),
            network: "prod".into(),
            domain: "weft.internal".into(),
            ipv4: Some(Ipv4Addr::new(100, 64, 0, 2)),
            ipv6: None,
        }])
    }

    fn client_query(id: u16, name: &str, t: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    fn reply_of(o: Outcome) -> Message {
        match o {
            Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn overlay_name_is_answered_with_id_flags_and_question_case() {
        let q = client_query(77, "DB.prod.weft.internal.", RecordType::A, true);
        let m = reply_of(handle(
            &zone(),
            &mut Cache::default(),
            t0(),
            &q,
            Transport::Udp,
        ));
        assert_eq!(m.metadata.id, 77);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(m.queries[0].name.to_ascii(), "DB.prod.weft.internal.");
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(100, 64, 0, 2))));
        assert!(m.edns.is_some());
    }

    #[test]
    fn unknown_overlay_name_is_nxdomain_with_soa_and_never_forwarded() {
        let q = client_query(5, "nope.weft.internal.", RecordType::A, false);
        let m = reply_of(handle(
            &zone(),
            &mut Cache::default(),
            t0(),
            &q,
            Transport::Udp,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert!(m.edns.is_none());
    }

    #[test]
    fn other_names_are_forwarded_then_served_from_cache() {
        let z = zone();
        let mut cache = Cache::default();
        let now = t0();
        let q = client_query(9, "example.com.", RecordType::A, true);
        let Outcome::Forward(pending) = handle(&z, &mut cache, now, &q, Transport::Udp) else {
            panic!("not forwarded")
        };
        let up = Message::from_vec(&upstream_query(&pending, 4242).unwrap()).unwrap();
        assert!(up.metadata.recursion_desired);
        let mut resp = Message::response(4242, OpCode::Query);
        resp.add_query(up.queries[0].clone());
        resp.add_answer(Record::from_rdata(
            Name::from_ascii("example.com.").unwrap(),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
        ));
        assert!(answers(&resp, 4242, &pending.question));
        assert!(!answers(&resp, 4243, &pending.question));
        let m = Message::from_vec(&finish(&pending, Some(resp), &mut cache, now)).unwrap();
        assert_eq!(m.metadata.id, 9);
        assert!(!m.metadata.authoritative && m.metadata.recursion_available);
        assert_eq!(m.answers.len(), 1);

        let q2 = client_query(10, "EXAMPLE.com.", RecordType::A, false);
        let m = reply_of(handle(&z, &mut cache, now, &q2, Transport::Udp));
        assert_eq!(m.metadata.id, 10);
        assert_eq!(m.queries[0].name.to_ascii(), "EXAMPLE.com.");
        assert_eq!(m.answers.len(), 1);
    }

    #[test]
    fn upstream_failure_is_servfail() {
        let q = client_query(3, "example.com.", RecordType::A, false);
        let Outcome::Forward(p) = handle(&zone(), &mut Cache::default(), t0(), &q, Transport::Tcp)
        else {
            panic!()
        };
        let m = Message::from_vec(&finish(&p, None, &mut Cache::default(), t0())).unwrap();
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (3, ResponseCode::ServFail)
        );
    }

    #[test]
    fn bad_messages() {
        let z = zone();
        let mut c = Cache::default();
        assert!(matches!(
            handle(&z, &mut c, t0(), &[1, 2], Transport::Udp),
            Outcome::Drop
        ));
        // A header claiming one question with none following: FORMERR, same id.
        let junk = [0xab, 0xcd, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let m = reply_of(handle(&z, &mut c, t0(), &junk, Transport::Udp));
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0xabcd, ResponseCode::FormErr)
        );
        // Responses are never answered.
        let mut resp = Message::response(1, OpCode::Query);
        resp.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
        let bytes = resp.to_vec().unwrap();
        assert!(matches!(
            handle(&z, &mut c, t0(), &bytes, Transport::Udp),
            Outcome::Drop
        ));
        // Two questions.
        let mut two = Message::new(8, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(Name::from_ascii("a.").unwrap(), RecordType::A));
        two.add_query(Query::query(Name::from_ascii("b.").unwrap(), RecordType::A));
        let m = reply_of(handle(
            &z,
            &mut c,
            t0(),
            &two.to_vec().unwrap(),
            Transport::Udp,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Another opcode.
        let mut notify = Message::new(8, MessageType::Query, OpCode::Query);
        notify.metadata.op_code = OpCode::Notify;
        notify.add_query(Query::query(Name::from_ascii("a.").unwrap(), RecordType::A));
        let m = reply_of(handle(
            &z,
            &mut c,
            t0(),
            &notify.to_vec().unwrap(),
            Transport::Udp,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    }

    #[test]
    fn large_udp_answer_is_truncated_for_the_client() {
        let z = zone();
        let mut cache = Cache::default();
        let q = client_query(11, "big.example.", RecordType::A, false);
        let Outcome::Forward(p) = handle(&z, &mut cache, t0(), &q, Transport::Udp) else {
            panic!()
        };
        let mut resp = Message::response(1, OpCode::Query);
        resp.add_query(p.question.clone());
        for i in 0..60u8 {
            resp.add_answer(Record::from_rdata(
                Name::from_ascii("big.example.").unwrap(),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
            ));
        }
        let bytes = finish(&p, Some(resp), &mut cache, t0());
        assert!(bytes.len() <= UDP_CLASSIC);
        let m = Message::from_vec(&bytes).unwrap();
        assert!(m.metadata.truncation);
        assert_eq!(m.metadata.id, 11);
    }
}
