//! The pools compared: tierpool, the `threadpool` crate, a rayon
//! `ThreadPool`, and a bare crossbeam-channel worker pool (the baseline:
//! the least a pool can do — one bounded channel of boxed closures).

use std::convert::Infallible;
use std::thread::JoinHandle;
use std::time::Duration;

use std::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use tierpool::{Priority, Runtime, Tier};

/// Runs a fire-and-forget closure. Blocking on a full queue is allowed
/// (that is each pool's own backpressure); losing the closure is not.
pub trait Executor: Sync {
    fn execute<F: FnOnce() + Send + 'static>(&self, f: F);
}

type Job = Box<dyn FnOnce() + Send>;

/// N threads receiving boxed closures from one bounded channel.
pub struct BarePool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl BarePool {
    pub fn new(workers: usize, capacity: usize) -> Self {
        let (tx, rx) = bounded::<Job>(capacity);
        let threads = (0..workers)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("bare-{i}"))
                    .spawn(move || rx.iter().for_each(|job| job()))
                    .expect("spawn bare worker")
            })
            .collect();
        BarePool {
            tx: Some(tx),
            threads,
        }
    }
}

impl Executor for BarePool {
    fn execute<F: FnOnce() + Send + 'static>(&self, f: F) {
        if let Some(tx) = &self.tx {
            tx.send(Box::new(f)).expect("bare pool workers alive");
        }
    }
}

impl Drop for BarePool {
    fn drop(&mut self) {
        self.tx = None; // disconnects: workers drain and leave
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Words of padding `WithPayload` adds to every task's closure.
const PAYLOAD_WORDS: usize = 21;

/// Any pool, with every task carrying `PAYLOAD_WORDS` more words of
/// captured data (168 bytes: a task capturing a few `String`s and ids).
/// The dispatch workload's own closure is 16 bytes, so the bare pool's boxed
/// job is 16 bytes; with the payload it is 184. That moves it past glibc
/// malloc's fast bins (requests up to 120 bytes): a box freed on a worker
/// thread then takes the submitting thread's arena lock, as a tierpool task
/// core (about 300 bytes) would without its spent-core return.
pub struct WithPayload<E>(pub E);

impl<E: Executor> Executor for WithPayload<E> {
    fn execute<F: FnOnce() + Send + 'static>(&self, f: F) {
        let payload = [0u64; PAYLOAD_WORDS];
        self.0.execute(move || {
            // Used, so the closure really captures it.
            std::hint::black_box(&payload);
            f();
        });
    }
}

/// The `threadpool` crate (an unbounded mpsc queue behind a mutex).
pub struct ThreadpoolCrate(pub threadpool::ThreadPool);

impl ThreadpoolCrate {
    pub fn new(workers: usize) -> Self {
        ThreadpoolCrate(threadpool::ThreadPool::new(workers))
    }
}

impl Executor for ThreadpoolCrate {
    fn execute<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.0.execute(f);
    }
}

/// A dedicated rayon pool, fed with `spawn` (the global injector: FIFO).
pub struct RayonPool(pub rayon::ThreadPool);

impl RayonPool {
    pub fn new(workers: usize) -> Self {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("rayon-{i}"))
            .build()
            .expect("build rayon pool");
        RayonPool(pool)
    }
}

impl Executor for RayonPool {
    fn execute<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.0.spawn(f);
    }
}

/// How long a tierpool submitter waits for room before calling it a bench
/// bug (the workloads never keep a queue full that long).
const SUBMIT_WAIT: Duration = Duration::from_secs(60);

/// One tierpool tier at one priority, through the blocking submit (its
/// backpressure, like the bare pool's blocking `send`). Handles are
/// dropped: the task is detached, completion is counted by the workload.
pub struct TierExec {
    pub tier: Tier,
    pub priority: Priority,
}

impl Executor for TierExec {
    fn execute<F: FnOnce() + Send + 'static>(&self, f: F) {
        let task = move |_: &tierpool::TaskContext| {
            f();
            Ok::<(), Infallible>(())
        };
        if let Err(e) = self.tier.submit_wait(self.priority, task, SUBMIT_WAIT) {
            panic!("tierpool rejected a bench task: {}", e.reason());
        }
    }
}

/// What the tierpool runtime under test keeps switched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Features {
    /// The ui tier's defaults (30 s timeout, 10 s warning: every task is
    /// watched), stats on: what an application gets.
    Defaults,
    /// No timeout and no warning: the watchdog sees nothing.
    NoTimeouts,
}

/// A runtime whose ui tier has `workers` fixed workers and no admission
/// limit (so nothing is rejected: backpressure is the queue only). The
/// other tiers are shrunk so their idle threads stay out of the way.
pub fn tierpool_ui(workers: usize, queue_capacity: usize, features: Features) -> Runtime {
    Runtime::builder()
        .ui(|t| {
            let t = t
                .workers(workers)
                .max_in_flight(None)
                .per_user_limit(None)
                .queue_capacity(queue_capacity);
            match features {
                Features::Defaults => t,
                Features::NoTimeouts => t.timeout(None).warn_after(None),
            }
        })
        .background(|t| t.workers(1))
        .realtime(|t| t.workers(1).reserved_slots(0))
        .build()
        .expect("valid bench runtime")
}

/// The isolation setup: heavy work on `background` (`heavy` workers, at OS
/// nice 10 — `TierConfig::os_nice`, opt-in), light work on `realtime`
/// (`light` workers), the ui tier shrunk.
/// `nice`: the background tier's `os_nice` (`None`: the OS default).
pub fn tierpool_isolated(
    heavy: usize,
    light: usize,
    queue_capacity: usize,
    nice: Option<i32>,
) -> Runtime {
    Runtime::builder()
        .ui(|t| t.workers(1))
        .background(|t| {
            let t = t.workers(heavy).queue_capacity(queue_capacity);
            match nice {
                Some(n) => t.os_nice(n),
                None => t,
            }
        })
        .realtime(|t| {
            t.workers(light)
                .reserved_slots(0)
                .queue_capacity(queue_capacity)
        })
        .build()
        .expect("valid bench runtime")
}

// ---- the dispatch floor ------------------------------------------------------

/// A skeleton pool with only what every tierpool task passes through:
/// four bounded level channels with a per-level count, a pick lock, an
/// idle count and a wake-up bell; optionally a per-task state object the
/// size of tierpool's task core (a state word set by compare-exchange at
/// start and end, the closure and the outcome behind locks, a handle clone
/// the submitter drops), and optionally the spent-object return that hands
/// the last reference back to the submitter to free. No stats, no
/// watchdog, no admission, no events, no cancellation: the floor under
/// tierpool's design (`examples/dispatch_floor.rs`, docs/dispatch.md).
/// Padding that brings `TaskObject` to the size of tierpool's task core
/// for this workload (288 bytes plus the `Arc`'s 16: `size_of_val` of
/// the core, printed from a scratch build).
const PAD_WORDS: usize = 32;

/// A per-task state object like tierpool's core: what a handle, a
/// timeout and a cancel need to share between submitter and worker.
struct TaskObject {
    state: AtomicU8,
    body: Mutex<Option<Job>>,
    outcome: Mutex<Option<Result<(), ()>>>,
    _pad: [u64; PAD_WORDS],
}

// Checked at compile time: the object is the core's size.
const _: () = assert!(std::mem::size_of::<TaskObject>() == 288);

enum Item {
    Boxed(Job),
    Object(Arc<TaskObject>),
}

/// What the skeleton does per task beyond the bare pool.
#[derive(Clone, Copy)]
pub struct Shape {
    pub object: bool,
    pub spent_return: bool,
}

struct Shared {
    levels: Vec<(Sender<Item>, Receiver<Item>)>,
    queued: [AtomicUsize; 4],
    pick: Mutex<()>,
    idle: AtomicUsize,
    bell: (Sender<()>, Receiver<()>),
    spent: (Sender<Arc<TaskObject>>, Receiver<Arc<TaskObject>>),
    stop: AtomicBool,
    shape: Shape,
}

pub struct Skeleton {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Skeleton {
    pub fn new(workers: usize, capacity: usize, shape: Shape) -> Self {
        let shared = Arc::new(Shared {
            levels: (0..4).map(|_| bounded(capacity)).collect(),
            queued: Default::default(),
            pick: Mutex::new(()),
            idle: AtomicUsize::new(0),
            bell: bounded(64),
            spent: bounded(capacity),
            stop: AtomicBool::new(false),
            shape,
        });
        let threads = (0..workers)
            .map(|_| {
                let s = shared.clone();
                std::thread::spawn(move || s.work())
            })
            .collect();
        Skeleton { shared, threads }
    }
}

impl Shared {
    /// Highest non-empty level first, under the pick lock.
    fn pick(&self) -> Option<Item> {
        let _g = self.pick.lock();
        (0..4)
            .filter(|&l| self.queued[l].load(Ordering::Acquire) > 0)
            .find_map(|l| {
                let item = self.levels[l].1.try_recv().ok()?;
                self.queued[l].fetch_sub(1, Ordering::AcqRel);
                Some(item)
            })
    }

    fn work(&self) {
        loop {
            match self.pick() {
                Some(Item::Boxed(job)) => job(),
                Some(Item::Object(task)) => self.run(task),
                None => {
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    // Idle, then one more look at the channels before
                    // sleeping (the submitter reads `idle` after its push).
                    // The look is at the channels, not the counts: a count
                    // raised for a push not made yet (its submitter
                    // descheduled) would keep an idle worker spinning on
                    // the cores the submitter needs.
                    self.idle.fetch_add(1, Ordering::SeqCst);
                    fence(Ordering::SeqCst);
                    if self.levels.iter().all(|(_, rx)| rx.is_empty()) {
                        let _ = self.bell.1.recv_timeout(Duration::from_millis(20));
                    }
                    self.idle.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn run(&self, task: Arc<TaskObject>) {
        if task
            .state
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let body = task.body.lock().take();
            if let Some(f) = body {
                f();
            }
            *task.outcome.lock() = Some(Ok(()));
            task.state.store(2, Ordering::Release);
        }
        if self.shape.spent_return && Arc::strong_count(&task) == 1 {
            let _ = self.spent.0.try_send(task);
        }
    }

    fn submit(&self, f: Job) {
        const LEVEL: usize = 2;
        let item = if self.shape.object {
            if self.shape.spent_return {
                drop(self.spent.1.try_recv());
            }
            Item::Object(Arc::new(TaskObject {
                state: AtomicU8::new(0),
                body: Mutex::new(Some(f)),
                outcome: Mutex::new(None),
                _pad: [0; PAD_WORDS],
            }))
        } else {
            Item::Boxed(f)
        };
        // The handle a caller would get and drop.
        let handle = match &item {
            Item::Object(t) => Some(t.clone()),
            Item::Boxed(_) => None,
        };
        self.queued[LEVEL].fetch_add(1, Ordering::AcqRel);
        if self.levels[LEVEL].0.send(item).is_err() {
            unreachable!("the skeleton's receivers live as long as it does");
        }
        fence(Ordering::SeqCst);
        if self.idle.load(Ordering::SeqCst) > 0 {
            let _ = self.bell.0.try_send(());
        }
        drop(handle);
    }
}

impl Executor for Skeleton {
    fn execute<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.shared.submit(Box::new(f));
    }
}

impl Drop for Skeleton {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
