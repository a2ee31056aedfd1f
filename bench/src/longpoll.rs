//! `longpoll`: the long-poll fan-out client. Opens every connection, sends each a poll the
//! server holds (carrying its topic's current validators), waits until the server reports them
//! all held, then publishes: one message per topic, or with `--repoll N` N messages per topic
//! `--interval-ms` apart while every client polls again at once after each answer, carrying that
//! answer's validators (`--contract`). Every message body carries its sequence number, so each
//! (client, message) pair is timed from that message's publish and a lost, skipped or repeated
//! message is counted. Also reads the server's RSS before and after holding, and its CPU.

use crate::client::{self, Conn};
use crate::pairs::{self, Received};
use crate::poll_contract::{seqs_in, Contract, Validators};
use crate::stats::{round3, summarize};
use crate::usage::Usage;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

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
    /// Send the first poll without validators, instead of fetching each topic's current ones
    /// (servers that hold a bare poll on a fresh channel, like Nchan).
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
    /// Server process whose VmRSS is read before and after the polls are held, and whose CPU
    /// time is read around the fan-out. Repeatable (nginx's workers): CPU is then summed over
    /// them, and RSS is not read (shared memory would count once per worker).
    #[arg(long)]
    pid: Vec<u32>,
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
    #[arg(long, conflicts_with = "repoll")]
    depart: bool,
    /// Publish this many messages per topic, `--interval-ms` apart, and have every client poll
    /// again at once after each answer, on the same connection, with that answer's validators,
    /// until it has the last one (0: one message, one answer per client).
    #[arg(long, default_value_t = 0)]
    repoll: u32,
    /// Time between two publishes of the same topic with `--repoll`.
    #[arg(long, default_value_t = 400)]
    interval_ms: u64,
    /// How a poll carries the previous answer (and, without `--no-etag`, the first poll its
    /// topic's current answer): see each value.
    #[arg(long, value_enum, default_value_t = Contract::Etag)]
    contract: Contract,
    /// The query parameter of `--contract cursor`.
    #[arg(long, default_value = "since")]
    cursor_param: String,
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

/// The settings every client of a run shares.
struct Shared {
    target: String,
    headers: Vec<(String, String)>,
    contract: Contract,
    cursor_param: String,
    /// A client is done once it has this message (1 without `--repoll`).
    last_seq: u32,
    repoll: bool,
    depart: bool,
    /// Backstop for one answer's wait (the run's own deadline stops clients first).
    read_limit: Duration,
}

impl Shared {
    fn request(&self, path: &str, v: &Validators) -> Vec<u8> {
        let mut h = self.headers.clone();
        h.extend(v.headers.iter().cloned());
        client::get_request(&self.target, &v.path(path), &h)
    }
}

/// Answers without a new message one client takes before it gives up: a hold that ends
/// (`long_poll`) gives one; dozens mean the server is not holding the re-polls at all.
const MAX_EMPTY_ANSWERS: u64 = 20;

/// How a client's polling ended.
enum End {
    /// It has the last message (or, without `--repoll`, its one answer).
    Done,
    Error(String),
    ConnectError(String),
    /// The run's delivery deadline came first.
    Timeout,
}

/// One client's polls, as the run reads them afterwards.
struct ClientRun {
    received: Received,
    /// Answers holding at least one of the topic's messages.
    answers: u64,
    /// Answers holding none: a `304` or `200 []` at a hold's end, or a wrong body.
    empty: u64,
    wrong_body: Option<String>,
    /// Answers marked `Pollgate-Gap: true` (the server could not vouch for the messages between).
    gaps: u64,
    statuses: Vec<u16>,
    end: End,
    /// Kept open until every client is done, unless the client departs.
    conn: Option<Conn>,
}

/// What a client needs to connect and count itself in.
struct Start {
    sem: Arc<Semaphore>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    /// Clients whose polling has ended: before the publishes, those a server answered at once.
    ended: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
}

/// One client: connect, poll, and (with `--repoll`) poll again after every answer until it has
/// the last message or the run stops it.
async fn poll_loop(
    s: Arc<Shared>,
    topic: usize,
    path: String,
    marker: String,
    first: Validators,
    mut st: Start,
) -> ClientRun {
    let mut run = ClientRun {
        received: Received {
            topic,
            got: Vec::new(),
        },
        answers: 0,
        empty: 0,
        wrong_body: None,
        gaps: 0,
        statuses: Vec::new(),
        end: End::Done,
        conn: None,
    };
    let req = s.request(&path, &first);
    // The permit bounds connects in flight only.
    let permit = st.sem.acquire_owned().await.expect("semaphore open");
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        let mut conn = Conn::connect(&s.target).await?;
        conn.send(&req).await?;
        Ok::<Conn, std::io::Error>(conn)
    })
    .await;
    drop(permit);
    let mut conn = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            st.failed.fetch_add(1, Ordering::Relaxed);
            run.end = End::ConnectError(e.to_string());
            return run;
        }
        Err(_) => {
            st.failed.fetch_add(1, Ordering::Relaxed);
            run.end = End::ConnectError("connect timed out".into());
            return run;
        }
    };
    st.sent.fetch_add(1, Ordering::Relaxed);
    let mut validators = first;
    run.end = loop {
        let r = tokio::select! {
            r = tokio::time::timeout(s.read_limit, conn.read_response(false)) => r,
            _ = st.stop.wait_for(|stop| *stop) => break End::Timeout,
        };
        let r = match r {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => break End::Error(e.to_string()),
            Err(_) => break End::Timeout,
        };
        let at = Instant::now();
        run.statuses.push(r.status);
        if r.header("pollgate-gap") == Some("true") {
            run.gaps += 1;
        }
        let text = r.text();
        let seqs = seqs_in(&text, &marker);
        if seqs.is_empty() {
            run.empty += 1;
            if !matches!(r.status, 200 | 304) {
                break End::Error(format!("status {}: {text}", r.status));
            }
            if r.status == 200 && text.trim() != "[]" {
                run.wrong_body.get_or_insert(text);
            }
            // A server that answers a re-poll at once without a new message (it did not take
            // the validators as a hold) would be polled in a tight loop: stop such a client.
            if run.empty > MAX_EMPTY_ANSWERS {
                break End::Error(format!(
                    "{} answers without a new message (last: status {})",
                    run.empty, r.status
                ));
            }
        } else {
            run.answers += 1;
            run.received.got.extend(seqs.iter().map(|&q| (q, at)));
        }
        if !s.repoll || seqs.iter().any(|&q| q >= s.last_seq) {
            break End::Done;
        }
        match s.contract.next_validators(&r, &s.cursor_param) {
            Ok(Some(v)) => validators = v,
            Ok(None) => {}
            Err(e) => break End::Error(e),
        }
        if let Err(e) = conn.send(&s.request(&path, &validators)).await {
            break End::Error(e.to_string());
        }
    };
    st.ended.fetch_add(1, Ordering::Relaxed);
    // By default the connection stays open until every client is done, as a client that polls
    // again on the same connection keeps it: no closes during the fan-out. A departing client
    // hangs up at once, so the server meets closes mid-fan-out.
    if !s.depart {
        run.conn = Some(conn);
    }
    run
}

/// Each topic's current validators, from one poll without any (this also warms the gateway's
/// subscriptions).
async fn current_validators(a: &LongpollArgs, topics: usize) -> Result<Vec<Validators>, String> {
    let mut out = vec![Validators::default(); topics];
    if a.no_etag {
        return Ok(out);
    }
    for (i, slot) in out.iter_mut().enumerate() {
        let t = topic_name(a, i);
        let path = a.path_template.replace("{topic}", &t);
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let r = client::get(&a.target, &path, Duration::from_secs(5)).await;
            if let Ok(r) = &r {
                if r.status == 200 {
                    if let Some(v) = a.contract.next_validators(r, &a.cursor_param)? {
                        *slot = v;
                        break;
                    }
                }
            }
            if Instant::now() > give_up {
                let why = match r {
                    Ok(r) => format!("status {} headers {:?}", r.status, r.headers),
                    Err(e) => e.to_string(),
                };
                return Err(format!(
                    "no {:?} validators for {t} at {}{path}: {why}",
                    a.contract, a.target
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(out)
}

/// User and system CPU seconds of every process in `pids`, summed.
fn cpu_of(pids: &[u32]) -> Option<(f64, f64)> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold((0.0, 0.0), |acc, &p| {
        let (u, s) = cpu_user_sys_s(p)?;
        Some((acc.0 + u, acc.1 + s))
    })
}

/// Nanoseconds on a CPU (`schedstat`: exact where `stat`'s clock ticks are 10 ms, a sizeable
/// part of a 5,000-answer fan-out) of `pid`'s threads.
fn cpu_ns(pid: u32) -> Option<u64> {
    Usage::of(pid).map(|u| u.cpu_ns)
}

/// [`cpu_ns`] of every process in `pids`, summed.
fn cpu_ns_of(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(0, |acc, &p| Some(acc + cpu_ns(p)?))
}

pub async fn run(a: LongpollArgs) -> Result<serde_json::Value, String> {
    let topics = a.topics.max(1);
    let nonce: u32 = rand::random();
    let marker = |t: &str| format!("lp{nonce:08x}-{t}");
    let headers = client::parse_headers(&a.headers)?;
    let messages = a.repoll.max(1);
    let interval = Duration::from_millis(a.interval_ms);

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
    let firsts = current_validators(&a, topics).await?;

    let rss_pid = match a.pid[..] {
        [p] => Some(p),
        _ => None,
    };
    let rss_before = rss_pid.and_then(rss_kib);
    let held_before = held_now(&a).await?.unwrap_or(0.0);

    let deliver_limit = Duration::from_secs_f64(a.deliver_timeout_s) + interval * (messages - 1);
    let shared = Arc::new(Shared {
        target: a.target.clone(),
        headers,
        contract: a.contract,
        cursor_param: a.cursor_param.clone(),
        last_seq: messages,
        repoll: a.repoll > 0,
        depart: a.depart,
        read_limit: Duration::from_secs_f64(a.hold_timeout_s + 10.0) + deliver_limit,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let sem = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let setup_start = Instant::now();
    let mut tasks = Vec::with_capacity(a.clients);
    for c in 0..a.clients {
        let ti = c % topics;
        let t = topic_name(&a, ti);
        let start = Start {
            sem: sem.clone(),
            sent: sent.clone(),
            failed: failed.clone(),
            ended: ended.clone(),
            stop: stop_rx.clone(),
        };
        tasks.push(tokio::spawn(poll_loop(
            shared.clone(),
            ti,
            a.path_template.replace("{topic}", &t),
            marker(&t),
            firsts[ti].clone(),
            start,
        )));
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
        // A poll answered before any publish is not held (it shows up as a lost pair).
        let want = sent
            .load(Ordering::Relaxed)
            .saturating_sub(ended.load(Ordering::Relaxed)) as f64;
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
    let rss_after = rss_pid.and_then(rss_kib);
    let held_at_publish = sent.load(Ordering::Relaxed);

    // Publish from a plain thread, so the clients' reading never delays a publish.
    let rounds: Vec<Vec<(String, String)>> = (1..=messages)
        .map(|seq| {
            (0..topics)
                .map(|i| {
                    let t = topic_name(&a, i);
                    let tag = format!("{}#{seq}", marker(&t));
                    let body = json!({ "bench": tag, "seq": seq, "topic": &t }).to_string();
                    (a.publish_path.replace("{topic}", &t), body)
                })
                .collect()
        })
        .collect();
    let publish_addr = a.publish.clone();
    let server_cpu_before = cpu_of(&a.pid);
    let server_ns_before = cpu_ns_of(&a.pid);
    let client_cpu_before = cpu_s(std::process::id());
    let client_ns_before = cpu_ns(std::process::id());
    let publish_started = Instant::now();
    let on_failure = stop_tx.clone();
    let publisher = std::thread::spawn(move || {
        let r = publish_rounds(&publish_addr, &rounds, interval);
        if r.is_err() {
            // Nothing more is coming: stop the clients now rather than at the deadline.
            let _ = on_failure.send(true);
        }
        r
    });
    let deliver_deadline = tokio::time::Instant::now() + deliver_limit;
    let stopper = tokio::spawn(async move {
        tokio::time::sleep_until(deliver_deadline).await;
        let _ = stop_tx.send(true);
    });

    let mut runs = Vec::with_capacity(tasks.len());
    let mut abandoned = 0usize;
    let mut task_errors = Vec::new();
    for t in tasks {
        let abort = t.abort_handle();
        // Stopped clients return at once; this bound is only a backstop.
        match tokio::time::timeout_at(deliver_deadline + Duration::from_secs(5), t).await {
            Ok(Ok(r)) => runs.push(r),
            Ok(Err(e)) => task_errors.push(format!("task: {e}")),
            Err(_) => {
                abort.abort();
                abandoned += 1;
            }
        }
    }
    stopper.abort();
    let server_user_sys = cpu_of(&a.pid)
        .zip(server_cpu_before)
        .map(|(x, y)| (round3(x.0 - y.0), round3(x.1 - y.1)));
    let server_cpu = server_user_sys.map(|(u, s)| round3(u + s));
    let server_ns = cpu_ns_of(&a.pid)
        .zip(server_ns_before)
        .map(|(x, y)| x.saturating_sub(y));
    let client_ns = cpu_ns(std::process::id())
        .zip(client_ns_before)
        .map(|(x, y)| x.saturating_sub(y));
    let client_cpu = cpu_s(std::process::id())
        .zip(client_cpu_before)
        .map(|(x, y)| round3(x - y));
    let published = publisher
        .join()
        .map_err(|_| "publisher thread panicked".to_string())??;
    let publish_s = published
        .last()
        .and_then(|r| r.last())
        .map(|t| t.duration_since(publish_started).as_secs_f64())
        .unwrap_or(0.0);

    let (mut errors, mut timeouts, mut connect_errors) = (task_errors.len(), abandoned, 0);
    let (mut answers, mut empty, mut wrong_body, mut gaps) = (0, 0, 0, 0);
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut first_error: Option<String> = task_errors.first().cloned();
    let mut received = Vec::with_capacity(runs.len());
    for r in runs {
        for s in &r.statuses {
            *statuses.entry(*s).or_default() += 1;
        }
        answers += r.answers;
        empty += r.empty;
        gaps += r.gaps;
        if let Some(b) = &r.wrong_body {
            wrong_body += 1;
            first_error.get_or_insert_with(|| format!("wrong body: {b}"));
        }
        match r.end {
            End::Done => {}
            End::Error(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            End::ConnectError(e) => {
                connect_errors += 1;
                first_error.get_or_insert_with(|| format!("connect: {e}"));
            }
            End::Timeout => timeouts += 1,
        }
        received.push(r.received);
        drop(r.conn);
    }
    let tally = pairs::tally(a.clients, &published, &received);
    if tally.early > 0 {
        first_error.get_or_insert_with(|| "a message was answered before its publish".into());
    }
    let last_at = tally.last_at.unwrap_or(publish_started);
    let lat = summarize(tally.latencies_us.clone());
    let per_held = match (rss_before, rss_after) {
        (Some(b), Some(a2)) if held_at_publish > 0 => Some(round3(
            (a2 as f64 - b as f64) * 1024.0 / held_at_publish as f64,
        )),
        _ => None,
    };
    Ok(json!({
        "clients": a.clients,
        "depart": a.depart,
        "repoll": a.repoll > 0,
        "contract": format!("{:?}", a.contract).to_lowercase(),
        "messages": messages,
        "interval_ms": a.interval_ms,
        "topics": topics,
        "connected": held_at_publish,
        "connect_errors": connect_errors,
        "held_reported": held_seen,
        "hold_wait_s": round3(hold_wait),
        // (client, message) pairs: `delivered` of `expected`, the rest `lost` (of which
        // `skipped`: a later message of the topic reached that client).
        "expected": tally.expected,
        "delivered": tally.delivered,
        "lost": tally.lost(),
        "skipped": tally.skipped,
        "duplicates": tally.duplicates,
        "unknown_seq": tally.unknown,
        "early": tally.early,
        "answers": answers,
        "empty_answers": empty,
        "gap_answers": gaps,
        "wrong_body": wrong_body,
        "errors": errors,
        "timeouts": timeouts,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "first_error": first_error,
        "publish_s": round3(publish_s),
        "fanout_s": round3(last_at.duration_since(publish_started).as_secs_f64()),
        "latency": lat.json(),
        "latency_by_message": tally
            .by_message_us
            .iter()
            .map(|l| summarize(l.clone()).json())
            .collect::<Vec<_>>(),
        "server_cpu_s_during_fanout": server_cpu,
        // The kernel's share shows what a user-space change can still win.
        "server_user_s_during_fanout": server_user_sys.map(|c| c.0),
        "server_sys_s_during_fanout": server_user_sys.map(|c| c.1),
        "server_cpu_ns_during_fanout": server_ns,
        "client_cpu_s_during_fanout": client_cpu,
        // Beside the server's: a client whose CPU time equals the fan-out's length is the
        // bottleneck, and the latency is partly its own.
        "client_cpu_ns_during_fanout": client_ns,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_held_bytes": per_held,
    }))
}

/// Publishes `rounds` over one blocking keep-alive connection: round `r` (every topic's message
/// `r + 1`) starts `r * interval` after the first, or as soon as the one before it is
/// acknowledged when that takes longer. Returns when each publish was sent, by round and topic.
///
/// A round's publishes go out together, in one write, as publishers that do not wait on each
/// other would send them. Waiting for each acknowledgement before sending the next would let a
/// server that acknowledges only after delivering (Nchan) pace its own load, and the time the
/// later topics' messages spend waiting for the earlier fan-outs would go uncounted
/// (coordinated omission).
fn publish_rounds(
    addr: &str,
    rounds: &[Vec<(String, String)>],
    interval: Duration,
) -> Result<Vec<Vec<Instant>>, String> {
    let mut s =
        std::net::TcpStream::connect(addr).map_err(|e| format!("publisher connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut times = Vec::with_capacity(rounds.len());
    let mut buf = Vec::with_capacity(4096);
    for (r, round) in rounds.iter().enumerate() {
        let due = start + interval * r as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let mut batch = Vec::new();
        for (path, body) in round {
            batch.extend_from_slice(&client::post_request(addr, path, body.as_bytes()));
        }
        let sent = Instant::now();
        s.write_all(&batch)
            .map_err(|e| format!("publish round {}: {e}", r + 1))?;
        for (path, _) in round {
            read_ack(&mut s, &mut buf).map_err(|e| format!("publish {path}: {e}"))?;
        }
        times.push(vec![sent; round.len()]);
    }
    Ok(times)
}

/// Reads one publish acknowledgement (content-length delimited) and checks its status. `buf`
/// keeps what arrived beyond it: the acknowledgements of a round's later publishes.
fn read_ack(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    loop {
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hdrs);
        if let Ok(httparse::Status::Complete(n)) = r.parse(buf) {
            let status = r.code.unwrap_or(0);
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= n + len {
                buf.drain(..n + len);
                if !(200..300).contains(&status) {
                    return Err(format!("status {status}"));
                }
                return Ok(());
            }
        }
        let mut chunk = [0u8; 4096];
        let k = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if k == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..k]);
    }
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
