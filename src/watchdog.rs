//! The watchdog: one thread per runtime that enforces queue budgets,
//! warnings, timeouts and zombie detection for every tier.
//!
//! # How it works
//!
//! Two sources of deadlines, one thread that parks until the nearest (no
//! polling tick: an idle runtime's watchdog sleeps until notified):
//!
//! - **Running tasks** carry their next deadline in their own core
//!   (`TaskCore::set_watch`). The watchdog keeps one number, `planned`: the
//!   earliest such deadline it knows of. A worker starting a task only
//!   touches the watchdog if its deadline is earlier than `planned` (an
//!   atomic load; with one timeout per tier, practically never), so the
//!   hot path takes no lock and pushes nothing. When `planned` comes, the
//!   watchdog scans the tiers' running tasks, fires what is due and plans
//!   the next wake-up: about one scan per timeout period under load.
//! - **A min-heap** for the rarer one-off deadlines: queue budgets, the
//!   zombie check after a caller's cancel, and timer callbacks (retry
//!   backoff, batch timeouts).
//!
//! The phases of one task's life:
//!
//! ```text
//!  submit ──► QueueBudget: still queued?  → discard, cancelled(queue_expired)
//!  start  ──► Warn:        still running? → count + log, schedule Timeout
//!             Timeout:     still running? → cancel token, settle
//!                                           cancelled(timeout), schedule Zombie
//!             Zombie:      still running? → mark zombie, its tier starts a
//!                                           replacement thread
//! ```
//!
//! Heap entries are never removed when a task finishes early; a fired entry
//! for a finished task (or an earlier attempt of a restarted one) is a
//! no-op, and the heap is compacted whenever it doubles past its last live
//! size.
//!
//! # Why no deadline is missed
//!
//! A worker stores its task's deadline (SeqCst), then reads `planned`
//! (SeqCst); if the deadline is earlier it lowers `planned` (`fetch_min`)
//! and wakes the watchdog. Before a scan the watchdog resets `planned` to
//! "never" (SeqCst), then reads every running task's deadline, then lowers
//! `planned` to what it found. In the single total order of SeqCst
//! operations, either the worker's read of `planned` comes after the reset
//! (it sees "never", so it lowers `planned` itself) or its store comes
//! before the scan's read (the scan sees the deadline).
//!
//! # Races, named
//!
//! - *Completion vs timeout*: both settle the outcome slot; the first wins
//!   (see `slot.rs`), the other's value is dropped and counted late.
//! - *Follow-up vs restart*: after firing a warning or a timeout found by
//!   a scan, the watchdog moves the task's watch word on to the next phase
//!   by compare-exchange from the word it read. A run that returned meanwhile
//!   has cleared the word, and a restarted attempt has set its own, so the
//!   exchange fails and the later attempt keeps its deadline (it used to be
//!   a plain store, which could give a restarted run its previous attempt's
//!   timeout). The scan reads a task's attempt before and after its word, so
//!   a word is never paired with another attempt.
//! - *Zombie mark vs the task returning*: the worker's `finish` swap and
//!   the watchdog's `mark_zombie` compare-and-swap order them; the zombie
//!   bookkeeping happens under the tier's thread lock so a returning
//!   zombie cannot be subtracted before it was added.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cancel::CancelReason;
use crate::clock::Clock;
use crate::pool::PoolShared;
use crate::sync::{Arc, AtomicU64, Condvar, Mutex, Ordering, Weak};
use crate::task::{watch_parts, TaskCore, QUEUED, RUNNING};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    QueueBudget,
    Warn,
    Timeout,
    Zombie,
}

struct Entry {
    at: Instant,
    seq: u64,
    action: Action,
}

enum Action {
    /// A phase of a task's life.
    Task {
        phase: Phase,
        attempt: u32,
        start: Instant,
        task: Weak<TaskCore>,
    },
    /// Run a callback (retries waiting out their backoff, batch timeouts).
    Call(Box<dyn FnOnce() + Send>),
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

impl Entry {
    /// Whether firing this entry could still do anything.
    fn is_live(&self) -> bool {
        let Action::Task {
            phase,
            attempt,
            task,
            ..
        } = &self.action
        else {
            return true;
        };
        let Some(core) = task.upgrade() else {
            return false;
        };
        match phase {
            Phase::QueueBudget => core.state() == QUEUED,
            _ => core.state() == RUNNING && core.attempt() == *attempt,
        }
    }
}

/// What a fired task entry knows about the run it watches.
struct Fired {
    attempt: u32,
    start: Instant,
}

struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    stop: bool,
    compact_at: usize,
}

const MIN_COMPACT: usize = 1024;

pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    /// Deadlines of running tasks are nanoseconds past its epoch
    /// ([`Clock::nanos`]), like the runs' start times.
    clock: Clock,
    /// The earliest running-task deadline known (see the module header).
    planned: AtomicU64,
    /// The tiers whose running tasks the scan looks at.
    pools: Mutex<Vec<Weak<PoolShared>>>,
}

const NEVER: u64 = u64::MAX;

impl Watchdog {
    pub(crate) fn start(clock: Clock) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                seq: 0,
                stop: false,
                compact_at: MIN_COMPACT,
            }),
            cv: Condvar::new(),
            clock,
            planned: AtomicU64::new(NEVER),
            pools: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tierpool-watchdog".into())
            .spawn(move || s.run())?;
        Ok(Watchdog {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Expire the task if it is still queued at `at`.
    pub(crate) fn watch_queue(&self, core: &Arc<TaskCore>, at: Instant) {
        self.shared.push(at, Phase::QueueBudget, core, 0, at);
    }

    /// Makes the scan look at this tier's running tasks.
    pub(crate) fn register(&self, pool: &Arc<PoolShared>) {
        self.shared.pools.lock().push(Arc::downgrade(pool));
    }

    /// Watch a run that started at `start_n` (nanoseconds on the clock's
    /// epoch): warning, then timeout. Hot path: two atomic stores and,
    /// usually, one atomic load.
    #[inline]
    pub(crate) fn watch_run(&self, core: &TaskCore, start_n: u64) {
        let o = &core.opts;
        // Integer nanoseconds from here on: cheaper than `Instant`
        // arithmetic, which is measurable at millions of tasks a second.
        let after = |d: Option<Duration>| {
            d.map(|d| {
                start_n
                    .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(NEVER))
                    .min(NEVER - 1)
            })
        };
        let (warn, timeout) = (after(o.warn_after), after(o.timeout));
        // A per-task timeout may come before the tier's warning: then the
        // warning is skipped rather than delaying the timeout.
        let next = match (warn, timeout) {
            (Some(w), Some(t)) if w < t => Some((w, Phase::Warn)),
            (_, Some(t)) => Some((t, Phase::Timeout)),
            (Some(w), None) => Some((w, Phase::Warn)),
            (None, None) => None,
        };
        core.set_run_start(start_n);
        match next {
            Some((at, phase)) => self.shared.plan(core, start_n, at, phase),
            None => core.set_watch(start_n, NEVER, 0),
        }
    }

    /// Declare the run a zombie if it is still running at `at`.
    pub(crate) fn watch_zombie(&self, core: &Arc<TaskCore>, attempt: u32, at: Instant) {
        self.shared.push(at, Phase::Zombie, core, attempt, at);
    }

    /// Runs `f` on the watchdog thread at `at` (or drops it, unrun, when
    /// the runtime stops first: what it owns must settle itself on drop).
    pub(crate) fn call_at(&self, at: Instant, f: Box<dyn FnOnce() + Send>) {
        self.shared.push_action(at, Action::Call(f));
    }

    /// How many deadlines are pending (live or not yet compacted).
    pub(crate) fn pending(&self) -> usize {
        self.shared.state.lock().heap.len()
    }

    /// Stops the thread and joins it. Harmless to call twice.
    pub(crate) fn stop(&self) {
        let dropped = {
            let mut st = self.shared.state.lock();
            st.stop = true;
            self.shared.cv.notify_all();
            std::mem::take(&mut st.heap)
        };
        // Outside the lock: dropping a callback may settle the task it owns.
        drop(dropped);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Phase {
    fn code(self) -> u8 {
        match self {
            Phase::QueueBudget => 1,
            Phase::Warn => 2,
            Phase::Timeout => 3,
            Phase::Zombie => 4,
        }
    }

    fn from_code(c: u8) -> Option<Phase> {
        Some(match c {
            1 => Phase::QueueBudget,
            2 => Phase::Warn,
            3 => Phase::Timeout,
            4 => Phase::Zombie,
            _ => return None,
        })
    }
}

impl Shared {
    fn nanos(&self, at: Instant) -> u64 {
        self.clock.nanos(at).min(NEVER - 1)
    }

    fn instant(&self, nanos: u64) -> Option<Instant> {
        (nanos != NEVER)
            .then(|| self.clock.instant_at(nanos))
            .flatten()
    }

    /// Sets a running task's next deadline; wakes the watchdog if it is
    /// earlier than planned (see "Why no deadline is missed").
    #[inline]
    fn plan(&self, core: &TaskCore, start: u64, at: u64, phase: Phase) {
        core.set_watch(start, at, phase.code());
        if at < self.planned.load(Ordering::SeqCst)
            && self.planned.fetch_min(at, Ordering::SeqCst) > at
        {
            let _g = self.state.lock();
            self.cv.notify_one();
        }
    }

    /// Plans the phase after one that fired (`at`: when; `None`: no next
    /// phase). A phase found by a scan (`scanned`: the watch word it was
    /// read from) is followed up in that word, which moves from `seen` on
    /// only if the run has not cleared or replaced it meanwhile (it
    /// returned, or a later attempt began: that attempt's own deadline
    /// stands). A phase from the heap is followed up on the heap.
    fn follow_up(
        &self,
        core: &Arc<TaskCore>,
        scanned: Option<u64>,
        e: &Fired,
        at: Option<Instant>,
        phase: Phase,
    ) {
        match (scanned, at) {
            (Some(seen), at) => {
                let at = at.map_or(NEVER, |at| self.nanos(at));
                if core.replace_watch(seen, self.nanos(e.start), at, phase.code()) && at != NEVER {
                    self.planned.fetch_min(at, Ordering::SeqCst);
                }
            }
            (None, Some(at)) => self.push(at, phase, core, e.attempt, e.start),
            (None, None) => {}
        }
    }

    /// Fires what is due among the running tasks of every tier, then plans
    /// the next wake-up.
    fn scan(&self) {
        self.planned.store(NEVER, Ordering::SeqCst);
        let now = self.nanos(self.clock.now());
        let pools: Vec<Arc<PoolShared>> =
            self.pools.lock().iter().filter_map(Weak::upgrade).collect();
        let mut due = Vec::new();
        let mut next = NEVER;
        for pool in &pools {
            pool.for_each_running(|core| {
                let Some((attempt, word, start)) = core.watch() else {
                    return;
                };
                let Some((at, phase)) = watch_parts(word, start) else {
                    return;
                };
                if at <= now {
                    due.push((core.clone(), attempt, word, phase, start));
                } else {
                    next = next.min(at);
                }
            });
        }
        self.planned.fetch_min(next, Ordering::SeqCst);
        for (core, attempt, word, phase, start) in due {
            let (Some(phase), Some(start)) = (Phase::from_code(phase), self.instant(start)) else {
                continue;
            };
            // As for heap entries: a panic while firing (a log sink) must
            // not kill the thread every timeout depends on.
            let fired = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.fire_phase(&core, phase, attempt, start, Some(word))
            }));
            if fired.is_err() {
                eprintln!("tierpool: the watchdog caught a panic while firing a deadline; it keeps running");
            }
        }
    }

    fn planned_instant(&self) -> Option<Instant> {
        self.instant(self.planned.load(Ordering::SeqCst))
    }

    fn push(&self, at: Instant, phase: Phase, core: &Arc<TaskCore>, attempt: u32, start: Instant) {
        self.push_action(
            at,
            Action::Task {
                phase,
                attempt,
                start,
                task: Arc::downgrade(core),
            },
        );
    }

    fn push_action(&self, at: Instant, action: Action) {
        let mut st = self.state.lock();
        if st.stop {
            drop(st);
            drop(action);
            return;
        }
        if st.heap.len() >= st.compact_at {
            st.heap.retain(|Reverse(e)| e.is_live());
            st.compact_at = (st.heap.len() * 2).max(MIN_COMPACT);
        }
        let earliest = st.heap.peek().map(|Reverse(e)| e.at);
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(Reverse(Entry { at, seq, action }));
        if earliest.is_none_or(|e| at < e) {
            self.cv.notify_one();
        }
    }

    fn run(&self) {
        let mut due = Vec::new();
        let mut scan;
        loop {
            {
                let mut st = self.state.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    let now = self.clock.now();
                    while st.heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
                        if let Some(Reverse(e)) = st.heap.pop() {
                            due.push(e);
                        }
                    }
                    scan = self.planned_instant().is_some_and(|p| p <= now);
                    if !due.is_empty() || scan {
                        break;
                    }
                    let next = match (
                        st.heap.peek().map(|Reverse(e)| e.at),
                        self.planned_instant(),
                    ) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    st = self.cv.wait_budget(st, self.clock.wait_budget(next));
                }
            }
            // Fire outside the lock: firing settles slots, logs and may
            // start threads.
            for e in due.drain(..) {
                // A panic while firing (a log sink that panics, say) must
                // not kill the one thread every timeout depends on.
                let fired = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.fire(e)));
                if fired.is_err() {
                    eprintln!("tierpool: the watchdog caught a panic while firing a deadline; it keeps running");
                }
            }
            if scan {
                self.scan();
            }
        }
    }

    fn fire(&self, e: Entry) {
        let (phase, attempt, start, task) = match e.action {
            Action::Call(f) => {
                // A panicking callback must not take the watchdog down.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                    tlog!(error, target: "tierpool::watchdog", "a timer callback panicked");
                }
                return;
            }
            Action::Task {
                phase,
                attempt,
                start,
                task,
            } => (phase, attempt, start, task),
        };
        let Some(core) = task.upgrade() else {
            return;
        };
        self.fire_phase(&core, phase, attempt, start, None);
    }

    /// One phase of a task's life is due. `scanned`: the watch word it was
    /// read from, when it came from the scan of running tasks (follow-ups
    /// are then planned in the same word, replacing exactly that word)
    /// rather than from the heap.
    fn fire_phase(
        &self,
        core: &Arc<TaskCore>,
        phase: Phase,
        attempt: u32,
        start: Instant,
        scanned: Option<u64>,
    ) {
        let e = Fired { attempt, start };
        match phase {
            Phase::QueueBudget => {
                if core.discard(CancelReason::QueueExpired) {
                    tlog!(info, target: "tierpool::watchdog",
                        "task {} on {} expired in the queue (budget {:?})", core.id, core.tier, core.opts.queue_budget.unwrap_or_default());
                    if let Some(pool) = core.pool() {
                        pool.admission.notify_room();
                    }
                }
            }
            Phase::Warn => {
                if core.state() != RUNNING || core.attempt() != e.attempt {
                    return;
                }
                core.counters.warned();
                core.counters
                    .events
                    .emit_with(|| crate::telemetry::Event::TaskWarned {
                        tier: core.tier,
                        task: core.id,
                        after: core.opts.warn_after.unwrap_or_default(),
                    });
                tlog!(warn, target: "tierpool::watchdog",
                    "task {} on {} still running after {:?}", core.id, core.tier, core.opts.warn_after.unwrap_or_default());
                let at = core.opts.timeout.and_then(|t| e.start.checked_add(t));
                self.follow_up(core, scanned, &e, at, Phase::Timeout);
            }
            Phase::Timeout => {
                if core.state() != RUNNING || core.attempt() != e.attempt {
                    return;
                }
                let grace = core
                    .pool()
                    .map_or(Duration::from_secs(1), |p| p.config.cancel_grace);
                // Taken before settling: a caller that sees the timeout
                // (its join returns) and then moves a manual clock must not
                // push the zombie deadline later.
                let at = self.clock.now().checked_add(grace);
                // Settle before the token fires: a task woken by it returns
                // `Err(Cancelled)` at once and must find its slot already
                // cancelled (timeout), not win it as `Failed`.
                let won = core.settle_cancelled(CancelReason::Timeout);
                core.token().cancel(CancelReason::Timeout);
                self.follow_up(core, scanned, &e, at, Phase::Zombie);
                // Logged last: a log sink that fails must not leave the
                // task uncancelled.
                if won {
                    core.counters
                        .events
                        .emit_with(|| crate::telemetry::Event::TaskTimedOut {
                            tier: core.tier,
                            task: core.id,
                            after: core.opts.timeout.unwrap_or_default(),
                        });
                    tlog!(warn, target: "tierpool::watchdog",
                        "task {} on {} timed out after {:?}", core.id, core.tier, core.opts.timeout.unwrap_or_default());
                }
            }
            Phase::Zombie => {
                self.follow_up(core, scanned, &e, None, Phase::Zombie);
                if let Some(pool) = core.pool() {
                    pool.declare_zombie(core, e.attempt);
                }
            }
        }
    }
}
