//! Who may read a topic. A topic's cache is filled by the gateway's own subscription, so on an
//! `auth_request` route the backend is asked, with the client's credentials, before anything
//! cached is served. Its decision is cached for `cache_for`, keyed by every input the backend
//! was sent: a decision is reused only for a request it would have been asked about in the
//! very same words.

use super::answer::{name, Answer};
use super::request::HeaderSource;
use super::upstream::{Failure, UpstreamClient};
use crate::config::Upstream;
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use http::HeaderValue;
use pingora_http::RequestHeader;
use sha1::{Digest, Sha1};
use std::time::{Duration, Instant};

/// The backend's verdict.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow,
    /// 401 or 403, relayed as the backend gave it.
    Deny(Answer),
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("authorization service unreachable or failing ({0:?})")]
    Upstream(Failure),
    #[error("authorization service answered {0}")]
    Unexpected(u16),
    #[error("authorization request could not be built: {0}")]
    Request(String),
    #[error("authorization service sent a body over 64 KiB")]
    TooLarge,
}

/// Cached decisions of one route, keyed by a hash of everything sent to the auth service.
#[derive(Default)]
pub struct AccessCache {
    decisions: DashMap<[u8; 20], (Instant, Decision)>,
}

/// Entries kept before expired ones are swept (and, if still over, all of them).
const MAX_DECISIONS: usize = 100_000;
/// Largest denial body relayed.
const MAX_BODY: usize = 64 * 1024;

/// The headers a client request contributes to the auth request, in the order sent.
const FORWARDED: [&str; 2] = ["authorization", "cookie"];

/// What of a client's request goes to the auth service.
pub struct Asker<'a, H: HeaderSource + ?Sized> {
    /// The request target as sent (`X-Original-URI`).
    pub target: &'a str,
    /// `Authorization` and `Cookie` are read from these.
    pub headers: &'a H,
    /// `X-Forwarded-For`.
    pub client_ip: Option<std::net::IpAddr>,
}

/// The auth request for a poll: every input the decision may depend on is in it, and the same
/// request is what the decision is cached under.
fn auth_request<H: HeaderSource + ?Sized>(
    up: &Upstream,
    auth_path: &str,
    topic: &str,
    req: &Asker<'_, H>,
) -> Result<RequestHeader, AccessError> {
    let bad = |e: pingora_error::BError| AccessError::Request(e.to_string());
    let sep = if auth_path.contains('?') { '&' } else { '?' };
    let target = format!("{auth_path}{sep}topic={}", crate::topic::encode(topic));
    let mut h = RequestHeader::build("GET", target.as_bytes(), Some(8)).map_err(bad)?;
    let host = up.host.as_deref().unwrap_or(&up.address);
    h.insert_header("Host", host).map_err(bad)?;
    let topic_value = HeaderValue::from_bytes(topic.as_bytes())
        .map_err(|e| AccessError::Request(e.to_string()))?;
    h.insert_header("X-Pollgate-Topic", topic_value)
        .map_err(bad)?;
    // The target was validated as a URI path: always a header value.
    h.insert_header("X-Original-URI", req.target).map_err(bad)?;
    for name in FORWARDED {
        for v in req.headers.values(name) {
            h.append_header(name, pingora_http::header_value_from_slice(v))
                .map_err(bad)?;
        }
    }
    if let Some(ip) = req.client_ip {
        h.insert_header("X-Forwarded-For", ip.to_string())
            .map_err(bad)?;
    }
    Ok(h)
}

/// The cache key of an auth request: its whole head, in the bytes that go on the wire.
fn key_of(req: &RequestHeader) -> [u8; 20] {
    let mut wire = BytesMut::with_capacity(256);
    wire.extend_from_slice(req.raw_path());
    wire.extend_from_slice(b"\n");
    req.header_to_h1_wire(&mut wire);
    Sha1::digest(&wire).into()
}

impl AccessCache {
    /// The decision for this request and topic, asking the backend when not cached.
    pub async fn check<H: HeaderSource + ?Sized>(
        &self,
        client: &UpstreamClient,
        up: &Upstream,
        auth_path: &str,
        cache_for: Duration,
        topic: &str,
        req: &Asker<'_, H>,
    ) -> Result<Decision, AccessError> {
        let head = auth_request(up, auth_path, topic, req)?;
        let key = key_of(&head);
        if let Some(entry) = self.decisions.get(&key) {
            if entry.0 > Instant::now() {
                return Ok(entry.1.clone());
            }
        }
        let decision = ask(client, up, head).await?;
        if !cache_for.is_zero() {
            if self.decisions.len() >= MAX_DECISIONS {
                let now = Instant::now();
                self.decisions.retain(|_, (exp, _)| *exp > now);
                if self.decisions.len() >= MAX_DECISIONS {
                    self.decisions.clear();
                }
            }
            self.decisions
                .insert(key, (Instant::now() + cache_for, decision.clone()));
        }
        Ok(decision)
    }
}

/// Sends the auth request over the shared upstream client and reads the final answer
/// (interim 1xx answers, such as 103 Early Hints, are skipped).
async fn ask(
    client: &UpstreamClient,
    up: &Upstream,
    head: RequestHeader,
) -> Result<Decision, AccessError> {
    let failed = |e: pingora_error::BError| AccessError::Upstream(Failure::of(&e));
    let (mut s, _) = client.session(up).await.map_err(AccessError::Upstream)?;
    s.write_request_header(Box::new(head))
        .await
        .map_err(failed)?;
    s.finish_body().await.map_err(failed)?;
    let resp = loop {
        s.read_response().await.map_err(failed)?;
        let resp = s
            .resp_header()
            .ok_or(AccessError::Upstream(Failure::Protocol))?;
        let status = resp.status.as_u16();
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        break resp.clone();
    };
    let status = resp.status.as_u16();
    let decision = match status {
        200..=299 => Decision::Allow,
        401 | 403 => {
            let mut body = BytesMut::new();
            while let Some(chunk) = s.read_body_ref().await.map_err(failed)? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(AccessError::TooLarge);
                }
                body.extend_from_slice(chunk);
            }
            Decision::Deny(denial(status, &resp, body.freeze()))
        }
        other => return Err(AccessError::Unexpected(other)),
    };
    // An allowing answer's body is read (and dropped) so the connection can be reused.
    if matches!(decision, Decision::Allow) {
        let mut left = MAX_BODY;
        while let Some(chunk) = s.read_body_ref().await.map_err(failed)? {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                return Ok(decision);
            }
        }
    }
    client.release(s, up).await;
    Ok(decision)
}

/// The backend's denial as the client gets it: status, body, `Content-Type` and
/// `WWW-Authenticate`, never stored.
fn denial(status: u16, resp: &pingora_http::ResponseHeader, body: Bytes) -> Answer {
    let mut a = Answer::new(status)
        .header(name::CONTENT_LENGTH, HeaderValue::from(body.len()))
        .header(name::CACHE_CONTROL, HeaderValue::from_static("no-store"))
        .with_body(body);
    if let Some(ct) = resp.headers.get(http::header::CONTENT_TYPE) {
        a.push(name::CONTENT_TYPE, ct.clone());
    }
    if let Some(w) = resp.headers.get(http::header::WWW_AUTHENTICATE) {
        a.push(name::WWW_AUTHENTICATE, w.clone());
    }
    a
}
