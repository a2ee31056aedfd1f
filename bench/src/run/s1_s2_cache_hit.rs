//! Scenarios 1 and 2: cache-hit short polls (1b: at an equal paced load) and conditional polls.

use super::env::Env;
use super::measure::{paired_ratio, paired_text, ratio, Measure, HTTP_COLUMNS};
use super::nginx;
use super::plan::Mode;
use super::pollgate_config::pollgate_config;
use super::rounds::Job;
use super::servers::TICK;
use crate::client;
use crate::procs::Procs;
use crate::report::{fmt, Report, Section};
use serde_json::json;
use std::time::{Duration, Instant};

/// Requests per second per client in the equal-load latency runs (times `conns` clients).
const PACED_RATE: f64 = 400.0;

/// Scenarios 1 and 2: cache-hit short polls and conditional polls.
pub(super) fn s1_s2(env: &Env, report: &mut Report) -> Result<(), String> {
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
        let block = nginx::return_block(&etag, &direct.body);
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
        "paired_ratio_pollgate_bare": paired_ratio(&m_pg, &m_bare).0,
        "paired_ratio_pollgate_nginx": m_nginx.as_ref().map(|m| paired_ratio(&m_pg, m).0),
        "ratio_p99_pollgate_nginx": m_nginx.as_ref().map(|m| ratio(m_pg.p99_ms, m.p99_ms)),
    });
    let (r, text) = paired_text(&m_pg, &m_bare);
    report.target(
        "1",
        "req/s pollgate / bare pingora",
        ">= 0.9",
        text,
        Some(r),
        Some(r >= 0.9),
    );
    if let Some(m) = &m_nginx {
        let (r, text) = paired_text(&m_pg, m);
        report.target(
            "1",
            "req/s pollgate / nginx",
            ">= 0.95",
            text,
            Some(r),
            Some(r >= 0.95),
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
