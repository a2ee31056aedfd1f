//! The admin listener (`metrics_listen`): `/metrics`, `/healthz`, `/readyz`, `/topics` and a
//! small live status page at `/`. Never served on the public listeners.

use crate::cache::SubState;
use crate::metrics::METRICS;
use crate::proxy::GatewayState;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub struct AdminApp {
    pub state: GatewayState,
    /// The public listeners as bound (with the kernel's port where the config said port 0).
    pub listen: Vec<SocketAddr>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("static response parts are valid")
}

impl AdminApp {
    /// Ready when every public listener accepts a connection.
    async fn ready(&self) -> Result<(), String> {
        for l in &self.listen {
            match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(l))
                .await
            {
                Ok(Ok(_)) => {}
                _ => return Err(format!("listener {l} is not accepting")),
            }
        }
        if self.state.store.shutting_down() {
            return Err("shutting down".into());
        }
        Ok(())
    }

    /// Per route and topic: what an operator needs to see what the cache is doing; per route
    /// with `shadow`, how the cache compares with the backend.
    pub fn topics_json(&self) -> serde_json::Value {
        let router = self.state.router();
        let mut routes = Vec::new();
        for entry in &router.entries {
            let Some(hub) = &entry.hub else { continue };
            let mut topics = Vec::new();
            for t in hub.cache.topics() {
                let state = match t.state() {
                    SubState::Connecting => "connecting",
                    SubState::Live => "live",
                    SubState::Down(_) => "down",
                    SubState::Failed => "failed",
                };
                let now = hub.cache.store.now_ms();
                topics.push(serde_json::json!({
                    "topic": &*t.name,
                    "subscription": state,
                    "last_message_age_seconds": t.age().map(|a| a.as_secs_f64()),
                    "cached_messages": t.len(),
                    "messages_received": t.received(),
                    "held_polls": t.held.load(Ordering::Relaxed),
                    "sse_streams": t.streams.load(Ordering::Relaxed),
                    "last_poll_seconds_ago": now.saturating_sub(t.last_poll_ms.load(Ordering::Relaxed)) as f64 / 1000.0,
                    "pollers_last_minute": t.pollers_last_minute(now),
                    "requests_saved": t.saved.load(Ordering::Relaxed),
                }));
            }
            topics.sort_by(|a, b| a["topic"].as_str().cmp(&b["topic"].as_str()));
            let mut route = serde_json::json!({
                "route": &*entry.route.name,
                "mode": match hub.poll().mode { crate::config::Mode::Latest => "latest", crate::config::Mode::Since => "since" },
                "topics": topics,
            });
            if let Some(s) = entry.shadow.report() {
                route["shadow"] = s;
            }
            routes.push(route);
        }
        serde_json::json!({
            "routes": routes,
            "topics_total": self.state.store.topic_count(),
            "held_polls_total": self.state.store.held_count(),
            "sse_streams_total": self.state.store.stream_count(),
        })
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => {
                let due = self.state.store.answers_due().pending();
                METRICS
                    .fanout_answers_due
                    .set(i64::try_from(due).unwrap_or(i64::MAX));
                reply(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    METRICS.render(),
                )
            }
            "/healthz" => reply(200, "text/plain; charset=utf-8", b"ok\n".to_vec()),
            "/readyz" => match self.ready().await {
                Ok(()) => reply(200, "text/plain; charset=utf-8", b"ready\n".to_vec()),
                Err(e) => reply(
                    503,
                    "text/plain; charset=utf-8",
                    format!("not ready: {e}\n").into_bytes(),
                ),
            },
            "/topics" => reply(
                200,
                "application/json",
                serde_json::to_vec_pretty(&self.topics_json()).expect("json serialises"),
            ),
            "/" => reply(
                200,
                "text/html; charset=utf-8",
                STATUS_PAGE.as_bytes().to_vec(),
            ),
            _ => reply(
                404,
                "application/json",
                br#"{"error":"not_found","message":"no such admin endpoint"}"#.to_vec(),
            ),
        }
    }
}

/// Self-contained (no external assets) live view of `/topics`.
const STATUS_PAGE: &str = include_str!("status.html");
