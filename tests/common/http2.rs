//! HTTP/2 clients for tests, on the `h2` crate so that a test controls streams exactly: one
//! connection for many requests, and `RST_STREAM` when it says so.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;

pub type H2 = h2::client::SendRequest<Bytes>;

/// A prior-knowledge cleartext HTTP/2 connection (h2c).
pub async fn h2c(addr: SocketAddr) -> H2 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp)
        .await
        .unwrap_or_else(|e| panic!("h2c handshake with {addr}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// HTTP/2 over TLS, negotiated by ALPN (the server must pick `h2`).
pub async fn h2_tls(ca: &super::tls::TestCa, addr: SocketAddr) -> H2 {
    let s = ca.connect(addr, b"\x02h2\x08http/1.1").await;
    assert_eq!(
        s.ssl().selected_alpn_protocol(),
        Some(&b"h2"[..]),
        "the server did not choose h2"
    );
    let (send, conn) = h2::client::handshake(s)
        .await
        .unwrap_or_else(|e| panic!("h2 handshake with {addr}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A GET on `conn`; the request stream stays open for the caller (to reset it).
pub async fn start(
    conn: &H2,
    path: &str,
    headers: &[(&str, &str)],
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut req = http::Request::get(format!("https://localhost{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut conn = conn.clone().ready().await.expect("connection ready");
    conn.send_request(req.body(()).unwrap(), true)
        .expect("stream opened")
}

/// An answer read whole.
#[derive(Debug)]
pub struct H2Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl H2Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// Reads an answer to its end (within 30 s).
pub async fn read(resp: h2::client::ResponseFuture) -> H2Resp {
    tokio::time::timeout(Duration::from_secs(30), async {
        let resp = resp.await.expect("an answer");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("body data");
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        H2Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    })
    .await
    .expect("the answer within 30 s")
}

/// One GET, read whole.
pub async fn get(conn: &H2, path: &str, headers: &[(&str, &str)]) -> H2Resp {
    read(start(conn, path, headers).await.0).await
}
