//! Report pieces: latency summaries and markdown tables.

use std::fmt::Write as _;
use std::time::Duration;

/// Percentiles of a latency sample (nearest rank, exact: samples are kept).
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        let mut v = samples.to_vec();
        v.sort_unstable();
        let at = |q: f64| {
            if v.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Summary {
            count: v.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: v.last().copied().unwrap_or_default(),
        }
    }
}

/// Milliseconds with two decimals (latencies from 50 µs to 100 ms+).
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// A markdown table built row by row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        };
        line(&mut out, &self.header);
        let rule: Vec<String> = self.header.iter().map(|_| "---".to_string()).collect();
        line(&mut out, &rule);
        for r in &self.rows {
            line(&mut out, r);
        }
        out
    }
}
