//! Circuit breaker: stop calling a dependency that keeps failing, probe it
//! after a pause, resume when it recovers.
//!
//! States and transitions (resilience4j's model, count-based window):
//!
//! ```text
//!            failure rate >= threshold over the last `window_size` calls
//!            (once at least `minimum_calls` were recorded)
//!   Closed ───────────────────────────────────────────────► Open
//!     ▲                                                       │
//!     │ probes' failure rate < threshold        open_duration │ elapsed
//!     │                                                       ▼ (seen lazily)
//!     └──────────────────────────────────────────────────── HalfOpen
//!                 probes' failure rate >= threshold ─────────► Open
//! ```
//!
//! Time-driven moves (Open → HalfOpen) happen when the breaker is next
//! looked at — `try_acquire`, `call`, `state`, `stats` or an outcome — so
//! the breaker needs no timer thread and an idle breaker costs nothing.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::sync::{Arc, Mutex};

use crate::error::ConfigError;

/// Where a [`CircuitBreaker`] is.
///
/// ```
/// use tierpool::{BreakerState, CircuitBreaker};
/// let b = CircuitBreaker::builder().build()?;
/// assert_eq!(b.state(), BreakerState::Closed);
/// # Ok::<(), tierpool::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls pass; outcomes fill the sliding window.
    Closed,
    /// Calls are rejected at once until the open duration has passed.
    Open,
    /// A limited number of probe calls pass; their outcomes decide.
    HalfOpen,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        })
    }
}

/// A state change, as given to [`CircuitBreaker::on_state_change`]
/// listeners.
///
/// ```
/// use tierpool::{BreakerState, BreakerTransition, ManualClock};
/// let t = BreakerTransition {
///     from: BreakerState::Closed,
///     to: BreakerState::Open,
///     at: ManualClock::new().now(),
/// };
/// assert_eq!(t.to, BreakerState::Open);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerTransition {
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
    /// When the breaker made the move, on its clock.
    pub at: Instant,
}

/// A call rejected without running because the breaker is open (or
/// half-open with every probe already out).
///
/// ```
/// use std::time::Duration;
/// use tierpool::{BreakerOpen, BreakerState};
/// let e = BreakerOpen { retry_after: Duration::from_secs(5), state: BreakerState::Open };
/// assert_eq!(e.to_string(), "circuit breaker open: retry after 5s");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOpen {
    /// Open: the time left until probes are let through. Half-open: the
    /// probes' outcome is not known yet; this is the open duration, the
    /// longest the caller can usefully wait if the probes fail.
    pub retry_after: Duration,
    /// The state that rejected the call: `Open` or `HalfOpen`.
    pub state: BreakerState,
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker {}: retry after {:?}",
            self.state, self.retry_after
        )
    }
}

impl std::error::Error for BreakerOpen {}

/// The error of [`CircuitBreaker::call`]: rejected, or run and failed.
///
/// ```
/// use tierpool::{BreakerError, CircuitBreaker};
/// let b = CircuitBreaker::builder().build()?;
/// let r: Result<(), _> = b.call(|| Err("boom"));
/// assert!(matches!(r, Err(BreakerError::Failed("boom"))));
/// # Ok::<(), tierpool::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerError<E> {
    /// The breaker rejected the call; the closure did not run.
    Open(BreakerOpen),
    /// The closure ran and returned this error (recorded as a failure).
    Failed(E),
}

impl<E> BreakerError<E> {
    /// Whether the call was rejected without running.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{BreakerError, BreakerOpen, BreakerState};
    /// let e: BreakerError<()> = BreakerError::Open(BreakerOpen {
    ///     retry_after: Duration::ZERO,
    ///     state: BreakerState::Open,
    /// });
    /// assert!(e.is_open());
    /// ```
    pub fn is_open(&self) -> bool {
        matches!(self, BreakerError::Open(_))
    }

    /// The closure's own error, if it ran.
    ///
    /// ```
    /// use tierpool::BreakerError;
    /// assert_eq!(BreakerError::Failed(7).into_failed(), Some(7));
    /// ```
    pub fn into_failed(self) -> Option<E> {
        match self {
            BreakerError::Failed(e) => Some(e),
            BreakerError::Open(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for BreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerError::Open(open) => open.fmt(f),
            BreakerError::Failed(e) => write!(f, "call failed: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for BreakerError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BreakerError::Open(open) => Some(open),
            BreakerError::Failed(e) => Some(e),
        }
    }
}

/// Counters of a [`CircuitBreaker`] since it was built, as a snapshot.
///
/// Every permit ends in exactly one of `successes`, `slow`, `failures` or
/// `released`, so `calls == successes + slow + failures` and permits
/// issued `== calls + released` (once all permits are finished).
///
/// ```
/// use tierpool::CircuitBreaker;
/// let b = CircuitBreaker::builder().build()?;
/// let _ = b.call(|| Ok::<_, ()>(1));
/// let s = b.stats();
/// assert_eq!((s.calls, s.successes), (1, 1));
/// # Ok::<(), tierpool::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerStats {
    /// The state now.
    pub state: BreakerState,
    /// Outcomes recorded (successes + slow + failures).
    pub calls: u64,
    /// Successes within the slow-call threshold.
    pub successes: u64,
    /// Failures reported, including permits dropped by a panic.
    pub failures: u64,
    /// Successes slower than the slow-call threshold (counted as failures
    /// in the failure rate).
    pub slow: u64,
    /// Calls rejected because the breaker was open or saturated.
    pub rejected: u64,
    /// Permits dropped without an outcome (not counted in the window).
    pub released: u64,
    /// State changes.
    pub transitions: u64,
}

/// Everything a listener can be.
type Listener = dyn Fn(BreakerTransition) + Send + Sync;

/// A count-based circuit breaker, shared by many threads.
///
/// Cloning gives another handle on the same breaker.
///
/// A call asks for a [`CallPermit`] with [`try_acquire`](Self::try_acquire)
/// (rejected at once with [`BreakerOpen`] when open) and reports its
/// outcome on it; [`call`](Self::call) does both around a closure.
///
/// # Invariants
///
/// 1. The window holds the outcomes of the last `window_size` calls
///    recorded *in the current closed period*; it is cleared on every
///    transition, so an old failure never reopens a freshly closed breaker.
/// 2. Each state period has a generation number, carried by its permits. An
///    outcome from an earlier period (a slow call that started while
///    closed and finished after the breaker opened) is counted in the stats
///    but does not move the state.
/// 3. In half-open, at most `half_open_probes` permits are out or reported;
///    once all probes have reported, the breaker closes if their failure
///    rate is below the threshold and reopens otherwise. A probe dropped
///    without an outcome frees its slot, so the breaker cannot stall in
///    half-open.
/// 4. A permit dropped while its thread panics counts as a failure; any
///    other permit dropped without an outcome is *released*: counted in
///    `released`, ignored by the window.
///
/// # Listeners and deadlock safety
///
/// Transitions are queued under the state lock, in order, and delivered to
/// listeners after it is released, by one thread at a time (whichever
/// caused a transition while nobody was delivering). Listeners therefore
/// run with no breaker lock held and may call back into the breaker; a
/// transition caused by a listener is delivered after the current one. A
/// panicking listener is caught and logged; the breaker and the other
/// listeners carry on. The listener list has its own lock, never held
/// together with the state lock.
///
/// Defaults (resilience4j / Hystrix): window 20, minimum 10 calls, 50%
/// failure rate, open 5 s, 3 half-open probes, no slow-call threshold.
///
/// ```
/// use std::time::Duration;
/// use tierpool::{BreakerState, CircuitBreaker, ManualClock};
///
/// let manual = ManualClock::new();
/// let breaker = CircuitBreaker::builder()
///     .window_size(4)
///     .minimum_calls(4)
///     .failure_rate_threshold(50.0)
///     .open_duration(Duration::from_secs(5))
///     .half_open_probes(1)
///     .clock(manual.clock())
///     .build()?;
///
/// for ok in [true, false, true, false] {
///     let _ = breaker.call(|| if ok { Ok(()) } else { Err("down") });
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// let rejected = breaker.try_acquire().unwrap_err();
/// assert_eq!(rejected.retry_after, Duration::from_secs(5));
///
/// manual.advance(Duration::from_secs(5));
/// let probe = breaker.try_acquire().expect("half-open lets a probe through");
/// probe.success(Duration::from_millis(20));
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// # Ok::<(), tierpool::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    clock: Clock,
    state: Mutex<Inner>,
    listeners: Mutex<Vec<Arc<Listener>>>,
}

#[derive(Debug, Clone)]
struct Config {
    name: Option<String>,
    window_size: u32,
    minimum_calls: u32,
    failure_rate_threshold: f64,
    open_duration: Duration,
    half_open_probes: u32,
    slow_call_threshold: Option<Duration>,
}

impl Config {
    /// resilience4j's rule: the rate *reaching* the threshold trips.
    fn rate_trips(&self, failures: u32, calls: u32) -> bool {
        f64::from(failures) * 100.0 >= self.failure_rate_threshold * f64::from(calls)
    }
}

enum Phase {
    Closed,
    /// `None`: the open duration is too long to represent; open for good.
    Open {
        until: Option<Instant>,
    },
    HalfOpen {
        in_flight: u32,
        reported: u32,
        failures: u32,
    },
}

impl Phase {
    fn state(&self) -> BreakerState {
        match self {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

struct Inner {
    phase: Phase,
    generation: u64,
    /// Outcomes of the current closed period, oldest first; `true` = failure.
    window: VecDeque<bool>,
    window_failures: u32,
    /// Counters; `stats.state` is filled in from `phase` by each snapshot.
    stats: BreakerStats,
    /// Transitions not yet given to listeners, oldest first.
    pending: VecDeque<BreakerTransition>,
    /// Some thread is running listeners and will drain `pending`.
    delivering: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Slow,
    Failure,
}

impl CircuitBreaker {
    /// A builder starting from the defaults.
    ///
    /// ```
    /// let b = tierpool::CircuitBreaker::builder().window_size(50).minimum_calls(20).build()?;
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::default()
    }

    /// Asks to make one call. Rejected at once while open (or half-open with
    /// all probes out); otherwise the returned permit must be given the
    /// outcome.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = tierpool::CircuitBreaker::builder().build()?;
    /// let permit = b.try_acquire()?;
    /// permit.success(Duration::from_millis(3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_acquire(&self) -> Result<CallPermit, BreakerOpen> {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let result = {
            let mut s = shared.state.lock();
            shared.advance_time(&mut s, now);
            let probes = shared.config.half_open_probes;
            let admitted = match &mut s.phase {
                Phase::Closed => Ok(()),
                Phase::HalfOpen {
                    in_flight,
                    reported,
                    ..
                } if *in_flight + *reported < probes => {
                    *in_flight += 1;
                    Ok(())
                }
                Phase::HalfOpen { .. } => Err(BreakerOpen {
                    retry_after: shared.config.open_duration,
                    state: BreakerState::HalfOpen,
                }),
                Phase::Open { until } => Err(BreakerOpen {
                    retry_after: until.map_or(Duration::MAX, |u| u.saturating_duration_since(now)),
                    state: BreakerState::Open,
                }),
            };
            match admitted {
                Ok(()) => Ok(s.generation),
                Err(open) => {
                    s.stats.rejected += 1;
                    Err(open)
                }
            }
        };
        shared.deliver_pending();
        result.map(|generation| CallPermit {
            breaker: self.shared.clone(),
            generation,
            acquired_at: now,
            finished: false,
        })
    }

    /// Runs `f` through the breaker: rejected without running when open,
    /// otherwise its `Ok` is a success (slow if it took longer than the
    /// slow-call threshold on the breaker's clock) and its `Err` a failure.
    /// A panic in `f` is recorded as a failure and then resumes.
    ///
    /// ```
    /// let b = tierpool::CircuitBreaker::builder().build()?;
    /// assert_eq!(b.call(|| Ok::<_, String>(2 + 2)), Ok(4));
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn call<T, E>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, BreakerError<E>> {
        let permit = self.try_acquire().map_err(BreakerError::Open)?;
        match f() {
            Ok(value) => {
                let elapsed = permit.elapsed();
                permit.success(elapsed);
                Ok(value)
            }
            Err(e) => {
                permit.failure();
                Err(BreakerError::Failed(e))
            }
        }
    }

    /// The state now (moving Open → HalfOpen first if the open duration has
    /// passed).
    ///
    /// ```
    /// use tierpool::{BreakerState, CircuitBreaker};
    /// assert_eq!(CircuitBreaker::builder().build()?.state(), BreakerState::Closed);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn state(&self) -> BreakerState {
        self.stats().state
    }

    /// A snapshot of the counters and the state.
    ///
    /// ```
    /// let b = tierpool::CircuitBreaker::builder().build()?;
    /// assert_eq!(b.stats().rejected, 0);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn stats(&self) -> BreakerStats {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let stats = {
            let mut s = shared.state.lock();
            shared.advance_time(&mut s, now);
            let mut stats = s.stats;
            stats.state = s.phase.state();
            stats
        };
        shared.deliver_pending();
        stats
    }

    /// Registers a listener for every later state change. Listeners run
    /// outside the breaker's locks, in transition order; a panic in one is
    /// caught and logged.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tierpool::{BreakerState, CircuitBreaker};
    ///
    /// let b = CircuitBreaker::builder().window_size(1).minimum_calls(1).build()?;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = seen.clone();
    /// b.on_state_change(Box::new(move |t| sink.lock().unwrap().push(t.to)));
    /// let _ = b.call(|| Err::<(), _>("down"));
    /// assert_eq!(*seen.lock().unwrap(), [BreakerState::Open]);
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn on_state_change(&self, listener: Box<dyn Fn(BreakerTransition) + Send + Sync>) {
        self.shared.listeners.lock().push(Arc::from(listener));
    }

    /// The name given to the builder, used in log messages.
    ///
    /// ```
    /// let b = tierpool::CircuitBreaker::builder().name("esi").build()?;
    /// assert_eq!(b.name(), Some("esi"));
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn name(&self) -> Option<&str> {
        self.shared.config.name.as_deref()
    }
}

impl Shared {
    /// Open → HalfOpen once the open duration has passed.
    fn advance_time(&self, s: &mut Inner, now: Instant) {
        if let Phase::Open { until: Some(until) } = s.phase {
            if now >= until {
                self.transition(
                    s,
                    Phase::HalfOpen {
                        in_flight: 0,
                        reported: 0,
                        failures: 0,
                    },
                    now,
                );
            }
        }
    }

    fn open(&self, s: &mut Inner, now: Instant) {
        let until = now.checked_add(self.config.open_duration);
        self.transition(s, Phase::Open { until }, now);
    }

    fn transition(&self, s: &mut Inner, to: Phase, now: Instant) {
        let event = BreakerTransition {
            from: s.phase.state(),
            to: to.state(),
            at: now,
        };
        s.phase = to;
        s.generation += 1;
        s.window.clear();
        s.window_failures = 0;
        s.stats.transitions += 1;
        s.pending.push_back(event);
    }

    /// Records a permit's outcome and moves the state if it decides.
    fn record(&self, generation: u64, outcome: Outcome) {
        let now = self.clock.now();
        {
            let mut s = self.state.lock();
            self.advance_time(&mut s, now);
            s.stats.calls += 1;
            match outcome {
                Outcome::Success => s.stats.successes += 1,
                Outcome::Slow => s.stats.slow += 1,
                Outcome::Failure => s.stats.failures += 1,
            }
            if generation == s.generation {
                self.apply(&mut s, outcome != Outcome::Success, now);
            }
        }
        self.deliver_pending();
    }

    /// An outcome of the current period.
    fn apply(&self, s: &mut Inner, failed: bool, now: Instant) {
        let config = &self.config;
        match &mut s.phase {
            Phase::Closed => {
                // The window is full: the oldest outcome slides out.
                if s.window.len() == config.window_size as usize
                    && s.window.pop_front() == Some(true)
                {
                    s.window_failures -= 1;
                }
                s.window.push_back(failed);
                s.window_failures += u32::from(failed);
                let calls = s.window.len() as u32;
                if calls >= config.minimum_calls && config.rate_trips(s.window_failures, calls) {
                    self.open(s, now);
                }
            }
            Phase::HalfOpen {
                in_flight,
                reported,
                failures,
            } => {
                *in_flight -= 1;
                *reported += 1;
                *failures += u32::from(failed);
                if *reported == config.half_open_probes {
                    if config.rate_trips(*failures, *reported) {
                        self.open(s, now);
                    } else {
                        self.transition(s, Phase::Closed, now);
                    }
                }
            }
            // Open issues no permits, and each period has its own generation.
            Phase::Open { .. } => {}
        }
    }

    /// A permit dropped without an outcome.
    fn release(&self, generation: u64) {
        let mut s = self.state.lock();
        s.stats.released += 1;
        if generation == s.generation {
            if let Phase::HalfOpen { in_flight, .. } = &mut s.phase {
                *in_flight -= 1;
            }
        }
    }

    /// Gives queued transitions to the listeners, unless another thread
    /// already is (it will deliver ours too, in order).
    fn deliver_pending(&self) {
        {
            let mut s = self.state.lock();
            if s.delivering || s.pending.is_empty() {
                return;
            }
            s.delivering = true;
        }
        loop {
            let event = {
                let mut s = self.state.lock();
                match s.pending.pop_front() {
                    Some(event) => event,
                    None => {
                        s.delivering = false;
                        return;
                    }
                }
            };
            self.log(event);
            // Clone the list so a listener may register another one.
            let listeners: Vec<Arc<Listener>> = self.listeners.lock().clone();
            for listener in &listeners {
                if catch_unwind(AssertUnwindSafe(|| listener(event))).is_err() {
                    tlog!(
                        error,
                        "circuit breaker {}: a state-change listener panicked ({} -> {})",
                        self.display_name(),
                        event.from,
                        event.to
                    );
                }
            }
        }
    }

    fn log(&self, event: BreakerTransition) {
        let level = if event.to == BreakerState::Open {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        log::log!(
            level,
            "circuit breaker {}: {} -> {}",
            self.display_name(),
            event.from,
            event.to
        );
    }

    fn display_name(&self) -> &str {
        self.config.name.as_deref().unwrap_or("(unnamed)")
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Permission to make one call through a [`CircuitBreaker`]; report the
/// outcome with [`success`](Self::success) or [`failure`](Self::failure).
///
/// Dropping it without an outcome *releases* it: nothing is recorded in the
/// window (a half-open probe slot is freed), except while the thread is
/// panicking, when the drop counts as a failure.
///
/// ```
/// let b = tierpool::CircuitBreaker::builder().build()?;
/// let permit = b.try_acquire()?;
/// drop(permit); // released
/// assert_eq!(b.stats().released, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "report the call's outcome with success() or failure()"]
pub struct CallPermit {
    breaker: Arc<Shared>,
    generation: u64,
    acquired_at: Instant,
    finished: bool,
}

impl CallPermit {
    /// The call succeeded after `elapsed`; longer than the slow-call
    /// threshold counts as slow (a failure for the failure rate).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = tierpool::CircuitBreaker::builder()
    ///     .slow_call_threshold(Duration::from_secs(1))
    ///     .build()?;
    /// b.try_acquire()?.success(Duration::from_secs(2));
    /// assert_eq!(b.stats().slow, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn success(mut self, elapsed: Duration) {
        self.finished = true;
        let slow = self
            .breaker
            .config
            .slow_call_threshold
            .is_some_and(|t| elapsed > t);
        let outcome = if slow {
            Outcome::Slow
        } else {
            Outcome::Success
        };
        self.breaker.record(self.generation, outcome);
    }

    /// The call failed.
    ///
    /// ```
    /// let b = tierpool::CircuitBreaker::builder().build()?;
    /// b.try_acquire()?.failure();
    /// assert_eq!(b.stats().failures, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn failure(mut self) {
        self.finished = true;
        self.breaker.record(self.generation, Outcome::Failure);
    }

    /// Time since the permit was issued, on the breaker's clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierpool::{CircuitBreaker, ManualClock};
    /// let manual = ManualClock::new();
    /// let b = CircuitBreaker::builder().clock(manual.clock()).build()?;
    /// let permit = b.try_acquire()?;
    /// manual.advance(Duration::from_millis(40));
    /// assert_eq!(permit.elapsed(), Duration::from_millis(40));
    /// permit.success(Duration::from_millis(40));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn elapsed(&self) -> Duration {
        self.breaker
            .clock
            .now()
            .saturating_duration_since(self.acquired_at)
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if std::thread::panicking() {
            self.breaker.record(self.generation, Outcome::Failure);
        } else {
            self.breaker.release(self.generation);
        }
    }
}

impl fmt::Debug for CallPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallPermit")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Builds a [`CircuitBreaker`]; [`build`](Self::build) validates every
/// field.
///
/// ```
/// use std::time::Duration;
/// let b = tierpool::CircuitBreaker::builder()
///     .name("zkillboard")
///     .window_size(20)
///     .minimum_calls(10)
///     .failure_rate_threshold(50.0)
///     .open_duration(Duration::from_secs(5))
///     .half_open_probes(3)
///     .slow_call_threshold(Duration::from_secs(2))
///     .build()?;
/// # Ok::<(), tierpool::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerBuilder {
    config: Config,
    clock: Clock,
}

impl Default for CircuitBreakerBuilder {
    fn default() -> Self {
        CircuitBreakerBuilder {
            config: Config {
                name: None,
                window_size: 20,
                minimum_calls: 10,
                failure_rate_threshold: 50.0,
                open_duration: Duration::from_secs(5),
                half_open_probes: 3,
                slow_call_threshold: None,
            },
            clock: Clock::system(),
        }
    }
}

impl CircuitBreakerBuilder {
    /// A name for log messages.
    ///
    /// ```
    /// let b = tierpool::CircuitBreaker::builder().name("api").build()?;
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = Some(name.into());
        self
    }

    /// How many of the most recent calls the failure rate is computed over
    /// (at least 1).
    ///
    /// ```
    /// let b = tierpool::CircuitBreaker::builder().window_size(100).build()?;
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn window_size(mut self, n: u32) -> Self {
        self.config.window_size = n;
        self
    }

    /// Calls to record before the failure rate is evaluated (between 1 and
    /// the window size), so two early failures do not open the breaker.
    ///
    /// ```
    /// let err = tierpool::CircuitBreaker::builder().minimum_calls(30).build().unwrap_err();
    /// assert_eq!(err.field(), "minimum_calls"); // above the window of 20
    /// ```
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.config.minimum_calls = n;
        self
    }

    /// The failure rate, in percent (above 0, at most 100), that opens the
    /// breaker when reached.
    ///
    /// ```
    /// let err = tierpool::CircuitBreaker::builder().failure_rate_threshold(0.0).build().unwrap_err();
    /// assert_eq!(err.field(), "failure_rate_threshold");
    /// ```
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// How long the breaker stays open before letting probes through.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = tierpool::CircuitBreaker::builder().open_duration(Duration::from_secs(30)).build()?;
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn open_duration(mut self, d: Duration) -> Self {
        self.config.open_duration = d;
        self
    }

    /// How many probe calls half-open lets through (at least 1); all of
    /// them report before the breaker decides.
    ///
    /// ```
    /// let b = tierpool::CircuitBreaker::builder().half_open_probes(1).build()?;
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.config.half_open_probes = n;
        self
    }

    /// Successes that took longer than this count as failures (and as
    /// `slow` in the stats).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = tierpool::CircuitBreaker::builder()
    ///     .slow_call_threshold(Duration::from_millis(500))
    ///     .build()?;
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn slow_call_threshold(mut self, d: Duration) -> Self {
        self.config.slow_call_threshold = Some(d);
        self
    }

    /// The clock for open durations and call timing (system by default).
    ///
    /// ```
    /// use tierpool::{CircuitBreaker, ManualClock};
    /// let b = CircuitBreaker::builder().clock(ManualClock::new().clock()).build()?;
    /// # Ok::<(), tierpool::ConfigError>(())
    /// ```
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Validates and builds. Errors name `window_size` (zero),
    /// `minimum_calls` (zero or above the window), `failure_rate_threshold`
    /// (not in (0, 100]) or `half_open_probes` (zero).
    ///
    /// ```
    /// let err = tierpool::CircuitBreaker::builder().half_open_probes(0).build().unwrap_err();
    /// assert_eq!(err.field(), "half_open_probes");
    /// ```
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        let c = &self.config;
        if c.window_size == 0 {
            return Err(ConfigError::new("window_size", "must be at least 1"));
        }
        if c.minimum_calls == 0 || c.minimum_calls > c.window_size {
            return Err(ConfigError::new(
                "minimum_calls",
                format!(
                    "must be between 1 and window_size ({}), got {}",
                    c.window_size, c.minimum_calls
                ),
            ));
        }
        let t = c.failure_rate_threshold;
        if !(t > 0.0 && t <= 100.0) {
            return Err(ConfigError::new(
                "failure_rate_threshold",
                format!("must be a percentage above 0 and at most 100, got {t}"),
            ));
        }
        if c.half_open_probes == 0 {
            return Err(ConfigError::new("half_open_probes", "must be at least 1"));
        }
        Ok(CircuitBreaker {
            shared: Arc::new(Shared {
                config: self.config,
                clock: self.clock,
                state: Mutex::new(Inner {
                    phase: Phase::Closed,
                    generation: 0,
                    window: VecDeque::new(),
                    window_failures: 0,
                    stats: BreakerStats {
                        state: BreakerState::Closed,
                        calls: 0,
                        successes: 0,
                        failures: 0,
                        slow: 0,
                        rejected: 0,
                        released: 0,
                        transitions: 0,
                    },
                    pending: VecDeque::new(),
                    delivering: false,
                }),
                listeners: Mutex::new(Vec::new()),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use std::sync::Mutex as StdMutex;

    fn breaker(window: u32, min: u32, probes: u32) -> (ManualClock, CircuitBreaker) {
        let manual = ManualClock::new();
        let b = CircuitBreaker::builder()
            .window_size(window)
            .minimum_calls(min)
            .half_open_probes(probes)
            .open_duration(Duration::from_secs(5))
            .clock(manual.clock())
            .build()
            .unwrap();
        (manual, b)
    }

    fn fail(b: &CircuitBreaker) {
        b.try_acquire().unwrap().failure();
    }

    fn succeed(b: &CircuitBreaker) {
        b.try_acquire().unwrap().success(Duration::ZERO);
    }

    #[test]
    fn defaults_follow_resilience4j() {
        let c = CircuitBreakerBuilder::default().config;
        assert_eq!(
            (c.window_size, c.minimum_calls, c.half_open_probes),
            (20, 10, 3)
        );
        assert_eq!(c.failure_rate_threshold, 50.0);
        assert_eq!(c.open_duration, Duration::from_secs(5));
        assert_eq!(c.slow_call_threshold, None);
    }

    #[test]
    fn stays_closed_below_minimum_calls() {
        let (_m, b) = breaker(10, 5, 1);
        for _ in 0..4 {
            fail(&b);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn window_slides_over_the_last_n_calls() {
        let (_m, b) = breaker(4, 4, 1);
        // F S S S → 25%; then S pushes the F out; F F → 50% trips.
        fail(&b);
        for _ in 0..4 {
            succeed(&b);
        }
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn open_rejects_with_the_time_left_then_half_opens() {
        let (m, b) = breaker(2, 2, 2);
        fail(&b);
        fail(&b);
        m.advance(Duration::from_secs(2));
        let e = b.try_acquire().unwrap_err();
        assert_eq!(
            e,
            BreakerOpen {
                retry_after: Duration::from_secs(3),
                state: BreakerState::Open
            }
        );
        m.advance(Duration::from_secs(3));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        let e = b.try_acquire().unwrap_err();
        assert_eq!(e.state, BreakerState::HalfOpen);
        p1.success(Duration::ZERO);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "decides only when all probes report"
        );
        p2.success(Duration::ZERO);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.stats().rejected, 2);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let (m, b) = breaker(1, 1, 2);
        fail(&b);
        m.advance(Duration::from_secs(5));
        succeed(&b);
        fail(&b); // 50% of probes failed: reaches the threshold
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire().unwrap_err().retry_after,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn dropped_probe_frees_its_slot() {
        let (m, b) = breaker(1, 1, 1);
        fail(&b);
        m.advance(Duration::from_secs(5));
        drop(b.try_acquire().unwrap());
        succeed(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.stats().released, 1);
    }

    #[test]
    fn stale_outcomes_count_in_stats_but_do_not_move_the_state() {
        let (m, b) = breaker(1, 1, 1);
        let slow_call = b.try_acquire().unwrap();
        fail(&b); // opens
        m.advance(Duration::from_secs(5));
        let probe = b.try_acquire().unwrap();
        slow_call.failure(); // from the closed period: ignored by the state
        assert_eq!(b.state(), BreakerState::HalfOpen);
        probe.success(Duration::ZERO);
        assert_eq!(b.state(), BreakerState::Closed);
        let s = b.stats();
        assert_eq!((s.calls, s.failures, s.successes), (3, 2, 1));
    }

    #[test]
    fn slow_successes_count_as_failures() {
        let manual = ManualClock::new();
        let b = CircuitBreaker::builder()
            .window_size(2)
            .minimum_calls(2)
            .slow_call_threshold(Duration::from_secs(1))
            .clock(manual.clock())
            .build()
            .unwrap();
        b.try_acquire().unwrap().success(Duration::from_secs(1)); // not longer: fast
        let r = b.call(|| {
            manual.advance(Duration::from_millis(1001));
            Ok::<_, ()>(())
        });
        assert_eq!(r, Ok(()));
        assert_eq!(b.state(), BreakerState::Open);
        let s = b.stats();
        assert_eq!((s.successes, s.slow, s.failures), (1, 1, 0));
    }

    #[test]
    fn a_panicking_call_is_a_failure() {
        let (_m, b) = breaker(1, 1, 1);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _ = b.call(|| -> Result<(), ()> { panic!("boom") });
        }));
        assert!(r.is_err());
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.stats().failures, 1);
    }

    #[test]
    fn listeners_see_every_transition_in_order_and_may_panic() {
        let (m, b) = breaker(1, 1, 1);
        let seen = Arc::new(StdMutex::new(Vec::new()));
        b.on_state_change(Box::new(|_| panic!("listener bug")));
        let sink = seen.clone();
        let inner = b.clone();
        b.on_state_change(Box::new(move |t| {
            // Calling back into the breaker from a listener must not deadlock.
            let _ = inner.stats();
            sink.lock().unwrap().push((t.from, t.to));
        }));
        fail(&b);
        m.advance(Duration::from_secs(5));
        succeed(&b);
        use BreakerState::*;
        assert_eq!(
            *seen.lock().unwrap(),
            [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
        );
        assert_eq!(b.stats().transitions, 3);
        succeed(&b);
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn huge_open_duration_never_panics() {
        let b = CircuitBreaker::builder()
            .window_size(1)
            .minimum_calls(1)
            .open_duration(Duration::MAX)
            .build()
            .unwrap();
        fail(&b);
        assert_eq!(b.try_acquire().unwrap_err().retry_after, Duration::MAX);
    }

    #[test]
    fn validation_names_the_field() {
        let field = |b: CircuitBreakerBuilder| b.build().unwrap_err().field().to_string();
        let b = CircuitBreaker::builder;
        assert_eq!(field(b().window_size(0)), "window_size");
        assert_eq!(field(b().minimum_calls(0)), "minimum_calls");
        assert_eq!(field(b().minimum_calls(21)), "minimum_calls");
        assert_eq!(
            field(b().failure_rate_threshold(f64::NAN)),
            "failure_rate_threshold"
        );
        assert_eq!(
            field(b().failure_rate_threshold(100.1)),
            "failure_rate_threshold"
        );
        assert_eq!(field(b().half_open_probes(0)), "half_open_probes");
    }

    #[test]
    fn many_threads_keep_the_counters_consistent() {
        let (_m, b) = breaker(20, 10, 3);
        std::thread::scope(|s| {
            for t in 0..4 {
                let b = &b;
                s.spawn(move || {
                    for i in 0..200 {
                        let _ = b.call(|| if (i + t) % 3 == 0 { Err(()) } else { Ok(()) });
                    }
                });
            }
        });
        let s = b.stats();
        assert_eq!(s.calls + s.rejected, 800);
        assert_eq!(s.calls, s.successes + s.failures + s.slow);
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn assert_traits<T: Send + Sync + 'static>() {}
        assert_traits::<CircuitBreaker>();
        assert_traits::<CallPermit>();
    }
}
