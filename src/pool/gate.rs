//! The submit gate: a pool's lifecycle flag and the count of submitters
//! past it, which together let shutdown stop admitting without stranding a
//! task in the queue.
//!
//! # Invariants
//!
//! 1. The state only moves forward: `OPEN → DRAINING → STOPPING`.
//! 2. A submitter holds a [`Pass`] from before it reads the state until
//!    after its push. [`Gate::close`] sets `STOPPING`, then waits until no
//!    pass is held. So every push either lands before `close` returns
//!    (and the drain that follows finds it) or its submitter saw the gate
//!    not open and rejected the task: none is stranded.
//!
//! The announcement (`submitting`) and the state are two atomics read and
//! written crosswise (store buffering), so each side puts a SeqCst fence
//! between its write and its read. SeqCst accesses alone would do in the
//! C11 model; the fences say it explicitly and are what loom checks (it
//! treats SeqCst accesses as AcqRel, SeqCst fences exactly).

use crate::sync::{fence, spin_yield, AtomicU8, AtomicUsize, Ordering, Padded};

pub(crate) const OPEN: u8 = 0;
pub(crate) const DRAINING: u8 = 1;
pub(crate) const STOPPING: u8 = 2;

pub(crate) struct Gate {
    state: AtomicU8,
    /// Submitters between their look at `state` and their push.
    /// Written on every submit: kept off the line workers read `state` from.
    submitting: Padded<AtomicUsize>,
}

/// A submitter's announcement; held across the push (invariant 2).
pub(crate) struct Pass<'a>(&'a Gate);

impl Gate {
    pub(crate) fn new() -> Self {
        Gate {
            state: AtomicU8::new(OPEN),
            submitting: Padded(AtomicUsize::new(0)),
        }
    }

    #[inline]
    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }

    /// Announces a submitter before it looks at the state.
    #[inline]
    pub(crate) fn enter(&self) -> Pass<'_> {
        self.submitting.fetch_add(1, Ordering::SeqCst);
        // SeqCst RMW then SeqCst load is already ordered in C11; loom
        // models SeqCst accesses more weakly and needs the fence to see it.
        #[cfg(loom)]
        fence(Ordering::SeqCst);
        Pass(self)
    }

    /// `OPEN → DRAINING`; `false` if the gate was already past open.
    pub(crate) fn begin_drain(&self) -> bool {
        self.state
            .compare_exchange(OPEN, DRAINING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Sets `STOPPING` and waits out the submitters already past their
    /// look at the state (a few instructions each; never user code).
    pub(crate) fn close(&self) {
        self.state.store(STOPPING, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        while self.submitting.load(Ordering::SeqCst) > 0 {
            spin_yield();
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.submitting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// loom model of submit racing shutdown (run by `.ci/loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::sync::{loom_model, Arc, Mutex};

    /// A pool reduced to its gate and a model queue (a loom mutex around a
    /// `VecDeque`, standing in for the crossbeam channels).
    struct ModelPool {
        gate: Gate,
        queue: Mutex<VecDeque<usize>>,
        /// Task id → who settled it, in order.
        settled: Mutex<Vec<(usize, &'static str)>>,
    }

    impl ModelPool {
        /// `PoolShared::submit`/`admit`: pass, look, push, leave.
        fn submit(&self, id: usize) -> bool {
            let _pass = self.gate.enter();
            if self.gate.state() != OPEN {
                return false;
            }
            self.queue.lock().push_back(id);
            true
        }

        /// A worker's one pick: nothing is taken once stopping.
        fn work_once(&self) {
            if self.gate.state() == STOPPING {
                return;
            }
            let picked = self.queue.lock().pop_front();
            if let Some(id) = picked {
                self.settled.lock().push((id, "ran"));
            }
        }

        /// `begin_drain` then `stop`: close the gate, drain what is queued
        /// as never started.
        fn shut_down(&self) {
            self.gate.begin_drain();
            self.gate.close();
            let drained: Vec<usize> = self.queue.lock().drain(..).collect();
            let mut settled = self.settled.lock();
            settled.extend(drained.into_iter().map(|id| (id, "drained")));
        }
    }

    /// Two submitters and a worker race a shutdown: afterwards the queue
    /// is empty, and every task was either rejected or settled exactly
    /// once (run by the worker or drained by shutdown): none stranded.
    #[test]
    fn loom_submit_racing_shutdown_strands_nothing() {
        loom_model(
            "submit_racing_shutdown_strands_nothing",
            |_| {},
            || {
                let pool = Arc::new(ModelPool {
                    gate: Gate::new(),
                    queue: Mutex::new(VecDeque::new()),
                    settled: Mutex::new(Vec::new()),
                });
                let submitters: Vec<_> = (0..2)
                    .map(|id| {
                        let pool = pool.clone();
                        loom::thread::spawn(move || pool.submit(id))
                    })
                    .collect();
                let p = pool.clone();
                let worker = loom::thread::spawn(move || p.work_once());

                pool.shut_down();
                // After `close` nothing may be admitted any more.
                assert!(!pool.submit(99), "admitted after close");

                let accepted: Vec<bool> =
                    submitters.into_iter().map(|h| h.join().unwrap()).collect();
                worker.join().unwrap();
                assert!(pool.queue.lock().is_empty(), "a task was stranded");
                let settled = pool.settled.lock();
                for (id, &ok) in accepted.iter().enumerate() {
                    let n = settled.iter().filter(|(s, _)| *s == id).count();
                    assert_eq!(n, usize::from(ok), "task {id}: accepted {ok}, settled {n}×");
                }
                assert_eq!(pool.gate.state(), STOPPING);
            },
        );
    }
}
