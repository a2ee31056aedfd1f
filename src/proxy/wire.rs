//! The writer of pollgate's own HTTP/1 connections: an [`Answer`] or a relayed response head
//! as bytes. It adds only what the connection decides (`Date`, `Connection`, the body's
//! framing); everything else was decided before it was called.

use super::answer::Answer;
use pingora_core::protocols::http::date::get_cached_date;
use std::io::Write as _;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Bodies up to this size are copied behind the head so the answer is one write.
const COALESCE_BODY: usize = 16 * 1024;

/// `HTTP/1.1 <status> <reason>`: pollgate speaks HTTP/1.1 whatever the client or the upstream
/// spoke (an intermediary sends its own version).
pub fn status_line(out: &mut Vec<u8>, status: u16, reason: Option<&str>) {
    // The statuses the cache answers with, without formatting.
    let common: Option<&[u8]> = match (status, reason) {
        (200, None) => Some(b"HTTP/1.1 200 OK\r\n"),
        (304, None) => Some(b"HTTP/1.1 304 Not Modified\r\n"),
        _ => None,
    };
    if let Some(line) = common {
        out.extend_from_slice(line);
        return;
    }
    let reason = reason
        .filter(|r| !r.is_empty())
        .or_else(|| http::StatusCode::from_u16(status).ok()?.canonical_reason())
        .unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
}

/// `Date` and `Connection`, then the blank line that ends a head.
pub fn end_head(out: &mut Vec<u8>, keep_alive: bool) {
    end_head_dated(out, get_cached_date().as_bytes(), keep_alive);
}

fn end_head_dated(out: &mut Vec<u8>, date: &[u8], keep_alive: bool) {
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(if keep_alive {
        b"\r\nConnection: keep-alive\r\n\r\n"
    } else {
        b"\r\nConnection: close\r\n\r\n"
    });
}

/// The head of `a` into `out` (cleared first).
pub fn answer_head(out: &mut Vec<u8>, a: &Answer, keep_alive: bool) {
    answer_lines(out, a);
    answer_end(out, a, keep_alive);
}

/// The status line and header lines of `a` into `out` (cleared first), without the end.
fn answer_lines(out: &mut Vec<u8>, a: &Answer) {
    out.clear();
    status_line(out, a.status, None);
    if let Some(t) = a.template() {
        out.extend_from_slice(&t.wire);
    }
    let route = a.route_headers.iter().flat_map(|h| h.iter());
    for (name, value) in a
        .relayed
        .iter()
        .chain(route)
        .map(|(n, v)| (n.as_str(), v))
        .chain(a.headers.iter().map(|(n, v)| (*n, v)))
    {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// `Date` (the answer's own, else now), `Connection`, the blank line.
fn answer_end(out: &mut Vec<u8>, a: &Answer, keep_alive: bool) {
    match &a.date {
        Some(d) => end_head_dated(out, d.as_bytes(), keep_alive && !a.close),
        None => end_head(out, keep_alive && !a.close),
    }
}

/// An upper bound of the bytes [`answer_head`] writes for `a`.
fn head_size(a: &Answer) -> usize {
    // Status line, `Date`, `Connection` and the blank line fit in this.
    const FIXED: usize = 128;
    let lines = a
        .relayed
        .iter()
        .chain(a.route_headers.iter().flat_map(|h| h.iter()))
        .map(|(n, v)| n.len() + v.len())
        .chain(a.headers.iter().map(|(n, v)| n.len() + v.len()))
        .map(|len| len + 4)
        .sum::<usize>();
    FIXED + a.template().map_or(0, |t| t.wire.len()) + lines
}

/// Writes `a` (its body too unless `head_only`); `out` is a reusable buffer.
pub async fn send_answer(
    io: &mut (impl AsyncWrite + Unpin),
    out: &mut Vec<u8>,
    a: &Answer,
    head_only: bool,
    keep_alive: bool,
) -> std::io::Result<()> {
    let rest = render_answer(out, a, head_only, keep_alive);
    io.write_all(out).await?;
    send_rest(io, rest).await
}

/// What is left of an answer once its first bytes are written: the body too big to copy behind
/// the head, or what a publish's pass could not write (`poll/park.rs`); then the flush.
pub async fn send_rest(io: &mut (impl AsyncWrite + Unpin), rest: &[u8]) -> std::io::Result<()> {
    if !rest.is_empty() {
        io.write_all(rest).await?;
    }
    io.flush().await
}

/// `a` as bytes into `out` (cleared first): its head, and its body behind it when that is small
/// enough to copy; else the body is returned, to be written after `out`.
pub fn render_answer<'a>(
    out: &mut Vec<u8>,
    a: &'a Answer,
    head_only: bool,
    keep_alive: bool,
) -> &'a [u8] {
    let body = if head_only || a.status == 304 || a.status == 204 {
        &[][..]
    } else {
        &a.body[..]
    };
    let coalesce = body.len() <= COALESCE_BODY;
    // Sized once: built by growth, a first answer's buffer is reallocated half a dozen times.
    out.reserve(head_size(a) + if coalesce { body.len() } else { 0 });
    answer_head(out, a, keep_alive);
    if coalesce {
        out.extend_from_slice(body);
        &[]
    } else {
        body
    }
}

/// The head of an event stream, `a`, in its framing, and the body's first bytes, in one write.
/// `chunked` (HTTP/1.1): `Transfer-Encoding: chunked`; else (HTTP/1.0, which has no chunks)
/// the body runs until the connection closes.
pub async fn send_stream_head(
    io: &mut (impl AsyncWrite + Unpin),
    out: &mut Vec<u8>,
    a: &Answer,
    chunked: bool,
    first: &[u8],
) -> std::io::Result<()> {
    answer_lines(out, a);
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    answer_end(out, a, false);
    body_piece(out, first, chunked);
    io.write_all(out).await?;
    io.flush().await
}

/// More of an event stream's body, at once (an event is only useful on time).
pub async fn send_stream_bytes(
    io: &mut (impl AsyncWrite + Unpin),
    out: &mut Vec<u8>,
    data: &[u8],
    chunked: bool,
) -> std::io::Result<()> {
    out.clear();
    if data.len() <= COALESCE_BODY {
        body_piece(out, data, chunked);
        io.write_all(out).await?;
    } else if chunked {
        let _ = write!(out, "{:X}\r\n", data.len());
        io.write_all(out).await?;
        io.write_all(data).await?;
        io.write_all(b"\r\n").await?;
    } else {
        io.write_all(data).await?;
    }
    io.flush().await
}

/// The end of an event stream's body: the last chunk (HTTP/1.1); HTTP/1.0's ends with the
/// close.
pub async fn end_stream(io: &mut (impl AsyncWrite + Unpin), chunked: bool) -> std::io::Result<()> {
    if chunked {
        io.write_all(b"0\r\n\r\n").await?;
    }
    io.flush().await
}

/// `data` as body bytes behind `out`: one chunk, or as it is. Never an empty chunk, which
/// would end the body.
fn body_piece(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        let _ = write!(out, "{:X}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// One `Name: value` line.
pub fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Ends a relayed head: `Date` unless the upstream sent one, `Connection`, the blank line.
pub fn end_relayed_head(out: &mut Vec<u8>, dated: bool, keep_alive: bool) {
    if dated {
        out.extend_from_slice(if keep_alive {
            b"Connection: keep-alive\r\n\r\n"
        } else {
            b"Connection: close\r\n\r\n"
        });
    } else {
        end_head(out, keep_alive);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn answers_end_with_date_and_connection() {
        let a = Answer::error(404, "no route")
            .header("X-A", HeaderValue::from_static("1"))
            .closing(true);
        let mut out = Vec::new();
        answer_head(&mut out, &a, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"));
        assert!(text.contains("\r\nX-A: 1\r\nDate: "), "{text}");
        assert!(text.ends_with("\r\nConnection: close\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn stream_heads_say_their_framing_and_chunks_are_never_empty() {
        let a = Answer::new(200)
            .header(
                "Content-Type",
                HeaderValue::from_static("text/event-stream"),
            )
            .closing(true);
        let mut out = Vec::new();
        let mut io = Vec::new();
        send_stream_head(&mut io, &mut out, &a, true, b"retry: 1\n\n")
            .await
            .unwrap();
        send_stream_bytes(&mut io, &mut out, b"", true)
            .await
            .unwrap();
        send_stream_bytes(&mut io, &mut out, b"data: x\n\n", true)
            .await
            .unwrap();
        end_stream(&mut io, true).await.unwrap();
        let text = String::from_utf8(io).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains("\r\nTransfer-Encoding: chunked\r\nDate: "),
            "{head}"
        );
        assert!(head.ends_with("\r\nConnection: close"), "{head}");
        assert!(!head.contains("Content-Length"), "{head}");
        assert_eq!(body, "A\r\nretry: 1\n\n\r\n9\r\ndata: x\n\n\r\n0\r\n\r\n");
        let mut io = Vec::new();
        send_stream_head(&mut io, &mut out, &a, false, b"retry: 1\n\n")
            .await
            .unwrap();
        end_stream(&mut io, false).await.unwrap();
        let text = String::from_utf8(io).unwrap();
        assert!(!text.contains("Transfer-Encoding"), "{text}");
        assert!(text.ends_with("\r\n\r\nretry: 1\n\n"), "{text}");
    }
}
