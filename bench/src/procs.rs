//! Every process the orchestrator starts: spawned with its output in a log file, tracked by PID,
//! stopped by PID (SIGTERM, then SIGKILL) when done, on drop, and on SIGINT/SIGTERM/SIGHUP.

use parking_lot::Mutex;
use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// PIDs to stop if the orchestrator itself is interrupted.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Set once interrupted: nothing new is started after that.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Starts `cmd` and tracks its PID for the interrupt handler, unless the run is stopping.
pub fn spawn_tracked(cmd: &mut Command) -> Result<Child, String> {
    let mut live = LIVE.lock();
    if STOPPING.load(Ordering::SeqCst) {
        return Err("interrupted".into());
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    live.push(child.id());
    Ok(child)
}

/// Forgets a PID that has been reaped.
pub fn untrack(pid: u32) {
    LIVE.lock().retain(|p| *p != pid);
}
/// Ports already handed out in this run.
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The PIDs whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Stops everything still registered (used by the signal handler).
fn stop_registered() {
    let pids: Vec<u32> = {
        let live = LIVE.lock();
        STOPPING.store(true, Ordering::SeqCst);
        live.clone()
    };
    let mut pids = pids;
    for &p in &pids.clone() {
        pids.extend(children_of(p)); // nginx workers
    }
    for &p in &pids {
        signal(p, "TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &p in &pids {
        if alive(p) {
            signal(p, "KILL");
        }
    }
}

/// Stops every started process if the orchestrator receives SIGINT, SIGTERM or SIGHUP.
pub fn install_signal_handler() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            eprintln!("pollgate-bench: interrupted; stopping everything it started");
            stop_registered();
            std::process::exit(130);
        });
    });
}

/// A free loopback port: bound to 127.0.0.1:0, then released for a server to take.
pub fn free_port() -> Result<u16, String> {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        let mut g = PORTS.lock();
        if g.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err("no free port".into())
}

pub fn free_addr() -> Result<String, String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

/// Waits until `addr` accepts a TCP connection.
pub fn wait_tcp(addr: &str, limit: Duration) -> bool {
    let Ok(sa) = addr.parse::<SocketAddr>() else {
        return false;
    };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    false
}

/// A command, pinned to `cpus` (a taskset list such as "1") when given.
pub fn command(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The processes of one run.
pub struct Procs {
    dir: PathBuf,
    list: Vec<Managed>,
}

impl Procs {
    pub fn new(dir: &Path) -> Procs {
        Procs {
            dir: dir.to_path_buf(),
            list: Vec::new(),
        }
    }

    /// Starts `cmd` with stdout and stderr in `<dir>/<name>.log`; returns its PID.
    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<u32, String> {
        let log = self.dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2));
        let child = spawn_tracked(&mut cmd).map_err(|e| format!("{name}: {e}"))?;
        let pid = child.id();
        self.list.push(Managed {
            name: name.to_string(),
            child,
            log,
        });
        Ok(pid)
    }

    /// The tail of a process's log, for error messages.
    pub fn log_tail(&self, pid: u32) -> String {
        let Some(m) = self.list.iter().find(|m| m.child.id() == pid) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&m.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!(
            "--- {} ({}) ---\n{}",
            m.name,
            m.log.display(),
            lines[from..].join("\n")
        )
    }

    /// Whether the process has exited.
    pub fn exited(&mut self, pid: u32) -> bool {
        self.list
            .iter_mut()
            .find(|m| m.child.id() == pid)
            .is_none_or(|m| !matches!(m.child.try_wait(), Ok(None)))
    }

    /// Stops one process (and any children it forked, such as nginx workers).
    pub fn stop(&mut self, pid: u32) {
        let Some(i) = self.list.iter().position(|m| m.child.id() == pid) else {
            return;
        };
        let mut m = self.list.remove(i);
        stop_child(&mut m.child);
        untrack(pid);
    }

    pub fn stop_all(&mut self) {
        while let Some(m) = self.list.last() {
            let pid = m.child.id();
            self.stop(pid);
        }
    }
}

fn stop_child(child: &mut Child) {
    let pid = child.id();
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let kids = children_of(pid);
    signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
        let _ = child.wait();
    }
    for k in kids {
        if alive(k) {
            signal(k, "KILL");
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop_all();
    }
}
