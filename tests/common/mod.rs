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

/// A gate tasks wait at until the test opens it; counts who arrived.
#[derive(Clone, Default)]
pub struct Gate(std::sync::Arc<(std::sync::Mutex<(bool, u32)>, std::sync::Condvar)>);

impl Gate {
    /// Arrive, then wait (in short real-time slices) until opened.
    pub fn pass(&self) {
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap();
        g.1 += 1;
        cv.notify_all();
        while !g.0 {
            g = cv.wait_timeout(g, Duration::from_millis(20)).unwrap().0;
        }
    }

    /// How many arrived.
    pub fn entered(&self) -> u32 {
        self.0 .0.lock().unwrap().1
    }

    /// Lets everyone through, now and later.
    pub fn open(&self) {
        self.0 .0.lock().unwrap().0 = true;
        self.0 .1.notify_all();
    }
}
