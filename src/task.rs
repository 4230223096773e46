//! A task: its shared core (state, token, outcome slot, permit), the
//! context the closure sees, and the handle the submitter keeps.
//!
//! # The task lifecycle
//!
//! ```text
//!            start (worker CAS)            return (worker swap)
//!   QUEUED ─────────────────────► RUNNING ───────────────────► DONE
//!     │  ▲                          │  past timeout + grace      ▲
//!     │  └── restart (preempted,    ▼  (watchdog CAS)            │
//!     │      restartable)          ZOMBIE ───────────────────────┘
//!     │ cancel / queue budget / shutdown (CAS)
//!     ▼
//!   DISCARDED
//! ```
//!
//! # Invariants
//!
//! 1. The state changes only by the compare-and-swaps drawn above, so a
//!    queued task is either started by one worker or discarded by one
//!    canceller, never both.
//! 2. Every path that leaves `QUEUED` without running (discard, a dropped
//!    job) settles the slot and returns the admission permit (the `Drop`
//!    of [`Job`] is the last line of defence: no task vanishes unsettled).
//! 3. The permit is returned when the work is really over: on discard, or
//!    when the worker's thread comes back from the closure (so a zombie
//!    keeps holding its user's share until it returns).

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::admission::Permit;
use crate::cancel::{CancelReason, Cancelled, TokenCell};
use crate::clock::Clock;
use crate::error::TaskError;
use crate::pool::PoolShared;
use crate::priority::Priority;
use crate::slot::{Settle, Slot, TaskResult};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering};
use crate::telemetry::TierCounters;

/// A task's id, unique within the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(u64);

impl TaskId {
    pub(crate) fn next() -> TaskId {
        // A process-wide id source, not part of any protocol: std's atomic
        // even under loom (whose atomics cannot live in a `static`).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        TaskId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// The number behind the id.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where a task is in its life, or how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Waiting in its tier's queue.
    Queued,
    /// Running on a worker thread.
    Running,
    /// Returned `Ok`.
    Completed,
    /// Returned `Err`.
    Failed,
    /// Panicked.
    Panicked,
    /// Cancelled, with the reason (a timeout is `Cancelled(Timeout)`).
    Cancelled(CancelReason),
}

impl TaskStatus {
    /// Whether this is an outcome (the task will not run any more).
    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskStatus::Queued | TaskStatus::Running)
    }
}

/// No watchdog deadline (see `TaskCoreOf::watch`).
pub(crate) const NO_WATCH: u64 = u64::MAX;

/// A watch word keeps its deadline as nanoseconds after the run's start
/// (exact, 61 bits: a deadline more than 73 years into one run is no
/// deadline) and the phase code in the 3 bits above. Relative, because
/// the clock's own nanoseconds need all 64 bits (a manual clock can be
/// moved a century on). The word carries no attempt number: two attempts
/// of one task whose words are equal (same start, same phase: a manual
/// clock that did not move) are one to the watchdog's compare-exchange,
/// which then moves the later attempt on to the same timeout it would have
/// had anyway, skipping only its warning.
const WATCH_AFTER_MAX: u64 = (1 << 61) - 1;

/// The watch word for a deadline `at` of a run that started at `start`
/// (both nanoseconds past the clock's epoch; `at == u64::MAX`: none) and
/// of `phase` (a code below 7).
pub(crate) fn watch_word(start: u64, at: u64, phase: u8) -> u64 {
    let after = at.saturating_sub(start);
    if at == u64::MAX || after > WATCH_AFTER_MAX {
        return NO_WATCH;
    }
    u64::from(phase.min(6)) << 61 | after
}

/// `(deadline, phase)` of a watch word of a run that started at `start`;
/// `None` for `NO_WATCH`.
pub(crate) fn watch_parts(word: u64, start: u64) -> Option<(u64, u8)> {
    (word != NO_WATCH).then_some((
        start.saturating_add(word & WATCH_AFTER_MAX),
        (word >> 61) as u8,
    ))
}

/// The lifecycle word of a task core: `state | attempt << 8`.
fn life_word(state: u8, attempt: u32) -> u64 {
    u64::from(state) | u64::from(attempt) << 8
}

fn life_state(life: u64) -> u8 {
    (life & 0xff) as u8
}

fn life_attempt(life: u64) -> u32 {
    (life >> 8) as u32
}

pub(crate) const QUEUED: u8 = 0;
pub(crate) const RUNNING: u8 = 1;
pub(crate) const ZOMBIE: u8 = 2;
pub(crate) const DONE: u8 = 3;
pub(crate) const DISCARDED: u8 = 4;

/// Per-task options resolved against the tier's defaults at submit.
#[derive(Clone, Debug)]
pub(crate) struct TaskOptions {
    pub(crate) priority: Priority,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) warn_after: Option<Duration>,
    pub(crate) queue_budget: Option<Duration>,
    /// Bytes the task may hold before a checkpoint cancels it (the tier's
    /// `memory_budget` unless overridden).
    pub(crate) memory_budget: Option<u64>,
    pub(crate) preemptible: bool,
    pub(crate) restartable: bool,
}

/// A task's shared state and, in its last field, its typed part (outcome
/// slot and closure) — one allocation per task. The engine sees it as
/// [`TaskCore`] (`S = dyn Settle`); a handle sees the same allocation as
/// `TaskCoreOf<dyn TypedSlot<T, E>>`.
pub(crate) struct TaskCoreOf<S: ?Sized> {
    pub(crate) id: TaskId,
    pub(crate) opts: TaskOptions,
    pub(crate) tier: &'static str,
    /// When it was submitted, in nanoseconds on the clock's epoch
    /// ([`Clock::nanos`]).
    pub(crate) submitted: u64,
    /// The lifecycle state (low byte: `QUEUED` ... `DISCARDED`) and the
    /// attempt number above it, bumped on every (re)start so the watchdog
    /// can tell a stale entry. One word: starting a task is one
    /// compare-exchange that moves both.
    life: AtomicU64,
    /// The running attempt's next watchdog deadline and what it is for, in
    /// one word (see [`watch_word`]). Set by the worker at start and
    /// cleared at the end, read by the watchdog's scan of the running
    /// tasks (see `watchdog.rs`): no per-task heap entry or lock. The
    /// watchdog moves it on (warning → timeout → zombie) only by a
    /// compare-exchange from the word it read, so it never writes over a
    /// deadline the worker cleared or set for a later attempt.
    watch: AtomicU64,
    run_start: AtomicU64,
    token: TokenCell,
    /// `None` from the start for a tier without limits (nothing to give
    /// back): `held` says so without taking the lock.
    permit: Mutex<Option<Permit>>,
    held: bool,
    /// The tier's counters, and through them its pool.
    pub(crate) counters: Arc<TierCounters>,
    /// The typed part: outcome slot and closure (see `Typed`).
    pub(crate) slot: S,
}

/// The engine's view of a task.
pub(crate) type TaskCore = TaskCoreOf<dyn Settle>;

impl<S> TaskCoreOf<S> {
    pub(crate) fn new(
        opts: TaskOptions,
        tier: &'static str,
        submitted: u64,
        slot: S,
        permit: Option<Permit>,
        counters: Arc<TierCounters>,
    ) -> Self {
        TaskCoreOf {
            id: TaskId::next(),
            opts,
            tier,
            submitted,
            life: AtomicU64::new(QUEUED as u64),
            watch: AtomicU64::new(NO_WATCH),
            run_start: AtomicU64::new(0),
            token: TokenCell::default(),
            held: permit.is_some(),
            permit: Mutex::new(permit),
            counters,
            slot,
        }
    }
}

impl<S: ?Sized + Settle> TaskCoreOf<S> {
    /// The pool the task was submitted to, while it exists.
    pub(crate) fn pool(&self) -> Option<Arc<PoolShared>> {
        self.counters.pool.upgrade()
    }

    pub(crate) fn state(&self) -> u8 {
        life_state(self.life.load(Ordering::Acquire))
    }

    /// QUEUED → RUNNING with the next attempt number, which it returns.
    pub(crate) fn start(&self) -> Option<u32> {
        // Tried first without a load: a first attempt is the usual case,
        // and a load then a compare-exchange would fetch the submitter's
        // line twice (shared, then exclusive). A miss returns the word.
        let mut life = life_word(QUEUED, 0);
        loop {
            if life_state(life) != QUEUED {
                return None;
            }
            let attempt = life_attempt(life) + 1;
            match self.life.compare_exchange_weak(
                life,
                life_word(RUNNING, attempt),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(attempt),
                Err(now) => life = now,
            }
        }
    }

    pub(crate) fn attempt(&self) -> u32 {
        life_attempt(self.life.load(Ordering::Acquire))
    }

    /// Moves the state `from` → `to` (the attempt kept); `false` if it
    /// was not in `from`.
    fn move_state(&self, from: u8, to: u8) -> bool {
        self.life
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |life| {
                (life_state(life) == from).then(|| life_word(to, life_attempt(life)))
            })
            .is_ok()
    }

    /// Sets the next watchdog deadline of the run that started at `start`
    /// (the worker, at the start of a run; see `watch`).
    #[inline]
    pub(crate) fn set_watch(&self, start: u64, at: u64, phase: u8) {
        // SeqCst: pairs with the watchdog's reset of its planned wake-up
        // before it scans (see `Watchdog::watch_run`). A swap rather than a
        // store (the same `xchg` on x86): loom lets a plain store fall
        // between the read and the write of the watchdog's
        // compare-exchange (tokio-rs/loom#254), which no hardware does.
        self.watch
            .swap(watch_word(start, at, phase), Ordering::SeqCst);
    }

    /// Moves the watch on from the word `seen` of the run that started at
    /// `start` (the watchdog, after firing a phase, with what its scan read
    /// together): `false` if the run has cleared or replaced it since.
    pub(crate) fn replace_watch(&self, seen: u64, start: u64, at: u64, phase: u8) -> bool {
        self.watch
            .compare_exchange(
                seen,
                watch_word(start, at, phase),
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    pub(crate) fn set_run_start(&self, start: u64) {
        self.run_start.store(start, Ordering::Release);
    }

    /// Clears the deadline when a run ends. Release is enough: a deadline
    /// removed late is only a stale one the watchdog ignores (the attempt
    /// and state checks), never a missed one. A swap for loom's sake, as in
    /// `set_watch`.
    #[inline]
    pub(crate) fn clear_watch(&self) {
        if self.watch.load(Ordering::Relaxed) != NO_WATCH {
            self.watch.swap(NO_WATCH, Ordering::Release);
        }
    }

    /// `(attempt, watch word, run start)` of the running attempt, read so
    /// that the word belongs to that attempt (or is `NO_WATCH`): the
    /// attempt is read before and after the word, and again if a restart
    /// came between. A worker clears its word before the next attempt
    /// begins and sets the new one after, so a word read between two equal
    /// attempt reads is that attempt's. `None` if the task kept
    /// restarting under the reads (its new attempt plans itself).
    pub(crate) fn watch(&self) -> Option<(u32, u64, u64)> {
        for _ in 0..8 {
            let attempt = self.attempt();
            let word = self.watch.load(Ordering::SeqCst);
            let start = self.run_start.load(Ordering::Acquire);
            if self.attempt() == attempt {
                return Some((attempt, word, start));
            }
        }
        None
    }

    /// RUNNING → ZOMBIE if still running that attempt.
    pub(crate) fn mark_zombie(&self, attempt: u32) -> bool {
        self.life
            .compare_exchange(
                life_word(RUNNING, attempt),
                life_word(ZOMBIE, attempt),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The worker is back from the closure: RUNNING|ZOMBIE → DONE; returns
    /// the state it left.
    pub(crate) fn finish(&self) -> u8 {
        let left = self
            .life
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |life| {
                Some(life_word(DONE, life_attempt(life)))
            });
        life_state(left.unwrap_or_else(|l| l))
    }

    /// Puts a preempted restartable task back to QUEUED with a fresh token.
    /// Fails (and the caller settles it) if it was cancelled meanwhile.
    pub(crate) fn requeue(&self) -> bool {
        if self.slot.outcome().is_some() {
            return false;
        }
        // The previous run has returned: nobody reads the old reason.
        self.token.reset();
        let attempt = self.attempt();
        self.life
            .store(life_word(QUEUED, attempt), Ordering::Release);
        true
    }

    /// The current attempt's cancellation token.
    #[inline]
    pub(crate) fn token(&self) -> &TokenCell {
        &self.token
    }

    /// QUEUED → DISCARDED, settling as cancelled (invariant 2). `true` if
    /// this call discarded it.
    pub(crate) fn discard(&self, reason: CancelReason) -> bool {
        if !self.move_state(QUEUED, DISCARDED) {
            return false;
        }
        self.counters.dequeued();
        self.settle_cancelled(reason);
        self.release_permit();
        true
    }

    /// Settles the slot as cancelled and records it if this call won.
    pub(crate) fn settle_cancelled(&self, reason: CancelReason) -> bool {
        let won = self.slot.settle_cancelled(reason, &self.counters);
        if won {
            self.counters
                .events
                .emit_with(|| crate::telemetry::Event::TaskFinished {
                    tier: self.tier,
                    task: self.id,
                    status: TaskStatus::Cancelled(reason),
                });
        }
        won
    }

    #[inline]
    pub(crate) fn release_permit(&self) {
        if !self.held {
            return;
        }
        let permit = self.permit.lock().take();
        drop(permit);
    }

    pub(crate) fn status(&self) -> TaskStatus {
        if let Some(s) = self.slot.outcome() {
            return s;
        }
        match self.state() {
            QUEUED => TaskStatus::Queued,
            _ => TaskStatus::Running,
        }
    }
}

impl TaskCore {
    /// Drops the task's closure and what it captured, now, wherever it is
    /// called (a worker, `shutdown`, a timer): a captured value whose
    /// `Drop` panics is caught and logged, so it cannot unwind into a
    /// worker's loop, out of `shutdown`, or into whoever cancelled.
    pub(crate) fn drop_body(&self) {
        drop_captures_isolated(self.tier, self.id, || self.slot.drop_body());
    }

    /// Cancels wherever the task is. A queued task is discarded now; a
    /// running one has its token cancelled and its slot settled, unless it
    /// is a restartable task being preempted (it will run again).
    pub(crate) fn cancel(self: &Arc<Self>, reason: CancelReason) -> bool {
        let pool = self.pool();
        if self.discard(reason) {
            if let Some(pool) = &pool {
                pool.admission.notify_room();
            }
            return true;
        }
        if self.state() == DONE || self.state() == DISCARDED {
            return false;
        }
        let attempt = self.attempt();
        let restarts = reason == CancelReason::Preempted && self.opts.restartable;
        // Settle before the token fires: a task woken by it returns
        // `Err(Cancelled)` at once and must find its slot already cancelled,
        // not win it as `Failed` (the outcome would depend on a race).
        let settled = !restarts && self.settle_cancelled(reason);
        let newly = self.token.cancel(reason);
        if newly {
            // It must now return within the tier's grace, or be a zombie.
            if let Some(pool) = &pool {
                pool.watch_cancelled(self, attempt);
            }
        }
        if restarts {
            newly
        } else {
            settled
        }
    }
}

/// How one run of a task's closure ended, as the worker sees it.
pub(crate) enum RunEnd {
    /// The task settled its slot (and the slot recorded the outcome).
    Settled,
    /// Someone else settled first (timeout, cancel): the result was dropped.
    Late,
    /// Preempted and restartable: run it again.
    Restart,
    /// Failed and worth another attempt after this backoff; the worker is
    /// freed meanwhile (the watchdog's timer puts the job back).
    RetryAfter(Duration),
}

/// What travels through a tier's queue.
pub(crate) enum Work {
    Task(Job),
    /// Fault injection: makes the worker that takes it panic outside any
    /// task (tests of supervision).
    Poison,
}

/// A queued task. Its closure lives in the core (one allocation).
pub(crate) struct Job {
    pub(crate) core: Arc<TaskCore>,
}

impl Drop for Job {
    fn drop(&mut self) {
        // Invariant 2: a job that leaves the system without having run
        // (a queue dropped at shutdown, a failed re-queue) still settles.
        // A plain load first: almost every job is dropped after its run,
        // and a failing compare-exchange still takes the line exclusive.
        let state = self.core.state();
        if state == QUEUED {
            // Nobody else holds the job, so nobody can start it: after
            // this it is DISCARDED, by this call or a racing cancel.
            self.core.discard(CancelReason::Shutdown);
        }
        if state == QUEUED || state == DISCARDED {
            // It never ran and never will: what its closure captured goes
            // now, as the queue lets go of it — not with the last handle,
            // which a caller may keep long after a cancel (a captured
            // sender would keep its receiver waiting until then).
            self.core.drop_body();
        }
    }
}

/// The typed part of a task: its outcome slot and its body (the closure,
/// wrapped by the layer that submitted it). `Option` so the closure and
/// what it captured are freed as soon as the task has an outcome.
pub(crate) struct Typed<T, E, B> {
    pub(crate) slot: Slot<T, E>,
    body: Mutex<Option<B>>,
}

impl<T, E, B> Typed<T, E, B> {
    pub(crate) fn new(body: B) -> Self {
        Typed {
            slot: Slot::new(),
            body: Mutex::new(Some(body)),
        }
    }
}

/// A body: runs one attempt of the task, settling `slot` or saying why not.
pub(crate) trait Body<T, E>:
    FnMut(&TaskContext, &Slot<T, E>) -> RunEnd + Send + 'static
{
}

impl<T, E, B> Body<T, E> for B where B: FnMut(&TaskContext, &Slot<T, E>) -> RunEnd + Send + 'static {}

/// A handle's view of the typed part.
pub(crate) trait TypedSlot<T, E>: Settle {
    fn slot(&self) -> &Slot<T, E>;
}

impl<T: Send, E: Send, B: Body<T, E>> TypedSlot<T, E> for Typed<T, E, B> {
    fn slot(&self) -> &Slot<T, E> {
        &self.slot
    }
}

impl<T: Send, E: Send, B: Body<T, E>> Settle for Typed<T, E, B> {
    fn settle_cancelled(&self, reason: CancelReason, counters: &TierCounters) -> bool {
        self.slot.settle_cancelled(reason, counters)
    }

    fn settle_panicked(&self, message: &str, counters: &TierCounters) -> bool {
        self.slot.settle_panicked(message, counters)
    }

    fn outcome(&self) -> Option<TaskStatus> {
        self.slot.outcome()
    }

    fn keeps_nothing_to_drop(&self) -> bool {
        self.slot.keeps_nothing_to_drop()
    }

    fn drop_body(&self) {
        let body = self.body.lock().take();
        drop(body);
    }

    fn run(&self, ctx: &TaskContext) -> RunEnd {
        // Only the worker running the task takes this lock.
        let mut body = self.body.lock();
        let end = match body.as_mut() {
            Some(b) => b(ctx, &self.slot),
            None => RunEnd::Late,
        };
        if matches!(end, RunEnd::Settled | RunEnd::Late) {
            let done = body.take();
            drop(body);
            // Isolated like `TaskCore::drop_body`: the run is over and
            // its outcome settled; a capture panicking on drop changes
            // neither. (A run-once body consumed its closure inside the
            // run's own catch, so its captures are gone already and a
            // panic there was the task's; this drops what a restartable
            // body keeps between runs.)
            drop_captures_isolated(ctx.tier(), ctx.id(), move || drop(done));
        }
        end
    }
}

/// Runs `drop`, which drops a task's closure: a captured value whose
/// `Drop` panics is caught and logged (every closure drop outside a run
/// goes through here).
fn drop_captures_isolated(tier: &str, id: TaskId, drop: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(drop)).is_err() {
        tlog!(error, target: "tierpool::task",
            "{tier}: task {id}: a value its closure captured panicked when dropped (caught)");
    }
}

/// The body of a run-once closure.
pub(crate) fn once_body<T, E, F>(f: F) -> impl Body<T, E>
where
    F: FnOnce(&TaskContext) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let mut f = Some(f);
    move |ctx: &TaskContext, slot: &Slot<T, E>| match f.take() {
        Some(f) => finish_run(slot, catch_unwind(AssertUnwindSafe(|| f(ctx))), ctx),
        None => RunEnd::Late,
    }
}

/// The body of a closure that may run again after preemption.
pub(crate) fn restartable_body<T, E, F>(mut f: F) -> impl Body<T, E>
where
    F: FnMut(&TaskContext) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    move |ctx: &TaskContext, slot: &Slot<T, E>| {
        let r = catch_unwind(AssertUnwindSafe(|| f(ctx)));
        let preempted = ctx.cancel_reason() == Some(CancelReason::Preempted);
        if preempted && !matches!(r, Ok(Ok(_))) {
            return RunEnd::Restart;
        }
        finish_run(slot, r, ctx)
    }
}

fn finish_run<T, E>(
    slot: &Slot<T, E>,
    r: std::thread::Result<Result<T, E>>,
    ctx: &TaskContext,
) -> RunEnd {
    let result: TaskResult<T, E> = match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(TaskError::Failed(e)),
        Err(payload) => {
            // `&*`: the payload inside the box, not the box itself as `Any`
            // (which never downcasts to a string).
            let msg = panic_message(&*payload);
            tlog!(warn, target: "tierpool::task", "task {} on {} panicked: {msg}", ctx.id(), ctx.tier());
            Err(TaskError::Panicked(msg))
        }
    };
    match slot.settle(result, &ctx.job.core.counters) {
        Ok(_) => RunEnd::Settled,
        Err(late) => {
            drop(late);
            RunEnd::Late
        }
    }
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}

/// What a running task can know about itself, and its cancellation
/// token.
///
/// ```
/// use tierpool::{Priority, Runtime};
/// let rt = Runtime::builder().build()?;
/// let h = rt.ui().task(|ctx| {
///     for chunk in 0..10 {
///         ctx.checkpoint()?; // stop early once cancelled or timed out
///         let _ = chunk;
///     }
///     Ok::<_, tierpool::Cancelled>(ctx.user().unwrap_or("anonymous").to_string())
/// })
/// .user("user-17")
/// .submit()?;
/// assert_eq!(h.join().unwrap(), "user-17");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TaskContext {
    /// The job itself, moved in for the run and handed back after it (no
    /// reference count traffic on the task's core per run).
    job: Job,
    started: Instant,
    clock: Clock,
    attempt: u32,
    memory: RunMemory,
}

/// The allocator's counters as this run began, on its worker thread (see
/// `alloc.rs`), and the budget they are held to.
struct RunMemory {
    base: crate::alloc::Sample,
    thread: usize,
    budget: Option<u64>,
}

impl TaskContext {
    pub(crate) fn new(
        job: Job,
        started: Instant,
        clock: Clock,
        attempt: u32,
        memory_budget: Option<u64>,
    ) -> Self {
        TaskContext {
            job,
            started,
            clock,
            attempt,
            // Without the counting allocator every count stays 0: two
            // thread-local reads per run saved.
            memory: if crate::alloc::CountingAllocator::is_active() {
                RunMemory {
                    base: crate::alloc::Sample::now(),
                    thread: crate::alloc::thread_marker(),
                    budget: memory_budget,
                }
            } else {
                RunMemory {
                    base: crate::alloc::Sample::default(),
                    thread: 0,
                    budget: memory_budget,
                }
            },
        }
    }

    /// Bytes allocated by this run so far, on its worker thread (gross:
    /// what was freed again is not subtracted).
    ///
    /// Needs [`CountingAllocator`](crate::alloc::CountingAllocator)
    /// installed as the global allocator; otherwise, and when called on
    /// another thread than the task's worker, it reads 0. Allocations on
    /// threads the task spawns are not the task's.
    ///
    /// ```
    /// let rt = tierpool::Runtime::builder().build()?;
    /// let h = rt.ui().task(|ctx| Ok::<_, String>(ctx.allocated_bytes())).submit()?;
    /// assert_eq!(h.join().unwrap(), 0); // no CountingAllocator in this doc test
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn allocated_bytes(&self) -> u64 {
        if crate::alloc::thread_marker() != self.memory.thread {
            return 0;
        }
        self.memory.base.allocated_since()
    }

    /// Bytes this run holds now: allocated minus freed since it started,
    /// on its worker thread — what the run's
    /// [`memory_budget`](TaskContext::memory_budget) (the task's own or its
    /// tier's) is checked against. 0 without the counting allocator or off the worker thread.
    ///
    /// ```
    /// let rt = tierpool::Runtime::builder().build()?;
    /// let h = rt.ui().task(|ctx| Ok::<_, String>(ctx.held_bytes())).submit()?;
    /// assert_eq!(h.join().unwrap(), 0); // no CountingAllocator in this doc test
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn held_bytes(&self) -> u64 {
        if crate::alloc::thread_marker() != self.memory.thread {
            return 0;
        }
        self.memory.base.held_since()
    }

    /// Cancels the task (reason: memory) if it holds more than its
    /// budget. Called from the checkpoints: the runtime cannot interrupt
    /// a running closure, so this is where the budget is enforced.
    #[cold]
    fn enforce_budget(&self, budget: u64) {
        let held = self.held_bytes();
        if held > budget {
            tlog!(warn, target: "tierpool::task", "task {} on {} holds {held} B, over its memory budget of {budget} B: cancelled",
                self.id(), self.tier());
            self.job.core.cancel(CancelReason::Memory);
        }
    }

    /// Bytes the run allocated, for the worker's stats when it returns.
    pub(crate) fn run_bytes(&self) -> u64 {
        self.memory.base.allocated_since()
    }

    /// This task's id.
    pub fn id(&self) -> TaskId {
        self.job.core.id
    }

    /// The user key it was submitted with, if any.
    pub fn user(&self) -> Option<&str> {
        self.job.core.opts.user.as_deref()
    }

    /// Its priority.
    pub fn priority(&self) -> Priority {
        self.job.core.opts.priority
    }

    /// The tier it runs on (`"ui"`, `"background"`, `"realtime"`).
    pub fn tier(&self) -> &'static str {
        self.job.core.tier
    }

    /// Which run this is: 1, or more after a restart from preemption.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the task has been asked to stop.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.job.core.token().is_cancelled()
    }

    /// Why it was asked to stop, if it was.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.job.core.token().reason()
    }

    /// `Err(Cancelled)` once the task has been asked to stop: call it
    /// between steps and return with `?`.
    ///
    /// With a [`memory_budget`](TaskContext::memory_budget) (the task's own
    /// or its tier's), this is also where the budget is checked: a task
    /// holding more is cancelled (reason: [`Memory`](CancelReason::Memory))
    /// here.
    #[inline]
    pub fn checkpoint(&self) -> Result<(), Cancelled> {
        if let Some(budget) = self.memory.budget {
            self.enforce_budget(budget);
        }
        match self.job.core.token().reason() {
            None => Ok(()),
            Some(r) => Err(Cancelled::new(r)),
        }
    }

    /// The memory budget this run is held to, in bytes: the task's own
    /// ([`TaskBuilder::memory_budget`](crate::TaskBuilder::memory_budget))
    /// or its tier's. `None`: no budget.
    pub fn memory_budget(&self) -> Option<u64> {
        self.memory.budget
    }

    /// When the task will be timed out, if it has a timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.started.checked_add(self.job.core.opts.timeout?)
    }

    /// Time left before the timeout (zero once past it).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|d| d.saturating_duration_since(self.clock.now()))
    }

    /// When the task was submitted (on the runtime's clock).
    pub fn submitted_at(&self) -> Instant {
        self.clock
            .instant_at(self.job.core.submitted)
            .unwrap_or(self.started)
    }

    pub(crate) fn core(&self) -> &TaskCore {
        &self.job.core
    }

    /// Ends the run: the job back, for the worker to settle or requeue.
    pub(crate) fn into_job(self) -> Job {
        self.job
    }

    /// Whether a retry could still be queued (the runtime is not stopping).
    pub(crate) fn can_retry(&self) -> bool {
        self.job.core.pool().is_some_and(|p| p.accepts_retries())
    }

    /// The runtime's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Sleeps for `d` on the runtime's clock, waking early (with `Err`) if
    /// the task is cancelled. Use it instead of `thread::sleep` in tasks.
    /// Checks the memory budget first, as [`checkpoint`](Self::checkpoint)
    /// does.
    pub fn sleep(&self, d: Duration) -> Result<(), Cancelled> {
        self.checkpoint()?;
        let until = self.clock.deadline_after(d);
        self.job.core.token().wait_until(&self.clock, until)
    }

    /// Sleeps until `at` on the runtime's clock, waking early (with `Err`)
    /// if the task is cancelled. Checks the memory budget first.
    pub fn sleep_until(&self, at: Instant) -> Result<(), Cancelled> {
        self.checkpoint()?;
        self.job.core.token().wait_until(&self.clock, Some(at))
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id())
            .field("tier", &self.tier())
            .field("priority", &self.priority())
            .field("user", &self.user())
            .field("cancelled", &self.cancel_reason())
            .finish()
    }
}

/// The submitter's handle on a task: wait for its outcome, cancel it, ask
/// where it is. Dropping the handle detaches the task (it still runs).
///
/// ```
/// use std::time::Duration;
/// use tierpool::{Priority, Runtime};
/// let rt = Runtime::builder().build()?;
/// let h = rt.background().submit(Priority::Low, |_| Ok::<_, String>(2 + 2))?;
/// let h = match h.join_timeout(Duration::from_secs(5)) {
///     Ok(outcome) => { assert_eq!(outcome.unwrap(), 4); return Ok(()); }
///     Err(still_running) => still_running,
/// };
/// h.cancel();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TaskHandle<T, E> {
    /// The task, seen with its typed slot (one reference: the engine's
    /// view is an upcast of the same `Arc` when needed).
    typed: TypedCore<T, E>,
    clock: Clock,
}

/// A task seen with its typed outcome slot.
pub(crate) type TypedCore<T, E> = Arc<TaskCoreOf<dyn TypedSlot<T, E>>>;

impl<T, E> TaskHandle<T, E> {
    pub(crate) fn new(typed: TypedCore<T, E>, clock: Clock) -> Self {
        TaskHandle { typed, clock }
    }

    fn slot(&self) -> &Slot<T, E> {
        self.typed.slot.slot()
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.typed.id
    }

    pub(crate) fn into_parts(self) -> (Arc<TaskCore>, TypedCore<T, E>) {
        let core: Arc<TaskCore> = self.typed.clone();
        (core, self.typed)
    }

    /// Waits for the outcome. With a timeout set, this returns by the
    /// task's deadline (plus the watchdog's reaction time) even if the task
    /// ignores cancellation.
    pub fn join(self) -> TaskResult<T, E> {
        self.slot().take_wait()
    }

    /// Waits up to `d` (on the runtime's clock) for the outcome; hands the
    /// handle back if it is not there yet.
    pub fn join_timeout(self, d: Duration) -> Result<TaskResult<T, E>, Self> {
        let deadline = self.clock.deadline_after(d);
        match self.slot().take_until(&self.clock, deadline) {
            Some(r) => Ok(r),
            None => Err(self),
        }
    }

    /// The outcome if it is already there, without waiting; otherwise the
    /// handle back.
    pub fn try_result(self) -> Result<TaskResult<T, E>, Self> {
        let now = self.clock.now();
        match self.slot().take_until(&self.clock, Some(now)) {
            Some(r) => Ok(r),
            None => Err(self),
        }
    }

    /// Whether the outcome is there.
    pub fn is_finished(&self) -> bool {
        self.typed.slot.outcome().is_some()
    }

    /// Cancels the task: a queued task never starts; a running one sees
    /// its token cancelled, and the handle resolves as cancelled at once
    /// (a late result is dropped). `true` if this call cancelled it.
    pub fn cancel(&self) -> bool {
        let core: Arc<TaskCore> = self.typed.clone();
        core.cancel(CancelReason::Caller)
    }

    /// Where the task is now, or how it ended.
    pub fn status(&self) -> TaskStatus {
        self.typed.status()
    }
}

impl<T, E> fmt::Debug for TaskHandle<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id())
            .field("status", &self.status())
            .finish()
    }
}

#[cfg(test)]
fn test_core() -> Arc<TaskCore> {
    let opts = TaskOptions {
        priority: Priority::Normal,
        user: None,
        timeout: None,
        warn_after: None,
        queue_budget: None,
        memory_budget: None,
        preemptible: false,
        restartable: true,
    };
    Arc::new(TaskCoreOf::new(
        opts,
        "test",
        0,
        Typed::new(once_body(|_: &TaskContext| Ok::<(), ()>(()))),
        None,
        Arc::new(TierCounters::new()),
    ))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn watch_words_keep_deadline_and_phase_apart() {
        for (start, at, phase) in [
            (0, 0, 1),
            (5, 8, 4),
            (3, 123_456_789, 3),
            (1 << 63, (1 << 63) + 7, 2),
        ] {
            let w = watch_word(start, at, phase);
            assert_eq!(
                watch_parts(w, start),
                Some((at, phase)),
                "exact to the nanosecond"
            );
        }
        // Far past the epoch (a manual clock moved on a century) is fine.
        let start = u64::MAX - 10_000;
        assert_eq!(
            watch_parts(watch_word(start, start + 3, 2), start),
            Some((start + 3, 2))
        );
        // A deadline more than 73 years into one run is none.
        assert_eq!(watch_word(0, 1 << 62, 2), NO_WATCH);
        assert_eq!(watch_word(7, u64::MAX, 2), NO_WATCH);
        assert_eq!(watch_parts(NO_WATCH, 0), None);
    }

    /// The watchdog read attempt 1's warning, the run returned and a
    /// restart began attempt 2 with its own deadline: the watchdog's
    /// follow-up (attempt 1's timeout) must not land on attempt 2.
    #[test]
    fn a_follow_up_never_replaces_a_later_attempts_deadline() {
        let core = test_core();
        assert_eq!(core.start(), Some(1));
        core.set_run_start(3);
        core.set_watch(3, 800, 2);
        let (attempt, seen, start) = core.watch().unwrap();
        assert_eq!((attempt, watch_parts(seen, start)), (1, Some((800, 2))));
        // The worker: run over, deadline cleared, restarted.
        core.clear_watch();
        core.finish();
        assert!(core.requeue());
        assert_eq!(core.start(), Some(2));
        core.set_run_start(1001);
        core.set_watch(1001, 5000, 2);
        // The watchdog's follow-up from what it saw fails.
        assert!(!core.replace_watch(seen, start, 3000, 3));
        let (attempt, word, start) = core.watch().unwrap();
        assert_eq!((attempt, watch_parts(word, start)), (2, Some((5000, 2))));
        // From the current word it succeeds.
        assert!(core.replace_watch(word, start, 9000, 3));
        let (_, word, start) = core.watch().unwrap();
        assert_eq!(watch_parts(word, start), Some((9000, 3)));
    }
}

/// loom models of the watch word (run by `.ci/loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::loom_model;

    /// The worker ends attempt 1 and starts attempt 2 while the watchdog
    /// reads the watch and moves attempt 1's warning on to its timeout:
    /// every read pairs a word with its own attempt, and attempt 2 always
    /// ends with its own deadline.
    #[test]
    fn loom_watch_follow_up_vs_restart() {
        loom_model(
            "watch_follow_up_vs_restart",
            |_| {},
            || {
                let core = test_core();
                assert_eq!(core.start(), Some(1));
                let w1 = watch_word(0, 100, 2);
                let w2 = watch_word(0, 500, 2);
                core.set_watch(0, 100, 2);

                let c = core.clone();
                let worker = loom::thread::spawn(move || {
                    c.clear_watch();
                    c.finish();
                    assert!(c.requeue());
                    assert_eq!(c.start(), Some(2));
                    c.set_watch(0, 500, 2);
                });

                // The watchdog on a thread of its own too: loom does not
                // preempt the model's main thread before it reads.
                let c = core.clone();
                let watchdog = loom::thread::spawn(move || {
                    let Some((attempt, word, _)) = c.watch() else {
                        return;
                    };
                    match attempt {
                        1 => assert!(word == w1 || word == NO_WATCH, "attempt 1 with {word:#x}"),
                        2 => assert!(word == w2 || word == NO_WATCH, "attempt 2 with {word:#x}"),
                        a => panic!("attempt {a}"),
                    }
                    // Fire the warning as the watchdog does: only for a run
                    // still running that attempt, then move the word on.
                    if word == w1 && c.state() == RUNNING && c.attempt() == 1 {
                        c.replace_watch(word, 0, 300, 3);
                    }
                });
                watchdog.join().unwrap();
                worker.join().unwrap();
                assert_eq!(core.watch().map(|w| (w.0, w.1)), Some((2, w2)));
            },
        );
    }
}
