//! CPU batches on the runtime's dedicated rayon pool.
//!
//! The batch runs inside `rayon::ThreadPool::spawn` (nothing waits inside
//! the pool: the caller waits on the batch's outcome slot outside it). Each
//! item first looks at the batch's cancellation token, so a cancelled or
//! timed-out batch stops early; a panic in an item is caught and fails that
//! item only. Results come back in input order.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use rayon::prelude::*;

use super::stats::KindCounters;
use super::Analysis;
use crate::cancel::{CancelReason, CancelToken};
use crate::clock::Clock;
use crate::error::TaskError;
use crate::slot::{Slot, TaskResult};
use crate::sync::{Arc, AtomicUsize, Ordering};
use crate::task::panic_message;
use crate::telemetry::TierCounters;

type Results<T, E> = Vec<TaskResult<T, E>>;

/// A CPU batch's options; see [`Analysis::batch`].
#[must_use = "a batch does nothing until submitted"]
pub struct CpuBatchBuilder<'a, I, F> {
    analysis: &'a Analysis,
    kind: String,
    items: Vec<I>,
    f: F,
    timeout: Option<Duration>,
}

impl<I, F> CpuBatchBuilder<'_, I, F> {
    /// Cancels the items not yet started once the batch has run this long.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Starts the batch on the CPU pool.
    pub fn submit<T, E>(self) -> CpuBatchHandle<T, E>
    where
        I: Send + 'static,
        F: Fn(I) -> Result<T, E> + Send + Sync + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let a = self.analysis;
        let kind = a.kind(&self.kind);
        kind.batch(self.items.len());
        let token = CancelToken::new();
        let slot: Arc<Slot<Results<T, E>, ()>> = Arc::new(Slot::new());
        let counters = a.batch_counters.clone();
        let skipped = Arc::new(AtomicUsize::new(0));
        let handle = CpuBatchHandle {
            slot: slot.clone(),
            token: token.clone(),
            clock: a.clock.clone(),
            len: self.items.len(),
            skipped: skipped.clone(),
        };
        if let Some(at) = self.timeout.and_then(|t| a.clock.deadline_after(t)) {
            let t = token.clone();
            a.tier.pool.watchdog.call_at(
                at,
                Box::new(move || {
                    t.cancel(CancelReason::Timeout);
                }),
            );
        }
        let run = move || {
            let f = &self.f;
            let out: Results<T, E> = self
                .items
                .into_par_iter()
                .map(|item| run_item(f, item, &token, &skipped))
                .collect();
            finish(&kind, &skipped, out, &slot, &counters);
        };
        match a.cpu_pool() {
            Some(pool) => pool.spawn(run),
            None => {
                // The runtime is shut down: no CPU pool to run on.
                handle.token.cancel(CancelReason::Shutdown);
                run();
            }
        }
        handle
    }
}

fn run_item<I, T, E, F>(
    f: &F,
    item: I,
    token: &CancelToken,
    skipped: &AtomicUsize,
) -> TaskResult<T, E>
where
    F: Fn(I) -> Result<T, E>,
{
    if let Some(r) = token.reason() {
        skipped.fetch_add(1, Ordering::Relaxed);
        return Err(TaskError::Cancelled(r));
    }
    match catch_unwind(AssertUnwindSafe(|| f(item))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(TaskError::Failed(e)),
        Err(p) => Err(TaskError::Panicked(panic_message(&*p))),
    }
}

fn finish<T, E>(
    kind: &KindCounters,
    skipped: &AtomicUsize,
    out: Results<T, E>,
    slot: &Slot<Results<T, E>, ()>,
    counters: &TierCounters,
) {
    kind.batch_skipped(skipped.load(Ordering::Relaxed));
    let _ = slot.settle(Ok(out), counters);
}

impl Analysis {
    /// Runs `f` over `items` on the CPU pool and returns per-item results
    /// in input order.
    ///
    /// ```
    /// use tierpool::Runtime;
    /// let rt = Runtime::builder().build()?;
    /// let squares = rt.analysis().analyze_batch("squares", (1..=4).collect(), |n: u64| {
    ///     Ok::<_, String>(n * n)
    /// });
    /// let out: Vec<u64> = squares.join().into_iter().map(|r| r.unwrap()).collect();
    /// assert_eq!(out, vec![1, 4, 9, 16]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn analyze_batch<I, T, E, F>(&self, kind: &str, items: Vec<I>, f: F) -> CpuBatchHandle<T, E>
    where
        I: Send + 'static,
        F: Fn(I) -> Result<T, E> + Send + Sync + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        self.batch(kind, items, f).submit()
    }

    /// A CPU batch with options (a timeout).
    pub fn batch<I, F>(&self, kind: &str, items: Vec<I>, f: F) -> CpuBatchBuilder<'_, I, F> {
        CpuBatchBuilder {
            analysis: self,
            kind: kind.to_string(),
            items,
            f,
            timeout: None,
        }
    }
}

/// The handle of a CPU batch.
pub struct CpuBatchHandle<T, E> {
    slot: Arc<Slot<Results<T, E>, ()>>,
    token: CancelToken,
    clock: Clock,
    len: usize,
    skipped: Arc<AtomicUsize>,
}

impl<T, E> CpuBatchHandle<T, E> {
    /// Waits for every item (cancellation is checked between items, so an
    /// item already running finishes first) and returns the results in
    /// input order; skipped items are `Cancelled`.
    pub fn join(self) -> Results<T, E> {
        // The batch slot is only ever settled with `Ok`.
        self.slot.take_wait().unwrap_or_default()
    }

    /// Waits up to `d`; hands the handle back if the batch is still running.
    pub fn join_timeout(self, d: Duration) -> Result<Results<T, E>, Self> {
        let deadline = self.clock.deadline_after(d);
        match self.slot.take_until(&self.clock, deadline) {
            Some(Ok(v)) => Ok(v),
            Some(Err(_)) => Ok(Vec::new()),
            None => Err(self),
        }
    }

    /// Stops the batch: items not yet started are skipped. `true` if this
    /// call cancelled it.
    pub fn cancel(&self) -> bool {
        self.token.cancel(CancelReason::Caller)
    }

    /// Items in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch has no items.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items skipped so far because the batch was cancelled.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl<T, E> fmt::Debug for CpuBatchHandle<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuBatchHandle")
            .field("len", &self.len)
            .field("cancelled", &self.token.reason())
            .finish()
    }
}
