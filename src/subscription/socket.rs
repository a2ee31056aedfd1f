//! Opening an upstream WebSocket for a subscription.

use crate::config::Upstream;
use pingora_core::protocols::Stream;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// How far over the route's `max_message_bytes` a frame (or a fragmented message) is still read:
/// the hub then drops and counts it and the socket stays up. A larger one is refused by
/// tungstenite on its header, before any of its payload is buffered (tungstenite reserves a
/// frame's announced length up front), and the socket is closed. So one socket buffers about
/// `max_message_bytes` (at most [`crate::config::MAX_MESSAGE_BYTES_LIMIT`]) plus this.
pub const OVERSIZE_SLACK: usize = 64 << 10;

/// Read buffer per subscription socket. tungstenite zero-fills its read buffer before reading
/// into it, so each socket keeps all of it resident (its default, 128 KiB, is 1.2 GiB for 10 000
/// per-topic sockets); larger frames still arrive whole, over more reads.
const READ_BUFFER_BYTES: usize = 8 << 10;

/// The largest frame and message a socket of a route with `max_message_bytes` accepts.
pub fn frame_limit(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_add(OVERSIZE_SLACK)
}

/// What a read error says about the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFault {
    /// A frame or message over [`frame_limit`]: refused before it was buffered.
    Oversize,
    /// An invalid frame (bad UTF-8, bad opcode or bits, ...): the backend is broken.
    Violation,
    /// The connection dropped (EOF without a close frame, reset, I/O error).
    Dropped,
}

pub fn read_fault(e: &WsError) -> ReadFault {
    match e {
        WsError::Capacity(_) => ReadFault::Oversize,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ReadFault::Dropped,
        WsError::Protocol(_) | WsError::Utf8(_) | WsError::AttackAttempt => ReadFault::Violation,
        _ => ReadFault::Dropped,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(String),
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("bad subscription request: {0}")]
    Request(String),
    #[error("WebSocket handshake with {addr}{path} failed: {reason}")]
    Handshake {
        addr: String,
        path: String,
        reason: String,
    },
}

/// A subscription: TCP, or TLS when the upstream has `tls` (pingora's stream either way).
pub type Socket = WebSocketStream<Stream>;

/// Opens a subscription socket whose frames are limited by the route's `max_message_bytes`.
pub async fn connect(
    up: &Upstream,
    path: &str,
    headers: &[(String, String)],
    max_message_bytes: usize,
) -> Result<Socket, ConnectError> {
    // pingora's connector (TCP with nodelay, then TLS when the upstream has it, all within
    // `connect_timeout`), so `wss://` is the same OpenSSL and settings as `https://`.
    let io = crate::connect::stream(up, true).await.map_err(|e| {
        if e.etype() == &pingora_error::ErrorType::ConnectTimedout {
            ConnectError::Timeout(up.address.clone())
        } else {
            ConnectError::Connect {
                addr: up.address.clone(),
                reason: e.to_string(),
            }
        }
    })?;
    let host = up.host.as_deref().unwrap_or(&up.address);
    let scheme = if up.tls.is_some() { "wss" } else { "ws" };
    let mut req = format!("{scheme}://{host}{path}")
        .into_client_request()
        .map_err(|e| ConnectError::Request(e.to_string()))?;
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| ConnectError::Request(e.to_string()))?;
        let value =
            http::HeaderValue::from_str(v).map_err(|e| ConnectError::Request(e.to_string()))?;
        req.headers_mut().insert(name, value);
    }
    // The write buffer is a flush threshold, not an allocation: every frame sent here is small
    // and flushed at once, so its defaults cost nothing.
    let limit = frame_limit(max_message_bytes);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let handshake = tokio_tungstenite::client_async_with_config(req, io, Some(config));
    let (ws, _resp) =
        tokio::time::timeout(up.connect_timeout.max(Duration::from_secs(1)), handshake)
            .await
            .map_err(|_| ConnectError::Timeout(up.address.clone()))?
            .map_err(|e| ConnectError::Handshake {
                addr: up.address.clone(),
                path: path.to_string(),
                reason: e.to_string(),
            })?;
    Ok(ws)
}
