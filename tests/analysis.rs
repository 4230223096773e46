//! The analysis pool: scaling, the queue limit, priority, the cache,
//! de-duplication, retries and CPU batches.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{wait_until, LONG};
use tierpool::{
    Jitter, ManualClock, Priority, RejectReason, RetryPolicy, Runtime, Source, TaskStatus,
};

fn manual_rt(m: &ManualClock) -> Runtime {
    Runtime::builder().clock(m.clock()).build().unwrap()
}

/// `manual_rt` with the analysis pool fixed at one worker.
fn manual_rt_one_worker(m: &ManualClock) -> Runtime {
    Runtime::builder()
        .clock(m.clock())
        .analysis(|t| t.workers(1))
        .build()
        .unwrap()
}

/// Up to `max_attempts` attempts, 1 s apart, no jitter.
fn retry_every_second(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(max_attempts)
        .base_delay(Duration::from_secs(1))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

#[test]
fn scales_up_under_a_burst_and_down_after_keep_alive() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .analysis(|t| t.keep_alive(Duration::from_secs(60)))
        .build()
        .unwrap();
    let a = rt.analysis();
    assert_eq!(a.stats().workers, 1);
    let gate = Arc::new(Barrier::new(9));
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let g = gate.clone();
            a.request("burst", i, move |_| {
                if i < 8 {
                    g.wait();
                }
                Ok::<_, String>(i)
            })
            .no_cache()
            .submit()
            .unwrap()
        })
        .collect();
    wait_until("8 workers", LONG, || a.stats().workers == 8);
    gate.wait();
    for h in handles {
        h.join().unwrap();
    }
    let s = a.stats();
    assert_eq!((s.workers, s.max_workers), (8, 8), "capped at the maximum");
    assert_eq!(s.scale_ups, 7);
    // Idle, but the keep-alive has not passed on the manual clock.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(a.stats().workers, 8);
    m.advance(Duration::from_secs(61));
    wait_until("back to 1 worker", LONG, || a.stats().workers == 1);
    assert_eq!(a.stats().scale_downs, 7);
}

#[test]
fn the_101st_queued_job_is_rejected_and_handed_back() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let a = rt.analysis();
    a.tier().pause();
    let hs: Vec<_> = (0..100)
        .map(|i| {
            a.request("q", i, |_| Ok::<_, String>(()))
                .no_cache()
                .submit()
                .unwrap()
        })
        .collect();
    let err = a
        .request("q", 100, |_| Ok::<_, String>(()))
        .no_cache()
        .submit()
        .unwrap_err();
    assert_eq!(err.reason(), &RejectReason::QueueFull { capacity: 100 });
    let f = err.into_inner();
    a.tier().resume();
    for h in hs {
        h.join().unwrap();
    }
    // The job came back whole: it can be submitted again and runs.
    a.request("q", 100, f)
        .no_cache()
        .submit()
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(a.stats().kind("q").unwrap().rejected, 1);
}

#[test]
fn higher_priority_runs_first() {
    let m = ManualClock::new();
    let rt = manual_rt_one_worker(&m);
    let a = rt.analysis();
    a.tier().pause();
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut hs = Vec::new();
    for (i, p) in [
        Priority::Low,
        Priority::Normal,
        Priority::Critical,
        Priority::High,
    ]
    .into_iter()
    .enumerate()
    {
        let o = order.clone();
        hs.push(
            a.request("prio", i, move |_| {
                o.lock().push(p);
                Ok::<_, String>(())
            })
            .priority(p)
            .no_cache()
            .submit()
            .unwrap(),
        );
    }
    a.tier().resume();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(
        *order.lock(),
        vec![
            Priority::Critical,
            Priority::High,
            Priority::Normal,
            Priority::Low
        ]
    );
}

#[test]
fn a_cache_hit_does_not_run_the_closure_and_ttl_expiry_recomputes() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let a = rt.analysis();
    let calls = Arc::new(AtomicUsize::new(0));
    let run = |calls: &Arc<AtomicUsize>| {
        let c = calls.clone();
        a.request("character_intel", 42, move |_| {
            Ok::<_, String>(c.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .ttl(Duration::from_secs(60))
        .submit()
        .unwrap()
    };
    assert_eq!(run(&calls).join().unwrap(), 1);
    let hit = run(&calls);
    assert_eq!(hit.source(), Source::Cache);
    assert_eq!(hit.join().unwrap(), 1);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a hit does not run the closure"
    );
    m.advance(Duration::from_secs(61));
    let stale = run(&calls);
    assert_eq!(stale.source(), Source::Computed);
    assert_eq!(stale.join().unwrap(), 2, "a stale entry is recomputed");
    let s = a.stats();
    let k = s.kind("character_intel").unwrap();
    assert_eq!(
        (k.requests, k.cache_hits, k.cache_misses, k.runs),
        (3, 1, 2, 2)
    );
    assert!(a.invalidate("character_intel:42"));
    assert!(!a.invalidate("character_intel:42"));
}

#[test]
fn concurrent_identical_requests_run_once() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let a = rt.analysis();
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Barrier::new(2));
    let first = {
        let (c, r) = (calls.clone(), release.clone());
        a.analyze("intel", 7, move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            r.wait();
            Ok::<_, String>("seven".to_string())
        })
        .unwrap()
    };
    wait_until("first running", LONG, || {
        first.status() == TaskStatus::Running
    });
    let joiners: Vec<_> = (0..10)
        .map(|_| {
            let c = calls.clone();
            a.analyze("intel", 7, move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>("other".to_string())
            })
            .unwrap()
        })
        .collect();
    assert!(joiners.iter().all(|h| h.source() == Source::Joined));
    release.wait();
    for h in joiners {
        assert_eq!(h.join().unwrap(), "seven");
    }
    assert_eq!(first.join().unwrap(), "seven");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(a.stats().kind("intel").unwrap().joined, 10);
}

#[test]
fn failures_are_not_cached() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let a = rt.analysis();
    let no_retry = RetryPolicy::builder().max_attempts(1).build().unwrap();
    let e = a
        .request("flaky", 1, |_| Err::<u32, _>("boom".to_string()))
        .retry(no_retry.clone())
        .submit()
        .unwrap()
        .join()
        .unwrap_err();
    assert!(e.is_failed());
    let ok = a
        .request("flaky", 1, |_| Ok::<u32, String>(5))
        .retry(no_retry)
        .submit()
        .unwrap();
    assert_eq!(ok.source(), Source::Computed);
    assert_eq!(ok.join().unwrap(), 5);
}

#[test]
fn retries_follow_the_backoff_schedule_without_holding_a_worker() {
    let m = ManualClock::new();
    let rt = manual_rt_one_worker(&m);
    let a = rt.analysis();
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .base_delay(Duration::from_secs(1))
        .factor(2.0)
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let h = a
        .request("retry", 1, move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 {
                Err(format!("attempt {n} failed"))
            } else {
                Ok(n)
            }
        })
        .retry(policy)
        .submit()
        .unwrap();
    wait_until("first attempt", LONG, || calls.load(Ordering::SeqCst) == 1);
    // While the retry waits, the only worker is free for other work.
    let other = a
        .request("other", 1, |_| Ok::<_, String>(1))
        .no_cache()
        .submit()
        .unwrap();
    assert_eq!(other.join().unwrap(), 1);
    m.advance(Duration::from_millis(999));
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "not before the 1 s backoff"
    );
    m.advance(Duration::from_millis(1));
    wait_until("second attempt", LONG, || calls.load(Ordering::SeqCst) == 2);
    // The backoff counts from when the worker sees the failure: wait until
    // it has scheduled the retry (its timer is the watchdog's one entry)
    // before moving time, or the 2 s start late and the test hangs.
    wait_until("second retry scheduled", LONG, || {
        rt.stats().watchdog_pending == 1
    });
    m.advance(Duration::from_millis(1999));
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "not before the 2 s backoff"
    );
    m.advance(Duration::from_millis(1));
    assert_eq!(h.join().unwrap(), 3);
    let k = a.stats();
    let k = k.kind("retry").unwrap();
    assert_eq!((k.runs, k.retried), (3, 2));
}

#[test]
fn exhausted_retries_report_attempts() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let a = rt.analysis();
    let policy = retry_every_second(2);
    let h = a
        .request("doomed", 1, |_| Err::<(), _>("no".to_string()))
        .retry(policy)
        .submit()
        .unwrap();
    wait_until("first attempt", LONG, || h.attempts() == 1);
    wait_until("retry scheduled", LONG, || {
        rt.analysis().tier().stats().retries == 1
    });
    m.advance(Duration::from_secs(1));
    wait_until("second attempt", LONG, || h.attempts() == 2);
    assert_eq!(h.attempts(), 2);
    assert_eq!(h.join().unwrap_err().into_failed().unwrap(), "no");
    assert_eq!(a.stats().kind("doomed").unwrap().failed_after_retries, 1);
}

#[test]
fn batch_results_come_back_in_input_order() {
    let rt = Runtime::builder().cpu_threads(2).build().unwrap();
    let items: Vec<u64> = (0..1000).collect();
    let out = rt
        .analysis()
        .analyze_batch("square", items, |n| Ok::<_, String>(n * n))
        .join();
    assert_eq!(out.len(), 1000);
    for (i, r) in out.into_iter().enumerate() {
        assert_eq!(r.unwrap(), (i * i) as u64);
    }
}

#[test]
fn a_cancelled_batch_stops_before_the_remaining_items() {
    let rt = Runtime::builder().cpu_threads(1).build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Barrier::new(2));
    let go = Arc::new(Barrier::new(2));
    let (r, s, g) = (ran.clone(), started.clone(), go.clone());
    let h = rt
        .analysis()
        .analyze_batch("slow", (0..100).collect::<Vec<u32>>(), move |i| {
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                s.wait();
                g.wait();
            }
            Ok::<_, String>(i)
        });
    started.wait();
    assert!(h.cancel());
    go.wait();
    let out = h.join();
    let executed = ran.load(Ordering::SeqCst);
    assert!(executed < 100, "ran {executed} items");
    let skipped = out
        .iter()
        .filter(|r| matches!(r, Err(e) if e.is_cancelled()))
        .count();
    assert_eq!(
        executed + skipped,
        100,
        "every item either ran or was skipped"
    );
}

#[test]
fn a_timed_out_batch_stops_early() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .cpu_threads(1)
        .build()
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(Barrier::new(2));
    let (r, f) = (ran.clone(), first.clone());
    let clock = m.clone();
    let h = rt
        .analysis()
        .batch("slow", (0..50).collect::<Vec<u32>>(), move |i| {
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                f.wait();
                // Time passes while the first item runs.
                clock.advance(Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok::<_, String>(i)
        })
        .timeout(Duration::from_secs(5))
        .submit();
    first.wait();
    let out = h.join();
    assert!(ran.load(Ordering::SeqCst) < 50);
    assert!(out.iter().any(|r| matches!(r, Err(e) if e.is_timeout())));
}

#[test]
fn one_panicking_item_fails_only_that_item() {
    let rt = Runtime::builder().build().unwrap();
    let out = rt
        .analysis()
        .analyze_batch("p", (0..10).collect::<Vec<u32>>(), |i| {
            if i == 3 {
                panic!("bad item {i}");
            }
            Ok::<_, String>(i)
        })
        .join();
    for (i, r) in out.iter().enumerate() {
        if i == 3 {
            assert!(r.as_ref().unwrap_err().is_panic());
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u32);
        }
    }
}

/// A retried attempt's run deadline counts from when that attempt starts,
/// even when its worker goes straight to it from another task. A worker
/// going from task to task reuses the previous task's end as the next
/// start (one clock read saved per task); the core keeps only the first
/// submission time, so for a retry the worker must read the clock afresh,
/// or the attempt would start before it was queued again and lose part of
/// its timeout. Set up so the reuse is stale: the only worker finishes
/// task `q` at t0, and the value `q` returns is dropped on the worker
/// after that end was read (its handle is gone): its `Drop` moves the
/// clock 3 s on and waits until the watchdog has queued the retry (the
/// retry's timer, due at t0 + 1 s, fires before `marker`'s queue budget,
/// due at t0 + 1.5 s, which the drop waits to see expire). The retry then
/// runs next with the full 5 s left, not 2 s.
#[test]
fn a_retried_attempt_gets_its_full_timeout_after_a_busy_worker() {
    use common::Gate;
    use std::convert::Infallible;
    use std::sync::mpsc;
    use std::time::Instant;
    use tierpool::{CancelReason, TaskHandle};

    struct MovesTimeOnDrop {
        m: ManualClock,
        marker: Arc<TaskHandle<(), Infallible>>,
    }
    impl Drop for MovesTimeOnDrop {
        fn drop(&mut self) {
            self.m.advance(Duration::from_secs(3));
            wait_until(
                "the retry queued (the marker expired after it)",
                LONG,
                || self.marker.status() == TaskStatus::Cancelled(CancelReason::QueueExpired),
            );
        }
    }

    let m = ManualClock::new();
    let rt = manual_rt_one_worker(&m);
    let a = rt.analysis();
    let policy = retry_every_second(2);
    let (seen_tx, seen) = mpsc::channel::<(Option<Instant>, Instant)>();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let retried = a
        .request("retried", 1, move |ctx| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err("first attempt fails".to_string());
            }
            let _ = seen_tx.send((ctx.deadline(), ctx.clock().now()));
            Ok(())
        })
        .retry(policy)
        .timeout(Duration::from_secs(5))
        .no_cache()
        .submit()
        .unwrap();
    wait_until("retry scheduled", LONG, || a.tier().stats().retries == 1);

    // Hold the only worker while the queue is set up behind it.
    let gate = Gate::new();
    let g = gate.clone();
    let holder = a
        .tier()
        .submit(Priority::Normal, move |_| {
            g.wait();
            Ok::<_, Infallible>(())
        })
        .unwrap();
    gate.wait_entered(1);
    let marker = Arc::new(
        a.tier()
            .task(|_| Ok::<_, Infallible>(()))
            .priority(Priority::Low)
            .queue_budget(Duration::from_millis(1500))
            .submit()
            .unwrap(),
    );
    let mover = MovesTimeOnDrop {
        m: m.clone(),
        marker: marker.clone(),
    };
    drop(
        a.tier()
            .submit(Priority::Normal, move |_| Ok::<_, Infallible>(mover))
            .unwrap(),
    );
    gate.open();

    let (deadline, started) = seen.recv_timeout(LONG).expect("the retried attempt ran");
    assert_eq!(
        deadline.map(|d| d.saturating_duration_since(started)),
        Some(Duration::from_secs(5)),
        "the retried attempt's timeout counts from its own start"
    );
    retried.join().unwrap();
    holder.join().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
