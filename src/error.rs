//! The errors tierpool returns: bad configuration, rejected submissions,
//! and task outcomes that are not a value.

use std::fmt;
use std::time::Duration;

use crate::admission::Room;
use crate::cancel::{CancelReason, Cancelled};

/// A configuration value that `build()` refused, naming the field and why.
///
/// ```
/// use tierpool::Runtime;
/// let err = Runtime::builder()
///     .ui(|t| t.max_workers(0))
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().contains("ui.max_workers"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: String,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The dotted name of the bad field, e.g. `ui.per_user_limit`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it and how to fix it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Why [`RuntimeBuilder::build`](crate::RuntimeBuilder::build) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// A configuration value is invalid.
    Config(ConfigError),
    /// The operating system refused to start a thread.
    Spawn(std::io::Error),
}

impl BuildError {
    /// The configuration error, if that is what this is.
    pub fn as_config(&self) -> Option<&ConfigError> {
        match self {
            BuildError::Config(c) => Some(c),
            BuildError::Spawn(_) => None,
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Config(c) => c.fmt(f),
            BuildError::Spawn(e) => write!(f, "could not start a tierpool thread: {e}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Config(c) => Some(c),
            BuildError::Spawn(e) => Some(e),
        }
    }
}

impl From<ConfigError> for BuildError {
    fn from(c: ConfigError) -> Self {
        BuildError::Config(c)
    }
}

/// Why a submission was refused. The work itself comes back in
/// [`SubmitError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The queue for this priority level is at capacity.
    QueueFull {
        /// The level's capacity.
        capacity: usize,
    },
    /// The tier already has `limit` tasks in flight (queued + running).
    TierLimit {
        /// The tier's in-flight limit.
        limit: usize,
    },
    /// This user already has `limit` tasks in flight on the tier.
    UserLimit {
        /// The user key.
        user: String,
        /// The per-user limit.
        limit: usize,
    },
    /// The runtime is shutting down and admits nothing new.
    ShuttingDown,
    /// A blocking submit waited until its deadline without room.
    DeadlineElapsed,
}

impl RejectReason {
    /// Snake-case name, as used in stats.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::QueueFull { .. } => "queue_full",
            RejectReason::TierLimit { .. } => "tier_limit",
            RejectReason::UserLimit { .. } => "user_limit",
            RejectReason::ShuttingDown => "shutting_down",
            RejectReason::DeadlineElapsed => "deadline_elapsed",
        }
    }

    pub(crate) fn index(&self) -> usize {
        match self {
            RejectReason::QueueFull { .. } => 0,
            RejectReason::TierLimit { .. } => 1,
            RejectReason::UserLimit { .. } => 2,
            RejectReason::ShuttingDown => 3,
            RejectReason::DeadlineElapsed => 4,
        }
    }

    /// Number of distinct reasons (stats array size).
    pub(crate) const COUNT: usize = 5;

    /// Whether waiting could help (a blocking submit retries these).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            RejectReason::QueueFull { .. }
                | RejectReason::TierLimit { .. }
                | RejectReason::UserLimit { .. }
        )
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::QueueFull { capacity } => {
                write!(f, "queue full ({capacity} waiting at this priority)")
            }
            RejectReason::TierLimit { limit } => {
                write!(
                    f,
                    "tier in-flight limit reached ({limit} queued or running)"
                )
            }
            RejectReason::UserLimit { user, limit } => {
                write!(
                    f,
                    "user {user:?} has {limit} tasks in flight (per-user limit)"
                )
            }
            RejectReason::ShuttingDown => f.write_str("runtime is shutting down"),
            RejectReason::DeadlineElapsed => f.write_str("no room before the submit deadline"),
        }
    }
}

/// A refused submission: why, and the work handed back so the caller can
/// retry, run it inline, or persist it.
///
/// ```
/// use tierpool::{Priority, Runtime, RejectReason};
/// let rt = Runtime::builder().build()?;
/// rt.shutdown(std::time::Duration::ZERO);
/// let err = rt
///     .ui()
///     .submit(Priority::Normal, |_| Ok::<_, tierpool::Cancelled>(1))
///     .unwrap_err();
/// assert_eq!(err.reason(), &RejectReason::ShuttingDown);
/// let work = err.into_inner(); // the closure, back in our hands
/// # let _ = work;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SubmitError<F> {
    reason: RejectReason,
    task: F,
    /// What a blocking submit waits for after this refusal (for a full
    /// queue, the reason's capacity alone cannot say which limit it was
    /// when the level's capacity equals `max_queued`).
    room: Room,
}

impl<F> SubmitError<F> {
    /// A refusal by a permit limit (or a final one, where the room is not
    /// used).
    pub(crate) fn new(reason: RejectReason, task: F) -> Self {
        SubmitError {
            reason,
            task,
            room: Room::Permit,
        }
    }

    /// A refusal by a full queue: its level (`Room::Level`) or the tier's
    /// `max_queued` (`Room::Total`).
    pub(crate) fn queue_full(reason: RejectReason, room: Room, task: F) -> Self {
        SubmitError { reason, task, room }
    }

    /// The room a blocking submit waits for after this refusal.
    pub(crate) fn room(&self) -> Room {
        self.room
    }

    /// Why the submission was refused.
    pub fn reason(&self) -> &RejectReason {
        &self.reason
    }

    /// The work that was not accepted.
    pub fn into_inner(self) -> F {
        self.task
    }

    /// Both parts.
    pub fn into_parts(self) -> (RejectReason, F) {
        (self.reason, self.task)
    }
}

impl<F> fmt::Debug for SubmitError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Display for SubmitError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task rejected: {}", self.reason)
    }
}

impl<F> std::error::Error for SubmitError<F> {}

/// How a task ended when it did not return a value: it failed with the
/// task's own error, panicked, or was cancelled (timeouts are a kind of
/// cancellation: [`is_timeout`](TaskError::is_timeout)).
///
/// ```
/// use tierpool::{CancelReason, TaskError};
/// let e: TaskError<std::io::Error> = TaskError::Cancelled(CancelReason::Timeout);
/// assert!(e.is_timeout() && e.is_cancelled() && !e.is_failed());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError<E> {
    /// The task returned `Err(e)`.
    Failed(E),
    /// The task panicked; the payload's message if it was a string.
    Panicked(String),
    /// The task was cancelled (including by its timeout) before it
    /// produced an outcome.
    Cancelled(CancelReason),
}

impl<E> TaskError<E> {
    /// The task ran past its timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, TaskError::Cancelled(CancelReason::Timeout))
    }

    /// The task was cancelled, for any reason (timeouts included).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TaskError::Cancelled(_))
    }

    /// The task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, TaskError::Panicked(_))
    }

    /// The task returned its own error.
    pub fn is_failed(&self) -> bool {
        matches!(self, TaskError::Failed(_))
    }

    /// The cancellation reason, if cancelled.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        match self {
            TaskError::Cancelled(r) => Some(*r),
            _ => None,
        }
    }

    /// The task's own error, if it failed.
    pub fn into_failed(self) -> Option<E> {
        match self {
            TaskError::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Maps the task's own error type.
    pub fn map_failed<G>(self, f: impl FnOnce(E) -> G) -> TaskError<G> {
        match self {
            TaskError::Failed(e) => TaskError::Failed(f(e)),
            TaskError::Panicked(m) => TaskError::Panicked(m),
            TaskError::Cancelled(r) => TaskError::Cancelled(r),
        }
    }
}

impl<E: fmt::Display> fmt::Display for TaskError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(e) => write!(f, "task failed: {e}"),
            TaskError::Panicked(m) => write!(f, "task panicked: {m}"),
            TaskError::Cancelled(r) => Cancelled::new(*r).fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for TaskError<E> {}

impl<E> From<Cancelled> for TaskError<E> {
    fn from(c: Cancelled) -> Self {
        TaskError::Cancelled(c.reason())
    }
}

/// Formats a duration for messages (`1.5s`, `250ms`, `40µs`).
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1}s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}µs", d.as_micros())
    }
}
