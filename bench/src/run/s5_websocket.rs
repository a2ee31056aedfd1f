//! Scenario 5: WebSocket pass-through.

use super::env::Env;
use super::measure::ratio;
use super::pollgate_config::pollgate_config;
use crate::procs::Procs;
use crate::report::{fmt, Report, Section};
use serde_json::{json, Value};
use std::time::Duration;

/// Scenario 5: WebSocket pass-through.
pub(super) fn s5(env: &Env, report: &mut Report) -> Result<(), String> {
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
