//! The writer of answers through a pingora session (requests pingora's proxy read): the same
//! [`Answer`], the same header names in the same casing and order. pingora's session adds
//! `Date` and `Connection` itself, last, as [`super::wire`] does.

use super::answer::Answer;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

pub async fn send_answer(session: &mut Session, a: Answer) -> pingora_error::Result<()> {
    let template = a.template().map(|t| t.lines.as_slice()).unwrap_or_default();
    let mut h = ResponseHeader::build(a.status, Some(template.len() + a.headers.len() + 2))?;
    for (name, value) in template.iter().chain(&a.headers) {
        h.append_header(*name, value.clone())?;
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
