//! A test's EventSource client: the WHATWG event-stream parser ([`Parser`]: lines split at
//! CRLF, CR or LF, fields, comments, dispatch on a blank line), and a stream read from a raw
//! connection ([`EventStream`]) whose chunked or close-delimited framing is checked strictly as
//! it arrives. Every failure names what was received.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An event as an EventSource dispatches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `message` unless the stream named it (`event:`).
    pub kind: String,
    pub data: String,
    /// The last event id when it was dispatched (`lastEventId`).
    pub id: String,
}

/// What a stream carried, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    Comment(String),
    Retry(u64),
}

/// The event-stream interpretation of the WHATWG HTML standard, fed in pieces.
#[derive(Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The last byte was a CR: a LF right after it ends nothing more.
    after_cr: bool,
    data: String,
    kind: String,
    last_id: String,
}

impl Parser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&String::from_utf8_lossy(&line), &mut out);
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
        out
    }

    fn line_done(&mut self, line: &str, out: &mut Vec<Item>) {
        if line.is_empty() {
            if !self.data.is_empty() {
                self.data.pop();
                let kind = if self.kind.is_empty() {
                    "message".to_string()
                } else {
                    std::mem::take(&mut self.kind)
                };
                out.push(Item::Event(Event {
                    kind,
                    data: std::mem::take(&mut self.data),
                    id: self.last_id.clone(),
                }));
            }
            self.data.clear();
            self.kind.clear();
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(Item::Comment(comment.to_string()));
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.kind = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_id = value.to_string(),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    out.push(Item::Retry(ms));
                }
            }
            _ => {}
        }
    }
}

/// An event stream read from a raw connection.
pub struct EventStream {
    pub status: u16,
    /// The status line and header lines, CRLF-separated, without the blank line.
    pub head: String,
    chunked: bool,
    sock: TcpStream,
    /// Received and not yet decoded (chunked framing).
    wire: Vec<u8>,
    /// Everything received after the head, as it came on the wire.
    pub received: Vec<u8>,
    parser: Parser,
    items: VecDeque<Item>,
    /// Everything parsed so far, in order.
    pub seen: Vec<Item>,
    /// The last chunk (`0`) arrived.
    pub ended: bool,
    /// The server closed the connection.
    pub closed: bool,
    pub limit: Duration,
}

/// The GET request of an EventSource: `Accept: text/event-stream` and `extra` headers.
pub fn request(path: &str, version: &str, extra: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/{version}\r\nHost: test\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

impl EventStream {
    /// Opens a stream over HTTP/1.1 and reads its head; panics (showing the answer) unless it
    /// is a `200` stream.
    pub async fn open(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> EventStream {
        Self::open_raw(addr, &request(path, "1.1", extra)).await
    }

    /// Sends `request` as it is and reads the head of the answer.
    pub async fn open_raw(addr: SocketAddr, request: &str) -> EventStream {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(request.as_bytes()).await.unwrap();
        let mut s = EventStream {
            status: 0,
            head: String::new(),
            chunked: false,
            sock,
            wire: Vec::new(),
            received: Vec::new(),
            parser: Parser::default(),
            items: VecDeque::new(),
            seen: Vec::new(),
            ended: false,
            closed: false,
            limit: Duration::from_secs(10),
        };
        let end = loop {
            if let Some(i) = s.wire.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !s.fill().await {
                panic!(
                    "no answer head; received {:?}",
                    String::from_utf8_lossy(&s.wire)
                );
            }
        };
        s.head = String::from_utf8_lossy(&s.wire[..end]).into_owned();
        s.wire.drain(..end + 4);
        s.received = s.wire.clone();
        s.status = super::status_of(&s.head);
        assert_eq!(s.status, 200, "not a stream:\n{}", s.head);
        s.chunked = s
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        s.decode();
        s
    }

    pub fn header(&self, name: &str) -> Option<String> {
        super::header_of(&self.head, name)
    }

    /// What the stream carried so far, for failure messages.
    pub fn text(&self) -> String {
        format!(
            "{}\n\n{}",
            self.head,
            String::from_utf8_lossy(&self.received)
        )
    }

    /// Reads more; `false` at the close (or a reset).
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        match tokio::time::timeout(self.limit, self.sock.read(&mut buf)).await {
            Err(_) => panic!(
                "nothing more within {:?}; the stream so far:\n{}",
                self.limit,
                self.text()
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.closed = true;
                false
            }
            Ok(Ok(n)) => {
                self.wire.extend_from_slice(&buf[..n]);
                if self.status != 0 {
                    self.received.extend_from_slice(&buf[..n]);
                }
                true
            }
        }
    }

    /// Takes whole chunks (or every byte, without chunks) off `wire` into the parser.
    fn decode(&mut self) {
        loop {
            let body: Vec<u8> = if !self.chunked {
                std::mem::take(&mut self.wire)
            } else {
                let Some(i) = self.wire.windows(2).position(|w| w == b"\r\n") else {
                    break;
                };
                let line = String::from_utf8_lossy(&self.wire[..i]).into_owned();
                let size = usize::from_str_radix(&line, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size {line:?}:\n{}", self.text()));
                if self.wire.len() < i + 2 + size + 2 {
                    break;
                }
                assert_eq!(
                    &self.wire[i + 2 + size..i + 2 + size + 2],
                    b"\r\n",
                    "chunk not followed by CRLF:\n{}",
                    self.text()
                );
                let data = self.wire[i + 2..i + 2 + size].to_vec();
                self.wire.drain(..i + 2 + size + 2);
                if size == 0 {
                    assert!(!self.ended, "two last chunks:\n{}", self.text());
                    self.ended = true;
                }
                data
            };
            if body.is_empty() {
                if self.chunked && !self.ended {
                    continue;
                }
                break;
            }
            assert!(
                !self.ended,
                "body bytes after the last chunk:\n{}",
                self.text()
            );
            for item in self.parser.feed(&body) {
                self.seen.push(item.clone());
                self.items.push_back(item);
            }
            if !self.chunked {
                break;
            }
        }
    }

    /// The next item; `None` once the stream ended and everything was taken.
    pub async fn item(&mut self) -> Option<Item> {
        loop {
            if let Some(i) = self.items.pop_front() {
                return Some(i);
            }
            if self.closed || self.ended {
                return None;
            }
            if !self.fill().await {
                self.decode();
                continue;
            }
            self.decode();
        }
    }

    /// The next event, past comments and `retry:`; panics if the stream ends first.
    pub async fn event(&mut self) -> Event {
        loop {
            match self.item().await {
                Some(Item::Event(e)) => return e,
                Some(_) => {}
                None => panic!("the stream ended; it carried:\n{}", self.text()),
            }
        }
    }

    pub async fn events(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.event().await);
        }
        out
    }

    /// Waits for a comment line (a heartbeat); returns the events that came before it.
    pub async fn comment(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            match self.item().await {
                Some(Item::Comment(_)) => return events,
                Some(Item::Event(e)) => events.push(e),
                Some(Item::Retry(_)) => {}
                None => panic!("the stream ended; it carried:\n{}", self.text()),
            }
        }
    }

    /// Reads to the end of the stream (its last chunk, or the close); returns the events not
    /// taken yet.
    pub async fn rest(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(item) = self.item().await {
            if let Item::Event(e) = item {
                events.push(e);
            }
        }
        events
    }

    /// Waits for the server to close the connection (after the end of the body).
    pub async fn wait_closed(&mut self) {
        while !self.closed {
            self.fill().await;
            self.decode();
        }
    }
}
