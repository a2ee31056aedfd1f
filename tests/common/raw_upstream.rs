//! A raw TCP upstream that answers each request head with bytes the test chooses, for probing
//! how the gateway treats a buggy or hostile backend. It records every request head (skipping a
//! `Content-Length` request body), counts accepted connections, and notices when the gateway
//! closes a connection. `websocket_accept`/`websocket_text` let a script play a minimal
//! WebSocket backend (a handshake answer and server frames) for poll routes.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What to do with one request (given its head text, request line first).
pub enum Script {
    /// Write these bytes, keep the connection open for the next request.
    Answer(Vec<u8>),
    /// Write these bytes, then close.
    AnswerAndClose(Vec<u8>),
    /// Write these bytes, then wait this long, then write the rest and keep going.
    Split(Vec<u8>, Duration, Vec<u8>),
    /// Never answer; keep reading (to see the gateway close).
    Silent,
    /// Write these bytes, then treat the connection as upgraded (a WebSocket): read and
    /// discard until the gateway closes it.
    Hold(Vec<u8>),
    /// Close at once.
    Close,
}

type Handler = dyn Fn(&str) -> Script + Send + Sync;

#[derive(Default)]
struct Shared {
    heads: Mutex<Vec<String>>,
    accepts: AtomicUsize,
    /// Connections the gateway closed (read EOF or error on our side).
    closed: AtomicUsize,
    /// For `Silent` requests: when the gateway closed that connection.
    silent_closed: Mutex<Vec<Instant>>,
}

pub struct RawUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    pub async fn start(handler: impl Fn(&str) -> Script + Send + Sync + 'static) -> RawUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let handler: Arc<Handler> = Arc::new(handler);
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                sh.accepts.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_nodelay(true);
                let sh = sh.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut silent = false;
                    // Request body bytes still to skip (a `Content-Length` body), so a body is
                    // never read as the next request's head.
                    let mut skip = 0usize;
                    loop {
                        if skip > 0 && !buf.is_empty() {
                            let n = skip.min(buf.len());
                            buf.drain(..n);
                            skip -= n;
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
                        let Some(end) = end.filter(|_| !silent && skip == 0) else {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    sh.closed.fetch_add(1, Ordering::SeqCst);
                                    if silent {
                                        sh.silent_closed.lock().push(Instant::now());
                                    }
                                    return;
                                }
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        skip = content_length(&head);
                        sh.heads.lock().push(head.clone());
                        match handler(&head) {
                            Script::Answer(b) => {
                                if s.write_all(&b).await.is_err() {
                                    return;
                                }
                            }
                            Script::AnswerAndClose(b) => {
                                let _ = s.write_all(&b).await;
                                return;
                            }
                            Script::Split(a, pause, b) => {
                                if s.write_all(&a).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(pause).await;
                                if s.write_all(&b).await.is_err() {
                                    // The gateway closed the connection meanwhile.
                                    sh.closed.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                            }
                            Script::Silent => silent = true,
                            Script::Hold(b) => {
                                if s.write_all(&b).await.is_err() {
                                    return;
                                }
                                let mut chunk = [0u8; 4096];
                                while matches!(s.read(&mut chunk).await, Ok(n) if n > 0) {}
                                sh.closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Script::Close => return,
                        }
                    }
                });
            }
        });
        RawUpstream { addr, shared, task }
    }

    /// Every request head received, in order.
    pub fn heads(&self) -> Vec<String> {
        self.shared.heads.lock().clone()
    }

    pub fn accepts(&self) -> usize {
        self.shared.accepts.load(Ordering::SeqCst)
    }

    pub fn closed(&self) -> usize {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// When the gateway closed each connection whose request was answered with `Silent`.
    pub fn silent_closed(&self) -> Vec<Instant> {
        self.shared.silent_closed.lock().clone()
    }

    /// Waits (bounded) until `cond` holds; panics with `what` and the heads seen otherwise.
    pub async fn wait_for(&self, what: &str, limit: Duration, cond: impl Fn(&RawUpstream) -> bool) {
        let deadline = Instant::now() + limit;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "raw upstream: {what} did not happen within {limit:?}; heads seen: {:#?}",
                self.heads()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The declared `Content-Length` of a request head (0 when absent or unreadable).
fn content_length(head: &str) -> usize {
    head.lines()
        .skip(1)
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// The request target of a head (`/path?query`).
pub fn target_of(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("")
}

/// The `101` answer that completes the WebSocket handshake in `head` (RFC 6455 section 4.2.2),
/// or `None` when the head is not a WebSocket handshake.
pub fn websocket_accept(head: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use sha1::Digest;
    let key = head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    })?;
    let mut h = sha1::Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
    Some(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes(),
    )
}

/// One unmasked (server-to-client) WebSocket text frame.
pub fn websocket_text(payload: &str) -> Vec<u8> {
    let p = payload.as_bytes();
    let mut f = vec![0x81];
    match p.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= u16::MAX as usize => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(p);
    f
}

/// The upstream end of one tunnel: accepts a connection on `l`, reads a WebSocket handshake
/// head, answers it with `101`, and gives back the socket, the head, and the bytes that came
/// behind the head. Panics (with what arrived) if no handshake comes within 10 s.
pub async fn accept_tunnel(l: &TcpListener) -> (tokio::net::TcpStream, String, Vec<u8>) {
    let limit = Duration::from_secs(10);
    let (mut s, _) = tokio::time::timeout(limit, l.accept())
        .await
        .expect("a connection from the gateway within 10 s")
        .unwrap();
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(limit, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!(
                "no handshake head ({other:?}); received {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let accept = websocket_accept(&head).unwrap_or_else(|| panic!("not a handshake: {head}"));
    s.write_all(&accept).await.unwrap();
    (s, head, buf[end + 4..].to_vec())
}
