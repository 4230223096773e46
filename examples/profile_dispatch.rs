//! Profiling driver: the dispatch workload on one contender, for perf or
//! callgrind. `profile_dispatch <tierpool|notimeout|bare|bare-payload|threadpool> <workers> <submitters> <rounds> [tasks] [queue capacity]`
#[path = "../benches/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::contenders::*;
use support::workload::dispatch;
use tierpool::Priority;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let which = a.get(1).map_or("tierpool", |s| s.as_str());
    let w: usize = a.get(2).map_or(2, |s| s.parse().unwrap());
    let s: usize = a.get(3).map_or(1, |s| s.parse().unwrap());
    let rounds: usize = a.get(4).map_or(50, |s| s.parse().unwrap());
    let tasks: usize = a.get(5).map_or(20_000, |s| s.parse().unwrap());
    let cap: usize = a.get(6).map_or(1024, |s| s.parse().unwrap());
    let t = Instant::now();
    let mut total = Duration::ZERO;
    match which {
        "bare" => {
            let p = BarePool::new(w, cap);
            for _ in 0..rounds {
                total += dispatch(&p, s, tasks);
            }
        }
        "bare-payload" => {
            let p = WithPayload(BarePool::new(w, cap));
            for _ in 0..rounds {
                total += dispatch(&p, s, tasks);
            }
        }
        "threadpool" => {
            let p = ThreadpoolCrate::new(w);
            for _ in 0..rounds {
                total += dispatch(&p, s, tasks);
            }
        }
        _ => {
            let f = if which == "notimeout" {
                Features::NoTimeouts
            } else {
                Features::Defaults
            };
            let rt = tierpool_ui(w, cap, f);
            let e = TierExec {
                tier: rt.ui().clone(),
                priority: Priority::Normal,
            };
            for _ in 0..rounds {
                total += dispatch(&e, s, tasks);
            }
            eprintln!("{}", rt.stats());
        }
    }
    let n = (rounds * tasks) as f64;
    eprintln!(
        "{which} w{w} s{s}: {:.0} tasks/s (wall {:?})",
        n / total.as_secs_f64(),
        t.elapsed()
    );
}
