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
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

pub(crate) use shutdown::StopOutcome;

use crate::admission::{Admission, Room};
use crate::cancel::CancelReason;
use crate::clock::Clock;
use crate::error::{RejectReason, SubmitError};
use crate::memory::{MemoryGate, MemoryProbe};
use crate::priority::Priority;
use crate::queue::PriorityQueue;
use crate::runtime::PhaseDeadline;
use crate::stats::TierStats;
use crate::sync::{
    fence, Arc, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Condvar, Mutex, Ordering, Padded,
    Weak,
};
use crate::task::{
    Body, Job, TaskCore, TaskCoreOf, TaskHandle, TaskOptions, Typed, TypedCore, Work, ZOMBIE,
};
use crate::telemetry::RestartCause;
use crate::telemetry::{Event, EventBus, ScaleReason, TierCounters};
use crate::watchdog::Watchdog;
use config::{TierConfig, MAX_WORKERS_LIMIT};

/// How long a restart waits (real time) for idle old threads to replace
/// themselves; they only need to be rung, so this is a safety bound.
const IDLE_REPLACEMENT_CAP: Duration = Duration::from_secs(2);

/// How many spent task cores may wait for a submitter to free them (see
/// `PoolShared::return_spent`): a level's queue capacity, within these
/// bounds. A submitter blocked on a full queue frees none meanwhile, and
/// may sleep while the workers run on; past the capacity a worker frees them
/// itself, and an idle worker frees what is left (nothing is kept for a
/// submitter that does not come back).
const SPENT_CAPACITY: (usize, usize) = (64, 4096);

use gate::{Gate, OPEN, STOPPING};

/// A worker thread's public face: what it is running now.
pub(crate) struct WorkerSlot {
    index: usize,
    /// The restart generation the thread was started in; a thread of an
    /// older one replaces itself at its next look for work.
    pub(crate) generation: u64,
    current: Mutex<Option<Arc<TaskCore>>>,
    /// When the current run started, as nanoseconds after the pool's
    /// epoch plus one (0: not running); read by the utilisation window.
    run_since: AtomicU64,
    idle: AtomicBool,
}

/// A run-start stamp: nanoseconds on the clock's epoch plus one (0 means
/// "not running").
fn stamp_of(nanos: u64) -> u64 {
    nanos.min(u64::MAX - 1) + 1
}

/// `PoolShared::saturated`: nothing saturated, a queue limit (level or
/// `max_queued`), the in-flight limit.
const SAT_NONE: u8 = 0;
const SAT_QUEUE: u8 = 1;
const SAT_IN_FLIGHT: u8 = 2;

/// Which limit made the tier saturated, and since when.
#[derive(Clone, Copy, Debug)]
struct Saturation {
    since: Instant,
    limit: SaturatedLimit,
}

#[derive(Clone, Copy, Debug)]
enum SaturatedLimit {
    /// One priority level's queue (level, capacity).
    Level(usize, usize),
    /// `max_queued` across levels.
    Queued(usize),
    /// `max_in_flight`.
    InFlight(usize),
}

/// Samples of total busy time, for utilisation over a rolling window
/// without a sampling thread: every snapshot adds one (at most one per
/// `window / 20`), and the oldest one still covering the window start is
/// the baseline.
#[derive(Default)]
struct UtilWindow {
    samples: VecDeque<(Instant, Duration)>,
}

/// What a maintenance restart did.
pub(crate) struct RestartOutcome {
    pub(crate) drained_in_time: bool,
    pub(crate) replaced: usize,
    pub(crate) still_running: usize,
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
    idle: Padded<AtomicUsize>,
    live: AtomicUsize,
    /// Normal/low tasks running, against `max_workers - reserved_slots`.
    running_unreserved: AtomicUsize,
    /// Per-level reservations: a push is only made into a reserved place,
    /// so it can never fail after the closure is boxed.
    reserved: Padded<[AtomicUsize; 4]>,
    /// Only kept when `max_queued` is set.
    reserved_total: Padded<AtomicUsize>,
    bell_tx: Sender<()>,
    bell_rx: Receiver<()>,
    /// Spent task cores on their way back to a submitting thread, which
    /// frees them (see `return_spent`).
    spent_tx: Sender<Job>,
    spent_rx: Receiver<Job>,
    /// Rings sent and not yet taken by a worker (see "the wake-up protocol"
    /// in README.md): a submitter that sees at least one per idle worker
    /// does not ring again.
    rings: Padded<AtomicUsize>,
    /// The lifecycle flag and the submitters past it (see `gate.rs`).
    gate: Gate,
    paused: AtomicBool,
    drain_lock: Mutex<()>,
    drain_cv: Condvar,
    cancelled_at_stop: AtomicUsize,
    /// Bumped by a maintenance restart (see `WorkerSlot::generation`).
    generation: AtomicU64,
    /// A restart is waiting for running work to drain: start nothing.
    restarting: AtomicBool,
    restart_lock: Mutex<()>,
    /// Fast check for `saturation` (read on every pick).
    /// `SAT_NONE`, or which kind of limit is saturated (the pick path reads
    /// it: an in-flight limit is looked at on every pick, a queue limit
    /// where the queue crosses half).
    saturated: AtomicU8,
    saturation: Mutex<Option<Saturation>>,
    util: Mutex<UtilWindow>,
    self_weak: Weak<PoolShared>,
}

impl PoolShared {
    pub(crate) fn new(
        config: TierConfig,
        clock: Clock,
        watchdog: Arc<Watchdog>,
        probe: MemoryProbe,
        events: Arc<EventBus>,
    ) -> Arc<PoolShared> {
        // `max_zombie_replacements` is not bounded by validation (any value
        // is meaningful), but replacements never exceed the worker limit:
        // clamp it, or a huge value overflows here (found by
        // tests/bad_input_props.rs).
        let replacements = config.max_zombie_replacements.min(MAX_WORKERS_LIMIT);
        let bell_cap = (config.max_workers + replacements) * 4 + 64;
        let (bell_tx, bell_rx) = bounded(bell_cap);
        let (spent_tx, spent_rx) = bounded(
            config
                .queue_capacity
                .clamp(SPENT_CAPACITY.0, SPENT_CAPACITY.1),
        );
        Arc::new_cyclic(|weak| PoolShared {
            queue: PriorityQueue::new(
                config.queue_capacity,
                config.starvation_limit,
                config.reserved_slots > 0,
            ),
            admission: Arc::new(Admission::new(config.max_in_flight, config.per_user_limit)),
            counters: Arc::new(TierCounters::for_pool(events, weak.clone())),
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
            idle: Padded(AtomicUsize::new(0)),
            live: AtomicUsize::new(0),
            running_unreserved: AtomicUsize::new(0),
            reserved: Default::default(),
            reserved_total: Padded(AtomicUsize::new(0)),
            bell_tx,
            bell_rx,
            spent_tx,
            spent_rx,
            rings: Padded(AtomicUsize::new(0)),
            gate: Gate::new(),
            paused: AtomicBool::new(false),
            drain_lock: Mutex::new(()),
            drain_cv: Condvar::new(),
            cancelled_at_stop: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            restarting: AtomicBool::new(false),
            restart_lock: Mutex::new(()),
            saturated: AtomicU8::new(SAT_NONE),
            saturation: Mutex::new(None),
            util: Mutex::new(UtilWindow::default()),
            self_weak: weak.clone(),
            config,
            clock,
            watchdog,
        })
    }

    pub(crate) fn name(&self) -> &'static str {
        self.config.name
    }

    /// The runtime's event bus.
    #[inline]
    pub(crate) fn events(&self) -> &EventBus {
        &self.counters.events
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
    /// blocks. Rejections are not counted here: a blocking submit retries,
    /// and only its final answer counts (see `Tier`).
    pub(crate) fn submit<T, E, F, B>(
        self: &Arc<Self>,
        opts: TaskOptions,
        f: F,
        make_body: impl FnOnce(F) -> B,
    ) -> Result<TaskHandle<T, E>, SubmitError<F>>
    where
        T: Send + 'static,
        E: Send + 'static,
        B: Body<T, E>,
    {
        // Announce ourselves before looking at the lifecycle, so shutdown
        // can wait for us to finish pushing (none stranded).
        let _pass = self.gate.enter();
        if self.gate.state() != OPEN {
            return Err(SubmitError::new(RejectReason::ShuttingDown, f));
        }
        // The queue place first, then the permit: a rejection then never
        // takes and returns a permit, which would count as a release and
        // wake blocked submitters (`submit_wait` would spin). A place taken
        // and given back for a refused permit wakes the submitters waiting
        // for that place, as a pick does (one may have been refused only
        // because this one held it), but not this one: refused a permit,
        // it waits for a permit (`Room`, and invariant 3 in admission.rs).
        // It used to be given back with no notification at all, since
        // waking every waiter made a blocked submitter whose own retry took
        // the last place wake itself and retry at full speed until its
        // deadline (200–930 ms of CPU per second, found by a review); the
        // other waiter then learnt of the place only at the next half-way
        // crossing, or its deadline.
        let level = opts.priority.index();
        if let Err(room) = self.reserve(level) {
            let (capacity, limit) = match (room, self.config.max_queued) {
                (Room::Total, Some(total)) => (total, SaturatedLimit::Queued(total)),
                _ => {
                    let cap = self.queue.capacity();
                    (cap, SaturatedLimit::Level(level, cap))
                }
            };
            self.mark_saturated(limit);
            let reason = RejectReason::QueueFull { capacity };
            return Err(SubmitError::queue_full(reason, room, f));
        }
        let permit = match self.admission.acquire(opts.user.as_ref()) {
            Ok(p) => p,
            Err(reason) => {
                self.unreserve(level);
                if let RejectReason::TierLimit { limit } = reason {
                    self.mark_saturated(SaturatedLimit::InFlight(limit));
                }
                return Err(SubmitError::new(reason, f));
            }
        };
        let priority = opts.priority;
        let queue_budget = opts.queue_budget;
        // Free one spent core here, on a submitting thread (see
        // `return_spent`): the allocation below then finds its memory in
        // this thread's cache.
        drop(self.spent_rx.try_recv());
        let submitted_at = self.clock.now();
        // One allocation: the core with the slot and the closure in it.
        let typed = Arc::new(TaskCoreOf::new(
            opts,
            self.name(),
            self.clock.nanos(submitted_at),
            Typed::new(make_body(f)),
            permit,
            self.counters.clone(),
        ));
        // Two references to the one allocation: the handle's and the
        // queued job's (refcount traffic on the core's line is per-task
        // cost, shared with the worker).
        let job_core: Arc<TaskCore> = typed.clone();
        let typed: TypedCore<T, E> = typed;
        self.counters.submitted();
        let id = typed.id;
        tlog!(trace, target: "tierpool::task", "{}: task {id} submitted ({priority})", self.name());
        self.events().emit_with(|| Event::TaskSubmitted {
            tier: self.name(),
            task: id,
            priority,
        });
        if let Some(at) = queue_budget.and_then(|b| submitted_at.checked_add(b)) {
            // Before the push: the entry only holds a weak reference.
            self.watchdog.watch_queue(&job_core, at);
        }
        self.push_reserved(priority, Work::Task(Job { core: job_core }));
        self.wake_for_new_work();
        if priority == Priority::Critical && self.config.preemption {
            self.maybe_preempt();
        }
        Ok(TaskHandle::new(typed, self.clock.clone()))
    }

    /// Reserves a place at `level` (see `reserved`), within the tier's
    /// `max_queued` and the level's capacity; says which limit refused
    /// otherwise. A `max_queued` place taken for a level found full is
    /// handed back with a notification of that room when it was the last
    /// one: a submitter refused by `max_queued` meanwhile was refused only
    /// because of it (invariant 3 in admission.rs; this one waits for a
    /// place at its level, and is not woken by it).
    pub(crate) fn reserve(&self, level: usize) -> Result<(), Room> {
        let max_queued = self.config.max_queued;
        if let Some(total) = max_queued {
            self.reserved_total
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < total).then_some(n + 1)
                })
                .map_err(|_| Room::Total)?;
        }
        let cap = self.queue.capacity();
        let taken = self.reserved[level]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok();
        if taken {
            return Ok(());
        }
        if let Some(total) = max_queued {
            if self.reserved_total.fetch_sub(1, Ordering::AcqRel) >= total {
                self.admission.notify(&[Room::Total]);
            }
        }
        Err(Room::Level)
    }

    /// A place was given up: picked by a worker, a re-queue abandoned, or
    /// handed back by a submitter refused a permit. A place given up at a
    /// full limit wakes the submitters waiting in that limit's room — the
    /// level's (`Room::Level`), `max_queued`'s (`Room::Total`), or both
    /// (edge-triggered, like the in-flight limit's releases: a submitter
    /// refused by a full queue saw it full, and the first place given up
    /// after that starts from full); so does crossing a limit's half-way
    /// mark (a second chance, cheap: once per half queue). Returns `true`
    /// when this crossed the half-way mark: where a saturated queue counts
    /// as relieved.
    pub(crate) fn unreserve(&self, level: usize) -> bool {
        let (notify, crossed_half) = self.give_back_place(level);
        match notify {
            (true, true) => self.admission.notify(&[Room::Level, Room::Total]),
            (true, false) => self.admission.notify(&[Room::Level]),
            (false, true) => self.admission.notify(&[Room::Total]),
            (false, false) => {}
        }
        crossed_half
    }

    /// A place given back where nobody can be waiting for it (a push that
    /// failed after its place was reserved, which does not happen).
    pub(crate) fn unreserve_quiet(&self, level: usize) {
        self.give_back_place(level);
    }

    /// `((notify the level's room, notify max_queued's room), crossed the
    /// half-way mark of either)`: a room is notified when its limit was
    /// full or this crossed its half-way mark.
    fn give_back_place(&self, level: usize) -> ((bool, bool), bool) {
        let cap = self.queue.capacity();
        let half_of = |cap: usize, before: usize| before == cap / 2 + 1;
        let level_before = self.reserved[level].fetch_sub(1, Ordering::AcqRel);
        let level_crossed = half_of(cap, level_before);
        let level_note = level_before >= cap || level_crossed;
        let (total_note, total_crossed) = match self.config.max_queued {
            Some(m) => {
                let before = self.reserved_total.fetch_sub(1, Ordering::AcqRel);
                (before >= m || half_of(m, before), half_of(m, before))
            }
            None => (false, false),
        };
        ((level_note, total_note), level_crossed || total_crossed)
    }

    fn push_reserved(&self, p: Priority, w: Work) {
        if let Err(w) = self.queue.push(p, w) {
            // Cannot happen (the place was reserved); if it did, dropping
            // the job settles it as cancelled rather than losing it.
            self.unreserve_quiet(p.index());
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
        // A ring already on its way to each idle worker will make one of
        // them look at the queue after this push (README.md: "Pending
        // rings"); one more would only wake a worker for nothing.
        if idle > 0 && self.rings.load(Ordering::SeqCst) < idle {
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
                self.events().emit_with(|| Event::PoolScaled {
                    tier: self.name(),
                    from: t.live - 1,
                    to: t.live,
                    reason: ScaleReason::Demand { queued, idle },
                });
                tlog!(debug, target: "tierpool::pool", "{}: scaled up to {} workers ({queued} queued, {idle} idle)",
                    self.name(), t.live);
            }
            Err(e) => {
                tlog!(error, target: "tierpool::pool", "{}: could not start a worker: {e}", self.name());
            }
        }
    }

    pub(crate) fn ring(&self, n: usize) {
        let cap = self.bell_tx.capacity().unwrap_or(usize::MAX);
        for _ in 0..n {
            // Counted before it is sent, so it is never taken uncounted;
            // and never counted past the bell's capacity, so the send
            // cannot find the bell full: a count with no ring behind it
            // would let a submitter skip a ring nobody sends (README.md,
            // "Pending rings"). A bell that full holds more wake-ups than
            // there are idle workers: nothing is lost by not ringing.
            if self
                .rings
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                    (r < cap).then_some(r + 1)
                })
                .is_err()
            {
                break;
            }
            if self.bell_tx.try_send(()).is_err() {
                // Only if the bell is gone (the pool is being dropped).
                self.rings.fetch_sub(1, Ordering::SeqCst);
                break;
            }
        }
    }

    /// A worker took a ring off the bell: it looks at the queue next.
    pub(crate) fn took_ring(&self) {
        self.rings.fetch_sub(1, Ordering::SeqCst);
        // Pairs with the submitter's fence before it read `rings`: a
        // submitter that counted this ring and did not ring again pushed
        // its work before that fence, and this worker's look at the queue
        // after this fence sees it.
        fence(Ordering::SeqCst);
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
                        && !c.token().is_cancelled()
                })
                .min_by_key(|c| c.opts.priority)
        };
        if let Some(v) = victim {
            if v.cancel(CancelReason::Preempted) {
                self.counters.preempted();
                self.events().emit_with(|| Event::TaskPreempted {
                    tier: self.name(),
                    task: v.id,
                    priority: v.opts.priority,
                });
                tlog!(info, target: "tierpool::pool",
                    "{}: preempted task {} ({}) for a critical task", self.name(), v.id, v.opts.priority);
            }
        }
    }

    /// Fault injection: the worker that takes this panics outside any task.
    pub(crate) fn inject_worker_panic(&self) -> bool {
        if self.reserve(0).is_err() {
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
            generation: self.generation.load(Ordering::Acquire),
            current: Mutex::new(None),
            run_since: AtomicU64::new(0),
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

    /// A worker thread leaves (retired, replaced, shut down): it stops
    /// counting as idle and as capacity, and its handle is parked for
    /// joining.
    fn leave(&self, t: &mut Threads, slot: &WorkerSlot) {
        // `live` before `idle`: a submitter that sees this worker no longer
        // idle (its SeqCst read of `idle`) then sees the lower `live` too,
        // and starts a worker itself (see `retired`).
        t.live -= 1;
        self.live.store(t.live, Ordering::Release);
        if slot.idle.swap(false, Ordering::Relaxed) {
            self.idle.fetch_sub(1, Ordering::SeqCst);
        }
        self.forget_thread(t, slot.index);
    }

    /// After a worker retired on keep-alive: a submitter that pushed just
    /// before still counted it idle, and may have rung it or left a ring to
    /// it, and started no thread. Either that submitter saw it leave (and
    /// starts a worker itself, `live` being below the limit), or this look
    /// after the fence sees the submitter's reservation (Dekker on `idle`
    /// and `reserved`) and does the wake-up in its place.
    pub(crate) fn retired(self: &Arc<Self>) {
        fence(Ordering::SeqCst);
        if self.reserved.iter().any(|r| r.load(Ordering::SeqCst) > 0) {
            self.wake_for_new_work();
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
        self.events().emit_with(|| Event::TaskZombie {
            tier: self.name(),
            task: core.id,
        });
        tlog!(error, target: "tierpool::watchdog",
            "task {} on {} ignored cancellation for {:?}: zombie ({} now); starting a replacement worker",
            core.id, core.tier, self.config.cancel_grace, t.zombies);
        let may_replace =
            t.zombies <= self.config.max_zombie_replacements && self.gate.state() != STOPPING;
        if may_replace && t.live < self.config.max_workers {
            match self.spawn_worker(&mut t) {
                Ok(()) => self.events().emit_with(|| Event::PoolScaled {
                    tier: self.name(),
                    from: t.live - 1,
                    to: t.live,
                    reason: ScaleReason::ZombieReplacement,
                }),
                Err(e) => {
                    tlog!(error, target: "tierpool::pool", "{}: could not start a replacement worker: {e}", self.name());
                }
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
        let now = self.clock.now();
        let utilisation = self.utilisation(now, c.busy, c.running);
        let saturated_for = self.saturated_for(now);
        let t = self.threads.lock();
        TierStats::from_parts(
            self.name(),
            c,
            t.live,
            t.zombies,
            self.idle.load(Ordering::Relaxed),
            self.admission
                .in_flight()
                .unwrap_or_else(|| self.counters.queued() + self.counters.running()),
            self.is_paused(),
            self.memory.is_paused(),
            self.memory.last_rss(),
            self.memory.pauses(),
            t.gave_up_restarting,
            t.spawned,
            (self.config.min_workers, self.config.max_workers),
        )
        .with_supervision(utilisation, saturated_for)
    }

    /// Calls `f` with every task running on this tier now (the watchdog's
    /// scan).
    pub(crate) fn for_each_running(&self, mut f: impl FnMut(&Arc<TaskCore>)) {
        let t = self.threads.lock();
        for s in &t.slots {
            if let Some(core) = s.current.lock().as_ref() {
                f(core);
            }
        }
    }

    pub(crate) fn thread_counts(&self) -> (usize, usize) {
        let t = self.threads.lock();
        (t.live, t.zombies)
    }
}

// ---- utilisation, saturation ------------------------------------------------

impl PoolShared {
    /// `at` as a run-start stamp (see `stamp_of`).
    fn stamp(&self, at: Instant) -> u64 {
        stamp_of(self.clock.nanos(at))
    }

    /// A run started at `start_n` (nanoseconds on the clock's epoch).
    pub(crate) fn note_run_start(&self, slot: &WorkerSlot, start_n: u64) {
        slot.run_since.store(stamp_of(start_n), Ordering::Relaxed);
    }

    pub(crate) fn note_run_end(&self, slot: &WorkerSlot) {
        slot.run_since.store(0, Ordering::Relaxed);
    }

    /// Busy time so far, the runs in progress included (so a tier busy
    /// with long tasks does not look idle until they return).
    fn busy_now(&self, now: Instant, finished: Duration) -> Duration {
        let t = self.threads.lock();
        let now_stamp = self.stamp(now);
        let in_progress: u64 = t
            .slots
            .iter()
            .map(|s| s.run_since.load(Ordering::Relaxed))
            .filter(|&since| since != 0)
            .map(|since| now_stamp.saturating_sub(since))
            .sum();
        finished + Duration::from_nanos(in_progress)
    }

    /// Busy time / (max_workers × window) over the last
    /// `utilisation_window` (or since the oldest sample, when snapshots are
    /// rarer than that); `running / max_workers` before there are two
    /// samples.
    fn utilisation(&self, now: Instant, finished: Duration, running: usize) -> f64 {
        let max = self.config.max_workers.max(1) as f64;
        let busy = self.busy_now(now, finished);
        let window = self.config.utilisation_window;
        let mut w = self.util.lock();
        let step = window / 20;
        if w.samples
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= step)
        {
            w.samples.push_back((now, busy));
        }
        // Keep one sample at or before the window start as the baseline.
        let window_start = now.checked_sub(window);
        while w.samples.len() > 2 && window_start.is_some_and(|start| w.samples[1].0 <= start) {
            w.samples.pop_front();
        }
        let Some(&(base_at, base_busy)) = w.samples.front() else {
            return running as f64 / max;
        };
        let span = now.saturating_duration_since(base_at);
        if span.is_zero() {
            return running as f64 / max;
        }
        let used = busy.saturating_sub(base_busy).as_secs_f64();
        (used / (span.as_secs_f64() * max)).clamp(0.0, 1.0)
    }

    #[cold]
    fn mark_saturated(&self, limit: SaturatedLimit) {
        let mut s = self.saturation.lock();
        if s.is_none() {
            *s = Some(Saturation {
                since: self.clock.now(),
                limit,
            });
            let kind = match limit {
                SaturatedLimit::InFlight(_) => SAT_IN_FLIGHT,
                _ => SAT_QUEUE,
            };
            self.saturated.store(kind, Ordering::Release);
            tlog!(debug, target: "tierpool::pool", "{}: at capacity ({limit:?})", self.name());
        }
    }

    /// Called on every pick and at the end of every run (one load when
    /// nothing is saturated; a run's end returns its permit): clears
    /// the saturation once the limit that was hit is back at half or less
    /// (hysteresis, so a queue hovering at its capacity stays saturated).
    /// A queue limit can only be relieved where the pick took a queue below
    /// half (`queue_crossed_half`); an in-flight limit is relieved by tasks
    /// ending, which no queue crossing reports, so while one is saturated
    /// every pick looks — else a tier relieved and saturated again an hour
    /// later would report an hour of saturation.
    #[inline]
    pub(crate) fn check_saturation(&self, queue_crossed_half: bool) {
        let kind = self.saturated.load(Ordering::Acquire);
        if kind == SAT_IN_FLIGHT || (kind != SAT_NONE && queue_crossed_half) {
            self.clear_saturation_if_relieved();
        }
    }

    #[cold]
    fn clear_saturation_if_relieved(&self) {
        let mut s = self.saturation.lock();
        let Some(sat) = *s else {
            return;
        };
        let relieved = match sat.limit {
            SaturatedLimit::Level(level, cap) => {
                self.reserved[level].load(Ordering::Acquire) <= cap / 2
            }
            SaturatedLimit::Queued(total) => {
                self.reserved_total.load(Ordering::Acquire) <= total / 2
            }
            SaturatedLimit::InFlight(limit) => self.admission.in_flight().unwrap_or(0) <= limit / 2,
        };
        if relieved {
            *s = None;
            self.saturated.store(SAT_NONE, Ordering::Release);
            tlog!(debug, target: "tierpool::pool", "{}: no longer at capacity (after {:?})",
                self.name(), self.clock.now().saturating_duration_since(sat.since));
        }
    }

    fn saturated_for(&self, now: Instant) -> Option<Duration> {
        if self.saturated.load(Ordering::Acquire) == SAT_NONE {
            return None;
        }
        self.clear_saturation_if_relieved();
        let s = *self.saturation.lock();
        s.map(|s| now.saturating_duration_since(s.since))
    }

    /// Health reads the memory gate fresh (an idle tier samples nothing).
    pub(crate) fn refresh_memory(&self) {
        if self.memory.enabled() {
            let _ = self.memory.allows_work(&self.clock);
        }
    }

    pub(crate) fn watermark_high(&self) -> Option<u64> {
        self.config.watermark.map(|w| w.high)
    }
}

// ---- maintenance restart ------------------------------------------------------

impl PoolShared {
    /// Drain running work (starting nothing new, the queue kept) until
    /// `deadline`, then have every worker thread replace itself with a new
    /// one at its next look for work: idle ones at once, busy ones when
    /// their task returns. Resets the restart intensity, and tops the tier
    /// up to `min_workers` if deaths past the intensity left it short.
    pub(crate) fn restart_threads(
        self: &Arc<Self>,
        deadline: PhaseDeadline,
    ) -> Option<RestartOutcome> {
        let _one_at_a_time = self.restart_lock.lock();
        if self.gate.state() != OPEN {
            return None;
        }
        self.restarting.store(true, Ordering::SeqCst);
        let drained_in_time = self.wait_running(deadline);
        let (generation, old) = {
            let mut t = self.threads.lock();
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            let old = t.live;
            t.restarts.clear();
            t.gave_up_restarting = false;
            while t.live < self.config.min_workers {
                if let Err(e) = self.spawn_worker(&mut t) {
                    tlog!(error, target: "tierpool::supervisor", "{}: could not start a worker: {e}", self.name());
                    break;
                }
                self.thread_restarted(RestartCause::Maintenance);
            }
            (generation, old)
        };
        self.restarting.store(false, Ordering::SeqCst);
        // Idle old threads replace themselves as soon as they are rung;
        // busy ones (the grace ended) when their task returns.
        let cap = Instant::now() + IDLE_REPLACEMENT_CAP;
        let still = loop {
            let (idle, busy) = self.stale_threads(generation);
            if idle == 0 || Instant::now() >= cap {
                break idle + busy;
            }
            // A new thread may take a ring meant for an old one: ring
            // again on every pass.
            self.ring(idle + 1);
            let t = self.threads.lock();
            let _t = self
                .threads_cv
                .wait_budget(t, Some(Duration::from_millis(10)));
        };
        tlog!(info, target: "tierpool::supervisor",
            "{}: restarted ({} threads replaced, {still} still finishing a task{})",
            self.name(), old.saturating_sub(still),
            if drained_in_time { "" } else { "; drain grace ended" });
        Some(RestartOutcome {
            drained_in_time,
            replaced: old.saturating_sub(still),
            still_running: still,
        })
    }

    fn wait_running(&self, deadline: PhaseDeadline) -> bool {
        let mut g = self.drain_lock.lock();
        loop {
            if self.counters.running() == 0 {
                return true;
            }
            if deadline.passed(&self.clock) {
                return false;
            }
            g = self.drain_cv.wait_budget(g, deadline.budget(&self.clock));
        }
    }

    /// Live (non-zombie) threads of an older generation: (between
    /// tasks, inside one).
    fn stale_threads(&self, generation: u64) -> (usize, usize) {
        let t = self.threads.lock();
        let mut counts = (0, 0);
        for s in t.slots.iter().filter(|s| s.generation < generation) {
            match s.current.lock().as_ref() {
                None => counts.0 += 1,
                Some(c) if c.state() != ZOMBIE => counts.1 += 1,
                Some(_) => {}
            }
        }
        counts
    }

    /// Whether this worker belongs to an older generation.
    #[inline]
    pub(crate) fn is_stale(&self, slot: &WorkerSlot) -> bool {
        slot.generation != self.generation.load(Ordering::Acquire)
    }

    /// An old-generation worker between tasks: it leaves and a new thread
    /// takes its place (capacity never exceeds the limit).
    pub(crate) fn replace_stale(self: &Arc<Self>, slot: &WorkerSlot) {
        let mut t = self.threads.lock();
        self.leave(&mut t, slot);
        if self.gate.state() == STOPPING {
            return;
        }
        match self.spawn_worker(&mut t) {
            Ok(()) => self.thread_restarted(RestartCause::Maintenance),
            Err(e) => {
                tlog!(error, target: "tierpool::supervisor", "{}: could not replace worker {}: {e}", self.name(), slot.index);
            }
        }
    }

    pub(crate) fn thread_restarted(&self, cause: RestartCause) {
        self.events().emit_with(|| Event::ThreadRestarted {
            tier: self.name(),
            cause,
        });
    }
}
