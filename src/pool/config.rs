//! A tier's configuration: every limit, capacity and duration, with the
//! seed's defaults, and the validation `build()` runs.

use std::time::Duration;

use crate::error::ConfigError;

/// Most worker threads one tier may have (a guard against typos such as
/// `max_workers(usize::MAX)`).
pub const MAX_WORKERS_LIMIT: usize = 4096;
/// Largest per-level queue capacity: crossbeam's bounded channels allocate
/// their capacity up front, so a huge one would exhaust memory at build.
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;

/// A memory watermark pair, in bytes of resident memory (RSS).
///
/// Above `high` the tier starts nothing new from its queue (running work
/// continues); it resumes once RSS is back below `low`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermark {
    /// Pause above this many resident bytes.
    pub high: u64,
    /// Resume below this many resident bytes.
    pub low: u64,
}

/// One tier's settings. Start from [`TierConfig::ui`],
/// [`TierConfig::background`] or [`TierConfig::realtime`] (the seed's
/// numbers) — the runtime builder hands you the right one — and change what
/// you need:
///
/// ```
/// use std::time::Duration;
/// use tierpool::Runtime;
/// let rt = Runtime::builder()
///     .ui(|t| t.per_user_limit(5).timeout(Duration::from_secs(2)).warn_after(Duration::from_secs(1)))
///     .realtime(|t| t.max_workers(8).reserved_slots(2))
///     .build()?;
/// assert_eq!(rt.ui().config().per_user_limit_value(), Some(5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct TierConfig {
    pub(crate) name: &'static str,
    pub(crate) min_workers: usize,
    pub(crate) max_workers: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) max_queued: Option<usize>,
    pub(crate) max_in_flight: Option<usize>,
    pub(crate) per_user_limit: Option<usize>,
    pub(crate) warn_after: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cancel_grace: Duration,
    pub(crate) max_zombie_replacements: usize,
    pub(crate) keep_alive: Duration,
    pub(crate) reserved_slots: usize,
    pub(crate) preemption: bool,
    pub(crate) starvation_limit: u32,
    pub(crate) watermark: Option<Watermark>,
    pub(crate) memory_sample_interval: Duration,
    pub(crate) nice: Option<i32>,
    pub(crate) max_restarts: u32,
    pub(crate) restart_window: Duration,
    pub(crate) utilisation_window: Duration,
    pub(crate) saturation_threshold: Duration,
    pub(crate) memory_budget: Option<u64>,
}

impl TierConfig {
    fn base(name: &'static str) -> Self {
        TierConfig {
            name,
            min_workers: 1,
            max_workers: 4,
            queue_capacity: 1000,
            max_queued: None,
            max_in_flight: None,
            per_user_limit: None,
            warn_after: None,
            timeout: None,
            cancel_grace: Duration::from_secs(2),
            max_zombie_replacements: 4,
            keep_alive: Duration::from_secs(60),
            reserved_slots: 0,
            preemption: false,
            starvation_limit: 10,
            watermark: None,
            memory_sample_interval: Duration::from_millis(250),
            nice: None,
            max_restarts: 5,
            restart_window: Duration::from_secs(10),
            utilisation_window: Duration::from_secs(10),
            saturation_threshold: Duration::from_secs(30),
            memory_budget: None,
        }
    }

    /// The `ui` tier: fast user-triggered work. 2–32 workers, 100 in flight,
    /// 20 per user, warn at 10 s, time out at 30 s.
    pub fn ui() -> Self {
        TierConfig {
            min_workers: 2,
            max_workers: 32,
            queue_capacity: 100,
            max_in_flight: Some(100),
            per_user_limit: Some(20),
            warn_after: Some(Duration::from_secs(10)),
            timeout: Some(Duration::from_secs(30)),
            max_zombie_replacements: 32,
            ..TierConfig::base("ui")
        }
    }

    /// The `background` tier: heavy processing. 1–5 workers, a bounded
    /// queue, 30 min timeout, memory watermark at 80 % / 70 % of physical
    /// memory where it can be read.
    pub fn background() -> Self {
        TierConfig {
            min_workers: 1,
            max_workers: 5,
            queue_capacity: 1000,
            timeout: Some(Duration::from_secs(30 * 60)),
            cancel_grace: Duration::from_secs(5),
            max_zombie_replacements: 5,
            watermark: crate::memory::default_watermark(),
            ..TierConfig::base("background")
        }
    }

    /// The `realtime` tier: event processing. 2–50 workers, 10 of them
    /// reserved for high/critical work, warn at 2 s, time out at 5 s,
    /// critical work preempts lower-priority preemptible tasks.
    pub fn realtime() -> Self {
        TierConfig {
            min_workers: 2,
            max_workers: 50,
            queue_capacity: 1000,
            warn_after: Some(Duration::from_secs(2)),
            timeout: Some(Duration::from_secs(5)),
            cancel_grace: Duration::from_secs(1),
            max_zombie_replacements: 50,
            reserved_slots: 10,
            preemption: true,
            ..TierConfig::base("realtime")
        }
    }

    /// The `analysis` pool: 1–8 workers scaled with demand, at most 100
    /// jobs queued, no default timeout (set one per request).
    pub fn analysis() -> Self {
        TierConfig {
            min_workers: 1,
            max_workers: 8,
            queue_capacity: 100,
            max_queued: Some(100),
            max_zombie_replacements: 8,
            ..TierConfig::base("analysis")
        }
    }

    /// The tier's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Fewest worker threads kept alive when idle.
    pub fn min_workers(mut self, n: usize) -> Self {
        self.min_workers = n;
        self
    }

    /// Most worker threads (concurrently running tasks).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = n;
        self
    }

    /// Sets min and max workers to `n` (a fixed-size pool).
    pub fn workers(self, n: usize) -> Self {
        self.min_workers(n).max_workers(n)
    }

    /// Capacity of each priority level's queue.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Most tasks queued (all priority levels together) before submissions
    /// are rejected as queue-full; `None`: only the per-level capacity.
    pub fn max_queued(mut self, n: impl Into<Option<usize>>) -> Self {
        self.max_queued = n.into();
        self
    }

    /// Most tasks queued + running on the tier at once (`None`: only the
    /// queue capacity bounds it).
    pub fn max_in_flight(mut self, n: impl Into<Option<usize>>) -> Self {
        self.max_in_flight = n.into();
        self
    }

    /// Most tasks one user key may have queued + running (`None`: no
    /// per-user limit).
    pub fn per_user_limit(mut self, n: impl Into<Option<usize>>) -> Self {
        self.per_user_limit = n.into();
        self
    }

    /// Log and count a warning when a task has run this long.
    pub fn warn_after(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.warn_after = d.into();
        self
    }

    /// Cancel a task (reason: timeout) once it has run this long; `None`
    /// for no timeout. `Duration::MAX` is also "never".
    pub fn timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.timeout = d.into();
        self
    }

    /// How long a cancelled task may take to return before it is declared
    /// a zombie and its thread replaced.
    pub fn cancel_grace(mut self, d: Duration) -> Self {
        self.cancel_grace = d;
        self
    }

    /// Most replacement threads started for zombies at once.
    pub fn max_zombie_replacements(mut self, n: usize) -> Self {
        self.max_zombie_replacements = n;
        self
    }

    /// How long a worker above `min_workers` stays idle before it retires.
    pub fn keep_alive(mut self, d: Duration) -> Self {
        self.keep_alive = d;
        self
    }

    /// Worker slots only high and critical tasks may use.
    pub fn reserved_slots(mut self, n: usize) -> Self {
        self.reserved_slots = n;
        self
    }

    /// Whether a waiting critical task may cancel (reason: preempted) the
    /// lowest-priority preemptible running task when every worker is busy.
    pub fn preemption(mut self, on: bool) -> Self {
        self.preemption = on;
        self
    }

    /// How many picks of more urgent work a waiting level may be passed
    /// over before it is served.
    pub fn starvation_limit(mut self, n: u32) -> Self {
        self.starvation_limit = n;
        self
    }

    /// Pause taking new work above `high` resident bytes, resume below
    /// `low`.
    pub fn memory_watermark(mut self, high: u64, low: u64) -> Self {
        self.watermark = Some(Watermark { high, low });
        self
    }

    /// No memory watermark.
    pub fn no_memory_watermark(mut self) -> Self {
        self.watermark = None;
        self
    }

    /// How often resident memory is sampled while the watermark matters.
    pub fn memory_sample_interval(mut self, d: Duration) -> Self {
        self.memory_sample_interval = d;
        self
    }

    /// Runs the tier's threads at this OS nice value (Linux; -20..=19,
    /// higher is lower priority): under CPU contention the kernel serves
    /// the other tiers first (GCD's QoS idea). Off by default: a niced tier
    /// can starve behind other processes on a busy machine, so it is a
    /// choice to make knowingly (`.background(|t| t.os_nice(10))`).
    pub fn os_nice(mut self, nice: impl Into<Option<i32>>) -> Self {
        self.nice = nice.into();
        self
    }

    /// Restart intensity: at most `max` worker restarts within `window`;
    /// past it the tier stops restarting and reports itself unhealthy.
    pub fn restart_intensity(mut self, max: u32, window: Duration) -> Self {
        self.max_restarts = max;
        self.restart_window = window;
        self
    }

    /// The window [`TierStats::utilisation`](crate::TierStats::utilisation)
    /// is measured over (default 10 s, Hystrix's rolling window).
    ///
    /// ```
    /// use std::time::Duration;
    /// let rt = tierpool::Runtime::builder()
    ///     .ui(|t| t.utilisation_window(Duration::from_secs(30)))
    ///     .build()?;
    /// assert!(rt.ui().stats().utilisation <= 1.0);
    /// # Ok::<(), tierpool::BuildError>(())
    /// ```
    pub fn utilisation_window(mut self, d: Duration) -> Self {
        self.utilisation_window = d;
        self
    }

    /// How long the tier may stay at capacity (its queue or in-flight
    /// limit full, until it falls back to half) before
    /// [`health`](crate::Runtime::health) reports it degraded (default
    /// 30 s, on the runtime's clock).
    ///
    /// ```
    /// use std::time::Duration;
    /// let rt = tierpool::Runtime::builder()
    ///     .realtime(|t| t.saturation_threshold(Duration::from_secs(5)))
    ///     .build()?;
    /// assert!(rt.health().is_healthy());
    /// # Ok::<(), tierpool::BuildError>(())
    /// ```
    pub fn saturation_threshold(mut self, d: Duration) -> Self {
        self.saturation_threshold = d;
        self
    }

    /// Most bytes one task may hold (allocated and not yet freed, on its
    /// worker thread, since its run started) before it is cancelled with
    /// reason [`Memory`](crate::CancelReason::Memory); `None` (the default
    /// on every tier): no budget. Meant for the background tier's heavy
    /// work. A task can bring its own
    /// ([`TaskBuilder::memory_budget`](crate::TaskBuilder::memory_budget),
    /// [`no_memory_budget`](crate::TaskBuilder::no_memory_budget)).
    ///
    /// Enforced at the task's own checkpoints —
    /// [`checkpoint`](crate::TaskContext::checkpoint) and
    /// [`sleep`](crate::TaskContext::sleep) — since a running closure
    /// cannot be interrupted; a task that never checks is not stopped (its
    /// timeout still applies). Needs the
    /// [`CountingAllocator`](crate::alloc::CountingAllocator) installed as
    /// the global allocator: without it, usage reads 0 and no budget fires.
    ///
    /// ```
    /// let rt = tierpool::Runtime::builder()
    ///     .background(|t| t.memory_budget(512 * 1024 * 1024))
    ///     .build()?;
    /// assert_eq!(rt.background().config().memory_budget_value(), Some(512 * 1024 * 1024));
    /// # Ok::<(), tierpool::BuildError>(())
    /// ```
    pub fn memory_budget(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.memory_budget = bytes.into();
        self
    }

    /// The configured per-task memory budget, in bytes.
    pub fn memory_budget_value(&self) -> Option<u64> {
        self.memory_budget
    }

    /// The configured per-user limit.
    pub fn per_user_limit_value(&self) -> Option<usize> {
        self.per_user_limit
    }

    /// The configured in-flight limit.
    pub fn max_in_flight_value(&self) -> Option<usize> {
        self.max_in_flight
    }

    /// The configured timeout.
    pub fn timeout_value(&self) -> Option<Duration> {
        self.timeout
    }

    /// The configured worker range.
    pub fn workers_range(&self) -> (usize, usize) {
        (self.min_workers, self.max_workers)
    }

    /// The configured watermark.
    pub fn watermark_value(&self) -> Option<Watermark> {
        self.watermark
    }

    /// Checks every field; the error names the first bad one.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let n = self.name;
        let err = |field: &str, why: String| Err(ConfigError::new(format!("{n}.{field}"), why));
        if self.max_workers == 0 {
            return err(
                "max_workers",
                "must be at least 1 (a tier needs a thread to run anything)".into(),
            );
        }
        if self.max_workers > MAX_WORKERS_LIMIT {
            return err(
                "max_workers",
                format!(
                    "{} is more than the limit of {MAX_WORKERS_LIMIT} threads per tier",
                    self.max_workers
                ),
            );
        }
        if self.min_workers > self.max_workers {
            return err(
                "min_workers",
                format!(
                    "{} is more than max_workers ({})",
                    self.min_workers, self.max_workers
                ),
            );
        }
        if self.queue_capacity == 0 {
            return err(
                "queue_capacity",
                "must be at least 1 (a zero-capacity queue rejects everything)".into(),
            );
        }
        if self.queue_capacity > MAX_QUEUE_CAPACITY {
            return err(
                "queue_capacity",
                format!(
                    "{} is more than the limit of {MAX_QUEUE_CAPACITY} per priority level",
                    self.queue_capacity
                ),
            );
        }
        if self.max_queued == Some(0) {
            return err(
                "max_queued",
                "must be at least 1, or None for no total limit".into(),
            );
        }
        if self.max_in_flight == Some(0) {
            return err(
                "max_in_flight",
                "must be at least 1, or None for no limit".into(),
            );
        }
        if self.per_user_limit == Some(0) {
            return err(
                "per_user_limit",
                "must be at least 1, or None for no limit".into(),
            );
        }
        if let (Some(u), Some(g)) = (self.per_user_limit, self.max_in_flight) {
            if u > g {
                return err(
                    "per_user_limit",
                    format!("{u} is more than max_in_flight ({g}): one user could never reach it"),
                );
            }
        }
        if self.timeout == Some(Duration::ZERO) {
            return err(
                "timeout",
                "must be more than zero, or None for no timeout".into(),
            );
        }
        if self.warn_after == Some(Duration::ZERO) {
            return err(
                "warn_after",
                "must be more than zero, or None for no warning".into(),
            );
        }
        if let (Some(w), Some(t)) = (self.warn_after, self.timeout) {
            if w >= t {
                return err(
                    "warn_after",
                    format!("{w:?} is not less than the timeout ({t:?}): the warning would never come first"),
                );
            }
        }
        if self.reserved_slots >= self.max_workers {
            return err(
                "reserved_slots",
                format!(
                    "{} leaves no worker for normal and low priority work (max_workers is {})",
                    self.reserved_slots, self.max_workers
                ),
            );
        }
        if let Some(n) = self.nice {
            if !(-20..=19).contains(&n) {
                return err("os_nice", format!("{n} is not a nice value (-20 to 19)"));
            }
        }
        if self.starvation_limit == 0 {
            return err("starvation_limit", "must be at least 1".into());
        }
        if let Some(w) = self.watermark {
            if w.high == 0 {
                return err(
                    "memory_watermark",
                    "high must be more than zero bytes".into(),
                );
            }
            if w.low >= w.high {
                return err(
                    "memory_watermark",
                    format!("low ({}) must be below high ({})", w.low, w.high),
                );
            }
        }
        if self.memory_budget == Some(0) {
            return err(
                "memory_budget",
                "must be more than zero bytes, or None for no budget".into(),
            );
        }
        if self.memory_sample_interval.is_zero() {
            return err("memory_sample_interval", "must be more than zero".into());
        }
        if self.utilisation_window.is_zero() {
            return err("utilisation_window", "must be more than zero".into());
        }
        if self.restart_window.is_zero() && self.max_restarts > 0 {
            return err(
                "restart_window",
                "must be more than zero when restarts are allowed".into(),
            );
        }
        Ok(())
    }
}
