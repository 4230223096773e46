//! Counters and latency histograms each tier keeps, and the events it logs.
//!
//! Counters are plain atomics bumped by whoever settles a task (see
//! `slot.rs`: exactly one party does), so at every quiescent point
//! `submitted == completed + failed + panicked + cancelled`.

mod events;
mod export;
mod histogram;

pub use events::{Event, RestartCause, ScaleReason};
pub(crate) use events::{EventBus, DEFAULT_EVENT_CAPACITY};
pub(crate) use histogram::Histogram;
pub use histogram::{BytePercentiles, Percentiles};

use std::time::Duration;

use crate::cancel::CancelReason;
use crate::error::RejectReason;
use crate::pool::PoolShared;
use crate::sync::{Arc, AtomicU64, AtomicUsize, Ordering, Padded, Weak};
use crate::task::TaskStatus;

/// Log calls that panicked in the application's logger (see `tlog!`).
/// (A std atomic: loom's cannot be `static`, and this is no protocol.)
pub(crate) static LOG_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs one log call, isolated from a panicking logger (see `tlog!`).
#[inline]
pub(crate) fn guard_log(f: impl FnOnce()) {
    if std::thread::panicking() {
        return;
    }
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        LOG_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    #[inline]
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// For the counts `queued` is derived from (see there).
    #[inline]
    fn add_release(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }
    fn get_acquire(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct RunLine {
    running: AtomicUsize,
    left_queue: AtomicU64,
}

/// A tier's live counters.
pub(crate) struct TierCounters {
    /// The submitters' line; the outcome counters below are the workers'.
    submitted: Padded<Counter>,
    rejected: [Counter; RejectReason::COUNT],
    completed: Counter,
    failed: Counter,
    panicked: Counter,
    cancelled: [Counter; 6],
    warned: Counter,
    zombies: Counter,
    late_results: Counter,
    worker_restarts: Counter,
    preemptions: Counter,
    restarts: Counter,
    retries: Counter,
    /// Re-entries into the queue (restarts and retries), counted before
    /// the task is marked queued again; a re-entry that does not happen
    /// after all is counted out through `left_queue` (both stay
    /// monotonic: `restarts` and `retries` are exported as counters).
    requeued_in: Counter,
    scale_ups: Counter,
    scale_downs: Counter,
    busy_nanos: Counter,
    bytes_allocated: Counter,
    /// The workers' line: tasks running, and tasks that left the queue
    /// (started or discarded). How many are queued is not a counter of its
    /// own (one written by submitters and workers alike would move between
    /// their cores on every task): it is what entered the queue
    /// (`submitted` + `requeued_in`, the submitters' side) minus
    /// `left_queue` (see `queued`).
    run_line: Padded<RunLine>,
    pub(crate) queue_wait: Histogram,
    pub(crate) run_time: Histogram,
    /// Bytes allocated per run (only with the counting allocator).
    pub(crate) task_bytes: Histogram,
    /// The runtime's event bus (an inert one for counters outside a
    /// runtime).
    pub(crate) events: Arc<EventBus>,
    /// The pool these count for (none outside a pool). Tasks reach their
    /// pool through here: one reference per task (to the counters) instead
    /// of two, so a task's birth and death touch one shared count.
    pub(crate) pool: Weak<PoolShared>,
}

impl TierCounters {
    pub(crate) fn new() -> Self {
        Self::for_pool(Arc::new(EventBus::new(1)), Weak::new())
    }

    pub(crate) fn for_pool(events: Arc<EventBus>, pool: Weak<PoolShared>) -> Self {
        TierCounters {
            events,
            pool,
            submitted: Padded(Counter::default()),
            rejected: Default::default(),
            completed: Counter::default(),
            failed: Counter::default(),
            panicked: Counter::default(),
            cancelled: Default::default(),
            warned: Counter::default(),
            zombies: Counter::default(),
            late_results: Counter::default(),
            worker_restarts: Counter::default(),
            preemptions: Counter::default(),
            restarts: Counter::default(),
            retries: Counter::default(),
            requeued_in: Counter::default(),
            scale_ups: Counter::default(),
            scale_downs: Counter::default(),
            busy_nanos: Counter::default(),
            bytes_allocated: Counter::default(),
            run_line: Padded(RunLine::default()),
            queue_wait: Histogram::new(),
            run_time: Histogram::new(),
            task_bytes: Histogram::new(),
        }
    }

    #[inline]
    pub(crate) fn submitted(&self) {
        // Release (like every count of a task entering the queue): a task
        // is counted in before it can be counted out (see `queued`).
        self.submitted.add_release();
    }

    pub(crate) fn rejected(&self, r: &RejectReason) {
        self.rejected[r.index()].add(1);
    }

    /// A task left the queue without starting (discarded).
    pub(crate) fn dequeued(&self) {
        self.left_queue();
    }

    #[inline]
    fn left_queue(&self) {
        self.run_line.left_queue.fetch_add(1, Ordering::Release);
    }

    #[inline]
    /// `waited`: nanoseconds in the queue (first attempts only).
    pub(crate) fn started(&self, waited: Option<u64>) {
        self.left_queue();
        self.run_line.running.fetch_add(1, Ordering::AcqRel);
        if let Some(w) = waited {
            self.queue_wait.record_value(w);
        }
    }

    /// The worker is back from a run (or the run was declared a zombie).
    #[inline]
    pub(crate) fn stopped_running(&self) {
        self.run_line.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// A task is about to go back into the queue (a restart or a retry):
    /// counted in before it is marked queued again (see `queued`).
    pub(crate) fn requeueing(&self) {
        self.requeued_in.add_release();
    }

    /// The re-entry counted by `requeueing` did not happen after all: it
    /// counts out, like a task leaving the queue.
    pub(crate) fn requeue_abandoned(&self) {
        self.left_queue();
    }

    /// A preempted restartable task went back into the queue.
    pub(crate) fn restarted(&self) {
        self.restarts.add(1);
    }

    /// A failed run will be retried after its backoff; it counts as
    /// queued meanwhile.
    pub(crate) fn retry_scheduled(&self) {
        self.retries.add(1);
    }

    pub(crate) fn scaled_up(&self) {
        self.scale_ups.add(1);
    }

    pub(crate) fn scaled_down(&self) {
        self.scale_downs.add(1);
    }

    #[inline]
    /// A run took `nanos`.
    pub(crate) fn ran(&self, nanos: u64) {
        self.run_time.record_value(nanos);
        self.busy_nanos.add(nanos);
    }

    /// A run allocated `bytes` (see `alloc.rs`).
    #[inline]
    pub(crate) fn allocated(&self, bytes: u64) {
        self.bytes_allocated.add(bytes);
        self.task_bytes.record_value(bytes);
    }

    /// Records a terminal outcome (called only by the slot's winner).
    #[inline]
    pub(crate) fn record(&self, s: TaskStatus) {
        match s {
            TaskStatus::Completed => self.completed.add(1),
            TaskStatus::Failed => self.failed.add(1),
            TaskStatus::Panicked => self.panicked.add(1),
            TaskStatus::Cancelled(r) => self.cancelled[r.index()].add(1),
            TaskStatus::Queued | TaskStatus::Running => {}
        }
    }

    pub(crate) fn warned(&self) {
        self.warned.add(1);
    }
    pub(crate) fn zombie(&self) {
        self.zombies.add(1);
    }
    pub(crate) fn late_result(&self) {
        self.late_results.add(1);
    }
    pub(crate) fn worker_restarted(&self) {
        self.worker_restarts.add(1);
    }
    pub(crate) fn preempted(&self) {
        self.preemptions.add(1);
    }

    /// Tasks in the queue (or waiting out a retry's backoff): in minus
    /// out. Every task is counted in before it can be counted out — a
    /// submit before its push, a restart or a retry before the task is
    /// marked queued again — and `out` is read first, so the release
    /// increments it saw had their count-ins made visible too: the
    /// difference never drops below the truth. It can briefly exceed it
    /// (a task counted in and out between the two reads, a re-queue
    /// counted and then undone); at a quiescent point it is exact.
    pub(crate) fn queued(&self) -> usize {
        let out = self.run_line.left_queue.load(Ordering::Acquire);
        let into = self.submitted.get_acquire() + self.requeued_in.get_acquire();
        usize::try_from(into.saturating_sub(out)).unwrap_or(usize::MAX)
    }
    pub(crate) fn running(&self) -> usize {
        self.run_line.running.load(Ordering::Acquire)
    }

    pub(crate) fn snapshot(&self) -> CounterSnapshot {
        let mut cancelled = [0; 6];
        for r in CancelReason::ALL {
            cancelled[r.index()] = self.cancelled[r.index()].get();
        }
        let mut rejected = [0; RejectReason::COUNT];
        for (i, c) in self.rejected.iter().enumerate() {
            rejected[i] = c.get();
        }
        CounterSnapshot {
            submitted: self.submitted.get(),
            rejected,
            completed: self.completed.get(),
            failed: self.failed.get(),
            panicked: self.panicked.get(),
            cancelled,
            warned: self.warned.get(),
            zombies: self.zombies.get(),
            late_results: self.late_results.get(),
            worker_restarts: self.worker_restarts.get(),
            preemptions: self.preemptions.get(),
            restarts: self.restarts.get(),
            retries: self.retries.get(),
            scale_ups: self.scale_ups.get(),
            scale_downs: self.scale_downs.get(),
            busy: Duration::from_nanos(self.busy_nanos.get()),
            bytes_allocated: self.bytes_allocated.get(),
            task_bytes: self.task_bytes.value_percentiles(),
            queued: self.queued(),
            running: self.running(),
            queue_wait: self.queue_wait.percentiles(),
            run_time: self.run_time.percentiles(),
        }
    }
}

/// Raw counter values, turned into [`TierStats`](crate::TierStats) by the pool.
pub(crate) struct CounterSnapshot {
    pub(crate) submitted: u64,
    pub(crate) rejected: [u64; RejectReason::COUNT],
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) panicked: u64,
    pub(crate) cancelled: [u64; 6],
    pub(crate) warned: u64,
    pub(crate) zombies: u64,
    pub(crate) late_results: u64,
    pub(crate) worker_restarts: u64,
    pub(crate) preemptions: u64,
    pub(crate) restarts: u64,
    pub(crate) retries: u64,
    pub(crate) scale_ups: u64,
    pub(crate) scale_downs: u64,
    pub(crate) busy: Duration,
    pub(crate) bytes_allocated: u64,
    pub(crate) task_bytes: BytePercentiles,
    pub(crate) queued: usize,
    pub(crate) running: usize,
    pub(crate) queue_wait: Percentiles,
    pub(crate) run_time: Percentiles,
}
