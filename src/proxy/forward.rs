//! The plain-proxy fast path: bodiless GET and HEAD requests on proxy routes, forwarded over a
//! pool of upstream keep-alive connections without pingora's per-request proxy machinery.
//!
//! Profiles of pingora's proxy path showed about half of its CPU per request in user space
//! (session and header-map building, boxed phase futures, ~25 allocations); this path writes
//! the upstream request straight from the parsed head, parses the response head in place, and
//! relays the body by its framing (`Content-Length`, chunked passed through as is, or until
//! the upstream closes). It applies the same header rules as `headers.rs` (hop-by-hop removed
//! both ways, `X-Forwarded-*`, `Via`, the upstream's `host`) and the same error answers as
//! `Gateway::fail_to_proxy` (JSON 502/504, `pollgate_upstream_errors_total`).
//!
//! Requests with a body, upgrades and anything unusual never get here (see `fast::parse`);
//! pingora proxies those.

use super::fast::{Request, Served};
use super::header_deadline::HeaderDeadline;
use super::headers::{HOP_BY_HOP, VIA};
use super::respond::{proxy_error_message, raw_json_error};
use super::router::RouteEntry;
use super::{access_log, count_request, AccessLine, GatewayState, Kind};
use crate::config::Upstream;
use crate::metrics::METRICS;
use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use pingora_core::protocols::http::date::get_cached_date;
use pingora_core::protocols::GetSocketDigest;
use pingora_timeout::fast_timeout::fast_timeout;
use std::io::{self, Write as _};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle upstream connections kept per route.
const MAX_IDLE: usize = 256;
/// Longest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Response header lines accepted.
const MAX_RESPONSE_HEADERS: usize = 128;
const READ_CHUNK: usize = 16 * 1024;

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded in either direction: the list
/// the pingora path strips, plus the ones it handles apart (no upgrades come this way, and the
/// framing is this hop's own).
fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .chain(&["connection", "upgrade", "transfer-encoding"])
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Idle keep-alive connections to one route's upstream.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(TcpStream, Instant)>>,
}

impl Pool {
    /// An idle connection younger than `max_idle` that the upstream has neither closed nor
    /// written to since: a stray `408` read as this request's answer would be a wrong answer.
    /// One non-blocking `MSG_PEEK` asks the kernel; tokio's readiness may not have seen bytes
    /// that arrived while this thread was busy.
    fn take(&self, max_idle: Duration) -> Option<TcpStream> {
        loop {
            let (s, since) = self.idle.lock().pop()?;
            if since.elapsed() >= max_idle {
                continue;
            }
            let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            match socket2::SockRef::from(&s).peek(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(s),
                _ => continue,
            }
        }
    }

    fn put(&self, s: TcpStream) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push((s, Instant::now()));
        }
    }
}

/// Why a forward failed, as `fail_to_proxy` classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    ConnectRefused,
    ConnectTimeout,
    ConnectError,
    ReadTimeout,
    WriteTimeout,
    /// The upstream closed or answered something unreadable.
    Protocol,
    /// The client went away: nothing to answer.
    Downstream,
}

impl Failure {
    fn status(self) -> u16 {
        match self {
            Failure::ConnectTimeout | Failure::ReadTimeout | Failure::WriteTimeout => 504,
            Failure::Downstream => 0,
            _ => 502,
        }
    }

    fn kind(self) -> Option<&'static str> {
        Some(match self {
            Failure::ConnectRefused => "connect_refused",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::ConnectError => "connect_error",
            Failure::ReadTimeout => "read_timeout",
            Failure::WriteTimeout => "write_timeout",
            Failure::Protocol => "protocol",
            Failure::Downstream => return None,
        })
    }
}

/// How the upstream response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Forwards a bodiless GET or HEAD on a plain proxy route.
pub async fn serve(
    state: &GatewayState,
    io: &mut HeaderDeadline,
    out: &mut Vec<u8>,
    req: &Request<'_>,
    entry: &RouteEntry,
    draining: bool,
) -> Served {
    let start = Instant::now();
    let up = &entry.route.upstream;
    let client_ip = io
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
    let request = upstream_request(req, client_ip, up);
    let mut close = req.close || draining;
    let result = exchange(io, out, &request, req, entry, &mut close).await;
    let (status, error) = match result {
        Ok(status) => (status, None),
        Err((f, sent)) => {
            if let Some(kind) = f.kind() {
                METRICS
                    .upstream_errors
                    .with_label_values(&[&up.name, kind])
                    .inc();
            }
            // Once a head has gone out, the status is that head's; the connection just closes.
            let status = sent.unwrap_or_else(|| f.status());
            if sent.is_none() && status > 0 {
                let message = proxy_error_message(status);
                raw_json_error(io, status, message, &[], req.method == "HEAD").await;
            }
            (status, Some(f))
        }
    };
    let route = entry.route.name.as_ref();
    count_request(route, None, Kind::Proxy, status, start.elapsed());
    if state.access_log.load(Ordering::Relaxed) {
        access_log(&AccessLine {
            client: io
                .get_socket_digest()
                .and_then(|d| d.peer_addr().map(|a| a.to_string())),
            method: req.method,
            path: req.path,
            route,
            kind: Kind::Proxy,
            status,
            elapsed: start.elapsed(),
            upstream: &up.name,
            error: error.and_then(Failure::kind).unwrap_or(""),
        });
    }
    if error.is_some() || close {
        Served::Close
    } else {
        Served::KeepAlive
    }
}

/// The request head for the upstream.
fn upstream_request(
    req: &Request<'_>,
    client_ip: Option<std::net::IpAddr>,
    up: &Upstream,
) -> Vec<u8> {
    let mut w = Vec::with_capacity(256 + req.len);
    let _ = write!(w, "{} {} HTTP/1.1\r\n", req.method, req.target);
    let mut forwarded_for = None;
    let mut via = None;
    let mut host = None;
    for h in req.headers {
        let name = h.name;
        if hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for.get_or_insert(h.value);
            continue;
        }
        if name.eq_ignore_ascii_case("via") {
            via.get_or_insert(h.value);
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-host")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
        {
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            host = Some(h.value);
            if up.host.is_some() {
                continue;
            }
        }
        push_header(&mut w, name.as_bytes(), h.value);
    }
    if let Some(ip) = client_ip {
        w.extend_from_slice(b"X-Forwarded-For: ");
        if let Some(prev) = forwarded_for.filter(|p| !p.trim_ascii().is_empty()) {
            w.extend_from_slice(prev);
            w.extend_from_slice(b", ");
        }
        let _ = write!(w, "{ip}\r\n");
    } else if let Some(prev) = forwarded_for {
        push_header(&mut w, b"X-Forwarded-For", prev);
    }
    if let Some(h) = host {
        push_header(&mut w, b"X-Forwarded-Host", h);
    }
    push_header(&mut w, b"X-Forwarded-Proto", b"http");
    push_via(&mut w, via);
    if let Some(h) = &up.host {
        let _ = write!(w, "Host: {h}\r\n");
    }
    w.extend_from_slice(b"\r\n");
    w
}

/// One `Name: value` header line.
fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `Via` with this hop appended to what the message already carried (both directions).
fn push_via(out: &mut Vec<u8>, prev: Option<&[u8]>) {
    out.extend_from_slice(b"Via: ");
    if let Some(prev) = prev {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(VIA.as_bytes());
    out.extend_from_slice(b"\r\n");
}

async fn connect(up: &Upstream) -> Result<TcpStream, Failure> {
    match fast_timeout(up.connect_timeout, TcpStream::connect(up.socket_addr)).await {
        Err(_) => Err(Failure::ConnectTimeout),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(Failure::ConnectRefused),
        Ok(Err(_)) => Err(Failure::ConnectError),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

async fn read_some(s: &mut TcpStream, buf: &mut BytesMut, up: &Upstream) -> Result<usize, Failure> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    match fast_timeout(up.read_timeout, s.read_buf(buf)).await {
        Err(_) => Err(Failure::ReadTimeout),
        Ok(Err(_)) => Err(Failure::Protocol),
        Ok(Ok(n)) => Ok(n),
    }
}

async fn write_downstream(io: &mut HeaderDeadline, bytes: &[u8]) -> Result<(), Failure> {
    io.write_all(bytes).await.map_err(|_| Failure::Downstream)
}

/// Sends the request and relays the answer. Ok: the status sent downstream. Err: the failure,
/// and the status of the response head already sent to the client, if one was.
async fn exchange(
    io: &mut HeaderDeadline,
    out: &mut Vec<u8>,
    request: &[u8],
    req: &Request<'_>,
    entry: &RouteEntry,
    close: &mut bool,
) -> Result<u16, (Failure, Option<u16>)> {
    let up = &entry.route.upstream;
    let mut buf = BytesMut::with_capacity(READ_CHUNK / 4);
    // A pooled connection the upstream closed while it was idle fails before any answer byte:
    // then retry on a fresh one (GET and HEAD are idempotent). A slow upstream is not retried.
    let mut pooled = entry.pool.take(up.idle_timeout);
    let mut upstream = loop {
        let reused = pooled.is_some();
        let mut s = match pooled.take() {
            Some(s) => s,
            None => connect(up).await.map_err(|f| (f, None))?,
        };
        let first = match fast_timeout(up.write_timeout, s.write_all(request)).await {
            Err(_) => Err(Failure::WriteTimeout),
            Ok(Err(_)) => Err(Failure::Protocol),
            Ok(Ok(())) => read_some(&mut s, &mut buf, up).await,
        };
        match first {
            Ok(n) if n > 0 => break s,
            Ok(_) | Err(Failure::Protocol) if reused => continue,
            Ok(_) => return Err((Failure::Protocol, None)),
            Err(f) => return Err((f, None)),
        }
    };
    let head_only = req.method == "HEAD";
    loop {
        // Parse the response head, reading more as needed.
        let (head_len, status, framing, upstream_close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    let (framing, upstream_close) =
                        framing_of(status, head_only, resp.version, resp.headers)
                            .ok_or((Failure::Protocol, None))?;
                    out.clear();
                    downstream_head(out, status, resp.reason, resp.headers, framing, *close);
                    break (n, status, framing, upstream_close);
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {}
                _ => return Err((Failure::Protocol, None)),
            }
            if read_some(&mut upstream, &mut buf, up)
                .await
                .map_err(|f| (f, None))?
                == 0
            {
                return Err((Failure::Protocol, None));
            }
        };
        if status == 101 || !(100..=999).contains(&status) {
            return Err((Failure::Protocol, None));
        }
        // Delimited by the upstream's close: so is our answer (`downstream_head` said so).
        *close |= framing == Framing::Close;
        buf.advance(head_len);
        if status < 200 {
            // An interim answer (103 Early Hints, ...): relayed, the final one follows.
            write_downstream(io, out).await.map_err(|f| (f, None))?;
            continue;
        }
        let reusable = relay_body(io, out, &mut upstream, &mut buf, framing, up)
            .await
            .map_err(|(f, written)| (f, written.then_some(status)))?;
        if reusable && !upstream_close && buf.is_empty() {
            entry.pool.put(upstream);
        }
        return Ok(status);
    }
}

/// Sends the head in `out` with the body bytes already read, then relays the rest of the body
/// as it arrives (flushed at once, so a stream of events is not held back). `Ok(true)` when the
/// upstream connection can be reused.
async fn relay_body(
    io: &mut HeaderDeadline,
    out: &mut Vec<u8>,
    upstream: &mut TcpStream,
    buf: &mut BytesMut,
    framing: Framing,
    up: &Upstream,
) -> Result<bool, (Failure, bool)> {
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunks = ChunkScan::default();
    let mut first = true;
    loop {
        // How much of `buf` belongs to this body, and whether the body ends there.
        let (take, done) = match framing {
            Framing::None => (0, true),
            Framing::Length(_) => {
                let n = (buf.len() as u64).min(left);
                left -= n;
                (n as usize, left == 0)
            }
            Framing::Chunked => match chunks.feed(buf) {
                Ok(Some(end)) => (end, true),
                Ok(None) => (buf.len(), false),
                Err(()) => return Err((Failure::Protocol, !first)),
            },
            Framing::Close => (buf.len(), false),
        };
        if first {
            out.extend_from_slice(&buf[..take]);
            write_downstream(io, out).await.map_err(|f| (f, false))?;
            first = false;
        } else if take > 0 {
            write_downstream(io, &buf[..take])
                .await
                .map_err(|f| (f, true))?;
        }
        buf.advance(take);
        io.flush().await.map_err(|_| (Failure::Downstream, true))?;
        if done {
            return Ok(true);
        }
        if read_some(upstream, buf, up).await.map_err(|f| (f, true))? == 0 {
            return match framing {
                Framing::Close => Ok(false),
                _ => Err((Failure::Protocol, true)),
            };
        }
    }
}

/// The body framing of a response (RFC 9112 section 6.3), and whether the upstream will close
/// the connection after it. `None`: framing a proxy must not guess at.
fn framing_of(
    status: u16,
    head_only: bool,
    version: Option<u8>,
    headers: &[httparse::Header<'_>],
) -> Option<(Framing, bool)> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = version == Some(0);
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).ok()?.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = v.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te {
                return None;
            }
            te = true;
            chunked = std::str::from_utf8(h.value)
                .ok()?
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = std::str::from_utf8(h.value).ok()?;
            if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                close = true;
            } else if version == Some(0)
                && v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
            {
                close = false;
            }
        }
    }
    let framing = if head_only || status < 200 || status == 204 || status == 304 {
        Framing::None
    } else if te {
        // A coding other than chunked last would have to be relayed close-delimited with its
        // header; refuse it rather than guess.
        if !chunked {
            return None;
        }
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    Some((framing, close || framing == Framing::Close))
}

/// The response head for the client: the upstream's status and headers minus hop-by-hop ones,
/// with `Via`, `Date` when missing, and the framing this hop uses.
fn downstream_head(
    out: &mut Vec<u8>,
    status: u16,
    reason: Option<&str>,
    headers: &[httparse::Header<'_>],
    framing: Framing,
    close: bool,
) {
    let reason = reason
        .filter(|r| !r.is_empty())
        .or_else(|| http::StatusCode::from_u16(status).ok()?.canonical_reason())
        .unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    let mut listed = Vec::new();
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
    {
        if let Ok(v) = std::str::from_utf8(h.value) {
            listed.extend(v.split(',').map(str::trim).filter(|t| !t.is_empty()));
        }
    }
    let mut via = None;
    let mut date = false;
    for h in headers {
        let name = h.name;
        // The framing headers stay as the upstream sent them, except a Content-Length that a
        // chunked Transfer-Encoding overrides.
        let te = name.eq_ignore_ascii_case("transfer-encoding");
        if !te && (hop_by_hop(name) || listed.iter().any(|l| l.eq_ignore_ascii_case(name))) {
            continue;
        }
        if framing == Framing::Chunked && name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if name.eq_ignore_ascii_case("via") {
            via.get_or_insert(h.value);
            continue;
        }
        date |= name.eq_ignore_ascii_case("date");
        push_header(out, name.as_bytes(), h.value);
    }
    push_via(out, via);
    if !date {
        push_header(out, b"Date", get_cached_date().as_bytes());
    }
    if close || framing == Framing::Close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Finds the end of a chunked body (RFC 9112 section 7.1) in bytes fed to it in order.
#[derive(Debug, Default)]
struct ChunkScan {
    state: ChunkState,
    /// Bytes of the current size or trailer line seen (bounded).
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line; the value so far.
    #[default]
    Size,
    SizeValue(u64),
    /// After `;` extensions up to the line end.
    Ext(u64),
    /// Chunk data left to skip.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// In a trailer line (or the final empty line); `true` when the line has content.
    Trailer(bool),
}

impl ChunkScan {
    /// Scans `buf` (new bytes only, from where the last call stopped): the offset just past the
    /// body's end when it ends within `buf`.
    fn feed(&mut self, buf: &[u8]) -> Result<Option<usize>, ()> {
        const MAX_LINE: usize = 4096;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                ChunkState::Data(left) => {
                    let skip = (buf.len() - i).min(left as usize);
                    i += skip;
                    let left = left - skip as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    continue;
                }
                ChunkState::DataEnd => match b {
                    b'\r' => {}
                    b'\n' => {
                        self.state = ChunkState::Size;
                        self.line = 0;
                    }
                    _ => return Err(()),
                },
                ChunkState::Size | ChunkState::SizeValue(_) => {
                    let v = match self.state {
                        ChunkState::SizeValue(v) => Some(v),
                        _ => None,
                    };
                    match (b, v) {
                        (b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F', _) => {
                            let d = (b as char).to_digit(16).ok_or(())? as u64;
                            let v = v.unwrap_or(0).checked_mul(16).ok_or(())? + d;
                            self.state = ChunkState::SizeValue(v);
                        }
                        (b';' | b' ' | b'\t', Some(v)) => self.state = ChunkState::Ext(v),
                        (b'\r', Some(_)) => {}
                        (b'\n', Some(v)) => self.end_size_line(v),
                        _ => return Err(()),
                    }
                }
                ChunkState::Ext(v) => {
                    if b == b'\n' {
                        self.end_size_line(v);
                    }
                }
                ChunkState::Trailer(content) => match b {
                    b'\n' if !content => return Ok(Some(i + 1)),
                    b'\n' => {
                        self.state = ChunkState::Trailer(false);
                        self.line = 0;
                    }
                    b'\r' => {}
                    _ => self.state = ChunkState::Trailer(true),
                },
            }
            self.line += 1;
            if self.line > MAX_LINE {
                return Err(());
            }
            i += 1;
        }
        Ok(None)
    }

    fn end_size_line(&mut self, size: u64) {
        self.line = 0;
        self.state = if size == 0 {
            ChunkState::Trailer(false)
        } else {
            ChunkState::Data(size)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(parts: &[&[u8]]) -> Option<usize> {
        let mut s = ChunkScan::default();
        let mut offset = 0;
        for p in parts {
            if let Some(e) = s.feed(p).expect("valid") {
                return Some(offset + e);
            }
            offset += p.len();
        }
        None
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let body = b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\nNEXT";
        assert_eq!(end_of(&[body]), Some(body.len() - 4));
        // Split at every byte boundary.
        for cut in 1..body.len() - 4 {
            assert_eq!(
                end_of(&[&body[..cut], &body[cut..]]),
                Some(body.len() - 4),
                "cut {cut}"
            );
        }
        let trailers = b"1\r\na\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(end_of(&[trailers]), Some(trailers.len()));
        assert_eq!(end_of(&[b"5\r\nhel"]), None);
        assert!(ChunkScan::default().feed(b"zz\r\n").is_err());
        assert!(ChunkScan::default().feed(b"3\r\nabcX").is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = |n: &'static str, v: &'static [u8]| httparse::Header { name: n, value: v };
        assert_eq!(
            framing_of(200, false, Some(1), &[h("Content-Length", b"5")]),
            Some((Framing::Length(5), false))
        );
        assert_eq!(
            framing_of(200, true, Some(1), &[h("Content-Length", b"5")]),
            Some((Framing::None, false))
        );
        assert_eq!(
            framing_of(
                200,
                false,
                Some(1),
                &[h("Transfer-Encoding", b"gzip, chunked")]
            ),
            Some((Framing::Chunked, false))
        );
        assert_eq!(
            framing_of(200, false, Some(1), &[h("Transfer-Encoding", b"gzip")]),
            None
        );
        assert_eq!(
            framing_of(200, false, Some(1), &[]),
            Some((Framing::Close, true))
        );
        assert_eq!(
            framing_of(304, false, Some(1), &[h("Connection", b"close")]),
            Some((Framing::None, true))
        );
        assert_eq!(
            framing_of(
                200,
                false,
                Some(1),
                &[h("Content-Length", b"1"), h("Content-Length", b"2")]
            ),
            None
        );
        assert_eq!(
            framing_of(200, false, Some(1), &[h("Content-Length", b"-1")]),
            None
        );
    }

    #[test]
    fn response_heads_drop_hop_by_hop_and_add_via() {
        let h = |n: &'static str, v: &'static [u8]| httparse::Header { name: n, value: v };
        let mut out = Vec::new();
        downstream_head(
            &mut out,
            200,
            Some("OK"),
            &[
                h("Connection", b"keep-alive, X-Secret"),
                h("X-Secret", b"1"),
                h("Keep-Alive", b"timeout=5"),
                h("Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
                h("Content-Length", b"2"),
            ],
            Framing::Length(2),
            false,
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: 2\r\n\
             Via: 1.1 pollgate\r\n\r\n"
        );
    }
}
