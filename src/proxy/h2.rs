//! HTTP/2 connections: told apart at accept (ALPN `h2` on the TLS listener, or with `h2c: true`
//! the cleartext connection preface) and served by pingora's HTTP/2 server, each stream as one
//! request to [`super::Gateway`], which answers polls, EventSource streams and proxying with
//! the same poll core, header rules and router as pollgate's HTTP/1.1 connection loop.
//!
//! The loop's fast paths read and write HTTP/1.1 bytes; HTTP/2 frames, HPACK and flow control
//! are pingora's (the `h2` crate's). A held poll on an HTTP/2 stream waits on that stream
//! alone, and a client's `RST_STREAM` ends the wait (pingora's `read_body_or_idle`).

use bytes::BytesMut;
use pingora_core::protocols::{Stream, ALPN};
use tokio::io::AsyncReadExt;

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the TLS handshake chose HTTP/2.
pub fn negotiated(stream: &Stream) -> bool {
    matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
}

/// What a cleartext connection's first bytes say.
pub enum Opening {
    /// The HTTP/2 preface (with whatever followed it in the same reads), to be replayed to
    /// pingora's HTTP/2 server ([`super::passthrough::Passthrough::replaying`]).
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
