//! The realtime tier: reserved slots for high/critical work, and
//! cooperative preemption — a critical task that finds every worker busy
//! cancels the lowest-priority preemptible running task (reason:
//! preempted); a restartable one runs again with `attempt() == 2`.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use tierpool::{
    CancelReason, Cancelled, ManualClock, Priority, Runtime, TaskContext, TaskHandle, TaskStatus,
    Tier,
};

/// Three workers, one of them reserved: two normal/low tasks at most.
fn rt(m: &ManualClock) -> Runtime {
    Runtime::builder()
        .clock(m.clock())
        .realtime(|t| t.workers(3).reserved_slots(1))
        .build()
        .unwrap()
}

fn blocker(
    tier: &Tier,
    far: Instant,
    p: Priority,
    preemptible: bool,
) -> TaskHandle<u32, Cancelled> {
    let (entered_tx, entered) = mpsc::channel();
    let h = tier
        .task(move |ctx| {
            let _ = entered_tx.send(());
            ctx.sleep_until(far).map(|_| 0)
        })
        .priority(p)
        .preemptible(preemptible)
        .submit()
        .unwrap();
    // Not `wait_running`: a critical task picks its victim among the
    // workers' current tasks, set only just before the body runs.
    entered.recv_timeout(WAIT).expect("blocker body running");
    h
}

#[test]
fn critical_work_preempts_the_lowest_priority_preemptible_task() {
    let m = ManualClock::new();
    let rt = rt(&m);
    let far = m.now() + Duration::from_secs(3600);
    let tier = rt.realtime();
    let low = blocker(tier, far, Priority::Low, true);
    let normal = blocker(tier, far, Priority::Normal, true);
    let high = blocker(tier, far, Priority::High, false);
    let critical = tier
        .submit(Priority::Critical, |ctx| Ok::<_, Cancelled>(ctx.priority()))
        .unwrap();
    assert_eq!(critical.join().unwrap(), Priority::Critical);
    assert_eq!(
        low.join().unwrap_err().cancel_reason(),
        Some(CancelReason::Preempted)
    );
    assert_eq!(normal.status(), TaskStatus::Running);
    assert_eq!(high.status(), TaskStatus::Running);
    assert_eq!(tier.stats().preemptions, 1);
    normal.cancel();
    high.cancel();
    let s = &assert_quiescent(&rt)[2];
    assert_eq!(s.cancelled.preempted, 1);
    assert_eq!(s.requeued, 0);
}

/// Regression: the re-queued task used to be discarded at once (cancelled,
/// reason shutdown) by the drop of the job shell it was taken out of.
#[test]
fn a_restartable_task_runs_again_after_preemption() {
    let m = ManualClock::new();
    let rt = rt(&m);
    let far = m.now() + Duration::from_secs(3600);
    let tier = rt.realtime();
    let runs = Arc::new(AtomicU32::new(0));
    let r2 = runs.clone();
    let (entered_tx, entered) = mpsc::channel();
    // Bound first: a closure literal passed straight to `task` (whose bound
    // is `FnOnce`) is inferred `FnOnce` and `restartable()` refuses it.
    let body = move |ctx: &TaskContext| {
        r2.fetch_add(1, Ordering::SeqCst);
        let _ = entered_tx.send(ctx.attempt());
        if ctx.attempt() == 1 {
            ctx.sleep_until(far)?; // preempted here
        }
        Ok::<_, Cancelled>(ctx.attempt())
    };
    let restartable = tier
        .task(body)
        .priority(Priority::Low)
        .restartable()
        .submit()
        .unwrap();
    // Not `wait_running`: the first attempt's body must be running (and the
    // task on its worker's `current`) to be preempted and run again.
    assert_eq!(entered.recv_timeout(WAIT), Ok(1), "first attempt running");
    let normal = blocker(tier, far, Priority::Normal, false);
    let high = blocker(tier, far, Priority::High, false);
    let critical = tier
        .submit(Priority::Critical, |_| Ok::<_, Cancelled>("critical"))
        .unwrap();
    assert_eq!(critical.join().unwrap(), "critical");
    assert_eq!(restartable.join().unwrap(), 2, "second attempt completed");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    normal.cancel();
    high.cancel();
    let s = &assert_quiescent(&rt)[2];
    assert_eq!((s.preemptions, s.requeued), (1, 1));
    assert_eq!(
        s.cancelled.preempted, 0,
        "a restarted task is not cancelled"
    );
    // submitted once, one outcome, although it ran twice
    assert_eq!(s.completed, 2);
}

#[test]
fn without_preemptible_work_critical_waits_and_nothing_is_cancelled() {
    let m = ManualClock::new();
    let rt = rt(&m);
    let far = m.now() + Duration::from_secs(3600);
    let tier = rt.realtime();
    let a = blocker(tier, far, Priority::Normal, false);
    let b = blocker(tier, far, Priority::Low, false);
    let c = blocker(tier, far, Priority::High, false);
    let critical = tier
        .submit(Priority::Critical, |_| Ok::<_, Cancelled>(1))
        .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(critical.status(), TaskStatus::Queued);
    assert_eq!(tier.stats().preemptions, 0);
    b.cancel();
    assert_eq!(critical.join().unwrap(), 1);
    assert_eq!(a.status(), TaskStatus::Running);
    a.cancel();
    c.cancel();
    assert_eq!(assert_quiescent(&rt)[2].cancelled.preempted, 0);
}

#[test]
fn reserved_slots_are_kept_for_high_and_critical_work() {
    let m = ManualClock::new();
    let rt = rt(&m);
    let far = m.now() + Duration::from_secs(3600);
    let tier = rt.realtime();
    let n1 = blocker(tier, far, Priority::Normal, false);
    let n2 = blocker(tier, far, Priority::Low, false);
    let n3 = tier
        .task(move |ctx| ctx.sleep_until(far).map(|_| 0))
        .priority(Priority::Normal)
        .submit()
        .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(n3.status(), TaskStatus::Queued, "no unreserved slot left");
    let high = tier
        .submit(Priority::High, |_| Ok::<_, Cancelled>(0))
        .unwrap();
    assert_eq!(high.join().unwrap(), 0, "ran on the reserved slot");
    assert_eq!(n3.status(), TaskStatus::Queued);
    n1.cancel();
    wait_running(&n3);
    n2.cancel();
    n3.cancel();
    assert_quiescent(&rt);
}
