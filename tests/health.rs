//! Health transitions: zombies, the memory watermark, a saturated queue,
//! open breakers and degraded jobs make components degraded, and recovery
//! makes them healthy again; utilisation over the window.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{advance_until, wait, CountingGate, WAIT};
use tierpool::{
    BatchProcessor, CircuitBreaker, HealthReason, HealthStatus, ManualClock, Priority,
    RejectReason, Runtime, TaskStatus,
};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn a_zombie_degrades_its_tier_until_the_task_returns() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .ui(|t| t.cancel_grace(SEC))
        .drop_grace(SEC)
        .build()
        .unwrap();
    assert!(rt.health().is_healthy());
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let (entered_tx, entered) = mpsc::channel();
    let h = rt
        .ui()
        .task(move |_| {
            let _ = entered_tx.send(());
            // Ignores cancellation on purpose.
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok::<_, String>(())
        })
        .timeout(SEC)
        .submit()
        .unwrap();
    // The deadline is computed at start: advance only once it runs. And
    // not just "status is running": a body skipped (timed out before it
    // ran) can never become a zombie.
    entered.recv_timeout(WAIT).expect("body running");
    m.advance(SEC);
    wait("timed out", || rt.ui().stats().cancelled.timeout == 1);
    advance_until(&m, SEC, "zombie", || rt.ui().stats().zombie_threads == 1);

    let health = rt.health();
    assert_eq!(health.status, HealthStatus::Degraded);
    let ui = health.component("ui").unwrap();
    assert_eq!(ui.reasons, [HealthReason::Zombies { threads: 1 }]);
    assert!(health.to_string().contains("ui"), "{health}");

    release.store(true, Ordering::SeqCst);
    wait("zombie returned", || rt.ui().stats().zombie_threads == 0);
    assert!(rt.health().is_healthy(), "{}", rt.health());
    assert!(h.join().unwrap_err().is_timeout());
}

#[test]
fn the_memory_watermark_degrades_the_background_tier_while_it_holds() {
    let m = ManualClock::new();
    let rss = Arc::new(AtomicU64::new(10));
    let probe = rss.clone();
    let rt = Runtime::builder()
        .clock(m.clock())
        .memory_probe(move || Some(probe.load(Ordering::SeqCst)))
        .background(|t| {
            t.workers(1)
                .memory_watermark(100, 50)
                .memory_sample_interval(SEC)
        })
        .drop_grace(SEC)
        .build()
        .unwrap();
    let first = rt
        .background()
        .submit(Priority::Normal, |_| Ok::<_, String>(1))
        .unwrap();
    assert_eq!(first.join().unwrap(), 1);
    assert!(rt.health().is_healthy());

    rss.store(150, Ordering::SeqCst);
    m.advance(SEC);
    let held = rt
        .background()
        .submit(Priority::Normal, |_| Ok::<_, String>(2))
        .unwrap();
    wait("paused", || rt.background().stats().memory_paused);
    let health = rt.health();
    assert_eq!(health.status, HealthStatus::Degraded);
    assert_eq!(
        health.component("background").unwrap().reasons,
        [HealthReason::MemoryPaused {
            rss: Some(150),
            high: Some(100)
        }]
    );
    assert_eq!(held.status(), TaskStatus::Queued);

    rss.store(10, Ordering::SeqCst);
    advance_until(&m, SEC, "healthy again", || rt.health().is_healthy());
    assert_eq!(held.join().unwrap(), 2);
}

#[test]
fn a_queue_at_capacity_past_the_threshold_degrades_the_tier() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .background(|t| {
            t.workers(1)
                .queue_capacity(2)
                .no_memory_watermark()
                .saturation_threshold(30 * SEC)
        })
        .drop_grace(SEC)
        .build()
        .unwrap();
    let bg = rt.background();
    let gate = CountingGate::default();
    let g = gate.clone();
    let blocker = bg
        .submit(Priority::Normal, move |_| {
            g.pass();
            Ok::<_, String>(())
        })
        .unwrap();
    wait("worker busy", || gate.entered() == 1);
    let queued: Vec<_> = (0..2)
        .map(|_| {
            bg.submit(Priority::Normal, |_| Ok::<_, String>(()))
                .unwrap()
        })
        .collect();
    let refused = bg
        .submit(Priority::Normal, |_| Ok::<_, String>(()))
        .unwrap_err();
    assert_eq!(refused.reason(), &RejectReason::QueueFull { capacity: 2 });
    assert_eq!(bg.stats().saturated_for, Some(Duration::ZERO));
    assert!(rt.health().is_healthy(), "below the threshold");

    m.advance(30 * SEC);
    let health = rt.health();
    let c = health.component("background").unwrap();
    assert_eq!(c.status, HealthStatus::Degraded);
    assert!(matches!(
        c.reasons[..],
        [HealthReason::QueueSaturated { for_, threshold }]
            if for_ == 30 * SEC && threshold == 30 * SEC
    ));

    gate.open();
    blocker.join().unwrap();
    for h in queued {
        h.join().unwrap();
    }
    assert_eq!(bg.stats().saturated_for, None);
    assert!(rt.health().is_healthy(), "{}", rt.health());
}

#[test]
fn open_breakers_and_failing_jobs_degrade_their_components() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .background(|t| t.workers(1).no_memory_watermark())
        .drop_grace(SEC)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::builder()
        .name("esi")
        .window_size(1)
        .minimum_calls(1)
        .open_duration(60 * SEC)
        .clock(m.clock())
        .build()
        .unwrap();
    let batches = BatchProcessor::builder(rt.background(), |_: &u32, _| Ok::<_, String>(()))
        .circuit_breaker(breaker.clone())
        .build()
        .unwrap();
    rt.register("enricher", &batches);
    assert!(rt.health().is_healthy());
    let _ = breaker.call(|| Err::<(), _>("down"));
    let health = rt.health();
    assert_eq!(health.status, HealthStatus::Degraded);
    assert_eq!(
        health.component("enricher").unwrap().reasons,
        [HealthReason::BreakerOpen {
            breaker: "esi".into()
        }]
    );

    let job = rt
        .scheduler()
        .every(60 * SEC)
        .name("report")
        .degraded_after(2)
        .start(|_| Err::<(), _>("db down"))
        .unwrap();
    for n in 1..=2 {
        rt.scheduler().trigger(job);
        wait("run failed", || {
            rt.scheduler().job_stats(job).unwrap().failed == n
        });
    }
    let health = rt.health();
    assert_eq!(
        health.component("scheduler").unwrap().reasons,
        [HealthReason::JobDegraded {
            job: "report".into(),
            consecutive_failures: 2
        }]
    );
    // The breaker recovers after its open duration; the probe succeeds.
    m.advance(60 * SEC);
    breaker.call(|| Ok::<_, ()>(())).unwrap();
    assert!(health.component("enricher").is_some());
    assert!(rt
        .health()
        .component("enricher")
        .unwrap()
        .reasons
        .is_empty());
}

#[test]
fn utilisation_is_busy_time_over_capacity_in_the_window() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .background(|t| t.workers(2).no_memory_watermark())
        .drop_grace(SEC)
        .build()
        .unwrap();
    let bg = rt.background();
    assert_eq!(bg.stats().utilisation, 0.0);
    let gate = CountingGate::default();
    let g = gate.clone();
    let h = bg
        .submit(Priority::Normal, move |_| {
            g.pass();
            Ok::<_, String>(())
        })
        .unwrap();
    wait("running", || gate.entered() == 1);
    m.advance(5 * SEC);
    // One of two workers busy for the whole 5 s, the run still going.
    assert!((bg.stats().utilisation - 0.5).abs() < 1e-9);
    gate.open();
    h.join().unwrap();
    // The worker books the run just after the outcome is visible.
    wait("run booked", || bg.stats().running == 0);
    assert_eq!(bg.stats().busy, 5 * SEC);
    m.advance(5 * SEC);
    assert!((bg.stats().utilisation - 0.25).abs() < 1e-9);
    m.advance(10 * SEC);
    assert_eq!(bg.stats().utilisation, 0.0, "the busy 5 s left the window");
}

/// An in-flight limit is relieved by tasks ending, not by the queue: the
/// pick that follows clears the saturation even when nobody reads stats,
/// so saturating again later starts a new spell instead of reporting the
/// whole time since the first.
#[test]
fn in_flight_saturation_clears_when_tasks_end_without_anyone_looking() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .background(|t| t.workers(2).max_in_flight(2).no_memory_watermark())
        .drop_grace(SEC)
        .build()
        .unwrap();
    let bg = rt.background();
    let fill = || {
        let (gate, held) = common::occupy(bg, 2);
        let refused = bg
            .submit(Priority::Normal, |_| Ok::<_, String>(()))
            .unwrap_err();
        assert_eq!(refused.reason(), &RejectReason::TierLimit { limit: 2 });
        (gate, held)
    };
    let (gate, held) = fill();
    gate.open();
    for h in held {
        h.join().unwrap();
    }
    // One more task runs (its pick sees the limit relieved); no stats read.
    // `submit_wait`: the permits of the two are given back just after their
    // `join` returned.
    m.advance(SEC);
    bg.submit_wait(Priority::Normal, |_| Ok::<_, String>(()), 3600 * SEC)
        .unwrap()
        .join()
        .unwrap();
    m.advance(100 * SEC);
    let (gate, held) = fill();
    assert_eq!(
        bg.stats().saturated_for,
        Some(Duration::ZERO),
        "a new spell"
    );
    gate.open();
    for h in held {
        h.join().unwrap();
    }
}
