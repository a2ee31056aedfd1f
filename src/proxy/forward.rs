//! Forwarding a bodiless request on a proxy route from pollgate's own connection loop through the shared upstream client (`upstream.rs`: pingora's
//! HTTP/1 client and pool), with the same header rules as pingora's proxy path
//! (`headers.rs`) and the same error answers (`upstream::Failure`).
//!
//! The upstream's framing is pingora's client's to read; the client's framing is this hop's to
//! write: a known length stays `Content-Length`, anything else is re-chunked for an HTTP/1.1
//! client or delimited by the close for an HTTP/1.0 one. A cut upstream body is never made to
//! look complete (no final chunk, or fewer bytes than announced, then the close).

use super::answer::{proxy_error_message, Answer};
use super::headers;
use super::request::RequestHead;
use super::router::RouteEntry;
use super::upstream::{Failure, UpstreamClient};
use super::wire;
use crate::config::Upstream;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::HeaderValue;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::Stream;
use pingora_http::{RequestHeader, ResponseHeader};
use std::io::Write as _;
use std::net::IpAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Client bytes (a pipelined request) kept while a forward is under way; past this the client
/// is no longer watched until the answer is relayed.
const MAX_PIPELINED: usize = 64 * 1024;

/// How a forward ended, for the log line and the connection.
pub struct Forwarded {
    /// The status the client got (0: none).
    pub status: u16,
    pub error: Option<Failure>,
    /// The client connection may carry another request.
    pub keep_alive: bool,
}

/// The upstream's body framing, read before the framing headers are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body follows (HEAD, 204, 304).
    None,
    Length(u64),
    /// Chunked or delimited by the upstream's close: length unknown.
    Stream,
}

/// Everything a forward needs from the connection.
pub struct Client<'a> {
    pub io: &'a mut Stream,
    pub out: &'a mut Vec<u8>,
    /// Bytes the client sends meanwhile (a pipelined request), kept for the connection loop.
    pub pipelined: &'a mut BytesMut,
    pub ip: Option<IpAddr>,
    /// The client may keep the connection (it asked to, and the server is not draining).
    pub keep_alive: bool,
    /// A route with `cors`: its rules and the request's origin (the backend's CORS headers are
    /// replaced).
    pub cors: Option<(&'a crate::config::Cors, super::cors::OriginCheck)>,
}

/// The request head for the upstream, built the way pingora's proxy builds it from the same
/// bytes: method, target, the headers in order with their case, then `headers.rs`'s rules.
/// Names and values are slices of one copy of the head (`raw`), not one allocation each.
pub fn upstream_request(
    head: &RequestHead<'_>,
    raw: &Bytes,
    ip: Option<IpAddr>,
    up: &Upstream,
) -> Option<RequestHeader> {
    let lines = head.headers.iter().filter_map(|h| {
        let name = copy_of(raw, head.raw, h.name.as_bytes())?;
        let value = HeaderValue::from_maybe_shared(copy_of(raw, head.raw, h.value)?).ok()?;
        Some((name, value))
    });
    let connection = head.values("connection");
    headers::upstream_request(
        head.method,
        head.target.as_bytes(),
        lines,
        connection,
        ip,
        false,
        up,
    )
}

/// The part of `copy` (a copy of `original`) where `part` (a slice of `original`) lies.
fn copy_of(copy: &Bytes, original: &[u8], part: &[u8]) -> Option<Bytes> {
    let start = (part.as_ptr() as usize).checked_sub(original.as_ptr() as usize)?;
    (start + part.len() <= copy.len()).then(|| copy.slice(start..start + part.len()))
}

/// Forwards `head` to `entry`'s upstream and relays the answer to the client.
pub async fn forward(
    upstream: &UpstreamClient,
    c: &mut Client<'_>,
    head: &RequestHead<'_>,
    entry: &RouteEntry,
) -> Forwarded {
    let up = &entry.route.upstream;
    let result = exchange(upstream, c, head, up).await;
    match result {
        Ok((status, keep_alive)) => Forwarded {
            status,
            error: None,
            keep_alive,
        },
        Err((f, sent)) => {
            f.count(&up.name);
            // Once a head has gone out, the status is that head's; the connection just closes.
            let status = match sent {
                Some(s) => s,
                None => {
                    let status = f.status();
                    let answer = match status {
                        0 => None,
                        s => Some(Answer::error(s, proxy_error_message(s))),
                    };
                    match answer {
                        Some(a) => {
                            let _ = wire::send_answer(c.io, c.out, &a, head.is_head(), false).await;
                            a.status
                        }
                        None => 499,
                    }
                }
            };
            Forwarded {
                status,
                error: Some(f),
                keep_alive: false,
            }
        }
    }
}

/// Finishes when the client hangs up; data it sends meanwhile (a pipelined request) is kept.
async fn client_gone(io: &mut Stream, pipelined: &mut BytesMut) {
    loop {
        if pipelined.len() >= MAX_PIPELINED {
            return std::future::pending().await;
        }
        pipelined.reserve(1024);
        match io.read_buf(pipelined).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

type Exchanged = Result<(u16, bool), (Failure, Option<u16>)>;

/// Sends the request and relays the answer. Ok: the status sent and whether the client
/// connection stays open. Err: the failure, and the status already sent if a head went out.
async fn exchange(
    upstream: &UpstreamClient,
    c: &mut Client<'_>,
    head: &RequestHead<'_>,
    up: &Upstream,
) -> Exchanged {
    let fail = |f: Failure| Err((f, None));
    // A pooled connection the upstream closed while it was idle fails before any answer byte:
    // an idempotent request then goes once more on a fresh connection. A slow upstream is not
    // retried.
    let idempotent = matches!(
        head.method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    );
    let mut retried = false;
    let raw = Bytes::copy_from_slice(head.raw);
    let mut s = loop {
        let (mut s, reused) = match upstream.session(up).await {
            Ok(s) => s,
            Err(f) => return fail(f),
        };
        let retriable = reused && idempotent && !retried;
        // Built again for a retry, rather than cloned for one that rarely comes.
        let Some(req) = upstream_request(head, &raw, c.ip, up) else {
            return fail(Failure::Protocol);
        };
        let first = tokio::select! {
            r = send_and_read(&mut s, req) => r,
            _ = client_gone(c.io, c.pipelined) => return fail(Failure::Downstream),
        };
        match first {
            Ok(()) => break s,
            Err(e) if retriable && e.retry.retry_reused() => retried = true,
            Err(e) => return fail(Failure::of(&e)),
        }
    };
    let http10 = head.http10;
    loop {
        let Some(resp) = s.resp_header() else {
            return fail(Failure::Protocol);
        };
        if headers::response_too_large(resp) {
            return fail(Failure::Protocol);
        }
        let status = resp.status.as_u16();
        if status == 101 {
            // Nobody asked for an upgrade on this path.
            return fail(Failure::Protocol);
        }
        if status >= 200 {
            return relay(upstream, c, head, up, s).await;
        }
        // Interim answers (103 Early Hints) reach HTTP/1.1 clients only: HTTP/1.0 has none.
        if !http10 {
            let mut interim = resp.clone();
            headers::downstream_response(&mut interim);
            wire::interim_head(c.out, &interim);
            if c.io.write_all(c.out).await.is_err() {
                return fail(Failure::Downstream);
            }
        }
        let read = tokio::select! {
            r = s.read_response() => r,
            _ = client_gone(c.io, c.pipelined) => return fail(Failure::Downstream),
        };
        if let Err(e) = read {
            return fail(Failure::of(&e));
        }
    }
}

/// Sends the request and reads the first response head.
async fn send_and_read(s: &mut HttpSession, req: RequestHeader) -> pingora_error::Result<()> {
    s.write_request_header(Box::new(req)).await?;
    s.finish_body().await?;
    s.read_response().await?;
    Ok(())
}

/// Extension for pingora's retry decision on a reused connection.
trait RetryReused {
    fn retry_reused(&self) -> bool;
}

impl RetryReused for pingora_error::RetryType {
    fn retry_reused(&self) -> bool {
        match self {
            pingora_error::RetryType::ReusedOnly => true,
            pingora_error::RetryType::Decided(b) => *b,
        }
    }
}

/// The upstream's framing (RFC 9112 section 6.3), from its headers as received.
fn framing_of(resp: &ResponseHeader, head_only: bool) -> Framing {
    let status = resp.status.as_u16();
    if head_only || status == 204 || status == 304 || status < 200 {
        return Framing::None;
    }
    if resp.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Framing::Stream;
    }
    // pingora's client accepted the lengths (identical duplicates and lists included).
    let mut lengths = resp
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| {
            std::str::from_utf8(t.trim_ascii())
                .ok()?
                .parse::<u64>()
                .ok()
        });
    match lengths.next() {
        Some(Some(n)) if lengths.all(|l| l == Some(n)) => Framing::Length(n),
        _ => Framing::Stream,
    }
}

/// Whether a `Transfer-Encoding` value's last coding is chunked.
fn ends_chunked(te: &str) -> bool {
    te.rsplit(',')
        .next()
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// This hop's framing of a relayed answer: the framing headers it carries (the upstream's
/// own, when they suit this hop) and whether the body goes chunked and the connection stays
/// open. pingora's client already dropped a `Content-Length` that came with
/// `Transfer-Encoding`.
struct ClientFraming {
    /// Keep the upstream's `Content-Length` / `Transfer-Encoding` lines as they are.
    keep_length: bool,
    keep_te: bool,
    /// A framing line to write instead.
    line: Option<(&'static str, HeaderValue)>,
    chunked: bool,
    keep_alive: bool,
}

fn frame_for_client(
    resp: &ResponseHeader,
    framing: Framing,
    http10: bool,
    keep_alive: bool,
) -> ClientFraming {
    let status = resp.status.as_u16();
    let te = resp.headers.get(http::header::TRANSFER_ENCODING);
    let mut f = ClientFraming {
        keep_length: true,
        keep_te: true,
        line: None,
        chunked: false,
        keep_alive,
    };
    match framing {
        Framing::None if status == 204 => {
            f.keep_length = false;
            f.keep_te = false;
        }
        // What a HEAD (or 304) answer says about the representation is kept, but HTTP/1.0
        // has no chunks.
        Framing::None => f.keep_te = !http10,
        Framing::Length(n) => {
            let mut lines = resp.headers.get_all(http::header::CONTENT_LENGTH).iter();
            let single = matches!((lines.next(), lines.next()), (Some(v), None) if v.as_bytes() == n.to_string().as_bytes());
            if !single {
                f.keep_length = false;
                f.line = Some(("Content-Length", HeaderValue::from(n)));
            }
        }
        Framing::Stream if http10 => {
            // HTTP/1.0 has no chunks: the close ends the body.
            f.keep_length = false;
            f.keep_te = false;
            f.keep_alive = false;
        }
        Framing::Stream => {
            f.keep_length = false;
            f.chunked = true;
            // pingora's client removes only the chunked coding: others stay on the body, and
            // chunked is this hop's last.
            match te.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()) {
                None => f.line = Some(("Transfer-Encoding", HeaderValue::from_static("chunked"))),
                Some(v) if !ends_chunked(&v) => {
                    f.keep_te = false;
                    f.line = HeaderValue::from_str(&format!("{v}, chunked"))
                        .ok()
                        .map(|v| ("Transfer-Encoding", v));
                }
                Some(_) => {}
            }
        }
    }
    f
}

/// The relayed head into `c.out`: the upstream's lines that cross (`headers::Downstream`, in
/// their order and casing), this hop's framing, `Via`, CORS lines on a route with `cors`, then
/// `Date` when the upstream sent none and `Connection`. Written from pingora's parsed head
/// without copying it.
fn relayed_head(c: &mut Client<'_>, resp: &ResponseHeader, f: &ClientFraming) {
    let rule = headers::Downstream::of(resp);
    let out = &mut *c.out;
    out.clear();
    wire::status_line(out, resp.status.as_u16(), resp.get_reason_phrase());
    let mut dated = false;
    for (name, value) in resp.case_header_iter() {
        let n = name.as_slice();
        let is = |h: &str| n.eq_ignore_ascii_case(h.as_bytes());
        if !rule.keeps(n)
            || (is("content-length") && !f.keep_length)
            || (is("transfer-encoding") && !f.keep_te)
            || (c.cors.is_some()
                && n.len() > 15
                && n[..15].eq_ignore_ascii_case(b"access-control-"))
        {
            continue;
        }
        dated |= is("date");
        wire::header_line(out, n, value.as_bytes());
    }
    if let Some((name, value)) = &f.line {
        wire::header_line(out, name.as_bytes(), value.as_bytes());
    }
    wire::header_line(out, b"Via", headers::via(resp).as_bytes());
    if let Some((rules, check)) = &c.cors {
        for (name, value) in super::cors::lines(rules, check) {
            wire::header_line(out, name.as_bytes(), value.as_bytes());
        }
    }
    wire::end_relayed_head(out, dated, f.keep_alive);
}

/// Relays the final answer: the head with this hop's framing, then the body as it arrives.
async fn relay(
    upstream: &UpstreamClient,
    c: &mut Client<'_>,
    head: &RequestHead<'_>,
    up: &Upstream,
    mut s: HttpSession,
) -> Exchanged {
    let (status, framing, f) = {
        let Some(resp) = s.resp_header() else {
            return Err((Failure::Protocol, None));
        };
        let framing = framing_of(resp, head.is_head());
        let f = frame_for_client(resp, framing, head.http10, c.keep_alive);
        relayed_head(c, resp, &f);
        (resp.status.as_u16(), framing, f)
    };
    let pumped = if framing == Framing::None {
        flush_out(c).await.map_err(|f| (f, true))
    } else {
        pump_body(c, &mut s, f.chunked)
            .await
            .and_then(|sent| match framing {
                Framing::Length(n) if sent != n => Err((Failure::Protocol, true)),
                _ => Ok(()),
            })
    };
    match pumped {
        Ok(()) => {
            finish_upstream(upstream, up, s).await;
            Ok((status, f.keep_alive))
        }
        Err((e, written)) => Err((e, written.then_some(status))),
    }
}

/// Writes what `out` holds.
async fn flush_out(c: &mut Client<'_>) -> Result<(), Failure> {
    if c.io.write_all(c.out).await.is_err() || c.io.flush().await.is_err() {
        return Err(Failure::Downstream);
    }
    Ok(())
}

/// Body bytes gathered behind the head before the first write.
const COALESCE: usize = 64 * 1024;

/// Relays the body, after the head in `c.out`. What already arrived with the head goes out in
/// the same write, so a body found malformed before anything was written is still a clean
/// `502`; the rest is relayed as it arrives. Returns the body bytes relayed. Err: the failure
/// and whether the head went out (then the cut shows: no final chunk, or fewer bytes than
/// announced, then the close).
async fn pump_body(
    c: &mut Client<'_>,
    s: &mut HttpSession,
    chunked: bool,
) -> Result<u64, (Failure, bool)> {
    let mut relayed: u64 = 0;
    // Gather what is already buffered, without waiting.
    while c.out.len() < COALESCE {
        match s.read_body_ref().now_or_never() {
            None => break,
            Some(Err(e)) => return Err((Failure::of(&e), false)),
            Some(Ok(None)) => {
                frame_end(c.out, chunked);
                flush_out(c).await.map_err(|f| (f, true))?;
                return Ok(relayed);
            }
            Some(Ok(Some(data))) => {
                relayed += data.len() as u64;
                frame_data(c.out, data, chunked);
            }
        }
    }
    flush_out(c).await.map_err(|f| (f, true))?;
    loop {
        let chunk = tokio::select! {
            r = s.read_body_ref() => r,
            _ = client_gone(c.io, c.pipelined) => return Err((Failure::Downstream, true)),
        };
        c.out.clear();
        match chunk {
            Err(e) => return Err((Failure::of(&e), true)),
            Ok(Some(data)) => {
                relayed += data.len() as u64;
                frame_data(c.out, data, chunked);
                flush_out(c).await.map_err(|f| (f, true))?;
            }
            Ok(None) => {
                frame_end(c.out, chunked);
                flush_out(c).await.map_err(|f| (f, true))?;
                return Ok(relayed);
            }
        }
    }
}

/// Appends body bytes, as a chunk when `chunked`.
fn frame_data(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if chunked && !data.is_empty() {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Appends the end of a chunked body (no trailers: pingora's client does not keep them).
fn frame_end(out: &mut Vec<u8>, chunked: bool) {
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

/// Pools the upstream connection when pingora's client finds it reusable.
async fn finish_upstream(upstream: &UpstreamClient, up: &Upstream, s: HttpSession) {
    upstream.release(s, up).await;
}
