//! `longpoll`: the long-poll fan-out client. Opens every connection, sends each a conditional GET
//! carrying its topic's current ETag (so the server holds it), waits until the server reports
//! them all held, publishes one message per topic, and times each client's answer from the
//! moment its topic's publish was sent. Also reads the server's RSS before and after holding.

use crate::client::{self, Conn};
use crate::stats::{round3, summarize};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct LongpollArgs {
    /// The server the clients long-poll.
    #[arg(long)]
    target: String,
    #[arg(long, default_value = "/api/prices/{topic}")]
    path_template: String,
    #[arg(long, default_value_t = 100)]
    topics: usize,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    #[arg(long, default_value = "lp")]
    topic_prefix: String,
    /// Where messages are published: `POST http://<publish><publish-path>`.
    #[arg(long)]
    publish: String,
    #[arg(long, default_value = "/publish/{topic}")]
    publish_path: String,
    /// Publish one message per topic first, so every topic has a current value.
    #[arg(long)]
    seed: bool,
    /// Do not fetch an ETag per topic (servers that hold a poll without one, like Nchan).
    #[arg(long)]
    no_etag: bool,
    /// Extra request header for the held polls, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Admin address whose `/metrics` reports `pollgate_long_polls_held` (summed over routes).
    #[arg(long)]
    held_prometheus: Option<String>,
    /// Address whose `--nchan-status-path` reports Nchan's `subscribers: N`.
    #[arg(long)]
    held_nchan: Option<String>,
    #[arg(long, default_value = "/nchan_status")]
    nchan_status_path: String,
    /// Server process whose VmRSS is read before and after the polls are held.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Longest wait for every poll to be held.
    #[arg(long, default_value_t = 60.0)]
    hold_timeout_s: f64,
    /// Longest wait for every answer after the publishes.
    #[arg(long, default_value_t = 30.0)]
    deliver_timeout_s: f64,
    /// Pause between "all held" and the RSS reading and publishes.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Each client closes its connection as soon as it has its answer (a page or app that goes
    /// away), instead of keeping it open until every answer is in.
    #[arg(long)]
    depart: bool,
}

enum Outcome {
    Answered {
        status: u16,
        at: Instant,
        body_ok: bool,
        body: String,
    },
    Error(String),
    ConnectError(String),
    Timeout,
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_s(pid: u32) -> Option<f64> {
    cpu_user_sys_s(pid).map(|(u, s)| u + s)
}

/// A process's user and system CPU seconds so far.
pub fn cpu_user_sys_s(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based over the whole line).
    let user: f64 = f.get(11)?.parse().ok()?;
    let sys: f64 = f.get(12)?.parse().ok()?;
    Some((user / 100.0, sys / 100.0))
}

/// Sums every `pollgate_long_polls_held` sample in a Prometheus exposition.
pub fn held_from_prometheus(text: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix("pollgate_long_polls_held")
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// `subscribers: N` from Nchan's stub status.
pub fn held_from_nchan(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("subscribers:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn main(a: LongpollArgs) -> Result<serde_json::Value, String> {
    let rt = client::runtime(a.workers)?;
    rt.block_on(run(a))
}

fn topic_name(a: &LongpollArgs, i: usize) -> String {
    format!("{}{}", a.topic_prefix, i)
}

async fn held_now(a: &LongpollArgs) -> Result<Option<f64>, String> {
    let limit = Duration::from_secs(5);
    if let Some(admin) = &a.held_prometheus {
        let r = client::get(admin, "/metrics", limit)
            .await
            .map_err(|e| format!("metrics: {e}"))?;
        return Ok(Some(held_from_prometheus(&r.text())));
    }
    if let Some(addr) = &a.held_nchan {
        let r = client::get(addr, &a.nchan_status_path, limit)
            .await
            .map_err(|e| format!("nchan status: {e}"))?;
        return Ok(Some(held_from_nchan(&r.text())));
    }
    Ok(None)
}

pub async fn run(a: LongpollArgs) -> Result<serde_json::Value, String> {
    let topics = a.topics.max(1);
    let nonce: u32 = rand::random();
    let marker = |t: &str| format!("lp{nonce:08x}-{t}");
    let headers = client::parse_headers(&a.headers)?;

    if a.seed {
        for i in 0..topics {
            let t = topic_name(&a, i);
            let body = json!({ "seed": true, "topic": &t }).to_string();
            let path = a.publish_path.replace("{topic}", &t);
            let r = client::post(&a.publish, &path, body.as_bytes(), Duration::from_secs(5))
                .await
                .map_err(|e| format!("seeding {t}: {e}"))?;
            if !(200..300).contains(&r.status) {
                return Err(format!("seeding {t}: status {} {}", r.status, r.text()));
            }
        }
    }

    // The current ETag of every topic (this also warms the gateway's subscriptions).
    let mut etags: Vec<Option<String>> = vec![None; topics];
    if !a.no_etag {
        for (i, slot) in etags.iter_mut().enumerate() {
            let t = topic_name(&a, i);
            let path = a.path_template.replace("{topic}", &t);
            let give_up = Instant::now() + Duration::from_secs(10);
            loop {
                let r = client::get(&a.target, &path, Duration::from_secs(5)).await;
                if let Ok(r) = &r {
                    if r.status == 200 {
                        if let Some(e) = r.header("etag") {
                            *slot = Some(e.to_string());
                            break;
                        }
                    }
                }
                if Instant::now() > give_up {
                    let why = match r {
                        Ok(r) => format!("status {} etag {:?}", r.status, r.header("etag")),
                        Err(e) => e.to_string(),
                    };
                    return Err(format!("no ETag for {t} at {}{path}: {why}", a.target));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    let rss_before = a.pid.and_then(rss_kib);
    let held_before = held_now(&a).await?.unwrap_or(0.0);

    // Open every connection and send its poll; the permit bounds connects in flight only.
    let sem = Arc::new(tokio::sync::Semaphore::new(a.connect_concurrency.max(1)));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let total_limit = Duration::from_secs_f64(a.hold_timeout_s + a.deliver_timeout_s + 10.0);
    let setup_start = Instant::now();
    let mut tasks = Vec::with_capacity(a.clients);
    for c in 0..a.clients {
        let ti = c % topics;
        let t = topic_name(&a, ti);
        let path = a.path_template.replace("{topic}", &t);
        let mut hdrs = headers.clone();
        if let Some(e) = &etags[ti] {
            hdrs.push(("If-None-Match".into(), e.clone()));
        }
        let req = client::get_request(&a.target, &path, &hdrs);
        let expect = marker(&t);
        let (sem, sent, failed, target) =
            (sem.clone(), sent.clone(), failed.clone(), a.target.clone());
        let depart = a.depart;
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.expect("semaphore open");
            let connected = tokio::time::timeout(Duration::from_secs(10), async {
                let mut conn = Conn::connect(&target).await?;
                conn.send(&req).await?;
                Ok::<Conn, std::io::Error>(conn)
            })
            .await;
            drop(permit);
            let mut conn = match connected {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return (ti, Outcome::ConnectError(e.to_string()), None);
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return (ti, Outcome::ConnectError("connect timed out".into()), None);
                }
            };
            sent.fetch_add(1, Ordering::Relaxed);
            let out = match tokio::time::timeout(total_limit, conn.read_response(false)).await {
                Ok(Ok(r)) => {
                    let at = Instant::now();
                    let text = r.text();
                    Outcome::Answered {
                        status: r.status,
                        at,
                        body_ok: text.contains(&expect),
                        body: text,
                    }
                }
                Ok(Err(e)) => Outcome::Error(e.to_string()),
                Err(_) => Outcome::Timeout,
            };
            // By default the connection stays open until every answer is in, as a client that
            // polls again on the same connection would keep it: no closes during the fan-out.
            // A departing client hangs up at once, so the server meets closes mid-fan-out.
            if depart {
                drop(conn);
                return (ti, out, None);
            }
            (ti, out, Some(conn))
        }));
    }

    // Wait until every sent poll is held (as the server reports it).
    let hold_deadline = Instant::now() + Duration::from_secs_f64(a.hold_timeout_s);
    let mut held_seen = 0.0;
    loop {
        let done = sent.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= a.clients;
        let held = held_now(&a).await?;
        if let Some(h) = held {
            held_seen = h - held_before;
        }
        let want = sent.load(Ordering::Relaxed) as f64;
        let all_held = match held {
            Some(_) => done && held_seen >= want,
            None => done,
        };
        if all_held || Instant::now() > hold_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hold_wait = setup_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let rss_after = a.pid.and_then(rss_kib);
    let held_at_publish = sent.load(Ordering::Relaxed);

    // Publish from a plain thread, so the clients' reading never delays a publish.
    let pubs: Vec<(String, String)> = (0..topics)
        .map(|i| {
            let t = topic_name(&a, i);
            let body = json!({ "bench": marker(&t), "topic": &t }).to_string();
            (a.publish_path.replace("{topic}", &t), body)
        })
        .collect();
    let publish_addr = a.publish.clone();
    let server_cpu_before = a.pid.and_then(cpu_user_sys_s);
    let client_cpu_before = cpu_s(std::process::id());
    let publisher = std::thread::spawn(move || publish_all(&publish_addr, &pubs));
    let publish_started = Instant::now();
    let deliver_deadline =
        tokio::time::Instant::now() + Duration::from_secs_f64(a.deliver_timeout_s);

    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut abandoned = 0usize;
    let mut open = Vec::with_capacity(a.clients);
    for t in tasks {
        let abort = t.abort_handle();
        match tokio::time::timeout_at(deliver_deadline, t).await {
            Ok(Ok((ti, o, conn))) => {
                outcomes.push((ti, o));
                open.push(conn);
            }
            Ok(Err(e)) => outcomes.push((0, Outcome::Error(format!("task: {e}")))),
            Err(_) => {
                abort.abort();
                abandoned += 1;
            }
        }
    }
    let server_user_sys = a
        .pid
        .and_then(cpu_user_sys_s)
        .zip(server_cpu_before)
        .map(|(x, y)| (round3(x.0 - y.0), round3(x.1 - y.1)));
    let server_cpu = server_user_sys.map(|(u, s)| round3(u + s));
    let client_cpu = cpu_s(std::process::id())
        .zip(client_cpu_before)
        .map(|(x, y)| round3(x - y));
    let published = publisher
        .join()
        .map_err(|_| "publisher thread panicked".to_string())??;
    let publish_s = published
        .last()
        .map(|t| t.duration_since(publish_started).as_secs_f64())
        .unwrap_or(0.0);

    let mut latencies = Vec::new();
    let (mut delivered, mut early, mut wrong_body, mut errors, mut timeouts, mut connect_errors) =
        (0, 0, 0, 0, 0, 0);
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut first_error: Option<String> = None;
    let mut last_at = publish_started;
    for (ti, o) in &outcomes {
        match o {
            Outcome::Answered {
                status,
                at,
                body_ok,
                body,
            } => {
                *statuses.entry(*status).or_default() += 1;
                let sent_at = published[*ti];
                if *at < sent_at {
                    early += 1;
                    first_error.get_or_insert_with(|| {
                        format!("answered before the publish: {status} {body}")
                    });
                } else if *status != 200 {
                    first_error.get_or_insert_with(|| format!("status {status}: {body}"));
                } else if !body_ok {
                    wrong_body += 1;
                    first_error.get_or_insert_with(|| format!("wrong body: {body}"));
                } else {
                    delivered += 1;
                    latencies.push(at.duration_since(sent_at).as_micros() as u64);
                    last_at = last_at.max(*at);
                }
            }
            Outcome::Error(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.clone());
            }
            Outcome::ConnectError(e) => {
                connect_errors += 1;
                first_error.get_or_insert_with(|| format!("connect: {e}"));
            }
            Outcome::Timeout => timeouts += 1,
        }
    }
    let lat = summarize(latencies);
    let per_held = match (rss_before, rss_after) {
        (Some(b), Some(a2)) if held_at_publish > 0 => Some(round3(
            (a2 as f64 - b as f64) * 1024.0 / held_at_publish as f64,
        )),
        _ => None,
    };
    Ok(json!({
        "clients": a.clients,
        "depart": a.depart,
        "topics": topics,
        "connected": held_at_publish,
        "connect_errors": connect_errors,
        "held_reported": held_seen,
        "hold_wait_s": round3(hold_wait),
        "delivered": delivered,
        "early": early,
        "wrong_body": wrong_body,
        "errors": errors,
        "timeouts": timeouts + abandoned,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "first_error": first_error,
        "publish_s": round3(publish_s),
        "fanout_s": round3(last_at.duration_since(publish_started).as_secs_f64()),
        "latency": lat.json(),
        "server_cpu_s_during_fanout": server_cpu,
        // The kernel's share shows what a user-space change can still win.
        "server_user_s_during_fanout": server_user_sys.map(|c| c.0),
        "server_sys_s_during_fanout": server_user_sys.map(|c| c.1),
        "client_cpu_s_during_fanout": client_cpu,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_held_bytes": per_held,
    }))
}

/// Publishes each `(path, body)` in order over one blocking keep-alive connection; returns the
/// instant each publish was sent.
fn publish_all(addr: &str, pubs: &[(String, String)]) -> Result<Vec<Instant>, String> {
    let mut s =
        std::net::TcpStream::connect(addr).map_err(|e| format!("publisher connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(pubs.len());
    let mut buf = Vec::with_capacity(4096);
    for (path, body) in pubs {
        let req = client::post_request(addr, path, body.as_bytes());
        times.push(Instant::now());
        s.write_all(&req)
            .map_err(|e| format!("publish {path}: {e}"))?;
        // Read one response (content-length delimited) before the next publish.
        buf.clear();
        loop {
            let mut hdrs = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut hdrs);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
                let status = r.code.unwrap_or(0);
                let len: usize = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= n + len {
                    if !(200..300).contains(&status) {
                        return Err(format!("publish {path}: status {status}"));
                    }
                    break;
                }
            }
            let mut chunk = [0u8; 4096];
            let k = s
                .read(&mut chunk)
                .map_err(|e| format!("publish {path}: {e}"))?;
            if k == 0 {
                return Err(format!("publish {path}: connection closed"));
            }
            buf.extend_from_slice(&chunk[..k]);
        }
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_gauges() {
        let m = "# HELP pollgate_long_polls_held x\npollgate_long_polls_held{route=\"a\"} 3\npollgate_long_polls_held{route=\"b\"} 4\npollgate_long_polls_held_total 9\n";
        assert_eq!(held_from_prometheus(m), 7.0);
        assert_eq!(
            held_from_nchan("total published messages: 1\nsubscribers: 12\n"),
            12.0
        );
    }
}
