//! `ws-echo`: WebSocket round trips. Each client opens one socket and sends a text frame, waits
//! for its echo, and repeats until the time or count bound; round trip times and the echo rate
//! are reported.

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
    /// Text frame size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 1)]
    workers: usize,
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
    rt.block_on(run(a))
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
    while seq < a.max_messages && Instant::now() < deadline {
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
