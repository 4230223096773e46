//! Batch processor and re-enricher behaviour under the manual clock:
//! retries, rate limit, breaker holds, dead letters, priority and shutdown.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{advance_until, runtime, wait};
use tierpool::{
    BatchProcessor, CircuitBreaker, DeadReason, EnqueueRejected, Jitter, ManualClock, Priority,
    RateLimiter, ReEnricher, RetryPolicy, SeedRng,
};

const MS: Duration = Duration::from_millis(1);

/// A fake external API: fails a seeded 30% of calls and counts calls.
struct FlakyApi {
    rng: Mutex<SeedRng>,
    calls: AtomicU32,
    enriched: Mutex<HashSet<u64>>,
}

impl FlakyApi {
    fn call(&self, id: u64) -> Result<(), String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.rng.lock().unwrap().next_f64() < 0.3 {
            return Err(format!("503 for {id}"));
        }
        assert!(
            self.enriched.lock().unwrap().insert(id),
            "{id} enriched twice"
        );
        Ok(())
    }
}

#[test]
fn flaky_rate_limited_api_every_item_enriched_or_dead_lettered() {
    let (m, rt) = runtime(3);
    let api = Arc::new(FlakyApi {
        rng: Mutex::new(SeedRng::new(30)),
        calls: AtomicU32::new(0),
        enriched: Mutex::default(),
    });
    let a = api.clone();
    let limiter = RateLimiter::per(50, Duration::from_secs(1))
        .burst(10)
        .clock(m.clock())
        .build()
        .unwrap();
    let enricher = ReEnricher::builder(rt.background(), move |id: &u64, _| a.call(*id))
        .rate_limiter(limiter.clone())
        .retry(
            RetryPolicy::builder()
                .base_delay(Duration::from_millis(100))
                .build()
                .unwrap(),
        )
        .seed(7)
        .build()
        .unwrap();
    const N: u64 = 300;
    let t0 = m.now();
    for id in 0..N {
        enricher.enqueue(id).unwrap();
    }
    enricher.process_now();
    advance_until(&m, 20 * MS, "all items settled", || {
        enricher.stats().pending == 0
    });
    let elapsed = m.now() - t0;
    let stats = enricher.stats();
    let dead = enricher.drain_dead_letters();
    let enriched = api.enriched.lock().unwrap().clone();

    // Every item is exactly one of enriched / dead-lettered.
    let dead_ids: HashSet<u64> = dead.iter().map(|d| d.item).collect();
    assert_eq!(dead_ids.len(), dead.len());
    assert!(enriched.is_disjoint(&dead_ids));
    assert_eq!(enriched.len() + dead_ids.len(), N as usize);
    assert_eq!(stats.processed_ok, enriched.len() as u64);
    assert_eq!(stats.dead_lettered, dead.len() as u64);
    assert!(dead
        .iter()
        .all(|d| d.attempts == 3 && d.reason == DeadReason::Exhausted));
    // With 30% failures and 3 attempts about 2.7% die (8 of 300 expected).
    assert!(dead.len() < 40, "{} dead", dead.len());
    // Every call is an attempt; every failed attempt retried or dead.
    let calls = u64::from(api.calls.load(Ordering::SeqCst));
    assert_eq!(calls, stats.processed_ok + stats.failed_attempts);
    assert_eq!(stats.failed_attempts, stats.retried + stats.dead_lettered);
    // The limiter was respected: at most burst + rate·T calls.
    let bound = 10 + (50.0 * elapsed.as_secs_f64()).ceil() as u64;
    assert!(
        calls <= bound,
        "{calls} calls in {elapsed:?} (bound {bound})"
    );
    assert!(stats.rate_limited > 0);
    assert_eq!(limiter.stats().granted, calls);
    println!(
        "{} enriched, {} dead-lettered, {calls} calls in {elapsed:?}",
        enriched.len(),
        dead.len()
    );
}

#[test]
fn open_breaker_pauses_batches_without_burning_attempts() {
    let (m, rt) = runtime(2);
    let breaker = CircuitBreaker::builder()
        .window_size(2)
        .minimum_calls(2)
        .open_duration(Duration::from_secs(5))
        .half_open_probes(1)
        .clock(m.clock())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let p = BatchProcessor::builder(rt.background(), move |_: &u32, _| {
        // The dependency is down for its first two calls.
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            Err("down")
        } else {
            Ok(())
        }
    })
    .batch_size(5)
    .max_concurrent_batches(1)
    .circuit_breaker(breaker.clone())
    .retry(
        RetryPolicy::builder()
            .max_attempts(2)
            .base_delay(10 * MS)
            .jitter(Jitter::None)
            .build()
            .unwrap(),
    )
    .build()
    .unwrap();
    p.enqueue_all(0..5, Priority::Normal).unwrap();
    p.process_now();
    wait("breaker opens", || p.stats().breaker_holds == 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // 4.9 s of an open breaker: nothing is called, no attempt is spent.
    for _ in 0..49 {
        m.advance(100 * MS);
        std::thread::sleep(MS);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let s = p.stats();
    assert_eq!((s.pending, s.dead_letters, s.processed_ok), (5, 0, 0));
    // Past the open duration a probe goes through, the breaker closes and
    // everything finishes, including the two items that failed once.
    advance_until(&m, 100 * MS, "all processed", || {
        p.stats().processed_ok == 5
    });
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    assert_eq!(p.stats().dead_lettered, 0);
    assert!(breaker.stats().rejected >= 1);
}

#[test]
fn shutdown_returns_unprocessed_items_and_dead_letters() {
    let (_m, rt) = runtime(1);
    let p = BatchProcessor::builder(rt.background(), |x: &u32, _| {
        if *x == 0 {
            Err("permanent")
        } else {
            Ok(())
        }
    })
    .batch_size(100)
    .flush_interval(Duration::from_secs(3600))
    .retry(
        RetryPolicy::builder()
            .retry_if(|e: &&str| *e != "permanent")
            .build()
            .unwrap(),
    )
    .build()
    .unwrap();
    p.enqueue(0, Priority::Normal).unwrap();
    p.process_now();
    wait("item 0 dead", || p.dead_letter_count() == 1);
    let dead = p.dead_letters();
    assert_eq!(dead[0].reason, DeadReason::NotRetryable);
    assert_eq!(dead[0].error, "permanent");

    p.enqueue_all(1..=5, Priority::Low).unwrap();
    p.enqueue(9, Priority::Critical).unwrap();
    // Not a full batch and the flush is an hour away: nothing runs.
    let report = p.shutdown(Duration::from_secs(1));
    let items: Vec<u32> = report.unprocessed.iter().map(|(i, _)| *i).collect();
    assert_eq!(items, [9, 1, 2, 3, 4, 5]);
    assert_eq!(report.dead_letters.len(), 1);
    assert_eq!(report.still_in_batches, 0);
    assert_eq!(report.stats.returned, 6);
    let err = p.enqueue(42, Priority::High).unwrap_err();
    assert_eq!(err.reason, EnqueueRejected::ShutDown);
    assert_eq!(err.items, 42);
}

#[test]
fn high_priority_jumps_the_queue() {
    let (_m, rt) = runtime(1);
    let order: Arc<Mutex<Vec<u32>>> = Arc::default();
    let sink = order.clone();
    let p = ReEnricher::builder(rt.background(), move |x: &u32, _| {
        sink.lock().unwrap().push(*x);
        Ok::<_, String>(())
    })
    .batch_size(10)
    .no_rate_limit()
    .build()
    .unwrap();
    rt.background().pause(); // let the queue fill before anything runs
    for x in 0..5 {
        p.enqueue(x).unwrap();
    }
    p.enqueue_high(100).unwrap();
    p.process_now();
    wait("batch submitted", || p.stats().in_batches == 6);
    rt.background().resume();
    wait("all done", || p.stats().processed_ok == 6);
    assert_eq!(*order.lock().unwrap(), [100, 0, 1, 2, 3, 4]);
}

#[test]
fn full_batches_go_at_once_partial_ones_after_the_flush_interval() {
    let (m, rt) = runtime(2);
    let p = BatchProcessor::builder(rt.background(), |_: &u32, _| Ok::<_, String>(()))
        .batch_size(4)
        .flush_interval(Duration::from_secs(2))
        .build()
        .unwrap();
    p.enqueue_all(0..6, Priority::Normal).unwrap();
    wait("full batch", || p.stats().processed_ok == 4);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(p.stats().processed_ok, 4, "partial batch waits");
    m.advance(Duration::from_secs(2));
    wait("flushed", || p.stats().processed_ok == 6);
    assert_eq!(p.stats().batches_run, 2);
}

#[test]
fn capacity_hands_items_back() {
    let (_m, rt) = runtime(1);
    let p = BatchProcessor::builder(rt.background(), |_: &u32, _| Ok::<_, String>(()))
        .batch_size(100)
        .capacity(3)
        .build()
        .unwrap();
    let err = p.enqueue_all(0..5, Priority::Normal).unwrap_err();
    assert_eq!(err.reason, EnqueueRejected::Full { capacity: 3 });
    assert_eq!(err.items, [3, 4]);
    assert_eq!(p.stats().rejected, 2);
    let report = p.shutdown(Duration::ZERO);
    assert_eq!(report.unprocessed.len(), 3);
}

#[test]
fn builders_name_the_bad_field() {
    let (_m, rt) = runtime(1);
    let field = |b: tierpool::BatchProcessorBuilder<u8>| {
        b.build()
            .unwrap_err()
            .as_config()
            .unwrap()
            .field()
            .to_string()
    };
    let mk = || BatchProcessor::builder(rt.background(), |_: &u8, _| Ok::<_, String>(()));
    assert_eq!(field(mk().batch_size(0)), "batch_size");
    assert_eq!(
        field(mk().max_concurrent_batches(0)),
        "max_concurrent_batches"
    );
    assert_eq!(field(mk().flush_interval(Duration::ZERO)), "flush_interval");
    assert_eq!(field(mk().capacity(0)), "capacity");
}

#[test]
fn a_panicking_item_is_retried_then_dead_lettered_not_lost() {
    let m = ManualClock::new();
    let rt = tierpool::Runtime::builder()
        .clock(m.clock())
        .background(|t| t.workers(1).no_memory_watermark())
        .build()
        .unwrap();
    let p = BatchProcessor::builder(rt.background(), |x: &u32, ctx| {
        if *x == 1 {
            panic!("bad item on attempt {}", ctx.attempt());
        }
        Ok::<_, String>(())
    })
    .retry(
        RetryPolicy::builder()
            .max_attempts(2)
            .base_delay(MS)
            .build()
            .unwrap(),
    )
    .build()
    .unwrap();
    p.enqueue_all(0..3, Priority::Normal).unwrap();
    p.process_now();
    advance_until(&m, MS, "settled", || p.stats().pending == 0);
    let dead = p.drain_dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].item, 1);
    assert!(dead[0].error.contains("panicked: bad item on attempt 2"));
    assert_eq!(p.stats().processed_ok, 2);
    assert_eq!(p.dead_letter_count(), 0);
}
