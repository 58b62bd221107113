//! The agent's recent log lines, in memory, for the `diagnostics` action.
//!
//! `weftd` writes its log through [`LogTee`]: every formatted line goes to
//! stderr as before and into one process-wide ring of at most [`MAX_LINES`]
//! lines and [`MAX_BYTES`] bytes (the oldest lines leave first; a longer line
//! is cut). Nothing is written to disk. The log never carries secrets (tokens
//! and credentials are never logged), so neither does the ring.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Mutex, PoisonError};

/// Lines kept at most.
pub const MAX_LINES: usize = 2000;
/// Bytes kept at most (all lines together).
pub const MAX_BYTES: usize = 256 * 1024;
/// A longer line is cut to this many bytes.
pub const MAX_LINE: usize = 2048;

/// A bounded ring of log lines.
#[derive(Debug, Default)]
pub struct LogRing {
    lines: VecDeque<String>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl LogRing {
    /// An empty ring with the given bounds.
    pub fn with_bounds(max_lines: usize, max_bytes: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines,
            max_bytes,
        }
    }

    /// Adds one line (without its newline; terminal colour codes removed),
    /// dropping the oldest lines to stay within the bounds.
    pub fn push(&mut self, line: &str) {
        let clean = strip_ansi(line);
        let (kept, _) =
            weft_proto::task::cut_at_char_boundary(&clean, MAX_LINE.min(self.max_bytes));
        let kept = kept.to_owned();
        self.bytes += kept.len();
        self.lines.push_back(kept);
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// The newest lines whose total (with newlines) fits in `max_bytes`,
    /// oldest first, and how many older lines were left out.
    pub fn tail(&self, max_bytes: usize) -> (Vec<String>, usize) {
        let mut out = Vec::new();
        let mut used = 0;
        for line in self.lines.iter().rev() {
            if used + line.len() + 1 > max_bytes {
                break;
            }
            used += line.len() + 1;
            out.push(line.clone());
        }
        let left_out = self.lines.len() - out.len();
        out.reverse();
        (out, left_out)
    }
}

static RING: Mutex<LogRing> = Mutex::new(LogRing {
    lines: VecDeque::new(),
    bytes: 0,
    max_lines: MAX_LINES,
    max_bytes: MAX_BYTES,
});

/// The process-wide ring's newest lines within `max_bytes` (see
/// [`LogRing::tail`]).
pub fn recent(max_bytes: usize) -> (Vec<String>, usize) {
    RING.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .tail(max_bytes)
}

/// A log writer: what it is given goes to stderr and, line by line, into the
/// process-wide ring. `tracing_subscriber::fmt().with_writer(LogTee::default)`
/// makes one per event.
#[derive(Debug, Default)]
pub struct LogTee {
    partial: Vec<u8>,
}

impl Write for LogTee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = std::io::stderr().write(buf)?;
        self.partial.extend_from_slice(&buf[..n]);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            record(&line[..end]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl Drop for LogTee {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            record(&rest);
        }
    }
}

fn record(line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    RING.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(&text);
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_lines_within_its_bounds() {
        let mut r = LogRing::with_bounds(3, 1000);
        for i in 0..5 {
            r.push(&format!("line {i}"));
        }
        assert_eq!(
            r.tail(1000),
            (vec!["line 2".into(), "line 3".into(), "line 4".into()], 0)
        );
        let mut r = LogRing::with_bounds(100, 20);
        for i in 0..5 {
            r.push(&format!("line {i}")); // 6 bytes each
        }
        let (lines, left) = r.tail(1000);
        assert_eq!(lines, vec!["line 2", "line 3", "line 4"]);
        assert_eq!(left, 0);
        assert!(r.bytes <= 20);
    }

    #[test]
    fn a_tail_fits_its_byte_budget_and_counts_what_it_left_out() {
        let mut r = LogRing::with_bounds(100, 10_000);
        for i in 0..10 {
            r.push(&format!("l{i}")); // 2 bytes + newline each
        }
        let (lines, left) = r.tail(9);
        assert_eq!(lines, vec!["l7", "l8", "l9"]);
        assert_eq!(left, 7);
        assert_eq!(r.tail(2), (vec![], 10));
    }

    #[test]
    fn long_lines_are_cut_and_colour_codes_removed() {
        let mut r = LogRing::with_bounds(10, 100_000);
        r.push(&"é".repeat(MAX_LINE));
        r.push("\u{1b}[2mtime\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m hello");
        let (lines, _) = r.tail(100_000);
        assert!(lines[0].len() <= MAX_LINE && lines[0].len() > MAX_LINE - 2);
        assert_eq!(lines[1], "time  INFO hello");
    }

    #[test]
    fn the_tee_records_whole_lines() {
        let mut t = LogTee::default();
        t.write_all(b"logring-test first\nlogring-test sec")
            .unwrap();
        t.write_all(b"ond\n").unwrap();
        drop(t);
        let (lines, _) = recent(MAX_BYTES);
        let ours: Vec<_> = lines
            .iter()
            .filter(|l| l.starts_with("logring-test"))
            .collect();
        assert_eq!(ours, ["logring-test first", "logring-test second"]);
    }
}
