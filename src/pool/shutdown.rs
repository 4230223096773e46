//! Shutdown of one pool, in the steps the runtime drives for every tier
//! together: drain, stop, cancel what still runs, and account for threads.
//!
//! # Invariants
//!
//! 1. After `stop`, nothing new enters the queue: the gate is closed
//!    first (the lifecycle flag set, then the submitters already past their
//!    check waited out, see `gate.rs`) before it empties the queue. So every
//!    task is either rejected with `ShuttingDown` or reaches an outcome;
//!    none is stranded (loom model in `gate.rs`).
//! 2. Every task drained from the queue is settled as cancelled (shutdown)
//!    and listed as never started.
//! 3. No thread is waited on forever: threads still inside a task after
//!    the cancel grace are declared zombies, reported, and detached.

use super::PoolShared;
use crate::cancel::CancelReason;
use crate::runtime::PhaseDeadline;
use crate::sync::Ordering;
use crate::task::{Job, TaskId, Work, ZOMBIE};

/// What stopping one pool found.
#[derive(Default)]
pub(crate) struct StopOutcome {
    pub(crate) never_started: Vec<TaskId>,
    pub(crate) cancelled_running: Vec<TaskId>,
    pub(crate) zombies: Vec<TaskId>,
    pub(crate) threads_joined: usize,
    pub(crate) threads_detached: usize,
    /// The jobs taken off the queue, settled as never started: dropped by
    /// the runtime once its shutdown lock is released, since dropping one
    /// drops the task's closure, and a captured value's `Drop` may call
    /// back into the runtime.
    pub(crate) leftovers: Vec<Job>,
}

impl PoolShared {
    /// Stop admitting; keep running what is queued. `false` if this pool
    /// was already shutting down.
    pub(crate) fn begin_drain(&self, grace: std::time::Duration) -> bool {
        let first = self.gate.begin_drain();
        // A paused tier would never drain: shutdown overrides pause, unless
        // there is no grace at all (then nothing new starts, like Java's
        // `shutdownNow`).
        if !grace.is_zero() {
            self.paused.store(false, Ordering::SeqCst);
        }
        self.admission.notify_room();
        self.ring(self.live.load(Ordering::Acquire));
        first
    }

    fn is_drained(&self) -> bool {
        self.counters.queued() == 0 && self.counters.running() == 0
    }

    /// Waits until nothing is queued or running, or `deadline`.
    pub(crate) fn wait_drained(&self, deadline: PhaseDeadline) -> bool {
        let mut g = self.drain_lock.lock();
        loop {
            if self.is_drained() {
                return true;
            }
            if deadline.passed(&self.clock) {
                return false;
            }
            g = self.drain_cv.wait_budget(g, deadline.budget(&self.clock));
        }
    }

    /// Stop taking work; empty the queue (invariants 1 and 2); cancel what
    /// runs.
    pub(crate) fn stop(&self, out: &mut StopOutcome) {
        self.gate.close();
        for work in self.queue.drain() {
            if let Work::Task(job) = work {
                if job.core.discard(CancelReason::Shutdown) {
                    out.never_started.push(job.core.id);
                }
                out.leftovers.push(job);
            }
        }
        for r in self.reserved.iter() {
            r.store(0, Ordering::Release);
        }
        self.reserved_total.store(0, Ordering::Release);
        let running: Vec<_> = {
            let t = self.threads.lock();
            t.slots
                .iter()
                .filter_map(|s| s.current.lock().clone())
                .collect()
        };
        for core in running {
            if core.cancel(CancelReason::Shutdown) {
                out.cancelled_running.push(core.id);
            }
        }
        let (live, zombies) = self.thread_counts();
        self.ring(live + zombies + 1);
        self.admission.notify_room();
    }

    /// How many tasks a worker took just as shutdown began (cancelled
    /// before they ran).
    pub(crate) fn cancelled_at_stop(&self) -> usize {
        self.cancelled_at_stop.load(Ordering::Acquire)
    }

    /// Waits (up to `deadline`) for every non-zombie worker to exit, then
    /// joins the exited threads and detaches the rest (invariant 3).
    pub(crate) fn finish_threads(&self, deadline: PhaseDeadline, out: &mut StopOutcome) {
        let mut t = self.threads.lock();
        loop {
            if t.live == 0 || deadline.passed(&self.clock) {
                break;
            }
            t = self.threads_cv.wait_budget(t, deadline.budget(&self.clock));
        }
        // Whoever is still inside a task now ignored the shutdown cancel.
        let mut newly = 0;
        for s in &t.slots {
            if let Some(core) = s.current.lock().as_ref() {
                if core.mark_zombie(core.attempt()) {
                    self.counters.zombie();
                    self.counters.stopped_running();
                    newly += 1;
                    out.zombies.push(core.id);
                } else if core.state() == ZOMBIE {
                    // Declared by the watchdog already (during the grace
                    // or earlier): still stuck, so still reported.
                    out.zombies.push(core.id);
                }
            }
        }
        // The same bookkeeping as `declare_zombie`: the thread stops
        // counting as live, so when its task returns its `zombies -= 1`
        // has something to subtract (it used to underflow and panic).
        t.live -= newly;
        t.zombies += newly;
        self.live.store(t.live, Ordering::Release);
        let exited: Vec<_> = t.exited.drain(..).collect();
        let stuck = t.handles.len();
        drop(t);
        for h in exited {
            // A thread that died by panic was restarted and accounted
            // already; joining it only reaps it.
            let _ = h.join();
            out.threads_joined += 1;
        }
        out.threads_detached += stuck;
        if stuck > 0 {
            tlog!(error, target: "tierpool::supervisor",
                "{}: {stuck} thread(s) still inside tasks that ignored cancellation; detached", self.name());
        }
    }
}
