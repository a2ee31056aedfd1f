//! Answering polls from the cache: short, conditional (`If-None-Match`), long (held) and
//! cursor (`since`) polls. See `docs/polling.md` for the semantics this implements.

use super::access::{AccessCache, Decision};
use super::headers::header_text;
use super::respond::{has_body, json_error, refuse, unavailable};
use super::router::decode_topic;
use crate::cache::{CacheError, CursorArg, Message, Since, SubState, Topic};
use crate::config::{Access, Mode, PollRoute};
use crate::metrics::METRICS;
use crate::subscription::Hub;
use bytes::{Bytes, BytesMut};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::sleep_until;

/// How a poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    /// The gateway answered with this status.
    Answered(u16),
    /// Not answerable from cache: proxy this request to the backend unchanged.
    Fallback,
    /// The client hung up while held; nothing to answer.
    Gone,
}

/// Why a poll request is refused before the cache is consulted.
#[derive(Debug, thiserror::Error)]
pub(super) enum BadPoll {
    #[error("{0}")]
    Topic(&'static str),
    #[error("poll requests must not have a body")]
    Body,
    #[error("cursor `{0}` is not a valid cursor (expected a number)")]
    Cursor(String),
    #[error("bad `Prefer: wait`: {0}")]
    Prefer(String),
}

/// Parsed request parameters.
struct PollRequest {
    cursor: Option<CursorArg>,
    if_none_match: Option<String>,
    /// How long this poll may be held, already capped by the route.
    wait: Duration,
    prefer_applied: Option<u64>,
}

fn parse(session: &Session, poll: &PollRoute) -> Result<PollRequest, BadPoll> {
    if has_body(session) {
        return Err(BadPoll::Body);
    }
    let req = session.req_header();
    let if_none_match = req
        .headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string());
    let cursor = if poll.mode == Mode::Since {
        cursor_of(req.uri.query(), if_none_match.as_deref(), poll)?
    } else {
        None
    };
    let prefer = req
        .headers
        .get_all("prefer")
        .into_iter()
        .map(|v| v.as_bytes());
    let (wait, prefer_applied) = wait_preference(prefer, poll)?;
    Ok(PollRequest {
        cursor,
        if_none_match,
        wait,
        prefer_applied,
    })
}

/// A since-mode poll's cursor: the `cursor_param` query parameter, else the ETag the client was
/// last given (`If-None-Match`); none (or empty) asks for everything cached.
pub(super) fn cursor_of(
    query: Option<&str>,
    if_none_match: Option<&str>,
    poll: &PollRoute,
) -> Result<Option<CursorArg>, BadPoll> {
    let mut text = None;
    if let Some(q) = query {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == poll.cursor_param {
                text = Some(v);
            }
        }
    }
    let text = text.or_else(|| if_none_match.map(|s| s.trim_start_matches("W/").trim_matches('"')));
    let Some(t) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let decoded = decode_topic(t).map_err(|_| BadPoll::Cursor(t.to_string()))?;
    Ok(Some(if poll.id_pointer.is_some() {
        CursorArg::Id(decoded.into_owned())
    } else {
        CursorArg::Seq(
            decoded
                .parse()
                .map_err(|_| BadPoll::Cursor(t.to_string()))?,
        )
    }))
}

/// Counts a since-mode answer: its outcome, the backend request it saved, its delivery lag.
pub(super) fn count_since(hub: &Hub, topic: &Topic, got: &Since, held: bool) {
    let m = &hub.cache.metrics;
    let outcome = match (held, got.messages.is_empty()) {
        (true, true) => &m.held_timeout,
        (true, false) => &m.held_served,
        (false, true) => &m.not_modified,
        (false, false) => &m.hit,
    };
    outcome.inc();
    m.saved.inc();
    topic.saved.fetch_add(1, Ordering::Relaxed);
    if held {
        if let Some(first) = got.messages.first() {
            m.lag.observe(first.received.elapsed().as_secs_f64());
        }
    }
}

/// A since-mode body: the JSON array of the messages' fragments, serialised once each.
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

/// A since-mode answer's `Age`: of the newest message returned, else of the newest cached.
pub(super) fn since_age(got: &Since, topic: &Topic) -> Option<u64> {
    got.messages
        .last()
        .or(topic.latest().as_ref())
        .map(|m| m.received.elapsed().as_secs())
}

/// How long a poll may be held: `Prefer: wait=N` from any of the `Prefer` header values, capped
/// by the route's `max_wait` (the applied value is echoed in `Preference-Applied`), else the
/// route's `long_poll`.
pub(super) fn wait_preference<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    poll: &PollRoute,
) -> Result<(Duration, Option<u64>), BadPoll> {
    let mut prefer_wait = None;
    for v in values {
        let v = header_text(v).ok_or_else(|| BadPoll::Prefer("not ASCII".into()))?;
        for pref in v.split([',', ';']) {
            let pref = pref.trim();
            if let Some(n) = pref
                .strip_prefix("wait=")
                .or_else(|| pref.strip_prefix("wait ="))
            {
                let secs: u64 = n.trim().parse().map_err(|_| {
                    BadPoll::Prefer(format!("`{n}` is not a whole number of seconds"))
                })?;
                prefer_wait = Some(secs);
            } else if pref.eq_ignore_ascii_case("wait") {
                return Err(BadPoll::Prefer("`wait` needs a value".into()));
            }
        }
    }
    Ok(match prefer_wait {
        Some(secs) => {
            let w = Duration::from_secs(secs).min(poll.max_wait);
            (w, Some(w.as_secs()))
        }
        None => (poll.long_poll, None),
    })
}

/// Answers a GET or HEAD on a poll route for the raw topic segment.
pub async fn serve(
    session: &mut Session,
    hub: &Arc<Hub>,
    raw_topic: &str,
    access: &AccessCache,
) -> pingora_error::Result<PollOutcome> {
    let poll = hub.poll();
    let m = &hub.cache.metrics;
    let topic_name = match decode_topic(raw_topic) {
        Ok(t) => t,
        Err(e) => return bad(session, &BadPoll::Topic(e)).await,
    };
    let req = match parse(session, poll) {
        Ok(r) => r,
        Err(e) => return bad(session, &e).await,
    };
    // Authorise before the topic is even created: an unauthorised client neither reads the
    // cache nor makes the gateway subscribe.
    if let Access::AuthRequest { path, cache_for } = &poll.access {
        match access
            .check(session, &hub.upstream, path, *cache_for, &topic_name)
            .await
        {
            Ok(Decision::Allow) => {}
            Ok(Decision::Deny {
                status,
                body,
                content_type,
                www_authenticate,
            }) => {
                m.denied.inc();
                let mut h = ResponseHeader::build(status, Some(4))?;
                h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
                h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
                if let Some(ct) = content_type {
                    h.insert_header(http::header::CONTENT_TYPE, ct)?;
                }
                if let Some(w) = www_authenticate {
                    h.insert_header(http::header::WWW_AUTHENTICATE, w)?;
                }
                return send(session, h, Some(body), false).await;
            }
            Err(e) => {
                tracing::warn!(route = %hub.cache.name, error = %e, "auth_request failed; refusing");
                METRICS
                    .upstream_errors
                    .with_label_values(&[&hub.upstream.name, "auth_request"])
                    .inc();
                unavailable(session, "the authorization service is unavailable", false).await?;
                return Ok(PollOutcome::Answered(503));
            }
        }
    }
    let topic = match hub.topic(&topic_name) {
        Ok(t) => t,
        Err(e) => {
            let reason = match e {
                CacheError::GlobalTopicLimit | CacheError::RouteTopicLimit => "max_topics",
            };
            return reject(session, hub, reason, &e.to_string()).await;
        }
    };

    let (mut newest, mut state) = topic.snapshot();
    // Cold topic: give the new subscription `first_message_wait` to deliver something.
    if newest.is_none() {
        let deadline = tokio::time::Instant::now() + poll.first_message_wait;
        loop {
            let mut rx = topic.watch();
            (newest, state) = topic.snapshot();
            if newest.is_some() {
                break;
            }
            if matches!(state, SubState::Failed | SubState::Down(_)) {
                m.fallback.inc();
                return Ok(PollOutcome::Fallback);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    m.fallback.inc();
                    return Ok(PollOutcome::Fallback);
                },
                _ = sleep_until(deadline) => {
                    m.fallback.inc();
                    return Ok(PollOutcome::Fallback);
                }
            }
        }
    }
    let Some(newest) = newest else {
        m.fallback.inc();
        return Ok(PollOutcome::Fallback);
    };
    // Stale past `max_stale`: the backend over plain HTTP knows better than our old copy.
    let stale = match state {
        SubState::Down(since) => {
            if since.elapsed() > poll.max_stale {
                m.fallback.inc();
                return Ok(PollOutcome::Fallback);
            }
            true
        }
        _ => false,
    };

    match poll.mode {
        Mode::Latest => latest(session, hub, &topic, newest, &req, stale).await,
        Mode::Since => since(session, hub, &topic, &req, stale).await,
    }
}

pub(super) fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .any(|t| t.trim().trim_start_matches("W/") == etag)
}

/// What a held poll woke up to.
pub(super) enum Woke {
    Changed,
    Timeout,
    Shutdown,
    Gone,
}

/// Waits for the topic to change (`rx` was subscribed before the caller read the cache), the
/// deadline, the server's shutdown, or `client_read` to finish: a held GET has no body, so any
/// read result means the client closed or misbehaved. Both paths hold polls with it; each
/// brings its own read of the client.
pub(super) async fn wait_change(
    rx: &mut tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    client_read: impl std::future::Future,
) -> Woke {
    if *shutdown.borrow() {
        return Woke::Shutdown;
    }
    tokio::select! {
        r = rx.changed() => if r.is_ok() { Woke::Changed } else { Woke::Shutdown },
        _ = sleep_until(deadline) => Woke::Timeout,
        _ = shutdown.changed() => Woke::Shutdown,
        _ = client_read => Woke::Gone,
    }
}

async fn latest(
    session: &mut Session,
    hub: &Arc<Hub>,
    topic: &Arc<Topic>,
    mut msg: Arc<Message>,
    req: &PollRequest,
    stale: bool,
) -> pingora_error::Result<PollOutcome> {
    let m = &hub.cache.metrics;
    let Some(inm) = req.if_none_match.as_deref() else {
        return hit(session, hub, topic, &msg, req, stale).await;
    };
    if !etag_matches(inm, &msg.etag) {
        return hit(session, hub, topic, &msg, req, stale).await;
    }
    if req.wait.is_zero() {
        m.not_modified.inc();
        topic.saved.fetch_add(1, Ordering::Relaxed);
        m.saved.inc();
        return not_modified(session, &msg, req, stale, false).await;
    }
    let Some(_slot) = hub.cache.try_hold(topic) else {
        return reject(session, hub, "max_held_polls", "too many held polls").await;
    };
    session.set_abort_on_close(true);
    let deadline = tokio::time::Instant::now() + req.wait;
    let mut shutdown = hub.cache.store.shutdown_signal();
    loop {
        let mut rx = topic.watch();
        if let Some(newest) = topic.latest() {
            msg = newest;
        }
        if !etag_matches(inm, &msg.etag) {
            m.held_served.inc();
            m.lag.observe(msg.received.elapsed().as_secs_f64());
            topic.saved.fetch_add(1, Ordering::Relaxed);
            m.saved.inc();
            return write_message(session, &msg, req, stale, &hub.poll().content_type).await;
        }
        let client = session.read_body_or_idle(true);
        match wait_change(&mut rx, deadline, &mut shutdown, client).await {
            Woke::Changed => continue,
            Woke::Gone => return Ok(PollOutcome::Gone),
            w @ (Woke::Timeout | Woke::Shutdown) => {
                m.held_timeout.inc();
                topic.saved.fetch_add(1, Ordering::Relaxed);
                m.saved.inc();
                let stale = matches!(topic.state(), SubState::Down(_));
                return not_modified(session, &msg, req, stale, matches!(w, Woke::Shutdown)).await;
            }
        }
    }
}

async fn hit(
    session: &mut Session,
    hub: &Arc<Hub>,
    topic: &Topic,
    msg: &Message,
    req: &PollRequest,
    stale: bool,
) -> pingora_error::Result<PollOutcome> {
    let m = &hub.cache.metrics;
    m.hit.inc();
    m.saved.inc();
    topic.saved.fetch_add(1, Ordering::Relaxed);
    write_message(session, msg, req, stale, &hub.poll().content_type).await
}

fn base_header(
    status: u16,
    poll_content_type: Option<&str>,
    len: usize,
) -> pingora_error::Result<ResponseHeader> {
    let mut h = ResponseHeader::build_no_case(status, Some(10))?;
    if let Some(ct) = poll_content_type {
        h.insert_header(http::header::CONTENT_TYPE, ct)?;
    }
    h.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    Ok(h)
}

fn decorate(
    h: &mut ResponseHeader,
    req: &PollRequest,
    stale: bool,
    close: bool,
) -> pingora_error::Result<()> {
    if stale {
        h.insert_header("pollgate-stale", "true")?;
    }
    if let Some(w) = req.prefer_applied {
        h.insert_header("preference-applied", format!("wait={w}"))?;
    }
    if close {
        h.insert_header(http::header::CONNECTION, "close")?;
    }
    Ok(())
}

async fn send(
    session: &mut Session,
    h: ResponseHeader,
    body: Option<Bytes>,
    close: bool,
) -> pingora_error::Result<PollOutcome> {
    let status = h.status.as_u16();
    if close {
        session.set_keepalive(None);
    }
    let head = session.req_header().method == http::Method::HEAD;
    match body {
        Some(b) if !head && !b.is_empty() => {
            session.write_response_header(Box::new(h), false).await?;
            session.write_response_body(Some(b), true).await?;
        }
        _ => session.write_response_header(Box::new(h), true).await?,
    }
    Ok(PollOutcome::Answered(status))
}

async fn write_message(
    session: &mut Session,
    msg: &Message,
    req: &PollRequest,
    stale: bool,
    content_type: &str,
) -> pingora_error::Result<PollOutcome> {
    let mut h = match &msg.heads {
        Some(heads) => heads.ok.clone(),
        None => {
            let mut h = base_header(200, Some(content_type), msg.payload.len())?;
            h.insert_header(http::header::ETAG, msg.etag.as_str())?;
            h
        }
    };
    h.insert_header(http::header::AGE, age(msg))?;
    decorate(&mut h, req, stale, false)?;
    send(session, h, Some(msg.payload.clone()), false).await
}

/// `Age`: whole seconds since the message arrived.
fn age(msg: &Message) -> http::HeaderValue {
    http::HeaderValue::from(msg.received.elapsed().as_secs())
}

async fn not_modified(
    session: &mut Session,
    msg: &Message,
    req: &PollRequest,
    stale: bool,
    close: bool,
) -> pingora_error::Result<PollOutcome> {
    let mut h = match &msg.heads {
        Some(heads) => heads.not_modified.clone(),
        None => {
            let mut h = ResponseHeader::build_no_case(304, Some(8))?;
            h.insert_header(http::header::ETAG, msg.etag.as_str())?;
            h.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
            h
        }
    };
    h.insert_header(http::header::AGE, age(msg))?;
    decorate(&mut h, req, stale, close)?;
    send(session, h, None, close).await
}

async fn since(
    session: &mut Session,
    hub: &Arc<Hub>,
    topic: &Arc<Topic>,
    req: &PollRequest,
    stale: bool,
) -> pingora_error::Result<PollOutcome> {
    let mut rx = topic.watch();
    let mut got = topic.since(req.cursor.as_ref());
    let mut held = false;
    let mut close = false;
    if got.messages.is_empty() && !req.wait.is_zero() {
        let Some(_slot) = hub.cache.try_hold(topic) else {
            return reject(session, hub, "max_held_polls", "too many held polls").await;
        };
        held = true;
        session.set_abort_on_close(true);
        let deadline = tokio::time::Instant::now() + req.wait;
        let mut shutdown = hub.cache.store.shutdown_signal();
        loop {
            let client = session.read_body_or_idle(true);
            match wait_change(&mut rx, deadline, &mut shutdown, client).await {
                Woke::Changed => {
                    rx = topic.watch();
                    got = topic.since(req.cursor.as_ref());
                    if !got.messages.is_empty() {
                        break;
                    }
                }
                Woke::Gone => return Ok(PollOutcome::Gone),
                Woke::Timeout => break,
                Woke::Shutdown => {
                    close = true;
                    break;
                }
            }
        }
    }
    count_since(hub, topic, &got, held);
    let body = since_body(&got);
    let mut h = base_header(200, Some(&hub.poll().content_type), body.len())?;
    h.insert_header(http::header::ETAG, format!("\"{}\"", got.cursor))?;
    h.insert_header("pollgate-cursor", got.cursor.as_str())?;
    if got.gap {
        h.insert_header("pollgate-gap", "true")?;
    }
    if let Some(age) = since_age(&got, topic) {
        h.insert_header(http::header::AGE, age.to_string())?;
    }
    let stale = stale || matches!(topic.state(), SubState::Down(_));
    decorate(&mut h, req, stale, close)?;
    send(session, h, Some(body), close).await
}

async fn bad(session: &mut Session, e: &BadPoll) -> pingora_error::Result<PollOutcome> {
    json_error(session, 400, &e.to_string(), &[], true).await?;
    Ok(PollOutcome::Answered(400))
}

async fn reject(
    session: &mut Session,
    hub: &Hub,
    reason: &'static str,
    message: &str,
) -> pingora_error::Result<PollOutcome> {
    hub.cache.metrics.rejected_polls.inc();
    refuse(session, &hub.cache.name, reason, message, false).await?;
    Ok(PollOutcome::Answered(503))
}

#[cfg(test)]
mod tests {
    use super::etag_matches;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        assert!(etag_matches("\"a\"", "\"a\""));
        assert!(etag_matches("\"x\", W/\"a\"", "\"a\""));
        assert!(etag_matches("*", "\"a\""));
        assert!(!etag_matches("\"b\"", "\"a\""));
    }
}
