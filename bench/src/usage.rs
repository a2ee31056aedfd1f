//! What a process used, read from /proc: its on-CPU time to the nanosecond (the scheduler's own
//! account, `schedstat`, summed over its threads; CPU ticks are too coarse for short runs of a
//! half-idle server) and how often its threads went to sleep.

/// One process's counters at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) cpu_ns: u64,
    /// Voluntary context switches: each one a wait for something (I/O, a timer).
    pub(crate) sleeps: u64,
}

impl Usage {
    /// The counters of `pid` and its threads now; `None` when it is gone or /proc lacks them.
    pub(crate) fn of(pid: u32) -> Option<Usage> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut u = Usage {
            cpu_ns: 0,
            sleeps: 0,
        };
        // A thread may end between the listing and its read: it is skipped, not the process.
        for t in tasks.flatten() {
            let dir = t.path();
            let Some((cpu, sleeps)) = thread_usage(&dir) else {
                continue;
            };
            u.cpu_ns += cpu;
            u.sleeps += sleeps;
        }
        Some(u)
    }

    /// Per unit of work since `before`: CPU microseconds and sleeps.
    pub(crate) fn per(&self, before: &Usage, units: f64) -> (f64, f64) {
        let cpu = self.cpu_ns.saturating_sub(before.cpu_ns) as f64 / 1e3;
        let sleeps = self.sleeps.saturating_sub(before.sleeps) as f64;
        (cpu / units, sleeps / units)
    }
}

/// One thread's on-CPU nanoseconds and voluntary context switches.
fn thread_usage(dir: &std::path::Path) -> Option<(u64, u64)> {
    let sched = std::fs::read_to_string(dir.join("schedstat")).ok()?;
    let cpu = sched.split_whitespace().next()?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let sleeps = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    Some((cpu, sleeps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_counts_per_unit() {
        let a = Usage::of(std::process::id()).expect("/proc/self");
        // A running thread's `schedstat` moves at the scheduler's ticks, not at each read, so
        // the test works until the account moves (bounded), rather than for a fixed count
        // that an optimised build finishes between two ticks.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        let b = loop {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_add(i.wrapping_mul(i)));
            }
            let b = Usage::of(std::process::id()).unwrap();
            if b.cpu_ns > a.cpu_ns || std::time::Instant::now() > deadline {
                break b;
            }
        };
        assert!(b.cpu_ns > a.cpu_ns, "{a:?} {b:?}");
        let (cpu, _) = b.per(&a, 2.0);
        assert!(cpu > 0.0);
    }
}
