//! Counting and logging a finished request, the same way whichever path answered it.

use crate::metrics::METRICS;
use crate::subscription::Hub;
use std::sync::Arc;
use std::time::Duration;

/// What kind of request this turned out to be (the `kind` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Answered by the gateway itself (errors, 404, refusals).
    Local,
    Poll,
    /// A poll forwarded to the backend (cold or stale topic).
    Fallback,
    Proxy,
    WebSocket,
    /// An EventSource stream from the cache (its duration is the stream's life).
    Stream,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Local => "local",
            Kind::Poll => "poll",
            Kind::Fallback => "fallback",
            Kind::Proxy => "proxy",
            Kind::WebSocket => "websocket",
            Kind::Stream => "sse",
        }
    }
}

/// One finished request.
pub struct Finished<'a> {
    pub client: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub hub: Option<&'a Arc<Hub>>,
    pub kind: Kind,
    /// 499: the client left before its answer (as nginx logs it); 0: nothing was answered.
    pub status: u16,
    pub elapsed: Duration,
    pub upstream: &'a str,
    pub error: &'a str,
}

/// Counts the request in the metrics and, when `access_log` is on, writes its log line.
pub fn finish(f: &Finished<'_>, access_log: bool) {
    count_request(f.route, f.hub, f.kind, f.status, f.elapsed);
    if access_log {
        tracing::info!(
            target: "access",
            client = %f.client.unwrap_or_default(),
            method = %f.method,
            path = %f.path,
            route = f.route,
            kind = f.kind.label(),
            status = f.status,
            duration_ms = f.elapsed.as_secs_f64() * 1000.0,
            upstream = f.upstream,
            error = f.error,
            "request"
        );
    }
}

/// Counts one finished request. Poll answers use their route's pre-resolved handles, so the
/// cache-hit path hashes no labels.
pub fn count_request(
    route: &str,
    hub: Option<&Arc<Hub>>,
    kind: Kind,
    status: u16,
    elapsed: Duration,
) {
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
