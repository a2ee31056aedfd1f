//! Starting the sample backend, pollgate and bare pingora (nginx: [`super::nginx`]), each
//! waited for until it answers.

use super::env::Env;
use super::pollgate_config::with_settings;
use crate::client;
use crate::procs::{self, Procs};
use std::path::Path;
use std::time::{Duration, Instant};

/// A price tick of a realistic size, published to the sample backend by scenarios 1, 2 and 6: the
/// payload every cache-hit contender answers.
pub(super) const TICK: &str = r#"{"symbol":"BENCH-USD","price":101.25,"bid":101.24,"ask":101.26,"volume":12345.678,"change_24h":-0.0123,"tick":1}"#;

/// A started server.
pub(super) struct Svc {
    pub(super) addr: String,
    pub(super) admin: Option<String>,
    pub(super) pid: u32,
    /// nginx: the worker process (the one serving, whose memory counts).
    pub(super) worker: Option<u32>,
}

impl Env {
    pub(super) fn start_backend(
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

    pub(super) fn start_pollgate(&self, p: &mut Procs, config: &str) -> Result<Svc, String> {
        self.start_pollgate_on(p, config, self.server_cpu.as_deref())
    }

    /// [`Self::start_pollgate`] pinned to `cpu` (`None`: free to use every core).
    pub(super) fn start_pollgate_on(
        &self,
        p: &mut Procs,
        config: &str,
        cpu: Option<&str>,
    ) -> Result<Svc, String> {
        let addr = procs::free_addr()?;
        let admin = procs::free_addr()?;
        let name = self.name("pollgate");
        let path = self.dir.join(format!("{name}.yaml"));
        let text = with_settings(
            &config.replace("@LISTEN@", &addr).replace("@ADMIN@", &admin),
            &self.pollgate_set,
        );
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

    pub(super) fn start_bare(&self, p: &mut Procs, body_file: &Path) -> Result<Svc, String> {
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
}
