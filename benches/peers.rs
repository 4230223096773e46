//! tierpool side by side with its peers, in one process run: the
//! `threadpool` crate, a rayon `ThreadPool`, and a bare crossbeam-channel
//! worker pool (the baseline). Prints markdown tables.
//!
//! ```text
//! cargo bench --bench peers                          # full run (~2 min)
//! TIERPOOL_BENCH_QUICK=1 cargo bench --bench peers   # smoke run (~20 s)
//! ```
//!
//! Knobs (environment): `TIERPOOL_BENCH_ONLY=dispatch|isolation`,
//! `TIERPOOL_BENCH_TASKS` (tasks per dispatch round), `TIERPOOL_BENCH_ROUNDS`,
//! `TIERPOOL_BENCH_SECS` (light-task arrival time per isolation contender),
//! `TIERPOOL_BENCH_HEAVY_IN_FLIGHT`.
//!
//! Ratios are only meaningful within one run: rounds of the contenders are
//! interleaved so that a noisy neighbour slows them all alike.

mod support;

use std::time::Duration;

use support::contenders::{
    tierpool_isolated, tierpool_ui, BarePool, Features, RayonPool, ThreadpoolCrate, TierExec,
};
use support::report::{ms, Summary, Table};
use support::workload::{dispatch, head_of_line, HolConfig, HolRun, Spinner};
use tierpool::{Priority, Runtime};

struct Settings {
    quick: bool,
    dispatch: bool,
    isolation: bool,
    tasks: usize,
    rounds: usize,
    hol: HolConfig,
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("TIERPOOL_BENCH_QUICK").is_ok_and(|v| v != "0");
        let only = std::env::var("TIERPOOL_BENCH_ONLY").unwrap_or_default();
        let secs = env_num("TIERPOOL_BENCH_SECS", if quick { 1 } else { 5 });
        Settings {
            quick,
            dispatch: only.is_empty() || only == "dispatch",
            isolation: only.is_empty() || only == "isolation",
            tasks: env_num("TIERPOOL_BENCH_TASKS", if quick { 5_000 } else { 20_000 }) as usize,
            rounds: env_num("TIERPOOL_BENCH_ROUNDS", if quick { 3 } else { 11 }) as usize,
            hol: HolConfig {
                duration: Duration::from_secs(secs),
                light_every: Duration::from_millis(5),
                light_work: Duration::from_micros(50),
                heavy_work: Duration::from_millis(20),
                heavy_in_flight: env_num("TIERPOOL_BENCH_HEAVY_IN_FLIGHT", 8) as usize,
                ramp_up: Duration::from_millis(if quick { 100 } else { 300 }),
            },
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter on.
    let s = Settings::from_env();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# tierpool vs peers\n");
    println!(
        "machine: {cores} cores ({}){}\n",
        cpu_model(),
        if s.quick { "; QUICK run" } else { "" }
    );
    if s.dispatch {
        dispatch_report(&s);
    }
    if s.isolation {
        isolation_report(&s);
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

// ---- dispatch -------------------------------------------------------------

/// Every bounded queue in the dispatch runs (bare pool channel, tierpool
/// per-level queue) holds this many tasks.
const QUEUE_CAPACITY: usize = 1024;

enum Contender {
    Bare(BarePool),
    Threadpool(ThreadpoolCrate),
    Rayon(RayonPool),
    /// The runtime is kept alive beside the tier handle that feeds it.
    Tierpool {
        _runtime: Box<Runtime>,
        exec: TierExec,
    },
}

impl Contender {
    fn tierpool(workers: usize, features: Features) -> Contender {
        let rt = tierpool_ui(workers, QUEUE_CAPACITY, features);
        let exec = TierExec {
            tier: rt.ui().clone(),
            priority: Priority::Normal,
        };
        Contender::Tierpool {
            _runtime: Box::new(rt),
            exec,
        }
    }

    fn run(&self, submitters: usize, tasks: usize) -> Duration {
        match self {
            Contender::Bare(p) => dispatch(p, submitters, tasks),
            Contender::Threadpool(p) => dispatch(p, submitters, tasks),
            Contender::Rayon(p) => dispatch(p, submitters, tasks),
            Contender::Tierpool { exec, .. } => dispatch(exec, submitters, tasks),
        }
    }
}

fn dispatch_report(s: &Settings) {
    println!("## Tiny-task dispatch (submit → completion)\n");
    println!(
        "{} tasks per round, median of {} interleaved rounds; tierpool on the ui tier with no admission limit, per-level queue {QUEUE_CAPACITY}, `submit_wait`; bare pool channel {QUEUE_CAPACITY}.\n",
        s.tasks, s.rounds
    );
    let mut table = Table::new(&[
        "workers",
        "submitters",
        "contender",
        "tasks/s (median)",
        "min–max",
        "vs bare",
    ]);
    let mut verdicts = Vec::new();
    for workers in [2, 4] {
        for submitters in [1, 4] {
            let contenders: Vec<(&str, Contender)> = vec![
                (
                    "bare crossbeam pool",
                    Contender::Bare(BarePool::new(workers, QUEUE_CAPACITY)),
                ),
                (
                    "threadpool",
                    Contender::Threadpool(ThreadpoolCrate::new(workers)),
                ),
                ("rayon spawn", Contender::Rayon(RayonPool::new(workers))),
                (
                    "tierpool (defaults: timeouts, stats)",
                    Contender::tierpool(workers, Features::Defaults),
                ),
                (
                    "tierpool (no timeouts)",
                    Contender::tierpool(workers, Features::NoTimeouts),
                ),
            ];
            let mut times: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
            for round in 0..=s.rounds {
                for (i, (_, c)) in contenders.iter().enumerate() {
                    let t = c.run(submitters, s.tasks);
                    if round > 0 {
                        times[i].push(t); // round 0 warms up
                    }
                    // Let the previous pool's threads go idle (rayon spins
                    // a little before sleeping).
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let rate = |d: Duration| s.tasks as f64 / d.as_secs_f64();
            let medians: Vec<f64> = times
                .iter_mut()
                .map(|t| {
                    t.sort_unstable();
                    rate(t[t.len() / 2])
                })
                .collect();
            for (i, (name, _)) in contenders.iter().enumerate() {
                let (lo, hi) = (rate(*times[i].last().unwrap()), rate(times[i][0]));
                table.row(vec![
                    workers.to_string(),
                    submitters.to_string(),
                    name.to_string(),
                    format!("{:.0}", medians[i]),
                    format!("{:.0}k–{:.0}k", lo / 1e3, hi / 1e3),
                    format!("{:.2}x", medians[i] / medians[0]),
                ]);
            }
            let tp = medians[3];
            verdicts.push(format!(
                "- {workers} workers × {submitters} submitters: tierpool {:.2}x bare (target ≥ 0.5x: {}), {:.2}x threadpool (target ≥ 1x: {})",
                tp / medians[0],
                pass(tp / medians[0] >= 0.5),
                tp / medians[1],
                pass(tp >= medians[1]),
            ));
        }
    }
    println!("{}", table.markdown());
    println!("Targets (issue 2), tierpool with defaults:\n");
    println!("{}\n", verdicts.join("\n"));
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

// ---- head-of-line isolation ------------------------------------------------

/// Threads each setup gets: 4 in total, so no contender has more.
const HEAVY_WORKERS: usize = 2;
const LIGHT_WORKERS: usize = 2;
const SHARED_WORKERS: usize = HEAVY_WORKERS + LIGHT_WORKERS;

fn isolation_report(s: &Settings) {
    let cfg = &s.hol;
    let spinner = Spinner::calibrate();
    println!("## Head-of-line isolation\n");
    println!(
        "{:?} CPU tasks (calibrated spin, {:.0} iterations/µs) kept {} in flight; {:?} CPU light tasks every {:?} for {:?}; latency = submit → completion. Shared pools have {SHARED_WORKERS} workers; isolated setups {HEAVY_WORKERS} heavy + {LIGHT_WORKERS} light. tierpool: heavy on background, light on realtime at high priority.\n",
        cfg.heavy_work,
        spinner.iters_per_us(),
        cfg.heavy_in_flight,
        cfg.light_work,
        cfg.light_every,
        cfg.duration,
    );
    let mut runs: Vec<(&str, HolRun)> = Vec::new();
    {
        let p = ThreadpoolCrate::new(SHARED_WORKERS);
        runs.push(("shared threadpool", head_of_line(&p, &p, cfg, spinner)));
    }
    {
        let p = RayonPool::new(SHARED_WORKERS);
        runs.push(("shared rayon", head_of_line(&p, &p, cfg, spinner)));
    }
    {
        let p = BarePool::new(SHARED_WORKERS, QUEUE_CAPACITY);
        runs.push(("shared bare pool", head_of_line(&p, &p, cfg, spinner)));
    }
    {
        let heavy = BarePool::new(HEAVY_WORKERS, QUEUE_CAPACITY);
        let light = BarePool::new(LIGHT_WORKERS, QUEUE_CAPACITY);
        runs.push(("two bare pools", head_of_line(&light, &heavy, cfg, spinner)));
    }
    {
        let rt = tierpool_isolated(HEAVY_WORKERS, LIGHT_WORKERS, QUEUE_CAPACITY);
        let heavy = TierExec {
            tier: rt.background().clone(),
            priority: Priority::Normal,
        };
        let light = TierExec {
            tier: rt.realtime().clone(),
            priority: Priority::High,
        };
        runs.push((
            "tierpool realtime/background",
            head_of_line(&light, &heavy, cfg, spinner),
        ));
        rt.shutdown(Duration::from_secs(5));
    }
    let summaries: Vec<Summary> = runs.iter().map(|(_, r)| Summary::of(&r.light)).collect();
    let shared_tp_p99 = summaries[0].p99;
    let mut table = Table::new(&[
        "contender",
        "light tasks",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p99 vs shared threadpool",
        "heavy tasks/s",
    ]);
    for ((name, run), sum) in runs.iter().zip(&summaries) {
        table.row(vec![
            name.to_string(),
            sum.count.to_string(),
            ms(sum.p50),
            ms(sum.p99),
            ms(sum.max),
            format!("{:.1}x lower", ratio(shared_tp_p99, sum.p99)),
            format!("{:.1}", run.heavy_done as f64 / run.window.as_secs_f64()),
        ]);
    }
    println!("{}", table.markdown());
    let tier = summaries[4].p99;
    let two = summaries[3].p99;
    let best_shared = summaries[..3]
        .iter()
        .map(|s| s.p99)
        .min()
        .unwrap_or_default();
    println!(
        "Target (issue 2): tierpool light p99 ≥ 10x lower than shared threadpool: {:.1}x ({}). Toward issue 5: {:.1}x lower than the best shared pool (target ≥ 20x: {}); tierpool p99 / two-bare-pools p99 = {:.2} (target < 1: {}).\n",
        ratio(shared_tp_p99, tier),
        pass(ratio(shared_tp_p99, tier) >= 10.0),
        ratio(best_shared, tier),
        pass(ratio(best_shared, tier) >= 20.0),
        ratio(tier, two),
        pass(tier < two),
    );
}

/// How many times `a` is `b`.
fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
