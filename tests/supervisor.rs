//! Supervision: worker threads that die are restarted within the restart
//! intensity (past it the tier is unhealthy), maintenance restarts replace
//! every thread and keep the queue, and registered workers stop with the
//! runtime.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait, CountingGate};
use tierpool::{
    BatchProcessor, CacheWarmer, Event, HealthReason, HealthStatus, ManualClock, Priority,
    RestartCause, RestartError, Runtime,
};

const SEC: Duration = Duration::from_secs(1);

fn runtime_with(workers: usize, max_restarts: u32) -> (ManualClock, Runtime) {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .background(|t| {
            t.workers(workers)
                .no_memory_watermark()
                .restart_intensity(max_restarts, 10 * SEC)
        })
        .drop_grace(SEC)
        .build()
        .unwrap();
    (m, rt)
}

#[test]
fn a_killed_worker_thread_is_restarted() {
    let (_m, rt) = runtime_with(2, 5);
    let restarts = Arc::new(Mutex::new(Vec::new()));
    let sink = restarts.clone();
    rt.on_event(move |e| {
        if let Event::ThreadRestarted { tier, cause } = e {
            sink.lock().unwrap().push((*tier, *cause));
        }
    })
    .unwrap();
    let bg = rt.background();
    assert!(bg.inject_worker_panic());
    wait("worker restarted", || bg.stats().worker_restarts == 1);
    let s = bg.stats();
    assert_eq!(s.workers, 2, "the dead worker was replaced");
    assert_eq!(s.threads_started, 3);
    assert!(!s.restart_intensity_exceeded);
    assert!(rt.health().is_healthy());
    // The tier still serves.
    let h = bg.submit(Priority::Normal, |_| Ok::<_, String>(7)).unwrap();
    assert_eq!(h.join().unwrap(), 7);
    rt.shutdown(SEC);
    assert_eq!(
        *restarts.lock().unwrap(),
        [("background", RestartCause::Died)]
    );
}

#[test]
fn past_the_restart_intensity_the_tier_is_unhealthy_until_restarted() {
    let (_m, rt) = runtime_with(3, 2);
    let bg = rt.background();
    for n in 1..=2 {
        assert!(bg.inject_worker_panic());
        wait("restarted", || bg.stats().worker_restarts == n);
        wait("back to 3 workers", || bg.stats().workers == 3);
    }
    assert!(bg.inject_worker_panic());
    wait("gave up", || bg.stats().restart_intensity_exceeded);
    let s = bg.stats();
    assert_eq!((s.worker_restarts, s.workers), (2, 2));

    let health = rt.health();
    assert_eq!(health.status, HealthStatus::Unhealthy);
    let c = health.component("background").unwrap();
    assert_eq!(c.status, HealthStatus::Unhealthy);
    assert!(matches!(
        c.reasons[..],
        [HealthReason::RestartIntensityExceeded {
            workers: 2,
            max_restarts: 2,
            ..
        }]
    ));
    assert!(health.to_string().contains("restart intensity exceeded"));
    assert!(health.component("ui").unwrap().reasons.is_empty());

    // A maintenance restart resets the intensity and refills the tier.
    let report = rt.restart("background", 5 * SEC).unwrap();
    assert!(report.drained_in_time);
    assert_eq!(bg.stats().workers, 3);
    assert!(rt.health().is_healthy(), "{}", rt.health());
}

#[test]
fn restart_keeps_queued_tasks_and_every_task_gets_one_outcome() {
    let (_m, rt) = runtime_with(2, 5);
    let bg = rt.background().clone();
    let gate = CountingGate::default();
    let ran_on: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let g = gate.clone();
        handles.push(
            bg.submit(Priority::Normal, move |_| {
                g.pass();
                Ok::<_, String>(())
            })
            .unwrap(),
        );
    }
    wait("both workers busy", || gate.entered() == 2);
    let old_threads = bg.stats().threads_started;
    for _ in 0..20 {
        let sink = ran_on.clone();
        handles.push(
            bg.submit(Priority::Normal, move |_| {
                let name = std::thread::current().name().unwrap_or("").to_string();
                sink.lock().unwrap().push(name);
                Ok::<_, String>(())
            })
            .unwrap(),
        );
    }
    let restarter = {
        let bg = bg.clone();
        std::thread::spawn(move || bg.restart(60 * SEC))
    };
    // The restart waits for the running pair; let it get there, then let
    // them finish.
    std::thread::sleep(Duration::from_millis(30));
    gate.open();
    let report = restarter.join().unwrap().unwrap();
    assert!(report.drained_in_time);
    assert_eq!((report.replaced, report.still_running), (2, 0));

    let ids: HashSet<_> = handles.iter().map(|h| h.id()).collect();
    assert_eq!(ids.len(), 22);
    for h in handles {
        h.join().expect("every task completes, none is cancelled");
    }
    let s = bg.stats();
    assert_eq!((s.submitted, s.completed, s.outcomes()), (22, 22, 22));
    assert_eq!(s.cancelled.total(), 0);
    assert_eq!(s.threads_started, old_threads + 2);
    assert_eq!(s.workers, 2);
    // Queued tasks all ran on the new threads (indices 2 and 3).
    for name in ran_on.lock().unwrap().iter() {
        assert!(
            name == "tierpool-background-2" || name == "tierpool-background-3",
            "ran on {name}"
        );
    }
}

#[test]
fn a_task_still_running_after_the_grace_keeps_running_and_its_thread_is_replaced_later() {
    let (_m, rt) = runtime_with(2, 5);
    let bg = rt.background();
    let gate = CountingGate::default();
    let g = gate.clone();
    let slow = bg
        .submit(Priority::Normal, move |_| {
            g.pass();
            Ok::<_, String>("slow")
        })
        .unwrap();
    wait("running", || gate.entered() == 1);
    let report = bg.restart(Duration::ZERO).unwrap();
    assert!(!report.drained_in_time);
    assert_eq!((report.replaced, report.still_running), (1, 1));
    // The idle worker's replacement serves queued work meanwhile.
    let quick = bg.submit(Priority::Normal, |_| Ok::<_, String>(1)).unwrap();
    assert_eq!(quick.join().unwrap(), 1);
    gate.open();
    assert_eq!(slow.join().unwrap(), "slow");
    wait("old thread replaced", || bg.stats().threads_started == 4);
    assert_eq!(bg.stats().workers, 2);
}

#[test]
fn restart_errors_name_the_problem() {
    let (_m, rt) = runtime_with(1, 5);
    assert_eq!(
        rt.restart("nope", SEC).unwrap_err(),
        RestartError::UnknownTier("nope".into())
    );
    rt.shutdown(SEC);
    assert_eq!(
        rt.restart("ui", SEC).unwrap_err(),
        RestartError::ShuttingDown
    );
}

#[test]
fn registered_workers_stop_with_the_runtime_and_report_what_they_left() {
    let (m, rt) = runtime_with(2, 5);
    let batches = BatchProcessor::builder(rt.background(), |_: &u32, _| Ok::<_, String>(()))
        .flush_interval(3600 * SEC)
        .batch_size(100)
        .build()
        .unwrap();
    rt.register("batches", &batches);
    batches.enqueue_all(0..5, Priority::Normal).unwrap();

    let warmed = Arc::new(Mutex::new(Vec::new()));
    let sink = warmed.clone();
    let warmer = CacheWarmer::builder(rt.background(), move |k: &u32, _| {
        sink.lock().unwrap().push(*k);
        Ok::<_, String>(())
    })
    .regular_keys(|| vec![1, 2, 3])
    .not_load_aware()
    .scheduler(rt.scheduler())
    .build()
    .unwrap();
    rt.register("cache-warmer", &warmer);
    // The warmer's cycle lives on the runtime's scheduler.
    assert_eq!(rt.scheduler().stats().jobs.len(), 1);
    m.advance(15 * 60 * SEC);
    wait("warmed", || warmed.lock().unwrap().len() == 3);

    let report = rt.shutdown(5 * SEC);
    assert!(rt.scheduler().is_shut_down());
    let names: Vec<_> = report.workers.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["batches", "cache-warmer"]);
    assert_eq!(report.workers[0].unprocessed, 5);
    assert_eq!(report.workers[1].processed, 3);
    assert!(report.to_string().contains("batches: 5 unprocessed"));
    // The items stay with the worker until it is asked for them.
    let mine = batches.shutdown(SEC);
    let mut items: Vec<_> = mine.unprocessed.iter().map(|(i, _)| *i).collect();
    items.sort_unstable();
    assert_eq!(items, [0, 1, 2, 3, 4]);
    assert!(warmer.shutdown(SEC).unprocessed.is_empty());
    assert!(matches!(
        rt.health().component("batches").unwrap().reasons[..],
        [HealthReason::ShutDown]
    ));
}

#[test]
fn a_dropped_worker_unregisters_itself_and_a_shared_warmer_leaves_the_scheduler() {
    let (_m, rt) = runtime_with(1, 5);
    {
        let warmer = CacheWarmer::builder(rt.background(), |_: &u32, _| Ok::<_, String>(()))
            .critical_keys(|| vec![1])
            .scheduler(rt.scheduler())
            .build()
            .unwrap();
        rt.register("warmer", &warmer);
        assert!(rt.health().component("warmer").is_some());
    }
    assert!(rt.health().component("warmer").is_none());
    assert!(rt.scheduler().stats().jobs.is_empty());
    assert!(rt.shutdown(SEC).workers.is_empty());
}
