//! The argument of `--action firewall-allow`: one string,
//! `PROTO[:PORTS] [from=CIDR,...] for=DURATION [comment=TEXT...]`, e.g.
//! `'tcp:8080,8443 from=10.0.0.0/8 for=2h comment=deploy window'`.
//! `comment=` takes the rest of the string (it may hold spaces).

use anyhow::{Context as _, bail};
use weft_policy::hostfw::{cidr, parse_ports, parse_proto};
use weft_proto::hostfw::task_rule::TaskRule;

use crate::cmd::format::parse_duration;

/// The form, for error messages.
pub(super) const FORM: &str = "--action firewall-allow 'PROTO[:PORTS] [from=CIDR,...] for=DURATION [comment=TEXT]', \
     e.g. 'tcp:8080 from=10.0.0.0/8 for=2h comment=deploy'";

/// Parses and checks the rule (lifetime 1 s..=30 d, the host firewall's bounds).
pub(super) fn parse(arg: &str) -> anyhow::Result<TaskRule> {
    let (words, comment) = match arg.split_once("comment=") {
        Some((w, c)) => (w, c.trim().to_owned()),
        None => (arg, String::new()),
    };
    let mut words = words.split_whitespace();
    let Some(first) = words.next() else {
        bail!("{FORM}: the rule is empty");
    };
    let (proto_word, ports_word) = match first.split_once(':') {
        Some((p, ports)) => (p, Some(ports)),
        None => (first, None),
    };
    let Some(proto) = parse_proto(proto_word) else {
        bail!("{FORM}: {proto_word:?} is not a protocol (any, tcp, udp, icmp)");
    };
    let ports = match ports_word {
        Some(p) => parse_ports(p).map_err(|e| anyhow::anyhow!("{FORM}: ports {p:?}: {e}"))?,
        None => Vec::new(),
    };
    let (mut from, mut for_secs) = (Vec::new(), None);
    for w in words {
        if let Some(list) = w.strip_prefix("from=") {
            for a in list.split(',').filter(|a| !a.is_empty()) {
                from.push(cidr(a).map_err(|e| anyhow::anyhow!("{FORM}: from: {e}"))?);
            }
        } else if let Some(d) = w.strip_prefix("for=") {
            for_secs = Some(parse_duration(d).map_err(|e| anyhow::anyhow!("{FORM}: for: {e}"))?);
        } else {
            bail!("{FORM}: unknown word {w:?} (expected from=, for= or comment=)");
        }
    }
    let Some(for_secs) = for_secs else {
        bail!("{FORM}: for= is required (a task-made rule always expires, at most 30d)");
    };
    let rule = TaskRule {
        proto,
        ports,
        from,
        comment,
        for_secs,
    };
    rule.check()
        .with_context(|| format!("--action firewall-allow {arg:?}"))?;
    Ok(rule)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use weft_proto::hostfw::{PortRange, Proto};

    use super::*;

    #[test]
    fn the_short_form_reads_into_a_rule() {
        let r =
            parse("tcp:8443,8080 from=10.0.0.0/8,192.0.2.7 for=2h comment=deploy window").unwrap();
        assert_eq!(r.proto, Proto::Tcp);
        assert_eq!(
            r.ports,
            vec![
                PortRange {
                    start: 8080,
                    end: 8080
                },
                PortRange {
                    start: 8443,
                    end: 8443
                }
            ]
        );
        assert_eq!(r.from.len(), 2);
        assert_eq!(r.from[1].to_string(), "192.0.2.7/32");
        assert_eq!(r.for_secs, 7200);
        assert_eq!(r.comment, "deploy window");
        let r = parse("icmp for=30d").unwrap();
        assert!(r.ports.is_empty() && r.from.is_empty());
    }

    #[test]
    fn mistakes_are_named() {
        for (arg, says) in [
            ("", "empty"),
            ("tcp:8080", "for= is required"),
            ("tcp:8080 for=31d", "30 days"),
            ("tcp:8080 for=0", "1..="),
            ("sctp:80 for=1h", "not a protocol"),
            ("tcp:0 for=1h", "ports"),
            ("icmp:80 for=1h", "ports need proto tcp or udp"),
            ("tcp:80 from=10.0.0.1/8 for=1h", "host bits"),
            ("tcp:80 to=10.0.0.0/8 for=1h", "unknown word"),
            ("tcp:80 for=1h comment=say \"hi\"", "comment"),
        ] {
            let e = format!("{:#}", parse(arg).unwrap_err());
            assert!(e.contains(says), "{arg:?}: {e}");
        }
    }
}
