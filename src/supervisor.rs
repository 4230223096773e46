//! Supervision beyond the tiers: the workers an application registers with
//! its runtime (batch processors, re-enrichers, cache warmers, circuit
//! breakers) so they report health and stop with it, and the reports of a
//! maintenance restart.
//!
//! # Shutdown order (see `runtime.rs` for the tiers' part)
//!
//! 1. The runtime's scheduler stops firing.
//! 2. Every registered worker stops taking items and starting batches, and
//!    waits up to the grace for running batches; what it did not process
//!    is parked in the worker (its own `shutdown` hands the items over
//!    later) and counted in the runtime's report.
//! 3. The tiers drain, cancel and join as before.
//!
//! Workers go first because their batches are tasks on the tiers: a tier
//! that stopped first would strand them.
//!
//! The registry holds workers weakly: dropping a worker (which shuts it
//! down itself) unregisters it.

use std::fmt;
use std::time::Duration;

use crate::health::HealthReason;
use crate::resilience::{BreakerState, CircuitBreaker};
use crate::sync::{Arc, Mutex, Weak};
use crate::telemetry::{Event, EventBus};

/// A registered worker, as the runtime sees it.
pub(crate) trait Component: Send + Sync {
    /// Why it is not healthy now (empty: healthy).
    fn health(&self) -> Vec<HealthReason>;
    /// Stops it (`grace` on the runtime's clock) and counts what it left.
    fn shutdown_for_runtime(&self, grace: Duration) -> WorkerCounts;
}

/// What a registered worker left at shutdown.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WorkerCounts {
    pub(crate) processed: u64,
    pub(crate) unprocessed: usize,
    pub(crate) dead_letters: usize,
    pub(crate) still_in_batches: usize,
}

mod sealed {
    /// Implemented by the crate's workers only.
    pub trait Sealed {
        /// The part the runtime keeps (weakly, except for breakers).
        fn registration(&self) -> super::Registration;
    }
}

/// Something [`Runtime::register`](crate::Runtime::register) accepts:
/// [`BatchProcessor`](crate::BatchProcessor), [`ReEnricher`](crate::ReEnricher),
/// [`CacheWarmer`](crate::CacheWarmer) and [`CircuitBreaker`].
///
/// ```
/// use tierpool::{BatchProcessor, Runtime};
/// let rt = Runtime::builder().build()?;
/// let batches = BatchProcessor::builder(rt.background(), |_: &u32, _| Ok::<_, String>(()))
///     .build()?;
/// rt.register("batches", &batches);
/// assert!(rt.health().component("batches").is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Supervise: sealed::Sealed {}

pub(crate) use sealed::Sealed;

/// How the runtime holds a registered component (opaque).
#[derive(Debug)]
pub struct Registration(pub(crate) Held);

#[derive(Debug)]
pub(crate) enum Held {
    /// A worker with threads: weakly (dropping it unregisters it).
    Worker(Weak<dyn Component>),
    /// A breaker: a cheap handle, held as a clone.
    Breaker(CircuitBreaker),
}

impl fmt::Debug for dyn Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Component")
    }
}

impl Registration {
    pub(crate) fn worker(w: Weak<dyn Component>) -> Self {
        Registration(Held::Worker(w))
    }
}

impl Sealed for CircuitBreaker {
    fn registration(&self) -> Registration {
        Registration(Held::Breaker(self.clone()))
    }
}
impl Supervise for CircuitBreaker {}

/// The runtime's list of registered components.
#[derive(Default)]
pub(crate) struct Registry {
    entries: Mutex<Vec<(String, Held)>>,
}

impl Registry {
    pub(crate) fn add(&self, name: String, r: Registration) {
        self.entries.lock().push((name, r.0));
    }

    /// Every live component's health, in registration order.
    pub(crate) fn health(&self) -> Vec<(String, Vec<HealthReason>)> {
        let entries: Vec<(String, Option<Checked>)> = self
            .entries
            .lock()
            .iter()
            .map(|(n, r)| (n.clone(), Checked::of(r)))
            .collect();
        // Checked outside the registry lock: a worker's health takes its
        // own locks.
        entries
            .into_iter()
            .filter_map(|(n, c)| c.map(|c| (n, c.health())))
            .collect()
    }

    /// Shuts every live worker down; their counts, by name.
    pub(crate) fn shutdown(&self, grace: Duration) -> Vec<crate::runtime::WorkerShutdown> {
        let workers: Vec<(String, Arc<dyn Component>)> = self
            .entries
            .lock()
            .iter()
            .filter_map(|(n, r)| match r {
                Held::Worker(w) => w.upgrade().map(|w| (n.clone(), w)),
                Held::Breaker(_) => None,
            })
            .collect();
        workers
            .into_iter()
            .map(|(name, w)| {
                let c = w.shutdown_for_runtime(grace);
                crate::runtime::WorkerShutdown {
                    name,
                    processed: c.processed,
                    unprocessed: c.unprocessed,
                    dead_letters: c.dead_letters,
                    still_in_batches: c.still_in_batches,
                }
            })
            .collect()
    }
}

enum Checked {
    Worker(Arc<dyn Component>),
    Breaker(CircuitBreaker),
}

impl Checked {
    fn of(r: &Held) -> Option<Checked> {
        match r {
            Held::Worker(w) => w.upgrade().map(Checked::Worker),
            Held::Breaker(b) => Some(Checked::Breaker(b.clone())),
        }
    }

    fn health(&self) -> Vec<HealthReason> {
        match self {
            Checked::Worker(w) => w.health(),
            Checked::Breaker(b) => breaker_health(b).into_iter().collect(),
        }
    }
}

/// `BreakerOpen` if the breaker is open now.
pub(crate) fn breaker_health(b: &CircuitBreaker) -> Option<HealthReason> {
    (b.state() == BreakerState::Open).then(|| HealthReason::BreakerOpen {
        breaker: b.name().unwrap_or("breaker").to_string(),
    })
}

/// Forwards the breaker's state changes to the runtime's events (held
/// weakly: a breaker outliving its runtime forwards nothing).
pub(crate) fn forward_breaker_events(b: &CircuitBreaker, bus: &Arc<EventBus>) {
    let bus = Arc::downgrade(bus);
    let name: Arc<str> = Arc::from(b.name().unwrap_or("breaker"));
    b.on_state_change(Box::new(move |t| {
        if let Some(bus) = bus.upgrade() {
            bus.emit_with(|| Event::BreakerStateChanged {
                breaker: name.clone(),
                from: t.from,
                to: t.to,
            });
        }
    }));
}

/// What [`Tier::restart`](crate::Tier::restart) did.
///
/// ```
/// use std::time::Duration;
/// let rt = tierpool::Runtime::builder().build()?;
/// let report = rt.restart("ui", Duration::from_secs(5))?;
/// assert_eq!(report.tier, "ui");
/// assert!(report.drained_in_time);
/// println!("{report}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartReport {
    /// The tier.
    pub tier: &'static str,
    /// Whether every running task returned within the grace.
    pub drained_in_time: bool,
    /// Worker threads replaced by new ones.
    pub replaced: usize,
    /// Old threads still inside a task when the grace ended; each is
    /// replaced when its task returns.
    pub still_running: usize,
}

impl fmt::Display for RestartReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} thread(s) replaced, {} still finishing a task{}",
            self.tier,
            self.replaced,
            self.still_running,
            if self.drained_in_time {
                ""
            } else {
                " (drain grace ended)"
            }
        )
    }
}

/// Why a restart did not happen.
///
/// ```
/// use std::time::Duration;
/// use tierpool::RestartError;
/// let rt = tierpool::Runtime::builder().build()?;
/// let err = rt.restart("nope", Duration::ZERO).unwrap_err();
/// assert_eq!(err, RestartError::UnknownTier("nope".into()));
/// # Ok::<(), tierpool::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartError {
    /// No tier has this name.
    UnknownTier(String),
    /// The runtime is shutting down.
    ShuttingDown,
}

impl fmt::Display for RestartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartError::UnknownTier(n) => write!(f, "no tier named {n:?}"),
            RestartError::ShuttingDown => f.write_str("the runtime is shutting down"),
        }
    }
}

impl std::error::Error for RestartError {}
