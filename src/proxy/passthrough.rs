//! The client stream as pollgate hands it to pingora: the same socket, with what pollgate read
//! of it accounted for. One wrapper serves both hand-overs:
//!
//! - h2c ([`Passthrough::replaying`]): the preface check read the connection's first bytes;
//!   pingora's HTTP/2 server must read them again, so they are replayed before the socket.
//! - One HTTP/1.1 request ([`Passthrough::bounded`]): pingora may read that request's bytes and
//!   no more. A request pipelined behind it stays pollgate's, so it is judged by the validator
//!   and served like any other. pingora reads the head and the start of the body from the
//!   prefix the connection loop hands it, then the rest of the body from the socket, then waits
//!   on the socket for the client to leave while it proxies. Past the body's end this wrapper
//!   gives pingora nothing: bytes that arrive are kept aside (and handed back to the loop when
//!   pingora is done) and the read stays pending; only the client's close is passed on. Without
//!   it, pingora takes the next request's first bytes for "data after the end of the body" and
//!   fails the request it is serving.
//!
//! Writes: pollgate's client sockets have no write buffer of their own (see `server.rs`), so
//! pingora's HTTP/1 session, which writes a head and then each piece of the body and flushes
//! when it must, gets here the buffer pingora's listener would have given it: a head and a
//! short body leave in one segment, as they would without pollgate's accept loop. HTTP/2
//! (`replaying`) buffers its frames itself and writes straight through.
//!
//! Everything else (shutdown, the TLS and socket digests) is the socket's own.

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// Bytes of the next request kept aside; past this the socket is not read until pingora is done.
const MAX_KEPT: usize = 64 * 1024;

#[derive(Debug)]
pub struct Passthrough {
    /// The socket; a zero-capacity `BufWriter` writes straight through. Always `Some` but in
    /// `into_parts` (an `Option` so it can move out of a type with a `Drop`).
    inner: Option<BufWriter<Stream>>,
    /// Bytes read from the socket before the hand-over, read again first.
    prefix: BytesMut,
    /// Socket bytes (beyond `prefix`) that still belong to the reader (`None`: no bound, for
    /// h2c, for bodies whose end only pingora finds, and for tunnels).
    left: Option<u64>,
    /// What arrived past the bound.
    kept: BytesMut,
}

impl Passthrough {
    /// A stream whose first bytes were already read: they are read again first.
    pub fn replaying(inner: Stream, prefix: BytesMut) -> Passthrough {
        Passthrough {
            inner: Some(BufWriter::with_capacity(0, inner)),
            prefix,
            left: None,
            kept: BytesMut::new(),
        }
    }

    /// A stream of which at most `left` more bytes are read (`None`: no bound).
    pub fn bounded(inner: Stream, left: Option<u64>) -> Passthrough {
        Passthrough {
            inner: Some(BufWriter::with_capacity(
                DEFAULT_L4_WRITE_BUFFER_SIZE,
                inner,
            )),
            prefix: BytesMut::new(),
            left,
            kept: BytesMut::new(),
        }
    }

    /// The client stream and the bytes read of it that the reader did not take: what is left
    /// of the prefix, then what arrived past the bound. Writes still buffered are lost: flush
    /// first.
    pub fn into_parts(mut self) -> (Stream, BytesMut) {
        let inner = self.inner.take().expect("the stream is taken only here");
        debug_assert!(inner.buffer().is_empty(), "unflushed writes");
        let mut rest = std::mem::take(&mut self.prefix);
        rest.extend_from_slice(&self.kept);
        (inner.into_inner(), rest)
    }

    fn io(&self) -> &BufWriter<Stream> {
        self.inner
            .as_ref()
            .expect("the stream is taken only by into_parts")
    }

    fn io_mut(&mut self) -> &mut BufWriter<Stream> {
        self.inner
            .as_mut()
            .expect("the stream is taken only by into_parts")
    }
}

impl Drop for Passthrough {
    /// As pingora's own stream does: a last try to send what is buffered, without waiting
    /// (pingora drops a stream it failed to proxy on without flushing it, and what it wrote of
    /// a cut answer must still reach the client).
    fn drop(&mut self) {
        if let Some(io) = &mut self.inner {
            let _ = Pin::new(io).poll_flush(&mut Context::from_waker(Waker::noop()));
        }
    }
}

impl AsyncRead for Passthrough {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        match this.left {
            None => Pin::new(this.io_mut()).poll_read(cx, buf),
            Some(left) if left > 0 => {
                // Never more than the reader's bytes.
                let room = (buf.remaining() as u64).min(left) as usize;
                let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
                let res = Pin::new(this.io_mut()).poll_read(cx, &mut limited);
                let n = limited.filled().len();
                buf.advance(n);
                this.left = Some(left - n as u64);
                res
            }
            Some(_) => {
                if this.kept.len() >= MAX_KEPT {
                    return Poll::Pending;
                }
                let mut chunk = [0u8; 4096];
                let mut side = ReadBuf::new(&mut chunk);
                match Pin::new(this.io_mut()).poll_read(cx, &mut side) {
                    // The client closed: pingora should know.
                    Poll::Ready(Ok(())) if side.filled().is_empty() => Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => {
                        this.kept.extend_from_slice(side.filled());
                        // The next request's bytes are not pingora's: nothing more to read
                        // (no waker is due; pingora waits on the upstream meanwhile).
                        Poll::Pending
                    }
                    other => other,
                }
            }
        }
    }
}

impl AsyncWrite for Passthrough {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io_mut()).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io_mut()).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io().is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Passthrough {
    async fn shutdown(&mut self) {
        // What is still buffered goes out before the socket is shut.
        let _ = self.io_mut().flush().await;
        Shutdown::shutdown(&mut **self.io_mut().get_mut()).await
    }
}

impl UniqueID for Passthrough {
    fn id(&self) -> UniqueIDType {
        self.io().get_ref().id()
    }
}

// Passed on, so that pingora's session knows the client came over TLS (its digest, and
// `X-Forwarded-Proto: https`).
impl Ssl for Passthrough {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.io().get_ref().get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.io().get_ref().get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.io().get_ref().selected_alpn_proto()
    }
}

impl GetTimingDigest for Passthrough {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.io().get_ref().get_timing_digest()
    }
}

impl GetProxyDigest for Passthrough {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.io().get_ref().get_proxy_digest()
    }
}

impl GetSocketDigest for Passthrough {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.io().get_ref().get_socket_digest()
    }
}

#[async_trait]
impl Peek for Passthrough {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        // A peek at the socket would skip the replayed bytes, so none is offered while they
        // are pending. Nothing peeked makes pingora's h2c check trust its `h2c` option, which
        // is only set when `h2c: true` sent a replayed preface there.
        if !self.prefix.is_empty() {
            return Ok(false);
        }
        self.io_mut().get_mut().try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The server side of a loopback connection, and its client.
    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = l.accept().await.unwrap();
        let s: pingora_core::protocols::l4::stream::Stream = s.into();
        (Box::new(s), c)
    }

    #[tokio::test]
    async fn a_replayed_prefix_is_read_before_the_socket() {
        let (s, mut c) = pair().await;
        let mut p = Passthrough::replaying(s, BytesMut::from(&b"first "[..]));
        c.write_all(b"then the socket").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        p.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got,
            b"first then the socket",
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }

    #[tokio::test]
    async fn past_its_bound_a_reader_gets_nothing_and_the_rest_is_handed_back() {
        let (s, mut c) = pair().await;
        let mut p = Passthrough::bounded(s, Some(4));
        c.write_all(b"bodyNEXT").await.unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            let mut chunk = [0u8; 64];
            let n = p.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {got:?}");
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, b"body");
        // The next request's bytes are read aside; every read meanwhile is left waiting.
        while p.kept.len() < 4 {
            let mut chunk = [0u8; 64];
            let read = p.read(&mut chunk).now_or_never();
            assert!(read.is_none(), "the reader was given {read:?} ({chunk:?})");
            tokio::task::yield_now().await;
        }
        let (_, rest) = p.into_parts();
        assert_eq!(&rest[..], b"NEXT");
    }

    #[tokio::test]
    async fn what_pingora_wrote_reaches_the_client_even_unflushed() {
        let (s, mut c) = pair().await;
        let mut p = Passthrough::bounded(s, Some(0));
        // A head and the start of a body, as pingora writes them before an upstream fails.
        p.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            .await
            .unwrap();
        p.write_all(b"abc").await.unwrap();
        drop(p);
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
}
