//! Panics never kill the pool (DESIGN invariant 5): a task's panic is an
//! outcome and the worker lives on; a worker thread that dies outside any
//! task (the `inject_worker_panic` test hook) is restarted, within the
//! restart intensity; past it, the tier says so and stops restarting.

mod common;

use std::time::Duration;

use common::*;
use tierpool::{Cancelled, ManualClock, Priority, Runtime};

fn one_worker(m: &ManualClock, max_restarts: u32) -> Runtime {
    Runtime::builder()
        .clock(m.clock())
        .background(|t| {
            t.workers(1)
                .no_memory_watermark()
                .restart_intensity(max_restarts, Duration::from_secs(60))
        })
        .build()
        .unwrap()
}

/// Also a regression: the panic message was always
/// "<non-string panic payload>" (the box, not its contents, was downcast).
#[test]
fn a_task_panic_is_an_outcome_and_the_worker_lives_on() {
    let m = ManualClock::new();
    let rt = one_worker(&m, 5);
    let bg = rt.background();
    let h = bg
        .submit(Priority::Normal, |_| -> Result<(), Cancelled> {
            panic!("boom in a task")
        })
        .unwrap();
    let e = h.join().unwrap_err();
    assert!(e.is_panic());
    assert!(e.to_string().contains("boom in a task"), "{e}");
    let h = bg
        .submit(Priority::Normal, |_| -> Result<(), Cancelled> {
            std::panic::panic_any(42_u32)
        })
        .unwrap();
    assert!(h.join().unwrap_err().is_panic());
    assert_eq!(
        bg.submit(Priority::Low, |_| Ok::<_, Cancelled>(1))
            .unwrap()
            .join()
            .unwrap(),
        1
    );
    let s = &assert_quiescent(&rt)[1];
    assert_eq!(s.panicked, 2);
    assert_eq!(s.threads_started, 1, "the same worker ran all three");
    assert_eq!(s.worker_restarts, 0);
}

#[test]
fn a_worker_killed_outside_a_task_is_restarted() {
    let m = ManualClock::new();
    let rt = one_worker(&m, 5);
    let bg = rt.background();
    assert!(bg.inject_worker_panic());
    wait_until("worker restarted", WAIT, || bg.stats().worker_restarts == 1);
    let s = bg.stats();
    assert_eq!((s.workers, s.threads_started), (1, 2));
    assert!(!s.restart_intensity_exceeded);
    let h = bg
        .submit(Priority::Normal, |_| Ok::<_, Cancelled>("served"))
        .unwrap();
    assert_eq!(h.join().unwrap(), "served");
    assert_quiescent(&rt);
}

#[test]
fn past_the_restart_intensity_the_tier_gives_up_and_says_so() {
    let m = ManualClock::new();
    let rt = one_worker(&m, 2);
    let bg = rt.background();
    for n in 1..=2 {
        assert!(bg.inject_worker_panic());
        wait_until("restart", WAIT, || bg.stats().worker_restarts == n);
    }
    assert!(bg.inject_worker_panic());
    wait_until("gave up", WAIT, || bg.stats().restart_intensity_exceeded);
    let s = bg.stats();
    assert_eq!((s.worker_restarts, s.workers), (2, 0));
    // Restarting stopped, but demand still scales the tier up (a new
    // worker on submit), and the flag stays for health to report.
    let h = bg
        .submit(Priority::Normal, |_| Ok::<_, Cancelled>("scaled"))
        .unwrap();
    assert_eq!(h.join().unwrap(), "scaled");
    let s = &assert_quiescent(&rt)[1];
    assert!(s.restart_intensity_exceeded);
    assert_eq!(s.worker_restarts, 2);
}

#[test]
fn restarts_outside_the_window_do_not_count() {
    let m = ManualClock::new();
    let rt = one_worker(&m, 1);
    let bg = rt.background();
    for n in 1..=3 {
        assert!(bg.inject_worker_panic());
        wait_until("restart", WAIT, || bg.stats().worker_restarts == n);
        m.advance(Duration::from_secs(61));
    }
    assert!(!bg.stats().restart_intensity_exceeded);
    bg.submit(Priority::Normal, |_| Ok::<_, Cancelled>(()))
        .unwrap()
        .join()
        .unwrap();
}

/// A value whose `Drop` panics, dropped on the worker after the run (its
/// handle gone first, so the worker holds the last reference): the worker
/// dies and is replaced, and the run leaves the `running` count — it used
/// to stay counted for good, and a shutdown then waited its whole grace
/// for a run that was over.
#[test]
fn a_result_that_panics_when_dropped_leaves_the_counts_true() {
    struct Boom;
    impl Drop for Boom {
        fn drop(&mut self) {
            panic!("boom in a result's drop");
        }
    }
    let m = ManualClock::new();
    let rt = one_worker(&m, 5);
    let bg = rt.background();
    let (gate, held) = occupy(bg, 1);
    let h = bg
        .submit(Priority::Normal, |_| Ok::<_, Cancelled>(Boom))
        .unwrap();
    drop(h);
    gate.open();
    for h in held {
        h.join().unwrap();
    }
    wait("worker replaced", || bg.stats().worker_restarts == 1);
    wait("run booked", || {
        let s = bg.stats();
        s.running == 0 && s.queued == 0
    });
    assert_eq!(
        bg.submit(Priority::Normal, |_| Ok::<_, Cancelled>(7))
            .unwrap()
            .join()
            .unwrap(),
        7
    );
    let report = rt.shutdown(Duration::from_secs(30));
    assert!(report.drained_in_time, "{report:?}");
}
