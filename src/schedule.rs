//! Scheduler: periodic jobs, dispatched by one timer thread onto a tier.
//!
//! # The timer thread
//!
//! One thread (`tierpool-scheduler`) owns the timetable and does nothing
//! but decide: it never runs a job itself. Each pass, under the state lock,
//! it asks every job what is due ([`Entry::poll`]), marks the runs it
//! dispatches as running, and computes the earliest next due time. If it
//! dispatched anything it drops the lock, submits the runs to their tier
//! and looks again; otherwise it waits on the condition variable until that
//! due time (exactly, under the system clock — no polling tick) or until a
//! change (a new job, resume, trigger, a finished run with a pending late
//! run, shutdown) notifies it. Because the wait starts under the same lock
//! the timetable was read under, no notification can be lost.
//!
//! # Fire times
//!
//! Fire `n` of a job is due at `start + n · interval` (plus that fire's
//! jitter), computed from `n`, never from the previous run, so a schedule
//! cannot drift however late its runs start or finish.
//!
//! A fire is *missed* when it could not be dispatched in time: a later fire
//! was already due when the timer looked (the process was suspended, the
//! clock jumped), or it was looked at more than the misfire threshold after
//! its time. [`MissedRun`] says what happens then.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::error::{BuildError, ConfigError, RejectReason};
use crate::priority::Priority;
use crate::resilience::SeedRng;
use crate::sync::{Arc, AtomicBool, Condvar, Mutex, Ordering};
use crate::task::{panic_message, TaskContext};
use crate::tier::Tier;

/// Quartz's default misfire threshold; a job's default is this or half its
/// interval, whichever is shorter.
const DEFAULT_MISFIRE: Duration = Duration::from_secs(60);

/// Consecutive failures that mark a job degraded, unless configured.
const DEFAULT_DEGRADED_AFTER: u32 = 3;

/// A scheduled job's id, unique within its scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(u64);

impl JobId {
    /// The number behind the id.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job#{}", self.0)
    }
}

/// What to do with fires that were missed (see the module notes for when a
/// fire counts as missed).
///
/// ```
/// use tierpool::MissedRun;
/// assert_eq!(MissedRun::default(), MissedRun::Skip);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MissedRun {
    /// Count them as missed and wait for the next fire time. If the job was
    /// still running when a fire came due, that fire is skipped (overlap).
    #[default]
    Skip,
    /// Run once, now, however many were missed (never a burst), then carry
    /// on with the schedule. A fire that came due while the job was still
    /// running becomes one late run as soon as that run returns — unless a
    /// fire is due by then anyway: that run takes its place, and the fire
    /// it stood for counts as missed.
    RunOnceLate,
}

/// What a load-aware job does when its tier is busy.
#[derive(Clone, Copy, Debug, PartialEq)]
enum LoadAction {
    Skip,
    Shrink(f64),
}

/// A load-aware rule: when the job's tier is more utilised than
/// `threshold`, skip the run, or run it with a smaller
/// [`JobContext::scale`]. Utilisation is
/// [`TierStats::utilisation`](crate::TierStats::utilisation): busy time over
/// capacity across the tier's
/// [`utilisation_window`](crate::TierConfig::utilisation_window), runs in
/// progress included, from 0 to 1 — so a momentary burst does not skip a
/// run, sustained load does. Samples are taken when stats are read (the
/// rule reads them at each due run), so with runs rarer than the window it
/// is the average since the previous reading; before there are two samples
/// it is `running / max_workers`.
///
/// ```
/// use tierpool::LoadRule;
/// let skip = LoadRule::skip_above(0.8);
/// let shrink = LoadRule::shrink_above(0.8, 0.25);
/// assert_eq!(skip.threshold(), 0.8);
/// # let _ = shrink;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadRule {
    threshold: f64,
    action: LoadAction,
}

impl LoadRule {
    /// Skip the run (recorded with the utilisation) above `threshold`.
    pub fn skip_above(threshold: f64) -> Self {
        LoadRule {
            threshold,
            action: LoadAction::Skip,
        }
    }

    /// Run with [`JobContext::scale`] = `scale` (in `(0, 1]`) above
    /// `threshold`, so the job can do a fraction of its work.
    pub fn shrink_above(threshold: f64, scale: f64) -> Self {
        LoadRule {
            threshold,
            action: LoadAction::Shrink(scale),
        }
    }

    /// The utilisation above which the rule acts.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.threshold >= 0.0 && self.threshold <= 1.0) {
            return Err(ConfigError::new(
                "load_aware.threshold",
                format!(
                    "must be a utilisation between 0 and 1, got {}",
                    self.threshold
                ),
            ));
        }
        if let LoadAction::Shrink(s) = self.action {
            if !(s > 0.0 && s <= 1.0) {
                return Err(ConfigError::new(
                    "load_aware.scale",
                    format!("must be above 0 and at most 1, got {s}"),
                ));
            }
        }
        Ok(())
    }
}

/// Why a run did not happen when it was due.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SkipReason {
    /// Fires that could not be dispatched in time (policy [`MissedRun::Skip`]).
    Missed {
        /// How many fires this time.
        fires: u64,
    },
    /// The previous run of the job was still running.
    Overlap,
    /// The tier was busier than the job's [`LoadRule`] allows.
    Load {
        /// The tier's `running / max_workers` when the run was due.
        utilisation: f64,
        /// The rule's threshold.
        threshold: f64,
    },
    /// The tier refused the run.
    Rejected(RejectReason),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Missed { fires } => write!(f, "{fires} fire(s) missed"),
            SkipReason::Overlap => f.write_str("previous run still running"),
            SkipReason::Load {
                utilisation,
                threshold,
            } => write!(
                f,
                "tier utilisation {:.0}% above {:.0}%",
                utilisation * 100.0,
                threshold * 100.0
            ),
            SkipReason::Rejected(r) => write!(f, "tier rejected the run: {r}"),
        }
    }
}

/// The most recent skip of a job: when and why.
#[derive(Clone, Debug, PartialEq)]
pub struct SkipRecord {
    /// When, on the scheduler's clock.
    pub at: Instant,
    /// Why.
    pub reason: SkipReason,
}

/// Why a run was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// At its fire time (within the misfire threshold).
    OnTime,
    /// Once, late, for missed fires ([`MissedRun::RunOnceLate`]).
    Late,
    /// By [`Scheduler::trigger`].
    Triggered,
}

/// A job's health: degraded after the configured number of consecutive
/// failed or panicked runs, healthy again after one success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobHealth {
    /// Fewer consecutive failures than the threshold.
    Healthy,
    /// At least the threshold of consecutive failures.
    Degraded {
        /// Failures in a row so far.
        consecutive_failures: u32,
    },
}

/// One job's numbers at one moment.
///
/// Every dispatched run ends in exactly one of `succeeded`, `failed`,
/// `panicked` or `abandoned`, so once nothing runs,
/// `runs == succeeded + failed + panicked + abandoned`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct JobStats {
    /// The job's id.
    pub id: JobId,
    /// The job's name.
    pub name: String,
    /// Runs dispatched to the tier (on time, late and triggered).
    pub runs: u64,
    /// Runs that returned `Ok`.
    pub succeeded: u64,
    /// Runs that returned `Err`.
    pub failed: u64,
    /// Runs that panicked.
    pub panicked: u64,
    /// Runs accepted by the tier that never returned an outcome to the job
    /// (discarded at shutdown, expired in the queue).
    pub abandoned: u64,
    /// Late runs (of which part of `runs`).
    pub late_runs: u64,
    /// Triggered runs (part of `runs`).
    pub triggered: u64,
    /// Runs started with a shrunken scale (part of `runs`).
    pub shrunk: u64,
    /// Fires missed.
    pub missed: u64,
    /// Fires skipped because the previous run was still running.
    pub skipped_overlap: u64,
    /// Fires skipped by the load rule.
    pub skipped_load: u64,
    /// Runs the tier refused.
    pub rejected: u64,
    /// Failed or panicked runs in a row, now.
    pub consecutive_failures: u32,
    /// Healthy or degraded.
    pub health: JobHealth,
    /// Paused by [`Scheduler::pause`].
    pub paused: bool,
    /// A run is executing now.
    pub running: bool,
    /// When the next fire is due (`None` while paused).
    pub next_fire: Option<Instant>,
    /// The most recent skip.
    pub last_skip: Option<SkipRecord>,
    /// The most recent failure's message.
    pub last_error: Option<String>,
}

/// A snapshot of every job of a scheduler; `Display` prints one line per
/// job.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{JobHealth, Runtime, Scheduler};
/// let rt = Runtime::builder().build()?;
/// let s = Scheduler::builder(rt.background()).build()?;
/// let id = s.every(Duration::from_secs(60)).name("report").start(|_| Ok::<_, String>(()))?;
/// let stats = s.stats();
/// assert!(stats.is_healthy());
/// assert_eq!(stats.job(id).unwrap().health, JobHealth::Healthy);
/// println!("{stats}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerStats {
    /// Per job, in the order they were added.
    pub jobs: Vec<JobStats>,
}

impl SchedulerStats {
    /// One job's numbers.
    pub fn job(&self, id: JobId) -> Option<&JobStats> {
        self.jobs.iter().find(|j| j.id == id)
    }

    /// Jobs whose health is degraded.
    pub fn degraded(&self) -> impl Iterator<Item = &JobStats> {
        self.jobs
            .iter()
            .filter(|j| matches!(j.health, JobHealth::Degraded { .. }))
    }

    /// Whether no job is degraded.
    pub fn is_healthy(&self) -> bool {
        self.degraded().next().is_none()
    }
}

impl fmt::Display for SchedulerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for j in &self.jobs {
            write!(
                f,
                "{} {:?}: runs {} ok {} failed {} panicked {} missed {} overlap {} load {} rejected {}",
                j.id,
                j.name,
                j.runs,
                j.succeeded,
                j.failed,
                j.panicked,
                j.missed,
                j.skipped_overlap,
                j.skipped_load,
                j.rejected
            )?;
            if let JobHealth::Degraded {
                consecutive_failures,
            } = j.health
            {
                write!(f, " DEGRADED ({consecutive_failures} failures in a row)")?;
            }
            if let Some(s) = &j.last_skip {
                write!(f, "; last skip: {}", s.reason)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// What one run of a job can know: why and for when it runs, the load
/// scale, and its task's cancellation.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{RunKind, Runtime, Scheduler};
/// let rt = Runtime::builder().build()?;
/// let s = Scheduler::builder(rt.background()).build()?;
/// let id = s.every(Duration::from_secs(60)).start(|ctx| {
///     let keys: Vec<u32> = (0..100).collect();
///     let take = (keys.len() as f64 * ctx.scale()).ceil() as usize; // fewer when busy
///     for _k in &keys[..take] {
///         ctx.checkpoint().map_err(|c| c.to_string())?;
///     }
///     if ctx.kind() == RunKind::Triggered { /* asked for by hand */ }
///     Ok::<_, String>(())
/// })?;
/// # let _ = id;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JobContext<'a> {
    task: &'a TaskContext,
    id: JobId,
    name: &'a str,
    kind: RunKind,
    scheduled_for: Option<Instant>,
    scale: f64,
    utilisation: f64,
}

impl JobContext<'_> {
    /// The job's id.
    pub fn job_id(&self) -> JobId {
        self.id
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// Why this run started.
    pub fn kind(&self) -> RunKind {
        self.kind
    }

    /// The fire time this run is for (`start + n · interval`, before
    /// jitter); for a late run, the last missed fire; `None` if triggered.
    pub fn scheduled_for(&self) -> Option<Instant> {
        self.scheduled_for
    }

    /// How much of its work the job should do: 1.0 normally, the load
    /// rule's scale when the tier was busy ([`LoadRule::shrink_above`]).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The tier's utilisation when the run was dispatched (0 to 1).
    pub fn utilisation(&self) -> f64 {
        self.utilisation
    }

    /// The task this run executes as (cancellation, clock, deadline).
    pub fn task(&self) -> &TaskContext {
        self.task
    }

    /// `Err(Cancelled)` once the run's task has been asked to stop.
    pub fn checkpoint(&self) -> Result<(), crate::Cancelled> {
        self.task.checkpoint()
    }
}

impl fmt::Debug for JobContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("job", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

type RunFn = dyn Fn(&JobContext<'_>) -> Result<(), String> + Send + Sync;

/// A job's validated settings.
#[derive(Clone)]
struct Spec {
    interval: Duration,
    jitter: Duration,
    misfire: Duration,
    missed: MissedRun,
    load: Option<LoadRule>,
    degraded_after: u32,
    tier: Tier,
    priority: Priority,
}

/// What the timer decided to start for one job.
struct Dispatch {
    id: JobId,
    name: Arc<str>,
    run: Arc<RunFn>,
    tier: Tier,
    priority: Priority,
    kind: RunKind,
    scheduled_for: Option<Instant>,
    scale: f64,
    utilisation: f64,
}

/// Fires taken off the timetable in one look.
struct Due {
    fires: u64,
    /// The latest of them was looked at within the misfire threshold.
    last_on_time: bool,
    /// Nominal time of the latest consumed fire.
    last_nominal: Instant,
}

/// One job in the timetable.
///
/// # Invariants
///
/// 1. `next_n` only grows while the job is not paused; fire `n` is due at
///    `nominal(n) + next_jitter`, `nominal(n) = start + n · interval`.
/// 2. `running` is true from dispatch until the run's guard reports (its
///    outcome, its abandonment or its rejection), so runs never overlap.
/// 3. At most one triggered and one late run are pending at a time.
struct Entry {
    name: Arc<str>,
    spec: Spec,
    run: Arc<RunFn>,
    start: Instant,
    next_n: u64,
    next_jitter: Duration,
    rng: SeedRng,
    running: bool,
    paused: bool,
    trigger_pending: bool,
    late_pending: Option<Instant>,
    stats: JobStats,
}

impl Entry {
    fn nominal(&self, n: u64) -> Option<Instant> {
        let nanos = self.spec.interval.as_nanos().checked_mul(u128::from(n))?;
        let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
        self.start
            .checked_add(Duration::new(secs, (nanos % 1_000_000_000) as u32))
    }

    fn due_at(&self) -> Option<Instant> {
        self.nominal(self.next_n)?.checked_add(self.next_jitter)
    }

    /// Index of the latest fire whose nominal time is at or before `now`.
    fn latest_nominal(&self, now: Instant) -> Option<u64> {
        let since = now.checked_duration_since(self.start)?;
        u64::try_from(since.as_nanos() / self.spec.interval.as_nanos()).ok()
    }

    fn draw_jitter(&mut self) -> Duration {
        let max = u64::try_from(self.spec.jitter.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.uniform_inclusive(max))
    }

    fn set_next(&mut self, n: u64) {
        self.next_n = n;
        self.next_jitter = self.draw_jitter();
    }

    /// Consumes every fire due at `now` (see the module notes).
    fn take_due(&mut self, now: Instant) -> Option<Due> {
        if now < self.due_at()? {
            return None;
        }
        let m = self.latest_nominal(now)?.max(self.next_n);
        // Fires before `m` have a successor already due: missed.
        let mut fires = m - self.next_n;
        let jitter_m = if m == self.next_n {
            self.next_jitter
        } else {
            self.draw_jitter()
        };
        let nominal_m = self.nominal(m)?;
        let due_m = nominal_m.checked_add(jitter_m)?;
        if now >= due_m {
            fires += 1;
            let on_time = due_m
                .checked_add(self.spec.misfire)
                .is_none_or(|limit| now < limit);
            self.set_next(m + 1);
            Some(Due {
                fires,
                last_on_time: on_time,
                last_nominal: nominal_m,
            })
        } else {
            self.next_n = m;
            self.next_jitter = jitter_m;
            Some(Due {
                fires,
                last_on_time: false,
                last_nominal: self.nominal(m - 1)?,
            })
        }
    }

    fn skip(&mut self, now: Instant, reason: SkipReason) {
        tlog!(debug, target: "tierpool::schedule", "job {:?} skipped: {reason}", self.name);
        self.spec
            .tier
            .pool
            .events()
            .emit_with(|| crate::telemetry::Event::ScheduledRunSkipped {
                job: self.name.clone(),
                reason: reason.clone(),
            });
        self.stats.last_skip = Some(SkipRecord { at: now, reason });
    }

    /// Decides what to start now, if anything. `utilisation` is asked only
    /// when a load rule needs it.
    fn poll(&mut self, now: Instant, utilisation: &mut dyn FnMut(&Tier) -> f64) -> Option<Plan> {
        let mut want: Option<(RunKind, Option<Instant>)> = None;
        let due = if self.paused {
            None
        } else {
            self.take_due(now)
        };
        if let Some(due) = due {
            let missed = due.fires - u64::from(due.last_on_time);
            self.stats.missed += missed;
            let late = self.spec.missed == MissedRun::RunOnceLate;
            if self.running {
                if late {
                    self.late_pending = Some(due.last_nominal);
                } else {
                    self.stats.skipped_overlap += u64::from(due.last_on_time);
                    self.skip(now, SkipReason::Overlap);
                }
            } else if due.last_on_time {
                want = Some((RunKind::OnTime, Some(due.last_nominal)));
            } else if late {
                want = Some((RunKind::Late, Some(due.last_nominal)));
            } else {
                self.skip(now, SkipReason::Missed { fires: missed });
            }
            // A late run still waiting for the last run's return (a fire
            // that came due while it ran) is covered by a run due now: one
            // run, never an on-time or late run and then a stale late one
            // (found by a stress run: three runs where the policy promises
            // two). The fire it stood for is missed.
            if want.is_some() && self.late_pending.take().is_some() {
                self.stats.missed += 1;
            }
        }
        if self.running {
            return None;
        }
        if want.is_none() && self.trigger_pending {
            self.trigger_pending = false;
            want = Some((RunKind::Triggered, None));
        }
        if want.is_none() && !self.paused {
            if let Some(at) = self.late_pending.take() {
                want = Some((RunKind::Late, Some(at)));
            }
        }
        let (kind, scheduled_for) = want?;
        let mut scale = 1.0;
        let mut util = 0.0;
        if let (Some(rule), true) = (self.spec.load, kind != RunKind::Triggered) {
            util = utilisation(&self.spec.tier);
            if util > rule.threshold {
                match rule.action {
                    LoadAction::Skip => {
                        self.stats.skipped_load += 1;
                        self.skip(
                            now,
                            SkipReason::Load {
                                utilisation: util,
                                threshold: rule.threshold,
                            },
                        );
                        return None;
                    }
                    LoadAction::Shrink(s) => {
                        scale = s;
                        self.stats.shrunk += 1;
                    }
                }
            }
        }
        self.running = true;
        self.stats.runs += 1;
        match kind {
            RunKind::Late => self.stats.late_runs += 1,
            RunKind::Triggered => self.stats.triggered += 1,
            RunKind::OnTime => {}
        }
        Some(Plan {
            kind,
            scheduled_for,
            scale,
            utilisation: util,
        })
    }

    fn snapshot(&self, id: JobId) -> JobStats {
        let mut s = self.stats.clone();
        s.id = id;
        s.paused = self.paused;
        s.running = self.running;
        s.next_fire = if self.paused { None } else { self.due_at() };
        s.health = if s.consecutive_failures >= self.spec.degraded_after {
            JobHealth::Degraded {
                consecutive_failures: s.consecutive_failures,
            }
        } else {
            JobHealth::Healthy
        };
        s
    }
}

struct Plan {
    kind: RunKind,
    scheduled_for: Option<Instant>,
    scale: f64,
    utilisation: f64,
}

struct State {
    jobs: BTreeMap<JobId, Entry>,
    next_id: u64,
    seed: u64,
    stopping: bool,
}

struct Shared {
    tier: Tier,
    clock: Clock,
    state: Mutex<State>,
    wake: Condvar,
}

/// How a run ended, as its guard reports it.
enum RunEnd {
    Ok,
    Failed(String),
    Panicked(String),
    /// Accepted by the tier but never returned to us (discarded).
    Abandoned,
    Rejected(RejectReason),
}

impl Shared {
    /// Records a run's end; wakes the timer if something waits for it.
    fn finish(&self, id: JobId, end: RunEnd) {
        let mut st = self.state.lock();
        let now = self.clock.now();
        let Some(e) = st.jobs.get_mut(&id) else {
            return; // removed meanwhile
        };
        e.running = false;
        let failed = matches!(end, RunEnd::Failed(_) | RunEnd::Panicked(_));
        let s = &mut e.stats;
        match end {
            RunEnd::Ok => {
                s.succeeded += 1;
                s.consecutive_failures = 0;
            }
            RunEnd::Failed(msg) => {
                s.failed += 1;
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                s.last_error = Some(msg);
            }
            RunEnd::Panicked(msg) => {
                s.panicked += 1;
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                s.last_error = Some(format!("panicked: {msg}"));
            }
            RunEnd::Abandoned => s.abandoned += 1,
            RunEnd::Rejected(r) => {
                // Not a run after all.
                s.runs -= 1;
                s.rejected += 1;
                e.skip(now, SkipReason::Rejected(r));
            }
        }
        if let (Some(error), true) = (&e.stats.last_error, failed) {
            tlog!(debug, target: "tierpool::schedule", "job {:?} run failed: {error}", e.name);
            e.spec
                .tier
                .pool
                .events()
                .emit_with(|| crate::telemetry::Event::ScheduledRunFailed {
                    job: e.name.clone(),
                    error: error.clone(),
                    consecutive_failures: e.stats.consecutive_failures,
                });
        }
        if e.stats.consecutive_failures == e.spec.degraded_after {
            tlog!(warn,
                target: "tierpool::schedule",
                "job {:?} degraded: {} failures in a row",
                e.name,
                e.stats.consecutive_failures
            );
        }
        if e.trigger_pending || e.late_pending.is_some() {
            self.wake.notify_all();
        }
    }
}

/// Reports a run's end exactly once: by the run itself, by its rejection,
/// or — if the tier drops it without running — by `Drop`.
struct RunGuard {
    shared: Arc<Shared>,
    id: JobId,
    done: AtomicBool,
}

impl RunGuard {
    fn report(&self, end: RunEnd) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.shared.finish(self.id, end);
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.report(RunEnd::Abandoned);
    }
}

/// Periodic jobs on one timer thread; each run executes as a task on a
/// [`Tier`] (the one the scheduler was built with unless the job names
/// another).
///
/// A failing or panicking run never stops its schedule; repeated failures
/// show as [`JobHealth::Degraded`] in [`stats`](Scheduler::stats).
///
/// ```
/// use std::time::Duration;
/// use tierpool::{LoadRule, MissedRun, Runtime, Scheduler};
///
/// let rt = Runtime::builder().build()?;
/// let scheduler = Scheduler::builder(rt.background()).build()?;
/// let id = scheduler
///     .every(Duration::from_secs(15 * 60))
///     .name("warm-cache")
///     .jitter(Duration::from_secs(5))
///     .missed_runs(MissedRun::RunOnceLate)
///     .load_aware(LoadRule::skip_above(0.8))
///     .start(|ctx| {
///         let _how_much = ctx.scale();
///         Ok::<_, String>(())
///     })?;
/// scheduler.trigger(id); // run once now, off the grid
/// scheduler.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Deadlock safety
///
/// One mutex guards the timetable. It is never held while submitting to a
/// tier or running a job; tier stats (for load rules) are read under it,
/// and no tier lock ever calls back into the scheduler.
pub struct Scheduler {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// False for a handle on someone else's timer (a [`CacheWarmer`]
    /// using the runtime's scheduler): dropping it stops nothing.
    ///
    /// [`CacheWarmer`]: crate::CacheWarmer
    owns_timer: bool,
}

/// Builds a [`Scheduler`].
///
/// ```
/// use tierpool::{Runtime, Scheduler};
/// let rt = Runtime::builder().build()?;
/// let s = Scheduler::builder(rt.background()).seed(42).build()?;
/// # drop(s);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct SchedulerBuilder {
    tier: Tier,
    seed: Option<u64>,
}

impl SchedulerBuilder {
    /// Seeds the jitter (default: from process entropy). Same seed, same
    /// jitter per job.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Starts the timer thread.
    pub fn build(self) -> Result<Scheduler, BuildError> {
        let seed = self
            .seed
            .unwrap_or_else(|| SeedRng::from_entropy().next_u64());
        let shared = Arc::new(Shared {
            clock: self.tier.pool.clock.clone(),
            tier: self.tier,
            state: Mutex::new(State {
                jobs: BTreeMap::new(),
                next_id: 1,
                seed,
                stopping: false,
            }),
            wake: Condvar::new(),
        });
        let for_thread = shared.clone();
        let handle = std::thread::Builder::new()
            .name("tierpool-scheduler".into())
            .spawn(move || timer_loop(&for_thread))
            .map_err(BuildError::Spawn)?;
        Ok(Scheduler {
            shared,
            thread: Mutex::new(Some(handle)),
            owns_timer: true,
        })
    }
}

impl Scheduler {
    /// A builder whose jobs run on `tier` by default, with the runtime's
    /// clock.
    pub fn builder(tier: &Tier) -> SchedulerBuilder {
        SchedulerBuilder {
            tier: tier.clone(),
            seed: None,
        }
    }

    /// Starts describing a job that fires every `interval`; finish with
    /// [`JobBuilder::start`].
    pub fn every(&self, interval: Duration) -> JobBuilder<'_> {
        let misfire = DEFAULT_MISFIRE.min(interval / 2);
        JobBuilder {
            scheduler: self,
            name: None,
            initial_delay: interval,
            spec: Spec {
                interval,
                jitter: Duration::ZERO,
                misfire,
                missed: MissedRun::Skip,
                load: None,
                degraded_after: DEFAULT_DEGRADED_AFTER,
                tier: self.shared.tier.clone(),
                priority: Priority::Normal,
            },
            misfire_set: false,
        }
    }

    fn mutate(&self, id: JobId, f: impl FnOnce(&mut Entry, Instant)) -> bool {
        let mut st = self.shared.state.lock();
        let now = self.shared.clock.now();
        match st.jobs.get_mut(&id) {
            Some(e) => {
                f(e, now);
                self.shared.wake.notify_all();
                true
            }
            None => false,
        }
    }

    /// Stops firing the job (a run in progress finishes). Fires while
    /// paused are neither run nor counted as missed. `false` if unknown.
    pub fn pause(&self, id: JobId) -> bool {
        self.mutate(id, |e, _| e.paused = true)
    }

    /// Fires the job again from its next grid time after now. `false` if
    /// unknown.
    pub fn resume(&self, id: JobId) -> bool {
        self.mutate(id, |e, now| {
            if e.paused {
                e.paused = false;
                let next = e.latest_nominal(now).map_or(0, |m| m + 1).max(e.next_n);
                e.set_next(next);
            }
        })
    }

    /// Runs the job once as soon as possible, off the grid (after the
    /// current run, if one is in progress; never twice at once). Ignores
    /// the load rule and pause: it is an explicit request. `false` if
    /// unknown.
    pub fn trigger(&self, id: JobId) -> bool {
        self.mutate(id, |e, _| e.trigger_pending = true)
    }

    /// Removes the job; a run in progress finishes but is not recorded.
    /// `false` if unknown.
    pub fn remove(&self, id: JobId) -> bool {
        self.shared.state.lock().jobs.remove(&id).is_some()
    }

    /// One job's numbers.
    pub fn job_stats(&self, id: JobId) -> Option<JobStats> {
        self.shared
            .state
            .lock()
            .jobs
            .get(&id)
            .map(|e| e.snapshot(id))
    }

    /// Every job's numbers and health.
    pub fn stats(&self) -> SchedulerStats {
        let st = self.shared.state.lock();
        SchedulerStats {
            jobs: st.jobs.iter().map(|(id, e)| e.snapshot(*id)).collect(),
        }
    }

    /// Stops the timer thread and joins it. Runs already dispatched belong
    /// to their tier (the runtime's shutdown accounts for them). Later calls
    /// do nothing.
    pub fn shutdown(&self) {
        self.shared.state.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.thread.lock().take() {
            if h.join().is_err() {
                tlog!(error, target: "tierpool::schedule", "scheduler timer thread panicked");
            }
        }
    }

    /// Whether [`shutdown`](Scheduler::shutdown) has run.
    pub fn is_shut_down(&self) -> bool {
        self.shared.state.lock().stopping
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if self.owns_timer {
            self.shutdown();
        }
    }
}

impl Scheduler {
    /// A handle on this scheduler's timetable that does not own the timer
    /// (dropping it stops nothing).
    pub(crate) fn shared_handle(&self) -> Scheduler {
        Scheduler {
            shared: self.shared.clone(),
            thread: Mutex::new(None),
            owns_timer: false,
        }
    }

    pub(crate) fn owns_timer(&self) -> bool {
        self.owns_timer
    }
}

/// Health reasons for a scheduler's degraded jobs.
pub(crate) fn degraded_reasons(stats: &SchedulerStats) -> Vec<crate::health::HealthReason> {
    stats
        .degraded()
        .map(|j| crate::health::HealthReason::JobDegraded {
            job: j.name.clone(),
            consecutive_failures: j.consecutive_failures,
        })
        .collect()
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("tier", &self.shared.tier.name())
            .field("jobs", &self.shared.state.lock().jobs.len())
            .finish()
    }
}

/// Describes one periodic job; [`start`](JobBuilder::start) validates and
/// adds it.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{Priority, Runtime, Scheduler};
/// let rt = Runtime::builder().build()?;
/// let s = Scheduler::builder(rt.background()).build()?;
/// let err = s.every(Duration::from_secs(10))
///     .jitter(Duration::from_secs(10))
///     .start(|_| Ok::<_, String>(()))
///     .unwrap_err();
/// assert_eq!(err.field(), "jitter");
/// let ok = s.every(Duration::from_secs(10))
///     .name("report")
///     .initial_delay(Duration::ZERO)
///     .priority(Priority::Low)
///     .degraded_after(5)
///     .tier(rt.ui())
///     .start(|_| Ok::<_, String>(()))?;
/// # let _ = ok;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a job builder does nothing until start() is called"]
pub struct JobBuilder<'a> {
    scheduler: &'a Scheduler,
    name: Option<String>,
    initial_delay: Duration,
    spec: Spec,
    misfire_set: bool,
}

impl JobBuilder<'_> {
    /// A name for stats and logs (default `job#<id>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Time from `start` to the first fire (default: one interval).
    pub fn initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// Each fire is delayed by a random amount in `[0, jitter]` (seeded;
    /// less than the interval). Fire times stay on the grid: jitter never
    /// accumulates.
    pub fn jitter(mut self, d: Duration) -> Self {
        self.spec.jitter = d;
        self
    }

    /// What to do with missed fires (default [`MissedRun::Skip`]).
    pub fn missed_runs(mut self, policy: MissedRun) -> Self {
        self.spec.missed = policy;
        self
    }

    /// How late a fire may be looked at and still run on time (default 60 s
    /// or half the interval, whichever is shorter; above zero, at most the
    /// interval).
    pub fn misfire_threshold(mut self, d: Duration) -> Self {
        self.spec.misfire = d;
        self.misfire_set = true;
        self
    }

    /// Skip or shrink runs while the tier is busy.
    pub fn load_aware(mut self, rule: LoadRule) -> Self {
        self.spec.load = Some(rule);
        self
    }

    /// Consecutive failures (errors or panics) that mark the job degraded
    /// (default 3, at least 1).
    pub fn degraded_after(mut self, n: u32) -> Self {
        self.spec.degraded_after = n;
        self
    }

    /// The tier runs execute on (default: the scheduler's).
    pub fn tier(mut self, tier: &Tier) -> Self {
        self.spec.tier = tier.clone();
        self
    }

    /// The priority runs are submitted at (default normal).
    pub fn priority(mut self, p: Priority) -> Self {
        self.spec.priority = p;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.spec;
        if s.interval.is_zero() {
            return Err(ConfigError::new("interval", "must be above zero"));
        }
        if s.jitter >= s.interval {
            return Err(ConfigError::new(
                "jitter",
                format!(
                    "must be less than the interval ({:?}), got {:?}",
                    s.interval, s.jitter
                ),
            ));
        }
        if self.misfire_set && (s.misfire.is_zero() || s.misfire > s.interval) {
            return Err(ConfigError::new(
                "misfire_threshold",
                format!(
                    "must be above zero and at most the interval ({:?}), got {:?}",
                    s.interval, s.misfire
                ),
            ));
        }
        if s.degraded_after == 0 {
            return Err(ConfigError::new("degraded_after", "must be at least 1"));
        }
        if let Some(rule) = &s.load {
            rule.validate()?;
        }
        Ok(())
    }

    /// Validates and adds the job; the error names the bad field
    /// (`interval`, `jitter`, `misfire_threshold`, `degraded_after`,
    /// `load_aware.threshold`, `load_aware.scale`; `scheduler` once shut
    /// down).
    pub fn start<E, F>(mut self, f: F) -> Result<JobId, ConfigError>
    where
        F: Fn(&JobContext<'_>) -> Result<(), E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        self.validate()?;
        if self.spec.misfire.is_zero() {
            // An interval under 2 ns halves to zero; keep "on time" possible.
            self.spec.misfire = self.spec.interval;
        }
        let shared = &self.scheduler.shared;
        let mut st = shared.state.lock();
        if st.stopping {
            return Err(ConfigError::new("scheduler", "is shut down"));
        }
        let id = JobId(st.next_id);
        st.next_id += 1;
        let name: Arc<str> = Arc::from(self.name.unwrap_or_else(|| id.to_string()));
        let start = shared
            .clock
            .now()
            .checked_add(self.initial_delay)
            .ok_or_else(|| ConfigError::new("initial_delay", "is too far in the future"))?;
        let run: Arc<RunFn> = Arc::new(move |ctx| f(ctx).map_err(|e| e.to_string()));
        let mut entry = Entry {
            stats: JobStats {
                id,
                name: name.to_string(),
                runs: 0,
                succeeded: 0,
                failed: 0,
                panicked: 0,
                abandoned: 0,
                late_runs: 0,
                triggered: 0,
                shrunk: 0,
                missed: 0,
                skipped_overlap: 0,
                skipped_load: 0,
                rejected: 0,
                consecutive_failures: 0,
                health: JobHealth::Healthy,
                paused: false,
                running: false,
                next_fire: None,
                last_skip: None,
                last_error: None,
            },
            name,
            spec: self.spec,
            run,
            start,
            next_n: 0,
            next_jitter: Duration::ZERO,
            rng: SeedRng::new(st.seed ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            running: false,
            paused: false,
            trigger_pending: false,
            late_pending: None,
        };
        entry.set_next(0);
        st.jobs.insert(id, entry);
        shared.wake.notify_all();
        Ok(id)
    }
}

fn utilisation_of(tier: &Tier) -> f64 {
    tier.stats().utilisation
}

// The timer thread: decide under the lock, submit outside it, park until
// the next due time.
fn timer_loop(shared: &Arc<Shared>) {
    let mut st = shared.state.lock();
    loop {
        if st.stopping {
            return;
        }
        // DECIDE
        let now = shared.clock.now();
        let mut dispatches = Vec::new();
        let mut next_due: Option<Instant> = None;
        let mut util = utilisation_of;
        for (id, e) in st.jobs.iter_mut() {
            if let Some(plan) = e.poll(now, &mut util) {
                dispatches.push(Dispatch {
                    id: *id,
                    name: e.name.clone(),
                    run: e.run.clone(),
                    tier: e.spec.tier.clone(),
                    priority: e.spec.priority,
                    kind: plan.kind,
                    scheduled_for: plan.scheduled_for,
                    scale: plan.scale,
                    utilisation: plan.utilisation,
                });
            }
            if !e.paused {
                if let Some(d) = e.due_at() {
                    next_due = Some(next_due.map_or(d, |n| n.min(d)));
                }
            }
        }
        if dispatches.is_empty() {
            // IDLE: until the next due time or a notification.
            st = shared
                .wake
                .wait_budget(st, shared.clock.wait_budget(next_due));
            continue;
        }
        // DISPATCH
        drop(st);
        for d in dispatches {
            dispatch(shared, d);
        }
        st = shared.state.lock();
    }
}

fn dispatch(shared: &Arc<Shared>, d: Dispatch) {
    let guard = Arc::new(RunGuard {
        shared: shared.clone(),
        id: d.id,
        done: AtomicBool::new(false),
    });
    let in_task = guard.clone();
    let (id, name, run) = (d.id, d.name, d.run);
    let (kind, scheduled_for, scale, utilisation) =
        (d.kind, d.scheduled_for, d.scale, d.utilisation);
    let submitted = d
        .tier
        .task(move |task: &TaskContext| {
            let ctx = JobContext {
                task,
                id,
                name: &name,
                kind,
                scheduled_for,
                scale,
                utilisation,
            };
            match catch_unwind(AssertUnwindSafe(|| run(&ctx))) {
                Ok(Ok(())) => {
                    in_task.report(RunEnd::Ok);
                    Ok(())
                }
                Ok(Err(msg)) => {
                    in_task.report(RunEnd::Failed(msg.clone()));
                    Err(msg)
                }
                Err(payload) => {
                    in_task.report(RunEnd::Panicked(panic_message(&*payload)));
                    // Let the tier count and log the panic as well.
                    resume_unwind(payload)
                }
            }
        })
        .priority(d.priority)
        .submit();
    match submitted {
        Ok(handle) => drop(handle),
        Err(e) => {
            let (reason, f) = e.into_parts();
            drop(f);
            guard.report(RunEnd::Rejected(reason));
        }
    }
}
