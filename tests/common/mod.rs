//! Integration-test harness: the real `pollgate` binary in front of real in-test upstreams, all
//! on loopback ephemeral ports. One line per test: `let up = Upstream::start().await;
//! let gw = Gateway::start(&config_for(&up)).await;`.

#![allow(dead_code)]

pub mod chromium;
pub mod deploy;
pub mod http2;
pub mod raw_upstream;
pub mod recorder;
pub mod reload;
pub mod routes;
pub mod sse;
pub mod tls;
pub mod upstream;
pub mod wire;

#[allow(unused_imports)]
pub use upstream::{Recorded, Reply, Upstream};

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pollgate");

/// Starts `pollgate sample-backend` on a port the kernel picks, with `args` added, and returns
/// it with the address it announced. Its stderr keeps being drained, so a later log line never
/// meets a closed pipe. The caller kills the child.
pub fn spawn_sample_backend(args: &[&str]) -> (Child, SocketAddr) {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args(["sample-backend", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut announced = String::new();
    lines.read_line(&mut announced).unwrap();
    std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    let addr = announced
        .trim()
        .strip_prefix("sample backend listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in the sample backend's line: {announced:?}"));
    (child, addr)
}

/// A loopback port nothing listens on once this returns (bound, then released): for a peer
/// that must refuse connections, such as a dead upstream. Never for the gateway's own
/// listeners, which the gateway picks itself (port 0) and reports.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A unique scratch directory for one test's files.
pub fn scratch_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "pollgate-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running gateway process.
pub struct Gateway {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTPS listener, when the config has `tls` (its `listen` may say `{tls}`).
    pub tls: Option<SocketAddr>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub dir: PathBuf,
}

/// Fills `{listen}` and `{admin}` in a config template; the rest of the file is the test's.
pub fn render(template: &str, listen: SocketAddr, admin: SocketAddr) -> String {
    template
        .replace("{listen}", &listen.to_string())
        .replace("{admin}", &admin.to_string())
}

/// The usual head of a test config: listeners, one thread, short grace periods.
pub const HEAD: &str = r#"listen: "{listen}"
metrics_listen: "{admin}"
threads: 1
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
"#;

/// The addresses in pollgate's start-up line, `listening proxy=ADDR[,ADDR...] [admin=ADDR]` in
/// the human format, or `"message":"listening"` with `proxy` and `admin` fields in JSON.
pub fn listening_addresses(log: &str) -> Option<(Vec<SocketAddr>, Option<SocketAddr>)> {
    let parse_list =
        |v: &str| -> Option<Vec<SocketAddr>> { v.split(',').map(|a| a.parse().ok()).collect() };
    // Only whole lines: a line still being written could end inside a port number.
    for line in log
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
    {
        if line.starts_with('{') {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["message"] != "listening" {
                continue;
            }
            let proxy = parse_list(v["proxy"].as_str()?)?;
            let admin = match v["admin"].as_str() {
                Some(a) => Some(a.parse().ok()?),
                None => None,
            };
            return Some((proxy, admin));
        }
        let Some((_, fields)) = line.split_once(" listening proxy=") else {
            continue;
        };
        let mut words = fields.split_whitespace();
        let proxy = parse_list(words.next()?)?;
        let admin = match words.next().and_then(|w| w.strip_prefix("admin=")) {
            Some(a) => Some(a.parse().ok()?),
            None => None,
        };
        return Some((proxy, admin));
    }
    None
}

/// The HTTPS listener's address in pollgate's start-up line (`tls=ADDR`, or the `tls` field in
/// JSON).
pub fn tls_address(log: &str) -> Option<SocketAddr> {
    for line in log
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
    {
        if line.starts_with('{') {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["message"] == "listening" {
                return v["tls"].as_str()?.parse().ok();
            }
        } else if line.contains(" listening ") {
            return line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("tls="))?
                .parse()
                .ok();
        }
    }
    None
}

impl Gateway {
    /// Starts the gateway with `config` (a template with `{listen}`/`{admin}`), learns its
    /// addresses from its start-up line and waits until `/readyz` answers 200.
    pub async fn start(config: &str) -> Gateway {
        Self::start_with(config, &[], &[]).await
    }

    /// `{listen}` and `{admin}` become `127.0.0.1:0`: the gateway takes whatever port the
    /// kernel gives it, so no other process can take it in between.
    pub async fn start_with(config: &str, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let dir = scratch_dir();
        let config_path = dir.join("pollgate.yaml");
        let text = config
            .replace("{listen}", "127.0.0.1:0")
            .replace("{admin}", "127.0.0.1:0")
            .replace("{tls}", "127.0.0.1:0");
        std::fs::write(&config_path, text).unwrap();
        let log_path = dir.join("pollgate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("-c").arg(&config_path).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn pollgate");
        let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let (addr, admin) = loop {
            let log = read_log();
            match listening_addresses(&log) {
                Some((proxy, Some(admin))) if !proxy.is_empty() => break (proxy[0], admin),
                Some(found) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the start-up line lacks a listener: {found:?}\n--- log ---\n{log}");
                }
                None => {}
            }
            let exited = child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let why = match exited {
                    Some(status) => format!("exited with {status}"),
                    None => "no `listening` line within 30s".to_string(),
                };
                panic!("gateway did not start: {why}\n--- log ---\n{}", read_log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let tls = tls_address(&read_log());
        let mut gw = Gateway {
            child: Some(child),
            addr,
            admin,
            tls,
            config_path,
            log_path,
            dir,
        };
        if let Err(e) = gw.wait_ready(Duration::from_secs(30)).await {
            gw.kill();
            panic!(
                "gateway did not become ready: {e}\n--- log ---\n{}",
                gw.log()
            );
        }
        gw
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("exited early with {status}"));
            }
            if let Ok((200, _)) = raw_get(self.admin, "/readyz").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("not ready in time".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        raw_get(self.admin, "/metrics").await.unwrap().1
    }

    /// The value of one sample line (`name{labels}`), or 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Polls `cond` on the metrics text until it holds (bounded), for asynchronous effects.
    pub async fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(series).await;
            if pred(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "metric {series} stuck at {v}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of `series` (exact `name{labels}` text as Prometheus prints it) in an exposition.
pub fn metric_value(text: &str, series: &str) -> f64 {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(series) {
            if let Some(v) = rest.strip_prefix(' ') {
                return v.trim().parse().unwrap_or(f64::NAN);
            }
        }
    }
    0.0
}

/// Runs `pollgate -c FILE -t` (validate the file and exit).
pub fn check_config(path: impl AsRef<std::path::Path>) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("-c")
        .arg(path.as_ref())
        .arg("-t")
        .output()
        .unwrap()
}

/// One HTTP/1.1 GET over a fresh connection: (status, body).
pub async fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let resp = raw_request(addr, req.as_bytes(), Duration::from_secs(5)).await?;
    let (head, body) = split_response(&resp);
    Ok((status_of(&head), body))
}

/// Sends raw bytes and reads until the server closes or `limit` passes.
pub async fn raw_request(
    addr: SocketAddr,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    Ok(out)
}

pub fn split_response(resp: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(resp).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((h, b)) => (h.to_string(), b.to_string()),
        None => (text, String::new()),
    }
}

pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The value of a header in a raw response head (case-insensitive name).
pub fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// A reqwest client that does not pool across tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Reads a file's text from the repository root.
pub fn repo_file(path: &str) -> String {
    let mut p = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    p.push(path);
    let mut s = String::new();
    std::fs::File::open(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .read_to_string(&mut s)
        .unwrap();
    s
}

/// A response read over a fresh connection.
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        header_of(&self.head, name)
    }
}

/// One GET with extra headers over a fresh connection (`Connection: close`).
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let raw = raw_request(addr, req.as_bytes(), Duration::from_secs(30))
        .await
        .unwrap();
    let (head, body) = split_response(&raw);
    Resp {
        status: status_of(&head),
        head,
        body,
    }
}

/// Opens `n` connections that each send a conditional GET of `path` with `etag` (to be held
/// as long polls); they stay open until dropped.
pub async fn open_held_polls(
    addr: SocketAddr,
    path: &str,
    etag: &str,
    n: usize,
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        socks.push(s);
    }
    socks
}
