//! WebSocket tunnels on pollgate's own connections: the slots a tunnel holds under
//! `max_websockets`, its place in the metrics, and the relay of the two sockets once the
//! upstream has switched protocols.
//!
//! The handshake itself is a forward (`forward.rs` with `Client::tunnel`): the request goes
//! upstream with the one header rule (`headers.rs`, `Upgrade` kept, `Connection: upgrade`), the
//! same bytes pingora's proxy sends, and an answer other than `101` is relayed like any forwarded
//! answer. After a `101` pollgate owns both sockets and copies bytes between them itself.
//!
//! Why not pingora's tunnel: it moves every read through its HTTP task pipe (a channel between
//! an upstream and a downstream half, body framing on both), where this relay reads into a
//! buffer and writes it to the other socket. Measured side by side (docs/benchmarks.md,
//! scenario 5). pingora's tunnel still serves handshakes with a body and `fast_paths: false`.
//!
//! The relay is a TCP relay: an end of stream from one side is passed on as a half-close to the
//! other, whose bytes keep flowing until it closes too. The tunnel is closed when no byte has
//! crossed either way for the upstream's `websocket_idle_timeout`.

use super::router::RouteEntry;
use crate::config::Limits;
use crate::limits::{self, Slot};
use crate::metrics::METRICS;
use pingora_core::protocols::Stream;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The `503` message when a tunnel cap is full.
pub const REFUSED: &str = "too many WebSocket tunnels";

/// The global and the per-route tunnel slot, held for the tunnel's life.
pub struct Slots {
    _global: Slot,
    _route: Option<Slot>,
}

/// A tunnel's slots under `max_websockets` (all routes) and the route's own `max_websockets`,
/// or `None` (counted as refused) when either is full.
pub fn take_slots(all: &Arc<AtomicUsize>, limits: &Limits, entry: &RouteEntry) -> Option<Slots> {
    let global = limits::try_take(all, limits.max_websockets);
    let route = match (global.is_some(), entry.route.max_websockets) {
        (true, Some(max)) => limits::try_take(&entry.websockets, max).map(Some),
        (true, None) => Some(None),
        (false, _) => None,
    };
    match (global, route) {
        (Some(g), Some(r)) => Some(Slots {
            _global: g,
            _route: r,
        }),
        _ => {
            METRICS
                .rejected
                .with_label_values(&[&entry.route.name, "max_websockets"])
                .inc();
            None
        }
    }
}

/// An open tunnel in the metrics: counted when the upstream switched protocols, and no longer
/// active when dropped, however the tunnel ends.
pub struct Open(());

impl Open {
    pub fn counted() -> Open {
        METRICS.websocket_active.inc();
        METRICS.websocket_total.inc();
        Open(())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        METRICS.websocket_active.dec();
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed their end.
    Closed,
    /// Nothing crossed either way for the idle timeout.
    Idle,
    /// A read or write failed (a reset, a socket gone).
    Failed,
}

impl Ended {
    /// The access log's `error` field.
    pub fn error(self) -> &'static str {
        match self {
            Ended::Closed => "",
            Ended::Idle => "idle_timeout",
            Ended::Failed => "io_error",
        }
    }
}

/// Relays bytes both ways between the client and the upstream until both have closed, one
/// fails, or nothing has crossed for `idle`. `early`: what the client sent after its handshake
/// before the switch, which the upstream gets first.
pub async fn relay(
    client: &mut Stream,
    early: &[u8],
    mut upstream: Stream,
    idle: Duration,
) -> Ended {
    if !early.is_empty() {
        let sent = async {
            upstream.write_all(early).await?;
            upstream.flush().await
        };
        match tokio::time::timeout(idle, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ended::Failed,
            Err(_) => return Ended::Idle,
        }
    }
    let base = Instant::now();
    // Milliseconds since `base` of the last read that brought bytes, either way.
    let last = AtomicU64::new(0);
    let mut a = Watched {
        io: client,
        last: &last,
        base,
    };
    let mut b = Watched {
        io: &mut upstream,
        last: &last,
        base,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    // One timer for the tunnel, moved on only when it fires: a read stamps the time, it does
    // not touch the timer.
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            done = &mut copy => {
                return if done.is_ok() { Ended::Closed } else { Ended::Failed };
            }
            _ = &mut sleep => {
                let quiet_since = base + Duration::from_millis(last.load(Ordering::Relaxed));
                let due = quiet_since + idle;
                if due <= Instant::now() {
                    return Ended::Idle;
                }
                sleep.as_mut().reset(due.into());
            }
        }
    }
}

/// One side of the relay, stamping the time of every read that brings bytes.
struct Watched<'a> {
    io: &'a mut Stream,
    last: &'a AtomicU64,
    base: Instant,
}

impl AsyncRead for Watched<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let ms = this.base.elapsed().as_millis() as u64;
            this.last.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Watched<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}
