//! Helpers shared by the integration tests: bounded waits, thread counting,
//! a hang guard, and the accounting check every test ends with.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tierpool::{ManualClock, Runtime, TaskHandle, TaskStatus, TierStats};

/// Generous bound for anything that needs real time to happen (thread
/// start, a worker picking up work) on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `cond` until it holds; panics with `what` after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until the task is running on a worker (manual-clock tests must
/// not advance time before that: the run deadline is taken at start).
#[track_caller]
pub fn wait_running<T, E>(h: &TaskHandle<T, E>) {
    wait_until(&format!("task {} running", h.id()), WAIT, || {
        h.status() == TaskStatus::Running
    });
}

/// tierpool's threads in this process now (Linux: entries of
/// `/proc/self/task` whose name starts with `tierpool-`; the test harness's
/// own threads come and go and are not counted).
pub fn thread_count() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|name| name.starts_with("tierpool-"))
        })
        .count()
}

/// Waits until the process is back to at most `baseline` tierpool threads (exiting
/// threads take a moment to disappear from `/proc`).
#[track_caller]
pub fn wait_threads_back_to(baseline: usize) {
    let mut last;
    let end = Instant::now() + WAIT;
    loop {
        last = thread_count();
        if last <= baseline || Instant::now() >= end {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        last <= baseline,
        "thread leak: {last} threads, expected at most {baseline}"
    );
}

/// Waits until the tier has nothing queued or running, then checks that its
/// counters add up: `submitted == completed + failed + panicked + cancelled`.
#[track_caller]
pub fn assert_quiescent(rt: &Runtime) -> Vec<TierStats> {
    wait_until("every tier quiescent", WAIT, || {
        rt.stats()
            .tiers
            .iter()
            .all(|t| t.queued == 0 && t.running == 0)
    });
    let stats = rt.stats();
    for t in &stats.tiers {
        assert_eq!(
            t.outcomes(),
            t.submitted,
            "{}: outcomes {} != submitted {}\n{stats}",
            t.name,
            t.outcomes(),
            t.submitted
        );
    }
    stats.tiers
}

/// Aborts the whole process if it is not dropped within `limit`: a hang
/// fails fast with a message instead of stalling CI.
pub struct HangGuard {
    done: Option<mpsc::Sender<()>>,
}

impl HangGuard {
    pub fn new(what: &str, limit: Duration) -> HangGuard {
        let (tx, rx) = mpsc::channel::<()>();
        let what = what.to_string();
        std::thread::Builder::new()
            .name("hang-guard".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    eprintln!("HANG: {what} did not finish within {limit:?}; aborting");
                    std::process::abort();
                }
            })
            .expect("spawn hang guard");
        HangGuard { done: Some(tx) }
    }
}

impl Drop for HangGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}

/// A concurrency gauge: `enter` returns a guard, the peak is kept.
#[derive(Default)]
pub struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    pub fn enter(&self) -> GaugeGuard<'_> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        GaugeGuard(self)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

pub struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A tiny xorshift64* generator (tests must not depend on `rand`).
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `true` with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// A latch tasks block on while ignoring cancellation; `open` releases
/// every waiter (and later ones pass at once). It counts the tasks that
/// reached it: `wait_entered` is the way to know a body really runs
/// (`TaskStatus::Running` is reported before the worker calls the body,
/// and a body whose task is cancelled or timed out in between is skipped).
#[derive(Clone, Default)]
pub struct Gate(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar, AtomicUsize)>);

impl Gate {
    pub fn new() -> Self {
        Gate::default()
    }

    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// Blocks until opened (bounded, so a failing test cannot hang on it).
    pub fn wait(&self) {
        let (m, cv, entered) = &*self.0;
        entered.fetch_add(1, Ordering::SeqCst);
        let mut open = m.lock().unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        while !*open && Instant::now() < end {
            open = cv.wait_timeout(open, Duration::from_millis(50)).unwrap().0;
        }
    }

    /// Waits until `n` tasks have reached `wait` (their bodies are running).
    #[track_caller]
    pub fn wait_entered(&self, n: usize) {
        wait_until(&format!("{n} tasks at the gate"), WAIT, || {
            self.0 .2.load(Ordering::SeqCst) >= n
        });
    }
}

/// `wait_until` with the suite's 10 s limit.
pub fn wait(what: &str, cond: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(10), cond)
}

/// A runtime on a manual clock with a small, fixed background tier and no
/// memory watermark (so a loaded test machine cannot pause it).
pub fn runtime(background_workers: usize) -> (ManualClock, Runtime) {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .background(|t| t.workers(background_workers).no_memory_watermark())
        .drop_grace(Duration::from_secs(1))
        .build()
        .expect("runtime");
    (m, rt)
}

/// A runtime on the system clock whose background tier has one worker and
/// no memory watermark (so a loaded test machine cannot pause it).
pub fn one_background_worker() -> Runtime {
    Runtime::builder()
        .background(|t| t.workers(1).no_memory_watermark())
        .build()
        .expect("runtime")
}

/// Advances manual time in `step`s until `cond` holds (10 s real limit).
pub fn advance_until(m: &ManualClock, step: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out advancing time until: {what}"
        );
        m.advance(step);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A generous real-time limit for waits on threads reacting.
pub const LONG: Duration = Duration::from_secs(20);

/// A gate tasks wait at until the test opens it; counts who arrived.
#[derive(Clone, Default)]
pub struct CountingGate(std::sync::Arc<(std::sync::Mutex<(bool, u32)>, std::sync::Condvar)>);

impl CountingGate {
    /// Arrive, then wait (in short real-time slices) until opened.
    pub fn pass(&self) {
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap();
        g.1 += 1;
        cv.notify_all();
        while !g.0 {
            g = cv.wait_timeout(g, Duration::from_millis(20)).unwrap().0;
        }
    }

    /// How many arrived.
    pub fn entered(&self) -> u32 {
        self.0 .0.lock().unwrap().1
    }

    /// Lets everyone through, now and later.
    pub fn open(&self) {
        self.0 .0.lock().unwrap().0 = true;
        self.0 .1.notify_all();
    }
}

/// Waits until `tier` runs nothing. `join` returns as soon as the outcome
/// is settled; the worker books the run (its end time, busy time, the
/// running count) just after, reading the clock then. A test that moves a
/// manual clock after `join` and then relies on utilisation must wait for
/// this first, or the run may end, by the clock, after the move.
#[allow(dead_code)] // not every test binary uses it
pub fn wait_runs_booked(tier: &tierpool::Tier) {
    wait("runs booked", || tier.stats().running == 0);
}

/// Occupies `n` workers of `tier` with tasks held at a gate; returns once
/// all `n` bodies are running. Submits with `submit_wait`: a permit is
/// given back just after `join` returns, so a tier with an in-flight limit
/// may still be full for a moment (woken by the release, not by time).
pub fn occupy(tier: &tierpool::Tier, n: u32) -> (CountingGate, Vec<TaskHandle<(), String>>) {
    let gate = CountingGate::default();
    let handles = (0..n)
        .map(|_| {
            let g = gate.clone();
            let task = move |_: &tierpool::TaskContext| {
                g.pass();
                Ok::<_, String>(())
            };
            tier.submit_wait(tierpool::Priority::Normal, task, Duration::from_secs(3600))
                .unwrap()
        })
        .collect();
    wait("workers busy", || gate.entered() == n);
    (gate, handles)
}
