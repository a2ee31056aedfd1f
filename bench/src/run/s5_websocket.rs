//! Scenario 5: WebSocket pass-through. pollgate relaying the tunnel itself, pollgate handing it
//! to pingora's tunnel (`fast_paths: false`), nginx proxying WebSockets, and the backend direct:
//! echo rate and round trip on open tunnels, and the first echo of a new tunnel.

use super::env::Env;
use super::measure::{median, ratio};
use super::nginx;
use super::pollgate_config::pollgate_config;
use crate::procs::Procs;
use crate::report::{fmt, Report, Section};
use crate::usage::Usage;
use serde_json::{json, Value};
use std::time::Duration;

/// One contender of the scenario.
struct Contender {
    key: &'static str,
    name: &'static str,
    addr: String,
    /// The serving process on the server CPU (nginx: its worker), for CPU per message and the
    /// other load on that CPU; `None` for the backend.
    pid: Option<u32>,
}

/// What the server and the backend used per unit of work (a message, a tunnel).
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    /// Server CPU microseconds and sleeps (voluntary context switches).
    cpu_us: Option<f64>,
    sleeps: Option<f64>,
    /// The backend's CPU microseconds (it shares the clients' core, so a server that wakes it
    /// more often costs that core more).
    backend_cpu_us: Option<f64>,
}

/// Counters of the server and the backend before a run.
struct Before {
    server: Option<Usage>,
    backend: Option<Usage>,
}

impl Before {
    fn take(server: Option<u32>, backend: u32) -> Before {
        Before {
            server: server.and_then(Usage::of),
            backend: Usage::of(backend),
        }
    }

    fn cost(&self, server: Option<u32>, backend: u32, units: f64) -> Cost {
        if units <= 0.0 {
            return Cost::default();
        }
        let s = match (&self.server, server.and_then(Usage::of)) {
            (Some(b), Some(a)) => Some(a.per(b, units)),
            _ => None,
        };
        let be = match (&self.backend, Usage::of(backend)) {
            (Some(b), Some(a)) => Some(a.per(b, units).0),
            _ => None,
        };
        Cost {
            cpu_us: s.map(|s| s.0),
            sleeps: s.map(|s| s.1),
            backend_cpu_us: be,
        }
    }
}

/// One echo run.
struct Echo {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Per echoed message.
    cost: Cost,
    foreign_pct: Option<f64>,
    raw: Value,
}

/// One run of fresh tunnels.
struct Fresh {
    p50_ms: f64,
    p99_ms: f64,
    handshake_p50_ms: f64,
    completed: u64,
    errors: u64,
    /// Per tunnel.
    cost: Cost,
    raw: Value,
}

/// Every round of one contender.
#[derive(Default)]
struct Runs {
    echo: Vec<Echo>,
    fresh: Vec<Fresh>,
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

impl Runs {
    fn rates(&self) -> Vec<f64> {
        self.echo.iter().map(|e| e.rate).collect()
    }

    /// The least disturbed echo run: the highest rate.
    fn best(&self) -> &Echo {
        self.echo
            .iter()
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
            .expect("at least one round")
    }

    fn echo_p50(&self) -> f64 {
        median(&self.echo.iter().map(|e| e.p50_ms).collect::<Vec<_>>())
    }

    fn echo_p99(&self) -> f64 {
        median(&self.echo.iter().map(|e| e.p99_ms).collect::<Vec<_>>())
    }

    /// The median over the rounds of one of the echo runs' costs.
    fn echo_cost(&self, f: impl Fn(&Cost) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.echo.iter().filter_map(|e| f(&e.cost)).collect();
        (!v.is_empty()).then(|| median(&v))
    }

    fn fresh_cost(&self, f: impl Fn(&Cost) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.fresh.iter().filter_map(|e| f(&e.cost)).collect();
        (!v.is_empty()).then(|| median(&v))
    }

    fn fresh_p50(&self) -> f64 {
        median(&self.fresh.iter().map(|f| f.p50_ms).collect::<Vec<_>>())
    }

    fn fresh_p99(&self) -> f64 {
        median(&self.fresh.iter().map(|f| f.p99_ms).collect::<Vec<_>>())
    }

    fn json(&self) -> Value {
        json!({
            "echo_rounds": self.echo.iter().map(|e| e.raw.clone()).collect::<Vec<_>>(),
            "echo_msgs_per_s_rounds": self.rates(),
            "echo_server_cpu_us_per_msg_rounds": self.echo.iter().map(|e| e.cost.cpu_us).collect::<Vec<_>>(),
            "echo_server_sleeps_per_msg_rounds": self.echo.iter().map(|e| e.cost.sleeps).collect::<Vec<_>>(),
            "echo_backend_cpu_us_per_msg_rounds": self.echo.iter().map(|e| e.cost.backend_cpu_us).collect::<Vec<_>>(),
            "echo_other_load_pct_rounds": self.echo.iter().map(|e| e.foreign_pct).collect::<Vec<_>>(),
            "echo_rtt_p50_median_ms": self.echo_p50(),
            "echo_rtt_p99_median_ms": self.echo_p99(),
            "fresh_rounds": self.fresh.iter().map(|f| f.raw.clone()).collect::<Vec<_>>(),
            "fresh_first_echo_p50_median_ms": self.fresh_p50(),
            "fresh_first_echo_p99_median_ms": self.fresh_p99(),
            "fresh_server_cpu_us_per_tunnel_rounds": self.fresh.iter().map(|f| f.cost.cpu_us).collect::<Vec<_>>(),
        })
    }
}

/// Round by round ratios of `a`'s figure over `b`'s, their median, and the text for the targets.
fn paired(a: &[f64], b: &[f64]) -> (f64, String) {
    let each: Vec<f64> = a.iter().zip(b).map(|(x, y)| ratio(*x, *y)).collect();
    let m = median(&each);
    if each.len() < 2 {
        return (m, format!("{m:.2}"));
    }
    let rounds: Vec<String> = each.iter().map(|r| format!("{r:.2}")).collect();
    (
        m,
        format!("{m:.2} (median of rounds {})", rounds.join(", ")),
    )
}

impl Env {
    fn echo(&self, c: &Contender, backend: u32) -> Result<Echo, String> {
        let plan = &self.plan;
        let snap = self.cpu_snapshot(c.pid);
        let before = Before::take(c.pid, backend);
        let v = self.client(
            "ws-echo",
            &[
                "--target".into(),
                c.addr.clone(),
                "--clients".into(),
                plan.ws_clients.to_string(),
                "--duration-s".into(),
                plan.ws_s.to_string(),
            ],
            Duration::from_secs_f64(plan.ws_s + 60.0),
        )?;
        let cost = before.cost(c.pid, backend, num(&v["messages"]));
        let foreign_pct = match (&snap, &self.cpu_snapshot(c.pid)) {
            (Some(b), Some(a)) => Some(b.interference(a).0),
            _ => None,
        };
        Ok(Echo {
            rate: num(&v["msgs_per_s"]),
            p50_ms: num(&v["rtt"]["p50_ms"]),
            p99_ms: num(&v["rtt"]["p99_ms"]),
            errors: v["errors"].as_u64().unwrap_or(0) + v["mismatched"].as_u64().unwrap_or(0),
            cost,
            foreign_pct,
            raw: v,
        })
    }

    fn fresh(&self, c: &Contender, backend: u32) -> Result<Fresh, String> {
        let n = self.plan.ws_fresh;
        let before = Before::take(c.pid, backend);
        let v = self.client(
            "ws-echo",
            &[
                "--target".into(),
                c.addr.clone(),
                "--fresh".into(),
                n.to_string(),
                "--concurrency".into(),
                "1".into(),
                "--duration-s".into(),
                "60".into(),
            ],
            Duration::from_secs(90),
        )?;
        Ok(Fresh {
            p50_ms: num(&v["first_echo"]["p50_ms"]),
            p99_ms: num(&v["first_echo"]["p99_ms"]),
            handshake_p50_ms: num(&v["handshake"]["p50_ms"]),
            completed: v["completed"].as_u64().unwrap_or(0),
            errors: v["errors"].as_u64().unwrap_or(0) + v["mismatched"].as_u64().unwrap_or(0),
            cost: before.cost(c.pid, backend, num(&v["completed"])),
            raw: v,
        })
    }
}

/// Scenario 5: WebSocket pass-through.
pub(super) fn s5(env: &Env, report: &mut Report) -> Result<(), String> {
    let mut echo = Section::new(
        "s5_websocket",
        "5. WebSocket pass-through: echo on open tunnels",
        &[
            "Path",
            "msgs/s (best round)",
            "msgs/s per round",
            "RTT p50 ms",
            "RTT p99 ms",
            "server CPU µs/msg",
            "server sleeps/msg",
            "backend CPU µs/msg",
            "errors",
            "msgs/s vs nginx",
        ],
    );
    let mut first = Section::new(
        "s5b_websocket_first_message",
        "5b. WebSocket pass-through: a new tunnel's first echo",
        &[
            "Path",
            "first echo p50 ms",
            "first echo p99 ms",
            "101 p50 ms",
            "server CPU µs/tunnel",
            "tunnels",
            "errors",
            "p50 vs nginx",
        ],
    );
    let r = run(env, report, &mut echo, &mut first);
    if let Err(e) = &r {
        echo.error = Some(e.clone());
    }
    report.sections.push(echo);
    report.sections.push(first);
    r
}

fn run(
    env: &Env,
    report: &mut Report,
    echo: &mut Section,
    first: &mut Section,
) -> Result<(), String> {
    let plan = &env.plan;
    let mut p = Procs::new(&env.dir);
    let backend = env.start_backend(&mut p, &[], 3_600_000)?;
    let config = pollgate_config(&backend.addr, None);
    let relay = env.start_pollgate(&mut p, &config)?;
    // The same gateway with every request handed to pingora's proxy: pingora's tunnel.
    let tunnel = env.start_pollgate(&mut p, &format!("fast_paths: false\n{config}"))?;
    let mut contenders = vec![
        Contender {
            key: "pollgate",
            name: "pollgate (its own relay)",
            addr: relay.addr.clone(),
            pid: Some(relay.pid),
        },
        Contender {
            key: "pollgate_pingora_tunnel",
            name: "pollgate, pingora's tunnel (`fast_paths: false`)",
            addr: tunnel.addr.clone(),
            pid: Some(tunnel.pid),
        },
    ];
    if env.nginx.is_some() {
        let n = env.start_nginx(&mut p, &nginx::websocket_block(&backend.addr), false)?;
        contenders.push(Contender {
            key: "nginx",
            name: "nginx `proxy_pass` with `Upgrade`",
            addr: n.addr.clone(),
            pid: n.worker.or(Some(n.pid)),
        });
    } else {
        echo.notes
            .push("nginx is not installed: no nginx row.".into());
    }
    contenders.push(Contender {
        key: "direct",
        name: "sample backend (direct, no proxy)",
        addr: backend.addr.clone(),
        pid: None,
    });
    echo.notes.push(format!(
        "{} WebSocket clients, each sending a 64-byte text frame to the sample backend's `/echo` and waiting for its \
         echo, repeatedly, for {} s per run. pollgate (`threads: 1`, `access_log: false`, a prefix route) relays the \
         upgraded sockets itself; the same config with `fast_paths: false` hands the handshake to pingora's proxy and \
         its tunnel; nginx (`worker_processes 1`) proxies WebSockets as its documentation says (`proxy_http_version \
         1.1`, `Upgrade $http_upgrade`, `Connection \"upgrade\"`). Every proxy runs on the server CPU, the clients and \
         the backend on the other. {} interleaved rounds (every contender's echo run, then every contender's fresh \
         tunnels, then again): the table shows each one's best round by rate and the medians of the rounds' RTT \
         percentiles and costs; ratios to nginx are the median of the rounds' paired ratios. Server CPU and sleeps \
         per message: the serving process's on-CPU time (the scheduler's `schedstat`) and voluntary context \
         switches; backend CPU: the sample backend's, which shares the clients' core, so a server that wakes it \
         more often leaves the clients less of it.",
        plan.ws_clients,
        plan.ws_s,
        plan.rounds.max(1)
    ));
    first.notes.push(format!(
        "{} new tunnels per round, one at a time: each timed from the start of its TCP connect to its first echo \
         (a 64-byte text frame sent right after the `101`), then closed with the close handshake before the next. \
         Medians over the rounds of each run's p50 and p99.",
        plan.ws_fresh
    ));
    let mut runs: Vec<Runs> = contenders.iter().map(|_| Runs::default()).collect();
    for round in 0..plan.rounds.max(1) {
        for (c, r) in contenders.iter().zip(&mut runs) {
            let e = env.echo(c, backend.pid)?;
            eprintln!(
                "  round {}: {}: {:.0} msgs/s, RTT p50 {:.3} ms p99 {:.3} ms, {} µs CPU/msg, other load {}",
                round + 1,
                c.key,
                e.rate,
                e.p50_ms,
                e.p99_ms,
                e.cost.cpu_us.map_or("-".into(), |x| format!("{x:.1}")),
                e.foreign_pct.map_or("-".into(), |x| format!("{x:.0}%"))
            );
            r.echo.push(e);
        }
        for (c, r) in contenders.iter().zip(&mut runs) {
            let f = env.fresh(c, backend.pid)?;
            eprintln!(
                "  round {}: {}: first echo p50 {:.3} ms p99 {:.3} ms ({} tunnels, {} errors)",
                round + 1,
                c.key,
                f.p50_ms,
                f.p99_ms,
                f.completed,
                f.errors
            );
            r.fresh.push(f);
        }
    }
    let at = |k: &str| contenders.iter().position(|c| c.key == k);
    let pg = &runs[at("pollgate").expect("pollgate")];
    let pt = &runs[at("pollgate_pingora_tunnel").expect("pingora tunnel")];
    let ngx = at("nginx").map(|i| &runs[i]);
    let direct = &runs[at("direct").expect("direct")];
    let mut data = json!({});
    for (c, r) in contenders.iter().zip(&runs) {
        let b = r.best();
        let vs = ngx.map_or("-".into(), |n| fmt(paired(&r.rates(), &n.rates()).0, 2));
        let per_round: Vec<String> = r.rates().iter().map(|x| fmt(*x, 0)).collect();
        echo.rows.push(vec![
            c.name.into(),
            fmt(b.rate, 0),
            per_round.join(" / "),
            fmt(r.echo_p50(), 3),
            fmt(r.echo_p99(), 3),
            r.echo_cost(|c| c.cpu_us).map_or("-".into(), |x| fmt(x, 1)),
            r.echo_cost(|c| c.sleeps).map_or("-".into(), |x| fmt(x, 2)),
            r.echo_cost(|c| c.backend_cpu_us)
                .map_or("-".into(), |x| fmt(x, 1)),
            r.echo.iter().map(|e| e.errors).sum::<u64>().to_string(),
            vs,
        ]);
        let fvs = ngx.map_or("-".into(), |n| fmt(ratio(r.fresh_p50(), n.fresh_p50()), 2));
        first.rows.push(vec![
            c.name.into(),
            fmt(r.fresh_p50(), 3),
            fmt(r.fresh_p99(), 3),
            fmt(
                median(
                    &r.fresh
                        .iter()
                        .map(|f| f.handshake_p50_ms)
                        .collect::<Vec<_>>(),
                ),
                3,
            ),
            r.fresh_cost(|c| c.cpu_us).map_or("-".into(), |x| fmt(x, 0)),
            r.fresh.iter().map(|f| f.completed).sum::<u64>().to_string(),
            r.fresh.iter().map(|f| f.errors).sum::<u64>().to_string(),
            fvs,
        ]);
        data[c.key] = r.json();
    }
    let (relay_vs_tunnel, text) = paired(&pg.rates(), &pt.rates());
    let cpu = |r: &Runs| r.echo_cost(|c| c.cpu_us);
    report.target(
        "5",
        "WebSocket echo msgs/s: pollgate's relay / pingora's tunnel",
        "(reported)",
        match (cpu(pg), cpu(pt)) {
            (Some(a), Some(b)) => format!("{text}; server CPU {a:.1} vs {b:.1} µs/msg"),
            _ => text,
        },
        Some(relay_vs_tunnel),
        None,
    );
    let (a, b) = (pg.fresh_p50(), pt.fresh_p50());
    let tunnel_cpu = |r: &Runs| r.fresh_cost(|c| c.cpu_us);
    report.target(
        "5b",
        "new tunnel, connect to first echo: p50 pollgate's relay / pingora's tunnel",
        "(reported)",
        match (tunnel_cpu(pg), tunnel_cpu(pt)) {
            (Some(x), Some(y)) => format!(
                "{:.2} ({a:.3} vs {b:.3} ms); server CPU {x:.0} vs {y:.0} µs/tunnel",
                ratio(a, b)
            ),
            _ => format!("{:.2} ({a:.3} vs {b:.3} ms)", ratio(a, b)),
        },
        Some(ratio(a, b)),
        None,
    );
    data["ratio_relay_pingora_tunnel"] = json!(relay_vs_tunnel);
    if let Some(n) = ngx {
        let (r, text) = paired(&pg.rates(), &n.rates());
        report.target(
            "5",
            "WebSocket echo msgs/s pollgate / nginx",
            ">= 1.0",
            text,
            Some(r),
            Some(r >= 1.0),
        );
        let (a, b) = (pg.echo_p50(), n.echo_p50());
        report.target(
            "5",
            "WebSocket echo RTT p50 pollgate / nginx (median of the rounds' p50)",
            "<= 1.0",
            format!("{:.2} ({a:.3} vs {b:.3} ms)", ratio(a, b)),
            Some(ratio(a, b)),
            Some(a <= b),
        );
        let (a, b) = (pg.fresh_p50(), n.fresh_p50());
        let (a99, b99) = (pg.fresh_p99(), n.fresh_p99());
        report.target(
            "5b",
            "new tunnel, connect to first echo: p50 pollgate / nginx (p99 beside it)",
            "<= 1.0",
            format!(
                "{:.2} ({a:.3} vs {b:.3} ms); p99 {:.2} ({a99:.3} vs {b99:.3} ms)",
                ratio(a, b),
                ratio(a99, b99)
            ),
            Some(ratio(a, b)),
            Some(a <= b),
        );
        data["ratio_pollgate_nginx"] = json!(r);
    }
    let (r, text) = paired(&pg.rates(), &direct.rates());
    report.target(
        "5",
        "WebSocket echo msgs/s through pollgate / direct",
        "(no target; reported)",
        text,
        Some(r),
        None,
    );
    data["ratio_pollgate_direct"] = json!(r);
    echo.data = data;
    Ok(())
}
