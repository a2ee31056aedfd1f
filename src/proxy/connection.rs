//! One accepted client connection, from accept to close: its slot under `max_connections`,
//! the request-head deadline, and the keep-alive loop that offers every request to the cache
//! fast path (`fast.rs`) before handing it to pingora's proxy.
//!
//! pingora's own HTTP/1 loop is replaced by this one (driving `process_new_http` one request
//! at a time, as pingora documents for custom accept loops), so a connection can alternate
//! between fast answers and proxied requests, and idle keep-alive time is ours to bound.

use super::fast::{self, Parsed, Served};
use super::header_deadline::HeaderDeadline;
use super::respond::raw_json_error;
use super::{count_request, Gateway, GatewayState, Kind};
use crate::limits;
use crate::metrics::METRICS;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Read-buffer growth step; a poll's head fits many times over.
const READ_CHUNK: usize = 1024;

/// The proxy service's application: every accepted stream enters here.
pub struct ConnectionApp {
    proxy: Arc<HttpProxy<Gateway>>,
    state: GatewayState,
}

impl ConnectionApp {
    pub fn new(proxy: HttpProxy<Gateway>, state: GatewayState) -> ConnectionApp {
        ConnectionApp {
            proxy: Arc::new(proxy),
            state,
        }
    }

    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let limits = self.state.limits();
        let deadline = Duration::from_millis(self.state.header_timeout_ms.load(Ordering::Relaxed));
        let mut io = HeaderDeadline::new(stream, deadline);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        // Counted from the accept, idle keep-alive connections and tunnels included.
        let mut drain = shutdown.clone();
        let Some(_slot) = limits::try_take(&self.state.connections, limits.max_connections) else {
            refuse(&mut io, &mut buf, &mut drain).await;
            return;
        };
        let mut out = Vec::new();
        // The first head is bounded by the head deadline, armed at accept; later ones wait
        // at most `keepalive_timeout` for their first byte.
        let mut idle = None;
        loop {
            let limits = self.state.limits();
            let served = loop {
                let mut headers = [httparse::EMPTY_HEADER; fast::MAX_HEADERS];
                match fast::parse(&buf, &mut headers, &limits) {
                    Parsed::Partial => {}
                    Parsed::Other => break Served::NotFast,
                    Parsed::Fast(req) => {
                        let len = req.len;
                        let draining = *shutdown.borrow();
                        let served =
                            fast::serve(&self.state, &mut io, &mut out, &req, draining).await;
                        if served != Served::NotFast {
                            consume(&mut buf, len);
                        }
                        break served;
                    }
                }
                let wait = if buf.is_empty() { idle } else { None };
                if !read_more(&mut io, &mut buf, wait, &mut drain).await {
                    return;
                }
            };
            match served {
                Served::KeepAlive => {
                    idle = Some(limits.keepalive_timeout);
                    continue;
                }
                Served::Close => return,
                Served::NotFast => {}
            }
            // pingora reads the request again from its first byte: give back what belongs to
            // it, keeping any pipelined request behind it for this loop.
            let (len, head_complete) = request_extent(&buf);
            if head_complete {
                io.head_complete();
            }
            io.replay(buf.split_to(len).freeze());
            let mut session = ServerSession::new_http1(Box::new(io));
            let keepalive = (!*shutdown.borrow()).then_some(limits.keepalive_timeout.as_secs());
            session.set_keepalive(keepalive);
            let Some(reused) = self.proxy.process_new_http(session, shutdown).await else {
                return;
            };
            let (stream, _) = reused.consume();
            io = match stream.into_any().downcast::<HeaderDeadline>() {
                Ok(io) => *io,
                Err(_) => {
                    tracing::warn!("pingora returned a different stream type; closing");
                    return;
                }
            };
            idle = Some(limits.keepalive_timeout);
        }
    }
}

#[async_trait]
impl ServerApp for ConnectionApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await
    }
}

/// How many leading bytes of `buf` belong to the request pingora is about to read, and whether
/// its head is complete. A plainly framed request (no `Transfer-Encoding`, no `Upgrade`, at most
/// one valid `Content-Length`) ends after its head and body; for anything else every byte goes
/// to pingora, which closes the connection after a request it finds bytes behind.
fn request_extent(buf: &[u8]) -> (usize, bool) {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = req.parse(buf) else {
        return (buf.len(), false);
    };
    let mut body: Option<usize> = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("upgrade") {
            return (buf.len(), true);
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (body, n) {
                (None, Some(n)) => body = Some(n),
                _ => return (buf.len(), true),
            }
        }
    }
    (head.saturating_add(body.unwrap_or(0)).min(buf.len()), true)
}

/// Drops an answered head from the read buffer, keeping any pipelined bytes behind it.
fn consume(buf: &mut BytesMut, len: usize) {
    if buf.len() == len {
        // Keeps the whole allocation for the next head.
        buf.clear();
    } else {
        buf.advance(len);
    }
}

/// Reads more of a request head. `idle`: how long to wait for the first byte of a keep-alive
/// request (a server shutdown ends that wait too). `false` when the connection is done: closed,
/// timed out (the head deadline fails the read), or idle past its time.
async fn read_more(
    io: &mut HeaderDeadline,
    buf: &mut BytesMut,
    idle: Option<Duration>,
    drain: &mut ShutdownWatch,
) -> bool {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    let read = match idle {
        None => io.read_buf(buf).await,
        Some(idle) => {
            if *drain.borrow() {
                return false;
            }
            tokio::select! {
                biased;
                r = io.read_buf(buf) => r,
                _ = tokio::time::sleep(idle) => return false,
                _ = drain.changed() => return false,
            }
        }
    };
    matches!(read, Ok(n) if n > 0)
}

/// Over `max_connections`: reads the request head (so the answer is not lost to a reset over
/// unread bytes), answers 503 with `Retry-After`, and closes.
async fn refuse(io: &mut HeaderDeadline, buf: &mut BytesMut, drain: &mut ShutdownWatch) {
    let start = Instant::now();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < fast::MAX_HEAD {
        if !read_more(io, buf, None, drain).await {
            return;
        }
    }
    METRICS
        .rejected
        .with_label_values(&["none", "max_connections"])
        .inc();
    count_request("none", None, Kind::Local, 503, start.elapsed());
    let extra = [("Retry-After", "1")];
    raw_json_error(io, 503, "too many client connections", &extra, false).await;
}

#[cfg(test)]
mod tests {
    use super::request_extent;

    #[test]
    fn a_plain_request_ends_after_its_head_and_body() {
        let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut two = get.to_vec();
        two.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(request_extent(&two), (get.len(), true));
        let post = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b";
        assert_eq!(request_extent(post), (post.len() - 6, true));
        // The body is still arriving: everything read so far is this request's.
        let partial = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\nabc";
        assert_eq!(request_extent(partial), (partial.len(), true));
    }

    #[test]
    fn anything_not_plainly_framed_goes_whole_to_pingora() {
        for raw in [
            &b"GET /a HTTP/1.1\r\nHost: x\r\n"[..],
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\nframes",
            b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
            b"POST /a HTTP/1.1\r\nContent-Length: +1\r\n\r\nab",
        ] {
            assert_eq!(
                request_extent(raw).0,
                raw.len(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
