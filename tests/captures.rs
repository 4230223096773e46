//! A task that never runs lets go of what its closure captured as soon as
//! it leaves the queue — not when its handle is finally dropped. A caller
//! that cancels a queued task (or whose queued tasks a shutdown drops)
//! while it still holds the handles gets the captures' resources back: a
//! channel sender captured by a cancelled task no longer keeps its
//! receiver waiting, a buffer is freed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;
use tierpool::{CancelReason, ManualClock, Priority, Runtime, TaskContext, TaskError};

/// Counts its drops.
struct Capture(Arc<AtomicUsize>);

impl Drop for Capture {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Shuts `rt` down with zero grace while its one background worker is held
/// at `gate`; the gate opens a moment later, from another thread. The tier
/// is paused first, so it starts nothing more whenever the gate opens (a
/// zero-grace shutdown keeps the pause): everything queued never starts.
fn shut_down_before_they_start(rt: &Runtime, gate: &CountingGate) -> tierpool::ShutdownReport {
    rt.background().pause();
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            gate.open();
        })
    };
    let report = rt.shutdown(Duration::ZERO);
    opener.join().unwrap();
    report
}

#[test]
fn a_cancelled_queued_task_drops_its_captures_when_it_leaves_the_queue() {
    let rt = one_background_worker();
    let tier = rt.background();
    let (gate, busy) = occupy(tier, 1);
    let dropped = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<u32>();
    let capture = Capture(dropped.clone());
    let queued = tier
        .submit(Priority::Normal, move |_: &TaskContext| {
            let _keep = &capture;
            tx.send(1).map_err(|e| e.to_string())
        })
        .unwrap();
    assert!(queued.cancel(), "still queued: the cancel discards it");
    gate.open();
    for h in busy {
        h.join().unwrap();
    }
    // The worker takes the discarded job out of the queue and lets it go
    // (the cancel already counted it out of `queued`).
    wait("the captures are dropped", || {
        dropped.load(Ordering::SeqCst) == 1
    });
    // The sender went with them: the receiver is told at once, although
    // the handle is still held.
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
    let e = queued.join().unwrap_err();
    assert_eq!(e.cancel_reason(), Some(CancelReason::Caller), "{e}");
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "dropped once");
    rt.shutdown(Duration::from_secs(5));
}

#[test]
fn tasks_that_never_started_at_shutdown_drop_their_captures() {
    let rt = one_background_worker();
    let tier = rt.background();
    let (gate, busy) = occupy(tier, 1);
    let dropped = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..5)
        .map(|_| {
            let capture = Capture(dropped.clone());
            tier.submit(Priority::Low, move |_: &TaskContext| {
                let _keep = &capture;
                Ok::<_, String>(())
            })
            .unwrap()
        })
        .collect();
    let report = shut_down_before_they_start(&rt, &gate);
    assert_eq!(report.never_started.len(), 5, "{report}");
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        5,
        "every capture dropped by the time shutdown returns, handles still held"
    );
    for h in queued {
        let e = h.join().unwrap_err();
        assert_eq!(e.cancel_reason(), Some(CancelReason::Shutdown), "{e}");
    }
    drop(busy);
    assert_eq!(dropped.load(Ordering::SeqCst), 5, "and only once");
}

/// A capture whose `Drop` panics.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("capture dropped with a panic (test)");
    }
}

#[test]
fn a_capture_that_panics_when_dropped_does_not_break_shutdown() {
    let rt = one_background_worker();
    let tier = rt.background();
    let (gate, busy) = occupy(tier, 1);
    let bomb = Bomb;
    let queued = tier
        .submit(Priority::Normal, move |_: &TaskContext| {
            let _keep = &bomb;
            Ok::<_, String>(())
        })
        .unwrap();
    let report = shut_down_before_they_start(&rt, &gate);
    assert_eq!(report.never_started, vec![queued.id()], "{report}");
    assert!(matches!(
        queued.join(),
        Err(TaskError::Cancelled(CancelReason::Shutdown))
    ));
    drop(busy);
    let s = rt.stats();
    let bg = s.tier("background").unwrap();
    assert_eq!(bg.outcomes(), bg.submitted, "{s}");
}

/// Asks the runtime about itself when dropped.
struct AsksTheRuntime(Arc<Runtime>, mpsc::Sender<bool>);

impl Drop for AsksTheRuntime {
    fn drop(&mut self) {
        let _ = self.0.health();
        let _ = self.1.send(self.0.is_shut_down());
    }
}

#[test]
fn a_capture_that_calls_the_runtime_when_dropped_at_shutdown_does_not_deadlock() {
    let rt = Arc::new(one_background_worker());
    let tier = rt.background().clone();
    let (gate, _busy) = occupy(&tier, 1);
    let (tx, asked) = mpsc::channel();
    let capture = AsksTheRuntime(rt.clone(), tx);
    let queued = tier
        .submit(Priority::Normal, move |_: &TaskContext| {
            let _keep = &capture;
            Ok::<_, String>(())
        })
        .unwrap();
    tier.pause();
    let (done_tx, done) = mpsc::channel();
    let stopper = {
        let rt = rt.clone();
        std::thread::spawn(move || {
            let report = rt.shutdown(Duration::ZERO);
            let _ = done_tx.send(report.never_started.len());
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    gate.open();
    // A deadlock leaves the stopper stuck; the test fails instead of hanging.
    let never_started = done.recv_timeout(Duration::from_secs(30)).expect(
        "shutdown returned (a capture asking the runtime about itself must not deadlock it)",
    );
    assert_eq!(never_started, 1);
    assert_eq!(
        asked.recv_timeout(Duration::from_secs(5)),
        Ok(true),
        "it saw the shutdown"
    );
    stopper.join().unwrap();
    assert!(matches!(
        queued.join(),
        Err(TaskError::Cancelled(CancelReason::Shutdown))
    ));
}

/// Moves the manual clock on when dropped: a capture whose `Drop` takes a
/// second.
struct SlowToDrop(ManualClock);

impl Drop for SlowToDrop {
    fn drop(&mut self) {
        self.0.advance(Duration::from_secs(1));
    }
}

#[test]
fn a_slow_capture_drop_at_the_pick_does_not_eat_into_the_next_tasks_timeout() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .background(|t| {
            t.workers(1)
                .no_memory_watermark()
                .timeout(Duration::from_millis(500))
                .warn_after(None)
        })
        .build()
        .expect("runtime");
    let tier = rt.background();
    let (gate, busy) = occupy(tier, 1);
    let slow = SlowToDrop(m.clone());
    let cancelled = tier
        .submit(Priority::Normal, move |_: &TaskContext| {
            let _keep = &slow;
            Ok::<_, String>(())
        })
        .unwrap();
    let next = tier
        .submit(Priority::Normal, |ctx: &TaskContext| {
            Ok::<_, String>(ctx.remaining())
        })
        .unwrap();
    assert!(cancelled.cancel());
    gate.open();
    for h in busy {
        h.join().unwrap();
    }
    // The discarded task's capture moved the clock a second on as the
    // worker let it go; the next task's 500 ms count from its own start,
    // after that, not from the previous task's end.
    assert_eq!(
        next.join().unwrap(),
        Some(Duration::from_millis(500)),
        "the whole timeout is left at the start"
    );
    rt.shutdown(Duration::from_secs(5));
}
