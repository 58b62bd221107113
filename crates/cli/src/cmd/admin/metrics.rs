//! `admin node metrics NODE [--since 1h]`: a node's forwarded metrics as
//! terminal sparklines (throughput, drops, RTT), each with its min, max and
//! last figure; `--json` prints the controller's answer (every one-minute
//! point).
//!
//! The time range is cut into at most [`MAX_COLUMNS`] columns (one per minute
//! when it fits); a column is the rate over the minutes in it (traffic, drops)
//! or their worst value (RTT), and a blank when no sample fell in it. The
//! scale of each line runs from its own minimum (`▁`) to its maximum (`█`).

use clap::Args;
use weft_api_client::Client;
use weft_proto::samples::{MetricsPoint, NodeMetrics};

use super::print_json;
use crate::cmd::format::{datetime, out, parse_duration, safe};

/// Columns of a sparkline at most.
const MAX_COLUMNS: usize = 60;
/// The sparkline's levels, lowest first.
const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// `admin node metrics`.
#[derive(Debug, Args)]
pub(super) struct MetricsArgs {
    /// Key or name.
    #[arg(allow_hyphen_values = true)]
    node: String,
    /// How far back: `90s`, `30m`, `6h`, `1d` (the controller keeps 24 h at
    /// one-minute resolution, in memory).
    #[arg(long, default_value = "1h", value_parser = since_secs)]
    since: u64,
}

/// `--since`: a duration longer than 0 s, in seconds (a usage error otherwise).
fn since_secs(s: &str) -> Result<u64, String> {
    match parse_duration(s)? {
        0 => Err("must be longer than 0 s".into()),
        n => Ok(n),
    }
}

/// Runs `admin node metrics`.
pub(super) async fn run(c: &Client, args: MetricsArgs, json: bool) -> anyhow::Result<()> {
    let now = crate::clock::unix_ms();
    let since = now.saturating_sub(args.since.saturating_mul(1000));
    let m = c.node_metrics(&args.node, Some(since)).await?;
    if json {
        return print_json(&m);
    }
    out(&render(&m, since, now));
    Ok(())
}

/// One column of the chart: the points that fall in its time slice.
#[derive(Debug, Default, Clone)]
struct Column {
    samples: u32,
    interval_ms: u64,
    rx_bytes: u64,
    tx_bytes: u64,
    drops: u64,
    rtt_us: Option<u64>,
    control_rtt_us: Option<u64>,
}

impl Column {
    fn add(&mut self, p: &MetricsPoint) {
        self.samples += p.samples;
        self.interval_ms += p.interval_ms;
        self.rx_bytes += p.rx_bytes;
        self.tx_bytes += p.tx_bytes;
        self.drops += p.drops;
        let worst = |a: Option<u64>, b: Option<u64>| a.max(b);
        self.rtt_us = worst(self.rtt_us, p.rtt_median_us);
        self.control_rtt_us = worst(self.control_rtt_us, p.control_rtt_us);
    }

    /// `total` per second over the time the samples cover.
    fn rate(&self, total: u64) -> Option<f64> {
        (self.samples > 0 && self.interval_ms > 0)
            .then(|| total as f64 * 1000.0 / self.interval_ms as f64)
    }
}

/// The points cut into columns between `since` and `now` (at most
/// [`MAX_COLUMNS`], each a whole number of minutes).
fn columns(points: &[MetricsPoint], since_ms: u64, now_ms: u64, resolution_ms: u64) -> Vec<Column> {
    let res = resolution_ms.max(1);
    let first = since_ms / res;
    let last = now_ms / res;
    let minutes = (last.saturating_sub(first) + 1) as usize;
    let per_column = minutes.div_ceil(MAX_COLUMNS).max(1);
    let mut cols = vec![Column::default(); minutes.div_ceil(per_column)];
    for p in points {
        let m = p.at_ms / res;
        if m < first || m > last {
            continue;
        }
        if let Some(c) = cols.get_mut((m - first) as usize / per_column) {
            c.add(p);
        }
    }
    cols
}

/// A sparkline of `values` (`None`: a blank column), scaled from their
/// minimum to their maximum; all equal: the lowest level.
fn sparkline(values: &[Option<f64>]) -> String {
    let known: Vec<f64> = values.iter().flatten().copied().collect();
    let lo = known.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = known.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    values
        .iter()
        .map(|v| match v {
            None => ' ',
            Some(v) if hi > lo => {
                let step = ((v - lo) / (hi - lo) * (LEVELS.len() - 1) as f64).round() as usize;
                LEVELS[step.min(LEVELS.len() - 1)]
            }
            Some(_) => LEVELS[0],
        })
        .collect()
}

/// `min max last` of the known values, through `fmt`.
fn figures(values: &[Option<f64>], fmt: fn(f64) -> String) -> String {
    let known: Vec<f64> = values.iter().flatten().copied().collect();
    match known.last() {
        None => "no samples".into(),
        Some(last) => {
            let min = known.iter().copied().fold(f64::INFINITY, f64::min);
            let max = known.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("min {}  max {}  last {}", fmt(min), fmt(max), fmt(*last))
        }
    }
}

fn bytes_per_sec(v: f64) -> String {
    let (n, unit) = match v {
        v if v >= 1e9 => (v / 1e9, "GB/s"),
        v if v >= 1e6 => (v / 1e6, "MB/s"),
        v if v >= 1e3 => (v / 1e3, "kB/s"),
        v => (v, "B/s"),
    };
    format!("{n:.1} {unit}")
}

fn per_minute(v: f64) -> String {
    format!("{:.1}/min", v * 60.0)
}

fn millis(v: f64) -> String {
    format!("{:.2} ms", v / 1000.0)
}

/// One line of the chart: label, a value per column, how to show a value.
type Row = (&'static str, Vec<Option<f64>>, fn(f64) -> String);

/// The human rendering.
fn render(m: &NodeMetrics, since_ms: u64, now_ms: u64) -> String {
    let cols = columns(&m.points, since_ms, now_ms, m.resolution_ms);
    let per_col_min = {
        let minutes =
            (now_ms / m.resolution_ms.max(1)).saturating_sub(since_ms / m.resolution_ms.max(1)) + 1;
        minutes.div_ceil(cols.len().max(1) as u64)
    };
    let mut o = format!(
        "node {}  {}\nfrom {} to {}  ({} column{} of {} min; history kept in the controller's memory, 24 h)\n",
        safe(&m.name),
        m.node_key,
        datetime(since_ms),
        datetime(now_ms),
        cols.len(),
        if cols.len() == 1 { "" } else { "s" },
        per_col_min,
    );
    let rows: [Row; 5] = [
        (
            "rx",
            cols.iter().map(|c| c.rate(c.rx_bytes)).collect(),
            bytes_per_sec,
        ),
        (
            "tx",
            cols.iter().map(|c| c.rate(c.tx_bytes)).collect(),
            bytes_per_sec,
        ),
        (
            "drops",
            cols.iter().map(|c| c.rate(c.drops)).collect(),
            per_minute,
        ),
        (
            "peer rtt",
            cols.iter().map(|c| c.rtt_us.map(|v| v as f64)).collect(),
            millis,
        ),
        (
            "ctl rtt",
            cols.iter()
                .map(|c| c.control_rtt_us.map(|v| v as f64))
                .collect(),
            millis,
        ),
    ];
    for (label, values, fmt) in &rows {
        o.push_str(&format!(
            "{label:<9}{}  {}\n",
            sparkline(values),
            figures(values, *fmt)
        ));
    }
    let samples: u32 = cols.iter().map(|c| c.samples).sum();
    o.push_str(&format!(
        "samples  {samples} in range; since the controller started: {} received, {} missing, {} duplicate, {} out of window; agent outbox dropped {}\n",
        m.received, m.missing, m.duplicates, m.out_of_window, m.outbox_dropped
    ));
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::NodeKey;

    /// A whole minute: 2027-01-15T08:00:00Z.
    const T0: u64 = 1_800_000_000_000;

    fn point(minute: u64, rx: u64, rtt: Option<u64>) -> MetricsPoint {
        MetricsPoint {
            at_ms: T0 + minute * 60_000,
            samples: 2,
            interval_ms: 60_000,
            rx_bytes: rx,
            tx_bytes: rx / 2,
            drops: minute,
            rtt_median_us: rtt,
            ..MetricsPoint::default()
        }
    }

    fn metrics(points: Vec<MetricsPoint>) -> NodeMetrics {
        NodeMetrics {
            node_key: NodeKey::from_bytes([1; 32]),
            name: "web-1".into(),
            resolution_ms: 60_000,
            window_ms: 86_400_000,
            points,
            agent_start_ms: Some(T0),
            last_seq: Some(20),
            received: 20,
            missing: 0,
            duplicates: 1,
            out_of_window: 0,
            outbox_dropped: 3,
        }
    }

    #[test]
    fn since_is_a_positive_duration() {
        assert_eq!(since_secs("90m"), Ok(5400));
        assert!(since_secs("0s").is_err());
        assert!(since_secs("3y").is_err());
    }

    #[test]
    fn sparklines_scale_from_min_to_max_with_blanks() {
        let v: Vec<Option<f64>> = (0..8).map(|i| Some(f64::from(i))).collect();
        assert_eq!(sparkline(&v), "▁▂▃▄▅▆▇█");
        assert_eq!(sparkline(&[Some(5.0), None, Some(10.0)]), "▁ █");
        assert_eq!(sparkline(&[Some(3.0), Some(3.0)]), "▁▁");
        assert_eq!(sparkline(&[None, None]), "  ");
        assert_eq!(sparkline(&[]), "");
        assert_eq!(
            figures(&[Some(1000.0), None, Some(3e6), Some(2e6)], bytes_per_sec),
            "min 1.0 kB/s  max 3.0 MB/s  last 2.0 MB/s"
        );
        assert_eq!(figures(&[None], bytes_per_sec), "no samples");
    }

    #[test]
    fn the_range_is_cut_into_columns() {
        // Ten minutes: one column per minute, the gap blank.
        let pts = vec![point(0, 60_000, Some(1000)), point(2, 120_000, Some(3000))];
        let cols = columns(&pts, T0, T0 + 9 * 60_000, 60_000);
        assert_eq!(cols.len(), 10);
        assert_eq!(cols[0].rate(cols[0].rx_bytes), Some(1000.0));
        assert_eq!(cols[1].rate(cols[1].rx_bytes), None);
        // A day: 60 columns of 24 minutes, each the rate over its samples.
        let pts: Vec<_> = (0..1440).map(|m| point(m, 60_000, None)).collect();
        let cols = columns(&pts, T0, T0 + 1439 * 60_000, 60_000);
        assert_eq!(cols.len(), 60);
        assert!(cols.iter().all(|c| c.samples == 48));
        assert!(cols.iter().all(|c| c.rate(c.rx_bytes) == Some(1000.0)));
        // Points outside the range are left out.
        let cols = columns(&[point(100, 1, None)], T0, T0 + 60_000, 60_000);
        assert!(cols.iter().all(|c| c.samples == 0));
    }

    #[test]
    fn the_chart_shows_each_line_with_its_figures() {
        let pts = (0..10)
            .map(|m| point(m, 60_000 * (m + 1), Some(1000 * (m + 1))))
            .collect();
        let text = render(&metrics(pts), T0, T0 + 9 * 60_000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("node web-1  "), "{text}");
        assert!(
            lines[1].starts_with(
                "from 2027-01-15T08:00:00Z to 2027-01-15T08:09:00Z  (10 columns of 1 min"
            ),
            "{text}"
        );
        assert_eq!(
            lines[2],
            "rx       ▁▂▃▃▄▅▆▆▇█  min 1.0 kB/s  max 10.0 kB/s  last 10.0 kB/s"
        );
        assert!(
            lines[3].starts_with("tx       ▁▂▃▃▄▅▆▆▇█  min 500.0 B/s"),
            "{text}"
        );
        assert!(
            lines[4].contains("min 0.0/min  max 9.0/min  last 9.0/min"),
            "{text}"
        );
        assert!(
            lines[5].starts_with("peer rtt ▁▂▃▃▄▅▆▆▇█  min 1.00 ms  max 10.00 ms"),
            "{text}"
        );
        assert_eq!(lines[6], format!("ctl rtt  {}  no samples", " ".repeat(10)));
        assert!(
            lines[7].contains("20 in range") && lines[7].contains("outbox dropped 3"),
            "{text}"
        );
    }
}
