//! Profiling driver: the cost of one submit on its own. Both ui workers are
//! held busy, so 1,000 tiny tasks are queued with nobody taking them (no
//! wake-ups, no consumer on the queue's cache lines), then released and
//! drained (timed apart); the same for one `send` on a bare crossbeam
//! channel.
//! `cargo run --release --example submit_cost [rounds]`
#[path = "../benches/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};
use support::contenders::{tierpool_ui, Features};
use support::workload::{tiny_work, Countdown};
use tierpool::Priority;

const TASKS: usize = 1000;

fn main() {
    let rounds: usize = std::env::args().nth(1).map_or(200, |s| s.parse().unwrap());
    let rt = tierpool_ui(2, 1024, Features::Defaults);
    let ui = rt.ui().clone();
    let (mut timed, mut drained) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        // Hold both workers (critical, so they start before anything else).
        let (release, held) = crossbeam_channel::bounded::<()>(0);
        let started = Countdown::new(2);
        for _ in 0..2 {
            let (held, started) = (held.clone(), started.clone());
            let hold = move |_: &tierpool::TaskContext| {
                started.count_down();
                let _ = held.recv();
                Ok::<(), Infallible>(())
            };
            ui.submit(Priority::Critical, hold).unwrap();
        }
        started.wait();
        let latch = Countdown::new(TASKS);
        let t = Instant::now();
        for i in 0..TASKS {
            let latch = latch.clone();
            let task = move |_: &tierpool::TaskContext| {
                tiny_work(i);
                latch.count_down();
                Ok::<(), Infallible>(())
            };
            ui.submit(Priority::Normal, task).unwrap();
        }
        timed += t.elapsed();
        let t = Instant::now();
        drop(release);
        latch.wait();
        drained += t.elapsed();
    }
    let per = |d: Duration| d.as_nanos() as f64 / (rounds * TASKS) as f64;
    println!("tierpool submit: {:.0} ns/task", per(timed));
    println!("tierpool drain by 2 workers: {:.0} ns/task", per(drained));

    let (tx, rx) = crossbeam_channel::bounded::<Box<dyn FnOnce() + Send>>(1024);
    let mut timed = Duration::ZERO;
    for _ in 0..rounds {
        let latch = Countdown::new(TASKS);
        let t = Instant::now();
        for i in 0..TASKS {
            let latch = latch.clone();
            tx.send(Box::new(move || {
                tiny_work(i);
                latch.count_down();
            }))
            .unwrap();
        }
        timed += t.elapsed();
        let rx = rx.clone();
        std::thread::spawn(move || {
            while let Ok(f) = rx.try_recv() {
                f();
            }
        })
        .join()
        .unwrap();
        latch.wait();
    }
    println!("bare channel send: {:.0} ns/task", per(timed));
}
