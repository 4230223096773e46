//! Rate limiter: a token bucket shared by many threads, driven by the
//! runtime [`Clock`].
//!
//! Implemented as GCRA (the "generic cell rate algorithm", a token bucket
//! expressed as one timestamp) in exact integer arithmetic. Written here
//! rather than taken from `governor` because governor's waiting is async and
//! its sync users sleep by hand; here the blocking wait respects a deadline
//! and cancellation, and reads the same clock as the rest of the runtime.
//!
//! # The arithmetic
//!
//! A rate of `n` tokens per `period` is kept exactly, without floats: time
//! is measured in *ticks* of `1/n` nanosecond, so a token costs `period`
//! ticks (in nanoseconds) and the bucket holds `burst · period` ticks. The
//! state is the theoretical arrival time `tat`, in ticks since the limiter
//! was built. Taking `k` tokens at `now` sets
//! `tat' = max(tat, now) + k · cost` and is allowed iff
//! `tat' - now <= burst · cost`. Summed over any window `[a, b]`, the
//! tokens granted are therefore at most `burst + n · (b - a) / period`.

use std::fmt;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::sync::{Arc, Condvar, Mutex};

use crate::error::ConfigError;

/// How often a blocked [`RateLimiter::acquire`] re-checks its cancellation
/// closure when nothing wakes it sooner. The closure has no way to notify
/// us; [`RateLimiter::wake_waiters`] lets a canceller skip this delay.
const CANCEL_POLL: Duration = Duration::from_millis(10);

/// Why a blocking [`RateLimiter::acquire`] returned without tokens.
///
/// ```
/// use tierpool::AcquireError;
/// assert_eq!(AcquireError::Cancelled.to_string(), "rate limiter wait cancelled");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireError {
    /// The cancellation closure returned true.
    Cancelled,
    /// No token becomes available before the deadline. Returned as soon as
    /// that is known (tokens are never handed back, so waiting could not
    /// help), without sleeping until the deadline.
    DeadlineExceeded,
    /// More tokens were requested than the bucket can ever hold.
    ExceedsBurst {
        /// Tokens asked for.
        requested: u32,
        /// The bucket's capacity.
        burst: u32,
    },
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::Cancelled => f.write_str("rate limiter wait cancelled"),
            AcquireError::DeadlineExceeded => {
                f.write_str("rate limiter: no token available before the deadline")
            }
            AcquireError::ExceedsBurst { requested, burst } => write!(
                f,
                "rate limiter: {requested} tokens requested but the burst is {burst}"
            ),
        }
    }
}

impl std::error::Error for AcquireError {}

/// Why a non-blocking [`RateLimiter::try_acquire_n`] was refused.
///
/// ```
/// use std::time::Duration;
/// use tierpool::TryAcquireError;
/// let e = TryAcquireError::Throttled { retry_after: Duration::from_secs(1) };
/// assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryAcquireError {
    /// Not enough tokens now; they will be after `retry_after`.
    Throttled {
        /// How long until the request would succeed (if nobody else takes
        /// tokens in between).
        retry_after: Duration,
    },
    /// More tokens were requested than the bucket can ever hold.
    ExceedsBurst {
        /// Tokens asked for.
        requested: u32,
        /// The bucket's capacity.
        burst: u32,
    },
}

impl TryAcquireError {
    /// The wait until the request could succeed, or `None` if it never can.
    ///
    /// ```
    /// use tierpool::TryAcquireError;
    /// let e = TryAcquireError::ExceedsBurst { requested: 9, burst: 2 };
    /// assert_eq!(e.retry_after(), None);
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TryAcquireError::Throttled { retry_after } => Some(*retry_after),
            TryAcquireError::ExceedsBurst { .. } => None,
        }
    }
}

impl fmt::Display for TryAcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryAcquireError::Throttled { retry_after } => {
                write!(f, "rate limited: retry after {retry_after:?}")
            }
            TryAcquireError::ExceedsBurst { requested, burst } => write!(
                f,
                "rate limiter: {requested} tokens requested but the burst is {burst}"
            ),
        }
    }
}

impl std::error::Error for TryAcquireError {}

/// Counters of a [`RateLimiter`], as a snapshot.
///
/// `granted` counts calls that got their tokens; `throttled` counts
/// non-blocking calls that were refused plus blocking calls that had to
/// wait at least once (each call counted once).
///
/// ```
/// use std::time::Duration;
/// use tierpool::{ManualClock, RateLimiter};
///
/// let limiter = RateLimiter::per(1, Duration::from_secs(1))
///     .clock(ManualClock::new().clock())
///     .build()?;
/// limiter.try_acquire().unwrap();
/// assert!(limiter.try_acquire().is_err());
/// let s = limiter.stats();
/// assert_eq!((s.granted, s.throttled), (1, 1));
/// # Ok::<(), tierpool::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimiterStats {
    /// Calls that were granted their tokens.
    pub granted: u64,
    /// Calls that were refused or had to wait.
    pub throttled: u64,
}

/// A thread-safe token bucket: `burst` tokens at most, refilled at a fixed
/// rate.
///
/// Cloning gives another handle on the same bucket.
///
/// # Invariants
///
/// 1. In any window of length `T`, the tokens granted never exceed
///    `burst + rate · T` (see the module notes for why GCRA keeps this
///    exactly).
/// 2. A refused request consumes nothing, so a caller may retry after the
///    returned wait and, if nobody else took tokens, will succeed.
/// 3. Waiters are not queued: after a wait they race like any other caller
///    (no FIFO fairness, and no thundering herd either, since each waiter
///    wakes only when its own tokens should be there).
///
/// # Deadlock safety
///
/// One mutex guards the bucket; it is never held while calling the
/// cancellation closure or reading another lock except the clock's.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{ManualClock, RateLimiter};
///
/// let manual = ManualClock::new();
/// let limiter = RateLimiter::per(10, Duration::from_secs(1)) // 10/s
///     .burst(2)
///     .clock(manual.clock())
///     .build()?;
/// assert!(limiter.try_acquire().is_ok());
/// assert!(limiter.try_acquire().is_ok());
/// assert_eq!(limiter.try_acquire(), Err(Duration::from_millis(100)));
/// manual.advance(Duration::from_millis(100));
/// assert!(limiter.try_acquire().is_ok());
/// # Ok::<(), tierpool::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    shared: Arc<Shared>,
}

struct Shared {
    clock: Clock,
    /// Tick zero: the instant the limiter was built.
    origin: Instant,
    /// Ticks per nanosecond (`n` in "n tokens per period").
    ticks_per_nano: u128,
    /// Ticks one token costs (the period in nanoseconds).
    cost: u128,
    burst: u32,
    bucket: Mutex<Bucket>,
    /// Woken by [`RateLimiter::wake_waiters`]; tokens themselves arrive by
    /// the passage of time, which waiters compute.
    waiters: Condvar,
}

struct Bucket {
    /// Theoretical arrival time, in ticks since `origin`.
    tat: u128,
    stats: RateLimiterStats,
}

/// The outcome of one GCRA step, under the bucket lock.
enum Step {
    Granted,
    /// Retry after this many nanoseconds.
    Wait(u128),
    ExceedsBurst,
}

impl RateLimiter {
    /// A limiter of `n` tokens per `period`, exact (no rounding).
    /// The burst defaults to `n`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let limiter = tierpool::RateLimiter::per(100, Duration::from_secs(60)).build()?;
    /// assert_eq!(limiter.burst(), 100);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn per(n: u32, period: Duration) -> RateLimiterBuilder {
        RateLimiterBuilder {
            rate: RateSpec::Per(n, period),
            burst: None,
            clock: Clock::system(),
        }
    }

    /// A limiter of `rate` tokens per second (fractions allowed, e.g. 0.5).
    /// The burst defaults to `ceil(rate)`, at least 1. The rate is rounded
    /// down to a granularity of 10⁻¹² tokens per nanosecond, never up.
    ///
    /// ```
    /// let limiter = tierpool::RateLimiter::per_second(2.5).build()?;
    /// assert_eq!(limiter.burst(), 3);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn per_second(rate: f64) -> RateLimiterBuilder {
        RateLimiterBuilder {
            rate: RateSpec::PerSecond(rate),
            burst: None,
            clock: Clock::system(),
        }
    }

    /// The bucket's capacity in tokens.
    ///
    /// ```
    /// use std::time::Duration;
    /// let l = tierpool::RateLimiter::per(5, Duration::from_secs(1)).burst(1).build()?;
    /// assert_eq!(l.burst(), 1);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn burst(&self) -> u32 {
        self.shared.burst
    }

    /// Takes one token, or says how long until one is available. Never
    /// sleeps.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{ManualClock, RateLimiter};
    /// let l = RateLimiter::per(1, Duration::from_secs(2)).clock(ManualClock::new().clock()).build()?;
    /// assert!(l.try_acquire().is_ok());
    /// assert_eq!(l.try_acquire(), Err(Duration::from_secs(2)));
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn try_acquire(&self) -> Result<(), Duration> {
        match self.try_acquire_n(1) {
            Ok(()) => Ok(()),
            Err(TryAcquireError::Throttled { retry_after }) => Err(retry_after),
            // burst >= 1 is an invariant of the builder.
            Err(TryAcquireError::ExceedsBurst { .. }) => Err(Duration::MAX),
        }
    }

    /// Takes `n` tokens at once, or none. `n = 0` always succeeds.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{ManualClock, RateLimiter, TryAcquireError};
    /// let l = RateLimiter::per(4, Duration::from_secs(1)).clock(ManualClock::new().clock()).build()?;
    /// assert!(l.try_acquire_n(3).is_ok());
    /// assert_eq!(
    ///     l.try_acquire_n(2),
    ///     Err(TryAcquireError::Throttled { retry_after: Duration::from_millis(250) })
    /// );
    /// assert!(matches!(l.try_acquire_n(5), Err(TryAcquireError::ExceedsBurst { .. })));
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn try_acquire_n(&self, n: u32) -> Result<(), TryAcquireError> {
        let mut bucket = self.shared.bucket.lock();
        let step = self.shared.step(&mut bucket, n);
        match step {
            Step::Granted => {
                bucket.stats.granted += 1;
                Ok(())
            }
            Step::Wait(nanos) => {
                bucket.stats.throttled += 1;
                Err(TryAcquireError::Throttled {
                    retry_after: nanos_to_duration(nanos),
                })
            }
            Step::ExceedsBurst => {
                bucket.stats.throttled += 1;
                Err(TryAcquireError::ExceedsBurst {
                    requested: n,
                    burst: self.shared.burst,
                })
            }
        }
    }

    /// Takes one token, blocking until one is available, the `deadline`
    /// (on this limiter's clock) or cancellation.
    ///
    /// `cancel` is checked before anything is taken (cancelled work does
    /// not spend tokens) and at least every 10 ms while waiting; call
    /// [`wake_waiters`](Self::wake_waiters) after cancelling to be seen at
    /// once. If the next token cannot arrive by the deadline, returns
    /// [`AcquireError::DeadlineExceeded`] immediately. A token available
    /// now is granted even if the deadline has passed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{AcquireError, ManualClock, RateLimiter};
    ///
    /// let manual = ManualClock::new();
    /// let clock = manual.clock();
    /// let l = RateLimiter::per(1, Duration::from_secs(10)).clock(clock.clone()).build()?;
    /// assert_eq!(l.acquire(None, &|| false), Ok(()));
    /// let soon = clock.deadline_after(Duration::from_secs(1));
    /// assert_eq!(l.acquire(soon, &|| false), Err(AcquireError::DeadlineExceeded));
    /// assert_eq!(l.acquire(None, &|| true), Err(AcquireError::Cancelled));
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn acquire(
        &self,
        deadline: Option<Instant>,
        cancel: &dyn Fn() -> bool,
    ) -> Result<(), AcquireError> {
        self.acquire_n(1, deadline, cancel)
    }

    /// [`acquire`](Self::acquire) for `n` tokens at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{AcquireError, RateLimiter};
    /// let l = RateLimiter::per(2, Duration::from_secs(1)).build()?;
    /// assert_eq!(l.acquire_n(2, None, &|| false), Ok(()));
    /// assert_eq!(
    ///     l.acquire_n(3, None, &|| false),
    ///     Err(AcquireError::ExceedsBurst { requested: 3, burst: 2 })
    /// );
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn acquire_n(
        &self,
        n: u32,
        deadline: Option<Instant>,
        cancel: &dyn Fn() -> bool,
    ) -> Result<(), AcquireError> {
        let shared = &*self.shared;
        let mut waited = false;
        loop {
            // The closure is the caller's code: never run it under our lock.
            if cancel() {
                return Err(AcquireError::Cancelled);
            }
            let mut bucket = shared.bucket.lock();
            let wait_nanos = match shared.step(&mut bucket, n) {
                Step::Granted => {
                    bucket.stats.granted += 1;
                    return Ok(());
                }
                Step::ExceedsBurst => {
                    bucket.stats.throttled += 1;
                    return Err(AcquireError::ExceedsBurst {
                        requested: n,
                        burst: shared.burst,
                    });
                }
                Step::Wait(nanos) => nanos,
            };
            if !waited {
                waited = true;
                bucket.stats.throttled += 1;
            }
            let ready_at = shared
                .clock
                .now()
                .checked_add(nanos_to_duration(wait_nanos));
            let ready_in_time = match (ready_at, deadline) {
                (_, None) => true,
                (Some(ready), Some(d)) => ready <= d,
                (None, Some(_)) => false,
            };
            if !ready_in_time {
                return Err(AcquireError::DeadlineExceeded);
            }
            // Sleep until the tokens should be there, but no longer than the
            // cancellation poll; `wait_budget` also caps it for manual time.
            // Because the deadline is at or after `ready_at`, this never
            // sleeps past the deadline.
            let budget = shared
                .clock
                .wait_budget(ready_at)
                .map_or(CANCEL_POLL, |b| b.min(CANCEL_POLL));
            drop(shared.waiters.wait_budget(bucket, Some(budget)));
        }
    }

    /// Wakes every thread blocked in [`acquire`](Self::acquire) so it
    /// re-checks its cancellation closure now instead of within 10 ms.
    ///
    /// ```
    /// let l = tierpool::RateLimiter::per_second(1.0).build()?;
    /// l.wake_waiters(); // harmless with nobody waiting
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn wake_waiters(&self) {
        self.shared.waiters.notify_all();
    }

    /// Tokens that could be taken right now.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{ManualClock, RateLimiter};
    /// let l = RateLimiter::per(3, Duration::from_secs(1)).clock(ManualClock::new().clock()).build()?;
    /// assert_eq!(l.available(), 3);
    /// l.try_acquire().unwrap();
    /// assert_eq!(l.available(), 2);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn available(&self) -> u32 {
        let bucket = self.shared.bucket.lock();
        let now = self.shared.now_ticks();
        let backlog = bucket.tat.saturating_sub(now);
        let room = self.shared.capacity().saturating_sub(backlog);
        // room / cost <= burst, which is a u32.
        (room / self.shared.cost) as u32
    }

    /// A snapshot of the counters.
    ///
    /// ```
    /// let l = tierpool::RateLimiter::per_second(5.0).build()?;
    /// assert_eq!(l.stats().granted, 0);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn stats(&self) -> RateLimiterStats {
        self.shared.bucket.lock().stats
    }
}

impl Shared {
    fn now_ticks(&self) -> u128 {
        let nanos = self
            .clock
            .now()
            .saturating_duration_since(self.origin)
            .as_nanos();
        nanos * self.ticks_per_nano
    }

    /// `burst · cost`: how far ahead of now `tat` may run.
    fn capacity(&self) -> u128 {
        u128::from(self.burst) * self.cost
    }

    /// One GCRA decision; takes the tokens if allowed.
    fn step(&self, bucket: &mut Bucket, n: u32) -> Step {
        if n > self.burst {
            return Step::ExceedsBurst;
        }
        let now = self.now_ticks();
        let new_tat = bucket.tat.max(now) + u128::from(n) * self.cost;
        let ahead = new_tat - now;
        if ahead <= self.capacity() {
            bucket.tat = new_tat;
            Step::Granted
        } else {
            let excess_ticks = ahead - self.capacity();
            // Round up: waking early would only find the bucket still short.
            Step::Wait(excess_ticks.div_ceil(self.ticks_per_nano))
        }
    }
}

fn nanos_to_duration(nanos: u128) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.shared;
        f.debug_struct("RateLimiter")
            .field("tokens_per_period", &s.ticks_per_nano)
            .field("period_nanos", &s.cost)
            .field("burst", &s.burst)
            .field("stats", &self.stats())
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
enum RateSpec {
    Per(u32, Duration),
    PerSecond(f64),
}

/// Builds a [`RateLimiter`]; start from [`RateLimiter::per`] or
/// [`RateLimiter::per_second`].
///
/// ```
/// use std::time::Duration;
/// use tierpool::{ManualClock, RateLimiter};
/// let limiter = RateLimiter::per(600, Duration::from_secs(60))
///     .burst(20)
///     .clock(ManualClock::new().clock())
///     .build()?;
/// assert_eq!(limiter.available(), 20);
/// # Ok::<(), tierpool::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiterBuilder {
    rate: RateSpec,
    burst: Option<u32>,
    clock: Clock,
}

/// `per_second` keeps this many tokens per `1e12 / rate` nanoseconds, so a
/// fractional rate is exact to 12 digits.
const PER_SECOND_SCALE: u32 = 1000;

impl RateLimiterBuilder {
    /// The bucket's capacity: how many tokens may be taken at once after a
    /// quiet spell. At least 1.
    ///
    /// ```
    /// let err = tierpool::RateLimiter::per_second(1.0).burst(0).build().unwrap_err();
    /// assert_eq!(err.field(), "burst");
    /// ```
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The clock tokens refill by (the system clock by default).
    ///
    /// ```
    /// use tierpool::{ManualClock, RateLimiter};
    /// let l = RateLimiter::per_second(1.0).clock(ManualClock::new().clock()).build()?;
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Validates and builds. Errors name `rate` (zero count, zero period,
    /// a non-finite, non-positive, too small or too large per-second rate)
    /// or `burst` (zero).
    ///
    /// ```
    /// use std::time::Duration;
    /// let err = tierpool::RateLimiter::per(0, Duration::from_secs(1)).build().unwrap_err();
    /// assert_eq!(err.field(), "rate");
    /// ```
    pub fn build(self) -> Result<RateLimiter, ConfigError> {
        let (ticks_per_nano, cost, default_burst) = match self.rate {
            RateSpec::Per(n, period) => {
                if n == 0 {
                    return Err(ConfigError::new("rate", "token count must be at least 1"));
                }
                if period.is_zero() {
                    return Err(ConfigError::new("rate", "period must be longer than zero"));
                }
                (u128::from(n), period.as_nanos(), n)
            }
            RateSpec::PerSecond(rate) => {
                if !rate.is_finite() || rate <= 0.0 {
                    return Err(ConfigError::new(
                        "rate",
                        format!("tokens per second must be finite and positive, got {rate}"),
                    ));
                }
                // Period for PER_SECOND_SCALE tokens, rounded up (slower, never faster).
                let raw = f64::from(PER_SECOND_SCALE) * 1e9 / rate;
                if raw < 1.0 {
                    return Err(ConfigError::new(
                        "rate",
                        format!("{rate} tokens per second is too fast (at most 1e12)"),
                    ));
                }
                let period = raw.ceil();
                // 2^64 ns is ~584 years per thousand tokens.
                if period > u64::MAX as f64 {
                    return Err(ConfigError::new(
                        "rate",
                        format!("{rate} tokens per second is too slow; use RateLimiter::per"),
                    ));
                }
                // `as` saturates; a burst beyond u32::MAX is not representable anyway.
                let burst = (rate.ceil() as u32).max(1);
                (u128::from(PER_SECOND_SCALE), period as u128, burst)
            }
        };
        let burst = self.burst.unwrap_or(default_burst);
        if burst == 0 {
            return Err(ConfigError::new("burst", "must be at least 1"));
        }
        let origin = self.clock.now();
        Ok(RateLimiter {
            shared: Arc::new(Shared {
                clock: self.clock,
                origin,
                ticks_per_nano,
                cost,
                burst,
                // A full bucket at start: tat = now.
                bucket: Mutex::new(Bucket {
                    tat: 0,
                    stats: RateLimiterStats::default(),
                }),
                waiters: Condvar::new(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::AtomicBool;
    use crate::sync::Ordering;
    use crate::ManualClock;

    fn limiter(n: u32, period: Duration, burst: u32) -> (ManualClock, RateLimiter) {
        let manual = ManualClock::new();
        let l = RateLimiter::per(n, period)
            .burst(burst)
            .clock(manual.clock())
            .build()
            .unwrap();
        (manual, l)
    }

    #[test]
    fn full_bucket_then_steady_rate() {
        let (manual, l) = limiter(2, Duration::from_secs(1), 3);
        for _ in 0..3 {
            l.try_acquire().unwrap();
        }
        assert_eq!(l.try_acquire(), Err(Duration::from_millis(500)));
        manual.advance(Duration::from_millis(499));
        assert_eq!(l.try_acquire(), Err(Duration::from_millis(1)));
        manual.advance(Duration::from_millis(1));
        l.try_acquire().unwrap();
        assert_eq!(
            l.stats(),
            RateLimiterStats {
                granted: 4,
                throttled: 2
            }
        );
    }

    #[test]
    fn idle_time_refills_only_up_to_burst() {
        let (manual, l) = limiter(1, Duration::from_secs(1), 2);
        manual.advance(Duration::from_secs(3600));
        assert_eq!(l.available(), 2);
        l.try_acquire_n(2).unwrap();
        assert!(l.try_acquire().is_err());
    }

    #[test]
    fn refused_requests_take_nothing() {
        let (manual, l) = limiter(1, Duration::from_secs(1), 4);
        l.try_acquire_n(3).unwrap();
        let wait = l.try_acquire_n(3).unwrap_err().retry_after().unwrap();
        assert_eq!(wait, Duration::from_secs(2));
        assert_eq!(l.available(), 1);
        manual.advance(wait);
        l.try_acquire_n(3).unwrap();
    }

    #[test]
    fn fractional_rates_are_never_faster_than_asked() {
        let manual = ManualClock::new();
        let l = RateLimiter::per_second(3.0)
            .burst(1)
            .clock(manual.clock())
            .build()
            .unwrap();
        l.try_acquire().unwrap();
        let wait = l.try_acquire().unwrap_err();
        assert!(wait >= Duration::from_nanos(333_333_333), "{wait:?}");
        assert!(wait <= Duration::from_nanos(333_333_334), "{wait:?}");
        let slow = RateLimiter::per_second(0.5).build().unwrap();
        assert_eq!(slow.burst(), 1);
    }

    #[test]
    fn validation_names_the_field() {
        let field = |b: RateLimiterBuilder| b.build().unwrap_err().field().to_string();
        assert_eq!(field(RateLimiter::per(1, Duration::ZERO)), "rate");
        assert_eq!(field(RateLimiter::per(0, Duration::from_secs(1))), "rate");
        assert_eq!(field(RateLimiter::per_second(f64::NAN)), "rate");
        assert_eq!(field(RateLimiter::per_second(-1.0)), "rate");
        assert_eq!(field(RateLimiter::per_second(1e-30)), "rate");
        assert_eq!(field(RateLimiter::per_second(1e20)), "rate");
        assert_eq!(field(RateLimiter::per_second(1.0).burst(0)), "burst");
        // Extreme but valid settings do not overflow.
        let l = RateLimiter::per(u32::MAX, Duration::MAX)
            .burst(u32::MAX)
            .build()
            .unwrap();
        l.try_acquire_n(u32::MAX).unwrap();
        assert!(l.try_acquire().is_err());
    }

    #[test]
    fn many_threads_share_exactly_the_burst() {
        let (_manual, l) = limiter(1, Duration::from_secs(1), 50);
        let granted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if l.try_acquire().is_ok() {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 50);
        assert_eq!(l.stats().granted, 50);
        assert_eq!(l.stats().throttled, 350);
    }

    #[test]
    fn blocking_acquire_waits_for_manual_time() {
        let (manual, l) = limiter(1, Duration::from_secs(5), 1);
        l.try_acquire().unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| l.acquire(None, &|| false));
            // Advance in steps; the waiter wakes once the token is due.
            while !waiter.is_finished() {
                manual.advance(Duration::from_millis(500));
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(waiter.join().unwrap(), Ok(()));
        });
        assert_eq!(
            l.stats(),
            RateLimiterStats {
                granted: 2,
                throttled: 1
            }
        );
    }

    #[test]
    fn blocking_acquire_fails_fast_when_the_deadline_is_too_close() {
        let (manual, l) = limiter(1, Duration::from_secs(5), 1);
        l.try_acquire().unwrap();
        let deadline = manual.clock().deadline_after(Duration::from_secs(4));
        assert_eq!(
            l.acquire(deadline, &|| false),
            Err(AcquireError::DeadlineExceeded)
        );
        let deadline = manual.clock().deadline_after(Duration::from_secs(5));
        manual.advance(Duration::from_secs(5));
        assert_eq!(l.acquire(deadline, &|| false), Ok(()));
    }

    #[test]
    fn cancellation_wakes_a_blocked_acquire() {
        // System clock, a token 1 h away: only cancellation can end the wait.
        let l = RateLimiter::per(1, Duration::from_secs(3600))
            .burst(1)
            .build()
            .unwrap();
        l.try_acquire().unwrap();
        let cancelled = AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| l.acquire(None, &|| cancelled.load(Ordering::SeqCst)));
            std::thread::sleep(Duration::from_millis(20));
            cancelled.store(true, Ordering::SeqCst);
            l.wake_waiters();
            assert_eq!(waiter.join().unwrap(), Err(AcquireError::Cancelled));
        });
    }

    #[test]
    fn cancelled_callers_spend_no_tokens() {
        let (_manual, l) = limiter(1, Duration::from_secs(1), 1);
        assert_eq!(l.acquire(None, &|| true), Err(AcquireError::Cancelled));
        assert_eq!(l.available(), 1);
    }
}
