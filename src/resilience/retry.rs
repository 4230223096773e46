//! Retry policy: how many attempts, how long to wait between them, and
//! which errors are worth another attempt.
//!
//! The schedule is a pure function of the attempt number and a seeded
//! [`SeedRng`], so tests check it exactly and the analysis pool and the batch
//! processor share one definition. Nothing here sleeps: callers wait on their
//! own clock (and cancellation) for the delay this module returns.

use std::any::{Any, TypeId};
use std::fmt;
use std::time::Duration;

use crate::sync::Arc;

use super::rng::SeedRng;
use crate::error::ConfigError;

/// How a backoff delay is randomised, so that many clients failing together
/// do not retry together (the "thundering herd").
///
/// For a capped exponential delay `d`:
///
/// ```
/// use tierpool::Jitter;
/// assert_eq!(Jitter::default(), Jitter::Equal);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Exactly `d`.
    None,
    /// Uniform in `[0, d]`: the widest spread, but a retry may come at once.
    Full,
    /// Uniform in `[d/2, d]`: keeps at least half the backoff. The default,
    /// as in resilience4j's randomised backoff.
    #[default]
    Equal,
}

/// What a caller should do after attempt `n` failed with some error.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{Jitter, RetryDecision, RetryPolicy, SeedRng};
///
/// let policy = RetryPolicy::builder().jitter(Jitter::None).build()?;
/// let mut rng = SeedRng::new(1);
/// assert_eq!(
///     policy.decide(1, &"timeout", &mut rng),
///     RetryDecision::RetryAfter(Duration::from_millis(500))
/// );
/// assert_eq!(policy.decide(3, &"timeout", &mut rng), RetryDecision::Exhausted);
/// # Ok::<(), tierpool::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait this long, then make the next attempt.
    RetryAfter(Duration),
    /// The attempt that failed was the last one allowed.
    Exhausted,
    /// The retryable predicate rejected this error: retrying would not help.
    NotRetryable,
}

type Predicate = Arc<dyn Fn(&dyn Any) -> bool + Send + Sync>;

/// Exponential backoff with a cap, jitter, a maximum number of attempts and
/// an optional predicate over the error.
///
/// Attempts are numbered from 1 (the first try). `max_attempts = 1` means
/// no retries. After attempt `n` fails, the delay before attempt `n + 1` is
/// `min(cap, base · factor^(n-1))`, then jittered.
///
/// The policy is not generic over the error type, so one value can sit in a
/// configuration and serve callers with different errors. Predicates are
/// registered per error type with [`RetryPolicyBuilder::retry_if`].
///
/// # Invariants
///
/// Checked by [`RetryPolicyBuilder::build`], relied on by the arithmetic:
///
/// 1. `max_attempts >= 1`;
/// 2. `factor` is finite and `>= 1`, so the curve never decreases;
/// 3. `base_delay <= max_delay <= u64::MAX` nanoseconds (about 584 years),
///    so every delay fits in a `u64` of nanoseconds and jitter cannot
///    overflow.
///
/// Defaults (resilience4j's): 3 attempts, 500 ms base, factor 2, 30 s cap,
/// equal jitter, every error retryable.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{Jitter, RetryPolicy, SeedRng};
///
/// let policy = RetryPolicy::builder()
///     .max_attempts(4)
///     .base_delay(Duration::from_millis(100))
///     .factor(3.0)
///     .max_delay(Duration::from_secs(1))
///     .jitter(Jitter::Full)
///     .build()?;
/// assert_eq!(policy.base_delay_for(3), Duration::from_millis(900));
/// assert_eq!(policy.base_delay_for(4), Duration::from_secs(1)); // capped
///
/// let mut rng = SeedRng::new(7);
/// assert!(policy.backoff(1, &mut rng).unwrap() <= Duration::from_millis(100));
/// assert_eq!(policy.backoff(4, &mut rng), None); // attempt 4 was the last
/// # Ok::<(), tierpool::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_nanos: u64,
    cap_nanos: u64,
    factor: f64,
    jitter: Jitter,
    /// At most one predicate per error type; empty means "retry every error".
    predicates: Vec<(TypeId, Predicate)>,
}

impl RetryPolicy {
    /// A builder starting from the defaults.
    ///
    /// ```
    /// use tierpool::RetryPolicy;
    /// let policy = RetryPolicy::builder().max_attempts(5).build()?;
    /// assert_eq!(policy.max_attempts(), 5);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder::default()
    }

    /// A policy that makes one attempt and never retries.
    ///
    /// ```
    /// use tierpool::{RetryPolicy, SeedRng};
    /// let policy = RetryPolicy::no_retry();
    /// assert_eq!(policy.backoff(1, &mut SeedRng::new(0)), None);
    /// ```
    pub fn no_retry() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The total number of attempts allowed, the first try included.
    ///
    /// ```
    /// assert_eq!(tierpool::RetryPolicy::default().max_attempts(), 3);
    /// ```
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay after the first failed attempt, before jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(tierpool::RetryPolicy::default().base_delay(), Duration::from_millis(500));
    /// ```
    pub fn base_delay(&self) -> Duration {
        Duration::from_nanos(self.base_nanos)
    }

    /// The cap on any delay, before jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(tierpool::RetryPolicy::default().max_delay(), Duration::from_secs(30));
    /// ```
    pub fn max_delay(&self) -> Duration {
        Duration::from_nanos(self.cap_nanos)
    }

    /// The growth factor between consecutive delays.
    ///
    /// ```
    /// assert_eq!(tierpool::RetryPolicy::default().factor(), 2.0);
    /// ```
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// How delays are randomised.
    ///
    /// ```
    /// use tierpool::{Jitter, RetryPolicy};
    /// assert_eq!(RetryPolicy::default().jitter(), Jitter::Equal);
    /// ```
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The delay after attempt `attempt` failed, before jitter:
    /// `min(max_delay, base_delay · factor^(attempt-1))`.
    ///
    /// Defined for every `u32`, ignoring `max_attempts`; it never decreases
    /// as `attempt` grows and saturates at the cap instead of overflowing.
    /// Attempt 0 is treated as attempt 1.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::RetryPolicy;
    ///
    /// let p = RetryPolicy::default();
    /// assert_eq!(p.base_delay_for(1), Duration::from_millis(500));
    /// assert_eq!(p.base_delay_for(2), Duration::from_secs(1));
    /// assert_eq!(p.base_delay_for(u32::MAX), Duration::from_secs(30));
    /// ```
    pub fn base_delay_for(&self, attempt: u32) -> Duration {
        Duration::from_nanos(self.base_nanos_for(attempt))
    }

    fn base_nanos_for(&self, attempt: u32) -> u64 {
        if self.base_nanos == 0 {
            return 0;
        }
        let exponent = f64::from(attempt.saturating_sub(1));
        // `powf` is monotonic in the exponent for factor >= 1 and reaches
        // +inf rather than wrapping, so huge attempts land on the cap. No
        // NaN is possible: base > 0 and the factor is finite and >= 1.
        let nanos = self.base_nanos as f64 * self.factor.powf(exponent);
        if nanos >= self.cap_nanos as f64 {
            return self.cap_nanos;
        }
        // `as` saturates for floats; the `min` guards the rounding at the cap.
        (nanos as u64).min(self.cap_nanos)
    }

    /// The jittered delay before the attempt after `attempt`, or `None` when
    /// `attempt` was the last one allowed (`attempt >= max_attempts`).
    ///
    /// Pure: the same policy, attempt and RNG state give the same delay.
    /// Attempt 0 is treated as attempt 1.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{RetryPolicy, SeedRng};
    ///
    /// let p = RetryPolicy::default(); // equal jitter
    /// let mut rng = SeedRng::new(11);
    /// let d = p.backoff(1, &mut rng).unwrap();
    /// assert!(d >= Duration::from_millis(250) && d <= Duration::from_millis(500));
    /// assert!(p.backoff(2, &mut rng).is_some());
    /// assert!(p.backoff(3, &mut rng).is_none());
    /// ```
    pub fn backoff(&self, attempt: u32, rng: &mut SeedRng) -> Option<Duration> {
        if attempt.max(1) >= self.max_attempts {
            return None;
        }
        let d = self.base_nanos_for(attempt);
        let jittered = match self.jitter {
            Jitter::None => d,
            Jitter::Full => rng.uniform_inclusive(d),
            Jitter::Equal => {
                let half = d / 2;
                half + rng.uniform_inclusive(d - half)
            }
        };
        Some(Duration::from_nanos(jittered))
    }

    /// Whether `err` is worth retrying under this policy.
    ///
    /// With no predicate registered, every error is retryable. Once any
    /// predicate is registered, an error is retryable only if a predicate
    /// for its exact type says so: an error of a type the policy has no
    /// predicate for is *not* retried, because a policy that was narrowed
    /// cannot tell whether an unknown error is transient, and not retrying
    /// is the choice that cannot add load to a failing dependency.
    ///
    /// ```
    /// use std::io;
    /// use tierpool::RetryPolicy;
    ///
    /// let p = RetryPolicy::builder()
    ///     .retry_if(|e: &io::Error| e.kind() == io::ErrorKind::TimedOut)
    ///     .build()?;
    /// assert!(p.is_retryable(&io::Error::from(io::ErrorKind::TimedOut)));
    /// assert!(!p.is_retryable(&io::Error::from(io::ErrorKind::NotFound)));
    /// assert!(!p.is_retryable(&"a &str error")); // no predicate for &str
    /// assert!(RetryPolicy::default().is_retryable(&"anything"));
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn is_retryable<E: 'static>(&self, err: &E) -> bool {
        if self.predicates.is_empty() {
            return true;
        }
        let id = TypeId::of::<E>();
        self.predicates
            .iter()
            .find(|(t, _)| *t == id)
            .is_some_and(|(_, p)| p(err as &dyn Any))
    }

    /// The whole decision after attempt `attempt` failed with `err`:
    /// not retryable, exhausted, or retry after a jittered delay.
    ///
    /// The predicate is asked first, so a permanent error is reported as
    /// [`RetryDecision::NotRetryable`] even on the last attempt (dead-letter
    /// reasons stay accurate).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{Jitter, RetryDecision, RetryPolicy, SeedRng};
    ///
    /// let p = RetryPolicy::builder()
    ///     .jitter(Jitter::None)
    ///     .retry_if(|e: &u16| *e >= 500)
    ///     .build()?;
    /// let mut rng = SeedRng::new(0);
    /// assert_eq!(p.decide(1, &503u16, &mut rng), RetryDecision::RetryAfter(Duration::from_millis(500)));
    /// assert_eq!(p.decide(1, &404u16, &mut rng), RetryDecision::NotRetryable);
    /// assert_eq!(p.decide(3, &503u16, &mut rng), RetryDecision::Exhausted);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn decide<E: 'static>(&self, attempt: u32, err: &E, rng: &mut SeedRng) -> RetryDecision {
        if !self.is_retryable(err) {
            return RetryDecision::NotRetryable;
        }
        match self.backoff(attempt, rng) {
            Some(d) => RetryDecision::RetryAfter(d),
            None => RetryDecision::Exhausted,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_nanos: 500_000_000,
            cap_nanos: 30_000_000_000,
            factor: 2.0,
            jitter: Jitter::Equal,
            predicates: Vec::new(),
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("base_delay", &self.base_delay())
            .field("factor", &self.factor)
            .field("max_delay", &self.max_delay())
            .field("jitter", &self.jitter)
            .field("predicates", &self.predicates.len())
            .finish()
    }
}

/// Builds a [`RetryPolicy`]; [`build`](Self::build) validates every field.
///
/// ```
/// use std::time::Duration;
/// use tierpool::RetryPolicy;
///
/// let err = RetryPolicy::builder()
///     .base_delay(Duration::from_secs(10))
///     .max_delay(Duration::from_secs(1))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field(), "max_delay");
/// ```
#[derive(Clone, Debug)]
pub struct RetryPolicyBuilder {
    max_attempts: u32,
    base: Duration,
    cap: Duration,
    factor: f64,
    jitter: Jitter,
    predicates: PredicateList,
}

/// Newtype so the builder can derive `Debug`.
#[derive(Clone, Default)]
struct PredicateList(Vec<(TypeId, Predicate)>);

impl fmt::Debug for PredicateList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} predicate(s)", self.0.len())
    }
}

impl Default for RetryPolicyBuilder {
    fn default() -> Self {
        let d = RetryPolicy::default();
        RetryPolicyBuilder {
            max_attempts: d.max_attempts,
            base: d.base_delay(),
            cap: d.max_delay(),
            factor: d.factor,
            jitter: d.jitter,
            predicates: PredicateList::default(),
        }
    }
}

impl RetryPolicyBuilder {
    /// Total attempts including the first try; must be at least 1.
    ///
    /// ```
    /// let p = tierpool::RetryPolicy::builder().max_attempts(1).build()?;
    /// assert_eq!(p.max_attempts(), 1);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The delay after the first failure, before jitter. Zero is allowed
    /// (immediate retries).
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = tierpool::RetryPolicy::builder().base_delay(Duration::ZERO).build()?;
    /// assert_eq!(p.base_delay_for(5), Duration::ZERO);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base = d;
        self
    }

    /// Growth factor per attempt; finite and at least 1 (1 = constant delay).
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = tierpool::RetryPolicy::builder().factor(1.0).build()?;
    /// assert_eq!(p.base_delay_for(9), Duration::from_millis(500));
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// The cap on any delay before jitter; at least the base delay and at
    /// most `u64::MAX` nanoseconds.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = tierpool::RetryPolicy::builder().max_delay(Duration::from_secs(2)).build()?;
    /// assert_eq!(p.base_delay_for(10), Duration::from_secs(2));
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.cap = d;
        self
    }

    /// How delays are randomised.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{Jitter, RetryPolicy, SeedRng};
    /// let p = RetryPolicy::builder().jitter(Jitter::None).build()?;
    /// assert_eq!(p.backoff(1, &mut SeedRng::new(0)), Some(Duration::from_millis(500)));
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Retry errors of type `E` only when `pred` returns true.
    ///
    /// One predicate per error type (a second one for the same `E` replaces
    /// the first); register several types to share one policy between
    /// callers with different errors. Once any predicate is registered,
    /// errors of other types are not retried (see
    /// [`RetryPolicy::is_retryable`]).
    ///
    /// ```
    /// use tierpool::RetryPolicy;
    /// let p = RetryPolicy::builder()
    ///     .retry_if(|status: &u16| *status >= 500)
    ///     .retry_if(|msg: &String| msg.contains("timeout"))
    ///     .build()?;
    /// assert!(p.is_retryable(&502u16));
    /// assert!(p.is_retryable(&"read timeout".to_string()));
    /// assert!(!p.is_retryable(&400u16));
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn retry_if<E: 'static>(
        mut self,
        pred: impl Fn(&E) -> bool + Send + Sync + 'static,
    ) -> Self {
        let id = TypeId::of::<E>();
        let erased: Predicate =
            Arc::new(move |err: &dyn Any| err.downcast_ref::<E>().is_some_and(&pred));
        self.predicates.0.retain(|(t, _)| *t != id);
        self.predicates.0.push((id, erased));
        self
    }

    /// Validates the settings and builds the policy.
    ///
    /// Errors name the field: `max_attempts` (zero), `factor` (NaN,
    /// infinite or below 1), `max_delay` (below the base delay or beyond
    /// `u64::MAX` nanoseconds).
    ///
    /// ```
    /// let err = tierpool::RetryPolicy::builder().factor(f64::NAN).build().unwrap_err();
    /// assert_eq!(err.field(), "factor");
    /// ```
    pub fn build(self) -> Result<RetryPolicy, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                "max_attempts",
                "must be at least 1 (1 = the first try only, no retries)",
            ));
        }
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(ConfigError::new(
                "factor",
                format!("must be finite and at least 1, got {}", self.factor),
            ));
        }
        let cap_nanos = u64::try_from(self.cap.as_nanos()).map_err(|_| {
            ConfigError::new(
                "max_delay",
                "must be at most u64::MAX nanoseconds (about 584 years)",
            )
        })?;
        if self.cap < self.base {
            return Err(ConfigError::new(
                "max_delay",
                format!(
                    "must be at least base_delay ({:?}), got {:?}",
                    self.base, self.cap
                ),
            ));
        }
        Ok(RetryPolicy {
            max_attempts: self.max_attempts,
            // base <= cap, which fits in u64 nanoseconds.
            base_nanos: self.base.as_nanos() as u64,
            cap_nanos,
            factor: self.factor,
            jitter: self.jitter,
            predicates: self.predicates.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy::builder().jitter(Jitter::None).build().unwrap()
    }

    #[test]
    fn defaults_follow_resilience4j() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts(), 3);
        assert_eq!(p.base_delay(), Duration::from_millis(500));
        assert_eq!(p.factor(), 2.0);
        assert_eq!(p.max_delay(), Duration::from_secs(30));
        assert_eq!(p.jitter(), Jitter::Equal);
    }

    #[test]
    fn schedule_doubles_until_the_cap() {
        let p = RetryPolicy::builder()
            .max_attempts(u32::MAX)
            .jitter(Jitter::None)
            .build()
            .unwrap();
        let mut rng = SeedRng::new(0);
        let delays: Vec<_> = (1..=8).map(|a| p.backoff(a, &mut rng).unwrap()).collect();
        let ms: Vec<u64> = delays.iter().map(|d| d.as_millis() as u64).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }

    #[test]
    fn max_attempts_one_means_no_retries() {
        let p = RetryPolicy::no_retry();
        assert_eq!(p.backoff(0, &mut SeedRng::new(0)), None);
        assert_eq!(p.backoff(1, &mut SeedRng::new(0)), None);
    }

    #[test]
    fn last_attempt_is_exhausted() {
        let p = no_jitter();
        let mut rng = SeedRng::new(0);
        assert!(p.backoff(2, &mut rng).is_some());
        assert_eq!(p.backoff(3, &mut rng), None);
        assert_eq!(p.backoff(u32::MAX, &mut rng), None);
    }

    #[test]
    fn huge_attempts_saturate_at_the_cap() {
        let p = RetryPolicy::builder()
            .factor(1e300)
            .max_delay(Duration::from_nanos(u64::MAX))
            .build()
            .unwrap();
        assert_eq!(p.base_delay_for(u32::MAX), Duration::from_nanos(u64::MAX));
        assert_eq!(p.base_delay_for(3), Duration::from_nanos(u64::MAX));
        let p = RetryPolicy::builder()
            .max_attempts(u32::MAX)
            .jitter(Jitter::Full)
            .build()
            .unwrap();
        assert!(p.backoff(u32::MAX - 1, &mut SeedRng::new(1)).unwrap() <= Duration::from_secs(30));
    }

    #[test]
    fn same_seed_same_schedule() {
        let p = RetryPolicy::builder().max_attempts(10).build().unwrap();
        let run = |seed| {
            let mut rng = SeedRng::new(seed);
            (1..10).map(|a| p.backoff(a, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(99), run(99));
        assert_ne!(run(99), run(100));
    }

    #[test]
    fn validation_names_the_field() {
        let field = |b: RetryPolicyBuilder| b.build().unwrap_err().field().to_string();
        assert_eq!(
            field(RetryPolicy::builder().max_attempts(0)),
            "max_attempts"
        );
        assert_eq!(field(RetryPolicy::builder().factor(0.99)), "factor");
        assert_eq!(
            field(RetryPolicy::builder().factor(f64::INFINITY)),
            "factor"
        );
        assert_eq!(field(RetryPolicy::builder().factor(-1.0)), "factor");
        assert_eq!(
            field(RetryPolicy::builder().max_delay(Duration::from_millis(1))),
            "max_delay"
        );
        assert_eq!(
            field(RetryPolicy::builder().max_delay(Duration::MAX)),
            "max_delay"
        );
    }

    #[test]
    fn predicates_are_per_type_and_replace() {
        let p = RetryPolicy::builder()
            .retry_if(|_: &u8| false)
            .retry_if(|e: &u8| *e == 1)
            .build()
            .unwrap();
        assert!(p.is_retryable(&1u8));
        assert!(!p.is_retryable(&2u8));
        assert!(!p.is_retryable(&1u16));
        let mut rng = SeedRng::new(0);
        assert_eq!(p.decide(3, &2u8, &mut rng), RetryDecision::NotRetryable);
        assert_eq!(p.decide(3, &1u8, &mut rng), RetryDecision::Exhausted);
    }

    #[test]
    fn policy_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<RetryPolicy>();
    }
}
