//! Stats snapshots: what each tier has done and is doing, as numbers and as
//! a human table.

use std::fmt;
use std::time::Duration;

use crate::cancel::CancelReason;
use crate::error::{fmt_duration, RejectReason};
use crate::telemetry::{BytePercentiles, CounterSnapshot, Percentiles};

/// Rejections by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RejectCounts {
    /// Queue at capacity.
    pub queue_full: u64,
    /// Tier in-flight limit.
    pub tier_limit: u64,
    /// Per-user limit.
    pub user_limit: u64,
    /// Runtime shutting down.
    pub shutting_down: u64,
    /// Blocking submit ran out of time.
    pub deadline_elapsed: u64,
}

impl RejectCounts {
    /// All rejections.
    pub fn total(&self) -> u64 {
        self.queue_full
            + self.tier_limit
            + self.user_limit
            + self.shutting_down
            + self.deadline_elapsed
    }
}

/// Cancellations by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CancelCounts {
    /// By the caller.
    pub caller: u64,
    /// By the watchdog at the timeout.
    pub timeout: u64,
    /// Preempted by critical work.
    pub preempted: u64,
    /// By shutdown (running, or never started).
    pub shutdown: u64,
    /// Expired in the queue.
    pub queue_expired: u64,
    /// Over the memory budget.
    pub memory: u64,
}

impl CancelCounts {
    /// All cancellations (timeouts included).
    pub fn total(&self) -> u64 {
        self.caller
            + self.timeout
            + self.preempted
            + self.shutdown
            + self.queue_expired
            + self.memory
    }

    /// The count for one reason.
    pub fn get(&self, r: CancelReason) -> u64 {
        match r {
            CancelReason::Caller => self.caller,
            CancelReason::Timeout => self.timeout,
            CancelReason::Preempted => self.preempted,
            CancelReason::Shutdown => self.shutdown,
            CancelReason::QueueExpired => self.queue_expired,
            CancelReason::Memory => self.memory,
        }
    }
}

/// One tier's numbers at one moment.
///
/// At every quiescent point (nothing queued or running),
/// `submitted == outcomes()`.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct TierStats {
    /// Tier name (`"ui"`, `"background"`, `"realtime"`, `"analysis"`).
    /// With the `serde` feature it deserializes from those names only.
    #[cfg_attr(feature = "serde", serde(deserialize_with = "tier_name"))]
    pub name: StaticName,
    /// Tasks accepted.
    pub submitted: u64,
    /// Submissions refused, by reason.
    pub rejected: RejectCounts,
    /// Returned `Ok`.
    pub completed: u64,
    /// Returned `Err`.
    pub failed: u64,
    /// Panicked.
    pub panicked: u64,
    /// Cancelled, by reason (timeouts are `cancelled.timeout`).
    pub cancelled: CancelCounts,
    /// Ran past `warn_after`.
    pub warned: u64,
    /// Declared zombies (ever).
    pub zombies: u64,
    /// Threads stuck in a zombie task now.
    pub zombie_threads: usize,
    /// Results that arrived after the outcome was settled (dropped).
    pub late_results: u64,
    /// Worker threads restarted after dying outside a task.
    pub worker_restarts: u64,
    /// Whether the restart intensity was exceeded (no more restarts).
    pub restart_intensity_exceeded: bool,
    /// Running tasks cancelled for critical work.
    pub preemptions: u64,
    /// Preempted tasks put back in the queue.
    pub requeued: u64,
    /// Failed runs scheduled to run again after a backoff.
    pub retries: u64,
    /// Workers started because queued work outnumbered idle workers.
    pub scale_ups: u64,
    /// Workers retired after the keep-alive.
    pub scale_downs: u64,
    /// The configured worker range (min, max).
    pub workers_range: (usize, usize),
    /// Queued now (not started).
    pub queued: usize,
    /// Running now (zombies excluded).
    pub running: usize,
    /// Queued + running, as admission counts them.
    pub in_flight: usize,
    /// Worker threads now (zombies excluded).
    pub workers: usize,
    /// Of which idle.
    pub idle_workers: usize,
    /// Threads started over the tier's life.
    pub threads_started: u64,
    /// Paused by the application.
    pub paused: bool,
    /// Paused by the memory watermark.
    pub memory_paused: bool,
    /// Last resident-memory sample, in bytes.
    pub last_rss: Option<u64>,
    /// Times the memory watermark paused the tier.
    pub memory_pauses: u64,
    /// Total time spent running tasks (finished runs).
    pub busy: Duration,
    /// Busy time / (max_workers × window) over the tier's
    /// [`utilisation_window`](crate::TierConfig::utilisation_window),
    /// runs in progress included; 0.0–1.0. Sampled by snapshots (no
    /// sampling thread): when snapshots are further apart than the window,
    /// it covers the time since the previous one.
    pub utilisation: f64,
    /// How long the tier has been at capacity (a queue or its in-flight
    /// limit full, not yet back to half), if it is.
    pub saturated_for: Option<Duration>,
    /// Time from submit to start.
    pub queue_wait: Percentiles,
    /// Time from start to return.
    pub run_time: Percentiles,
    /// Bytes allocated by the tier's task runs, on their worker threads
    /// (0 unless [`CountingAllocator`](crate::alloc::CountingAllocator) is
    /// the global allocator).
    pub bytes_allocated: u64,
    /// Bytes allocated per task run (empty without the counting
    /// allocator).
    pub task_bytes: BytePercentiles,
}

impl TierStats {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        name: &'static str,
        c: CounterSnapshot,
        workers: usize,
        zombie_threads: usize,
        idle_workers: usize,
        in_flight: usize,
        paused: bool,
        memory_paused: bool,
        last_rss: Option<u64>,
        memory_pauses: u64,
        restart_intensity_exceeded: bool,
        threads_started: u64,
        workers_range: (usize, usize),
    ) -> Self {
        let r = c.rejected;
        let k = c.cancelled;
        TierStats {
            name,
            submitted: c.submitted,
            rejected: RejectCounts {
                queue_full: r[RejectReason::QueueFull { capacity: 0 }.index()],
                tier_limit: r[RejectReason::TierLimit { limit: 0 }.index()],
                user_limit: r[RejectReason::UserLimit {
                    user: String::new(),
                    limit: 0,
                }
                .index()],
                shutting_down: r[RejectReason::ShuttingDown.index()],
                deadline_elapsed: r[RejectReason::DeadlineElapsed.index()],
            },
            completed: c.completed,
            failed: c.failed,
            panicked: c.panicked,
            cancelled: CancelCounts {
                caller: k[CancelReason::Caller.index()],
                timeout: k[CancelReason::Timeout.index()],
                preempted: k[CancelReason::Preempted.index()],
                shutdown: k[CancelReason::Shutdown.index()],
                queue_expired: k[CancelReason::QueueExpired.index()],
                memory: k[CancelReason::Memory.index()],
            },
            warned: c.warned,
            zombies: c.zombies,
            zombie_threads,
            late_results: c.late_results,
            worker_restarts: c.worker_restarts,
            restart_intensity_exceeded,
            preemptions: c.preemptions,
            requeued: c.restarts,
            retries: c.retries,
            scale_ups: c.scale_ups,
            scale_downs: c.scale_downs,
            workers_range,
            queued: c.queued,
            running: c.running,
            in_flight,
            workers,
            idle_workers,
            threads_started,
            paused,
            memory_paused,
            last_rss,
            memory_pauses,
            busy: c.busy,
            utilisation: 0.0,
            saturated_for: None,
            queue_wait: c.queue_wait,
            run_time: c.run_time,
            bytes_allocated: c.bytes_allocated,
            task_bytes: c.task_bytes,
        }
    }

    pub(crate) fn with_supervision(
        mut self,
        utilisation: f64,
        saturated_for: Option<Duration>,
    ) -> Self {
        self.utilisation = utilisation;
        self.saturated_for = saturated_for;
        self
    }

    /// Terminal outcomes so far: completed + failed + panicked + cancelled.
    pub fn outcomes(&self) -> u64 {
        self.completed + self.failed + self.panicked + self.cancelled.total()
    }

    /// Tasks that timed out.
    pub fn timed_out(&self) -> u64 {
        self.cancelled.timeout
    }
}

/// `&'static str` under another name: serde's derive borrows any field
/// spelled `&str` (binding the whole impl to `'de: 'static`); behind an
/// alias it leaves the field to `tier_name`.
type StaticName = &'static str;

/// The tier names a snapshot can hold, for deserializing
/// [`TierStats::name`] back into a `&'static str` without leaking.
#[cfg(feature = "serde")]
fn tier_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    ["ui", "background", "realtime", "analysis"]
        .into_iter()
        .find(|known| *known == name)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown tier {name:?} (expected ui, background, realtime or analysis)"
            ))
        })
}

/// A snapshot of every tier. `Display` prints a table.
///
/// ```
/// use tierpool::{Priority, Runtime};
/// let rt = Runtime::builder().build()?;
/// rt.ui().submit(Priority::Normal, |_| Ok::<_, String>(()))?.join().unwrap();
/// let stats = rt.stats();
/// assert_eq!(stats.tier("ui").unwrap().completed, 1);
/// println!("{stats}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Stats {
    /// One entry per tier, in the order ui, background, realtime.
    pub tiers: Vec<TierStats>,
    /// Deadlines the watchdog holds (live or awaiting compaction).
    pub watchdog_pending: usize,
    /// Events handed to listeners (see [`Runtime::on_event`](crate::Runtime::on_event)).
    pub events_delivered: u64,
    /// Events dropped because the listeners' channel was full.
    pub events_dropped: u64,
    /// Listener calls that panicked (caught).
    pub listener_panics: u64,
}

impl Stats {
    /// The tier with this name.
    pub fn tier(&self, name: &str) -> Option<&TierStats> {
        self.tiers.iter().find(|t| t.name == name)
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<11} {:>7} {:>6} {:>6} {:>9} {:>7} {:>6} {:>7} {:>9} {:>8} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
            "tier", "workers", "queued", "run", "submitted", "done", "failed", "panics", "cancelled",
            "timeouts", "reject", "zombie", "wait p50", "wait p99", "run p50", "run p99"
        )?;
        for t in &self.tiers {
            let state = if t.paused {
                "*"
            } else if t.memory_paused {
                "!"
            } else {
                ""
            };
            writeln!(
                f,
                "{:<11} {:>7} {:>6} {:>6} {:>9} {:>7} {:>6} {:>7} {:>9} {:>8} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
                format!("{}{state}", t.name),
                t.workers,
                t.queued,
                t.running,
                t.submitted,
                t.completed,
                t.failed,
                t.panicked,
                t.cancelled.total() - t.cancelled.timeout,
                t.cancelled.timeout,
                t.rejected.total(),
                t.zombies,
                fmt_duration(t.queue_wait.p50),
                fmt_duration(t.queue_wait.p99),
                fmt_duration(t.run_time.p50),
                fmt_duration(t.run_time.p99),
            )?;
        }
        // Bytes per run exist only with the counting allocator installed.
        if self.tiers.iter().any(|t| t.task_bytes.count > 0) {
            writeln!(
                f,
                "\n{:<11} {:>9} {:>11} {:>10} {:>10} {:>10}",
                "allocated", "runs", "total", "run p50", "run p99", "run max"
            )?;
            for t in self.tiers.iter().filter(|t| t.task_bytes.count > 0) {
                writeln!(
                    f,
                    "{:<11} {:>9} {:>11} {:>10} {:>10} {:>10}",
                    t.name,
                    t.task_bytes.count,
                    fmt_bytes(t.bytes_allocated),
                    fmt_bytes(t.task_bytes.p50),
                    fmt_bytes(t.task_bytes.p99),
                    fmt_bytes(t.task_bytes.max),
                )?;
            }
        }
        if self.tiers.iter().any(|t| t.paused) {
            writeln!(f, "* paused")?;
        }
        if self.tiers.iter().any(|t| t.memory_paused) {
            writeln!(f, "! paused by the memory watermark")?;
        }
        Ok(())
    }
}

/// Bytes in the binary unit that keeps three significant digits.
fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_bytes;

    #[test]
    fn bytes_keep_three_digits_in_binary_units() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1023), "1023 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(10 * 1024 * 1024), "10.0 MiB");
        assert_eq!(fmt_bytes(u64::MAX), "16777216.0 TiB");
    }
}
