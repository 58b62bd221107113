//! A light simulated agent: one task, one plain-HTTP connection, a hand-rolled
//! HTTP/1.1 request and a streaming scan of the chunked SSE body that never
//! parses a map (a snapshot of a 10,000-node mesh is megabytes of JSON; parsing
//! 10,000 of them would measure the bench, not the controller). It reconnects
//! like weftd's map subscription does (`crates/api-client/src/stream.rs`):
//! `Last-Event-ID` resume; with several controller addresses a broken stream
//! moves to the next one after a random wait under 2 s, and a `reconnect`
//! notice moves it after a random wait within the notice's spread; once every
//! address failed in a row (or with one address), backoff from 500 ms doubling
//! to 10 s, each wait 0.5-1.0 times the step (jitter), reset after a session
//! that lived 10 s.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What every agent shares with the bench.
pub(crate) struct Shared {
    /// The controllers' addresses (the replicas); agent `i` starts on
    /// `addrs[i % addrs.len()]`.
    pub(crate) addrs: Vec<SocketAddr>,
    /// The text a delta must contain to count as "saw it".
    pub(crate) armed: RwLock<Option<Arc<[u8]>>>,
    /// Reports to the bench.
    pub(crate) tx: mpsc::UnboundedSender<Report>,
}

/// What an agent reports.
#[derive(Debug)]
pub(crate) enum Report {
    /// A stream (re)opened on replica `replica` and delivered its first
    /// event (snapshot or replay).
    Opened {
        agent: usize,
        replica: usize,
        snapshot: bool,
        at: Instant,
    },
    /// A delta containing the armed marker arrived.
    Hit { marker: Arc<[u8]>, at: Instant },
    /// The controller refused a stream open (status code).
    Refused { status: u16 },
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// The random wait before the next address after a failure (weftd's).
const FAILOVER_SPREAD_MS: u64 = 2000;
/// Largest delta kept for the marker search (bigger ones are skipped).
const MAX_DELTA: usize = 8 << 20;

/// How a session ended.
enum Ended {
    /// The controller asked to reconnect elsewhere within this many ms.
    Reconnect(u64),
    /// The connection failed or closed; whether any map event arrived.
    Broken { delivered: bool },
}

/// Runs one agent until the bench ends.
pub(crate) async fn run(agent: usize, credential: String, shared: Arc<Shared>) {
    let n = shared.addrs.len();
    let mut at = agent % n;
    let mut version: Option<u64> = None;
    let mut step = BACKOFF_MIN;
    let mut failures = 0usize;
    let mut rng = (agent as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    loop {
        let started = Instant::now();
        let ended = session(agent, at, &credential, &shared, &mut version).await;
        if started.elapsed() >= BACKOFF_RESET_AFTER {
            step = BACKOFF_MIN;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        at = (at + 1) % n;
        let wait = match ended {
            Ended::Reconnect(within_ms) => {
                failures = 0;
                Duration::from_millis(rng % within_ms.max(1))
            }
            Ended::Broken { delivered } => {
                failures = if delivered { 1 } else { failures + 1 };
                if n > 1 && failures < n {
                    Duration::from_millis(rng % FAILOVER_SPREAD_MS)
                } else {
                    let wait = step.mul_f64(0.5 + (rng % 1000) as f64 / 2000.0);
                    step = (step * 2).min(BACKOFF_MAX);
                    wait
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn session(
    agent: usize,
    replica: usize,
    credential: &str,
    shared: &Shared,
    version: &mut Option<u64>,
) -> Ended {
    let mut delivered = false;
    match stream(agent, replica, credential, shared, version, &mut delivered).await {
        Ok(Some(within_ms)) => Ended::Reconnect(within_ms),
        Ok(None) | Err(_) => Ended::Broken { delivered },
    }
}

/// One stream; `Some(within_ms)` when the controller sent a reconnect
/// notice.
async fn stream(
    agent: usize,
    replica: usize,
    credential: &str,
    shared: &Shared,
    version: &mut Option<u64>,
    delivered: &mut bool,
) -> std::io::Result<Option<u64>> {
    let addr = shared.addrs[replica];
    let mut tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let mut req = format!(
        "GET /v1/map/stream HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {credential}\r\naccept: text/event-stream\r\n",
    );
    if let Some(v) = version {
        req.push_str(&format!("last-event-id: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0;
    // The response head.
    let head_end = loop {
        if have == buf.len() {
            return Err(std::io::Error::other("response head too long"));
        }
        let n = tcp.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
        if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let status: u16 = std::str::from_utf8(&buf[..head_end])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 200 {
        let _ = shared.tx.send(Report::Refused { status });
        return Err(std::io::Error::other(format!("status {status}")));
    }
    let mut body = Dechunk::default();
    let mut sse = Scan::default();
    let (mut from, mut to) = (head_end, have);
    loop {
        let mut events = Vec::new();
        // A delta's data is kept only while a marker is armed: copying every
        // delta of a presence storm would load the bench, not the controller.
        sse.keep = shared.armed.read().is_ok_and(|m| m.is_some());
        body.feed(&buf[from..to], |data| sse.feed(data, &mut events));
        for ev in events {
            if let Some(v) = ev.id {
                *version = Some(v);
            }
            let at = Instant::now();
            if ev.kind == Kind::Reconnect {
                let within_ms = serde_json::from_slice::<serde_json::Value>(&ev.data)
                    .ok()
                    .and_then(|v| v.get("within_ms")?.as_u64())
                    .unwrap_or(5000);
                return Ok(Some(within_ms));
            }
            if !*delivered && (ev.kind == Kind::Snapshot || ev.kind == Kind::Delta) {
                *delivered = true;
                let _ = shared.tx.send(Report::Opened {
                    agent,
                    replica,
                    snapshot: ev.kind == Kind::Snapshot,
                    at,
                });
            }
            if ev.kind == Kind::Delta {
                let marker = shared.armed.read().ok().and_then(|m| m.clone());
                if let Some(m) = marker
                    && contains(&ev.data, &m)
                {
                    let _ = shared.tx.send(Report::Hit { marker: m, at });
                }
            }
        }
        if body.done {
            return Ok(None);
        }
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        (from, to) = (0, n);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut i = 0;
    while let Some(p) = hay[i..].iter().position(|&b| b == first) {
        let at = i + p + 1;
        if hay.len() >= at + rest.len() && &hay[at..at + rest.len()] == rest {
            return true;
        }
        i = at;
    }
    false
}

/// HTTP/1.1 chunked transfer decoding, incremental.
#[derive(Default)]
struct Dechunk {
    /// Bytes left in the current chunk's data.
    left: usize,
    /// Reading a size line (its digits so far).
    size: Option<usize>,
    /// Inside the size line's extension (skip to LF).
    ext: bool,
    /// CR LF bytes to skip after a chunk's data.
    skip: usize,
    done: bool,
}

impl Dechunk {
    fn feed(&mut self, mut input: &[u8], mut out: impl FnMut(&[u8])) {
        while !input.is_empty() && !self.done {
            if self.skip > 0 {
                self.skip -= 1;
                input = &input[1..];
                continue;
            }
            if self.left > 0 {
                let n = self.left.min(input.len());
                out(&input[..n]);
                self.left -= n;
                input = &input[n..];
                if self.left == 0 {
                    self.skip = 2;
                }
                continue;
            }
            let b = input[0];
            input = &input[1..];
            let size = self.size.get_or_insert(0);
            match b {
                b'\n' => {
                    let n = *size;
                    self.size = None;
                    self.ext = false;
                    if n == 0 {
                        self.done = true;
                    } else {
                        self.left = n;
                    }
                }
                _ if self.ext || b == b'\r' => {}
                b';' => self.ext = true,
                _ => {
                    let d = (b as char).to_digit(16).unwrap_or(0) as usize;
                    *size = size.saturating_mul(16).saturating_add(d);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Kind {
    #[default]
    Other,
    Snapshot,
    Delta,
    Reconnect,
}

#[derive(Debug, Default)]
struct Event {
    id: Option<u64>,
    kind: Kind,
    data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Field {
    /// At the start of a line.
    #[default]
    Start,
    /// The field name so far (up to 8 bytes kept).
    Name,
    Id,
    Event,
    Data,
    Skip,
}

/// SSE scanning that keeps only what the bench needs: the id, the event name,
/// and a delta's or a reconnect notice's data.
#[derive(Default)]
struct Scan {
    field: Field,
    name: Vec<u8>,
    value: Vec<u8>,
    ev: Event,
    any: bool,
    /// Keep a delta's data (a reconnect notice's always).
    keep: bool,
}

impl Scan {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<Event>) {
        while !input.is_empty() {
            match self.field {
                Field::Start | Field::Name => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        if self.field == Field::Start {
                            if self.any {
                                out.push(std::mem::take(&mut self.ev));
                            }
                            self.any = false;
                        }
                        self.field = Field::Start;
                        self.name.clear();
                        continue;
                    }
                    if b == b':' {
                        self.field = match self.name.as_slice() {
                            b"id" => Field::Id,
                            b"event" => Field::Event,
                            b"data"
                                if self.ev.kind == Kind::Reconnect
                                    || (self.ev.kind == Kind::Delta && self.keep) =>
                            {
                                Field::Data
                            }
                            _ => Field::Skip,
                        };
                        self.value.clear();
                        self.any |= self.field != Field::Skip || self.name == b"data";
                        continue;
                    }
                    self.field = Field::Name;
                    if self.name.len() < 8 {
                        self.name.push(b);
                    }
                }
                Field::Skip => match input.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        input = &input[i + 1..];
                        self.end_line();
                    }
                    None => input = &[],
                },
                Field::Id | Field::Event | Field::Data => {
                    let (part, rest, ended) = match input.iter().position(|&b| b == b'\n') {
                        Some(i) => (&input[..i], &input[i + 1..], true),
                        None => (input, &[][..], false),
                    };
                    let room = if self.field == Field::Data {
                        MAX_DELTA
                    } else {
                        64
                    };
                    let take = part.len().min(room.saturating_sub(self.value.len()));
                    self.value.extend_from_slice(&part[..take]);
                    input = rest;
                    if ended {
                        self.end_line();
                    }
                }
            }
        }
    }

    fn end_line(&mut self) {
        let value = self.value.strip_prefix(b" ").unwrap_or(&self.value);
        match self.field {
            Field::Id => self.ev.id = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()),
            Field::Event => {
                self.ev.kind = match value {
                    b"snapshot" => Kind::Snapshot,
                    b"delta" => Kind::Delta,
                    b"reconnect" => Kind::Reconnect,
                    _ => Kind::Other,
                }
            }
            Field::Data => self.ev.data.extend_from_slice(value),
            _ => {}
        }
        self.value.clear();
        self.name.clear();
        self.field = Field::Start;
    }
}

/// Checks the scanner on a body split at every byte (run at the bench's
/// start: a bench target's unit tests would not run under `cargo bench`).
pub(crate) fn self_check() {
    let body = b"retry: 2000\n\nid: 7\nevent: snapshot\ndata: {\"big\":1}\n\n: keepalive\n\nid: 8\nevent: delta\ndata: {\"x\":\"marker\"}\n\nevent: reconnect\ndata: {\"reason\":\"draining\",\"within_ms\":5000}\n\n";
    let mut wire = Vec::new();
    for part in body.chunks(13) {
        wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        wire.extend_from_slice(part);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    for split in 1..wire.len() {
        let (mut d, mut s, mut evs) = (Dechunk::default(), Scan::default(), Vec::new());
        s.keep = true;
        for piece in wire.chunks(split) {
            d.feed(piece, |b| s.feed(b, &mut evs));
        }
        assert!(d.done);
        let kinds: Vec<_> = evs.iter().map(|e| (e.id, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (Some(7), Kind::Snapshot),
                (Some(8), Kind::Delta),
                (None, Kind::Reconnect)
            ],
            "split {split}"
        );
        assert!(contains(&evs[1].data, b"marker"));
        assert!(!contains(&evs[1].data, b"markers"));
        assert!(evs[0].data.is_empty());
        assert!(contains(&evs[2].data, b"\"within_ms\":5000"));
    }
}
