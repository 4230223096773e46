//! Stats exports: JSON, the Prometheus text exposition format, and (with
//! the `metrics` feature) the `metrics` facade.
//!
//! JSON and Prometheus text are written by hand: the snapshot is flat
//! numbers, and a dependency for that would burden every user of the
//! crate (`serde` is there behind its feature for those who want it).
//! Prometheus and the facade read one table of metric families
//! ([`Stats::families`]), so the two can never disagree on a name.

use std::fmt::Write;

use crate::stats::{Stats, TierStats};
use crate::telemetry::{BytePercentiles, Percentiles};

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

fn json_bytes(out: &mut String, p: &BytePercentiles) {
    let _ = write!(
        out,
        "{{\"count\":{},\"p50\":{},\"p95\":{},\"p99\":{},\"max\":{}}}",
        p.count, p.p50, p.p95, p.p99, p.max
    );
}

/// A finite float as JSON (which has no NaN or infinity).
fn json_f64(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
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
         \"memory_paused\":{},\"memory_pauses\":{},\"busy_us\":{},\"retries\":{},\"scale_ups\":{},\"scale_downs\":{},\
         \"utilisation\":{},\"saturated_for_us\":{},\"bytes_allocated\":{},\"queue_wait\":",
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
        t.retries,
        t.scale_ups,
        t.scale_downs,
        json_f64(t.utilisation),
        t.saturated_for
            .map_or("null".to_string(), |d| d.as_micros().to_string()),
        t.bytes_allocated,
    );
    json_percentiles(out, &t.queue_wait);
    out.push_str(",\"run_time\":");
    json_percentiles(out, &t.run_time);
    out.push_str(",\"task_bytes\":");
    json_bytes(out, &t.task_bytes);
    out.push('}');
}

impl Stats {
    /// The snapshot as one JSON object: `{"tiers":[{...}, ...]}`, durations
    /// in microseconds (`_us`), bytes as bytes. (With the `serde` feature,
    /// `Stats` also derives `Serialize`, in serde's own shape.)
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
        let _ = write!(
            out,
            "],\"watchdog_pending\":{},\"events_delivered\":{},\"events_dropped\":{},\"listener_panics\":{}}}",
            self.watchdog_pending, self.events_delivered, self.events_dropped, self.listener_panics
        );
        out
    }

    /// The snapshot in the Prometheus text exposition format: counters and
    /// gauges labelled by tier (and reason where there is one), latency
    /// quantiles in seconds and per-task byte quantiles as gauges with a
    /// `quantile` label (`"1"` is the exact maximum). Every family has its
    /// `# HELP` and `# TYPE` lines.
    ///
    /// The quantiles are declared `gauge`, not `summary`: the histograms
    /// keep no running sum, and a summary without `_sum` would be invalid.
    ///
    /// ```
    /// let rt = tierpool::Runtime::builder().build()?;
    /// let text = rt.stats().to_prometheus();
    /// assert!(text.contains("tierpool_tasks_submitted_total{tier=\"ui\"} 0"));
    /// assert!(text.contains("# TYPE tierpool_run_time_seconds gauge"));
    /// # Ok::<(), tierpool::BuildError>(())
    /// ```
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for f in self.families() {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.prometheus());
            for s in &f.samples {
                out.push_str(f.name);
                if !s.labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in s.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", prometheus_value(s.value));
            }
        }
        out
    }

    /// Records every counter and gauge of the snapshot through the
    /// [`metrics`](https://docs.rs/metrics) facade (feature `metrics`), under
    /// the same names and labels as [`to_prometheus`](Self::to_prometheus):
    /// an application with its own recorder and exporter gets everything
    /// by calling this periodically (say, every few seconds).
    ///
    /// Counters are set with `absolute` (the snapshot holds totals); the
    /// one fractional counter, `tierpool_busy_seconds_total`, and the
    /// quantiles are gauges. Nothing goes through `histogram!`: the
    /// snapshot holds percentiles, not the samples a facade histogram
    /// wants.
    ///
    /// ```
    /// let rt = tierpool::Runtime::builder().build()?;
    /// // With no recorder installed this is a no-op.
    /// rt.stats().emit_metrics();
    /// # Ok::<(), tierpool::BuildError>(())
    /// ```
    #[cfg(feature = "metrics")]
    pub fn emit_metrics(&self) {
        for f in self.families() {
            let name = f.name;
            match f.kind {
                Kind::Counter => metrics::describe_counter!(name, f.help),
                Kind::FractionalCounter | Kind::Gauge => metrics::describe_gauge!(name, f.help),
            }
            for s in f.samples {
                let labels: Vec<metrics::Label> = s
                    .labels
                    .into_iter()
                    .map(|(k, v)| metrics::Label::new(k, v))
                    .collect();
                match f.kind {
                    Kind::Counter => metrics::counter!(name, labels).absolute(s.value as u64),
                    Kind::FractionalCounter | Kind::Gauge => {
                        metrics::gauge!(name, labels).set(s.value);
                    }
                }
            }
        }
    }

    /// Every metric family of the snapshot: the one table both
    /// [`to_prometheus`](Self::to_prometheus) and `emit_metrics` read.
    pub(crate) fn families(&self) -> Vec<Family> {
        let mut v = Vec::new();
        let mut tier = |name, kind, help, each: &dyn Fn(&TierStats) -> Vec<(Labels, f64)>| {
            let samples = self
                .tiers
                .iter()
                .flat_map(|t| {
                    each(t).into_iter().map(|(extra, value)| {
                        let mut labels = vec![("tier", t.name.to_string())];
                        labels.extend(extra);
                        Sample { labels, value }
                    })
                })
                .collect();
            v.push(Family {
                name,
                kind,
                help,
                samples,
            });
        };
        let one = |f: fn(&TierStats) -> f64| move |t: &TierStats| vec![(Vec::new(), f(t))];
        use Kind::{Counter, FractionalCounter, Gauge};
        tier(
            "tierpool_tasks_submitted_total",
            Counter,
            "Tasks accepted.",
            &one(|t| t.submitted as f64),
        );
        tier(
            "tierpool_tasks_completed_total",
            Counter,
            "Tasks that returned Ok.",
            &one(|t| t.completed as f64),
        );
        tier(
            "tierpool_tasks_failed_total",
            Counter,
            "Tasks that returned Err.",
            &one(|t| t.failed as f64),
        );
        tier(
            "tierpool_tasks_panicked_total",
            Counter,
            "Tasks that panicked.",
            &one(|t| t.panicked as f64),
        );
        tier(
            "tierpool_tasks_cancelled_total",
            Counter,
            "Tasks cancelled, by reason.",
            &|t| {
                crate::CancelReason::ALL
                    .iter()
                    .map(|r| {
                        (
                            vec![("reason", r.as_str().to_string())],
                            t.cancelled.get(*r) as f64,
                        )
                    })
                    .collect()
            },
        );
        tier(
            "tierpool_tasks_rejected_total",
            Counter,
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
                .map(|(k, n)| (vec![("reason", (*k).to_string())], *n as f64))
                .collect()
            },
        );
        tier(
            "tierpool_tasks_warned_total",
            Counter,
            "Tasks that ran past warn_after.",
            &one(|t| t.warned as f64),
        );
        tier(
            "tierpool_zombies_total",
            Counter,
            "Tasks declared zombies.",
            &one(|t| t.zombies as f64),
        );
        tier(
            "tierpool_late_results_total",
            Counter,
            "Results dropped after the outcome was settled.",
            &one(|t| t.late_results as f64),
        );
        tier(
            "tierpool_worker_restarts_total",
            Counter,
            "Worker threads restarted.",
            &one(|t| t.worker_restarts as f64),
        );
        tier(
            "tierpool_preemptions_total",
            Counter,
            "Running tasks preempted.",
            &one(|t| t.preemptions as f64),
        );
        tier(
            "tierpool_tasks_requeued_total",
            Counter,
            "Preempted tasks put back in the queue.",
            &one(|t| t.requeued as f64),
        );
        tier(
            "tierpool_tasks_retried_total",
            Counter,
            "Failed runs scheduled to run again.",
            &one(|t| t.retries as f64),
        );
        tier(
            "tierpool_scale_ups_total",
            Counter,
            "Workers started for queued work.",
            &one(|t| t.scale_ups as f64),
        );
        tier(
            "tierpool_scale_downs_total",
            Counter,
            "Workers retired after the keep-alive.",
            &one(|t| t.scale_downs as f64),
        );
        tier(
            "tierpool_threads_started_total",
            Counter,
            "Worker threads started.",
            &one(|t| t.threads_started as f64),
        );
        tier(
            "tierpool_memory_pauses_total",
            Counter,
            "Times the memory watermark paused the tier.",
            &one(|t| t.memory_pauses as f64),
        );
        tier(
            "tierpool_busy_seconds_total",
            FractionalCounter,
            "Time spent running tasks.",
            &one(|t| t.busy.as_secs_f64()),
        );
        tier(
            "tierpool_allocated_bytes_total",
            Counter,
            "Bytes allocated by task runs (counting allocator; 0 without it).",
            &one(|t| t.bytes_allocated as f64),
        );
        tier(
            "tierpool_queued",
            Gauge,
            "Tasks queued now.",
            &one(|t| t.queued as f64),
        );
        tier(
            "tierpool_running",
            Gauge,
            "Tasks running now.",
            &one(|t| t.running as f64),
        );
        tier(
            "tierpool_in_flight",
            Gauge,
            "Tasks queued or running, as admission counts them.",
            &one(|t| t.in_flight as f64),
        );
        tier(
            "tierpool_workers",
            Gauge,
            "Worker threads now.",
            &one(|t| t.workers as f64),
        );
        tier(
            "tierpool_idle_workers",
            Gauge,
            "Idle worker threads now.",
            &one(|t| t.idle_workers as f64),
        );
        tier(
            "tierpool_zombie_threads",
            Gauge,
            "Threads stuck in zombie tasks.",
            &one(|t| t.zombie_threads as f64),
        );
        tier(
            "tierpool_paused",
            Gauge,
            "1 if paused (by the application or the memory watermark).",
            &one(|t| f64::from(u8::from(t.paused || t.memory_paused))),
        );
        tier(
            "tierpool_memory_paused",
            Gauge,
            "1 if paused by the memory watermark.",
            &one(|t| f64::from(u8::from(t.memory_paused))),
        );
        tier(
            "tierpool_restart_intensity_exceeded",
            Gauge,
            "1 if the tier gave up restarting workers.",
            &one(|t| f64::from(u8::from(t.restart_intensity_exceeded))),
        );
        tier(
            "tierpool_utilisation",
            Gauge,
            "Busy time / capacity over the utilisation window (0-1).",
            &one(|t| t.utilisation),
        );
        tier(
            "tierpool_saturated_seconds",
            Gauge,
            "How long the tier has been at capacity (0 if it is not).",
            &one(|t| t.saturated_for.map_or(0.0, |d| d.as_secs_f64())),
        );
        tier(
            "tierpool_resident_bytes",
            Gauge,
            "Last resident-memory sample (tiers with a watermark).",
            &|t| {
                t.last_rss
                    .map(|b| (Vec::new(), b as f64))
                    .into_iter()
                    .collect()
            },
        );
        for (name, help, pick) in [
            (
                "tierpool_queue_wait_seconds",
                "Time from submit to start, by quantile (1: the maximum).",
                (|t: &TierStats| t.queue_wait) as fn(&TierStats) -> Percentiles,
            ),
            (
                "tierpool_run_time_seconds",
                "Time from start to return, by quantile (1: the maximum).",
                |t: &TierStats| t.run_time,
            ),
        ] {
            tier(name, Gauge, help, &|t| {
                let p = pick(t);
                quantiles([p.p50, p.p95, p.p99, p.max].map(|d| d.as_secs_f64()))
            });
        }
        tier(
            "tierpool_task_allocated_bytes",
            Gauge,
            "Bytes allocated per task run, by quantile (1: the maximum).",
            &|t| {
                let p = t.task_bytes;
                quantiles([p.p50, p.p95, p.p99, p.max].map(|b| b as f64))
            },
        );
        let global = |name, kind, help, value: f64| Family {
            name,
            kind,
            help,
            samples: vec![Sample {
                labels: Vec::new(),
                value,
            }],
        };
        v.push(global(
            "tierpool_watchdog_pending",
            Gauge,
            "Deadlines the watchdog holds.",
            self.watchdog_pending as f64,
        ));
        v.push(global(
            "tierpool_events_delivered_total",
            Counter,
            "Events handed to listeners.",
            self.events_delivered as f64,
        ));
        v.push(global(
            "tierpool_events_dropped_total",
            Counter,
            "Events dropped because the listeners' channel was full.",
            self.events_dropped as f64,
        ));
        v.push(global(
            "tierpool_listener_panics_total",
            Counter,
            "Listener calls that panicked.",
            self.listener_panics as f64,
        ));
        v
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric: its name, type, help text and samples.
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) help: &'static str,
    pub(crate) samples: Vec<Sample>,
}

/// One labelled value of a family.
pub(crate) struct Sample {
    pub(crate) labels: Labels,
    pub(crate) value: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    /// A counter with a fractional value (seconds): a Prometheus counter,
    /// a gauge in the `metrics` facade, whose counters are integers.
    FractionalCounter,
    Gauge,
}

impl Kind {
    fn prometheus(self) -> &'static str {
        match self {
            Kind::Counter | Kind::FractionalCounter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

fn quantiles(values: [f64; 4]) -> Vec<(Labels, f64)> {
    ["0.5", "0.95", "0.99", "1"]
        .into_iter()
        .zip(values)
        .map(|(q, v)| (vec![("quantile", q.to_string())], v))
        .collect()
}

/// A sample value as the exposition format spells it (`+Inf`, not `inf`).
fn prometheus_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_labels_are_spelled_as_the_format_wants() {
        assert_eq!(prometheus_value(f64::INFINITY), "+Inf");
        assert_eq!(prometheus_value(f64::NAN), "NaN");
        assert_eq!(prometheus_value(0.000_001), "0.000001");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
