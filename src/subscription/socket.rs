//! Opening an upstream WebSocket for a subscription.

use crate::config::Upstream;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// Frames larger than this close the socket inside tungstenite; smaller ones above the route's
/// `max_message_bytes` are dropped (and counted) by the hub, keeping the subscription alive.
pub const HARD_FRAME_LIMIT: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(String),
    #[error("connect to {addr}: {source}")]
    Tcp {
        addr: String,
        source: std::io::Error,
    },
    #[error("bad subscription request: {0}")]
    Request(String),
    #[error("WebSocket handshake with {addr}{path} failed: {reason}")]
    Handshake {
        addr: String,
        path: String,
        reason: String,
    },
}

pub type Socket = WebSocketStream<TcpStream>;

pub async fn connect(
    up: &Upstream,
    path: &str,
    headers: &[(String, String)],
) -> Result<Socket, ConnectError> {
    let tcp = tokio::time::timeout(up.connect_timeout, TcpStream::connect(up.socket_addr))
        .await
        .map_err(|_| ConnectError::Timeout(up.address.clone()))?
        .map_err(|source| ConnectError::Tcp {
            addr: up.address.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let host = up.host.as_deref().unwrap_or(&up.address);
    let mut req = format!("ws://{host}{path}")
        .into_client_request()
        .map_err(|e| ConnectError::Request(e.to_string()))?;
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| ConnectError::Request(e.to_string()))?;
        let value =
            http::HeaderValue::from_str(v).map_err(|e| ConnectError::Request(e.to_string()))?;
        req.headers_mut().insert(name, value);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(HARD_FRAME_LIMIT))
        .max_frame_size(Some(HARD_FRAME_LIMIT));
    let handshake = tokio_tungstenite::client_async_with_config(req, tcp, Some(config));
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
