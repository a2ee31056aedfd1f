//! Driving load: the harness's own load clients (run as subprocesses on the client CPU) and wrk,
//! each bounded in time.

use super::env::Env;
use super::measure::Measure;
use super::wrk::parse_wrk;
use crate::client;
use crate::procs;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

impl Env {
    /// Runs a load client (this binary's subcommand) on the client CPU; its JSON result.
    pub(super) fn client(
        &self,
        sub: &str,
        args: &[String],
        limit: Duration,
    ) -> Result<Value, String> {
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
    pub(super) fn http_load(
        &self,
        addr: &str,
        path: &str,
        headers: &[String],
        secs: f64,
        expect_status: u16,
        expect_body: Option<&Path>,
    ) -> Result<Measure, String> {
        // `https://ADDR`: wrk only, and the caller checks the answer (our client speaks no TLS).
        if let Some(host) = addr.strip_prefix("https://") {
            let wrk = self
                .wrk
                .as_ref()
                .ok_or("load over https needs wrk, which is not installed")?;
            return self.wrk_load(wrk, &format!("https://{host}{path}"), headers, secs, 0);
        }
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
            return self.wrk_load(wrk, &format!("http://{addr}{path}"), headers, secs, wire);
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

    /// wrk (`-t1`, `plan.conns` connections) on `url` for `secs`, after the plan's warm-up.
    fn wrk_load(
        &self,
        wrk: &Path,
        url: &str,
        headers: &[String],
        secs: f64,
        wire: u64,
    ) -> Result<Measure, String> {
        let conns = self.plan.conns;
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
            cmd.arg(url);
            let out = output_bounded(cmd, Duration::from_secs_f64(secs + 30.0), "wrk")?;
            let mut m =
                parse_wrk(&out).ok_or_else(|| format!("cannot read wrk's output:\n{out}"))?;
            m.bytes_per_response = wire;
            Ok(m)
        };
        if self.plan.warmup_s > 0.0 {
            run(self.plan.warmup_s)?;
        }
        run(secs)
    }

    /// Paced keep-alive load (`http-load --rate`): `conns` clients at `rate` requests/s each, so
    /// every contender serves the same request rate and latencies compare at equal load.
    pub(super) fn paced_load(
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
