//! Scheduler behaviour under the manual clock: fire times, missed runs,
//! overlap, load rules, supervision of failing runs, and job control.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{occupy, runtime, wait, wait_runs_booked, CountingGate};
use proptest::prelude::*;
use tierpool::{JobHealth, LoadRule, MissedRun, RunKind, Scheduler, SkipReason};

const SEC: Duration = Duration::from_secs(1);

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Fire n is for start + n·interval whatever the steps time moves in,
    /// and it is dispatched as soon as time reaches it.
    #[test]
    fn fire_times_do_not_drift(
        interval_s in 1u64..100,
        steps in prop::collection::vec(1u32..=100, 1..15),
    ) {
        let (m, rt) = runtime(2);
        let interval = Duration::from_secs(interval_s);
        let s = Scheduler::builder(rt.background()).seed(1).build().unwrap();
        let fired: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
        let sink = fired.clone();
        let t0 = m.now();
        let id = s.every(interval)
            .initial_delay(interval)
            .misfire_threshold(interval)
            .start(move |ctx| {
                sink.lock().unwrap().push((ctx.scheduled_for().unwrap(), ctx.task().clock().now()));
                Ok::<_, String>(())
            })
            .unwrap();
        let start = t0 + interval;
        for pct in steps {
            // At most one interval per step: never a missed fire.
            m.advance(interval * pct / 100);
            let now = m.now();
            let expected = if now < start { 0 } else { ((now - start).as_nanos() / interval.as_nanos()) as u64 + 1 };
            wait("runs to catch up", || s.job_stats(id).unwrap().succeeded == expected);
        }
        let fired = fired.lock().unwrap();
        for (n, (scheduled, at)) in fired.iter().enumerate() {
            prop_assert_eq!(*scheduled, start + interval * n as u32);
            prop_assert!(*at >= *scheduled && *at < *scheduled + interval);
        }
        let st = s.job_stats(id).unwrap();
        prop_assert_eq!(st.missed, 0);
        prop_assert_eq!(st.runs, fired.len() as u64);
    }

    /// After a jump over k fires, Skip runs only if the latest fire is
    /// within the misfire threshold, RunOnceLate runs exactly once either
    /// way, and both carry on on the original grid.
    #[test]
    fn missed_run_policy_does_what_it_says(
        late in any::<bool>(),
        k in 1u32..50,
        frac_pct in 0u32..100,
    ) {
        let (m, rt) = runtime(2);
        let interval = Duration::from_secs(60);
        let threshold = Duration::from_secs(6);
        let policy = if late { MissedRun::RunOnceLate } else { MissedRun::Skip };
        let s = Scheduler::builder(rt.background()).seed(2).build().unwrap();
        let kinds: Arc<Mutex<Vec<(RunKind, Instant)>>> = Arc::default();
        let sink = kinds.clone();
        let start = m.now();
        let id = s.every(interval)
            .initial_delay(Duration::ZERO)
            .misfire_threshold(threshold)
            .missed_runs(policy)
            .start(move |ctx| {
                sink.lock().unwrap().push((ctx.kind(), ctx.scheduled_for().unwrap()));
                Ok::<_, String>(())
            })
            .unwrap();
        wait("fire 0", || s.job_stats(id).unwrap().succeeded == 1);

        let x = interval * frac_pct / 100;
        m.advance(interval * k + x);
        let on_time = x < threshold;
        let missed = u64::from(k - 1) + u64::from(!on_time);
        let runs = 1 + u64::from(on_time || late);
        wait("the jump to be handled", || {
            let st = s.job_stats(id).unwrap();
            st.missed == missed && st.succeeded == runs
        });

        // Back on the grid: the next fire is at start + (k+1)·interval.
        m.advance(interval * (k + 1) - (interval * k + x));
        wait("the next grid fire", || s.job_stats(id).unwrap().succeeded == runs + 1);
        let st = s.job_stats(id).unwrap();
        prop_assert_eq!(st.missed, missed);
        prop_assert_eq!(st.late_runs, u64::from(late && !on_time));
        let kinds = kinds.lock().unwrap();
        let last = *kinds.last().unwrap();
        prop_assert_eq!(last, (RunKind::OnTime, start + interval * (k + 1)));
        if !late && !on_time {
            prop_assert_eq!(
                st.last_skip.as_ref().map(|r| r.reason.clone()),
                Some(SkipReason::Missed { fires: missed })
            );
        }
    }
}

#[test]
fn a_panicking_run_does_not_stop_the_next_and_repeated_failures_degrade() {
    let (m, rt) = runtime(2);
    let s = Scheduler::builder(rt.background()).build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let id = s
        .every(SEC)
        .name("flaky")
        .degraded_after(2)
        .start(move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            match n {
                1 => panic!("run {n} exploded"),
                2 => Err(format!("run {n} failed")),
                _ => Ok(()),
            }
        })
        .unwrap();
    m.advance(SEC);
    wait("panicked run", || s.job_stats(id).unwrap().panicked == 1);
    assert_eq!(s.job_stats(id).unwrap().health, JobHealth::Healthy);
    m.advance(SEC);
    wait("failed run", || s.job_stats(id).unwrap().failed == 1);
    let st = s.job_stats(id).unwrap();
    assert_eq!(
        st.health,
        JobHealth::Degraded {
            consecutive_failures: 2
        }
    );
    assert_eq!(st.last_error.as_deref(), Some("run 2 failed"));
    assert!(!s.stats().is_healthy());
    m.advance(SEC);
    wait("recovering run", || s.job_stats(id).unwrap().succeeded == 1);
    let st = s.job_stats(id).unwrap();
    assert_eq!(st.health, JobHealth::Healthy);
    assert_eq!(st.runs, 3);
    assert!(s.stats().is_healthy());
    // The tier saw the panic too. Waited for: the job's stats count the
    // panic inside the run, the tier when the worker settles it after, and
    // that worker may be descheduled in between while the other runs on.
    wait("tier counted the panic", || {
        rt.background().stats().panicked == 1
    });
}

#[test]
fn pause_resume_trigger_remove() {
    let (m, rt) = runtime(2);
    let s = Scheduler::builder(rt.background()).build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let id = s
        .every(10 * SEC)
        .start(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(())
        })
        .unwrap();
    m.advance(10 * SEC);
    wait("first run", || calls.load(Ordering::SeqCst) == 1);

    assert!(s.pause(id));
    m.advance(35 * SEC); // fires at 20, 30, 40 pass while paused
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(s.job_stats(id).unwrap().paused);

    // Trigger works while paused: an explicit request.
    assert!(s.trigger(id));
    wait("triggered run", || calls.load(Ordering::SeqCst) == 2);
    assert_eq!(s.job_stats(id).unwrap().triggered, 1);

    assert!(s.resume(id));
    let st = s.job_stats(id).unwrap();
    assert_eq!(st.missed, 0, "paused fires are not missed");
    let t_next = st.next_fire.unwrap();
    m.advance(t_next - m.now());
    wait("run after resume", || calls.load(Ordering::SeqCst) == 3);

    assert!(s.remove(id));
    assert!(!s.remove(id));
    assert!(!s.trigger(id));
    assert!(s.job_stats(id).is_none());
    m.advance(60 * SEC);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

fn blocking_job(
    policy: MissedRun,
) -> (
    tierpool::ManualClock,
    tierpool::Runtime,
    Scheduler,
    tierpool::JobId,
    CountingGate,
) {
    let (m, rt) = runtime(2);
    let s = Scheduler::builder(rt.background()).build().unwrap();
    let gate = CountingGate::default();
    let g = gate.clone();
    let id = s
        .every(10 * SEC)
        .misfire_threshold(5 * SEC)
        .missed_runs(policy)
        .start(move |_| {
            g.pass();
            Ok::<_, String>(())
        })
        .unwrap();
    (m, rt, s, id, gate)
}

#[test]
fn runs_never_overlap_skip_counts_the_fire() {
    let (m, _rt, s, id, gate) = blocking_job(MissedRun::Skip);
    m.advance(10 * SEC);
    wait("run 1 inside", || gate.entered() == 1);
    m.advance(10 * SEC); // fire 2 due while run 1 still runs
    wait("overlap recorded", || {
        s.job_stats(id).unwrap().skipped_overlap == 1
    });
    let st = s.job_stats(id).unwrap();
    assert_eq!(st.runs, 1);
    assert_eq!(st.last_skip.map(|r| r.reason), Some(SkipReason::Overlap));
    gate.open();
    wait("run 1 done", || s.job_stats(id).unwrap().succeeded == 1);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(s.job_stats(id).unwrap().runs, 1, "no catch-up under Skip");
}

#[test]
fn runs_never_overlap_run_once_late_catches_up_once() {
    let (m, _rt, s, id, gate) = blocking_job(MissedRun::RunOnceLate);
    m.advance(10 * SEC);
    wait("run 1 inside", || gate.entered() == 1);
    for _ in 0..3 {
        m.advance(10 * SEC); // three fires while run 1 runs
                             // Until the timer has seen this fire (it moves the next fire time
                             // on): under load it used to see none of them before run 1
                             // returned, and then ran on time instead of late.
        let now = m.now();
        wait("fire seen", || {
            s.job_stats(id).unwrap().next_fire.is_some_and(|t| t > now)
        });
    }
    assert_eq!(gate.entered(), 1, "never two runs at once");
    gate.open();
    wait("one late run", || s.job_stats(id).unwrap().succeeded >= 2);
    std::thread::sleep(Duration::from_millis(20));
    let st = s.job_stats(id).unwrap();
    assert_eq!((st.runs, st.late_runs), (2, 1));
}

/// A fire due on time just as the run that kept a late run waiting returns
/// takes the late run's place: one run, not an on-time run and then a
/// stale late one. Run 1 holds the job while fire 2 comes due (a late run
/// waits for it), then moves the clock to fire 3 itself and returns, so
/// the timer's next look usually finds fire 3 on time with the late run
/// still waiting (if it looks in the microseconds before run 1 returns,
/// fire 3 becomes the late run instead: two runs either way).
#[test]
fn run_once_late_never_bursts_when_a_fire_is_due_as_the_run_returns() {
    let (m, rt) = runtime(2);
    let s = Scheduler::builder(rt.background()).build().unwrap();
    let gate = CountingGate::default();
    let first = Arc::new(AtomicBool::new(true));
    let (g, clock, f) = (gate.clone(), m.clone(), first.clone());
    let id = s
        .every(10 * SEC)
        .misfire_threshold(5 * SEC)
        .missed_runs(MissedRun::RunOnceLate)
        .start(move |_| {
            g.pass();
            if f.swap(false, Ordering::SeqCst) {
                // Run 1, on its way out: fire 3 comes due.
                clock.advance(10 * SEC);
            }
            Ok::<_, String>(())
        })
        .unwrap();
    m.advance(10 * SEC); // fire 1: run 1 starts
    wait("run 1 inside", || gate.entered() == 1);
    m.advance(10 * SEC); // fire 2 while run 1 runs: a late run waits
    let now = m.now();
    wait("fire 2 seen", || {
        s.job_stats(id).unwrap().next_fire.is_some_and(|t| t > now)
    });
    gate.open();
    wait("a second run", || s.job_stats(id).unwrap().succeeded >= 2);
    // A third run would be started as soon as the second returned.
    std::thread::sleep(Duration::from_millis(100));
    let st = s.job_stats(id).unwrap();
    assert_eq!(st.runs, 2, "one run for fires 2 and 3, not two: {st:?}");
    // Fire 2 either became the late run or, covered by fire 3's on-time
    // run, counts as missed.
    assert_eq!(st.late_runs + st.missed, 1, "{st:?}");
    assert!(!st.running);
}

#[test]
fn load_aware_jobs_skip_with_the_reason_or_shrink() {
    let (m, rt) = runtime(2);
    let s = Scheduler::builder(rt.background()).build().unwrap();
    let scales: Arc<Mutex<Vec<f64>>> = Arc::default();
    let sink = scales.clone();
    let skipper = s
        .every(10 * SEC)
        .load_aware(LoadRule::skip_above(0.5))
        .start(|_| Ok::<_, String>(()))
        .unwrap();
    let _shrinker = s
        .every(10 * SEC)
        .load_aware(LoadRule::shrink_above(0.5, 0.25))
        .tier(rt.ui())
        .start(move |ctx| {
            sink.lock().unwrap().push(ctx.scale());
            Ok::<_, String>(())
        })
        .unwrap();
    // Fill both background workers.
    let (gate, handles) = occupy(rt.background(), 2);
    m.advance(10 * SEC);
    wait("skip recorded", || {
        s.job_stats(skipper).unwrap().skipped_load == 1
    });
    let st = s.job_stats(skipper).unwrap();
    assert_eq!(st.runs, 0);
    assert_eq!(
        st.last_skip.unwrap().reason,
        SkipReason::Load {
            utilisation: 1.0,
            threshold: 0.5
        }
    );
    // The shrinker runs on the (idle) ui tier: full scale.
    wait("shrinker ran", || scales.lock().unwrap().len() == 1);
    assert_eq!(scales.lock().unwrap()[0], 1.0);
    gate.open();
    for h in handles {
        h.join().unwrap();
    }
    wait_runs_booked(rt.background());
    m.advance(10 * SEC);
    wait("skipper runs once idle", || {
        s.job_stats(skipper).unwrap().succeeded == 1
    });
}

/// The load rule reads utilisation over the tier's window, not the
/// workers busy at the instant: a burst in the last second of a quiet
/// window does not skip the run.
#[test]
fn load_rule_judges_the_window_not_the_instant() {
    let (m, rt) = runtime(2);
    let s = Scheduler::builder(rt.background()).build().unwrap();
    // A first utilisation sample: the window starts now.
    assert_eq!(rt.background().stats().utilisation, 0.0);
    let id = s
        .every(10 * SEC)
        .load_aware(LoadRule::skip_above(0.5))
        .start(|_| Ok::<_, String>(()))
        .unwrap();
    m.advance(9 * SEC);
    // Both workers busy for the window's last second: 1.0 right now, but
    // 2 s of busy time over 2 workers × 10 s = 0.1 over the window.
    let (gate, handles) = occupy(rt.background(), 2);
    m.advance(SEC);
    wait("run dispatched", || s.job_stats(id).unwrap().runs == 1);
    assert_eq!(s.job_stats(id).unwrap().skipped_load, 0);
    gate.open();
    for h in handles {
        h.join().unwrap();
    }
    wait("run done", || s.job_stats(id).unwrap().succeeded == 1);
}

#[test]
fn shrink_passes_the_scale_to_the_job() {
    let (m, rt) = runtime(2);
    let s = Scheduler::builder(rt.background()).build().unwrap();
    let scales: Arc<Mutex<Vec<f64>>> = Arc::default();
    let sink = scales.clone();
    let (gate, blockers) = occupy(rt.background(), 1);
    let id = s
        .every(SEC)
        .load_aware(LoadRule::shrink_above(0.4, 0.25))
        .start(move |ctx| {
            sink.lock().unwrap().push(ctx.scale());
            Ok::<_, String>(())
        })
        .unwrap();
    m.advance(SEC);
    wait("shrunk run", || scales.lock().unwrap().len() == 1);
    assert_eq!(scales.lock().unwrap()[0], 0.25);
    assert_eq!(s.job_stats(id).unwrap().shrunk, 1);
    gate.open();
    for h in blockers {
        h.join().unwrap();
    }
}

#[test]
fn job_builder_names_the_bad_field() {
    let (_m, rt) = runtime(1);
    let s = Scheduler::builder(rt.background()).build().unwrap();
    let field =
        |r: Result<tierpool::JobId, tierpool::ConfigError>| r.unwrap_err().field().to_string();
    let ok = |_: &tierpool::JobContext<'_>| Ok::<_, String>(());
    assert_eq!(field(s.every(Duration::ZERO).start(ok)), "interval");
    assert_eq!(field(s.every(SEC).jitter(SEC).start(ok)), "jitter");
    assert_eq!(
        field(s.every(SEC).misfire_threshold(2 * SEC).start(ok)),
        "misfire_threshold"
    );
    assert_eq!(
        field(s.every(SEC).degraded_after(0).start(ok)),
        "degraded_after"
    );
    assert_eq!(
        field(
            s.every(SEC)
                .load_aware(LoadRule::skip_above(f64::NAN))
                .start(ok)
        ),
        "load_aware.threshold"
    );
    assert_eq!(
        field(
            s.every(SEC)
                .load_aware(LoadRule::shrink_above(0.5, 0.0))
                .start(ok)
        ),
        "load_aware.scale"
    );
    assert_eq!(
        field(s.every(SEC).initial_delay(Duration::MAX).start(ok)),
        "initial_delay"
    );
    s.shutdown();
    assert_eq!(field(s.every(SEC).start(ok)), "scheduler");
}

#[test]
fn shutdown_joins_the_timer_and_stops_firing() {
    let (m, rt) = runtime(1);
    let s = Scheduler::builder(rt.background()).build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    s.every(SEC)
        .start(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(())
        })
        .unwrap();
    s.shutdown();
    s.shutdown(); // idempotent
    assert!(s.is_shut_down());
    m.advance(10 * SEC);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn jitter_delays_fires_within_bounds_and_is_seeded() {
    let run = |seed| {
        let (m, rt) = runtime(1);
        let s = Scheduler::builder(rt.background())
            .seed(seed)
            .build()
            .unwrap();
        let id = s
            .every(100 * SEC)
            .jitter(10 * SEC)
            .start(|_| Ok::<_, String>(()))
            .unwrap();
        let nominal = m.now() + 100 * SEC;
        let next = s.job_stats(id).unwrap().next_fire.unwrap();
        assert!(next >= nominal && next <= nominal + 10 * SEC);
        next - nominal
    };
    assert_eq!(run(5), run(5));
}
