//! HTTP/2 connections: told apart at accept (ALPN `h2` on the TLS listener, or with `h2c: true`
//! the cleartext connection preface) and served by pingora's HTTP/2 server, each stream as one
//! request to [`super::Gateway`], which answers polls, EventSource streams and proxying with
//! the same poll core, header rules and router as pollgate's HTTP/1.1 connection loop.
//!
//! The loop's fast paths read and write HTTP/1.1 bytes; HTTP/2 frames, HPACK and flow control
//! are pingora's (the `h2` crate's). A held poll on an HTTP/2 stream waits on that stream
//! alone, and a client's `RST_STREAM` ends the wait (pingora's `read_body_or_idle`).

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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the TLS handshake chose HTTP/2.
pub fn negotiated(stream: &Stream) -> bool {
    matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
}

/// What a cleartext connection's first bytes say.
pub enum Opening {
    /// The HTTP/2 preface (with whatever followed it in the same reads).
    H2(BytesMut),
    /// Anything else: HTTP/1, these bytes already read.
    H1(BytesMut),
    /// Closed, failed, or silent past `limit`.
    Gone,
}

/// Reads a cleartext connection's first bytes only as far as they match the HTTP/2 preface: an
/// HTTP/1 request differs at its first or second byte, so it is never read further here than
/// the loop would read it anyway.
pub async fn sniff(io: &mut Stream, limit: std::time::Duration) -> Opening {
    let mut buf = BytesMut::with_capacity(PREFACE.len());
    let read = async {
        loop {
            let n = buf.len().min(PREFACE.len());
            if buf[..n] != PREFACE[..n] {
                return true;
            }
            if n == PREFACE.len() {
                return true;
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(true) if buf.starts_with(PREFACE) => Opening::H2(buf),
        Ok(true) => Opening::H1(buf),
        _ => Opening::Gone,
    }
}

/// A stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Replay {
    inner: Stream,
    prefix: BytesMut,
}

impl Replay {
    pub fn new(inner: Stream, prefix: BytesMut) -> Replay {
        Replay { inner, prefix }
    }
}

impl AsyncRead for Replay {
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
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
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
impl Shutdown for Replay {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Replay {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Replay {
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

impl GetTimingDigest for Replay {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for Replay {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Replay {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

// The default `try_peek` (nothing peeked) makes pingora's h2c check trust its `h2c` option,
// which is only set when `h2c: true` sent the connection here.
#[async_trait]
impl Peek for Replay {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// The server side of a loopback connection whose client sends `bytes` (then closes when
    /// `close`).
    async fn opened_with(bytes: &'static [u8], close: bool) -> (Stream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Two writes (often two reads): the check must not take a first part for the whole.
        let (a, b) = bytes.split_at(bytes.len() / 2);
        c.write_all(a).await.unwrap();
        c.flush().await.unwrap();
        c.write_all(b).await.unwrap();
        if close {
            c.shutdown().await.unwrap();
        }
        let s: pingora_core::protocols::l4::stream::Stream = s.into();
        (Box::new(s), c)
    }

    #[tokio::test]
    async fn the_preface_is_http2_and_anything_else_is_handed_back_whole() {
        let mut preface = PREFACE.to_vec();
        preface.extend_from_slice(b"\x00\x00\x00\x04");
        let bytes: &'static [u8] = preface.leak();
        let (mut s, _c) = opened_with(bytes, false).await;
        match sniff(&mut s, Duration::from_secs(5)).await {
            Opening::H2(read) => assert!(read.starts_with(PREFACE), "{read:?}"),
            _ => panic!("the preface was not recognised"),
        }

        // HTTP/1 differs at once; what was read goes back to the loop.
        let (mut s, _c) = opened_with(b"GET / HTTP/1.1\r\n\r\n", false).await;
        match sniff(&mut s, Duration::from_secs(5)).await {
            Opening::H1(read) => assert!(
                b"GET / HTTP/1.1\r\n\r\n".starts_with(&read) && !read.is_empty(),
                "{read:?}"
            ),
            _ => panic!("an HTTP/1 request was not handed back"),
        }
        // Even one that begins like the preface (`PRI` is a valid HTTP/1 method name).
        let (mut s, _c) = opened_with(b"PRI /x HTTP/1.1\r\n\r\n", false).await;
        assert!(matches!(
            sniff(&mut s, Duration::from_secs(5)).await,
            Opening::H1(_)
        ));

        // A client that stops inside the preface is gone.
        let (mut s, _c) = opened_with(b"PRI * HTTP/2.0\r\n", true).await;
        assert!(matches!(
            sniff(&mut s, Duration::from_secs(5)).await,
            Opening::Gone
        ));
    }
}
