//! An answer the gateway gives itself (a poll answered from the cache, an error, a refusal at
//! a limit), decided once and written by either writer: [`super::wire`] on pollgate's own
//! connections, [`super::session`] through a pingora session. Neither writer decides anything:
//! status, headers (names in the casing they go out in) and body are all here.

use crate::cache::{HeadTemplate, Message, Ticket};
use bytes::Bytes;
use http::HeaderValue;
use std::sync::Arc;
use std::time::Instant;

/// Header names as they go on the wire, on every path.
pub mod name {
    pub const CONTENT_TYPE: &str = "Content-Type";
    pub const CONTENT_LENGTH: &str = "Content-Length";
    pub const CACHE_CONTROL: &str = "Cache-Control";
    pub const ETAG: &str = "ETag";
    pub const AGE: &str = "Age";
    pub const RETRY_AFTER: &str = "Retry-After";
    pub const WWW_AUTHENTICATE: &str = "WWW-Authenticate";
    pub const POLLGATE_STALE: &str = "Pollgate-Stale";
    pub const POLLGATE_CURSOR: &str = "Pollgate-Cursor";
    pub const POLLGATE_GAP: &str = "Pollgate-Gap";
    pub const PREFERENCE_APPLIED: &str = "Preference-Applied";
}

/// One answer, complete but for `Connection` (and `Date` when the answer has none of its own),
/// which the writer adds last, in that order, as pingora's session does.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Header lines built once for a cached message, written first.
    pub template: Option<(Arc<Message>, Which)>,
    /// A backend's header lines, in its casing (a fallback answer), after the template's.
    pub relayed: Vec<(String, HeaderValue)>,
    /// The route's `response_headers`, after those.
    pub route_headers: Option<Arc<[(String, HeaderValue)]>>,
    /// This answer's own header lines, after those.
    pub headers: Vec<(&'static str, HeaderValue)>,
    /// `Date`, when the answer carries a cached message (its arrival); else the writer's now.
    pub date: Option<HeaderValue>,
    pub body: Bytes,
    /// Close the connection after this answer (a refused request whose body was not read, or
    /// the server is shutting down).
    pub close: bool,
    /// A held poll's answer to a publish: its connection reads the next request only after
    /// the other answers due with it have gone out (see `cache/due.rs`).
    pub fanout: Option<Ticket>,
    /// Written already by the publish that answered this held poll (`poll/park.rs`).
    pub written: Option<Box<Written>>,
}

/// What a publish wrote for a parked held poll, and what its client did next.
#[derive(Debug, Clone)]
pub struct Written {
    /// The answer's bytes the socket did not take at once (nearly always none).
    pub rest: Vec<u8>,
    /// When the publish wrote it.
    pub at: Instant,
    /// What the client sent after it (its next request), read while the poll was parked.
    pub early: Vec<u8>,
    /// The client closed its side after the answer.
    pub eof: bool,
}

/// Which of a cached message's templates an answer starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Ok,
    NotModified,
}

impl Answer {
    pub fn new(status: u16) -> Answer {
        Answer {
            status,
            template: None,
            relayed: Vec::new(),
            route_headers: None,
            headers: Vec::with_capacity(6),
            date: None,
            body: Bytes::new(),
            close: false,
            fanout: None,
            written: None,
        }
    }

    /// An answer from a cached message's template (latest mode).
    pub fn from_message(msg: Arc<Message>, which: Which) -> Answer {
        let status = match which {
            Which::Ok => 200,
            Which::NotModified => 304,
        };
        let body = match which {
            Which::Ok => msg.payload.clone(),
            Which::NotModified => Bytes::new(),
        };
        Answer {
            status,
            date: Some(msg.date.clone()),
            template: Some((msg, which)),
            relayed: Vec::new(),
            route_headers: None,
            headers: Vec::with_capacity(4),
            body,
            close: false,
            fanout: None,
            written: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: HeaderValue) -> Answer {
        self.headers.push((name, value));
        self
    }

    pub fn push(&mut self, name: &'static str, value: HeaderValue) {
        self.headers.push((name, value));
    }

    pub fn with_body(mut self, body: Bytes) -> Answer {
        self.body = body;
        self
    }

    pub fn closing(mut self, close: bool) -> Answer {
        self.close |= close;
        self
    }

    /// The template's header lines, if any.
    pub fn template(&self) -> Option<&HeadTemplate> {
        let (msg, which) = self.template.as_ref()?;
        let heads = msg.heads.as_deref()?;
        Some(match which {
            Which::Ok => &heads.ok,
            Which::NotModified => &heads.not_modified,
        })
    }

    /// A JSON error: `{"error":"not_found","message":"..."}`, never stored by caches.
    pub fn error(status: u16, message: &str) -> Answer {
        let body = error_body(status, message);
        Answer::new(status)
            .header(
                name::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header(name::CONTENT_LENGTH, HeaderValue::from(body.len()))
            .header(name::CACHE_CONTROL, HeaderValue::from_static("no-store"))
            .with_body(body)
    }

    /// `503` with `Retry-After: 1`: a temporary condition the client should retry.
    pub fn unavailable(message: &str) -> Answer {
        Answer::error(503, message).header(name::RETRY_AFTER, HeaderValue::from_static("1"))
    }
}

/// A short JSON error body: `{"error":"not_found","message":"..."}`.
pub fn error_body(status: u16, message: &str) -> Bytes {
    let code = match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        431 => "request_header_fields_too_large",
        500 => "internal_error",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ => "error",
    };
    let v = serde_json::json!({ "error": code, "message": message });
    Bytes::from(serde_json::to_vec(&v).expect("json serialises"))
}

/// An `Age` value: the common small ones without an allocation.
pub fn age_value(secs: u64) -> HeaderValue {
    const SMALL: [&str; 16] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
    ];
    match SMALL.get(secs as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(secs),
    }
}

/// The message of an error answer for a request that could not be proxied (or built).
pub fn proxy_error_message(status: u16) -> &'static str {
    match status {
        502 => "the upstream could not be reached or answered badly",
        504 => "the upstream did not answer in time",
        400 => "the request could not be read",
        _ => "the request failed",
    }
}

/// What a poll that fell back to the backend answers when the backend is down too.
pub const FALLBACK_UNAVAILABLE: &str = "no fresh data cached and the backend is unavailable";
