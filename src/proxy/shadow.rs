//! Shadow verification (`shadow` on a poll route): for a sample of polls the gateway also asks
//! the backend's own poll endpoint, off the client's critical path, and compares its answer
//! with what the cache holds, so an operator can prove on live traffic that the cache answers
//! like the backend before trusting it.
//!
//! A sampled poll only copies what the comparison needs and spawns it: the poll's answer never
//! waits for the backend. The comparison reads the cache just before and just after the
//! backend's answer and counts a match when the backend agrees with either, so a message that
//! arrives on the WebSocket while the backend is answering is not a false mismatch.

mod diff;

use super::fallback::{self, Fetched};
use super::poll::view::{cache_view, CacheView};
use super::request::HeaderSource;
use super::upstream::{Failure, UpstreamClient};
use crate::cache::SubState;
use crate::config::Shadow;
use crate::metrics::METRICS;
use crate::subscription::Hub;
use diff::{Differences, Seen};
use parking_lot::Mutex;
use prometheus::IntCounter;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Mismatches kept per route, newest first: enough to see a pattern, bounded whatever the
/// traffic.
const KEEP: usize = 20;

/// A request target is kept up to this many bytes in the mismatch log.
const MAX_TARGET: usize = 512;

/// Request headers not copied onto the shadow request. The cache never compresses, so asking
/// the backend for a compressed answer would only make every body differ.
const NOT_ASKED: [&str; 1] = ["accept-encoding"];

/// What a sampled poll offers for comparison.
pub struct Offer<'a, H: HeaderSource + ?Sized> {
    pub hub: &'a Arc<Hub>,
    pub client: &'a Arc<UpstreamClient>,
    /// The decoded topic.
    pub topic: &'a str,
    /// The request target as the client sent it (path and query).
    pub target: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a H,
    pub client_ip: Option<IpAddr>,
    pub https: bool,
}

/// One poll route's shadow verification in one config generation: its `shadow` settings and
/// its record.
///
/// The settings are read from here, not from the hub's polling config, so that changing them
/// does not rebuild the hub on reload (`Router::build` leaves `shadow` out of what must match):
/// the rollout step from `serve: backend` to `serve: cache` is a reload, and it must not empty
/// the cache it is about to serve from.
pub struct ShadowLog {
    config: Option<Arc<Shadow>>,
    record: Arc<Record>,
}

/// A route's rate budget, counts and recent mismatches. Kept across reloads that keep the route,
/// so the rollout's evidence survives its steps.
struct Record {
    route: Box<str>,
    bucket: Mutex<Bucket>,
    counts: Counts,
    recent: Mutex<VecDeque<Mismatch>>,
    last_error: Mutex<Option<Failed>>,
    /// Resolved on first use, so routes without `shadow` export no shadow series.
    metrics: OnceLock<[IntCounter; 3]>,
}

#[derive(Default)]
struct Counts {
    matched: AtomicU64,
    mismatched: AtomicU64,
    errors: AtomicU64,
    /// Sampled polls not compared: the cache had nothing it would answer with (a cold topic
    /// whose first message did not come in time, or data too stale to be served).
    skipped: AtomicU64,
    /// Comparisons spawned and not finished: a backend slow to answer shows here first.
    in_flight: AtomicU64,
}

/// How a comparison ended: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Match,
    Mismatch,
    Error,
}

/// One recorded mismatch.
struct Mismatch {
    at: SystemTime,
    topic: String,
    target: String,
    cache_status: u16,
    backend_status: u16,
    /// The cache changed while the backend answered (compared with the newer view).
    cache_changed: bool,
    differences: Differences,
}

/// The last comparison that could not be made because the backend failed.
struct Failed {
    at: SystemTime,
    topic: String,
    error: &'static str,
}

impl ShadowLog {
    /// The shadow of route `route` with `config`, carrying on the record of `previous` (the
    /// same route in the configuration being replaced).
    pub fn new(route: &str, config: Option<Shadow>, previous: Option<&ShadowLog>) -> ShadowLog {
        let record = match previous {
            Some(p) => p.record.clone(),
            None => Arc::new(Record::new(route)),
        };
        if config.is_some() {
            // The comparison series exist (at 0) from the start, like the poll outcomes.
            record.metrics();
        }
        ShadowLog {
            config: config.map(Arc::new),
            record,
        }
    }

    /// The route's `shadow` settings; `None`: shadow verification is off.
    pub fn config(&self) -> Option<&Shadow> {
        self.config.as_deref()
    }

    /// Samples the poll (and keeps to `max_per_second`); a sampled poll's comparison runs in
    /// its own task.
    pub fn offer<H: HeaderSource + ?Sized>(&self, offer: Offer<'_, H>) {
        let Some(cfg) = &self.config else {
            return;
        };
        // Sample before taking a token: polls left out must not spend the rate budget.
        if rand::random::<f64>() >= cfg.sample {
            return;
        }
        let record = &self.record;
        if !record
            .bucket
            .lock()
            .take(cfg.max_per_second, Instant::now())
        {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Counted before the poll is answered, so "nothing in flight" after a poll's answer
        // means its comparison is done.
        record.counts.in_flight.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            log: record.clone(),
            cfg: cfg.clone(),
            hub: offer.hub.clone(),
            client: offer.client.clone(),
            topic: offer.topic.to_string(),
            target: offer.target.to_string(),
            query: offer.query.map(str::to_string),
            headers: Headers::copy(offer.headers),
            client_ip: offer.client_ip,
            https: offer.https,
        };
        rt.spawn(job.run());
    }

    /// The route's shadow section of `/topics`; `None` when the route has no `shadow` and
    /// never had one.
    pub fn report(&self) -> Option<Value> {
        self.record.report(self.config())
    }
}

impl Record {
    fn new(route: &str) -> Record {
        Record {
            route: route.into(),
            bucket: Mutex::new(Bucket::default()),
            counts: Counts::default(),
            recent: Mutex::new(VecDeque::with_capacity(KEEP)),
            last_error: Mutex::new(None),
            metrics: OnceLock::new(),
        }
    }

    /// The route's `pollgate_shadow_comparisons_total` series, created (at 0) on first call.
    fn metrics(&self) -> &[IntCounter; 3] {
        self.metrics.get_or_init(|| {
            let c = |r: &str| {
                METRICS
                    .shadow_comparisons
                    .with_label_values(&[&self.route, r])
            };
            [c("match"), c("mismatch"), c("error")]
        })
    }

    fn count(&self, r: Verdict) {
        let (n, i) = match r {
            Verdict::Match => (&self.counts.matched, 0),
            Verdict::Mismatch => (&self.counts.mismatched, 1),
            Verdict::Error => (&self.counts.errors, 2),
        };
        n.fetch_add(1, Ordering::Relaxed);
        self.metrics()[i].inc();
    }

    fn record(&self, m: Mismatch) {
        let mut recent = self.recent.lock();
        if recent.len() == KEEP {
            recent.pop_back();
        }
        recent.push_front(m);
    }

    fn report(&self, cfg: Option<&Shadow>) -> Option<Value> {
        let c = &self.counts;
        // Read first: a comparison that had finished by then has its count and its record in
        // this report. Read last, a comparison finishing while the report was built showed
        // `in_flight: 0` beside a list read before its record.
        let in_flight = c.in_flight.load(Ordering::Acquire);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let total = load(&c.matched) + load(&c.mismatched) + load(&c.errors) + load(&c.skipped);
        if cfg.is_none() && total == 0 {
            return None;
        }
        let now = SystemTime::now();
        let ago = |at: SystemTime| now.duration_since(at).unwrap_or_default().as_secs_f64();
        let mismatches: Vec<Value> = self
            .recent
            .lock()
            .iter()
            .map(|m| {
                json!({
                    "time": rfc3339(m.at),
                    "seconds_ago": ago(m.at),
                    "topic": m.topic,
                    "target": m.target,
                    "cache_status": m.cache_status,
                    "backend_status": m.backend_status,
                    "cache_changed": m.cache_changed,
                    "differences": m.differences.shown.iter().map(|d| d.to_json()).collect::<Vec<_>>(),
                    "more_differences": m.differences.more,
                })
            })
            .collect();
        let last_error = self.last_error.lock().as_ref().map(|f| {
            json!({
                "time": rfc3339(f.at),
                "seconds_ago": ago(f.at),
                "topic": f.topic,
                "error": f.error,
            })
        });
        Some(json!({
            "enabled": cfg.is_some(),
            "serve": match cfg { Some(s) if s.serve_backend => "backend", _ => "cache" },
            "sample": cfg.map(|s| s.sample),
            "max_per_second": cfg.map(|s| s.max_per_second),
            "headers": cfg.map(|s| s.headers.clone()).unwrap_or_default(),
            "match": load(&c.matched),
            "mismatch": load(&c.mismatched),
            "error": load(&c.errors),
            "skipped": load(&c.skipped),
            "in_flight": in_flight,
            "mismatches": mismatches,
            "last_error": last_error,
        }))
    }
}

/// A token bucket: `rate` tokens a second, at most one second's worth saved up, so a burst
/// never exceeds what `max_per_second` allows in a second. Behind a mutex held only for this
/// arithmetic, never across an `.await`.
#[derive(Default)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn take(&mut self, rate: u32, now: Instant) -> bool {
        let cap = f64::from(rate);
        self.tokens = match self.last {
            // A new bucket starts full.
            None => cap,
            Some(last) => {
                (self.tokens + now.saturating_duration_since(last).as_secs_f64() * cap).min(cap)
            }
        };
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The poll's request headers, copied so the comparison can outlive the poll.
struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    fn copy<H: HeaderSource + ?Sized>(src: &H) -> Headers {
        Headers(
            src.all()
                .filter(|(n, _)| !NOT_ASKED.iter().any(|x| n.eq_ignore_ascii_case(x)))
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
        )
    }
}

impl HeaderSource for Headers {
    fn values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn all<'s>(&'s self) -> impl Iterator<Item = (&'s str, &'s [u8])> + 's {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }
}

/// One comparison, owned by its task.
struct Job {
    log: Arc<Record>,
    cfg: Arc<Shadow>,
    hub: Arc<Hub>,
    client: Arc<UpstreamClient>,
    topic: String,
    target: String,
    query: Option<String>,
    headers: Headers,
    client_ip: Option<IpAddr>,
    https: bool,
}

impl Drop for Job {
    fn drop(&mut self) {
        // Release: a report that reads this decrement sees the job's counts and record.
        self.log.counts.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Job {
    async fn run(self) {
        let cfg = &self.cfg;
        let Some(before) = self.cached().await else {
            self.log.counts.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let ask = fallback::Ask {
            target: &self.target,
            headers: &self.headers,
            client_ip: self.client_ip,
            https: self.https,
            head_only: false,
            if_none_match: None,
        };
        let fetched = fallback::fetch(&self.client, &self.hub.upstream, &ask).await;
        let after = cache_view(&self.hub, &self.topic, self.query.as_deref());
        let fetched = match fetched {
            Ok(f) => f,
            Err(f) => return self.failed(f),
        };
        let backend = backend_seen(&fetched, &cfg.headers);
        let d_before = diff::compare(&cfg.headers, &cache_seen(&before, &cfg.headers), &backend);
        if d_before.is_empty() {
            return self.log.count(Verdict::Match);
        }
        // The cache may have moved on while the backend answered: the backend agreeing with
        // the newer cache is a match too. Otherwise the newer view is the one reported.
        let (view, differences, changed) = match &after {
            Some(a) if !same_view(a, &before) => {
                let d = diff::compare(&cfg.headers, &cache_seen(a, &cfg.headers), &backend);
                if d.is_empty() {
                    return self.log.count(Verdict::Match);
                }
                (a, d, true)
            }
            _ => (&before, d_before, false),
        };
        tracing::debug!(
            route = %self.log.route, topic = %self.topic, target = %self.target,
            differences = ?differences.shown, "shadow mismatch"
        );
        self.log.count(Verdict::Mismatch);
        self.log.record(Mismatch {
            at: SystemTime::now(),
            topic: self.topic.clone(),
            target: cut_target(&self.target),
            cache_status: view.status,
            backend_status: fetched.head.status.as_u16(),
            cache_changed: changed,
            differences,
        });
    }

    /// What the cache would answer now, waiting (up to `first_message_wait`, as the poll
    /// itself does) for a topic the poll has just subscribed. `None`: the cache would not
    /// answer this poll, so there is nothing to compare.
    async fn cached(&self) -> Option<CacheView> {
        let poll = self.hub.poll();
        let topic = self.hub.cache.get(&self.topic)?;
        let deadline = tokio::time::Instant::now() + poll.first_message_wait;
        loop {
            // Subscribe before reading, so a message published in between still wakes us.
            let mut rx = topic.watch();
            let state = topic.state();
            if let Some(view) = cache_view(&self.hub, &self.topic, self.query.as_deref()) {
                // Past `max_stale` the poll goes to the backend: the cache is not answering.
                return match state {
                    SubState::Down(since) if since.elapsed() > poll.max_stale => None,
                    _ => Some(view),
                };
            }
            if matches!(state, SubState::Failed | SubState::Down(_)) {
                return None;
            }
            tokio::select! {
                r = rx.changed() => r.ok()?,
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    fn failed(&self, f: Failure) {
        let error = f.kind().unwrap_or("protocol");
        tracing::debug!(route = %self.log.route, topic = %self.topic, error, "shadow request failed");
        self.log.count(Verdict::Error);
        *self.log.last_error.lock() = Some(Failed {
            at: SystemTime::now(),
            topic: self.topic.clone(),
            error,
        });
    }
}

fn same_view(a: &CacheView, b: &CacheView) -> bool {
    a.status == b.status && a.body == b.body && a.headers == b.headers
}

fn cache_seen<'a>(v: &'a CacheView, names: &[String]) -> Seen<'a> {
    Seen {
        status: v.status,
        headers: names
            .iter()
            .map(|n| {
                v.headers
                    .iter()
                    .filter(|(h, _)| h.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.as_bytes())
                    .collect()
            })
            .collect(),
        body: &v.body,
    }
}

fn backend_seen<'a>(f: &'a Fetched, names: &[String]) -> Seen<'a> {
    Seen {
        status: f.head.status.as_u16(),
        headers: names
            .iter()
            .map(|n| {
                f.head
                    .headers
                    .get_all(n.as_str())
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect()
            })
            .collect(),
        body: &f.body,
    }
}

fn cut_target(t: &str) -> String {
    if t.len() <= MAX_TARGET {
        return t.to_string();
    }
    let mut end = MAX_TARGET;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &t[..end])
}

/// `2026-01-31T12:34:56.789Z`: a time a human reads without converting.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The Gregorian date `days` after 1970-01-01 (the proleptic calendar in 400-year eras).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bucket_allows_one_second_of_burst_then_the_rate() {
        let mut b = Bucket::default();
        let t0 = Instant::now();
        let burst = (0..10).filter(|_| b.take(4, t0)).count();
        assert_eq!(burst, 4);
        // Half a second refills two tokens.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| b.take(4, t1)).count(), 2);
        // A long idle spell saves up no more than one second's worth.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(4, t2)).count(), 4);
        // Steady polling at 100/s for 2 s gets the rate, and a token or so of rounding.
        let mut got = 0;
        for i in 1..=200 {
            got += usize::from(b.take(4, t2 + Duration::from_millis(10 * i)));
        }
        assert!((7..=9).contains(&got), "{got}");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_036_652_345);
        assert_eq!(rfc3339(t), "2026-11-30T11:04:12.345Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_log_keeps_the_newest_mismatches() {
        let log = Record::new("t");
        for i in 0..(KEEP + 5) {
            log.record(Mismatch {
                at: SystemTime::now(),
                topic: format!("t{i}"),
                target: String::new(),
                cache_status: 200,
                backend_status: 200,
                cache_changed: false,
                differences: Differences::default(),
            });
        }
        let recent = log.recent.lock();
        assert_eq!(recent.len(), KEEP);
        assert_eq!(recent.front().unwrap().topic, format!("t{}", KEEP + 4));
        assert_eq!(recent.back().unwrap().topic, "t5");
    }
}
