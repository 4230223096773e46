//! The workloads: tiny-task dispatch, and head-of-line isolation (heavy CPU
//! tasks saturating while light ones arrive at a steady rate).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::contenders::Executor;

/// Counts completions down to zero and wakes the waiter at zero.
pub struct Countdown {
    left: AtomicUsize,
    done: Mutex<bool>,
    cv: Condvar,
}

impl Countdown {
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Countdown {
            left: AtomicUsize::new(n),
            done: Mutex::new(n == 0),
            cv: Condvar::new(),
        })
    }

    pub fn count_down(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.done.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }

    pub fn wait(&self) {
        let mut done = self.done.lock().unwrap();
        while !*done {
            done = self.cv.wait(done).unwrap();
        }
    }
}

/// The tiny task: a few arithmetic instructions the optimiser cannot drop.
#[inline]
pub fn tiny_work(i: usize) {
    black_box(black_box(i).wrapping_mul(0x9E37_79B9));
}

/// Submits `tasks` tiny tasks from `submitters` threads (the caller itself
/// when 1) and returns the time until the last one completed. Spawning the
/// extra submitter threads is inside the timing, equally for every pool.
pub fn dispatch<E: Executor>(pool: &E, submitters: usize, tasks: usize) -> Duration {
    let latch = Countdown::new(tasks);
    let submit = |n: usize| {
        for i in 0..n {
            let latch = latch.clone();
            pool.execute(move || {
                tiny_work(i);
                latch.count_down();
            });
        }
    };
    let start = Instant::now();
    if submitters <= 1 {
        submit(tasks);
    } else {
        std::thread::scope(|s| {
            for k in 0..submitters {
                let n = tasks / submitters + usize::from(k < tasks % submitters);
                s.spawn(move || submit(n));
            }
        });
    }
    latch.wait();
    start.elapsed()
}

/// CPU work of a given length, calibrated once against this machine's
/// uncontended speed (a fixed instruction count, not a wall-clock spin: a
/// preempted task still owes its whole CPU time, as real work would).
#[derive(Clone, Copy, Debug)]
pub struct Spinner {
    iters_per_us: f64,
}

fn spin_iters(n: u64) -> u64 {
    let mut x = 0x243F_6A88_85A3_08D3u64;
    for i in 0..n {
        x = (x.rotate_left(7) ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    black_box(x)
}

impl Spinner {
    /// Best of several short runs: the minimum is the least disturbed by
    /// other tenants of a shared machine.
    pub fn calibrate() -> Self {
        const N: u64 = 1 << 18;
        spin_iters(N); // warm up
        let best = (0..15)
            .map(|_| {
                let t = Instant::now();
                spin_iters(N);
                t.elapsed()
            })
            .min()
            .unwrap_or(Duration::from_millis(1));
        Spinner {
            iters_per_us: N as f64 / best.as_secs_f64() / 1e6,
        }
    }

    pub fn spin(&self, d: Duration) {
        spin_iters((d.as_secs_f64() * 1e6 * self.iters_per_us) as u64);
    }

    pub fn iters_per_us(&self) -> f64 {
        self.iters_per_us
    }
}

/// The head-of-line scenario's knobs.
#[derive(Clone, Copy, Debug)]
pub struct HolConfig {
    /// How long light tasks keep arriving.
    pub duration: Duration,
    /// Time between light arrivals (5 ms: 200/s).
    pub light_every: Duration,
    pub light_work: Duration,
    pub heavy_work: Duration,
    /// Heavy tasks kept in flight (running + queued) by the closed-loop
    /// feeder: more than the workers that take them, so the pool stays
    /// saturated with a standing queue.
    pub heavy_in_flight: usize,
    /// Heavy load before the first light task arrives.
    pub ramp_up: Duration,
}

/// A counting semaphore for the heavy feeder's closed loop.
struct Permits {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Permits {
    fn acquire_until(&self, stop: &AtomicBool) -> bool {
        let mut free = self.free.lock().unwrap();
        loop {
            if stop.load(Ordering::Acquire) {
                return false;
            }
            if *free > 0 {
                *free -= 1;
                return true;
            }
            free = self
                .cv
                .wait_timeout(free, Duration::from_millis(10))
                .unwrap()
                .0;
        }
    }

    fn release(&self) {
        *self.free.lock().unwrap() += 1;
        self.cv.notify_all();
    }

    fn wait_all_free(&self, total: usize) {
        let mut free = self.free.lock().unwrap();
        while *free < total {
            free = self.cv.wait(free).unwrap();
        }
    }
}

/// What one head-of-line run measured.
pub struct HolRun {
    /// Submit → completion of each light task.
    pub light: Vec<Duration>,
    /// Heavy tasks completed while the light ones were arriving, and over
    /// how long.
    pub heavy_done: usize,
    pub window: Duration,
}

/// Keeps `heavy` saturated while light tasks arrive on `light` (which may
/// be the same pool) at a steady rate; returns the light latencies. Waits
/// for every task it started before returning, so runs do not overlap.
pub fn head_of_line<L: Executor, H: Executor>(
    light: &L,
    heavy: &H,
    cfg: &HolConfig,
    spinner: Spinner,
) -> HolRun {
    let permits = Arc::new(Permits {
        free: Mutex::new(cfg.heavy_in_flight),
        cv: Condvar::new(),
    });
    let stop = AtomicBool::new(false);
    let heavy_done = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let n_light = (cfg.duration.as_secs_f64() / cfg.light_every.as_secs_f64()) as usize;
    let lights = Countdown::new(n_light);
    let mut heavy_window = (0, Duration::ZERO);
    std::thread::scope(|s| {
        s.spawn(|| {
            while permits.acquire_until(&stop) {
                let permits = permits.clone();
                let done = heavy_done.clone();
                let work = cfg.heavy_work;
                heavy.execute(move || {
                    spinner.spin(work);
                    done.fetch_add(1, Ordering::Relaxed);
                    permits.release();
                });
            }
        });
        std::thread::sleep(cfg.ramp_up);
        let done_before = heavy_done.load(Ordering::Relaxed);
        let start = Instant::now();
        for i in 0..n_light {
            let due = start + cfg.light_every * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let submitted = Instant::now();
            let latencies = latencies.clone();
            let lights = lights.clone();
            let work = cfg.light_work;
            light.execute(move || {
                spinner.spin(work);
                latencies.lock().unwrap().push(submitted.elapsed());
                lights.count_down();
            });
        }
        lights.wait();
        heavy_window = (
            heavy_done.load(Ordering::Relaxed) - done_before,
            start.elapsed(),
        );
        stop.store(true, Ordering::Release);
    });
    permits.wait_all_free(cfg.heavy_in_flight);
    let light = std::mem::take(&mut *latencies.lock().unwrap());
    HolRun {
        light,
        heavy_done: heavy_window.0,
        window: heavy_window.1,
    }
}
