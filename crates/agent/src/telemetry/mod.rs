//! Fleet telemetry (issue 16): what the agent knows about its host and its
//! own health, and where that goes.
//!
//! - `facts`: best-effort host inventory (OS, kernel, CPU, memory, weftd's
//!   version and binary hash) read from `/proc`, `/sys` and `/etc/os-release`,
//!   reported at join and when it changes.
//! - `metrics`: the agent's Prometheus registry (`AgentMetrics`, families named
//!   `weft_agent_…`), filled at scrape time from the data plane's status, the
//!   resolver's counters and `/proc/self`; served by `weftd --metrics-listen`
//!   and through the local API (`weft metrics`).
//! - `forward`: a compact sample sent to the controller every 30 s, with a
//!   bounded on-disk outbox while the controller is away.
//! - `usage`: per-peer and per-port bytes and flows from the data plane's own
//!   conntrack, plus the `--usage-file` sidecar bridge.
//! - `anomaly`: a small explainable detector over the agent's own counters;
//!   its events go to the controller, to `weft events` and to metrics.

pub(crate) mod anomaly;
pub(crate) mod facts;
pub(crate) mod forward;
pub(crate) mod http;
pub(crate) mod metrics;
mod outbox;
mod process;
pub(crate) mod usage;
mod usage_file;
