//! The full resolver's settings (`weftd --dns system`, `--dns-upstream`,
//! `--dns-min-ttl`, `--dns-max-ttl`, `--dns-query-log`) and the local API's
//! DNS answers (`weft dns log`, `weft dns stats`).

use std::path::{Path, PathBuf};

use weft_dns::{DnsConfig, QueryLogConfig, TtlBounds, Upstream, Upstreams};
use weft_proto::local::{DnsStatsReport, LocalResponse};

use crate::api;
use crate::dns::DnsMode;

/// Default and largest number of entries `weft dns log` returns.
const LOG_DEFAULT: usize = 50;
const LOG_MAX: usize = 10_000;

/// How the resolver resolves (beyond [`DnsMode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsResolverOptions {
    /// Where other names go, in order (`--dns-upstream`); empty: the resolvers
    /// the system used before weft.
    pub upstreams: Vec<Upstream>,
    /// CA certificates (PEM) for DNS-over-TLS upstreams (`--dns-upstream-ca`);
    /// `None`: the system's.
    pub upstream_ca: Option<PathBuf>,
    /// Cache TTL bounds, seconds; `None`: the mode's default (`system`: 300 and
    /// 86,400; `auto`: as received, at most 3,600).
    pub min_ttl: Option<u32>,
    /// See `min_ttl`.
    pub max_ttl: Option<u32>,
    /// Write the query log (`STATE_DIR/dns-query.log`).
    pub query_log: bool,
    /// Its budget, both files together.
    pub query_log_max_bytes: u64,
}

impl Default for DnsResolverOptions {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            upstream_ca: None,
            min_ttl: None,
            max_ttl: None,
            query_log: false,
            query_log_max_bytes: weft_dns::querylog::DEFAULT_MAX_BYTES,
        }
    }
}

impl DnsResolverOptions {
    /// The TTL bounds in `mode`.
    pub fn ttl(&self, mode: DnsMode) -> Result<TtlBounds, String> {
        let default = match mode {
            DnsMode::System => TtlBounds::SYSTEM,
            DnsMode::Auto | DnsMode::Off => TtlBounds::default(),
        };
        TtlBounds::new(
            self.min_ttl.unwrap_or(default.min),
            self.max_ttl.unwrap_or(default.max),
        )
    }

    /// The service's configuration, or why these options are wrong (weftd
    /// checks this before it starts).
    pub fn dns_config(&self, mode: DnsMode, state_dir: &Path) -> Result<DnsConfig, String> {
        let ttl = self.ttl(mode)?;
        let query_log = if self.query_log {
            Some(QueryLogConfig::new(state_dir, self.query_log_max_bytes)?)
        } else {
            None
        };
        if let Some(ca) = &self.upstream_ca
            && !self.upstreams.iter().any(Upstream::is_tls)
        {
            return Err(format!(
                "--dns-upstream-ca {}: no tls:// upstream uses it",
                ca.display()
            ));
        }
        let mut config = DnsConfig::new(state_dir);
        config.whole_system = mode == DnsMode::System;
        config.ttl = ttl;
        config.tls_ca = self.upstream_ca.clone();
        config.query_log = query_log;
        if !self.upstreams.is_empty() {
            config.upstreams = Upstreams::Static(self.upstreams.clone());
        }
        Ok(config)
    }
}

/// `weft dns log`: the latest `n` entries after `after_seq`, read off the
/// runtime.
pub(crate) async fn log(
    mode: DnsMode,
    config: Option<QueryLogConfig>,
    n: Option<u32>,
    after_seq: Option<u64>,
) -> LocalResponse {
    if mode == DnsMode::Off {
        return api::error(
            "dns_off",
            "the resolver is off on this node (weftd --dns off): nothing is logged",
        );
    }
    let Some(config) = config else {
        return api::error(
            "dns_query_log_off",
            "the DNS query log is off on this node (start weftd with --dns-query-log)",
        );
    };
    let n = n.map_or(LOG_DEFAULT, |n| {
        usize::try_from(n).unwrap_or(LOG_MAX).min(LOG_MAX)
    });
    let path = config.path.clone();
    let read =
        tokio::task::spawn_blocking(move || weft_dns::querylog::read(&path, n, after_seq)).await;
    match read {
        Ok(Ok(entries)) => LocalResponse::DnsLog {
            entries,
            path: Some(config.path.display().to_string()),
        },
        Ok(Err(e)) => api::error("dns_query_log", &format!("reading the DNS query log: {e}")),
        Err(e) => api::error("internal", &format!("reading the DNS query log: {e}")),
    }
}

/// `weft dns stats` from the counters and, when it runs, the service.
pub(crate) fn stats(
    mode: DnsMode,
    counters: &weft_dns::DnsStats,
    service: Option<&weft_dns::DnsService>,
    blocklist: &weft_dns::BlocklistSlot,
) -> LocalResponse {
    let snap = counters.snapshot();
    let (p50, p90, p99) = match snap.latency_ms_p50_p90_p99 {
        Some((a, b, c)) => (Some(a), Some(b), Some(c)),
        None => (None, None, None),
    };
    let mut report = DnsStatsReport {
        mode: match mode {
            DnsMode::Auto => "auto",
            DnsMode::System => "system",
            DnsMode::Off => "off",
        }
        .into(),
        running: service.is_some(),
        queries: snap.queries,
        cache_hits: snap.cache_hits,
        blocked: snap.blocked,
        upstream_failures: snap.upstream_failures,
        forwarded: snap.upstream_count,
        top_names: snap.top_names,
        latency_ms_p50: p50,
        latency_ms_p90: p90,
        latency_ms_p99: p99,
        ..DnsStatsReport::default()
    };
    let list = blocklist.get();
    if list.version() > 0 {
        report.blocklist = Some(weft_proto::local::DnsBlocklistInForce {
            version: list.version(),
            entries: list.len() as u64,
            mode: list.mode(),
        });
    }
    if let Some(service) = service {
        let ttl = service.ttl_bounds();
        report.min_ttl = ttl.min;
        report.max_ttl = ttl.max;
        report.upstreams = service.upstream_health();
        if let Some((path, dropped)) = service.query_log() {
            report.query_log = Some(path.display().to_string());
            report.query_log_dropped = dropped;
        }
    }
    LocalResponse::DnsStats(Box::new(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_give_the_mode_defaults_and_refuse_nonsense() {
        let dir = Path::new("/var/lib/weft");
        let o = DnsResolverOptions::default();
        let c = o.dns_config(DnsMode::System, dir).unwrap();
        assert!(c.whole_system);
        assert_eq!(c.ttl, TtlBounds::SYSTEM);
        assert_eq!(c.upstreams, Upstreams::FromSystem);
        assert_eq!(c.query_log, None);
        let c = o.dns_config(DnsMode::Auto, dir).unwrap();
        assert!(!c.whole_system);
        assert_eq!(c.ttl, TtlBounds::default());

        let o = DnsResolverOptions {
            upstreams: vec!["tls://192.0.2.1#dns.example".parse().unwrap()],
            upstream_ca: Some("/etc/weft/dns-ca.pem".into()),
            min_ttl: Some(5),
            query_log: true,
            ..Default::default()
        };
        let c = o.dns_config(DnsMode::System, dir).unwrap();
        assert_eq!(
            c.ttl,
            TtlBounds {
                min: 5,
                max: 86_400
            }
        );
        assert_eq!(c.upstreams, Upstreams::Static(o.upstreams.clone()));
        assert_eq!(
            c.query_log.unwrap().path,
            Path::new("/var/lib/weft/dns-query.log")
        );

        let bad = DnsResolverOptions {
            min_ttl: Some(600),
            max_ttl: Some(60),
            ..Default::default()
        };
        assert!(
            bad.dns_config(DnsMode::System, dir)
                .unwrap_err()
                .contains("above the max")
        );
        let bad = DnsResolverOptions {
            query_log: true,
            query_log_max_bytes: 10,
            ..Default::default()
        };
        assert!(
            bad.dns_config(DnsMode::Auto, dir)
                .unwrap_err()
                .contains("at least")
        );
        let bad = DnsResolverOptions {
            upstream_ca: Some("/ca.pem".into()),
            ..Default::default()
        };
        assert!(
            bad.dns_config(DnsMode::Auto, dir)
                .unwrap_err()
                .contains("no tls://")
        );
    }

    /// `weft dns log`: says why there is nothing to read, or reads the file.
    #[tokio::test]
    async fn the_log_answer_names_what_is_off_or_reads_the_file() {
        let code = |r: LocalResponse| match r {
            LocalResponse::Error { code, .. } => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(log(DnsMode::Off, None, None, None).await), "dns_off");
        assert_eq!(
            code(log(DnsMode::System, None, None, None).await),
            "dns_query_log_off"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = QueryLogConfig::new(dir.path(), 1 << 20).unwrap();
        let line = |seq: u64| {
            format!(
                "{{\"seq\":{seq},\"ts_ms\":1,\"name\":\"n{seq}.example\",\"qtype\":\"A\",\
                 \"rcode\":\"NoError\",\"source\":\"cache\"}}\n"
            )
        };
        std::fs::write(&config.path, (1..=5).map(line).collect::<String>()).unwrap();
        match log(DnsMode::Auto, Some(config.clone()), Some(2), Some(2)).await {
            LocalResponse::DnsLog { entries, path } => {
                let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
                assert_eq!(seqs, [4, 5]);
                assert_eq!(path, Some(config.path.display().to_string()));
            }
            other => panic!("{other:?}"),
        }
    }
}
