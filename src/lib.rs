//! tierpool: structured background work for synchronous Rust.
#![forbid(unsafe_code)]

mod clock;
mod resilience;
mod sync;

pub use clock::{Clock, ManualClock};
pub use resilience::{
    AcquireError, Jitter, RateLimiter, RateLimiterBuilder, RateLimiterStats, ResilienceConfigError,
    RetryDecision, RetryPolicy, RetryPolicyBuilder, SeedRng, TryAcquireError,
};
