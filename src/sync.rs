//! The one place tierpool takes its synchronisation primitives from.
//!
//! Every protocol (cancellation token, outcome slot, admission limiter,
//! shutdown) locks and waits through these names, so that a `cfg(loom)`
//! build can swap them for loom's model-checked versions without touching
//! the protocol code. The API is std-shaped (guards by value through
//! `wait`) because that is the shape both parking_lot and loom can offer.

#![allow(unreachable_pub)]

pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
pub(crate) use std::sync::{Arc, Weak};

use std::time::Duration;

/// A mutex whose `lock` never fails (no poisoning: a panic in a task never
/// happens while one of our locks is held, and parking_lot has no poison).
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub(crate) const fn new(value: T) -> Self {
        Mutex(parking_lot::const_mutex(value))
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock()
    }
}

/// A condition variable paired with [`Mutex`].
#[derive(Debug, Default)]
pub(crate) struct Condvar(parking_lot::Condvar);

impl Condvar {
    pub(crate) const fn new() -> Self {
        Condvar(parking_lot::Condvar::new())
    }

    /// Blocks until notified (or spuriously woken): callers loop on their
    /// condition.
    pub(crate) fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(&mut guard);
        guard
    }

    /// Blocks until notified or `budget` has passed. `None` waits forever.
    pub(crate) fn wait_budget<'a, T>(
        &self,
        mut guard: MutexGuard<'a, T>,
        budget: Option<Duration>,
    ) -> MutexGuard<'a, T> {
        match budget {
            None => self.0.wait(&mut guard),
            Some(d) => {
                let _ = self.0.wait_for(&mut guard, d);
            }
        }
        guard
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }

    pub(crate) fn notify_one(&self) {
        self.0.notify_one();
    }
}

/// Keeps a value on a cache line of its own (two, on CPUs that fetch
/// lines in pairs), so atomics written by different threads at the same
/// moments do not bounce one line between cores.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}
