//! `pollgate-bench run`: the orchestrator. Starts every server on loopback on free ports, runs
//! each scenario against every contender in the same run, stops what it started (by PID), and
//! writes `results.md` and `results.json`.
//!
//! CPU placement (2 cores and up, unless `--no-pin`): the server under test runs on CPU 1, the
//! load generator and the sample backend on CPU 0, so every contender gets the same single core.

use crate::client;
use crate::procs::{self, Procs};
use crate::report::{fmt, Report, Section};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Shorter runs (under 3 minutes on 2 cores).
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// CI check: scenario 1 (pollgate only) and a small long-poll fan-out, asserting correctness.
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
    /// Run only these scenarios (1-6, comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// Override the measured duration of each HTTP load run (seconds).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Override the number of long-poll clients in scenario 3.
    #[arg(long)]
    longpoll_clients: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Smoke,
    Quick,
    Full,
}

struct Plan {
    /// Measured seconds per HTTP load run, and the warm-up before it.
    http_s: f64,
    /// Interleaved repetitions of each HTTP load run (the median is reported).
    rounds: usize,
    warmup_s: f64,
    conns: usize,
    lp_clients: usize,
    lp_topic_variants: Vec<usize>,
    s4_clients: usize,
    s4_topics: usize,
    s4_rate: f64,
    s4_s: f64,
    ws_clients: usize,
    ws_s: f64,
}

impl Plan {
    fn for_mode(m: Mode) -> Plan {
        match m {
            Mode::Full => Plan {
                http_s: 10.0,
                rounds: 3,
                warmup_s: 2.0,
                conns: 50,
                lp_clients: 10_000,
                lp_topic_variants: vec![100, 1],
                s4_clients: 1000,
                s4_topics: 10,
                s4_rate: 2.0,
                s4_s: 30.0,
                ws_clients: 20,
                ws_s: 10.0,
            },
            Mode::Quick => Plan {
                http_s: 3.0,
                rounds: 2,
                warmup_s: 1.0,
                conns: 50,
                lp_clients: 10_000,
                lp_topic_variants: vec![100, 1],
                s4_clients: 1000,
                s4_topics: 10,
                s4_rate: 2.0,
                s4_s: 8.0,
                ws_clients: 20,
                ws_s: 3.0,
            },
            Mode::Smoke => Plan {
                http_s: 2.0,
                rounds: 1,
                warmup_s: 0.0,
                conns: 20,
                lp_clients: 200,
                lp_topic_variants: vec![4],
                s4_clients: 0,
                s4_topics: 0,
                s4_rate: 0.0,
                s4_s: 0.0,
                ws_clients: 0,
                ws_s: 0.0,
            },
        }
    }
}

/// A started server.
struct Svc {
    addr: String,
    admin: Option<String>,
    pid: u32,
    /// nginx: the worker process (the one serving, whose memory counts).
    worker: Option<u32>,
}

struct Env {
    exe: PathBuf,
    pollgate: PathBuf,
    nginx: Option<PathBuf>,
    nchan_module: Option<PathBuf>,
    wrk: Option<PathBuf>,
    dir: PathBuf,
    server_cpu: Option<String>,
    client_cpu: Option<String>,
    rt: tokio::runtime::Runtime,
    plan: Plan,
    mode: Mode,
    seq: AtomicUsize,
    root: bool,
}

/// One HTTP load measurement.
#[derive(Debug, Clone)]
struct Measure {
    tool: &'static str,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
    bytes_per_response: u64,
    /// req/s of every round, when measured in rounds, and their median.
    rounds: Vec<f64>,
    rps_median: f64,
    /// p99 of every round and their median: one disturbed round can triple a tail, so tail
    /// ratios use the median.
    p99_rounds: Vec<f64>,
    p99_median_ms: f64,
    /// Share of the server's CPU used by other processes during the run, and stolen by the host.
    foreign_cpu_pct: Option<f64>,
    steal_pct: Option<f64>,
}

impl Measure {
    /// A measurement from the JSON report of the `http-load` client.
    fn from_http_load(v: &Value, bytes_per_response: u64) -> Measure {
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
    fn p99_typical(&self) -> f64 {
        if self.p99_rounds.is_empty() {
            self.p99_ms
        } else {
            self.p99_median_ms
        }
    }

    fn json(&self) -> Value {
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

    fn row(&self, name: &str, extra: &str) -> Vec<String> {
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

/// A scenario: adds its section and targets to the report.
type ScenarioFn = fn(&Env, &mut Report) -> Result<(), String>;

const HTTP_COLUMNS: &[&str] = &[
    "Contender",
    "req/s",
    "p50 ms",
    "p99 ms",
    "bytes/response",
    "errors",
    "other load",
    "vs pollgate",
];

fn which(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    text.lines().next().map(|l| l.trim().to_string())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn machine(env: &Env) -> Value {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let nofile = read("/proc/self/limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": cpu_model,
        "mem_mib": mem_kib / 1024,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "loadavg_at_start": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "nofile_soft_hard": nofile,
        "wrk": env.wrk.as_ref().and_then(|w| first_line(&w.to_string_lossy(), &["--version"])).map(|v| v.split(" Copyright").next().unwrap_or("").to_string()),
        "nginx": env.nginx.as_ref().and_then(|n| first_line(&n.to_string_lossy(), &["-v"])),
        "nchan": env.nchan_module.as_ref().map(|p| p.display().to_string()),
        "pinning": match (&env.server_cpu, &env.client_cpu) {
            (Some(s), Some(c)) => format!("servers on CPU {s}, load generators and sample backend on CPU {c}"),
            _ => "none".to_string(),
        },
    })
}

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
    }
    let root = read("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        .unwrap_or(false);
    let env = Env {
        exe,
        pollgate,
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
    let scenarios: [(u32, ScenarioFn); 5] = [(1, s1_s2), (3, s3), (4, s4), (5, s5), (6, s6)];
    for (n, f) in scenarios {
        let n_wanted = want(n) || (n == 1 && want(2));
        if !n_wanted || (mode == Mode::Smoke && n > 3) {
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

// ---------------------------------------------------------------------------------------------
// Starting servers

const PG_CONFIG: &str = r#"listen: "@LISTEN@"
metrics_listen: "@ADMIN@"
threads: 1
access_log: false
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
max_topics: 20000
max_held_polls: 20000
upstreams:
  backend:
    address: "@BACKEND@"
routes:
@POLL_ROUTE@  - name: default
    prefix: "/"
    upstream: backend
"#;

const PG_POLL_ROUTE: &str = r#"  - name: prices
    path: "/api/prices/{topic}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/prices/{topic}"
    mode: latest
    content_type: application/json
    long_poll: @LONG_POLL@
    max_wait: 120s
    first_message_wait: 2s
"#;

/// A pollgate config: the latest-mode poll route (held for `long_poll`, `None`: no poll route)
/// in front of the sample backend, plus a prefix route for everything else.
fn pollgate_config(backend: &str, long_poll: Option<&str>) -> String {
    let route = long_poll
        .map(|l| PG_POLL_ROUTE.replace("@LONG_POLL@", l))
        .unwrap_or_default();
    PG_CONFIG
        .replace("@BACKEND@", backend)
        .replace("@POLL_ROUTE@", &route)
}

impl Env {
    fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.seq.fetch_add(1, Ordering::Relaxed))
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn start_backend(
        &self,
        p: &mut Procs,
        topics: &[String],
        period_ms: u64,
    ) -> Result<Svc, String> {
        let addr = procs::free_addr()?;
        let mut cmd = procs::command(&self.pollgate, self.client_cpu.as_deref());
        cmd.args([
            "sample-backend",
            "--listen",
            &addr,
            "--period-ms",
            &period_ms.to_string(),
        ]);
        if !topics.is_empty() {
            cmd.arg("--topics").arg(topics.join(","));
        }
        cmd.env("RUST_LOG", "warn");
        let pid = p.spawn(&self.name("backend"), cmd)?;
        if !procs::wait_tcp(&addr, Duration::from_secs(20)) {
            return Err(format!(
                "the sample backend did not start on {addr}\n{}",
                p.log_tail(pid)
            ));
        }
        Ok(Svc {
            addr,
            admin: None,
            pid,
            worker: None,
        })
    }

    fn start_pollgate(&self, p: &mut Procs, config: &str) -> Result<Svc, String> {
        self.start_pollgate_on(p, config, self.server_cpu.as_deref())
    }

    /// [`Self::start_pollgate`] pinned to `cpu` (`None`: free to use every core).
    fn start_pollgate_on(
        &self,
        p: &mut Procs,
        config: &str,
        cpu: Option<&str>,
    ) -> Result<Svc, String> {
        let addr = procs::free_addr()?;
        let admin = procs::free_addr()?;
        let name = self.name("pollgate");
        let path = self.dir.join(format!("{name}.yaml"));
        let text = config.replace("@LISTEN@", &addr).replace("@ADMIN@", &admin);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut cmd = procs::command(&self.pollgate, cpu);
        cmd.arg("-c").arg(&path).env("RUST_LOG", "warn");
        let pid = p.spawn(&name, cmd)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if p.exited(pid) {
                return Err(format!("pollgate exited at start\n{}", p.log_tail(pid)));
            }
            let r = self.block(client::get(&admin, "/readyz", Duration::from_secs(2)));
            if r.is_ok_and(|r| r.status == 200) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("pollgate not ready in 30 s\n{}", p.log_tail(pid)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Svc {
            addr,
            admin: Some(admin),
            pid,
            worker: None,
        })
    }

    fn start_bare(&self, p: &mut Procs, body_file: &Path) -> Result<Svc, String> {
        let addr = procs::free_addr()?;
        let mut cmd = procs::command(&self.exe, self.server_cpu.as_deref());
        cmd.args([
            "bare-pingora",
            "--listen",
            &addr,
            "--threads",
            "1",
            "--body-file",
        ])
        .arg(body_file);
        let pid = p.spawn(&self.name("bare-pingora"), cmd)?;
        if !procs::wait_tcp(&addr, Duration::from_secs(20)) {
            return Err(format!(
                "bare pingora did not start on {addr}\n{}",
                p.log_tail(pid)
            ));
        }
        Ok(Svc {
            addr,
            admin: None,
            pid,
            worker: None,
        })
    }

    /// nginx in the foreground with its own prefix and config in the scratch directory.
    fn start_nginx(&self, p: &mut Procs, server_block: &str, nchan: bool) -> Result<Svc, String> {
        self.start_nginx_on(p, server_block, nchan, 1, self.server_cpu.as_deref())
    }

    /// [`Self::start_nginx`] with `workers` worker processes pinned to `cpu` (`None`: free).
    fn start_nginx_on(
        &self,
        p: &mut Procs,
        server_block: &str,
        nchan: bool,
        workers: usize,
        cpu: Option<&str>,
    ) -> Result<Svc, String> {
        let nginx = self.nginx.as_ref().ok_or("nginx is not installed")?;
        let addr = procs::free_addr()?;
        let name = self.name("nginx");
        let prefix = self.dir.join(&name);
        std::fs::create_dir_all(prefix.join("logs")).map_err(|e| e.to_string())?;
        let d = prefix.display();
        let load = match (nchan, &self.nchan_module) {
            (true, Some(m)) => format!("load_module {};", m.display()),
            (true, None) => return Err("the Nchan module is not installed".into()),
            _ => String::new(),
        };
        let user = if self.root { "user root;" } else { "" };
        let conf = format!(
            r#"{user}
worker_processes {workers};
worker_rlimit_nofile 20000;
error_log {d}/logs/error.log warn;
pid {d}/nginx.pid;
{load}
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp_body;
  proxy_temp_path {d}/tmp_proxy;
  fastcgi_temp_path {d}/tmp_fastcgi;
  uwsgi_temp_path {d}/tmp_uwsgi;
  scgi_temp_path {d}/tmp_scgi;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
{block}
}}
"#,
            block = server_block.replace("@LISTEN@", &addr)
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let mut cmd = procs::command(nginx, cpu);
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"]);
        let pid = p.spawn(&name, cmd)?;
        if !procs::wait_tcp(&addr, Duration::from_secs(20)) {
            return Err(format!(
                "nginx did not start on {addr}\n{}",
                p.log_tail(pid)
            ));
        }
        let mut worker = None;
        for _ in 0..100 {
            worker = procs::children_of(pid).into_iter().min();
            if worker.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Svc {
            addr,
            admin: None,
            pid,
            worker,
        })
    }

    /// Runs a load client (this binary's subcommand) on the client CPU; its JSON result.
    fn client(&self, sub: &str, args: &[String], limit: Duration) -> Result<Value, String> {
        let name = self.name(sub);
        let out_path = self.dir.join(format!("{name}.out"));
        let err_path = self.dir.join(format!("{name}.err"));
        let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
        let err = std::fs::File::create(&err_path).map_err(|e| e.to_string())?;
        let mut cmd = procs::command(&self.exe, self.client_cpu.as_deref());
        cmd.arg(sub)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        run_bounded(cmd, limit, sub)?;
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        let last = text.lines().last().unwrap_or("");
        let v: Value = serde_json::from_str(last).map_err(|_| {
            format!(
                "{sub} printed no result: {}{}",
                text,
                std::fs::read_to_string(&err_path).unwrap_or_default()
            )
        })?;
        if let Some(e) = v.get("error") {
            return Err(format!("{sub}: {e}"));
        }
        Ok(v)
    }

    /// Closed-loop HTTP load on one URL: wrk (`-t1`) when installed, else `http-load`.
    fn http_load(
        &self,
        addr: &str,
        path: &str,
        headers: &[String],
        secs: f64,
        expect_status: u16,
        expect_body: Option<&Path>,
    ) -> Result<Measure, String> {
        // One checked request first: the right status and body, and its size on the wire.
        let hdrs = client::parse_headers(headers)?;
        let check = self.block(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                let mut c = client::Conn::connect(addr).await?;
                c.request(&client::get_request(addr, path, &hdrs)).await
            })
            .await
        });
        let r = match check {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("GET http://{addr}{path}: {e}")),
            Err(_) => return Err(format!("GET http://{addr}{path} timed out")),
        };
        if r.status != expect_status {
            return Err(format!(
                "GET http://{addr}{path}: status {} (expected {expect_status}): {}",
                r.status,
                r.text()
            ));
        }
        if let Some(b) = expect_body {
            let want = std::fs::read(b).map_err(|e| e.to_string())?;
            if want != r.body {
                return Err(format!(
                    "GET http://{addr}{path}: body differs: {}",
                    r.text()
                ));
            }
        }
        let wire = r.wire_len as u64;
        let conns = self.plan.conns;
        if let Some(wrk) = &self.wrk {
            let run = |secs: f64| -> Result<Measure, String> {
                let mut cmd = procs::command(wrk, self.client_cpu.as_deref());
                cmd.args([
                    "-t1",
                    &format!("-c{conns}"),
                    &format!("-d{}s", secs.ceil().max(1.0) as u64),
                    "--timeout",
                    "5s",
                    "--latency",
                ]);
                for h in headers {
                    cmd.arg("-H").arg(h);
                }
                cmd.arg(format!("http://{addr}{path}"));
                let out = output_bounded(cmd, Duration::from_secs_f64(secs + 30.0), "wrk")?;
                let mut m =
                    parse_wrk(&out).ok_or_else(|| format!("cannot read wrk's output:\n{out}"))?;
                m.bytes_per_response = wire;
                Ok(m)
            };
            if self.plan.warmup_s > 0.0 {
                run(self.plan.warmup_s)?;
            }
            return run(secs);
        }
        let mut args: Vec<String> = vec![
            "--target".into(),
            addr.into(),
            "--path".into(),
            path.into(),
            "--clients".into(),
            conns.to_string(),
            "--duration-s".into(),
            secs.to_string(),
            "--expect-status".into(),
            expect_status.to_string(),
        ];
        for h in headers {
            args.push("--header".into());
            args.push(h.clone());
        }
        if let Some(b) = expect_body {
            args.push("--expect-body-file".into());
            args.push(b.display().to_string());
        }
        let v = self.client("http-load", &args, Duration::from_secs_f64(secs + 60.0))?;
        Ok(Measure::from_http_load(&v, wire))
    }
}

/// CPU counters at one instant (clock ticks of 10 ms).
struct CpuSnap {
    busy: u64,
    steal: u64,
    process: u64,
    at: Instant,
}

/// One contender's HTTP load, as measured in [`Env::rounds`].
struct Job<'a> {
    key: &'static str,
    addr: &'a str,
    /// The server process (pinned to the server CPU) whose CPU time is not interference.
    pid: Option<u32>,
    path: &'a str,
    headers: &'a [String],
    status: u16,
    /// Paced load (requests per second per client) measured with `http-load`; `None`: wrk at
    /// full speed.
    rate: Option<f64>,
    body: Option<&'a Path>,
}

impl Env {
    /// Measures every job `plan.rounds` times, interleaved (job 1, 2, .. then again), so slow
    /// drifts on a shared machine hit every contender alike; each job's median-rps run is kept.
    fn rounds(&self, jobs: &[Job]) -> Result<Vec<Measure>, String> {
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
                    let wall = a.at.duration_since(b.at).as_secs_f64() * 100.0; // ticks
                    let foreign = (a.busy - b.busy) as f64 - (a.process - b.process) as f64;
                    m.foreign_cpu_pct = Some((foreign / wall * 100.0).clamp(0.0, 100.0));
                    m.steal_pct =
                        Some(((a.steal - b.steal) as f64 / wall * 100.0).clamp(0.0, 100.0));
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

    fn rounds_note(&self) -> String {
        let mut n = if self.plan.rounds > 1 {
            format!(
                "Each contender was measured {} times, interleaved (contender A, B, C, .. then again); the table \
                 shows each one's best run, the least disturbed by other load on the machine (every run's req/s \
                 and p99 and their medians are in results.json). A tail ratio in the targets compares the \
                 medians of the rounds' p99s: one disturbed round can triple a p99 without touching the req/s.",
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
    fn cpu_snapshot(&self, pid: Option<u32>) -> Option<CpuSnap> {
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

impl Env {
    /// Paced keep-alive load (`http-load --rate`): `conns` clients at `rate` requests/s each, so
    /// every contender serves the same request rate and latencies compare at equal load.
    fn paced_load(
        &self,
        addr: &str,
        path: &str,
        rate: f64,
        secs: f64,
        expect_body: Option<&Path>,
    ) -> Result<Measure, String> {
        let mut args: Vec<String> = vec![
            "--target".into(),
            addr.into(),
            "--path".into(),
            path.into(),
            "--clients".into(),
            self.plan.conns.to_string(),
            "--rate".into(),
            rate.to_string(),
            "--duration-s".into(),
            secs.to_string(),
            "--expect-status".into(),
            "200".into(),
        ];
        if let Some(b) = expect_body {
            args.push("--expect-body-file".into());
            args.push(b.display().to_string());
        }
        let v = self.client("http-load", &args, Duration::from_secs_f64(secs + 60.0))?;
        let wire = v["bytes_per_response"].as_u64().unwrap_or(0);
        Ok(Measure::from_http_load(&v, wire))
    }
}

/// Runs `cmd` to completion within `limit` (killed past it).
fn run_bounded(mut cmd: Command, limit: Duration, what: &str) -> Result<(), String> {
    let mut child = procs::spawn_tracked(&mut cmd).map_err(|e| format!("{what}: {e}"))?;
    let pid = child.id();
    let deadline = Instant::now() + limit;
    let r = loop {
        match child.try_wait() {
            Ok(Some(_)) => break Ok(()),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("{what} did not finish in {} s", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("{what}: {e}")),
        }
    };
    procs::untrack(pid);
    r
}

fn output_bounded(mut cmd: Command, limit: Duration, what: &str) -> Result<String, String> {
    let tmp =
        std::env::temp_dir().join(format!("pollgate-bench-{}-{what}.out", std::process::id()));
    let f = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
    let r = run_bounded(cmd, limit, what);
    let text = std::fs::read_to_string(&tmp).unwrap_or_default();
    let _ = std::fs::remove_file(&tmp);
    r.map(|_| text)
}

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
fn parse_wrk(out: &str) -> Option<Measure> {
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

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Requests per second per client in the equal-load latency runs (times `conns` clients).
const PACED_RATE: f64 = 400.0;

/// A price tick of a realistic size: the payload every cache-hit contender answers.
const TICK: &str = r#"{"symbol":"BENCH-USD","price":101.25,"bid":101.24,"ask":101.26,"volume":12345.678,"change_24h":-0.0123,"tick":1}"#;

/// Scenarios 1 and 2: cache-hit short polls and conditional polls.
fn s1_s2(env: &Env, report: &mut Report) -> Result<(), String> {
    let mut sec = Section::new("s1_cache_hit", "1. Cache-hit short polls", HTTP_COLUMNS);
    let mut sec2 = Section::new(
        "s2_conditional",
        "2. Conditional polls (If-None-Match, 304)",
        HTTP_COLUMNS,
    );
    let mut sec1b = Section::new(
        "s1_equal_load",
        "1b. Cache-hit latency at an equal load",
        HTTP_COLUMNS,
    );
    let r = s1_s2_inner(env, report, &mut sec, &mut sec1b, &mut sec2);
    if let Err(e) = &r {
        sec.error = Some(e.clone());
    }
    report.sections.push(sec);
    if !sec1b.rows.is_empty() {
        report.sections.push(sec1b);
    }
    if !sec2.rows.is_empty() || env.mode != Mode::Smoke {
        report.sections.push(sec2);
    }
    r
}

fn s1_s2_inner(
    env: &Env,
    report: &mut Report,
    sec: &mut Section,
    sec1b: &mut Section,
    sec2: &mut Section,
) -> Result<(), String> {
    let plan = &env.plan;
    let mut p = Procs::new(&env.dir);
    let backend = env.start_backend(&mut p, &[], 3_600_000)?;
    let r = env
        .block(client::post(
            &backend.addr,
            "/publish/bench",
            TICK.as_bytes(),
            Duration::from_secs(5),
        ))
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("publish: {}", r.status));
    }
    let direct = env
        .block(client::get(
            &backend.addr,
            "/api/prices/bench",
            Duration::from_secs(5),
        ))
        .map_err(|e| e.to_string())?;
    let body_file = env.dir.join("s1-body.json");
    std::fs::write(&body_file, &direct.body).map_err(|e| e.to_string())?;
    let backend_etag = direct.header("etag").unwrap_or("\"1\"").to_string();

    let gw = env.start_pollgate(&mut p, &pollgate_config(&backend.addr, Some("0s")))?;
    // Warm the topic: the first poll subscribes; answers come from cache once a message is in.
    let path = "/api/prices/bench";
    let deadline = Instant::now() + Duration::from_secs(10);
    let etag = loop {
        let r = env.block(client::get(&gw.addr, path, Duration::from_secs(5)));
        if let Ok(r) = &r {
            if r.status == 200 && r.body == direct.body {
                if let Some(e) = r.header("etag") {
                    // Served from cache once the hit counter moves; one more poll settles it.
                    break e.to_string();
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("pollgate never answered {path} from cache: {r:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    sec.notes.push(format!(
        "wrk -t1 -c{} -d{}s against each contender on one core; body: the same {} bytes of JSON from every contender. \
         pollgate: `threads: 1`, `access_log: false`, latest-mode route, topic warmed first. bare pingora: \
         `pollgate-bench bare-pingora` (request_filter writes the body, one thread). nginx: `return 200` from memory, \
         worker_processes 1, access_log off. sample backend: the same poll answered by the backend itself.",
        plan.conns, plan.http_s, direct.body.len()
    ));

    let secs = plan.http_s;
    let m_pg = env.http_load(&gw.addr, path, &[], secs, 200, Some(&body_file))?;
    eprintln!(
        "  pollgate cache hit: {:.0} req/s p99 {:.3} ms",
        m_pg.rps, m_pg.p99_ms
    );
    if env.mode == Mode::Smoke {
        // Correctness with our own checking client, whatever generated the load above.
        let v = env.client(
            "http-load",
            &[
                "--target".into(),
                gw.addr.clone(),
                "--path".into(),
                path.into(),
                "--clients".into(),
                "10".into(),
                "--duration-s".into(),
                "1".into(),
                "--expect-status".into(),
                "200".into(),
                "--expect-body-file".into(),
                body_file.display().to_string(),
            ],
            Duration::from_secs(60),
        )?;
        let bad = v["errors"].as_u64().unwrap_or(1)
            + v["bad_status"].as_u64().unwrap_or(1)
            + v["bad_body"].as_u64().unwrap_or(1);
        if bad > 0 || v["ok"].as_u64().unwrap_or(0) == 0 || m_pg.errors > 0 {
            return Err(format!(
                "cache-hit polls failed checks: load errors {}, checked client {v}",
                m_pg.errors
            ));
        }
        let hdr = format!("If-None-Match: {etag}");
        let m304 = env.http_load(&gw.addr, path, std::slice::from_ref(&hdr), 1.0, 304, None)?;
        if m304.errors > 0 || m304.requests == 0 {
            return Err(format!("conditional polls failed: {m304:?}"));
        }
        sec.rows.push(m_pg.row("pollgate (cache hit)", "1.00"));
        sec.data = json!({ "pollgate": m_pg.json(), "checked": v });
        sec2.rows
            .push(m304.row("pollgate (304)", &fmt(ratio(m304.rps, m_pg.rps), 2)));
        sec2.data = json!({ "pollgate_304": m304.json() });
        return Ok(());
    }

    let bare = env.start_bare(&mut p, &body_file)?;
    let ngx = if env.nginx.is_some() {
        let body = String::from_utf8_lossy(&direct.body)
            .replace('\\', "\\\\")
            .replace('\'', "\\'");
        let block = format!(
            r#"  server {{
    listen @LISTEN@;
    location / {{
      default_type application/json;
      add_header Cache-Control no-cache;
      add_header ETag '{etag}';
      add_header Age 0;
      return 200 '{body}';
    }}
  }}"#
        );
        Some(env.start_nginx(&mut p, &block, false)?)
    } else {
        sec.notes
            .push("nginx is not installed: no nginx row.".into());
        None
    };
    let inm = vec![format!("If-None-Match: {etag}")];
    let backend_inm = vec![format!("If-None-Match: {backend_etag}")];
    let body = Some(body_file.as_path());
    let mut jobs = vec![
        Job {
            key: "pollgate",
            addr: &gw.addr,
            pid: Some(gw.pid),
            path,
            headers: &[],
            status: 200,
            rate: None,
            body,
        },
        Job {
            key: "bare_pingora",
            addr: &bare.addr,
            pid: Some(bare.pid),
            path: "/",
            headers: &[],
            status: 200,
            rate: None,
            body,
        },
        Job {
            key: "sample_backend",
            addr: &backend.addr,
            pid: None,
            path,
            headers: &[],
            status: 200,
            rate: None,
            body,
        },
        Job {
            key: "pollgate_304",
            addr: &gw.addr,
            pid: Some(gw.pid),
            path,
            headers: &inm,
            status: 304,
            rate: None,
            body: None,
        },
        Job {
            key: "sample_backend_304",
            addr: &backend.addr,
            pid: None,
            path,
            headers: &backend_inm,
            status: 304,
            rate: None,
            body: None,
        },
    ];
    if let Some(n) = &ngx {
        jobs.insert(
            2,
            Job {
                key: "nginx",
                addr: &n.addr,
                pid: n.worker.or(Some(n.pid)),
                path,
                headers: &[],
                status: 200,
                rate: None,
                body,
            },
        );
    }
    // The same contenders at the same paced request rate, so their latencies compare at equal
    // load (wrk's closed loop compares them each at its own saturation).
    let mut paced = vec![
        Job {
            key: "pollgate_paced",
            addr: &gw.addr,
            pid: Some(gw.pid),
            path,
            headers: &[],
            status: 200,
            rate: Some(PACED_RATE),
            body,
        },
        Job {
            key: "bare_pingora_paced",
            addr: &bare.addr,
            pid: Some(bare.pid),
            path: "/",
            headers: &[],
            status: 200,
            rate: Some(PACED_RATE),
            body,
        },
    ];
    if let Some(n) = &ngx {
        paced.push(Job {
            key: "nginx_paced",
            addr: &n.addr,
            pid: n.worker.or(Some(n.pid)),
            path,
            headers: &[],
            status: 200,
            rate: Some(PACED_RATE),
            body,
        });
    }
    jobs.extend(paced);
    let ms = env.rounds(&jobs)?;
    let get = |k: &str| jobs.iter().position(|j| j.key == k).map(|i| ms[i].clone());
    let m_pg = get("pollgate").expect("pollgate measured");
    let m_bare = get("bare_pingora").expect("bare measured");
    let pg_paced = get("pollgate_paced").expect("paced measured");
    let total_rate = PACED_RATE * plan.conns as f64;
    sec1b.notes.push(format!(
        "The same cache-hit poll at a fixed {total_rate:.0} req/s ({} keep-alive clients at {PACED_RATE:.0} req/s \
         each, `pollgate-bench http-load --rate`), so every contender serves the same load and the latencies \
         compare like for like. \"vs pollgate\" here is pollgate's p99 divided by the contender's.",
        plan.conns
    ));
    sec1b
        .rows
        .push(pg_paced.row("pollgate (cache hit)", "1.00"));
    let mut paced_data = json!({ "rate_total": total_rate, "pollgate": pg_paced.json() });
    for (k, name) in [
        ("bare_pingora_paced", "bare pingora"),
        ("nginx_paced", "nginx `return 200`"),
    ] {
        if let Some(m) = get(k) {
            sec1b
                .rows
                .push(m.row(name, &fmt(ratio(pg_paced.p99_ms, m.p99_ms), 2)));
            paced_data[k.trim_end_matches("_paced")] = m.json();
        }
    }
    if let Some(m) = get("nginx_paced") {
        let q = ratio(pg_paced.p99_ms, m.p99_ms);
        report.target(
            "1b",
            &format!("p99 pollgate / nginx at an equal {total_rate:.0} req/s"),
            "<= 1.5",
            format!("{q:.2} ({:.3} vs {:.3} ms)", pg_paced.p99_ms, m.p99_ms),
            Some(q),
            Some(q <= 1.5),
        );
    }
    sec1b.data = paced_data;
    let m_nginx = get("nginx");
    let m_direct = get("sample_backend").expect("backend measured");
    let m304 = get("pollgate_304").expect("304 measured");
    let b304 = get("sample_backend_304").expect("backend 304 measured");

    sec.rows.push(m_pg.row("pollgate (cache hit)", "1.00"));
    sec.rows.push(m_bare.row(
        "bare pingora (request_filter)",
        &fmt(ratio(m_pg.rps, m_bare.rps), 2),
    ));
    if let Some(m) = &m_nginx {
        sec.rows
            .push(m.row("nginx `return 200`", &fmt(ratio(m_pg.rps, m.rps), 2)));
    }
    sec.rows.push(m_direct.row(
        "sample backend (direct)",
        &fmt(ratio(m_pg.rps, m_direct.rps), 2),
    ));
    sec.notes.push(env.rounds_note());
    sec.notes.push(
        "\"vs pollgate\" is pollgate's req/s divided by the contender's. The sample backend is the \
         environment, not a contender: it runs on the load generator's CPU, so its row is context only."
            .into(),
    );
    sec.data = json!({
        "pollgate": m_pg.json(),
        "bare_pingora": m_bare.json(),
        "nginx": m_nginx.as_ref().map(Measure::json),
        "sample_backend": m_direct.json(),
        "ratio_pollgate_bare": ratio(m_pg.rps, m_bare.rps),
        "ratio_pollgate_nginx": m_nginx.as_ref().map(|m| ratio(m_pg.rps, m.rps)),
        "ratio_p99_pollgate_nginx": m_nginx.as_ref().map(|m| ratio(m_pg.p99_ms, m.p99_ms)),
    });
    let r = ratio(m_pg.rps, m_bare.rps);
    report.target(
        "1",
        "req/s pollgate / bare pingora",
        ">= 0.9",
        format!("{r:.2}"),
        Some(r),
        Some(r >= 0.9),
    );
    if let Some(m) = &m_nginx {
        let r = ratio(m_pg.rps, m.rps);
        report.target(
            "1",
            "req/s pollgate / nginx",
            ">= 0.7",
            format!("{r:.2}"),
            Some(r),
            Some(r >= 0.7),
        );
        let (a, b) = (m_pg.p99_typical(), m.p99_typical());
        let q = ratio(a, b);
        report.target(
            "1",
            "p99 pollgate / nginx (wrk, each at its own saturation; median of the rounds' p99)",
            "<= 1.5",
            format!("{q:.2} ({a:.3} vs {b:.3} ms)"),
            Some(q),
            Some(q <= 1.5),
        );
    }

    // Scenario 2: the same load, conditional, on the same warm pollgate (measured in the same
    // rounds as scenario 1).
    sec2.notes.push(format!(
        "Same load as scenario 1 with `If-None-Match` carrying the current ETag (wrk -H); every answer is a 304. \
         The first row compares pollgate's 304 rate with its scenario-1 rate ({:.0} req/s); the second row's \
         \"vs pollgate\" is pollgate's 304 rate divided by the backend's.",
        m_pg.rps
    ));
    let r2 = ratio(m304.rps, m_pg.rps);
    sec2.rows
        .push(m304.row("pollgate (304)", &format!("{r2:.2} of scenario 1")));
    sec2.rows.push(b304.row(
        "sample backend (304, direct)",
        &fmt(ratio(m304.rps, b304.rps), 2),
    ));
    sec2.data = json!({
        "pollgate_304": m304.json(),
        "sample_backend_304": b304.json(),
        "ratio_304_to_s1": r2,
    });
    report.target(
        "2",
        "304 req/s / scenario-1 req/s (pollgate)",
        ">= 0.9",
        format!("{r2:.2}"),
        Some(r2),
        Some(r2 >= 0.9),
    );
    Ok(())
}

/// Scenario 3: long-poll fan-out, pollgate and Nchan.
fn s3(env: &Env, report: &mut Report) -> Result<(), String> {
    let mut sec = Section::new(
        "s3_longpoll",
        "3. Long-poll fan-out",
        &[
            "Contender",
            "clients",
            "topics",
            "delivered",
            "p50 ms",
            "p99 ms",
            "max ms",
            "fan-out s",
            "RSS/held poll",
            "hold setup s",
            "server CPU µs/answer",
        ],
    );
    let r = s3_inner(env, report, &mut sec);
    if let Err(e) = &r {
        sec.error = Some(e.clone());
    }
    report.sections.push(sec);
    r
}

fn lp_row(name: &str, v: &Value) -> Vec<String> {
    let f = |k: &str| {
        v["latency"][k]
            .as_f64()
            .map(|x| fmt(x, 1))
            .unwrap_or_default()
    };
    vec![
        name.to_string(),
        v["clients"].to_string(),
        v["topics"].to_string(),
        v["delivered"].to_string(),
        f("p50_ms"),
        f("p99_ms"),
        f("max_ms"),
        v["fanout_s"]
            .as_f64()
            .map(|x| fmt(x, 3))
            .unwrap_or_default(),
        v["rss_per_held_bytes"]
            .as_f64()
            .map(|b| format!("{:.1} KiB", b / 1024.0))
            .unwrap_or_else(|| "-".into()),
        v["hold_wait_s"]
            .as_f64()
            .map(|x| fmt(x, 1))
            .unwrap_or_default(),
        match (
            v["server_cpu_s_during_fanout"].as_f64(),
            v["delivered"].as_f64(),
        ) {
            (Some(cpu), Some(n)) if n > 0.0 => fmt(cpu * 1e6 / n, 0),
            _ => "-".into(),
        },
    ]
}

fn s3_inner(env: &Env, report: &mut Report, sec: &mut Section) -> Result<(), String> {
    let plan = &env.plan;
    let clients = plan.lp_clients;
    sec.notes.push(format!(
        "{clients} long polls held at once, spread evenly over the topics; each client sent `If-None-Match` with its \
         topic's current ETag (Nchan: a fresh channel, no ETag needed). When the server reports every poll held \
         (pollgate: `pollgate_long_polls_held`; Nchan: `nchan_stub_status` subscribers), one message per topic is \
         published (pollgate: `POST /publish/{{topic}}` on the sample backend, which pushes it over the gateway's upstream \
         WebSocket; Nchan: `POST` to its publisher location). Latency: from sending a topic's publish to a client \
         receiving the whole answer. RSS/held poll: server VmRSS growth while holding, divided by the polls held \
         (nginx: the worker process). Server CPU µs/answer: the server's CPU time from the first publish to the \
         last answer, divided by the answers (clock-tick resolution, 10 ms). Clients keep their connections open \
         until every answer is in, as clients that poll again would. Nchan acknowledges a publish only after \
         handing the message to that channel's subscribers, so its 100 publishes are paced; the sample backend \
         acknowledges at once, so pollgate's 10,000 answers are due together in both variants."
    ));
    sec.notes.push(
        "Two placements. **2 cores** (the target): the server may use both CPUs (pollgate `threads: 2`, \
         Nchan `worker_processes 2`, no pinning) while the clients stay on CPU 0. **1 core** (context): \
         the server pinned to CPU 1 with one thread or worker, as in the other scenarios. On one core \
         the fan-out is bound by the kernel: each answer is one `send` on a loopback TCP socket, and \
         about three quarters of the server's CPU per answer is system time (results.json: \
         `server_sys_s_during_fanout` and `server_user_s_during_fanout`), for pollgate and Nchan \
         alike, so 10,000 answers due at once do not all leave one core within 100 ms whatever \
         runs in user space. Nchan with two \
         workers: RSS and CPU are not summed over its workers (\"-\")."
            .to_string(),
    );
    let mut data = serde_json::Map::new();
    let mut all_ok = true;
    let lp_limit = Duration::from_secs(240);
    // (cores, topics): the two-core target variants first, then the one-core context.
    let variants: Vec<(usize, usize)> = [2, 1]
        .iter()
        .flat_map(|&c| plan.lp_topic_variants.iter().map(move |&t| (c, t)))
        .collect();
    let label_of = |who: &str, cores: usize, topics: usize| {
        format!(
            "{who}, {topics} topic{}, {cores} core{}",
            if topics == 1 { "" } else { "s" },
            if cores == 1 { "" } else { "s" }
        )
    };
    for &(cores, topics) in &variants {
        let mut p = Procs::new(&env.dir);
        let backend = env.start_backend(&mut p, &[], 3_600_000)?;
        let config = pollgate_config(&backend.addr, Some("60s"))
            .replace("threads: 1\n", &format!("threads: {cores}\n"));
        let cpu = if cores == 1 {
            env.server_cpu.as_deref()
        } else {
            None
        };
        let gw = env.start_pollgate_on(&mut p, &config, cpu)?;
        let args: Vec<String> = vec![
            "--target".into(),
            gw.addr.clone(),
            "--path-template".into(),
            "/api/prices/{topic}".into(),
            "--topics".into(),
            topics.to_string(),
            "--clients".into(),
            clients.to_string(),
            "--topic-prefix".into(),
            format!("lp{topics}x"),
            "--publish".into(),
            backend.addr.clone(),
            "--seed".into(),
            "--held-prometheus".into(),
            gw.admin.clone().unwrap_or_default(),
            "--pid".into(),
            gw.pid.to_string(),
        ];
        let v = env.client("longpoll", &args, lp_limit);
        p.stop_all();
        let v = v?;
        eprintln!(
            "  pollgate {topics} topics, {cores} cores: delivered {} p99 {} ms",
            v["delivered"], v["latency"]["p99_ms"]
        );
        let label = label_of("pollgate", cores, topics);
        sec.rows.push(lp_row(&label, &v));
        let delivered = v["delivered"].as_u64().unwrap_or(0);
        let ok = delivered == clients as u64;
        all_ok &= ok;
        if env.mode != Mode::Smoke {
            report.target(
                "3",
                &format!("{label}: all delivered"),
                &format!("{clients}"),
                delivered.to_string(),
                Some(delivered as f64),
                Some(ok),
            );
            let p99 = v["latency"]["p99_ms"].as_f64().unwrap_or(f64::INFINITY);
            // The target is set on two cores; one core is reported as context.
            report.target(
                "3",
                &format!("{label}: p99 publish-to-client"),
                if cores == 2 { "<= 100 ms" } else { "(context)" },
                format!("{p99:.1} ms"),
                Some(p99),
                (cores == 2).then_some(p99 <= 100.0),
            );
            if let Some(b) = v["rss_per_held_bytes"].as_f64() {
                report.target(
                    "3",
                    &format!("{label}: RSS per held poll"),
                    "<= 16 KiB",
                    format!("{:.1} KiB", b / 1024.0),
                    Some(b),
                    Some(b <= 16.0 * 1024.0),
                );
            }
        }
        let key = format!("pollgate_{topics}_{cores}core");
        if !ok && env.mode == Mode::Smoke {
            data.insert(key, v.clone());
            sec.data = Value::Object(data);
            return Err(format!("{label}: {delivered} of {clients} delivered: {v}"));
        }
        data.insert(key, v);
    }
    if env.mode != Mode::Smoke {
        if env.nginx.is_some() && env.nchan_module.is_some() {
            for &(cores, topics) in &variants {
                let mut p = Procs::new(&env.dir);
                let block = r#"  nchan_max_reserved_memory 256M;
  server {
    listen @LISTEN@;
    location ~ ^/pub/(.+)$ { nchan_publisher; nchan_channel_id $1; }
    location ~ ^/sub/(.+)$ { nchan_subscriber longpoll; nchan_channel_id $1; }
    location = /nchan_status { nchan_stub_status; }
  }"#;
                let cpu = if cores == 1 {
                    env.server_cpu.as_deref()
                } else {
                    None
                };
                let ngx = env.start_nginx_on(&mut p, block, true, cores, cpu)?;
                let mut args: Vec<String> = vec![
                    "--target".into(),
                    ngx.addr.clone(),
                    "--path-template".into(),
                    "/sub/{topic}".into(),
                    "--topics".into(),
                    topics.to_string(),
                    "--clients".into(),
                    clients.to_string(),
                    "--topic-prefix".into(),
                    format!("lp{topics}x"),
                    "--publish".into(),
                    ngx.addr.clone(),
                    "--publish-path".into(),
                    "/pub/{topic}".into(),
                    "--no-etag".into(),
                    "--held-nchan".into(),
                    ngx.addr.clone(),
                ];
                if let (Some(w), 1) = (ngx.worker, cores) {
                    args.push("--pid".into());
                    args.push(w.to_string());
                }
                let v = env.client("longpoll", &args, lp_limit);
                p.stop_all();
                match v {
                    Ok(v) => {
                        eprintln!(
                            "  nchan {topics} topics, {cores} cores: delivered {} p99 {} ms",
                            v["delivered"], v["latency"]["p99_ms"]
                        );
                        sec.rows.push(lp_row(&label_of("Nchan", cores, topics), &v));
                        data.insert(format!("nchan_{topics}_{cores}core"), v);
                    }
                    Err(e) => sec.notes.push(format!(
                        "Nchan with {topics} topics on {cores} cores failed: {e}"
                    )),
                }
            }
        } else {
            sec.notes
                .push("nginx with libnginx-mod-nchan is not installed: no Nchan rows.".into());
        }
    }
    sec.data = Value::Object(data);
    if !all_ok && env.mode == Mode::Smoke {
        return Err("not every long poll was answered".into());
    }
    Ok(())
}

/// The sample backend's counters.
fn backend_stats(env: &Env, addr: &str) -> Result<(Value, u64), String> {
    let r = env
        .block(client::get(addr, "/stats", Duration::from_secs(5)))
        .map_err(|e| format!("/stats: {e}"))?;
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("/stats: {e}"))?;
    Ok((v, r.wire_len as u64))
}

/// Scenario 4: backend load with and without pollgate.
fn s4(env: &Env, report: &mut Report) -> Result<(), String> {
    let mut sec = Section::new(
        "s4_backend_load",
        "4. Backend load",
        &[
            "Clients poll",
            "client requests",
            "client errors",
            "client p99 ms",
            "backend HTTP requests",
            "backend HTTP bytes out",
            "backend WS subscriptions",
            "backend WS messages out",
        ],
    );
    let r = s4_inner(env, report, &mut sec);
    if let Err(e) = &r {
        sec.error = Some(e.clone());
    }
    report.sections.push(sec);
    r
}

fn s4_inner(env: &Env, report: &mut Report, sec: &mut Section) -> Result<(), String> {
    let plan = &env.plan;
    sec.notes.push(format!(
        "{} clients, each on its own keep-alive connection, poll {} topics at {} polls/s each for {} s \
         (random phase); the backend publishes a tick on every topic each second. Backend figures are deltas of \
         its `/stats` over the run (the harness's own `/stats` calls excluded).",
        plan.s4_clients, plan.s4_topics, plan.s4_rate, plan.s4_s
    ));
    let topics: Vec<String> = (0..plan.s4_topics).map(|i| format!("t{i}")).collect();
    let mut data = serde_json::Map::new();
    for via_pollgate in [false, true] {
        let mut p = Procs::new(&env.dir);
        let backend = env.start_backend(&mut p, &topics, 1000)?;
        std::thread::sleep(Duration::from_millis(1100)); // every topic has a tick
        let target = if via_pollgate {
            env.start_pollgate(&mut p, &pollgate_config(&backend.addr, Some("0s")))?
                .addr
        } else {
            backend.addr.clone()
        };
        let (before, before_wire) = backend_stats(env, &backend.addr)?;
        let args: Vec<String> = vec![
            "--target".into(),
            target,
            "--path".into(),
            "/api/prices/{topic}".into(),
            "--topics".into(),
            plan.s4_topics.to_string(),
            "--topic-prefix".into(),
            "t".into(),
            "--clients".into(),
            plan.s4_clients.to_string(),
            "--rate".into(),
            plan.s4_rate.to_string(),
            "--duration-s".into(),
            plan.s4_s.to_string(),
            "--expect-status".into(),
            "200".into(),
        ];
        let v = env.client(
            "http-load",
            &args,
            Duration::from_secs_f64(plan.s4_s + 120.0),
        )?;
        let (after, _) = backend_stats(env, &backend.addr)?;
        p.stop_all();
        let d = |k: &str| {
            after[k]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(before[k].as_u64().unwrap_or(0))
        };
        // The `after` /stats request counted itself; the `before` answer's bytes were counted after it.
        let http = d("http_requests").saturating_sub(1);
        let bytes = d("http_bytes_out").saturating_sub(before_wire);
        let subs = d("ws_subscriptions");
        let wsmsgs = d("ws_messages_out");
        let errors = v["errors"].as_u64().unwrap_or(0) + v["bad_status"].as_u64().unwrap_or(0);
        let name = if via_pollgate {
            "through pollgate"
        } else {
            "the backend directly"
        };
        eprintln!(
            "  {name}: {} client requests, backend {http} HTTP requests, {subs} subscriptions",
            v["requests"]
        );
        sec.rows.push(vec![
            name.to_string(),
            v["requests"].to_string(),
            errors.to_string(),
            v["latency"]["p99_ms"]
                .as_f64()
                .map(|x| fmt(x, 2))
                .unwrap_or_default(),
            http.to_string(),
            bytes.to_string(),
            subs.to_string(),
            wsmsgs.to_string(),
        ]);
        let key = if via_pollgate {
            "via_pollgate"
        } else {
            "direct"
        };
        data.insert(
            key.into(),
            json!({
                "clients": v,
                "backend_http_requests": http,
                "backend_http_bytes_out": bytes,
                "backend_ws_subscriptions": subs,
                "backend_ws_messages_out": wsmsgs,
            }),
        );
        if via_pollgate {
            report.target(
                "4",
                "backend WS subscriptions with pollgate",
                &format!("{}", plan.s4_topics),
                subs.to_string(),
                Some(subs as f64),
                Some(subs == plan.s4_topics as u64),
            );
            report.target(
                "4",
                "backend HTTP requests with pollgate",
                &format!("<= {}", plan.s4_topics),
                http.to_string(),
                Some(http as f64),
                Some(http <= plan.s4_topics as u64),
            );
        }
    }
    sec.data = Value::Object(data);
    Ok(())
}

/// Scenario 5: WebSocket pass-through.
fn s5(env: &Env, report: &mut Report) -> Result<(), String> {
    let mut sec = Section::new(
        "s5_websocket",
        "5. WebSocket pass-through",
        &[
            "Path",
            "messages/s",
            "RTT p50 ms",
            "RTT p99 ms",
            "errors",
            "msgs/s vs direct",
        ],
    );
    let r = (|| -> Result<(), String> {
        let plan = &env.plan;
        let mut p = Procs::new(&env.dir);
        let backend = env.start_backend(&mut p, &[], 3_600_000)?;
        let gw = env.start_pollgate(&mut p, &pollgate_config(&backend.addr, None))?;
        sec.notes.push(format!(
            "{} WebSocket clients, each sending a 64-byte text frame and waiting for its echo, repeatedly, for {} s, \
             to the sample backend's `/echo`: through pollgate (prefix route, pingora's upgraded tunnel) and direct.",
            plan.ws_clients, plan.ws_s
        ));
        let run = |addr: &str| {
            env.client(
                "ws-echo",
                &[
                    "--target".into(),
                    addr.into(),
                    "--clients".into(),
                    plan.ws_clients.to_string(),
                    "--duration-s".into(),
                    plan.ws_s.to_string(),
                ],
                Duration::from_secs_f64(plan.ws_s + 60.0),
            )
        };
        let via = run(&gw.addr)?;
        let direct = run(&backend.addr)?;
        let rate = |v: &Value| v["msgs_per_s"].as_f64().unwrap_or(0.0);
        for (name, v) in [("through pollgate", &via), ("direct", &direct)] {
            sec.rows.push(vec![
                name.into(),
                fmt(rate(v), 0),
                v["rtt"]["p50_ms"]
                    .as_f64()
                    .map(|x| fmt(x, 3))
                    .unwrap_or_default(),
                v["rtt"]["p99_ms"]
                    .as_f64()
                    .map(|x| fmt(x, 3))
                    .unwrap_or_default(),
                (v["errors"].as_u64().unwrap_or(0) + v["mismatched"].as_u64().unwrap_or(0))
                    .to_string(),
                fmt(ratio(rate(v), rate(&direct)), 2),
            ]);
        }
        let r = ratio(rate(&via), rate(&direct));
        report.target(
            "5",
            "WebSocket echo msgs/s through pollgate / direct",
            "(no target; reported)",
            format!("{r:.2}"),
            Some(r),
            None,
        );
        sec.data = json!({ "via_pollgate": via, "direct": direct, "ratio": r });
        Ok(())
    })();
    if let Err(e) = &r {
        sec.error = Some(e.clone());
    }
    report.sections.push(sec);
    r
}

/// Scenario 6: plain reverse proxying, pollgate vs nginx.
fn s6(env: &Env, report: &mut Report) -> Result<(), String> {
    let mut sec = Section::new("s6_plain_proxy", "6. Plain proxy", HTTP_COLUMNS);
    let r = (|| -> Result<(), String> {
        let plan = &env.plan;
        let mut p = Procs::new(&env.dir);
        let backend = env.start_backend(&mut p, &[], 3_600_000)?;
        let pr = env
            .block(client::post(
                &backend.addr,
                "/publish/bench",
                TICK.as_bytes(),
                Duration::from_secs(5),
            ))
            .map_err(|e| e.to_string())?;
        if pr.status != 200 {
            return Err(format!("publish: {}", pr.status));
        }
        let path = "/api/prices/bench";
        let direct = env
            .block(client::get(&backend.addr, path, Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let body_file = env.dir.join("s6-body.json");
        std::fs::write(&body_file, &direct.body).map_err(|e| e.to_string())?;
        sec.notes.push(format!(
            "wrk -t1 -c{} -d{}s, `GET {path}` ({} bytes of JSON) proxied to the sample backend: pollgate with only a \
             prefix route (`threads: 1`, `access_log: false`) vs nginx `proxy_pass` with a keepalive upstream \
             (worker_processes 1, access_log off). The backend shares the load generator's core, so it caps both alike.",
            plan.conns, plan.http_s, direct.body.len()
        ));
        let gw = env.start_pollgate(&mut p, &pollgate_config(&backend.addr, None))?;
        let ngx = if env.nginx.is_some() {
            let block = r#"  upstream backend {
    server @BACKEND@;
    keepalive 64;
  }
  server {
    listen @LISTEN@;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }"#
            .replace("@BACKEND@", &backend.addr);
            Some(env.start_nginx(&mut p, &block, false)?)
        } else {
            sec.notes
                .push("nginx is not installed: no nginx row.".into());
            None
        };
        let body = Some(body_file.as_path());
        let mut jobs = vec![
            Job {
                key: "pollgate",
                addr: &gw.addr,
                pid: Some(gw.pid),
                path,
                headers: &[],
                status: 200,
                rate: None,
                body,
            },
            Job {
                key: "sample_backend",
                addr: &backend.addr,
                pid: None,
                path,
                headers: &[],
                status: 200,
                rate: None,
                body,
            },
        ];
        if let Some(n) = &ngx {
            jobs.insert(
                1,
                Job {
                    key: "nginx",
                    addr: &n.addr,
                    pid: n.worker.or(Some(n.pid)),
                    path,
                    headers: &[],
                    status: 200,
                    rate: None,
                    body,
                },
            );
        }
        let ms = env.rounds(&jobs)?;
        let get = |k: &str| jobs.iter().position(|j| j.key == k).map(|i| ms[i].clone());
        let m_pg = get("pollgate").expect("pollgate measured");
        let m_direct = get("sample_backend").expect("backend measured");
        sec.notes.push(env.rounds_note());
        sec.rows.push(m_pg.row("pollgate (prefix route)", "1.00"));
        let mut data = json!({ "pollgate": m_pg.json() });
        if let Some(m) = get("nginx") {
            let r = ratio(m_pg.rps, m.rps);
            sec.rows.push(m.row("nginx proxy_pass", &fmt(r, 2)));
            report.target(
                "6",
                "proxied req/s pollgate / nginx",
                ">= 0.8",
                format!("{r:.2}"),
                Some(r),
                Some(r >= 0.8),
            );
            data["nginx"] = m.json();
            data["ratio_pollgate_nginx"] = json!(r);
        }
        sec.rows.push(m_direct.row(
            "sample backend (direct, no proxy)",
            &fmt(ratio(m_pg.rps, m_direct.rps), 2),
        ));
        data["sample_backend"] = m_direct.json();
        sec.data = data;
        Ok(())
    })();
    if let Err(e) = &r {
        sec.error = Some(e.clone());
    }
    report.sections.push(sec);
    r
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

    #[test]
    fn configs_render() {
        let c = pollgate_config("127.0.0.1:9", Some("60s"));
        assert!(c.contains("long_poll: 60s") && c.contains("address: \"127.0.0.1:9\""));
        assert!(!pollgate_config("127.0.0.1:9", None).contains("prices"));
    }
}
