//! Finding the tools, and the machine the results were measured on.

use super::env::Env;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

pub(super) fn which(name: &str) -> Option<PathBuf> {
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

pub(super) fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub(super) fn machine(env: &Env) -> Value {
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
