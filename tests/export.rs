//! The stats exports: Prometheus text that parses, serde JSON that
//! round-trips (feature `serde`), and the `metrics` facade (feature
//! `metrics`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tierpool::{Priority, Runtime, Stats};

/// A runtime that has done a bit of everything: completed, failed and
/// cancelled tasks, so the counters are not all zero.
fn busy_stats() -> (Runtime, Stats) {
    let rt = Runtime::builder()
        .background(|t| t.no_memory_watermark())
        .build()
        .unwrap();
    for i in 0..10 {
        let h = rt
            .ui()
            .submit(Priority::Normal, move |_| {
                if i % 3 == 0 {
                    Err(format!("task {i} failed"))
                } else {
                    Ok(i)
                }
            })
            .unwrap();
        let _ = h.join();
    }
    let h = rt
        .background()
        .submit(Priority::Low, |ctx| {
            ctx.sleep(Duration::from_secs(3600))?;
            Ok::<_, tierpool::Cancelled>(())
        })
        .unwrap();
    h.cancel();
    let _ = h.join();
    let stats = rt.stats();
    (rt, stats)
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    is_metric_name(s) && !s.contains(':')
}

/// Parses `k="v",k2="v2"` (escapes: `\\`, `\"`, `\n`); `None` if malformed.
fn parse_labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (name, rest) = s.split_once("=\"")?;
        if !is_label_name(name) {
            return None;
        }
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    _ => return None,
                },
                (_, c) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        s = &rest[end + 1..];
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.is_empty() {
            return None;
        }
    }
    Some(out)
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust's parser also takes "inf" and "infinity": the format does not.
        s if s
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            None
        }
        s => s.parse().ok(),
    }
}

#[test]
fn prometheus_text_parses_line_by_line() {
    let (rt, stats) = busy_stats();
    let text = stats.to_prometheus();
    let mut help = HashSet::new();
    let mut types = HashMap::new();
    let mut series = HashSet::new();
    let mut samples_of = HashMap::<String, usize>::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line in:\n{text}");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP has a text");
            assert!(is_metric_name(name) && !doc.is_empty(), "{line}");
            assert!(help.insert(name.to_string()), "second HELP: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(help.contains(name), "TYPE before HELP: {line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "second TYPE: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series_part, value) = line.rsplit_once(' ').expect("name and value");
        let v = parse_value(value).unwrap_or_else(|| panic!("bad value in: {line}"));
        let (name, labels) = match series_part.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let labels = parse_labels(inner).unwrap_or_else(|| panic!("bad labels: {line}"));
                (name, labels)
            }
            None => (series_part, Vec::new()),
        };
        assert!(is_metric_name(name), "bad name: {line}");
        let kind = types
            .get(name)
            .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter not named _total: {line}");
            assert!(v >= 0.0, "negative counter: {line}");
        }
        assert!(
            series.insert(series_part.to_string()),
            "duplicate series: {line}"
        );
        let label_names: Vec<_> = labels.iter().map(|(k, _)| k.as_str()).collect();
        let unique: HashSet<_> = label_names.iter().collect();
        assert_eq!(unique.len(), label_names.len(), "repeated label: {line}");
        *samples_of.entry(name.to_string()).or_default() += 1;
    }
    for name in types.keys() {
        assert!(help.contains(name), "{name} has no HELP");
    }
    // The new figures are there, for every tier.
    for t in &stats.tiers {
        for family in [
            "tierpool_utilisation",
            "tierpool_allocated_bytes_total",
            "tierpool_tasks_submitted_total",
        ] {
            assert!(
                series.contains(&format!("{family}{{tier=\"{}\"}}", t.name)),
                "{family} missing for {}",
                t.name
            );
        }
    }
    assert!(text.contains("tierpool_tasks_failed_total{tier=\"ui\"} 4\n"));
    assert!(
        text.contains("tierpool_tasks_cancelled_total{tier=\"background\",reason=\"caller\"} 1\n")
    );
    assert!(samples_of["tierpool_run_time_seconds"] >= 4 * stats.tiers.len());
    rt.shutdown(Duration::from_secs(5));
}

#[test]
fn hand_written_json_has_the_new_fields() {
    let (rt, stats) = busy_stats();
    let json = stats.to_json();
    for field in [
        "\"utilisation\":",
        "\"bytes_allocated\":",
        "\"task_bytes\":{\"count\":",
        "\"saturated_for_us\":",
        "\"events_dropped\":",
    ] {
        assert!(json.contains(field), "{field} missing in {json}");
    }
    rt.shutdown(Duration::from_secs(5));
}

#[cfg(feature = "serde")]
mod serde_json_round_trip {
    use super::*;

    #[test]
    fn stats_round_trip_through_serde_json() {
        let (rt, stats) = busy_stats();
        assert!(stats.tier("ui").unwrap().failed > 0);
        let json = serde_json::to_string(&stats).unwrap();
        let back: Stats = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stats);
        // The hand-written JSON is valid JSON too.
        let v: serde_json::Value = serde_json::from_str(&stats.to_json()).unwrap();
        assert_eq!(v["tiers"].as_array().unwrap().len(), stats.tiers.len());

        let health = rt.health();
        let back: tierpool::Health =
            serde_json::from_str(&serde_json::to_string(&health).unwrap()).unwrap();
        assert_eq!(back, health);

        let analysis = rt.analysis().stats();
        let back: tierpool::AnalysisStats =
            serde_json::from_str(&serde_json::to_string(&analysis).unwrap()).unwrap();
        assert_eq!(back, analysis);
        rt.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn an_unknown_tier_name_is_an_error_not_a_leak() {
        let (rt, stats) = busy_stats();
        let json = serde_json::to_string(&stats)
            .unwrap()
            .replace("\"name\":\"ui\"", "\"name\":\"nope\"");
        let err = serde_json::from_str::<Stats>(&json).unwrap_err();
        assert!(err.to_string().contains("unknown tier \"nope\""), "{err}");
        rt.shutdown(Duration::from_secs(5));
    }
}

#[cfg(feature = "metrics")]
mod metrics_facade {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::MetricKind;

    /// Kind, name and labels of one recorded series.
    type SeriesKey = (MetricKind, String, Vec<(String, String)>);

    #[test]
    fn every_family_reaches_the_recorder_with_its_labels() {
        let (rt, stats) = busy_stats();
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || stats.emit_metrics());
        let got: HashMap<SeriesKey, DebugValue> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _unit, _desc, value)| {
                let (kind, key) = key.into_parts();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_string(), l.value().to_string()))
                    .collect();
                ((kind, key.name().to_string(), labels), value)
            })
            .collect();
        let tier = |name: &str| vec![("tier".to_string(), name.to_string())];
        let ui = stats.tier("ui").unwrap();
        assert_eq!(
            got.get(&(
                MetricKind::Counter,
                "tierpool_tasks_submitted_total".into(),
                tier("ui")
            )),
            Some(&DebugValue::Counter(ui.submitted))
        );
        let mut cancelled = tier("background");
        cancelled.push(("reason".into(), "caller".into()));
        assert_eq!(
            got.get(&(
                MetricKind::Counter,
                "tierpool_tasks_cancelled_total".into(),
                cancelled
            )),
            Some(&DebugValue::Counter(1))
        );
        let utilisation = got
            .get(&(
                MetricKind::Gauge,
                "tierpool_utilisation".into(),
                tier("realtime"),
            ))
            .expect("utilisation gauge");
        assert!(matches!(utilisation, DebugValue::Gauge(_)));
        // Everything in the Prometheus text reaches the facade: the same
        // table feeds both, so the series counts agree.
        let prometheus_series = stats
            .to_prometheus()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count();
        assert_eq!(got.len(), prometheus_series);
        rt.shutdown(Duration::from_secs(5));
    }
}
