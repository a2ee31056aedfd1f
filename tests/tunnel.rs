//! WebSocket tunnels relayed by pollgate itself (`src/proxy/tunnel.rs`): the edges of the relay.
//! A refused handshake is relayed as the backend answered it, bytes sent behind a handshake
//! reach the backend, an end of stream from either side is passed on as a half-close while the
//! other direction keeps flowing, and a tunnel is idle only when nothing crosses either way.
//! The test holds both ends: the client socket, and the upstream end from `accept_tunnel`.
//! (The cap's 503 is in `resilience.rs`, the idle timeout's lower bound in `foundation.rs`.)

mod common;

use common::raw_upstream::{accept_tunnel, RawUpstream, Script};
use common::wire::{Answer, Reader};
use common::{metric_value, Gateway, HEAD};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HANDSHAKE: &[u8] = b"GET /ws/chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// The longest wait for anything the test is owed.
const OWED: Duration = Duration::from_secs(10);

fn config(upstream: &str, fast_paths: bool, upstream_extra: &str) -> String {
    format!(
        r#"{HEAD}fast_paths: {fast_paths}
upstreams:
  backend:
    address: "{upstream}"
{upstream_extra}
routes:
  - name: default
    prefix: "/"
    upstream: backend
"#
    )
}

/// Sends the handshake (and `behind` in the same write) and reads the `101`; the socket and
/// what arrived after the `101` head.
async fn open(gw: &Gateway, behind: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = s.set_nodelay(true);
    let mut bytes = HANDSHAKE.to_vec();
    bytes.extend_from_slice(behind);
    s.write_all(&bytes).await.unwrap();
    let mut r = Reader::new(s).with_limit(OWED);
    let a = r.answer(false).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.status, 101, "{}", r.received());
    let after = r.pending().to_vec();
    let Reader { stream, .. } = r;
    (stream, after)
}

/// Reads until `want` bytes arrived (starting from `have`); fails with what arrived.
async fn read_exactly(s: &mut TcpStream, mut have: Vec<u8>, want: usize) -> Vec<u8> {
    while have.len() < want {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(OWED, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => have.extend_from_slice(&chunk[..n]),
            other => panic!(
                "{other:?} after {:?}, expected {want} bytes",
                String::from_utf8_lossy(&have)
            ),
        }
    }
    have
}

/// Waits for the end of stream; what arrived before it.
async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let r = tokio::time::timeout(OWED, s.read_to_end(&mut out)).await;
    assert!(
        matches!(r, Ok(Ok(_))),
        "{r:?}: no end of stream; received {:?}",
        String::from_utf8_lossy(&out)
    );
    out
}

/// Sends `req` and reads the answer on both paths, and on each a second request on the same
/// connection.
async fn refused_on(up: &RawUpstream, fast_paths: bool) -> (Answer, Answer) {
    let gw = Gateway::start(&config(&up.addr.to_string(), fast_paths, "")).await;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let mut r = Reader::new(s).with_limit(OWED);
    r.stream.write_all(HANDSHAKE).await.unwrap();
    let refused = r.answer(false).await.unwrap_or_else(|e| panic!("{e}"));
    r.stream
        .write_all(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let next = r.answer(false).await.unwrap_or_else(|e| panic!("{e}"));
    (refused, next)
}

#[tokio::test]
async fn a_refused_handshake_is_relayed_as_the_backend_answered_it() {
    let up = RawUpstream::start(|head| {
        if head.starts_with("GET /next ") {
            Script::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext".to_vec())
        } else {
            Script::Answer(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nX-Reason: not-you\r\n\
                  Content-Length: 7\r\n\r\ngo away"
                    .to_vec(),
            )
        }
    })
    .await;
    let (refused, next) = refused_on(&up, true).await;
    assert_eq!(refused.status, 403, "{}", refused.head);
    assert_eq!(refused.text(), "go away");
    assert_eq!(refused.header("x-reason").as_deref(), Some("not-you"));
    assert_eq!(refused.header("via").as_deref(), Some("1.1 pollgate"));
    // No switch happened: the connection carries the next request.
    assert_eq!((next.status, next.text().as_str()), (200, "next"));
    // The handshake went upstream with its Upgrade, as pingora's proxy sends it.
    let heads = up.heads();
    assert!(
        heads[0].contains("\r\nUpgrade: websocket\r\n")
            && heads[0].ends_with("Connection: upgrade"),
        "{heads:?}"
    );
    // pingora's tunnel relays the same answer.
    let (p_refused, p_next) = refused_on(&up, false).await;
    assert_eq!(p_refused.status, refused.status);
    assert_eq!(p_refused.body, refused.body);
    assert_eq!(p_refused.header("x-reason"), refused.header("x-reason"));
    assert_eq!(p_next.status, next.status);
    assert_eq!(
        up.heads()[2],
        heads[0],
        "the same handshake bytes on both paths"
    );
}

#[tokio::test]
async fn bytes_sent_behind_a_handshake_reach_the_backend_after_the_switch() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(&l.local_addr().unwrap().to_string(), true, "")).await;
    let (client, upstream) = tokio::join!(open(&gw, b"early frame"), accept_tunnel(&l));
    let (mut c, _) = client;
    let (mut u, head, behind) = upstream;
    assert!(head.starts_with("GET /ws/chat HTTP/1.1\r\n"), "{head}");
    let got = read_exactly(&mut u, behind, b"early frame".len()).await;
    assert_eq!(got, b"early frame");
    // And the tunnel carries on both ways.
    c.write_all(b"ping").await.unwrap();
    assert_eq!(read_exactly(&mut u, Vec::new(), 4).await, b"ping");
    u.write_all(b"pong").await.unwrap();
    assert_eq!(read_exactly(&mut c, Vec::new(), 4).await, b"pong");
}

#[tokio::test]
async fn a_client_half_close_reaches_the_backend_which_may_still_answer() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(&l.local_addr().unwrap().to_string(), true, "")).await;
    let (client, upstream) = tokio::join!(open(&gw, b""), accept_tunnel(&l));
    let (mut c, after) = client;
    let (mut u, _, _) = upstream;
    assert!(after.is_empty(), "{after:?}");
    c.write_all(b"last words").await.unwrap();
    c.shutdown().await.unwrap();
    // The backend reads everything, then the end of stream.
    assert_eq!(read_to_end(&mut u).await, b"last words");
    gw.wait_metric("pollgate_websocket_passthrough_active", |v| v == 1.0)
        .await;
    // Its answer still reaches the client, then its own close.
    u.write_all(b"late answer").await.unwrap();
    u.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut c).await, b"late answer");
    gw.wait_metric("pollgate_websocket_passthrough_active", |v| v == 0.0)
        .await;
}

#[tokio::test]
async fn a_backend_half_close_reaches_the_client_which_may_still_send() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Gateway::start_with(
        &config(&l.local_addr().unwrap().to_string(), true, ""),
        &["--log-format", "json"],
        &[],
    )
    .await;
    let (client, upstream) = tokio::join!(open(&gw, b""), accept_tunnel(&l));
    let (mut c, after) = client;
    let (mut u, _, _) = upstream;
    u.write_all(b"goodbye").await.unwrap();
    u.shutdown().await.unwrap();
    let got = read_to_end(&mut c).await;
    assert_eq!([after, got].concat(), b"goodbye");
    // The client's direction is still open.
    c.write_all(b"one more thing").await.unwrap();
    assert_eq!(
        read_exactly(&mut u, Vec::new(), 14).await,
        b"one more thing"
    );
    drop(c);
    assert_eq!(read_to_end(&mut u).await, b"");
    gw.wait_metric("pollgate_websocket_passthrough_active", |v| v == 0.0)
        .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "pollgate_websocket_passthrough_total"),
        1.0,
        "{m}"
    );
    // One access line for the tunnel, written when it ended.
    let deadline = std::time::Instant::now() + OWED;
    loop {
        let log = gw.log();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect();
        if let Some(v) = lines.first() {
            assert_eq!(lines.len(), 1, "{log}");
            assert_eq!(v["status"], 101, "{log}");
            assert_eq!(v["kind"], "websocket", "{log}");
            assert_eq!(v["upstream"], "backend", "{log}");
            assert_eq!(v["error"], "", "{log}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access line:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_tunnel_is_idle_only_when_nothing_crosses_either_way() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(
        &l.local_addr().unwrap().to_string(),
        true,
        "    websocket_idle_timeout: 1s",
    ))
    .await;
    let (client, upstream) = tokio::join!(open(&gw, b""), accept_tunnel(&l));
    let (mut c, after) = client;
    let (mut u, _, _) = upstream;
    // The backend pushes for more than twice the idle timeout; the client never sends. Each
    // push is a write the tunnel must still carry.
    let mut got = after;
    for i in 0..8u8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        u.write_all(&[b'0' + i]).await.unwrap_or_else(|e| {
            panic!("push {i}: the tunnel closed while the backend was sending ({e})")
        });
        got = read_exactly(&mut c, got, usize::from(i) + 1).await;
    }
    assert_eq!(got, b"01234567");
    // Then silence both ways: the gateway closes both ends.
    assert_eq!(read_to_end(&mut c).await, b"");
    assert_eq!(read_to_end(&mut u).await, b"");
    gw.wait_metric("pollgate_websocket_passthrough_active", |v| v == 0.0)
        .await;
}
