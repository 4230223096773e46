//! The one place tierpool takes its synchronisation primitives from.
//!
//! Every protocol (cancellation token, outcome slot, admission limiter,
//! shutdown) locks and waits through these names, so that a `cfg(loom)`
//! build can swap them for loom's model-checked versions without touching
//! the protocol code. The API is std-shaped (guards by value through
//! `wait`) because that is the shape both parking_lot and loom can offer.
//!
//! # Under `cfg(loom)`
//!
//! Atomics, `fence`, [`Mutex`], [`Condvar`] and [`spin_yield`] come from
//! loom; the models live in `loom_tests` modules beside each protocol and
//! are run by `.ci/loom`. Two deliberate differences:
//!
//! - `Arc` and `Weak` stay std's. loom's `Arc` only adds leak checking, and
//!   it has no `Weak`, no `new_cyclic` and no unsized coercion
//!   (`Arc<dyn Settle>`, `Arc<str>`), all of which the crate uses. Reference
//!   counts are not one of the protocols being checked.
//! - [`Condvar::wait_budget`] with `Some(budget)` is a plain `wait` (loom's
//!   own `wait_timeout` does the same: it never times out). That is the
//!   strict reading for a model: a protocol that only works because a
//!   timeout papers over a lost notification shows up as a deadlock.
//!   Models therefore wait without deadlines, or on a manual clock that
//!   never moves.
//!
//! Nothing else in the crate may run under loom outside `loom::model`
//! (loom's primitives panic there), so a loom build runs only the
//! `loom_tests` models.

#![allow(unreachable_pub)]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
pub(crate) use std::sync::{Arc, Weak};

use std::time::Duration;

#[cfg(not(loom))]
use parking_lot as imp;

/// Gives the other threads a turn inside a spin loop (loom must be told,
/// or a model spinning on a flag never ends).
#[inline]
pub(crate) fn spin_yield() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// A mutex whose `lock` never fails (no poisoning: a panic in a task never
/// happens while one of our locks is held, and parking_lot has no poison).
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(
    #[cfg(not(loom))] imp::Mutex<T>,
    #[cfg(loom)] loom::sync::Mutex<T>,
);

#[cfg(not(loom))]
pub(crate) type MutexGuard<'a, T> = imp::MutexGuard<'a, T>;
#[cfg(loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    #[cfg(not(loom))]
    pub(crate) const fn new(value: T) -> Self {
        Mutex(imp::const_mutex(value))
    }

    /// Whether some thread holds it (unit tests of what runs under a lock).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn is_locked(&self) -> bool {
        self.0.is_locked()
    }

    /// loom's mutex has no `const` constructor; nothing in the crate needs
    /// one in a `static`.
    #[cfg(loom)]
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(not(loom))]
        return self.0.lock();
        // No poisoning in the crate's protocols (see above); a poisoned
        // lock in a model is a failed model anyway.
        #[cfg(loom)]
        return self.0.lock().unwrap_or_else(|p| p.into_inner());
    }
}

/// A condition variable paired with [`Mutex`].
#[derive(Debug, Default)]
pub(crate) struct Condvar(
    #[cfg(not(loom))] imp::Condvar,
    #[cfg(loom)] loom::sync::Condvar,
);

impl Condvar {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Condvar(imp::Condvar::new())
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Condvar(loom::sync::Condvar::new())
    }

    /// Blocks until notified (or spuriously woken): callers loop on their
    /// condition.
    #[cfg(not(loom))]
    pub(crate) fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(&mut guard);
        guard
    }

    /// Blocks until notified (or spuriously woken): callers loop on their
    /// condition.
    #[cfg(loom)]
    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until notified or `budget` has passed. `None` waits forever.
    #[cfg(not(loom))]
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

    /// Under loom a budget never runs out: this is a plain [`wait`](Self::wait)
    /// (see the module notes).
    #[cfg(loom)]
    pub(crate) fn wait_budget<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        _budget: Option<Duration>,
    ) -> MutexGuard<'a, T> {
        self.wait(guard)
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

/// Runs a loom model and reports how many interleavings it explored (the
/// figure in the README); `.ci/loom` shows it with `--nocapture`.
#[cfg(all(test, loom))]
pub(crate) fn loom_model<F>(name: &str, tweak: impl FnOnce(&mut loom::model::Builder), f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let iterations = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = iterations.clone();
    let mut builder = loom::model::Builder::new();
    tweak(&mut builder);
    let start = std::time::Instant::now();
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    eprintln!(
        "loom model {name}: {} iterations in {:.2?} (max preemptions {:?})",
        iterations.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed(),
        builder.preemption_bound,
    );
}
