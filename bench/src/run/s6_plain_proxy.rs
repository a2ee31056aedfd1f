//! Scenario 6: plain reverse proxying, pollgate vs nginx.

use super::env::Env;
use super::measure::{paired_text, ratio, HTTP_COLUMNS};
use super::nginx;
use super::pollgate_config::pollgate_config;
use super::rounds::Job;
use super::servers::TICK;
use crate::client;
use crate::procs::Procs;
use crate::report::{fmt, Report, Section};
use serde_json::json;
use std::time::Duration;

/// Scenario 6: plain reverse proxying, pollgate vs nginx.
pub(super) fn s6(env: &Env, report: &mut Report) -> Result<(), String> {
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
            let block = nginx::proxy_pass_block(&backend.addr);
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
            let best = ratio(m_pg.rps, m.rps);
            sec.rows.push(m.row("nginx proxy_pass", &fmt(best, 2)));
            let (r, text) = paired_text(&m_pg, &m);
            report.target(
                "6",
                "proxied req/s pollgate / nginx",
                ">= 0.9",
                text,
                Some(r),
                Some(r >= 0.9),
            );
            data["nginx"] = m.json();
            data["ratio_pollgate_nginx"] = json!(best);
            data["paired_ratio_pollgate_nginx"] = json!(r);
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
