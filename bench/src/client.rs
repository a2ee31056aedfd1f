//! A minimal HTTP/1.1 client for the load clients and the orchestrator: keep-alive
//! connections, `content-length` and chunked bodies, nothing else. Every wait is bounded by the
//! caller (`tokio::time::timeout`).

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Head plus body bytes as received.
    pub wire_len: usize,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Conn {
    pub async fn connect(addr: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
        })
    }

    pub async fn send(&mut self, req: &[u8]) -> io::Result<()> {
        self.stream.write_all(req).await
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8192);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(())
    }

    /// Reads one response; `head_request` for the answer to a HEAD (no body follows).
    pub async fn read_response(&mut self, head_request: bool) -> io::Result<Resp> {
        let (status, headers, head_len) = loop {
            if !self.buf.is_empty() {
                let mut hdrs = [httparse::EMPTY_HEADER; 48];
                let mut r = httparse::Response::new(&mut hdrs);
                match r.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let headers: Vec<(String, String)> = r
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect();
                        break (r.code.unwrap_or(0), headers, n);
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > 256 * 1024 {
                            return Err(bad("response head too large"));
                        }
                    }
                    Err(e) => return Err(bad(format!("bad response: {e}"))),
                }
            }
            self.fill().await?;
        };
        self.buf.advance(head_len);
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let no_body =
            head_request || status == 304 || status == 204 || (100..200).contains(&status);
        let chunked =
            find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if no_body {
            Bytes::new()
        } else if chunked {
            self.read_chunked().await?
        } else if let Some(len) = find("content-length") {
            let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
            while self.buf.len() < len {
                self.fill().await?;
            }
            self.buf.split_to(len).freeze()
        } else {
            // Delimited by close.
            loop {
                match self.fill().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            self.buf.split().freeze()
        };
        Ok(Resp {
            status,
            headers,
            wire_len: head_len + body.len(),
            body,
        })
    }

    async fn read_chunked(&mut self) -> io::Result<Bytes> {
        let mut out = BytesMut::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
            self.buf.advance(line_end + 2);
            if size == 0 {
                // Trailers (none expected) and the final CRLF.
                loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        let empty = i == 0;
                        self.buf.advance(i + 2);
                        if empty {
                            return Ok(out.freeze());
                        }
                    } else {
                        self.fill().await?;
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            out.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size + 2);
        }
    }

    pub async fn request(&mut self, req: &[u8]) -> io::Result<Resp> {
        self.send(req).await?;
        let head = req.starts_with(b"HEAD ");
        self.read_response(head).await
    }
}

/// A GET request's bytes.
pub fn get_request(host: &str, path: &str, extra: &[(String, String)]) -> Vec<u8> {
    let mut s = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in extra {
        s.push_str(k);
        s.push_str(": ");
        s.push_str(v);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// One GET on a fresh connection, bounded by `limit`.
pub async fn get(addr: &str, path: &str, limit: Duration) -> io::Result<Resp> {
    let fut = async {
        let mut c = Conn::connect(addr).await?;
        c.request(&get_request(addr, path, &[])).await
    };
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("GET http://{addr}{path} timed out"),
        )
    })?
}

/// One POST on a fresh connection, bounded by `limit`.
pub async fn post(addr: &str, path: &str, body: &[u8], limit: Duration) -> io::Result<Resp> {
    let fut = async {
        let mut c = Conn::connect(addr).await?;
        c.request(&post_request(addr, path, body)).await
    };
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("POST http://{addr}{path} timed out"),
        )
    })?
}

pub fn post_request(host: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Parses `Name: value` command-line headers.
pub fn parse_headers(raw: &[String]) -> Result<Vec<(String, String)>, String> {
    raw.iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("header `{h}` is not `Name: value`"))
        })
        .collect()
}

/// A client's result as one JSON line on stdout; failures exit 1 with `{"error": ...}`.
pub fn print_result(r: Result<serde_json::Value, String>) -> ExitCode {
    match r {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", serde_json::json!({ "error": e }));
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A tokio runtime for a load client.
pub fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, String> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("tokio runtime: {e}"))
}
