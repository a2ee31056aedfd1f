//! Scenario 4: the backend's load with and without pollgate in front.

use super::env::Env;
use super::pollgate_config::pollgate_config;
use crate::client;
use crate::procs::Procs;
use crate::report::{fmt, Report, Section};
use serde_json::{json, Value};
use std::time::Duration;

/// The sample backend's counters.
fn backend_stats(env: &Env, addr: &str) -> Result<(Value, u64), String> {
    let r = env
        .block(client::get(addr, "/stats", Duration::from_secs(5)))
        .map_err(|e| format!("/stats: {e}"))?;
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("/stats: {e}"))?;
    Ok((v, r.wire_len as u64))
}

/// Scenario 4: backend load with and without pollgate.
pub(super) fn s4(env: &Env, report: &mut Report) -> Result<(), String> {
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
