//! Resilience primitives: retry schedules, a rate limiter and a circuit
//! breaker.
//!
//! These are pure mechanisms with no threads of their own. They read time
//! only through [`crate::Clock`] and lock only through [`crate::sync`], so
//! the analysis pool, the batch processor and applications can share one
//! definition and tests can drive them with a [`crate::ManualClock`].
//!
//! - [`retry`]: [`RetryPolicy`], exponential backoff with jitter, attempts
//!   and a retryable predicate; a pure function of the attempt number and a
//!   seeded [`SeedRng`].
//! - [`rate_limit`]: [`RateLimiter`], a GCRA token bucket.
//! - [`breaker`]: [`CircuitBreaker`], closed / open / half-open over a
//!   count-based window.

mod breaker;
mod rate_limit;
mod retry;
mod rng;

pub use breaker::{
    BreakerError, BreakerOpen, BreakerState, BreakerStats, BreakerTransition, CallPermit,
    CircuitBreaker, CircuitBreakerBuilder,
};
pub use rate_limit::{
    AcquireError, RateLimiter, RateLimiterBuilder, RateLimiterStats, TryAcquireError,
};
pub use retry::{Jitter, RetryDecision, RetryPolicy, RetryPolicyBuilder};
pub use rng::SeedRng;
