//! A route's shared (multiplexed) upstream socket: one connection carries every topic of the
//! route, subscribed with `send` frames and demultiplexed by `topic_pointer`.

use super::{fill_topic, Backoff, Cmd, CmdSender, Hub, Session};
use crate::cache::SubState;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub(crate) struct SharedHandle {
    tx: CmdSender,
    task: AbortHandle,
}

impl SharedHandle {
    pub fn subscribe(&self, topic: &str) {
        // The task outlives the handle's users; a send error means it was stopped on purpose.
        let _ = self.tx.send(Cmd::Subscribe(topic.into()));
    }

    pub fn unsubscribe(&self, topic: &str) {
        let _ = self.tx.send(Cmd::Unsubscribe(topic.into()));
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

pub(crate) fn spawn(hub: Arc<Hub>) -> SharedHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(hub, rx));
    SharedHandle {
        tx,
        task: task.abort_handle(),
    }
}

async fn run(hub: Arc<Hub>, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let poll = hub.poll();
    let sub = &poll.subscribe;
    let mut backoff = Backoff::new(poll.reconnect_min, poll.reconnect_max);
    loop {
        match super::connect(
            &hub.upstream,
            &sub.path,
            &sub.headers,
            poll.max_message_bytes,
        )
        .await
        {
            Ok(mut ws) => {
                let mut session = Session::start();
                // Everything queued is covered by re-subscribing every current topic.
                while cmds.try_recv().is_ok() {}
                let mut ok = true;
                for t in hub.cache.topics() {
                    let frame = fill_topic(sub.send.as_deref().unwrap_or_default(), &t.name);
                    if ws.send(WsMessage::text(frame)).await.is_err() {
                        ok = false;
                        break;
                    }
                    t.set_state(SubState::Live);
                }
                if ok {
                    hub.cache.metrics.connected.inc();
                    let _g = super::scopeguard(&hub.cache.metrics.connected);
                    if !serve(&hub, &mut ws, &mut cmds, &mut session).await {
                        return;
                    }
                }
                for t in hub.cache.topics() {
                    t.set_state(SubState::Down(Instant::now()));
                }
                backoff.ended(&session);
            }
            Err(e) => {
                tracing::warn!(route = %hub.cache.name, error = %e, "shared subscription failed");
                hub.upstream_error("subscribe");
                for t in hub.cache.topics() {
                    t.set_state(SubState::Down(Instant::now()));
                }
            }
        }
        hub.cache.metrics.reconnects.inc();
        let delay = backoff.next_delay();
        // Topics created while disconnected are picked up by the re-subscribe after reconnect.
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            closed = wait_closed(&mut cmds) => if closed { return },
        }
    }
}

/// Resolves `true` when every sender is gone (the hub was dropped); drains commands otherwise.
async fn wait_closed(cmds: &mut mpsc::UnboundedReceiver<Cmd>) -> bool {
    loop {
        if cmds.recv().await.is_none() {
            return true;
        }
    }
}

/// Relays until the socket fails (`true`: reconnect) or the hub is gone (`false`).
async fn serve(
    hub: &Arc<Hub>,
    ws: &mut super::socket::Socket,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    session: &mut Session,
) -> bool {
    let poll = hub.poll();
    let sub = &poll.subscribe;
    let pointer = sub.topic_pointer.as_deref().unwrap_or_default();
    let mut ping = tokio::time::interval(poll.ping_interval);
    ping.reset();
    let mut last_seen = Instant::now();
    loop {
        tokio::select! {
            frame = ws.next() => {
                last_seen = Instant::now();
                let (data, binary) = match frame {
                    Some(Ok(WsMessage::Text(t))) => (Bytes::from(t), false),
                    Some(Ok(WsMessage::Binary(b))) => (b, true),
                    Some(Ok(WsMessage::Close(_))) | None => return true,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        tracing::warn!(route = %hub.cache.name, error = %e, "shared subscription socket error");
                        hub.read_failed(&e, session);
                        return true;
                    }
                };
                if data.len() > poll.max_message_bytes {
                    hub.dropped("oversize");
                    continue;
                }
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&data) else {
                    hub.dropped("bad_json");
                    continue;
                };
                let topic_name = match value.pointer(pointer) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v) if !v.is_null() => v.to_string(),
                    _ => {
                        hub.dropped("no_topic");
                        continue;
                    }
                };
                match hub.cache.get(&topic_name) {
                    Some(t) => {
                        if hub.ingest(&t, data, binary, Some(value)) {
                            session.delivered();
                        }
                    }
                    None => hub.dropped("unknown_topic"),
                }
            }
            cmd = cmds.recv() => {
                let (template, topic, subscribing) = match cmd {
                    None => return false,
                    Some(Cmd::Subscribe(t)) => (sub.send.as_deref(), t, true),
                    Some(Cmd::Unsubscribe(t)) => (sub.unsend.as_deref(), t, false),
                };
                if let Some(template) = template {
                    if ws.send(WsMessage::text(fill_topic(template, &topic))).await.is_err() {
                        return true;
                    }
                }
                if subscribing {
                    if let Some(t) = hub.cache.get(&topic) {
                        t.set_state(SubState::Live);
                    }
                }
            }
            _ = ping.tick() => {
                if !hub.keepalive(ws, last_seen).await {
                    return true;
                }
            }
        }
    }
}
