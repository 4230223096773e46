//! The watchdog: one thread per runtime that enforces queue budgets,
//! warnings, timeouts and zombie detection for every tier.
//!
//! # How it works
//!
//! Deadlines live in one min-heap. The thread parks until the nearest one
//! (no polling tick: an idle runtime's watchdog sleeps until notified), and
//! a push that becomes the new nearest deadline wakes it. Each entry is a
//! phase of one task's life:
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
//! Entries are never removed when a task finishes early; a fired entry for
//! a finished task (or an earlier attempt of a restarted one) is a no-op.
//! To keep memory bounded under a high task rate, the heap is compacted
//! (dead entries dropped) whenever it doubles past its last live size.
//!
//! # Races, named
//!
//! - *Completion vs timeout*: both settle the outcome slot; the first wins
//!   (see `slot.rs`), the other's value is dropped and counted late.
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
use crate::sync::{Arc, Condvar, Mutex, Weak};
use crate::task::{TaskCore, QUEUED, RUNNING};

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
    clock: Clock,
}

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

    /// Watch a run that started at `start` (warning, then timeout).
    pub(crate) fn watch_run(&self, core: &Arc<TaskCore>, attempt: u32, start: Instant) {
        let o = &core.opts;
        let warn = o.warn_after.and_then(|w| start.checked_add(w));
        let timeout = o.timeout.and_then(|t| start.checked_add(t));
        // A per-task timeout may come before the tier's warning: then the
        // warning is skipped rather than delaying the timeout.
        match (warn, timeout) {
            (Some(w), Some(t)) if w < t => self.shared.push(w, Phase::Warn, core, attempt, start),
            (_, Some(t)) => self.shared.push(t, Phase::Timeout, core, attempt, start),
            (Some(w), None) => self.shared.push(w, Phase::Warn, core, attempt, start),
            (None, None) => {}
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

impl Shared {
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
        if earliest.map_or(true, |e| at < e) {
            self.cv.notify_one();
        }
    }

    fn run(&self) {
        let mut due = Vec::new();
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
                    if !due.is_empty() {
                        break;
                    }
                    let next = st.heap.peek().map(|Reverse(e)| e.at);
                    st = self.cv.wait_budget(st, self.clock.wait_budget(next));
                }
            }
            // Fire outside the lock: firing settles slots, logs and may
            // start threads.
            for e in due.drain(..) {
                self.fire(e);
            }
        }
    }

    fn fire(&self, e: Entry) {
        let (phase, attempt, start, task) = match e.action {
            Action::Call(f) => {
                // A panicking callback must not take the watchdog down.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                    log::error!(target: "tierpool::watchdog", "a timer callback panicked");
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
        let e = Fired { attempt, start };
        match phase {
            Phase::QueueBudget => {
                if core.discard(CancelReason::QueueExpired) {
                    log::info!(target: "tierpool::watchdog",
                        "task {} on {} expired in the queue (budget {:?})", core.id, core.tier, core.opts.queue_budget.unwrap_or_default());
                    if let Some(pool) = core.pool.upgrade() {
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
                log::warn!(target: "tierpool::watchdog",
                    "task {} on {} still running after {:?}", core.id, core.tier, core.opts.warn_after.unwrap_or_default());
                if let Some(at) = core.opts.timeout.and_then(|t| e.start.checked_add(t)) {
                    self.push(at, Phase::Timeout, &core, e.attempt, e.start);
                }
            }
            Phase::Timeout => {
                if core.state() != RUNNING || core.attempt() != e.attempt {
                    return;
                }
                core.current_token().cancel(CancelReason::Timeout);
                if core.settle_cancelled(CancelReason::Timeout) {
                    core.counters
                        .events
                        .emit_with(|| crate::telemetry::Event::TaskTimedOut {
                            tier: core.tier,
                            task: core.id,
                            after: core.opts.timeout.unwrap_or_default(),
                        });
                    log::warn!(target: "tierpool::watchdog",
                        "task {} on {} timed out after {:?}", core.id, core.tier, core.opts.timeout.unwrap_or_default());
                }
                let grace = core
                    .pool
                    .upgrade()
                    .map_or(Duration::from_secs(1), |p| p.config.cancel_grace);
                let at = self.clock.now().checked_add(grace);
                if let Some(at) = at {
                    self.push(at, Phase::Zombie, &core, e.attempt, e.start);
                }
            }
            Phase::Zombie => {
                if let Some(pool) = core.pool.upgrade() {
                    pool.declare_zombie(&core, e.attempt);
                }
            }
        }
    }
}
