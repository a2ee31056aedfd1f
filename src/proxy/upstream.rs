//! Upstream connections for pollgate's own requests (forwarded requests on pollgate's
//! connections, poll fallbacks, `auth_request` checks): pingora-core's transport connector,
//! an idle pool of pollgate's own, and pingora's HTTP/1 client session for the fallbacks and
//! auth checks (the forward path reads answers itself: `forward.rs` says why). Also the one mapping from upstream failures to statuses and metric labels,
//! shared with `Gateway::fail_to_proxy`.
//!
//! Why not pingora's pool: it spawns a task to watch every released connection and hands the
//! connection back through a lock that task holds, a task spawn and two wake-ups per request;
//! measured side by side (docs/benchmarks.md) it halved plain-proxy throughput. Here an idle
//! connection just waits in a list; whether it is still usable is asked of the kernel when it
//! is taken (a non-blocking peek: closed, or holding bytes nobody asked for, it is dropped).
//! For sessions, framing, keep-alive and reuse decisions stay pingora's (`HttpSession::reuse`).

use crate::config::Upstream;
use dashmap::DashMap;
use parking_lot::Mutex;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::Stream;
use pingora_error::{Error, ErrorSource, ErrorType};
use std::net::SocketAddr;
use std::time::Instant;

/// Idle connections kept per upstream.
const MAX_IDLE: usize = 256;

/// Connections to every upstream. One lives in the gateway state for the process's life.
#[derive(Default)]
pub struct UpstreamClient {
    idle: DashMap<SocketAddr, Mutex<Vec<(Stream, Instant)>>>,
}

pub use crate::connect::peer;

impl UpstreamClient {
    /// A connection to `up`: an idle one when one is usable, else a new one. `.1`: it was
    /// reused.
    pub async fn stream(&self, up: &Upstream) -> Result<(Stream, bool), Failure> {
        if let Some(s) = self.take_idle(up) {
            return Ok((s, true));
        }
        let stream = crate::connect::stream(up, false)
            .await
            .map_err(|e| Failure::of(&e))?;
        Ok((stream, false))
    }

    /// Keeps a connection whose last answer was read whole, with nothing after it, for the
    /// next request to `up`.
    pub fn put_back(&self, up: &Upstream, stream: Stream) {
        if !up.keepalive {
            return;
        }
        let list = self.idle.entry(up.socket_addr).or_default();
        let mut idle = list.lock();
        if idle.len() < MAX_IDLE {
            idle.push((stream, Instant::now()));
        }
    }

    /// A pingora HTTP/1 client session to `up` (poll fallbacks, auth checks), on an idle
    /// connection when one is usable. `.1`: it was reused.
    pub async fn session(&self, up: &Upstream) -> Result<(HttpSession, bool), Failure> {
        let peer = peer(up, false);
        let (stream, reused) = self.stream(up).await?;
        let mut s = HttpSession::new_with_options(stream, &peer);
        s.read_timeout = peer.options.read_timeout;
        s.write_timeout = peer.options.write_timeout;
        Ok((s, reused))
    }

    /// Gives a finished session back: its connection waits for the next request if pingora's
    /// client finds it reusable (the answer was read whole, nothing more came, keep-alive) and
    /// the upstream allows keep-alive; otherwise it is closed.
    pub async fn release(&self, mut session: HttpSession, up: &Upstream) {
        if !up.keepalive {
            session.shutdown().await;
            return;
        }
        session.respect_keepalive();
        if let Some(stream) = session.reuse().await {
            self.put_back(up, stream);
        }
    }

    /// The newest idle connection to `up` that is still usable: younger than `idle_timeout`,
    /// not closed by the upstream, holding no bytes nobody asked for (a stray `408` taken as
    /// this request's answer would be a wrong answer).
    fn take_idle(&self, up: &Upstream) -> Option<Stream> {
        let list = self.idle.get(&up.socket_addr)?;
        loop {
            let (stream, since) = list.lock().pop()?;
            if since.elapsed() < up.idle_timeout && quiet(&stream) {
                return Some(stream);
            }
        }
    }
}

/// Whether an idle connection has neither been closed nor written to: one non-blocking
/// `MSG_PEEK` asks the kernel (the runtime may not have seen what arrived while this thread was
/// busy).
fn quiet(stream: &Stream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut probe = [0u8; 1];
    matches!(
        recv(
            stream.id(),
            &mut probe,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
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
