//! The `ProxyHttp` implementation: every client request enters here.
//!
//! `request_filter` routes the request and either answers it itself (404, malformed handshakes,
//! polls served from cache) or lets pingora proxy it: plain requests, WebSocket handshakes
//! (pingora relays the upgraded tunnel both ways) and cold-topic poll fallbacks.

pub mod handshake;
pub mod headers;
pub mod poll;
pub mod respond;
pub mod router;

use crate::cache::Store;
use crate::config::Config;
use crate::metrics::METRICS;
use async_trait::async_trait;
use handshake::Upgrade;
use parking_lot::RwLock;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use poll::PollOutcome;
use router::Router;
use std::sync::Arc;
use std::time::Instant;

/// Shared gateway state: the routing table (swapped whole on reload) and the topic store.
/// A cheap-clone handle.
#[derive(Clone)]
pub struct GatewayState {
    // RwLock around an Arc: readers clone the Arc and release the lock at once, so a reload
    // never waits on a held poll and a request sees one consistent table throughout.
    router: Arc<RwLock<Arc<Router>>>,
    pub store: Store,
    access_log: Arc<std::sync::atomic::AtomicBool>,
}

impl GatewayState {
    pub fn new(config: &Config) -> GatewayState {
        let store = Store::new(config.max_topics, config.max_held_polls);
        let router = Router::build(config, &store, None);
        GatewayState {
            router: Arc::new(RwLock::new(Arc::new(router))),
            store,
            access_log: Arc::new(config.access_log.into()),
        }
    }

    pub fn router(&self) -> Arc<Router> {
        self.router.read().clone()
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
        self.access_log
            .store(config.access_log, std::sync::atomic::Ordering::Relaxed);
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
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<bool> {
        let router = self.state.router();
        ctx.router = Some(router.clone());
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
            return match poll::serve(session, &hub, &raw_topic).await? {
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
        let message = match status {
            502 => "the upstream could not be reached or answered badly",
            504 => "the upstream did not answer in time",
            400 => "the request could not be read",
            _ => "the request failed",
        };
        if status > 0 && session.response_written().is_none() {
            ctx.status = status;
            if respond::json_error(session, status, message, &[], true)
                .await
                .is_err()
            {
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
        // The cache-hit path uses pre-resolved handles: no label hashing per request.
        let hub = ctx.entry().and_then(|e| e.hub.as_ref());
        match (ctx.kind, status, hub) {
            (Kind::Poll, 200, Some(h)) => {
                h.cache.metrics.ok_200.inc();
                h.cache.metrics.poll_duration.observe(elapsed.as_secs_f64());
            }
            (Kind::Poll, 304, Some(h)) => {
                h.cache.metrics.ok_304.inc();
                h.cache.metrics.poll_duration.observe(elapsed.as_secs_f64());
            }
            _ => {
                METRICS
                    .proxied_requests
                    .with_label_values(&[route, status.to_string().as_str()])
                    .inc();
                METRICS
                    .request_duration
                    .with_label_values(&[route, ctx.kind.label()])
                    .observe(elapsed.as_secs_f64());
            }
        }
        if self
            .state
            .access_log
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let req = session.req_header();
            let upstream = ctx
                .entry()
                .filter(|_| matches!(ctx.kind, Kind::Proxy | Kind::Fallback | Kind::WebSocket))
                .map(|e| e.route.upstream.name.as_str())
                .unwrap_or("-");
            tracing::info!(
                target: "access",
                client = %session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
                method = %req.method,
                path = %req.uri.path(),
                route,
                kind = ctx.kind.label(),
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                upstream,
                error = e.map(|e| e.etype().as_str()).unwrap_or(""),
                "request"
            );
        }
    }
}
