//! `tierpool demo`: a simulation of the seed application's workload on the
//! tiers, with two workers against a flaky external API, a live dashboard
//! and a graceful, reported shutdown.
//!
//! What runs (rates scale with `--load`):
//! - **ui**: each simulated user looks up characters: mostly 2–20 ms,
//!   2 % slow (300 ms), 5 % fail; per-user limit 20, so a burst from one
//!   user is rejected beyond its share and handed back.
//! - **realtime**: killmail events in bursts of ~150 every 400 ms, 50–400 µs
//!   of CPU each; critical ones preempt preemptible normal ones when full.
//!   About 6 % of them are handed to the re-enricher.
//! - **background**: heavy analyses (150–1900 ms, a quarter of it CPU, in
//!   4 ms steps that double as checkpoints, so the demo stays light on a
//!   2-core machine); timeout 1.5 s, so the longest are cancelled; one
//!   analysis ignores cancellation and becomes a zombie (its thread is
//!   replaced).
//! - **analysis**: character-intel requests over 60 hot characters (cache
//!   and de-duplication show), a CPU batch every 2 s.
//! - **external API** ([`SimApi`]): 2–8 ms a call, 10 % of calls fail, and
//!   it is fully down for 2 s of every 12 s (first at 2.5 s). One
//!   [`CircuitBreaker`] (`esi`) and one [`RateLimiter`] (50 calls/s) guard
//!   it for both workers:
//!   - the **re-enricher** fetches killmails again in batches of 10 with 3
//!     attempts; ids the API does not know are dead letters at once;
//!   - the **cache warmer** runs on the runtime's scheduler, regular keys
//!     every 2 s, critical ones every 1 s, skipped while the background
//!     tier is over 80 % busy.

use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tierpool::{
    BatchStats, BreakerError, BreakerState, BreakerStats, CacheWarmer, CacheWarmerStats, Cancelled,
    CircuitBreaker, Health, JobStats, Priority, RateLimiter, ReEnricher, RetryPolicy, Runtime,
    ShutdownReport, Stats, TaskContext,
};

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

/// A heavy analysis that takes `d` of wall time but only a quarter of it
/// in CPU: 1 ms of work, then 3 ms of (cancellable) waiting on "the
/// database", so three of them do not saturate a 2-core machine.
fn analyse(ctx: &TaskContext, d: Duration) -> Result<(), Cancelled> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let burn = Instant::now() + Duration::from_millis(1);
        while Instant::now() < burn {
            std::hint::spin_loop();
        }
        ctx.sleep(Duration::from_millis(3))?;
    }
    Ok(())
}

/// What the simulated external API (EVE's ESI) answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ApiError {
    /// The API is down (the outage window).
    Down,
    /// A transient failure.
    BadGateway,
    /// The id does not exist: retrying will not help.
    NotFound(u64),
    /// No rate-limit token in time (the cache warmer's own wait).
    RateLimited,
    /// The circuit breaker refused the call (the cache warmer's calls).
    BreakerOpen,
    /// The batch task was cancelled mid-call.
    Cancelled,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Down => f.write_str("503 service unavailable"),
            ApiError::BadGateway => f.write_str("502 bad gateway"),
            ApiError::NotFound(id) => write!(f, "404 killmail {id} not found"),
            ApiError::RateLimited => f.write_str("rate limited"),
            ApiError::BreakerOpen => f.write_str("circuit breaker open"),
            ApiError::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// Outage: the API is down for this long …
const OUTAGE: Duration = Duration::from_millis(2000);
/// … starting this far into every cycle …
const OUTAGE_AT: Duration = Duration::from_millis(2500);
/// … of this length.
const OUTAGE_EVERY: Duration = Duration::from_secs(12);

/// The simulated external API: slow, flaky, and down now and then.
struct SimApi {
    started: Instant,
    rng: Mutex<Rng>,
    calls: AtomicU64,
    failed: AtomicU64,
    while_down: AtomicU64,
}

impl SimApi {
    fn new(started: Instant, seed: u64) -> Self {
        SimApi {
            started,
            rng: Mutex::new(Rng::new(seed)),
            calls: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            while_down: AtomicU64::new(0),
        }
    }

    fn is_down(&self) -> bool {
        let t = self.started.elapsed().as_nanos() % OUTAGE_EVERY.as_nanos();
        (OUTAGE_AT.as_nanos()..(OUTAGE_AT + OUTAGE).as_nanos()).contains(&t)
    }

    /// One call for `key`; `sleep` waits out the latency (cancellably for
    /// the re-enricher, whose batches have a task context).
    fn call(
        &self,
        key: u64,
        exists: bool,
        sleep: &dyn Fn(Duration) -> Result<(), Cancelled>,
    ) -> Result<(), ApiError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let r = self.answer(key, exists, sleep);
        if r.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn answer(
        &self,
        key: u64,
        exists: bool,
        sleep: &dyn Fn(Duration) -> Result<(), Cancelled>,
    ) -> Result<(), ApiError> {
        if self.is_down() {
            self.while_down.fetch_add(1, Ordering::Relaxed);
            sleep(Duration::from_millis(1)).map_err(|_| ApiError::Cancelled)?;
            return Err(ApiError::Down);
        }
        let (ms, fail) = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (2 + rng.below(7), rng.chance(10))
        };
        sleep(Duration::from_millis(ms)).map_err(|_| ApiError::Cancelled)?;
        if !exists {
            Err(ApiError::NotFound(key))
        } else if fail {
            Err(ApiError::BadGateway)
        } else {
            Ok(())
        }
    }
}

/// Killmail ids the API does not know (about 1 in 61): dead letters.
fn killmail_exists(id: u64) -> bool {
    id % 61 != 0
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
    enrich: AtomicU64,
    enrich_rejected: AtomicU64,
}

/// A breaker state change, relative to the start of the run.
type Transitions = Arc<Mutex<Vec<(Duration, BreakerState, BreakerState)>>>;

/// Where the live view goes: stdout for `--format table`, stderr for the
/// machine formats (so stdout holds only the final output).
fn live_to_stderr(opts: &DemoOptions) -> bool {
    opts.format != Format::Table
}

/// Whether the dashboard will redraw in place (its stream is a terminal).
fn redraws_in_place(opts: &DemoOptions) -> bool {
    !opts.quiet
        && if live_to_stderr(opts) {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        }
}

/// The log lines the dashboard shows under its tables (see `logtap`).
fn recent_log(tap: &super::logtap::LogTap) -> String {
    let (lines, seen) = tap.recent();
    if seen == 0 {
        return String::new();
    }
    let mut s = format!(
        "\nlog: last {} of {seen} line(s) (RUST_LOG sets the level)\n",
        lines.len()
    );
    for l in lines {
        s.push_str("  ");
        s.push_str(&l);
        s.push('\n');
    }
    s
}

fn emit(to_stderr: bool, text: &str) {
    // A closed pipe is not worth a panic: the run still shuts down cleanly.
    let _ = if to_stderr {
        let mut e = std::io::stderr().lock();
        e.write_all(text.as_bytes()).and_then(|()| e.flush())
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(text.as_bytes()).and_then(|()| o.flush())
    };
}

pub(crate) fn run(opts: &DemoOptions) -> i32 {
    let rt = match Runtime::builder()
        .background(|t| {
            t.workers(4)
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
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (stop, interrupted) = (stop.clone(), interrupted.clone());
        let presses = AtomicU32::new(0);
        // Ctrl-C: stop the load and fall through to the graceful shutdown;
        // a second Ctrl-C gives up on it.
        if let Err(e) = ctrlc::set_handler(move || {
            if presses.fetch_add(1, Ordering::SeqCst) > 0 {
                eprintln!("\nsecond Ctrl-C: exiting without draining");
                std::process::exit(130);
            }
            interrupted.store(true, Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
        }) {
            log::warn!("could not install the Ctrl-C handler: {e}");
        }
    }
    let offered = Arc::new(Offered::default());
    let started = Instant::now();
    let end = started + opts.duration;

    let workers = match Workers::start(&rt, started) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            rt.shutdown(Duration::from_secs(1));
            return 1;
        }
    };
    let load = start_load(&rt, opts, &stop, &offered, &workers.enricher, started, end);

    let to_stderr = live_to_stderr(opts);
    let in_place = redraws_in_place(opts);
    let banner = format!(
        "tierpool demo: {} users, load {:.1}, {:?} (Ctrl-C stops early and drains)\n",
        opts.users, opts.load, opts.duration
    );
    if !opts.quiet && !in_place {
        emit(to_stderr, &banner);
    }
    let tap = super::logtap::LogTap::global();
    tap.capture(in_place);
    let mut next = started + Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
        if Instant::now() >= next {
            next += Duration::from_secs(1);
            if !opts.quiet {
                let (stats, health) = (rt.stats(), rt.health());
                let view = workers.view(&stats, &health, started.elapsed());
                if in_place {
                    // Clear, home, redraw.
                    emit(
                        to_stderr,
                        &format!("\x1b[2J\x1b[H{banner}\n{}{}", view.table(), recent_log(tap)),
                    );
                } else {
                    emit(to_stderr, &format!("{}\n", view.line()));
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    // The dashboard is done: what shutdown logs goes to stderr again.
    tap.capture(false);
    for h in load {
        let _ = h.join();
    }
    let ran = started.elapsed();
    // The health the run ended with (after shutdown everything reports
    // "shut down").
    let health_at_end = rt.health();
    // The workers' numbers as the load stopped: shutdown hands their items
    // over (see the drain report for what it left).
    let stats_at_end = rt.stats();
    let view = workers.view(&stats_at_end, &health_at_end, ran);
    let report = rt.shutdown(Duration::from_secs(3));
    let stats = rt.stats();
    // The registered workers were stopped by the runtime; what they still
    // hold comes back from their own shutdown.
    let enricher_left = workers.enricher.shutdown(Duration::ZERO);
    let warmer_left = workers.warmer.shutdown(Duration::ZERO);
    let handed_back = enricher_left.unprocessed.len() + warmer_left.unprocessed.len();
    let interrupted = interrupted.load(Ordering::SeqCst);
    match opts.format {
        Format::Table => {
            if interrupted {
                println!("\ninterrupted after {ran:.1?}: drained gracefully");
            }
            println!("\n{stats}");
            println!("{}", rt.analysis().stats());
            println!("workers when the load stopped:\n{}", view.workers_table());
            println!("health at the end of the run: {health_at_end}");
            println!("shutdown: {report}");
            print_offered(&offered, handed_back);
            let every = stats.tiers.iter().all(|t| t.submitted == t.outcomes());
            println!(
                "accounted: every accepted task has exactly one outcome: {}",
                if every { "yes" } else { "NO" }
            );
        }
        Format::Json => {
            println!(
                "{}",
                with_demo(
                    &stats.to_json(),
                    &view.json(&offered, &report, interrupted, ran)
                )
            );
            drain_note(opts, interrupted, &report);
        }
        Format::Prometheus => {
            print!("{}{}", stats.to_prometheus(), view.prometheus());
            drain_note(opts, interrupted, &report);
        }
    }
    0
}

/// With a machine format the drain report goes to stderr (unless
/// `--quiet`; after Ctrl-C always).
fn drain_note(opts: &DemoOptions, interrupted: bool, report: &ShutdownReport) {
    if !opts.quiet || interrupted {
        eprintln!("shutdown: {report}");
    }
}

fn print_offered(offered: &Offered, handed_back: usize) {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "offered: {} ui lookups ({} rejected and handed back), {} killmail events ({} rejected), {} analyses",
        n(&offered.ui),
        n(&offered.ui_rejected),
        n(&offered.events),
        n(&offered.events_rejected),
        n(&offered.analyses),
    );
    println!(
        "         {} character-intel requests ({} rejected), {} killmails to re-enrich ({} refused); \
         {} items handed back by the workers at shutdown",
        n(&offered.intel),
        n(&offered.intel_rejected),
        n(&offered.enrich),
        n(&offered.enrich_rejected),
        handed_back,
    );
}

/// The re-enricher and cache warmer, the API they share and its guards.
struct Workers {
    api: Arc<SimApi>,
    breaker: CircuitBreaker,
    limiter: RateLimiter,
    transitions: Transitions,
    enricher: Arc<ReEnricher<u64>>,
    warmer: CacheWarmer<u64>,
}

impl Workers {
    fn start(rt: &Runtime, started: Instant) -> Result<Workers, Box<dyn std::error::Error>> {
        let api = Arc::new(SimApi::new(started, 4242));
        // Opens once half of the last 20 calls (at least 8) failed; probes
        // again after 800 ms, with 2 probe calls.
        let breaker = CircuitBreaker::builder()
            .name("esi")
            .window_size(20)
            .minimum_calls(8)
            .failure_rate_threshold(50.0)
            .open_duration(Duration::from_millis(800))
            .half_open_probes(2)
            .build()?;
        let transitions: Transitions = Arc::default();
        {
            let t = transitions.clone();
            breaker.on_state_change(Box::new(move |tr| {
                let at = tr.at.saturating_duration_since(started);
                t.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((at, tr.from, tr.to));
            }));
        }
        let limiter = RateLimiter::per(50, Duration::from_secs(1))
            .burst(10)
            .build()?;
        // 404s are not worth retrying; everything else is.
        let retry = |base: Duration| {
            RetryPolicy::builder()
                .max_attempts(3)
                .base_delay(base)
                .max_delay(Duration::from_secs(1))
                .retry_if(|e: &ApiError| !matches!(e, ApiError::NotFound(_)))
                .build()
        };

        let enricher = {
            let api = api.clone();
            ReEnricher::builder(rt.background(), move |id: &u64, ctx| {
                api.call(*id, killmail_exists(*id), &|d| ctx.task().sleep(d))
            })
            .batch_size(10)
            .max_concurrent_batches(2)
            .flush_interval(Duration::from_millis(250))
            .rate_limiter(limiter.clone())
            .circuit_breaker(breaker.clone())
            .retry(retry(Duration::from_millis(200))?)
            .seed(42)
            .build()?
        };
        let enricher = Arc::new(enricher);
        // The breaker's state changes reach the runtime's events through
        // the re-enricher (built on its tier): not registered again.
        rt.register("re-enricher", &*enricher);

        let warmer = {
            let (api, breaker, limiter) = (api.clone(), breaker.clone(), limiter.clone());
            CacheWarmer::builder(rt.background(), move |character: &u64, ctx| {
                // A rate-limit token within 250 ms, and the simulated
                // latency slept on the task's context: both end early if
                // the run is cancelled (a timeout, shutdown).
                let task = ctx.task();
                limiter
                    .acquire(Some(Instant::now() + Duration::from_millis(250)), &|| {
                        task.is_cancelled()
                    })
                    .map_err(|_| ApiError::RateLimited)?;
                breaker
                    .call(|| api.call(*character, true, &|d| task.sleep(d)))
                    .map_err(|e| match e {
                        BreakerError::Open(_) => ApiError::BreakerOpen,
                        BreakerError::Failed(e) => e,
                    })
            })
            // Top killers and recent fights' pilots; the home system's.
            .regular_keys(|| (100..124).collect())
            .critical_keys(|| (1..=4).collect())
            .regular_interval(Duration::from_secs(2))
            .critical_interval(Duration::from_secs(1))
            .batch_size(8)
            .max_concurrent_batches(2)
            .retry(retry(Duration::from_millis(300))?)
            .scheduler(rt.scheduler())
            .seed(7)
            .build()?
        };
        rt.register("cache-warmer", &warmer);
        Ok(Workers {
            api,
            breaker,
            limiter,
            transitions,
            enricher,
            warmer,
        })
    }

    fn view<'a>(&self, stats: &'a Stats, health: &'a Health, at: Duration) -> View<'a> {
        View {
            at,
            stats,
            health,
            breaker: self.breaker.stats(),
            transitions: self
                .transitions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            enricher: self.enricher.stats(),
            warmer: self.warmer.stats(),
            api_calls: self.api.calls.load(Ordering::Relaxed),
            api_failed: self.api.failed.load(Ordering::Relaxed),
            api_while_down: self.api.while_down.load(Ordering::Relaxed),
            api_down: self.api.is_down(),
            throttled: self.limiter.stats().throttled,
        }
    }
}

/// Starts the load generators; they stop at `end` or on `stop`.
fn start_load(
    rt: &Arc<Runtime>,
    opts: &DemoOptions,
    stop: &Arc<AtomicBool>,
    offered: &Arc<Offered>,
    enricher: &Arc<ReEnricher<u64>>,
    started: Instant,
    end: Instant,
) -> Vec<thread::JoinHandle<()>> {
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

    // realtime: killmail bursts; a sample goes to the re-enricher.
    {
        let (rt, stop, offered, load_f) = (rt.clone(), stop.clone(), offered.clone(), opts.load);
        let enricher = enricher.clone();
        load.push(thread::spawn(move || {
            let mut rng = Rng::new(99);
            let mut killmail_id = 120_000_000u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let burst = (150.0 * load_f) as u64;
                for _ in 0..burst {
                    killmail_id += 1;
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
                    if rng.chance(6) {
                        offered.enrich.fetch_add(1, Ordering::Relaxed);
                        let r = if priority == Priority::Critical {
                            enricher.enqueue_high(killmail_id)
                        } else {
                            enricher.enqueue(killmail_id)
                        };
                        if r.is_err() {
                            offered.enrich_rejected.fetch_add(1, Ordering::Relaxed);
                        }
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
                        analyse(ctx, Duration::from_millis(ms))?;
                        Ok::<_, Cancelled>(ms)
                    })
                    .priority(if rng.chance(20) {
                        Priority::High
                    } else {
                        Priority::Normal
                    })
                    .submit();
                thread::sleep(Duration::from_secs_f64(0.4 / load_f));
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
    load
}

/// One moment of the run, as the dashboard and the final output show it.
struct View<'a> {
    at: Duration,
    stats: &'a Stats,
    health: &'a Health,
    breaker: BreakerStats,
    transitions: Vec<(Duration, BreakerState, BreakerState)>,
    enricher: BatchStats,
    warmer: CacheWarmerStats,
    api_calls: u64,
    api_failed: u64,
    api_while_down: u64,
    api_down: bool,
    throttled: u64,
}

/// A job's runs and skips, `-` if the job is not there.
fn job_counts(j: Option<&JobStats>) -> (u64, u64, u64) {
    j.map_or((0, 0, 0), |j| {
        (
            j.runs,
            j.skipped_load + j.skipped_overlap,
            j.failed + j.panicked,
        )
    })
}

fn short(d: Duration) -> String {
    if d.is_zero() {
        "-".into()
    } else if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

impl View<'_> {
    fn health_text(&self) -> String {
        let mut s = self.health.status.to_string();
        for (i, (c, r)) in self.health.reasons().enumerate() {
            s += if i == 0 { ": " } else { "; " };
            let _ = write!(s, "{c}: {r}");
        }
        s
    }

    fn breaker_text(&self) -> String {
        let last = self
            .transitions
            .last()
            .map(|(at, from, to)| format!(", last {from}→{to} at {:.1}s", at.as_secs_f64()))
            .unwrap_or_default();
        format!(
            "{}{} ({} transition(s){last})",
            self.breaker.state,
            if self.api_down { ", API down" } else { "" },
            self.breaker.transitions,
        )
    }

    /// The in-place dashboard.
    fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<11}{:>7}{:>8}{:>9}{:>8}{:>7}{:>7}{:>10}",
            format!("tier @{:>3}s", self.at.as_secs()),
            "queued",
            "running",
            "done",
            "failed",
            "t/out",
            "reject",
            "run p99"
        );
        for t in &self.stats.tiers {
            let _ = writeln!(
                s,
                "{:<11}{:>7}{:>8}{:>9}{:>8}{:>7}{:>7}{:>10}",
                t.name,
                t.queued,
                t.running,
                t.completed,
                t.failed + t.panicked,
                t.timed_out(),
                t.rejected.total(),
                short(t.run_time.p99),
            );
        }
        s.push('\n');
        s += &self.workers_table();
        let _ = writeln!(s, "health       {}", self.health_text());
        s
    }

    /// The workers' part of the table (also in the final summary).
    fn workers_table(&self) -> String {
        let e = &self.enricher;
        let w = &self.warmer;
        let (rr, rs, rf) = job_counts(w.regular.as_ref());
        let (cr, cs, cf) = job_counts(w.critical.as_ref());
        let mut s = String::new();
        let _ = writeln!(
            s,
            "breaker esi  {}: {} calls, {} failed, {} rejected while open",
            self.breaker_text(),
            self.breaker.calls,
            self.breaker.failures,
            self.breaker.rejected,
        );
        let _ = writeln!(
            s,
            "api          {} calls, {} failed ({} while down), {} rate-limited",
            self.api_calls, self.api_failed, self.api_while_down, self.throttled,
        );
        let _ = writeln!(
            s,
            "re-enricher  pending {} (in batches {}), done {}, retried {}, dead letters {}, \
             breaker holds {}",
            e.pending, e.in_batches, e.processed_ok, e.retried, e.dead_letters, e.breaker_holds,
        );
        let _ = writeln!(
            s,
            "cache-warmer regular {rr} runs / {rs} skipped / {rf} failed, critical {cr} / {cs} / \
             {cf}; warmed {}, retried {}, dead {}",
            w.batches.processed_ok, w.batches.retried, w.batches.dead_letters,
        );
        s
    }

    /// One line a second when the live view is not a terminal.
    fn line(&self) -> String {
        let mut line = format!("[{:>4.1}s]", self.at.as_secs_f64());
        for t in &self.stats.tiers {
            let _ = write!(
                line,
                " {} q{} r{} d{} f{} t{} p99 {} |",
                t.name,
                t.queued,
                t.running,
                t.completed,
                t.failed + t.panicked,
                t.timed_out(),
                short(t.run_time.p99),
            );
        }
        let (rr, rs, _) = job_counts(self.warmer.regular.as_ref());
        let (cr, cs, _) = job_counts(self.warmer.critical.as_ref());
        let _ = write!(
            line,
            " breaker {} | re-enricher pending {} dead {} | warmer runs {} skips {} | health {}",
            self.breaker.state,
            self.enricher.pending,
            self.enricher.dead_letters,
            rr + cr,
            rs + cs,
            self.health_text(),
        );
        line
    }

    /// The demo's own numbers, as the `"demo"` member of the JSON output.
    fn json(
        &self,
        offered: &Offered,
        report: &ShutdownReport,
        interrupted: bool,
        ran: Duration,
    ) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\"ran_ms\":{},\"interrupted\":{interrupted},\
             \"offered\":{{\"ui\":{},\"ui_rejected\":{},\"events\":{},\"events_rejected\":{},\
             \"analyses\":{},\"intel\":{},\"intel_rejected\":{},\"enrich\":{},\"enrich_rejected\":{}}},",
            ran.as_millis(),
            n(&offered.ui),
            n(&offered.ui_rejected),
            n(&offered.events),
            n(&offered.events_rejected),
            n(&offered.analyses),
            n(&offered.intel),
            n(&offered.intel_rejected),
            n(&offered.enrich),
            n(&offered.enrich_rejected),
        );
        let b = &self.breaker;
        let _ = write!(
            s,
            "\"api\":{{\"calls\":{},\"failed\":{},\"while_down\":{},\"rate_limited\":{}}},\
             \"breaker\":{{\"name\":\"esi\",\"state\":\"{}\",\"calls\":{},\"successes\":{},\
             \"failures\":{},\"rejected\":{},\"transitions\":[",
            self.api_calls,
            self.api_failed,
            self.api_while_down,
            self.throttled,
            b.state,
            b.calls,
            b.successes,
            b.failures,
            b.rejected,
        );
        for (i, (at, from, to)) in self.transitions.iter().enumerate() {
            let _ = write!(
                s,
                "{}{{\"at_ms\":{},\"from\":\"{from}\",\"to\":\"{to}\"}}",
                if i == 0 { "" } else { "," },
                at.as_millis()
            );
        }
        s += "]},\"re_enricher\":";
        json_batch(&mut s, &self.enricher);
        s += ",\"cache_warmer\":{";
        for (name, job) in [
            ("regular", &self.warmer.regular),
            ("critical", &self.warmer.critical),
        ] {
            let (runs, skipped, failed) = job_counts(job.as_ref());
            let _ = write!(
                s,
                "\"{name}\":{{\"runs\":{runs},\"skipped\":{skipped},\"failed\":{failed}}},"
            );
        }
        s += "\"batches\":";
        json_batch(&mut s, &self.warmer.batches);
        let _ = write!(
            s,
            "}},\"health\":{{\"status\":\"{}\",\"reasons\":[",
            self.health.status
        );
        for (i, (c, r)) in self.health.reasons().enumerate() {
            let _ = write!(
                s,
                "{}{{\"component\":{},\"reason\":{}}}",
                if i == 0 { "" } else { "," },
                json_str(c),
                json_str(&r.to_string())
            );
        }
        let _ = write!(
            s,
            "]}},\"shutdown\":{{\"drained_in_time\":{},\"took_ms\":{},\"completed_during_drain\":{},\
             \"cancelled_running\":{},\"never_started\":{},\"zombies\":{}}}}}",
            report.drained_in_time,
            report.took.as_millis(),
            report.completed_during_drain,
            report.cancelled_running.len(),
            report.never_started.len(),
            report.zombies.len(),
        );
        s
    }

    /// The workers' numbers in the Prometheus text format, after the
    /// runtime's own.
    fn prometheus(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, f64)]| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(s, "{name}{{{labels}}} {v}");
            }
        };
        let states = [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ];
        metric(
            "tierpool_demo_breaker_state",
            "gauge",
            "1 for the circuit breaker's current state.",
            &states
                .iter()
                .map(|st| {
                    (
                        format!("breaker=\"esi\",state=\"{st}\""),
                        f64::from(u8::from(*st == self.breaker.state)),
                    )
                })
                .collect::<Vec<_>>(),
        );
        metric(
            "tierpool_demo_breaker_transitions_total",
            "counter",
            "Circuit breaker state changes.",
            &[("breaker=\"esi\"".into(), self.breaker.transitions as f64)],
        );
        let batches = [
            ("re-enricher", &self.enricher),
            ("cache-warmer", &self.warmer.batches),
        ];
        metric(
            "tierpool_demo_batch_items_total",
            "counter",
            "Batch worker items, by outcome.",
            &batches
                .iter()
                .flat_map(|(w, b)| {
                    [
                        ("processed", b.processed_ok),
                        ("failed_attempt", b.failed_attempts),
                        ("retried", b.retried),
                        ("dead_lettered", b.dead_lettered),
                    ]
                    .map(|(o, v)| (format!("worker=\"{w}\",outcome=\"{o}\""), v as f64))
                })
                .collect::<Vec<_>>(),
        );
        metric(
            "tierpool_demo_batch_pending",
            "gauge",
            "Batch worker items not processed yet.",
            &batches
                .iter()
                .map(|(w, b)| (format!("worker=\"{w}\""), b.pending as f64))
                .collect::<Vec<_>>(),
        );
        metric(
            "tierpool_demo_batch_dead_letters",
            "gauge",
            "Batch worker items in the dead-letter list.",
            &batches
                .iter()
                .map(|(w, b)| (format!("worker=\"{w}\""), b.dead_letters as f64))
                .collect::<Vec<_>>(),
        );
        let jobs = [
            ("regular", &self.warmer.regular),
            ("critical", &self.warmer.critical),
        ];
        metric(
            "tierpool_demo_warm_cycles_total",
            "counter",
            "Cache warmer cycles, by result.",
            &jobs
                .iter()
                .flat_map(|(j, stats)| {
                    let (runs, skipped, failed) = job_counts(stats.as_ref());
                    [("run", runs), ("skipped", skipped), ("failed", failed)]
                        .map(|(r, v)| (format!("cycle=\"{j}\",result=\"{r}\""), v as f64))
                })
                .collect::<Vec<_>>(),
        );
        s
    }
}

fn json_batch(s: &mut String, b: &BatchStats) {
    let _ = write!(
        s,
        "{{\"enqueued\":{},\"rejected\":{},\"processed_ok\":{},\"failed_attempts\":{},\
         \"retried\":{},\"dead_lettered\":{},\"dead_letters\":{},\"pending\":{},\
         \"in_batches\":{},\"batches_run\":{},\"breaker_holds\":{},\"rate_limited\":{}}}",
        b.enqueued,
        b.rejected,
        b.processed_ok,
        b.failed_attempts,
        b.retried,
        b.dead_lettered,
        b.dead_letters,
        b.pending,
        b.in_batches,
        b.batches_run,
        b.breaker_holds,
        b.rate_limited,
    );
}

/// A JSON string literal.
fn json_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s += "\\\"",
            '\\' => s += "\\\\",
            '\n' => s += "\\n",
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// The runtime's stats object with a `"demo"` member added at its end.
fn with_demo(stats_json: &str, demo: &str) -> String {
    match stats_json.strip_suffix('}') {
        Some(open) => format!("{open},\"demo\":{demo}}}"),
        None => stats_json.to_string(),
    }
}
