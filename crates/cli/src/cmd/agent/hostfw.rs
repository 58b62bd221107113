//! The host firewall's lines of `weft status`.

use std::fmt::Write as _;

use weft_proto::local::HostFirewallStatus;
use weft_proto::text::escape_for_display as safe;

/// Seconds from `now_ms` to `at_ms` (0 when past).
fn secs_until(at_ms: u64, now_ms: u64) -> u64 {
    at_ms.saturating_sub(now_ms) / 1000
}

/// Appends the `firewall` lines for `fw` to `o`.
pub(super) fn render(o: &mut String, fw: &HostFirewallStatus, now_ms: u64) {
    let version = fw
        .version
        .map_or_else(|| "none in force".to_owned(), |v| format!("version {v}"));
    let applied = fw.last_apply_ms.map_or_else(String::new, |t| {
        format!(", applied {}s ago", now_ms.saturating_sub(t) / 1000)
    });
    let checking = if fw.checking {
        "; checking that the controller still answers"
    } else {
        ""
    };
    let _ = writeln!(
        o,
        "firewall  {version}, {} rules ({} expiring){applied}{checking}",
        fw.rules,
        fw.expiring.len()
    );
    if let Some(w) = fw.wanted_version {
        let _ = writeln!(o, "          map asks for version {w} (not in force)");
    }
    for e in &fw.expiring {
        let comment = if e.comment.is_empty() {
            String::new()
        } else {
            format!(" \"{}\"", safe(&e.comment))
        };
        let _ = writeln!(
            o,
            "  expires {}{comment} in {}s",
            safe(&e.id),
            secs_until(e.expires_at_ms, now_ms)
        );
    }
    for d in &fw.domains {
        let addrs = if d.addresses.is_empty() {
            "(no addresses)".to_owned()
        } else {
            d.addresses.join(", ")
        };
        let refresh = d.refresh_at_ms.map_or_else(String::new, |t| {
            format!(" (resolved again in {}s)", secs_until(t, now_ms))
        });
        let _ = writeln!(o, "  domain  {}: {addrs}{refresh}", safe(&d.domain));
        if let Some(e) = &d.error {
            let _ = writeln!(o, "          resolving failed: {}", safe(e));
        }
    }
    if fw.rollbacks > 0 {
        let _ = write!(o, "  rollbacks {}", fw.rollbacks);
        if let Some(r) = &fw.last_rollback {
            let restored = r
                .restored
                .map_or_else(|| "no firewall".to_owned(), |v| format!("version {v}"));
            let _ = write!(
                o,
                "; last: version {} rolled back {}s ago, {restored} restored: {}",
                r.version,
                now_ms.saturating_sub(r.at_ms) / 1000,
                safe(&r.reason)
            );
        }
        let _ = writeln!(o);
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::local::{DomainSetStatus, ExpiringRuleStatus, RollbackStatus};

    use super::*;

    #[test]
    fn the_firewall_lines_show_version_expiry_domains_and_rollbacks() {
        let fw = HostFirewallStatus {
            version: Some(7),
            wanted_version: Some(8),
            rules: 3,
            expiring: vec![ExpiringRuleStatus {
                id: "dyn:4".into(),
                comment: "deploy".into(),
                expires_at_ms: 100_000,
            }],
            domains: vec![DomainSetStatus {
                domain: "api.example.com".into(),
                addresses: vec!["192.0.2.1".into()],
                refresh_at_ms: Some(40_000),
                error: None,
            }],
            last_apply_ms: Some(5_000),
            checking: false,
            rollbacks: 1,
            last_rollback: Some(RollbackStatus {
                version: 8,
                restored: Some(7),
                at_ms: 8_000,
                reason: "GET /healthz timed out".into(),
            }),
        };
        let mut o = String::new();
        render(&mut o, &fw, 10_000);
        assert!(
            o.contains("firewall  version 7, 3 rules (1 expiring), applied 5s ago\n"),
            "{o}"
        );
        assert!(o.contains("map asks for version 8 (not in force)"), "{o}");
        assert!(o.contains("expires dyn:4 \"deploy\" in 90s"), "{o}");
        assert!(
            o.contains("domain  api.example.com: 192.0.2.1 (resolved again in 30s)"),
            "{o}"
        );
        assert!(
            o.contains(
                "rollbacks 1; last: version 8 rolled back 2s ago, version 7 restored: GET /healthz timed out"
            ),
            "{o}"
        );
    }
}
