//! Timeouts, warnings, queue budgets, caller cancellation and zombies
//! (DESIGN invariants 1, 3 and 4), driven by the manual clock.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use tierpool::{CancelReason, Cancelled, ManualClock, Priority, Runtime, TaskHandle, TaskStatus};

fn manual_rt(m: &ManualClock) -> Runtime {
    Runtime::builder()
        .clock(m.clock())
        .background(|t| {
            t.workers(1)
                .no_memory_watermark()
                .timeout(Duration::from_secs(10))
                .cancel_grace(Duration::from_secs(1))
        })
        .build()
        .unwrap()
}

#[test]
fn a_timeout_cancels_a_cooperative_task() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let far = m.now() + Duration::from_secs(3600);
    let (tx, rx) = mpsc::channel();
    let (entered_tx, entered) = mpsc::channel();
    let h = rt
        .background()
        .task(move |ctx| {
            entered_tx.send(()).unwrap();
            let r = ctx.sleep_until(far);
            tx.send((ctx.cancel_reason(), ctx.remaining())).unwrap();
            r.map(|_| "slept")
        })
        .timeout(Duration::from_secs(5))
        .submit()
        .unwrap();
    // Not `wait_running`: the body must be running, not just the task.
    entered.recv_timeout(WAIT).unwrap();
    m.advance(Duration::from_secs(4));
    assert_eq!(h.status(), TaskStatus::Running, "not yet at the deadline");
    m.advance(Duration::from_secs(1));
    let e = h.join().unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    let (reason, remaining) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(reason, Some(CancelReason::Timeout));
    assert_eq!(remaining, Some(Duration::ZERO));
    let s = &assert_quiescent(&rt)[1];
    assert_eq!(s.cancelled.timeout, 1);
    assert_eq!(s.zombies, 0, "it returned within the grace");
}

/// Regression: a task woken by its cancelled token returns its
/// `Err(Cancelled)` at once; that used to race the canceller for the slot
/// and sometimes won, so the outcome was "failed" instead of "cancelled".
#[test]
fn cancelled_task_returning_its_cancelled_error_is_cancelled_not_failed() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let far = m.now() + Duration::from_secs(3600);
    for round in 0..40 {
        let by_timeout = round % 2 == 0;
        let (entered_tx, entered) = mpsc::channel();
        let h = rt
            .background()
            .task(move |ctx| {
                let _ = entered_tx.send(());
                ctx.sleep_until(far)
            })
            .timeout(Duration::from_secs(1))
            .submit()
            .unwrap();
        // Not `wait_running`: the race under test needs the body asleep on
        // its token (a task cancelled before its body runs skips it).
        entered.recv_timeout(WAIT).unwrap();
        if by_timeout {
            m.advance(Duration::from_secs(1));
        } else {
            assert!(h.cancel());
        }
        let want = if by_timeout {
            CancelReason::Timeout
        } else {
            CancelReason::Caller
        };
        assert_eq!(h.join().unwrap_err().cancel_reason(), Some(want));
    }
    let s = &assert_quiescent(&rt)[1];
    assert_eq!(s.failed, 0);
    assert_eq!(s.cancelled.timeout + s.cancelled.caller, 40);
}

#[test]
fn join_returns_by_the_deadline_when_the_task_ignores_cancellation() {
    // Real time: the invariant is about the wall clock.
    let rt = Runtime::builder()
        .realtime(|t| {
            t.workers(2)
                .reserved_slots(1)
                .warn_after(None)
                .cancel_grace(Duration::from_secs(30))
        })
        .build()
        .unwrap();
    let gate = Gate::new();
    let g2 = gate.clone();
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let h = rt
        .realtime()
        .task(move |_| {
            g2.wait(); // never looks at its token
            Ok::<_, Cancelled>("too late")
        })
        .timeout(timeout)
        .submit()
        .unwrap();
    let e = h.join().unwrap_err();
    let took = started.elapsed();
    assert!(e.is_timeout());
    assert!(took >= timeout, "returned early: {took:?}");
    // Generous margin for a loaded 2-core machine.
    assert!(took < timeout + Duration::from_secs(3), "took {took:?}");
    gate.open();
    let s = &assert_quiescent(&rt)[2];
    assert_eq!(s.late_results, 1, "the late value is dropped and counted");
}

#[test]
fn zombie_is_declared_replaced_and_retires_when_it_returns() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let gate = Gate::new();
    let g2 = gate.clone();
    let h = rt
        .background()
        .task(move |_| {
            g2.wait();
            Ok::<_, Cancelled>("late")
        })
        .timeout(Duration::from_secs(2))
        .submit()
        .unwrap();
    // Not `wait_running`: a body skipped (timed out before it ran) can
    // never become a zombie.
    gate.wait_entered(1);
    m.advance(Duration::from_secs(2));
    assert!(h.join().unwrap_err().is_timeout());
    // Exactly one grace later (measured from the timeout) it is a zombie.
    m.advance(Duration::from_secs(1));
    wait_until("zombie declared", WAIT, || {
        rt.background().stats().zombie_threads == 1
    });
    let s = rt.background().stats();
    assert_eq!(s.zombies, 1);
    assert_eq!(s.workers, 1, "capacity kept by a replacement");
    assert_eq!(s.threads_started, 2);
    assert_eq!(s.running, 0, "a zombie is not counted as running");

    // The tier keeps serving on the replacement.
    let ok = rt
        .background()
        .submit(Priority::Normal, |_| Ok::<_, Cancelled>(7))
        .unwrap();
    assert_eq!(ok.join().unwrap(), 7);

    // The zombie returns: its thread retires, the late result is counted.
    gate.open();
    wait_until("zombie retired", WAIT, || {
        rt.background().stats().zombie_threads == 0
    });
    let s = &assert_quiescent(&rt)[1];
    assert_eq!(s.late_results, 1);
    assert_eq!(s.workers, 1);
    assert_eq!(s.completed, 1);
    assert_eq!(s.cancelled.timeout, 1);
}

/// Regression for the flaky `smoke::timeout_ignored`: the zombie deadline
/// was taken from the clock *after* the timeout was settled, so a caller
/// that saw the timeout and advanced time at once pushed it later.
#[test]
fn zombie_deadline_counts_from_the_timeout_not_from_when_the_caller_saw_it() {
    for i in 0..10 {
        let m = ManualClock::new();
        let start = m.now();
        let rt = manual_rt(&m);
        let gate = Gate::new();
        let g2 = gate.clone();
        let h = rt
            .background()
            .task(move |_| {
                g2.wait();
                Ok::<_, Cancelled>(())
            })
            .timeout(Duration::from_secs(1))
            .submit()
            .unwrap();
        // Not `wait_running`: a body skipped (timed out before it ran) can
        // never become a zombie. This was the CI failure: under load the
        // timeout landed between "running" and the body's start.
        gate.wait_entered(1);
        m.advance(Duration::from_secs(1));
        assert!(h.join().unwrap_err().is_timeout());
        // The grace, and no more. Not `wait_until` below: on failure this
        // prints the tier's state.
        m.advance(Duration::from_secs(1));
        let end = std::time::Instant::now() + WAIT;
        while rt.background().stats().zombies != 1 {
            assert!(
                std::time::Instant::now() < end,
                "iteration {i}: no zombie {WAIT:?} after one grace; clock at {:?} from the start; \
                 running {}; stats:\n{}",
                m.now() - start,
                rt.background().stats().running,
                rt.stats()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        gate.open();
    }
}

#[test]
fn zombie_replacements_are_bounded() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .background(|t| {
            t.workers(2)
                .no_memory_watermark()
                .max_zombie_replacements(1)
                .cancel_grace(Duration::from_secs(1))
        })
        .build()
        .unwrap();
    let gate = Gate::new();
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let g = gate.clone();
            rt.background()
                .task(move |_| {
                    g.wait();
                    Ok::<_, Cancelled>(())
                })
                .timeout(Duration::from_secs(1))
                .submit()
                .unwrap()
        })
        .collect();
    gate.wait_entered(2);
    m.advance(Duration::from_secs(1));
    for h in hs {
        assert!(h.join().unwrap_err().is_timeout());
    }
    m.advance(Duration::from_secs(1));
    wait_until("two zombies", WAIT, || {
        rt.background().stats().zombie_threads == 2
    });
    let s = rt.background().stats();
    assert_eq!(s.threads_started, 3, "only one replacement");
    assert_eq!(s.workers, 1);
    gate.open();
    wait_until("zombies retired", WAIT, || {
        rt.background().stats().zombie_threads == 0
    });
    assert_quiescent(&rt);
}

#[test]
fn warn_after_is_counted_before_the_timeout() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let far = m.now() + Duration::from_secs(3600);
    let h = rt
        .background()
        .task(move |ctx| ctx.sleep_until(far))
        .warn_after(Duration::from_secs(1))
        .timeout(Duration::from_secs(3))
        .submit()
        .unwrap();
    wait_running(&h);
    m.advance(Duration::from_secs(1));
    wait_until("warned", WAIT, || rt.background().stats().warned == 1);
    assert_eq!(h.status(), TaskStatus::Running);
    m.advance(Duration::from_secs(2));
    assert!(h.join().unwrap_err().is_timeout());
    assert_eq!(assert_quiescent(&rt)[1].warned, 1);
}

#[test]
fn queue_budget_expires_a_task_that_never_started() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let bg = rt.background();
    bg.pause();
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = ran.clone();
    let h = bg
        .task(move |_| {
            r2.store(true, Ordering::SeqCst);
            Ok::<_, Cancelled>(())
        })
        .queue_budget(Duration::from_secs(5))
        .submit()
        .unwrap();
    // A task that starts inside its budget is not expired later.
    let started_in_time = bg
        .task(|_| Ok::<_, Cancelled>(()))
        .queue_budget(Duration::from_secs(100))
        .priority(Priority::Low)
        .submit()
        .unwrap();
    m.advance(Duration::from_secs(4));
    assert_eq!(h.status(), TaskStatus::Queued);
    m.advance(Duration::from_secs(1));
    wait_until("expired", WAIT, || h.status().is_terminal());
    assert_eq!(
        h.join().unwrap_err().cancel_reason(),
        Some(CancelReason::QueueExpired)
    );
    bg.resume();
    started_in_time.join().unwrap();
    m.advance(Duration::from_secs(200));
    let s = &assert_quiescent(&rt)[1];
    assert!(!ran.load(Ordering::SeqCst), "an expired task never runs");
    assert_eq!(s.cancelled.queue_expired, 1);
    assert_eq!(s.completed, 1);
    assert_eq!(s.in_flight, 0, "the expired task's permit came back");
}

#[test]
fn caller_cancel_of_a_queued_task_means_it_never_runs() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let bg = rt.background();
    bg.pause();
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = ran.clone();
    let h = bg
        .submit(Priority::High, move |_| {
            r2.store(true, Ordering::SeqCst);
            Ok::<_, Cancelled>(())
        })
        .unwrap();
    assert!(h.cancel());
    assert!(!h.cancel(), "a second cancel does nothing");
    assert_eq!(h.status(), TaskStatus::Cancelled(CancelReason::Caller));
    bg.resume();
    let after = bg
        .submit(Priority::Low, |_| Ok::<_, Cancelled>(()))
        .unwrap();
    after.join().unwrap();
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(
        h.join().unwrap_err().cancel_reason(),
        Some(CancelReason::Caller)
    );
    let s = &assert_quiescent(&rt)[1];
    assert_eq!(s.cancelled.caller, 1);
    assert_eq!(s.in_flight, 0);
}

#[test]
fn caller_cancel_of_a_running_task_resolves_at_once_and_the_task_sees_it() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let far = m.now() + Duration::from_secs(3600);
    let (tx, rx) = mpsc::channel();
    let (entered_tx, entered) = mpsc::channel();
    let h = rt
        .background()
        .task(move |ctx| {
            entered_tx.send(()).unwrap();
            let r = ctx.sleep_until(far);
            tx.send(ctx.checkpoint()).unwrap();
            r
        })
        .submit()
        .unwrap();
    // Not `wait_running`: the body must be running to see the cancel.
    entered.recv_timeout(WAIT).unwrap();
    assert!(h.cancel());
    assert_eq!(h.status(), TaskStatus::Cancelled(CancelReason::Caller));
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        Err(Cancelled::new(CancelReason::Caller))
    );
    assert_eq!(
        h.join().unwrap_err().cancel_reason(),
        Some(CancelReason::Caller)
    );
    let s = &assert_quiescent(&rt)[1];
    assert_eq!(s.cancelled.caller, 1);
    assert_eq!(s.late_results, 1, "its Err(Cancelled) came too late");
}

#[test]
fn join_timeout_and_try_result_hand_the_handle_back() {
    let m = ManualClock::new();
    let rt = manual_rt(&m);
    let far = m.now() + Duration::from_secs(3600);
    let h = rt
        .background()
        .task(move |ctx| ctx.sleep_until(far).map(|_| 5))
        .no_timeout()
        .submit()
        .unwrap();
    wait_running(&h);
    let h = h.try_result().unwrap_err();
    let h = std::thread::scope(|s| {
        let waiter = s.spawn(|| h.join_timeout(Duration::from_secs(2)));
        // The waiter gives up once manual time passes its deadline.
        wait_until("waiter gave up", WAIT, || {
            m.advance(Duration::from_millis(100));
            waiter.is_finished()
        });
        waiter.join().unwrap().unwrap_err()
    });
    assert_eq!(h.status(), TaskStatus::Running);
    h.cancel();
    let done = h.join_timeout(Duration::ZERO).unwrap();
    assert_eq!(
        done.unwrap_err().cancel_reason(),
        Some(CancelReason::Caller)
    );
    let quick = rt
        .background()
        .submit(Priority::Normal, |_| Ok::<_, Cancelled>(5))
        .unwrap();
    assert_eq!(quick.join_timeout(Duration::MAX).unwrap().unwrap(), 5);
    assert_quiescent(&rt);
}

/// A runtime on `m` with one background task running (its body entered)
/// that sleeps for an hour unless cancelled, under `timeout`.
fn sleeper(m: &ManualClock, timeout: Duration) -> (Runtime, TaskHandle<&'static str, Cancelled>) {
    let rt = manual_rt(m);
    let far = m.now() + Duration::from_secs(3600);
    let (entered_tx, entered) = mpsc::channel();
    let h = rt
        .background()
        .task(move |ctx| {
            entered_tx.send(()).unwrap();
            ctx.sleep_until(far).map(|_| "slept")
        })
        .timeout(timeout)
        .submit()
        .unwrap();
    entered.recv_timeout(WAIT).unwrap();
    (rt, h)
}

/// Regression (found in review): deadlines far past the clock's epoch
/// (here a manual clock 80 years on) are still enforced — the watchdog's
/// packed deadline word covers the clock's whole range.
#[test]
fn a_timeout_fires_eighty_years_past_the_epoch() {
    let m = ManualClock::new();
    m.advance(Duration::from_secs(80 * 365 * 24 * 3600));
    let (_rt, h) = sleeper(&m, Duration::from_secs(5));
    m.advance(Duration::from_secs(6));
    // A real-time bound (`join_timeout` would wait on the manual clock).
    wait("the timeout fired", || h.status().is_terminal());
    let e = h.join().unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
}

/// Regression (found in review): a deadline that is not a round number of
/// nanoseconds fires when a manual clock lands exactly on it.
#[test]
fn a_timeout_fires_exactly_at_an_odd_nanosecond_deadline() {
    let m = ManualClock::new();
    m.advance(Duration::from_nanos(3));
    let (_rt, h) = sleeper(&m, Duration::from_nanos(5_000_000_001));
    m.advance(Duration::from_nanos(5_000_000_000));
    assert_eq!(h.status(), TaskStatus::Running, "one nanosecond early");
    m.advance(Duration::from_nanos(1));
    wait("the timeout fired", || h.status().is_terminal());
    assert!(h.join().unwrap_err().is_timeout());
}
