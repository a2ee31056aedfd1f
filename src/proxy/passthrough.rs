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
//! Everything but reading (writes, shutdown, the TLS and socket digests) is the socket's own.

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of the next request kept aside; past this the socket is not read until pingora is done.
const MAX_KEPT: usize = 64 * 1024;

#[derive(Debug)]
pub struct Passthrough {
    inner: Stream,
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
            inner,
            prefix,
            left: None,
            kept: BytesMut::new(),
        }
    }

    /// A stream of which at most `left` more bytes are read (`None`: no bound).
    pub fn bounded(inner: Stream, left: Option<u64>) -> Passthrough {
        Passthrough {
            inner,
            prefix: BytesMut::new(),
            left,
            kept: BytesMut::new(),
        }
    }

    /// The client stream and the bytes read of it that the reader did not take: what is left
    /// of the prefix, then what arrived past the bound.
    pub fn into_parts(self) -> (Stream, BytesMut) {
        let mut rest = self.prefix;
        rest.extend_from_slice(&self.kept);
        (self.inner, rest)
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
            None => Pin::new(&mut this.inner).poll_read(cx, buf),
            Some(left) if left > 0 => {
                // Never more than the reader's bytes.
                let room = (buf.remaining() as u64).min(left) as usize;
                let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
                let res = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
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
                match Pin::new(&mut this.inner).poll_read(cx, &mut side) {
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
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
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
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Passthrough {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Passthrough {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

// Passed on, so that pingora's session knows the client came over TLS (its digest, and
// `X-Forwarded-Proto: https`).
impl Ssl for Passthrough {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Passthrough {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for Passthrough {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Passthrough {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
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
        self.inner.try_peek(buf).await
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
}
