//! Shutdown is graceful and accounted (DESIGN invariant 7): the report
//! accounts for every task that was in the runtime, never-started handles
//! resolve as cancelled (shutdown), every thread is joined, a second
//! shutdown is harmless, `Drop` shuts down, and submit racing shutdown
//! strands nothing.
//!
//! The tests in this file count the process's threads, so they take one
//! lock and run one at a time.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tierpool::{
    CancelReason, Cancelled, ManualClock, Priority, RejectReason, Runtime, TaskHandle, TaskStatus,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

type H = TaskHandle<&'static str, Cancelled>;

/// A running task that stops only when cancelled. Returns once its body
/// runs: not `wait_running`, which reports the task taken before the body
/// (and `current`) are reached; a shutdown in that gap would cancel it "at
/// start" instead of "running", and the reports below tell those apart.
fn blocker(rt_tier: &tierpool::Tier) -> H {
    let (entered_tx, entered) = mpsc::channel();
    let h = rt_tier
        .task(move |ctx| {
            let _ = entered_tx.send(());
            ctx.sleep(Duration::from_secs(3600))?;
            Ok("blocker woke")
        })
        .no_timeout()
        .submit()
        .unwrap();
    entered.recv_timeout(WAIT).expect("blocker body running");
    h
}

#[test]
fn report_accounts_for_every_task_and_never_started_resolve_as_shutdown() {
    let _s = serial();
    let baseline = thread_count();
    let rt = Runtime::builder()
        .ui(|t| t.workers(3).cancel_grace(Duration::from_millis(200)))
        .background(|t| {
            t.workers(1)
                .no_memory_watermark()
                .cancel_grace(Duration::from_millis(200))
        })
        // In-flight limit 1, held by a blocker: the probe below is refused
        // (tier limit) until shutdown begins, so it adds no task.
        .realtime(|t| t.workers(2).reserved_slots(1).max_in_flight(1))
        .build()
        .unwrap();

    // Finished before shutdown: not part of the report.
    for _ in 0..5 {
        rt.ui()
            .submit(Priority::Normal, |_| Ok::<_, Cancelled>("early"))
            .unwrap()
            .join()
            .unwrap();
    }

    let mut handles: Vec<(H, &'static str)> = Vec::new();
    // ui: two cooperative blockers, one task that finishes once shutdown
    // has begun, then (paused) four quick queued tasks.
    handles.push((blocker(rt.ui()), "ui blocker"));
    handles.push((blocker(rt.ui()), "ui blocker"));
    handles.push((blocker(rt.realtime()), "realtime blocker"));
    let release = Gate::new();
    let r2 = release.clone();
    let finisher = rt
        .ui()
        .task(move |_| {
            r2.wait();
            Ok("finisher")
        })
        .no_timeout()
        .submit()
        .unwrap();
    // Not `wait_running`: its body must be at the gate (it counts as
    // completed during the drain).
    release.wait_entered(1);
    handles.push((finisher, "ui finisher"));
    rt.ui().pause();
    for _ in 0..4 {
        let h = rt
            .ui()
            .submit(Priority::Low, |_| Ok::<_, Cancelled>("quick"))
            .unwrap();
        handles.push((h, "ui queued"));
    }
    // background: one task that ignores cancellation (a zombie at
    // shutdown), then (paused) two queued tasks its only worker never
    // reaches.
    let stuck = Gate::new();
    let s2 = stuck.clone();
    let ignorer = rt
        .background()
        .task(move |_| {
            s2.wait();
            Ok("ignorer")
        })
        .no_timeout()
        .submit()
        .unwrap();
    // Not `wait_running`: a body skipped (cancelled by the shutdown before
    // it ran) can never become a zombie.
    stuck.wait_entered(1);
    let ignorer_id = ignorer.id();
    handles.push((ignorer, "bg ignorer"));
    rt.background().pause();
    for _ in 0..2 {
        let h = rt
            .background()
            .submit(Priority::High, |_| Ok::<_, Cancelled>("bg queued"))
            .unwrap();
        handles.push((h, "bg queued"));
    }
    let in_runtime = handles.len() as u64;

    let report = std::thread::scope(|s| {
        // Once shutdown has begun (submissions are refused), let the
        // finisher complete: it is then counted as completed during drain.
        s.spawn(|| {
            wait_until("shutdown began", WAIT, || {
                rt.realtime()
                    .submit(Priority::Normal, |_| Ok::<_, Cancelled>(()))
                    .is_err_and(|e| *e.reason() == RejectReason::ShuttingDown)
            });
            release.open();
        });
        rt.shutdown(Duration::from_millis(300))
    });
    println!("{report}");

    // Every task that was in the runtime is in exactly one bucket.
    let accounted = report.completed_during_drain
        + report.cancelled_running.len() as u64
        + report.cancelled_at_start as u64
        + report.never_started.len() as u64;
    assert_eq!(accounted, in_runtime, "{report:?}");
    assert!(!report.drained_in_time);
    assert_eq!(report.zombies, vec![ignorer_id]);
    assert!(report.completed_during_drain >= 1, "the finisher");
    // The two background tasks never had a worker.
    let bg = report
        .tiers
        .iter()
        .find(|t| t.name == "background")
        .unwrap();
    assert_eq!(bg.never_started, 2);
    assert_eq!(bg.zombies, 1);

    // Each handle agrees with the report.
    let never: HashSet<_> = report.never_started.iter().copied().collect();
    let cancelled: HashSet<_> = report.cancelled_running.iter().copied().collect();
    let mut completed = 0;
    for (h, what) in handles {
        let id = h.id();
        match h.join() {
            Ok(_) => completed += 1,
            Err(e) => {
                assert_eq!(e.cancel_reason(), Some(CancelReason::Shutdown), "{what}");
                assert!(
                    never.contains(&id) || cancelled.contains(&id),
                    "{what} {id} cancelled but not in the report"
                );
            }
        }
    }
    assert_eq!(completed, report.completed_during_drain);
    for t in rt.stats().tiers {
        assert_eq!(t.outcomes(), t.submitted, "{}", t.name);
    }

    // The zombie thread was detached; once its task returns it exits.
    assert_eq!(report.threads_detached, 1);
    stuck.open();
    drop(rt);
    wait_threads_back_to(baseline);
}

/// Arithmetic-overflow panics on tierpool's own threads (the hook sees
/// every panic, tasks' too, so only overflows are counted).
static WORKER_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_worker_overflow_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_worker = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tierpool-"));
            if on_worker && info.to_string().contains("overflow") {
                WORKER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// Regression: a thread detached as a zombie at shutdown used to
/// underflow the tier's zombie count when its task finally returned
/// (a panic in a worker thread, and a second one while unwinding: abort).
#[test]
fn zombie_detached_at_shutdown_returning_later_exits_cleanly() {
    let _s = serial();
    count_worker_overflow_panics();
    let baseline = thread_count();
    // No cancel grace anywhere: shutdown itself (not the watchdog) finds
    // the task still running and declares it a zombie.
    let rt = Runtime::builder()
        .ui(|t| t.cancel_grace(Duration::ZERO))
        .realtime(|t| t.cancel_grace(Duration::ZERO))
        .background(|t| {
            t.workers(1)
                .no_memory_watermark()
                .cancel_grace(Duration::ZERO)
        })
        .build()
        .unwrap();
    let gate = Gate::new();
    let g2 = gate.clone();
    let returned = Arc::new(AtomicBool::new(false));
    let r2 = returned.clone();
    let h = rt
        .background()
        .task(move |_| {
            g2.wait();
            r2.store(true, Ordering::SeqCst);
            Ok::<_, Cancelled>(())
        })
        .no_timeout()
        .submit()
        .unwrap();
    // Not `wait_running`: a body skipped (cancelled by the shutdown before
    // it ran) can never become a zombie.
    gate.wait_entered(1);
    let report = rt.shutdown(Duration::ZERO);
    assert_eq!(report.zombies, vec![h.id()]);
    assert_eq!(
        h.join().unwrap_err().cancel_reason(),
        Some(CancelReason::Shutdown)
    );
    let panics_before = WORKER_PANICS.load(Ordering::SeqCst);
    gate.open();
    wait_until("zombie task returned", WAIT, || {
        returned.load(Ordering::SeqCst)
    });
    // The thread retires without panicking.
    wait_threads_back_to(baseline);
    assert_eq!(
        WORKER_PANICS.load(Ordering::SeqCst),
        panics_before,
        "a tierpool thread panicked while its zombie task returned"
    );
    let s = rt.background().stats();
    assert_eq!(s.zombie_threads, 0);
    assert_eq!(s.late_results, 1);
}

#[test]
fn no_threads_leak_after_shutdown() {
    let _s = serial();
    let baseline = thread_count();
    let rt = Runtime::builder().build().unwrap();
    // Make every tier scale up a little.
    let hs: Vec<_> = (0..200)
        .map(|i| {
            let tier = rt.tiers().nth(i % 3).unwrap();
            tier.submit(Priority::Normal, move |_| {
                std::thread::sleep(Duration::from_micros(200));
                Ok::<_, Cancelled>(i)
            })
            .unwrap()
        })
        .collect();
    assert!(thread_count() > baseline);
    for h in hs {
        h.join().unwrap();
    }
    let started: u64 = rt.stats().tiers.iter().map(|t| t.threads_started).sum();
    let report = rt.shutdown(Duration::from_secs(5));
    assert!(report.drained_in_time);
    assert!(report.never_started.is_empty());
    assert_eq!(report.threads_detached, 0);
    assert!(report.threads_joined as u64 <= started);
    wait_threads_back_to(baseline);
    drop(rt);
    wait_threads_back_to(baseline);
}

#[test]
fn second_shutdown_is_harmless_and_returns_the_same_report() {
    let _s = serial();
    let rt = Runtime::builder().build().unwrap();
    rt.ui().pause();
    let h = rt
        .ui()
        .submit(Priority::Normal, |_| Ok::<_, Cancelled>(1))
        .unwrap();
    let first = rt.shutdown(Duration::ZERO);
    assert!(rt.is_shut_down());
    assert_eq!(first.never_started, vec![h.id()]);
    let second = rt.shutdown(Duration::from_secs(5));
    assert_eq!(first, second);
    let stats = rt.stats();
    assert_eq!(stats.tier("ui").unwrap().cancelled.shutdown, 1);
    assert_eq!(
        h.join().unwrap_err().cancel_reason(),
        Some(CancelReason::Shutdown)
    );
}

#[test]
fn drop_shuts_down_and_cloned_tiers_then_reject() {
    let _s = serial();
    let baseline = thread_count();
    let rt = Runtime::builder()
        .drop_grace(Duration::from_millis(100))
        .build()
        .unwrap();
    let tier = rt.realtime().clone();
    tier.pause();
    let queued: Vec<_> = (0..3)
        .map(|_| {
            tier.submit(Priority::Normal, |_| Ok::<_, Cancelled>(()))
                .unwrap()
        })
        .collect();
    let running = blocker(rt.ui());
    drop(rt);
    // Drop drained: the queued work ran in the grace (shutdown overrides
    // pause); the blocker was cancelled.
    for h in queued {
        assert_eq!(h.status(), TaskStatus::Completed);
    }
    assert_eq!(
        running.join().unwrap_err().cancel_reason(),
        Some(CancelReason::Shutdown)
    );
    let err = tier
        .submit(Priority::Critical, |_| Ok::<_, Cancelled>(()))
        .unwrap_err();
    assert_eq!(*err.reason(), RejectReason::ShuttingDown);
    let _closure_back = err.into_inner();
    assert_eq!(tier.stats().rejected.shutting_down, 1);
    drop(tier);
    wait_threads_back_to(baseline);
}

#[test]
fn submit_racing_shutdown_strands_nothing() {
    let _s = serial();
    let _guard = HangGuard::new("submit racing shutdown", Duration::from_secs(60));
    let rt = Runtime::builder()
        .ui(|t| t.workers(2).max_in_flight(None).per_user_limit(None))
        .realtime(|t| t.workers(2).reserved_slots(1))
        .build()
        .unwrap();
    let accepted = Mutex::new(Vec::new());
    let rejected = std::sync::atomic::AtomicU64::new(0);
    let report = std::thread::scope(|s| {
        for k in 0..4 {
            let (rt, accepted, rejected) = (&rt, &accepted, &rejected);
            s.spawn(move || loop {
                let tier = if k % 2 == 0 { rt.ui() } else { rt.realtime() };
                match tier.submit(Priority::from(k as u8 * 2), |_| Ok::<_, Cancelled>(())) {
                    Ok(h) => accepted.lock().unwrap().push(h),
                    Err(e) if *e.reason() == RejectReason::ShuttingDown => return,
                    Err(_) => {
                        rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // Shut down once the submitters are really submitting (a fixed
        // sleep was not enough on a loaded machine: none had run yet).
        let since = std::time::Instant::now();
        while accepted.lock().unwrap().len() < 16 {
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "no submitter got going"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        rt.shutdown(Duration::from_millis(20))
    });
    let accepted = accepted.into_inner().unwrap();
    assert!(!accepted.is_empty());
    let never: HashSet<_> = report.never_started.iter().copied().collect();
    for h in accepted {
        let id = h.id();
        // Every accepted task has an outcome already: nothing stranded.
        let r = h.try_result().expect("accepted task without an outcome");
        if let Err(e) = r {
            assert_eq!(e.cancel_reason(), Some(CancelReason::Shutdown));
        } else {
            assert!(!never.contains(&id));
        }
    }
    for t in rt.stats().tiers {
        assert_eq!(t.outcomes(), t.submitted, "{}", t.name);
        // Only ui and realtime had submitters.
        assert!(t.rejected.shutting_down >= 1 || !matches!(t.name, "ui" | "realtime"));
    }
}

/// Shutdown report arithmetic over random shapes: with every worker held
/// by a cooperative blocker and the rest queued behind a pause, the report
/// is exact.
#[test]
fn report_arithmetic_is_exact_for_random_shapes() {
    let _s = serial();
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    let shape = (1usize..=3, 0usize..20, 0usize..5);
    runner
        .run(&shape, |(workers, queued, done_before)| {
            let m = ManualClock::new();
            let rt = Runtime::builder()
                .clock(m.clock())
                .background(|t| t.workers(workers).no_memory_watermark())
                .build()
                .unwrap();
            let bg = rt.background();
            for _ in 0..done_before {
                bg.submit(Priority::Normal, |_| Ok::<_, Cancelled>("x"))
                    .unwrap()
                    .join()
                    .unwrap();
            }
            let blockers: Vec<_> = (0..workers).map(|_| blocker(bg)).collect();
            bg.pause();
            let q: Vec<_> = (0..queued)
                .map(|i| {
                    bg.submit(Priority::from(i as u8), |_| Ok::<_, Cancelled>("q"))
                        .unwrap()
                })
                .collect();
            let r = rt.shutdown(Duration::ZERO);
            prop_assert_eq!(r.completed_during_drain, 0);
            prop_assert_eq!(r.cancelled_running.len(), workers);
            prop_assert_eq!(r.cancelled_at_start, 0);
            prop_assert_eq!(r.never_started.len(), queued);
            prop_assert!(r.zombies.is_empty());
            let mut ids: Vec<_> = q.iter().map(|h| h.id()).collect();
            let mut never = r.never_started.clone();
            ids.sort();
            never.sort();
            prop_assert_eq!(ids, never);
            for h in blockers.into_iter().chain(q) {
                prop_assert_eq!(
                    h.join().unwrap_err().cancel_reason(),
                    Some(CancelReason::Shutdown)
                );
            }
            let s = bg.stats();
            prop_assert_eq!(s.submitted, (done_before + workers + queued) as u64);
            prop_assert_eq!(s.outcomes(), s.submitted);
            prop_assert_eq!(s.cancelled.shutdown, (workers + queued) as u64);
            Ok(())
        })
        .unwrap();
}
