//! The dispatch floor: how fast a pool *shaped like tierpool* can be before
//! it does any of tierpool's bookkeeping (`Skeleton` in
//! `benches/support/contenders.rs`: four level channels, a pick lock and a
//! bell; then a core-sized per-task object; then the spent-object return),
//! next to the bare pool and tierpool itself, on the bench's tiny-task
//! workload with one submitter. `tierpool bench` shows the same skeleton
//! rows for every configuration; this is the quick way to run them alone.
//!
//! `cargo run --release --example dispatch_floor [workers] [rounds] [tasks]`
//!
//! Rounds are interleaved (each contender once per round) and the median
//! is reported with its ratio to the bare pool measured in the same round
//! set: the machine's noise moves them together.
#[path = "../benches/support/mod.rs"]
mod support;

use std::time::Duration;

use support::contenders::{tierpool_ui, BarePool, Features, Shape, Skeleton, TierExec};
use support::workload::dispatch;
use tierpool::Priority;

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
