//! The `ProxyHttp` implementation: the requests pollgate's connection loop hands to pingora
//! (bodies, including a handshake with one, or everything with `fast_paths: false`). Every
//! head it sees already passed the validator in `request.rs`.
//!
//! `request_filter` routes the request ([`Router::dispatch`], the same decision the connection
//! loop makes) and either answers it itself through [`super::session`] (404, malformed
//! handshakes, polls decided by [`super::poll`]) or lets pingora proxy it: plain requests,
//! WebSocket handshakes (pingora relays the upgraded tunnel both ways) and poll fallbacks.

use super::answer::{proxy_error_message, Answer, FALLBACK_UNAVAILABLE};
use super::headers;
use super::log::{finish, Finished, Kind};
use super::poll::{self, Outcome, PollRequest};
use super::request;
use super::router::{Dispatch, RouteEntry, Router};
use super::session;
use super::state::GatewayState;
use super::upstream::{self, Failure};
use super::{cors, handshake, tunnel};
use crate::metrics::METRICS;
use async_trait::async_trait;
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

/// The pingora proxy application.
pub struct Gateway {
    state: GatewayState,
}

impl Gateway {
    pub fn new(state: GatewayState) -> Gateway {
        Gateway { state }
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
    tunnel_slots: Option<tunnel::Slots>,
    /// On a proxy route with `cors`: the request's origin, for the relayed answer.
    origin: Option<cors::OriginCheck>,
}

impl Ctx {
    fn route_name(&self) -> &str {
        self.entry().map_or("none", |e| &e.route.name)
    }

    fn entry(&self) -> Option<&RouteEntry> {
        Some(&self.router.as_ref()?.entries[self.route?])
    }
}

/// The request's path, query and whole target, as the client sent them.
fn target_of(req: &RequestHeader) -> (&str, &str, Option<&str>) {
    let target = std::str::from_utf8(req.raw_path()).unwrap_or_else(|_| req.uri.path());
    match target.split_once('?') {
        Some((p, q)) => (target, p, Some(q)),
        None => (target, target, None),
    }
}

/// Whether the client came over TLS (HTTP/2 by ALPN, or HTTP/1.1 handed over by the
/// connection loop, whose `Passthrough` passes the TLS digest on).
fn over_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Whether the request carries a body (declared length above zero, or chunked).
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().trim_ascii() != b"0")
}

async fn answer(session: &mut Session, ctx: &mut Ctx, a: Answer) -> pingora_error::Result<bool> {
    ctx.status = a.status;
    session::send_answer(session, a).await?;
    Ok(true)
}

/// Writes an EventSource stream until it ends: the poll core says what and when, the session
/// writer frames it. A write that fails, or takes longer than `WRITE_LIMIT` (pingora's own
/// write timeout), means the client is gone, like the end of `gone`.
async fn stream(session: &mut Session, mut events: Box<poll::EventStream>) {
    session.set_write_timeout(Some(poll::WRITE_LIMIT));
    let opening = events.opening();
    let mut ok = session::send_stream_head(session, &events.head, opening)
        .await
        .is_ok();
    while ok {
        let gone = session.read_body_or_idle(true);
        match events.next(gone).await {
            poll::Step::Send(bytes) => {
                ok = session::send_stream_bytes(session, bytes).await.is_ok()
            }
            poll::Step::End => {
                let _ = session::end_stream(session).await;
                break;
            }
            poll::Step::Gone => break,
        }
    }
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
            origin: None,
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
        let http10 = req.version == http::Version::HTTP_10;
        if http10 {
            // HTTP/1.0 has no interim answers.
            session.set_ignore_info_resp(true);
        }
        let req = session.req_header().clone();
        // pingora reads only the first `Connection` line; the validator reads them all, and its
        // verdict is the one both paths keep.
        let keep = request::keeps_alive_by(
            http10,
            req.headers
                .get_all(http::header::CONNECTION)
                .iter()
                .map(|v| v.as_bytes()),
        );
        if !keep {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_none() && !self.state.store.shutting_down() {
            session.set_keepalive(Some(0));
        }
        let (target, path, query) = target_of(&req);
        let method = req.method.as_str();
        let upgrade = handshake::classify(method, !http10, &req);
        let preflight = cors::is_preflight(method, &req);
        match router.dispatch(method, path, upgrade, preflight) {
            Dispatch::NotFound => {
                ctx.kind = Kind::Local;
                let a = Answer::error(404, "no route matches this path").closing(has_body(&req));
                answer(session, ctx, a).await
            }
            Dispatch::BadHandshake(m, reason) => {
                ctx.kind = Kind::Local;
                ctx.route = Some(m.index);
                answer(session, ctx, Answer::error(400, reason).closing(true)).await
            }
            Dispatch::Tunnel(m) => {
                ctx.route = Some(m.index);
                ctx.kind = Kind::WebSocket;
                let limits = self.state.limits();
                let Some(slots) = tunnel::take_slots(&self.state.websockets, &limits, m.entry)
                else {
                    let a = Answer::unavailable(tunnel::REFUSED);
                    return answer(session, ctx, a).await;
                };
                ctx.tunnel_slots = Some(slots);
                // The client's side of an idle tunnel must outlive pingora's 60 s default read
                // timeout, for as long as the upstream's `websocket_idle_timeout`.
                let idle = m.entry.route.upstream.websocket_idle_timeout;
                session.set_read_timeout(Some(idle));
                Ok(false)
            }
            Dispatch::Preflight(m) => {
                ctx.kind = Kind::Local;
                ctx.route = Some(m.index);
                let Some(rules) = &m.entry.route.cors else {
                    return Error::e_explain(ErrorType::InternalError, "preflight without cors");
                };
                let check = cors::check_request(rules, &req);
                let a = cors::preflight(rules, &check, cors::methods(m.entry.hub.is_some()))
                    .closing(has_body(&req));
                answer(session, ctx, a).await
            }
            Dispatch::Poll(index, hub, raw_topic) => {
                ctx.route = Some(index);
                ctx.kind = Kind::Poll;
                let entry = &router.entries[index];
                let preq = PollRequest {
                    head_only: req.method == http::Method::HEAD,
                    has_body: has_body(&req),
                    raw_topic,
                    target,
                    query,
                    headers: &req,
                    client_ip: session
                        .client_addr()
                        .and_then(|a| a.as_inet())
                        .map(|a| a.ip()),
                    https: over_tls(session),
                    cors: entry.route.cors.as_deref(),
                };
                let parts = poll::RouteParts {
                    hub,
                    access: &entry.access,
                    flights: &entry.flights,
                    shadow: &entry.shadow,
                    client: &self.state.client,
                };
                // Boxed: the poll core wants a hang-up future it can poll in place.
                let gone = poll::Client::Session(Box::pin(session.read_body_or_idle(true)));
                match poll::serve(parts, &preq, gone).await {
                    Outcome::Answer(a) => answer(session, ctx, a).await,
                    Outcome::Relayed(a) => {
                        ctx.kind = Kind::Fallback;
                        answer(session, ctx, a).await
                    }
                    Outcome::Gone => {
                        ctx.status = 499;
                        session.set_keepalive(None);
                        Ok(true)
                    }
                    Outcome::Forward => {
                        ctx.kind = Kind::Proxy;
                        Ok(false)
                    }
                    Outcome::Stream(events) => {
                        ctx.kind = Kind::Stream;
                        ctx.status = events.head.status;
                        stream(session, events).await;
                        Ok(true)
                    }
                }
            }
            Dispatch::Proxy(m) => {
                ctx.route = Some(m.index);
                if let Some(rules) = &m.entry.route.cors {
                    let check = cors::check_request(rules, &req);
                    if check == cors::OriginCheck::Refused {
                        ctx.kind = Kind::Local;
                        return answer(session, ctx, cors::refused(rules).closing(has_body(&req)))
                            .await;
                    }
                    ctx.origin = Some(check);
                }
                Ok(false)
            }
        }
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
        let mut peer = upstream::peer(up, ctx.kind == Kind::WebSocket);
        // `headers::upstream_request` applies the whole header policy, on both paths; pingora's
        // own (which removes, and so reorders, before the filter) stays out of the way.
        peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        if !up.keepalive {
            peer.options.idle_timeout = Some(std::time::Duration::ZERO);
        }
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
        let Some(entry) = ctx.entry() else {
            return Error::e_explain(ErrorType::InternalError, "no route selected");
        };
        let up = &entry.route.upstream;
        let rebuilt = headers::upstream_request(
            upstream_request.method.as_str(),
            upstream_request.raw_path(),
            headers::lines_of(upstream_request),
            upstream_request
                .headers
                .get_all(http::header::CONNECTION)
                .iter()
                .map(|v| v.as_bytes()),
            client.as_deref(),
            over_tls(session),
            ctx.kind == Kind::WebSocket,
            up,
        );
        match rebuilt {
            Some(r) => {
                *upstream_request = r;
                Ok(())
            }
            None => Error::e_explain(ErrorType::InternalError, "upstream request not buildable"),
        }
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<()> {
        let status = upstream_response.status.as_u16();
        if headers::response_too_large(upstream_response) {
            let mut e = Error::explain(ErrorType::InvalidHTTPHeader, "response head over 64 KiB");
            e.esource = ErrorSource::Upstream;
            return Err(e);
        }
        if status == 101 && ctx.kind != Kind::WebSocket {
            // Nobody asked for an upgrade: a backend switching protocols anyway is broken.
            let mut e = Error::explain(
                ErrorType::InvalidHTTPHeader,
                "101 Switching Protocols to a request that asked for no upgrade",
            );
            e.esource = ErrorSource::Upstream;
            return Err(e);
        }
        headers::downstream_response(upstream_response);
        if let (Some(check), Some(rules)) = (
            &ctx.origin,
            ctx.entry().and_then(|e| e.route.cors.as_deref()),
        ) {
            cors::relayed(upstream_response, rules, check);
        }
        if status >= 200 && session.req_header().version == http::Version::HTTP_10 {
            // HTTP/1.0 has no chunks: a body of unknown length is delimited by the close.
            if upstream_response
                .headers
                .contains_key(http::header::TRANSFER_ENCODING)
            {
                upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
                upstream_response.remove_header(&http::header::CONTENT_LENGTH);
                session.set_keepalive(None);
            }
        }
        if ctx.kind == Kind::WebSocket && status == 101 && !ctx.tunnel_open {
            ctx.tunnel_open = true;
            METRICS.websocket_active.inc();
            METRICS.websocket_total.inc();
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let failure = match e.etype() {
            ErrorType::HTTPStatus(_) => None,
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError => Some(Failure::of(e)),
            _ if e.esource() == &ErrorSource::Upstream => Some(Failure::of(e)),
            _ => None,
        };
        let status = match (e.etype(), failure, e.esource()) {
            (ErrorType::HTTPStatus(code), _, _) => *code,
            (_, Some(f), _) => f.status(),
            (etype, None, ErrorSource::Downstream) => match etype {
                ErrorType::WriteError
                | ErrorType::ReadError
                | ErrorType::ConnectionClosed
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout => 0,
                _ => 400,
            },
            _ => 500,
        };
        if let (Some(f), Some(entry)) = (failure, ctx.entry()) {
            f.count(&entry.route.upstream.name);
        }
        if status > 0 && session.response_written().is_none() {
            // A poll that fell back because the cache could not answer, and then found the
            // backend down too, is a temporary condition the client should retry.
            let a = if ctx.kind == Kind::Fallback && (status == 502 || status == 504) {
                Answer::unavailable(FALLBACK_UNAVAILABLE)
            } else {
                Answer::error(status, proxy_error_message(status))
            }
            .closing(true);
            ctx.status = a.status;
            if session::send_answer(session, a).await.is_err() {
                tracing::debug!("could not write error response; client gone");
            }
        }
        FailToProxy {
            error_code: ctx.status.max(status),
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
        let req = session.req_header();
        let upstream = ctx
            .entry()
            .filter(|_| matches!(ctx.kind, Kind::Proxy | Kind::Fallback | Kind::WebSocket))
            .map_or("-", |e| e.route.upstream.name.as_str());
        let client = session.client_addr().map(|a| a.to_string());
        finish(
            &Finished {
                client: client.as_deref(),
                method: req.method.as_str(),
                path: req.uri.path(),
                route: ctx.route_name(),
                hub: ctx.entry().and_then(|e| e.hub.as_ref()),
                kind: ctx.kind,
                status,
                elapsed: ctx.start.elapsed(),
                upstream,
                error: e.map(|e| e.etype().as_str()).unwrap_or(""),
            },
            self.state.access_log(),
        );
    }
}
