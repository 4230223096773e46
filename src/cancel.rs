//! Cooperative cancellation: the token a task checks, and why it was
//! cancelled.
//!
//! # Invariants
//!
//! 1. A token is cancelled at most once; the first reason wins and never
//!    changes (`cancel` returns whether this call won).
//! 2. A thread blocked in [`CancelToken::wait_until`] always wakes when the
//!    token is cancelled: the reason is published before the waiters' lock
//!    is taken to notify, and waiters check the reason under that lock.
//!
//! # Deadlock safety
//!
//! The token's lock guards no data and is never held while taking another
//! lock, so it cannot take part in a lock cycle.

use std::fmt;
use std::time::Instant;

use crate::clock::Clock;
use crate::sync::{Arc, AtomicU8, Condvar, Mutex, Ordering};

/// Why a task was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CancelReason {
    /// The submitter called [`TaskHandle::cancel`](crate::TaskHandle::cancel).
    Caller,
    /// The task ran past its timeout.
    Timeout,
    /// A more urgent task needed the worker (realtime tier).
    Preempted,
    /// The runtime shut down before the task finished.
    Shutdown,
    /// The task waited in the queue longer than its queue budget and never
    /// started.
    QueueExpired,
    /// The task went over its memory budget.
    Memory,
}

impl CancelReason {
    /// Every reason, in stats order.
    pub const ALL: [CancelReason; 6] = [
        CancelReason::Caller,
        CancelReason::Timeout,
        CancelReason::Preempted,
        CancelReason::Shutdown,
        CancelReason::QueueExpired,
        CancelReason::Memory,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<CancelReason> {
        CancelReason::ALL
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }

    /// Snake-case name, as used in stats and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Caller => "caller",
            CancelReason::Timeout => "timeout",
            CancelReason::Preempted => "preempted",
            CancelReason::Shutdown => "shutdown",
            CancelReason::QueueExpired => "queue_expired",
            CancelReason::Memory => "memory",
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a task gets from [`TaskContext::checkpoint`](crate::TaskContext::checkpoint)
/// once it has been cancelled: return it (with `?`) to stop early.
///
/// It converts into `Box<dyn Error>`, so tasks returning boxed errors can
/// use `?` directly; tasks with their own error type implement
/// `From<Cancelled>`.
///
/// ```
/// use tierpool::{Cancelled, CancelReason};
/// let c = Cancelled::new(CancelReason::Timeout);
/// assert_eq!(c.reason(), CancelReason::Timeout);
/// assert_eq!(c.to_string(), "task cancelled: timeout");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled {
    reason: CancelReason,
}

impl Cancelled {
    /// A cancellation with this reason.
    pub fn new(reason: CancelReason) -> Self {
        Cancelled { reason }
    }

    /// Why the task was cancelled.
    pub fn reason(&self) -> CancelReason {
        self.reason
    }
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task cancelled: {}", self.reason)
    }
}

impl std::error::Error for Cancelled {}

/// A cancellation flag with a reason, embedded in each task (no allocation
/// of its own) and shared through [`CancelToken`] elsewhere.
#[derive(Default)]
pub(crate) struct TokenCell {
    /// 0 while live, else `CancelReason::code()`.
    reason: AtomicU8,
    lock: Mutex<()>,
    cv: Condvar,
}

impl TokenCell {
    /// Cancels with `reason`; returns `true` if this call was the one that
    /// cancelled (invariant 1).
    pub(crate) fn cancel(&self, reason: CancelReason) -> bool {
        let won = self
            .reason
            .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            // Invariant 2: publish, then notify under the lock.
            let _g = self.lock.lock();
            self.cv.notify_all();
        }
        won
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.reason.load(Ordering::Acquire) != 0
    }

    #[inline]
    pub(crate) fn reason(&self) -> Option<CancelReason> {
        CancelReason::from_code(self.reason.load(Ordering::Acquire))
    }

    /// Makes the token live again, for the next attempt of a task whose
    /// previous run has returned (restart after preemption, retry).
    pub(crate) fn reset(&self) {
        self.reason.store(0, Ordering::Release);
    }

    /// Blocks until the token is cancelled (`Err`) or `deadline` passes on
    /// `clock` (`Ok`). `None` waits for cancellation only.
    pub(crate) fn wait_until(
        &self,
        clock: &Clock,
        deadline: Option<Instant>,
    ) -> Result<(), Cancelled> {
        let mut g = self.lock.lock();
        loop {
            if let Some(r) = self.reason() {
                return Err(Cancelled::new(r));
            }
            if let Some(d) = deadline {
                if clock.now() >= d {
                    return Ok(());
                }
            }
            g = self.cv.wait_budget(g, clock.wait_budget(deadline));
        }
    }
}

impl fmt::Debug for TokenCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenCell").field(&self.reason()).finish()
    }
}

/// A shared, cheaply cloned cancellation token (CPU batches).
#[derive(Clone, Default, Debug)]
pub(crate) struct CancelToken(Arc<TokenCell>);

impl CancelToken {
    pub(crate) fn new() -> Self {
        CancelToken::default()
    }
}

impl std::ops::Deref for CancelToken {
    type Target = TokenCell;

    fn deref(&self) -> &TokenCell {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use std::time::Duration;

    #[test]
    fn first_reason_wins() {
        let t = CancelToken::new();
        assert!(!t.is_cancelled());
        assert!(t.cancel(CancelReason::Timeout));
        assert!(!t.cancel(CancelReason::Caller));
        assert_eq!(t.reason(), Some(CancelReason::Timeout));
    }

    #[test]
    fn waiter_wakes_on_cancel() {
        let t = CancelToken::new();
        let t2 = t.clone();
        let clock = Clock::system();
        let h = std::thread::spawn(move || t2.wait_until(&clock, None));
        std::thread::sleep(Duration::from_millis(10));
        t.cancel(CancelReason::Shutdown);
        assert_eq!(
            h.join().unwrap(),
            Err(Cancelled::new(CancelReason::Shutdown))
        );
    }

    #[test]
    fn wait_until_returns_at_manual_deadline() {
        let m = ManualClock::new();
        let c = m.clock();
        let t = CancelToken::new();
        let deadline = c.deadline_after(Duration::from_secs(5));
        let h = std::thread::spawn(move || t.wait_until(&c, deadline));
        m.advance(Duration::from_secs(5));
        assert_eq!(h.join().unwrap(), Ok(()));
    }

    #[test]
    fn reason_codes_round_trip() {
        for r in CancelReason::ALL {
            assert_eq!(CancelReason::from_code(r.code()), Some(r));
        }
        assert_eq!(CancelReason::from_code(0), None);
        assert_eq!(CancelReason::from_code(200), None);
    }
}

/// loom models of the token (run by `.ci/loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::loom_model;

    /// Two cancellers with different reasons race each other, an observer
    /// reading `is_cancelled`/`reason`, and a waiter blocked without a
    /// deadline: exactly one `cancel` wins, its reason is the one everybody
    /// sees, an observer that sees the flag also sees a reason, and the
    /// waiter always wakes (a lost notification is a loom deadlock).
    #[test]
    fn loom_cancel_races_observer_and_waiter() {
        loom_model(
            "cancel_races_observer_and_waiter",
            |_| {},
            || {
                let t = CancelToken::new();
                let (t1, t2) = (t.clone(), t.clone());
                let timeout = loom::thread::spawn(move || t1.cancel(CancelReason::Timeout));
                let caller = loom::thread::spawn(move || {
                    let seen = t2.is_cancelled();
                    if seen {
                        assert!(t2.reason().is_some(), "flag set without a reason");
                    }
                    (seen, t2.cancel(CancelReason::Caller))
                });
                let woke = t.wait_until(&Clock::system(), None);
                let won_timeout = timeout.join().unwrap();
                let (saw_cancelled, won_caller) = caller.join().unwrap();
                assert!(won_timeout ^ won_caller, "exactly one cancel wins");
                if saw_cancelled {
                    assert!(won_timeout, "the caller saw it cancelled, so it lost");
                }
                let winner = if won_timeout {
                    CancelReason::Timeout
                } else {
                    CancelReason::Caller
                };
                assert_eq!(t.reason(), Some(winner));
                assert_eq!(woke, Err(Cancelled::new(winner)), "waiter saw the winner");
            },
        );
    }
}
