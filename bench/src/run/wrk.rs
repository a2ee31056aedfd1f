//! Reading wrk's `--latency` output.

use super::measure::Measure;

/// A wrk duration (`512.00us`, `1.23ms`, `2.00s`) in milliseconds.
fn wrk_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// The figures from `wrk --latency` output.
pub(super) fn parse_wrk(out: &str) -> Option<Measure> {
    let mut m = Measure {
        tool: "wrk",
        rps: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        requests: 0,
        errors: 0,
        bytes_per_response: 0,
        rounds: Vec::new(),
        rps_median: 0.0,
        p99_rounds: Vec::new(),
        p99_median_ms: 0.0,
        foreign_cpu_pct: None,
        steal_pct: None,
    };
    let mut have_rps = false;
    for line in out.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            m.rps = v.trim().parse().ok()?;
            have_rps = true;
        } else if let Some(v) = l.strip_prefix("50%") {
            m.p50_ms = wrk_ms(v)?;
        } else if let Some(v) = l.strip_prefix("99%") {
            m.p99_ms = wrk_ms(v)?;
        } else if l.contains(" requests in ") {
            m.requests = l.split_whitespace().next()?.parse().ok()?;
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            m.errors += v.trim().parse::<u64>().ok()?;
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            for part in v.split(',') {
                m.errors += part.split_whitespace().last()?.parse::<u64>().ok()?;
            }
        }
    }
    have_rps.then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 2s test @ http://127.0.0.1:1/\n  1 threads and 50 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.10ms  200.00us   5.00ms   90.00%\n    Req/Sec    45.00k     1.00k   47.00k    80.00%\n  Latency Distribution\n     50%  512.00us\n     75%    1.00ms\n     90%    1.50ms\n     99%    2.25ms\n  90000 requests in 2.00s, 30.00MB read\n  Non-2xx or 3xx responses: 3\n  Socket errors: connect 0, read 1, write 0, timeout 2\nRequests/sec:  45000.50\nTransfer/sec:     15.00MB\n";
        let m = parse_wrk(out).unwrap();
        assert_eq!(m.rps, 45000.5);
        assert_eq!(m.p50_ms, 0.512);
        assert_eq!(m.p99_ms, 2.25);
        assert_eq!(m.requests, 90000);
        assert_eq!(m.errors, 6);
        assert!(parse_wrk("nothing").is_none());
    }
}
