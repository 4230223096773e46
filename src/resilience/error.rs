//! The error every resilience builder returns for a bad setting.

use std::fmt;

/// A resilience setting that was rejected by a builder's `build()`.
///
/// It names the field and says why, so a configuration mistake is found at
/// start-up rather than as a panic or a silently clamped value later.
///
/// ```
/// use tierpool::RetryPolicy;
///
/// let err = RetryPolicy::builder().max_attempts(0).build().unwrap_err();
/// assert_eq!(err.field(), "max_attempts");
/// assert!(err.to_string().contains("max_attempts"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResilienceConfigError {
    field: &'static str,
    reason: String,
}

impl ResilienceConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ResilienceConfigError {
            field,
            reason: reason.into(),
        }
    }

    /// The builder setting that was rejected, e.g. `"max_attempts"`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::RetryPolicy;
    ///
    /// let err = RetryPolicy::builder().max_delay(Duration::MAX).build().unwrap_err();
    /// assert_eq!(err.field(), "max_delay");
    /// ```
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was rejected, in words.
    ///
    /// ```
    /// use tierpool::RetryPolicy;
    ///
    /// let err = RetryPolicy::builder().factor(0.5).build().unwrap_err();
    /// assert!(err.reason().contains("at least 1"));
    /// ```
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ResilienceConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for ResilienceConfigError {}
