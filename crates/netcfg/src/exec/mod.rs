//! Executors: the only code that reads or changes system state.
//!
//! [`Executor`] is the narrow surface the reconciler needs; [`FakeKernel`] is its
//! in-memory twin (tests, `weft status --plan` dry runs) and
//! [`NetlinkExecutor`](linux::NetlinkExecutor) the real one.

use std::io;

use crate::observed::ObservedState;
use crate::plan::Action;

pub mod fake;
#[cfg(target_os = "linux")]
pub mod linux;

pub use fake::FakeKernel;

/// Reads and changes the kernel's state for the reconciler.
///
/// Synchronous on purpose: each call is one or a few netlink round trips of
/// microseconds, there is no background task to supervise, and a socket's network
/// namespace is fixed when it is opened. An async caller runs it on a blocking thread
/// (`tokio::task::spawn_blocking`, or a dedicated thread owning the executor).
///
/// Contract for implementations:
/// - `observe` reports exactly the objects described on [`ObservedState`].
/// - `apply` of a delete whose object is already gone (including because its
///   interface vanished) returns `Ok`: the goal, absence, holds.
/// - `apply` adds routes tagged with [`WEFT_ROUTE_PROTOCOL`](crate::WEFT_ROUTE_PROTOCOL),
///   and addresses as described on [`LinkSpec::addrs`](crate::LinkSpec::addrs).
pub trait Executor {
    /// Reads the weft-owned part of the kernel's state.
    fn observe(&mut self) -> Result<ObservedState, ExecError>;

    /// Applies one action.
    fn apply(&mut self, action: &Action) -> Result<(), ExecError>;

    /// The wall clock, Unix milliseconds: host firewall rules expire at a
    /// wall-clock time. The system clock unless an executor says otherwise
    /// ([`FakeKernel::set_wall_ms`]).
    fn wall_ms(&self) -> u64 {
        system_wall_ms()
    }
}

/// The system clock in Unix milliseconds.
#[expect(
    clippy::disallowed_methods,
    reason = "executors are the I/O shell: the wall clock is read here and handed to the planner"
)]
pub(crate) fn system_wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl<E: Executor + ?Sized> Executor for &mut E {
    fn observe(&mut self) -> Result<ObservedState, ExecError> {
        (**self).observe()
    }

    fn apply(&mut self, action: &Action) -> Result<(), ExecError> {
        (**self).apply(action)
    }

    fn wall_ms(&self) -> u64 {
        (**self).wall_ms()
    }
}

impl<E: Executor + ?Sized> Executor for Box<E> {
    fn observe(&mut self) -> Result<ObservedState, ExecError> {
        (**self).observe()
    }

    fn apply(&mut self, action: &Action) -> Result<(), ExecError> {
        (**self).apply(action)
    }

    fn wall_ms(&self) -> u64 {
        (**self).wall_ms()
    }
}

/// Why an executor call failed. `op` is what was attempted: the action's
/// [`Display`](std::fmt::Display) text, or the observation step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The kernel refused the request. Typical errnos: `EEXIST` (an equal route owned
    /// by someone else is in the way), `ENETDOWN` (route via a down interface),
    /// `EPERM` (missing `CAP_NET_ADMIN`), `EINVAL` (an MTU the device refuses).
    #[error("{op}: {message}")]
    Kernel {
        /// What was attempted.
        op: String,
        /// The positive errno value.
        errno: i32,
        /// The errno text, plus the kernel's extended-ack message when it sent one.
        message: String,
    },
    /// The interface the action names does not exist: the data plane has not created
    /// it yet, or removed it meanwhile.
    #[error("{op}: no interface named {link}")]
    NoSuchLink {
        /// What was attempted.
        op: String,
        /// The missing interface.
        link: String,
    },
    /// The netlink socket itself failed (not a refusal of the request): a closed
    /// socket, a signal, or an out-of-memory condition in the kernel.
    #[error("{op}: netlink socket: {source}")]
    Socket {
        /// What was attempted.
        op: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A kernel reply could not be decoded: a kernel newer than the
    /// `netlink-packet-route` crate, or a bug there. Also an observation whose dump
    /// kept being interrupted by concurrent changes.
    #[error("{op}: unusable netlink reply: {detail}")]
    Decode {
        /// What was attempted.
        op: String,
        /// What was wrong.
        detail: String,
    },
}

impl ExecError {
    /// A kernel refusal with errno `errno` (positive), its text from the OS.
    pub fn kernel(op: impl Into<String>, errno: i32) -> Self {
        Self::Kernel {
            op: op.into(),
            errno,
            message: io::Error::from_raw_os_error(errno).to_string(),
        }
    }

    /// The errno when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            Self::NoSuchLink { .. } => Some(libc::ENODEV),
            Self::Socket { source, .. } => source.raw_os_error(),
            Self::Decode { .. } => None,
        }
    }
}
