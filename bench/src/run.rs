//! `pollgate-bench run`: the orchestrator. Starts every server on loopback on free ports, runs
//! each scenario against every contender in the same run, stops what it started (by PID), and
//! writes `results.md` and `results.json`.
//!
//! CPU placement (2 cores and up, unless `--no-pin`): the server under test runs on CPU 1, the
//! load generator and the sample backend on CPU 0, so every contender gets the same single core.

mod env;
mod loadgen;
mod longpoll_runs;
mod machine;
mod measure;
mod nginx;
mod plan;
mod pollgate_config;
mod rounds;
mod s1_s2_cache_hit;
mod s3_longpoll;
mod s4_backend_load;
mod s5_websocket;
mod s6_plain_proxy;
mod s7_transports;
mod servers;
mod wrk;

use crate::client;
use crate::procs;
use crate::report::Report;
use env::Env;
use machine::{machine, read, which};
use plan::{Mode, Plan};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Shorter runs (about 5 minutes on 2 cores).
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// CI check: scenario 1 (pollgate only), a small long-poll fan-out and a few clients
    /// re-polling (latest and cursor routes), a few HTTPS cache hits and 20 EventSource streams,
    /// asserting correctness.
    #[arg(long)]
    smoke: bool,
    /// Where results.md and results.json go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The pollgate binary (default: next to this one).
    #[arg(long)]
    pollgate: Option<PathBuf>,
    #[arg(long, default_value = "nginx")]
    nginx: String,
    #[arg(long, default_value = "wrk")]
    wrk: String,
    /// Do not pin servers and load generators to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Run only these scenarios (1-7, comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// Override the measured duration of each HTTP load run (seconds).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Override the number of long-poll clients in scenario 3 (the big fan-out and every
    /// client-behaviour run).
    #[arg(long)]
    longpoll_clients: Option<usize>,
    /// Override the interleaved rounds of the long-poll fan-outs (scenario 3, 7b and 7c; each
    /// target is the median of the rounds' p99 ratios).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    longpoll_rounds: Option<u32>,
    /// Scenario 3: run only these client behaviours (keep_open, depart, repoll, cursor;
    /// comma-separated), without the 10,000-poll fan-out: a side-by-side experiment on one
    /// behaviour, pollgate and Nchan in the same rounds.
    #[arg(long, value_delimiter = ',', value_parser = ["keep_open", "depart", "repoll", "cursor"])]
    behaviours: Vec<String>,
    /// Scenario 3: run only these placements (2: two unpinned cores, 1: one pinned core).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=2))]
    cores: Vec<u32>,
    /// A top-level config line added to every pollgate the run starts, such as
    /// "work_stealing: true" (repeatable): one setting against the default, run after run.
    #[arg(long = "pollgate-set", value_name = "KEY: VALUE")]
    pollgate_set: Vec<String>,
}

/// A scenario: adds its section and targets to the report.
type ScenarioFn = fn(&Env, &mut Report) -> Result<(), String>;

pub fn main(a: RunArgs) -> ExitCode {
    procs::install_signal_handler();
    let mode = if a.smoke {
        Mode::Smoke
    } else if a.quick {
        Mode::Quick
    } else {
        Mode::Full
    };
    match run(a, mode) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pollgate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: RunArgs, mode: Mode) -> Result<ExitCode, String> {
    let started = Instant::now();
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let pollgate = match &a.pollgate {
        Some(p) => p.clone(),
        None => exe.with_file_name("pollgate"),
    };
    if !pollgate.is_file() {
        return Err(format!(
            "{} not found (build it, or pass --pollgate)",
            pollgate.display()
        ));
    }
    let nginx = which(&a.nginx);
    let nchan_module = [
        "/usr/lib/nginx/modules/ngx_nchan_module.so",
        "/usr/share/nginx/modules/ngx_nchan_module.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    let wrk = which(&a.wrk);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pin = !a.no_pin && cpus >= 2 && which("taskset").is_some();
    let dir = std::env::temp_dir().join(format!("pollgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut plan = Plan::for_mode(mode);
    if let Some(d) = a.duration_s {
        plan.http_s = d;
    }
    if let Some(c) = a.longpoll_clients {
        plan.lp_clients = c;
        plan.lp_behaviour_clients = c;
    }
    if let Some(r) = a.longpoll_rounds {
        plan.lp_rounds = r as usize;
    }
    if !a.behaviours.is_empty() {
        plan.lp_fan_out = false;
        plan.lp_behaviours = a.behaviours.clone();
    }
    if !a.cores.is_empty() {
        plan.lp_cores = a.cores.iter().map(|&c| c as usize).collect();
    }
    let root = read("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        .unwrap_or(false);
    let env = Env {
        exe,
        pollgate,
        pollgate_set: a.pollgate_set.clone(),
        nginx,
        nchan_module,
        wrk,
        dir: dir.clone(),
        server_cpu: pin.then(|| "1".to_string()),
        client_cpu: pin.then(|| "0".to_string()),
        rt: client::runtime(1)?,
        plan,
        mode,
        seq: AtomicUsize::new(0),
        root,
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut report = Report {
        mode: format!("{mode:?}").to_lowercase(),
        command,
        machine: machine(&env),
        sections: Vec::new(),
        targets: Vec::new(),
        elapsed_s: 0.0,
    };
    eprintln!(
        "pollgate-bench: {} mode; scratch {}",
        report.mode,
        dir.display()
    );
    if env.wrk.is_none() {
        eprintln!("pollgate-bench: wrk not found; HTTP load uses the built-in closed-loop client");
    }
    let want = |n: u32| a.only.is_empty() || a.only.contains(&n);
    let mut failures = Vec::new();
    let scenarios: [(u32, ScenarioFn); 6] = [
        (1, s1_s2_cache_hit::s1_s2),
        (3, s3_longpoll::s3),
        (4, s4_backend_load::s4),
        (5, s5_websocket::s5),
        (6, s6_plain_proxy::s6),
        (7, s7_transports::s7),
    ];
    for (n, f) in scenarios {
        let n_wanted = want(n) || (n == 1 && want(2));
        // Scenario 7's smoke is a small correctness check (a few HTTPS GETs, 20 SSE streams).
        if !n_wanted || (mode == Mode::Smoke && (4..7).contains(&n)) {
            continue;
        }
        let t0 = Instant::now();
        eprintln!(
            "pollgate-bench: scenario {n}{}",
            if n == 1 { " and 2" } else { "" }
        );
        if let Err(e) = f(&env, &mut report) {
            eprintln!("pollgate-bench: scenario {n} failed: {e}");
            failures.push(format!("scenario {n}: {e}"));
        }
        eprintln!(
            "pollgate-bench: scenario {n} took {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }
    report.elapsed_s = started.elapsed().as_secs_f64();

    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let md = report.markdown();
    let md_path = a.out.join("results.md");
    let json_path = a.out.join("results.json");
    std::fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let j = serde_json::to_string_pretty(&report.json()).expect("json");
    std::fs::write(&json_path, j).map_err(|e| format!("{}: {e}", json_path.display()))?;
    println!("{md}");
    eprintln!(
        "pollgate-bench: wrote {} and {} in {:.0} s",
        md_path.display(),
        json_path.display(),
        report.elapsed_s
    );
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("pollgate-bench: logs kept in {}", dir.display());
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if mode == Mode::Smoke {
        eprintln!("pollgate-bench: smoke passed");
    }
    Ok(ExitCode::SUCCESS)
}
