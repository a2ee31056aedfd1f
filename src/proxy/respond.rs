//! Writing the gateway's own responses: JSON errors and cache answers.

use crate::metrics::METRICS;
use bytes::Bytes;
use pingora_core::protocols::http::date::get_cached_date;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A short JSON error body: `{"error":"not_found","message":"..."}`.
pub fn error_body(status: u16, message: &str) -> Bytes {
    let code = match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
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

/// The message of an error answer for a request that could not be proxied (or built).
pub fn proxy_error_message(status: u16) -> &'static str {
    match status {
        502 => "the upstream could not be reached or answered badly",
        504 => "the upstream did not answer in time",
        400 => "the request could not be read",
        _ => "the request failed",
    }
}

/// A JSON error response written straight to a connection (the paths below pingora's session),
/// with the same head as [`json_error`] and `Connection: close`; `extra` headers go before it.
pub async fn raw_json_error(
    io: &mut (impl AsyncWrite + Unpin),
    status: u16,
    message: &str,
    extra: &[(&str, &str)],
    head_only: bool,
) {
    let body = error_body(status, message);
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in extra {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\nDate: ");
    out.extend_from_slice(get_cached_date().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(&body);
    }
    if io.write_all(&out).await.is_ok() {
        let _ = io.flush().await;
    }
}

/// Writes a JSON error response. `close` drops the connection afterwards, for requests whose
/// body was not read (so its bytes cannot be mistaken for the next request).
pub async fn json_error(
    session: &mut Session,
    status: u16,
    message: &str,
    extra: &[(&'static str, String)],
    close: bool,
) -> pingora_error::Result<()> {
    let body = error_body(status, message);
    let mut h = ResponseHeader::build(status, Some(6))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (k, v) in extra {
        h.insert_header(*k, v.as_str())?;
    }
    if close {
        session.set_keepalive(None);
        h.insert_header(http::header::CONNECTION, "close")?;
    }
    let head = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(h), head).await?;
    if !head {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// `503` with `Retry-After: 1`: a temporary condition the client should retry.
pub async fn unavailable(
    session: &mut Session,
    message: &str,
    close: bool,
) -> pingora_error::Result<()> {
    json_error(
        session,
        503,
        message,
        &[("retry-after", "1".to_string())],
        close,
    )
    .await
}

/// Refuses a request at a limit: counted in `pollgate_rejected_total{route,reason}`, answered
/// with [`unavailable`].
pub async fn refuse(
    session: &mut Session,
    route: &str,
    reason: &'static str,
    message: &str,
    close: bool,
) -> pingora_error::Result<()> {
    METRICS.rejected.with_label_values(&[route, reason]).inc();
    unavailable(session, message, close).await
}

/// Whether the request carries a body (declared length above zero, or chunked).
pub fn has_body(session: &Session) -> bool {
    let req = session.req_header();
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return true;
    }
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0")
}
