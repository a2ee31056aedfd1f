//! The `ProxyHttp` implementation: every client request enters here.
//!
//! `request_filter` routes the request and either answers it itself (404, malformed handshakes,
//! polls served from cache) or lets pingora proxy it: plain requests, WebSocket handshakes
//! (pingora relays the upgraded tunnel both ways) and cold-topic poll fallbacks.

pub mod access;
pub mod connection;
pub mod fast;
pub mod forward;
pub mod handshake;
pub mod header_deadline;
pub mod headers;
pub mod poll;
pub mod respond;
pub mod router;

use crate::cache::Store;
use crate::config::Config;
use crate::config::Limits;
use crate::limits;
use crate::metrics::METRICS;
use crate::subscription::Hub;
use async_trait::async_trait;
use handshake::Upgrade;
use parking_lot::RwLock;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use poll::PollOutcome;
use router::Router;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared gateway state: the routing table (swapped whole on reload) and the topic store.
/// A cheap-clone handle.
#[derive(Clone)]
pub struct GatewayState {
    // RwLock around an Arc: readers clone the Arc and release the lock at once, so a reload
    // never waits on a held poll and a request sees one consistent table throughout.
    router: Arc<RwLock<Arc<Router>>>,
    pub store: Store,
    access_log: Arc<std::sync::atomic::AtomicBool>,
    limits: Arc<RwLock<Limits>>,
    /// Open client connections, and WebSocket tunnels across all routes.
    connections: Arc<AtomicUsize>,
    websockets: Arc<AtomicUsize>,
    /// `header_read_timeout` in milliseconds, read by every accepted connection.
    pub header_timeout_ms: Arc<AtomicU64>,
}

impl GatewayState {
    pub fn new(config: &Config) -> GatewayState {
        let store = Store::new(config.max_topics, config.max_held_polls);
        let router = Router::build(config, &store, None);
        GatewayState {
            router: Arc::new(RwLock::new(Arc::new(router))),
            store,
            access_log: Arc::new(config.access_log.into()),
            limits: Arc::new(RwLock::new(config.limits)),
            connections: Arc::new(AtomicUsize::new(0)),
            websockets: Arc::new(AtomicUsize::new(0)),
            header_timeout_ms: Arc::new(AtomicU64::new(
                config.limits.header_read_timeout.as_millis() as u64,
            )),
        }
    }

    pub fn router(&self) -> Arc<Router> {
        self.router.read().clone()
    }

    pub fn limits(&self) -> Limits {
        *self.limits.read()
    }

    /// Installs a new config atomically; unchanged poll routes keep their hubs.
    pub fn apply(&self, config: &Config) {
        let old = self.router();
        let next = Arc::new(Router::build(config, &self.store, Some(&old)));
        for hub in old.retired_hubs(&next) {
            hub.close();
        }
        self.store
            .set_limits(config.max_topics, config.max_held_polls);
        self.access_log.store(config.access_log, Ordering::Relaxed);
        *self.limits.write() = config.limits;
        self.header_timeout_ms.store(
            config.limits.header_read_timeout.as_millis() as u64,
            Ordering::Relaxed,
        );
        *self.router.write() = next;
    }
}

/// The pingora proxy application.
pub struct Gateway {
    state: GatewayState,
}

impl Gateway {
    pub fn new(state: GatewayState) -> Gateway {
        Gateway { state }
    }
}

/// What kind of request this turned out to be (the `kind` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Answered by the gateway itself (errors, 404).
    Local,
    Poll,
    /// A poll forwarded to the backend (cold or stale topic).
    Fallback,
    Proxy,
    WebSocket,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Local => "local",
            Kind::Poll => "poll",
            Kind::Fallback => "fallback",
            Kind::Proxy => "proxy",
            Kind::WebSocket => "websocket",
        }
    }
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    router: Option<Arc<Router>>,
    route: Option<usize>,
    kind: Kind,
    /// Status of a response the gateway wrote itself.
    status: u16,
    tunnel_open: bool,
    /// Global and per-route WebSocket tunnel slots, held for the tunnel's life.
    tunnel_slots: Option<(limits::Slot, Option<limits::Slot>)>,
}

impl Ctx {
    fn route_name(&self) -> &str {
        match (&self.router, self.route) {
            (Some(r), Some(i)) => &r.entries[i].route.name,
            _ => "none",
        }
    }

    fn entry(&self) -> Option<&router::RouteEntry> {
        Some(&self.router.as_ref()?.entries[self.route?])
    }
}

async fn local_error(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    msg: &str,
) -> pingora_error::Result<bool> {
    ctx.kind = Kind::Local;
    ctx.status = status;
    let close = status == 400 || respond::has_body(session);
    respond::json_error(session, status, msg, &[], close).await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            router: None,
            route: None,
            kind: Kind::Proxy,
            status: 0,
            tunnel_open: false,
            tunnel_slots: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<bool> {
        let router = self.state.router();
        ctx.router = Some(router.clone());
        let limits = self.state.limits();
        session.set_keepalive(Some(limits.keepalive_timeout.as_secs()));
        if let Some((status, reason)) = check_request_shape(session.req_header(), &limits) {
            return local_error(session, ctx, status, reason).await;
        }
        if session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
        {
            // pingora drops Content-Length when Transfer-Encoding is present (RFC 9112 6.3);
            // the raw head still tells whether the client sent both, which we refuse.
            let both = session
                .as_http1()
                .is_some_and(|h1| raw_has_header(&h1.get_headers_raw_bytes(), b"content-length"));
            if both {
                return local_error(
                    session,
                    ctx,
                    400,
                    "both Content-Length and Transfer-Encoding",
                )
                .await;
            }
        }
        let req = session.req_header();
        // pingora keeps only the path of an absolute-form target in `uri`; the raw target
        // tells. Routing is by path alone, so a foreign authority is refused, never followed.
        if req.uri.scheme().is_some() || req.raw_path().first().is_some_and(|b| *b != b'/') {
            return local_error(
                session,
                ctx,
                400,
                "absolute-form request targets are not accepted",
            )
            .await;
        }
        let Some(m) = router.find(req.uri.path()) else {
            return local_error(session, ctx, 404, "no route matches this path").await;
        };
        ctx.route = Some(m.index);
        match handshake::classify(req) {
            Upgrade::Invalid(reason) => {
                return local_error(session, ctx, 400, reason).await;
            }
            Upgrade::WebSocket => {
                ctx.kind = Kind::WebSocket;
                let route_cap = m.entry.route.max_websockets;
                let global = limits::try_take(&self.state.websockets, limits.max_websockets);
                let local = match (global.is_some(), route_cap) {
                    (true, Some(max)) => limits::try_take(&m.entry.websockets, max).map(Some),
                    (true, None) => Some(None),
                    (false, _) => None,
                };
                match (global, local) {
                    (Some(g), Some(l)) => ctx.tunnel_slots = Some((g, l)),
                    _ => {
                        ctx.status = 503;
                        let route = m.entry.route.name.clone();
                        respond::refuse(
                            session,
                            &route,
                            "max_websockets",
                            "too many WebSocket tunnels",
                            false,
                        )
                        .await?;
                        return Ok(true);
                    }
                }
                // The client's side of an idle tunnel must outlive pingora's 60 s default read
                // timeout, for as long as the upstream's `websocket_idle_timeout`.
                let idle = m.entry.route.upstream.websocket_idle_timeout;
                session.set_read_timeout(Some(idle));
                return Ok(false);
            }
            Upgrade::Other | Upgrade::None => {}
        }
        let is_poll_method = matches!(req.method, http::Method::GET | http::Method::HEAD);
        if let (Some(hub), Some(raw_topic), true) = (&m.entry.hub, m.topic, is_poll_method) {
            ctx.kind = Kind::Poll;
            let hub = hub.clone();
            let raw_topic = raw_topic.to_string();
            let entry = &router.entries[m.index];
            return match poll::serve(session, &hub, &raw_topic, &entry.access).await? {
                PollOutcome::Answered(status) => {
                    ctx.status = status;
                    Ok(true)
                }
                PollOutcome::Gone => {
                    // 499: the client closed the connection before the answer (as nginx logs it).
                    ctx.status = 499;
                    session.set_keepalive(None);
                    Ok(true)
                }
                PollOutcome::Fallback => {
                    ctx.kind = Kind::Fallback;
                    Ok(false)
                }
            };
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<Box<HttpPeer>> {
        let Some(entry) = ctx.entry() else {
            return Error::e_explain(ErrorType::InternalError, "no route selected");
        };
        let up = &entry.route.upstream;
        let mut peer = HttpPeer::new(up.socket_addr, false, String::new());
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(if ctx.kind == Kind::WebSocket {
            up.websocket_idle_timeout
        } else {
            up.read_timeout
        });
        peer.options.write_timeout = Some(up.write_timeout);
        peer.options.idle_timeout = Some(up.idle_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        let host = ctx.entry().and_then(|e| e.route.upstream.host.clone());
        headers::upstream_request(
            upstream_request,
            client,
            ctx.kind == Kind::WebSocket,
            host.as_deref(),
        );
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<()> {
        headers::downstream_response(upstream_response);
        if ctx.kind == Kind::WebSocket
            && upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS
            && !ctx.tunnel_open
        {
            ctx.tunnel_open = true;
            METRICS.websocket_active.inc();
            METRICS.websocket_total.inc();
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, kind) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, None),
            ErrorType::ConnectTimedout => (504, Some("connect_timeout")),
            ErrorType::ConnectRefused => (502, Some("connect_refused")),
            ErrorType::ConnectNoRoute | ErrorType::ConnectError => (502, Some("connect_error")),
            ErrorType::ReadTimedout if e.esource() == &ErrorSource::Upstream => {
                (504, Some("read_timeout"))
            }
            ErrorType::WriteTimedout if e.esource() == &ErrorSource::Upstream => {
                (504, Some("write_timeout"))
            }
            _ => match e.esource() {
                ErrorSource::Upstream => (502, Some("protocol")),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, None)
                    }
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => (0, None),
                    _ => (400, None),
                },
                _ => (500, None),
            },
        };
        if let (Some(kind), Some(entry)) = (kind, ctx.entry()) {
            METRICS
                .upstream_errors
                .with_label_values(&[&entry.route.upstream.name, kind])
                .inc();
        }
        // A poll that fell back because the cache could not answer, and then found the backend
        // down too, is a temporary condition the client should retry.
        let (status, retry) = if ctx.kind == Kind::Fallback && (status == 502 || status == 504) {
            (503, true)
        } else {
            (status, false)
        };
        let message = if retry {
            "no fresh data cached and the backend is unavailable"
        } else {
            respond::proxy_error_message(status)
        };
        if status > 0 && session.response_written().is_none() {
            ctx.status = status;
            let written = if retry {
                respond::unavailable(session, message, true).await
            } else {
                respond::json_error(session, status, message, &[], true).await
            };
            if written.is_err() {
                tracing::debug!("could not write error response; client gone");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.tunnel_open {
            METRICS.websocket_active.dec();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(ctx.status);
        let elapsed = ctx.start.elapsed();
        let route = ctx.route_name();
        let hub = ctx.entry().and_then(|e| e.hub.as_ref());
        count_request(route, hub, ctx.kind, status, elapsed);
        if self.state.access_log.load(Ordering::Relaxed) {
            let req = session.req_header();
            let upstream = ctx
                .entry()
                .filter(|_| matches!(ctx.kind, Kind::Proxy | Kind::Fallback | Kind::WebSocket))
                .map(|e| e.route.upstream.name.as_str())
                .unwrap_or("-");
            access_log(&AccessLine {
                client: session.client_addr().map(|a| a.to_string()),
                method: req.method.as_str(),
                path: req.uri.path(),
                route,
                kind: ctx.kind,
                status,
                elapsed,
                upstream,
                error: e.map(|e| e.etype().as_str()).unwrap_or(""),
            });
        }
    }
}

/// Counts one finished request. Poll answers use their route's pre-resolved handles, so the
/// cache-hit path hashes no labels.
fn count_request(route: &str, hub: Option<&Arc<Hub>>, kind: Kind, status: u16, elapsed: Duration) {
    match (kind, status, hub) {
        (Kind::Poll, 200, Some(h)) => {
            h.cache.metrics.ok_200.inc();
            h.cache.metrics.poll_duration.observe(elapsed.as_secs_f64());
        }
        (Kind::Poll, 304, Some(h)) => {
            h.cache.metrics.ok_304.inc();
            h.cache.metrics.poll_duration.observe(elapsed.as_secs_f64());
        }
        _ => {
            // `StatusCode::as_str` is a static string: no allocation per request.
            let code = http::StatusCode::from_u16(status).ok();
            METRICS
                .proxied_requests
                .with_label_values(&[route, code.as_ref().map_or("0", |s| s.as_str())])
                .inc();
            METRICS
                .request_duration
                .with_label_values(&[route, kind.label()])
                .observe(elapsed.as_secs_f64());
        }
    }
}

/// One access-log line's fields.
struct AccessLine<'a> {
    client: Option<String>,
    method: &'a str,
    path: &'a str,
    route: &'a str,
    kind: Kind,
    status: u16,
    elapsed: Duration,
    upstream: &'a str,
    error: &'a str,
}

fn access_log(l: &AccessLine<'_>) {
    tracing::info!(
        target: "access",
        client = %l.client.as_deref().unwrap_or_default(),
        method = %l.method,
        path = %l.path,
        route = l.route,
        kind = l.kind.label(),
        status = l.status,
        duration_ms = l.elapsed.as_secs_f64() * 1000.0,
        upstream = l.upstream,
        error = l.error,
        "request"
    );
}

/// Refuses requests whose size or framing is unsafe to pass on: oversized request lines or
/// headers (431), and the ambiguous framings behind request smuggling (400).
fn check_request_shape(req: &RequestHeader, limits: &Limits) -> Option<(u16, &'static str)> {
    let line = req.method.as_str().len() + req.raw_path().len() + 11;
    if line > limits.max_request_line_bytes {
        return Some((431, "request line too large"));
    }
    let headers: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if line + headers > limits.max_request_header_bytes {
        return Some((431, "request headers too large"));
    }
    let hosts = req.headers.get_all(http::header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version == http::Version::HTTP_11) {
        return Some((400, "HTTP/1.1 requests need exactly one Host header"));
    }
    let lengths: Vec<_> = req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .collect();
    let te: Vec<_> = req
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .collect();
    if lengths.len() > 1 {
        return Some((400, "more than one Content-Length header"));
    }
    if let Some(l) = lengths.first() {
        let ok = !l.is_empty() && l.as_bytes().iter().all(u8::is_ascii_digit);
        if !ok {
            return Some((400, "Content-Length is not a number"));
        }
    }
    if !te.is_empty() {
        if !lengths.is_empty() {
            return Some((400, "both Content-Length and Transfer-Encoding"));
        }
        if req.version != http::Version::HTTP_11 {
            return Some((400, "Transfer-Encoding needs HTTP/1.1"));
        }
        if te.len() > 1 || !te[0].as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Some((400, "unsupported Transfer-Encoding (only `chunked`)"));
        }
    }
    None
}

/// Whether a raw request head contains a header line named `name` (lowercase).
fn raw_has_header(raw: &[u8], name: &[u8]) -> bool {
    raw.split(|b| *b == b'\n').skip(1).any(|line| {
        line.iter()
            .position(|b| *b == b':')
            .is_some_and(|i| line[..i].trim_ascii().eq_ignore_ascii_case(name))
    })
}
