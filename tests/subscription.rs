//! The gateway's own upstream subscriptions against a buggy or hostile WebSocket backend: one
//! that completes the handshake and then sends invalid or oversize frames. The backend here is a
//! raw TCP server doing the handshake by hand, so it can write any bytes a real one could.

mod common;

use common::routes::{poll_route, poll_route_fed_by};
use common::*;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// What the backend does on one WebSocket connection, after its `101`.
enum Step {
    Bytes(Vec<u8>),
    /// This many zero bytes, streamed (a frame payload the test never holds in memory).
    Zeros(usize),
    /// Read and discard until the gateway closes.
    Hold,
}

/// Which steps the `n`th (0-based) handshake on `path` gets.
type Plan = dyn Fn(&str, usize) -> Vec<Step> + Send + Sync;

/// A backend answering WebSocket handshakes with scripted frames (anything else gets a `200`
/// with body `fallback` and is closed). It records when each handshake arrived, per path.
struct FaultServer {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<(String, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    async fn start(plan: impl Fn(&str, usize) -> Vec<Step> + Send + Sync + 'static) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let plan: Arc<Plan> = Arc::new(plan);
        let log = handshakes.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.spawn(serve(s, plan.clone(), log.clone()));
            }
        });
        FaultServer {
            addr,
            handshakes,
            task,
        }
    }

    /// Handshakes per path so far.
    fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (p, _) in self.handshakes.lock().iter() {
            *out.entry(p.clone()).or_default() += 1;
        }
        out
    }

    /// Waits (bounded) until `n` distinct paths saw a handshake.
    async fn wait_for_paths(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.counts().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {:?} connected",
                self.counts()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn times(&self, path: &str) -> Vec<Instant> {
        self.handshakes
            .lock()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, t)| *t)
            .collect()
    }
}

async fn serve(mut s: TcpStream, plan: Arc<Plan>, log: Arc<Mutex<Vec<(String, Instant)>>>) {
    let _ = s.set_nodelay(true);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
    let key = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    });
    let Some(key) = key else {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nfallback")
            .await;
        return;
    };
    let nth = {
        let mut log = log.lock();
        let nth = log.iter().filter(|(p, _)| *p == path).count();
        log.push((path.clone(), Instant::now()));
        nth
    };
    let accept = derive_accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if s.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    for step in plan(&path, nth) {
        match step {
            Step::Bytes(b) => {
                if s.write_all(&b).await.is_err() {
                    return;
                }
            }
            Step::Zeros(mut n) => {
                let chunk = vec![0u8; 1 << 20];
                while n > 0 {
                    let k = n.min(chunk.len());
                    if s.write_all(&chunk[..k]).await.is_err() {
                        return;
                    }
                    n -= k;
                }
            }
            Step::Hold => {
                let mut sink = [0u8; 4096];
                while let Ok(1..) = s.read(&mut sink).await {}
                return;
            }
        }
    }
    // Steps done without Hold: close the TCP connection without a close frame (a crash).
}

/// An unmasked server frame header (FIN set) announcing `len` payload bytes.
fn frame_head(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as u64 {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out
}

fn text_frame(text: &str) -> Vec<u8> {
    let mut out = frame_head(0x1, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
    out
}

/// The invalid things a backend sends right after a successful handshake.
const FAULTS: [&str; 4] = ["utf8", "huge", "close999", "over"];

/// `over`: above the route's `max_message_bytes` (default 1 MiB) by far more than any framing
/// slack, but under the 64 MiB validation cap, so it is a per-route decision.
const OVER_BYTES: usize = 4 << 20;

fn fault_steps(kind: &str) -> Vec<Step> {
    match kind {
        // A text frame whose payload is not UTF-8.
        "utf8" => vec![Step::Bytes(vec![0x81, 0x02, 0xC3, 0x28]), Step::Hold],
        // A binary frame announcing 100 MB, of which nothing follows.
        "huge" => vec![Step::Bytes(frame_head(0x2, 100_000_000)), Step::Hold],
        // A close frame with code 999 (not a valid close code).
        "close999" => vec![Step::Bytes(vec![0x88, 0x02, 0x03, 0xE7]), Step::Hold],
        "over" => vec![
            Step::Bytes(frame_head(0x2, OVER_BYTES as u64)),
            Step::Zeros(OVER_BYTES),
            Step::Hold,
        ],
        other => panic!("unknown fault {other}"),
    }
}

fn shared_route(name: &str, reconnect: &str) -> String {
    poll_route_fed_by(
        name,
        &format!("/ws/{name}"),
        &format!(
            r#"      send: '{{"op":"subscribe","topic":"{{topic}}"}}'
      topic_pointer: "/topic"
    mode: latest
    first_message_wait: 100ms
    reconnect: {reconnect}
"#
        ),
    )
}

fn per_topic_route(name: &str, reconnect: &str) -> String {
    poll_route(
        name,
        &format!(
            r#"    mode: latest
    first_message_wait: 100ms
    reconnect: {reconnect}
"#
        ),
    )
}

fn config(addr: SocketAddr, routes: &str) -> String {
    format!(
        r#"{HEAD}upstreams:
  backend:
    address: "{addr}"
    connect_timeout: 500ms
    read_timeout: 3s
routes:
{routes}  - name: default
    prefix: "/"
    upstream: backend
"#
    )
}

/// Polls every path at once (each subscribes its topic on first use).
async fn poll_all(gw: &Gateway, paths: &[String]) {
    let mut set = tokio::task::JoinSet::new();
    for p in paths {
        let (addr, p) = (gw.addr, p.clone());
        set.spawn(async move { get_with(addr, &p, &[]).await.status });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
}

/// Handshakes one socket makes in `window` when every connection fails at once, if the delays
/// are the mean of `Backoff`'s draws: uniform in `[min, ceiling]`, the ceiling `min * 2^n`
/// capped at `max`. The first handshake is at 0.
fn expected_handshakes(min: Duration, max: Duration, window: Duration) -> usize {
    let (mut t, mut n, mut ceiling) = (Duration::ZERO, 1, min);
    loop {
        t += (min + ceiling) / 2;
        if t > window {
            return n;
        }
        n += 1;
        ceiling = (ceiling * 2).min(max);
    }
}

#[tokio::test]
async fn invalid_frames_after_a_good_handshake_back_off_instead_of_storming() {
    let up = FaultServer::start(|path, _| {
        let kind = FAULTS
            .iter()
            .find(|k| path.contains(&format!("-{k}")) || path.contains(&format!("/{k}-")))
            .unwrap_or_else(|| panic!("no fault for {path}"));
        fault_steps(kind)
    })
    .await;
    let reconnect = "{ min: 100ms, max: 2s }";
    let mut routes = per_topic_route("pt", reconnect);
    for kind in FAULTS {
        routes.push_str(&shared_route(&format!("sh-{kind}"), reconnect));
    }
    let gw = Gateway::start(&config(up.addr, &routes)).await;
    let mut polls = vec![];
    for kind in FAULTS {
        for i in 0..2 {
            polls.push(format!("/api/pt/{kind}-{i}"));
            polls.push(format!("/api/sh-{kind}/t{i}"));
        }
    }
    let sockets = FAULTS.len() * 2 + FAULTS.len();
    let started = Instant::now();
    poll_all(&gw, &polls).await;
    up.wait_for_paths(sockets, Duration::from_secs(5)).await;
    // The observation window itself is what the test measures: how many handshakes fit in it.
    let window = Duration::from_secs(4);
    tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
    let counts = up.counts();
    let oversize = gw
        .metric(r#"pollgate_upstream_messages_dropped_total{reason="oversize",route="pt"}"#)
        .await;
    let expected = expected_handshakes(Duration::from_millis(100), Duration::from_secs(2), window);
    // Twice the mean plus two: the draws are independent, so a socket beating that is a storm,
    // not bad luck (without backoff, every socket reconnects each 100 ms: ~40 in 4 s).
    let bound = expected * 2 + 2;
    let total: usize = counts.values().sum();
    println!("handshakes in {window:?} (bound {bound} per socket, mean {expected}): {counts:#?}; total {total}; oversize on pt: {oversize}");
    assert_eq!(counts.len(), sockets, "every socket connected: {counts:#?}");
    for (path, n) in &counts {
        assert!(
            *n <= bound,
            "{path}: {n} handshakes in {window:?}, backoff allows about {expected} (bound {bound}); all: {counts:#?}\nlog tail:\n{}",
            log_tail(&gw, 20)
        );
        assert!(
            *n >= 3,
            "{path}: {n} handshakes: the fault did not make the gateway reconnect; all: {counts:#?}"
        );
    }
    // Every oversize frame on the per-topic route was counted, read in full or refused.
    let oversize_paths: Vec<_> = counts
        .iter()
        .filter(|(p, _)| p.starts_with("/ws/pt/huge-") || p.starts_with("/ws/pt/over-"))
        .map(|(_, n)| *n)
        .collect();
    let refused: usize = oversize_paths.iter().sum();
    // Each socket's latest connection may not have been counted yet when the metric was read.
    assert!(
        oversize >= refused.saturating_sub(oversize_paths.len()) as f64,
        "oversize counted {oversize}, oversize frames sent on {refused} connections"
    );
}

#[tokio::test]
async fn a_socket_that_delivered_a_message_reconnects_from_the_minimum_delay() {
    // Eight failures grow the ceiling to 20 ms * 2^8 = 5.1 s. Then one connection delivers a
    // message and the backend crashes (FIN, no close frame): the next attempt must come after
    // `reconnect.min` again, not after a draw from [20 ms, 5.1 s].
    const FAILURES: usize = 8;
    let up = FaultServer::start(|path, nth| {
        let msg = if path.starts_with("/ws/shared") {
            r#"{"topic":"h","v":"PAYLOAD"}"#
        } else {
            "PAYLOAD"
        };
        match nth {
            n if n < FAILURES => fault_steps("utf8"),
            n if n == FAILURES => vec![Step::Bytes(text_frame(&msg.replace("PAYLOAD", "first")))],
            _ => vec![
                Step::Bytes(text_frame(&msg.replace("PAYLOAD", "again"))),
                Step::Hold,
            ],
        }
    })
    .await;
    let reconnect = "{ min: 20ms, max: 60s }";
    let routes = per_topic_route("pt", reconnect) + &shared_route("shared", reconnect);
    let gw = Gateway::start(&config(up.addr, &routes)).await;
    poll_all(&gw, &["/api/pt/h".to_string(), "/api/shared/h".to_string()]).await;
    for (path, poll) in [("/ws/pt/h", "/api/pt/h"), ("/ws/shared", "/api/shared/h")] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while up.times(path).len() < FAILURES + 2 {
            assert!(
                Instant::now() < deadline,
                "{path}: only {} handshakes",
                up.times(path).len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = up.times(path);
        let after_crash = t[FAILURES + 1] - t[FAILURES];
        let gaps: Vec<_> = t.windows(2).map(|w| w[1] - w[0]).collect();
        println!("{path}: gaps between handshakes {gaps:?}");
        assert!(
            after_crash < Duration::from_millis(600),
            "{path}: reconnected {after_crash:?} after a healthy socket dropped; gaps {gaps:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = get_with(gw.addr, poll, &[]).await;
            if r.body.contains("again") {
                break;
            }
            assert!(Instant::now() < deadline, "{poll}: {} {}", r.head, r.body);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn log_tail(gw: &Gateway, lines: usize) -> String {
    let log = gw.log();
    let all: Vec<_> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn oversize_frames_are_refused_before_they_are_buffered() {
    // Each topic's first connection gets one 61 MiB binary frame, then a small message; later
    // connections only the small message. The route keeps the default 1 MiB limit.
    const BIG: usize = 61 << 20;
    const TOPICS: usize = 4;
    let up = FaultServer::start(|_, nth| {
        let mut steps = vec![];
        if nth == 0 {
            steps.push(Step::Bytes(frame_head(0x2, BIG as u64)));
            steps.push(Step::Zeros(BIG));
        }
        steps.push(Step::Bytes(text_frame("small")));
        steps.push(Step::Hold);
        steps
    })
    .await;
    let gw = Gateway::start(&config(
        up.addr,
        &per_topic_route("big", "{ min: 100ms, max: 2s }"),
    ))
    .await;
    let pid = gw.child.as_ref().unwrap().id();
    let (rss_before, hwm_before) = memory_kib(pid);
    let polls: Vec<_> = (0..TOPICS).map(|i| format!("/api/big/t{i}")).collect();
    poll_all(&gw, &polls).await;
    gw.wait_metric(
        r#"pollgate_upstream_messages_dropped_total{reason="oversize",route="big"}"#,
        |v| v >= TOPICS as f64,
    )
    .await;
    for p in &polls {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = get_with(gw.addr, p, &[]).await;
            if r.body == "small" {
                break;
            }
            assert!(Instant::now() < deadline, "{p}: {} {}", r.head, r.body);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (rss_after, hwm_after) = memory_kib(pid);
    let grew = rss_after.saturating_sub(rss_before);
    let peak = hwm_after.saturating_sub(rss_before);
    println!(
        "gateway memory: VmRSS {rss_before} -> {rss_after} KiB, VmHWM {hwm_before} -> {hwm_after} KiB; \
         {TOPICS} frames of {} KiB; handshakes {:?}",
        BIG >> 10,
        up.counts()
    );
    // One frame is 62464 KiB; the route's limit is 1 MiB. Allow a few MiB of ordinary noise.
    assert!(
        peak < 16 << 10,
        "peak RSS grew by {peak} KiB (now {grew} KiB above the start) for {TOPICS} refused frames of {} KiB",
        BIG >> 10
    );
}
