//! What the cache would answer to a plain GET, as data: the since-mode body every cursor
//! answer writes, and the view shadow checks compare with the backend's own answer.

use super::input::cursor_of;
use crate::cache::Since;
use crate::config::Mode;
use crate::proxy::answer::name;
use crate::subscription::Hub;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;

/// What the cache would answer right now to a plain GET of `topic` with `query` (no
/// conditionals, no hold): status, the header lines compared by shadow checks, body. `None`
/// while the topic has nothing cached. The lines are the answer's fixed ones and the route's
/// `response_headers`; lines that vary per request (`Age`, `Date`, `Pollgate-Stale`,
/// `Preference-Applied`) are left out.
pub fn cache_view(hub: &Hub, topic: &str, query: Option<&str>) -> Option<CacheView> {
    let poll = hub.poll();
    let t = hub.cache.get(topic)?;
    let mut view = match poll.mode {
        Mode::Latest => {
            let msg = t.latest()?;
            let lines = msg
                .heads
                .as_deref()
                .map(|h| {
                    h.ok.lines
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            CacheView {
                status: 200,
                headers: lines,
                body: msg.payload.clone(),
            }
        }
        Mode::Since => {
            let cursor = cursor_of(query, None, poll).ok()?;
            let got = t.since(cursor.as_ref());
            if t.is_empty() {
                return None;
            }
            let body = since_body(&got);
            // The same fixed lines as `since` writes.
            let mut headers = vec![
                (
                    name::CONTENT_TYPE.into(),
                    HeaderValue::from_str(&poll.content_type).ok()?,
                ),
                (name::CONTENT_LENGTH.into(), HeaderValue::from(body.len())),
                (
                    name::CACHE_CONTROL.into(),
                    HeaderValue::from_static("no-store"),
                ),
                (
                    name::ETAG.into(),
                    HeaderValue::from_str(&format!("\"{}\"", got.cursor)).ok()?,
                ),
                (
                    name::POLLGATE_CURSOR.into(),
                    HeaderValue::from_str(&got.cursor).ok()?,
                ),
            ];
            if got.gap {
                headers.push((name::POLLGATE_GAP.into(), HeaderValue::from_static("true")));
            }
            CacheView {
                status: 200,
                headers,
                body,
            }
        }
    };
    view.headers.extend(poll.response_headers.iter().cloned());
    Some(view)
}

/// See [`cache_view`].
#[derive(Debug, Clone)]
pub struct CacheView {
    pub status: u16,
    pub headers: Vec<(String, HeaderValue)>,
    pub body: Bytes,
}

/// A since-mode body: the messages' pre-serialised JSON as one array.
pub(super) fn since_body(got: &Since) -> Bytes {
    let mut body =
        BytesMut::with_capacity(2 + got.messages.iter().map(|m| m.json.len() + 1).sum::<usize>());
    body.extend_from_slice(b"[");
    for (i, msg) in got.messages.iter().enumerate() {
        if i > 0 {
            body.extend_from_slice(b",");
        }
        body.extend_from_slice(&msg.json);
    }
    body.extend_from_slice(b"]");
    body.freeze()
}
