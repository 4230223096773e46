//! Health: healthy / degraded / unhealthy for the runtime and each of its
//! components, each verdict with the reasons behind it.
//!
//! A component's status is its worst reason's; the runtime's is its worst
//! component's. Nothing is cached: [`Runtime::health`](crate::Runtime::health)
//! reads the live numbers every time it is called.

use std::fmt;
use std::time::Duration;

/// How well something is doing. Ordered: `Healthy < Degraded < Unhealthy`.
///
/// ```
/// use tierpool::HealthStatus;
/// assert!(HealthStatus::Healthy < HealthStatus::Degraded);
/// assert_eq!(HealthStatus::Unhealthy.to_string(), "unhealthy");
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthStatus {
    /// Working as configured.
    Healthy,
    /// Working, with reduced capacity or a dependency failing.
    Degraded,
    /// Not doing its job (a tier that gave up restarting workers, a
    /// runtime that is shut down).
    Unhealthy,
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        })
    }
}

/// Why a component is not healthy.
///
/// ```
/// use tierpool::{HealthReason, HealthStatus};
/// let r = HealthReason::Zombies { threads: 2 };
/// assert_eq!(r.status(), HealthStatus::Degraded);
/// assert!(r.to_string().contains("2 thread"));
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum HealthReason {
    /// Threads stuck now in tasks that ignored cancellation.
    Zombies {
        /// How many.
        threads: usize,
    },
    /// The memory watermark stopped the tier from starting work.
    MemoryPaused {
        /// The last resident-memory reading, in bytes.
        rss: Option<u64>,
        /// The high watermark, in bytes.
        high: Option<u64>,
    },
    /// Worker threads died faster than the restart intensity allows; the
    /// tier stopped restarting them. [`Tier::restart`](crate::Tier::restart)
    /// resets it.
    RestartIntensityExceeded {
        /// Workers left.
        workers: usize,
        /// The limit: restarts …
        max_restarts: u32,
        /// … within this window.
        window: Duration,
    },
    /// The tier has been at capacity for longer than its threshold.
    QueueSaturated {
        /// For how long.
        for_: Duration,
        /// The tier's threshold.
        threshold: Duration,
    },
    /// A circuit breaker is open: its dependency is failing.
    BreakerOpen {
        /// The breaker's name.
        breaker: String,
    },
    /// A scheduled job failed its last runs.
    JobDegraded {
        /// The job's name.
        job: String,
        /// Failed or panicked runs in a row.
        consecutive_failures: u32,
    },
    /// The runtime (or this component) was shut down.
    ShutDown,
}

impl HealthReason {
    /// The status this reason alone implies.
    pub fn status(&self) -> HealthStatus {
        match self {
            HealthReason::RestartIntensityExceeded { .. } | HealthReason::ShutDown => {
                HealthStatus::Unhealthy
            }
            _ => HealthStatus::Degraded,
        }
    }
}

impl fmt::Display for HealthReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthReason::Zombies { threads } => write!(
                f,
                "{threads} thread(s) stuck in tasks that ignored cancellation"
            ),
            HealthReason::MemoryPaused { rss, high } => {
                f.write_str("paused by the memory watermark")?;
                if let (Some(rss), Some(high)) = (rss, high) {
                    write!(f, " ({rss} B resident, high {high} B)")?;
                }
                Ok(())
            }
            HealthReason::RestartIntensityExceeded {
                workers,
                max_restarts,
                window,
            } => write!(
                f,
                "restart intensity exceeded (more than {max_restarts} in {window:?}); {workers} worker(s) left"
            ),
            HealthReason::QueueSaturated { for_, threshold } => write!(
                f,
                "at capacity for {for_:.0?} (threshold {threshold:.0?})"
            ),
            HealthReason::BreakerOpen { breaker } => {
                write!(f, "circuit breaker {breaker} is open")
            }
            HealthReason::JobDegraded {
                job,
                consecutive_failures,
            } => write!(f, "job {job} failed {consecutive_failures} time(s) in a row"),
            HealthReason::ShutDown => f.write_str("shut down"),
        }
    }
}

/// One component's health: a tier, the scheduler, a registered worker or
/// breaker, or the runtime itself.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ComponentHealth {
    /// The component (`"ui"`, `"scheduler"`, a registered name, …).
    pub name: String,
    /// Its worst reason's status; healthy without reasons.
    pub status: HealthStatus,
    /// Why it is not healthy.
    pub reasons: Vec<HealthReason>,
}

impl ComponentHealth {
    pub(crate) fn new(name: impl Into<String>, reasons: Vec<HealthReason>) -> Self {
        let status = reasons
            .iter()
            .map(HealthReason::status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        ComponentHealth {
            name: name.into(),
            status,
            reasons,
        }
    }
}

/// The runtime's health: the worst component's status, and every
/// component with its reasons. `Display` prints one line per component.
///
/// ```
/// let rt = tierpool::Runtime::builder().build()?;
/// let h = rt.health();
/// assert!(h.is_healthy());
/// assert!(h.component("ui").is_some());
/// println!("{h}");
/// # Ok::<(), tierpool::BuildError>(())
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Health {
    /// The worst status among the components.
    pub status: HealthStatus,
    /// `runtime`, each tier, `scheduler`, then registered components.
    pub components: Vec<ComponentHealth>,
}

impl Health {
    pub(crate) fn new(components: Vec<ComponentHealth>) -> Self {
        let status = components
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        Health { status, components }
    }

    /// Whether every component is healthy.
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Healthy
    }

    /// The component with this name.
    pub fn component(&self, name: &str) -> Option<&ComponentHealth> {
        self.components.iter().find(|c| c.name == name)
    }

    /// Every reason of every component, with the component's name.
    pub fn reasons(&self) -> impl Iterator<Item = (&str, &HealthReason)> {
        self.components
            .iter()
            .flat_map(|c| c.reasons.iter().map(move |r| (c.name.as_str(), r)))
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.status)?;
        for c in &self.components {
            write!(f, "  {:<12} {}", c.name, c.status)?;
            for (i, r) in c.reasons.iter().enumerate() {
                write!(f, "{}{r}", if i == 0 { ": " } else { "; " })?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
