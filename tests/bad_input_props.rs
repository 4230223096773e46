//! Bad input (issue 6 item 4): runtimes built from arbitrary configuration
//! values either build or return a typed error — never panic, never hang —
//! and every submit/option path takes extreme values (zero and
//! `Duration::MAX` timeouts, warnings and queue budgets, empty and huge
//! user keys, every `u8` priority) without panicking or losing a task.

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tierpool::{
    BuildError, CancelReason, Cancelled, ManualClock, Priority, Runtime, TaskError, TierConfig,
    MAX_QUEUE_CAPACITY, MAX_WORKERS_LIMIT,
};

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Sizes that stress validation without starting thousands of threads or
/// allocating gigabytes: the big valid ones go to fields that allocate
/// nothing up front.
fn count() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(0),
        1 => Just(usize::MAX),
        1 => Just(MAX_WORKERS_LIMIT + 1),
        12 => 0usize..8
    ]
}

fn capacity() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(0),
        1 => Just(MAX_QUEUE_CAPACITY + 1),
        1 => Just(usize::MAX),
        12 => 1usize..64
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        1 => Just(Duration::ZERO),
        1 => Just(Duration::from_nanos(1)),
        1 => Just(Duration::from_millis(5)),
        2 => Just(Duration::from_secs(1)),
        1 => Just(Duration::MAX),
        4 => (1u64..u64::MAX).prop_map(Duration::from_nanos),
    ]
}

fn opt<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    prop_oneof![2 => Just(None), 1 => s.prop_map(Some)]
}

#[derive(Debug, Clone)]
struct Knobs {
    min: usize,
    max: usize,
    cap: usize,
    in_flight: Option<usize>,
    per_user: Option<usize>,
    warn: Option<Duration>,
    timeout: Option<Duration>,
    grace: Duration,
    keep_alive: Duration,
    reserved: usize,
    starvation: u32,
    watermark: Option<(u64, u64)>,
    sample: Duration,
    restarts: (u32, Duration),
    zombies: usize,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        (
            count(),
            prop_oneof![count(), Just(MAX_WORKERS_LIMIT)],
            capacity(),
        ),
        (opt(count()), opt(count()), opt(duration()), opt(duration())),
        (
            duration(),
            duration(),
            prop_oneof![4 => Just(0), 1 => count()],
            prop_oneof![1 => Just(0u32), 1 => Just(u32::MAX), 8 => 1u32..100],
        ),
        (
            opt((any::<u64>(), any::<u64>())),
            duration(),
            (any::<u32>(), duration()),
            count(),
        ),
    )
        .prop_map(
            |(
                (min, max, cap),
                (in_flight, per_user, warn, timeout),
                (grace, keep_alive, reserved, starvation),
                (watermark, sample, restarts, zombies),
            )| Knobs {
                min,
                max,
                cap,
                in_flight,
                per_user,
                warn,
                timeout,
                grace,
                keep_alive,
                reserved,
                starvation,
                watermark,
                sample,
                restarts,
                zombies,
            },
        )
}

fn apply(k: &Knobs, t: TierConfig) -> TierConfig {
    let t = t
        .max_workers(k.max)
        .min_workers(k.min)
        .queue_capacity(k.cap)
        .max_in_flight(k.in_flight)
        .per_user_limit(k.per_user)
        .warn_after(k.warn)
        .timeout(k.timeout)
        .cancel_grace(k.grace)
        .keep_alive(k.keep_alive)
        .reserved_slots(k.reserved)
        .starvation_limit(k.starvation)
        .memory_sample_interval(k.sample)
        .restart_intensity(k.restarts.0, k.restarts.1)
        .max_zombie_replacements(k.zombies);
    match k.watermark {
        Some((h, l)) => t.memory_watermark(h, l),
        None => t.no_memory_watermark(),
    }
}

#[test]
fn arbitrary_tier_configs_build_or_return_a_typed_error() {
    let _guard = HangGuard::new("arbitrary configs", Duration::from_secs(120));
    let mut runner = TestRunner::new(config(400));
    let (built, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&(knobs(), 0usize..3), |(k, which)| {
            let m = ManualClock::new();
            let b = Runtime::builder()
                .clock(m.clock())
                .drop_grace(Duration::ZERO);
            let b = match which {
                0 => b.ui(|t| apply(&k, t)),
                1 => b.background(|t| apply(&k, t)),
                _ => b.realtime(|t| apply(&k, t)),
            };
            match b.build() {
                Ok(rt) => {
                    built.set(built.get() + 1);
                    // A built runtime works and shuts down.
                    let tier = rt.tiers().nth(which).unwrap();
                    if let Ok(h) = tier.submit(Priority::High, |_| Ok::<_, Cancelled>(1)) {
                        let r = rt.shutdown(Duration::ZERO);
                        let id = h.id();
                        match h.try_result() {
                            Ok(Ok(1)) => {}
                            Ok(Err(TaskError::Cancelled(CancelReason::Shutdown))) => {}
                            Ok(other) => prop_assert!(
                                false,
                                "unexpected outcome {:?}",
                                other.map_err(|e| e.to_string())
                            ),
                            Err(_) => prop_assert!(false, "task {} stranded; report {}", id, r),
                        }
                    }
                }
                Err(BuildError::Config(e)) => {
                    refused.set(refused.get() + 1);
                    prop_assert!(e.field().contains('.'), "{}", e);
                    prop_assert!(!e.reason().is_empty());
                }
                Err(other) => prop_assert!(false, "not a config error: {}", other),
            }
            Ok(())
        })
        .unwrap();
    let (built, refused) = (built.get(), refused.get());
    println!("built {built}, refused {refused}");
    assert!(built > 0 && refused > 0);
}

#[test]
fn every_u8_priority_and_priority_text_is_accepted() {
    let mut last = Priority::Critical;
    for n in 0..=u8::MAX {
        let p = Priority::from(n);
        assert!(p <= last, "priority must not rise with the number");
        last = p;
    }
    assert_eq!(Priority::from(u8::MAX), Priority::Low);
    let mut runner = TestRunner::new(config(256));
    runner
        .run(&any::<String>(), |s| {
            if let Ok(p) = s.parse::<Priority>() {
                prop_assert_eq!(p.as_str(), s.trim().to_ascii_lowercase());
            }
            Ok(())
        })
        .unwrap();
    for p in Priority::ALL {
        assert_eq!(p.as_str().parse::<Priority>().unwrap(), p);
        assert_eq!(
            format!(" {} ", p.as_str().to_uppercase())
                .parse::<Priority>()
                .unwrap(),
            p
        );
    }
}

fn user() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        Just(Some("x".repeat(10_000))),
        Just(Some("\u{0}\u{202e}ユーザー".to_string())),
        any::<String>().prop_map(Some),
    ]
}

#[derive(Debug, Clone)]
struct Opts {
    tier: usize,
    priority: u8,
    user: Option<String>,
    timeout: Option<Duration>,
    warn: Option<Duration>,
    budget: Option<Duration>,
    preemptible: bool,
    restartable: bool,
    wait: Option<Duration>,
}

fn opts() -> impl Strategy<Value = Opts> {
    (
        0usize..3,
        any::<u8>(),
        user(),
        opt(duration()),
        opt(duration()),
        opt(duration()),
        any::<bool>(),
        any::<bool>(),
        opt(prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            Just(Duration::from_millis(1))
        ]),
    )
        .prop_map(
            |(tier, priority, user, timeout, warn, budget, preemptible, restartable, wait)| Opts {
                tier,
                priority,
                user,
                timeout,
                warn,
                budget,
                preemptible,
                restartable,
                wait,
            },
        )
}

/// Every submit path with extreme options, on one runtime (system clock:
/// tiny durations really expire). Each accepted task must reach an
/// outcome within a bounded wait; at the end the counters add up.
#[test]
fn extreme_submit_options_never_panic_and_always_resolve() {
    let _guard = HangGuard::new("extreme submit options", Duration::from_secs(120));
    let rt = Runtime::builder()
        .realtime(|t| t.workers(4).reserved_slots(1))
        .build()
        .unwrap();
    let mut runner = TestRunner::new(config(300));
    runner
        .run(&opts(), |o| {
            let tier = rt.tiers().nth(o.tier).unwrap();
            let body = |ctx: &tierpool::TaskContext| {
                let _ = (ctx.remaining(), ctx.deadline(), ctx.user(), ctx.attempt());
                ctx.checkpoint()?;
                Ok::<_, Cancelled>(ctx.priority())
            };
            macro_rules! options {
                ($b:expr) => {{
                    let mut b = $b.priority(Priority::from(o.priority));
                    if let Some(u) = &o.user {
                        b = b.user(u);
                    }
                    if let Some(t) = o.timeout {
                        b = b.timeout(t);
                    }
                    if let Some(w) = o.warn {
                        b = b.warn_after(w);
                    }
                    if let Some(q) = o.budget {
                        b = b.queue_budget(q);
                    }
                    b.preemptible(o.preemptible)
                }};
            }
            let b = options!(tier.task(body));
            let r = match (o.restartable, o.wait) {
                (false, None) => b.submit(),
                (false, Some(w)) => b.submit_wait(w),
                (true, None) => b.restartable().submit(),
                (true, Some(w)) => b.restartable().submit_wait(w),
            };
            match r {
                Ok(h) => match h.join_timeout(Duration::from_secs(20)) {
                    Ok(Ok(p)) => prop_assert_eq!(p, Priority::from(o.priority)),
                    Ok(Err(e)) => prop_assert!(
                        matches!(
                            e.cancel_reason(),
                            Some(CancelReason::Timeout | CancelReason::QueueExpired)
                        ) || e.is_failed(),
                        "unexpected outcome {}",
                        e
                    ),
                    Err(h) => {
                        prop_assert!(false, "task {} did not resolve: {:?}", h.id(), h.status())
                    }
                },
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            Ok(())
        })
        .unwrap();
    assert_quiescent(&rt);
    let report = rt.shutdown(Duration::from_secs(5));
    assert!(report.never_started.is_empty());
}

#[test]
fn manual_clock_and_handles_take_extreme_durations() {
    let m = ManualClock::new();
    m.advance(Duration::MAX); // saturates: no panic
    let rt = Runtime::builder().clock(m.clock()).build().unwrap();
    let h = rt
        .ui()
        .task(|ctx| {
            ctx.sleep(Duration::ZERO)?;
            Ok::<_, Cancelled>(ctx.remaining())
        })
        .timeout(Duration::MAX)
        .warn_after(Duration::MAX)
        .queue_budget(Duration::MAX)
        .user("")
        .submit()
        .unwrap();
    assert_eq!(h.join_timeout(Duration::MAX).unwrap().unwrap(), None);
    let h = rt
        .ui()
        .submit(Priority::from(200), |_| Ok::<_, Cancelled>(()))
        .unwrap();
    assert!(h.join_timeout(Duration::MAX).unwrap().is_ok());
    let r = rt.shutdown(Duration::MAX);
    assert!(r.drained_in_time);
    assert_eq!(rt.shutdown(Duration::ZERO), r);
}
