//! Per-kind analysis numbers.

use std::fmt;

use crate::sync::{AtomicU64, Ordering};
use crate::telemetry::{Histogram, Percentiles};

#[derive(Default)]
struct C(AtomicU64);

impl C {
    fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub(crate) struct KindCounters {
    requests: C,
    hits: C,
    misses: C,
    joins: C,
    rejected: C,
    computed: C,
    retried: C,
    failed_after_retries: C,
    batches: C,
    batch_items: C,
    batch_items_skipped: C,
    pub(crate) queue_wait: Histogram,
    pub(crate) run_time: Histogram,
}

impl KindCounters {
    pub(crate) fn new() -> Self {
        KindCounters {
            requests: C::default(),
            hits: C::default(),
            misses: C::default(),
            joins: C::default(),
            rejected: C::default(),
            computed: C::default(),
            retried: C::default(),
            failed_after_retries: C::default(),
            batches: C::default(),
            batch_items: C::default(),
            batch_items_skipped: C::default(),
            queue_wait: Histogram::new(),
            run_time: Histogram::new(),
        }
    }
    pub(crate) fn requested(&self) {
        self.requests.inc();
    }
    pub(crate) fn hit(&self) {
        self.hits.inc();
    }
    pub(crate) fn missed(&self) {
        self.misses.inc();
    }
    pub(crate) fn joined(&self) {
        self.joins.inc();
    }
    /// A miss whose computation was then rejected at submit.
    pub(crate) fn rejected(&self) {
        self.misses.dec();
        self.rejected.inc();
    }
    pub(crate) fn computed(&self) {
        self.computed.inc();
    }
    pub(crate) fn retried(&self) {
        self.retried.inc();
    }
    pub(crate) fn failed_after_retries(&self) {
        self.failed_after_retries.inc();
    }
    pub(crate) fn batch(&self, items: usize) {
        self.batches.inc();
        self.batch_items.add(items as u64);
    }
    pub(crate) fn batch_skipped(&self, n: usize) {
        self.batch_items_skipped.add(n as u64);
    }

    pub(crate) fn snapshot(&self, kind: &str) -> KindStats {
        let (hits, misses) = (self.hits.get(), self.misses.get());
        KindStats {
            kind: kind.to_string(),
            requests: self.requests.get(),
            cache_hits: hits,
            cache_misses: misses,
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            joined: self.joins.get(),
            rejected: self.rejected.get(),
            runs: self.computed.get(),
            retried: self.retried.get(),
            failed_after_retries: self.failed_after_retries.get(),
            batches: self.batches.get(),
            batch_items: self.batch_items.get(),
            batch_items_skipped: self.batch_items_skipped.get(),
            queue_wait: self.queue_wait.percentiles(),
            run_time: self.run_time.percentiles(),
        }
    }
}

/// One analysis kind's numbers.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct KindStats {
    /// The kind's name, e.g. `character_intel`.
    pub kind: String,
    /// Requests made.
    pub requests: u64,
    /// Served from the cache.
    pub cache_hits: u64,
    /// Not in the cache (or stale), or not cacheable; joins excluded.
    pub cache_misses: u64,
    /// hits / (hits + misses).
    pub hit_rate: f64,
    /// Requests that joined an identical computation in flight.
    pub joined: u64,
    /// Requests rejected at submit (queue full, shutting down).
    pub rejected: u64,
    /// Runs of the closure (attempts included).
    pub runs: u64,
    /// Failed runs scheduled to retry.
    pub retried: u64,
    /// Computations that failed after more than one attempt.
    pub failed_after_retries: u64,
    /// CPU batches run.
    pub batches: u64,
    /// Items in those batches.
    pub batch_items: u64,
    /// Batch items skipped because their batch was cancelled or timed out.
    pub batch_items_skipped: u64,
    /// Time from request to first attempt.
    pub queue_wait: Percentiles,
    /// Time of each run.
    pub run_time: Percentiles,
}

/// The analysis layer's numbers.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AnalysisStats {
    /// Per kind, sorted by name.
    pub kinds: Vec<KindStats>,
    /// Results cached now.
    pub cache_entries: usize,
    /// Cache keys being computed now.
    pub in_flight_keys: usize,
    /// Analysis workers now.
    pub workers: usize,
    /// Fewest workers.
    pub min_workers: usize,
    /// Most workers.
    pub max_workers: usize,
    /// Times the pool grew.
    pub scale_ups: u64,
    /// Times it shrank.
    pub scale_downs: u64,
}

impl AnalysisStats {
    /// The kind with this name.
    pub fn kind(&self, kind: &str) -> Option<&KindStats> {
        self.kinds.iter().find(|k| k.kind == kind)
    }
}

impl fmt::Display for AnalysisStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "analysis: {} workers ({}–{}), {} scale-ups, {} scale-downs, {} cached, {} in flight",
            self.workers,
            self.min_workers,
            self.max_workers,
            self.scale_ups,
            self.scale_downs,
            self.cache_entries,
            self.in_flight_keys
        )?;
        writeln!(
            f,
            "{:<20} {:>8} {:>7} {:>7} {:>6} {:>6} {:>6} {:>7} {:>9} {:>9} {:>8} {:>8}",
            "kind",
            "requests",
            "hits",
            "hit %",
            "joined",
            "runs",
            "retry",
            "failed",
            "run p50",
            "run p99",
            "batches",
            "items"
        )?;
        for k in &self.kinds {
            writeln!(
                f,
                "{:<20} {:>8} {:>7} {:>6.1}% {:>6} {:>6} {:>6} {:>7} {:>9} {:>9} {:>8} {:>8}",
                k.kind,
                k.requests,
                k.cache_hits,
                k.hit_rate * 100.0,
                k.joined,
                k.runs,
                k.retried,
                k.failed_after_retries,
                crate::error::fmt_duration(k.run_time.p50),
                crate::error::fmt_duration(k.run_time.p99),
                k.batches,
                k.batch_items,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column of the per-kind table has a header: the header line
    /// and a row are the same width (the columns are fixed-width). The demo's
    /// summary once printed two unlabelled batch columns.
    #[test]
    fn kind_table_rows_line_up_with_the_header() {
        let kind = KindStats {
            kind: "character_intel".into(),
            requests: 222,
            cache_hits: 153,
            cache_misses: 62,
            hit_rate: 0.712,
            joined: 7,
            rejected: 0,
            runs: 70,
            retried: 8,
            failed_after_retries: 4,
            batches: 2,
            batch_items: 4000,
            batch_items_skipped: 0,
            queue_wait: Percentiles::default(),
            run_time: Percentiles::default(),
        };
        let stats = AnalysisStats {
            kinds: vec![kind],
            cache_entries: 58,
            in_flight_keys: 0,
            workers: 1,
            min_workers: 1,
            max_workers: 8,
            scale_ups: 4,
            scale_downs: 0,
        };
        let text = stats.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let (header, row) = (lines[1], lines[2]);
        assert!(header.ends_with("batches    items"), "{text}");
        assert!(row.ends_with("       2     4000"), "{text}");
        assert_eq!(header.chars().count(), row.chars().count(), "{text}");
    }
}
