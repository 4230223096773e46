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
use tierpool::{CancelReason, Priority, Runtime, TaskContext, TaskError};

/// Counts its drops.
struct Capture(Arc<AtomicUsize>);

impl Drop for Capture {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn one_worker() -> Runtime {
    Runtime::builder()
        .background(|t| t.workers(1).no_memory_watermark())
        .build()
        .expect("runtime")
}

#[test]
fn a_cancelled_queued_task_drops_its_captures_when_it_leaves_the_queue() {
    let rt = one_worker();
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
    // The worker takes the discarded job out of the queue and lets it go.
    wait("the queue empties", || tier.stats().queued == 0);
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
    let rt = one_worker();
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
    // Open the gate only once shutdown has stopped admitting and drained
    // the queue as never started (a zero grace: nothing queued runs).
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            gate.open();
        })
    };
    let report = rt.shutdown(Duration::ZERO);
    opener.join().unwrap();
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
    let rt = one_worker();
    let tier = rt.background();
    let (gate, busy) = occupy(tier, 1);
    let bomb = Bomb;
    let queued = tier
        .submit(Priority::Normal, move |_: &TaskContext| {
            let _keep = &bomb;
            Ok::<_, String>(())
        })
        .unwrap();
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            gate.open();
        })
    };
    let report = rt.shutdown(Duration::ZERO);
    opener.join().unwrap();
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
