//! A real upstream for tests on one loopback port: an HTTP server that records every request and
//! answers with a programmable reply, and a tokio-tungstenite WebSocket server with three kinds
//! of socket: `/echo` (echoes frames), per-topic sockets on any other path (the test publishes to
//! a path), and the shared socket `/ws` (JSON `{"op":"subscribe","topic":..}` frames choose
//! topics; the test publishes to a topic).

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use sha1::{Digest, Sha1};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the HTTP side answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    pub chunked: bool,
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            chunked: false,
        }
    }
}

type Handler = Box<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct State {
    requests: Mutex<Vec<Recorded>>,
    handler: Mutex<Arc<Handler>>,
    channels: Mutex<HashMap<String, broadcast::Sender<String>>>,
    retained: Mutex<HashMap<String, String>>,
    ws_connects: Mutex<HashMap<String, usize>>,
    ws_open: Mutex<HashMap<String, usize>>,
    shared_frames: Mutex<Vec<String>>,
    refuse: Mutex<HashSet<String>>,
    stall: Mutex<HashSet<String>>,
    kill: broadcast::Sender<()>,
    accepts: std::sync::atomic::AtomicUsize,
}

/// The running upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.state.kill.send(());
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts on a given address (to bring a "crashed" backend back on its old port).
    pub async fn start_on(addr: &str) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            handler: Mutex::new(Arc::new(Box::new(|r: &Recorded| {
                Reply::ok(&format!("upstream saw {} {}", r.method, r.target))
            }))),
            channels: Mutex::new(HashMap::new()),
            retained: Mutex::new(HashMap::new()),
            ws_connects: Mutex::new(HashMap::new()),
            ws_open: Mutex::new(HashMap::new()),
            shared_frames: Mutex::new(Vec::new()),
            refuse: Mutex::new(HashSet::new()),
            stall: Mutex::new(HashSet::new()),
            kill: broadcast::channel(4).0,
            accepts: std::sync::atomic::AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                st.accepts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let _ = conn(st, s).await;
                });
            }
        });
        Upstream { addr, state, task }
    }

    /// Replaces the HTTP handler.
    pub fn on_http(&self, f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.state.handler.lock() = Arc::new(Box::new(f));
    }

    /// Every request seen (HTTP and WebSocket handshakes).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().clone()
    }

    /// Plain HTTP requests seen (not WebSocket handshakes).
    pub fn http_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.header("upgrade").is_none())
            .collect()
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.state
            .accepts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn refuse_ws(&self, path: &str) {
        self.state.refuse.lock().insert(path.to_string());
    }

    pub fn allow_ws(&self, path: &str) {
        self.state.refuse.lock().remove(path);
    }

    /// WebSockets on `path` complete the handshake, then go silent: no frames, no pongs.
    pub fn stall_ws(&self, path: &str) {
        self.state.stall.lock().insert(path.to_string());
    }

    pub fn unstall_ws(&self, path: &str) {
        self.state.stall.lock().remove(path);
    }

    /// Publishes to per-topic sockets on `path` (and retains it for later subscribers).
    pub fn publish(&self, path: &str, text: &str) {
        self.state
            .retained
            .lock()
            .insert(path.to_string(), text.to_string());
        let _ = channel(&self.state, path).send(text.to_string());
    }

    /// Publishes a binary frame to per-topic sockets on `path` (retained).
    pub fn publish_binary(&self, path: &str, bytes: &[u8]) {
        let text = format!(
            "{BINARY_MARK}{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
        self.publish(path, &text);
    }

    /// Publishes without retaining (a later subscriber will not see it).
    pub fn publish_live(&self, path: &str, text: &str) {
        let _ = channel(&self.state, path).send(text.to_string());
    }

    /// Publishes `text` on the shared socket to subscribers of `topic`.
    pub fn publish_shared(&self, topic: &str, text: &str) {
        let key = format!("shared:{topic}");
        self.state
            .retained
            .lock()
            .insert(key.clone(), text.to_string());
        let _ = channel(&self.state, &key).send(text.to_string());
    }

    pub fn ws_connects(&self, path: &str) -> usize {
        *self.state.ws_connects.lock().get(path).unwrap_or(&0)
    }

    pub fn ws_connects_total(&self) -> usize {
        self.state.ws_connects.lock().values().sum()
    }

    pub fn ws_open(&self, path: &str) -> usize {
        *self.state.ws_open.lock().get(path).unwrap_or(&0)
    }

    /// Text frames received on the shared socket (subscribe/unsubscribe commands).
    pub fn shared_frames(&self) -> Vec<String> {
        self.state.shared_frames.lock().clone()
    }

    /// Closes every open WebSocket (the backend dropped its subscribers).
    pub fn drop_websockets(&self) {
        let _ = self.state.kill.send(());
    }

    /// Waits (bounded) until `cond` holds.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&Upstream) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "upstream: timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Channels carry text; a message starting with this mark is a base64 binary frame.
const BINARY_MARK: &str = "\u{1}bin:";

fn frame(m: String) -> Message {
    match m.strip_prefix(BINARY_MARK) {
        Some(b64) => Message::binary(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        ),
        None => Message::text(m),
    }
}

fn channel(st: &State, key: &str) -> broadcast::Sender<String> {
    st.channels
        .lock()
        .entry(key.to_string())
        .or_insert_with(|| broadcast::channel(4096).0)
        .clone()
}

async fn conn(st: Arc<State>, mut s: TcpStream) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let (n, rec) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    break (
                        n,
                        Recorded {
                            method: req.method.unwrap_or_default().to_string(),
                            target: req.path.unwrap_or_default().to_string(),
                            headers: req
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.name.to_string(),
                                        String::from_utf8_lossy(h.value).into_owned(),
                                    )
                                })
                                .collect(),
                            body: Vec::new(),
                        },
                    );
                }
                Ok(httparse::Status::Partial) => {
                    let mut chunk = [0u8; 8192];
                    let k = s.read(&mut chunk).await?;
                    if k == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&chunk[..k]);
                }
                Err(_) => return Ok(()),
            }
        };
        buf.drain(..n);
        let mut rec = rec;
        rec.body = read_body(&mut s, &mut buf, &rec).await?;
        st.requests.lock().push(rec.clone());

        if rec
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            let path = rec.target.clone();
            if st.refuse.lock().contains(&path) {
                s.write_all(
                    b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
                return Ok(());
            }
            let key = rec
                .header("sec-websocket-key")
                .unwrap_or_default()
                .to_string();
            let mut h = Sha1::new();
            h.update(key.as_bytes());
            h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
            let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
            let mut resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
            );
            if let Some(p) = rec.header("sec-websocket-protocol") {
                let first = p.split(',').next().unwrap_or("").trim();
                resp.push_str(&format!("Sec-WebSocket-Protocol: {first}\r\n"));
            }
            resp.push_str("\r\n");
            s.write_all(resp.as_bytes()).await?;
            *st.ws_connects.lock().entry(path.clone()).or_default() += 1;
            if st.stall.lock().contains(&path) {
                let mut kill = st.kill.subscribe();
                let _held = s;
                let _ = kill.recv().await;
                return Ok(());
            }
            *st.ws_open.lock().entry(path.clone()).or_default() += 1;
            let ws = WebSocketStream::from_raw_socket(s, Role::Server, None).await;
            let kill = st.kill.subscribe();
            let _ = websocket(st.clone(), ws, &path, kill).await;
            *st.ws_open.lock().entry(path).or_default() -= 1;
            return Ok(());
        }

        let handler = st.handler.lock().clone();
        let reply = handler(&rec);
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if reply.chunked {
            head.push_str("transfer-encoding: chunked\r\n\r\n");
            s.write_all(head.as_bytes()).await?;
            for part in reply.body.chunks(7) {
                s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                    .await?;
                s.write_all(part).await?;
                s.write_all(b"\r\n").await?;
                s.flush().await?;
            }
            s.write_all(b"0\r\n\r\n").await?;
        } else {
            head.push_str(&format!("content-length: {}\r\n\r\n", reply.body.len()));
            s.write_all(head.as_bytes()).await?;
            if rec.method != "HEAD" {
                s.write_all(&reply.body).await?;
            }
        }
    }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> std::io::Result<()> {
    while buf.len() < want {
        let mut chunk = [0u8; 8192];
        let k = s.read(&mut chunk).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    Ok(())
}

async fn read_body(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    rec: &Recorded,
) -> std::io::Result<Vec<u8>> {
    if rec
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                let have = buf.len();
                fill(s, buf, have + 1).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
                .unwrap_or(0);
            buf.drain(..line_end + 2);
            fill(s, buf, size + 2).await?;
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
    let len: usize = rec
        .header("content-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    fill(s, buf, len).await?;
    Ok(buf.drain(..len).collect())
}

async fn websocket(
    st: Arc<State>,
    ws: WebSocketStream<TcpStream>,
    path: &str,
    mut kill: broadcast::Receiver<()>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let (mut tx, mut rx) = ws.split();
    if path == "/echo" {
        loop {
            tokio::select! {
                m = rx.next() => match m {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => tx.send(m).await?,
                    Some(Ok(Message::Ping(p))) => tx.send(Message::Pong(p)).await?,
                    // tungstenite answers the close frame itself; keep reading until it is done.
                    Some(Ok(Message::Close(_))) => { let _ = tx.flush().await; }
                    Some(Ok(_)) => {}
                    _ => return Ok(()),
                },
                _ = kill.recv() => return Ok(()),
            }
        }
    }
    if path == "/ws" {
        let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut subs: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let result = loop {
            tokio::select! {
                m = rx.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        st.shared_frames.lock().push(t.to_string());
                        let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                        let topic = v["topic"].as_str().unwrap_or_default().to_string();
                        if v["op"] == "subscribe" && !subs.contains_key(&topic) {
                            let key = format!("shared:{topic}");
                            let mut brx = channel(&st, &key).subscribe();
                            if let Some(r) = st.retained.lock().get(&key).cloned() {
                                let _ = out_tx.send(r);
                            }
                            let o = out_tx.clone();
                            subs.insert(topic, tokio::spawn(async move {
                                while let Ok(m) = brx.recv().await {
                                    if o.send(m).is_err() { return }
                                }
                            }));
                        } else if v["op"] == "unsubscribe" {
                            if let Some(h) = subs.remove(&topic) { h.abort() }
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break Ok(()),
                },
                m = out_rx.recv() => {
                    if let Some(m) = m { if let Err(e) = tx.send(Message::text(m)).await { break Err(e) } }
                }
                _ = kill.recv() => break Ok(()),
            }
        };
        for (_, h) in subs {
            h.abort();
        }
        return result;
    }
    // A per-topic socket: everything published to this path.
    let mut brx = channel(&st, path).subscribe();
    let retained = st.retained.lock().get(path).cloned();
    if let Some(r) = retained {
        tx.send(frame(r)).await?;
    }
    loop {
        tokio::select! {
            m = brx.recv() => match m {
                Ok(m) => tx.send(frame(m)).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return Ok(()),
            },
            m = rx.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                _ => {}
            },
            _ = kill.recv() => return Ok(()),
        }
    }
}
