//! `h2-polls`: held polls over HTTP/2 on TLS (ALPN `h2`), many streams per connection. Opens
//! `--connections` connections, holds `--polls` polls spread over them (each carrying the topic's
//! current `ETag` in `If-None-Match`, so the server holds it), waits until the server reports
//! them all held, reads its RSS, publishes one message, and times each poll's answer from the
//! publish.

use crate::client;
use crate::longpoll::{held_from_prometheus, rss_kib};
use crate::stats::summarize;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use serde_json::json;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;

#[derive(clap::Args, Debug, Clone)]
pub struct H2PollsArgs {
    /// The server's TLS listener.
    #[arg(long)]
    target: String,
    /// The poll path (one topic); its current `ETag` is read first over the same connection.
    #[arg(long)]
    path: String,
    #[arg(long, default_value_t = 5_000)]
    polls: usize,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Where the message is published: `POST http://<publish><publish-path>`.
    #[arg(long)]
    publish: String,
    #[arg(long)]
    publish_path: String,
    /// Admin address whose `/metrics` reports `pollgate_long_polls_held`.
    #[arg(long)]
    held_prometheus: String,
    /// Server process whose VmRSS is read before the polls and once they are all held.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, default_value_t = 60.0)]
    hold_timeout_s: f64,
    #[arg(long, default_value_t = 30.0)]
    deliver_timeout_s: f64,
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
}

pub fn main(a: H2PollsArgs) -> Result<serde_json::Value, String> {
    let rt = client::runtime(1)?;
    rt.block_on(run(a))
}

type Sender = h2::client::SendRequest<bytes::Bytes>;

async fn connect(target: &str) -> Result<Sender, String> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    // The benchmark's self-signed certificate: the handshake is measured, not trusted.
    b.set_verify(SslVerifyMode::NONE);
    b.set_alpn_protos(b"\x02h2").map_err(|e| e.to_string())?;
    let ssl = b
        .build()
        .configure()
        .and_then(|c| c.into_ssl("localhost"))
        .map_err(|e| e.to_string())?;
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    Pin::new(&mut s)
        .connect()
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    if s.ssl().selected_alpn_protocol() != Some(b"h2") {
        return Err("the server did not choose h2 by ALPN".into());
    }
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake(s)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

fn request(target: &str, path: &str, etag: Option<&str>) -> http::Request<()> {
    let mut r = http::Request::get(format!("https://{target}{path}"));
    if let Some(e) = etag {
        r = r.header("if-none-match", e);
    }
    r.body(()).expect("request")
}

/// One poll's answer.
struct Answer {
    status: http::StatusCode,
    /// When its headers arrived.
    at: Instant,
    etag: Option<String>,
    body: Vec<u8>,
}

async fn poll(send: Sender, req: http::Request<()>) -> Result<Answer, String> {
    let mut send = send.ready().await.map_err(|e| e.to_string())?;
    let (resp, _) = send.send_request(req, true).map_err(|e| e.to_string())?;
    let resp = resp.await.map_err(|e| e.to_string())?;
    let at = Instant::now();
    let status = resp.status();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = resp.into_body();
    let mut all = Vec::new();
    while let Some(d) = body.data().await {
        let d = d.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(d.len());
        all.extend_from_slice(&d);
    }
    Ok(Answer {
        status,
        at,
        etag,
        body: all,
    })
}

async fn held_now(admin: &str) -> Result<f64, String> {
    let r = client::get(admin, "/metrics", Duration::from_secs(5))
        .await
        .map_err(|e| format!("metrics: {e}"))?;
    Ok(held_from_prometheus(&r.text()))
}

async fn run(a: H2PollsArgs) -> Result<serde_json::Value, String> {
    let rss_before = a.pid.and_then(rss_kib);
    let conns_n = a.connections.clamp(1, a.polls.max(1));
    let mut senders = Vec::with_capacity(conns_n);
    for _ in 0..conns_n {
        senders.push(connect(&a.target).await?);
    }
    // The topic's current answer and validator, over HTTP/2 too.
    let first = poll(senders[0].clone(), request(&a.target, &a.path, None)).await?;
    if first.status != 200 {
        return Err(format!("first GET {}: status {}", a.path, first.status));
    }
    let etag = first.etag.ok_or("no ETag on the poll route's answer")?;
    let started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(a.polls);
    for i in 0..a.polls {
        let send = senders[i % conns_n].clone();
        let req = request(&a.target, &a.path, Some(&etag));
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                r = poll(send, req) => Some(r),
                _ = stop.wait_for(|v| *v) => None,
            }
        }));
    }
    let deadline = started + Duration::from_secs_f64(a.hold_timeout_s);
    let mut held = 0.0;
    loop {
        held = held_now(&a.held_prometheus).await.unwrap_or(held);
        if held as usize >= a.polls {
            break;
        }
        if Instant::now() > deadline || tasks.iter().all(|t| t.is_finished()) {
            let _ = stop_tx.send(true);
            return Err(format!(
                "{held} of {} polls held after {:.1} s",
                a.polls,
                started.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hold_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let rss_held = a.pid.and_then(rss_kib);
    let t0 = Instant::now();
    let r = client::post(
        &a.publish,
        &a.publish_path,
        br#"{"tag":"h2"}"#,
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| format!("publish: {e}"))?;
    if !(200..300).contains(&r.status) {
        let _ = stop_tx.send(true);
        return Err(format!("publish: status {}", r.status));
    }
    let stopper = tokio::spawn({
        let stop_tx = stop_tx.clone();
        let limit = Duration::from_secs_f64(a.deliver_timeout_s);
        async move {
            tokio::time::sleep(limit).await;
            let _ = stop_tx.send(true);
        }
    });
    let (mut lat, mut early, mut errors, mut timeouts, mut wrong) = (Vec::new(), 0, 0, 0, 0);
    let mut first_error = None;
    let mut last = t0;
    for t in tasks {
        match t.await.map_err(|e| e.to_string())? {
            Some(Ok(r)) if r.at < t0 => {
                early += 1;
                first_error.get_or_insert(format!("answered before the publish: {}", r.status));
            }
            Some(Ok(r)) if r.status == 200 => {
                if !String::from_utf8_lossy(&r.body).contains("\"h2\"") {
                    wrong += 1;
                }
                last = last.max(r.at);
                lat.push(r.at.duration_since(t0).as_micros() as u64);
            }
            Some(Ok(r)) => {
                errors += 1;
                first_error.get_or_insert(format!("status {}", r.status));
            }
            Some(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            None => timeouts += 1,
        }
    }
    stopper.abort();
    drop(senders);
    let delivered = lat.len();
    Ok(json!({
        "polls": a.polls,
        "connections": conns_n,
        "delivered": delivered,
        "all_delivered": delivered == a.polls && wrong == 0,
        "wrong_body": wrong,
        "early": early,
        "errors": errors,
        "timeouts": timeouts,
        "first_error": first_error,
        "hold_s": hold_s,
        "fanout_s": last.duration_since(t0).as_secs_f64(),
        "latency": summarize(lat).json(),
        "rss_before_kib": rss_before,
        "rss_held_kib": rss_held,
        "rss_per_held_bytes": match (rss_before, rss_held) {
            (Some(b), Some(h)) if a.polls > 0 => Some(h.saturating_sub(b) as f64 * 1024.0 / a.polls as f64),
            _ => None,
        },
    }))
}
