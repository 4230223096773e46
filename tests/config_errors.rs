//! Every configuration error path of `TierConfig::validate`: `build()`
//! refuses it with a typed error naming `<tier>.<field>` and why, for
//! every tier, and starts no thread.

mod common;

use std::time::Duration;

use tierpool::{BuildError, Runtime, TierConfig, MAX_QUEUE_CAPACITY, MAX_WORKERS_LIMIT};

type Tweak = fn(TierConfig) -> TierConfig;

/// (bad setting, field it must name, a word the reason must contain)
const CASES: &[(Tweak, &str, &str)] = &[
    (|t| t.max_workers(0), "max_workers", "at least 1"),
    (
        |t| t.max_workers(MAX_WORKERS_LIMIT + 1),
        "max_workers",
        "limit",
    ),
    (|t| t.max_workers(usize::MAX), "max_workers", "limit"),
    (
        |t| t.max_workers(4).min_workers(5),
        "min_workers",
        "max_workers",
    ),
    (|t| t.queue_capacity(0), "queue_capacity", "at least 1"),
    (
        |t| t.queue_capacity(MAX_QUEUE_CAPACITY + 1),
        "queue_capacity",
        "limit",
    ),
    (|t| t.max_in_flight(0), "max_in_flight", "at least 1"),
    (|t| t.per_user_limit(0), "per_user_limit", "at least 1"),
    (
        |t| t.max_in_flight(5).per_user_limit(6),
        "per_user_limit",
        "max_in_flight",
    ),
    (|t| t.timeout(Duration::ZERO), "timeout", "more than zero"),
    (
        |t| t.warn_after(Duration::ZERO),
        "warn_after",
        "more than zero",
    ),
    (
        |t| {
            t.timeout(Duration::from_secs(1))
                .warn_after(Duration::from_secs(1))
        },
        "warn_after",
        "timeout",
    ),
    (
        |t| t.timeout(Duration::from_secs(1)).warn_after(Duration::MAX),
        "warn_after",
        "timeout",
    ),
    (
        |t| t.workers(4).reserved_slots(4),
        "reserved_slots",
        "max_workers",
    ),
    (|t| t.starvation_limit(0), "starvation_limit", "at least 1"),
    (|t| t.memory_watermark(0, 0), "memory_watermark", "high"),
    (|t| t.memory_watermark(10, 10), "memory_watermark", "below"),
    (
        |t| t.memory_sample_interval(Duration::ZERO),
        "memory_sample_interval",
        "zero",
    ),
    (
        |t| t.restart_intensity(1, Duration::ZERO),
        "restart_window",
        "more than zero",
    ),
];

/// The thread-count check needs no other test of this file building a
/// runtime meanwhile.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn build_with(tier: &str, f: Tweak) -> Result<Runtime, BuildError> {
    let b = Runtime::builder();
    match tier {
        "ui" => b.ui(f),
        "background" => b.background(f),
        _ => b.realtime(f),
    }
    .build()
}

#[test]
fn every_config_error_names_its_field_for_every_tier() {
    let _serial = serial();
    // Threads of runtimes dropped just before (rayon's exit on their own)
    // are gone first.
    common::wait_threads_back_to(0);
    let before = common::thread_count();
    for tier in ["ui", "background", "realtime"] {
        for (i, (tweak, field, why)) in CASES.iter().enumerate() {
            let err = match build_with(tier, *tweak) {
                Ok(_) => panic!("case {i} ({field}) on {tier} was accepted"),
                Err(e) => e,
            };
            let c = err
                .as_config()
                .unwrap_or_else(|| panic!("not a config error: {err}"));
            assert_eq!(c.field(), format!("{tier}.{field}"), "case {i}");
            assert!(c.reason().contains(why), "case {i}: {:?}", c.reason());
            let shown = err.to_string();
            assert!(shown.contains(&format!("{tier}.{field}")), "{shown}");
            assert!(std::error::Error::source(&err).is_some());
        }
    }
    assert_eq!(
        common::thread_count(),
        before,
        "a refused build starts nothing"
    );
}

#[test]
fn the_first_bad_field_is_named() {
    let _serial = serial();
    let err = Runtime::builder()
        .ui(|t| t.max_workers(0).queue_capacity(0))
        .realtime(|t| t.starvation_limit(0))
        .build()
        .unwrap_err();
    assert_eq!(err.as_config().unwrap().field(), "ui.max_workers");
}

#[test]
fn edge_values_that_are_valid_build() {
    let _serial = serial();
    let ok: &[Tweak] = &[
        |t| t.restart_intensity(0, Duration::ZERO),
        |t| t.timeout(None).warn_after(Duration::MAX),
        |t| t.timeout(Duration::MAX).warn_after(Duration::from_secs(1)),
        |t| t.min_workers(0),
        |t| t.max_in_flight(None).per_user_limit(usize::MAX),
        |t| t.cancel_grace(Duration::ZERO).keep_alive(Duration::ZERO),
        |t| t.cancel_grace(Duration::MAX).keep_alive(Duration::MAX),
        |t| t.memory_watermark(u64::MAX, u64::MAX - 1),
        |t| t.starvation_limit(u32::MAX).max_zombie_replacements(0),
    ];
    for tier in ["ui", "background", "realtime"] {
        for (i, f) in ok.iter().enumerate() {
            let rt = build_with(tier, *f).unwrap_or_else(|e| panic!("case {i} on {tier}: {e}"));
            rt.shutdown(Duration::ZERO);
        }
    }
}
