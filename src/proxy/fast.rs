//! The cache fast path: plain polls answered below pingora's HTTP layer.
//!
//! A cache hit copies a few hundred bytes out of memory, yet a request through pingora's proxy
//! layer costs a session, a boxed per-request future, header maps and the proxy's phase
//! machinery (about 40k instructions, and about 32 KiB held per waiting connection). Here the
//! head is parsed in place with `httparse`, a latest-mode answer is the message's pre-built wire
//! head plus `Age` and `Date` (a since-mode answer, the array of pre-serialised fragments), and
//! a long poll waits in this small future instead of a pingora session.
//!
//! Bodiless GET and HEAD requests on plain proxy routes take the same parse and go on to
//! `forward.rs`.
//!
//! The fast path only takes requests it answers exactly as `poll.rs` would: GET or HEAD over
//! HTTP/1.1 with one Host, no body, no upgrade, on a public poll route whose topic is warm (and
//! not stale past `max_stale`). Everything else (other methods and routes, `auth_request`, cold
//! topics, bad cursors or `Prefer`, refusals at a limit, anything malformed or unusual) is
//! handed to pingora untouched ([`Served::NotFast`]), where `request_filter` decides. The
//! since-mode pieces (cursor, counting, body, `Age`) are `poll.rs`'s own functions.

use super::header_deadline::HeaderDeadline;
use super::headers::header_text;
use super::poll::{
    count_since, cursor_of, etag_matches, since_age, since_body, wait_change, wait_preference, Woke,
};
use super::respond::{proxy_error_message, raw_json_error};
use super::router::decode_topic;
use super::{access_log, count_request, AccessLine, GatewayState, Kind};
use crate::cache::{CursorArg, Message, SubState, Topic};
use crate::config::{Access, Limits, Mode};
use crate::subscription::Hub;
use pingora_core::protocols::http::date::get_cached_date;
use pingora_core::protocols::GetSocketDigest;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest request head the fast path reads before leaving the request to pingora: a poll is a
/// request line and a handful of headers.
pub const MAX_HEAD: usize = 4096;
/// More header lines than this and the request goes to pingora.
pub const MAX_HEADERS: usize = 32;
/// Bodies up to this size are copied behind the head so the answer is one write.
const COALESCE_BODY: usize = 16 * 1024;

/// A request head the fast path may answer; it borrows the connection's read buffer.
pub struct Request<'a> {
    /// Length of the head in the buffer.
    pub len: usize,
    pub(super) method: &'static str,
    pub(super) target: &'a str,
    pub(super) path: &'a str,
    if_none_match: Option<&'a str>,
    /// The client sent `Connection: close`.
    pub(super) close: bool,
    pub(super) headers: &'a [httparse::Header<'a>],
}

impl<'a> Request<'a> {
    fn prefer(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("prefer"))
            .map(|h| h.value)
    }
}

/// What the bytes read so far are.
pub enum Parsed<'a> {
    /// An incomplete head: read more.
    Partial,
    Fast(Request<'a>),
    /// A request for pingora (or bytes pingora will refuse).
    Other,
}

/// What the fast path did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Answered; the connection stays open for the next request.
    KeepAlive,
    /// Answered (or the client left); close the connection.
    Close,
    /// Not for the fast path: nothing was written, hand the request to pingora.
    NotFast,
}

/// Bytes of a request target the fast path accepts; anything else (which pingora's URI parser
/// may judge differently) goes to pingora.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%?".contains(&b)
}

fn visible_ascii(v: &[u8]) -> Option<&str> {
    header_text(v).map(str::trim)
}

/// Parses the head at the start of `buf`, if it is complete and plain enough for the fast path.
pub fn parse<'a>(
    buf: &'a [u8],
    headers: &'a mut [httparse::Header<'a>],
    limits: &Limits,
) -> Parsed<'a> {
    let max_head = MAX_HEAD.min(limits.max_request_header_bytes);
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    let method = match req.method {
        Some("GET") => "GET",
        Some("HEAD") => "HEAD",
        _ => return Parsed::Other,
    };
    let Some(target) = req.path else {
        return Parsed::Other;
    };
    // The same request-line measure as `check_request_shape`.
    let line = method.len() + target.len() + 11;
    if req.version != Some(1)
        || len > max_head
        || line > limits.max_request_line_bytes
        || !target.starts_with('/')
        || !target.bytes().all(plain_target_byte)
    {
        return Parsed::Other;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let mut hosts = 0;
    let mut if_none_match = None;
    let mut close = false;
    let headers: &'a [httparse::Header<'a>] = req.headers;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("if-none-match") {
            match (if_none_match, visible_ascii(h.value)) {
                (None, Some(v)) => if_none_match = Some(v),
                _ => return Parsed::Other,
            }
        } else if name.eq_ignore_ascii_case("connection") {
            match visible_ascii(h.value) {
                Some(v) if v.eq_ignore_ascii_case("keep-alive") => {}
                Some(v) if v.eq_ignore_ascii_case("close") => close = true,
                _ => return Parsed::Other,
            }
        } else if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("sec-websocket-key")
        {
            return Parsed::Other;
        }
    }
    if hosts != 1 {
        return Parsed::Other;
    }
    Parsed::Fast(Request {
        len,
        method,
        target,
        path,
        if_none_match,
        close,
        headers,
    })
}

/// Reads the client of a held poll: pingora's `read_body_or_idle` on the full path, a plain read
/// here (any byte or EOF means the client is gone or misbehaving).
async fn client_read(io: &mut HeaderDeadline) {
    let mut probe = [0u8; 16];
    let _ = io.read(&mut probe).await;
}

/// What every answer of one request shares.
struct Exchange<'a, 'r> {
    state: &'a GatewayState,
    route: &'a str,
    hub: &'a Arc<Hub>,
    req: &'a Request<'r>,
    start: Instant,
    wait: Duration,
    prefer_applied: Option<u64>,
    /// The client asked for it, or the server is draining.
    close: bool,
}

/// Answers `req` from the cache if it can; `draining`: the server is shutting down, so the
/// connection closes after this answer.
pub async fn serve(
    state: &GatewayState,
    io: &mut HeaderDeadline,
    out: &mut Vec<u8>,
    req: &Request<'_>,
    draining: bool,
) -> Served {
    let start = Instant::now();
    let router = state.router();
    let Some(m) = router.find(req.path) else {
        return Served::NotFast;
    };
    let (Some(hub), Some(raw_topic)) = (&m.entry.hub, m.topic) else {
        if m.entry.hub.is_none() {
            // Boxed: the forward's state (buffers, a response-header array) would otherwise
            // sit in every connection's future, held polls included.
            return Box::pin(super::forward::serve(
                state, io, out, req, m.entry, draining,
            ))
            .await;
        }
        return Served::NotFast;
    };
    let poll = hub.poll();
    if !matches!(poll.access, Access::Public) {
        return Served::NotFast;
    }
    let Ok(name) = decode_topic(raw_topic) else {
        return Served::NotFast;
    };
    let Ok((wait, prefer_applied)) = wait_preference(req.prefer(), poll) else {
        return Served::NotFast;
    };
    // A bad cursor is refused (by pingora's path) before the topic is created.
    let cursor = match poll.mode {
        Mode::Latest => None,
        Mode::Since => {
            let query = req.target.split_once('?').map(|(_, q)| q);
            match cursor_of(query, req.if_none_match, poll) {
                Ok(c) => c,
                Err(_) => return Served::NotFast,
            }
        }
    };
    let Ok(topic) = hub.topic(&name) else {
        return Served::NotFast;
    };
    let (newest, sub) = topic.snapshot();
    // Cold: pingora's path waits `first_message_wait`, then falls back.
    let Some(msg) = newest else {
        return Served::NotFast;
    };
    let stale = match sub {
        SubState::Down(since) if since.elapsed() > poll.max_stale => return Served::NotFast,
        SubState::Down(_) => true,
        _ => false,
    };
    let x = Exchange {
        state,
        route: m.entry.route.name.as_ref(),
        hub,
        req,
        start,
        wait,
        prefer_applied,
        close: req.close || draining,
    };
    match poll.mode {
        Mode::Latest => latest(&x, io, out, &topic, msg, stale).await,
        Mode::Since => since(&x, io, out, &topic, cursor.as_ref(), stale).await,
    }
}

/// Latest mode: the newest message, `304` when the client has it, held until a newer one when
/// it may wait.
async fn latest(
    x: &Exchange<'_, '_>,
    io: &mut HeaderDeadline,
    out: &mut Vec<u8>,
    topic: &Arc<Topic>,
    mut msg: Arc<Message>,
    mut stale: bool,
) -> Served {
    let metrics = &x.hub.cache.metrics;
    let mut close = x.close;
    let mut not_modified = false;
    match x.req.if_none_match {
        Some(inm) if etag_matches(inm, &msg.etag) => {
            not_modified = true;
            if x.wait.is_zero() {
                metrics.not_modified.inc();
            } else {
                let Some(slot) = x.hub.cache.try_hold(topic) else {
                    // pingora's path refuses it, counted, with 503 + Retry-After.
                    return Served::NotFast;
                };
                let deadline = tokio::time::Instant::now() + x.wait;
                let mut shutdown = x.hub.cache.store.shutdown_signal();
                let woke = loop {
                    // Subscribe before reading the cache, so a publish in between is not missed.
                    let mut rx = topic.watch();
                    if let Some(n) = topic.latest() {
                        msg = n;
                    }
                    if !etag_matches(inm, &msg.etag) {
                        break Woke::Changed;
                    }
                    match wait_change(&mut rx, deadline, &mut shutdown, client_read(io)).await {
                        Woke::Changed => continue,
                        w => break w,
                    }
                };
                drop(slot);
                match woke {
                    Woke::Changed => {
                        not_modified = false;
                        metrics.held_served.inc();
                        metrics.lag.observe(msg.received.elapsed().as_secs_f64());
                    }
                    Woke::Gone => return gone(x, io),
                    Woke::Timeout | Woke::Shutdown => {
                        metrics.held_timeout.inc();
                        stale = matches!(topic.state(), SubState::Down(_));
                        close |= matches!(woke, Woke::Shutdown);
                    }
                }
            }
        }
        _ => metrics.hit.inc(),
    }
    metrics.saved.inc();
    topic.saved.fetch_add(1, Ordering::Relaxed);
    out.clear();
    match msg.heads.as_deref() {
        Some(h) if not_modified => out.extend_from_slice(&h.wire_not_modified),
        Some(h) => out.extend_from_slice(&h.wire_ok),
        // Heads are built for every latest-mode message; a message without them (which
        // `latest_heads` never yields for a valid content type) still gets a correct head.
        None if not_modified => {
            let _ = write!(
                out,
                "HTTP/1.1 304 Not Modified\r\nETag: {}\r\nCache-Control: no-cache\r\n",
                msg.etag
            );
        }
        None => {
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nETag: {}\r\n",
                msg.payload.len(),
                msg.etag
            );
        }
    }
    let _ = write!(out, "Age: {}\r\n", msg.received.elapsed().as_secs());
    let body = if not_modified {
        &[][..]
    } else {
        &msg.payload[..]
    };
    let status = if not_modified { 304 } else { 200 };
    answer(x, io, out, status, body, stale, close).await
}

/// Since mode: every cached message after the cursor as one JSON array, held until there is one
/// when the client may wait.
async fn since(
    x: &Exchange<'_, '_>,
    io: &mut HeaderDeadline,
    out: &mut Vec<u8>,
    topic: &Arc<Topic>,
    cursor: Option<&CursorArg>,
    stale: bool,
) -> Served {
    let mut close = x.close;
    let mut rx = topic.watch();
    let mut got = topic.since(cursor);
    let mut held = false;
    if got.messages.is_empty() && !x.wait.is_zero() {
        let Some(_slot) = x.hub.cache.try_hold(topic) else {
            return Served::NotFast;
        };
        held = true;
        let deadline = tokio::time::Instant::now() + x.wait;
        let mut shutdown = x.hub.cache.store.shutdown_signal();
        loop {
            match wait_change(&mut rx, deadline, &mut shutdown, client_read(io)).await {
                Woke::Changed => {
                    rx = topic.watch();
                    got = topic.since(cursor);
                    if !got.messages.is_empty() {
                        break;
                    }
                }
                Woke::Gone => return gone(x, io),
                Woke::Timeout => break,
                Woke::Shutdown => {
                    close = true;
                    break;
                }
            }
        }
    }
    count_since(x.hub, topic, &got, held);
    let ct = &x.hub.poll().content_type;
    if !header_safe(&got.cursor) || !header_safe(ct) {
        // pingora's path cannot write such a header either: it answers 500.
        let message = proxy_error_message(500);
        raw_json_error(io, 500, message, &[], x.req.method == "HEAD").await;
        finish(x, io, 500);
        return Served::Close;
    }
    let body = since_body(&got);
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\n\
         ETag: \"{c}\"\r\nPollgate-Cursor: {c}\r\n",
        body.len(),
        c = got.cursor
    );
    if got.gap {
        out.extend_from_slice(b"Pollgate-Gap: true\r\n");
    }
    if let Some(age) = since_age(&got, topic) {
        let _ = write!(out, "Age: {age}\r\n");
    }
    let stale = stale || matches!(topic.state(), SubState::Down(_));
    answer(x, io, out, 200, &body, stale, close).await
}

/// A header value that can be written as is: visible ASCII, spaces and tabs.
fn header_safe(v: &str) -> bool {
    header_text(v.as_bytes()).is_some()
}

/// The client left while held: counted as 499 (nginx's code for it), nothing written.
fn gone(x: &Exchange<'_, '_>, io: &HeaderDeadline) -> Served {
    finish(x, io, 499);
    Served::Close
}

/// Finishes the head in `out` (the per-answer headers, `Date`, the blank line), writes it with
/// the body, counts and logs the request.
async fn answer(
    x: &Exchange<'_, '_>,
    io: &mut HeaderDeadline,
    out: &mut Vec<u8>,
    status: u16,
    body: &[u8],
    stale: bool,
    close: bool,
) -> Served {
    if stale {
        out.extend_from_slice(b"Pollgate-Stale: true\r\n");
    }
    if let Some(w) = x.prefer_applied {
        let _ = write!(out, "Preference-Applied: wait={w}\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(get_cached_date().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    let body = if x.req.method == "HEAD" {
        &[][..]
    } else {
        body
    };
    if send(io, out, body).await.is_err() {
        tracing::debug!("fast path: could not write the answer; client gone");
        return Served::Close;
    }
    finish(x, io, status);
    if close {
        Served::Close
    } else {
        Served::KeepAlive
    }
}

/// One write for a head and a small body; two for a large body (no copy).
async fn send(io: &mut HeaderDeadline, out: &mut Vec<u8>, body: &[u8]) -> std::io::Result<()> {
    if body.len() <= COALESCE_BODY {
        out.extend_from_slice(body);
        io.write_all(out).await?;
    } else {
        io.write_all(out).await?;
        io.write_all(body).await?;
    }
    io.flush().await
}

/// Counts the request and writes its access-log line, as `Gateway::logging` does.
fn finish(x: &Exchange<'_, '_>, io: &HeaderDeadline, status: u16) {
    let elapsed = x.start.elapsed();
    count_request(x.route, Some(x.hub), Kind::Poll, status, elapsed);
    if x.state.access_log.load(Ordering::Relaxed) {
        let client = io
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(|a| a.to_string()));
        access_log(&AccessLine {
            client,
            method: x.req.method,
            path: x.req.path,
            route: x.route,
            kind: Kind::Poll,
            status,
            elapsed,
            upstream: "-",
            error: "",
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits() -> Limits {
        let c = Config::from_yaml(
            "listen: \"127.0.0.1:1\"\nupstreams:\n  b:\n    address: \"127.0.0.1:2\"\nroutes:\n  - name: d\n    prefix: \"/\"\n    upstream: b\n",
            &|_| None,
        )
        .expect("config");
        c.limits
    }

    fn kind(raw: &[u8]) -> &'static str {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse(raw, &mut h, &limits()) {
            Parsed::Partial => "partial",
            Parsed::Fast(_) => "fast",
            Parsed::Other => "other",
        }
    }

    #[test]
    fn plain_polls_are_fast_and_everything_else_is_not() {
        assert_eq!(kind(b"GET /a/b HTTP/1.1\r\nHost: x\r\n\r\n"), "fast");
        assert_eq!(kind(b"HEAD /a?x=1 HTTP/1.1\r\nhost: x\r\nConnection: Keep-Alive\r\nIf-None-Match: \"e\"\r\n\r\n"), "fast");
        assert_eq!(kind(b"GET /a HTTP/1.1\r\nHost: x\r\n"), "partial");
        assert_eq!(kind(b""), "partial");
        for other in [
            &b"POST /a HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\r\n",
            b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a{b} HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"\x16\x03\x01garbage\r\n\r\n",
        ] {
            assert_eq!(kind(other), "other", "{}", String::from_utf8_lossy(other));
        }
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(kind(long.as_bytes()), "other");
        let partial_long = format!("GET /a HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(kind(partial_long.as_bytes()), "other");
    }

    #[test]
    fn connection_close_is_honoured() {
        let raw = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse(raw, &mut h, &limits()) {
            Parsed::Fast(r) => {
                assert!(r.close);
                assert_eq!(r.len, raw.len());
            }
            _ => panic!("expected a fast request"),
        }
    }
}
