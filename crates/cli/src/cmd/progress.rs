//! Progress display for long CPU-bound work (proof-of-work minting).
//!
//! On a terminal: one self-rewriting line with percentage of the expected work,
//! hash rate and ETA. Otherwise (logs, CI): a plain line every few seconds.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

pub(crate) struct PowProgress {
    start: Instant,
    expected: f64,
    tty: bool,
    last_line: Instant,
    drew: bool,
}

impl PowProgress {
    pub(crate) fn new(expected_hashes: f64) -> Self {
        let now = crate::clock::now();
        Self {
            start: now,
            expected: expected_hashes,
            tty: std::io::stderr().is_terminal(),
            last_line: now,
            drew: false,
        }
    }

    pub(crate) fn update(&mut self, hashes: u64) {
        let now = crate::clock::now();
        let elapsed = now.duration_since(self.start).as_secs_f64().max(1e-6);
        let rate = hashes as f64 / elapsed;
        let line = describe(hashes, self.expected, rate);
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
            self.drew = true;
        } else if now.duration_since(self.last_line) >= Duration::from_secs(5) {
            eprintln!("{line}");
            self.last_line = now;
        }
    }

    /// Clears the progress line and returns the elapsed time.
    pub(crate) fn finish(&mut self) -> Duration {
        if self.drew {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
        self.start.elapsed()
    }
}

/// "proof of work: 37% of expected work, 21.3 MH/s, ETA ~1s"
pub(crate) fn describe(hashes: u64, expected: f64, rate: f64) -> String {
    let pct = 100.0 * hashes as f64 / expected.max(1.0);
    let remaining = (expected - hashes as f64).max(0.0);
    let eta = if rate > 0.0 {
        remaining / rate
    } else {
        f64::INFINITY
    };
    let eta = if hashes as f64 > expected {
        "any moment (past the expected work; luck varies)".to_owned()
    } else {
        format!("~{}", human_secs(eta))
    };
    format!(
        "proof of work: {pct:.0}% of expected work, {} hashes, {}, ETA {eta}",
        human_count(hashes as f64),
        human_rate(rate)
    )
}

pub(crate) fn human_rate(rate: f64) -> String {
    format!("{}H/s", human_count(rate))
}

fn human_count(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2} G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} k", n / 1e3)
    } else {
        format!("{n:.0} ")
    }
}

fn human_secs(s: f64) -> String {
    if !s.is_finite() {
        "unknown".to_owned()
    } else if s < 60.0 {
        format!("{s:.0}s")
    } else if s < 3600.0 {
        format!("{:.0}m{:02.0}s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_progress_rate_and_eta() {
        let s = describe(8_000_000, 16_000_000.0, 4_000_000.0);
        assert!(s.contains("50%"), "{s}");
        assert!(s.contains("4.0 MH/s"), "{s}");
        assert!(s.contains("ETA ~2s"), "{s}");
        assert!(describe(20, 10.0, 1.0).contains("any moment"));
        assert!(describe(0, 10.0, 0.0).contains("unknown"));
    }
}
