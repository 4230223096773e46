//! Stats exports: JSON and the Prometheus text exposition format.
//!
//! Both are written by hand: the snapshot is flat numbers, and a
//! dependency (serde) for that would burden every user of the crate.

use std::fmt::Write;

use crate::stats::{Stats, TierStats};
use crate::telemetry::Percentiles;

fn json_percentiles(out: &mut String, p: &Percentiles) {
    let _ = write!(
        out,
        "{{\"count\":{},\"p50_us\":{},\"p95_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        p.count,
        p.p50.as_micros(),
        p.p95.as_micros(),
        p.p99.as_micros(),
        p.max.as_micros()
    );
}

fn json_tier(out: &mut String, t: &TierStats) {
    let r = &t.rejected;
    let c = &t.cancelled;
    let _ = write!(
        out,
        "{{\"name\":\"{}\",\"submitted\":{},\"completed\":{},\"failed\":{},\"panicked\":{},\
         \"cancelled\":{{\"caller\":{},\"timeout\":{},\"preempted\":{},\"shutdown\":{},\"queue_expired\":{},\"memory\":{}}},\
         \"rejected\":{{\"queue_full\":{},\"tier_limit\":{},\"user_limit\":{},\"shutting_down\":{},\"deadline_elapsed\":{}}},\
         \"warned\":{},\"zombies\":{},\"zombie_threads\":{},\"late_results\":{},\"worker_restarts\":{},\
         \"restart_intensity_exceeded\":{},\"preemptions\":{},\"requeued\":{},\"queued\":{},\"running\":{},\
         \"in_flight\":{},\"workers\":{},\"idle_workers\":{},\"threads_started\":{},\"paused\":{},\
         \"memory_paused\":{},\"memory_pauses\":{},\"busy_us\":{},\"queue_wait\":",
        t.name,
        t.submitted,
        t.completed,
        t.failed,
        t.panicked,
        c.caller,
        c.timeout,
        c.preempted,
        c.shutdown,
        c.queue_expired,
        c.memory,
        r.queue_full,
        r.tier_limit,
        r.user_limit,
        r.shutting_down,
        r.deadline_elapsed,
        t.warned,
        t.zombies,
        t.zombie_threads,
        t.late_results,
        t.worker_restarts,
        t.restart_intensity_exceeded,
        t.preemptions,
        t.requeued,
        t.queued,
        t.running,
        t.in_flight,
        t.workers,
        t.idle_workers,
        t.threads_started,
        t.paused,
        t.memory_paused,
        t.memory_pauses,
        t.busy.as_micros(),
    );
    json_percentiles(out, &t.queue_wait);
    out.push_str(",\"run_time\":");
    json_percentiles(out, &t.run_time);
    out.push('}');
}

impl Stats {
    /// The snapshot as one JSON object: `{"tiers":[{...}, ...]}`, durations
    /// in microseconds.
    ///
    /// ```
    /// let rt = tierpool::Runtime::builder().build()?;
    /// let json = rt.stats().to_json();
    /// assert!(json.starts_with("{\"tiers\":[{\"name\":\"ui\""));
    /// # Ok::<(), tierpool::BuildError>(())
    /// ```
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"tiers\":[");
        for (i, t) in self.tiers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_tier(&mut out, t);
        }
        let _ = write!(out, "],\"watchdog_pending\":{}}}", self.watchdog_pending);
        out
    }

    /// The snapshot in the Prometheus text exposition format (counters and
    /// gauges labelled by tier; latency quantiles in seconds).
    ///
    /// ```
    /// let rt = tierpool::Runtime::builder().build()?;
    /// let text = rt.stats().to_prometheus();
    /// assert!(text.contains("tierpool_tasks_submitted_total{tier=\"ui\"} 0"));
    /// # Ok::<(), tierpool::BuildError>(())
    /// ```
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric =
            |name: &str,
             kind: &str,
             help: &str,
             value: &dyn Fn(&TierStats) -> Vec<(String, f64)>| {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                for t in &self.tiers {
                    for (labels, v) in value(t) {
                        let _ = writeln!(out, "{name}{{tier=\"{}\"{labels}}} {v}", t.name);
                    }
                }
            };
        let one = |f: fn(&TierStats) -> f64| move |t: &TierStats| vec![(String::new(), f(t))];
        metric(
            "tierpool_tasks_submitted_total",
            "counter",
            "Tasks accepted.",
            &one(|t| t.submitted as f64),
        );
        metric(
            "tierpool_tasks_completed_total",
            "counter",
            "Tasks that returned Ok.",
            &one(|t| t.completed as f64),
        );
        metric(
            "tierpool_tasks_failed_total",
            "counter",
            "Tasks that returned Err.",
            &one(|t| t.failed as f64),
        );
        metric(
            "tierpool_tasks_panicked_total",
            "counter",
            "Tasks that panicked.",
            &one(|t| t.panicked as f64),
        );
        metric(
            "tierpool_tasks_cancelled_total",
            "counter",
            "Tasks cancelled, by reason.",
            &|t| {
                crate::CancelReason::ALL
                    .iter()
                    .map(|r| {
                        (
                            format!(",reason=\"{}\"", r.as_str()),
                            t.cancelled.get(*r) as f64,
                        )
                    })
                    .collect()
            },
        );
        metric(
            "tierpool_tasks_rejected_total",
            "counter",
            "Submissions refused, by reason.",
            &|t| {
                let r = &t.rejected;
                [
                    ("queue_full", r.queue_full),
                    ("tier_limit", r.tier_limit),
                    ("user_limit", r.user_limit),
                    ("shutting_down", r.shutting_down),
                    ("deadline_elapsed", r.deadline_elapsed),
                ]
                .iter()
                .map(|(k, v)| (format!(",reason=\"{k}\""), *v as f64))
                .collect()
            },
        );
        metric(
            "tierpool_tasks_warned_total",
            "counter",
            "Tasks that ran past warn_after.",
            &one(|t| t.warned as f64),
        );
        metric(
            "tierpool_zombies_total",
            "counter",
            "Tasks declared zombies.",
            &one(|t| t.zombies as f64),
        );
        metric(
            "tierpool_late_results_total",
            "counter",
            "Results dropped after the outcome was settled.",
            &one(|t| t.late_results as f64),
        );
        metric(
            "tierpool_worker_restarts_total",
            "counter",
            "Worker threads restarted.",
            &one(|t| t.worker_restarts as f64),
        );
        metric(
            "tierpool_preemptions_total",
            "counter",
            "Running tasks preempted.",
            &one(|t| t.preemptions as f64),
        );
        metric(
            "tierpool_busy_seconds_total",
            "counter",
            "Time spent running tasks.",
            &one(|t| t.busy.as_secs_f64()),
        );
        metric(
            "tierpool_queued",
            "gauge",
            "Tasks queued now.",
            &one(|t| t.queued as f64),
        );
        metric(
            "tierpool_running",
            "gauge",
            "Tasks running now.",
            &one(|t| t.running as f64),
        );
        metric(
            "tierpool_workers",
            "gauge",
            "Worker threads now.",
            &one(|t| t.workers as f64),
        );
        metric(
            "tierpool_zombie_threads",
            "gauge",
            "Threads stuck in zombie tasks.",
            &one(|t| t.zombie_threads as f64),
        );
        metric(
            "tierpool_paused",
            "gauge",
            "1 if paused (by the application or the memory watermark).",
            &one(|t| f64::from(u8::from(t.paused || t.memory_paused))),
        );
        for (name, help, pick) in [
            (
                "tierpool_queue_wait_seconds",
                "Time from submit to start.",
                (|t: &TierStats| t.queue_wait) as fn(&TierStats) -> Percentiles,
            ),
            (
                "tierpool_run_time_seconds",
                "Time from start to return.",
                |t: &TierStats| t.run_time,
            ),
        ] {
            metric(name, "summary", help, &|t| {
                let p = pick(t);
                vec![
                    (",quantile=\"0.5\"".into(), p.p50.as_secs_f64()),
                    (",quantile=\"0.95\"".into(), p.p95.as_secs_f64()),
                    (",quantile=\"0.99\"".into(), p.p99.as_secs_f64()),
                ]
            });
        }
        out
    }
}
