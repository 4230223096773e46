//! Re-enrichment: items fetched again from a rate-limited external API in
//! batches, with retries, a priority lane and dead letters.

use std::fmt;
use std::time::Duration;

use crate::batch::{
    BatchProcessor, BatchProcessorBuilder, BatchReport, BatchStats, DeadLetter, EnqueueError,
    ItemContext,
};
use crate::error::BuildError;
use crate::priority::Priority;
use crate::resilience::{CircuitBreaker, RateLimiter, RetryPolicy};
use crate::tier::Tier;

/// Calls the application's enrich function once per item, in batches,
/// against an external API's limits.
///
/// Defaults (the seed's): batches of 25, up to 3 attempts with exponential
/// backoff ([`RetryPolicy::default`]: 500 ms, ×2, equal jitter; a retry
/// waits in the queue, not in a thread), a rate limit of 10 calls per
/// second unless given one, high-priority items ahead of the rest, and
/// [`process_now`](ReEnricher::process_now). Items that exhaust their
/// attempts are kept in the dead-letter list.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{RateLimiter, ReEnricher, Runtime};
///
/// let rt = Runtime::builder().build()?;
/// let enricher = ReEnricher::builder(rt.background(), |killmail_id: &u64, _ctx| {
///     // call the external API for `killmail_id` …
///     Ok::<_, String>(())
/// })
/// .rate_limiter(RateLimiter::per(20, Duration::from_secs(1)).build()?)
/// .build()?;
/// enricher.enqueue(1001)?;
/// enricher.enqueue_high(1002)?; // jumps the queue
/// enricher.process_now();
/// let report = enricher.shutdown(Duration::from_secs(5));
/// # let _ = report;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ReEnricher<I: Send + 'static> {
    batches: BatchProcessor<I>,
}

/// Builds a [`ReEnricher`].
///
/// ```
/// use tierpool::{ReEnricher, Runtime};
/// let rt = Runtime::builder().build()?;
/// let err = ReEnricher::builder(rt.background(), |_: &u64, _| Ok::<_, String>(()))
///     .batch_size(0)
///     .build()
///     .unwrap_err();
/// assert_eq!(err.as_config().unwrap().field(), "batch_size");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct ReEnricherBuilder<I: Send + 'static> {
    tier: Tier,
    batches: BatchProcessorBuilder<I>,
    limiter: Option<Option<RateLimiter>>,
}

impl<I: Send + 'static> ReEnricher<I> {
    /// A builder running batches on `tier`, calling `enrich` per item.
    pub fn builder<E, F>(tier: &Tier, enrich: F) -> ReEnricherBuilder<I>
    where
        F: Fn(&I, &ItemContext<'_>) -> Result<(), E> + Send + Sync + 'static,
        E: fmt::Display + 'static,
    {
        ReEnricherBuilder {
            tier: tier.clone(),
            batches: BatchProcessor::builder(tier, enrich).batch_size(25),
            limiter: None,
        }
    }

    /// Queues an item at normal priority.
    pub fn enqueue(&self, item: I) -> Result<(), EnqueueError<I>> {
        self.batches.enqueue(item, Priority::Normal)
    }

    /// Queues an item ahead of every normal one.
    pub fn enqueue_high(&self, item: I) -> Result<(), EnqueueError<I>> {
        self.batches.enqueue(item, Priority::High)
    }

    /// Queues an item at `priority`.
    pub fn enqueue_with(&self, item: I, priority: Priority) -> Result<(), EnqueueError<I>> {
        self.batches.enqueue(item, priority)
    }

    /// Sends everything ready now instead of waiting for full batches.
    pub fn process_now(&self) {
        self.batches.process_now();
    }

    /// The numbers now.
    pub fn stats(&self) -> BatchStats {
        self.batches.stats()
    }

    /// Takes the dead-letter list.
    pub fn drain_dead_letters(&self) -> Vec<DeadLetter<I>> {
        self.batches.drain_dead_letters()
    }

    /// The underlying batch processor.
    pub fn processor(&self) -> &BatchProcessor<I> {
        &self.batches
    }

    /// Stops and returns the items not enriched (see
    /// [`BatchProcessor::shutdown`]).
    pub fn shutdown(&self, grace: Duration) -> BatchReport<I> {
        self.batches.shutdown(grace)
    }
}

impl<I: Send + 'static> fmt::Debug for ReEnricher<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReEnricher")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<I: Send + 'static> ReEnricherBuilder<I> {
    /// Items per batch (default 25).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batches = self.batches.batch_size(n);
        self
    }

    /// Batches at once (default 3).
    pub fn max_concurrent_batches(mut self, n: usize) -> Self {
        self.batches = self.batches.max_concurrent_batches(n);
        self
    }

    /// How long a partial batch waits (default 1 s).
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.batches = self.batches.flush_interval(d);
        self
    }

    /// The retry policy (default 3 attempts, exponential backoff).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.batches = self.batches.retry(policy);
        self
    }

    /// The external API's limit (default 10 calls per second on the
    /// tier's clock).
    pub fn rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some(Some(limiter));
        self
    }

    /// No rate limit at all.
    pub fn no_rate_limit(mut self) -> Self {
        self.limiter = Some(None);
        self
    }

    /// Calls go through `breaker`: while it is open, batches pause and no
    /// attempt is spent.
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.batches = self.batches.circuit_breaker(breaker);
        self
    }

    /// Most items pending (default 10 000).
    pub fn capacity(mut self, n: usize) -> Self {
        self.batches = self.batches.capacity(n);
        self
    }

    /// Seeds the retry jitter.
    pub fn seed(mut self, seed: u64) -> Self {
        self.batches = self.batches.seed(seed);
        self
    }

    /// Validates and starts; errors name the field.
    pub fn build(self) -> Result<ReEnricher<I>, BuildError> {
        let limiter = match self.limiter {
            Some(chosen) => chosen,
            None => Some(
                RateLimiter::per(10, Duration::from_secs(1))
                    .clock(self.tier.pool.clock.clone())
                    .build()?,
            ),
        };
        let mut batches = self.batches;
        if let Some(l) = limiter {
            batches = batches.rate_limiter(l);
        }
        Ok(ReEnricher {
            batches: batches.build()?,
        })
    }
}

impl<I: Send + 'static> crate::supervisor::Sealed for ReEnricher<I> {
    fn registration(&self) -> crate::supervisor::Registration {
        self.batches.registration()
    }
}
impl<I: Send + 'static> crate::supervisor::Supervise for ReEnricher<I> {}
