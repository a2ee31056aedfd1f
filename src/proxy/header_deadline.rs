//! Slowloris defence: a client must deliver each request head within `header_read_timeout`.
//!
//! pingora times out each *read*, not the whole head, so a client trickling one byte every few
//! seconds could hold a connection forever. [`HeaderDeadlineApp`] wraps every accepted stream in
//! [`HeaderDeadline`], which watches the bytes it reads for the end of a request head and fails
//! the read once the deadline passes. It stops watching for good once the connection is
//! upgraded (a `101` response), so WebSocket tunnels are never cut by it.
//!
//! It also carries bytes handed back by the cache fast path (see `connection.rs`): a request
//! head read there but answered by pingora is replayed to pingora's parser first.

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
enum Phase {
    /// Reading a request head; it must be complete by the deadline.
    Head,
    /// Head complete: body and response follow.
    Body,
    /// Waiting for the next request on a keep-alive connection (idle time is pingora's
    /// keep-alive timeout); the deadline starts with its first byte.
    Idle,
    /// Upgraded: not HTTP any more.
    Tunnel,
}

/// A stream that enforces the request-head deadline.
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    /// Only armed while a head is incomplete: most heads arrive in one read and cost no timer.
    timer: Option<Pin<Box<Sleep>>>,
    started: Instant,
    /// The last bytes seen, to find `\r\n\r\n` across reads.
    tail: u32,
    /// Bytes already read (and scanned) once, to be read again before the socket.
    replay: Bytes,
}

impl HeaderDeadline {
    pub fn new(inner: Stream, timeout: Duration) -> HeaderDeadline {
        HeaderDeadline {
            inner,
            timeout,
            phase: Phase::Head,
            // The first head of a connection is timed from the accept.
            timer: Some(Box::pin(tokio::time::sleep(timeout))),
            started: Instant::now(),
            tail: 0,
            replay: Bytes::new(),
        }
    }

    /// The current request head is complete (it was read whole earlier, behind another
    /// request): stop timing it, so its body is not mistaken for a slow head.
    pub fn head_complete(&mut self) {
        if !matches!(self.phase, Phase::Tunnel) {
            self.phase = Phase::Body;
            self.timer = None;
        }
    }

    /// Makes `bytes` the next bytes read, ahead of the socket's. They were scanned when first
    /// read, so the deadline state is not touched again.
    pub fn replay(&mut self, bytes: Bytes) {
        debug_assert!(self.replay.is_empty(), "one replay at a time");
        self.replay = bytes;
    }

    /// Feeds read bytes to the end-of-head scanner; `true` once `\r\n\r\n` was seen.
    #[cfg(test)]
    fn scan(&mut self, bytes: &[u8]) -> bool {
        scan(&mut self.tail, bytes)
    }
}

/// Finds `\r\n\r\n` across reads; `tail` carries the last bytes seen.
fn scan(tail: &mut u32, bytes: &[u8]) -> bool {
    // A head normally ends its read: look there first and skip the byte loop.
    if bytes.ends_with(b"\r\n\r\n") {
        *tail = 0;
        return true;
    }
    for &b in bytes {
        *tail = (*tail << 8) | b as u32;
        if *tail == 0x0d0a_0d0a {
            *tail = 0;
            return true;
        }
    }
    false
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        if matches!(this.phase, Phase::Head) {
            if let Some(t) = this.timer.as_mut() {
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received within header_read_timeout",
                    )));
                }
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let new_len = buf.filled().len() - before;
            if new_len > 0 {
                if matches!(this.phase, Phase::Idle) {
                    this.phase = Phase::Head;
                    this.started = Instant::now();
                    this.tail = 0;
                }
                if matches!(this.phase, Phase::Head) {
                    let done = scan(&mut this.tail, &buf.filled()[before..]);
                    if done {
                        this.phase = Phase::Body;
                        this.timer = None;
                    } else if this.timer.is_none() {
                        let deadline = this.started + this.timeout;
                        let mut t = Box::pin(tokio::time::sleep_until(deadline));
                        // Register for the wake-up now, since the next poll may find no data.
                        let _ = t.as_mut().poll(cx);
                        this.timer = Some(t);
                    }
                }
            }
        }
        res
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Body) && data.len() >= 12 && data.starts_with(b"HTTP/1.") {
            match &data[9..12] {
                b"101" => this.phase = Phase::Tunnel,
                // Other interim responses (100 Continue) still have a request body to come.
                [b'1', _, _] => {}
                _ => this.phase = Phase::Idle,
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Body) {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                if first.len() >= 12 && first.starts_with(b"HTTP/1.") {
                    match &first[9..12] {
                        b"101" => this.phase = Phase::Tunnel,
                        [b'1', _, _] => {}
                        _ => this.phase = Phase::Idle,
                    }
                }
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_a_head_across_reads() {
        let (a, _b) = tokio_test_pair();
        let mut d = HeaderDeadline {
            inner: a,
            timeout: Duration::from_secs(1),
            phase: Phase::Head,
            timer: None,
            started: Instant::now(),
            tail: 0,
            replay: Bytes::new(),
        };
        assert!(!d.scan(b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(!d.scan(b"\n\r"));
        assert!(d.scan(b"\n"));
    }

    fn tokio_test_pair() -> (Stream, ()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let c = tokio::net::TcpStream::connect(addr).await.unwrap();
            pingora_core::protocols::l4::stream::Stream::from(c)
        });
        (Box::new(s), ())
    }
}
