//! One accepted client connection, from accept to close: its slot under `max_connections`,
//! the request-head deadline, the one validator (`request.rs`) and the keep-alive loop.
//!
//! Every request head is read and judged here. What pollgate answers itself (polls, errors,
//! bodiless forwards) is written by `wire.rs`; a WebSocket handshake is forwarded and its tunnel
//! relayed here too (`tunnel.rs`); requests with a body go to pingora's proxy (`gateway.rs`),
//! one request at a time through `process_new_http`, as
//! pingora documents for custom accept loops, with exactly that request's bytes, so a request
//! pipelined behind it stays here. With `fast_paths: false` every request goes to pingora.
//!
//! The head deadline: a head must be complete within `header_read_timeout` of its first byte
//! (of the accept, for a connection's first request). Empty lines before a request line are
//! bytes of that head, so they never stop or restart the clock; between requests the wait for
//! a first byte is bounded by `keepalive_timeout`.

use super::answer::Answer;
use super::forward::{self, Client};
use super::gateway::Gateway;
use super::log::{finish, Finished, Kind};
use super::passthrough::Passthrough;
use super::poll::{self, client_read, EventStream, Outcome, PollRequest, Step, WRITE_LIMIT};
use super::request::{self, Parsed, RequestHead};
use super::router::{Dispatch, RouteEntry};
use super::state::GatewayState;
use super::{cors, h2, handshake, tunnel, wire};
use crate::limits;
use crate::metrics::METRICS;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The most one read takes from a client socket while a head is incomplete.
const READ_CHUNK: usize = 1024;

/// The proxy service's application: every accepted stream enters here.
pub struct ConnectionApp {
    proxy: Arc<HttpProxy<Gateway>>,
    state: GatewayState,
    /// `h2c: true`: a cleartext connection that opens with the HTTP/2 preface is HTTP/2.
    h2c: bool,
}

/// What became of one request.
enum Served {
    /// Answered; the connection may carry the next request.
    KeepAlive,
    /// Answered (or the client left): close.
    Close,
    /// For pingora's proxy: the request's bytes (head and body) run this far into the buffer,
    /// and this many more may be read from the socket (see `RequestHead::socket_budget`).
    Pingora(usize, Option<u64>),
}

impl ConnectionApp {
    /// `proxy` must have pingora's `h2c` server option set when `h2c` is.
    pub fn new(proxy: HttpProxy<Gateway>, state: GatewayState, h2c: bool) -> ConnectionApp {
        ConnectionApp {
            proxy: Arc::new(proxy),
            state,
            h2c,
        }
    }

    /// An HTTP/2 connection: pingora's HTTP/2 server, every stream a request to the Gateway.
    /// It holds one connection slot for its life, like an HTTP/1.1 connection; beyond
    /// `max_connections` it is closed before the HTTP/2 handshake.
    async fn serve_h2(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) {
        let limits = self.state.limits();
        let Some(_slot) = limits::try_take(&self.state.connections, limits.max_connections) else {
            METRICS
                .rejected
                .with_label_values(&["none", "max_connections"])
                .inc();
            return;
        };
        ServerApp::process_new(&self.proxy, io, shutdown).await;
    }

    /// `buf`: bytes of the first request already read (by the h2c check); sized by what the
    /// client sent (see `read_more`): a held poll keeps its head here.
    async fn serve(&self, mut io: Stream, mut buf: BytesMut, shutdown: &ShutdownWatch) {
        let accepted = tokio::time::Instant::now();
        let limits = self.state.limits();
        let mut drain = shutdown.clone();
        let mut out = Vec::new();
        let https = io.get_ssl().is_some();
        // Counted from the accept: idle keep-alive connections and tunnels included.
        let Some(slot) = limits::try_take(&self.state.connections, limits.max_connections) else {
            self.refuse(&mut io, &mut buf, &mut out, &mut drain, accepted)
                .await;
            return;
        };
        // Scoped, so the address itself is not kept in the connection's future.
        let (ip, client) = {
            let peer = io.get_socket_digest().and_then(|d| d.peer_addr().cloned());
            let ip = peer.as_ref().and_then(|a| a.as_inet()).map(|a| a.ip());
            (ip, peer.map(|a| a.to_string()))
        };
        // Built at the connection's first forward and kept for the next ones: every forwarded
        // request's `X-Forwarded-For` carries it, a poll never needs it.
        let mut ip_text: Option<String> = None;
        let mut first = Some(accepted);
        loop {
            let limits = self.state.limits();
            // The first head is timed from the accept; a later one from its first byte.
            let mut deadline = first.take().map(|a| a + limits.header_read_timeout);
            let mut pipelined = BytesMut::new();
            // Each head is parsed once when complete: the partial parses before are the only
            // repeats, and most heads arrive in one read.
            let (served, len) = loop {
                if !buf.is_empty() {
                    deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + limits.header_read_timeout
                    });
                    let mut slots = request::Slots::new();
                    match request::parse(&buf, &mut slots, &limits) {
                        Parsed::Partial => {}
                        Parsed::Invalid(r) => {
                            let start = Instant::now();
                            let a = Answer::error(r.status, r.reason).closing(true);
                            let _ = wire::send_answer(&mut io, &mut out, &a, false, false).await;
                            self.log_local(client.as_deref(), r.status, start.elapsed());
                            break (Served::Close, 0);
                        }
                        Parsed::Complete(head) => {
                            let len = head.len;
                            let mut conn = Conn {
                                io: &mut io,
                                out: &mut out,
                                pipelined: &mut pipelined,
                                ip,
                                https,
                                ip_text: &mut ip_text,
                                client: &client,
                                draining: *shutdown.borrow(),
                            };
                            let rest = &buf[len..];
                            break (self.dispatch(&head, &mut conn, rest).await, len);
                        }
                    }
                }
                match read_more(&mut io, &mut buf, deadline, &limits, &mut drain).await {
                    More::Read => {}
                    More::Done => return,
                    More::Gone => {
                        // The client hung up. Its socket is closed once the answers other
                        // clients are due have been written (see `cache/due.rs`); its slot is
                        // free at once.
                        drop(slot);
                        self.state.store.answers_due().settled().await;
                        return;
                    }
                    More::TimedOut => {
                        if !buf.is_empty() {
                            let a = Answer::error(
                                408,
                                "request head not received within header_read_timeout",
                            );
                            let _ = wire::send_answer(&mut io, &mut out, &a, false, false).await;
                            self.log_local(client.as_deref(), 408, accepted.elapsed());
                        }
                        return;
                    }
                }
            };
            match served {
                Served::Close => return,
                Served::KeepAlive => {
                    consume(&mut buf, len);
                    buf.extend_from_slice(&pipelined);
                }
                Served::Pingora(extent, budget) => {
                    // pingora may read this request and no more: a request pipelined behind
                    // it stays the loop's (see `passthrough.rs`).
                    let handover = Passthrough::bounded(io, budget);
                    let mut session = ServerSession::new_http1(Box::new(handover));
                    if let ServerSession::H1(h1) = &mut session {
                        h1.set_pipelined_prefix(buf.split_to(extent));
                    }
                    let Some(reused) = self.proxy.process_new_http(session, shutdown).await else {
                        return;
                    };
                    let Ok(mut handover) = reused.consume().0.into_any().downcast::<Passthrough>()
                    else {
                        tracing::warn!("pingora returned a different stream type; closing");
                        return;
                    };
                    // pingora flushes its answer; this only makes sure nothing is left behind.
                    if tokio::io::AsyncWriteExt::flush(&mut *handover)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let (inner, kept) = handover.into_parts();
                    io = inner;
                    buf.extend_from_slice(&kept);
                }
            }
        }
    }

    /// Decides what the request is and serves it, or says it is pingora's. `rest`: the bytes
    /// read behind the head.
    async fn dispatch(&self, head: &RequestHead<'_>, c: &mut Conn<'_>, rest: &[u8]) -> Served {
        let buffered = head.len + rest.len();
        if !self.state.fast_paths() {
            return pingora(head, buffered);
        }
        let start = Instant::now();
        let router = self.state.router();
        let upgrade = if head.upgrade {
            handshake::classify(head.method, !head.http10, head)
        } else {
            handshake::Upgrade::None
        };
        let keep_alive = head.keep_alive && !c.draining;
        let preflight = cors::is_preflight(head.method, head);
        match router.dispatch(head.method, head.path, upgrade, preflight) {
            Dispatch::NotFound => {
                let a = Answer::error(404, "no route matches this path").closing(head.has_body());
                self.local(c, head, "none", a, keep_alive, start).await
            }
            Dispatch::BadHandshake(m, reason) => {
                let a = Answer::error(400, reason).closing(true);
                self.local(c, head, &m.entry.route.name, a, keep_alive, start)
                    .await
            }
            // A body before a tunnel is rare enough to leave to pingora, which frames it.
            Dispatch::Tunnel(_) if head.has_body() => pingora(head, buffered),
            // Boxed: a tunnel's state would otherwise sit in every connection's future, held
            // polls included.
            Dispatch::Tunnel(m) => {
                Box::pin(self.tunnel(c, head, m.entry, keep_alive, start, rest)).await
            }
            Dispatch::Preflight(m) => {
                let Some(rules) = &m.entry.route.cors else {
                    return Served::Close;
                };
                let check = cors::check_request(rules, head);
                let a = cors::preflight(rules, &check, cors::methods(m.entry.hub.is_some()))
                    .closing(head.has_body());
                self.local(c, head, &m.entry.route.name, a, keep_alive, start)
                    .await
            }
            Dispatch::Poll(index, hub, raw_topic) => {
                let entry = &router.entries[index];
                let req = PollRequest {
                    head_only: head.is_head(),
                    has_body: head.has_body(),
                    raw_topic,
                    target: head.target,
                    query: head.query,
                    headers: head,
                    client_ip: c.ip,
                    https: c.https,
                    cors: entry.route.cors.as_deref(),
                };
                let parts = poll::RouteParts {
                    hub,
                    access: &entry.access,
                    flights: &entry.flights,
                    shadow: &entry.shadow,
                    client: &self.state.client,
                };
                let client = poll::Client::<std::future::Pending<()>>::Socket(poll::Socket {
                    io: c.io,
                    keep_alive,
                    lendable: !c.https && self.state.fanout_pass(),
                });
                let (mut a, kind) = match poll::serve(parts, &req, client).await {
                    Outcome::Answer(a) => (a, Kind::Poll),
                    Outcome::Relayed(a) => (a, Kind::Fallback),
                    Outcome::Gone => {
                        self.finish(c, head, entry, Kind::Poll, 499, start, "");
                        return Served::Close;
                    }
                    Outcome::Forward => {
                        return self.forward(c, head, entry, keep_alive, start, None).await;
                    }
                    Outcome::Stream(events) => {
                        // Boxed, like a forward: held polls' futures carry no stream's state.
                        return Box::pin(self.stream(c, head, entry, events, start)).await;
                    }
                };
                let (ok, start) = match a.written.take() {
                    // A publish wrote it (`poll/park.rs`): the rest, if any; what the client
                    // sent since is its next request; logged with the time it was written.
                    Some(w) => {
                        let ok = wire::send_rest(c.io, &w.rest).await.is_ok() && !w.eof;
                        c.pipelined.extend_from_slice(&w.early);
                        (ok, start + w.at.elapsed())
                    }
                    None => {
                        let sent = wire::send_answer(c.io, c.out, &a, head.is_head(), keep_alive);
                        (sent.await.is_ok(), start)
                    }
                };
                self.finish(c, head, entry, kind, a.status, start, "");
                let (close, fanout) = (a.close, a.fanout);
                // Freed now, not after the wait below: in a fan-out every answer would
                // otherwise stay allocated until the last one is written.
                drop(a);
                if ok && keep_alive && !close {
                    if let Some(t) = fanout {
                        // The buffer goes back to the allocator for the next answer of the
                        // fan-out, rather than staying with a connection that may now idle.
                        *c.out = Vec::new();
                        // The held poll's hang-up probe left this task's waker on the socket,
                        // so the client's next step (its re-poll, its EOF) would wake the task
                        // in the middle of the fan-out only to find it waiting. A read that
                        // wakes nobody takes the probe's place; what it finds waits here.
                        let open = read_quietly(c.io, c.pipelined);
                        // Whatever this client does next (hang up, poll again) waits until the
                        // answers due with this one have gone out (see `cache/due.rs`).
                        self.state.store.answers_due().after(t).await;
                        if !open {
                            return Served::Close;
                        }
                    }
                    Served::KeepAlive
                } else {
                    Served::Close
                }
            }
            Dispatch::Proxy(m) => {
                let origin = m
                    .entry
                    .route
                    .cors
                    .as_deref()
                    .map(|r| (r, cors::check_request(r, head)));
                if let Some((rules, cors::OriginCheck::Refused)) = origin {
                    let a = cors::refused(rules).closing(head.has_body());
                    let route = &m.entry.route.name;
                    return self.local(c, head, route, a, keep_alive, start).await;
                }
                if head.has_body() {
                    return pingora(head, buffered);
                }
                self.forward(c, head, m.entry, keep_alive, start, origin)
                    .await
            }
        }
    }

    async fn forward(
        &self,
        c: &mut Conn<'_>,
        head: &RequestHead<'_>,
        entry: &RouteEntry,
        keep_alive: bool,
        start: Instant,
        origin: Option<(&crate::config::Cors, cors::OriginCheck)>,
    ) -> Served {
        let mut client = c.client(keep_alive, origin, false);
        // Boxed: a forward's state would otherwise sit in every connection's future, held polls
        // included.
        let done = Box::pin(forward::forward(
            &self.state.client,
            &mut client,
            head,
            entry,
        ))
        .await;
        let error = done.error.and_then(|f| f.kind()).unwrap_or("");
        self.finish(c, head, entry, Kind::Proxy, done.status, start, error);
        if done.keep_alive {
            Served::KeepAlive
        } else {
            Served::Close
        }
    }

    /// Writes an EventSource stream until it ends: the poll core says what and when, `wire`
    /// frames it (chunked on HTTP/1.1; HTTP/1.0 until the close). The connection closes after
    /// it. A write that fails, or takes longer than `WRITE_LIMIT`, means the client is gone,
    /// like the end of `client_read`.
    async fn stream(
        &self,
        c: &mut Conn<'_>,
        head: &RequestHead<'_>,
        entry: &RouteEntry,
        mut events: Box<EventStream>,
        start: Instant,
    ) -> Served {
        let chunked = !head.http10;
        let opening = events.opening();
        let written = |r: Result<std::io::Result<()>, _>| matches!(r, Ok(Ok(())));
        let head_write = wire::send_stream_head(c.io, c.out, &events.head, chunked, &opening);
        let mut ok = written(tokio::time::timeout(WRITE_LIMIT, head_write).await);
        while ok {
            match events.next(client_read(c.io)).await {
                Step::Send(bytes) => {
                    let write = wire::send_stream_bytes(c.io, c.out, &bytes, chunked);
                    ok = written(tokio::time::timeout(WRITE_LIMIT, write).await);
                }
                Step::End => {
                    let _ =
                        tokio::time::timeout(WRITE_LIMIT, wire::end_stream(c.io, chunked)).await;
                    break;
                }
                Step::Gone => break,
            }
        }
        let status = events.head.status;
        // The slot is free before the line is logged.
        drop(events);
        self.finish(c, head, entry, Kind::Stream, status, start, "");
        Served::Close
    }

    /// A genuine WebSocket handshake: its tunnel slots, the handshake forwarded, and after a
    /// `101` the two sockets relayed until the tunnel ends (`tunnel.rs`). Logged once, at the
    /// end, as pingora's proxy logs its tunnels.
    async fn tunnel(
        &self,
        c: &mut Conn<'_>,
        head: &RequestHead<'_>,
        entry: &RouteEntry,
        keep_alive: bool,
        start: Instant,
        rest: &[u8],
    ) -> Served {
        let limits = self.state.limits();
        let Some(slots) = tunnel::take_slots(&self.state.websockets, &limits, entry) else {
            let a = Answer::unavailable(tunnel::REFUSED);
            let ok = wire::send_answer(c.io, c.out, &a, false, keep_alive)
                .await
                .is_ok();
            self.finish(c, head, entry, Kind::WebSocket, a.status, start, "");
            return if ok && keep_alive {
                Served::KeepAlive
            } else {
                Served::Close
            };
        };
        let mut client = c.client(keep_alive, None, true);
        let done = forward::forward(&self.state.client, &mut client, head, entry).await;
        let Some(upstream) = done.switched else {
            // Refused by the upstream (or failed): relayed like any forwarded answer.
            let error = done.error.and_then(|f| f.kind()).unwrap_or("");
            self.finish(c, head, entry, Kind::WebSocket, done.status, start, error);
            return if done.keep_alive {
                Served::KeepAlive
            } else {
                Served::Close
            };
        };
        let open = tunnel::Open::counted();
        // What the client sent behind its handshake, then while the upstream answered.
        let mut early = Vec::with_capacity(rest.len() + c.pipelined.len());
        early.extend_from_slice(rest);
        early.extend_from_slice(c.pipelined);
        let idle = entry.route.upstream.websocket_idle_timeout;
        let ended = tunnel::relay(c.io, &early, upstream, idle).await;
        drop(open);
        drop(slots);
        self.finish(c, head, entry, Kind::WebSocket, 101, start, ended.error());
        Served::Close
    }

    /// Writes an answer the gateway gives itself (404, a refused handshake).
    async fn local(
        &self,
        c: &mut Conn<'_>,
        head: &RequestHead<'_>,
        route: &str,
        a: Answer,
        keep_alive: bool,
        start: Instant,
    ) -> Served {
        let ok = wire::send_answer(c.io, c.out, &a, head.is_head(), keep_alive)
            .await
            .is_ok();
        finish(
            &Finished {
                client: c.client.as_deref(),
                method: head.method,
                path: head.path,
                route,
                hub: None,
                kind: Kind::Local,
                status: a.status,
                elapsed: start.elapsed(),
                upstream: "-",
                error: "",
            },
            self.state.access_log(),
        );
        if ok && keep_alive && !a.close {
            Served::KeepAlive
        } else {
            Served::Close
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        c: &Conn<'_>,
        head: &RequestHead<'_>,
        entry: &RouteEntry,
        kind: Kind,
        status: u16,
        start: Instant,
        error: &str,
    ) {
        let upstream = match kind {
            Kind::Proxy | Kind::Fallback | Kind::WebSocket => entry.route.upstream.name.as_str(),
            _ => "-",
        };
        finish(
            &Finished {
                client: c.client.as_deref(),
                method: head.method,
                path: head.path,
                route: &entry.route.name,
                hub: entry.hub.as_ref(),
                kind,
                status,
                elapsed: start.elapsed(),
                upstream,
                error,
            },
            self.state.access_log(),
        );
    }

    /// Logs an answer given before any request was read whole (a refused or late head).
    fn log_local(&self, client: Option<&str>, status: u16, elapsed: Duration) {
        finish(
            &Finished {
                client,
                method: "-",
                path: "-",
                route: "none",
                hub: None,
                kind: Kind::Local,
                status,
                elapsed,
                upstream: "-",
                error: "",
            },
            self.state.access_log(),
        );
    }

    /// Over `max_connections`: reads the request head (so the answer is not lost to a reset over
    /// unread bytes), answers 503 with `Retry-After`, and closes.
    async fn refuse(
        &self,
        io: &mut Stream,
        buf: &mut BytesMut,
        out: &mut Vec<u8>,
        drain: &mut ShutdownWatch,
        accepted: tokio::time::Instant,
    ) {
        let limits = self.state.limits();
        let deadline = Some(accepted + limits.header_read_timeout);
        loop {
            let mut slots = request::Slots::new();
            if !buf.is_empty()
                && !matches!(request::parse(buf, &mut slots, &limits), Parsed::Partial)
            {
                break;
            }
            if !matches!(
                read_more(io, buf, deadline, &limits, drain).await,
                More::Read
            ) {
                return;
            }
        }
        METRICS
            .rejected
            .with_label_values(&["none", "max_connections"])
            .inc();
        let a = Answer::unavailable("too many client connections").closing(true);
        let _ = wire::send_answer(io, out, &a, false, false).await;
        self.log_local(None, 503, accepted.elapsed());
    }
}

/// The parts of the connection a request's handling uses.
struct Conn<'a> {
    io: &'a mut Stream,
    out: &'a mut Vec<u8>,
    pipelined: &'a mut BytesMut,
    ip: Option<IpAddr>,
    /// The connection is TLS.
    https: bool,
    /// `ip` as text, once a forward has needed it.
    ip_text: &'a mut Option<String>,
    client: &'a Option<String>,
    draining: bool,
}

impl Conn<'_> {
    /// The connection as a forward sees it.
    fn client<'c>(
        &'c mut self,
        keep_alive: bool,
        cors: Option<(&'c crate::config::Cors, cors::OriginCheck)>,
        tunnel: bool,
    ) -> Client<'c> {
        Client {
            io: self.io,
            out: self.out,
            pipelined: self.pipelined,
            ip: self
                .ip
                .map(|ip| self.ip_text.get_or_insert_with(|| ip.to_string()).as_str()),
            https: self.https,
            keep_alive,
            cors,
            tunnel,
        }
    }
}

#[async_trait]
impl ServerApp for ConnectionApp {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The HTTP/2 paths are boxed: inline, pingora's HTTP/2 server and the preface check
        // would size every connection's future, held HTTP/1.1 polls included.
        if h2::negotiated(&stream) {
            Box::pin(self.serve_h2(stream, shutdown)).await;
            return None;
        }
        let mut first = BytesMut::new();
        if self.h2c && stream.get_ssl().is_none() {
            let limit = self.state.limits().header_read_timeout;
            match Box::pin(h2::sniff(&mut stream, limit)).await {
                h2::Opening::H2(preface) => {
                    // pingora's HTTP/2 server reads the preface again.
                    let replay: Stream = Box::new(Passthrough::replaying(stream, preface));
                    Box::pin(self.serve_h2(replay, shutdown)).await;
                    return None;
                }
                h2::Opening::H1(read) => first = read,
                h2::Opening::Gone => return None,
            }
        }
        self.serve(stream, first, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await
    }
}

/// Why reading more of a head stopped.
enum More {
    Read,
    /// The client closed its side (or its socket failed): close quietly.
    Gone,
    /// Idle past `keepalive_timeout`, or the server is draining: close quietly.
    Done,
    /// The head did not arrive by its deadline.
    TimedOut,
}

/// Reads more of a request head: within `deadline` once a head has begun (or since the
/// accept), else waiting up to `keepalive_timeout` for a first byte (a server shutdown ends
/// that wait too).
async fn read_more(
    io: &mut Stream,
    buf: &mut BytesMut,
    deadline: Option<tokio::time::Instant>,
    limits: &crate::config::Limits,
    drain: &mut ShutdownWatch,
) -> More {
    // Read on the stack and keep only what arrived: a connection's buffer then costs what its
    // client sent (a poller's head: about 100 bytes) rather than a fixed chunk for as long as
    // a poll is held. The copy is one short memcpy per read.
    let mut chunk = [0u8; READ_CHUNK];
    let read = match deadline {
        Some(d) => match tokio::time::timeout_at(d, io.read(&mut chunk)).await {
            Ok(r) => r,
            Err(_) => return More::TimedOut,
        },
        None => {
            if *drain.borrow() {
                return More::Done;
            }
            tokio::select! {
                biased;
                r = io.read(&mut chunk) => r,
                _ = tokio::time::sleep(limits.keepalive_timeout) => return More::Done,
                _ = drain.changed() => return More::Done,
            }
        }
    };
    match read {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            More::Read
        }
        _ => More::Gone,
    }
}

/// Reads what the client has sent without arming a wake-up: a pending read leaves a waker that
/// wakes nobody in place of the task's. Bytes read are appended to `into`. Returns whether the
/// client is still there (no EOF, no error).
fn read_quietly(io: &mut Stream, into: &mut BytesMut) -> bool {
    let mut chunk = [0u8; READ_CHUNK];
    let mut read = ReadBuf::new(&mut chunk);
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(io).poll_read(&mut cx, &mut read) {
        Poll::Pending => true,
        Poll::Ready(Ok(())) if read.filled().is_empty() => false,
        Poll::Ready(Ok(())) => {
            into.extend_from_slice(read.filled());
            true
        }
        Poll::Ready(Err(_)) => false,
    }
}

/// Hands `head`'s request to pingora: its buffered bytes, and what it may read beyond them.
fn pingora(head: &RequestHead<'_>, buffered: usize) -> Served {
    let extent = head.extent(buffered);
    Served::Pingora(extent, head.socket_budget(extent))
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
