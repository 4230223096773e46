//! Seeded chaos soak (issue 6 item 2). Many submitter threads put tasks of
//! random tier, priority and user that complete, fail, panic, sleep,
//! ignore cancellation, get cancelled, run past their deadline, expire in
//! the queue, submit nested tasks, allocate, or get preempted and restart;
//! a chaos thread pauses and resumes tiers, trips the memory watermark and
//! kills workers; the runtime is shut down while submitters are still
//! running. Then a ledger keyed by task id must show exactly one outcome
//! per accepted task, rejections apart, stats equal to the ledger, limits
//! never exceeded, timeouts seen by their deadline plus a margin, and every
//! thread joined.
//!
//! `TIERPOOL_SOAK_SEED=<u64>` replays a run (the seed is printed, and shown
//! on failure); `TIERPOOL_SOAK_SECS=<n>` sets how long submitters run
//! (default 6; the long mode is e.g. `TIERPOOL_SOAK_SECS=600`).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tierpool::{
    CancelReason, Priority, RejectReason, Runtime, TaskContext, TaskError, TaskHandle, Tier,
};

const USERS: usize = 8;
const UI_IN_FLIGHT: usize = 40;
const UI_PER_USER: usize = 6;
const TIMEOUT: Duration = Duration::from_millis(300);
const GRACE: Duration = Duration::from_millis(200);
/// How late a timed-out join may return on a loaded 2-core machine.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(2);
const MAX_WORKERS: [usize; 3] = [6, 3, 5];
const ZOMBIE_REPLACEMENTS: usize = 8;

type Handle = TaskHandle<u64, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Complete,
    Fail,
    Panic,
    Sleep,
    IgnoreCancel,
    PastDeadline,
    CallerCancel,
    QueueBudget,
    Nested,
    Allocate,
    Restartable,
    Critical,
}

const KINDS: [Kind; 12] = [
    Kind::Complete,
    Kind::Fail,
    Kind::Panic,
    Kind::Sleep,
    Kind::IgnoreCancel,
    Kind::PastDeadline,
    Kind::CallerCancel,
    Kind::QueueBudget,
    Kind::Nested,
    Kind::Allocate,
    Kind::Restartable,
    Kind::Critical,
];

struct Accepted {
    tier: usize,
    handle: Handle,
    /// Set by the task when it starts (first attempt), to check how late a
    /// timeout was seen.
    started: Arc<Mutex<Option<Instant>>>,
}

#[derive(Default)]
struct Peaks {
    tier: [Gauge; 3],
    users: [Gauge; USERS],
}

struct Shared {
    tiers: Vec<Tier>,
    accepted: Mutex<Vec<Accepted>>,
    /// [tier][reason index as in RejectCounts order]
    rejected: [[AtomicU64; 5]; 3],
    peaks: Peaks,
    stop: AtomicBool,
    late_timeouts: Mutex<Vec<String>>,
    timeouts_checked: AtomicU64,
}

fn reject_index(r: &RejectReason) -> usize {
    match r {
        RejectReason::QueueFull { .. } => 0,
        RejectReason::TierLimit { .. } => 1,
        RejectReason::UserLimit { .. } => 2,
        RejectReason::ShuttingDown => 3,
        RejectReason::DeadlineElapsed => 4,
        _ => unreachable!("new reject reason: {r:?}"),
    }
}

/// The task body for one kind, with its random parameters drawn at submit.
fn body(
    shared: &Arc<Shared>,
    kind: Kind,
    tier: usize,
    user: usize,
    param: u64,
    depth: u32,
    started: Arc<Mutex<Option<Instant>>>,
) -> impl FnMut(&TaskContext) -> Result<u64, String> + Send + 'static {
    let shared = shared.clone();
    move |ctx| {
        started.lock().unwrap().get_or_insert_with(Instant::now);
        let _t = shared.peaks.tier[tier].enter();
        let _u = (tier == 0).then(|| shared.peaks.users[user].enter());
        let cancelled = |c: tierpool::Cancelled| c.to_string();
        match kind {
            Kind::Complete | Kind::Critical | Kind::QueueBudget => Ok(param),
            Kind::Fail => Err(format!("failed on purpose ({param})")),
            Kind::Panic => panic!("soak panic {param}"),
            Kind::Sleep | Kind::CallerCancel => {
                ctx.sleep(Duration::from_millis(param % 25))
                    .map_err(cancelled)?;
                Ok(param)
            }
            Kind::IgnoreCancel => {
                // Past the timeout, sometimes past the grace too (zombie).
                std::thread::sleep(Duration::from_millis(250 + param % 300));
                Ok(param)
            }
            Kind::PastDeadline => {
                ctx.sleep(Duration::from_secs(5)).map_err(cancelled)?;
                Ok(param)
            }
            Kind::Nested => {
                let mut rng = XorShift::new(param);
                for _ in 0..1 + param % 3 {
                    submit_one(&shared, &mut rng, depth + 1);
                }
                Ok(param)
            }
            Kind::Allocate => {
                let mut v = vec![0u8; 256 * 1024 + (param % 1024) as usize * 1024];
                for i in (0..v.len()).step_by(4096) {
                    v[i] = i as u8;
                }
                ctx.checkpoint().map_err(cancelled)?;
                Ok(v.iter().map(|&b| b as u64).sum())
            }
            Kind::Restartable => {
                if ctx.attempt() == 1 {
                    ctx.sleep(Duration::from_millis(param % 40))
                        .map_err(cancelled)?;
                }
                Ok(u64::from(ctx.attempt()))
            }
        }
    }
}

/// Submits one random task; records it or its rejection.
fn submit_one(shared: &Arc<Shared>, rng: &mut XorShift, depth: u32) -> Option<(usize, Kind)> {
    let mut kind = KINDS[rng.below(KINDS.len() as u64) as usize];
    if depth > 1 && kind == Kind::Nested {
        kind = Kind::Complete;
    }
    // Slow kinds hold a worker for a timeout or more: fewer of them keeps
    // the task count up.
    if matches!(kind, Kind::IgnoreCancel | Kind::PastDeadline) && rng.chance(70) {
        kind = Kind::Sleep;
    }
    let mut tier = rng.below(3) as usize;
    let mut priority = Priority::from(rng.below(8) as u8);
    match kind {
        Kind::Restartable => {
            tier = 2;
            priority = Priority::Low;
        }
        Kind::Critical => {
            tier = 2;
            priority = Priority::Critical;
        }
        _ => {}
    }
    let user = rng.below(USERS as u64) as usize;
    let param = rng.next_u64();
    let started = Arc::new(Mutex::new(None));
    let t = &shared.tiers[tier];
    let f = body(shared, kind, tier, user, param, depth, started.clone());
    let mut b = t
        .task(f)
        .priority(priority)
        .user(format!("user-{user}"))
        .preemptible(rng.chance(30));
    if kind == Kind::QueueBudget {
        b = b.queue_budget(Duration::from_millis(param % 10));
    }
    if rng.chance(10) {
        b = b.timeout(TIMEOUT / 2);
    }
    let r = match (kind, rng.chance(5)) {
        (Kind::Restartable, _) => b.restartable().submit(),
        (_, true) => b.submit_wait(Duration::from_millis(5)),
        (_, false) => b.submit(),
    };
    match r {
        Ok(handle) => {
            if kind == Kind::CallerCancel && rng.chance(50) {
                handle.cancel();
            }
            let mut acc = shared.accepted.lock().unwrap();
            acc.push(Accepted {
                tier,
                handle,
                started,
            });
            Some((acc.len() - 1, kind))
        }
        Err(e) => {
            let reason = e.reason().clone();
            shared.rejected[tier][reject_index(&reason)].fetch_add(1, Ordering::Relaxed);
            if reason == RejectReason::ShuttingDown {
                shared.stop.store(true, Ordering::Relaxed);
            }
            None
        }
    }
}

/// Joins a task that should time out, inline, and checks how late.
fn join_timed_out_inline(shared: &Shared, idx: usize) {
    // The handle stays in the ledger; only its status is watched here.
    let (id, started) = {
        let acc = shared.accepted.lock().unwrap();
        (acc[idx].handle.id(), acc[idx].started.clone())
    };
    let deadline = Instant::now() + TIMEOUT * 2 + TIMEOUT_MARGIN + Duration::from_secs(3);
    loop {
        let status = {
            let acc = shared.accepted.lock().unwrap();
            acc[idx].handle.status()
        };
        if status.is_terminal() {
            if status == tierpool::TaskStatus::Cancelled(CancelReason::Timeout) {
                if let Some(s) = *started.lock().unwrap() {
                    let late = s.elapsed();
                    shared.timeouts_checked.fetch_add(1, Ordering::Relaxed);
                    if late > TIMEOUT + TIMEOUT_MARGIN {
                        shared
                            .late_timeouts
                            .lock()
                            .unwrap()
                            .push(format!("{id}: timeout seen {late:?} after start"));
                    }
                }
            }
            return;
        }
        if Instant::now() > deadline {
            return; // still queued (paused tier): judged at the end
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

#[test]
fn chaos_soak_accounts_for_every_task() {
    let seed = env_u64("TIERPOOL_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let secs = env_u64("TIERPOOL_SOAK_SECS").unwrap_or(6);
    println!("soak seed = {seed} (TIERPOOL_SOAK_SEED={seed} replays it), {secs} s");
    let _hang = HangGuard::new(
        &format!("soak with TIERPOOL_SOAK_SEED={seed}"),
        Duration::from_secs(secs + 90),
    );
    let baseline = thread_count();
    let began = Instant::now();

    let rss = Arc::new(AtomicU64::new(10));
    let probe = rss.clone();
    let rt = Runtime::builder()
        .memory_probe(move || Some(probe.load(Ordering::Relaxed)))
        .ui(|t| {
            t.min_workers(2)
                .max_workers(MAX_WORKERS[0])
                .max_in_flight(UI_IN_FLIGHT)
                .per_user_limit(UI_PER_USER)
                .warn_after(TIMEOUT / 3)
                .timeout(TIMEOUT)
                .cancel_grace(GRACE)
                .max_zombie_replacements(ZOMBIE_REPLACEMENTS)
                .keep_alive(Duration::from_millis(50))
                .restart_intensity(1000, Duration::from_secs(1))
        })
        .background(|t| {
            t.min_workers(1)
                .max_workers(MAX_WORKERS[1])
                .queue_capacity(64)
                .timeout(TIMEOUT)
                .cancel_grace(GRACE)
                .max_zombie_replacements(ZOMBIE_REPLACEMENTS)
                .memory_watermark(100, 50)
                .memory_sample_interval(Duration::from_millis(10))
                .restart_intensity(1000, Duration::from_secs(1))
        })
        .realtime(|t| {
            t.min_workers(2)
                .max_workers(MAX_WORKERS[2])
                .reserved_slots(1)
                .queue_capacity(128)
                .warn_after(TIMEOUT / 3)
                .timeout(TIMEOUT)
                .cancel_grace(GRACE)
                .max_zombie_replacements(ZOMBIE_REPLACEMENTS)
                .restart_intensity(1000, Duration::from_secs(1))
        })
        .build()
        .unwrap();
    let shared = Arc::new(Shared {
        tiers: rt.tiers().cloned().collect(),
        accepted: Mutex::new(Vec::new()),
        rejected: Default::default(),
        peaks: Peaks::default(),
        stop: AtomicBool::new(false),
        late_timeouts: Mutex::new(Vec::new()),
        timeouts_checked: AtomicU64::new(0),
    });
    let run_for = Duration::from_secs(secs);
    let faults = AtomicU64::new(0);
    let mut chaos_log: HashMap<&'static str, u64> = HashMap::new();

    let report = std::thread::scope(|s| {
        for k in 0..6u64 {
            let shared = shared.clone();
            s.spawn(move || {
                let mut rng = XorShift::new(seed ^ (k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                while !shared.stop.load(Ordering::Relaxed) {
                    match submit_one(&shared, &mut rng, 0) {
                        Some((idx, Kind::IgnoreCancel | Kind::PastDeadline)) if rng.chance(40) => {
                            join_timed_out_inline(&shared, idx)
                        }
                        None => std::thread::sleep(Duration::from_micros(200)),
                        _ => {}
                    }
                    if rng.chance(20) {
                        std::thread::sleep(Duration::from_micros(rng.below(500)));
                    }
                }
            });
        }
        // Chaos: pause/resume, memory pressure, worker deaths.
        let mut rng = XorShift::new(seed.rotate_left(17));
        let chaos_end = began + run_for;
        while Instant::now() < chaos_end {
            std::thread::sleep(Duration::from_millis(5 + rng.below(40)));
            let tier = &rt.tiers().nth(rng.below(3) as usize).unwrap();
            let what = match rng.below(5) {
                0 => {
                    tier.pause();
                    std::thread::sleep(Duration::from_millis(rng.below(30)));
                    tier.resume();
                    "pause/resume"
                }
                1 => {
                    rss.store(150, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(rng.below(60)));
                    rss.store(if rng.chance(50) { 70 } else { 10 }, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(rng.below(30)));
                    rss.store(10, Ordering::Relaxed);
                    "memory pressure"
                }
                2 => {
                    if !tier.inject_worker_panic() {
                        continue;
                    }
                    "worker killed"
                }
                _ => continue,
            };
            faults.fetch_add(1, Ordering::Relaxed);
            *chaos_log.entry(what).or_default() += 1;
        }
        // Shutdown while submitters are still submitting.
        let report = rt.shutdown(Duration::from_millis(300));
        shared.stop.store(true, Ordering::Relaxed);
        report
    });
    // Zombies detached at shutdown return within their sleep; then every
    // tierpool thread is gone.
    wait_threads_back_to(baseline);
    let took = began.elapsed();

    // ---- the ledger ------------------------------------------------------
    let accepted = std::mem::take(&mut *shared.accepted.lock().unwrap());
    let mut ids = HashSet::new();
    #[derive(Default, Debug, Clone, Copy)]
    struct Tally {
        accepted: u64,
        completed: u64,
        failed: u64,
        panicked: u64,
        cancelled: [u64; 6],
    }
    let mut tally = [Tally::default(); 3];
    let mut failed_as_cancelled = Vec::new();
    for a in accepted {
        let id = a.handle.id();
        assert!(ids.insert(id), "seed {seed}: task id {id} accepted twice");
        let t = &mut tally[a.tier];
        t.accepted += 1;
        let outcome = a.handle.try_result().unwrap_or_else(|h| {
            panic!(
                "seed {seed}: task {id} has no outcome after shutdown ({:?})",
                h.status()
            )
        });
        match outcome {
            Ok(_) => t.completed += 1,
            Err(TaskError::Failed(msg)) => {
                if msg.starts_with("task cancelled") {
                    failed_as_cancelled.push(id);
                }
                t.failed += 1;
            }
            Err(TaskError::Panicked(_)) => t.panicked += 1,
            Err(TaskError::Cancelled(r)) => {
                let i = CancelReason::ALL.iter().position(|&x| x == r).unwrap();
                t.cancelled[i] += 1;
            }
        }
    }
    assert!(
        failed_as_cancelled.is_empty(),
        "seed {seed}: cancelled tasks recorded as failed: {failed_as_cancelled:?}"
    );
    let stats = rt.stats();
    let mut submitted_total = 0;
    let mut rejected_total = 0;
    // The soak submits to the three tiers only (not the analysis pool).
    for (i, s) in stats.tiers.iter().take(3).enumerate() {
        let t = tally[i];
        let ctx = format!("seed {seed}, tier {}: ledger {t:?}\n{stats}", s.name);
        assert_eq!(s.submitted, t.accepted, "{ctx}");
        assert_eq!(s.outcomes(), s.submitted, "{ctx}");
        assert_eq!(
            (s.completed, s.failed, s.panicked),
            (t.completed, t.failed, t.panicked),
            "{ctx}"
        );
        for (j, r) in CancelReason::ALL.iter().enumerate() {
            assert_eq!(s.cancelled.get(*r), t.cancelled[j], "{r} {ctx}");
        }
        let rj: Vec<u64> = shared.rejected[i]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let r = s.rejected;
        assert_eq!(
            vec![
                r.queue_full,
                r.tier_limit,
                r.user_limit,
                r.shutting_down,
                r.deadline_elapsed
            ],
            rj,
            "rejections {ctx}"
        );
        // Limits: admission bounds what runs on ui (zombies keep their
        // permit); elsewhere workers plus zombie replacements do.
        let peak = shared.peaks.tier[i].peak();
        let bound = if i == 0 {
            UI_IN_FLIGHT
        } else {
            MAX_WORKERS[i] + ZOMBIE_REPLACEMENTS
        };
        assert!(
            peak <= bound,
            "seed {seed}: {} ran {peak} at once (bound {bound})",
            s.name
        );
        assert_eq!(s.zombie_threads, 0, "{ctx}");
        assert_eq!(s.queued + s.running, 0, "{ctx}");
        submitted_total += s.submitted;
        rejected_total += r.total();
    }
    for (u, g) in shared.peaks.users.iter().enumerate() {
        assert!(
            g.peak() <= UI_PER_USER,
            "seed {seed}: user-{u} peak {}",
            g.peak()
        );
    }
    let late = shared.late_timeouts.lock().unwrap();
    assert!(late.is_empty(), "seed {seed}: late timeouts: {late:?}");
    let accounted = report.completed_during_drain
        + report.cancelled_running.len() as u64
        + report.cancelled_at_start as u64
        + report.never_started.len() as u64;
    let by_kind: Vec<_> = stats
        .tiers
        .iter()
        .map(|t| {
            format!(
                "{}: {} done, {} failed, {} panicked, {} timeouts, {} cancelled, {} zombies, {} preempted/{} requeued, {} restarts, {} memory pauses",
                t.name,
                t.completed,
                t.failed,
                t.panicked,
                t.cancelled.timeout,
                t.cancelled.total() - t.cancelled.timeout,
                t.zombies,
                t.preemptions,
                t.requeued,
                t.worker_restarts,
                t.memory_pauses
            )
        })
        .collect();
    println!(
        "soak seed {seed}: {submitted_total} tasks accepted, {submitted_total} outcomes accounted, {rejected_total} rejections, {} chaos faults {chaos_log:?}, {} timeouts checked for lateness, shutdown accounted {accounted} in flight ({report}), {took:.1?} total",
        faults.load(Ordering::Relaxed),
        shared.timeouts_checked.load(Ordering::Relaxed),
    );
    for line in by_kind {
        println!("  {line}");
    }
    assert!(submitted_total > 500, "seed {seed}: too little load");
}
