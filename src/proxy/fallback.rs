//! Fallback to the backend's own poll endpoint, collapsed: concurrent polls that would ask the
//! backend the same thing share one request and its answer (single flight). A cold start or
//! an outage then costs the backend one request per distinct poll, not one per poller: the
//! thundering herd pollgate exists to prevent.
//!
//! The shared request is the first poller's GET without its conditionals (each poller's own
//! `If-None-Match` is then judged against the answer's `ETag`); polls share a flight when
//! their target and every header that may change the backend's answer (`Authorization`,
//! `Cookie`, `Accept*`) are the same. The answer is read whole, up to [`MAX_BODY`].

use super::answer::{name, Answer, FALLBACK_UNAVAILABLE};
use super::headers;
use super::poll::input::etag_matches;
use super::request::HeaderSource;
use super::upstream::{Failure, UpstreamClient};
use crate::config::Upstream;
use crate::metrics::METRICS;
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use http::HeaderValue;
use pingora_http::{RequestHeader, ResponseHeader};
use sha1::{Digest, Sha1};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// Largest fallback answer relayed: a poll endpoint's answer is a message or a short history.
pub const MAX_BODY: usize = 16 << 20;

/// Headers of a poll that may change what the backend answers: polls share a flight only when
/// these agree.
const VARYING: [&str; 5] = [
    "authorization",
    "cookie",
    "accept",
    "accept-encoding",
    "accept-language",
];

/// Request headers never sent on a shared request.
const PRIVATE: [&str; 4] = [
    "if-none-match",
    "if-modified-since",
    "prefer",
    "x-forwarded-for",
];

/// One backend answer, shared by every poll of its flight.
#[derive(Debug)]
pub struct Fetched {
    pub head: ResponseHeader,
    pub body: Bytes,
}

type Flight = watch::Receiver<Option<Result<Arc<Fetched>, Failure>>>;

/// The flights of one poll route.
#[derive(Default)]
pub struct Flights {
    in_flight: DashMap<[u8; 20], Flight>,
}

/// What a fallback needs of the poll.
pub struct Ask<'a, H: HeaderSource + ?Sized> {
    pub target: &'a str,
    pub headers: &'a H,
    pub client_ip: Option<IpAddr>,
    pub https: bool,
    pub head_only: bool,
    pub if_none_match: Option<&'a str>,
}

impl Flights {
    /// Answers a poll from the backend, joining a flight under way or leading a new one.
    /// `route`: the metric label.
    pub async fn answer<H: HeaderSource + ?Sized>(
        &self,
        client: &UpstreamClient,
        up: &Upstream,
        route: &str,
        ask: &Ask<'_, H>,
    ) -> Answer {
        let key = key_of(ask);
        let (mut rx, leader) = {
            // The entry guard is dropped before any await.
            match self.in_flight.entry(key) {
                dashmap::Entry::Occupied(e) => (e.get().clone(), None),
                dashmap::Entry::Vacant(e) => {
                    let (tx, rx) = watch::channel(None);
                    e.insert(rx.clone());
                    (rx, Some(tx))
                }
            }
        };
        let result = match leader {
            Some(tx) => {
                METRICS.fallback_requests.with_label_values(&[route]).inc();
                // Dropped with the flight's entry even if this poll's future is cancelled
                // (its client left): followers then see the sender gone and fail over.
                let _done = Done(&self.in_flight, key);
                let r = fetch(client, up, ask).await.map(Arc::new);
                let _ = tx.send(Some(r.clone()));
                r
            }
            None => {
                METRICS.fallback_collapsed.with_label_values(&[route]).inc();
                let wait = up.connect_timeout + up.read_timeout;
                // The watch's read guard is released before anything else is awaited.
                let shared = match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
                    Ok(Ok(r)) => Some(r.clone().unwrap_or(Err(Failure::Protocol))),
                    Ok(Err(_)) => None,
                    Err(_) => Some(Err(Failure::ReadTimeout)),
                };
                match shared {
                    Some(r) => r,
                    // The leader left before its answer: this poll asks on its own.
                    None => fetch(client, up, ask).await.map(Arc::new),
                }
            }
        };
        match result {
            Ok(f) => relay(&f, ask),
            Err(f) => {
                f.count(&up.name);
                Answer::unavailable(FALLBACK_UNAVAILABLE)
            }
        }
    }
}

/// Removes a flight's entry when its leader is done, however it ends.
struct Done<'a>(&'a DashMap<[u8; 20], Flight>, [u8; 20]);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

fn key_of<H: HeaderSource + ?Sized>(ask: &Ask<'_, H>) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update(ask.target.as_bytes());
    for name in VARYING {
        h.update([0]);
        for v in ask.headers.values(name) {
            h.update(v);
            h.update([1]);
        }
    }
    h.finalize().into()
}

/// The shared request: the poll as a GET, without what is this poller's own.
fn request<H: HeaderSource + ?Sized>(ask: &Ask<'_, H>, up: &Upstream) -> Option<RequestHeader> {
    let lines = ask
        .headers
        .all()
        .filter(|(name, _)| !PRIVATE.iter().any(|p| name.eq_ignore_ascii_case(p)))
        .map(|(n, v)| (n.as_bytes(), v));
    let ip = ask.client_ip.map(|ip| ip.to_string());
    headers::upstream_request(
        "GET",
        ask.target.as_bytes(),
        lines,
        ask.headers.values("connection"),
        ip.as_deref(),
        ask.https,
        false,
        up,
    )
}

/// Asks the backend the poll's GET, without what is the poller's own (conditionals, `Prefer`,
/// `X-Forwarded-For`), and reads the answer whole (up to [`MAX_BODY`]).
pub async fn fetch<H: HeaderSource + ?Sized>(
    client: &UpstreamClient,
    up: &Upstream,
    ask: &Ask<'_, H>,
) -> Result<Fetched, Failure> {
    let req = request(ask, up).ok_or(Failure::Protocol)?;
    let (mut s, _) = client.session(up).await?;
    let fail = |e: pingora_error::BError| Failure::of(&e);
    s.write_request_header(Box::new(req)).await.map_err(fail)?;
    s.finish_body().await.map_err(fail)?;
    let head = loop {
        s.read_response().await.map_err(fail)?;
        let resp = s.resp_header().ok_or(Failure::Protocol)?;
        match resp.status.as_u16() {
            101 => return Err(Failure::Protocol),
            100..=199 => continue,
            _ => break resp.clone(),
        }
    };
    if headers::response_too_large(&head) {
        return Err(Failure::Protocol);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = s.read_body_ref().await.map_err(fail)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Failure::Protocol);
        }
        body.extend_from_slice(chunk);
    }
    client.release(s, up).await;
    Ok(Fetched {
        head,
        body: body.freeze(),
    })
}

/// One poller's answer from a shared backend answer: `304` when its `If-None-Match` matches the
/// answer's `ETag`, the answer itself otherwise (the body dropped for HEAD by the writer).
fn relay<H: HeaderSource + ?Sized>(f: &Fetched, ask: &Ask<'_, H>) -> Answer {
    let mut head = f.head.clone();
    headers::downstream_response(&mut head);
    head.remove_header(&http::header::TRANSFER_ENCODING);
    let etag = head.headers.get(http::header::ETAG).cloned();
    let not_modified = head.status == 200
        && matches!((ask.if_none_match, &etag), (Some(inm), Some(tag))
            if etag_matches(inm, &String::from_utf8_lossy(tag.as_bytes())));
    if not_modified {
        let mut a = Answer::new(304);
        for n in [
            "etag",
            "cache-control",
            "vary",
            "expires",
            "content-location",
        ] {
            for v in head.headers.get_all(n) {
                a.relayed.push((n.to_string(), v.clone()));
            }
        }
        a.date = head.headers.get(http::header::DATE).cloned();
        return a;
    }
    let mut a = Answer::new(head.status.as_u16()).with_body(f.body.clone());
    for (n, v) in head.case_header_iter() {
        let n = String::from_utf8_lossy(n.as_slice()).into_owned();
        if n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("date") {
            continue;
        }
        a.relayed.push((n, v.clone()));
    }
    a.push(name::CONTENT_LENGTH, HeaderValue::from(f.body.len()));
    a.date = head.headers.get(http::header::DATE).cloned();
    let _ = ask.head_only;
    a
}
