//! EventSource streams: a poll route's answer to `Accept: text/event-stream`, from the same
//! cache as its polls. Everything a stream does is decided here: where it starts
//! (`Last-Event-ID`, the route's cursor parameter, or the newest message), which events it
//! sends and when (each message, `gap` when messages may be missing, heartbeats in silence),
//! and when it ends (server shutdown, after what is pending; the route's cache retired by a
//! reload). The paths only write: the head with [`EventStream::opening`], then every
//! [`Step::Send`] of [`EventStream::next`] as it comes, each in their own framing.
//!
//! A stream waits on the topic's change signal like a held poll, marking the signal seen
//! before it reads the ring, so nothing published between a read and the wait is missed.

use super::event;
use super::input::{cursor_of, has_param};
use super::{reject_answer, HeaderSource, Outcome, PollRequest};
use crate::cache::{CursorArg, Resume, StreamGuard, Topic};
use crate::config::Mode;
use crate::proxy::answer::{name, Answer};
use crate::subscription::Hub;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// The longest a path may take to write one step: a client that has not taken a write for this
/// long stopped reading (its socket buffers are full), and would otherwise keep its slot and
/// its connection for as long as it keeps the socket open.
pub const WRITE_LIMIT: Duration = Duration::from_secs(30);

/// An open EventSource stream: its slot, its place in the topic, its timers.
pub struct EventStream {
    /// `200`, `text/event-stream`, `no-cache`: written first, without a length.
    pub head: Answer,
    hub: Arc<Hub>,
    topic: Arc<Topic>,
    _slot: StreamGuard,
    /// Where the next read starts.
    from: Resume,
    /// The id the client holds, for a `gap` event's data.
    had: Option<String>,
    /// The client holds a place in the topic (a cursor it sent, or a message this stream
    /// sent): a message after an interruption then tells it that some may be missing.
    placed: bool,
    mode: Mode,
    retry: Duration,
    heartbeat: Duration,
    /// The last write; a heartbeat follows `heartbeat` of silence.
    wrote: Instant,
    changed: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("route", &self.hub.cache.name)
            .field("topic", &self.topic.name)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// What a stream's path writes next.
pub enum Step {
    /// These bytes (events, or a heartbeat).
    Send(Bytes),
    /// Nothing more: end the body and close.
    End,
    /// The client hung up.
    Gone,
}

/// What woke a stream that had nothing to send.
enum Woke {
    Read,
    Beat,
    End,
    Gone,
}

/// Whether the request asks for an event stream: a GET whose `Accept` lists
/// `text/event-stream` (with any parameters, but not `q=0`). HEAD keeps its poll answer.
pub fn wanted<H: HeaderSource + ?Sized>(req: &PollRequest<'_, H>) -> bool {
    !req.head_only
        && req.headers.values("accept").any(|v| {
            String::from_utf8_lossy(v).split(',').any(|range| {
                let mut parts = range.split(';');
                let media = parts.next().unwrap_or_default().trim();
                media.eq_ignore_ascii_case("text/event-stream")
                    && !parts.any(|p| {
                        p.trim()
                            .strip_prefix("q=")
                            .and_then(|q| q.trim().parse::<f32>().ok())
                            .is_some_and(|q| q <= 0.0)
                    })
            })
        })
}

/// Opens a stream on `topic` for `req`, under the route's and the gateway's stream caps; a
/// refusal (`503`) or a bad cursor parameter (`400`) is an answer.
pub(super) fn open<H: HeaderSource + ?Sized>(
    hub: &Arc<Hub>,
    topic: &Arc<Topic>,
    req: &PollRequest<'_, H>,
) -> Outcome {
    let poll = hub.poll();
    let (from, had) = match poll.mode {
        // Latest mode has one message to give: the newest, whatever the client saw.
        Mode::Latest => (Resume::Newest, None),
        Mode::Since => match resume(req, poll.id_pointer.is_none()) {
            Some(r) => r,
            None => match cursor_of(req.query, None, poll) {
                Ok(Some(c)) => {
                    let text = match &c {
                        CursorArg::Seq(n) => n.to_string(),
                        CursorArg::Id(id) => id.clone(),
                    };
                    (Resume::After(c), Some(text))
                }
                // `?since=` with no value: everything held, as a cursor poll gives.
                Ok(None) if has_param(req.query, &poll.cursor_param) => (Resume::All, None),
                Ok(None) => (Resume::Newest, None),
                Err(e) => {
                    return Outcome::Answer(Answer::error(400, &e.to_string()).closing(true));
                }
            },
        },
    };
    let Some(slot) = hub.cache.try_stream(topic) else {
        return Outcome::Answer(reject_answer(
            hub,
            "max_sse_streams",
            "too many event streams",
        ));
    };
    let head = Answer::new(200)
        .header(
            name::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        )
        .header(name::CACHE_CONTROL, HeaderValue::from_static("no-cache"))
        // A stream ends only when the server ends it: nothing can follow it on the connection.
        .closing(true);
    Outcome::Stream(Box::new(EventStream {
        head,
        hub: hub.clone(),
        topic: topic.clone(),
        _slot: slot,
        placed: matches!(from, Resume::After(_)),
        from,
        had,
        mode: poll.mode,
        retry: poll.sse_retry,
        heartbeat: poll.sse_heartbeat,
        wrote: Instant::now(),
        changed: topic.watch(),
        shutdown: hub.cache.store.shutdown_signal(),
    }))
}

/// Since mode: the place a reconnecting EventSource asks for with `Last-Event-ID` (an id this
/// route gave, so the route's kind of cursor; anything else is not in the history and gets a
/// `gap`). `numbered`: the route's cursors are gateway sequence numbers (no `id_pointer`).
/// `None`: the header is absent or empty.
fn resume<H: HeaderSource + ?Sized>(
    req: &PollRequest<'_, H>,
    numbered: bool,
) -> Option<(Resume, Option<String>)> {
    let raw = req.headers.values("last-event-id").next()?;
    let text = String::from_utf8_lossy(raw).trim().to_string();
    if text.is_empty() {
        return None;
    }
    let cursor = match text.parse::<u64>() {
        Ok(n) if numbered => CursorArg::Seq(n),
        _ => CursorArg::Id(text.clone()),
    };
    Some((Resume::After(cursor), Some(text)))
}

impl EventStream {
    /// The first bytes of the body: the `retry:` hint, and what the client gets at once (the
    /// newest message, or everything after its cursor; nothing yet on a cold topic).
    pub fn opening(&mut self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        event::retry(&mut out, self.retry);
        if let Some(events) = self.read() {
            out.extend_from_slice(&events);
        }
        self.wrote = Instant::now();
        out.freeze()
    }

    /// Waits for what to write next: events as soon as there are any, a heartbeat after
    /// `sse_heartbeat` of silence, the end at shutdown (once what is pending was sent), or
    /// `gone` (the path's future that finishes when the client hangs up).
    pub async fn next<G: Future>(&mut self, gone: G) -> Step {
        let mut gone = std::pin::pin!(gone);
        loop {
            if let Some(events) = self.read() {
                self.wrote = Instant::now();
                return Step::Send(events);
            }
            if *self.shutdown.borrow() {
                return Step::End;
            }
            let beat = self.wrote + self.heartbeat;
            let woke = tokio::select! {
                biased;
                _ = &mut gone => Woke::Gone,
                r = self.shutdown.changed() => if r.is_ok() { Woke::Read } else { Woke::End },
                r = self.changed.changed() => if r.is_ok() { Woke::Read } else { Woke::End },
                _ = sleep_until(beat) => Woke::Beat,
            };
            match woke {
                Woke::Read => {}
                Woke::Gone => return Step::Gone,
                Woke::End => return Step::End,
                Woke::Beat => {
                    if !self.still_cached() {
                        // The route's cache was retired by a reload (or the topic evicted):
                        // the client reconnects to what replaced it.
                        return Step::End;
                    }
                    self.wrote = Instant::now();
                    return Step::Send(Bytes::from_static(event::HEARTBEAT));
                }
            }
        }
    }

    fn still_cached(&self) -> bool {
        self.hub
            .cache
            .get(&self.topic.name)
            .is_some_and(|t| Arc::ptr_eq(&t, &self.topic))
    }

    /// The events since the last read, as one buffer (a lone message is its shared event
    /// bytes, not a copy); `None` when there is nothing new.
    fn read(&mut self) -> Option<Bytes> {
        // Seen before reading: a publish after this line wakes `changed`.
        self.changed.borrow_and_update();
        let got = self.topic.after(&self.from);
        self.from = Resume::After(CursorArg::Seq(got.seq));
        let messages = match self.mode {
            // The ring holds one message; one that was replaced before it was sent is not
            // owed to anybody.
            Mode::Latest => &got.messages[got.messages.len().saturating_sub(1)..],
            Mode::Since => &got.messages[..],
        };
        let mut parts: Vec<Bytes> = Vec::with_capacity(messages.len() + 1);
        if got.lost && self.mode == Mode::Since {
            parts.push(self.gap());
        }
        for (i, m) in messages.iter().enumerate() {
            let after_lost = i == 0 && got.lost;
            if m.gap_before && self.placed && !after_lost && self.mode == Mode::Since {
                parts.push(self.gap());
            }
            parts.push(event::of_message(m));
            self.had = Some(m.cursor.clone());
            self.placed = true;
        }
        if parts.is_empty() {
            return None;
        }
        self.hub.cache.metrics.sse_events.inc_by(parts.len() as u64);
        if parts.len() == 1 {
            return parts.pop();
        }
        let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
        for p in parts {
            out.extend_from_slice(&p);
        }
        Some(out.freeze())
    }

    fn gap(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(48);
        event::gap(&mut out, self.had.as_deref());
        out.freeze()
    }
}
