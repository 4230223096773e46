//! Property tests for the resilience primitives: the retry schedule, the
//! token bucket's rate bound and the circuit breaker against a reference
//! model. All time is manual; case counts are kept small so the file runs
//! in a few seconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tierpool::{
    BreakerOpen, BreakerState, CallPermit, CircuitBreaker, Jitter, ManualClock, RateLimiter,
    RetryPolicy, SeedRng, TryAcquireError,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- retry --

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal)]
}

prop_compose! {
    /// Any valid policy, including extreme factors and caps.
    fn policy()(
        max_attempts in prop_oneof![1u32..20, Just(u32::MAX)],
        base in 0u64..=10_000_000_000,
        extra in prop_oneof![0u64..=60_000_000_000, Just(u64::MAX)],
        factor in prop_oneof![1.0f64..4.0, Just(1.0), Just(1e300)],
        jitter in jitter(),
    ) -> RetryPolicy {
        RetryPolicy::builder()
            .max_attempts(max_attempts)
            .base_delay(Duration::from_nanos(base))
            .max_delay(Duration::from_nanos(base.saturating_add(extra)))
            .factor(factor)
            .jitter(jitter)
            .build()
            .expect("generated settings are valid")
    }
}

fn attempt() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..100, (u32::MAX - 100)..=u32::MAX, any::<u32>()]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn backoff_before_jitter_is_non_decreasing_and_capped(p in policy(), a in attempt()) {
        let this = p.base_delay_for(a);
        let next = p.base_delay_for(a.saturating_add(1));
        prop_assert!(this <= next, "{this:?} > {next:?} at attempt {a}");
        prop_assert!(next <= p.max_delay());
        prop_assert_eq!(p.base_delay_for(1), p.base_delay());
    }

    #[test]
    fn jitter_stays_within_its_bounds(p in policy(), a in attempt(), seed in any::<u64>()) {
        let mut rng = SeedRng::new(seed);
        match p.backoff(a, &mut rng) {
            None => prop_assert!(a.max(1) >= p.max_attempts()),
            Some(d) => {
                let full = p.base_delay_for(a);
                prop_assert!(d <= full);
                match p.jitter() {
                    Jitter::None => prop_assert_eq!(d, full),
                    Jitter::Full => {}
                    Jitter::Equal => prop_assert!(d >= full / 2, "{d:?} < half of {full:?}"),
                }
            }
        }
    }

    #[test]
    fn never_more_than_max_attempts(max in 1u32..200, seed in any::<u64>(), j in jitter()) {
        let p = RetryPolicy::builder().max_attempts(max).jitter(j).build().unwrap();
        let mut rng = SeedRng::new(seed);
        let mut attempts = 1; // the first try
        while p.backoff(attempts, &mut rng).is_some() {
            attempts += 1;
            prop_assert!(attempts <= max);
        }
        prop_assert_eq!(attempts, max);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow(p in policy(), seed in any::<u64>()) {
        let mut rng = SeedRng::new(seed);
        for a in [u32::MAX - 1, u32::MAX] {
            prop_assert_eq!(p.base_delay_for(a), p.max_delay().min(p.base_delay_for(a)));
            if let Some(d) = p.backoff(a, &mut rng) {
                prop_assert!(d <= p.max_delay());
            }
        }
    }
}

// --------------------------------------------------------- rate limiter --

#[derive(Debug, Clone)]
enum BucketOp {
    Advance(u64),
    Take(u32),
    /// Take; if refused, wait exactly the returned time and take again.
    WaitThenTake(u32),
}

fn bucket_ops(burst: u32) -> impl Strategy<Value = Vec<BucketOp>> {
    let op = prop_oneof![
        3 => (0u64..3_000_000_000).prop_map(BucketOp::Advance),
        4 => (0..=burst + 1).prop_map(BucketOp::Take),
        2 => (1..=burst).prop_map(BucketOp::WaitThenTake),
    ];
    prop::collection::vec(op, 1..120)
}

/// Checks `sum of tokens granted in [t_i, t_j] <= burst + n·(t_j - t_i)/period`
/// for every pair of grants.
fn assert_rate_bound(
    grants: &[(u128, u32)],
    burst: u32,
    n: u32,
    period: u128,
) -> Result<(), TestCaseError> {
    for i in 0..grants.len() {
        let mut sum = 0u128;
        for g in &grants[i..] {
            sum += u128::from(g.1);
            let window = g.0 - grants[i].0;
            let allowed = u128::from(burst) + window * u128::from(n) / period;
            prop_assert!(
                sum <= allowed,
                "{sum} tokens in {window} ns, allowed {allowed}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn bucket_never_exceeds_burst_plus_rate_times_window(
        (n, period_ms, burst, ops) in (1u32..20, 1u64..5_000, 1u32..10)
            .prop_flat_map(|(n, p, b)| (Just(n), Just(p), Just(b), bucket_ops(b)))
    ) {
        let manual = ManualClock::new();
        let period = Duration::from_millis(period_ms);
        let l = RateLimiter::per(n, period).burst(burst).clock(manual.clock()).build().unwrap();
        let mut now: u128 = 0;
        let mut grants = Vec::new();
        for op in ops {
            match op {
                BucketOp::Advance(ns) => {
                    manual.advance(Duration::from_nanos(ns));
                    now += u128::from(ns);
                }
                BucketOp::Take(k) => match l.try_acquire_n(k) {
                    Ok(()) => grants.push((now, k)),
                    Err(TryAcquireError::ExceedsBurst { .. }) => prop_assert!(k > burst),
                    Err(TryAcquireError::Throttled { .. }) => prop_assert!(k <= burst),
                },
                BucketOp::WaitThenTake(k) => match l.try_acquire_n(k) {
                    Ok(()) => grants.push((now, k)),
                    Err(e) => {
                        let wait = e.retry_after().expect("k <= burst");
                        prop_assert!(!wait.is_zero());
                        // The wait is exact: one nanosecond short is still refused.
                        manual.advance(wait - Duration::from_nanos(1));
                        prop_assert!(l.try_acquire_n(k).is_err());
                        manual.advance(Duration::from_nanos(1));
                        now += wait.as_nanos();
                        prop_assert_eq!(l.try_acquire_n(k), Ok(()));
                        grants.push((now, k));
                    }
                },
            }
        }
        assert_rate_bound(&grants, burst, n, period.as_nanos())?;
    }

    #[test]
    fn fractional_rate_is_never_exceeded(
        rate in 0.1f64..50.0,
        burst in 1u32..5,
        steps in prop::collection::vec(0u64..200_000_000, 1..150),
    ) {
        let manual = ManualClock::new();
        let l = RateLimiter::per_second(rate).burst(burst).clock(manual.clock()).build().unwrap();
        let mut now = 0u64;
        let mut grants: Vec<u64> = Vec::new();
        for ns in steps {
            manual.advance(Duration::from_nanos(ns));
            now += ns;
            while l.try_acquire().is_ok() {
                grants.push(now);
            }
        }
        for i in 0..grants.len() {
            for (j, t) in grants.iter().enumerate().skip(i) {
                let count = (j - i + 1) as f64;
                let window_s = (t - grants[i]) as f64 / 1e9;
                prop_assert!(count <= f64::from(burst) + rate * window_s + 1e-9);
            }
        }
    }
}

// -------------------------------------------------------------- breaker --

#[derive(Debug, Clone)]
enum BreakerOp {
    Acquire,
    Succeed { which: usize, slow: bool },
    Fail { which: usize },
    Drop { which: usize },
    Advance(u64),
    Call { ok: bool },
}

fn breaker_ops() -> impl Strategy<Value = Vec<BreakerOp>> {
    let op = prop_oneof![
        3 => Just(BreakerOp::Acquire),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(which, slow)| BreakerOp::Succeed { which, slow }),
        2 => any::<usize>().prop_map(|which| BreakerOp::Fail { which }),
        1 => any::<usize>().prop_map(|which| BreakerOp::Drop { which }),
        2 => (0u64..4_000).prop_map(BreakerOp::Advance),
        4 => any::<bool>().prop_map(|ok| BreakerOp::Call { ok }),
    ];
    prop::collection::vec(op, 1..150)
}

#[derive(Debug, Clone, Copy)]
struct Cfg {
    window: u32,
    min_calls: u32,
    threshold: u32,
    open_ms: u64,
    probes: u32,
    slow_ms: Option<u64>,
}

fn cfg() -> impl Strategy<Value = Cfg> {
    (
        1u32..8,
        1u32..100,
        1u32..=100,
        0u64..3_000,
        1u32..4,
        prop::option::of(1u64..500),
    )
        .prop_map(|(window, min, threshold, open_ms, probes, slow_ms)| Cfg {
            window,
            min_calls: 1 + min % window,
            threshold,
            open_ms,
            probes,
            slow_ms,
        })
}

/// The reference: the breaker's rules written as plainly as possible, in
/// integer milliseconds, recomputing the window from a list every time.
#[derive(Debug)]
enum MState {
    Closed,
    Open { reopen_at: u64 },
    HalfOpen { out: u32, done: Vec<bool> },
}

#[derive(Debug)]
struct Model {
    cfg: Cfg,
    now: u64,
    state: MState,
    /// Bumped on every transition; permits remember the period they were
    /// issued in.
    period: u64,
    /// Outcomes in this closed period, `true` = failure.
    recent: Vec<bool>,
    transitions: Vec<(BreakerState, BreakerState)>,
    calls: u64,
    successes: u64,
    failures: u64,
    slow: u64,
    rejected: u64,
    released: u64,
}

impl Model {
    fn new(cfg: Cfg) -> Self {
        Model {
            cfg,
            now: 0,
            state: MState::Closed,
            period: 0,
            recent: Vec::new(),
            transitions: Vec::new(),
            calls: 0,
            successes: 0,
            failures: 0,
            slow: 0,
            rejected: 0,
            released: 0,
        }
    }

    fn name(&self) -> BreakerState {
        match self.state {
            MState::Closed => BreakerState::Closed,
            MState::Open { .. } => BreakerState::Open,
            MState::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn go(&mut self, to: MState) {
        let from = self.name();
        self.state = to;
        self.transitions.push((from, self.name()));
        self.period += 1;
        self.recent.clear();
    }

    fn trips(&self, bad: usize, total: usize) -> bool {
        bad as u64 * 100 >= u64::from(self.cfg.threshold) * total as u64
    }

    fn observe(&mut self) {
        if let MState::Open { reopen_at } = self.state {
            if self.now >= reopen_at {
                self.go(MState::HalfOpen {
                    out: 0,
                    done: Vec::new(),
                });
            }
        }
    }

    /// `Ok(period)` or the rejection.
    fn acquire(&mut self) -> Result<u64, BreakerOpen> {
        self.observe();
        let probes = self.cfg.probes;
        let r = match &mut self.state {
            MState::Closed => Ok(self.period),
            MState::HalfOpen { out, done } if *out + (done.len() as u32) < probes => {
                *out += 1;
                Ok(self.period)
            }
            MState::HalfOpen { .. } => Err(BreakerOpen {
                retry_after: Duration::from_millis(self.cfg.open_ms),
                state: BreakerState::HalfOpen,
            }),
            MState::Open { reopen_at } => Err(BreakerOpen {
                retry_after: Duration::from_millis(*reopen_at - self.now),
                state: BreakerState::Open,
            }),
        };
        if r.is_err() {
            self.rejected += 1;
        }
        r
    }

    fn outcome(&mut self, period: u64, failed: bool, slow: bool) {
        self.observe();
        self.calls += 1;
        match (failed, slow) {
            (true, _) => self.failures += 1,
            (false, true) => self.slow += 1,
            (false, false) => self.successes += 1,
        }
        if period != self.period {
            return;
        }
        let bad = failed || slow;
        let open = MState::Open {
            reopen_at: self.now + self.cfg.open_ms,
        };
        match &mut self.state {
            MState::Closed => {
                self.recent.push(bad);
                let keep = self.cfg.window as usize;
                if self.recent.len() > keep {
                    self.recent.remove(0);
                }
                let bad_count = self.recent.iter().filter(|b| **b).count();
                if self.recent.len() >= self.cfg.min_calls as usize
                    && self.trips(bad_count, self.recent.len())
                {
                    self.go(open);
                }
            }
            MState::HalfOpen { out, done } => {
                *out -= 1;
                done.push(bad);
                if done.len() as u32 == self.cfg.probes {
                    let bad_count = done.iter().filter(|b| **b).count();
                    let total = done.len();
                    if self.trips(bad_count, total) {
                        self.go(open);
                    } else {
                        self.go(MState::Closed);
                    }
                }
            }
            MState::Open { .. } => {}
        }
    }

    fn release(&mut self, period: u64) {
        self.released += 1;
        if period == self.period {
            if let MState::HalfOpen { out, .. } = &mut self.state {
                *out -= 1;
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn breaker_agrees_with_the_reference_model(cfg in cfg(), ops in breaker_ops()) {
        let manual = ManualClock::new();
        let mut builder = CircuitBreaker::builder()
            .window_size(cfg.window)
            .minimum_calls(cfg.min_calls)
            .failure_rate_threshold(f64::from(cfg.threshold))
            .open_duration(Duration::from_millis(cfg.open_ms))
            .half_open_probes(cfg.probes)
            .clock(manual.clock());
        if let Some(ms) = cfg.slow_ms {
            builder = builder.slow_call_threshold(Duration::from_millis(ms));
        }
        let breaker = builder.build().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        breaker.on_state_change(Box::new(move |t| sink.lock().unwrap().push((t.from, t.to))));

        let mut model = Model::new(cfg);
        let mut held: Vec<(CallPermit, u64)> = Vec::new();
        for op in ops {
            match op {
                BreakerOp::Acquire => {
                    let real = breaker.try_acquire();
                    let expected = model.acquire();
                    match (real, expected) {
                        (Ok(p), Ok(period)) => held.push((p, period)),
                        (Err(r), Err(e)) => prop_assert_eq!(r, e),
                        (r, e) => prop_assert!(false, "real {:?}, model {:?}", r.map(|_| ()), e),
                    }
                }
                BreakerOp::Succeed { which, slow } if !held.is_empty() => {
                    let (p, period) = held.remove(which % held.len());
                    let slow = slow && cfg.slow_ms.is_some();
                    let elapsed = match cfg.slow_ms {
                        Some(ms) if slow => Duration::from_millis(ms + 1),
                        Some(ms) => Duration::from_millis(ms),
                        None => Duration::from_secs(3600),
                    };
                    p.success(elapsed);
                    model.outcome(period, false, slow);
                }
                BreakerOp::Fail { which } if !held.is_empty() => {
                    let (p, period) = held.remove(which % held.len());
                    p.failure();
                    model.outcome(period, true, false);
                }
                BreakerOp::Drop { which } if !held.is_empty() => {
                    let (p, period) = held.remove(which % held.len());
                    drop(p);
                    model.release(period);
                }
                BreakerOp::Advance(ms) => {
                    manual.advance(Duration::from_millis(ms));
                    model.now += ms;
                }
                BreakerOp::Call { ok } => {
                    let real = breaker.call(|| if ok { Ok(()) } else { Err(()) });
                    match model.acquire() {
                        Ok(period) => {
                            prop_assert_eq!(real.is_ok(), ok);
                            model.outcome(period, !ok, false);
                        }
                        Err(e) => prop_assert_eq!(real, Err(tierpool::BreakerError::Open(e))),
                    }
                }
                _ => {} // an outcome with no permit held
            }
            // Observing is part of the contract (lazy Open -> HalfOpen).
            let s = breaker.stats();
            model.observe();
            prop_assert_eq!(s.state, model.name());
            prop_assert_eq!(
                (s.calls, s.successes, s.failures, s.slow, s.rejected, s.released),
                (model.calls, model.successes, model.failures, model.slow, model.rejected, model.released)
            );
            prop_assert_eq!(s.transitions, model.transitions.len() as u64);
        }
        drop(held);
        prop_assert_eq!(&*seen.lock().unwrap(), &model.transitions);
    }
}
