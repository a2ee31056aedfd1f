//! Forwarding a bodiless request on a proxy route from pollgate's own connection loop: the
//! request bytes from `headers.rs`'s one rule (the bytes pingora's client would write), the
//! answer read by `response.rs`, connections from the shared idle list (`upstream.rs`), and
//! the same error answers as pingora's proxy path (`upstream::Failure`).
//!
//! Why not pingora's HTTP/1 client here: measured side by side (docs/benchmarks.md, scenario
//! 6) its session and header maps cost a third of plain-proxy throughput. Requests with a body
//! still go through pingora's proxy; `tests/differential.rs` and the probe suites hold this path
//! to that one. A WebSocket handshake is forwarded here too (`Client::tunnel`): a `101` ends the
//! exchange and hands the upstream connection to `tunnel.rs`.
//!
//! The client's framing is this hop's to write: a known length stays `Content-Length`,
//! anything else is re-chunked for an HTTP/1.1 client or delimited by the close for an
//! HTTP/1.0 one. A cut upstream body is never made to look complete (no final chunk, or fewer
//! bytes than announced, then the close).

use super::answer::{proxy_error_message, Answer};
use super::headers::{self, MAX_RESPONSE_HEAD};
use super::request::RequestHead;
use super::response::{self, Body, Chunks, Head, Lines, Slots};
use super::router::RouteEntry;
use super::upstream::{Failure, UpstreamClient};
use super::wire;
use crate::config::Upstream;
use bytes::BytesMut;
use pingora_core::protocols::Stream;
use pingora_timeout::fast_timeout::fast_timeout;
use std::io::Write as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Client bytes (a pipelined request) kept while a forward is under way; past this the client
/// is no longer watched until the answer is relayed.
const MAX_PIPELINED: usize = 64 * 1024;
/// Upstream bytes asked for per read.
const READ_CHUNK: usize = 16 * 1024;

/// How a forward ended, for the log line and the connection.
pub struct Forwarded {
    /// The status the client got (0: none).
    pub status: u16,
    pub error: Option<Failure>,
    /// The client connection may carry another request.
    pub keep_alive: bool,
    /// A WebSocket handshake the upstream accepted: its `101` (and whatever the upstream sent
    /// after it) went to the client, and this upstream connection is the tunnel's other end.
    pub switched: Option<Stream>,
}

/// Everything a forward needs from the connection.
pub struct Client<'a> {
    pub io: &'a mut Stream,
    pub out: &'a mut Vec<u8>,
    /// Bytes the client sends meanwhile (a pipelined request), kept for the connection loop.
    pub pipelined: &'a mut BytesMut,
    /// The client's address as text (`X-Forwarded-For`).
    pub ip: Option<&'a str>,
    /// The client came over TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// The client may keep the connection (it asked to, and the server is not draining).
    pub keep_alive: bool,
    /// A route with `cors`: its rules and the request's origin (the backend's CORS headers are
    /// replaced).
    pub cors: Option<(&'a crate::config::Cors, super::cors::OriginCheck)>,
    /// A WebSocket handshake (`tunnel.rs`): sent with its `Upgrade`, and a `101` answer ends
    /// the exchange with the upstream connection handed back.
    pub tunnel: bool,
}

/// Forwards `head` to `entry`'s upstream and relays the answer to the client.
pub async fn forward(
    upstream: &UpstreamClient,
    c: &mut Client<'_>,
    head: &RequestHead<'_>,
    entry: &RouteEntry,
) -> Forwarded {
    let up = &entry.route.upstream;
    match exchange(upstream, c, head, up).await {
        Ok(Relayed::Answer(status, keep_alive)) => Forwarded {
            status,
            error: None,
            keep_alive,
            switched: None,
        },
        Ok(Relayed::Switched(io)) => Forwarded {
            status: 101,
            error: None,
            keep_alive: false,
            switched: Some(io),
        },
        Err((f, sent)) => {
            f.count(&up.name);
            // Once a head has gone out, the status is that head's; the connection just closes.
            let status = match (sent, f.status()) {
                (Some(s), _) => s,
                (None, 0) => 499,
                (None, s) => {
                    let a = Answer::error(s, proxy_error_message(s));
                    let _ = wire::send_answer(c.io, c.out, &a, head.is_head(), false).await;
                    s
                }
            };
            Forwarded {
                status,
                error: Some(f),
                keep_alive: false,
                switched: None,
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
        // Read into the stack first: most forwards see no client byte, and allocate none.
        let mut chunk = [0u8; 1024];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pipelined.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What the client got: an answer (its status, and whether the client connection stays open),
/// or a `101` and the upstream connection behind it.
enum Relayed {
    Answer(u16, bool),
    Switched(Stream),
}

type Exchanged = Result<Relayed, (Failure, Option<u16>)>;

/// An upstream connection and what was read from it but not yet used.
struct Upstream_ {
    io: Stream,
    buf: BytesMut,
    read_timeout: Duration,
}

/// What a read from the upstream found.
enum Read {
    Data,
    Closed,
}

impl Upstream_ {
    /// Reads more, within the upstream's `read_timeout`, while watching the client.
    async fn read(&mut self, c: &mut Client<'_>) -> Result<Read, Failure> {
        self.buf.reserve(READ_CHUNK);
        let read = tokio::select! {
            r = fast_timeout(self.read_timeout, self.io.read_buf(&mut self.buf)) => r,
            _ = client_gone(c.io, c.pipelined) => return Err(Failure::Downstream),
        };
        match read {
            Err(_) => Err(Failure::ReadTimeout),
            Ok(Err(_)) => Err(Failure::Protocol),
            Ok(Ok(0)) => Ok(Read::Closed),
            Ok(Ok(_)) => Ok(Read::Data),
        }
    }
}

/// Whether a request may go again on a fresh connection when a reused one failed before any
/// answer byte (the upstream closed it while it was idle).
fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Sends the request and relays the answer. Ok: the status sent and whether the client
/// connection stays open. Err: the failure, and the status already sent if a head went out.
async fn exchange(
    upstream: &UpstreamClient,
    c: &mut Client<'_>,
    head: &RequestHead<'_>,
    up: &Upstream,
) -> Exchanged {
    let fail = |f: Failure| Err((f, None));
    let mut retried = false;
    let (mut u, mut answer) = loop {
        let (io, reused) = match upstream.stream(up).await {
            Ok(s) => s,
            Err(f) => return fail(f),
        };
        let mut u = Upstream_ {
            io,
            buf: BytesMut::new(),
            // A handshake's answer waits as long as pingora's proxy lets it (its peer for a
            // tunnel reads with the tunnel's idle timeout).
            read_timeout: if c.tunnel {
                up.websocket_idle_timeout
            } else {
                up.read_timeout
            },
        };
        // Built again for a retry, rather than kept for one that rarely comes.
        headers::write_upstream_request(
            c.out,
            head.method,
            head.target.as_bytes(),
            head.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
            head.values("connection"),
            c.ip,
            c.https,
            c.tunnel,
            up,
        );
        // pingora's stream may buffer writes: the flush sends them.
        let write = async {
            u.io.write_all(c.out).await?;
            u.io.flush().await
        };
        let sent = match fast_timeout(up.write_timeout, write).await {
            Err(_) => Err(Failure::WriteTimeout),
            Ok(Err(_)) => Err(Failure::Protocol),
            Ok(Ok(())) => Ok(()),
        };
        let first = match sent {
            Ok(()) => next_head(&mut u, c, head).await,
            Err(f) => Err(f),
        };
        let retriable = reused && !retried && idempotent(head.method) && u.buf.is_empty();
        match first {
            Ok(a) => break (u, a),
            Err(Failure::Protocol) if retriable => retried = true,
            Err(f) => return fail(f),
        }
    };
    // Interim answers (103 Early Hints) reach HTTP/1.1 clients only: HTTP/1.0 has none.
    while answer.0.status < 200 {
        if answer.0.status == 101 {
            // Only a handshake gets this far with a 101 (`client_head`). The head, and what
            // the upstream sent right behind it (a backend that speaks first), go out together.
            let _ = u.buf.split_to(answer.0.len);
            c.out.extend_from_slice(&u.buf);
            flush_out(c).await.map_err(|f| (f, Some(101)))?;
            return Ok(Relayed::Switched(u.io));
        }
        if !head.http10 && c.io.write_all(c.out).await.is_err() {
            return fail(Failure::Downstream);
        }
        let _ = u.buf.split_to(answer.0.len);
        answer = match next_head(&mut u, c, head).await {
            Ok(a) => a,
            Err(f) => return fail(f),
        };
    }
    let (h, f) = answer;
    let _ = u.buf.split_to(h.len);
    match pump_body(c, &mut u, h.body, f.chunked).await {
        Ok(clean) => {
            // Reused only when the answer ended where its framing said and nothing followed.
            if clean && h.reusable && up.keepalive && u.buf.is_empty() {
                upstream.put_back(up, u.io);
            }
            Ok(Relayed::Answer(h.status, f.keep_alive))
        }
        Err((e, written)) => Err((e, written.then_some(h.status))),
    }
}

/// Reads until an answer head is complete at the start of `u.buf`, and writes the client's
/// head for it into `c.out` (an interim one as it is, a final one with this hop's framing).
/// Each head is parsed once when complete.
async fn next_head(
    u: &mut Upstream_,
    c: &mut Client<'_>,
    req: &RequestHead<'_>,
) -> Result<(Head, Framing), Failure> {
    loop {
        if !u.buf.is_empty() {
            if let Some(a) = client_head(&u.buf, c, req)? {
                return Ok(a);
            }
            if u.buf.len() > MAX_RESPONSE_HEAD {
                return Err(Failure::Protocol);
            }
        }
        if let Read::Closed = u.read(c).await? {
            return Err(Failure::Protocol);
        }
    }
}

/// Parses the answer head at the start of `buf` and, once complete, writes the client's head
/// for it into `c.out`.
fn client_head(
    buf: &[u8],
    c: &mut Client<'_>,
    req: &RequestHead<'_>,
) -> Result<Option<(Head, Framing)>, Failure> {
    let mut slots = Slots::new();
    let Some((h, lines)) = response::head(buf, &mut slots, req.is_head())? else {
        return Ok(None);
    };
    // Only a handshake asked for an upgrade.
    if h.len > MAX_RESPONSE_HEAD || (h.status == 101 && !c.tunnel) {
        return Err(Failure::Protocol);
    }
    c.out.clear();
    let f = frame_for_client(lines.headers, &h, req.http10, c.keep_alive);
    if h.status < 200 {
        relayed_lines(c.out, h.status, &lines, None, false);
        c.out.extend_from_slice(b"\r\n");
        return Ok(Some((h, f)));
    }
    let dated = relayed_lines(c.out, h.status, &lines, Some(&f), c.cors.is_some());
    if let Some((rules, check)) = &c.cors {
        for (name, value) in super::cors::lines(rules, check) {
            wire::header_line(c.out, name.as_bytes(), value.as_bytes());
        }
    }
    wire::end_relayed_head(c.out, dated, f.keep_alive);
    Ok(Some((h, f)))
}

/// This hop's framing of a relayed answer.
struct Framing {
    /// Keep the upstream's `Content-Length` / `Transfer-Encoding` lines as they are.
    keep_length: bool,
    keep_te: bool,
    /// A framing line to write instead: `Content-Length`'s value, or `Transfer-Encoding`'s.
    length: Option<u64>,
    te: Option<Vec<u8>>,
    chunked: bool,
    keep_alive: bool,
}

fn frame_for_client(
    lines: &[httparse::Header<'_>],
    h: &Head,
    http10: bool,
    keep_alive: bool,
) -> Framing {
    let mut f = Framing {
        keep_length: true,
        keep_te: true,
        length: None,
        te: None,
        chunked: false,
        keep_alive,
    };
    let te = lines
        .iter()
        .filter(|l| l.name.eq_ignore_ascii_case("transfer-encoding"))
        .fold(None::<Vec<u8>>, |acc, l| {
            Some(match acc {
                None => l.value.to_vec(),
                Some(mut v) => {
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(l.value);
                    v
                }
            })
        });
    match h.body {
        Body::None if h.status == 204 => {
            f.keep_length = false;
            f.keep_te = false;
        }
        // What a HEAD (or 304) answer says about the representation is kept, but HTTP/1.0
        // has no chunks, and a length beside a transfer coding means nothing (RFC 9112
        // section 6.3; pingora's client drops it too).
        Body::None => {
            f.keep_te = !http10;
            f.keep_length = !h.transfer_encoding;
        }
        Body::Length(n) => {
            let mut cl = lines
                .iter()
                .filter(|l| l.name.eq_ignore_ascii_case("content-length"));
            let single =
                matches!((cl.next(), cl.next()), (Some(v), None) if is_decimal_of(v.value, n));
            if !single {
                f.keep_length = false;
                f.length = Some(n);
            }
        }
        Body::Chunked | Body::Close if http10 => {
            // HTTP/1.0 has no chunks: the close ends the body.
            f.keep_length = false;
            f.keep_te = false;
            f.keep_alive = false;
        }
        Body::Chunked | Body::Close => {
            f.keep_length = false;
            f.chunked = true;
            f.keep_te = false;
            // Codings other than a final chunked stay on the body, and chunked is this hop's
            // last.
            f.te = Some(match te {
                None => b"chunked".to_vec(),
                Some(v) if h.body == Body::Chunked => v,
                Some(mut v) => {
                    v.extend_from_slice(b", chunked");
                    v
                }
            });
        }
    }
    f
}

/// Whether `value` is exactly `n` in decimal (no sign, spaces or leading zeros): a
/// `Content-Length` line that can be relayed as it is.
fn is_decimal_of(value: &[u8], n: u64) -> bool {
    let canonical = value == b"0" || value.first().is_some_and(|d| (b'1'..=b'9').contains(d));
    canonical
        && value.len() <= 20
        && value.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) == Some(n)
}

/// The status line and the header lines of an upstream head that cross to the client
/// (`headers::Downstream`, in their order and casing, framing lines as `f` says), then `Via`.
/// `cors`: a route's CORS rules replace the upstream's `Access-Control-*` lines. Returns
/// whether a `Date` line went out.
fn relayed_lines(
    out: &mut Vec<u8>,
    status: u16,
    resp: &Lines<'_>,
    f: Option<&Framing>,
    cors: bool,
) -> bool {
    // The upstream's own reason phrase, unless it is the usual one (the fast status line).
    let canonical = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    let reason = resp
        .reason
        .filter(|r| !r.is_empty() && Some(*r) != canonical);
    wire::status_line(out, status, reason);
    let connection = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value);
    let rule = headers::Downstream::new(connection, status == 101);
    let mut dated = false;
    for l in resp.headers.iter() {
        let n = l.name.as_bytes();
        let is = |h: &str| n.eq_ignore_ascii_case(h.as_bytes());
        let framing_dropped = match f {
            Some(f) => {
                (is("content-length") && !f.keep_length) || (is("transfer-encoding") && !f.keep_te)
            }
            None => false,
        };
        if !rule.keeps(n)
            || framing_dropped
            || (cors && n.len() > 15 && n[..15].eq_ignore_ascii_case(b"access-control-"))
        {
            continue;
        }
        dated |= is("date");
        wire::header_line(out, n, l.value);
    }
    if let Some(f) = f {
        if let Some(n) = f.length {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        if let Some(te) = &f.te {
            wire::header_line(out, b"Transfer-Encoding", te);
        }
    }
    let via = headers::via_after(
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("via"))
            .map(|h| h.value),
    );
    wire::header_line(out, b"Via", via.as_bytes());
    dated
}

/// Writes what `out` holds.
async fn flush_out(c: &mut Client<'_>) -> Result<(), Failure> {
    if c.io.write_all(c.out).await.is_err() || c.io.flush().await.is_err() {
        return Err(Failure::Downstream);
    }
    Ok(())
}

/// Where the relay of a body stands.
struct Pump {
    body: Body,
    chunks: Chunks,
    /// Bytes still due (`Body::Length`).
    left: u64,
}

impl Pump {
    /// Moves what `buf` holds of the body into `out` (as chunks when `chunked`). Returns
    /// whether the body is complete; what follows it stays in `buf`.
    fn take(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Vec<u8>,
        chunked: bool,
    ) -> Result<bool, Failure> {
        match self.body {
            Body::None => Ok(true),
            Body::Length(_) => {
                let n = (buf.len() as u64).min(self.left) as usize;
                frame_data(out, &buf[..n], chunked);
                let _ = buf.split_to(n);
                self.left -= n as u64;
                Ok(self.left == 0)
            }
            Body::Close => {
                frame_data(out, buf, chunked);
                buf.clear();
                Ok(false)
            }
            Body::Chunked => {
                let fed = self.chunks.feed(buf)?;
                if chunked {
                    let size: usize = fed.data.iter().map(|(a, b)| b - a).sum();
                    if size > 0 {
                        let _ = write!(out, "{size:x}\r\n");
                        for (a, b) in &fed.data {
                            out.extend_from_slice(&buf[*a..*b]);
                        }
                        out.extend_from_slice(b"\r\n");
                    }
                } else {
                    for (a, b) in &fed.data {
                        out.extend_from_slice(&buf[*a..*b]);
                    }
                }
                let _ = buf.split_to(fed.used);
                Ok(fed.done)
            }
        }
    }
}

/// Relays the body after the head in `c.out`. What arrived with the head goes out in the same
/// write, so a body found malformed before anything was written is still a clean `502`; the
/// rest is relayed as it arrives. Ok: whether the body ended by its framing (an answer
/// delimited by the close did not). Err: the failure and whether the head went out (then the
/// cut shows: no final chunk, or fewer bytes than announced, then the close).
async fn pump_body(
    c: &mut Client<'_>,
    u: &mut Upstream_,
    body: Body,
    chunked: bool,
) -> Result<bool, (Failure, bool)> {
    let mut p = Pump {
        body,
        chunks: Chunks::default(),
        left: match body {
            Body::Length(n) => n,
            _ => 0,
        },
    };
    let mut written = false;
    loop {
        // Before the first write, a malformed body is still a clean `502`.
        let done = p
            .take(&mut u.buf, c.out, chunked)
            .map_err(|f| (f, written))?;
        if done {
            frame_end(c.out, chunked);
            flush_out(c).await.map_err(|f| (f, true))?;
            return Ok(true);
        }
        // Nothing is held back while waiting for the upstream.
        flush_out(c).await.map_err(|f| (f, true))?;
        c.out.clear();
        written = true;
        match u.read(c).await.map_err(|f| (f, true))? {
            Read::Data => {}
            Read::Closed if body == Body::Close => {
                frame_end(c.out, chunked);
                flush_out(c).await.map_err(|f| (f, true))?;
                return Ok(false);
            }
            // Closed early: the cut shows.
            Read::Closed => return Err((Failure::Protocol, true)),
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
