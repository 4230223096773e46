//! Runtime events and the one dispatcher thread that hands them to the
//! application's listeners.
//!
//! # How an event travels
//!
//! ```text
//!  emitter (worker, watchdog, scheduler, breaker, …)
//!     │  listening? (one relaxed atomic load; no listener: nothing built)
//!     ▼
//!  bounded channel ──full──► dropped, counted (`Stats::events_dropped`)
//!     │
//!     ▼
//!  dispatcher thread `tierpool-events` ─► every listener, each in catch_unwind
//! ```
//!
//! # Invariants
//!
//! 1. Emitting never blocks and never fails: a full channel drops the event
//!    and counts it. A slow listener therefore slows only the dispatcher,
//!    and a panicking one is caught, counted and logged; neither can stall
//!    a worker, the watchdog or a submitter.
//! 2. No listener, no cost: the channel and the thread are created on the
//!    first [`EventBus::listen`]; until then an emitter only reads one
//!    atomic flag, before it builds the event.
//! 3. Shutdown is bounded: [`EventBus::stop`] lets the dispatcher deliver
//!    what is queued for at most `DRAIN_CAP` of real time, drops (and
//!    counts) the rest, and detaches a thread stuck inside a listener
//!    instead of waiting for it forever.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};

use crate::priority::Priority;
use crate::resilience::BreakerState;
use crate::schedule::SkipReason;
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering};
use crate::task::{TaskId, TaskStatus};

/// Longest the dispatcher keeps delivering after [`EventBus::stop`].
const DRAIN_CAP: Duration = Duration::from_secs(1);

/// Default capacity of the event channel.
pub(crate) const DEFAULT_EVENT_CAPACITY: usize = 4096;

/// Why a pool's thread count changed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScaleReason {
    /// Queued work outnumbered idle workers.
    Demand {
        /// Tasks queued when the worker was started.
        queued: usize,
        /// Idle workers then.
        idle: usize,
    },
    /// A task was declared a zombie; a thread took its place.
    ZombieReplacement,
    /// A worker above the minimum was idle for the keep-alive.
    Idle {
        /// The tier's keep-alive.
        keep_alive: Duration,
    },
}

/// Why a worker thread was started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartCause {
    /// The thread died outside any task (within the restart intensity).
    Died,
    /// [`Tier::restart`](crate::Tier::restart) replaced it.
    Maintenance,
}

/// Something that happened in the runtime, as given to
/// [`Runtime::on_event`](crate::Runtime::on_event) listeners.
///
/// Task events carry the tier's name and the task's id; `Display` prints
/// one log-style line.
///
/// ```
/// use tierpool::{Event, TaskId};
/// # let id = { let rt = tierpool::Runtime::builder().build()?;
/// #   rt.ui().submit(tierpool::Priority::Normal, |_| Ok::<_, String>(()))?.id() };
/// let e = Event::TaskZombie { tier: "ui", task: id };
/// assert_eq!(e.tier(), Some("ui"));
/// assert!(e.to_string().contains("zombie"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A task was accepted.
    TaskSubmitted {
        /// Tier name.
        tier: &'static str,
        /// The task.
        task: TaskId,
        /// Its priority.
        priority: Priority,
    },
    /// A task started running.
    TaskStarted {
        /// Tier name.
        tier: &'static str,
        /// The task.
        task: TaskId,
        /// 1 for the first run; more after a preemption restart or retry.
        attempt: u32,
    },
    /// A task reached its one terminal outcome.
    TaskFinished {
        /// Tier name.
        tier: &'static str,
        /// The task.
        task: TaskId,
        /// Completed, failed, panicked or cancelled (with the reason).
        status: TaskStatus,
    },
    /// A task ran past its warning threshold.
    TaskWarned {
        /// Tier name.
        tier: &'static str,
        /// The task.
        task: TaskId,
        /// The threshold.
        after: Duration,
    },
    /// A task was cancelled at its timeout.
    TaskTimedOut {
        /// Tier name.
        tier: &'static str,
        /// The task.
        task: TaskId,
        /// The timeout.
        after: Duration,
    },
    /// A cancelled task kept running past the cancel grace.
    TaskZombie {
        /// Tier name.
        tier: &'static str,
        /// The task.
        task: TaskId,
    },
    /// A running task was cancelled to make room for critical work.
    TaskPreempted {
        /// Tier name.
        tier: &'static str,
        /// The task.
        task: TaskId,
        /// Its priority.
        priority: Priority,
    },
    /// A tier started or retired a worker.
    PoolScaled {
        /// Tier name.
        tier: &'static str,
        /// Workers before.
        from: usize,
        /// Workers after.
        to: usize,
        /// Why.
        reason: ScaleReason,
    },
    /// A worker thread was started in place of another.
    ThreadRestarted {
        /// Tier name.
        tier: &'static str,
        /// Why.
        cause: RestartCause,
    },
    /// A circuit breaker changed state.
    BreakerStateChanged {
        /// The breaker's name (or `"breaker"` when it has none).
        breaker: Arc<str>,
        /// The state left.
        from: BreakerState,
        /// The state entered.
        to: BreakerState,
    },
    /// A scheduled fire did not run.
    ScheduledRunSkipped {
        /// The job's name.
        job: Arc<str>,
        /// Why.
        reason: SkipReason,
    },
    /// A scheduled run returned an error or panicked.
    ScheduledRunFailed {
        /// The job's name.
        job: Arc<str>,
        /// The error (or panic message).
        error: String,
        /// Failures in a row so far.
        consecutive_failures: u32,
    },
}

impl Event {
    /// The tier the event is about, if it is about one.
    pub fn tier(&self) -> Option<&'static str> {
        match self {
            Event::TaskSubmitted { tier, .. }
            | Event::TaskStarted { tier, .. }
            | Event::TaskFinished { tier, .. }
            | Event::TaskWarned { tier, .. }
            | Event::TaskTimedOut { tier, .. }
            | Event::TaskZombie { tier, .. }
            | Event::TaskPreempted { tier, .. }
            | Event::PoolScaled { tier, .. }
            | Event::ThreadRestarted { tier, .. } => Some(tier),
            _ => None,
        }
    }

    /// The task the event is about, if it is about one.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            Event::TaskSubmitted { task, .. }
            | Event::TaskStarted { task, .. }
            | Event::TaskFinished { task, .. }
            | Event::TaskWarned { task, .. }
            | Event::TaskTimedOut { task, .. }
            | Event::TaskZombie { task, .. }
            | Event::TaskPreempted { task, .. } => Some(*task),
            _ => None,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::TaskSubmitted {
                tier,
                task,
                priority,
            } => write!(f, "{tier}: task {task} submitted ({priority})"),
            Event::TaskStarted {
                tier,
                task,
                attempt,
            } => write!(f, "{tier}: task {task} started (attempt {attempt})"),
            Event::TaskFinished { tier, task, status } => {
                write!(f, "{tier}: task {task} finished: {status:?}")
            }
            Event::TaskWarned { tier, task, after } => {
                write!(f, "{tier}: task {task} still running after {after:?}")
            }
            Event::TaskTimedOut { tier, task, after } => {
                write!(f, "{tier}: task {task} timed out after {after:?}")
            }
            Event::TaskZombie { tier, task } => {
                write!(f, "{tier}: task {task} ignored cancellation: zombie")
            }
            Event::TaskPreempted {
                tier,
                task,
                priority,
            } => write!(f, "{tier}: task {task} ({priority}) preempted"),
            Event::PoolScaled {
                tier,
                from,
                to,
                reason,
            } => write!(f, "{tier}: scaled from {from} to {to} workers ({reason:?})"),
            Event::ThreadRestarted { tier, cause } => {
                write!(f, "{tier}: worker thread restarted ({cause:?})")
            }
            Event::BreakerStateChanged { breaker, from, to } => {
                write!(f, "circuit breaker {breaker}: {from} -> {to}")
            }
            Event::ScheduledRunSkipped { job, reason } => {
                write!(f, "job {job}: run skipped: {reason}")
            }
            Event::ScheduledRunFailed {
                job,
                error,
                consecutive_failures,
            } => write!(
                f,
                "job {job}: run failed ({consecutive_failures} in a row): {error}"
            ),
        }
    }
}

pub(crate) type Listener = dyn Fn(&Event) + Send + Sync;
type ListenerList = Arc<Vec<Arc<Listener>>>;

/// The running dispatcher: created with the first listener.
struct Dispatcher {
    tx: Sender<Event>,
    stop_tx: Mutex<Option<Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by the dispatcher thread when it returns.
    done: Arc<(Mutex<bool>, crate::sync::Condvar)>,
}

/// Where a runtime's events go. Every tier, scheduler and batch worker of
/// one runtime holds the same bus.
pub(crate) struct EventBus {
    /// Invariant 2: read by every emitter before it builds an event.
    listening: AtomicBool,
    capacity: usize,
    dispatcher: OnceLock<Dispatcher>,
    /// Replaced whole on every `listen`, so the dispatcher reads a
    /// snapshot with one short lock per event.
    listeners: Arc<Mutex<ListenerList>>,
    stopped: AtomicBool,
    counts: Arc<EventCounts>,
}

#[derive(Default)]
struct EventCounts {
    delivered: AtomicU64,
    dropped: AtomicU64,
    listener_panics: AtomicU64,
}

/// The bus's numbers, for [`Stats`](crate::Stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EventTotals {
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
    pub(crate) listener_panics: u64,
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> Self {
        EventBus {
            listening: AtomicBool::new(false),
            capacity,
            dispatcher: OnceLock::new(),
            listeners: Arc::new(Mutex::new(Arc::new(Vec::new()))),
            stopped: AtomicBool::new(false),
            counts: Arc::default(),
        }
    }

    /// Whether anyone listens; emitters check this before building an
    /// event (invariant 2).
    #[inline]
    pub(crate) fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Builds and sends the event if anyone listens. Never blocks.
    #[inline]
    pub(crate) fn emit_with(&self, make: impl FnOnce() -> Event) {
        if self.listening() {
            self.send(make());
        }
    }

    #[cold]
    fn send(&self, event: Event) {
        let Some(d) = self.dispatcher.get() else {
            return;
        };
        if d.tx.try_send(event).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a listener, starting the dispatcher thread with the first one.
    pub(crate) fn listen(&self, listener: Arc<Listener>) -> std::io::Result<()> {
        if self.stopped.load(Ordering::SeqCst) {
            return Ok(()); // after shutdown there is nothing left to hear
        }
        {
            let mut l = self.listeners.lock();
            let mut next: Vec<_> = l.iter().cloned().collect();
            next.push(listener);
            *l = Arc::new(next);
        }
        if self.dispatcher.get().is_none() {
            let d = self.start_dispatcher()?;
            // Two first listeners racing: the loser's thread is stopped.
            if let Err(extra) = self.dispatcher.set(d) {
                extra.stop_tx.lock().take();
                if let Some(h) = extra.thread.lock().take() {
                    let _ = h.join();
                }
            }
        }
        self.listening.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn start_dispatcher(&self) -> std::io::Result<Dispatcher> {
        let (tx, rx) = bounded(self.capacity);
        let (stop_tx, stop_rx) = bounded::<()>(1);
        let done = Arc::new((Mutex::new(false), crate::sync::Condvar::new()));
        let listeners = self.listeners.clone();
        let counts = self.counts.clone();
        let done2 = done.clone();
        let thread = std::thread::Builder::new()
            .name("tierpool-events".into())
            .spawn(move || {
                dispatch_loop(&rx, &stop_rx, &listeners, &counts);
                *done2.0.lock() = true;
                done2.1.notify_all();
            })?;
        Ok(Dispatcher {
            tx,
            stop_tx: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
            done,
        })
    }

    pub(crate) fn totals(&self) -> EventTotals {
        EventTotals {
            delivered: self.counts.delivered.load(Ordering::Relaxed),
            dropped: self.counts.dropped.load(Ordering::Relaxed),
            listener_panics: self.counts.listener_panics.load(Ordering::Relaxed),
        }
    }

    /// Stops emitting and lets the dispatcher finish (invariant 3).
    /// Idempotent.
    pub(crate) fn stop(&self) {
        self.listening.store(false, Ordering::SeqCst);
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(d) = self.dispatcher.get() else {
            return;
        };
        d.stop_tx.lock().take(); // disconnects: the dispatcher drains and ends
        let cap = Instant::now() + DRAIN_CAP + Duration::from_millis(500);
        let mut done = d.done.0.lock();
        while !*done && Instant::now() < cap {
            done = d
                .done
                .1
                .wait_budget(done, Some(cap.saturating_duration_since(Instant::now())));
        }
        let finished = *done;
        drop(done);
        let handle = d.thread.lock().take();
        if let Some(h) = handle {
            if finished {
                let _ = h.join();
            } else {
                tlog!(error, target: "tierpool::events",
                    "an event listener did not return within {DRAIN_CAP:?} of shutdown; its thread is detached");
            }
        }
    }
}

/// The dispatcher thread: deliver until stopped, then drain for at most
/// `DRAIN_CAP` and count what is left as dropped.
fn dispatch_loop(
    rx: &Receiver<Event>,
    stop: &Receiver<()>,
    listeners: &Mutex<ListenerList>,
    counts: &EventCounts,
) {
    loop {
        select! {
            recv(rx) -> e => match e {
                Ok(e) => deliver(&e, listeners, counts),
                Err(_) => return,
            },
            recv(stop) -> _ => break,
        }
    }
    let cap = Instant::now() + DRAIN_CAP;
    while let Ok(e) = rx.try_recv() {
        if Instant::now() >= cap {
            let left = 1 + rx.try_iter().count() as u64;
            counts.dropped.fetch_add(left, Ordering::Relaxed);
            tlog!(warn, target: "tierpool::events", "{left} events not delivered at shutdown (listeners too slow)");
            return;
        }
        deliver(&e, listeners, counts);
    }
}

fn deliver(e: &Event, listeners: &Mutex<ListenerList>, counts: &EventCounts) {
    let list = listeners.lock().clone();
    for l in list.iter() {
        if catch_unwind(AssertUnwindSafe(|| l(e))).is_err() {
            counts.listener_panics.fetch_add(1, Ordering::Relaxed);
            tlog!(error, target: "tierpool::events", "an event listener panicked on: {e}");
        }
    }
    counts.delivered.fetch_add(1, Ordering::Relaxed);
}
