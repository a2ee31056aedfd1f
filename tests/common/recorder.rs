//! A recording upstream for differential tests: a raw TCP server that keeps the exact bytes of
//! every request it receives (head and body, framed by the request's own `Content-Length` or
//! chunked encoding) and answers each with a fixed, well-framed response. It is also the
//! WebSocket server of the gateway's subscriptions (any `/ws/...` handshake), so poll routes
//! can be kept warm, or refused (`/ws/cold/...`) to make their polls fall back.
//!
//! A test runs one case at a time and calls [`Recorder::settle`], which waits until no
//! connection holds an unfinished request or an open tunnel, and takes what arrived.
//!
//! The gateway may still be sending when its client has its answer: pingora writes a request
//! head upstream, then finds the client's body malformed and answers `400` at once. Those bytes
//! are already in this server's socket buffers then, but its tasks may not have read them yet,
//! so `settle` also waits for a few turns of the runtime in which nothing new arrived.

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// What the subscriptions deliver: one message per topic, at once.
pub const PAYLOAD: &str = r#"{"v":1}"#;

/// Something the upstream received, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete request, byte for byte.
    Request(Vec<u8>),
    /// Bytes that did not make a complete request before the connection closed.
    Unfinished(Vec<u8>),
    /// A head (or chunk framing) the recorder could not read; it answered 400 and closed.
    Malformed(Vec<u8>),
    /// Bytes that came through a tunnel after a `101` answer, until the close.
    Tunnel(Vec<u8>),
    /// Still unfinished when [`Recorder::settle`] gave up waiting (a request or a tunnel).
    StillOpen(Vec<u8>),
}

impl Event {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Event::Request(b)
            | Event::Unfinished(b)
            | Event::Malformed(b)
            | Event::Tunnel(b)
            | Event::StillOpen(b) => b,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Event::Request(_) => "request",
            Event::Unfinished(_) => "unfinished",
            Event::Malformed(_) => "malformed",
            Event::Tunnel(_) => "tunnel",
            Event::StillOpen(_) => "still open",
        }
    }
}

#[derive(Default)]
struct Shared {
    events: Mutex<Vec<Event>>,
    /// Per connection: bytes received that are not yet a complete request, or a tunnel's bytes.
    open: Mutex<BTreeMap<u64, Vec<u8>>>,
    next_id: AtomicU64,
    /// Bumped on every accept and every read.
    activity: AtomicU64,
}

pub struct Recorder {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the request at the start of a buffer ends, if it is complete.
enum Frame {
    Partial,
    Malformed,
    Request {
        len: usize,
        target: String,
        head: Vec<(String, Vec<u8>)>,
        method: String,
    },
}

impl Recorder {
    pub async fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                sh.activity.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_nodelay(true);
                let sh = sh.clone();
                let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    serve(&sh, id, s).await;
                    sh.open.lock().remove(&id);
                });
            }
        });
        Recorder { addr, shared, task }
    }

    /// Waits (up to `limit`) until no connection holds an unfinished request or an open tunnel,
    /// then takes every event since the last call; what is still open then is reported as
    /// [`Event::StillOpen`].
    pub async fn settle(&self, limit: Duration) -> Vec<Event> {
        /// Runtime turns (each a short timer wait, so the I/O driver runs) with nothing new.
        const QUIET_TURNS: u32 = 3;
        let deadline = Instant::now() + limit;
        let mut quiet = 0;
        while quiet < QUIET_TURNS && Instant::now() < deadline {
            let before = self.shared.activity.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            let idle = self.shared.open.lock().is_empty();
            if idle && self.shared.activity.load(Ordering::SeqCst) == before {
                quiet += 1;
            } else {
                quiet = 0;
            }
        }
        let mut events = std::mem::take(&mut *self.shared.events.lock());
        for bytes in self.shared.open.lock().values() {
            events.push(Event::StillOpen(bytes.clone()));
        }
        events
    }
}

fn record(sh: &Shared, e: Event) {
    sh.events.lock().push(e);
}

fn set_open(sh: &Shared, id: u64, bytes: &[u8]) {
    let mut open = sh.open.lock();
    if bytes.is_empty() {
        open.remove(&id);
    } else {
        open.insert(id, bytes.to_vec());
    }
}

async fn serve(sh: &Shared, id: u64, mut s: TcpStream) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = frame(&buf);
        let (len, target, head, method) = match frame {
            Frame::Partial => {
                let mut chunk = [0u8; 16384];
                let read = s.read(&mut chunk).await;
                sh.activity.fetch_add(1, Ordering::SeqCst);
                match read {
                    Ok(0) | Err(_) => {
                        if !buf.is_empty() {
                            record(sh, Event::Unfinished(std::mem::take(&mut buf)));
                        }
                        return;
                    }
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        set_open(sh, id, &buf);
                    }
                }
                continue;
            }
            Frame::Malformed => {
                record(sh, Event::Malformed(std::mem::take(&mut buf)));
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                return;
            }
            Frame::Request {
                len,
                target,
                head,
                method,
            } => (len, target, head, method),
        };
        let header = |name: &str| {
            head.iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
        };
        let upgrade = header("upgrade")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("websocket"));
        if upgrade && target.starts_with("/ws/") {
            // The gateway's own subscription: not a client's request, never an event.
            sh.open.lock().remove(&id);
            if target.starts_with("/ws/cold/") {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                return;
            }
            let key = header("sec-websocket-key").pop().unwrap_or_default();
            if s.write_all(&switching(&key)).await.is_err() {
                return;
            }
            subscription(s).await;
            return;
        }
        let request: Vec<u8> = buf.drain(..len).collect();
        record(sh, Event::Request(request));
        set_open(sh, id, &buf);
        let key = header("sec-websocket-key").pop();
        if let (true, Some(key)) = (upgrade, key) {
            // A client's handshake passed through: switch, then keep what the tunnel carries.
            if s.write_all(&switching(&key)).await.is_err() {
                return;
            }
            let mut tunnel = std::mem::take(&mut buf);
            sh.open.lock().insert(id, tunnel.clone());
            let mut chunk = [0u8; 16384];
            loop {
                let read = s.read(&mut chunk).await;
                sh.activity.fetch_add(1, Ordering::SeqCst);
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tunnel.extend_from_slice(&chunk[..n]);
                        sh.open.lock().insert(id, tunnel.clone());
                    }
                }
            }
            record(sh, Event::Tunnel(tunnel));
            return;
        }
        let answer = answer_for(&method, &target, &header("cookie"));
        if s.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// The fixed answers: `/auth` allows (or denies a cookie saying `deny`), everything else is
/// `200 ok`.
fn answer_for(method: &str, target: &str, cookies: &[String]) -> Vec<u8> {
    let (head, body): (&str, &str) = if target.starts_with("/auth") {
        if cookies.iter().any(|c| c.contains("deny")) {
            (
                "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\n",
                "denied",
            )
        } else {
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "")
        }
    } else {
        (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n",
            "ok",
        )
    };
    let mut out = head.as_bytes().to_vec();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn switching(key: &str) -> Vec<u8> {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A subscription socket: one message, then read (and so answer pings) until the close.
async fn subscription(s: TcpStream) {
    let mut ws = WebSocketStream::from_raw_socket(s, Role::Server, None).await;
    if ws.send(Message::text(PAYLOAD)).await.is_err() {
        return;
    }
    while let Some(Ok(_)) = ws.next().await {}
}

/// Reads the request at the start of `buf` by its own framing.
fn frame(buf: &[u8]) -> Frame {
    let mut hs = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut hs);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Frame::Partial,
        Err(_) => return Frame::Malformed,
    };
    let head: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    let target = req.path.unwrap_or_default().to_string();
    let method = req.method.unwrap_or_default().to_string();
    let values = |name: &str| {
        head.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let te = values("transfer-encoding");
    let body = if let Some(last) = te.last() {
        let last = String::from_utf8_lossy(last).to_ascii_lowercase();
        if last
            .rsplit(',')
            .next()
            .is_none_or(|c| c.trim() != "chunked")
        {
            return Frame::Malformed;
        }
        match chunked_len(&buf[head_len..]) {
            Some(Ok(n)) => n,
            Some(Err(())) => return Frame::Malformed,
            None => return Frame::Partial,
        }
    } else {
        let lengths = values("content-length");
        match lengths.as_slice() {
            [] => 0,
            [one] => match std::str::from_utf8(one)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => n,
                None => return Frame::Malformed,
            },
            _ => return Frame::Malformed,
        }
    };
    if buf.len() < head_len + body {
        return Frame::Partial;
    }
    Frame::Request {
        len: head_len + body,
        target,
        head,
        method,
    }
}

/// The length of a chunked body at the start of `b` (trailers included). `None`: incomplete.
fn chunked_len(b: &[u8]) -> Option<Result<usize, ()>> {
    let mut at = 0;
    let line = |at: usize| -> Option<(usize, &[u8])> {
        let i = b[at..].iter().position(|c| *c == b'\n')?;
        let end = at + i;
        let text = &b[at..end];
        Some((end + 1, text.strip_suffix(b"\r").unwrap_or(text)))
    };
    loop {
        let (next, size_line) = line(at)?;
        let hex = size_line.split(|c| *c == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(hex.trim_ascii())
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
        else {
            return Some(Err(()));
        };
        at = next;
        if size == 0 {
            loop {
                let (next, trailer) = line(at)?;
                at = next;
                if trailer.is_empty() {
                    return Some(Ok(at));
                }
            }
        }
        if b.len() < at + size + 2 {
            return None;
        }
        if &b[at + size..at + size + 2] != b"\r\n" {
            return Some(Err(()));
        }
        at += size + 2;
    }
}
