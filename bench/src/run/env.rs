//! What every scenario runs with: the tools found, the scratch directory, the CPU placement, the
//! runtime for the orchestrator's own requests, and the plan.

use super::plan::{Mode, Plan};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(super) struct Env {
    /// This binary: bare pingora and the load clients are its subcommands.
    pub(super) exe: PathBuf,
    pub(super) pollgate: PathBuf,
    /// Top-level config lines added to every pollgate config (`run --pollgate-set`).
    pub(super) pollgate_set: Vec<String>,
    pub(super) nginx: Option<PathBuf>,
    pub(super) nchan_module: Option<PathBuf>,
    pub(super) wrk: Option<PathBuf>,
    /// Scratch: configs, nginx prefixes and every process's log (kept when a scenario fails).
    pub(super) dir: PathBuf,
    /// `taskset` CPU lists; `None`: no pinning.
    pub(super) server_cpu: Option<String>,
    pub(super) client_cpu: Option<String>,
    /// For the orchestrator's own requests (readiness, checks, publishes); the load itself comes
    /// from client processes.
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) plan: Plan,
    pub(super) mode: Mode,
    /// Numbers process names, so each one's log and files are its own.
    pub(super) seq: AtomicUsize,
    /// Running as root: nginx is then told `user root;` (nginx.rs).
    pub(super) root: bool,
}

impl Env {
    pub(super) fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.seq.fetch_add(1, Ordering::Relaxed))
    }

    pub(super) fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}
