//! Reading raw HTTP/1 answers by their framing (strictly: CRLF lines, field-syntax header and
//! trailer lines, bare hex chunk sizes), so a test never mistakes where one answer ends:
//! the head up to its blank line, then a `Content-Length` body, a chunked body (with trailers),
//! or everything up to the close. Every failure names what was received.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// One answer as received on the wire.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The status line and header lines, without the blank line.
    pub head: String,
    /// The body as delivered (chunk framing removed).
    pub body: Vec<u8>,
    /// Trailer lines of a chunked body.
    pub trailers: Vec<String>,
    /// The body was chunked on the wire.
    pub chunked: bool,
    /// The exact bytes this answer took on the wire.
    pub raw: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        super::header_of(&self.head, name)
    }

    /// Every value of a header, in order.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the answer says the connection closes after it.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

/// Reads answers from one connection, keeping bytes that belong to the next one.
pub struct Reader<S> {
    pub stream: S,
    buf: Vec<u8>,
    /// Everything read so far, for failure messages.
    seen: Vec<u8>,
    pub limit: Duration,
}

/// What went wrong, with every byte received on the connection.
#[derive(Debug)]
pub struct ReadError {
    pub reason: String,
    pub received: Vec<u8>,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; received {} bytes: {:?}",
            self.reason,
            self.received.len(),
            String::from_utf8_lossy(&self.received)
        )
    }
}

impl<S: AsyncRead + Unpin> Reader<S> {
    pub fn new(stream: S) -> Reader<S> {
        Reader {
            stream,
            buf: Vec::new(),
            seen: Vec::new(),
            limit: Duration::from_secs(30),
        }
    }

    pub fn with_limit(mut self, limit: Duration) -> Reader<S> {
        self.limit = limit;
        self
    }

    /// Everything received so far on this connection.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, ReadError> {
        Err(ReadError {
            reason: reason.into(),
            received: self.seen.clone(),
        })
    }

    /// Reads more bytes; `Ok(false)` at end of stream.
    async fn fill(&mut self) -> Result<bool, ReadError> {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(self.limit, self.stream.read(&mut chunk)).await {
            Err(_) => self.fail(format!("nothing more within {:?}", self.limit)),
            Ok(Err(e)) => self.fail(format!("read error: {e}")),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.seen.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
        }
    }

    /// A line ending in CRLF (strict: a bare LF or a bare CR is an error), without its CRLF.
    async fn line(&mut self, at: &mut usize) -> Result<String, ReadError> {
        loop {
            if let Some(i) = self.buf[*at..].iter().position(|b| *b == b'\n') {
                let end = *at + i;
                if end == *at || self.buf[end - 1] != b'\r' {
                    return self.fail("a line not ending in CRLF");
                }
                let bytes = &self.buf[*at..end - 1];
                // RFC 9112 section 2.2: a bare CR is invalid; some recipients read it as a line
                // break, so a line carrying one could smuggle a second line past another.
                if bytes.contains(&b'\r') {
                    return self.fail("a bare CR inside a line");
                }
                let line = String::from_utf8_lossy(bytes).into_owned();
                *at = end + 1;
                return Ok(line);
            }
            if !self.fill().await? {
                return self.fail("connection closed inside a line");
            }
        }
    }

    /// Reads one answer. `head_only`: the request was HEAD (no body follows whatever the
    /// headers say). Interim (1xx) answers are returned like any other.
    pub async fn answer(&mut self, head_only: bool) -> Result<Answer, ReadError> {
        while self.buf.is_empty() {
            if !self.fill().await? {
                return self.fail("connection closed before an answer");
            }
        }
        let mut at = 0;
        let status_line = self.line(&mut at).await?;
        if !status_line.starts_with("HTTP/1.") {
            return self.fail(format!("not a status line: {status_line:?}"));
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .map_or_else(|| self.fail(format!("bad status line {status_line:?}")), Ok)?;
        let mut head = status_line;
        loop {
            let line = self.line(&mut at).await?;
            if line.is_empty() {
                break;
            }
            if !field_line(&line) {
                return self.fail(format!("not a header field line: {line:?}"));
            }
            head.push_str("\r\n");
            head.push_str(&line);
        }
        let header = |name: &str| super::header_of(&head, name);
        let chunked = header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().trim_end().ends_with("chunked"));
        let length = header("content-length").map(|v| v.trim().parse::<usize>());
        let bodiless = head_only || status < 200 || status == 204 || status == 304;
        let mut body = Vec::new();
        let mut trailers = Vec::new();
        if bodiless {
        } else if chunked {
            loop {
                let size_line = self.line(&mut at).await?;
                // chunk-size [ BWS ";" chunk-ext ]: hex digits first, nothing else before the `;`.
                let hex = size_line
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim_end_matches([' ', '\t']);
                let size = match usize::from_str_radix(hex, 16) {
                    Ok(n) if hex.bytes().all(|b| b.is_ascii_hexdigit()) => n,
                    _ => return self.fail(format!("bad chunk size line {size_line:?}")),
                };
                if size == 0 {
                    loop {
                        let t = self.line(&mut at).await?;
                        if t.is_empty() {
                            break;
                        }
                        if !field_line(&t) {
                            return self.fail(format!("not a trailer field line: {t:?}"));
                        }
                        trailers.push(t);
                    }
                    break;
                }
                while self.buf.len() < at + size + 2 {
                    if !self.fill().await? {
                        return self.fail("connection closed inside a chunk");
                    }
                }
                body.extend_from_slice(&self.buf[at..at + size]);
                if &self.buf[at + size..at + size + 2] != b"\r\n" {
                    return self.fail("chunk data not followed by CRLF");
                }
                at += size + 2;
            }
        } else if let Some(len) = length {
            let Ok(len) = len else {
                return self.fail("bad Content-Length");
            };
            while self.buf.len() < at + len {
                if !self.fill().await? {
                    return self.fail(format!(
                        "connection closed after {} of {len} body bytes",
                        self.buf.len() - at
                    ));
                }
            }
            body.extend_from_slice(&self.buf[at..at + len]);
            at += len;
        } else {
            // Delimited by the close.
            while self.fill().await? {}
            body.extend_from_slice(&self.buf[at..]);
            at = self.buf.len();
        }
        let raw: Vec<u8> = self.buf.drain(..at).collect();
        Ok(Answer {
            status,
            head,
            body,
            trailers,
            chunked,
            raw,
        })
    }

    /// Reads the final answer, skipping interim (1xx) ones; returns those too.
    pub async fn final_answer(
        &mut self,
        head_only: bool,
    ) -> Result<(Vec<Answer>, Answer), ReadError> {
        let mut interim = Vec::new();
        loop {
            let a = self.answer(head_only).await?;
            if (100..200).contains(&a.status) && a.status != 101 {
                interim.push(a);
            } else {
                return Ok((interim, a));
            }
        }
    }

    /// Waits for the peer to close: `Ok(bytes)` with whatever arrived before the close.
    pub async fn closed(&mut self) -> Result<Vec<u8>, ReadError> {
        let start = self.buf.len();
        loop {
            match self.fill().await {
                Ok(true) => {}
                Ok(false) => return Ok(self.buf[start..].to_vec()),
                Err(e) if e.reason.starts_with("read error") => {
                    return Ok(self.buf[start..].to_vec())
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes received but not yet read as an answer.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

/// `name: value` with a token name (RFC 9110 section 5.1); no obs-fold continuation lines.
fn field_line(line: &str) -> bool {
    let Some((name, _)) = line.split_once(':') else {
        return false;
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Sends `request` on a new connection and reads one final answer by its framing.
pub async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Result<Answer, ReadError> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| ReadError {
            reason: format!("connect {addr}: {e}"),
            received: Vec::new(),
        })?;
    s.write_all(request).await.map_err(|e| ReadError {
        reason: format!("write: {e}"),
        received: Vec::new(),
    })?;
    let head_only = request.starts_with(b"HEAD ");
    let mut r = Reader::new(s);
    r.final_answer(head_only).await.map(|(_, a)| a)
}
