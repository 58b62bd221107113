//! Output workers: with more than one CPU, large batches' output (UDP sends,
//! TUN writes) goes to one thread per direction, so that the I/O thread's
//! reading and crypto overlap with output on another core. Small batches are
//! done inline while the worker is idle, so order holds and a ping pays no
//! hand-off.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Batches in flight per direction when output is handed to a worker thread.
pub(super) const POOL: usize = 4;
/// Largest datagram batch (bytes) sent inline while the UDP worker is idle: a
/// ping, an ACK, a few interactive packets. Handing it over would cost a thread
/// wake-up on another CPU for nothing to overlap with.
pub(super) const INLINE_BYTES: usize = 4096;
/// Largest batch of decrypted packets written inline while the TUN worker is idle.
pub(super) const INLINE_PACKETS: usize = 4;

/// A thread doing one direction's output for the I/O thread. Filled batches go
/// to it, emptied ones come back; at most [`POOL`] exist, so a slow worker holds
/// the I/O thread back instead of queueing without bound. Order is kept: the
/// I/O thread does a batch itself only while the worker holds none.
pub(super) struct Worker<B> {
    full: SyncSender<B>,
    empty: Receiver<B>,
    made: usize,
    /// Batches handed over and not yet done.
    pending: Arc<AtomicUsize>,
}

impl<B: Send + 'static> Worker<B> {
    /// Starts a worker running `work` on each batch (which leaves it empty). It
    /// ends when this handle is dropped.
    pub(super) fn spawn(
        name: &str,
        mut work: impl FnMut(&mut B) + Send + 'static,
    ) -> io::Result<Self> {
        let (full_tx, full_rx) = sync_channel::<B>(POOL);
        let (empty_tx, empty_rx) = sync_channel::<B>(POOL);
        let pending = Arc::new(AtomicUsize::new(0));
        let done = pending.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(mut b) = full_rx.recv() {
                    work(&mut b);
                    done.fetch_sub(1, Ordering::AcqRel);
                    if empty_tx.send(b).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            full: full_tx,
            empty: empty_rx,
            made: 1,
            pending,
        })
    }

    /// [`Worker::spawn`] when `pipelined`; a worker that cannot start is logged
    /// and its output done inline.
    pub(super) fn start_if(
        pipelined: bool,
        name: &str,
        work: impl FnMut(&mut B) + Send + 'static,
    ) -> Option<Self> {
        if !pipelined {
            return None;
        }
        Self::spawn(name, work)
            .map_err(|e| tracing::warn!(worker = name, error = %e, "cannot start; doing its output inline"))
            .ok()
    }

    /// Whether every batch handed over is done (so output done inline now
    /// cannot overtake one).
    pub(super) fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Hands `filled` over and returns an empty batch to fill next (`None` when
    /// the worker is gone).
    pub(super) fn pass(&mut self, filled: B, make: impl FnOnce() -> B) -> Option<B> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.full.send(filled).ok()?;
        match self.empty.try_recv() {
            Ok(b) => Some(b),
            Err(_) if self.made < POOL => {
                self.made += 1;
                Some(make())
            }
            Err(_) => self.empty.recv().ok(),
        }
    }
}

/// Hands `batch` to the worker in `slot` when it is `large` or the worker still
/// holds earlier batches (so nothing done inline overtakes them), leaving the
/// batch it gives back (or a new one from `make`) in its place. `false`: the caller does it inline. A
/// worker found gone is dropped, and its output is done inline from then on.
pub(super) fn hand_over<B: Send + 'static>(
    slot: &mut Option<Worker<B>>,
    batch: &mut B,
    large: bool,
    placeholder: impl FnOnce() -> B,
    make: impl Fn() -> B,
) -> bool {
    let Some(w) = slot.as_mut() else {
        return false;
    };
    if !large && w.idle() {
        return false;
    }
    let filled = std::mem::replace(batch, placeholder());
    match w.pass(filled, &make) {
        Some(b) => *batch = b,
        None => {
            tracing::warn!("output worker gone; doing its output inline");
            *slot = None;
            *batch = make();
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::clock;

    /// The hand-off keeps order, bounds what is in flight, recycles batches and
    /// reports idle only once everything handed over is done (the condition
    /// for doing a batch inline without overtaking one).
    #[test]
    fn worker_keeps_order_and_reports_idle_only_when_done() {
        let done = Arc::new(Mutex::new(Vec::new()));
        let seen = done.clone();
        let mut w = Worker::spawn("test-worker", move |b: &mut Vec<u32>| {
            std::thread::sleep(Duration::from_millis(1));
            seen.lock().expect("lock").extend(b.drain(..));
        })
        .expect("spawn");
        let mut made = 0;
        let mut batch = Vec::new();
        for i in 0..50u32 {
            batch.push(i);
            if i % 5 == 4 {
                batch = w
                    .pass(std::mem::take(&mut batch), || {
                        made += 1;
                        Vec::new()
                    })
                    .expect("worker alive");
                assert!(batch.is_empty(), "a recycled batch comes back empty");
            }
        }
        assert!(
            made < POOL,
            "at most {POOL} batches exist, made {made} more"
        );
        let deadline = clock::now() + Duration::from_secs(10);
        while !w.idle() {
            assert!(clock::now() < deadline, "worker never became idle");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*done.lock().expect("lock"), (0..50).collect::<Vec<_>>());
    }
}
