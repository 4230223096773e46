//! The dispatch floor: how fast a pool *shaped like tierpool* can be before
//! it does any of tierpool's bookkeeping, next to the bare pool and
//! tierpool itself, on the bench's tiny-task workload (one submitter).
//!
//! The skeleton keeps only the mechanism every tierpool task must pass
//! through: four bounded level channels with a per-level count, a pick lock,
//! an idle count and a wake-up bell; optionally a per-task state object the
//! size of tierpool's task core (a state word set by compare-exchange at
//! start and end, the closure and the outcome behind locks, a handle clone
//! the submitter drops), and optionally the spent-object return that hands
//! the last reference back to the submitter to free. No stats, no
//! watchdog, no admission, no events, no cancellation.
//!
//! `cargo run --release --example dispatch_floor [workers] [rounds] [tasks]`
//!
//! Rounds are interleaved (each contender once per round) and the median
//! is reported with its ratio to the bare pool measured in the same round
//! set: the machine's noise moves them together.
#[path = "../benches/support/mod.rs"]
mod support;

use std::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use support::contenders::{tierpool_ui, BarePool, Executor, Features, TierExec};
use support::workload::dispatch;
use tierpool::Priority;

type Job = Box<dyn FnOnce() + Send>;

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
struct Shape {
    object: bool,
    spent_return: bool,
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

struct Skeleton {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Skeleton {
    fn new(workers: usize, capacity: usize, shape: Shape) -> Self {
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
                    // Idle, then one more look before sleeping (the
                    // submitter reads `idle` after its push).
                    self.idle.fetch_add(1, Ordering::SeqCst);
                    if self.queued.iter().all(|q| q.load(Ordering::SeqCst) == 0) {
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

/// One timed round of a contender: tasks per second.
type Run = Box<dyn Fn() -> f64>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .map_or(Ok(d), |s| s.parse::<usize>())
            .unwrap_or_else(|e| {
                eprintln!("usage: dispatch_floor [workers] [rounds] [tasks]: {e}");
                std::process::exit(2)
            })
    };
    let (workers, rounds, tasks) = (arg(1, 2), arg(2, 9), arg(3, 200_000));
    const CAP: usize = 1024;
    let skeleton = move |object, spent_return| {
        Skeleton::new(
            workers,
            CAP,
            Shape {
                object,
                spent_return,
            },
        )
    };
    let rt = tierpool_ui(workers, CAP, Features::Defaults);
    let tier = TierExec {
        tier: rt.ui().clone(),
        priority: Priority::Normal,
    };
    let contenders: Vec<(&str, Run)> = {
        let rate = move |d: Duration| tasks as f64 / d.as_secs_f64();
        vec![
            (
                "bare pool (one channel, 16-byte box)",
                Box::new(move || rate(dispatch(&BarePool::new(workers, CAP), 1, tasks))),
            ),
            (
                "skeleton: 4 levels + pick lock",
                Box::new(move || rate(dispatch(&skeleton(false, false), 1, tasks))),
            ),
            (
                "skeleton + 304-byte task object + handle",
                Box::new(move || rate(dispatch(&skeleton(true, false), 1, tasks))),
            ),
            (
                "skeleton + task object + spent return",
                Box::new(move || rate(dispatch(&skeleton(true, true), 1, tasks))),
            ),
            (
                "tierpool (defaults)",
                Box::new(move || rate(dispatch(&tier, 1, tasks))),
            ),
        ]
    };
    let mut rates = vec![Vec::new(); contenders.len()];
    for _ in 0..rounds {
        for (i, (_, run)) in contenders.iter().enumerate() {
            rates[i].push(run());
        }
    }
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    println!(
        "{workers} workers, 1 submitter, {tasks} tiny tasks, median of {rounds} interleaved rounds"
    );
    println!("| contender | M tasks/s | vs bare |");
    println!("|---|---:|---:|");
    for ((name, _), m) in contenders.iter().zip(&medians) {
        println!("| {name} | {:.2} | {:.2}x |", m / 1e6, m / medians[0]);
    }
}
