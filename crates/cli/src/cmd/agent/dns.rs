//! `weft dns log [--follow] [-n N]` and `weft dns stats`: the local resolver's
//! query log (`weftd --dns-query-log`) and statistics, through the agent.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use weft_proto::local::{DnsLogEntry, DnsStatsReport, LocalRequest, LocalResponse};

use super::{SocketArg, call};
use crate::CodedError;
use crate::cmd::format::{datetime, out, safe};

/// How often `weft dns log --follow` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// `weft dns ...`.
#[derive(Debug, Subcommand)]
pub enum DnsCmd {
    /// Show the latest queries the resolver answered (needs weftd
    /// --dns-query-log): time, name, type, answer, where it came from
    /// (overlay, cache, upstream, blocked, local), the upstream and its
    /// latency. Oldest first.
    Log(DnsLogArgs),
    /// Show the resolver's statistics: queries, cache hits, blocked names,
    /// the most asked names, upstream latency percentiles and each upstream's
    /// health.
    Stats,
}

/// `weft dns log` options.
#[derive(Debug, Args)]
pub struct DnsLogArgs {
    /// How many of the latest lines (at most 10000).
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: u32,
    /// Keep printing new lines as they are logged (Ctrl-C ends it).
    #[arg(short, long)]
    pub follow: bool,
}

/// Runs `weft dns ...`.
pub fn dns(sock: &SocketArg, cmd: DnsCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        DnsCmd::Log(a) => log(sock, &a, json),
        DnsCmd::Stats => stats(sock, json),
    }
}

fn fetch(sock: &SocketArg, n: u32, after_seq: Option<u64>) -> anyhow::Result<Vec<DnsLogEntry>> {
    match call(
        &sock.socket,
        &LocalRequest::DnsLog {
            n: Some(n),
            after_seq,
        },
    )? {
        LocalResponse::DnsLog { entries, .. } => Ok(entries),
        LocalResponse::Error { code, message } => Err(CodedError { code, message }.into()),
        _ => bail!("the agent does not serve the DNS query log (upgrade weftd)"),
    }
}

fn log(sock: &SocketArg, a: &DnsLogArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut last = None;
    let mut first = true;
    loop {
        let n = if first { a.lines } else { 10_000 };
        let entries = fetch(sock, n, last)?;
        first = false;
        for e in &entries {
            if json {
                out(&format!("{}\n", serde_json::to_string(e)?));
            } else {
                out(&render(e));
            }
            last = Some(e.seq);
        }
        if !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        if last.is_none() {
            // Nothing printed (-n 0, or an empty log): follow from the latest
            // line now, without printing it.
            last = Some(fetch(sock, 1, None)?.last().map_or(0, |e| e.seq));
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// One log line: `TIME NAME TYPE RCODE SOURCE [UPSTREAM LATENCY]`.
fn render(e: &DnsLogEntry) -> String {
    let mut o = format!(
        "{}  {} {} {} {}",
        datetime(e.ts_ms),
        safe(&e.name),
        safe(&e.qtype),
        safe(&e.rcode),
        safe(&e.source)
    );
    if let Some(u) = &e.upstream {
        let _ = write!(o, " {}", safe(u));
    }
    if let Some(us) = e.latency_us {
        let _ = write!(o, " {:.1} ms", us as f64 / 1000.0);
    }
    o.push('\n');
    o
}

fn stats(sock: &SocketArg, json: bool) -> anyhow::Result<ExitCode> {
    let report = match call(&sock.socket, &LocalRequest::DnsStats)? {
        LocalResponse::DnsStats(r) => r,
        LocalResponse::Error { code, message } => return Err(CodedError { code, message }.into()),
        _ => bail!("the agent does not serve DNS statistics (upgrade weftd)"),
    };
    if json {
        out(&format!("{}\n", serde_json::to_string(&report)?));
    } else {
        out(&render_stats(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn render_stats(r: &DnsStatsReport) -> String {
    let mut o = String::new();
    let state = if r.running { "running" } else { "not running" };
    let _ = writeln!(o, "resolver: --dns {} ({state})", safe(&r.mode));
    if r.running {
        let _ = writeln!(o, "cache TTL: {} s to {} s", r.min_ttl, r.max_ttl);
    }
    let _ = writeln!(
        o,
        "queries: {}  cache hits: {}  blocked: {}  forwarded: {}  upstream failures: {}",
        r.queries, r.cache_hits, r.blocked, r.forwarded, r.upstream_failures
    );
    match &r.blocklist {
        Some(b) => {
            let _ = writeln!(
                o,
                "blocklist: version {}, {} domains, blocked names get {}",
                b.version,
                b.entries,
                match b.mode {
                    weft_proto::dnsblock::BlockMode::Nxdomain => "NXDOMAIN",
                    weft_proto::dnsblock::BlockMode::Zero => "0.0.0.0 / ::",
                }
            );
        }
        None => {
            let _ = writeln!(o, "blocklist: none");
        }
    }
    if let (Some(a), Some(b), Some(c)) = (r.latency_ms_p50, r.latency_ms_p90, r.latency_ms_p99) {
        let _ = writeln!(
            o,
            "upstream latency: p50 {a:.1} ms  p90 {b:.1} ms  p99 {c:.1} ms"
        );
    }
    if !r.upstreams.is_empty() {
        let _ = writeln!(o, "upstreams:");
    }
    for u in &r.upstreams {
        let health = if u.healthy {
            "healthy".to_owned()
        } else {
            format!(
                "DOWN ({} failures; retried in {} s): {}",
                u.consecutive_failures,
                u.retry_in_secs.unwrap_or(0),
                safe(u.last_error.as_deref().unwrap_or("?"))
            )
        };
        let latency = u
            .last_latency_ms
            .map(|ms| format!(", last {ms} ms"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  {}  {health}  answered {}, failed {}{latency}",
            safe(&u.upstream),
            u.answered,
            u.failed
        );
    }
    if !r.top_names.is_empty() {
        let _ = writeln!(o, "top names:");
    }
    for (name, n) in &r.top_names {
        let _ = writeln!(o, "  {n:>8}  {}", safe(name));
    }
    match &r.query_log {
        Some(p) => {
            let _ = writeln!(
                o,
                "query log: {} ({} lines dropped)",
                safe(p),
                r.query_log_dropped
            );
        }
        None => {
            let _ = writeln!(o, "query log: off");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use weft_proto::local::DnsUpstreamHealth;

    use super::*;

    #[test]
    fn stats_and_log_lines_read_well() {
        let r = DnsStatsReport {
            mode: "system".into(),
            running: true,
            queries: 10,
            cache_hits: 4,
            blocked: 1,
            forwarded: 5,
            top_names: vec![("example.com".into(), 6)],
            latency_ms_p50: Some(1.0),
            latency_ms_p90: Some(2.5),
            latency_ms_p99: Some(9.0),
            min_ttl: 300,
            max_ttl: 86_400,
            upstreams: vec![
                DnsUpstreamHealth {
                    upstream: "udp://192.0.2.1:53".into(),
                    consecutive_failures: 2,
                    retry_in_secs: Some(7),
                    failed: 2,
                    last_error: Some("timed out".into()),
                    ..Default::default()
                },
                DnsUpstreamHealth {
                    upstream: "tls://192.0.2.2:853#dns.example".into(),
                    healthy: true,
                    answered: 5,
                    last_latency_ms: Some(3),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = render_stats(&r);
        assert!(text.contains("resolver: --dns system (running)"), "{text}");
        assert!(text.contains("cache TTL: 300 s to 86400 s"), "{text}");
        assert!(text.contains("blocked: 1"), "{text}");
        assert!(text.contains("p90 2.5 ms"), "{text}");
        assert!(
            text.contains("udp://192.0.2.1:53  DOWN (2 failures; retried in 7 s): timed out"),
            "{text}"
        );
        assert!(
            text.contains(
                "tls://192.0.2.2:853#dns.example  healthy  answered 5, failed 0, last 3 ms"
            ),
            "{text}"
        );
        assert!(text.contains("       6  example.com"), "{text}");
        assert!(text.contains("query log: off"), "{text}");
        assert!(text.contains("blocklist: none"), "{text}");
        let with_list = DnsStatsReport {
            blocklist: Some(weft_proto::local::DnsBlocklistInForce {
                version: 7,
                entries: 2,
                mode: weft_proto::dnsblock::BlockMode::Zero,
            }),
            ..r.clone()
        };
        let text = render_stats(&with_list);
        assert!(
            text.contains("blocklist: version 7, 2 domains, blocked names get 0.0.0.0 / ::"),
            "{text}"
        );
        let line = render(&DnsLogEntry {
            seq: 1,
            ts_ms: 0,
            name: "example.com".into(),
            qtype: "A".into(),
            rcode: "NoError".into(),
            source: "upstream".into(),
            upstream: Some("udp://192.0.2.1:53".into()),
            latency_us: Some(1500),
        });
        assert!(
            line.ends_with("example.com A NoError upstream udp://192.0.2.1:53 1.5 ms\n"),
            "{line}"
        );
    }
}
