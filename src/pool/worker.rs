//! A worker thread's loop: take work by priority, run it, account for it;
//! when there is none, announce itself idle and block on the bell.
//!
//! See `README.md` beside this file for the wake-up protocol.

use std::time::Instant;

use crossbeam_channel::RecvTimeoutError;

use super::{PoolShared, WorkerSlot, STOPPING};
use crate::cancel::CancelReason;
use crate::priority::Priority;
use crate::sync::{Arc, Ordering};
use crate::task::{Job, RunEnd, TaskContext, Work, RUNNING, ZOMBIE};

/// What the loop does after a run.
#[derive(PartialEq, Eq)]
enum After {
    Continue,
    /// The run was declared a zombie meanwhile; a replacement already
    /// took this thread's place, so it leaves.
    Retire,
}

pub(super) fn run(pool: Arc<PoolShared>, slot: Arc<WorkerSlot>) {
    let guard = DeathGuard {
        pool: &pool,
        slot: &slot,
    };
    // Born idle: the spawner counted this thread in `idle`.
    let mut idle_since = pool.clock.now();
    loop {
        // BUSY: take work while there is any.
        if let Some((level, work)) = pool.next_work() {
            slot.set_busy(&pool);
            match work {
                Work::Poison => panic!("tierpool: injected worker fault (test hook)"),
                Work::Task(job) => {
                    if pool.run_job(job, &slot, level) == After::Retire {
                        guard.disarm();
                        return;
                    }
                }
            }
            continue;
        }
        // IDLE: announce, look once more (the submitter may have missed
        // us), then block.
        if !slot.idle.load(Ordering::Relaxed) {
            slot.idle.store(true, Ordering::Relaxed);
            pool.idle.fetch_add(1, Ordering::SeqCst);
            idle_since = pool.clock.now();
            continue;
        }
        if pool.gate.state() == STOPPING {
            break;
        }
        if pool.wait_for_work(idle_since) && pool.try_retire(&slot) {
            guard.disarm();
            return;
        }
    }
    pool.exit_worker(&slot);
    guard.disarm();
}

impl WorkerSlot {
    fn set_busy(&self, pool: &PoolShared) {
        if self.idle.swap(false, Ordering::Relaxed) {
            pool.idle.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl PoolShared {
    /// Which levels a worker may take from now.
    fn allowed_levels(&self) -> [bool; 4] {
        let open = self.gate.state() != STOPPING
            && !self.is_paused()
            && self.memory.allows_work(&self.clock);
        if !open {
            return [false; 4];
        }
        let unreserved = self.config.reserved_slots == 0
            || self.running_unreserved.load(Ordering::Acquire)
                < self.config.max_workers - self.config.reserved_slots;
        [true, true, unreserved, unreserved]
    }

    fn next_work(&self) -> Option<(usize, Work)> {
        let picked = self.queue.pick(
            || self.allowed_levels(),
            |level| {
                if self.config.reserved_slots > 0 && level >= Priority::Normal.index() {
                    self.running_unreserved.fetch_add(1, Ordering::AcqRel);
                }
            },
        )?;
        self.unreserve(picked.0);
        self.admission.notify_room();
        Some(picked)
    }

    /// Blocks until rung, or until something the worker must look at
    /// again. Returns `true` when the keep-alive ran out.
    fn wait_for_work(&self, idle_since: Instant) -> bool {
        let may_retire = self.live.load(Ordering::Acquire) > self.config.min_workers;
        let keep_alive_end = if may_retire {
            idle_since.checked_add(self.config.keep_alive)
        } else {
            None
        };
        let mut deadline = keep_alive_end;
        if self.memory.enabled() && self.memory.is_paused() && !self.queue.is_empty() {
            // Paused with work waiting: look at memory again later.
            let resample = self.clock.now().checked_add(self.memory.interval());
            deadline = match (deadline, resample) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let got = match self.clock.wait_budget(deadline) {
            None => self
                .bell_rx
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
            Some(budget) => self.bell_rx.recv_timeout(budget),
        };
        match got {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => false,
            Err(RecvTimeoutError::Timeout) => {
                keep_alive_end.is_some_and(|end| self.clock.now() >= end)
            }
        }
    }

    /// Leaves if the tier is above its minimum (scale-down).
    fn try_retire(&self, slot: &WorkerSlot) -> bool {
        let mut t = self.threads.lock();
        if t.live <= self.config.min_workers || self.gate.state() == STOPPING {
            return false;
        }
        t.live -= 1;
        self.live.store(t.live, Ordering::Release);
        self.idle.fetch_sub(1, Ordering::SeqCst);
        self.forget_thread(&mut t, slot.index);
        self.counters.scaled_down();
        log::debug!(target: "tierpool::pool", "{}: scaled down to {} workers (worker {} idle for {:?})",
            self.name(), t.live, slot.index, self.config.keep_alive);
        true
    }

    /// Normal exit at shutdown.
    fn exit_worker(&self, slot: &WorkerSlot) {
        let mut t = self.threads.lock();
        if slot.idle.swap(false, Ordering::Relaxed) {
            self.idle.fetch_sub(1, Ordering::SeqCst);
        }
        t.live -= 1;
        self.live.store(t.live, Ordering::Release);
        self.forget_thread(&mut t, slot.index);
    }

    fn run_job(&self, job: Job, slot: &WorkerSlot, level: usize) -> After {
        let unreserved = self.config.reserved_slots > 0 && level >= Priority::Normal.index();
        let after = self.run_started(job, slot);
        if unreserved {
            self.running_unreserved.fetch_sub(1, Ordering::AcqRel);
            if self.queue.has_waiting([false, false, true, true]) {
                self.ring(1);
            }
        }
        after
    }

    fn run_started(&self, mut job: Job, slot: &WorkerSlot) -> After {
        let core = job.core.clone();
        let Some((attempt, token)) = core.start() else {
            return After::Continue; // discarded while queued
        };
        let start = self.clock.now();
        // Queue wait is submit → first start; a restart or retry waited
        // for other reasons (preemption, backoff).
        let waited = (attempt == 1).then(|| start.saturating_duration_since(core.submitted_at));
        self.counters.started(waited);
        *slot.current.lock() = Some(core.clone());
        if self.gate.state() == STOPPING {
            // Taken just as shutdown began: it never really starts.
            token.cancel(CancelReason::Shutdown);
            if core.settle_cancelled(CancelReason::Shutdown) {
                self.cancelled_at_stop.fetch_add(1, Ordering::AcqRel);
            }
        } else {
            self.watchdog.watch_run(&core, attempt, start);
        }
        let deadline = core.opts.timeout.and_then(|t| start.checked_add(t));
        let ctx = TaskContext::new(core.clone(), token, deadline, self.clock.clone(), attempt);
        let end = if ctx.is_cancelled() && core.slot.outcome().is_some() {
            RunEnd::Late
        } else {
            (job.body)(&ctx)
        };
        drop(ctx);
        self.counters
            .ran(self.clock.now().saturating_duration_since(start));
        *slot.current.lock() = None;
        let left = core.finish();
        if left == RUNNING {
            self.counters.stopped_running();
        }
        match end {
            RunEnd::Settled => core.release_permit(), // outcome recorded by the slot
            RunEnd::Late => {
                self.counters.late_result();
                core.release_permit();
            }
            // The job moves on whole: dropping it here would settle it
            // (see `Job`'s drop), as it is queued again.
            RunEnd::Restart => self.restart(job),
            RunEnd::RetryAfter(d) => self.retry_later(job, d),
        }
        self.notify_drain();
        if left == ZOMBIE {
            let mut t = self.threads.lock();
            t.zombies -= 1;
            self.forget_thread(&mut t, slot.index);
            log::warn!(target: "tierpool::watchdog", "{}: zombie task {} finally returned; its thread retires",
                self.name(), core.id);
            return After::Retire;
        }
        After::Continue
    }

    /// Puts a preempted restartable task back in its queue.
    fn restart(&self, job: Job) {
        let core = job.core.clone();
        if self.gate.state() != super::OPEN || !core.requeue() {
            // Still DONE, so dropping the job does nothing more.
            core.settle_cancelled(CancelReason::Preempted);
            core.release_permit();
            return;
        }
        self.counters.requeued();
        let p = core.opts.priority;
        if !self.reserve(p.index()) {
            log::info!(target: "tierpool::pool", "{}: preempted task {} could not be re-queued (queue full)", self.name(), core.id);
            core.discard(CancelReason::Preempted);
            return;
        }
        self.push_reserved(p, Work::Task(job));
        self.ring(1);
    }

    /// Hands a failed job to the watchdog's timer, to be queued again
    /// after `backoff`. It keeps its admission permit (it is still in
    /// flight) and counts as queued meanwhile.
    fn retry_later(&self, job: Job, backoff: std::time::Duration) {
        let core = job.core.clone();
        if !(self.accepts_retries() && core.requeue()) {
            // The body checked `can_retry` just before; only a shutdown
            // racing it lands here.
            core.settle_cancelled(CancelReason::Shutdown);
            core.release_permit();
            return;
        }
        self.counters.retry_scheduled();
        self.schedule_retry(job, backoff);
    }

    fn schedule_retry(&self, job: Job, backoff: std::time::Duration) {
        let pool = self.self_weak.clone();
        let at = self
            .clock
            .now()
            .checked_add(backoff)
            .unwrap_or_else(|| self.clock.now());
        // If the runtime stops first, the timer drops the job and its
        // `Drop` settles it as cancelled (shutdown).
        self.watchdog.call_at(
            at,
            Box::new(move || {
                if let Some(pool) = pool.upgrade() {
                    pool.push_retry(job, backoff);
                }
            }),
        );
    }

    fn push_retry(self: Arc<Self>, job: Job, backoff: std::time::Duration) {
        if !self.accepts_retries() {
            return; // dropping `job` settles it
        }
        let p = job.core.opts.priority;
        if !self.reserve(p.index()) {
            // Queue full: wait another backoff rather than drop the work.
            self.schedule_retry(job, backoff);
            return;
        }
        self.push_reserved(p, Work::Task(job));
        self.wake_for_new_work();
    }

    pub(crate) fn accepts_retries(&self) -> bool {
        self.gate.state() != STOPPING
    }

    pub(super) fn notify_drain(&self) {
        if self.gate.state() != super::OPEN {
            let _g = self.drain_lock.lock();
            self.drain_cv.notify_all();
        }
    }

    /// A worker thread is unwinding outside any task (a bug, or the test
    /// hook): settle what it was running, then restart it within the
    /// restart intensity.
    fn worker_died(self: &Arc<Self>, slot: &WorkerSlot) {
        let current = slot.current.lock().take();
        let mut was_zombie = false;
        if let Some(core) = current {
            core.slot
                .settle_panicked("the worker thread running it died", &self.counters);
            let left = core.finish();
            was_zombie = left == ZOMBIE;
            if left == RUNNING {
                self.counters.stopped_running();
            }
            core.release_permit();
        }
        let mut t = self.threads.lock();
        if slot.idle.swap(false, Ordering::Relaxed) {
            self.idle.fetch_sub(1, Ordering::SeqCst);
        }
        if was_zombie {
            t.zombies -= 1;
        } else {
            t.live -= 1;
            self.live.store(t.live, Ordering::Release);
        }
        self.forget_thread(&mut t, slot.index);
        if self.gate.state() == STOPPING {
            return;
        }
        let now = self.clock.now();
        let window = self.config.restart_window;
        while t
            .restarts
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= window)
        {
            t.restarts.pop_front();
        }
        if t.restarts.len() >= self.config.max_restarts as usize {
            if !t.gave_up_restarting {
                log::error!(target: "tierpool::supervisor",
                    "{}: worker {} died; {} restarts within {:?}: restart intensity exceeded, not restarting",
                    self.name(), slot.index, t.restarts.len(), window);
            }
            t.gave_up_restarting = true;
            return;
        }
        t.restarts.push_back(now);
        self.counters.worker_restarted();
        log::error!(target: "tierpool::supervisor", "{}: worker {} died outside a task; restarting it",
            self.name(), slot.index);
        if let Err(e) = self.spawn_worker(&mut t) {
            log::error!(target: "tierpool::supervisor", "{}: could not restart a worker: {e}", self.name());
        }
    }
}

/// Restarts the worker if its thread unwinds (a panic outside any task).
struct DeathGuard<'a> {
    pool: &'a Arc<PoolShared>,
    slot: &'a Arc<WorkerSlot>,
}

impl DeathGuard<'_> {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for DeathGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.pool.worker_died(self.slot);
        }
    }
}
