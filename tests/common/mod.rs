//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use tierpool::{ManualClock, Runtime};

/// Polls `cond` until it holds or `limit` of real time passes; the only
/// real-time waiting the tests do (for threads to react).
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `wait_until` with the suite's 10 s limit.
pub fn wait(what: &str, cond: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(10), cond)
}

/// A runtime on a manual clock with a small, fixed background tier and no
/// memory watermark (so a loaded test machine cannot pause it).
pub fn runtime(background_workers: usize) -> (ManualClock, Runtime) {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .background(|t| t.workers(background_workers).no_memory_watermark())
        .drop_grace(Duration::from_secs(1))
        .build()
        .expect("runtime");
    (m, rt)
}

/// Advances manual time in `step`s until `cond` holds (10 s real limit).
pub fn advance_until(m: &ManualClock, step: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out advancing time until: {what}"
        );
        m.advance(step);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A generous real-time limit for waits on threads reacting.
pub const LONG: Duration = Duration::from_secs(20);
