//! `admin events`: the controller's anomaly event log; `admin network
//! anomaly NET`: a network's anomaly thresholds.

use clap::Args;
use weft_api_client::Client;
use weft_proto::events::{AnomalyThresholds, SetAnomalyRequest};

use super::print_json;
use crate::clock::unix_ms;
use crate::cmd::agent::render_event;
use crate::cmd::format::{out, parse_duration};

/// `weft admin events` options.
#[derive(Debug, Args)]
pub(super) struct EventsArgs {
    /// Only this node's events (key or name).
    #[arg(allow_hyphen_values = true, long)]
    node: Option<String>,
    /// Only events received in this last stretch of time (30m, 24h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// At most this many (the newest), 1 to 1000.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

pub(super) async fn events(c: &Client, a: EventsArgs, json: bool) -> anyhow::Result<()> {
    let since = match &a.since {
        None => None,
        Some(s) => {
            let secs = parse_duration(s).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
            Some(unix_ms().saturating_sub(secs.saturating_mul(1000)))
        }
    };
    let list = c.events(a.node.as_deref(), since, Some(a.limit)).await?;
    if json {
        return print_json(&list);
    }
    if list.events.is_empty() {
        out("no anomaly events\n");
    }
    for e in &list.events {
        out(&render_event(Some(&e.node), &e.event));
    }
    Ok(())
}

/// `weft admin network anomaly NET [--scan-ports N] …`: changes the given
/// thresholds and keeps the others (`--reset`: back to every default first).
/// The members receive them in their maps.
#[derive(Debug, Args)]
pub(super) struct AnomalyArgs {
    /// The network.
    name: String,
    /// Forget every threshold set before (the agents' defaults), then apply
    /// the options given.
    #[arg(long)]
    reset: bool,
    /// A scan: distinct refused destination ports to or from one peer in a
    /// window (default 20).
    #[arg(long)]
    scan_ports: Option<u32>,
    /// A scan: distinct refused destination addresses in a window (default 20).
    #[arg(long)]
    scan_addrs: Option<u32>,
    /// The detection window in seconds (default 10).
    #[arg(long)]
    window_secs: Option<u32>,
    /// Standard deviations above the baseline that make an outbound volume,
    /// drop, blocked DNS lookup or controller latency anomaly (default 6).
    #[arg(long)]
    zscore: Option<u32>,
    /// Outbound volume to one peer per window below this (MiB) never alarms
    /// (default 64).
    #[arg(long)]
    volume_min_mib: Option<u32>,
    /// Drops of one reason, or lookups answered from the DNS blocklist, per
    /// window below this never alarm (default 100).
    #[arg(long)]
    drops_min: Option<u32>,
    /// A controller round trip below this (ms) never alarms (default 500).
    #[arg(long)]
    latency_min_ms: Option<u32>,
    /// Seconds a baseline learns before it may alarm (default 300).
    #[arg(long)]
    warmup_secs: Option<u32>,
    /// Seconds the same signal stays quiet after an event (default 300).
    #[arg(long)]
    cooldown_secs: Option<u32>,
}

pub(super) async fn set_anomaly(c: &Client, a: AnomalyArgs, json: bool) -> anyhow::Result<()> {
    let mut t = if a.reset {
        AnomalyThresholds::default()
    } else {
        c.show_network(&a.name).await?.anomaly.unwrap_or_default()
    };
    let set = |field: &mut Option<u32>, v: Option<u32>| {
        if v.is_some() {
            *field = v;
        }
    };
    set(&mut t.scan_ports, a.scan_ports);
    set(&mut t.scan_addrs, a.scan_addrs);
    set(&mut t.window_secs, a.window_secs);
    set(&mut t.zscore, a.zscore);
    set(&mut t.volume_min_mib, a.volume_min_mib);
    set(&mut t.drops_min, a.drops_min);
    set(&mut t.latency_min_ms, a.latency_min_ms);
    set(&mut t.warmup_secs, a.warmup_secs);
    set(&mut t.cooldown_secs, a.cooldown_secs);
    let net = c
        .set_network_anomaly(
            &a.name,
            &SetAnomalyRequest {
                api_version: None,
                thresholds: t,
            },
        )
        .await?;
    if json {
        return print_json(&net);
    }
    out(&format!(
        "network {}: anomaly thresholds {}\n",
        net.name,
        describe(&net.anomaly.unwrap_or_default())
    ));
    Ok(())
}

/// `scan_ports=5 zscore=4`, or `defaults`.
pub(super) fn describe(t: &AnomalyThresholds) -> String {
    let v = serde_json::to_value(t).unwrap_or_default();
    let parts: Vec<String> = v
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        "defaults".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_described_by_what_is_set() {
        assert_eq!(describe(&AnomalyThresholds::default()), "defaults");
        let t = AnomalyThresholds {
            scan_ports: Some(5),
            cooldown_secs: Some(60),
            ..AnomalyThresholds::default()
        };
        assert_eq!(describe(&t), "cooldown_secs=60 scan_ports=5");
    }
}
