//! Time for everything in tierpool: the system clock in production, a
//! manual clock in tests.
//!
//! Deadlines, warnings, queue budgets, keep-alives, backoff and schedules all
//! read [`Clock::now`], so a test can move time forward with
//! [`ManualClock::advance`] instead of sleeping. Waits are expressed as a
//! deadline on this clock; [`Clock::wait_budget`] turns one into how long a
//! thread may really block. Under the system clock that is the exact
//! remaining time (the watchdog and idle workers park until the next event,
//! never on a polling tick); under a manual clock it is a short real-time
//! poll, because manual time can jump at any moment.

use std::fmt;
use std::time::{Duration, Instant};

use crate::sync::{Arc, Mutex};

/// How often a thread blocked on a manual-clock deadline looks at the clock
/// again. Test-only cost; the system clock never polls.
const MANUAL_POLL: Duration = Duration::from_millis(1);

/// The source of time for a runtime and everything built on it.
///
/// `Clock::system()` is the default. Tests build a [`ManualClock`] and pass
/// `manual.clock()` to the runtime builder.
///
/// ```
/// use std::time::Duration;
/// use tierpool::ManualClock;
///
/// let manual = ManualClock::new();
/// let clock = manual.clock();
/// let t0 = clock.now();
/// manual.advance(Duration::from_secs(30));
/// assert_eq!(clock.now() - t0, Duration::from_secs(30));
/// ```
#[derive(Clone)]
pub struct Clock {
    kind: ClockKind,
    /// The origin of [`Clock::nanos`]: the engine keeps instants as integer
    /// nanoseconds past it (one conversion per clock read instead of one
    /// per subtraction on the hot path). Process-wide for the system clock,
    /// the start for a manual one.
    epoch: Instant,
}

#[derive(Clone)]
enum ClockKind {
    System,
    Manual(Arc<Mutex<Instant>>),
}

impl Clock {
    /// The operating system's monotonic clock.
    pub fn system() -> Self {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        Clock {
            kind: ClockKind::System,
            epoch: *EPOCH.get_or_init(Instant::now),
        }
    }

    /// Nanoseconds from this clock's epoch to `at` (0 for an earlier
    /// instant, saturating at `u64::MAX`: 584 years).
    #[inline]
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
    }

    /// The instant `nanos` past the epoch (`None` if not representable).
    pub(crate) fn instant_at(&self, nanos: u64) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_nanos(nanos))
    }

    /// The current instant on this clock.
    #[inline]
    pub fn now(&self) -> Instant {
        match &self.kind {
            ClockKind::System => Instant::now(),
            ClockKind::Manual(now) => *now.lock(),
        }
    }

    /// Whether this is a manual (test) clock.
    pub fn is_manual(&self) -> bool {
        matches!(self.kind, ClockKind::Manual(_))
    }

    /// `now + d`, or `None` when that is too far away to represent (a
    /// `Duration::MAX` timeout means "no deadline", never a panic).
    pub fn deadline_after(&self, d: Duration) -> Option<Instant> {
        self.now().checked_add(d)
    }

    /// How long a thread may block in real time while waiting for
    /// `deadline` on this clock: `None` means "until notified".
    pub(crate) fn wait_budget(&self, deadline: Option<Instant>) -> Option<Duration> {
        let deadline = deadline?;
        let now = self.now();
        let remaining = deadline.saturating_duration_since(now);
        match self.kind {
            ClockKind::System => Some(remaining),
            ClockKind::Manual(_) => Some(remaining.min(MANUAL_POLL)),
        }
    }

    /// Sleeps until `deadline` on this clock (test helpers and examples; the
    /// runtime itself never sleeps on a fixed tick).
    pub fn sleep_until(&self, deadline: Instant) {
        loop {
            match self.wait_budget(Some(deadline)) {
                Some(d) if d.is_zero() => return,
                Some(d) => std::thread::sleep(d),
                None => return,
            }
            if self.now() >= deadline {
                return;
            }
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ClockKind::System => f.write_str("Clock::System"),
            ClockKind::Manual(_) => f.write_str("Clock::Manual"),
        }
    }
}

/// A clock that only moves when told to: the way to test timeouts,
/// backoff and schedules without sleeping.
///
/// Cloning gives another handle on the same time.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{ManualClock, Priority, Runtime};
///
/// let manual = ManualClock::new();
/// let rt = Runtime::builder().clock(manual.clock()).build()?;
/// let wake_at = manual.now() + Duration::from_secs(60);
/// let h = rt.background().submit(Priority::Normal, move |ctx| {
///     ctx.sleep_until(wake_at)?; // waits on manual time
///     Ok::<_, tierpool::Cancelled>("done")
/// })?;
/// manual.advance(Duration::from_secs(61));
/// assert_eq!(h.join().unwrap(), "done");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
    start: Instant,
}

impl ManualClock {
    /// A manual clock starting at the current instant.
    pub fn new() -> Self {
        let start = Instant::now();
        ManualClock {
            now: Arc::new(Mutex::new(start)),
            start,
        }
    }

    /// A [`Clock`] reading this manual time, for builders.
    pub fn clock(&self) -> Clock {
        Clock {
            kind: ClockKind::Manual(self.now.clone()),
            epoch: self.start,
        }
    }

    /// The current manual instant.
    pub fn now(&self) -> Instant {
        *self.now.lock()
    }

    /// Moves time forward by `d` (saturating far in the future).
    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock();
        if let Some(next) = now.checked_add(d) {
            *now = next;
        }
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock").finish_non_exhaustive()
    }
}

impl From<ManualClock> for Clock {
    fn from(m: ManualClock) -> Clock {
        m.clock()
    }
}

impl From<&ManualClock> for Clock {
    fn from(m: &ManualClock) -> Clock {
        m.clock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let m = ManualClock::new();
        let c = m.clock();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        m.advance(Duration::from_millis(5));
        assert_eq!(c.now() - t0, Duration::from_millis(5));
    }

    #[test]
    fn huge_durations_do_not_panic() {
        let m = ManualClock::new();
        m.advance(Duration::MAX);
        assert!(m.clock().deadline_after(Duration::MAX).is_none());
        assert!(Clock::system().deadline_after(Duration::MAX).is_none());
    }

    #[test]
    fn wait_budget_is_exact_for_system_and_polls_for_manual() {
        let s = Clock::system();
        let d = s.deadline_after(Duration::from_secs(10));
        assert!(s.wait_budget(d).unwrap() > Duration::from_secs(9));
        let m = ManualClock::new();
        let c = m.clock();
        let d = c.deadline_after(Duration::from_secs(10));
        assert!(c.wait_budget(d).unwrap() <= MANUAL_POLL);
        assert_eq!(c.wait_budget(None), None);
    }
}
