//! Resident-memory sampling and the watermark gate of the background tier.
//!
//! Above the high watermark the tier starts nothing new from its queue
//! (running work continues); below the low one it resumes. The gap between
//! the two keeps it from flapping. Sampling is lazy: a worker about to take
//! work samples if the last sample is older than the interval, so an idle
//! tier samples nothing.

use std::time::Instant;

use crate::clock::Clock;
use crate::pool::config::Watermark;
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering};

/// Where resident-memory readings come from: the process RSS by default;
/// tests and embedders can supply their own.
pub type MemoryProbe = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// The process's resident set size in bytes (Linux: `VmRSS` from
/// `/proc/self/status`, which is in kB whatever the page size; `None`
/// elsewhere, which turns the watermark off).
pub fn process_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// 80 % / 70 % of physical memory where it can be read; none elsewhere.
pub(crate) fn default_watermark() -> Option<Watermark> {
    let total = physical_memory()?;
    Some(Watermark {
        high: total / 10 * 8,
        low: total / 10 * 7,
    })
}

pub(crate) struct MemoryGate {
    watermark: Option<Watermark>,
    probe: MemoryProbe,
    interval: std::time::Duration,
    last_sample: Mutex<Option<Instant>>,
    paused: AtomicBool,
    last_rss: AtomicU64,
    pauses: AtomicU64,
}

impl MemoryGate {
    pub(crate) fn new(
        watermark: Option<Watermark>,
        probe: MemoryProbe,
        interval: std::time::Duration,
    ) -> Self {
        MemoryGate {
            watermark,
            probe,
            interval,
            last_sample: Mutex::new(None),
            paused: AtomicBool::new(false),
            last_rss: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.watermark.is_some()
    }

    /// Whether the tier may start new work now (sampling if due).
    #[inline]
    pub(crate) fn allows_work(&self, clock: &Clock) -> bool {
        match self.watermark {
            None => true,
            Some(w) => self.sample_and_allow(w, clock),
        }
    }

    fn sample_and_allow(&self, w: Watermark, clock: &Clock) -> bool {
        let now = clock.now();
        {
            let mut last = self.last_sample.lock();
            let due = last.is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
            if due {
                *last = Some(now);
                drop(last);
                if let Some(rss) = (self.probe)() {
                    self.last_rss.store(rss, Ordering::Relaxed);
                    let was = self.paused.load(Ordering::Acquire);
                    if !was && rss >= w.high {
                        self.paused.store(true, Ordering::Release);
                        self.pauses.fetch_add(1, Ordering::Relaxed);
                        tlog!(warn, target: "tierpool::memory",
                            "resident memory {rss} B is above the high watermark {} B: background tier paused", w.high);
                    } else if was && rss < w.low {
                        self.paused.store(false, Ordering::Release);
                        tlog!(info, target: "tierpool::memory",
                            "resident memory {rss} B is below the low watermark {} B: background tier resumed", w.low);
                    }
                }
            }
        }
        !self.paused.load(Ordering::Acquire)
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub(crate) fn interval(&self) -> std::time::Duration {
        self.interval
    }

    pub(crate) fn last_rss(&self) -> Option<u64> {
        match self.last_rss.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    pub(crate) fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use std::time::Duration;

    #[test]
    fn rss_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_rss().unwrap() > 0);
        }
    }

    #[test]
    fn gate_pauses_above_high_and_resumes_below_low() {
        let m = ManualClock::new();
        let c = m.clock();
        let rss = Arc::new(AtomicU64::new(10));
        let r2 = rss.clone();
        let gate = MemoryGate::new(
            Some(Watermark { high: 100, low: 50 }),
            Arc::new(move || Some(r2.load(Ordering::Relaxed))),
            Duration::from_secs(1),
        );
        assert!(gate.allows_work(&c));
        rss.store(150, Ordering::Relaxed);
        assert!(
            gate.allows_work(&c),
            "not sampled again before the interval"
        );
        m.advance(Duration::from_secs(1));
        assert!(!gate.allows_work(&c));
        rss.store(70, Ordering::Relaxed);
        m.advance(Duration::from_secs(1));
        assert!(
            !gate.allows_work(&c),
            "between the watermarks: stays paused"
        );
        rss.store(40, Ordering::Relaxed);
        m.advance(Duration::from_secs(1));
        assert!(gate.allows_work(&c));
        assert_eq!(gate.pauses(), 1);
    }
}
