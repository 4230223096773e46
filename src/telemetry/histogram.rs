//! A fixed-size, lock-free histogram (log-linear buckets) of latencies or
//! byte counts.
//!
//! Recording is one relaxed `fetch_add` on the hot path (task start and
//! finish), from any number of threads, with no lock and no allocation;
//! that is why this is hand-made rather than an `hdrhistogram` behind a
//! mutex. Values are nanoseconds ([`Histogram::record`]) or plain numbers
//! such as bytes ([`Histogram::record_value`]). Each power of two is split into
//! `SUB` linear sub-buckets, so a reported percentile is within 1/SUB
//! (6.25%) of the true value; `max` is exact.

use std::time::Duration;

use crate::sync::{AtomicU64, Ordering};

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Values below `SUB` get one bucket each; above, `SUB` per power of two.
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// Aligned so that its `max` does not share a cache line with whatever
/// counters sit beside it.
#[repr(align(128))]
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

/// Percentiles read from a histogram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Percentiles {
    /// How many values were recorded.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest value recorded (exact).
    pub max: Duration,
}

/// Percentiles of a byte-count histogram (bytes allocated per task run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BytePercentiles {
    /// How many values were recorded.
    pub count: u64,
    /// Median, in bytes.
    pub p50: u64,
    /// 95th percentile, in bytes.
    pub p95: u64,
    /// 99th percentile, in bytes.
    pub p99: u64,
    /// Largest value recorded (exact), in bytes.
    pub max: u64,
}

fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (exp - SUB_BITS)) as usize & (SUB - 1);
    SUB + (exp - SUB_BITS) as usize * SUB + sub
}

/// The midpoint of bucket `i`'s value range.
fn value_of(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let exp = (i - SUB) / SUB + SUB_BITS as usize;
    let sub = ((i - SUB) % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS as usize);
    let low = (1u64 << exp) + sub * width;
    low.saturating_add(width / 2)
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn record(&self, d: Duration) {
        self.record_value(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    #[inline]
    pub(crate) fn record_value(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        // A read first: most values are not a new maximum, and a plain
        // load keeps the line shared instead of taking it exclusive.
        if v > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(v, Ordering::Relaxed);
        }
    }

    pub(crate) fn percentiles(&self) -> Percentiles {
        let v = self.value_percentiles();
        Percentiles {
            count: v.count,
            p50: Duration::from_nanos(v.p50),
            p95: Duration::from_nanos(v.p95),
            p99: Duration::from_nanos(v.p99),
            max: Duration::from_nanos(v.max),
        }
    }

    pub(crate) fn value_percentiles(&self) -> BytePercentiles {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let at = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return value_of(i).min(max);
                }
            }
            max
        };
        BytePercentiles {
            count: total,
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_u64() {
        for shift in 0..64 {
            let v = 1u64 << shift;
            assert!(bucket_of(v) < BUCKETS);
            assert!(bucket_of(v) <= bucket_of(v | (v >> 1)));
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for v in (0..5000u64).step_by(7) {
            assert!(bucket_of(v) <= bucket_of(v + 1));
        }
    }

    #[test]
    fn percentiles_within_relative_error() {
        let h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p = h.percentiles();
        assert_eq!(p.count, 1000);
        let close = |got: Duration, want: u64| {
            let got = got.as_micros() as f64;
            ((got - want as f64) / want as f64).abs() < 0.07
        };
        assert!(close(p.p50, 500), "{:?}", p.p50);
        assert!(close(p.p99, 990), "{:?}", p.p99);
        assert_eq!(p.max, Duration::from_micros(1000));
    }

    #[test]
    fn values_share_the_buckets() {
        let h = Histogram::new();
        for kib in 1..=100u64 {
            h.record_value(kib * 1024);
        }
        let p = h.value_percentiles();
        assert_eq!(p.count, 100);
        assert_eq!(p.max, 100 * 1024);
        let p50 = p.p50 as f64 / 1024.0;
        assert!((p50 - 50.0).abs() / 50.0 < 0.07, "{p50}");
    }

    #[test]
    fn empty_histogram_is_zero() {
        assert_eq!(Histogram::new().percentiles(), Percentiles::default());
    }
}
