//! The client stream as pingora's proxy gets it for one request: it may read that request's
//! bytes and no more. A request pipelined behind it stays pollgate's, so it is judged by the
//! validator and served like any other.
//!
//! pingora reads the head and the start of the body from the prefix the connection loop hands
//! it, then the rest of the body from the socket, then waits on the socket for the client to
//! leave while it proxies. Past the body's end this wrapper gives pingora nothing: bytes that
//! arrive are kept aside (and handed back to the loop when pingora is done) and the read stays
//! pending; only the client's close is passed on. Without it, pingora takes the next request's
//! first bytes for "data after the end of the body" and fails the request it is serving.

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of the next request kept aside; past this the socket is not read until pingora is done.
const MAX_KEPT: usize = 64 * 1024;

#[derive(Debug)]
pub struct Handover {
    inner: Stream,
    /// Socket bytes that still belong to this request (`None`: no bound, for bodies whose end
    /// only pingora finds, and for tunnels).
    left: Option<u64>,
    /// What arrived past the bound.
    kept: BytesMut,
}

impl Handover {
    pub fn new(inner: Stream, left: Option<u64>) -> Handover {
        Handover {
            inner,
            left,
            kept: BytesMut::new(),
        }
    }

    /// The client stream and the bytes read past this request.
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.inner, self.kept)
    }
}

impl AsyncRead for Handover {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.left {
            None => Pin::new(&mut this.inner).poll_read(cx, buf),
            Some(left) if left > 0 => {
                // Never more than this request's bytes.
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

impl AsyncWrite for Handover {
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
impl Shutdown for Handover {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Handover {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

// Passed on, so that pingora's session knows the client came over TLS (its digest, and
// `X-Forwarded-Proto: https`).
impl Ssl for Handover {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Handover {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for Handover {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Handover {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Handover {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
