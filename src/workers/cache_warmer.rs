//! Cache warming: scheduled cycles that collect keys from the application
//! and warm them in batches, backing off while the tier is busy.

use std::fmt;
use std::time::Duration;

use crate::batch::{BatchProcessor, BatchProcessorBuilder, BatchReport, BatchStats, ItemContext};
use crate::error::{BuildError, ConfigError};
use crate::priority::Priority;
use crate::resilience::RetryPolicy;
use crate::schedule::{JobContext, JobId, JobStats, LoadRule, Scheduler};
use crate::sync::{Arc, Weak};
use crate::tier::Tier;

type KeySource<K> = Arc<dyn Fn() -> Vec<K> + Send + Sync>;

/// Warms a cache on a schedule: every cycle asks the application for keys
/// and hands them to a batch processor that calls the warm function once
/// per key. Critical keys have their own, shorter cycle and go to the
/// front of the queue.
///
/// Defaults (the seed's): regular keys every 15 min, critical every 5 min,
/// batches of 50, at most 3 at once, and load-aware — a cycle is skipped
/// (and recorded as skipped, with the utilisation) while the tier is more
/// than 80 % busy.
///
/// # Invariants
///
/// 1. A cycle only enqueues; warming happens in batches on the tier, never
///    on the scheduler's timer thread.
/// 2. A cycle never overlaps itself (the scheduler's rule), and a key the
///    queue has no room for makes the cycle fail (visible in its job
///    stats), it is not dropped silently.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{CacheWarmer, Runtime};
///
/// let rt = Runtime::builder().build()?;
/// let warmer = CacheWarmer::builder(rt.background(), |key: &String, ctx| {
///     // fetch and store `key` …, giving up if the run is cancelled
///     ctx.checkpoint().map_err(|c| c.to_string())?;
///     Ok::<_, String>(())
/// })
/// .regular_keys(|| vec!["top-killers".to_string(), "recent-fights".to_string()])
/// .critical_keys(|| vec!["home-system".to_string()])
/// .build()?;
/// warmer.warm_critical_now();
/// let report = warmer.shutdown(Duration::from_secs(5));
/// # let _ = report;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CacheWarmer<K: Send + 'static> {
    core: Arc<WarmerCore<K>>,
}

/// The warmer's parts, shared (weakly) with the runtime's registry.
struct WarmerCore<K: Send + 'static> {
    /// Its own timer, or a handle on the runtime's (see
    /// [`CacheWarmerBuilder::scheduler`]).
    scheduler: Scheduler,
    batches: Arc<BatchProcessor<K>>,
    regular: Option<JobId>,
    critical: Option<JobId>,
}

impl<K: Send + 'static> WarmerCore<K> {
    fn jobs(&self) -> impl Iterator<Item = JobId> + '_ {
        self.regular.iter().chain(&self.critical).copied()
    }

    /// Stops the cycles: its own timer is shut down; on a shared one its
    /// jobs are paused (their stats stay readable).
    fn stop_cycles(&self) {
        if self.scheduler.owns_timer() {
            self.scheduler.shutdown();
        } else {
            for id in self.jobs() {
                self.scheduler.pause(id);
            }
        }
    }
}

impl<K: Send + 'static> Drop for WarmerCore<K> {
    fn drop(&mut self) {
        // A shared timer outlives us: take our jobs off it.
        if !self.scheduler.owns_timer() {
            for id in self.regular.iter().chain(&self.critical) {
                self.scheduler.remove(*id);
            }
        }
    }
}

impl<K: Send + 'static> crate::supervisor::Component for WarmerCore<K> {
    fn health(&self) -> Vec<crate::health::HealthReason> {
        let jobs = crate::schedule::SchedulerStats {
            jobs: self
                .jobs()
                .filter_map(|id| self.scheduler.job_stats(id))
                .collect(),
        };
        let mut reasons = crate::schedule::degraded_reasons(&jobs);
        reasons.extend(self.batches.component().health());
        reasons
    }

    fn shutdown_for_runtime(&self, grace: Duration) -> crate::supervisor::WorkerCounts {
        self.stop_cycles();
        self.batches.component().shutdown_for_runtime(grace)
    }
}

impl<K: Send + 'static> crate::supervisor::Sealed for CacheWarmer<K> {
    fn registration(&self) -> crate::supervisor::Registration {
        let weak: crate::sync::Weak<dyn crate::supervisor::Component> =
            Arc::downgrade(&self.core) as _;
        crate::supervisor::Registration::worker(weak)
    }
}
impl<K: Send + 'static> crate::supervisor::Supervise for CacheWarmer<K> {}

/// A [`CacheWarmer`]'s numbers: each cycle's job stats and the batches'.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CacheWarmerStats {
    /// The regular cycle (if configured).
    pub regular: Option<JobStats>,
    /// The critical cycle (if configured).
    pub critical: Option<JobStats>,
    /// The warm calls.
    pub batches: BatchStats,
}

/// Builds a [`CacheWarmer`].
///
/// ```
/// use tierpool::{CacheWarmer, Runtime};
/// let rt = Runtime::builder().build()?;
/// let err = CacheWarmer::builder(rt.background(), |_: &u32, _| Ok::<_, String>(()))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.as_config().unwrap().field(), "keys");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct CacheWarmerBuilder<K: Send + 'static> {
    tier: Tier,
    batches: BatchProcessorBuilder<K>,
    regular: Option<KeySource<K>>,
    critical: Option<KeySource<K>>,
    regular_interval: Duration,
    critical_interval: Duration,
    load: Option<LoadRule>,
    seed: Option<u64>,
    scheduler: Option<Scheduler>,
}

impl<K: Send + 'static> CacheWarmer<K> {
    /// A builder whose cycles and batches run on `tier`, warming each key
    /// with `warm`. Like a [`ReEnricher`](crate::ReEnricher)'s function it
    /// gets the item's context: the attempt, and the running task's context
    /// (`ctx.task()`) for cancellation checks and cancellable sleeps.
    pub fn builder<E, F>(tier: &Tier, warm: F) -> CacheWarmerBuilder<K>
    where
        F: Fn(&K, &ItemContext<'_>) -> Result<(), E> + Send + Sync + 'static,
        E: fmt::Display + 'static,
    {
        let batches = BatchProcessor::builder(tier, warm)
            .batch_size(50)
            .max_concurrent_batches(3);
        CacheWarmerBuilder {
            tier: tier.clone(),
            batches,
            regular: None,
            critical: None,
            regular_interval: Duration::from_secs(15 * 60),
            critical_interval: Duration::from_secs(5 * 60),
            load: Some(LoadRule::skip_above(0.8)),
            seed: None,
            scheduler: None,
        }
    }

    /// Runs the regular cycle now (off the grid, ignoring the load rule).
    /// `false` if there is no regular cycle.
    pub fn warm_now(&self) -> bool {
        let c = &self.core;
        c.regular.is_some_and(|id| c.scheduler.trigger(id))
    }

    /// Runs the critical cycle now. `false` if there is no critical cycle.
    pub fn warm_critical_now(&self) -> bool {
        let c = &self.core;
        c.critical.is_some_and(|id| c.scheduler.trigger(id))
    }

    /// Pauses both cycles (batches already queued still run).
    pub fn pause(&self) {
        for id in self.core.jobs() {
            self.core.scheduler.pause(id);
        }
    }

    /// Resumes both cycles on their grids.
    pub fn resume(&self) {
        for id in self.core.jobs() {
            self.core.scheduler.resume(id);
        }
    }

    /// The numbers now.
    pub fn stats(&self) -> CacheWarmerStats {
        let c = &self.core;
        CacheWarmerStats {
            regular: c.regular.and_then(|id| c.scheduler.job_stats(id)),
            critical: c.critical.and_then(|id| c.scheduler.job_stats(id)),
            batches: c.batches.stats(),
        }
    }

    /// The batch processor doing the warm calls (dead letters, stats).
    pub fn batches(&self) -> &BatchProcessor<K> {
        &self.core.batches
    }

    /// Stops the cycles, then the batches (see
    /// [`BatchProcessor::shutdown`]); returns the keys not warmed. On the
    /// runtime's scheduler the cycles are paused, not the timer.
    pub fn shutdown(&self, grace: Duration) -> BatchReport<K> {
        self.core.stop_cycles();
        self.core.batches.shutdown(grace)
    }
}

impl<K: Send + 'static> fmt::Debug for CacheWarmer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheWarmer")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<K: Send + 'static> CacheWarmerBuilder<K> {
    /// Where the regular cycle's keys come from (called once per cycle).
    pub fn regular_keys(mut self, f: impl Fn() -> Vec<K> + Send + Sync + 'static) -> Self {
        self.regular = Some(Arc::new(f));
        self
    }

    /// Where the critical cycle's keys come from; they are warmed at high
    /// priority.
    pub fn critical_keys(mut self, f: impl Fn() -> Vec<K> + Send + Sync + 'static) -> Self {
        self.critical = Some(Arc::new(f));
        self
    }

    /// The regular cycle's interval (default 15 min).
    pub fn regular_interval(mut self, d: Duration) -> Self {
        self.regular_interval = d;
        self
    }

    /// The critical cycle's interval (default 5 min).
    pub fn critical_interval(mut self, d: Duration) -> Self {
        self.critical_interval = d;
        self
    }

    /// Keys per batch (default 50).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batches = self.batches.batch_size(n);
        self
    }

    /// Batches at once (default 3).
    pub fn max_concurrent_batches(mut self, n: usize) -> Self {
        self.batches = self.batches.max_concurrent_batches(n);
        self
    }

    /// The load rule for both cycles (default skip above 80 %); with
    /// [`LoadRule::shrink_above`] a busy cycle warms only that fraction of
    /// its keys.
    pub fn load_rule(mut self, rule: LoadRule) -> Self {
        self.load = Some(rule);
        self
    }

    /// Cycles run whatever the load.
    pub fn not_load_aware(mut self) -> Self {
        self.load = None;
        self
    }

    /// Retry policy for warm calls (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.batches = self.batches.retry(policy);
        self
    }

    /// Runs the cycles on `scheduler` (normally the runtime's,
    /// [`Runtime::scheduler`](crate::Runtime::scheduler)) instead of
    /// starting a timer thread of its own. Its seed then governs the
    /// cycles' jitter.
    ///
    /// ```
    /// use tierpool::{CacheWarmer, Runtime};
    /// let rt = Runtime::builder().build()?;
    /// let warmer = CacheWarmer::builder(rt.background(), |_: &u32, _| Ok::<_, String>(()))
    ///     .regular_keys(|| vec![1, 2, 3])
    ///     .scheduler(rt.scheduler())
    ///     .build()?;
    /// assert_eq!(rt.scheduler().stats().jobs.len(), 1);
    /// rt.register("cache-warmer", &warmer);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn scheduler(mut self, scheduler: &Scheduler) -> Self {
        self.scheduler = Some(scheduler.shared_handle());
        self
    }

    /// Seeds the schedule's and the retries' jitter.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self.batches = self.batches.seed(seed);
        self
    }

    /// Validates and starts. Errors name the field: `keys` (no key source
    /// at all), or one of the scheduler's or batch processor's.
    pub fn build(self) -> Result<CacheWarmer<K>, BuildError> {
        if self.regular.is_none() && self.critical.is_none() {
            return Err(
                ConfigError::new("keys", "give regular_keys, critical_keys or both").into(),
            );
        }
        let batches = Arc::new(self.batches.build()?);
        let scheduler = match self.scheduler {
            Some(shared) => shared,
            None => {
                let mut sb = Scheduler::builder(&self.tier);
                if let Some(seed) = self.seed {
                    sb = sb.seed(seed);
                }
                sb.build()?
            }
        };
        let add = |name: &str,
                   interval: Duration,
                   source: Option<KeySource<K>>,
                   priority: Priority|
         -> Result<Option<JobId>, ConfigError> {
            let Some(source) = source else {
                return Ok(None);
            };
            let mut job = scheduler.every(interval).name(name).tier(&self.tier);
            if let Some(rule) = self.load {
                job = job.load_aware(rule);
            }
            let target = Arc::downgrade(&batches);
            job.start(move |ctx| warm_cycle(ctx, &*source, &target, priority))
                .map(Some)
                .map_err(|e| ConfigError::new(format!("{name}.{}", e.field()), e.reason()))
        };
        let regular = add(
            "regular",
            self.regular_interval,
            self.regular.clone(),
            Priority::Normal,
        )?;
        let critical = add(
            "critical",
            self.critical_interval,
            self.critical.clone(),
            Priority::High,
        )?;
        Ok(CacheWarmer {
            core: Arc::new(WarmerCore {
                scheduler,
                batches,
                regular,
                critical,
            }),
        })
    }
}

/// One cycle: collect keys, keep the load rule's share, queue them.
fn warm_cycle<K: Send + 'static>(
    ctx: &JobContext<'_>,
    source: &(dyn Fn() -> Vec<K> + Send + Sync),
    target: &Weak<BatchProcessor<K>>,
    priority: Priority,
) -> Result<(), String> {
    let Some(batches) = target.upgrade() else {
        return Err("cache warmer is shutting down".into());
    };
    let mut keys = source();
    if ctx.scale() < 1.0 {
        let keep = (keys.len() as f64 * ctx.scale()).ceil() as usize;
        keys.truncate(keep);
    }
    let queued = batches.enqueue_all(keys, priority);
    batches.process_now();
    queued.map_err(|e| format!("{} keys not queued: {e}", e.items.len()))
}
