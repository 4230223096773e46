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
use crate::task::{Job, RunEnd, TaskContext, TaskStatus, Work, RUNNING, ZOMBIE};
use crate::telemetry::{Event, RestartCause, ScaleReason, TierCounters};

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
    if let Some(nice) = pool.config.nice {
        if !crate::os_priority::set_current_thread_nice(nice) && slot.index == 0 {
            tlog!(debug, target: "tierpool::pool", "{}: could not set nice {nice}", pool.name());
        }
    }
    // Born idle: the spawner counted this thread in `idle`. When it went
    // idle is read off the clock only if it may retire (see
    // `wait_for_work`): a clock read per idle spell is measurable when tiny
    // tasks keep a worker hopping between busy and idle.
    let mut idle_since = None;
    // The end of the task just run, while the worker stays busy.
    let mut last_end = None;
    loop {
        // RESTARTED: a maintenance restart replaces threads between tasks.
        if pool.is_stale(&slot) {
            pool.replace_stale(&slot);
            guard.disarm();
            return;
        }
        // BUSY: take work while there is any.
        if let Some((level, work)) = pool.next_work(slot.generation) {
            slot.set_busy(&pool);
            match work {
                Work::Poison => panic!("tierpool: injected worker fault (test hook)"),
                Work::Task(job) => {
                    if pool.run_job(job, &slot, level, &mut last_end) == After::Retire {
                        guard.disarm();
                        return;
                    }
                }
            }
            continue;
        }
        // IDLE: announce, look once more (the submitter may have missed
        // us), then block.
        last_end = None;
        pool.free_spent();
        if !slot.idle.load(Ordering::Relaxed) {
            slot.idle.store(true, Ordering::Relaxed);
            pool.idle.fetch_add(1, Ordering::SeqCst);
            idle_since = None;
            continue;
        }
        if pool.gate.state() == STOPPING {
            break;
        }
        if pool.wait_for_work(&mut idle_since) && pool.try_retire(&slot) {
            pool.retired();
            guard.disarm();
            return;
        }
    }
    pool.exit_worker(&slot);
    guard.disarm();
}

impl WorkerSlot {
    fn set_busy(&self, pool: &PoolShared) {
        // A load first: a worker going from task to task is not idle, and
        // the swap would be a locked instruction per task.
        if self.idle.load(Ordering::Relaxed) && self.idle.swap(false, Ordering::Relaxed) {
            pool.idle.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl PoolShared {
    /// Which levels a worker of `generation` may take from now. A restart
    /// bumps the generation before it clears `restarting`, so a pick that
    /// sees the restart over also sees the worker is stale: old threads
    /// never take work after a restart.
    fn allowed_levels(&self, generation: u64) -> [bool; 4] {
        let open = self.gate.state() != STOPPING
            && !self.is_paused()
            && !self.restarting.load(Ordering::SeqCst)
            && self.generation.load(Ordering::SeqCst) == generation
            && self.memory.allows_work(&self.clock);
        if !open {
            return [false; 4];
        }
        let unreserved = self.config.reserved_slots == 0
            || self.running_unreserved.load(Ordering::Acquire)
                < self.config.max_workers - self.config.reserved_slots;
        [true, true, unreserved, unreserved]
    }

    fn next_work(&self, generation: u64) -> Option<(usize, Work)> {
        // A reserved place may not be pushed yet: then the pick comes back
        // empty and the worker looks again before it sleeps.
        let r = &self.reserved;
        let waiting = [
            r[0].load(Ordering::Acquire) > 0,
            r[1].load(Ordering::Acquire) > 0,
            r[2].load(Ordering::Acquire) > 0,
            r[3].load(Ordering::Acquire) > 0,
        ];
        let picked = self.queue.pick(
            waiting,
            || self.allowed_levels(generation),
            |level| {
                if self.config.reserved_slots > 0 && level >= Priority::Normal.index() {
                    self.running_unreserved.fetch_add(1, Ordering::AcqRel);
                }
            },
        )?;
        // A pick from a full limit, or one crossing half of it, wakes the
        // blocked submitters (in `unreserve`; see `RoomWaiter::wait` for why
        // that costs a futex call only when one really sleeps).
        let crossed_half = self.unreserve(picked.0);
        self.check_saturation(crossed_half);
        Some(picked)
    }

    /// Blocks until rung, or until something the worker must look at
    /// again. Returns `true` when the keep-alive ran out.
    fn wait_for_work(&self, idle_since: &mut Option<Instant>) -> bool {
        let may_retire = self.live.load(Ordering::Acquire) > self.config.min_workers;
        let keep_alive_end = if may_retire {
            let since = *idle_since.get_or_insert_with(|| self.clock.now());
            since.checked_add(self.config.keep_alive)
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
            Ok(()) => {
                self.took_ring();
                false
            }
            Err(RecvTimeoutError::Disconnected) => false,
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
        self.leave(&mut t, slot);
        self.counters.scaled_down();
        self.events().emit_with(|| Event::PoolScaled {
            tier: self.name(),
            from: t.live + 1,
            to: t.live,
            reason: ScaleReason::Idle {
                keep_alive: self.config.keep_alive,
            },
        });
        tlog!(debug, target: "tierpool::pool", "{}: scaled down to {} workers (worker {} idle for {:?})",
            self.name(), t.live, slot.index, self.config.keep_alive);
        true
    }

    /// Normal exit at shutdown.
    fn exit_worker(&self, slot: &WorkerSlot) {
        let mut t = self.threads.lock();
        self.leave(&mut t, slot);
    }

    fn run_job(
        &self,
        job: Job,
        slot: &WorkerSlot,
        level: usize,
        last_end: &mut Option<(Instant, u64)>,
    ) -> After {
        let unreserved = self.config.reserved_slots > 0 && level >= Priority::Normal.index();
        let after = self.run_started(job, slot, last_end);
        if unreserved {
            self.running_unreserved.fetch_sub(1, Ordering::AcqRel);
            if self.queue.has_waiting([false, false, true, true]) {
                self.ring(1);
            }
        }
        after
    }

    fn run_started(
        &self,
        job: Job,
        slot: &WorkerSlot,
        last_end: &mut Option<(Instant, u64)>,
    ) -> After {
        // Borrowed, not cloned: the job holds the core, and moves into the
        // task's context for the run.
        let core = &job.core;
        // The start, read before the task is marked running, so a caller
        // that sees it running and then moves a manual clock can never push
        // its deadline later. A worker going straight from one task to the
        // next reuses the previous task's end (one clock read per task
        // saved: ~8 % of tiny-task throughput here) — but never one older
        // than the task's submission: the gap also holds the previous run's
        // booking, and a manual clock moved, or the worker descheduled,
        // there would start the task before it was submitted, its deadline
        // already past (found by fault injection). What is left is the same
        // window a fresh read has between the read and the start, a little
        // longer. Kept as nanoseconds on the clock's epoch too: every
        // duration below is an integer subtraction.
        let reused = last_end.take().filter(|&(_, n)| n >= core.submitted);
        let (mut start, mut start_n) = reused.unwrap_or_else(|| {
            let t = self.clock.now();
            (t, self.clock.nanos(t))
        });
        let Some(attempt) = core.start() else {
            // Discarded while queued. Dropping the job drops its closure
            // (`Job`'s drop), which may take a while: the next task reads
            // the clock afresh rather than start at a time before that.
            drop(job);
            return After::Continue;
        };
        if attempt > 1 && reused.is_some() {
            // A restart or retry was queued again after its submission, at
            // a time the core does not keep: the reused end may predate it.
            // Read now (after the start, so such a run's deadline can only
            // come late by a racing clock move, never early).
            start = self.clock.now();
            start_n = self.clock.nanos(start);
        }
        // Queue wait is submit → first start; a restart or retry waited
        // for other reasons (preemption, backoff).
        let waited = (attempt == 1).then(|| start_n.saturating_sub(core.submitted));
        self.counters.started(waited);
        tlog!(trace, target: "tierpool::task", "{}: task {} started (attempt {attempt})", self.name(), core.id);
        self.events().emit_with(|| Event::TaskStarted {
            tier: self.name(),
            task: core.id,
            attempt,
        });
        *slot.current.lock() = Some(core.clone());
        self.note_run_start(slot, start_n);
        if self.gate.state() == STOPPING {
            // Taken just as shutdown began: it never really starts.
            core.token().cancel(CancelReason::Shutdown);
            if core.settle_cancelled(CancelReason::Shutdown) {
                self.cancelled_at_stop.fetch_add(1, Ordering::AcqRel);
            }
        } else {
            // After `current` is set: the watchdog's scan finds the task
            // there (see watchdog.rs, "Why no deadline is missed").
            self.watchdog.watch_run(core, start_n);
        }
        let memory_budget = core.opts.memory_budget;
        let ctx = TaskContext::new(job, start, self.clock.clone(), attempt, memory_budget);
        let end = if ctx.is_cancelled() && ctx.core().slot.outcome().is_some() {
            // Settled before its body started: the closure goes now, as it
            // would after a run (its captures may report on drop).
            ctx.core().drop_body();
            RunEnd::Late
        } else {
            ctx.core().slot.run(&ctx)
        };
        if crate::alloc::CountingAllocator::is_active() {
            self.counters.allocated(ctx.run_bytes());
        }
        let job = ctx.into_job();
        let core = &job.core;
        let finished = self.clock.now();
        let finished_n = self.clock.nanos(finished);
        *last_end = Some((finished, finished_n));
        self.note_run_end(slot);
        self.counters.ran(finished_n.saturating_sub(start_n));
        // No deadline left over for a later attempt to inherit.
        core.clear_watch();
        *slot.current.lock() = None;
        let left = core.finish();
        // Lowers `running` when dropped at the end of the booking below, or
        // on the way out if a value's `Drop` panics in it (a returned
        // result dropped with its last reference, a closure's captures):
        // the worker dies and is replaced, but the count stays true.
        let running = StillRunning {
            counters: &self.counters,
            counted: left == RUNNING,
        };
        let id = core.id;
        let spent = match end {
            RunEnd::Settled => {
                // The body settled the slot (and the slot counted it).
                self.events().emit_with(|| Event::TaskFinished {
                    tier: self.name(),
                    task: core.id,
                    status: core.slot.outcome().unwrap_or(TaskStatus::Completed),
                });
                core.release_permit();
                Some(job)
            }
            RunEnd::Late => {
                self.counters.late_result();
                core.release_permit();
                Some(job)
            }
            // The job moves on whole: dropping it here would settle it
            // (see `Job`'s drop), as it is queued again.
            RunEnd::Restart => {
                self.restart(job);
                None
            }
            RunEnd::RetryAfter(d) => {
                self.retry_later(job, d);
                None
            }
        };
        if let Some(job) = spent {
            self.return_spent(job);
        }
        // A permit given back may relieve an in-flight saturation that the
        // last pick (made before the permit came back) still saw: one load
        // when nothing is saturated.
        self.check_saturation(false);
        // Last: `running == 0` then means every run is fully booked (late
        // result counted, permit back, events sent), which drains and
        // tests wait for; a restart counted into the queue meanwhile is
        // briefly seen in both, never in neither.
        drop(running);
        self.notify_drain();
        if left == ZOMBIE {
            let mut t = self.threads.lock();
            t.zombies -= 1;
            self.forget_thread(&mut t, slot.index);
            tlog!(warn, target: "tierpool::watchdog", "{}: zombie task {id} finally returned; its thread retires",
                self.name());
            return After::Retire;
        }
        After::Continue
    }

    /// Hands a finished task's core back to a submitting thread to free,
    /// when this worker holds the last reference and the core keeps no
    /// user value whose drop could matter where or when it runs.
    ///
    /// Why: the core is allocated by the submitter and would be freed
    /// here. glibc's malloc puts a chunk freed on another thread into this
    /// thread's cache, which overflows at once (nothing is allocated here),
    /// and the overflow takes the submitting thread's arena lock, against
    /// which the submitter allocates the next task (one futex call per ~36
    /// tiny tasks; src/pool/README.md, "Spent task cores"). Freed by a submitter, the chunk lands in that thread's
    /// own cache and its next allocation reuses it. A full channel (no one
    /// submitting) just frees here, as before.
    fn return_spent(&self, job: Job) {
        if Arc::strong_count(&job.core) == 1 && job.core.slot.keeps_nothing_to_drop() {
            let _ = self.spent_tx.try_send(job);
        }
    }

    /// Frees the spent cores no submitter came for (a worker going idle:
    /// no submitter is allocating against it now).
    fn free_spent(&self) {
        while self.spent_rx.try_recv().is_ok() {}
    }

    /// Puts a preempted restartable task back in its queue.
    ///
    /// Takes the job itself: it used to re-wrap the core in a new `Job`
    /// and leave the old one to be dropped, and that `Drop` (invariant 2 in
    /// `task.rs`) discarded the just re-queued task as cancelled (shutdown).
    fn restart(&self, job: Job) {
        let core = job.core.clone();
        let level = core.opts.priority.index();
        let mut requeued = false;
        // Reserve first, so a full level never leaves the task QUEUED but
        // outside the queue (its `Job` drop would then count it dequeued).
        if self.gate.state() == super::OPEN && self.reserve(level).is_ok() {
            // Counted into the queue before it is QUEUED again: a cancel
            // that discards it at once counts it out after (see
            // `TierCounters::queued`).
            self.counters.requeueing();
            requeued = core.requeue();
            if !requeued {
                self.counters.requeue_abandoned();
                self.unreserve(level);
            }
        }
        if !requeued {
            if core.settle_cancelled(CancelReason::Preempted) {
                tlog!(info, target: "tierpool::pool", "{}: preempted task {} could not be re-queued", self.name(), core.id);
            }
            // Its run is over for good: the closure goes now, here.
            core.drop_body();
            core.release_permit();
            return;
        }
        self.counters.restarted();
        self.push_reserved(core.opts.priority, Work::Task(job));
        self.ring(1);
    }

    /// Hands a failed job to the watchdog's timer, to be queued again
    /// after `backoff`. It keeps its admission permit (it is still in
    /// flight) and counts as queued meanwhile.
    fn retry_later(&self, job: Job, backoff: std::time::Duration) {
        let core = job.core.clone();
        // Counted in first, as in `restart`.
        self.counters.requeueing();
        if !(self.accepts_retries() && core.requeue()) {
            // The body checked `can_retry` just before; only a shutdown
            // racing it lands here.
            self.counters.requeue_abandoned();
            core.settle_cancelled(CancelReason::Shutdown);
            core.drop_body();
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
        if self.reserve(p.index()).is_err() {
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
        if self.gate.state() != super::OPEN || self.restarting.load(Ordering::SeqCst) {
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
            if core
                .slot
                .settle_panicked("the worker thread running it died", &self.counters)
            {
                self.events().emit_with(|| Event::TaskFinished {
                    tier: self.name(),
                    task: core.id,
                    status: TaskStatus::Panicked,
                });
            }
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
                self.log_from_watchdog(format!(
                    "{}: worker {} died; {} restarts within {:?}: restart intensity exceeded, not restarting",
                    self.name(), slot.index, t.restarts.len(), window));
            }
            t.gave_up_restarting = true;
            return;
        }
        t.restarts.push_back(now);
        self.counters.worker_restarted();
        self.thread_restarted(RestartCause::Died);
        self.log_from_watchdog(format!(
            "{}: worker {} died outside a task; restarting it",
            self.name(),
            slot.index
        ));
        if let Err(e) = self.spawn_worker(&mut t) {
            self.log_from_watchdog(format!("{}: could not restart a worker: {e}", self.name()));
        }
    }

    /// `worker_died` runs while its thread unwinds, where a logger that
    /// panics would abort the process: the line is written by the
    /// watchdog thread instead (which isolates its callbacks).
    fn log_from_watchdog(&self, line: String) {
        self.watchdog.call_at(
            self.clock.now(),
            Box::new(move || tlog!(error, target: "tierpool::supervisor", "{line}")),
        );
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

/// A run still counted in `running` while its booking goes on (see
/// `run_started`): lowered once, when this is dropped, unwinding or not.
struct StillRunning<'a> {
    counters: &'a TierCounters,
    counted: bool,
}

impl Drop for StillRunning<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.counters.stopped_running();
        }
    }
}
