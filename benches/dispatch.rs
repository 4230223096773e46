//! Dispatch benchmark: submit-to-completion of tiny tasks on one tier, with
//! 2 and 4 workers and 1 and 4 submitter threads.
//!
//! `count`: handles are dropped and completions counted (what the peers
//! comparison measures); `join`: one submitter keeps every handle and joins
//! them all (the full handle path: slot wake-up and take).
//!
//! ```text
//! cargo bench --bench dispatch
//! ```

mod support;

use std::convert::Infallible;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use support::contenders::{tierpool_ui, Features, TierExec};
use support::workload::{dispatch, tiny_work};
use tierpool::Priority;

const TASKS: usize = 10_000;
const QUEUE_CAPACITY: usize = 1024;

fn bench_dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(TASKS as u64));
    for workers in [2, 4] {
        let rt = tierpool_ui(workers, QUEUE_CAPACITY, Features::Defaults);
        let exec = TierExec {
            tier: rt.ui().clone(),
            priority: Priority::Normal,
        };
        for submitters in [1, 4] {
            let id = BenchmarkId::new("count", format!("w{workers}/s{submitters}"));
            g.bench_function(id, |b| b.iter(|| dispatch(&exec, submitters, TASKS)));
        }
        let id = BenchmarkId::new("join", format!("w{workers}/s1"));
        g.bench_function(id, |b| {
            b.iter(|| {
                let handles: Vec<_> = (0..TASKS)
                    .map(|i| {
                        rt.ui()
                            .submit_wait(
                                Priority::Normal,
                                move |_| {
                                    tiny_work(i);
                                    Ok::<_, Infallible>(i)
                                },
                                Duration::from_secs(60),
                            )
                            .expect("admitted")
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("completed"))
                    .sum::<usize>()
            })
        });
        rt.shutdown(Duration::from_secs(5));
    }
    g.finish();
}

criterion_group!(benches, bench_dispatch);
criterion_main!(benches);
