//! Scenario 7: the transports of issue 12. 7a: cache hits over TLS (HTTP/1.1 keep-alive) vs
//! nginx with the same certificate; 7b: EventSource fan-out on one topic vs Nchan's EventSource
//! subscriber.

use super::env::Env;
use super::machine::which;
use super::measure::{median, paired_text, ratio, Measure, HTTP_COLUMNS};
use super::nginx;
use super::plan::Mode;
use super::pollgate_config::pollgate_config;
use super::rounds::Job;
use super::servers::TICK;
use crate::client;
use crate::procs::{self, Procs};
use crate::report::{fmt, Report, Section};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SSE_COLUMNS: &[&str] = &[
    "Contender",
    "streams",
    "delivered",
    "open s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "fan-out s",
    "server RSS KiB/stream",
    "p99 vs pollgate",
];

const H2_COLUMNS: &[&str] = &[
    "Contender",
    "held polls",
    "connections",
    "delivered",
    "p50 ms",
    "p99 ms",
    "max ms",
    "fan-out s",
    "server RSS bytes/held poll",
    "p99 vs HTTP/1.1",
];

/// Held polls per HTTP/2 connection in 7c (the issue's test holds 100 on one connection).
const H2_STREAMS_PER_CONN: usize = 100;

/// Nchan's EventSource subscriber, its publisher and its stub status, by channel id.
const NCHAN_SSE_BLOCK: &str = r#"  nchan_max_reserved_memory 256M;
  server {
    listen @LISTEN@;
    location ~ ^/pub/(.+)$ { nchan_publisher; nchan_channel_id $1; }
    location ~ ^/sse/(.+)$ { nchan_subscriber eventsource; nchan_channel_id $1; }
    location = /nchan_status { nchan_stub_status; }
  }"#;

pub(super) fn s7(env: &Env, report: &mut Report) -> Result<(), String> {
    let mut tls = Section::new("s7_tls", "7a. Cache-hit short polls over TLS", HTTP_COLUMNS);
    let r1 = tls_cache_hit(env, report, &mut tls);
    if let Err(e) = &r1 {
        tls.error = Some(e.clone());
    }
    report.sections.push(tls);
    let mut sse = Section::new(
        "s7_sse",
        "7b. EventSource fan-out on one topic",
        SSE_COLUMNS,
    );
    let r2 = sse_fan_out(env, report, &mut sse);
    if let Err(e) = &r2 {
        sse.error = Some(e.clone());
    }
    report.sections.push(sse);
    if env.mode == Mode::Smoke {
        return r1.and(r2);
    }
    let mut h2 = Section::new(
        "s7_h2",
        "7c. Held polls over HTTP/2 (TLS) vs HTTP/1.1",
        H2_COLUMNS,
    );
    let r3 = h2_held(env, report, &mut h2);
    if let Err(e) = &r3 {
        h2.error = Some(e.clone());
    }
    report.sections.push(h2);
    r1.and(r2).and(r3)
}

/// A self-signed P-256 certificate for 127.0.0.1 and its key (PKCS#8), made once per run.
fn make_cert(env: &Env) -> Result<(PathBuf, PathBuf), String> {
    let openssl = which("openssl").ok_or("the openssl command is not installed")?;
    let cert = env.dir.join("s7-cert.pem");
    let key = env.dir.join("s7-key.pem");
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("openssl req: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((cert, key))
}

/// The protocol and cipher suite a server negotiates with OpenSSL's client defaults (wrk's).
fn negotiated(addr: &str) -> String {
    let Some(openssl) = which("openssl") else {
        return "?".into();
    };
    let out = Command::new(openssl)
        .args(["s_client", "-brief", "-connect", addr])
        .stdin(Stdio::null())
        .output();
    let Ok(out) = out else { return "?".into() };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    match (field("Protocol version:"), field("Ciphersuite:")) {
        (Some(p), Some(c)) => format!("{p} {c}"),
        _ => "?".into(),
    }
}

/// `n` GETs over HTTPS (HTTP/1.1, one connection) with curl; every answer must be `body`.
fn https_check(url: &str, n: usize, body: &[u8]) -> Result<(), String> {
    let curl = which("curl").ok_or("curl is not installed")?;
    let mut cmd = Command::new(curl);
    cmd.args(["-sS", "-k", "--http1.1", "--max-time", "10"]);
    for _ in 0..n {
        cmd.arg(url);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    let want = body.repeat(n);
    if !out.status.success() || out.stdout != want {
        return Err(format!(
            "{n} GETs of {url}: curl {} answered {:?} (want {n} x {:?}) {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Adds the HTTPS listener to a pollgate config.
fn with_tls(config: &str, tls_addr: &str, cert: &Path, key: &Path) -> String {
    format!(
        "{config}tls:\n  listen: \"{tls_addr}\"\n  cert: \"{}\"\n  key: \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// Polls until pollgate answers `path` with the backend's body; the ETag it answers with.
fn warm(env: &Env, addr: &str, path: &str, body: &[u8]) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = env.block(client::get(addr, path, Duration::from_secs(5)));
        if let Ok(r) = &r {
            if r.status == 200 && r.body == body {
                if let Some(e) = r.header("etag") {
                    return Ok(e.to_string());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("pollgate never answered {path} from cache: {r:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tls_cache_hit(env: &Env, report: &mut Report, sec: &mut Section) -> Result<(), String> {
    if env.wrk.is_none() && env.mode != Mode::Smoke {
        sec.notes.push(
            "wrk is not installed (the only load generator here that speaks TLS): skipped.".into(),
        );
        return Ok(());
    }
    if which("curl").is_none() {
        sec.notes
            .push("curl is not installed (it checks the HTTPS answers): skipped.".into());
        return Ok(());
    }
    let (cert, key) = match make_cert(env) {
        Ok(c) => c,
        Err(e) => {
            sec.notes.push(format!("no certificate ({e}): skipped."));
            return Ok(());
        }
    };
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
    let path = "/api/prices/bench";
    let direct = env
        .block(client::get(&backend.addr, path, Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let body_file = env.dir.join("s7-body.json");
    std::fs::write(&body_file, &direct.body).map_err(|e| e.to_string())?;
    let tls_addr = procs::free_addr()?;
    let config = with_tls(
        &pollgate_config(&backend.addr, Some("0s")),
        &tls_addr,
        &cert,
        &key,
    );
    let gw = env.start_pollgate(&mut p, &config)?;
    // The cleartext listener warms the topic: both listeners serve the same cache.
    let etag = warm(env, &gw.addr, path, &direct.body)?;
    let pg_url = format!("https://{tls_addr}{path}");
    if env.mode == Mode::Smoke {
        https_check(&pg_url, 5, &direct.body)?;
        sec.notes.push(
            "Smoke: 5 GETs over HTTPS (curl, HTTP/1.1, one connection) answered from the cache with \
             the backend's bytes."
                .into(),
        );
        sec.rows.push(vec![
            "pollgate over TLS (5 checked GETs)".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            direct.body.len().to_string(),
            "0".into(),
            "-".into(),
            "-".into(),
        ]);
        return Ok(());
    }
    if env.nginx.is_none() {
        sec.notes
            .push("nginx is not installed: no nginx rows, no target.".into());
    }
    https_check(&pg_url, 3, &direct.body)?;
    let block = nginx::return_block(&etag, &direct.body);
    let tls_block = block.replace(
        "listen @LISTEN@;",
        &format!(
            "listen @LISTEN@ ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
             ssl_protocols TLSv1.2 TLSv1.3;",
            cert.display(),
            key.display()
        ),
    );
    let ngx_tls = match env.nginx {
        Some(_) => Some(env.start_nginx(&mut p, &tls_block, false)?),
        None => None,
    };
    let ngx_plain = match env.nginx {
        Some(_) => Some(env.start_nginx(&mut p, &block, false)?),
        None => None,
    };
    let ngx_tls_url = ngx_tls.as_ref().map(|n| format!("https://{}", n.addr));
    if let Some(u) = &ngx_tls_url {
        https_check(&format!("{u}{path}"), 3, &direct.body)?;
    }
    let pg_tls_addr = format!("https://{tls_addr}");
    let body = Some(body_file.as_path());
    let mut jobs = vec![
        Job {
            key: "pollgate_tls",
            addr: &pg_tls_addr,
            pid: Some(gw.pid),
            path,
            headers: &[],
            status: 200,
            rate: None,
            body,
        },
        Job {
            key: "pollgate_plain",
            addr: &gw.addr,
            pid: Some(gw.pid),
            path,
            headers: &[],
            status: 200,
            rate: None,
            body,
        },
    ];
    if let (Some(n), Some(u)) = (&ngx_tls, &ngx_tls_url) {
        jobs.insert(
            1,
            Job {
                key: "nginx_tls",
                addr: u,
                pid: n.worker.or(Some(n.pid)),
                path,
                headers: &[],
                status: 200,
                rate: None,
                body,
            },
        );
    }
    if let Some(n) = &ngx_plain {
        jobs.push(Job {
            key: "nginx_plain",
            addr: &n.addr,
            pid: n.worker.or(Some(n.pid)),
            path,
            headers: &[],
            status: 200,
            rate: None,
            body,
        });
    }
    let pg_cipher = negotiated(&tls_addr);
    let ngx_cipher = ngx_tls
        .as_ref()
        .map(|n| negotiated(&n.addr))
        .unwrap_or_else(|| "-".into());
    let ms = env.rounds(&jobs)?;
    let get = |k: &str| jobs.iter().position(|j| j.key == k).map(|i| ms[i].clone());
    let mut pg = get("pollgate_tls").expect("measured");
    let pg_plain = get("pollgate_plain").expect("measured");
    let mut n_tls = get("nginx_tls");
    let n_plain = get("nginx_plain");
    // The same server answers the same bytes on both listeners (HTTP bytes, before TLS framing).
    pg.bytes_per_response = pg_plain.bytes_per_response;
    if let (Some(t), Some(c)) = (&mut n_tls, &n_plain) {
        t.bytes_per_response = c.bytes_per_response;
    }
    sec.notes.push(format!(
        "wrk -t1 -c{} -d{}s over https (HTTP/1.1 keep-alive: the handshakes happen once per connection, \
         so this measures TLS record encryption on the cache-hit path) against each contender on one core; \
         the same {} bytes of JSON from each. One self-signed P-256 certificate (`openssl req`, made per run) \
         for both. pollgate: `tls: {{ listen, cert, key }}` beside its cleartext listener, `threads: 1`, \
         latest-mode route warmed first; nginx: the scenario-1 `return 200` block with `listen ... ssl`, \
         `ssl_protocols TLSv1.2 TLSv1.3`, worker_processes 1. Negotiated with OpenSSL's client defaults \
         (as wrk): pollgate {pg_cipher}, nginx {ngx_cipher}. The cleartext rows are the same servers \
         without TLS, for the cost of TLS itself. \"vs pollgate\" is pollgate-over-TLS req/s divided by the \
         contender's.",
        env.plan.conns,
        env.plan.http_s,
        direct.body.len()
    ));
    sec.notes.push(env.rounds_note());
    sec.rows.push(pg.row("pollgate over TLS", "1.00"));
    if let Some(m) = &n_tls {
        sec.rows
            .push(m.row("nginx `return 200` over TLS", &fmt(ratio(pg.rps, m.rps), 2)));
    }
    sec.rows.push(pg_plain.row(
        "pollgate cleartext (context)",
        &fmt(ratio(pg.rps, pg_plain.rps), 2),
    ));
    if let Some(m) = &n_plain {
        sec.rows
            .push(m.row("nginx cleartext (context)", &fmt(ratio(pg.rps, m.rps), 2)));
    }
    sec.data = json!({
        "pollgate_tls": pg.json(),
        "nginx_tls": n_tls.as_ref().map(Measure::json),
        "pollgate_plain": pg_plain.json(),
        "nginx_plain": n_plain.as_ref().map(Measure::json),
        "negotiated_pollgate": pg_cipher,
        "negotiated_nginx": ngx_cipher,
    });
    if let Some(m) = &n_tls {
        let (r, text) = paired_text(&pg, m);
        report.target(
            "7a",
            "req/s pollgate / nginx over TLS (same certificate and cipher)",
            ">= 0.9",
            text,
            Some(r),
            Some(r >= 0.9),
        );
    }
    Ok(())
}

/// One EventSource fan-out run (pollgate or Nchan) with the `sse-fanout` client.
fn sse_run(
    env: &Env,
    streams: usize,
    target: &str,
    path: &str,
    (publish, publish_path): (&str, &str),
    ready: (&str, &str),
    pid: Option<u32>,
) -> Result<Value, String> {
    let mut args: Vec<String> = [
        "--target",
        target,
        "--path",
        path,
        "--streams",
        &streams.to_string(),
        "--publish",
        publish,
        "--publish-path",
        publish_path,
        ready.0,
        ready.1,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(pid) = pid {
        args.push("--pid".into());
        args.push(pid.to_string());
    }
    env.client("sse-fanout", &args, Duration::from_secs(150))
}

fn sse_row(name: &str, v: &Value, vs: &str) -> Vec<String> {
    let l = &v["latency"];
    let f = |x: &Value, d: usize| x.as_f64().map(|x| fmt(x, d)).unwrap_or_else(|| "-".into());
    vec![
        name.into(),
        v["streams"].to_string(),
        v["delivered"].to_string(),
        f(&v["open_s"], 2),
        f(&l["p50_ms"], 1),
        f(&l["p99_ms"], 1),
        f(&l["max_ms"], 1),
        f(&v["fanout_s"], 3),
        f(&v["kib_per_stream"], 1),
        vs.into(),
    ]
}

fn p99(v: &Value) -> f64 {
    v["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN)
}

fn sse_fan_out(env: &Env, report: &mut Report, sec: &mut Section) -> Result<(), String> {
    let streams = env.plan.lp_behaviour_clients;
    let rounds = env.plan.lp_rounds.max(1);
    let nchan = env.mode != Mode::Smoke && env.nginx.is_some() && env.nchan_module.is_some();
    let mut data = Map::new();
    let mut pg_runs = Vec::new();
    let mut ng_runs = Vec::new();
    for round in 0..rounds {
        // Fresh servers each round, so a round starts from the same state for both.
        let mut p = Procs::new(&env.dir);
        let backend = env.start_backend(&mut p, &[], 3_600_000)?;
        let topic = format!("sse{round}");
        let publish_path = format!("/publish/{topic}");
        let r = env
            .block(client::post(
                &backend.addr,
                &publish_path,
                TICK.as_bytes(),
                Duration::from_secs(5),
            ))
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("seed publish: {}", r.status));
        }
        let path = format!("/api/prices/{topic}");
        let direct = env
            .block(client::get(&backend.addr, &path, Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let gw = env.start_pollgate(&mut p, &pollgate_config(&backend.addr, Some("30s")))?;
        // Subscribed and cached first: every stream then starts with the seed, then the event.
        warm(env, &gw.addr, &path, &direct.body)?;
        let admin = gw.admin.clone().expect("pollgate has an admin listener");
        let v = sse_run(
            env,
            streams,
            &gw.addr,
            &path,
            (&backend.addr, &publish_path),
            ("--ready-prometheus", &admin),
            Some(gw.pid),
        )?;
        eprintln!(
            "  round {}: pollgate SSE: {} of {} delivered, p50 {} ms p99 {} ms",
            round + 1,
            v["delivered"],
            streams,
            v["latency"]["p50_ms"],
            v["latency"]["p99_ms"]
        );
        p.stop_all();
        data.insert(format!("pollgate_round{}", round + 1), v.clone());
        pg_runs.push(v);
        if nchan {
            let mut p = Procs::new(&env.dir);
            let ngx = env.start_nginx(&mut p, NCHAN_SSE_BLOCK, true)?;
            let chan = format!("sse{round}");
            let v = sse_run(
                env,
                streams,
                &ngx.addr,
                &format!("/sse/{chan}"),
                (&ngx.addr, &format!("/pub/{chan}")),
                ("--ready-nchan", &ngx.addr),
                ngx.worker,
            )?;
            eprintln!(
                "  round {}: Nchan SSE: {} of {} delivered, p50 {} ms p99 {} ms",
                round + 1,
                v["delivered"],
                streams,
                v["latency"]["p50_ms"],
                v["latency"]["p99_ms"]
            );
            p.stop_all();
            data.insert(format!("nchan_round{}", round + 1), v.clone());
            ng_runs.push(v);
        }
    }
    sec.notes.push(format!(
        "{streams} EventSource streams (`GET` with `Accept: text/event-stream`, HTTP/1.1, one connection \
         each, `pollgate-bench sse-fanout` on the load CPU) on one topic; once the server reports them all \
         open (pollgate: `pollgate_sse_streams_active` on its admin `/metrics`; Nchan: `nchan_stub_status` \
         subscribers), one message carrying a tag unique to the run is published (pollgate: `POST \
         /publish/{{topic}}` on the sample backend, which pushes it over the gateway's upstream WebSocket; \
         Nchan: `POST` to its publisher location; its subscriber location is `nchan_subscriber eventsource`). \
         Latency: from sending the publish to the tag arriving on a stream. pollgate's topic is seeded and \
         warmed first, so each stream starts with the current message and then gets the new one; Nchan's \
         channel is new. pollgate and Nchan (1 worker) each on the server CPU, fresh processes in each of \
         {rounds} interleaved round(s); the table shows each one's round with the median p99. RSS per \
         stream: the server's RSS once every stream is open minus before they opened (Nchan's worker: \
         shared memory it touched counts too)."
    ));
    let pick = |runs: &[Value]| -> Option<Value> {
        let mut v = runs.to_vec();
        v.sort_by(|a, b| p99(a).total_cmp(&p99(b)));
        v.get(v.len().saturating_sub(1) / 2).cloned()
    };
    let all = |runs: &[Value]| runs.iter().all(|v| v["all_delivered"] == json!(true));
    let pg = pick(&pg_runs).ok_or("no pollgate run")?;
    sec.rows.push(sse_row("pollgate", &pg, "1.00"));
    report.target(
        "7b",
        &format!("SSE: every one of {streams} streams gets the event (pollgate, every round)"),
        &streams.to_string(),
        pg_runs
            .iter()
            .map(|v| v["delivered"].to_string())
            .collect::<Vec<_>>()
            .join(", "),
        None,
        Some(all(&pg_runs)),
    );
    if let Some(ng) = pick(&ng_runs) {
        sec.rows.push(sse_row(
            "Nchan (eventsource)",
            &ng,
            &fmt(ratio(p99(&pg), p99(&ng)), 2),
        ));
        let each: Vec<f64> = pg_runs
            .iter()
            .zip(&ng_runs)
            .map(|(a, b)| ratio(p99(a), p99(b)))
            .collect();
        let r = median(&each);
        let text: Vec<String> = each.iter().map(|x| format!("{x:.2}")).collect();
        report.target(
            "7b",
            &format!("SSE fan-out to {streams} streams: p99 pollgate / Nchan"),
            "<= 1.0",
            format!("{r:.2} (median of rounds {})", text.join(", ")),
            Some(r),
            Some(r <= 1.0 && all(&pg_runs)),
        );
        if !all(&ng_runs) {
            sec.notes.push(
                "Nchan did not deliver to every stream in every round (see results.json).".into(),
            );
        }
    } else if env.mode != Mode::Smoke {
        sec.notes
            .push("nginx with libnginx-mod-nchan is not installed: no Nchan row.".into());
    }
    sec.data = Value::Object(data);
    if !all(&pg_runs) {
        return Err(format!(
            "pollgate did not deliver the event to every stream: {}",
            pg_runs
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(())
}

fn h2_row(name: &str, v: &Value, conns: &str, vs: &str) -> Vec<String> {
    let l = &v["latency"];
    let f = |x: &Value, d: usize| x.as_f64().map(|x| fmt(x, d)).unwrap_or_else(|| "-".into());
    let polls = v.get("polls").or_else(|| v.get("expected")).cloned();
    vec![
        name.into(),
        polls.map(|p| p.to_string()).unwrap_or_default(),
        conns.into(),
        v["delivered"].to_string(),
        f(&l["p50_ms"], 1),
        f(&l["p99_ms"], 1),
        f(&l["max_ms"], 1),
        f(&v["fanout_s"], 3),
        f(&v["rss_per_held_bytes"], 0),
        vs.into(),
    ]
}

/// 7c: the same number of held polls on one topic over HTTP/2 on TLS (100 streams per
/// connection) and over HTTP/1.1 cleartext (one connection each), on fresh pollgates.
fn h2_held(env: &Env, report: &mut Report, sec: &mut Section) -> Result<(), String> {
    let polls = env.plan.lp_behaviour_clients;
    let conns = polls.div_ceil(H2_STREAMS_PER_CONN).max(1);
    let (cert, key) = match make_cert(env) {
        Ok(c) => c,
        Err(e) => {
            sec.notes.push(format!("no certificate ({e}): skipped."));
            return Ok(());
        }
    };
    let rounds = env.plan.lp_rounds.max(1);
    let mut data = Map::new();
    let (mut h2_runs, mut h1_runs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for h2 in [true, false] {
            let mut p = Procs::new(&env.dir);
            let backend = env.start_backend(&mut p, &[], 3_600_000)?;
            let topic = if h2 { "h2x0" } else { "h1x0" };
            let r = env
                .block(client::post(
                    &backend.addr,
                    &format!("/publish/{topic}"),
                    TICK.as_bytes(),
                    Duration::from_secs(5),
                ))
                .map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("seed publish: {}", r.status));
            }
            let path = format!("/api/prices/{topic}");
            let direct = env
                .block(client::get(&backend.addr, &path, Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let tls_addr = procs::free_addr()?;
            let config = with_tls(
                &pollgate_config(&backend.addr, Some("60s")),
                &tls_addr,
                &cert,
                &key,
            );
            let gw = env.start_pollgate(&mut p, &config)?;
            warm(env, &gw.addr, &path, &direct.body)?;
            let admin = gw.admin.clone().expect("admin listener");
            let v = if h2 {
                let args: Vec<String> = [
                    "--target",
                    &tls_addr,
                    "--path",
                    &path,
                    "--polls",
                    &polls.to_string(),
                    "--connections",
                    &conns.to_string(),
                    "--publish",
                    &backend.addr,
                    "--publish-path",
                    &format!("/publish/{topic}"),
                    "--held-prometheus",
                    &admin,
                    "--pid",
                    &gw.pid.to_string(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                env.client("h2-polls", &args, Duration::from_secs(150))?
            } else {
                let args: Vec<String> = [
                    "--target",
                    &gw.addr,
                    "--path-template",
                    "/api/prices/{topic}",
                    "--topics",
                    "1",
                    "--clients",
                    &polls.to_string(),
                    "--topic-prefix",
                    "h1x",
                    "--publish",
                    &backend.addr,
                    "--held-prometheus",
                    &admin,
                    "--pid",
                    &gw.pid.to_string(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                env.client("longpoll", &args, Duration::from_secs(150))?
            };
            eprintln!(
                "  round {}: pollgate held polls over {}: {} delivered, p99 {} ms, {} bytes/held poll",
                round + 1,
                if h2 { "HTTP/2" } else { "HTTP/1.1" },
                v["delivered"],
                v["latency"]["p99_ms"],
                v["rss_per_held_bytes"]
            );
            p.stop_all();
            let key = if h2 { "h2" } else { "h1" };
            data.insert(format!("{key}_round{}", round + 1), v.clone());
            if h2 { &mut h2_runs } else { &mut h1_runs }.push(v);
        }
    }
    sec.notes.push(format!(
        "{polls} held polls (`If-None-Match` with the topic's current ETag, `long_poll: 60s`) on one topic of \
         a fresh pollgate each run, answered by one publish through the sample backend. HTTP/2: \
         `pollgate-bench h2-polls` over TLS with ALPN `h2`, {H2_STREAMS_PER_CONN} polls per connection on \
         {conns} connections. HTTP/1.1: the scenario-3 `longpoll` client over cleartext, one connection per \
         poll. Latency from sending the publish to a poll's answer headers; RSS per held poll is pollgate's \
         RSS growth while the polls are taken, divided by the polls. {rounds} interleaved round(s); the \
         table shows each one's run with the median p99. Reported, no target (Nchan's HTTP/2 needs \
         nginx's `http2` on a TLS listener, not run here)."
    ));
    let pick = |runs: &[Value]| -> Option<Value> {
        let mut v = runs.to_vec();
        v.sort_by(|a, b| p99(a).total_cmp(&p99(b)));
        v.get(v.len().saturating_sub(1) / 2).cloned()
    };
    let all = |runs: &[Value]| runs.iter().all(|v| v["all_delivered"] == json!(true));
    let (h2v, h1v) = (
        pick(&h2_runs).ok_or("no run")?,
        pick(&h1_runs).ok_or("no run")?,
    );
    sec.rows.push(h2_row(
        "pollgate, HTTP/2 over TLS",
        &h2v,
        &conns.to_string(),
        &fmt(ratio(p99(&h2v), p99(&h1v)), 2),
    ));
    sec.rows.push(h2_row(
        "pollgate, HTTP/1.1 cleartext",
        &h1v,
        &polls.to_string(),
        "1.00",
    ));
    let each: Vec<f64> = h2_runs
        .iter()
        .zip(&h1_runs)
        .map(|(a, b)| ratio(p99(a), p99(b)))
        .collect();
    let r = median(&each);
    report.target(
        "7c",
        &format!("{polls} held polls over HTTP/2: p99 HTTP/2 / HTTP/1.1 (pollgate)"),
        "(reported)",
        format!(
            "{r:.2} (median of rounds {}); {} vs {} bytes/held poll",
            each.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            h2v["rss_per_held_bytes"]
                .as_f64()
                .map(|x| fmt(x, 0))
                .unwrap_or_else(|| "-".into()),
            h1v["rss_per_held_bytes"]
                .as_f64()
                .map(|x| fmt(x, 0))
                .unwrap_or_else(|| "-".into())
        ),
        Some(r),
        None,
    );
    sec.data = Value::Object(data);
    if !all(&h2_runs) {
        return Err("pollgate did not answer every held HTTP/2 poll (see results.json)".into());
    }
    Ok(())
}
