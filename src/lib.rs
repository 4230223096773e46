//! tierpool: structured background work for synchronous Rust.
#![forbid(unsafe_code)]

mod clock;
mod resilience;
mod sync;

pub use clock::{Clock, ManualClock};
pub use resilience::{
    AcquireError, BreakerError, BreakerOpen, BreakerState, BreakerStats, BreakerTransition,
    CircuitBreaker, CircuitBreakerBuilder, Jitter, Permit, RateLimiter, RateLimiterBuilder,
    RateLimiterStats, ResilienceConfigError, RetryDecision, RetryPolicy, RetryPolicyBuilder,
    SeedRng, TryAcquireError,
};
