//! The analysis pool: the seed's `AnalysisWorkerPool`, made generic. The
//! application brings the analysis closures; tierpool brings scheduling,
//! caching, de-duplication, retries and scaling.
//!
//! It is a configuration of the one pool engine (the `analysis` tier:
//! 1–8 workers scaled with demand, 100 queued at most), plus:
//!
//! - a **result cache** (`cache.rs`) keyed by the cache key, with a TTL on
//!   the runtime's clock and a size bound; failures are never cached;
//! - **in-flight de-duplication**: requests for a key that is being
//!   computed join that computation (one run, every handle gets the
//!   outcome);
//! - **retries** per [`RetryPolicy`]: a failed run is handed back to the
//!   engine with its backoff (`RunEnd::RetryAfter`), freeing the worker
//!   while it waits; the watchdog's timer queues it again;
//! - **CPU batches** on the runtime's dedicated rayon pool (`batch.rs`).
//!
//! # Invariants
//!
//! 1. At most one computation per cache key is in flight: the in-flight map
//!    is checked and filled under one lock, with the (non-blocking) submit
//!    inside it, so a joiner never holds a handle to work that was not
//!    accepted.
//! 2. Every handle of a computation sees the same outcome: the outcome
//!    slot is settled once and read by clone.
//! 3. Only successes are cached, and only by the run that settled the
//!    outcome (a late result after a timeout is dropped, not cached).

mod batch;
mod cache;
mod stats;

pub use batch::{CpuBatchBuilder, CpuBatchHandle};
pub use stats::{AnalysisStats, KindStats};

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::error::{SubmitError, TaskError};
use crate::priority::Priority;
use crate::resilience::{RetryDecision, RetryPolicy, SeedRng};
use crate::slot::{Slot, TaskResult};
use crate::sync::{Arc, AtomicU32, Mutex, Ordering};
use crate::task::{
    panic_message, Body, RunEnd, TaskContext, TaskCore, TaskId, TaskStatus, TypedCore,
};
use crate::telemetry::TierCounters;
use crate::tier::Tier;
use cache::{Lookup, ResultCache};
use stats::KindCounters;

/// Settings of the analysis layer beyond its tier.
#[derive(Clone, Debug)]
pub(crate) struct AnalysisConfig {
    pub(crate) cache_capacity: usize,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) cpu_threads: usize,
    pub(crate) retry: RetryPolicy,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            cache_capacity: 10_000,
            default_ttl: Some(Duration::from_secs(300)),
            cpu_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            retry: RetryPolicy::default(),
        }
    }
}

struct InFlight {
    /// A `TypedCore<T, E>`, for joiners of the same types.
    typed: Box<dyn Any + Send + Sync>,
    core: Arc<TaskCore>,
    attempts: Arc<AtomicU32>,
}

/// The analysis pool; get it from [`Runtime::analysis`](crate::Runtime::analysis).
///
/// ```
/// use tierpool::Runtime;
/// let rt = Runtime::builder().build()?;
/// let intel = rt.analysis().analyze("character_intel", "42", |_ctx| {
///     Ok::<_, String>("dangerous".to_string())
/// })?;
/// assert_eq!(intel.join().unwrap(), "dangerous");
/// // A second request is a cache hit: the closure does not run again.
/// let again = rt.analysis().analyze("character_intel", "42", |_ctx| Ok::<_, String>("x".to_string()))?;
/// assert!(again.was_cached());
/// assert_eq!(again.join().unwrap(), "dangerous");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Analysis {
    tier: Tier,
    cache: Arc<ResultCache>,
    inflight: Arc<Mutex<HashMap<String, InFlight>>>,
    kinds: Mutex<HashMap<String, Arc<KindCounters>>>,
    config: AnalysisConfig,
    cpu: Mutex<Option<Arc<rayon::ThreadPool>>>,
    clock: Clock,
    seed: AtomicU32,
    /// Outcome counters of batch slots (one shared set: a batch's items
    /// are counted per kind, not per tier).
    batch_counters: Arc<TierCounters>,
}

impl Analysis {
    pub(crate) fn new(tier: Tier, config: AnalysisConfig, clock: Clock) -> std::io::Result<Self> {
        let cpu = rayon::ThreadPoolBuilder::new()
            .num_threads(config.cpu_threads)
            .thread_name(|i| format!("tierpool-cpu-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Analysis {
            cache: Arc::new(ResultCache::new(config.cache_capacity, clock.clone())),
            tier,
            inflight: Arc::new(Mutex::new(HashMap::new())),
            kinds: Mutex::new(HashMap::new()),
            config,
            cpu: Mutex::new(Some(Arc::new(cpu))),
            clock,
            seed: AtomicU32::new(1),
            batch_counters: Arc::new(TierCounters::new()),
        })
    }

    /// The engine tier the analyses run on (named `analysis`).
    pub fn tier(&self) -> &Tier {
        &self.tier
    }

    /// Runs analysis `kind` for `key` with the defaults: normal priority,
    /// cache key `"{kind}:{key}"`, the configured TTL and retry policy.
    /// A fresh cached result returns at once without queueing.
    pub fn analyze<T, E, F>(
        &self,
        kind: &str,
        key: impl fmt::Display,
        f: F,
    ) -> Result<AnalysisHandle<T, E>, SubmitError<F>>
    where
        F: Fn(&TaskContext) -> Result<T, E> + Send + Sync + 'static,
        T: Clone + Send + Sync + 'static,
        E: Clone + Send + 'static,
    {
        self.request(kind, key, f).submit()
    }

    /// Starts a request with options: priority, cache key, TTL, timeout,
    /// retry policy.
    pub fn request<F, T, E>(
        &self,
        kind: &str,
        key: impl fmt::Display,
        f: F,
    ) -> AnalysisRequest<'_, F>
    where
        // Stated here so closures get the higher-ranked signature inferred.
        F: Fn(&TaskContext) -> Result<T, E> + Send + Sync + 'static,
    {
        AnalysisRequest {
            analysis: self,
            kind: kind.to_string(),
            cache_key: Some(format!("{kind}:{key}")),
            f,
            priority: Priority::Normal,
            ttl: self.config.default_ttl,
            timeout: None,
            retry: self.config.retry.clone(),
        }
    }

    /// Removes one cached result; `true` if there was one.
    pub fn invalidate(&self, cache_key: &str) -> bool {
        self.cache.invalidate(cache_key)
    }

    /// Removes every cached result.
    pub fn clear(&self) {
        self.cache.clear();
    }

    /// Per-kind numbers, the cache size and the pool's scaling.
    pub fn stats(&self) -> AnalysisStats {
        let mut kinds: Vec<KindStats> = self
            .kinds
            .lock()
            .iter()
            .map(|(k, c)| c.snapshot(k))
            .collect();
        kinds.sort_by(|a, b| a.kind.cmp(&b.kind));
        let t = self.tier.stats();
        AnalysisStats {
            kinds,
            cache_entries: self.cache.len(),
            in_flight_keys: self.inflight.lock().len(),
            workers: t.workers,
            min_workers: t.workers_range.0,
            max_workers: t.workers_range.1,
            scale_ups: t.scale_ups,
            scale_downs: t.scale_downs,
        }
    }

    fn kind(&self, kind: &str) -> Arc<KindCounters> {
        self.kinds
            .lock()
            .entry(kind.to_string())
            .or_insert_with(|| Arc::new(KindCounters::new()))
            .clone()
    }

    fn next_seed(&self) -> u64 {
        u64::from(self.seed.fetch_add(1, Ordering::Relaxed)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// Stops the CPU pool (its threads exit once idle; rayon does not join
    /// them).
    pub(crate) fn shutdown(&self) {
        self.cpu.lock().take();
    }

    fn cpu_pool(&self) -> Option<Arc<rayon::ThreadPool>> {
        self.cpu.lock().clone()
    }
}

impl fmt::Debug for Analysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Analysis").finish_non_exhaustive()
    }
}

/// One analysis request's options; see [`Analysis::request`].
///
/// ```
/// use std::time::Duration;
/// use tierpool::{Priority, RetryPolicy, Runtime};
/// let rt = Runtime::builder().build()?;
/// let h = rt.analysis()
///     .request("character_intel", 42, |_ctx| Ok::<_, String>(7u32))
///     .priority(Priority::High)
///     .cache_key("intel:42")
///     .ttl(Duration::from_secs(60))
///     .timeout(Duration::from_secs(5))
///     .retry(RetryPolicy::builder().max_attempts(3).build()?)
///     .submit()?;
/// assert_eq!(h.join().unwrap(), 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a request does nothing until submitted"]
pub struct AnalysisRequest<'a, F> {
    analysis: &'a Analysis,
    kind: String,
    cache_key: Option<String>,
    f: F,
    priority: Priority,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    retry: RetryPolicy,
}

impl<F> AnalysisRequest<'_, F> {
    /// Priority in the analysis queue (default normal).
    pub fn priority(mut self, p: Priority) -> Self {
        self.priority = p;
        self
    }

    /// The key results are cached and de-duplicated under (default
    /// `"{kind}:{key}"`).
    pub fn cache_key(mut self, key: impl Into<String>) -> Self {
        self.cache_key = Some(key.into());
        self
    }

    /// Neither cache nor de-duplicate this request.
    pub fn no_cache(mut self) -> Self {
        self.cache_key = None;
        self
    }

    /// How long a result stays fresh (default 5 min).
    pub fn ttl(mut self, d: Duration) -> Self {
        self.ttl = Some(d);
        self
    }

    /// Timeout of each attempt.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Retry policy for failed runs (default: 3 attempts, 500 ms
    /// exponential backoff with jitter).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Serves from the cache, joins an identical computation in flight, or
    /// queues a new one. Never blocks; a rejection hands the closure back.
    pub fn submit<T, E>(self) -> Result<AnalysisHandle<T, E>, SubmitError<F>>
    where
        F: Fn(&TaskContext) -> Result<T, E> + Send + Sync + 'static,
        T: Clone + Send + Sync + 'static,
        E: Clone + Send + 'static,
    {
        let a = self.analysis;
        let kind = a.kind(&self.kind);
        kind.requested();
        let clock = a.clock.clone();
        let Some(key) = self.cache_key.clone() else {
            kind.missed();
            return self.start(kind, None, None);
        };
        // Invariant 1 and the cache check happen under the in-flight lock,
        // so a result cached by a computation finishing right now is seen.
        let mut inflight = a.inflight.lock();
        if let Lookup::Fresh(v) = a.cache.get::<T>(&key) {
            kind.hit();
            return Ok(AnalysisHandle {
                state: HandleState::Ready(Ok(v)),
                attempts: Arc::new(AtomicU32::new(0)),
                source: Source::Cache,
                clock,
            });
        }
        if let Some(entry) = inflight.get(&key) {
            if entry.core.slot.outcome().is_none() {
                if let Some(typed) = entry.typed.downcast_ref::<TypedCore<T, E>>() {
                    kind.joined();
                    return Ok(AnalysisHandle {
                        state: HandleState::Shared {
                            typed: typed.clone(),
                            core: entry.core.clone(),
                        },
                        attempts: entry.attempts.clone(),
                        source: Source::Joined,
                        clock,
                    });
                }
            }
            // Settled (timed out, cancelled) or another type: start afresh.
            inflight.remove(&key);
        }
        kind.missed();
        let cache_key = key.clone();
        self.start(kind, Some(cache_key), Some((&mut inflight, key)))
    }

    fn start<T, E>(
        self,
        kind: Arc<KindCounters>,
        cache_key: Option<String>,
        register: Option<(&mut HashMap<String, InFlight>, String)>,
    ) -> Result<AnalysisHandle<T, E>, SubmitError<F>>
    where
        F: Fn(&TaskContext) -> Result<T, E> + Send + Sync + 'static,
        T: Clone + Send + Sync + 'static,
        E: Clone + Send + 'static,
    {
        let a = self.analysis;
        let attempts = Arc::new(AtomicU32::new(0));
        let run = Run {
            f: None,
            retry: self.retry,
            rng: SeedRng::new(a.next_seed()),
            attempts: attempts.clone(),
            cache: a.cache.clone(),
            cache_key,
            ttl: self.ttl,
            kind: kind.clone(),
            inflight: a.inflight.clone(),
        };
        let mut opts = a.tier.default_options(self.priority);
        if self.timeout.is_some() {
            opts.timeout = self.timeout;
        }
        let pool = &a.tier.pool;
        let submitted = pool.submit(opts, self.f, move |f| run.into_body::<T, E>(f));
        let (core, typed) = match submitted {
            Ok(h) => h.into_parts(),
            Err(e) => {
                kind.rejected();
                pool.counters.rejected(e.reason());
                return Err(e);
            }
        };
        if let Some((map, key)) = register {
            map.insert(
                key,
                InFlight {
                    typed: Box::new(typed.clone()),
                    core: core.clone(),
                    attempts: attempts.clone(),
                },
            );
        }
        Ok(AnalysisHandle {
            state: HandleState::Shared { typed, core },
            attempts,
            source: Source::Computed,
            clock: a.clock.clone(),
        })
    }
}

/// The state one analysis computation carries across its attempts.
struct Run<F> {
    f: Option<F>,
    retry: RetryPolicy,
    rng: SeedRng,
    attempts: Arc<AtomicU32>,
    cache: Arc<ResultCache>,
    cache_key: Option<String>,
    ttl: Option<Duration>,
    kind: Arc<KindCounters>,
    inflight: Arc<Mutex<HashMap<String, InFlight>>>,
}

impl<F: Send + 'static> Run<F> {
    fn into_body<T, E>(mut self, f: F) -> impl Body<T, E>
    where
        F: Fn(&TaskContext) -> Result<T, E> + Send + Sync + 'static,
        T: Clone + Send + Sync + 'static,
        E: Clone + Send + 'static,
    {
        self.f = Some(f);
        move |ctx: &TaskContext, slot: &Slot<T, E>| self.attempt(ctx, slot)
    }

    fn attempt<T, E>(&mut self, ctx: &TaskContext, slot: &Slot<T, E>) -> RunEnd
    where
        F: Fn(&TaskContext) -> Result<T, E>,
        T: Clone + Send + Sync + 'static,
        E: Clone + Send + 'static,
    {
        let Some(f) = &self.f else {
            return RunEnd::Late;
        };
        let n = self.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        let start = ctx.clock().now();
        if n == 1 {
            self.kind
                .queue_wait
                .record(start.saturating_duration_since(ctx.submitted_at()));
        }
        let r = catch_unwind(AssertUnwindSafe(|| f(ctx)));
        self.kind
            .run_time
            .record(ctx.clock().now().saturating_duration_since(start));
        self.kind.computed();
        let counters = &ctx.core().counters;
        let outcome: TaskResult<T, E> = match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if !ctx.is_cancelled() => match self.retry.decide(n, &e, &mut self.rng) {
                RetryDecision::RetryAfter(d) if ctx.can_retry() => {
                    self.kind.retried();
                    return RunEnd::RetryAfter(d);
                }
                _ => {
                    if n > 1 {
                        self.kind.failed_after_retries();
                    }
                    Err(TaskError::Failed(e))
                }
            },
            Ok(Err(e)) => Err(TaskError::Failed(e)),
            Err(p) => Err(TaskError::Panicked(panic_message(&*p))),
        };
        if self.conclude(slot, outcome, counters) {
            RunEnd::Settled
        } else {
            RunEnd::Late
        }
    }

    /// Settles the computation, caches a success (invariant 3) and leaves
    /// the in-flight map — all under the in-flight lock, so a request
    /// arriving meanwhile sees either the computation in flight or its
    /// cached result, never a gap in which it would start a second one.
    fn conclude<T, E>(
        &self,
        slot: &Slot<T, E>,
        outcome: TaskResult<T, E>,
        counters: &TierCounters,
    ) -> bool
    where
        T: Clone + Send + Sync + 'static,
    {
        let Some(key) = &self.cache_key else {
            return slot.settle(outcome, counters).is_ok();
        };
        let mut map = self.inflight.lock();
        let value = outcome.as_ref().ok().cloned();
        let won = slot.settle(outcome, counters).is_ok();
        if let (true, Some(v)) = (won, value) {
            self.cache.insert(key.clone(), v, self.ttl);
        }
        if map
            .get(key)
            .is_some_and(|e| Arc::ptr_eq(&e.attempts, &self.attempts))
        {
            map.remove(key);
        }
        won
    }
}

/// Where a handle's outcome comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A fresh cached result: nothing was queued.
    Cache,
    /// This request started the computation.
    Computed,
    /// This request joined an identical computation already in flight.
    Joined,
}

enum HandleState<T, E> {
    /// A cache hit.
    Ready(TaskResult<T, E>),
    Shared {
        typed: TypedCore<T, E>,
        core: Arc<TaskCore>,
    },
}

/// The handle of one analysis request: like [`TaskHandle`](crate::TaskHandle),
/// plus where the result came from and how many attempts it took. Several
/// handles may share one computation; each gets (a clone of) its outcome.
pub struct AnalysisHandle<T, E> {
    state: HandleState<T, E>,
    attempts: Arc<AtomicU32>,
    source: Source,
    clock: Clock,
}

impl<T: Clone, E: Clone> AnalysisHandle<T, E> {
    /// Waits for the outcome (by the attempt's deadline, with a timeout).
    pub fn join(self) -> TaskResult<T, E> {
        match self.state {
            HandleState::Ready(r) => r,
            HandleState::Shared { typed, .. } => loop {
                if let Some(r) = typed.slot.slot().clone_until(&self.clock, None) {
                    return r;
                }
            },
        }
    }

    /// Waits up to `d`; hands the handle back if there is no outcome yet.
    pub fn join_timeout(self, d: Duration) -> Result<TaskResult<T, E>, Self> {
        let deadline = self.clock.deadline_after(d);
        self.wait_until(deadline)
    }

    /// The outcome if it is there, without waiting.
    pub fn try_result(self) -> Result<TaskResult<T, E>, Self> {
        let now = self.clock.now();
        self.wait_until(Some(now))
    }

    fn wait_until(self, deadline: Option<Instant>) -> Result<TaskResult<T, E>, Self> {
        match &self.state {
            HandleState::Ready(_) => Ok(self.join()),
            HandleState::Shared { typed, .. } => {
                match typed.slot.slot().clone_until(&self.clock, deadline) {
                    Some(r) => Ok(r),
                    None => Err(self),
                }
            }
        }
    }
}

impl<T, E> AnalysisHandle<T, E> {
    /// Where the outcome comes from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// Whether this was served from the cache.
    pub fn was_cached(&self) -> bool {
        self.source == Source::Cache
    }

    /// Attempts made so far (0 for a cache hit).
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Acquire)
    }

    /// The underlying task's id (`None` for a cache hit).
    pub fn id(&self) -> Option<TaskId> {
        match &self.state {
            HandleState::Ready(_) => None,
            HandleState::Shared { core, .. } => Some(core.id),
        }
    }

    /// Where the computation is, or how it ended.
    pub fn status(&self) -> TaskStatus {
        match &self.state {
            HandleState::Ready(_) => TaskStatus::Completed,
            HandleState::Shared { core, .. } => core.status(),
        }
    }

    /// Cancels the computation — for every handle sharing it. `true` if
    /// this call cancelled it.
    pub fn cancel(&self) -> bool {
        match &self.state {
            HandleState::Ready(_) => false,
            HandleState::Shared { core, .. } => core.cancel(crate::CancelReason::Caller),
        }
    }
}

impl<T, E> fmt::Debug for AnalysisHandle<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnalysisHandle")
            .field("id", &self.id())
            .field("source", &self.source)
            .field("attempts", &self.attempts())
            .finish()
    }
}
