//! How pollgate reaches a backend: one pingora transport connector for the process (TCP, and
//! OpenSSL for upstreams with `tls`), and the pingora peer that describes an upstream to it.
//! Every upstream connection is made here: forwards, poll fallbacks and `auth_request` checks
//! (`proxy::upstream`), pingora's proxy (`proxy::gateway`), and subscriptions, whose stream is
//! then handed to tokio-tungstenite, so `wss://` uses the same TLS library and settings as
//! `https://`.

use crate::config::Upstream;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use std::sync::OnceLock;

/// The process's connector. Its TLS context (with the system's roots) is built once; an
/// upstream's own `ca` is given per connection through its peer.
pub fn connector() -> &'static TransportConnector {
    static CONNECTOR: OnceLock<TransportConnector> = OnceLock::new();
    CONNECTOR.get_or_init(|| TransportConnector::new(None))
}

/// The peer for a connection to `up` (`tunnel`: a WebSocket, idle for longer).
pub fn peer(up: &Upstream, tunnel: bool) -> HttpPeer {
    let sni = up.tls.as_ref().map(|t| t.sni.clone()).unwrap_or_default();
    let mut peer = HttpPeer::new(up.socket_addr, up.tls.is_some(), sni);
    if let Some(tls) = &up.tls {
        peer.options.verify_cert = tls.verify;
        peer.options.verify_hostname = tls.verify;
        peer.options.ca = tls.ca.clone();
    }
    peer.options.connection_timeout = Some(up.connect_timeout);
    peer.options.read_timeout = Some(if tunnel {
        up.websocket_idle_timeout
    } else {
        up.read_timeout
    });
    peer.options.write_timeout = Some(up.write_timeout);
    peer.options.idle_timeout = Some(up.idle_timeout);
    peer
}

/// A new connection to `up`: TCP, then the TLS handshake when `up` has `tls`, both within
/// `connect_timeout`.
pub async fn stream(up: &Upstream, tunnel: bool) -> pingora_core::Result<Stream> {
    connector().new_stream(&peer(up, tunnel)).await
}

/// Says loudly, once per load, which upstreams are reached without checking who answers.
pub fn warn_unverified(upstreams: &[std::sync::Arc<Upstream>]) {
    for up in upstreams {
        if up.tls.as_ref().is_some_and(|t| !t.verify) {
            tracing::warn!(
                upstream = %up.name,
                address = %up.address,
                "TLS VERIFICATION IS OFF for this upstream (`tls.verify: false`): anyone on the path can impersonate it; use only in tests"
            );
        }
    }
}
