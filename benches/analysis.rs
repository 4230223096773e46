//! Analysis pool benchmarks: a cached `analyze` hit; a 1,000-item CPU batch
//! through `analyze_batch` vs the same work item by item on one worker vs a
//! plain rayon `par_iter` on a pool of the same size; and how fast the pool
//! scales from 1 to 8 workers under a burst.
//!
//! Run: `cargo bench --bench analysis`

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rayon::prelude::*;
use tierpool::Runtime;

/// ~20 µs of integer work per item.
fn work(n: u64) -> u64 {
    let mut h = n;
    for _ in 0..4_000 {
        h = h
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
    }
    h
}

fn cached_hit(c: &mut Criterion) {
    let rt = Runtime::builder().build().unwrap();
    let a = rt.analysis();
    a.analyze("intel", 42, |_| Ok::<_, String>(7u64))
        .unwrap()
        .join()
        .unwrap();
    c.bench_function("analysis/cached_hit", |b| {
        b.iter(|| {
            let h = a.analyze("intel", 42, |_| Ok::<_, String>(0u64)).unwrap();
            black_box(h.join().unwrap())
        })
    });
}

fn cpu_batch(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = Runtime::builder()
        .cpu_threads(threads)
        .analysis(|t| t.workers(1))
        .build()
        .unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let items: Vec<u64> = (0..1_000).collect();
    let mut g = c.benchmark_group("analysis/batch_1000");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.bench_function("analyze_batch", |b| {
        b.iter(|| {
            let out = rt
                .analysis()
                .analyze_batch("value", items.clone(), |n| Ok::<_, ()>(work(n)))
                .join();
            black_box(out.len())
        })
    });
    g.bench_function("plain_rayon_par_iter", |b| {
        b.iter(|| {
            let out: Vec<u64> = pool.install(|| items.clone().into_par_iter().map(work).collect());
            black_box(out.len())
        })
    });
    g.bench_function("item_by_item_one_worker", |b| {
        b.iter(|| {
            let items = items.clone();
            let h = rt
                .analysis()
                .request("serial", 0, move |_| {
                    Ok::<_, ()>(items.iter().map(|&n| work(n)).collect::<Vec<_>>())
                })
                .no_cache()
                .submit()
                .unwrap();
            black_box(h.join().unwrap().len())
        })
    });
    g.finish();
}

fn scaling_reaction(c: &mut Criterion) {
    let mut g = c.benchmark_group("analysis/scale_1_to_8");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    g.bench_function("burst_to_8_workers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let rt = Runtime::builder().build().unwrap();
                let a = rt.analysis();
                let gate = Arc::new(Barrier::new(9));
                let t0 = Instant::now();
                let hs: Vec<_> = (0..8)
                    .map(|i| {
                        let g = gate.clone();
                        a.request("burst", i, move |_| {
                            g.wait();
                            Ok::<_, ()>(())
                        })
                        .no_cache()
                        .submit()
                        .unwrap()
                    })
                    .collect();
                gate.wait(); // all 8 running at once: the pool has 8 workers
                total += t0.elapsed();
                for h in hs {
                    h.join().unwrap();
                }
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, cached_hit, cpu_batch, scaling_reaction);
criterion_main!(benches);
