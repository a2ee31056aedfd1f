//! Latency summaries.

use serde_json::{json, Value};

/// Percentiles of samples in microseconds, reported in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The nearest-rank percentile `p` (0..=100) of sorted samples.
fn rank(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[idx.clamp(1, sorted.len()) - 1]
}

pub fn summarize(mut micros: Vec<u64>) -> Summary {
    micros.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let count = micros.len();
    let mean = if count == 0 {
        0.0
    } else {
        micros.iter().sum::<u64>() as f64 / count as f64 / 1000.0
    };
    Summary {
        count,
        p50_ms: ms(rank(&micros, 50.0)),
        p90_ms: ms(rank(&micros, 90.0)),
        p99_ms: ms(rank(&micros, 99.0)),
        max_ms: ms(micros.last().copied().unwrap_or(0)),
        mean_ms: mean,
    }
}

impl Summary {
    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50_ms": round3(self.p50_ms),
            "p90_ms": round3(self.p90_ms),
            "p99_ms": round3(self.p99_ms),
            "max_ms": round3(self.max_ms),
            "mean_ms": round3(self.mean_ms),
        })
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s = summarize((1..=100).map(|i| i * 1000).collect());
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(summarize(vec![]).p99_ms, 0.0);
        assert_eq!(summarize(vec![7000]).p50_ms, 7.0);
    }
}
