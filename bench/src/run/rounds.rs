//! Interleaved rounds: every contender measured in turn, again and again, each one's best run
//! kept, and the interference on the server CPU during each run.

use super::env::Env;
use super::machine::read;
use super::measure::Measure;
use std::path::Path;
use std::time::Instant;

/// CPU counters at one instant (clock ticks of 10 ms).
pub(super) struct CpuSnap {
    busy: u64,
    steal: u64,
    process: u64,
    at: Instant,
}

impl CpuSnap {
    /// From `self` to `after`: the share of the server CPU used by anything but the server, and
    /// the share stolen by the host (percent).
    pub(super) fn interference(&self, after: &CpuSnap) -> (f64, f64) {
        let wall = after.at.duration_since(self.at).as_secs_f64() * 100.0; // ticks
        let foreign = (after.busy - self.busy) as f64 - (after.process - self.process) as f64;
        let steal = (after.steal - self.steal) as f64;
        (
            (foreign / wall * 100.0).clamp(0.0, 100.0),
            (steal / wall * 100.0).clamp(0.0, 100.0),
        )
    }
}

/// One contender's HTTP load, as measured in [`Env::rounds`].
pub(super) struct Job<'a> {
    pub(super) key: &'static str,
    pub(super) addr: &'a str,
    /// The server process (pinned to the server CPU) whose CPU time is not interference.
    pub(super) pid: Option<u32>,
    pub(super) path: &'a str,
    pub(super) headers: &'a [String],
    pub(super) status: u16,
    /// Paced load (requests per second per client) measured with `http-load`; `None`: wrk at
    /// full speed.
    pub(super) rate: Option<f64>,
    pub(super) body: Option<&'a Path>,
}

impl Env {
    /// Measures every job `plan.rounds` times, interleaved (job 1, 2, .. then again), so slow
    /// drifts on a shared machine hit every contender alike; each job's best run is kept (the least
    /// disturbed), with every round's figures and their medians.
    pub(super) fn rounds(&self, jobs: &[Job]) -> Result<Vec<Measure>, String> {
        let mut all: Vec<Vec<Measure>> = vec![Vec::new(); jobs.len()];
        for round in 0..self.plan.rounds.max(1) {
            for (i, j) in jobs.iter().enumerate() {
                let before = self.cpu_snapshot(j.pid);
                let mut m = match j.rate {
                    Some(rate) => {
                        self.paced_load(j.addr, j.path, rate, self.plan.http_s, j.body)?
                    }
                    None => self.http_load(
                        j.addr,
                        j.path,
                        j.headers,
                        self.plan.http_s,
                        j.status,
                        j.body,
                    )?,
                };
                if let (Some(b), Some(a)) = (before, self.cpu_snapshot(j.pid)) {
                    let (foreign, steal) = b.interference(&a);
                    m.foreign_cpu_pct = Some(foreign);
                    m.steal_pct = Some(steal);
                }
                eprintln!(
                    "  round {}: {}: {:.0} req/s p50 {:.3} ms p99 {:.3} ms; other load on the server CPU {}",
                    round + 1,
                    j.key,
                    m.rps,
                    m.p50_ms,
                    m.p99_ms,
                    m.foreign_cpu_pct.map(|x| format!("{x:.0}%")).unwrap_or_else(|| "-".into())
                );
                all[i].push(m);
            }
        }
        Ok(all
            .into_iter()
            .zip(jobs)
            .map(|(mut runs, j)| {
                let rps: Vec<f64> = runs.iter().map(|m| m.rps).collect();
                let p99s: Vec<f64> = runs.iter().map(|m| m.p99_ms).collect();
                let mut sorted = p99s.clone();
                sorted.sort_by(f64::total_cmp);
                let p99_median = sorted[sorted.len() / 2];
                if j.rate.is_some() {
                    // Paced: the same req/s each time; the least disturbed run has the lowest p99.
                    runs.sort_by(|a, b| b.p99_ms.total_cmp(&a.p99_ms));
                } else {
                    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
                }
                // Other tenants' load only ever slows a run down: the best run is the least
                // disturbed one. The median is kept in the JSON too.
                let median = runs[runs.len() / 2].rps;
                let mut m = runs.pop().expect("at least one round");
                m.rounds = rps;
                m.rps_median = median;
                m.p99_rounds = p99s;
                m.p99_median_ms = p99_median;
                m
            })
            .collect())
    }

    pub(super) fn rounds_note(&self) -> String {
        let mut n = if self.plan.rounds > 1 {
            format!(
                "Each contender was measured {} times, interleaved (contender A, B, C, .. then again); the table \
                 shows each one's best run, the least disturbed by other load on the machine (every run's req/s \
                 and p99 and their medians are in results.json). A throughput target is the median of the \
                 rounds' paired ratios (two contenders measured back to back in the same round, so a slow \
                 spell of the shared machine hits both); the ratio of the best runs is shown beside it. A tail \
                 ratio in the targets compares the medians of the rounds' p99s: one disturbed round can triple \
                 a p99 without touching the req/s.",
                self.plan.rounds
            )
        } else {
            "One run per contender.".to_string()
        };
        if self.server_cpu.is_some() {
            n.push_str(
                " \"Other load\" is the share of the server's CPU used by anything but the server during that \
                 run (from /proc/stat; \"-\" when the server is not on that CPU).",
            );
        }
        n
    }

    /// CPU ticks on the server CPU (busy and stolen) and used by `pid`, for interference figures.
    pub(super) fn cpu_snapshot(&self, pid: Option<u32>) -> Option<CpuSnap> {
        let cpu = self.server_cpu.as_deref()?;
        let pid = pid?;
        let stat = read("/proc/stat");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&format!("cpu{cpu}")))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let busy = f.first()? + f.get(1)? + f.get(2)?;
        let steal = *f.get(7)?;
        let pstat = read(&format!("/proc/{pid}/stat"));
        let rest = pstat.rsplit_once(')')?.1;
        let pf: Vec<&str> = rest.split_whitespace().collect();
        let process = pf.get(11)?.parse::<u64>().ok()? + pf.get(12)?.parse::<u64>().ok()?;
        Some(CpuSnap {
            busy,
            steal,
            process,
            at: Instant::now(),
        })
    }
}
