//! Upstream WebSocket subscriptions that keep the cache fresh.
//!
//! A [`Hub`] owns one poll route's cache and its subscriptions: one socket per topic when
//! `subscribe.path` contains `{topic}`, else one shared socket per route that multiplexes topics
//! with `send`/`unsend` frames and routes incoming messages by `topic_pointer`. Sockets reconnect
//! with [`backoff::Backoff`]; a topic nobody polled for `idle_unsubscribe` is dropped by
//! [`Hub::evict_idle`], which the sweeper calls.

mod backoff;
mod shared;
mod socket;

pub use backoff::Backoff;
pub use socket::{connect, ConnectError};

use crate::cache::{
    etag_for, json_fragment, latest_heads, pointer_cursor, CacheError, Message, RouteCache, Store,
    SubState, Topic,
};
use crate::config::{Mode, PollRoute, Route, Upstream};
use crate::metrics::METRICS;
use backoff::Session;
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// One poll route's cache plus the subscriptions feeding it. Shared as `Arc<Hub>`.
pub struct Hub {
    pub cache: Arc<RouteCache>,
    pub upstream: Arc<Upstream>,
    per_topic: DashMap<Box<str>, AbortHandle>,
    shared: Mutex<Option<shared::SharedHandle>>,
}

impl Hub {
    pub fn new(route: &Route, poll: Arc<PollRoute>, store: Store) -> Arc<Hub> {
        Arc::new(Hub {
            cache: Arc::new(RouteCache::new(route.name.clone(), poll, store)),
            upstream: route.upstream.clone(),
            per_topic: DashMap::new(),
            shared: Mutex::new(None),
        })
    }

    pub fn poll(&self) -> &PollRoute {
        &self.cache.poll
    }

    /// The topic, created and subscribed on first use (exactly once however many polls race).
    pub fn topic(self: &Arc<Self>, name: &str) -> Result<Arc<Topic>, CacheError> {
        let (topic, created) = self.cache.get_or_create(name)?;
        if created {
            self.cache.metrics.subscriptions.inc();
            self.subscribe(&topic);
        }
        topic.touch(self.cache.store.now_ms());
        Ok(topic)
    }

    fn subscribe(self: &Arc<Self>, topic: &Arc<Topic>) {
        if self.poll().subscribe.multiplexed() {
            let mut guard = self.shared.lock();
            let handle = guard.get_or_insert_with(|| shared::spawn(self.clone()));
            handle.subscribe(topic.name.as_ref());
        } else {
            let hub = self.clone();
            let t = topic.clone();
            let task = tokio::spawn(async move { hub.run_topic_socket(t).await });
            self.per_topic
                .insert(topic.name.clone(), task.abort_handle());
        }
    }

    /// Drops topics no poll asked for in `idle_unsubscribe` and no poll or stream is waiting
    /// on; returns how many.
    pub fn evict_idle(&self) -> usize {
        let now = self.cache.store.now_ms();
        let idle = self.poll().idle_unsubscribe.as_millis() as u64;
        let mut n = 0;
        for t in self.cache.topics() {
            let last = t.last_poll_ms.load(Ordering::Relaxed);
            let readers = t.held.load(Ordering::Relaxed) + t.streams.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= idle && readers == 0 {
                self.drop_topic(&t.name);
                n += 1;
            }
        }
        n
    }

    fn drop_topic(&self, name: &str) {
        if !self.cache.remove(name) {
            return;
        }
        self.cache.metrics.subscriptions.dec();
        if let Some((_, task)) = self.per_topic.remove(name) {
            task.abort();
        }
        if let Some(h) = self.shared.lock().as_ref() {
            h.unsubscribe(name);
        }
    }

    /// Closes every subscription and empties the cache (the route was removed on reload).
    pub fn close(&self) {
        for t in self.cache.topics() {
            self.drop_topic(&t.name);
        }
        if let Some(h) = self.shared.lock().take() {
            h.stop();
        }
    }

    /// Counts an upstream message that was not cached.
    fn dropped(&self, reason: &'static str) {
        METRICS
            .upstream_messages_dropped
            .with_label_values(&[&self.cache.name, reason])
            .inc();
    }

    /// Counts a subscription failure against the route's upstream.
    fn upstream_error(&self, kind: &'static str) {
        METRICS
            .upstream_errors
            .with_label_values(&[&self.upstream.name, kind])
            .inc();
    }

    /// Accounts for a read error of a subscription socket: a frame over the route's limit is
    /// counted as an oversize drop like one read in full, and any broken frame marks the session
    /// so its handshake does not reset the backoff.
    fn read_failed(&self, e: &WsError, session: &mut Session) {
        match socket::read_fault(e) {
            socket::ReadFault::Oversize => {
                self.dropped("oversize");
                session.violated();
            }
            socket::ReadFault::Violation => session.violated(),
            socket::ReadFault::Dropped => {}
        }
        self.upstream_error("subscription_read");
    }

    /// The periodic ping of a subscription socket: `false` when the socket is stalled (no frame
    /// since `last_seen` for three ping intervals) or the ping cannot be sent.
    async fn keepalive(&self, ws: &mut socket::Socket, last_seen: Instant) -> bool {
        if last_seen.elapsed() >= self.poll().ping_interval * 3 {
            tracing::warn!(route = %self.cache.name, "subscription stalled");
            self.upstream_error("subscription_stalled");
            return false;
        }
        ws.send(WsMessage::Ping(Bytes::new())).await.is_ok()
    }

    /// Caches one upstream message for `topic`; `false` when it was dropped (and counted).
    fn ingest(
        &self,
        topic: &Topic,
        data: Bytes,
        binary: bool,
        parsed: Option<serde_json::Value>,
    ) -> bool {
        let poll = self.poll();
        if data.len() > poll.max_message_bytes {
            self.dropped("oversize");
            return false;
        }
        let needs_json = poll.payload_pointer_or_id();
        let value = match parsed {
            Some(v) => Some(v),
            None if needs_json && !binary => serde_json::from_slice(&data).ok(),
            None => None,
        };
        if needs_json && value.is_none() {
            self.dropped("bad_json");
            return false;
        }
        let payload = match (&poll.subscribe.payload_pointer, &value) {
            (Some(ptr), Some(v)) => match v.pointer(ptr) {
                Some(part) => Bytes::from(serde_json::to_vec(part).expect("values serialise")),
                None => {
                    self.dropped("no_payload");
                    return false;
                }
            },
            // A copy: `data` is a slice of the socket's read buffer, and keeping it would keep
            // the whole buffer alive for as long as the message stays cached.
            _ => Bytes::copy_from_slice(&data),
        };
        let id = match (&poll.id_pointer, &value) {
            (Some(ptr), Some(v)) => pointer_cursor(v, ptr),
            _ => None,
        };
        let since = poll.mode == Mode::Since;
        let etag = etag_for(&payload);
        let heads = match (since, http::HeaderValue::from_str(&poll.content_type)) {
            (false, Ok(ct)) => Some(latest_heads(&ct, payload.len(), &etag)),
            // Validated with the config: only since mode has no heads.
            _ => None,
        };
        topic.publish(|seq, gap_before| Message {
            seq,
            cursor: id.unwrap_or_else(|| seq.to_string()),
            etag,
            json: if since {
                json_fragment(&payload, binary)
            } else {
                Bytes::new()
            },
            payload,
            received: Instant::now(),
            date: pingora_core::protocols::http::date::get_cached_date(),
            gap_before,
            heads,
            sse: Default::default(),
        });
        self.cache.metrics.messages.inc();
        true
    }

    /// One socket for one topic, reconnecting until the topic is evicted (the task is aborted).
    async fn run_topic_socket(self: Arc<Self>, topic: Arc<Topic>) {
        let poll = self.poll();
        let path = poll
            .subscribe
            .path
            .replace("{topic}", &crate::topic::encode(&topic.name).to_string());
        let mut backoff = Backoff::new(poll.reconnect_min, poll.reconnect_max);
        loop {
            let up = &self.upstream;
            match connect(up, &path, &poll.subscribe.headers, poll.max_message_bytes).await {
                Ok(mut ws) => {
                    let mut session = Session::start();
                    let mut ok = true;
                    if let Some(send) = &poll.subscribe.send {
                        let frame = fill_topic(send, &topic.name);
                        ok = ws.send(WsMessage::text(frame)).await.is_ok();
                    }
                    if ok {
                        topic.set_state(SubState::Live);
                        self.cache.metrics.connected.inc();
                        let _live = scopeguard(&self.cache.metrics.connected);
                        self.read_topic_socket(&mut ws, &topic, &mut session).await;
                    }
                    topic.set_state(SubState::Down(Instant::now()));
                    backoff.ended(&session);
                }
                Err(e) => {
                    tracing::warn!(route = %self.cache.name, topic = %topic.name, error = %e, "subscription failed");
                    self.upstream_error("subscribe");
                    topic.set_state(SubState::Down(Instant::now()));
                }
            }
            let delay = backoff.next_delay();
            self.cache.metrics.reconnects.inc();
            tokio::time::sleep(delay).await;
        }
    }

    async fn read_topic_socket(
        &self,
        ws: &mut socket::Socket,
        topic: &Topic,
        session: &mut Session,
    ) {
        let mut ping = tokio::time::interval(self.poll().ping_interval);
        ping.reset();
        let mut last_seen = Instant::now();
        loop {
            tokio::select! {
                frame = ws.next() => {
                    last_seen = Instant::now();
                    match frame {
                        Some(Ok(WsMessage::Text(t))) => {
                            if self.ingest(topic, Bytes::from(t), false, None) {
                                session.delivered();
                            }
                        }
                        Some(Ok(WsMessage::Binary(b))) => {
                            if self.ingest(topic, b, true, None) {
                                session.delivered();
                            }
                        }
                        Some(Ok(WsMessage::Close(_))) | None => return,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!(route = %self.cache.name, topic = %topic.name, error = %e, "subscription socket error");
                            self.read_failed(&e, session);
                            return;
                        }
                    }
                }
                _ = ping.tick() => {
                    if !self.keepalive(ws, last_seen).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Decrements a gauge when dropped, so a cancelled task still leaves the gauge right.
struct GaugeGuard<'a>(&'a prometheus::IntGauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn scopeguard(g: &prometheus::IntGauge) -> GaugeGuard<'_> {
    GaugeGuard(g)
}

/// Puts a topic into a `send`/`unsend` template: JSON-escaped, since templates are JSON text.
pub fn fill_topic(template: &str, topic: &str) -> String {
    let quoted = serde_json::to_string(topic).expect("strings serialise");
    template.replace("{topic}", &quoted[1..quoted.len() - 1])
}

/// Commands to a route's shared socket task.
pub(crate) enum Cmd {
    Subscribe(Box<str>),
    Unsubscribe(Box<str>),
}

pub(crate) type CmdSender = mpsc::UnboundedSender<Cmd>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_escape_topics() {
        assert_eq!(
            fill_topic(r#"{"op":"sub","topic":"{topic}"}"#, r#"a"b"#),
            r#"{"op":"sub","topic":"a\"b"}"#
        );
    }
}
