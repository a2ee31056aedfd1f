//! `sse-fanout`: the EventSource fan-out client. Opens every stream (`Accept: text/event-stream`)
//! on one topic, waits until the server reports them all open, publishes one message carrying a
//! tag unique to the run, and times each stream from the publish to the moment that tag arrives
//! on it. Streams are read as raw bytes (an event is small and written at once, so the tag is not
//! split by chunked framing); what came before the publish (a `retry:` hint, the topic's current
//! message, comments) only has to not contain the tag.

use crate::client;
use crate::longpoll::{held_from_nchan, rss_kib};
use crate::stats::summarize;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

#[derive(clap::Args, Debug, Clone)]
pub struct SseFanoutArgs {
    /// The server the streams are opened on.
    #[arg(long)]
    target: String,
    /// The stream's path (one topic).
    #[arg(long)]
    path: String,
    #[arg(long, default_value_t = 5_000)]
    streams: usize,
    /// Where the message is published: `POST http://<publish><publish-path>`.
    #[arg(long)]
    publish: String,
    #[arg(long)]
    publish_path: String,
    /// Admin address whose `/metrics` reports `pollgate_sse_streams_active` (summed over routes).
    #[arg(long)]
    ready_prometheus: Option<String>,
    /// Address whose `/nchan_status` reports Nchan's `subscribers: N`.
    #[arg(long)]
    ready_nchan: Option<String>,
    /// Server process whose VmRSS is read before the streams open and once they are all open.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Longest wait for every stream to be open (as the server counts them).
    #[arg(long, default_value_t = 60.0)]
    open_timeout_s: f64,
    /// Longest wait for every stream's event after the publish.
    #[arg(long, default_value_t = 30.0)]
    deliver_timeout_s: f64,
    /// Pause between "all open" and the RSS reading and the publish.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
}

/// Sums every `pollgate_sse_streams_active` sample in a Prometheus exposition.
fn sse_active(text: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix("pollgate_sse_streams_active")
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// How one stream ended.
enum End {
    /// The tag arrived at this instant.
    Got(Instant),
    /// The response was not a `200` event stream.
    Status(String),
    Error(String),
    Timeout,
}

pub fn main(a: SseFanoutArgs) -> Result<serde_json::Value, String> {
    let rt = client::runtime(1)?;
    rt.block_on(run(a))
}

async fn opened_now(a: &SseFanoutArgs) -> Result<Option<f64>, String> {
    let limit = Duration::from_secs(5);
    if let Some(admin) = &a.ready_prometheus {
        let r = client::get(admin, "/metrics", limit)
            .await
            .map_err(|e| format!("metrics: {e}"))?;
        return Ok(Some(sse_active(&r.text())));
    }
    if let Some(addr) = &a.ready_nchan {
        let r = client::get(addr, "/nchan_status", limit)
            .await
            .map_err(|e| format!("nchan status: {e}"))?;
        return Ok(Some(held_from_nchan(&r.text())));
    }
    Ok(None)
}

/// One stream: connect, ask for the event stream, read until the tag is in what arrived.
async fn stream(
    target: String,
    req: Arc<Vec<u8>>,
    tag: Arc<Vec<u8>>,
    sem: Arc<Semaphore>,
    opened: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> (End, Option<TcpStream>) {
    let permit = sem.acquire_owned().await.expect("semaphore open");
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(&target).await?;
        s.set_nodelay(true)?;
        s.write_all(&req).await?;
        Ok::<TcpStream, std::io::Error>(s)
    })
    .await;
    drop(permit);
    let mut s = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return (End::Error(format!("connect: {e}")), None),
        Err(_) => return (End::Error("connect timed out".into()), None),
    };
    opened.fetch_add(1, Ordering::Relaxed);
    let mut seen: Vec<u8> = Vec::with_capacity(1024);
    let mut head_checked = false;
    let mut buf = vec![0u8; 4096];
    let end = loop {
        let n = tokio::select! {
            r = s.read(&mut buf) => r,
            _ = stop.wait_for(|v| *v) => break End::Timeout,
        };
        let n = match n {
            Ok(0) => break End::Error("closed by the server".into()),
            Ok(n) => n,
            Err(e) => break End::Error(e.to_string()),
        };
        let at = Instant::now();
        seen.extend_from_slice(&buf[..n]);
        if !head_checked {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                let ok = head.starts_with("http/1.1 200") && head.contains("text/event-stream");
                if !ok {
                    break End::Status(head.lines().next().unwrap_or("").to_string());
                }
                head_checked = true;
                seen.drain(..end + 4);
            } else {
                continue;
            }
        }
        if contains(&seen, &tag) {
            break End::Got(at);
        }
        // Keep only a tail long enough to hold a tag cut across two reads.
        if seen.len() > 4096 {
            seen.drain(..seen.len() - tag.len());
        }
    };
    (end, Some(s))
}

async fn run(a: SseFanoutArgs) -> Result<serde_json::Value, String> {
    let nonce: u32 = rand::random();
    let tag = format!("sse{nonce:08x}-1");
    let mut extra = vec![("Accept".to_string(), "text/event-stream".to_string())];
    extra.push(("Cache-Control".into(), "no-cache".into()));
    let req = Arc::new(client::get_request(&a.target, &a.path, &extra));
    let tag_b = Arc::new(tag.clone().into_bytes());
    let sem = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let opened = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let rss_before = a.pid.and_then(rss_kib);

    let open_started = Instant::now();
    let mut tasks = Vec::with_capacity(a.streams);
    for _ in 0..a.streams {
        tasks.push(tokio::spawn(stream(
            a.target.clone(),
            req.clone(),
            tag_b.clone(),
            sem.clone(),
            opened.clone(),
            stop_rx.clone(),
        )));
    }
    // Every stream open as the server counts it (not just connected), so the publish meets them
    // all subscribed.
    let deadline = open_started + Duration::from_secs_f64(a.open_timeout_s);
    let mut server_count = None;
    loop {
        let all_sent = opened.load(Ordering::Relaxed) >= a.streams;
        let count = if all_sent {
            opened_now(&a).await?
        } else {
            None
        };
        server_count = count.or(server_count);
        let ready = match count {
            Some(c) => c as usize >= a.streams,
            None => all_sent && a.ready_prometheus.is_none() && a.ready_nchan.is_none(),
        };
        if ready {
            break;
        }
        if Instant::now() > deadline || tasks.iter().all(|t| t.is_finished()) {
            let _ = stop_tx.send(true);
            return Err(format!(
                "{} streams of {} open after {:.1} s (server counts {:?})",
                opened.load(Ordering::Relaxed),
                a.streams,
                open_started.elapsed().as_secs_f64(),
                server_count
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_s = open_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let rss_open = a.pid.and_then(rss_kib);

    let body = format!("{{\"tag\":\"{tag}\"}}");
    let t0 = Instant::now();
    let r = client::post(
        &a.publish,
        &a.publish_path,
        body.as_bytes(),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| format!("publish: {e}"))?;
    let publish_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if !(200..300).contains(&r.status) {
        let _ = stop_tx.send(true);
        return Err(format!("publish: status {}: {}", r.status, r.text()));
    }
    let stopper = {
        let stop_tx = stop_tx.clone();
        let limit = Duration::from_secs_f64(a.deliver_timeout_s);
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            let _ = stop_tx.send(true);
        })
    };
    let mut lat = Vec::with_capacity(a.streams);
    let (mut early, mut errors, mut bad_status, mut timeouts) = (0usize, 0usize, 0usize, 0usize);
    let mut first_error = None;
    let mut last = t0;
    let mut conns = Vec::with_capacity(a.streams);
    for t in tasks {
        let (end, conn) = t.await.map_err(|e| format!("stream task: {e}"))?;
        conns.extend(conn);
        match end {
            End::Got(at) if at < t0 => early += 1,
            End::Got(at) => {
                last = last.max(at);
                lat.push(at.duration_since(t0).as_micros() as u64);
            }
            End::Status(s) => {
                bad_status += 1;
                first_error.get_or_insert(s);
            }
            End::Error(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            End::Timeout => timeouts += 1,
        }
    }
    stopper.abort();
    drop(conns);
    let delivered = lat.len();
    let s = summarize(lat);
    Ok(json!({
        "streams": a.streams,
        "delivered": delivered,
        "all_delivered": delivered == a.streams,
        "early": early,
        "errors": errors,
        "bad_status": bad_status,
        "timeouts": timeouts,
        "first_error": first_error,
        "open_s": open_s,
        "publish_ms": publish_ms,
        "fanout_s": last.duration_since(t0).as_secs_f64(),
        "latency": s.json(),
        "rss_before_kib": rss_before,
        "rss_open_kib": rss_open,
        "kib_per_stream": match (rss_before, rss_open) {
            (Some(b), Some(o)) if a.streams > 0 => Some((o.saturating_sub(b)) as f64 / a.streams as f64),
            _ => None,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_sse_streams_active() {
        let t = "# HELP x\npollgate_sse_streams_active{route=\"a\"} 3\npollgate_sse_streams_active{route=\"b\"} 4\npollgate_sse_streams_active_other 9\n";
        assert_eq!(sse_active(t), 7.0);
        assert!(contains(b"data: {\"tag\":\"sse1-1\"}", b"sse1-1"));
        assert!(!contains(b"data: x", b"sse1-1"));
    }
}
