//! Task priority: four levels, highest first.

use std::fmt;

/// How urgent a task is. Workers take the highest non-empty level first,
/// with an anti-starvation rule so lower levels still make progress.
///
/// ```
/// use tierpool::Priority;
/// assert!(Priority::Critical > Priority::Low);
/// assert_eq!(Priority::default(), Priority::Normal);
/// assert_eq!("high".parse::<Priority>().unwrap(), Priority::High);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Background filler; runs when nothing else waits (or when starving).
    Low,
    /// The default.
    #[default]
    Normal,
    /// Ahead of normal work; may use the realtime tier's reserved slots.
    High,
    /// Ahead of everything; may preempt lower-priority realtime work.
    Critical,
}

impl Priority {
    /// Every level, highest first (the order workers look in).
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// Queue index: 0 for critical … 3 for low.
    #[inline]
    pub(crate) fn index(self) -> usize {
        match self {
            Priority::Critical => 0,
            Priority::High => 1,
            Priority::Normal => 2,
            Priority::Low => 3,
        }
    }

    /// Lower-case name, as used in stats and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Priority`] from text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePriorityError(String);

impl fmt::Display for ParsePriorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown priority {:?}: expected critical, high, normal or low",
            self.0
        )
    }
}

impl std::error::Error for ParsePriorityError {}

impl std::str::FromStr for Priority {
    type Err = ParsePriorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "critical" => Ok(Priority::Critical),
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            _ => Err(ParsePriorityError(s.to_string())),
        }
    }
}

/// Oban-style numeric priorities: 0 is the most urgent. Any number maps to
/// a level (0 → critical, 1–3 → high, 4–6 → normal, 7 and above → low), so
/// no conversion can fail or panic.
impl From<u8> for Priority {
    fn from(n: u8) -> Priority {
        match n {
            0 => Priority::Critical,
            1..=3 => Priority::High,
            4..=6 => Priority::Normal,
            _ => Priority::Low,
        }
    }
}
