//! Server-Sent Events framing: an encoder for the controller and a pure, bounded
//! incremental parser for clients (the `text/event-stream` rules of the HTML
//! standard: `\n`, `\r\n` and `\r` line ends, `:` comments, `data`/`event`/`id`/
//! `retry` fields, a persistent last event id).
//!
//! The parser never allocates more than its [`SseLimits`] allow and never panics
//! on any input: a line or an event over the limit is an error, after which the
//! caller drops the stream and reconnects with `Last-Event-ID`.

use std::collections::VecDeque;

/// Appends one event to `out`. `data` may contain newlines (one `data:` line each).
/// `id` and `event` must not contain line breaks; such characters are dropped.
pub fn encode_event(out: &mut Vec<u8>, id: Option<&str>, event: Option<&str>, data: &str) {
    encode_fields(out, id, event);
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Appends one event whose data is `value`'s compact JSON, serialized
/// straight into `out` (compact JSON has no line breaks, so the output is
/// [`encode_event`]'s for `serde_json::to_string(value)`, without that
/// string). On an error, `out` is left as it was.
pub fn encode_json_event<T: serde::Serialize + ?Sized>(
    out: &mut Vec<u8>,
    id: Option<&str>,
    event: Option<&str>,
    value: &T,
) -> Result<(), serde_json::Error> {
    let start = out.len();
    begin_data_line(out, id, event);
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        out.truncate(start);
        return Err(e);
    }
    end_data_line(out);
    Ok(())
}

/// Appends an event's `id` and `event` lines (like [`encode_event`]) and
/// the start of its single `data:` line. The caller appends the data, which
/// must hold no line break (compact JSON), then calls [`end_data_line`]:
/// for an event assembled from pieces encoded elsewhere.
pub fn begin_data_line(out: &mut Vec<u8>, id: Option<&str>, event: Option<&str>) {
    encode_fields(out, id, event);
    out.extend_from_slice(b"data: ");
}

/// Ends the `data:` line [`begin_data_line`] started, and the event.
pub fn end_data_line(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\n\n");
}

/// The `id:` and `event:` lines, line breaks dropped.
fn encode_fields(out: &mut Vec<u8>, id: Option<&str>, event: Option<&str>) {
    let clean = |s: &str| s.replace(['\r', '\n'], "");
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(clean(id).as_bytes());
        out.push(b'\n');
    }
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(clean(event).as_bytes());
        out.push(b'\n');
    }
}

/// Appends a comment line (`: text`), which clients ignore: used as keepalive.
pub fn encode_comment(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b": ");
    out.extend_from_slice(text.replace(['\r', '\n'], " ").as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Appends a `retry:` field telling clients how long to wait before reconnecting.
pub fn encode_retry(out: &mut Vec<u8>, millis: u64) {
    out.extend_from_slice(format!("retry: {millis}\n\n").as_bytes());
}

/// Size bounds of the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseLimits {
    /// Longest accepted line in bytes, line end excluded.
    pub max_line: usize,
    /// Largest accepted event `data` in bytes.
    pub max_data: usize,
}

impl Default for SseLimits {
    /// 16 MiB each: a full network map of ~50,000 peers.
    fn default() -> Self {
        Self {
            max_line: 16 << 20,
            max_data: 16 << 20,
        }
    }
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The last event id at dispatch time (persists across events, per the
    /// standard); `None` if the stream never set one.
    pub id: Option<String>,
    /// The event type (`message` when the event had no `event` field).
    pub event: String,
    /// The data lines joined with `\n`.
    pub data: String,
}

/// Why the parser gave up. The stream must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line is longer than [`SseLimits::max_line`].
    #[error("SSE line longer than {0} bytes")]
    LineTooLong(usize),
    /// An event's data is larger than [`SseLimits::max_data`].
    #[error("SSE event data larger than {0} bytes")]
    EventTooLarge(usize),
}

/// Incremental `text/event-stream` parser: [`feed`](Self::feed) bytes as they
/// arrive, then drain [`next_event`](Self::next_event) until `None`.
#[derive(Debug)]
pub struct SseParser {
    limits: SseLimits,
    line: Vec<u8>,
    after_cr: bool,
    at_start: bool,
    data: String,
    has_data: bool,
    event: String,
    last_id: Option<String>,
    retry: Option<u64>,
    ready: VecDeque<SseEvent>,
    failed: Option<SseError>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(SseLimits::default())
    }
}

impl SseParser {
    /// A parser with the given bounds.
    pub fn new(limits: SseLimits) -> Self {
        Self {
            limits,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            data: String::new(),
            has_data: false,
            event: String::new(),
            last_id: None,
            retry: None,
            ready: VecDeque::new(),
            failed: None,
        }
    }

    /// Consumes a chunk of the stream. Complete events become available from
    /// [`next_event`](Self::next_event); events completed before an error are kept.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), SseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.at_start && !chunk.is_empty() {
            // A UTF-8 BOM may open the stream; it can arrive split over chunks.
            let bom = [0xEFu8, 0xBB, 0xBF];
            let have = self.line.len();
            let take = (bom.len() - have).min(chunk.len());
            if bom[have..have + take] == chunk[..take] {
                self.line.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if self.line.len() < bom.len() {
                    return Ok(());
                }
                self.line.clear();
            } else {
                // Not a BOM: put back what we held and parse it normally.
                let held = std::mem::take(&mut self.line);
                self.at_start = false;
                self.feed_bytes(&held)?;
            }
            self.at_start = false;
        }
        self.feed_bytes(chunk)
    }

    /// The next complete event, if any.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// The last event id seen (what to send as `Last-Event-ID` when reconnecting).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The reconnection delay the server asked for, in milliseconds.
    pub fn retry_millis(&self) -> Option<u64> {
        self.retry
    }

    fn feed_bytes(&mut self, chunk: &[u8]) -> Result<(), SseError> {
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.push_line_bytes(&rest[..i])?;
                    self.after_cr = rest[i] == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line)?;
                    self.line = line;
                    self.line.clear();
                    rest = &rest[i + 1..];
                }
                None => {
                    self.push_line_bytes(rest)?;
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.limits.max_line {
            return Err(self.fail(SseError::LineTooLong(self.limits.max_line)));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn fail(&mut self, e: SseError) -> SseError {
        self.failed = Some(e.clone());
        self.line = Vec::new();
        self.data = String::new();
        e
    }

    fn process_line(&mut self, line: &[u8]) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                let value = String::from_utf8_lossy(value);
                let extra = value.len() + usize::from(self.has_data);
                if self.data.len() + extra > self.limits.max_data {
                    return Err(self.fail(SseError::EventTooLarge(self.limits.max_data)));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            b"id" if !value.contains(&0) => {
                self.last_id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let data = std::mem::take(&mut self.data);
        self.ready.push_back(SseEvent {
            id: self.last_id.clone(),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        p.feed(input).unwrap();
        std::iter::from_fn(|| p.next_event()).collect()
    }

    #[test]
    fn encoder_output_parses_back() {
        let mut out = Vec::new();
        encode_retry(&mut out, 2000);
        encode_comment(&mut out, "keepalive");
        encode_event(&mut out, Some("7"), Some("delta"), "{\"a\":1}\nsecond");
        encode_event(&mut out, None, None, "x");
        let mut p = SseParser::default();
        p.feed(&out).unwrap();
        assert_eq!(p.retry_millis(), Some(2000));
        assert_eq!(
            p.next_event(),
            Some(SseEvent {
                id: Some("7".into()),
                event: "delta".into(),
                data: "{\"a\":1}\nsecond".into()
            })
        );
        // The id persists; the event type resets.
        assert_eq!(
            p.next_event(),
            Some(SseEvent {
                id: Some("7".into()),
                event: "message".into(),
                data: "x".into()
            })
        );
        assert_eq!(p.next_event(), None);
    }

    #[test]
    fn a_json_event_is_the_event_of_its_json_text() {
        let value = serde_json::json!({"a": "line\nbreak\r", "b": ["é", 1, null]});
        let text = serde_json::to_string(&value).unwrap();
        let mut want = b"before".to_vec();
        encode_event(&mut want, Some("7\n"), Some("delta"), &text);
        let mut got = b"before".to_vec();
        encode_json_event(&mut got, Some("7\n"), Some("delta"), &value).unwrap();
        assert_eq!(got, want);

        // Pieces between begin and end make the same event.
        let mut pieces = b"before".to_vec();
        begin_data_line(&mut pieces, Some("7\n"), Some("delta"));
        pieces.extend_from_slice(text.as_bytes());
        end_data_line(&mut pieces);
        assert_eq!(pieces, want);

        // A value that cannot be serialized leaves `out` as it was.
        let bad: std::collections::BTreeMap<Vec<u8>, u8> = [(vec![1], 1)].into();
        let mut out = b"before".to_vec();
        assert!(encode_json_event(&mut out, Some("1"), None, &bad).is_err());
        assert_eq!(out, b"before");
    }

    #[test]
    fn handles_all_line_endings_split_anywhere() {
        let input = b"\xEF\xBB\xBFid: 1\r\nevent: a\rdata:x\ndata\n\r\n: c\n\nid\ndata: y\n\n";
        let whole = parse_all(input);
        assert_eq!(whole.len(), 2);
        assert_eq!(
            whole[0],
            SseEvent {
                id: Some("1".into()),
                event: "a".into(),
                data: "x\n".into()
            }
        );
        // An empty `id` field resets the last id to empty.
        assert_eq!(whole[1].id.as_deref(), Some(""));
        for split in 0..input.len() {
            let mut p = SseParser::default();
            p.feed(&input[..split]).unwrap();
            p.feed(&input[split..]).unwrap();
            let got: Vec<_> = std::iter::from_fn(|| p.next_event()).collect();
            assert_eq!(got, whole, "split at {split}");
        }
    }

    #[test]
    fn ignores_nul_ids_bad_retry_and_unknown_fields() {
        let mut p = SseParser::default();
        p.feed(b"id: 3\n\nid: a\0b\nretry: 1x\nfoo: bar\ndata: d\n\n")
            .unwrap();
        let ev = p.next_event().unwrap();
        assert_eq!(ev.id.as_deref(), Some("3"));
        assert_eq!(p.retry_millis(), None);
    }

    #[test]
    fn enforces_limits() {
        let mut p = SseParser::new(SseLimits {
            max_line: 8,
            max_data: 10,
        });
        assert_eq!(p.feed(b"data: 123456789"), Err(SseError::LineTooLong(8)));
        assert_eq!(p.feed(b"\n"), Err(SseError::LineTooLong(8)));
        let mut p = SseParser::new(SseLimits {
            max_line: 16,
            max_data: 10,
        });
        assert_eq!(
            p.feed(b"data:123\ndata:4567\ndata:89\n"),
            Err(SseError::EventTooLarge(10))
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut p = SseParser::new(SseLimits { max_line: 32, max_data: 48 });
            for c in &chunks {
                if p.feed(c).is_err() { break; }
                while let Some(ev) = p.next_event() {
                    prop_assert!(ev.data.len() <= 48 * 3);
                }
            }
        }

        #[test]
        fn chunking_does_not_matter(data in "[a-z0-9{}\":,]{0,40}", id in 0u64..1000, cut in 0usize..200) {
            let mut out = Vec::new();
            encode_event(&mut out, Some(&id.to_string()), Some("delta"), &data);
            let cut = cut.min(out.len());
            let mut p = SseParser::default();
            p.feed(&out[..cut]).unwrap();
            p.feed(&out[cut..]).unwrap();
            let ev = p.next_event().unwrap();
            prop_assert_eq!(ev.data, data);
            prop_assert_eq!(ev.id, Some(id.to_string()));
        }
    }
}
