//! weft's reconciler for system state: it makes the kernel hold what the agent wants
//! on the `weft*` interfaces (link state, MTU, addresses, routes) and nothing else of
//! weft's, repairing drift and cleaning up after itself.
//!
//! The agent never edits system state ad hoc. From the controller's network map it
//! computes a [`DesiredState`]; this crate observes the kernel ([`ObservedState`]),
//! computes a printable [`Plan`] of [`Action`]s, applies it through an [`Executor`],
//! observes again, and retries with backoff until desired == actual.
//!
//! # Layout
//! - `desired` / `observed`: plain ordered values (`BTreeMap`/`BTreeSet`).
//! - `plan`: the pure planner, [`plan()`]; no I/O, property-tested.
//! - `retry`: [`Backoff`], pure, driven by `now` and a seed.
//! - `exec`: the [`Executor`] trait, [`FakeKernel`] (in-memory twin, drift and fault
//!   injection) and, on Linux, [`NetlinkExecutor`](exec::linux::NetlinkExecutor).
//! - `reconcile`: [`reconcile_once`], [`teardown`] and the [`Reconciler`] scheduler.
//!
//! # Ownership
//! weft owns interfaces named `weft*` (the data plane creates and destroys them),
//! every permanent address on them except IPv6 link-local ones (the kernel's), and
//! every route tagged with
//! [`WEFT_ROUTE_PROTOCOL`] (119). Nothing else is observed, so nothing else is ever
//! changed or deleted.
//!
//! # Drive contract
//! The agent owns one executor and one [`Reconciler`], on a blocking thread or via
//! `spawn_blocking` (executor calls are blocking netlink round trips):
//! 1. on every new network map: `reconciler.set_desired(desired, now)`;
//! 2. sleep until `reconciler.poll_timeout()`, then
//!    `reconciler.handle_timeout(&mut exec, now)`; passes run every 2 s while
//!    converged (drift repaired within 5 s), with backoff after failures;
//! 3. on `weft down`/SIGTERM: `reconciler.shutdown(&mut exec)`; when leaving one
//!    network, drop its link from the desired state (the next pass empties it) or call
//!    [`teardown`] with [`TeardownScope::Links`].

mod desired;
pub mod exec;
pub mod firewall;
pub mod hostfw;
mod observed;
mod plan;
mod reconcile;
mod retry;
pub mod underlay;

pub use desired::{
    DesiredState, IPV6_DEFAULT_METRIC, LinkSpec, RouteSpec, WEFT_LINK_PREFIX, WEFT_ROUTE_PROTOCOL,
    WORKLOAD_BRIDGE, WORKLOAD_VETH_PREFIX, is_managed_address, is_weft_link, is_workload_link,
};
pub use exec::{ExecError, Executor, FakeKernel};
pub use firewall::{FirewallSpec, NftRule, ObservedFirewall};
pub use hostfw::{Chain, HOST_TABLE, HostFirewall, HostFwRule, L4};
pub use observed::{ObservedLink, ObservedState};
pub use plan::{Action, Plan, plan, plan_at};
pub use reconcile::{
    ReconcileReport, Reconciler, ReconcilerConfig, TeardownScope, reconcile_once, teardown,
};
pub use retry::{Backoff, BackoffConfig};
pub use underlay::{Underlay, UnderlayLink};
