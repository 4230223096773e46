//! The public face of a tier: submitting work (the short path and the task
//! builder), its stats, pause and resume.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crate::error::{RejectReason, SubmitError};
use crate::health::{ComponentHealth, HealthReason};
use crate::pool::config::TierConfig;
use crate::pool::PoolShared;
use crate::priority::Priority;
use crate::runtime::PhaseDeadline;
use crate::stats::TierStats;
use crate::supervisor::{RestartError, RestartReport};
use crate::sync::Arc;
use crate::task::{once_body, restartable_body, Body, TaskContext, TaskHandle, TaskOptions};

/// One tier of the runtime: a dedicated pool of named OS threads fed by a
/// bounded priority queue. Get one from [`Runtime::ui`](crate::Runtime::ui),
/// [`background`](crate::Runtime::background) or
/// [`realtime`](crate::Runtime::realtime).
///
/// ```
/// use tierpool::{Priority, Runtime};
/// let rt = Runtime::builder().build()?;
/// let h = rt.realtime().submit(Priority::High, |ctx| {
///     ctx.checkpoint()?;
///     Ok::<_, tierpool::Cancelled>(42)
/// })?;
/// assert_eq!(h.join().unwrap(), 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A `Tier` is a cheap handle: clone it to submit from other threads
/// without borrowing the runtime. After the runtime shuts down, a clone
/// rejects submissions with [`RejectReason::ShuttingDown`].
#[derive(Clone)]
pub struct Tier {
    pub(crate) pool: Arc<PoolShared>,
}

impl Tier {
    /// The tier's name (`"ui"`, `"background"`, `"realtime"`).
    pub fn name(&self) -> &'static str {
        self.pool.name()
    }

    /// Submits `f` at `priority` with the tier's defaults. Never blocks:
    /// a full queue or a reached limit is an `Err` that hands `f` back.
    pub fn submit<T, E, F>(
        &self,
        priority: Priority,
        f: F,
    ) -> Result<TaskHandle<T, E>, SubmitError<F>>
    where
        F: FnOnce(&TaskContext) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        self.task(f).priority(priority).submit()
    }

    /// Like [`submit`](Tier::submit), but waits up to `wait` (on the
    /// runtime's clock) for room when the queue is full or a limit is
    /// reached. Still returns at once when the runtime is shutting down.
    pub fn submit_wait<T, E, F>(
        &self,
        priority: Priority,
        f: F,
        wait: Duration,
    ) -> Result<TaskHandle<T, E>, SubmitError<F>>
    where
        F: FnOnce(&TaskContext) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        self.task(f).priority(priority).submit_wait(wait)
    }

    /// Starts a task builder for the options beyond priority: user key,
    /// timeout and warning overrides, queue budget, preemption.
    pub fn task<F, T, E>(&self, f: F) -> TaskBuilder<'_, F>
    where
        // Stated here (not only at submit) so closures get the
        // higher-ranked `&TaskContext` signature inferred.
        F: FnOnce(&TaskContext) -> Result<T, E> + Send + 'static,
    {
        TaskBuilder {
            tier: self,
            f,
            priority: Priority::Normal,
            user: None,
            timeout: None,
            warn_after: None,
            queue_budget: None,
            memory_budget: None,
            preemptible: false,
            _mode: PhantomData,
        }
    }

    /// The tier's defaults for a task at `priority` (engine layers on top
    /// of a tier start from these).
    pub(crate) fn default_options(&self, priority: Priority) -> TaskOptions {
        let cfg = &self.pool.config;
        TaskOptions {
            priority,
            user: None,
            timeout: cfg.timeout,
            warn_after: cfg.warn_after,
            queue_budget: None,
            memory_budget: cfg.memory_budget,
            preemptible: false,
            restartable: false,
        }
    }

    /// This tier's numbers now.
    pub fn stats(&self) -> TierStats {
        self.pool.stats()
    }

    /// The configuration the tier was built with.
    pub fn config(&self) -> &TierConfig {
        &self.pool.config
    }

    /// Stops starting queued work (running work continues; submissions are
    /// still accepted up to the limits).
    pub fn pause(&self) {
        self.pool.pause();
    }

    /// Starts queued work again after [`pause`](Tier::pause).
    pub fn resume(&self) {
        self.pool.resume();
    }

    /// Whether the tier is paused by [`pause`](Tier::pause).
    pub fn is_paused(&self) -> bool {
        self.pool.is_paused()
    }

    /// Maintenance restart: starts nothing new from the queue (submissions
    /// are still accepted, and the queue is kept), waits up to `grace` on
    /// the runtime's clock for running tasks to return, then replaces
    /// every worker thread with a new one. A task still running when the
    /// grace ends is not interrupted: its thread is replaced when it
    /// returns. Every task keeps its one outcome. Also resets the restart
    /// intensity (see [`TierConfig::restart_intensity`]), so it is the
    /// way back from [`HealthReason::RestartIntensityExceeded`].
    ///
    /// Blocks until done (at most about `grace`). One restart of a tier
    /// runs at a time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{Priority, Runtime};
    /// let rt = Runtime::builder().build()?;
    /// let before = rt.background().stats().threads_started;
    /// let report = rt.background().restart(Duration::from_secs(5))?;
    /// assert_eq!(report.replaced, rt.background().stats().workers);
    /// assert!(rt.background().stats().threads_started > before);
    /// let h = rt.background().submit(Priority::Normal, |_| Ok::<_, String>(1))?;
    /// assert_eq!(h.join().unwrap(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restart(&self, grace: Duration) -> Result<RestartReport, RestartError> {
        let deadline = PhaseDeadline::after(&self.pool.clock, grace);
        let out = self
            .pool
            .restart_threads(deadline)
            .ok_or(RestartError::ShuttingDown)?;
        Ok(RestartReport {
            tier: self.name(),
            drained_in_time: out.drained_in_time,
            replaced: out.replaced,
            still_running: out.still_running,
        })
    }

    /// This tier's health now: zombies, the memory watermark, the restart
    /// intensity and how long it has been at capacity.
    ///
    /// ```
    /// let rt = tierpool::Runtime::builder().build()?;
    /// let h = rt.ui().health();
    /// assert_eq!(h.name, "ui");
    /// assert!(h.reasons.is_empty());
    /// # Ok::<(), tierpool::BuildError>(())
    /// ```
    pub fn health(&self) -> ComponentHealth {
        self.pool.refresh_memory();
        let s = self.stats();
        let cfg = &self.pool.config;
        let mut reasons = Vec::new();
        if s.zombie_threads > 0 {
            reasons.push(HealthReason::Zombies {
                threads: s.zombie_threads,
            });
        }
        if s.memory_paused {
            reasons.push(HealthReason::MemoryPaused {
                rss: s.last_rss,
                high: self.pool.watermark_high(),
            });
        }
        if s.restart_intensity_exceeded {
            reasons.push(HealthReason::RestartIntensityExceeded {
                workers: s.workers,
                max_restarts: cfg.max_restarts,
                window: cfg.restart_window,
            });
        }
        if let Some(d) = s.saturated_for.filter(|d| *d >= cfg.saturation_threshold) {
            reasons.push(HealthReason::QueueSaturated {
                for_: d,
                threshold: cfg.saturation_threshold,
            });
        }
        ComponentHealth::new(self.name(), reasons)
    }

    /// Test hook: makes one worker thread panic outside any task, to check
    /// that it is restarted. `false` if the queue had no room for it.
    #[doc(hidden)]
    pub fn inject_worker_panic(&self) -> bool {
        self.pool.inject_worker_panic()
    }

    fn submit_with<T, E, F, B>(
        &self,
        opts: TaskOptions,
        f: F,
        make_body: impl Fn(F) -> B + Copy,
        wait: Option<Duration>,
    ) -> Result<TaskHandle<T, E>, SubmitError<F>>
    where
        T: Send + 'static,
        E: Send + 'static,
        B: Body<T, E>,
    {
        let pool = &self.pool;
        let mut r = pool.submit(opts.clone(), f, make_body);
        if let Some(wait) = wait {
            // The common case (room at once) announces nothing: a blocking
            // submitter announces itself only after a failed try, then
            // tries again before it waits, so a release between the failed
            // try and the announcement is seen by that second try, and any
            // later one by the wait (invariant 3).
            if matches!(&r, Err(e) if e.reason().is_transient()) {
                let mut waiter = pool.admission.room_waiter();
                // The deadline is read off the clock only once a try
                // failed: a clock read is a tenth of a tiny task's path.
                let deadline = pool.clock.deadline_after(wait);
                let mut retried = false;
                while let Err(e) = r {
                    if !e.reason().is_transient() {
                        r = Err(e);
                        break;
                    }
                    let room = e.room();
                    let f = e.into_inner();
                    if retried && !waiter.wait(room, &pool.clock, deadline) {
                        r = Err(SubmitError::new(RejectReason::DeadlineElapsed, f));
                        break;
                    }
                    retried = true;
                    r = pool.submit(opts.clone(), f, make_body);
                }
            }
        }
        if let Err(e) = &r {
            pool.counters.rejected(e.reason());
        }
        r
    }
}

impl fmt::Debug for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier").field("name", &self.name()).finish()
    }
}

/// Marker: the task runs once (any `FnOnce`).
#[derive(Debug)]
pub enum Once {}

/// Marker: the task may run again after preemption (needs `FnMut`).
#[derive(Debug)]
pub enum Restartable {}

/// Options for one task, then [`submit`](TaskBuilder::submit).
///
/// ```
/// use std::time::Duration;
/// use tierpool::{Priority, Runtime};
/// let rt = Runtime::builder().build()?;
/// let h = rt.ui()
///     .task(|ctx| Ok::<_, tierpool::Cancelled>(ctx.priority()))
///     .user("user-17")
///     .priority(Priority::High)
///     .timeout(Duration::from_secs(5))
///     .queue_budget(Duration::from_secs(1))
///     .submit()?;
/// assert_eq!(h.join().unwrap(), Priority::High);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a task builder does nothing until submitted"]
pub struct TaskBuilder<'a, F, M = Once> {
    tier: &'a Tier,
    f: F,
    priority: Priority,
    user: Option<Arc<str>>,
    timeout: Option<Option<Duration>>,
    warn_after: Option<Option<Duration>>,
    queue_budget: Option<Duration>,
    memory_budget: Option<Option<u64>>,
    preemptible: bool,
    _mode: PhantomData<M>,
}

impl<'a, F, M> TaskBuilder<'a, F, M> {
    /// The user this task is for: per-user limits apply to it. Any string
    /// is a valid key (the empty one too).
    pub fn user(mut self, user: impl AsRef<str>) -> Self {
        self.user = Some(Arc::from(user.as_ref()));
        self
    }

    /// The priority (default normal).
    pub fn priority(mut self, p: Priority) -> Self {
        self.priority = p;
        self
    }

    /// Overrides the tier's timeout for this task. Counted from when it
    /// starts; queue wait is bounded separately by
    /// [`queue_budget`](TaskBuilder::queue_budget).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(Some(d));
        self
    }

    /// No timeout for this task, whatever the tier's default.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = Some(None);
        self
    }

    /// Overrides the tier's warning threshold for this task.
    pub fn warn_after(mut self, d: Duration) -> Self {
        self.warn_after = Some(Some(d));
        self
    }

    /// If the task has not started within `d` of submission, it never
    /// will: it is cancelled with reason queue-expired.
    pub fn queue_budget(mut self, d: Duration) -> Self {
        self.queue_budget = Some(d);
        self
    }

    /// Overrides the tier's [`memory_budget`](crate::TierConfig::memory_budget)
    /// for this task: once it holds more than `bytes` (allocated minus
    /// freed on its worker thread), its next
    /// [`checkpoint`](TaskContext::checkpoint) or
    /// [`sleep`](TaskContext::sleep) cancels it with reason
    /// [`Memory`](crate::CancelReason::Memory). Any number is accepted: a
    /// budget of 0 cancels the task at the first checkpoint at which it
    /// holds a byte. Needs the
    /// [`CountingAllocator`](crate::alloc::CountingAllocator); without it
    /// nothing is counted and no budget fires.
    ///
    /// ```
    /// let rt = tierpool::Runtime::builder().build()?;
    /// let h = rt.background()
    ///     .task(|ctx| { ctx.checkpoint()?; Ok::<_, tierpool::Cancelled>(ctx.memory_budget()) })
    ///     .memory_budget(64 * 1024 * 1024)
    ///     .submit()?;
    /// assert_eq!(h.join().unwrap(), Some(64 * 1024 * 1024));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(Some(bytes));
        self
    }

    /// No memory budget for this task, whatever the tier's default.
    pub fn no_memory_budget(mut self) -> Self {
        self.memory_budget = Some(None);
        self
    }

    /// Whether critical work may cancel this task to take its worker
    /// (default false).
    pub fn preemptible(mut self, yes: bool) -> Self {
        self.preemptible = yes;
        self
    }

    fn options(&self, restartable: bool) -> TaskOptions {
        let cfg = &self.tier.pool.config;
        TaskOptions {
            priority: self.priority,
            user: self.user.clone(),
            timeout: self.timeout.unwrap_or(cfg.timeout),
            warn_after: self.warn_after.unwrap_or(cfg.warn_after),
            queue_budget: self.queue_budget,
            memory_budget: self.memory_budget.unwrap_or(cfg.memory_budget),
            preemptible: self.preemptible || restartable,
            restartable,
        }
    }
}

impl<'a, F> TaskBuilder<'a, F, Once> {
    /// Makes the task restartable: when preempted it goes back in the queue
    /// and runs again (implies preemptible). Needs a closure that can run
    /// more than once.
    pub fn restartable<T, E>(self) -> TaskBuilder<'a, F, Restartable>
    where
        F: FnMut(&TaskContext) -> Result<T, E> + Send + 'static,
    {
        TaskBuilder {
            tier: self.tier,
            f: self.f,
            priority: self.priority,
            user: self.user,
            timeout: self.timeout,
            warn_after: self.warn_after,
            queue_budget: self.queue_budget,
            memory_budget: self.memory_budget,
            preemptible: true,
            _mode: PhantomData,
        }
    }

    /// Submits. Never blocks; a rejection hands the closure back.
    pub fn submit<T, E>(self) -> Result<TaskHandle<T, E>, SubmitError<F>>
    where
        F: FnOnce(&TaskContext) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let opts = self.options(false);
        self.tier
            .submit_with(opts, self.f, once_body::<T, E, F>, None)
    }

    /// Submits, waiting up to `wait` for room (see [`Tier::submit_wait`]).
    pub fn submit_wait<T, E>(self, wait: Duration) -> Result<TaskHandle<T, E>, SubmitError<F>>
    where
        F: FnOnce(&TaskContext) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let opts = self.options(false);
        self.tier
            .submit_with(opts, self.f, once_body::<T, E, F>, Some(wait))
    }
}

impl<'a, F> TaskBuilder<'a, F, Restartable> {
    /// Submits. Never blocks; a rejection hands the closure back.
    pub fn submit<T, E>(self) -> Result<TaskHandle<T, E>, SubmitError<F>>
    where
        F: FnMut(&TaskContext) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let opts = self.options(true);
        self.tier
            .submit_with(opts, self.f, restartable_body::<T, E, F>, None)
    }

    /// Submits, waiting up to `wait` for room (see [`Tier::submit_wait`]).
    pub fn submit_wait<T, E>(self, wait: Duration) -> Result<TaskHandle<T, E>, SubmitError<F>>
    where
        F: FnMut(&TaskContext) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let opts = self.options(true);
        self.tier
            .submit_with(opts, self.f, restartable_body::<T, E, F>, Some(wait))
    }
}
