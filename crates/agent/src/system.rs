//! The system state the agent changes through weft-netcfg's reconciler
//! (interfaces, addresses, routes, the nftables table `inet weft`), and the
//! rule that such work never blocks the async runtime: netlink and `nft`
//! calls, like the resolver changes of the overlay DNS, run on the blocking
//! pool ([`off_runtime`]), never on a tokio worker.

use std::path::PathBuf;
use std::time::Instant;

use ipnet::IpNet;
use weft_netcfg::exec::linux::NetlinkExecutor;
use weft_netcfg::{
    DesiredState, LinkSpec, ReconcileReport, Reconciler, ReconcilerConfig, RouteSpec,
};

use crate::netmap::Derived;

/// Runs `f` on `state` on the blocking pool and hands the state back with
/// `f`'s result. A panic in `f` is the caller's, as if `f` had run inline.
pub(crate) async fn off_runtime<S, R>(
    mut state: S,
    f: impl FnOnce(&mut S) -> R + Send + 'static,
) -> (S, R)
where
    S: Send + 'static,
    R: Send + 'static,
{
    match tokio::task::spawn_blocking(move || {
        let r = f(&mut state);
        (state, r)
    })
    .await
    {
        Ok(done) => done,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Cancelled: only when the runtime shuts down, with this task.
            Err(e) => std::panic::panic_any(e.to_string()),
        },
    }
}

/// The reconciler and the executor it changes the kernel through.
struct Parts {
    reconciler: Reconciler,
    /// `None`: netlink could not be opened (nothing is configured).
    exec: Option<NetlinkExecutor>,
}

/// The agent's side of the system state: desired state in, passes run off the
/// async runtime.
pub(crate) struct System {
    /// Out only while a pass runs on the blocking pool.
    parts: Option<Box<Parts>>,
}

impl System {
    /// Opens netlink (off the runtime); `Err` says why it could not be opened
    /// (the agent then runs without configuring interfaces).
    pub(crate) async fn open(forward_marker: PathBuf, seed: u64) -> (Self, Option<String>) {
        let (exec, error) = off_runtime((), move |()| match NetlinkExecutor::new() {
            Ok(mut e) => {
                e.remember_forwarding_in(forward_marker);
                (Some(e), None)
            }
            Err(e) => (None, Some(e.to_string())),
        })
        .await
        .1;
        let parts = Parts {
            reconciler: Reconciler::new(ReconcilerConfig::default(), seed),
            exec,
        };
        (
            Self {
                parts: Some(Box::new(parts)),
            },
            error,
        )
    }

    /// When the next reconcile pass is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.parts
            .as_ref()
            .and_then(|p| p.reconciler.poll_timeout())
            .map(|(at, _)| at)
    }

    /// Makes a pass due now (the `reconcile` action).
    pub(crate) fn trigger(&mut self, now: Instant) {
        if let Some(p) = self.parts.as_mut() {
            p.reconciler.trigger(now);
        }
    }

    /// The state wanted from now on (pure; the next pass applies it).
    pub(crate) fn set_desired(&mut self, desired: DesiredState, now: Instant) {
        if let Some(p) = self.parts.as_mut() {
            p.reconciler.set_desired(desired, now);
        }
    }

    /// One pass (observe, plan, apply, re-observe) if due, off the runtime.
    pub(crate) async fn reconcile(&mut self, now: Instant) -> Option<ReconcileReport> {
        self.run(move |p| {
            let exec = p.exec.as_mut()?;
            p.reconciler.handle_timeout(exec, now)
        })
        .await
        .flatten()
    }

    /// Removes everything weft configured (off the runtime).
    pub(crate) async fn shutdown(&mut self) -> Option<ReconcileReport> {
        self.run(|p| {
            let exec = p.exec.as_mut()?;
            Some(p.reconciler.shutdown(exec))
        })
        .await
        .flatten()
    }

    async fn run<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Parts) -> R + Send + 'static,
    ) -> Option<R> {
        let parts = self.parts.take()?;
        let (parts, r) = off_runtime(parts, move |p| f(p)).await;
        self.parts = Some(parts);
        Some(r)
    }
}

/// The system state a derived map wants.
pub(crate) fn desired_state(d: &Derived) -> DesiredState {
    let mut desired = DesiredState::default();
    for i in &d.interfaces {
        let mut spec = LinkSpec::up(i.mtu);
        for (a, p) in &i.addresses {
            if let Ok(net) = IpNet::new(*a, *p) {
                spec = spec.with_addr(net);
            }
        }
        for (a, p) in &i.routes {
            if let Ok(net) = IpNet::new(*a, *p) {
                spec = spec.with_route(RouteSpec::new(net.trunc()));
            }
        }
        desired = desired.with_link(i.ifname.clone(), spec);
        // A gateway forwards from the overlay to its subnets, masqueraded.
        for (a, p) in &i.serves {
            if let Ok(net) = IpNet::new(*a, *p) {
                desired.firewall.masquerade.insert(net.trunc());
            }
        }
        if let Some(&(a, p)) = i.routes.first() {
            // The first route is the network's own IPv4 prefix.
            if let Ok(net) = IpNet::new(a, p) {
                desired.firewall.overlay.insert(net.trunc());
            }
        }
    }
    // In several networks: never forward between them.
    desired.firewall.isolate = d.interfaces.len() > 1;
    desired
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work handed off runs on the blocking pool, not on a runtime worker, and
    /// the state comes back with the result.
    #[tokio::test]
    async fn work_runs_off_the_runtime_and_the_state_comes_back() {
        // A current-thread runtime: its only worker is this thread.
        let runtime_thread = std::thread::current().id();
        let (state, thread) = off_runtime(41, |s| {
            *s += 1;
            std::thread::current().id()
        })
        .await;
        assert_eq!(state, 42);
        assert_ne!(thread, runtime_thread, "ran on a blocking-pool thread");
    }
}
