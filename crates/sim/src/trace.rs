//! The simulation's trace: one line of text per send, delivery, drop, map change
//! and node event, stamped with the virtual time since the start.
//!
//! Lines name hosts (`n0`, `n1`, …) and simulated addresses, never real
//! instants, pointers or anything iterated in hash order, so two runs of one
//! scenario with one seed can be compared byte for byte.

use std::fmt::Write as _;
use std::time::Duration;

/// The trace of one run.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    enabled: bool,
    text: String,
    lines: usize,
}

impl Trace {
    /// A trace that records (`enabled`) or only counts lines.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            text: String::new(),
            lines: 0,
        }
    }

    /// Appends one line at virtual time `at`; `line` is only formatted when
    /// the trace records.
    pub fn line(&mut self, at: Duration, line: impl FnOnce() -> String) {
        self.lines += 1;
        if self.enabled {
            let _ = writeln!(self.text, "{} {}", stamp(at), line());
        }
    }

    /// The recorded text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Lines appended (recorded or not).
    pub fn lines(&self) -> usize {
        self.lines
    }
}

/// `+SSSSS.mmm`: a virtual time offset in seconds with milliseconds.
pub fn stamp(at: Duration) -> String {
    format!("+{:05}.{:03}", at.as_secs(), at.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_with_virtual_time() {
        let mut t = Trace::new(true);
        t.line(Duration::from_millis(61_250), || "deliver".into());
        assert_eq!(t.text(), "+00061.250 deliver\n");
        let mut off = Trace::new(false);
        off.line(Duration::ZERO, || unreachable!("not formatted when off"));
        assert_eq!((off.text(), off.lines()), ("", 1));
    }
}
