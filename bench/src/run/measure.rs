//! One HTTP load measurement, its JSON and its table row.

use crate::report::fmt;
use serde_json::{json, Value};

/// One HTTP load measurement.
#[derive(Debug, Clone)]
pub(super) struct Measure {
    pub(super) tool: &'static str,
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) bytes_per_response: u64,
    /// req/s of every round, when measured in rounds, and their median.
    pub(super) rounds: Vec<f64>,
    pub(super) rps_median: f64,
    /// p99 of every round and their median: one disturbed round can triple a tail, so tail
    /// ratios use the median.
    pub(super) p99_rounds: Vec<f64>,
    pub(super) p99_median_ms: f64,
    /// Share of the server's CPU used by other processes during the run, and stolen by the host.
    pub(super) foreign_cpu_pct: Option<f64>,
    pub(super) steal_pct: Option<f64>,
}

impl Measure {
    /// A measurement from the JSON report of the `http-load` client.
    pub(super) fn from_http_load(v: &Value, bytes_per_response: u64) -> Measure {
        let errors = v["errors"].as_u64().unwrap_or(0)
            + v["bad_status"].as_u64().unwrap_or(0)
            + v["bad_body"].as_u64().unwrap_or(0);
        Measure {
            tool: "http-load",
            rps: v["rps"].as_f64().unwrap_or(0.0),
            p50_ms: v["latency"]["p50_ms"].as_f64().unwrap_or(0.0),
            p99_ms: v["latency"]["p99_ms"].as_f64().unwrap_or(0.0),
            requests: v["requests"].as_u64().unwrap_or(0),
            errors,
            bytes_per_response,
            rounds: Vec::new(),
            rps_median: 0.0,
            p99_rounds: Vec::new(),
            p99_median_ms: 0.0,
            foreign_cpu_pct: None,
            steal_pct: None,
        }
    }

    /// The median p99 over the rounds (the run's own p99 when measured once).
    pub(super) fn p99_typical(&self) -> f64 {
        if self.p99_rounds.is_empty() {
            self.p99_ms
        } else {
            self.p99_median_ms
        }
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "tool": self.tool,
            "rps": (self.rps * 10.0).round() / 10.0,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "requests": self.requests,
            "errors": self.errors,
            "bytes_per_response": self.bytes_per_response,
            "rps_rounds": self.rounds,
            "rps_median": (if self.rounds.is_empty() { self.rps } else { self.rps_median } * 10.0).round() / 10.0,
            "p99_rounds_ms": self.p99_rounds,
            "p99_median_ms": self.p99_typical(),
            "other_load_on_server_cpu_pct": self.foreign_cpu_pct.map(|x| x.round()),
            "steal_on_server_cpu_pct": self.steal_pct.map(|x| x.round()),
        })
    }

    pub(super) fn row(&self, name: &str, extra: &str) -> Vec<String> {
        vec![
            name.to_string(),
            fmt(self.rps, 0),
            fmt(self.p50_ms, 3),
            fmt(self.p99_ms, 3),
            self.bytes_per_response.to_string(),
            self.errors.to_string(),
            self.foreign_cpu_pct
                .map(|x| format!("{x:.0}%"))
                .unwrap_or_else(|| "-".into()),
            extra.to_string(),
        ]
    }
}

/// The columns of [`Measure::row`].
pub(super) const HTTP_COLUMNS: &[&str] = &[
    "Contender",
    "req/s",
    "p50 ms",
    "p99 ms",
    "bytes/response",
    "errors",
    "other load",
    "vs pollgate",
];

/// A throughput ratio that a shared machine's load does not decide: the median over the rounds
/// of `a`'s req/s over `b`'s in the same round (measured back to back, so a slow spell of the
/// machine hits both), with every round's ratio. Without rounds: the ratio of the two runs.
pub(super) fn paired_ratio(a: &Measure, b: &Measure) -> (f64, Vec<f64>) {
    let each: Vec<f64> = a
        .rounds
        .iter()
        .zip(&b.rounds)
        .map(|(x, y)| ratio(*x, *y))
        .collect();
    if each.is_empty() {
        return (ratio(a.rps, b.rps), Vec::new());
    }
    (median(&each), each)
}

/// The median of `xs` (the mean of the two middle values for an even count; 0 for none).
pub(super) fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// How a paired ratio reads in the targets table: the median, every round, and the ratio of
/// the two best runs for context.
pub(super) fn paired_text(a: &Measure, b: &Measure) -> (f64, String) {
    let (median, each) = paired_ratio(a, b);
    if each.len() < 2 {
        return (median, format!("{median:.2}"));
    }
    let rounds: Vec<String> = each.iter().map(|r| format!("{r:.2}")).collect();
    (
        median,
        format!(
            "{median:.2} (median of rounds {}; best runs {:.2})",
            rounds.join(", "),
            ratio(a.rps, b.rps)
        ),
    )
}

pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(rounds: &[f64]) -> Measure {
        Measure {
            tool: "test",
            rps: rounds.iter().cloned().fold(0.0, f64::max),
            p50_ms: 0.0,
            p99_ms: 0.0,
            requests: 0,
            errors: 0,
            bytes_per_response: 0,
            rounds: rounds.to_vec(),
            rps_median: 0.0,
            p99_rounds: Vec::new(),
            p99_median_ms: 0.0,
            foreign_cpu_pct: None,
            steal_pct: None,
        }
    }

    #[test]
    fn paired_ratios_follow_the_rounds_not_the_best_runs() {
        // b's best run (120) was a lucky spell; round by round a is ahead in two of three.
        let (a, b) = (runs(&[100.0, 90.0, 80.0]), runs(&[120.0, 80.0, 70.0]));
        let (median, each) = paired_ratio(&a, &b);
        assert_eq!(each.len(), 3);
        assert!((median - 90.0 / 80.0).abs() < 1e-9, "{median} {each:?}");
        assert!(ratio(a.rps, b.rps) < 1.0);
        let (even, _) = paired_ratio(&runs(&[1.0, 3.0]), &runs(&[1.0, 1.0]));
        assert!((even - 2.0).abs() < 1e-9);
        assert_eq!(paired_ratio(&runs(&[]), &runs(&[])).1.len(), 0);
    }
}
