//! # tierpool
//!
//! Structured background work for synchronous Rust programs — CLI tools,
//! desktop applications, thread-per-request servers, batch jobs — without
//! an async runtime.
//!
//! A [`Runtime`] owns three tiers, each a dedicated pool of named OS
//! threads fed by bounded priority queues:
//!
//! - [`ui`](Runtime::ui): fast user-triggered work, with a global and a
//!   per-user in-flight limit;
//! - [`background`](Runtime::background): heavy work, paused above a memory
//!   watermark;
//! - [`realtime`](Runtime::realtime): event processing with slots reserved
//!   for urgent work and preemption of lower priorities.
//!
//! The runtime is also the supervisor: [`Runtime::health`] reports every
//! component with reasons, [`Runtime::on_event`] streams [`Event`]s to
//! listeners on one dispatcher thread, [`Runtime::restart`] replaces a
//! tier's threads for maintenance, [`Runtime::scheduler`] is the one timer
//! for periodic jobs, and [`Runtime::register`] puts batch workers under
//! its shutdown and health.
//!
//! One watchdog thread enforces warnings and timeouts through cooperative
//! cancellation ([`TaskContext::checkpoint`]), declares tasks that ignore it
//! zombies and replaces their threads. Every accepted task gets exactly one
//! outcome; every rejected one hands its closure back; shutdown drains,
//! cancels, joins and reports what never started.
//!
//! ```
//! use std::time::Duration;
//! use tierpool::{Priority, Runtime};
//!
//! let rt = Runtime::builder().build()?;
//! let h = rt.realtime().submit(Priority::High, |ctx| {
//!     ctx.checkpoint()?;
//!     Ok::<_, tierpool::Cancelled>(42)
//! })?;
//! assert_eq!(h.join().unwrap(), 42);
//! let report = rt.shutdown(Duration::from_secs(1));
//! println!("{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
// `deny`, not `forbid`: allowed only in src/os_priority.rs (one
// setpriority call) and src/alloc.rs (a `GlobalAlloc` impl is `unsafe` by
// definition).
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]

/// Logs through the `log` facade without letting a failing log sink hurt
/// the runtime: a logger that panics is caught (and counted), and while a
/// thread is already unwinding nothing is logged at all (a second panic
/// there would abort the process).
macro_rules! tlog {
    ($level:ident, $($arg:tt)+) => {
        $crate::telemetry::guard_log(|| log::$level!($($arg)+))
    };
}

mod admission;
pub mod alloc;
mod analysis;
mod batch;
mod cancel;
mod clock;
mod error;
mod health;
mod memory;
mod os_priority;
mod pool;
mod priority;
mod queue;
mod resilience;
mod runtime;
mod schedule;
mod slot;
mod stats;
mod supervisor;
mod sync;
mod task;
mod telemetry;
mod tier;
mod watchdog;
mod workers;

pub use analysis::{
    Analysis, AnalysisHandle, AnalysisRequest, AnalysisStats, CpuBatchBuilder, CpuBatchHandle,
    KindStats, Source,
};
pub use batch::{
    BatchProcessor, BatchProcessorBuilder, BatchReport, BatchStats, DeadLetter, DeadReason,
    EnqueueError, EnqueueRejected, ItemContext,
};
pub use cancel::{CancelReason, Cancelled};
pub use clock::{Clock, ManualClock};
pub use error::{BuildError, ConfigError, RejectReason, SubmitError, TaskError};
pub use health::{ComponentHealth, Health, HealthReason, HealthStatus};
pub use memory::{process_rss, MemoryProbe};
pub use pool::config::{TierConfig, Watermark, MAX_QUEUE_CAPACITY, MAX_WORKERS_LIMIT};
pub use priority::{ParsePriorityError, Priority};
pub use resilience::{
    AcquireError, BreakerError, BreakerOpen, BreakerState, BreakerStats, BreakerTransition,
    CallPermit, CircuitBreaker, CircuitBreakerBuilder, Jitter, RateLimiter, RateLimiterBuilder,
    RateLimiterStats, RetryDecision, RetryPolicy, RetryPolicyBuilder, SeedRng, TryAcquireError,
};
pub use runtime::{Runtime, RuntimeBuilder, ShutdownReport, TierShutdown, WorkerShutdown};
pub use schedule::{
    JobBuilder, JobContext, JobHealth, JobId, JobStats, LoadRule, MissedRun, RunKind, Scheduler,
    SchedulerBuilder, SchedulerStats, SkipReason, SkipRecord,
};
pub use slot::TaskResult;
pub use stats::{CancelCounts, RejectCounts, Stats, TierStats};
pub use supervisor::{RestartError, RestartReport, Supervise};
pub use task::{TaskContext, TaskHandle, TaskId, TaskStatus};
pub use telemetry::{BytePercentiles, Event, Percentiles, RestartCause, ScaleReason};
pub use tier::{Once, Restartable, TaskBuilder, Tier};
pub use workers::{
    CacheWarmer, CacheWarmerBuilder, CacheWarmerStats, ReEnricher, ReEnricherBuilder,
};

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
