//! Admission: the tier-wide and per-user in-flight limits hold under
//! concurrent submitters, rejections hand the work back with the reason,
//! permits come back, the ui tier is fair between users, and the blocking
//! submit waits only up to its deadline (DESIGN invariants 1 and 2).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tierpool::{Cancelled, ManualClock, Priority, RejectReason, Runtime, TaskStatus};

#[test]
fn per_user_and_global_limits_hold_under_concurrent_submitters() {
    const GLOBAL: usize = 6;
    const PER_USER: usize = 2;
    const USERS: usize = 5;
    // More workers than the global limit, so only admission bounds the
    // concurrency the tasks observe.
    let rt = Runtime::builder()
        .ui(|t| t.workers(8).max_in_flight(GLOBAL).per_user_limit(PER_USER))
        .build()
        .unwrap();
    let global = Arc::new(Gauge::default());
    let users: Arc<Vec<Gauge>> = Arc::new((0..USERS).map(|_| Gauge::default()).collect());
    let rejected = Mutex::new(HashMap::<&'static str, usize>::new());
    let accepted = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for k in 0..4u64 {
            let (rt, global, users, rejected, accepted) =
                (&rt, &global, &users, &rejected, &accepted);
            s.spawn(move || {
                let mut rng = XorShift::new(k + 1);
                let mut handles = Vec::new();
                for _ in 0..300 {
                    let u = rng.below(USERS as u64) as usize;
                    let (g, us) = (global.clone(), users.clone());
                    let r = rt
                        .ui()
                        .task(move |_| {
                            let _a = g.enter();
                            let _b = us[u].enter();
                            std::thread::sleep(Duration::from_micros(300));
                            Ok::<_, Cancelled>(u)
                        })
                        .user(format!("user-{u}"))
                        .submit();
                    match r {
                        Ok(h) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            handles.push(h);
                        }
                        Err(e) => {
                            *rejected
                                .lock()
                                .unwrap()
                                .entry(e.reason().as_str())
                                .or_default() += 1;
                            // The work comes back, still runnable.
                            let _f = e.into_inner();
                            std::thread::yield_now();
                        }
                    }
                    let in_flight = rt.ui().stats().in_flight;
                    assert!(in_flight <= GLOBAL, "in flight {in_flight}");
                }
                for h in handles {
                    h.join().unwrap();
                }
            });
        }
    });
    let rejected = rejected.into_inner().unwrap();
    println!(
        "accepted {} rejected {rejected:?} peak global {} peak per user {:?}",
        accepted.load(Ordering::Relaxed),
        global.peak(),
        users.iter().map(Gauge::peak).collect::<Vec<_>>()
    );
    assert!(global.peak() <= GLOBAL);
    for u in users.iter() {
        assert!(u.peak() <= PER_USER, "per-user peak {}", u.peak());
    }
    assert!(rejected.values().sum::<usize>() > 0, "limits were reached");
    let s = &assert_quiescent(&rt)[0];
    assert_eq!(s.submitted, accepted.load(Ordering::Relaxed) as u64);
    assert_eq!(
        s.rejected.tier_limit + s.rejected.user_limit,
        rejected.values().sum::<usize>() as u64
    );
    assert_eq!(s.in_flight, 0, "every permit came back");
}

#[test]
fn rejections_name_the_limit_and_permits_come_back() {
    let rt = Runtime::builder()
        .ui(|t| t.workers(1).max_in_flight(3).per_user_limit(2))
        .build()
        .unwrap();
    let ui = rt.ui();
    ui.pause();
    let task = |_: &tierpool::TaskContext| Ok::<_, Cancelled>(());
    let a1 = ui.task(task).user("a").submit().unwrap();
    let _a2 = ui.task(task).user("a").submit().unwrap();
    let e = ui.task(task).user("a").submit().unwrap_err();
    assert_eq!(
        *e.reason(),
        RejectReason::UserLimit {
            user: "a".into(),
            limit: 2
        }
    );
    assert!(e.to_string().contains("\"a\""));
    let _b = ui.task(task).user("b").submit().unwrap();
    let e = ui.task(task).user("c").submit().unwrap_err();
    assert_eq!(*e.reason(), RejectReason::TierLimit { limit: 3 });
    // A user rejected by the global limit did not keep a user permit.
    assert!(a1.cancel());
    let _c = ui.task(task).user("c").submit().unwrap();
    let s = ui.stats();
    assert_eq!(s.in_flight, 3);
    assert_eq!((s.rejected.user_limit, s.rejected.tier_limit), (1, 1));
    ui.resume();
    assert_quiescent(&rt);
    assert_eq!(ui.stats().in_flight, 0);
}

#[test]
fn queue_full_hands_the_closure_back() {
    let rt = Runtime::builder()
        .background(|t| t.workers(1).queue_capacity(2).no_memory_watermark())
        .build()
        .unwrap();
    let bg = rt.background();
    bg.pause();
    for _ in 0..2 {
        bg.submit(Priority::Low, |_| Ok::<_, Cancelled>(0)).unwrap();
    }
    let marker = Arc::new(());
    let m2 = marker.clone();
    let e = bg
        .submit(Priority::Low, move |_| {
            let _keep = &m2;
            Ok::<_, Cancelled>(1)
        })
        .unwrap_err();
    assert_eq!(*e.reason(), RejectReason::QueueFull { capacity: 2 });
    assert_eq!(Arc::strong_count(&marker), 2, "closure handed back alive");
    drop(e.into_inner());
    assert_eq!(Arc::strong_count(&marker), 1);
    // Another level has its own capacity.
    bg.submit(Priority::High, |_| Ok::<_, Cancelled>(2))
        .unwrap();
    bg.resume();
    let s = &assert_quiescent(&rt)[1];
    assert_eq!(s.rejected.queue_full, 1);
    assert_eq!(s.completed, 3);
}

/// The ui tier's fairness bound: with per-user limit L, one user's burst
/// puts at most L of its tasks ahead of another user's request.
#[test]
fn ui_user_burst_delays_another_user_by_at_most_its_limit() {
    const L: usize = 5;
    let rt = Runtime::builder()
        .ui(|t| t.workers(1).per_user_limit(L).max_in_flight(100))
        .build()
        .unwrap();
    let ui = rt.ui();
    let order = Arc::new(Mutex::new(Vec::new()));
    ui.pause();
    let mut refused = 0;
    let mut hs = Vec::new();
    for _ in 0..50 {
        let o = order.clone();
        match ui
            .task(move |ctx| {
                o.lock().unwrap().push(ctx.user().unwrap().to_string());
                Ok::<_, Cancelled>(())
            })
            .user("burst")
            .submit()
        {
            Ok(h) => hs.push(h),
            Err(e) => {
                assert!(matches!(e.reason(), RejectReason::UserLimit { .. }));
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 50 - L);
    let o = order.clone();
    let other = ui
        .task(move |ctx| {
            o.lock().unwrap().push(ctx.user().unwrap().to_string());
            Ok::<_, Cancelled>(())
        })
        .user("other")
        .submit()
        .unwrap();
    ui.resume();
    other.join().unwrap();
    hs.into_iter().for_each(|h| h.join().unwrap());
    let order = order.lock().unwrap();
    let pos = order.iter().position(|u| u == "other").unwrap();
    assert!(
        pos <= L,
        "other user ran after {pos} burst tasks: {order:?}"
    );
    assert_quiescent(&rt);
}

#[test]
fn submit_wait_gives_up_at_its_deadline_and_hands_the_work_back() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .ui(|t| t.workers(1).per_user_limit(1).max_in_flight(4))
        .build()
        .unwrap();
    let ui = rt.ui();
    ui.pause();
    let first = ui
        .task(|_| Ok::<_, Cancelled>(1))
        .user("u")
        .submit()
        .unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            ui.task(|_| Ok::<_, Cancelled>(2))
                .user("u")
                .submit_wait(Duration::from_secs(5))
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "a blocking submit waits for room");
        wait_until("blocking submit gave up", WAIT, || {
            m.advance(Duration::from_millis(500));
            waiter.is_finished()
        });
        let e = waiter.join().unwrap().unwrap_err();
        assert_eq!(*e.reason(), RejectReason::DeadlineElapsed);
        let _work = e.into_inner();
    });
    // Room appears while a submitter waits: it gets in.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            ui.task(|_| Ok::<_, Cancelled>(3))
                .user("u")
                .submit_wait(Duration::from_secs(3600))
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(first.cancel());
        let h = waiter.join().unwrap().expect("room freed by the cancel");
        assert_eq!(h.status(), TaskStatus::Queued);
    });
    // With no time to wait, a full tier refuses at once.
    for u in ["x", "y", "z"] {
        ui.task(|_| Ok::<_, Cancelled>(0)).user(u).submit().unwrap();
    }
    let e = ui
        .submit_wait(Priority::Normal, |_| Ok::<_, Cancelled>(4), Duration::ZERO)
        .unwrap_err();
    assert_eq!(*e.reason(), RejectReason::DeadlineElapsed);
    let s = ui.stats();
    assert_eq!(
        s.rejected.deadline_elapsed, 2,
        "only the final answer counts"
    );
    assert_eq!(s.rejected.user_limit + s.rejected.tier_limit, 0);
    ui.resume();
    assert_quiescent(&rt);
}

#[test]
fn submit_wait_returns_at_once_when_shutting_down() {
    let rt = Runtime::builder().build().unwrap();
    rt.shutdown(Duration::ZERO);
    let e = rt
        .ui()
        .submit_wait(
            Priority::High,
            |_| Ok::<_, Cancelled>(()),
            Duration::from_secs(3600),
        )
        .unwrap_err();
    assert_eq!(*e.reason(), RejectReason::ShuttingDown);
}
