//! `tierpool demo`: a simulation of the seed application's workload on the
//! three tiers, with a live dashboard and a graceful, reported shutdown.
//!
//! What runs (rates scale with `--load`):
//! - **ui**: each simulated user looks up characters: mostly 2–20 ms,
//!   2 % slow (300 ms), 5 % fail; per-user limit 20, so a burst from one
//!   user is rejected beyond its share and handed back.
//! - **realtime**: killmail events in bursts of ~150 every 400 ms, 50–400 µs
//!   of CPU each; critical ones preempt preemptible normal ones when full.
//! - **background**: heavy analyses (150–900 ms CPU in steps with
//!   checkpoints); timeout 1.5 s, so the longest are cancelled; one analysis
//!   ignores cancellation and becomes a zombie (its thread is replaced).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tierpool::{Cancelled, Priority, Runtime, Stats, TaskContext};

use super::{DemoOptions, Format};

/// A small deterministic RNG (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Burns CPU for `d`, checking for cancellation every `step`.
fn spin(ctx: &TaskContext, d: Duration, step: Duration) -> Result<(), Cancelled> {
    let end = Instant::now() + d;
    let mut next_check = Instant::now() + step;
    while Instant::now() < end {
        std::hint::spin_loop();
        if Instant::now() >= next_check {
            ctx.checkpoint()?;
            next_check += step;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Offered {
    ui: AtomicU64,
    ui_rejected: AtomicU64,
    events: AtomicU64,
    events_rejected: AtomicU64,
    analyses: AtomicU64,
    intel: AtomicU64,
    intel_rejected: AtomicU64,
}

pub(crate) fn run(opts: &DemoOptions) -> i32 {
    let rt = match Runtime::builder()
        .background(|t| {
            t.workers(3)
                .timeout(Duration::from_millis(1500))
                .cancel_grace(Duration::from_millis(500))
        })
        .realtime(|t| t.min_workers(2).max_workers(16).reserved_slots(4))
        .build()
    {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Ctrl-C: stop the load and fall through to the graceful shutdown.
        if let Err(e) = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)) {
            log::warn!("could not install the Ctrl-C handler: {e}");
        }
    }
    let offered = Arc::new(Offered::default());
    let started = Instant::now();
    let end = started + opts.duration;
    let mut load = Vec::new();

    // ui: one thread per 10 users, each driving its users round-robin.
    let per_thread = 10;
    for chunk in 0..opts.users.div_ceil(per_thread) {
        let (rt, stop, offered) = (rt.clone(), stop.clone(), offered.clone());
        let users: Vec<String> = (chunk * per_thread..((chunk + 1) * per_thread).min(opts.users))
            .map(|u| format!("user-{u}"))
            .collect();
        let pause = Duration::from_secs_f64(0.05 / opts.load);
        load.push(thread::spawn(move || {
            let mut rng = Rng::new(chunk as u64 + 1);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                for user in &users {
                    let (slow, fail) = (rng.chance(2), rng.chance(5));
                    let ms = if slow { 300 } else { 2 + rng.below(18) };
                    // Now and then a user bursts: 30 lookups at once.
                    let n = if rng.chance(1) { 30 } else { 1 };
                    for _ in 0..n {
                        offered.ui.fetch_add(1, Ordering::Relaxed);
                        let r = rt
                            .ui()
                            .task(move |ctx| {
                                ctx.sleep(Duration::from_millis(ms))
                                    .map_err(|c| c.to_string())?;
                                if fail {
                                    return Err("character not found in ESI".to_string());
                                }
                                Ok(ms)
                            })
                            .user(user)
                            .submit();
                        if r.is_err() {
                            offered.ui_rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                thread::sleep(pause);
            }
        }));
    }

    // realtime: killmail bursts.
    {
        let (rt, stop, offered, load_f) = (rt.clone(), stop.clone(), offered.clone(), opts.load);
        load.push(thread::spawn(move || {
            let mut rng = Rng::new(99);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let burst = (150.0 * load_f) as u64;
                for _ in 0..burst {
                    let us = 50 + rng.below(350);
                    let priority = match rng.below(100) {
                        0..=2 => Priority::Critical,
                        3..=20 => Priority::High,
                        _ => Priority::Normal,
                    };
                    offered.events.fetch_add(1, Ordering::Relaxed);
                    let r = rt
                        .realtime()
                        .task(move |ctx| {
                            spin(ctx, Duration::from_micros(us), Duration::from_micros(100))?;
                            Ok::<_, Cancelled>(us)
                        })
                        .priority(priority)
                        .preemptible(priority == Priority::Normal)
                        .submit();
                    if r.is_err() {
                        offered.events_rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_millis(400));
            }
        }));
    }

    // background: heavy analyses, one of which ignores cancellation.
    {
        let (rt, stop, offered, load_f) = (rt.clone(), stop.clone(), offered.clone(), opts.load);
        load.push(thread::spawn(move || {
            let mut rng = Rng::new(7);
            let mut zombie_sent = false;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let ms = 150 + rng.below(1750);
                let ignores = !zombie_sent && Instant::now() > started + Duration::from_secs(1);
                zombie_sent |= ignores;
                offered.analyses.fetch_add(1, Ordering::Relaxed);
                let _ = rt
                    .background()
                    .task(move |ctx| {
                        if ignores {
                            // A badly behaved analysis: never checks its token.
                            thread::sleep(Duration::from_millis(2500));
                            return Ok(0);
                        }
                        spin(ctx, Duration::from_millis(ms), Duration::from_millis(5))?;
                        Ok::<_, Cancelled>(ms)
                    })
                    .priority(if rng.chance(20) {
                        Priority::High
                    } else {
                        Priority::Normal
                    })
                    .submit();
                thread::sleep(Duration::from_secs_f64(0.25 / load_f));
            }
        }));
    }

    // analysis: character-intel requests for a small population of
    // characters (hot keys repeat, so the cache and de-duplication show),
    // plus a CPU batch of killmail valuations every 2 s.
    {
        let (rt, stop, offered, load_f) = (rt.clone(), stop.clone(), offered.clone(), opts.load);
        load.push(thread::spawn(move || {
            let mut rng = Rng::new(1234);
            let mut next_batch = Instant::now();
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let character = rng.below(60);
                let flaky = rng.chance(10);
                offered.intel.fetch_add(1, Ordering::Relaxed);
                let r = rt
                    .analysis()
                    .request("character_intel", character, move |ctx| {
                        ctx.sleep(Duration::from_millis(20))
                            .map_err(|c| c.to_string())?;
                        if flaky {
                            return Err("ESI timeout".to_string());
                        }
                        Ok(character * 7)
                    })
                    .ttl(Duration::from_secs(3))
                    .submit();
                if r.is_err() {
                    offered.intel_rejected.fetch_add(1, Ordering::Relaxed);
                }
                if Instant::now() >= next_batch {
                    next_batch += Duration::from_secs(2);
                    let items: Vec<u64> = (0..2000).collect();
                    let _ = rt.analysis().analyze_batch("killmail_value", items, |n| {
                        let mut h = n;
                        for _ in 0..2000 {
                            h = h.wrapping_mul(6364136223846793005).wrapping_add(1);
                        }
                        Ok::<_, String>(h)
                    });
                }
                thread::sleep(Duration::from_secs_f64(0.01 / load_f));
            }
        }));
    }

    if !opts.quiet {
        println!(
            "tierpool demo: {} users, load {:.1}, {:?} (Ctrl-C stops early and drains)\n",
            opts.users, opts.load, opts.duration
        );
    }
    let mut next = started + Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
        if Instant::now() >= next {
            next += Duration::from_secs(1);
            if !opts.quiet {
                dashboard(&rt.stats(), started.elapsed());
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for h in load {
        let _ = h.join();
    }
    let report = rt.shutdown(Duration::from_secs(3));
    let stats = rt.stats();
    match opts.format {
        Format::Table => {
            println!("\n{stats}");
            println!("{}", rt.analysis().stats());
            println!("shutdown: {report}");
            println!(
                "offered: {} ui lookups ({} rejected and handed back), {} killmail events ({} rejected), {} analyses",
                offered.ui.load(Ordering::Relaxed),
                offered.ui_rejected.load(Ordering::Relaxed),
                offered.events.load(Ordering::Relaxed),
                offered.events_rejected.load(Ordering::Relaxed),
                offered.analyses.load(Ordering::Relaxed),
            );
            println!(
                "          {} character-intel requests ({} rejected)",
                offered.intel.load(Ordering::Relaxed),
                offered.intel_rejected.load(Ordering::Relaxed),
            );
            let every = stats.tiers.iter().all(|t| t.submitted == t.outcomes());
            println!(
                "accounted: every accepted task has exactly one outcome: {}",
                if every { "yes" } else { "NO" }
            );
        }
        Format::Json => println!("{}", stats.to_json()),
    }
    0
}

fn dashboard(s: &Stats, at: Duration) {
    let mut line = format!("[{:>4.1}s]", at.as_secs_f64());
    for t in &s.tiers {
        line += &format!(
            "  {} q{:>3} run{:>3} done{:>6} fail{:>4} t/o{:>3} rej{:>4} p99 {:>7}",
            t.name,
            t.queued,
            t.running,
            t.completed,
            t.failed + t.panicked,
            t.timed_out(),
            t.rejected.total(),
            format!("{:.1?}", t.run_time.p99),
        );
    }
    println!("{line}");
}
