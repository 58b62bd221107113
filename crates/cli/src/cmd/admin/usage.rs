//! `weft admin usage`: who used what, from the controller's usage rollup.

use clap::{Args, ValueEnum};
use weft_api_client::Client;
use weft_proto::usage::{UsageBy, UsageReport, UsageRow};

use super::super::agent::human_bytes;
use super::print_json;
use crate::cmd::format::{datetime, out, parse_duration, safe, table};

/// How to group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum By {
    /// One row per node: its flow traffic with every peer.
    Node,
    /// One row per node and peer.
    Peer,
    /// One row per protocol and service port, fleet-wide.
    Port,
    /// One row per user id that sidecars wrote to `weftd --usage-file`.
    User,
}

impl From<By> for UsageBy {
    fn from(b: By) -> UsageBy {
        match b {
            By::Node => UsageBy::Node,
            By::Peer => UsageBy::Peer,
            By::Port => UsageBy::Port,
            By::User => UsageBy::User,
        }
    }
}

/// `weft admin usage [--by node|peer|port|user] [--since 24h]`.
#[derive(Debug, Args)]
pub(super) struct UsageArgs {
    /// Group the rows by node, peer (per node), port (protocol and service
    /// port) or user (sidecar usage files).
    #[arg(long, value_enum, default_value = "node")]
    by: By,
    /// How far back: `30m`, `24h`, `7d`, `2w`. Counted in whole hours (the
    /// controller's buckets): `--since 1h` starts at the top of the last hour.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    since: u64,
}

/// Runs `weft admin usage`.
pub(super) async fn usage(c: &Client, a: UsageArgs, json: bool) -> anyhow::Result<()> {
    let since_ms = crate::clock::unix_ms().saturating_sub(a.since.saturating_mul(1000));
    let report = c.usage(a.by.into(), Some(since_ms)).await?;
    if json {
        print_json(&report)?;
    } else {
        out(&render(&report));
    }
    Ok(())
}

/// The human table: bytes in decimal units, largest first.
fn render(r: &UsageReport) -> String {
    let mut o = format!(
        "usage since {} (hourly buckets), by {}\n",
        datetime(r.since_ms),
        r.by.as_str()
    );
    if r.rows.is_empty() {
        o.push_str("no usage recorded in this window\n");
        return o;
    }
    let name = |v: &Option<String>| safe(v.as_deref().unwrap_or("-")).into_owned();
    let traffic = |row: &UsageRow| {
        let c = &row.counters;
        vec![
            human_bytes(c.tx_bytes),
            human_bytes(c.rx_bytes),
            human_bytes(c.tx_bytes.saturating_add(c.rx_bytes)),
            c.flows.to_string(),
        ]
    };
    let (headers, rows): (&[&str], Vec<Vec<String>>) = match r.by {
        UsageBy::Node => (
            &["NODE", "SENT", "RECEIVED", "TOTAL", "FLOWS"],
            r.rows
                .iter()
                .map(|row| [vec![name(&row.node)], traffic(row)].concat())
                .collect(),
        ),
        UsageBy::Peer => (
            &["NODE", "PEER", "SENT", "RECEIVED", "TOTAL", "FLOWS"],
            r.rows
                .iter()
                .map(|row| [vec![name(&row.node), name(&row.peer)], traffic(row)].concat())
                .collect(),
        ),
        UsageBy::Port => (
            &["PROTO", "PORT", "SENT", "RECEIVED", "TOTAL", "FLOWS"],
            r.rows
                .iter()
                .map(|row| {
                    let port = row.port.map_or("-".into(), |p| p.to_string());
                    [vec![name(&row.proto), port], traffic(row)].concat()
                })
                .collect(),
        ),
        UsageBy::User => (
            &["USER", "BYTES"],
            r.rows
                .iter()
                .map(|row| vec![name(&row.user), human_bytes(row.bytes.unwrap_or(0))])
                .collect(),
        ),
    };
    o.push_str(&table(headers, &rows));
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::usage::UsageCounters;

    #[test]
    fn tables_show_human_units_per_grouping() {
        let row = UsageRow {
            node: Some("web".into()),
            peer: Some("db".into()),
            counters: UsageCounters {
                tx_bytes: 1_500_000_000,
                rx_bytes: 2_000,
                flows: 3,
                ..UsageCounters::default()
            },
            ..UsageRow::default()
        };
        let mut r = UsageReport {
            by: UsageBy::Peer,
            since_ms: 0,
            bucket_ms: 3_600_000,
            rows: vec![row],
        };
        let t = render(&r);
        assert!(t.starts_with("usage since 1970-01-01T00:00:00Z"), "{t}");
        assert!(t.contains("PEER"), "{t}");
        assert!(t.contains("1.5 GB") && t.contains("2.0 kB"), "{t}");
        r.by = UsageBy::User;
        r.rows = vec![UsageRow {
            user: Some("alice".into()),
            bytes: Some(512),
            ..UsageRow::default()
        }];
        let t = render(&r);
        assert!(t.contains("alice") && t.contains("512 B"), "{t}");
        r.rows.clear();
        assert!(render(&r).contains("no usage recorded"));
    }

    #[test]
    fn since_takes_durations() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: UsageArgs,
        }
        let t = T::try_parse_from(["t", "--by", "port", "--since", "1h"]).unwrap();
        assert_eq!((t.a.by, t.a.since), (By::Port, 3600));
        assert!(T::try_parse_from(["t", "--since", "3y"]).is_err());
        assert!(T::try_parse_from(["t", "--by", "planet"]).is_err());
    }
}
