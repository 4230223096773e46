//! The outcome slot: where exactly one terminal outcome of a task lands.
//!
//! Three parties race to settle a running task: the worker (the task
//! returned or panicked), the watchdog (timeout) and whoever cancels it
//! (the caller, preemption, shutdown, the memory budget).
//!
//! # Invariants
//!
//! 1. A slot goes `Pending → Ready → Taken` and never back: the first
//!    `settle` wins; every later one gets its value handed back (and the
//!    caller drops it, outside the lock, counted as a late result).
//! 2. The winner's outcome is recorded in the stats exactly once, inside
//!    `settle` and before waiters wake, so a `join` followed by `stats()`
//!    always sees it.
//! 3. A waiter always wakes: `settle` notifies under the slot's lock and
//!    waiters re-check the state under it.
//!
//! # Deadlock safety
//!
//! The slot's lock is a leaf: nothing else is locked while it is held, and
//! user values are dropped only after it is released.

use std::time::Instant;

use crate::cancel::CancelReason;
use crate::clock::Clock;
use crate::error::TaskError;
use crate::sync::{Condvar, Mutex};
use crate::task::TaskStatus;
use crate::telemetry::TierCounters;

/// What a task's handle finally yields.
pub type TaskResult<T, E> = Result<T, TaskError<E>>;

enum SlotState<T, E> {
    Pending,
    Ready(TaskResult<T, E>),
    /// The outcome was handed to the handle; `status` keeps what it was.
    Taken(TaskStatus),
}

pub(crate) struct Slot<T, E> {
    state: Mutex<SlotState<T, E>>,
    cv: Condvar,
}

pub(crate) fn status_of<T, E>(r: &TaskResult<T, E>) -> TaskStatus {
    match r {
        Ok(_) => TaskStatus::Completed,
        Err(TaskError::Failed(_)) => TaskStatus::Failed,
        Err(TaskError::Panicked(_)) => TaskStatus::Panicked,
        Err(TaskError::Cancelled(r)) => TaskStatus::Cancelled(*r),
    }
}

impl<T, E> Slot<T, E> {
    pub(crate) fn new() -> Self {
        Slot {
            state: Mutex::new(SlotState::Pending),
            cv: Condvar::new(),
        }
    }

    /// Settles the slot with `r` if it is still pending (invariant 1):
    /// `Ok(status)` when this call won, `Err(r)` handing the loser back.
    /// The winner's outcome is recorded in `counters` before any waiter
    /// can see it (invariant 2), so stats read after `join` include it.
    pub(crate) fn settle(
        &self,
        r: TaskResult<T, E>,
        counters: &TierCounters,
    ) -> Result<TaskStatus, TaskResult<T, E>> {
        let mut st = self.state.lock();
        if !matches!(*st, SlotState::Pending) {
            return Err(r);
        }
        let status = status_of(&r);
        *st = SlotState::Ready(r);
        counters.record(status);
        self.cv.notify_all();
        Ok(status)
    }

    /// Blocks until settled, then takes the outcome.
    pub(crate) fn take_wait(&self) -> TaskResult<T, E> {
        let mut st = self.state.lock();
        loop {
            if let Some(r) = Self::take_ready(&mut st) {
                return r;
            }
            st = self.cv.wait(st);
        }
    }

    /// Takes the outcome if settled by `deadline` on `clock`.
    pub(crate) fn take_until(
        &self,
        clock: &Clock,
        deadline: Option<Instant>,
    ) -> Option<TaskResult<T, E>> {
        let mut st = self.state.lock();
        loop {
            if let Some(r) = Self::take_ready(&mut st) {
                return Some(r);
            }
            if deadline.is_some_and(|d| clock.now() >= d) {
                return None;
            }
            st = self.cv.wait_budget(st, clock.wait_budget(deadline));
        }
    }

    /// Waits until settled (or `deadline`) and returns a clone of the
    /// outcome, leaving it for other handles sharing the computation.
    pub(crate) fn clone_until(
        &self,
        clock: &Clock,
        deadline: Option<Instant>,
    ) -> Option<TaskResult<T, E>>
    where
        T: Clone,
        E: Clone,
    {
        let mut st = self.state.lock();
        loop {
            if let SlotState::Ready(r) = &*st {
                return Some(r.clone());
            }
            if deadline.is_some_and(|d| clock.now() >= d) {
                return None;
            }
            st = self.cv.wait_budget(st, clock.wait_budget(deadline));
        }
    }

    fn take_ready(st: &mut SlotState<T, E>) -> Option<TaskResult<T, E>> {
        if !matches!(st, SlotState::Ready(_)) {
            return None;
        }
        let SlotState::Ready(r) = std::mem::replace(st, SlotState::Taken(TaskStatus::Queued))
        else {
            return None;
        };
        *st = SlotState::Taken(status_of(&r));
        Some(r)
    }
}

/// The type-erased face of a slot, for the parts of the runtime that do
/// not know the task's value and error types.
pub(crate) trait Settle: Send + Sync {
    /// Settles as cancelled with `reason`; `true` if this call won.
    fn settle_cancelled(&self, reason: CancelReason, counters: &TierCounters) -> bool;
    /// Settles as panicked (the worker thread itself died); `true` if won.
    fn settle_panicked(&self, message: &str, counters: &TierCounters) -> bool;
    /// The terminal status, once settled.
    fn outcome(&self) -> Option<TaskStatus>;
    /// See `Slot::keeps_nothing_to_drop`: such a core may be freed later,
    /// on another thread (see `PoolShared::return_spent`).
    fn keeps_nothing_to_drop(&self) -> bool;
    /// Drops the body (the closure and what it captured) now, for a task
    /// that settled without its body running: its captures must not
    /// outlive the run's end (see `PoolShared::return_spent`).
    fn drop_body(&self);
    /// Runs one attempt of the task's body (the worker, only).
    fn run(&self, ctx: &crate::task::TaskContext) -> crate::task::RunEnd;
}

impl<T, E> Slot<T, E> {
    pub(crate) fn settle_cancelled(&self, reason: CancelReason, counters: &TierCounters) -> bool {
        self.settle(Err(TaskError::Cancelled(reason)), counters)
            .is_ok()
    }

    pub(crate) fn settle_panicked(&self, message: &str, counters: &TierCounters) -> bool {
        self.settle(Err(TaskError::Panicked(message.to_string())), counters)
            .is_ok()
    }

    /// Whether the settled slot holds no value whose drop could matter
    /// where or when it runs (see `PoolShared::return_spent`): nothing
    /// with a destructor of `T` or `E` in it. Decided by the types alone
    /// when neither has one; otherwise by what the slot holds (a completed
    /// `Result<(), String>` task keeps nothing of the `String` type).
    pub(crate) fn keeps_nothing_to_drop(&self) -> bool {
        if !std::mem::needs_drop::<T>() && !std::mem::needs_drop::<E>() {
            return true;
        }
        match &*self.state.lock() {
            SlotState::Pending => false,
            SlotState::Ready(Ok(_)) => !std::mem::needs_drop::<T>(),
            SlotState::Ready(Err(TaskError::Failed(_))) => !std::mem::needs_drop::<E>(),
            SlotState::Ready(Err(_)) | SlotState::Taken(_) => true,
        }
    }

    pub(crate) fn outcome(&self) -> Option<TaskStatus> {
        match &*self.state.lock() {
            SlotState::Pending => None,
            SlotState::Ready(r) => Some(status_of(r)),
            SlotState::Taken(s) => Some(*s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_slot_keeps_nothing_to_drop_unless_a_value_with_a_destructor_is_in_it() {
        let c = TierCounters::new();
        let plain: Slot<u32, ()> = Slot::new();
        assert!(
            plain.keeps_nothing_to_drop(),
            "no destructor in either type"
        );
        let done: Slot<(), String> = Slot::new();
        assert!(!done.keeps_nothing_to_drop(), "pending");
        done.settle(Ok(()), &c).unwrap();
        assert!(done.keeps_nothing_to_drop(), "completed with ()");
        let failed: Slot<(), String> = Slot::new();
        failed
            .settle(Err(TaskError::Failed("x".into())), &c)
            .unwrap();
        assert!(!failed.keeps_nothing_to_drop(), "holds the String");
        let _ = failed.take_wait();
        assert!(failed.keeps_nothing_to_drop(), "taken by the handle");
        let value: Slot<Vec<u8>, ()> = Slot::new();
        value.settle(Ok(vec![1]), &c).unwrap();
        assert!(!value.keeps_nothing_to_drop(), "holds the Vec");
        let cancelled: Slot<Vec<u8>, String> = Slot::new();
        assert!(cancelled.settle_cancelled(CancelReason::Caller, &c));
        assert!(cancelled.keeps_nothing_to_drop(), "cancelled: no value");
    }

    #[test]
    fn first_settle_wins_and_loser_is_handed_back() {
        let c = TierCounters::new();
        let s: Slot<u32, ()> = Slot::new();
        assert_eq!(s.settle(Ok(1), &c).unwrap(), TaskStatus::Completed);
        let loser = s.settle(Ok(2), &c).unwrap_err();
        assert_eq!(loser.unwrap(), 2);
        assert!(!s.settle_cancelled(CancelReason::Timeout, &c));
        assert_eq!(c.snapshot().completed, 1);
        assert_eq!(s.take_wait().unwrap(), 1);
        assert_eq!(s.outcome(), Some(TaskStatus::Completed));
    }

    #[test]
    fn waiter_wakes_on_settle() {
        let s: Arc<Slot<u32, ()>> = Arc::new(Slot::new());
        let s2 = s.clone();
        let h = std::thread::spawn(move || s2.take_wait());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(s.settle_cancelled(CancelReason::Caller, &TierCounters::new()));
        assert!(h.join().unwrap().unwrap_err().is_cancelled());
    }

    #[test]
    fn take_until_gives_up_at_deadline() {
        let m = crate::ManualClock::new();
        let c = m.clock();
        let s: Slot<u32, ()> = Slot::new();
        let d = c.now();
        assert!(s.take_until(&c, Some(d)).is_none());
    }
}

/// loom models of the slot (run by `.ci/loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::loom_model;
    use crate::sync::{Arc, AtomicUsize, Ordering};

    /// A task value that counts its drops: a leaked or twice-dropped
    /// loser shows up in the count.
    struct Tracked(Arc<AtomicUsize>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The worker completes, the watchdog times the task out and the
    /// caller cancels it, all at once, while the handle waits: exactly one
    /// settle wins, each loser gets its own value back, the counters hold
    /// exactly one outcome (the winner's), the waiter wakes with it, and
    /// the task's value is dropped exactly once whoever won.
    #[test]
    fn loom_completion_timeout_and_cancel_settle_once() {
        // Reading the whole counter snapshot at the end is hundreds of
        // atomic loads, each a (single-choice) loom branch.
        let more_branches = |b: &mut loom::model::Builder| b.max_branches = 20_000;
        loom_model(
            "completion_timeout_and_cancel_settle_once",
            more_branches,
            || {
                let slot: Arc<Slot<Tracked, ()>> = Arc::new(Slot::new());
                let counters = Arc::new(TierCounters::new());
                let drops = Arc::new(AtomicUsize::new(0));

                let (s, c, d) = (slot.clone(), counters.clone(), drops.clone());
                let worker = loom::thread::spawn(move || match s.settle(Ok(Tracked(d)), &c) {
                    Ok(status) => Some(status),
                    Err(loser) => {
                        assert!(loser.is_ok(), "the worker got its own value back");
                        None
                    }
                });
                let (s, c) = (slot.clone(), counters.clone());
                let watchdog = loom::thread::spawn(move || {
                    s.settle_cancelled(CancelReason::Timeout, &c)
                        .then_some(TaskStatus::Cancelled(CancelReason::Timeout))
                });
                let (s, c) = (slot.clone(), counters.clone());
                let caller = loom::thread::spawn(move || {
                    s.settle_cancelled(CancelReason::Caller, &c)
                        .then_some(TaskStatus::Cancelled(CancelReason::Caller))
                });

                let got = slot.take_wait();
                let got_status = status_of(&got);
                drop(got);

                let winners: Vec<TaskStatus> = [worker, watchdog, caller]
                    .into_iter()
                    .filter_map(|h| h.join().unwrap())
                    .collect();
                assert_eq!(winners.len(), 1, "exactly one settle wins: {winners:?}");
                assert_eq!(winners[0], got_status, "the waiter got the winner");
                assert_eq!(slot.outcome(), Some(got_status));

                let snap = counters.snapshot();
                let recorded = snap.completed
                    + snap.failed
                    + snap.panicked
                    + snap.cancelled.iter().sum::<u64>();
                assert_eq!(recorded, 1, "one outcome recorded");
                match got_status {
                    TaskStatus::Completed => assert_eq!(snap.completed, 1),
                    TaskStatus::Cancelled(r) => assert_eq!(snap.cancelled[r.index()], 1),
                    other => panic!("unexpected outcome {other:?}"),
                }
                assert_eq!(drops.load(Ordering::Relaxed), 1, "value dropped once");
            },
        );
    }
}
