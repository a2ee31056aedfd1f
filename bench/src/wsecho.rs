//! `ws-echo`: WebSocket round trips. Each client opens one socket and sends a text frame, waits
//! for its echo, and repeats until the time or count bound; round trip times and the echo rate
//! are reported.
//!
//! With `--fresh N`: the first message of a new tunnel instead. N tunnels are opened, at most
//! `--concurrency` at a time, each timed from the start of its TCP connect to the `101` and to
//! its first echo, then closed (the close handshake completes before the next one starts).

use crate::client;
use crate::stats::{round3, summarize};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug, Clone)]
pub struct WsEchoArgs {
    #[arg(long)]
    target: String,
    #[arg(long, default_value = "/echo")]
    path: String,
    #[arg(long, default_value_t = 50)]
    clients: usize,
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Upper bound on round trips per client.
    #[arg(long, default_value_t = 1_000_000)]
    max_messages: u64,
    /// Paced: messages per second per client (each waits for its echo, then for its next
    /// tick); 0: closed loop, the next message as soon as the echo is in.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Text frame size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// First-message mode: open this many new tunnels (within `--duration-s`), each sending one
    /// frame.
    #[arg(long, default_value_t = 0)]
    fresh: usize,
    /// Fresh tunnels in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
}

#[derive(Default)]
struct Tally {
    rtts_us: Vec<u64>,
    mismatched: u64,
    errors: u64,
    first_error: Option<String>,
}

pub fn main(a: WsEchoArgs) -> Result<serde_json::Value, String> {
    let rt = client::runtime(a.workers)?;
    if a.fresh > 0 {
        rt.block_on(fresh(a))
    } else {
        rt.block_on(run(a))
    }
}

/// What the fresh tunnels of one worker measured.
#[derive(Default)]
struct FreshTally {
    handshake_us: Vec<u64>,
    first_echo_us: Vec<u64>,
    mismatched: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn fresh(a: WsEchoArgs) -> Result<serde_json::Value, String> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration_s.clamp(0.1, 3600.0));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.clamp(1, a.fresh) {
        let (a, next) = (a.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = FreshTally::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= a.fresh || Instant::now() >= deadline {
                    return t;
                }
                match tokio::time::timeout(Duration::from_secs(10), one_fresh(&a, i)).await {
                    Ok(Ok((hs, first, same))) => {
                        t.handshake_us.push(hs);
                        t.first_echo_us.push(first);
                        t.mismatched += u64::from(!same);
                    }
                    Ok(Err(e)) => {
                        t.errors += 1;
                        t.first_error.get_or_insert(e);
                    }
                    Err(_) => {
                        t.errors += 1;
                        t.first_error
                            .get_or_insert("tunnel timed out (10 s)".into());
                    }
                }
            }
        }));
    }
    let mut all = FreshTally::default();
    for t in tasks {
        let t = t.await.map_err(|e| format!("ws task: {e}"))?;
        all.handshake_us.extend(t.handshake_us);
        all.first_echo_us.extend(t.first_echo_us);
        all.mismatched += t.mismatched;
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(json!({
        "mode": "fresh",
        "tunnels": a.fresh,
        "concurrency": a.concurrency,
        "completed": all.first_echo_us.len(),
        "mismatched": all.mismatched,
        "errors": all.errors,
        "first_error": all.first_error,
        "elapsed_s": round3(elapsed),
        "handshake": summarize(all.handshake_us).json(),
        "first_echo": summarize(all.first_echo_us).json(),
    }))
}

/// One new tunnel: microseconds from the connect's start to the `101` and to the first echo,
/// and whether the echo was the frame sent.
async fn one_fresh(a: &WsEchoArgs, id: usize) -> Result<(u64, u64, bool), String> {
    let url = format!("ws://{}{}", a.target, a.path);
    let t0 = Instant::now();
    let s = tokio::net::TcpStream::connect(&a.target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), s)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let handshake = t0.elapsed().as_micros() as u64;
    let mut text = format!("{id}:first:");
    while text.len() < a.size {
        text.push('x');
    }
    ws.send(Message::text(text.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let same = loop {
        match ws.next().await {
            Some(Ok(Message::Text(got))) => break got.as_str() == text,
            Some(Ok(Message::Binary(_))) => break false,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed before the echo".into()),
        }
    };
    let first = t0.elapsed().as_micros() as u64;
    // The close handshake completes (the server's close frame, then its close) before the next
    // tunnel, so tunnels do not pile up on the server meanwhile.
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok((handshake, first, same))
}

async fn run(a: WsEchoArgs) -> Result<serde_json::Value, String> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration_s.clamp(0.1, 3600.0));
    let mut tasks = Vec::new();
    for i in 0..a.clients.max(1) {
        let a = a.clone();
        tasks.push(tokio::spawn(async move { one(&a, i, deadline).await }));
    }
    let mut all = Tally::default();
    let mut connected = 0;
    for t in tasks {
        let (ok, t) = t.await.map_err(|e| format!("ws task: {e}"))?;
        connected += usize::from(ok);
        all.rtts_us.extend(t.rtts_us);
        all.mismatched += t.mismatched;
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = all.rtts_us.len();
    Ok(json!({
        "clients": a.clients,
        "rate_per_client": a.rate,
        "connected": connected,
        "elapsed_s": round3(elapsed),
        "messages": n,
        "mismatched": all.mismatched,
        "errors": all.errors,
        "first_error": all.first_error,
        "msgs_per_s": round3(n as f64 / elapsed.max(1e-9)),
        "rtt": summarize(all.rtts_us).json(),
    }))
}

async fn one(a: &WsEchoArgs, id: usize, deadline: Instant) -> (bool, Tally) {
    let mut t = Tally::default();
    let url = format!("ws://{}{}", a.target, a.path);
    let connect = async {
        let s = tokio::net::TcpStream::connect(&a.target)
            .await
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        tokio_tungstenite::client_async(url.as_str(), s)
            .await
            .map_err(|e| e.to_string())
    };
    let mut ws = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            t.errors += 1;
            t.first_error = Some(format!("connect: {e}"));
            return (false, t);
        }
        Err(_) => {
            t.errors += 1;
            t.first_error = Some("connect timed out".into());
            return (false, t);
        }
    };
    let mut seq = 0u64;
    // Paced clients start spread over one period, so their ticks do not coincide.
    let period = (a.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / a.rate));
    let first_tick =
        Instant::now() + period.map_or(Duration::ZERO, |p| p.mul_f64((id % 97) as f64 / 97.0));
    while seq < a.max_messages && Instant::now() < deadline {
        if let Some(p) = period {
            // Absolute ticks: a late echo does not lower the rate that follows.
            let tick = first_tick + p.mul_f64(seq as f64);
            if tick >= deadline {
                break;
            }
            tokio::time::sleep_until(tick).await;
        }
        seq += 1;
        let mut text = format!("{id}:{seq}:");
        while text.len() < a.size {
            text.push('x');
        }
        let t0 = Instant::now();
        let round = async {
            ws.send(Message::text(text.clone()))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(got))) => return Ok(got.as_str() == text),
                    Some(Ok(Message::Binary(_))) => return Ok(false),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("closed".to_string()),
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), round).await {
            Ok(Ok(same)) => {
                t.rtts_us.push(t0.elapsed().as_micros() as u64);
                if !same {
                    t.mismatched += 1;
                }
            }
            Ok(Err(e)) => {
                t.errors += 1;
                t.first_error = Some(e);
                break;
            }
            Err(_) => {
                t.errors += 1;
                t.first_error = Some("echo timed out (10 s)".into());
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    (true, t)
}
