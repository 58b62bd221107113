//! `weftd`, the node agent: the I/O shell around weft's sans-IO cores.
//!
//! # Layout
//! - [`run`]: the supervisor. One task owns the agent's state (map, slots,
//!   reconciler, controller link) and serves, in one `select!`, local API calls,
//!   map updates from the controller link, reconcile deadlines and shutdown.
//! - `dataplane`: the `weft-io` thread that owns `weft_tunnel::Node` and moves
//!   packets between the TUN devices, the UDP socket and the relay link.
//! - `ctl`: the controller link (register, map stream with resume and backoff,
//!   endpoint/liveness reports), via `weft-api-client`.
//! - `dns`: the overlay resolver's lifecycle (`weft-dns`): started with the
//!   first map that has a network, a new zone on every map, drift checks on its
//!   own tick, stopped (system configuration restored) on down, exit and when the
//!   last network is left; its failures never stop the data plane.
//! - `system`: the reconciler of interfaces, routes and firewall; netlink, `nft`
//!   and resolver changes run off the async runtime (`system::off_runtime`).
//! - `netmap`: pure map → tunnel config / interface plan translation.
//! - `state`: the state directory (identity, credential, cached map; all 0600).
//! - `api`: the local API on a Unix socket.
//! - `node_api`: the node API for workloads (metadata, data, secrets) on its
//!   own Unix socket, access by peer credentials.
//! - `selfcheck`: `weftd --selfcheck-controlplane` (one `GET /healthz`).
//! - `clock`: the only place that reads clocks.
//! - `actions`: the built-in task actions (ping, netcheck, diagnostics,
//!   reconcile, restart-dataplane, flush-dns, rotate-key, firewall-allow,
//!   firewall-revoke); `logring`: the
//!   recent log lines `diagnostics` sends.
//! - `telemetry`: host facts, Prometheus metrics, forwarding, usage, anomaly
//!   detection (issue 16).
//! - `hooks`: the hooks directory (root-owned, 0700) and the checks a hook
//!   passes before it runs (approved sha256 of the bytes that run);
//!   `integrity`: the report of weftd's and the hooks' hashes to the
//!   controller (at start, every 10 minutes, after a hook refusal).
//! - `workload`: `weft run`'s network namespaces (none, host-loopback,
//!   bridged, custom), owned by weftd, removed when their processes end and
//!   swept after a crash.
//! - `linkmon`: link monitoring: a netlink subscription to link, address and
//!   route changes (no polling); an underlay change re-runs STUN, re-probes
//!   every path, lets peers roam to the new source address and re-reports
//!   endpoints at once; `weft status` shows the underlay.
//! - `consume`: service consumers besides the VIP (`weft service listen`,
//!   `weft service intercept`): TCP listeners and an `IP_TRANSPARENT`
//!   listener with its nft table (`inet weft_tproxy`), each stream carried to a
//!   healthy instance over the overlay; kept in `service-consumers.json`.
//! - `services`: named services this node provides: health checks every
//!   second on its own overlay address, reports to the controller on a flip,
//!   every 30 s and on reconnect; `weft service list|advertise`.
//! - `ssh`: `weftd --ssh`, an SSH server on the overlay addresses for the
//!   nodes the policy's `[[ssh]]` rules let log in (by their overlay source
//!   address), sessions audited on the controller.
//! - `outbox`: the agent's one on-disk queue for what it reports while the
//!   controller is away (metrics samples, anomaly events, task results).
//!
//! Offline operation: the last applied map is cached (checksummed); at start the
//! agent applies it before the controller answers, so peers work while the
//! controller is down. A corrupt cache is discarded (no peers, fail closed).

mod actions;
mod api;
mod caps;
mod clock;
mod consume;
mod ctl;
mod dataplane;
mod dns;
mod dns_blocklist;
pub mod domainset;
mod failures;
#[doc(hidden)]
pub mod fuzzing;
mod hooks;
mod hostfw;
mod http1;
mod integrity;
mod linkmon;
#[doc(hidden)]
pub mod logring;
pub mod netmap;
mod node_api;
mod outbox;
mod resolver;
mod selfcheck;
mod services;
mod ssh;
#[cfg(test)]
mod stand_in;
pub mod state;
mod state_file;
mod supervisor;
mod system;
mod tasks;
mod telemetry;
mod workload;

pub use dataplane::DataplaneConfig;
pub use dns::DnsMode;
pub use hooks::DEFAULT_HOOKS_DIR;
pub use hostfw::DEFAULT_ROLLBACK_SECS;
pub use node_api::{Access as NodeApiAccess, NodeApiConfig, group_by_name, uid_of};
pub use resolver::DnsResolverOptions;
pub use selfcheck::{Selfcheck, selfcheck_controlplane};
pub use supervisor::{AgentConfig, run};
pub use tasks::TaskSettings;
pub use telemetry::http::MetricsListen;
pub use weft_dns::Upstream as DnsUpstream;
pub use workload::{DEFAULT_SUBNET as DEFAULT_WORKLOAD_SUBNET, WorkloadSubnet};
