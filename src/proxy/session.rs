//! The writer of answers through a pingora session (requests pingora's proxy read): the same
//! [`Answer`], the same header names in the same casing and order. pingora's session adds
//! `Date` and `Connection` itself, last, as [`super::wire`] does; its HTTP/1 session always
//! writes the current time as `Date` (it has no switch for it), so only on this path a cached
//! message's `Date` is not its arrival time.

use super::answer::Answer;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

pub async fn send_answer(session: &mut Session, a: Answer) -> pingora_error::Result<()> {
    let h = head_of(&a)?;
    if a.close {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    if head_only || a.body.is_empty() || a.status == 304 || a.status == 204 {
        session.write_response_header(Box::new(h), true).await
    } else {
        session.write_response_header(Box::new(h), false).await?;
        session.write_response_body(Some(a.body), true).await
    }
}

/// The head of `a`, its lines in the order [`super::wire`] writes them.
fn head_of(a: &Answer) -> pingora_error::Result<ResponseHeader> {
    let template = a.template().map(|t| t.lines.as_slice()).unwrap_or_default();
    let mut h = ResponseHeader::build(a.status, Some(template.len() + a.headers.len() + 6))?;
    for (name, value) in template {
        h.append_header(*name, value.clone())?;
    }
    for (name, value) in a
        .relayed
        .iter()
        .chain(a.route_headers.iter().flat_map(|h| h.iter()))
    {
        h.append_header(name.clone(), value.clone())?;
    }
    for (name, value) in &a.headers {
        h.append_header(*name, value.clone())?;
    }
    // pingora's HTTP/1 session writes its own `Date` (now) over this one.
    if let Some(d) = &a.date {
        h.append_header("Date", d.clone())?;
    }
    Ok(h)
}

/// The head of an event stream, `a`, and the body's first bytes. On HTTP/1.1 the body is
/// chunked; on HTTP/1.0, which has no chunks, pingora delimits a body of no length by the
/// close. The connection is not kept: nothing can follow a stream on it.
pub async fn send_stream_head(
    session: &mut Session,
    a: &Answer,
    first: Bytes,
) -> pingora_error::Result<()> {
    let mut h = head_of(a)?;
    if session.req_header().version == http::Version::HTTP_11 {
        h.append_header("Transfer-Encoding", "chunked")?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(h), false).await?;
    send_stream_bytes(session, first).await
}

/// More of an event stream's body; pingora flushes every write of a body of no length.
pub async fn send_stream_bytes(session: &mut Session, data: Bytes) -> pingora_error::Result<()> {
    // An empty write would end a chunked body.
    if data.is_empty() {
        return Ok(());
    }
    session.write_response_body(Some(data), false).await
}

/// The end of an event stream's body (the last chunk on HTTP/1.1).
pub async fn end_stream(session: &mut Session) -> pingora_error::Result<()> {
    session.write_response_body(None, true).await
}
