//! The runtime: owns every tier and the watchdog, builds them from one
//! validated configuration, reports stats, and shuts everything down
//! together with an accounted drain report.
//!
//! # Shutdown, step by step (see `pool/shutdown.rs` for the invariants)
//!
//! 1. Every tier stops admitting (`ShuttingDown`) and keeps running what is
//!    queued, until all are drained or the grace period ends.
//! 2. Every tier stops taking work; what is still queued is cancelled
//!    (reason: shutdown) and listed as never started; what still runs is
//!    cancelled.
//! 3. Workers get the tier's cancel grace to return; whoever is still inside
//!    a task then is a zombie: reported and detached, never waited on
//!    forever. Every other thread is joined, the watchdog last.
//!
//! A second `shutdown`, or the `Drop` after an explicit one, returns the
//! first report and does nothing else.

use std::fmt;
use std::time::{Duration, Instant};

use crate::analysis::{Analysis, AnalysisConfig};
use crate::clock::Clock;
use crate::error::{BuildError, ConfigError};
use crate::health::{ComponentHealth, Health, HealthReason};
use crate::memory::{process_rss, MemoryProbe};
use crate::pool::config::TierConfig;
use crate::pool::config::MAX_WORKERS_LIMIT;
use crate::pool::{PoolShared, StopOutcome};
use crate::resilience::RetryPolicy;
use crate::schedule::Scheduler;
use crate::stats::Stats;
use crate::supervisor::{
    forward_breaker_events, Held, Registry, RestartError, RestartReport, Supervise,
};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};
use crate::task::TaskId;
use crate::telemetry::{Event, EventBus, DEFAULT_EVENT_CAPACITY};
use crate::tier::Tier;
use crate::watchdog::Watchdog;

/// Under a manual clock nobody may be advancing time during shutdown, so
/// each waiting phase also ends after this much real time (a test cannot
/// hang on it).
const MANUAL_CLOCK_REAL_CAP: Duration = Duration::from_secs(10);

/// Builds a [`Runtime`]; defaults are the seed's numbers (see the README's
/// tier table).
///
/// ```
/// use std::time::Duration;
/// use tierpool::Runtime;
/// let rt = Runtime::builder()
///     .ui(|t| t.per_user_limit(20).timeout(Duration::from_secs(30)))
///     .background(|t| t.max_workers(2))
///     .build()?;
/// # drop(rt);
/// # Ok::<(), tierpool::BuildError>(())
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct RuntimeBuilder {
    ui: TierConfig,
    background: TierConfig,
    realtime: TierConfig,
    analysis_tier: TierConfig,
    analysis: AnalysisConfig,
    clock: Clock,
    probe: Option<MemoryProbe>,
    drop_grace: Duration,
    event_capacity: usize,
}

impl RuntimeBuilder {
    fn new() -> Self {
        RuntimeBuilder {
            ui: TierConfig::ui(),
            background: TierConfig::background(),
            realtime: TierConfig::realtime(),
            analysis_tier: TierConfig::analysis(),
            analysis: AnalysisConfig::default(),
            clock: Clock::system(),
            probe: None,
            drop_grace: Duration::from_secs(5),
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// Adjusts the ui tier.
    pub fn ui(mut self, f: impl FnOnce(TierConfig) -> TierConfig) -> Self {
        self.ui = f(self.ui);
        self
    }

    /// Adjusts the background tier.
    pub fn background(mut self, f: impl FnOnce(TierConfig) -> TierConfig) -> Self {
        self.background = f(self.background);
        self
    }

    /// Adjusts the realtime tier.
    pub fn realtime(mut self, f: impl FnOnce(TierConfig) -> TierConfig) -> Self {
        self.realtime = f(self.realtime);
        self
    }

    /// Adjusts the analysis pool's tier (workers 1–8, 100 queued).
    pub fn analysis(mut self, f: impl FnOnce(TierConfig) -> TierConfig) -> Self {
        self.analysis_tier = f(self.analysis_tier);
        self
    }

    /// The analysis result cache: at most `capacity` entries, each fresh for
    /// `ttl` by default (`None`: until evicted or invalidated).
    pub fn analysis_cache(mut self, capacity: usize, ttl: Option<Duration>) -> Self {
        self.analysis.cache_capacity = capacity;
        self.analysis.default_ttl = ttl;
        self
    }

    /// The default retry policy of analysis requests.
    pub fn analysis_retry(mut self, policy: RetryPolicy) -> Self {
        self.analysis.retry = policy;
        self
    }

    /// Threads of the CPU pool for batches (default: the number of cores).
    pub fn cpu_threads(mut self, n: usize) -> Self {
        self.analysis.cpu_threads = n;
        self
    }

    /// The clock everything uses (a [`ManualClock`](crate::ManualClock) in
    /// tests).
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Where resident-memory readings come from (default: the process RSS).
    pub fn memory_probe(mut self, probe: impl Fn() -> Option<u64> + Send + Sync + 'static) -> Self {
        self.probe = Some(Arc::new(probe));
        self
    }

    /// The grace `Drop` gives running work when the runtime was not shut
    /// down explicitly (default 5 s).
    pub fn drop_grace(mut self, d: Duration) -> Self {
        self.drop_grace = d;
        self
    }

    /// Events buffered for listeners (default 4096); when listeners fall
    /// further behind, new events are dropped and counted in
    /// [`Stats::events_dropped`].
    ///
    /// ```
    /// let rt = tierpool::Runtime::builder().event_capacity(64).build()?;
    /// assert_eq!(rt.stats().events_dropped, 0);
    /// # Ok::<(), tierpool::BuildError>(())
    /// ```
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// Validates everything and starts the threads. The error names the
    /// first bad field.
    pub fn build(self) -> Result<Runtime, BuildError> {
        for cfg in [
            &self.ui,
            &self.background,
            &self.realtime,
            &self.analysis_tier,
        ] {
            cfg.validate()?;
        }
        if self.analysis.cpu_threads == 0 || self.analysis.cpu_threads > MAX_WORKERS_LIMIT {
            return Err(ConfigError::new(
                "cpu_threads",
                format!(
                    "{} is not between 1 and {MAX_WORKERS_LIMIT}",
                    self.analysis.cpu_threads
                ),
            )
            .into());
        }
        if self.analysis.cache_capacity == 0 {
            return Err(ConfigError::new(
                "analysis_cache.capacity",
                "must be at least 1 (use no_cache() on requests to skip caching)",
            )
            .into());
        }
        if self.event_capacity == 0 {
            return Err(ConfigError::new("event_capacity", "must be at least 1").into());
        }
        let watchdog = Arc::new(Watchdog::start(self.clock.clone()).map_err(BuildError::Spawn)?);
        let probe = self.probe.unwrap_or_else(|| Arc::new(process_rss));
        let events = Arc::new(EventBus::new(self.event_capacity));
        let tiers = [self.ui, self.background, self.realtime, self.analysis_tier].map(|cfg| {
            let pool = PoolShared::new(
                cfg,
                self.clock.clone(),
                watchdog.clone(),
                probe.clone(),
                events.clone(),
            );
            watchdog.register(&pool);
            Tier { pool }
        });
        let analysis = match Analysis::new(tiers[3].clone(), self.analysis, self.clock.clone()) {
            Ok(a) => a,
            Err(e) => {
                watchdog.stop();
                return Err(BuildError::Spawn(e));
            }
        };
        let scheduler = match Scheduler::builder(&tiers[1]).build() {
            Ok(s) => s,
            Err(e) => {
                watchdog.stop();
                analysis.shutdown();
                return Err(e);
            }
        };
        let rt = Runtime {
            tiers,
            analysis,
            scheduler,
            registry: Registry::default(),
            events,
            watchdog,
            clock: self.clock,
            drop_grace: self.drop_grace,
            report: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
        };
        for t in &rt.tiers {
            if let Err(e) = t.pool.start() {
                rt.shutdown(Duration::ZERO);
                return Err(BuildError::Spawn(e));
            }
        }
        Ok(rt)
    }
}

/// Structured background work for a synchronous program: the `ui`,
/// `background` and `realtime` tiers, each a dedicated pool of OS threads
/// with a bounded priority queue, one watchdog enforcing timeouts, stats,
/// and a graceful shutdown that accounts for every task.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{Priority, Runtime};
///
/// let rt = Runtime::builder().build()?;
/// let h = rt.ui()
///     .task(|ctx| {
///         ctx.checkpoint()?;
///         Ok::<_, tierpool::Cancelled>("character 42")
///     })
///     .user("user-17")
///     .timeout(Duration::from_secs(5))
///     .submit()?;
/// match h.join() {
///     Ok(v) => assert_eq!(v, "character 42"),
///     Err(e) if e.is_timeout() => println!("timed out"),
///     Err(e) => println!("{e}"),
/// }
/// println!("{}", rt.stats());
/// let report = rt.shutdown(Duration::from_secs(10));
/// assert!(report.never_started.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Runtime {
    /// ui, background, realtime, analysis.
    tiers: [Tier; 4],
    analysis: Analysis,
    scheduler: Scheduler,
    registry: Registry,
    events: Arc<EventBus>,
    watchdog: Arc<Watchdog>,
    clock: Clock,
    drop_grace: Duration,
    /// Held for the whole shutdown, so a second call waits for the first
    /// and returns its report.
    report: Mutex<Option<ShutdownReport>>,
    /// Set as shutdown begins; read without the lock, so code that runs
    /// during a shutdown (a task's captured value dropped with its task,
    /// a listener) can ask the runtime about itself without deadlocking.
    shutting_down: AtomicBool,
}

impl Runtime {
    /// A builder with the seed's defaults.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::new()
    }

    /// The ui tier: fast, user-triggered work, fair between users.
    pub fn ui(&self) -> &Tier {
        &self.tiers[0]
    }

    /// The background tier: heavy processing, memory-watermarked.
    pub fn background(&self) -> &Tier {
        &self.tiers[1]
    }

    /// The realtime tier: event processing with reserved slots and
    /// preemption.
    pub fn realtime(&self) -> &Tier {
        &self.tiers[2]
    }

    /// The analysis pool: cached, de-duplicated, retried analyses on a
    /// demand-scaled tier, and CPU batches on a dedicated rayon pool.
    pub fn analysis(&self) -> &Analysis {
        &self.analysis
    }

    /// A tier by name.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name() == name)
    }

    /// Every tier.
    pub fn tiers(&self) -> impl Iterator<Item = &Tier> {
        self.tiers.iter()
    }

    /// The runtime's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A snapshot of every tier's numbers.
    pub fn stats(&self) -> Stats {
        let e = self.events.totals();
        Stats {
            tiers: self.tiers.iter().map(|t| t.stats()).collect(),
            watchdog_pending: self.watchdog.pending(),
            events_delivered: e.delivered,
            events_dropped: e.dropped,
            listener_panics: e.listener_panics,
        }
    }

    /// The runtime's scheduler: one timer thread for every periodic job of
    /// the application; runs go to the background tier unless a job names
    /// another. It stops with the runtime, and its degraded jobs show in
    /// [`health`](Runtime::health).
    ///
    /// ```
    /// use std::time::Duration;
    /// let rt = tierpool::Runtime::builder().build()?;
    /// let id = rt.scheduler()
    ///     .every(Duration::from_secs(60))
    ///     .name("cleanup")
    ///     .tier(rt.ui())
    ///     .start(|_| Ok::<_, String>(()))?;
    /// assert!(rt.scheduler().job_stats(id).is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Puts a worker under the runtime's supervision: its health shows in
    /// [`health`](Runtime::health) under `name` (an open circuit breaker, a
    /// failing cache-warming cycle), and [`shutdown`](Runtime::shutdown)
    /// stops it before the tiers, counting what it left in the report.
    /// The items themselves stay with the worker: its own `shutdown`
    /// hands them over afterwards. The runtime holds workers weakly:
    /// dropping one unregisters it.
    ///
    /// A [`CircuitBreaker`](crate::CircuitBreaker) registered this way also
    /// reports its state changes as [`Event::BreakerStateChanged`]; the
    /// breaker of a batch worker built on one of this runtime's tiers does
    /// so already (do not register it again).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{Priority, ReEnricher, Runtime};
    /// let rt = Runtime::builder().build()?;
    /// let enricher = ReEnricher::builder(rt.background(), |_: &u64, _| Ok::<_, String>(()))
    ///     .flush_interval(Duration::from_secs(3600))
    ///     .build()?;
    /// rt.register("re-enricher", &enricher);
    /// enricher.enqueue(7)?;
    /// let report = rt.shutdown(Duration::from_secs(1));
    /// let w = &report.workers[0];
    /// assert_eq!(w.name, "re-enricher");
    /// assert_eq!(w.unprocessed as u64 + w.processed, 1);
    /// // The item itself is still with the worker:
    /// let mine = enricher.shutdown(Duration::ZERO);
    /// assert_eq!(mine.unprocessed.len() as u64 + mine.stats.processed_ok, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register(&self, name: impl Into<String>, worker: &impl Supervise) {
        let r = worker.registration();
        if let Held::Breaker(b) = &r.0 {
            forward_breaker_events(b, &self.events);
        }
        self.registry.add(name.into(), r);
    }

    /// Calls `listener` with every later [`Event`], on the runtime's one
    /// event thread (`tierpool-events`, started with the first listener).
    /// Listeners never run on a worker: one that panics is caught and
    /// counted ([`Stats::listener_panics`]); one that is slow only delays
    /// the others, and once the buffer (see
    /// [`RuntimeBuilder::event_capacity`]) is full, further events are
    /// dropped and counted ([`Stats::events_dropped`]). With no listener,
    /// no event is even built.
    ///
    /// Events also go to `log`, under targets `tierpool::task`,
    /// `tierpool::pool`, `tierpool::watchdog`, `tierpool::supervisor`,
    /// `tierpool::schedule`, `tierpool::batch` and `tierpool::breaker`.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tierpool::{Event, Priority, Runtime};
    /// let rt = Runtime::builder().build()?;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = seen.clone();
    /// rt.on_event(move |e| {
    ///     if let Event::TaskFinished { status, .. } = e {
    ///         sink.lock().unwrap().push(*status);
    ///     }
    /// })?;
    /// rt.ui().submit(Priority::Normal, |_| Ok::<_, String>(()))?.join().unwrap();
    /// rt.shutdown(std::time::Duration::from_secs(1)); // delivers what is queued
    /// assert_eq!(seen.lock().unwrap().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_event(
        &self,
        listener: impl Fn(&Event) + Send + Sync + 'static,
    ) -> std::io::Result<()> {
        self.events.listen(Arc::new(listener))
    }

    /// Maintenance restart of the tier named `tier` (see [`Tier::restart`]).
    pub fn restart(&self, tier: &str, grace: Duration) -> Result<RestartReport, RestartError> {
        if self.is_shut_down() {
            return Err(RestartError::ShuttingDown);
        }
        self.tier(tier)
            .ok_or_else(|| RestartError::UnknownTier(tier.to_string()))?
            .restart(grace)
    }

    /// Healthy, degraded or unhealthy, for the runtime and each component
    /// (`runtime`, the tiers, `scheduler`, then registered workers), with
    /// the reasons: zombies, memory watermark, restart intensity, a tier
    /// at capacity for longer than its
    /// [`saturation_threshold`](TierConfig::saturation_threshold), open
    /// circuit breakers, degraded scheduled jobs, shutdown.
    ///
    /// ```
    /// use tierpool::{HealthStatus, Runtime};
    /// let rt = Runtime::builder().build()?;
    /// assert_eq!(rt.health().status, HealthStatus::Healthy);
    /// rt.shutdown(std::time::Duration::from_secs(1));
    /// assert_eq!(rt.health().status, HealthStatus::Unhealthy);
    /// # Ok::<(), tierpool::BuildError>(())
    /// ```
    pub fn health(&self) -> Health {
        let mut components = Vec::new();
        let mut runtime = Vec::new();
        if self.is_shut_down() {
            runtime.push(HealthReason::ShutDown);
        }
        components.push(ComponentHealth::new("runtime", runtime));
        components.extend(self.tiers.iter().map(Tier::health));
        components.push(ComponentHealth::new(
            "scheduler",
            crate::schedule::degraded_reasons(&self.scheduler.stats()),
        ));
        for (name, reasons) in self.registry.health() {
            components.push(ComponentHealth::new(name, reasons));
        }
        Health::new(components)
    }

    /// Pauses every tier (see [`Tier::pause`]).
    pub fn pause_all(&self) {
        self.tiers.iter().for_each(Tier::pause);
    }

    /// Resumes every tier.
    pub fn resume_all(&self) {
        self.tiers.iter().for_each(Tier::resume);
    }

    /// Whether [`shutdown`](Runtime::shutdown) has begun (it may still
    /// be draining; a runtime shutting down admits nothing).
    pub fn is_shut_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Stops admitting, lets queued and running work finish for up to
    /// `grace`, cancels what is left, joins every thread (zombies are
    /// reported and detached) and returns what happened. Calling it again
    /// returns the same report.
    pub fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let mut slot = self.report.lock();
        if let Some(r) = &*slot {
            return r.clone();
        }
        self.shutting_down.store(true, Ordering::SeqCst);
        let started = Instant::now();
        // Timers and batch workers first: their work runs on the tiers.
        self.scheduler.shutdown();
        let workers = self.registry.shutdown(grace);
        let before: Vec<u64> = self.tiers.iter().map(|t| finished(&t.stats())).collect();
        for t in &self.tiers {
            t.pool.begin_drain(grace);
        }
        let drained = {
            let deadline = self.phase_deadline(grace);
            self.tiers.iter().all(|t| t.pool.wait_drained(deadline))
        };
        let mut per_tier: Vec<StopOutcome> = Vec::new();
        let mut leftovers = Vec::new();
        for t in &self.tiers {
            let mut out = StopOutcome::default();
            t.pool.stop(&mut out);
            leftovers.append(&mut out.leftovers);
            per_tier.push(out);
        }
        let grace_after_cancel = self
            .tiers
            .iter()
            .map(|t| t.pool.config.cancel_grace)
            .max()
            .unwrap_or_default();
        let deadline = self.phase_deadline(grace_after_cancel);
        for (t, out) in self.tiers.iter().zip(per_tier.iter_mut()) {
            t.pool.finish_threads(deadline, out);
        }
        self.watchdog.stop();
        self.analysis.shutdown();
        let mut report = ShutdownReport {
            drained_in_time: drained,
            workers,
            ..ShutdownReport::default()
        };
        for ((t, out), before) in self.tiers.iter().zip(per_tier).zip(before) {
            let s = t.stats();
            let cancelled = out.cancelled_running.len() + t.pool.cancelled_at_stop();
            report.tiers.push(TierShutdown {
                name: t.name(),
                completed_during_drain: finished(&s) - before,
                cancelled_running: cancelled,
                never_started: out.never_started.len(),
                // Every stuck thread's task is listed in `out.zombies`,
                // whether shutdown or the watchdog declared it.
                zombies: out.zombies.len(),
            });
            report.completed_during_drain += finished(&s) - before;
            report.cancelled_running.extend(out.cancelled_running);
            report.cancelled_at_start += t.pool.cancelled_at_stop();
            report.never_started.extend(out.never_started);
            report.zombies.extend(out.zombies);
            report.threads_joined += out.threads_joined;
            report.threads_detached += out.threads_detached;
        }
        // Last, so listeners hear about the shutdown's own cancellations.
        self.events.stop();
        report.took = started.elapsed();
        tlog!(info, target: "tierpool::supervisor", "shutdown: {report}");
        *slot = Some(report.clone());
        drop(slot);
        // Settled already (counted, handles resolved); their closures go
        // now, outside the lock (see `StopOutcome::leftovers`).
        drop(leftovers);
        report
    }

    /// A deadline `d` from now on the runtime's clock (see
    /// [`PhaseDeadline::after`]).
    fn phase_deadline(&self, d: Duration) -> PhaseDeadline {
        PhaseDeadline::after(&self.clock, d)
    }
}

/// When a shutdown phase ends: at `at` on the runtime's clock, or at
/// `real_cap` in real time, whichever comes first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PhaseDeadline {
    pub(crate) at: Option<Instant>,
    pub(crate) real_cap: Option<Instant>,
}

impl PhaseDeadline {
    /// `d` from now on `clock`, and under a manual clock a real-time cap
    /// too (see `MANUAL_CLOCK_REAL_CAP`).
    pub(crate) fn after(clock: &Clock, d: Duration) -> Self {
        PhaseDeadline {
            at: clock.deadline_after(d),
            real_cap: if clock.is_manual() {
                Instant::now().checked_add(MANUAL_CLOCK_REAL_CAP)
            } else {
                None
            },
        }
    }

    pub(crate) fn passed(&self, clock: &Clock) -> bool {
        self.at.is_some_and(|d| clock.now() >= d)
            || self.real_cap.is_some_and(|c| Instant::now() >= c)
    }

    /// How long a wait may block (bounded under a manual clock).
    pub(crate) fn budget(&self, clock: &Clock) -> Option<Duration> {
        clock.wait_budget(self.at)
    }
}

fn finished(s: &crate::TierStats) -> u64 {
    s.completed + s.failed + s.panicked
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown(self.drop_grace);
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("clock", &self.clock)
            .field("shut_down", &self.is_shut_down())
            .finish_non_exhaustive()
    }
}

/// One tier's part of a [`ShutdownReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierShutdown {
    /// Tier name.
    pub name: &'static str,
    /// Tasks that reached completed/failed/panicked during the drain.
    pub completed_during_drain: u64,
    /// Running tasks cancelled by shutdown.
    pub cancelled_running: usize,
    /// Queued tasks that never started.
    pub never_started: usize,
    /// Threads left inside tasks that ignored cancellation.
    pub zombies: usize,
}

/// One registered worker's part of a [`ShutdownReport`]: what it had not
/// done. The items themselves are kept by the worker; its own `shutdown`
/// returns them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerShutdown {
    /// The name it was registered under.
    pub name: String,
    /// Items processed successfully, over its life.
    pub processed: u64,
    /// Items never processed (ready or waiting for a retry).
    pub unprocessed: usize,
    /// Items in its dead-letter list.
    pub dead_letters: usize,
    /// Items held by batches that did not stop within the grace.
    pub still_in_batches: usize,
}

/// What [`Runtime::shutdown`] did: enough to account for every task that
/// was in the runtime, and the ids of those that never started so the
/// application can persist or resubmit them (their handles resolve as
/// cancelled with reason shutdown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Whether everything drained within the grace period.
    pub drained_in_time: bool,
    /// Tasks that finished (completed, failed or panicked) during the drain.
    pub completed_during_drain: u64,
    /// Running tasks cancelled when the grace period ended.
    pub cancelled_running: Vec<TaskId>,
    /// Tasks a worker had just taken when shutdown began, cancelled before
    /// they ran.
    pub cancelled_at_start: usize,
    /// Queued tasks that never started.
    pub never_started: Vec<TaskId>,
    /// Tasks still running after the cancel grace (their threads detached).
    pub zombies: Vec<TaskId>,
    /// Threads joined.
    pub threads_joined: usize,
    /// Threads detached because they were stuck in a zombie task.
    pub threads_detached: usize,
    /// Per tier.
    pub tiers: Vec<TierShutdown>,
    /// Per registered worker (see [`Runtime::register`]).
    pub workers: Vec<WorkerShutdown>,
    /// How long shutdown took (real time).
    pub took: Duration,
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in {:.0?}: {} finished during drain, {} cancelled while running, {} never started, {} zombies; {} threads joined, {} detached",
            if self.drained_in_time { "drained" } else { "grace period ended" },
            self.took,
            self.completed_during_drain,
            self.cancelled_running.len() + self.cancelled_at_start,
            self.never_started.len(),
            self.zombies.len(),
            self.threads_joined,
            self.threads_detached
        )?;
        for w in &self.workers {
            write!(
                f,
                "; {}: {} unprocessed, {} dead letters",
                w.name, w.unprocessed, w.dead_letters
            )?;
        }
        Ok(())
    }
}
