//! Events: what is emitted, in what order, and that listeners can never
//! hurt the runtime (a panicking one is caught, a slow one only loses
//! events, counted).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{advance_until, wait, CountingGate, WAIT};
use tierpool::{
    BreakerState, CancelReason, CircuitBreaker, Event, ManualClock, Priority, RestartCause,
    Runtime, ScaleReason, TaskStatus,
};

const SEC: Duration = Duration::from_secs(1);

fn recorder(rt: &Runtime) -> Arc<Mutex<Vec<Event>>> {
    let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = seen.clone();
    rt.on_event(move |e| sink.lock().unwrap().push(e.clone()))
        .unwrap();
    seen
}

#[test]
fn without_listeners_nothing_is_emitted() {
    let rt = Runtime::builder().build().unwrap();
    for _ in 0..100 {
        rt.ui()
            .submit(Priority::Normal, |_| Ok::<_, String>(()))
            .unwrap()
            .join()
            .unwrap();
    }
    let s = rt.stats();
    assert_eq!((s.events_delivered, s.events_dropped), (0, 0));
}

#[test]
fn a_task_is_submitted_started_and_finished_in_that_order() {
    let rt = Runtime::builder().build().unwrap();
    let seen = recorder(&rt);
    let ok = rt
        .ui()
        .submit(Priority::High, |_| Ok::<_, String>(()))
        .unwrap();
    let (ok_id, _) = (ok.id(), ok.join().unwrap());
    let bad = rt
        .ui()
        .submit(Priority::Normal, |_| Err::<(), _>("no"))
        .unwrap();
    let bad_id = bad.id();
    assert!(bad.join().is_err());
    rt.shutdown(SEC); // delivers what is queued
    let seen = seen.lock().unwrap();
    let of = |id| -> Vec<&Event> { seen.iter().filter(|e| e.task() == Some(id)).collect() };
    assert!(matches!(
        of(ok_id)[..],
        [
            Event::TaskSubmitted {
                tier: "ui",
                priority: Priority::High,
                ..
            },
            Event::TaskStarted { attempt: 1, .. },
            Event::TaskFinished {
                status: TaskStatus::Completed,
                ..
            },
        ]
    ));
    assert!(matches!(
        of(bad_id)[..],
        [
            Event::TaskSubmitted { .. },
            Event::TaskStarted { .. },
            Event::TaskFinished {
                status: TaskStatus::Failed,
                ..
            },
        ]
    ));
}

#[test]
fn warnings_timeouts_zombies_scaling_and_restarts_are_events() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .ui(|t| t.min_workers(1).max_workers(4).cancel_grace(SEC))
        .background(|t| t.workers(1).no_memory_watermark())
        .drop_grace(SEC)
        .build()
        .unwrap();
    let seen = recorder(&rt);
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let (entered_tx, entered) = mpsc::channel();
    let stuck = rt
        .ui()
        .task(move |_| {
            let _ = entered_tx.send(());
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok::<_, String>(())
        })
        .warn_after(SEC)
        .timeout(2 * SEC)
        .submit()
        .unwrap();
    let id = stuck.id();
    // Not "status is running": a body skipped (timed out before it ran)
    // can never become a zombie.
    entered.recv_timeout(WAIT).expect("stuck body running");
    advance_until(&m, SEC, "zombie", || rt.ui().stats().zombie_threads == 1);
    // Two more blocked tasks make the ui tier grow.
    let gate = CountingGate::default();
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let g = gate.clone();
            rt.ui()
                .task(move |_| {
                    g.pass();
                    Ok::<_, String>(())
                })
                .no_timeout()
                .submit()
                .unwrap()
        })
        .collect();
    wait("both running", || gate.entered() == 2);
    assert!(rt.background().inject_worker_panic());
    wait("restarted", || rt.background().stats().worker_restarts == 1);
    gate.open();
    release.store(true, Ordering::SeqCst);
    for h in blocked {
        h.join().unwrap();
    }
    let _ = stuck.join();
    wait("delivered", || {
        let s = rt.stats();
        s.events_delivered == seen.lock().unwrap().len() as u64
            && seen
                .lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e, Event::ThreadRestarted { .. }))
    });
    rt.shutdown(SEC);
    let seen = seen.lock().unwrap();
    let mine: Vec<_> = seen.iter().filter(|e| e.task() == Some(id)).collect();
    assert!(
        matches!(
            mine[..],
            [
                Event::TaskSubmitted { .. },
                Event::TaskStarted { .. },
                Event::TaskWarned { after, .. },
                Event::TaskFinished { status: TaskStatus::Cancelled(CancelReason::Timeout), .. },
                Event::TaskTimedOut { .. },
                Event::TaskZombie { .. },
            ] if *after == SEC
        ),
        "{mine:#?}"
    );
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::PoolScaled {
            tier: "ui",
            reason: ScaleReason::ZombieReplacement,
            ..
        }
    )));
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::PoolScaled {
            tier: "ui",
            reason: ScaleReason::Demand { .. },
            ..
        }
    )));
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::ThreadRestarted {
            tier: "background",
            cause: RestartCause::Died
        }
    )));
}

#[test]
fn breaker_changes_and_failed_scheduled_runs_are_events() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .background(|t| t.workers(1).no_memory_watermark())
        .drop_grace(SEC)
        .build()
        .unwrap();
    let seen = recorder(&rt);
    let breaker = CircuitBreaker::builder()
        .name("esi")
        .window_size(1)
        .minimum_calls(1)
        .clock(m.clock())
        .build()
        .unwrap();
    rt.register("esi", &breaker);
    let _ = breaker.call(|| Err::<(), _>("down"));
    let job = rt
        .scheduler()
        .every(60 * SEC)
        .name("report")
        .start(|_| Err::<(), _>("db down"))
        .unwrap();
    rt.scheduler().trigger(job);
    wait("run failed", || {
        rt.scheduler().job_stats(job).unwrap().failed == 1
    });
    rt.shutdown(SEC);
    let seen = seen.lock().unwrap();
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::BreakerStateChanged { breaker, from: BreakerState::Closed, to: BreakerState::Open }
            if &**breaker == "esi"
    )));
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::ScheduledRunFailed { job, error, consecutive_failures: 1 }
            if &**job == "report" && error == "db down"
    )));
}

#[test]
fn a_panicking_and_a_slow_listener_do_not_hurt_the_runtime() {
    let rt = Runtime::builder()
        .background(|t| t.workers(2).no_memory_watermark())
        .event_capacity(16)
        .build()
        .unwrap();
    rt.on_event(|_| panic!("listener bug")).unwrap();
    rt.on_event(|_| std::thread::sleep(Duration::from_millis(2)))
        .unwrap();
    let finished = Arc::new(AtomicU64::new(0));
    let f = finished.clone();
    rt.on_event(move |e| {
        if matches!(e, Event::TaskFinished { .. }) {
            f.fetch_add(1, Ordering::Relaxed);
        }
    })
    .unwrap();
    const N: u64 = 500;
    let handles: Vec<_> = (0..N)
        .map(|i| {
            rt.background()
                .submit(Priority::Normal, move |_| Ok::<_, String>(i))
                .unwrap()
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), i as u64, "the runtime keeps serving");
    }
    assert_eq!(rt.background().stats().completed, N);
    rt.shutdown(5 * SEC);
    let s = rt.stats();
    assert!(s.events_dropped > 0, "a slow listener loses events: {s:?}");
    assert!(s.events_delivered > 0);
    // Every event emitted (3 per task) was delivered or counted as dropped.
    assert_eq!(s.events_delivered + s.events_dropped, 3 * N);
    assert_eq!(s.listener_panics, s.events_delivered);
    assert!(finished.load(Ordering::Relaxed) <= N);
}
