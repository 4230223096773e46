//! Admission: the tier-wide and per-user in-flight limits.
//!
//! "In flight" is queued + running. A [`Permit`] is taken at submit and
//! given back when the work is really over: the worker's thread returned
//! from it, or it was discarded before it started.
//!
//! # Invariants
//!
//! 1. `in_flight` never exceeds `max_in_flight`, and no user's count
//!    exceeds `per_user_limit`: both are checked and bumped in one step
//!    (a compare-and-swap loop; the user map under its lock).
//! 2. Every permit is returned exactly once (it is an RAII guard), so a
//!    rejected or cancelled submission leaks nothing.
//! 3. A blocked submitter always learns of a release that can let it in:
//!    it announces itself in `room_waiters` before trying, and the waiter
//!    blocks only while the generation of the [`Room`] it was refused for
//!    (a place at its priority level, a place under the tier's
//!    `max_queued`, or a permit) is unchanged since before its last try.
//!    Notifications (a generation bump; the `room` lock and condvar only
//!    when a waiter sleeps) are edge-triggered: a release notifies only
//!    when it leaves a limit that was reached (the global count or the
//!    user's count was at its limit). That loses nothing: a submitter
//!    rejected by a limit saw the count at it, and the first release after
//!    that starts from it. Queue places are signalled the same way by the
//!    pool, for the level and for `max_queued` apart, whenever a place is
//!    given up at a full limit — a worker's pick, and the two roll-backs
//!    of a try that took one place and was refused the next (the
//!    `max_queued` place when the level is full, both places when the
//!    permit is refused) — and, for a place given back through
//!    `PoolShared::unreserve` (a pick, the permit roll-back, an abandoned
//!    re-queue), when it crosses half a limit. The rooms
//!    have separate generations so that a roll-back never wakes the
//!    submitter that made it: it waits for the room it was refused, not
//!    the one it handed back. For the same reason a try takes nothing it
//!    must hand back when refused a permit: the user's count is checked,
//!    and the global one taken, under the user map's lock, before the
//!    user's count is taken. A
//!    SeqCst fence between announcing and trying, and between releasing and
//!    looking for waiters, makes one side see the other; a waiter counts
//!    itself in `room_sleepers` before its last look at its generation,
//!    and a notification bumps the generation before it looks for
//!    sleepers (checked by loom).
//!
//! # Deadlock safety
//!
//! `users` and `room` are leaves and are never held together.

use std::collections::HashMap;
use std::time::Instant;

use crate::clock::Clock;
use crate::error::RejectReason;
use crate::sync::{fence, spin_yield, Arc, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};

pub(crate) struct Admission {
    max_in_flight: Option<usize>,
    per_user_limit: Option<usize>,
    in_flight: AtomicUsize,
    users: Mutex<HashMap<Arc<str>, usize>>,
    room_waiters: AtomicUsize,
    /// Announced waiters that are blocked (or about to block) on
    /// `room_cv`: only then does a notification take the lock and wake.
    room_sleepers: AtomicUsize,
    /// Bumped by every notification of that [`Room`], so waiters can tell
    /// they missed none.
    room_gen: [AtomicU64; Room::COUNT],
    room: Mutex<()>,
    room_cv: Condvar,
}

/// One unit of in-flight capacity; returned on drop.
pub(crate) struct Permit {
    /// `None` when the tier has no limits: nothing to give back.
    admission: Option<Arc<Admission>>,
    user: Option<Arc<str>>,
}

impl Admission {
    pub(crate) fn new(max_in_flight: Option<usize>, per_user_limit: Option<usize>) -> Self {
        Admission {
            max_in_flight,
            per_user_limit,
            in_flight: AtomicUsize::new(0),
            users: Mutex::new(HashMap::new()),
            room_waiters: AtomicUsize::new(0),
            room_sleepers: AtomicUsize::new(0),
            room_gen: Default::default(),
            room: Mutex::new(()),
            room_cv: Condvar::new(),
        }
    }

    /// Tasks in flight, when a limit makes it worth counting them (the
    /// count is two shared atomic updates per task; without limits the pool
    /// derives it from queued + running instead).
    pub(crate) fn in_flight(&self) -> Option<usize> {
        self.limited()
            .then(|| self.in_flight.load(Ordering::Acquire))
    }

    #[inline]
    fn limited(&self) -> bool {
        self.max_in_flight.is_some() || self.per_user_limit.is_some()
    }

    #[cfg(test)]
    pub(crate) fn user_in_flight(&self, user: &str) -> usize {
        self.users.lock().get(user).copied().unwrap_or(0)
    }

    /// Takes a permit, or says which limit is reached (invariant 1).
    /// [`try_acquire`](Self::try_acquire) with the no-limit case inlined
    /// into the submit path.
    #[inline]
    pub(crate) fn acquire(
        self: &Arc<Self>,
        user: Option<&Arc<str>>,
    ) -> Result<Option<Permit>, RejectReason> {
        if self.limited() {
            self.try_acquire(user)
        } else {
            Ok(None)
        }
    }

    pub(crate) fn try_acquire(
        self: &Arc<Self>,
        user: Option<&Arc<str>>,
    ) -> Result<Option<Permit>, RejectReason> {
        if !self.limited() {
            // Nothing to count, nothing to give back.
            return Ok(None);
        }
        let global = self.max_in_flight.unwrap_or(usize::MAX);
        let take_global = || {
            self.in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < global).then_some(n + 1)
                })
                .map(drop)
                .map_err(|_| RejectReason::TierLimit { limit: global })
        };
        match (user, self.per_user_limit) {
            (Some(user), Some(limit)) => {
                // Both limits are checked, and the global unit taken, under
                // the user map's lock before the user's count is taken, so a
                // refusal by either takes nothing it must give back: a
                // global unit given back at the limit would notify the
                // blocked submitters, this one among them (it spun until its
                // deadline; invariant 3). The tier's limit is named first
                // when both are reached, as the compare-exchange below would.
                let mut users = self.users.lock();
                if self.in_flight.load(Ordering::Acquire) >= global {
                    return Err(RejectReason::TierLimit { limit: global });
                }
                if users.get(user).copied().unwrap_or(0) >= limit {
                    return Err(RejectReason::UserLimit {
                        user: user.to_string(),
                        limit,
                    });
                }
                take_global()?;
                *users.entry(user.clone()).or_insert(0) += 1;
            }
            _ => take_global()?,
        }
        Ok(Some(Permit {
            admission: Some(self.clone()),
            user: if self.per_user_limit.is_some() {
                user.cloned()
            } else {
                None
            },
        }))
    }

    /// Gives back one unit of the global count; `user_was_full` says the
    /// releasing user's count was at its limit (invariant 3).
    fn release_global(&self, user_was_full: bool) {
        let before = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if user_was_full || self.max_in_flight.is_some_and(|limit| before >= limit) {
            self.notify(&[Room::Permit]);
        }
    }

    /// Wakes the blocked submitters waiting for any room: something
    /// freed both a place and a permit (a queued task discarded), or the
    /// tier is shutting down (a waiter then learns it is refused for good).
    pub(crate) fn notify_room(&self) {
        self.notify(&Room::ALL);
    }

    /// Wakes blocked submitters waiting for one of `rooms`, if any
    /// announced themselves (invariant 3).
    pub(crate) fn notify(&self, rooms: &[Room]) {
        // Pairs with the fence in `room_waiter`: the freed place (an
        // AcqRel decrement of `in_flight`, or a queue place) and the
        // waiter's announcement are different atomics, so without a fence
        // on both sides the waiter's try can miss the place while we miss
        // the waiter (store buffering; found by the loom model
        // `loom_room_waiter_never_misses_a_release`).
        fence(Ordering::SeqCst);
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            // The bump first, then the look for sleepers; a waiter counts
            // itself a sleeper first, then looks at the bump (both SeqCst):
            // one of us sees the other. The lock only for a real sleeper,
            // which holds it from its count until the condvar releases it,
            // so the notification cannot fall between its look and its
            // sleep.
            for &room in rooms {
                self.room_gen[room as usize].fetch_add(1, Ordering::SeqCst);
            }
            // A store-buffering pair on two atomics: the fences (here and
            // in `wait`) make it hold under loom's weaker SeqCst model too.
            fence(Ordering::SeqCst);
            if self.room_sleepers.load(Ordering::SeqCst) > 0 {
                let _g = self.room.lock();
                self.room_cv.notify_all();
            }
        }
    }

    /// Announces a blocked submitter; see [`RoomWaiter`].
    pub(crate) fn room_waiter(&self) -> RoomWaiter<'_> {
        self.room_waiters.fetch_add(1, Ordering::SeqCst);
        // Announce before the first try; see `notify`.
        fence(Ordering::SeqCst);
        RoomWaiter {
            admission: self,
            seen: self.generations(),
        }
    }

    fn generations(&self) -> [u64; Room::COUNT] {
        std::array::from_fn(|i| self.room_gen[i].load(Ordering::SeqCst))
    }
}

/// What a blocked submitter waits for: the limit that refused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Room {
    /// A place at the task's priority level (the level's capacity).
    Level = 0,
    /// A place under the tier's `max_queued`.
    Total = 1,
    /// A permit (the tier's in-flight limit, or the user's).
    Permit = 2,
}

impl Room {
    pub(crate) const COUNT: usize = 3;
    pub(crate) const ALL: [Room; Room::COUNT] = [Room::Level, Room::Total, Room::Permit];
}

/// A submitter waiting for capacity. Protocol: `wait` only blocks if the
/// room it waits for was not notified since the previous `wait` returned
/// (or since announcing), so a release between a failed attempt and the
/// wait is never missed (invariant 3).
pub(crate) struct RoomWaiter<'a> {
    admission: &'a Admission,
    /// Every room's generation as of before the last try.
    seen: [u64; Room::COUNT],
}

impl RoomWaiter<'_> {
    /// Blocks until `room` may have freed up or `deadline` passes on
    /// `clock`; `false` once the deadline has passed. `room` is what the
    /// last try was refused for: a notification of another room does not
    /// end the wait (a submitter handing back a place it took for a try
    /// refused by another limit notifies that place's room, and waits in
    /// the room of the limit that refused it).
    ///
    /// It spins and yields a little before it sleeps, as crossbeam's
    /// blocking channels do: under a stream of tiny tasks the room a full
    /// queue is waiting for comes with the next pick, a fraction of a
    /// microsecond away, and a submitter put to sleep came back late — on a
    /// busy machine the woken thread waits for a core while the workers
    /// empty the queue and go idle. Sleeping is for waits longer than
    /// that.
    pub(crate) fn wait(&mut self, room: Room, clock: &Clock, deadline: Option<Instant>) -> bool {
        let a = self.admission;
        let (gen, seen) = (&a.room_gen[room as usize], self.seen[room as usize]);
        for step in 0..ROOM_SPIN_STEPS {
            if gen.load(Ordering::SeqCst) != seen {
                return self.took_notification(clock, deadline);
            }
            if step < ROOM_SPIN_STEPS / 2 {
                for _ in 0..1u32 << step {
                    std::hint::spin_loop();
                }
            } else {
                spin_yield();
            }
        }
        let mut g = a.room.lock();
        a.room_sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst); // pairs with the one in `notify`
        while gen.load(Ordering::SeqCst) == seen {
            if deadline.is_some_and(|d| clock.now() >= d) {
                a.room_sleepers.fetch_sub(1, Ordering::SeqCst);
                return false;
            }
            g = a.room_cv.wait_budget(g, clock.wait_budget(deadline));
        }
        a.room_sleepers.fetch_sub(1, Ordering::SeqCst);
        drop(g);
        self.took_notification(clock, deadline)
    }

    fn took_notification(&mut self, clock: &Clock, deadline: Option<Instant>) -> bool {
        self.seen = self.admission.generations();
        deadline.is_none_or(|d| clock.now() < d)
    }
}

/// How many looks a waiting submitter takes before it sleeps: half of
/// them after short spins (1, 2, 4, ... pause instructions), the rest after
/// yielding the core. One under loom, whose models must reach the sleep.
#[cfg(not(loom))]
const ROOM_SPIN_STEPS: u32 = 12;
#[cfg(loom)]
const ROOM_SPIN_STEPS: u32 = 1;

impl Drop for RoomWaiter<'_> {
    fn drop(&mut self) {
        self.admission.room_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(admission) = self.admission.take() else {
            return;
        };
        let mut user_was_full = false;
        if let Some(user) = self.user.take() {
            let mut users = admission.users.lock();
            if let Some(n) = users.get_mut(&user) {
                user_was_full = admission.per_user_limit.is_some_and(|l| *n >= l);
                *n -= 1;
                if *n == 0 {
                    users.remove(&user);
                }
            }
        }
        admission.release_global(user_was_full);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_user_limits_hold_and_release() {
        let a = Arc::new(Admission::new(Some(3), Some(2)));
        let u1: Arc<str> = Arc::from("u1");
        let u2: Arc<str> = Arc::from("u2");
        let p1 = a.try_acquire(Some(&u1)).unwrap();
        let _p2 = a.try_acquire(Some(&u1)).unwrap();
        assert!(matches!(
            a.try_acquire(Some(&u1)),
            Err(RejectReason::UserLimit { limit: 2, .. })
        ));
        // The failed user attempt must not leak a global permit.
        assert_eq!(a.in_flight(), Some(2));
        let _p3 = a.try_acquire(Some(&u2)).unwrap();
        assert!(matches!(
            a.try_acquire(None),
            Err(RejectReason::TierLimit { limit: 3 })
        ));
        drop(p1);
        assert_eq!(a.user_in_flight("u1"), 1);
        assert!(a.try_acquire(Some(&u1)).is_ok());
    }

    #[test]
    fn users_map_is_cleaned_up() {
        let a = Arc::new(Admission::new(None, Some(1)));
        let u: Arc<str> = Arc::from("");
        drop(a.try_acquire(Some(&u)).unwrap());
        assert!(a.users.lock().is_empty());
        assert_eq!(a.in_flight(), Some(0));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Acquire(Option<u8>),
            Release(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => proptest::option::of(0u8..4).prop_map(Op::Acquire),
                2 => any::<usize>().prop_map(Op::Release),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

            /// Admission counting against a model: a permit is granted exactly
            /// when both limits allow it, the rejection names the limit that
            /// was hit, counts never pass the limits, and every release gives
            /// the capacity back (the user map empties with the last permit).
            #[test]
            fn admission_matches_a_counting_model(
                global in proptest::option::of(1usize..6),
                per_user in proptest::option::of(1usize..4),
                ops in proptest::collection::vec(op(), 1..80),
            ) {
                let a = Arc::new(Admission::new(global, per_user));
                let users: Vec<Arc<str>> = (0..4).map(|u| Arc::from(format!("u{u}"))).collect();
                let mut held: Vec<(Option<u8>, Option<Permit>)> = Vec::new();
                for op in ops {
                    match op {
                        Op::Acquire(u) => {
                            let user = u.map(|u| &users[u as usize]);
                            let mine = held.iter().filter(|(h, _)| u.is_some() && *h == u).count();
                            let global_full = global.is_some_and(|g| held.len() >= g);
                            let user_full = u.is_some() && per_user.is_some_and(|l| mine >= l);
                            match a.try_acquire(user) {
                                Ok(p) => {
                                    prop_assert!(!global_full && !user_full);
                                    held.push((u, p));
                                }
                                Err(RejectReason::TierLimit { .. }) => prop_assert!(global_full),
                                Err(RejectReason::UserLimit { .. }) => prop_assert!(user_full && !global_full),
                                Err(other) => prop_assert!(false, "unexpected {:?}", other),
                            }
                        }
                        Op::Release(i) if !held.is_empty() => {
                            let i = i % held.len();
                            drop(held.swap_remove(i));
                        }
                        Op::Release(_) => {}
                    }
                    // Counted only when there is a limit to count against.
                    let expected = (global.is_some() || per_user.is_some()).then_some(held.len());
                    prop_assert_eq!(a.in_flight(), expected);
                    for (u, name) in users.iter().enumerate() {
                        let n = held.iter().filter(|(h, _)| *h == Some(u as u8)).count();
                        let counted = if per_user.is_some() { n } else { 0 };
                        prop_assert_eq!(a.user_in_flight(name), counted);
                    }
                }
                drop(held);
                prop_assert_eq!(a.in_flight().unwrap_or(0), 0);
                prop_assert!(a.users.lock().is_empty());
            }
        }
    }
}

/// loom models of the limiter (run by `.ci/loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::loom_model;

    /// Two submitters of the same user race for places; each holds its
    /// permit while it checks how many are held. Neither limit is ever
    /// exceeded (`in_flight` may briefly hold a place the per-user check
    /// then gives back, but never past `max_in_flight`), and once the
    /// permits are dropped every count is back to zero and the user map is
    /// empty.
    /// `with_user[i]`: whether racer `i` submits as the user (a racer
    /// without one takes only the tier's unit, outside the user map's lock).
    fn race_for_places(
        name: &str,
        max_in_flight: usize,
        per_user: Option<usize>,
        with_user: [bool; 2],
    ) {
        loom_model(
            name,
            |_| {},
            move || {
                let a = Arc::new(Admission::new(Some(max_in_flight), per_user));
                let user: Arc<str> = Arc::from("u");
                let holding = Arc::new(AtomicUsize::new(0));
                let bound = per_user.unwrap_or(max_in_flight).min(max_in_flight);
                let racers: Vec<_> = with_user
                    .into_iter()
                    .map(|as_user| {
                        let (a, user, holding) = (a.clone(), user.clone(), holding.clone());
                        loom::thread::spawn(move || {
                            let Ok(permit) = a.try_acquire(as_user.then_some(&user)) else {
                                assert!(a.in_flight().unwrap_or(0) <= max_in_flight);
                                return false;
                            };
                            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= bound, "{now} permits held, bound {bound}");
                            assert!(a.in_flight().unwrap_or(0) <= max_in_flight);
                            holding.fetch_sub(1, Ordering::SeqCst);
                            drop(permit);
                            true
                        })
                    })
                    .collect();
                let granted = racers
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .filter(|&ok| ok)
                    .count();
                assert!(granted >= 1, "someone always gets the first place");
                assert_eq!(a.in_flight(), Some(0), "every permit returned");
                assert_eq!(a.user_in_flight("u"), 0);
                assert!(a.users.lock().is_empty(), "user map cleaned up");
            },
        );
    }

    #[test]
    fn loom_global_limit_never_exceeded() {
        race_for_places("global_limit_never_exceeded", 1, None, [true, true]);
    }

    /// A user's try (both limits checked, the tier's unit taken, under the
    /// user map's lock) against a user-less one (the tier's unit only, no
    /// lock) for the one unit there is.
    #[test]
    fn loom_user_and_userless_share_the_tier_limit() {
        race_for_places(
            "user_and_userless_share_the_tier_limit",
            1,
            Some(1),
            [true, false],
        );
    }

    #[test]
    fn loom_per_user_limit_never_exceeded() {
        race_for_places("per_user_limit_never_exceeded", 2, Some(1), [true, true]);
    }

    /// A blocking submitter (announce, try, wait, retry — the loop in
    /// `Tier::submit_with`) against the one holder of the only permit
    /// releasing it: the submitter always gets the place. The waits have
    /// no deadline, so a release it slept through is a loom deadlock
    /// (invariant 3).
    #[test]
    fn loom_room_waiter_never_misses_a_release() {
        loom_model(
            "room_waiter_never_misses_a_release",
            |_| {},
            || {
                let a = Arc::new(Admission::new(Some(1), None));
                let held = a.try_acquire(None).unwrap();
                let releaser = loom::thread::spawn(move || drop(held));
                let a2 = a.clone();
                let submitter = loom::thread::spawn(move || {
                    let clock = Clock::system();
                    let mut waiter = a2.room_waiter();
                    loop {
                        match a2.try_acquire(None) {
                            Ok(p) => return p,
                            Err(RejectReason::TierLimit { .. }) => {
                                assert!(waiter.wait(Room::Permit, &clock, None))
                            }
                            Err(other) => panic!("unexpected rejection {other:?}"),
                        }
                    }
                });
                releaser.join().unwrap();
                let permit = submitter.join().unwrap();
                assert_eq!(a.in_flight(), Some(1));
                assert_eq!(a.room_waiters.load(Ordering::SeqCst), 0, "waiter gone");
                drop(permit);
                assert_eq!(a.in_flight(), Some(0));
            },
        );
    }

    /// A queue place taken and handed back by a submitter refused a permit
    /// (`PoolShared::submit`), against a blocking submitter refused that
    /// place while it was held (the loop in `Tier::submit_with`): the
    /// waiter always gets the place. The place is a count of capacity 1
    /// standing in for a queue level, taken and given back as the pool's
    /// `reserve` and `give_back_place` do, with the pool's notification
    /// when it was full. Handed back without one (as before 2026-12-04),
    /// the waiter sleeps through it: a loom deadlock.
    #[test]
    fn loom_place_handed_back_wakes_a_place_waiter() {
        fn take(place: &AtomicUsize) -> bool {
            place
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < 1).then_some(n + 1)
                })
                .is_ok()
        }
        loom_model(
            "place_handed_back_wakes_a_place_waiter",
            |_| {},
            || {
                let a = Arc::new(Admission::new(Some(1), None));
                // The one permit is held: whoever takes the place is refused.
                let held = a.try_acquire(None).unwrap();
                let place = Arc::new(AtomicUsize::new(0));
                let (a1, p1) = (a.clone(), place.clone());
                let giver = loom::thread::spawn(move || {
                    if take(&p1) {
                        assert!(a1.try_acquire(None).is_err(), "the permit is held");
                        if p1.fetch_sub(1, Ordering::AcqRel) >= 1 {
                            a1.notify(&[Room::Level]);
                        }
                    }
                });
                let (a2, p2) = (a.clone(), place.clone());
                let waiter = loom::thread::spawn(move || {
                    if take(&p2) {
                        return;
                    }
                    let clock = Clock::system();
                    let mut waiter = a2.room_waiter();
                    while !take(&p2) {
                        assert!(waiter.wait(Room::Level, &clock, None));
                    }
                });
                giver.join().unwrap();
                waiter.join().unwrap();
                assert_eq!(
                    place.load(Ordering::SeqCst),
                    1,
                    "the waiter holds the place"
                );
                assert_eq!(a.room_waiters.load(Ordering::SeqCst), 0, "waiter gone");
                drop(held);
            },
        );
    }

    /// The same as `room_waiter_never_misses_a_release`, for a user's
    /// limit: a blocking submitter refused because its user holds the one
    /// permit it may, against that permit's release (which notifies as
    /// the user's count leaves its limit). It always gets in.
    #[test]
    fn loom_user_limit_waiter_never_misses_its_users_release() {
        loom_model(
            "user_limit_waiter_never_misses_its_users_release",
            |_| {},
            || {
                let a = Arc::new(Admission::new(None, Some(1)));
                let user: Arc<str> = Arc::from("u");
                let held = a.try_acquire(Some(&user)).unwrap();
                let releaser = loom::thread::spawn(move || drop(held));
                let (a2, u2) = (a.clone(), user.clone());
                let submitter = loom::thread::spawn(move || {
                    let clock = Clock::system();
                    let mut waiter = a2.room_waiter();
                    loop {
                        match a2.try_acquire(Some(&u2)) {
                            Ok(p) => return p,
                            Err(RejectReason::UserLimit { .. }) => {
                                assert!(waiter.wait(Room::Permit, &clock, None))
                            }
                            Err(other) => panic!("unexpected rejection {other:?}"),
                        }
                    }
                });
                releaser.join().unwrap();
                let permit = submitter.join().unwrap();
                assert_eq!(a.user_in_flight("u"), 1);
                drop(permit);
                assert!(a.users.lock().is_empty(), "user map cleaned up");
            },
        );
    }

    /// A submitter whose deadline has already passed gives up instead of
    /// waiting, and leaves nothing behind: no permit, no announced waiter.
    #[test]
    fn loom_abandoned_wait_leaks_nothing() {
        loom_model(
            "abandoned_wait_leaks_nothing",
            |_| {},
            || {
                let manual = crate::ManualClock::new();
                let clock = manual.clock();
                let a = Arc::new(Admission::new(Some(1), None));
                let held = a.try_acquire(None).unwrap();
                let releaser = loom::thread::spawn(move || drop(held));
                let a2 = a.clone();
                let submitter = loom::thread::spawn(move || {
                    let deadline = Some(clock.now());
                    let mut waiter = a2.room_waiter();
                    loop {
                        match a2.try_acquire(None) {
                            Ok(p) => return Some(p),
                            Err(_) if !waiter.wait(Room::Permit, &clock, deadline) => return None,
                            Err(_) => {}
                        }
                    }
                });
                releaser.join().unwrap();
                drop(submitter.join().unwrap());
                assert_eq!(a.in_flight(), Some(0), "no permit leaked");
                assert_eq!(a.room_waiters.load(Ordering::SeqCst), 0, "waiter gone");
            },
        );
    }
}
