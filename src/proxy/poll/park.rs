//! A held poll's connection lent to its topic, so the publish that answers it writes the
//! answer itself, in one pass over the topic's parked polls (why: `cache/parked.rs`).
//!
//! Only pollgate's own plain-TCP connections park (a TLS stream must be written again with the
//! same bytes after a short write, which a pass cannot wait for); a route with `cors` does not
//! (its answer depends on the request's origin). Everything else waits on its task as before.
//!
//! Both modes park: a latest-mode poll waits for a message its `If-None-Match` does not match,
//! a cursor poll for messages after its cursor (read from the ring in the pass).
//!
//! The answer a publish writes is the one the poll's own path would have written: the same
//! [`super::latest_answer`] or [`super::since_answer`], the same [`super::dress`], the same
//! [`wire::render_answer`]. The connection's lock decides who writes: the publish writes only
//! while the connection is lent, and the poll takes it back under the same lock, so an answer
//! is never written twice, and a poll that finds news itself writes it only when no publish
//! did.

use super::super::answer::{Answer, Which, Written};
use super::super::wire;
use super::etag_matches;
use crate::cache::{CursorArg, HoldGuard, Message, ParkId, Parked, Since, Stays, Topic};
use crate::subscription::Hub;
use http::HeaderValue;
use parking_lot::Mutex;
use pingora_core::protocols::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// What reads a poll's client while the poll is held.
pub enum Client<'a, G> {
    /// pingora's session: a future that finishes when the client hangs up.
    Session(G),
    /// pollgate's own connection: its socket, which a held poll may lend to its topic.
    Socket(Socket<'a>),
}

/// pollgate's own connection, as a held poll sees it.
pub struct Socket<'a> {
    pub io: &'a mut Stream,
    /// The answer leaves the connection open (its `Connection` line): only then may it be
    /// lent.
    pub keep_alive: bool,
    /// The connection may be lent (plain TCP, `fanout_pass`).
    pub lendable: bool,
}

/// Finishes when the client of a held poll sends anything or hangs up: a poll has no body, so
/// either means it is gone or misbehaving.
pub async fn client_read(io: &mut Stream) {
    let mut probe = [0u8; 16];
    let _ = tokio::io::AsyncReadExt::read(io, &mut probe).await;
}

/// Everything a parked poll's answer depends on besides the message, fixed when it parks.
pub(super) struct Recipe {
    pub hub: Arc<Hub>,
    pub topic: Arc<Topic>,
    pub wants: Wants,
    pub prefer_applied: Option<u64>,
    pub stale: bool,
    pub route_headers: Arc<[(String, HeaderValue)]>,
    pub head_only: bool,
}

/// What a parked poll waits for.
pub(super) enum Wants {
    /// Latest mode: a message whose ETag its `If-None-Match` does not match.
    Newer(String),
    /// Since mode: messages after its cursor.
    After(Option<CursorArg>),
}

/// How the pass counts an answer it wrote, as the poll's own path would have.
enum Counted {
    Latest(Arc<Message>),
    Since(Since),
}

/// A held poll's lent connection.
pub(super) struct ParkedConn {
    recipe: Recipe,
    state: Mutex<State>,
    /// Wakes the poll's task for what the pass left to it: an answer too big to copy, or the
    /// rest of one the socket did not take at once.
    news: Notify,
}

enum State {
    /// Not lent (before [`ParkedConn::lend`], after [`Lending::reclaim`]).
    Home,
    /// Lent, with the poll's held slot, which the publish that answers it gives back.
    Parked { io: Stream, slot: HoldGuard },
    /// A publish wrote the answer.
    Answered { io: Stream, sent: Written },
}

/// How a lent connection came back.
pub(super) enum Reclaimed {
    /// A publish answered it.
    Answered(Written),
    /// Still waiting when the poll's wait ended: its slot.
    Waiting(HoldGuard),
}

impl ParkedConn {
    pub fn new(recipe: Recipe) -> Arc<ParkedConn> {
        Arc::new(ParkedConn {
            recipe,
            state: Mutex::new(State::Home),
            news: Notify::new(),
        })
    }

    /// Lends `io` (a placeholder takes its place) and the held slot, and parks on `topic`.
    pub fn lend<'t>(
        self: &Arc<Self>,
        io: &mut Stream,
        slot: HoldGuard,
        topic: &'t Topic,
    ) -> Lending<'t> {
        let placeholder: Stream = Box::new(std::io::Cursor::new(Vec::new()));
        let io = std::mem::replace(io, placeholder);
        *self.state.lock() = State::Parked { io, slot };
        let id = topic.park(self.clone());
        Lending {
            conn: self.clone(),
            topic,
            id,
            done: false,
        }
    }

    /// Finishes when a publish leaves news to this poll's task.
    pub async fn woken(&self) {
        self.news.notified().await
    }

    /// Finishes when the client acts: before an answer was written, any byte or a hang-up
    /// means it is gone; after, what it sends is its next request (kept for the connection),
    /// or it hung up.
    pub fn client_acts(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut g = self.state.lock();
            let mut chunk = [0u8; 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match &mut *g {
                State::Home => Poll::Pending,
                State::Parked { io, .. } => match Pin::new(io).poll_read(cx, &mut read) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => Poll::Ready(()),
                },
                State::Answered { io, sent } => match Pin::new(io).poll_read(cx, &mut read) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                        sent.early.extend_from_slice(read.filled());
                        Poll::Ready(())
                    }
                    Poll::Ready(_) => {
                        sent.eof = true;
                        Poll::Ready(())
                    }
                },
            }
        })
    }
}

/// A lent connection, taken back by [`Lending::reclaim`]; dropped unreclaimed (the poll's task
/// ended mid-wait), it leaves the topic and closes the connection.
pub(super) struct Lending<'t> {
    conn: Arc<ParkedConn>,
    topic: &'t Topic,
    id: ParkId,
    done: bool,
}

impl Lending<'_> {
    /// Puts the connection back into `io`; `None` only if it was lost (never lent back twice).
    pub fn reclaim(mut self, io: &mut Stream) -> Option<Reclaimed> {
        self.done = true;
        let state = std::mem::replace(&mut *self.conn.state.lock(), State::Home);
        match state {
            State::Answered { io: s, sent } => {
                *io = s;
                Some(Reclaimed::Answered(sent))
            }
            State::Parked { io: s, slot } => {
                *io = s;
                // A publish takes the polls it answers out of the list; this one is still in it.
                self.topic.unpark(&self.id);
                Some(Reclaimed::Waiting(slot))
            }
            State::Home => None,
        }
    }
}

impl Drop for Lending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.topic.unpark(&self.id);
            *self.conn.state.lock() = State::Home;
        }
    }
}

impl Parked for ParkedConn {
    fn answer(&self, msg: &Arc<Message>, scratch: &mut Vec<u8>) -> Stays {
        let r = &self.recipe;
        let mut g = self.state.lock();
        let State::Parked { io, slot } = &mut *g else {
            return Stays::Leaves;
        };
        let (mut a, counted) = match &r.wants {
            Wants::Newer(inm) => {
                if etag_matches(inm, &msg.etag) {
                    // Not news: it waits on, counted again by the next publish.
                    slot.rearm();
                    return Stays::Parked;
                }
                let a = super::latest_answer(msg.clone(), Which::Ok, r.prefer_applied, r.stale);
                (a, Counted::Latest(msg.clone()))
            }
            Wants::After(cursor) => {
                let got = r.topic.since(cursor.as_ref());
                if got.messages.is_empty() {
                    slot.rearm();
                    return Stays::Parked;
                }
                let a = super::since_answer(&r.hub, &r.topic, &got, r.prefer_applied, r.stale);
                (a, Counted::Since(got))
            }
        };
        super::dress(&mut a, &r.route_headers, None);
        if a.close || !wire::render_answer(scratch, &a, r.head_only, true).is_empty() {
            // Too big to copy (its task writes it, in two writes), or an answer that closes
            // the connection (only its task may close it).
            self.news.notify_one();
            return Stays::Leaves;
        }
        let (n, flushed) = write_now(io, scratch);
        if n < scratch.len() || !flushed {
            // The socket took only part of it: its task, woken, writes the rest and waits.
            self.news.notify_one();
        }
        let sent = Written {
            rest: scratch[n..].to_vec(),
            at: Instant::now(),
            early: Vec::new(),
            eof: false,
        };
        // Counted as the poll's own path counts a held answer.
        match counted {
            Counted::Latest(msg) => {
                super::count_held_answer(&r.hub, &msg);
                super::saved(&r.hub, &r.topic);
            }
            Counted::Since(got) => super::count_since(&r.hub, &r.topic, &got, true),
        }
        let State::Parked { io, slot } = std::mem::replace(&mut *g, State::Home) else {
            return Stays::Leaves;
        };
        // The slot is free at once: the connection now idles like any kept-alive one.
        drop(slot);
        *g = State::Answered { io, sent };
        Stays::Leaves
    }
}

/// Writes what the socket takes without waiting: how much that was, and whether all of it
/// left pingora's write buffer.
fn write_now(io: &mut Stream, bytes: &[u8]) -> (usize, bool) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut done = 0;
    while done < bytes.len() {
        match Pin::new(&mut *io).poll_write(&mut cx, &bytes[done..]) {
            Poll::Ready(Ok(n)) if n > 0 => done += n,
            _ => break,
        }
    }
    let flushed = matches!(Pin::new(&mut *io).poll_flush(&mut cx), Poll::Ready(Ok(())));
    (done, flushed)
}

/// The answer a parked poll's task reports: already written but for `sent.rest`.
pub(super) fn written(sent: Written) -> Answer {
    let mut a = Answer::new(200);
    a.written = Some(Box::new(sent));
    a
}
