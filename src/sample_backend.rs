//! A sample backend for the demo and the benchmarks: it publishes topics over WebSocket and also
//! serves the legacy poll endpoints, so the same client can be pointed at it directly ("before
//! pollgate") or through the gateway ("after"). It counts everything it is asked for.
//!
//! Endpoints (all on one port):
//! - `GET /api/prices/{topic}`: latest message of a topic (legacy short/conditional poll)
//! - `GET /api/news/{topic}?since=ID`: JSON array of messages after `ID` (legacy cursor poll)
//! - `POST /publish/{topic}`: publish the request body as the topic's next message
//! - `GET /stats`: request, subscription and byte counters as JSON
//! - WebSocket `/ws/prices/{topic}` and `/ws/news/{topic}`: one topic per socket
//! - WebSocket `/ws`: shared socket; `{"op":"subscribe","topic":"x"}` frames choose topics and
//!   messages arrive as `{"topic":"x","id":N,"data":{...}}`
//! - WebSocket `/echo`: echoes every frame (pass-through demo and benchmark)

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use sha1::{Digest, Sha1};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

const HISTORY: usize = 256;

/// Counters the benchmarks read from `/stats`.
#[derive(Default)]
pub struct Stats {
    pub http_requests: AtomicU64,
    pub poll_requests: AtomicU64,
    pub http_bytes_out: AtomicU64,
    pub ws_connections: AtomicU64,
    pub ws_subscriptions: AtomicU64,
    pub ws_messages_out: AtomicU64,
    pub published: AtomicU64,
}

#[derive(Clone)]
struct Msg {
    id: u64,
    /// `{"id":N,"topic":"t","data":...}`
    envelope: Bytes,
}

struct TopicState {
    next_id: u64,
    history: VecDeque<Msg>,
    tx: broadcast::Sender<Msg>,
}

/// The backend's state: a cheap-clone handle.
#[derive(Clone)]
pub struct SampleBackend {
    topics: Arc<Mutex<HashMap<String, TopicState>>>,
    pub stats: Arc<Stats>,
}

impl Default for SampleBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl SampleBackend {
    pub fn new() -> SampleBackend {
        SampleBackend {
            topics: Arc::new(Mutex::new(HashMap::new())),
            stats: Arc::new(Stats::default()),
        }
    }

    fn with_topic<R>(&self, topic: &str, f: impl FnOnce(&mut TopicState) -> R) -> R {
        let mut g = self.topics.lock();
        let t = g.entry(topic.to_string()).or_insert_with(|| TopicState {
            next_id: 1,
            history: VecDeque::new(),
            tx: broadcast::channel(1024).0,
        });
        f(t)
    }

    /// Publishes `data` (JSON, or text that is wrapped as a JSON string) to `topic`.
    pub fn publish(&self, topic: &str, data: &[u8]) -> u64 {
        let data_json: serde_json::Value = serde_json::from_slice(data)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(data).into()));
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        self.with_topic(topic, |t| {
            let id = t.next_id;
            t.next_id += 1;
            let envelope = serde_json::json!({"id": id, "topic": topic, "data": data_json});
            let msg = Msg {
                id,
                envelope: Bytes::from(serde_json::to_vec(&envelope).expect("json")),
            };
            if t.history.len() == HISTORY {
                t.history.pop_front();
            }
            t.history.push_back(msg.clone());
            let _ = t.tx.send(msg);
            id
        })
    }

    fn subscribe(&self, topic: &str) -> (Option<Msg>, broadcast::Receiver<Msg>) {
        self.with_topic(topic, |t| (t.history.back().cloned(), t.tx.subscribe()))
    }

    pub fn stats_json(&self) -> serde_json::Value {
        let s = &self.stats;
        serde_json::json!({
            "http_requests": s.http_requests.load(Ordering::Relaxed),
            "poll_requests": s.poll_requests.load(Ordering::Relaxed),
            "http_bytes_out": s.http_bytes_out.load(Ordering::Relaxed),
            "ws_connections": s.ws_connections.load(Ordering::Relaxed),
            "ws_subscriptions": s.ws_subscriptions.load(Ordering::Relaxed),
            "ws_messages_out": s.ws_messages_out.load(Ordering::Relaxed),
            "published": s.published.load(Ordering::Relaxed),
        })
    }

    /// Publishes a price tick on each topic every `period` (the demo's live data).
    pub fn spawn_ticker(&self, topics: Vec<String>, period: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                n += 1;
                for (i, t) in topics.iter().enumerate() {
                    let price = 100.0 + ((n as f64 + i as f64 * 7.0) * 0.7).sin() * 5.0;
                    let body = serde_json::json!({"symbol": t, "price": (price * 100.0).round() / 100.0, "tick": n});
                    me.publish(t, body.to_string().as_bytes());
                }
            }
        });
    }

    /// Serves connections from `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let _ = me.connection(stream).await;
            });
        }
    }

    async fn connection(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(4096);
        loop {
            // Read one request head.
            let (head_len, method, path, headers, http10) = loop {
                let mut hdrs = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut hdrs);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let headers: Vec<(String, String)> = req
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect();
                        break (
                            n,
                            req.method.unwrap_or("").to_string(),
                            req.path.unwrap_or("/").to_string(),
                            headers,
                            req.version == Some(0),
                        );
                    }
                    Ok(httparse::Status::Partial) => {
                        if buf.len() > 64 * 1024 {
                            return Ok(());
                        }
                        let mut chunk = [0u8; 4096];
                        let n = stream.read(&mut chunk).await?;
                        if n == 0 {
                            return Ok(());
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    Err(_) => {
                        stream
                            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await?;
                        return Ok(());
                    }
                }
            };
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            let len: usize = header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_len + len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[head_len..head_len + len].to_vec();
            buf.drain(..head_len + len);

            if header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
                let key = header("sec-websocket-key").unwrap_or_default();
                let accept = {
                    let mut h = Sha1::new();
                    h.update(key.as_bytes());
                    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
                    base64::engine::general_purpose::STANDARD.encode(h.finalize())
                };
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
                );
                stream.write_all(resp.as_bytes()).await?;
                self.stats.ws_connections.fetch_add(1, Ordering::Relaxed);
                let ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
                self.websocket(ws, &path).await;
                return Ok(());
            }
            self.stats.http_requests.fetch_add(1, Ordering::Relaxed);
            let (status, ctype, out, etag) =
                self.http(&method, &path, &body, header("if-none-match"));
            let mut resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-cache\r\n",
                out.len()
            );
            if let Some(e) = etag {
                resp.push_str(&format!("etag: {e}\r\n"));
            }
            // RFC 9112 §9.3: HTTP/1.0 stays open only when it asked to, HTTP/1.1 unless it
            // asked not to (ApacheBench speaks HTTP/1.0 and reads to the close).
            let tokens = header("connection")
                .unwrap_or_default()
                .to_ascii_lowercase();
            let has = |t: &str| tokens.split(',').any(|x| x.trim() == t);
            let keep_alive = if http10 {
                has("keep-alive")
            } else {
                !has("close")
            };
            match (keep_alive, http10) {
                (false, _) => resp.push_str("connection: close\r\n"),
                (true, true) => resp.push_str("connection: keep-alive\r\n"),
                (true, false) => {}
            }
            resp.push_str("\r\n");
            let mut wire = resp.into_bytes();
            if method != "HEAD" {
                wire.extend_from_slice(&out);
            }
            self.stats
                .http_bytes_out
                .fetch_add(wire.len() as u64, Ordering::Relaxed);
            stream.write_all(&wire).await?;
            if !keep_alive {
                stream.shutdown().await?;
                return Ok(());
            }
        }
    }

    fn http(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        if_none_match: Option<&str>,
    ) -> (&'static str, &'static str, Vec<u8>, Option<String>) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let json = "application/json";
        if let Some(topic) = path.strip_prefix("/publish/") {
            if method != "POST" {
                return ("405 Method Not Allowed", json, b"{}".to_vec(), None);
            }
            let id = self.publish(topic, body);
            return (
                "200 OK",
                json,
                format!("{{\"id\":{id}}}").into_bytes(),
                None,
            );
        }
        if path == "/stats" {
            return (
                "200 OK",
                json,
                self.stats_json().to_string().into_bytes(),
                None,
            );
        }
        if let Some(topic) = path.strip_prefix("/api/prices/") {
            self.stats.poll_requests.fetch_add(1, Ordering::Relaxed);
            let latest = self.with_topic(topic, |t| t.history.back().cloned());
            return match latest {
                Some(m) => {
                    let etag = format!("\"{}\"", m.id);
                    if if_none_match == Some(etag.as_str()) {
                        ("304 Not Modified", json, Vec::new(), Some(etag))
                    } else {
                        ("200 OK", json, m.envelope.to_vec(), Some(etag))
                    }
                }
                None => (
                    "404 Not Found",
                    json,
                    b"{\"error\":\"no data yet\"}".to_vec(),
                    None,
                ),
            };
        }
        if let Some(topic) = path.strip_prefix("/api/news/") {
            self.stats.poll_requests.fetch_add(1, Ordering::Relaxed);
            let since: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("since="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let items: Vec<Bytes> = self.with_topic(topic, |t| {
                t.history
                    .iter()
                    .filter(|m| m.id > since)
                    .map(|m| m.envelope.clone())
                    .collect()
            });
            let mut out = b"[".to_vec();
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(e);
            }
            out.push(b']');
            return ("200 OK", json, out, None);
        }
        (
            "404 Not Found",
            json,
            b"{\"error\":\"not found\"}".to_vec(),
            None,
        )
    }

    async fn websocket(&self, mut ws: WebSocketStream<TcpStream>, path: &str) {
        if path == "/echo" {
            while let Some(Ok(m)) = ws.next().await {
                let echo = matches!(m, WsMessage::Text(_) | WsMessage::Binary(_));
                if echo && ws.send(m).await.is_err() {
                    return;
                }
            }
            return;
        }
        let single = path
            .strip_prefix("/ws/prices/")
            .or_else(|| path.strip_prefix("/ws/news/"));
        if let Some(topic) = single {
            self.stats.ws_subscriptions.fetch_add(1, Ordering::Relaxed);
            let (last, mut rx) = self.subscribe(topic);
            if let Some(m) = last {
                if ws
                    .send(WsMessage::binary(m.envelope.clone()).into_text_lossy())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Ok(m) => {
                            self.stats.ws_messages_out.fetch_add(1, Ordering::Relaxed);
                            if ws.send(WsMessage::binary(m.envelope.clone()).into_text_lossy()).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    },
                    frame = ws.next() => match frame {
                        Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                        _ => {}
                    }
                }
            }
        }
        if path == "/ws" {
            self.shared_socket(ws).await;
        }
    }

    async fn shared_socket(&self, ws: WebSocketStream<TcpStream>) {
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let mut subscribed: HashSet<String> = HashSet::new();
        let mut forwarders = Vec::new();
        loop {
            tokio::select! {
                out = out_rx.recv() => {
                    let Some(b) = out else { break };
                    self.stats.ws_messages_out.fetch_add(1, Ordering::Relaxed);
                    if sink.send(WsMessage::binary(b).into_text_lossy()).await.is_err() {
                        break;
                    }
                }
                frame = stream.next() => {
                    let text = match frame {
                        Some(Ok(WsMessage::Text(t))) => t.to_string(),
                        Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                        _ => continue,
                    };
                    let Ok(cmd) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                    let topic = cmd["topic"].as_str().unwrap_or_default().to_string();
                    if cmd["op"] == "subscribe" && subscribed.insert(topic.clone()) {
                        self.stats.ws_subscriptions.fetch_add(1, Ordering::Relaxed);
                        let (last, mut rx) = self.subscribe(&topic);
                        let tx = out_tx.clone();
                        if let Some(m) = last {
                            let _ = tx.send(m.envelope);
                        }
                        forwarders.push(tokio::spawn(async move {
                            loop {
                                match rx.recv().await {
                                    Ok(m) => if tx.send(m.envelope).is_err() { return },
                                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                                    Err(_) => return,
                                }
                            }
                        }));
                    }
                }
            }
        }
        for f in forwarders {
            f.abort();
        }
    }
}

trait IntoTextLossy {
    fn into_text_lossy(self) -> WsMessage;
}

impl IntoTextLossy for WsMessage {
    /// Envelopes are JSON, so they travel as text frames.
    fn into_text_lossy(self) -> WsMessage {
        match self {
            WsMessage::Binary(b) => WsMessage::text(String::from_utf8_lossy(&b).into_owned()),
            other => other,
        }
    }
}
