//! deploy/systemd/ checked against its config and the real binary: the unit's pid file, runtime
//! directory, stop timeout, limits and hardening agree with pollgate.yaml, and the reload script
//! upgrades a running `pollgate -d` in place without refusing a request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::deploy::{as_u64, at, root, yaml};
use common::{repo_file, scratch_dir, spawn_sample_backend, status_of, BIN};

fn unit_key<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

#[test]
fn systemd_unit_agrees_with_its_config() {
    let unit = repo_file("deploy/systemd/pollgate.service");
    let conf = yaml("deploy/systemd/pollgate.yaml");
    assert_eq!(unit_key(&unit, "Type"), Some("forking"));
    let pid_file = at(&conf, &["pid_file"]).as_str().unwrap();
    assert_eq!(unit_key(&unit, "PIDFile"), Some(pid_file));
    let run_dir = format!("/run/{}/", unit_key(&unit, "RuntimeDirectory").unwrap());
    assert!(pid_file.starts_with(&run_dir));
    assert!(at(&conf, &["upgrade_sock"])
        .as_str()
        .unwrap()
        .starts_with(&run_dir));
    assert!(unit_key(&unit, "ExecStart").unwrap().contains(" -d "));
    assert!(unit_key(&unit, "ExecReload")
        .unwrap()
        .ends_with("/pollgate-reload"));
    let nofile: u64 = unit_key(&unit, "LimitNOFILE").unwrap().parse().unwrap();
    assert!(nofile >= 262_144);
    let stop: u64 = unit_key(&unit, "TimeoutStopSec")
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let need = as_u64(at(&conf, &["grace_period_seconds"]))
        + as_u64(at(&conf, &["graceful_shutdown_timeout_seconds"]));
    assert!(
        stop > need,
        "TimeoutStopSec={stop}s must exceed the {need}s pollgate may take"
    );
    for k in [
        "ProtectSystem",
        "ProtectHome",
        "NoNewPrivileges",
        "PrivateTmp",
    ] {
        assert!(unit_key(&unit, k).is_some(), "the unit lacks {k}=");
    }
    assert_eq!(unit_key(&unit, "CapabilityBoundingSet"), Some(""));
}

/// Processes to stop when the test ends, however it ends.
struct Reap {
    children: Vec<Child>,
    pid_file: PathBuf,
    pids: Vec<u32>,
}

impl Drop for Reap {
    fn drop(&mut self) {
        // The scratch directory holds the pid file, sockets, configs and the log.
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut pids = self.pids.clone();
        pids.extend(read_pid(&self.pid_file));
        for p in pids {
            let _ = Command::new("bash")
                .args(["-c", &format!("kill -KILL {p}")])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(dir) = self.pid_file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name; Z is an unreaped zombie.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// One plain HTTP/1.1 GET on a new connection; the status code.
fn get_status(port: u16, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    match status_of(&text) {
        0 => Err(format!("bad response: {text:?}")),
        code => Ok(code),
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn reload_script_upgrades_without_refusing_a_request() {
    let dir = scratch_dir();
    let pid_file = dir.join("pollgate.pid");
    let mut reap = Reap {
        children: Vec::new(),
        pid_file: pid_file.clone(),
        pids: Vec::new(),
    };
    // Every port is picked by the kernel and learnt from the process that holds it.
    let (sample, backend) = spawn_sample_backend(&["--topics", "btc", "--period-ms", "100"]);
    reap.children.push(sample);

    // The systemd config with this test's paths, on ports the kernel picks.
    let conf_with = |listen: &str, admin: &str| {
        repo_file("deploy/systemd/pollgate.yaml")
            .replace("0.0.0.0:8080", listen)
            .replace("127.0.0.1:9091", admin)
            .replace("127.0.0.1:9000", &backend.to_string())
            .replace("/run/pollgate/", &format!("{}/", dir.display()))
            .replace("grace_period_seconds: 5", "grace_period_seconds: 1")
            .replace(
                "graceful_shutdown_timeout_seconds: 5",
                "graceful_shutdown_timeout_seconds: 1",
            )
    };
    let conf_text = conf_with("127.0.0.1:0", "127.0.0.1:0");
    assert!(conf_text.contains(&dir.display().to_string()));
    let conf = dir.join("pollgate.yaml");
    std::fs::write(&conf, &conf_text).unwrap();
    let log = std::fs::File::create(dir.join("pollgate.log")).unwrap();
    let log_text = || std::fs::read_to_string(dir.join("pollgate.log")).unwrap_or_default();

    // As ExecStart= does: -d returns once the daemon is forked.
    let status = Command::new(BIN)
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log.try_clone().unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the pid file", Duration::from_secs(10), || {
        read_pid(&pid_file).is_some_and(alive)
    });
    let old = read_pid(&pid_file).unwrap();
    reap.pids.push(old);
    wait_until("the listening line", Duration::from_secs(10), || {
        common::listening_addresses(&log_text()).is_some_and(|(_, admin)| admin.is_some())
    });
    let (proxy, admin) = common::listening_addresses(&log_text()).unwrap();
    let (listen, admin) = (proxy[0].port(), admin.unwrap().port());
    wait_until("readiness", Duration::from_secs(10), || {
        get_status(admin, "/readyz") == Ok(200)
    });
    // The upgraded process takes the listening sockets over by address: its config names the
    // ports the first one got.
    let conf_text = conf_with(
        &format!("127.0.0.1:{listen}"),
        &format!("127.0.0.1:{admin}"),
    );
    std::fs::write(&conf, &conf_text).unwrap();

    let script = root().join("deploy/systemd/pollgate-reload");
    let reload = |conf: &Path| {
        Command::new("bash")
            .arg(&script)
            .env("POLLGATE_BIN", BIN)
            .env("POLLGATE_CONF", conf)
            .env("MAINPID", old.to_string())
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap())
            .status()
            .unwrap()
    };

    // A broken file: refused, nothing changes.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, format!("{conf_text}\nno_such_key: 1\n")).unwrap();
    assert!(
        !reload(&bad).success(),
        "an invalid config must fail the reload"
    );
    assert!(alive(old));
    assert_eq!(read_pid(&pid_file), Some(old));

    // Clients keep polling through the upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get_status(listen, "/api/prices/btc") {
                    Ok(200) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let status = reload(&conf);
    assert!(status.success(), "reload failed:\n{}", log_text());
    let new = read_pid(&pid_file).unwrap();
    reap.pids.push(new);
    assert_ne!(new, old, "the pid file names the new process");
    assert!(alive(new));
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the upgrade: {:?}\n{}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)],
        log_text()
    );
    assert!(ok > 20, "only {ok} requests went through");

    // The old process hands over, drains and leaves; the new one serves alone.
    wait_until("the old process to exit", Duration::from_secs(20), || {
        !alive(old)
    });
    assert_eq!(get_status(listen, "/api/prices/btc"), Ok(200));
    assert_eq!(get_status(admin, "/readyz"), Ok(200));
}
