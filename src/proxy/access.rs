//! Who may read a topic. A topic's cache is filled by the gateway's own subscription, so on an
//! `auth_request` route the backend is asked, with the client's credentials, before anything
//! cached is served; its decision is cached per credential and topic for `cache_for`.

use crate::config::Upstream;
use bytes::Bytes;
use dashmap::DashMap;
use pingora_proxy::Session;
use sha1::{Digest, Sha1};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The backend's verdict.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow,
    /// 401 or 403, relayed as the backend gave it.
    Deny {
        status: u16,
        body: Bytes,
        content_type: Option<String>,
        www_authenticate: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("authorization service unreachable: {0}")]
    Io(#[from] std::io::Error),
    #[error("authorization service timed out")]
    Timeout,
    #[error("authorization service answered {0}")]
    Unexpected(u16),
    #[error("authorization service sent a malformed response")]
    Malformed,
}

/// Cached decisions of one route, keyed by a hash of (credentials, topic).
#[derive(Default)]
pub struct AccessCache {
    decisions: DashMap<[u8; 20], (Instant, Decision)>,
}

/// Entries kept before expired ones are swept (and, if still over, all of them).
const MAX_DECISIONS: usize = 100_000;

fn credential_key(session: &Session, topic: &str) -> [u8; 20] {
    let req = session.req_header();
    let mut h = Sha1::new();
    for name in [http::header::AUTHORIZATION, http::header::COOKIE] {
        for v in req.headers.get_all(&name) {
            h.update(v.as_bytes());
            h.update([0u8]);
        }
        h.update([1u8]);
    }
    h.update(topic.as_bytes());
    h.finalize().into()
}

impl AccessCache {
    /// The decision for this client and topic, asking the backend when not cached.
    pub async fn check(
        &self,
        session: &Session,
        upstream: &Upstream,
        auth_path: &str,
        cache_for: Duration,
        topic: &str,
    ) -> Result<Decision, AccessError> {
        let key = credential_key(session, topic);
        if let Some(entry) = self.decisions.get(&key) {
            if entry.0 > Instant::now() {
                return Ok(entry.1.clone());
            }
        }
        let decision = ask(session, upstream, auth_path, topic).await?;
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

fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn ask(
    session: &Session,
    up: &Upstream,
    auth_path: &str,
    topic: &str,
) -> Result<Decision, AccessError> {
    let req = session.req_header();
    let sep = if auth_path.contains('?') { '&' } else { '?' };
    let host = up.host.as_deref().unwrap_or(&up.address);
    let mut head = format!(
        "GET {auth_path}{sep}topic={} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nX-Pollgate-Topic: {}\r\nX-Original-URI: {}\r\n",
        encode_query(topic),
        encode_query(topic),
        String::from_utf8_lossy(req.raw_path()).replace(['\r', '\n'], "")
    );
    for name in [http::header::AUTHORIZATION, http::header::COOKIE] {
        for v in req.headers.get_all(&name) {
            if let Ok(s) = v.to_str() {
                head.push_str(&format!("{}: {s}\r\n", name.as_str()));
            }
        }
    }
    if let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        head.push_str(&format!("X-Forwarded-For: {ip}\r\n"));
    }
    head.push_str("\r\n");
    let exchange = async {
        let mut s = tokio::time::timeout(
            up.connect_timeout,
            tokio::net::TcpStream::connect(up.socket_addr),
        )
        .await
        .map_err(|_| AccessError::Timeout)??;
        s.write_all(head.as_bytes()).await?;
        // Read one response: the head, then a Content-Length body if any. A keep-alive backend
        // may ignore `Connection: close`, so end-of-stream is not waited for when the length is
        // known.
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await?;
            if n > 0 {
                buf.extend_from_slice(&chunk[..n]);
            }
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            if let Ok(httparse::Status::Complete(head_len)) = r.parse(&buf) {
                let len = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    });
                let chunked = r
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
                match len {
                    Some(l) if buf.len() >= head_len + l => break,
                    None if chunked => break,
                    _ => {}
                }
            }
            if n == 0 || buf.len() > 64 * 1024 {
                break;
            }
        }
        Ok::<_, AccessError>(buf)
    };
    let raw = tokio::time::timeout(up.read_timeout, exchange)
        .await
        .map_err(|_| AccessError::Timeout)??;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(AccessError::Malformed),
    };
    let status = resp.code.ok_or(AccessError::Malformed)?;
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_string)
    };
    match status {
        200..=299 => Ok(Decision::Allow),
        401 | 403 => {
            let mut body = &raw[head_len..];
            if header("transfer-encoding").is_some() {
                // Relaying a chunked denial body would need a decoder; the status is what counts.
                body = &[];
            }
            if let Some(len) = header("content-length").and_then(|v| v.trim().parse::<usize>().ok())
            {
                body = &body[..len.min(body.len())];
            }
            Ok(Decision::Deny {
                status,
                body: Bytes::copy_from_slice(body),
                content_type: header("content-type"),
                www_authenticate: header("www-authenticate"),
            })
        }
        other => Err(AccessError::Unexpected(other)),
    }
}
