//! Batch processor: a bounded priority queue of items, processed in batches
//! on a tier, with per-item retry, rate limiting, a circuit breaker and a
//! dead-letter list.
//!
//! # How an item moves
//!
//! ```text
//!  enqueue ─► READY (per priority, FIFO) ─► IN A BATCH ─► ok ──────────────► processed
//!               ▲        ▲                     │  │
//!               │        │ breaker open /      │  └─ failed, retryable, attempts left
//!               │        └─ rate limited /     │        └─► DELAYED (retry at now + backoff)
//!               │           shutdown: back to  │                     │ due
//!               │           the front, no      │                     ▼
//!               │           attempt spent      │                   READY
//!               │                              └─ failed, exhausted or not retryable
//!               │                                       └─► DEAD LETTERS (kept until drained)
//!  shutdown ◄───┴─ READY + DELAYED returned in the report
//! ```
//!
//! One dispatcher thread (`tierpool-batch`) forms batches — a full batch as
//! soon as there are `batch_size` ready items, a partial one once the
//! oldest ready item has waited `flush_interval` or after
//! [`BatchProcessor::process_now`] — and submits each as one task on the
//! tier, at most `max_concurrent_batches` at a time. It parks until the
//! next retry, flush or hold expires (no polling tick under the system
//! clock). A retry waits in `DELAYED`, not in a worker: no thread sleeps
//! through a backoff. When the breaker is open or the limiter throttles,
//! the batch hands its remaining items back and the dispatcher holds all
//! batches until the breaker's `retry_after` or the limiter's wait.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::error::{BuildError, ConfigError};
use crate::priority::Priority;
use crate::resilience::{CircuitBreaker, RateLimiter, RetryPolicy, SeedRng};
use crate::sync::{Arc, Condvar, Mutex};
use crate::task::{panic_message, TaskContext};
use crate::tier::Tier;

/// Under a manual clock nobody may advance time during shutdown; the wait
/// for running batches then also ends after this much real time.
const MANUAL_CLOCK_REAL_CAP: Duration = Duration::from_secs(10);

/// What one item's processing can know: its attempt number, priority and
/// the batch task's cancellation.
///
/// ```
/// use tierpool::{BatchProcessor, Runtime};
/// let rt = Runtime::builder().build()?;
/// let p = BatchProcessor::builder(rt.background(), |url: &String, ctx| {
///     ctx.checkpoint().map_err(|c| c.to_string())?;
///     log::debug!("fetching {url}, attempt {}", ctx.attempt());
///     Ok::<_, String>(())
/// })
/// .build()?;
/// # drop(p);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ItemContext<'a> {
    task: &'a TaskContext,
    attempt: u32,
    priority: Priority,
}

impl ItemContext<'_> {
    /// 1 for the first try, then 2, 3 …
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The priority the item was enqueued with.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The batch task (clock, deadline, cancellation).
    pub fn task(&self) -> &TaskContext {
        self.task
    }

    /// `Err(Cancelled)` once the batch has been asked to stop.
    pub fn checkpoint(&self) -> Result<(), crate::Cancelled> {
        self.task.checkpoint()
    }
}

impl fmt::Debug for ItemContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemContext")
            .field("attempt", &self.attempt)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

/// Why an item ended in the dead-letter list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// It failed on its last allowed attempt.
    Exhausted,
    /// The retry policy's predicate said retrying would not help.
    NotRetryable,
}

/// An item that will not be processed again unless the application
/// re-enqueues it.
///
/// ```
/// use tierpool::{BatchProcessor, Priority, RetryPolicy, Runtime};
/// let rt = Runtime::builder().build()?;
/// let p = BatchProcessor::builder(rt.background(), |_: &u32, _| Err::<(), _>("gone"))
///     .retry(RetryPolicy::no_retry())
///     .build()?;
/// p.enqueue(7, Priority::Normal)?;
/// p.process_now();
/// # let t0 = std::time::Instant::now();
/// # while p.dead_letter_count() == 0 && t0.elapsed().as_secs() < 10 {
/// #     std::thread::sleep(std::time::Duration::from_millis(2));
/// # }
/// for dead in p.drain_dead_letters() {
///     assert_eq!((dead.item, dead.attempts, dead.error.as_str()), (7, 1, "gone"));
///     p.enqueue(dead.item, Priority::Low)?; // or persist it
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct DeadLetter<I> {
    /// The item.
    pub item: I,
    /// Its priority.
    pub priority: Priority,
    /// Attempts made.
    pub attempts: u32,
    /// Why it was given up on.
    pub reason: DeadReason,
    /// The last error's message.
    pub error: String,
    /// When, on the processor's clock.
    pub at: Instant,
}

/// Why [`BatchProcessor::enqueue`] refused an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueRejected {
    /// `capacity` items are already pending.
    Full {
        /// The processor's capacity.
        capacity: usize,
    },
    /// The processor is shut down.
    ShutDown,
}

/// A refused enqueue, handing the item(s) back.
///
/// ```
/// use tierpool::{BatchProcessor, EnqueueRejected, Priority, Runtime};
/// let rt = Runtime::builder().build()?;
/// let p = BatchProcessor::builder(rt.background(), |_: &u32, _| Ok::<_, String>(())).build()?;
/// let _ = p.shutdown(std::time::Duration::ZERO);
/// let err = p.enqueue(1, Priority::Normal).unwrap_err();
/// assert_eq!((err.reason, err.items), (EnqueueRejected::ShutDown, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EnqueueError<T> {
    /// Why.
    pub reason: EnqueueRejected,
    /// What was not accepted.
    pub items: T,
}

impl<T> fmt::Debug for EnqueueError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnqueueError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for EnqueueError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            EnqueueRejected::Full { capacity } => {
                write!(f, "batch queue full ({capacity} pending)")
            }
            EnqueueRejected::ShutDown => f.write_str("batch processor is shut down"),
        }
    }
}

impl<T> std::error::Error for EnqueueError<T> {}

/// A batch processor's numbers at one moment.
///
/// Every accepted item is, at any time, in exactly one of: pending
/// (`ready + delayed + in_batches`), `processed_ok`, `dead_lettered`, or
/// returned by shutdown. So `enqueued == pending + processed_ok +
/// dead_lettered + returned`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchStats {
    /// Items accepted.
    pub enqueued: u64,
    /// Items refused (full or shut down).
    pub rejected: u64,
    /// Items processed successfully.
    pub processed_ok: u64,
    /// Failed attempts, retried or not.
    pub failed_attempts: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Items moved to the dead-letter list (ever).
    pub dead_lettered: u64,
    /// Items in the dead-letter list now.
    pub dead_letters: usize,
    /// Items not finished: ready + delayed + in batches.
    pub pending: usize,
    /// Ready to go into a batch.
    pub ready: usize,
    /// Waiting for a retry's backoff.
    pub delayed: usize,
    /// Held by running batches.
    pub in_batches: usize,
    /// Batches started.
    pub batches_run: u64,
    /// Batches running now.
    pub running_batches: usize,
    /// Times the open breaker paused batches.
    pub breaker_holds: u64,
    /// Times the rate limiter paused batches.
    pub rate_limited: u64,
    /// Batches the tier refused (their items went back to the queue).
    pub batch_rejections: u64,
    /// Items returned by shutdown.
    pub returned: u64,
}

/// What [`BatchProcessor::shutdown`] hands back: every item not processed,
/// so the application can persist it.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{BatchProcessor, Priority, Runtime};
/// let rt = Runtime::builder().build()?;
/// let p = BatchProcessor::builder(rt.background(), |_: &u32, _| Ok::<_, String>(()))
///     .batch_size(10)
///     .flush_interval(Duration::from_secs(3600))
///     .build()?;
/// p.enqueue_all([1, 2, 3], Priority::Normal)?;
/// let report = p.shutdown(Duration::from_secs(1));
/// assert_eq!(report.unprocessed.len() + report.stats.processed_ok as usize, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct BatchReport<I> {
    /// Items never processed successfully and not dead-lettered, highest
    /// priority first, then those waiting for a retry.
    pub unprocessed: Vec<(I, Priority)>,
    /// The dead-letter list, drained.
    pub dead_letters: Vec<DeadLetter<I>>,
    /// Items still held by batches that did not stop within the grace;
    /// they go back to the queue when their batch returns (take them with
    /// another `shutdown` call).
    pub still_in_batches: usize,
    /// The numbers at the end.
    pub stats: BatchStats,
}

type ProcessFn<I> = dyn Fn(&I, &ItemContext<'_>) -> Result<(), ItemError> + Send + Sync;
type MakeProcess<I> = Box<dyn FnOnce(RetryPolicy) -> Arc<ProcessFn<I>> + Send>;

/// An item's failure, with the policy's verdict already taken.
struct ItemError {
    message: String,
    retryable: bool,
}

struct Pending<I> {
    item: I,
    priority: Priority,
    attempts: u32,
    /// When it became ready (enqueue or retry due time): flush age.
    ready_at: Instant,
}

/// A pending retry, ordered so the `BinaryHeap` pops the earliest first.
struct Delayed<I> {
    due: Instant,
    seq: u64,
    p: Pending<I>,
}

impl<I> PartialEq for Delayed<I> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl<I> Eq for Delayed<I> {}
impl<I> PartialOrd for Delayed<I> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl<I> Ord for Delayed<I> {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

#[derive(Clone, Debug)]
struct Config {
    batch_size: usize,
    max_concurrent: usize,
    flush_interval: Duration,
    capacity: usize,
    priority: Priority,
}

/// # Invariants
///
/// 1. Each level of `ready` is ordered by `ready_at` (items are pushed at
///    the back when they become ready, and handed back to the front in
///    their original order), so the fronts hold the oldest items.
/// 2. `ready + delayed + in_batches` is every pending item; only a finished
///    attempt (ok or dead) or shutdown takes an item out of it.
/// 3. `running_batches <= max_concurrent` at all times.
struct State<I> {
    ready: [VecDeque<Pending<I>>; 4],
    delayed: BinaryHeap<Delayed<I>>,
    dead: Vec<DeadLetter<I>>,
    in_batches: usize,
    running_batches: usize,
    hold_until: Option<Instant>,
    flush_requested: bool,
    stopping: bool,
    seq: u64,
    rng: SeedRng,
    stats: BatchStats,
}

impl<I> State<I> {
    fn ready_len(&self) -> usize {
        self.ready.iter().map(VecDeque::len).sum()
    }

    fn pending(&self) -> usize {
        self.ready_len() + self.delayed.len() + self.in_batches
    }

    fn oldest_ready(&self) -> Option<Instant> {
        self.ready
            .iter()
            .filter_map(|q| q.front())
            .map(|p| p.ready_at)
            .min()
    }

    fn take_batch(&mut self, n: usize) -> VecDeque<Pending<I>> {
        let mut batch = VecDeque::with_capacity(n);
        for q in &mut self.ready {
            while batch.len() < n {
                match q.pop_front() {
                    Some(p) => batch.push_back(p),
                    None => break,
                }
            }
        }
        batch
    }

    fn hold(&mut self, until: Instant) {
        self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
    }

    fn snapshot(&self) -> BatchStats {
        let mut s = self.stats.clone();
        s.ready = self.ready_len();
        s.delayed = self.delayed.len();
        s.in_batches = self.in_batches;
        s.pending = self.pending();
        s.running_batches = self.running_batches;
        s.dead_letters = self.dead.len();
        s
    }
}

struct Shared<I> {
    tier: Tier,
    clock: Clock,
    cfg: Config,
    retry: RetryPolicy,
    limiter: Option<RateLimiter>,
    breaker: Option<CircuitBreaker>,
    process: Arc<ProcessFn<I>>,
    state: Mutex<State<I>>,
    /// Wakes the dispatcher.
    wake: Condvar,
    /// Wakes a shutdown waiting for batches to return.
    batch_done: Condvar,
}

/// A bounded priority queue of items processed in batches on a [`Tier`],
/// with per-item retry ([`RetryPolicy`]), an optional [`RateLimiter`]
/// around each call, an optional [`CircuitBreaker`] that pauses batches
/// while open, and a dead-letter list.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{BatchProcessor, Priority, RetryPolicy, Runtime};
///
/// let rt = Runtime::builder().build()?;
/// let batches = BatchProcessor::builder(rt.background(), |id: &u64, _ctx| {
///     if *id == 13 { Err("unlucky") } else { Ok(()) }
/// })
/// .batch_size(25)
/// .retry(RetryPolicy::builder().max_attempts(1).build()?)
/// .build()?;
/// for id in 0..30u64 {
///     batches.enqueue(id, Priority::Normal)?;
/// }
/// batches.enqueue(99, Priority::High)?; // jumps the queue
/// batches.process_now();
/// # let t0 = std::time::Instant::now();
/// # while batches.stats().pending > 0 && t0.elapsed() < Duration::from_secs(10) {
/// #     std::thread::sleep(Duration::from_millis(5));
/// # }
/// let report = batches.shutdown(Duration::from_secs(5));
/// assert_eq!(report.dead_letters.len(), 1); // item 13, kept, not dropped
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BatchProcessor<I: Send + 'static> {
    shared: Arc<Shared<I>>,
    runner: Arc<Runner<I>>,
    drop_grace: Duration,
}

/// The dispatcher thread and what a runtime-driven shutdown left behind;
/// shared with the runtime's registry (held weakly there).
struct Runner<I: Send + 'static> {
    shared: Arc<Shared<I>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The report of a shutdown the runtime did, until the application's
    /// own `shutdown` takes it. Also serialises shutdowns.
    parked: Mutex<Option<BatchReport<I>>>,
}

/// Builds a [`BatchProcessor`]; [`build`](Self::build) validates every
/// field.
///
/// ```
/// use tierpool::{BatchProcessor, Runtime};
/// let rt = Runtime::builder().build()?;
/// let err = BatchProcessor::builder(rt.background(), |_: &u8, _| Ok::<_, String>(()))
///     .batch_size(0)
///     .build()
///     .unwrap_err();
/// assert_eq!(err.as_config().unwrap().field(), "batch_size");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct BatchProcessorBuilder<I> {
    tier: Tier,
    cfg: Config,
    retry: RetryPolicy,
    limiter: Option<RateLimiter>,
    breaker: Option<CircuitBreaker>,
    make: MakeProcess<I>,
    seed: Option<u64>,
    drop_grace: Duration,
}

impl<I> fmt::Debug for BatchProcessorBuilder<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchProcessorBuilder")
            .field("tier", &self.tier.name())
            .field("cfg", &self.cfg)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<I: Send + 'static> BatchProcessorBuilder<I> {
    /// Items per batch (default 25, at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.cfg.batch_size = n;
        self
    }

    /// Batches running at once (default 3, at least 1).
    pub fn max_concurrent_batches(mut self, n: usize) -> Self {
        self.cfg.max_concurrent = n;
        self
    }

    /// How long the oldest ready item waits for a full batch before a
    /// partial one goes (default 1 s, above zero).
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.cfg.flush_interval = d;
        self
    }

    /// Most items pending at once (default 10 000, at least 1); beyond it
    /// `enqueue` hands the item back.
    pub fn capacity(mut self, n: usize) -> Self {
        self.cfg.capacity = n;
        self
    }

    /// The priority batch tasks are submitted to the tier at (default
    /// normal). Items' own priorities order them within the processor.
    pub fn task_priority(mut self, p: Priority) -> Self {
        self.cfg.priority = p;
        self
    }

    /// The per-item retry policy (default [`RetryPolicy::default`]: 3
    /// attempts, exponential backoff from 500 ms, equal jitter). Its
    /// predicate sees the process function's error type.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Takes one token from `limiter` before each item's call.
    pub fn rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Calls go through `breaker`; while it is open no batch runs and no
    /// attempt is spent.
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Seeds the retry jitter (default: from process entropy).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The grace `Drop` gives running batches when the processor was not
    /// shut down explicitly (default 5 s).
    pub fn drop_grace(mut self, d: Duration) -> Self {
        self.drop_grace = d;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.cfg;
        if c.batch_size == 0 {
            return Err(ConfigError::new("batch_size", "must be at least 1"));
        }
        if c.max_concurrent == 0 {
            return Err(ConfigError::new(
                "max_concurrent_batches",
                "must be at least 1",
            ));
        }
        if c.flush_interval.is_zero() {
            return Err(ConfigError::new("flush_interval", "must be above zero"));
        }
        if c.capacity == 0 {
            return Err(ConfigError::new("capacity", "must be at least 1"));
        }
        Ok(())
    }

    /// Validates and starts the dispatcher thread. Errors name the field
    /// (`batch_size`, `max_concurrent_batches`, `flush_interval`,
    /// `capacity`) or carry the thread spawn failure.
    pub fn build(self) -> Result<BatchProcessor<I>, BuildError> {
        self.validate()?;
        let seed = self
            .seed
            .unwrap_or_else(|| SeedRng::from_entropy().next_u64());
        let process = (self.make)(self.retry.clone());
        let shared = Arc::new(Shared {
            clock: self.tier.pool.clock.clone(),
            tier: self.tier,
            cfg: self.cfg,
            retry: self.retry,
            limiter: self.limiter,
            breaker: self.breaker,
            process,
            state: Mutex::new(State {
                ready: Default::default(),
                delayed: BinaryHeap::new(),
                dead: Vec::new(),
                in_batches: 0,
                running_batches: 0,
                hold_until: None,
                flush_requested: false,
                stopping: false,
                seq: 0,
                rng: SeedRng::new(seed),
                stats: BatchStats::default(),
            }),
            wake: Condvar::new(),
            batch_done: Condvar::new(),
        });
        if let Some(b) = &shared.breaker {
            crate::supervisor::forward_breaker_events(b, &shared.tier.pool.counters.events);
        }
        let for_thread = shared.clone();
        let handle = std::thread::Builder::new()
            .name("tierpool-batch".into())
            .spawn(move || dispatcher_loop(&for_thread))
            .map_err(BuildError::Spawn)?;
        Ok(BatchProcessor {
            runner: Arc::new(Runner {
                shared: shared.clone(),
                thread: Mutex::new(Some(handle)),
                parked: Mutex::new(None),
            }),
            shared,
            drop_grace: self.drop_grace,
        })
    }
}

impl<I: Send + 'static> BatchProcessor<I> {
    /// A builder whose batches run on `tier`, calling `process` once per
    /// item attempt. Its `Err` is a failed attempt (retried per the
    /// policy); a panic counts as a retryable failure.
    pub fn builder<E, F>(tier: &Tier, process: F) -> BatchProcessorBuilder<I>
    where
        F: Fn(&I, &ItemContext<'_>) -> Result<(), E> + Send + Sync + 'static,
        E: fmt::Display + 'static,
    {
        let make: MakeProcess<I> = Box::new(move |policy: RetryPolicy| {
            Arc::new(move |item: &I, ctx: &ItemContext<'_>| {
                process(item, ctx).map_err(|e| ItemError {
                    retryable: policy.is_retryable(&e),
                    message: e.to_string(),
                })
            })
        });
        BatchProcessorBuilder {
            tier: tier.clone(),
            cfg: Config {
                batch_size: 25,
                max_concurrent: 3,
                flush_interval: Duration::from_secs(1),
                capacity: 10_000,
                priority: Priority::Normal,
            },
            retry: RetryPolicy::default(),
            limiter: None,
            breaker: None,
            make,
            seed: None,
            drop_grace: Duration::from_secs(5),
        }
    }

    /// Adds an item; higher priorities go into batches first. Never
    /// blocks; a full or shut-down processor hands the item back.
    pub fn enqueue(&self, item: I, priority: Priority) -> Result<(), EnqueueError<I>> {
        let mut st = self.shared.state.lock();
        if let Some(reason) = self.refusal(&st) {
            st.stats.rejected += 1;
            return Err(EnqueueError {
                reason,
                items: item,
            });
        }
        self.push_ready(&mut st, item, priority);
        drop(st);
        self.shared.wake.notify_all();
        Ok(())
    }

    /// Adds items in order until the processor is full; the rest come back
    /// in the error.
    pub fn enqueue_all(
        &self,
        items: impl IntoIterator<Item = I>,
        priority: Priority,
    ) -> Result<(), EnqueueError<Vec<I>>> {
        let mut st = self.shared.state.lock();
        let mut items = items.into_iter();
        let mut refused = None;
        for item in items.by_ref() {
            if let Some(reason) = self.refusal(&st) {
                refused = Some((reason, item));
                break;
            }
            self.push_ready(&mut st, item, priority);
        }
        let result = match refused {
            None => Ok(()),
            Some((reason, first)) => {
                let mut rest = vec![first];
                rest.extend(items);
                st.stats.rejected += rest.len() as u64;
                Err(EnqueueError {
                    reason,
                    items: rest,
                })
            }
        };
        drop(st);
        self.shared.wake.notify_all();
        result
    }

    fn refusal(&self, st: &State<I>) -> Option<EnqueueRejected> {
        if st.stopping {
            Some(EnqueueRejected::ShutDown)
        } else if st.pending() >= self.shared.cfg.capacity {
            Some(EnqueueRejected::Full {
                capacity: self.shared.cfg.capacity,
            })
        } else {
            None
        }
    }

    fn push_ready(&self, st: &mut State<I>, item: I, priority: Priority) {
        st.stats.enqueued += 1;
        st.ready[priority.index()].push_back(Pending {
            item,
            priority,
            attempts: 0,
            ready_at: self.shared.clock.now(),
        });
    }

    /// Sends every ready item now, in batches of up to `batch_size`,
    /// without waiting for full batches or the flush interval (still at
    /// most `max_concurrent_batches` at once, and not while the breaker or
    /// limiter holds batches). Items waiting for a retry keep waiting.
    pub fn process_now(&self) {
        self.shared.state.lock().flush_requested = true;
        self.shared.wake.notify_all();
    }

    /// The numbers now.
    pub fn stats(&self) -> BatchStats {
        self.shared.state.lock().snapshot()
    }

    /// Items in the dead-letter list now.
    pub fn dead_letter_count(&self) -> usize {
        self.shared.state.lock().dead.len()
    }

    /// A copy of the dead-letter list (oldest first).
    pub fn dead_letters(&self) -> Vec<DeadLetter<I>>
    where
        I: Clone,
    {
        self.shared.state.lock().dead.clone()
    }

    /// The part the runtime supervises.
    pub(crate) fn component(&self) -> &dyn crate::supervisor::Component {
        &*self.runner
    }

    /// Takes the dead-letter list, leaving it empty.
    pub fn drain_dead_letters(&self) -> Vec<DeadLetter<I>> {
        std::mem::take(&mut self.shared.state.lock().dead)
    }

    /// Stops accepting items and starting batches, lets running batches
    /// stop at their next item (waiting up to `grace` on the runtime's
    /// clock), joins the dispatcher and returns every item not processed
    /// plus the dead letters. Calling it again returns what came back
    /// since (normally nothing).
    ///
    /// If the runtime it is [registered](crate::Runtime::register) with
    /// shut it down, this returns the items that shutdown left.
    pub fn shutdown(&self, grace: Duration) -> BatchReport<I> {
        let mut parked = self.runner.parked.lock();
        let fresh = self.runner.stop(grace);
        match parked.take() {
            Some(earlier) => earlier.merge(fresh),
            None => fresh,
        }
    }
}

impl<I: Send + 'static> Runner<I> {
    fn stop(&self, grace: Duration) -> BatchReport<I> {
        let shared = &*self.shared;
        shared.state.lock().stopping = true;
        shared.wake.notify_all();
        if let Some(h) = self.thread.lock().take() {
            if h.join().is_err() {
                tlog!(error, target: "tierpool::batch", "batch dispatcher thread panicked");
            }
        }
        let deadline = shared.clock.deadline_after(grace);
        let real_cap = Instant::now() + MANUAL_CLOCK_REAL_CAP;
        let mut st = shared.state.lock();
        while st.running_batches > 0
            && deadline.is_none_or(|d| shared.clock.now() < d)
            && !(shared.clock.is_manual() && Instant::now() >= real_cap)
        {
            st = shared
                .batch_done
                .wait_budget(st, shared.clock.wait_budget(deadline));
        }
        let mut unprocessed = Vec::new();
        for q in &mut st.ready {
            unprocessed.extend(q.drain(..).map(|p| (p.item, p.priority)));
        }
        let mut delayed: Vec<_> = std::mem::take(&mut st.delayed).into_vec();
        delayed.sort_by(|a, b| b.cmp(a)); // earliest due first
        unprocessed.extend(delayed.into_iter().map(|d| (d.p.item, d.p.priority)));
        st.stats.returned += unprocessed.len() as u64;
        BatchReport {
            unprocessed,
            dead_letters: std::mem::take(&mut st.dead),
            still_in_batches: st.in_batches,
            stats: st.snapshot(),
        }
    }
}

impl<I> BatchReport<I> {
    /// `self` followed by what a later shutdown returned.
    fn merge(mut self, later: BatchReport<I>) -> BatchReport<I> {
        self.unprocessed.extend(later.unprocessed);
        self.dead_letters.extend(later.dead_letters);
        self.still_in_batches = later.still_in_batches;
        self.stats = later.stats;
        self
    }
}

impl<I: Send + 'static> crate::supervisor::Component for Runner<I> {
    fn health(&self) -> Vec<crate::health::HealthReason> {
        let mut reasons = Vec::new();
        if self.shared.state.lock().stopping {
            reasons.push(crate::health::HealthReason::ShutDown);
        }
        if let Some(b) = &self.shared.breaker {
            reasons.extend(crate::supervisor::breaker_health(b));
        }
        reasons
    }

    fn shutdown_for_runtime(&self, grace: Duration) -> crate::supervisor::WorkerCounts {
        let mut parked = self.parked.lock();
        let fresh = self.stop(grace);
        let report = match parked.take() {
            Some(earlier) => earlier.merge(fresh),
            None => fresh,
        };
        let counts = crate::supervisor::WorkerCounts {
            processed: report.stats.processed_ok,
            unprocessed: report.unprocessed.len(),
            dead_letters: report.dead_letters.len(),
            still_in_batches: report.still_in_batches,
        };
        *parked = Some(report);
        counts
    }
}

impl<I: Send + 'static> crate::supervisor::Sealed for BatchProcessor<I> {
    fn registration(&self) -> crate::supervisor::Registration {
        let weak: crate::sync::Weak<dyn crate::supervisor::Component> =
            Arc::downgrade(&self.runner) as _;
        crate::supervisor::Registration::worker(weak)
    }
}
impl<I: Send + 'static> crate::supervisor::Supervise for BatchProcessor<I> {}

impl<I: Send + 'static> Drop for BatchProcessor<I> {
    fn drop(&mut self) {
        let report = self.shutdown(self.drop_grace);
        let lost = report.unprocessed.len() + report.dead_letters.len();
        if lost > 0 {
            tlog!(warn,
                target: "tierpool::batch",
                "batch processor dropped without shutdown(): {} unprocessed and {} dead-lettered items discarded (call shutdown() to keep them)",
                report.unprocessed.len(),
                report.dead_letters.len()
            );
        }
    }
}

impl<I: Send + 'static> fmt::Debug for BatchProcessor<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchProcessor")
            .field("tier", &self.shared.tier.name())
            .field("stats", &self.stats())
            .finish()
    }
}

// ---- the dispatcher --------------------------------------------------

fn dispatcher_loop<I: Send + 'static>(shared: &Arc<Shared<I>>) {
    let cfg = &shared.cfg;
    let mut st = shared.state.lock();
    loop {
        if st.stopping {
            return;
        }
        // DECIDE
        let now = shared.clock.now();
        while st.delayed.peek().is_some_and(|d| d.due <= now) {
            if let Some(d) = st.delayed.pop() {
                let mut p = d.p;
                p.ready_at = d.due;
                st.ready[p.priority.index()].push_back(p);
            }
        }
        if st.hold_until.is_some_and(|h| h <= now) {
            st.hold_until = None;
        }
        let mut batches = Vec::new();
        if st.hold_until.is_none() {
            while st.running_batches < cfg.max_concurrent {
                let ready = st.ready_len();
                let flush = st.flush_requested
                    || st
                        .oldest_ready()
                        .is_some_and(|t| t + cfg.flush_interval <= now);
                if ready == 0 || (ready < cfg.batch_size && !flush) {
                    break;
                }
                let batch = st.take_batch(cfg.batch_size);
                st.running_batches += 1;
                st.in_batches += batch.len();
                st.stats.batches_run += 1;
                batches.push(batch);
            }
            if st.ready_len() == 0 {
                st.flush_requested = false;
            }
        }
        if batches.is_empty() {
            // IDLE: until a retry is due, the oldest item's flush, or the
            // hold ends; or until notified.
            let mut next = st.delayed.peek().map(|d| d.due);
            let mut consider = |t: Option<Instant>| {
                if let Some(t) = t {
                    next = Some(next.map_or(t, |n: Instant| n.min(t)));
                }
            };
            consider(st.hold_until);
            if st.hold_until.is_none() && st.running_batches < cfg.max_concurrent {
                consider(st.oldest_ready().map(|t| t + cfg.flush_interval));
            }
            st = shared.wake.wait_budget(st, shared.clock.wait_budget(next));
            continue;
        }
        // DISPATCH
        drop(st);
        for items in batches {
            submit_batch(shared, items);
        }
        st = shared.state.lock();
    }
}

fn submit_batch<I: Send + 'static>(shared: &Arc<Shared<I>>, items: VecDeque<Pending<I>>) {
    let mut run = BatchRun {
        shared: shared.clone(),
        items,
    };
    let submitted = shared
        .tier
        .task(move |task: &TaskContext| {
            run.run(task);
            Ok::<(), std::convert::Infallible>(())
        })
        .priority(shared.cfg.priority)
        .submit();
    if let Err(e) = submitted {
        let (reason, f) = e.into_parts();
        tlog!(warn, target: "tierpool::batch", "tier refused a batch ({reason}); its items wait for the next flush");
        {
            let mut st = shared.state.lock();
            st.stats.batch_rejections += 1;
            let until = shared.clock.now() + shared.cfg.flush_interval;
            st.hold(until);
        }
        drop(f); // the BatchRun inside hands its items back
    }
}

/// One batch's items. Whatever it still holds when dropped — it stopped
/// early, or the tier discarded it unrun — goes back to the front of the
/// queue, no attempt spent.
struct BatchRun<I: Send + 'static> {
    shared: Arc<Shared<I>>,
    items: VecDeque<Pending<I>>,
}

/// Why a batch stopped before its last item.
enum Stop {
    Cancelled,
    Hold(Instant, HoldKind),
}

enum HoldKind {
    Breaker,
    RateLimit,
}

impl<I: Send + 'static> BatchRun<I> {
    fn run(&mut self, task: &TaskContext) {
        while let Some(p) = self.items.pop_front() {
            match self.attempt(p, task) {
                Ok(()) => {}
                Err((p, stop)) => {
                    self.items.push_front(p);
                    if let Stop::Hold(until, kind) = stop {
                        let mut st = self.shared.state.lock();
                        st.hold(until);
                        match kind {
                            HoldKind::Breaker => st.stats.breaker_holds += 1,
                            HoldKind::RateLimit => st.stats.rate_limited += 1,
                        }
                    }
                    return;
                }
            }
        }
    }

    /// One attempt at one item; hands the item back if it was not tried.
    fn attempt(&self, mut p: Pending<I>, task: &TaskContext) -> Result<(), (Pending<I>, Stop)> {
        let shared = &*self.shared;
        if task.is_cancelled() || shared.state.lock().stopping {
            return Err((p, Stop::Cancelled));
        }
        let now = shared.clock.now();
        // Breaker first: an open breaker must not cost rate-limit tokens.
        let permit = match &shared.breaker {
            Some(b) => match b.try_acquire() {
                Ok(permit) => Some(permit),
                Err(open) => {
                    let until = now.checked_add(open.retry_after).unwrap_or(now);
                    return Err((p, Stop::Hold(until, HoldKind::Breaker)));
                }
            },
            None => None,
        };
        if let Some(l) = &shared.limiter {
            if let Err(wait) = l.try_acquire() {
                drop(permit); // released: not an outcome
                let until = now.checked_add(wait).unwrap_or(now);
                return Err((p, Stop::Hold(until, HoldKind::RateLimit)));
            }
        }
        p.attempts += 1;
        let ctx = ItemContext {
            task,
            attempt: p.attempts,
            priority: p.priority,
        };
        let outcome = match catch_unwind(AssertUnwindSafe(|| (shared.process)(&p.item, &ctx))) {
            Ok(r) => r,
            Err(payload) => Err(ItemError {
                message: format!("panicked: {}", panic_message(&*payload)),
                retryable: true,
            }),
        };
        if let Some(permit) = permit {
            match &outcome {
                // A permanent error is the caller's problem, not the
                // dependency's: it does not count against the breaker.
                Err(e) if e.retryable => permit.failure(),
                _ => {
                    let elapsed = permit.elapsed();
                    permit.success(elapsed);
                }
            }
        }
        self.settle(p, outcome);
        Ok(())
    }

    /// Records a finished attempt: processed, delayed for a retry, or dead.
    fn settle(&self, p: Pending<I>, outcome: Result<(), ItemError>) {
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        st.in_batches -= 1;
        let err = match outcome {
            Ok(()) => {
                st.stats.processed_ok += 1;
                return;
            }
            Err(e) => e,
        };
        st.stats.failed_attempts += 1;
        let now = shared.clock.now();
        let backoff = if err.retryable {
            shared.retry.backoff(p.attempts, &mut st.rng)
        } else {
            None
        };
        match backoff {
            Some(d) => {
                st.stats.retried += 1;
                st.seq += 1;
                let seq = st.seq;
                let due = now.checked_add(d).unwrap_or(now);
                st.delayed.push(Delayed { due, seq, p });
                drop(st);
                shared.wake.notify_all();
            }
            None => {
                let reason = if err.retryable {
                    DeadReason::Exhausted
                } else {
                    DeadReason::NotRetryable
                };
                tlog!(warn,
                    target: "tierpool::batch",
                    "item dead-lettered after {} attempt(s): {}",
                    p.attempts,
                    err.message
                );
                st.stats.dead_lettered += 1;
                st.dead.push(DeadLetter {
                    item: p.item,
                    priority: p.priority,
                    attempts: p.attempts,
                    reason,
                    error: err.message,
                    at: now,
                });
            }
        }
    }
}

impl<I: Send + 'static> Drop for BatchRun<I> {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.in_batches -= self.items.len();
        // Back to the front, in their original order (invariant 1).
        while let Some(p) = self.items.pop_back() {
            st.ready[p.priority.index()].push_front(p);
        }
        st.running_batches -= 1;
        drop(st);
        self.shared.wake.notify_all();
        self.shared.batch_done.notify_all();
    }
}
