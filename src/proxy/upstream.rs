//! The one HTTP client pollgate uses for its own upstream requests (forwarded requests on
//! pollgate's connections, poll fallbacks, `auth_request` checks): pingora-core's HTTP/1
//! connector, client session and connection pool, the same code pingora's proxy runs. Also the
//! one mapping from upstream failures to statuses and metric labels, shared with
//! `Gateway::fail_to_proxy`.

use crate::config::Upstream;
use pingora_core::connectors::http::v1::Connector;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType};

/// Pooled HTTP/1 connections to every upstream. A cheap-clone handle would add nothing: one
/// lives in the gateway state for the process's life.
pub struct UpstreamClient {
    connector: Connector,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        UpstreamClient {
            connector: Connector::new(None),
        }
    }
}

/// The peer for a request to `up` (`tunnel`: a WebSocket handshake, idle for longer).
pub fn peer(up: &Upstream, tunnel: bool) -> HttpPeer {
    let mut peer = HttpPeer::new(up.socket_addr, false, String::new());
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

impl UpstreamClient {
    /// A session to `up`, reused from the pool when one is idle there. `.1`: it was reused.
    pub async fn session(&self, up: &Upstream) -> Result<(HttpSession, bool), Failure> {
        let peer = peer(up, false);
        let (mut s, reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| Failure::of(&e))?;
        s.read_timeout = peer.options.read_timeout;
        s.write_timeout = peer.options.write_timeout;
        Ok((s, reused))
    }

    /// Gives a finished session back to the pool if it can carry another request and the
    /// upstream allows keep-alive; closes it otherwise.
    pub async fn release(&self, session: HttpSession, up: &Upstream) {
        if !up.keepalive {
            let mut session = session;
            session.shutdown().await;
            return;
        }
        let peer = peer(up, false);
        self.connector
            .release_http_session(session, &peer, Some(up.idle_timeout))
            .await;
    }
}

/// Why an upstream exchange failed, as the answer and the metric name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    ConnectRefused,
    ConnectTimeout,
    ConnectError,
    ReadTimeout,
    WriteTimeout,
    /// The upstream closed early or answered something unreadable.
    Protocol,
    /// The client went away: nothing to answer.
    Downstream,
}

impl Failure {
    /// Classifies a pingora error from an upstream exchange.
    pub fn of(e: &Error) -> Failure {
        match e.etype() {
            ErrorType::ConnectTimedout => Failure::ConnectTimeout,
            ErrorType::ConnectRefused => Failure::ConnectRefused,
            ErrorType::ConnectNoRoute | ErrorType::ConnectError => Failure::ConnectError,
            ErrorType::ReadTimedout if e.esource() != &ErrorSource::Downstream => {
                Failure::ReadTimeout
            }
            ErrorType::WriteTimedout if e.esource() != &ErrorSource::Downstream => {
                Failure::WriteTimeout
            }
            _ if e.esource() == &ErrorSource::Downstream => Failure::Downstream,
            _ => Failure::Protocol,
        }
    }

    /// The status the client gets (0: none, the client is gone).
    pub fn status(self) -> u16 {
        match self {
            Failure::ConnectTimeout | Failure::ReadTimeout | Failure::WriteTimeout => 504,
            Failure::Downstream => 0,
            _ => 502,
        }
    }

    /// The `kind` label of `pollgate_upstream_errors_total`.
    pub fn kind(self) -> Option<&'static str> {
        Some(match self {
            Failure::ConnectRefused => "connect_refused",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::ConnectError => "connect_error",
            Failure::ReadTimeout => "read_timeout",
            Failure::WriteTimeout => "write_timeout",
            Failure::Protocol => "protocol",
            Failure::Downstream => return None,
        })
    }

    /// Counts the failure against its upstream.
    pub fn count(self, upstream: &str) {
        if let Some(kind) = self.kind() {
            crate::metrics::METRICS
                .upstream_errors
                .with_label_values(&[upstream, kind])
                .inc();
        }
    }
}
