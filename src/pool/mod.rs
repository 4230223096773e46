//! The one pool engine: admission, a priority queue, a supervised set of
//! named OS threads scaled between a minimum and a maximum, and the hooks
//! the watchdog and shutdown use. Every tier is a configuration of it.
//!
//! The worker lifecycle, the wake-up protocol and shutdown are described
//! in [`README.md`](./README.md) beside this file.

pub(crate) mod config;
mod gate;
mod shutdown;
mod worker;

use std::collections::VecDeque;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

pub(crate) use shutdown::StopOutcome;

use crate::admission::Admission;
use crate::cancel::CancelReason;
use crate::clock::Clock;
use crate::error::{RejectReason, SubmitError};
use crate::memory::{MemoryGate, MemoryProbe};
use crate::priority::Priority;
use crate::queue::PriorityQueue;
use crate::slot::Slot;
use crate::stats::TierStats;
use crate::sync::{fence, Arc, AtomicBool, AtomicUsize, Condvar, Mutex, Ordering, Weak};
use crate::task::{Body, Job, TaskCore, TaskHandle, TaskOptions, Work};
use crate::telemetry::TierCounters;
use crate::watchdog::Watchdog;
use config::TierConfig;

use gate::{Gate, OPEN, STOPPING};

/// A worker thread's public face: what it is running now.
pub(crate) struct WorkerSlot {
    index: usize,
    current: Mutex<Option<Arc<TaskCore>>>,
    idle: AtomicBool,
}

/// The thread set, under one lock: counts, slots, handles, restarts.
struct Threads {
    /// Workers that count as capacity (not zombies).
    live: usize,
    /// Threads stuck in a task declared a zombie.
    zombies: usize,
    next_index: usize,
    slots: Vec<Arc<WorkerSlot>>,
    handles: Vec<(usize, JoinHandle<()>)>,
    /// Handles of threads that have exited, joined at the next chance.
    exited: Vec<JoinHandle<()>>,
    restarts: VecDeque<Instant>,
    gave_up_restarting: bool,
    spawned: u64,
}

pub(crate) struct PoolShared {
    pub(crate) config: TierConfig,
    pub(crate) clock: Clock,
    pub(crate) queue: PriorityQueue,
    pub(crate) admission: Arc<Admission>,
    pub(crate) counters: Arc<TierCounters>,
    pub(crate) watchdog: Arc<Watchdog>,
    memory: MemoryGate,
    threads: Mutex<Threads>,
    threads_cv: Condvar,
    /// Workers blocked (or about to block) waiting for work; a new thread
    /// counts as idle from birth, so a burst does not spawn one per task.
    idle: AtomicUsize,
    live: AtomicUsize,
    /// Normal/low tasks running, against `max_workers - reserved_slots`.
    running_unreserved: AtomicUsize,
    /// Per-level reservations: a push is only made into a reserved place,
    /// so it can never fail after the closure is boxed.
    reserved: [AtomicUsize; 4],
    reserved_total: AtomicUsize,
    bell_tx: Sender<()>,
    bell_rx: Receiver<()>,
    /// The lifecycle flag and the submitters past it (see `gate.rs`).
    gate: Gate,
    paused: AtomicBool,
    drain_lock: Mutex<()>,
    drain_cv: Condvar,
    cancelled_at_stop: AtomicUsize,
    self_weak: Weak<PoolShared>,
}

impl PoolShared {
    pub(crate) fn new(
        config: TierConfig,
        clock: Clock,
        watchdog: Arc<Watchdog>,
        probe: MemoryProbe,
    ) -> Arc<PoolShared> {
        let bell_cap = (config.max_workers + config.max_zombie_replacements) * 4 + 64;
        let (bell_tx, bell_rx) = bounded(bell_cap);
        Arc::new_cyclic(|weak| PoolShared {
            queue: PriorityQueue::new(config.queue_capacity, config.starvation_limit),
            admission: Arc::new(Admission::new(config.max_in_flight, config.per_user_limit)),
            counters: Arc::new(TierCounters::new()),
            memory: MemoryGate::new(config.watermark, probe, config.memory_sample_interval),
            threads: Mutex::new(Threads {
                live: 0,
                zombies: 0,
                next_index: 0,
                slots: Vec::new(),
                handles: Vec::new(),
                exited: Vec::new(),
                restarts: VecDeque::new(),
                gave_up_restarting: false,
                spawned: 0,
            }),
            threads_cv: Condvar::new(),
            idle: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            running_unreserved: AtomicUsize::new(0),
            reserved: Default::default(),
            reserved_total: AtomicUsize::new(0),
            bell_tx,
            bell_rx,
            gate: Gate::new(),
            paused: AtomicBool::new(false),
            drain_lock: Mutex::new(()),
            drain_cv: Condvar::new(),
            cancelled_at_stop: AtomicUsize::new(0),
            self_weak: weak.clone(),
            config,
            clock,
            watchdog,
        })
    }

    pub(crate) fn name(&self) -> &'static str {
        self.config.name
    }

    /// Starts the minimum number of workers.
    pub(crate) fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let mut t = self.threads.lock();
        for _ in 0..self.config.min_workers {
            self.spawn_worker(&mut t)?;
        }
        Ok(())
    }

    // ---- submit -------------------------------------------------------

    /// Admits and enqueues a task; hands `f` back on rejection. Never
    /// blocks.
    /// Rejections are not counted here: a blocking submit retries, and
    /// only its final answer counts (see `Tier`).
    pub(crate) fn submit<T, E, F>(
        self: &Arc<Self>,
        opts: TaskOptions,
        f: F,
        make_body: impl FnOnce(F, Arc<Slot<T, E>>) -> Body,
    ) -> Result<TaskHandle<T, E>, SubmitError<F>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        // Announce ourselves before looking at the lifecycle, so shutdown
        // can wait for us to finish pushing (none stranded).
        let _pass = self.gate.enter();
        self.admit(opts, f, make_body)
    }

    fn admit<T, E, F>(
        self: &Arc<Self>,
        opts: TaskOptions,
        f: F,
        make_body: impl FnOnce(F, Arc<Slot<T, E>>) -> Body,
    ) -> Result<TaskHandle<T, E>, SubmitError<F>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        if self.gate.state() != OPEN {
            return Err(SubmitError::new(RejectReason::ShuttingDown, f));
        }
        let permit = match self.admission.try_acquire(opts.user.as_ref()) {
            Ok(p) => p,
            Err(reason) => return Err(SubmitError::new(reason, f)),
        };
        let level = opts.priority.index();
        if !self.reserve(level) {
            return Err(SubmitError::new(self.queue_full(), f));
        }
        let priority = opts.priority;
        let queue_budget = opts.queue_budget;
        let slot = Arc::new(Slot::<T, E>::new());
        let submitted_at = self.clock.now();
        let core = Arc::new(TaskCore::new(
            opts,
            self.name(),
            submitted_at,
            slot.clone(),
            permit,
            self.counters.clone(),
            self.self_weak.clone(),
        ));
        let job = Job {
            core: core.clone(),
            body: make_body(f, slot.clone()),
        };
        self.counters.submitted();
        self.push_reserved(priority, Work::Task(job));
        if let Some(at) = queue_budget.and_then(|b| submitted_at.checked_add(b)) {
            self.watchdog.watch_queue(&core, at);
        }
        self.wake_for_new_work();
        if priority == Priority::Critical && self.config.preemption {
            self.maybe_preempt();
        }
        Ok(TaskHandle::new(core, slot, self.clock.clone()))
    }

    /// Reserves a place at `level` (see `reserved`), within the level's
    /// capacity and the tier's `max_queued`.
    pub(crate) fn reserve(&self, level: usize) -> bool {
        let total = self.config.max_queued.unwrap_or(usize::MAX);
        if self
            .reserved_total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < total).then_some(n + 1)
            })
            .is_err()
        {
            return false;
        }
        let cap = self.queue.capacity();
        let ok = self.reserved[level]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok();
        if !ok {
            self.reserved_total.fetch_sub(1, Ordering::AcqRel);
        }
        ok
    }

    /// A place was given up (picked, or its push failed).
    pub(crate) fn unreserve(&self, level: usize) {
        self.reserved[level].fetch_sub(1, Ordering::AcqRel);
        self.reserved_total.fetch_sub(1, Ordering::AcqRel);
    }

    /// The queue-full rejection, naming the limit that was hit.
    fn queue_full(&self) -> RejectReason {
        let capacity = match self.config.max_queued {
            Some(total) if self.reserved_total.load(Ordering::Acquire) >= total => total,
            _ => self.queue.capacity(),
        };
        RejectReason::QueueFull { capacity }
    }

    fn push_reserved(&self, p: Priority, w: Work) {
        if let Err(w) = self.queue.push(p, w) {
            // Cannot happen (the place was reserved); if it did, dropping
            // the job settles it as cancelled rather than losing it.
            self.unreserve(p.index());
            drop(w);
        }
    }

    /// Makes sure someone will look at newly queued work: ring an idle
    /// worker, and scale up while queued work outnumbers idle workers
    /// (threads being started count as idle) and the tier may grow.
    pub(crate) fn wake_for_new_work(self: &Arc<Self>) {
        // Pairs with the worker's SeqCst idle increment before its last
        // look at the queue: one of us sees the other.
        fence(Ordering::SeqCst);
        let idle = self.idle.load(Ordering::SeqCst);
        if idle > 0 {
            self.ring(1);
        }
        if self.live.load(Ordering::Acquire) < self.config.max_workers
            && idle < self.counters.queued()
        {
            self.scale_up();
        }
    }

    #[cold]
    fn scale_up(self: &Arc<Self>) {
        let mut t = self.threads.lock();
        let (idle, queued) = (self.idle.load(Ordering::SeqCst), self.counters.queued());
        if t.live >= self.config.max_workers || idle >= queued {
            return;
        }
        match self.spawn_worker(&mut t) {
            Ok(()) => {
                self.counters.scaled_up();
                log::debug!(target: "tierpool::pool", "{}: scaled up to {} workers ({queued} queued, {idle} idle)",
                    self.name(), t.live);
            }
            Err(e) => {
                log::error!(target: "tierpool::pool", "{}: could not start a worker: {e}", self.name());
            }
        }
    }

    pub(crate) fn ring(&self, n: usize) {
        for _ in 0..n {
            // A full bell already holds more wake-ups than there are
            // idle workers: nothing is lost by dropping this one.
            if self.bell_tx.try_send(()).is_err() {
                break;
            }
        }
    }

    /// When a critical task must wait because every worker is busy, cancel
    /// the lowest-priority preemptible task running.
    fn maybe_preempt(&self) {
        if self.idle.load(Ordering::SeqCst) > 0
            || self.live.load(Ordering::Acquire) < self.config.max_workers
        {
            return;
        }
        let victim = {
            let t = self.threads.lock();
            t.slots
                .iter()
                .filter_map(|s| s.current.lock().clone())
                .filter(|c| {
                    c.opts.preemptible
                        && c.opts.priority < Priority::Critical
                        && !c.current_token().is_cancelled()
                })
                .min_by_key(|c| c.opts.priority)
        };
        if let Some(v) = victim {
            if v.cancel(CancelReason::Preempted) {
                self.counters.preempted();
                log::info!(target: "tierpool::pool",
                    "{}: preempted task {} ({}) for a critical task", self.name(), v.id, v.opts.priority);
            }
        }
    }

    /// Fault injection: the worker that takes this panics outside any task.
    pub(crate) fn inject_worker_panic(&self) -> bool {
        if !self.reserve(0) {
            return false;
        }
        self.push_reserved(Priority::Critical, Work::Poison);
        fence(Ordering::SeqCst);
        self.ring(1);
        true
    }

    // ---- workers ------------------------------------------------------

    fn spawn_worker(self: &Arc<Self>, t: &mut Threads) -> std::io::Result<()> {
        let index = t.next_index;
        let slot = Arc::new(WorkerSlot {
            index,
            current: Mutex::new(None),
            idle: AtomicBool::new(true),
        });
        let pool = self.clone();
        let s = slot.clone();
        self.idle.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name(format!("tierpool-{}-{index}", self.name()))
            .spawn(move || worker::run(pool, s));
        match spawned {
            Ok(h) => {
                t.next_index += 1;
                t.live += 1;
                t.spawned += 1;
                t.slots.push(slot);
                t.handles.push((index, h));
                self.live.store(t.live, Ordering::Release);
                // Reap threads that exited since the last spawn.
                t.exited.retain(|h| !h.is_finished());
                Ok(())
            }
            Err(e) => {
                self.idle.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Removes an exiting thread's slot and parks its handle for joining.
    fn forget_thread(&self, t: &mut Threads, index: usize) {
        t.slots.retain(|s| s.index != index);
        if let Some(pos) = t.handles.iter().position(|(i, _)| *i == index) {
            let (_, h) = t.handles.swap_remove(pos);
            t.exited.push(h);
        }
        self.threads_cv.notify_all();
    }

    /// The watchdog's verdict: a cancelled task still running past its
    /// grace. Its thread stops counting as capacity, and a replacement
    /// starts (bounded by `max_zombie_replacements`).
    pub(crate) fn declare_zombie(self: &Arc<Self>, core: &Arc<TaskCore>, attempt: u32) {
        let mut t = self.threads.lock();
        if !core.mark_zombie(attempt) {
            return;
        }
        t.zombies += 1;
        t.live -= 1;
        self.live.store(t.live, Ordering::Release);
        self.counters.zombie();
        self.counters.stopped_running();
        log::error!(target: "tierpool::watchdog",
            "task {} on {} ignored cancellation for {:?}: zombie ({} now); starting a replacement worker",
            core.id, core.tier, self.config.cancel_grace, t.zombies);
        let may_replace =
            t.zombies <= self.config.max_zombie_replacements && self.gate.state() != STOPPING;
        if may_replace && t.live < self.config.max_workers {
            if let Err(e) = self.spawn_worker(&mut t) {
                log::error!(target: "tierpool::pool", "{}: could not start a replacement worker: {e}", self.name());
            }
        }
    }

    /// A cancelled running task must return within the grace.
    pub(crate) fn watch_cancelled(&self, core: &Arc<TaskCore>, attempt: u32) {
        if let Some(at) = self.clock.now().checked_add(self.config.cancel_grace) {
            self.watchdog.watch_zombie(core, attempt, at);
        }
    }

    // ---- control --------------------------------------------------------

    pub(crate) fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub(crate) fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        let n = self.live.load(Ordering::Acquire);
        self.ring(n);
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub(crate) fn stats(&self) -> TierStats {
        let c = self.counters.snapshot();
        let t = self.threads.lock();
        TierStats::from_parts(
            self.name(),
            c,
            t.live,
            t.zombies,
            self.idle.load(Ordering::Relaxed),
            self.admission.in_flight(),
            self.is_paused(),
            self.memory.is_paused(),
            self.memory.last_rss(),
            self.memory.pauses(),
            t.gave_up_restarting,
            t.spawned,
            (self.config.min_workers, self.config.max_workers),
        )
    }

    pub(crate) fn thread_counts(&self) -> (usize, usize) {
        let t = self.threads.lock();
        (t.live, t.zombies)
    }
}
