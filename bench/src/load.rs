//! `http-load`: keep-alive HTTP load, closed loop (each client sends its next request as soon as
//! the last is answered, like wrk) or paced (`--rate` requests per second per client, like a
//! fleet of legacy pollers). Checks every answer's status and, optionally, its body.

use crate::client::{self, Conn};
use crate::stats::{round3, summarize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    #[arg(long)]
    target: String,
    /// Request path; `{topic}` is replaced by `<topic-prefix><i>` for client `i % topics`.
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, default_value_t = 1)]
    topics: usize,
    #[arg(long, default_value = "t")]
    topic_prefix: String,
    #[arg(long, default_value_t = 50)]
    clients: usize,
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Requests per second per client; 0 runs a closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    #[arg(long)]
    expect_status: Option<u16>,
    #[arg(long)]
    expect_body_file: Option<PathBuf>,
    /// Upper bound on requests per client.
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

#[derive(Default)]
struct ClientTally {
    latencies_us: Vec<u64>,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    bad_status: u64,
    bad_body: u64,
    errors: u64,
    bytes_in: u64,
    first_error: Option<String>,
}

pub fn main(a: LoadArgs) -> Result<serde_json::Value, String> {
    let rt = client::runtime(a.workers)?;
    rt.block_on(run(a))
}

pub async fn run(a: LoadArgs) -> Result<serde_json::Value, String> {
    let headers = client::parse_headers(&a.headers)?;
    let expect_body = match &a.expect_body_file {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let expect_body = Arc::new(expect_body);
    let duration = Duration::from_secs_f64(a.duration_s.clamp(0.1, 3600.0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(a.clients);
    for i in 0..a.clients.max(1) {
        let topic = format!("{}{}", a.topic_prefix, i % a.topics.max(1));
        let path = a.path.replace("{topic}", &topic);
        let req = client::get_request(&a.target, &path, &headers);
        let a = a.clone();
        let expect_body = expect_body.clone();
        tasks.push(tokio::spawn(async move {
            one_client(&a, &req, expect_body.as_deref(), deadline).await
        }));
    }
    let mut total = ClientTally::default();
    for t in tasks {
        let c = t.await.map_err(|e| format!("client task: {e}"))?;
        total.latencies_us.extend(c.latencies_us);
        total.ok += c.ok;
        total.bad_status += c.bad_status;
        total.bad_body += c.bad_body;
        total.errors += c.errors;
        total.bytes_in += c.bytes_in;
        for (s, n) in c.statuses {
            *total.statuses.entry(s).or_default() += n;
        }
        if total.first_error.is_none() {
            total.first_error = c.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let answered = total.ok + total.bad_status + total.bad_body;
    let lat = summarize(std::mem::take(&mut total.latencies_us));
    Ok(json!({
        "clients": a.clients,
        "elapsed_s": round3(elapsed),
        "requests": answered,
        "ok": total.ok,
        "bad_status": total.bad_status,
        "bad_body": total.bad_body,
        "errors": total.errors,
        "statuses": total.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "first_error": total.first_error,
        "rps": round3(answered as f64 / elapsed.max(1e-9)),
        "bytes_in": total.bytes_in,
        "bytes_per_response": total.bytes_in.checked_div(answered).unwrap_or(0),
        "latency": lat.json(),
    }))
}

async fn one_client(
    a: &LoadArgs,
    req: &[u8],
    expect_body: Option<&[u8]>,
    deadline: Instant,
) -> ClientTally {
    let mut t = ClientTally::default();
    let period = (a.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / a.rate));
    // Paced clients start at a random phase so the fleet's requests spread over the period.
    let mut next = match period {
        Some(p) => Instant::now() + p.mul_f64(rand::random::<f64>()),
        None => Instant::now(),
    };
    let mut conn: Option<Conn> = None;
    let mut sent = 0u64;
    while sent < a.max_requests {
        if period.is_some() {
            if next >= deadline {
                break;
            }
            tokio::time::sleep_until(next).await;
        } else if Instant::now() >= deadline {
            break;
        }
        if conn.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, Conn::connect(&a.target)).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    t.errors += 1;
                    t.first_error.get_or_insert_with(|| format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(_) => break,
            }
        }
        let c = conn.as_mut().expect("connected above");
        let t0 = Instant::now();
        sent += 1;
        match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
            Ok(Ok(r)) => {
                t.latencies_us.push(t0.elapsed().as_micros() as u64);
                t.bytes_in += r.wire_len as u64;
                *t.statuses.entry(r.status).or_default() += 1;
                if a.expect_status.is_some_and(|s| s != r.status) {
                    t.bad_status += 1;
                    t.first_error
                        .get_or_insert_with(|| format!("status {}: {}", r.status, r.text()));
                } else if expect_body.is_some_and(|b| b != &r.body[..]) {
                    t.bad_body += 1;
                    t.first_error
                        .get_or_insert_with(|| format!("unexpected body: {}", r.text()));
                } else {
                    t.ok += 1;
                }
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                t.errors += 1;
                t.first_error.get_or_insert_with(|| format!("request: {e}"));
                conn = None;
            }
            Err(_) => {
                t.errors += 1;
                t.first_error
                    .get_or_insert_with(|| "request timed out (10 s)".into());
                conn = None;
            }
        }
        if let Some(p) = period {
            next += p;
            let now = Instant::now();
            if next < now {
                next = now;
            }
        }
    }
    t
}
