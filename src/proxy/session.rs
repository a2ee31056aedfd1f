//! The writer of answers through a pingora session (requests pingora's proxy read): the same
//! [`Answer`], the same header names in the same casing and order. pingora's session adds
//! `Date` and `Connection` itself, last, as [`super::wire`] does; its HTTP/1 session always
//! writes the current time as `Date` (it has no switch for it), so only on this path a cached
//! message's `Date` is not its arrival time.

use super::answer::Answer;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

pub async fn send_answer(session: &mut Session, a: Answer) -> pingora_error::Result<()> {
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
