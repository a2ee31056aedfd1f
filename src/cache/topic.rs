//! One topic: its ring of recent messages, its subscription state and its change signal.
//!
//! The ring sits behind a `parking_lot::Mutex` held only for a few pointer copies (never across
//! `.await`), which is cheaper than an async lock for this many short critical sections. A
//! waiter subscribes to a change signal *before* it reads the ring, so a message published
//! between its read and its wait still wakes it. There are two signals, woken together:
//!
//! - held polls wait on [`Topic::held_changed`], one `tokio::sync::Notify`, which wakes its
//!   waiters in the order they began to wait, so a fan-out answers connections in the order
//!   their clients came, as nginx walks its subscriber list. tokio's `watch` spreads its
//!   waiters over 8 lists chosen at random and wakes list by list: a fan-out in that order
//!   jumped about 5,000 connections' memory on both sides of the socket, and cost the gateway
//!   and its client measurably more per answer (docs/benchmarks.md, 3b).
//! - everything else that waits for news (a cold topic's first message, EventSource streams,
//!   shadow comparisons) keeps a `watch::Receiver` ([`Topic::watch`]), whose version also
//!   catches a change made while its holder was busy elsewhere.

use super::due::AnswersDue;
use super::message::Message;
use super::parked::{ParkId, Parked, ParkedList};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};

/// Where a topic's upstream subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    /// Opening for the first time; no verdict yet.
    Connecting,
    /// Connected and receiving.
    Live,
    /// Was live, now reconnecting since the given instant.
    Down(Instant),
    /// Never connected: the upstream refused or was unreachable.
    Failed,
}

struct Inner {
    ring: VecDeque<Arc<Message>>,
    next_seq: u64,
    state: SubState,
    /// The next message follows an interruption.
    pending_gap: bool,
    /// Held polls that began to wait since the last publish: the next publish counts them in
    /// the ledger of answers due.
    uncounted: usize,
}

/// A cached topic. Shared as `Arc<Topic>` by the store, the subscription and held polls.
pub struct Topic {
    pub name: Box<str>,
    /// The seq a client holds before the first message ("nothing yet").
    pub base_seq: u64,
    capacity: usize,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    /// Held polls' signal: FIFO (see the module docs).
    held_changed: Notify,
    /// Held polls whose answers a publish writes itself (`parked.rs`), before it wakes them.
    parked: ParkedList,
    /// Where a publish records the held polls it wakes.
    due: Arc<AnswersDue>,
    /// Milliseconds since the store's epoch of the last poll: read by the idle sweeper.
    pub last_poll_ms: AtomicU64,
    pub saved: AtomicU64,
    pub held: AtomicU64,
    /// EventSource streams reading this topic now.
    pub streams: AtomicU64,
    /// Polls counted in the current and previous minute (a two-bucket sliding window).
    minute: AtomicU64,
    polls_this_minute: AtomicU64,
    polls_last_minute: AtomicU64,
}

/// What a since-mode reader gets for a cursor.
pub struct Since {
    pub messages: Vec<Arc<Message>>,
    pub gap: bool,
    /// The cursor to hand back: the newest returned, or the client's own when nothing is new.
    pub cursor: String,
}

impl Topic {
    pub fn new(name: &str, capacity: usize, now_ms: u64, due: Arc<AnswersDue>) -> Topic {
        // Sequence numbers start at wall-clock microseconds, so a cursor issued by an earlier
        // process (or another replica) is recognised as foreign instead of silently matching.
        let base_seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let (changed, _) = watch::channel(base_seq);
        Topic {
            name: name.into(),
            base_seq,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                ring: VecDeque::with_capacity(capacity.clamp(1, 64)),
                next_seq: base_seq + 1,
                state: SubState::Connecting,
                pending_gap: false,
                uncounted: 0,
            }),
            changed,
            held_changed: Notify::new(),
            parked: ParkedList::default(),
            due,
            last_poll_ms: AtomicU64::new(now_ms),
            saved: AtomicU64::new(0),
            held: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            minute: AtomicU64::new(now_ms / 60_000),
            polls_this_minute: AtomicU64::new(0),
            polls_last_minute: AtomicU64::new(0),
        }
    }

    /// A receiver that will see every change after this call.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A held poll's wait for the next change: it sees every change after it is enabled
    /// (`Notified::enable`, before the ring is read), and waiters are woken in the order they
    /// were enabled.
    pub fn held_changed(&self) -> Notified<'_> {
        self.held_changed.notified()
    }

    /// Lends a held poll's connection to this topic: the next publish that is news to it
    /// writes its answer (see `parked.rs`). A parked poll is not on [`Self::held_changed`]'s
    /// list: it waits on its own connection, and what a pass leaves to it wakes it through
    /// its [`Parked`] implementation.
    pub fn park(&self, p: Arc<dyn Parked>) -> ParkId {
        self.parked.park(p)
    }

    pub fn unpark(&self, id: &ParkId) {
        self.parked.leave(id);
    }

    pub fn state(&self) -> SubState {
        self.inner.lock().state
    }

    /// Updates the subscription state and wakes waiters (a cold poll may now fall back).
    pub fn set_state(&self, state: SubState) {
        {
            let mut g = self.inner.lock();
            if matches!(state, SubState::Down(_)) && !matches!(g.state, SubState::Live) {
                // Only a live subscription can go down; failures before that stay Failed.
                if g.state == SubState::Connecting {
                    g.state = SubState::Failed;
                }
            } else {
                if matches!(g.state, SubState::Down(_)) && state == SubState::Live {
                    g.pending_gap = true;
                }
                g.state = state;
            }
        }
        self.changed.send_modify(|_| {});
        self.held_changed.notify_waiters();
    }

    /// A held poll begins to wait: the next publish counts it as an answer due. Returns what
    /// [`Self::hold_ended`] needs to know whether a publish did.
    pub fn hold_began(&self) -> u64 {
        let mut g = self.inner.lock();
        g.uncounted += 1;
        g.next_seq
    }

    /// A held poll's wait is over (answered, timed out, or its client left): it leaves the
    /// ledger of answers due if a publish counted it, or the uncounted waiters if none did.
    pub fn hold_ended(&self, began: u64) {
        let counted = {
            let mut g = self.inner.lock();
            let counted = g.next_seq > began;
            if !counted {
                g.uncounted -= 1;
            }
            counted
        };
        if counted {
            self.due.done();
        }
    }

    /// Appends a message and wakes every waiter of this topic at once.
    pub fn publish(&self, build: impl FnOnce(u64, bool) -> Message) -> Arc<Message> {
        let msg;
        let seq;
        let woken;
        {
            let mut g = self.inner.lock();
            // Counted under the lock that orders publishes and `hold_began`: each held poll is
            // counted by exactly the first publish after it began to wait.
            woken = std::mem::take(&mut g.uncounted);
            seq = g.next_seq;
            g.next_seq += 1;
            let gap = std::mem::take(&mut g.pending_gap);
            msg = Arc::new(build(seq, gap));
            if g.ring.len() == self.capacity {
                g.ring.pop_front();
            }
            g.ring.push_back(msg.clone());
        }
        // Recorded before the waiters wake, so none can leave the ledger before it is counted.
        self.due.add(woken);
        // Every parked answer is written before any task wakes: the clients answered first
        // act only on CPU time the pass does not need.
        self.parked.answer_all(&msg);
        self.changed.send_replace(seq);
        self.held_changed.notify_waiters();
        msg
    }

    /// The newest message and the subscription state, under one lock (the cache-hit path).
    pub fn snapshot(&self) -> (Option<Arc<Message>>, SubState) {
        let g = self.inner.lock();
        (g.ring.back().cloned(), g.state)
    }

    pub fn latest(&self) -> Option<Arc<Message>> {
        self.inner.lock().ring.back().cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().ring.len()
    }

    /// Messages received since the topic was created.
    pub fn received(&self) -> u64 {
        self.inner.lock().next_seq - self.base_seq - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages after `cursor` (`None`: everything held).
    /// `by_id`: cursors are message ids (`id_pointer`) rather than gateway sequence numbers.
    pub fn since(&self, cursor: Option<&CursorArg>) -> Since {
        let g = self.inner.lock();
        let newest = g
            .ring
            .back()
            .map(|m| m.cursor.clone())
            .unwrap_or_else(|| self.base_seq.to_string());
        let (messages, mut gap) = match cursor {
            None => (g.ring.iter().cloned().collect(), false),
            Some(c) => g.after(c),
        };
        if messages.iter().any(|m| m.gap_before) {
            gap = true;
        }
        let cursor = match (messages.is_empty(), cursor) {
            (true, Some(CursorArg::Seq(c))) if !gap => c.to_string(),
            (true, Some(CursorArg::Id(id))) if !gap => id.clone(),
            _ => newest,
        };
        Since {
            messages,
            gap,
            cursor,
        }
    }

    /// What an EventSource stream reads from `from`: every message after it up to the newest
    /// (only the newest for [`Resume::Newest`]), and the position reached, under one lock so
    /// nothing published meanwhile falls between two reads.
    pub fn after(&self, from: &Resume) -> After {
        let g = self.inner.lock();
        let (messages, lost) = match from {
            Resume::Newest => (g.ring.back().cloned().into_iter().collect(), false),
            Resume::All => (g.ring.iter().cloned().collect(), false),
            Resume::After(c) => g.after(c),
        };
        After {
            messages,
            lost,
            seq: g.next_seq - 1,
        }
    }

    /// Age of the newest message.
    pub fn age(&self) -> Option<Duration> {
        self.latest().map(|m| m.received.elapsed())
    }

    /// Records a poll: for idle eviction and the polls-per-minute estimate.
    pub fn touch(&self, now_ms: u64) {
        self.last_poll_ms.store(now_ms, Ordering::Relaxed);
        self.roll(now_ms);
        self.polls_this_minute.fetch_add(1, Ordering::Relaxed);
    }

    fn roll(&self, now_ms: u64) {
        let minute = now_ms / 60_000;
        let seen = self.minute.load(Ordering::Relaxed);
        if seen != minute
            && self
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let cur = self.polls_this_minute.swap(0, Ordering::AcqRel);
            let prev = if minute == seen + 1 { cur } else { 0 };
            self.polls_last_minute.store(prev, Ordering::Relaxed);
        }
    }

    /// Polls in the last 60 s, estimated from the two minute buckets.
    pub fn pollers_last_minute(&self, now_ms: u64) -> u64 {
        self.roll(now_ms);
        let into = (now_ms % 60_000) as f64 / 60_000.0;
        let prev = self.polls_last_minute.load(Ordering::Relaxed) as f64 * (1.0 - into);
        self.polls_this_minute.load(Ordering::Relaxed) + prev.round() as u64
    }
}

impl Inner {
    /// The messages after `cursor`, or every message held and `true` when the cursor is not
    /// in the ring (fell out of history, or was issued by another process).
    fn after(&self, cursor: &CursorArg) -> (Vec<Arc<Message>>, bool) {
        let all = || self.ring.iter().cloned().collect::<Vec<_>>();
        match cursor {
            CursorArg::Seq(c) => {
                let c = *c;
                let last = self.next_seq - 1;
                let front_prev = self.ring.front().map(|m| m.seq - 1).unwrap_or(last);
                if c >= front_prev && c <= last {
                    let skip = (c - front_prev) as usize;
                    (self.ring.iter().skip(skip).cloned().collect(), false)
                } else {
                    (all(), true)
                }
            }
            CursorArg::Id(id) => match self.ring.iter().rposition(|m| &m.cursor == id) {
                Some(pos) => (self.ring.iter().skip(pos + 1).cloned().collect(), false),
                None => (all(), true),
            },
        }
    }
}

/// Where an EventSource stream starts reading a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The newest message (the first to come, on a topic with none yet).
    Newest,
    /// Everything held.
    All,
    /// Every message after a cursor the client had.
    After(CursorArg),
}

/// What a stream read: see [`Topic::after`].
pub struct After {
    pub messages: Vec<Arc<Message>>,
    /// The cursor was not in the held history: messages may be missing before the first.
    pub lost: bool,
    /// The sequence number read up to: the next read continues after it.
    pub seq: u64,
}

/// A parsed since-mode cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorArg {
    Seq(u64),
    Id(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, gap: bool) -> Message {
        Message::for_test(seq, gap)
    }

    #[test]
    fn since_returns_everything_after_the_cursor() {
        let t = Topic::new("t", 4, 0, Default::default());
        let base = t.base_seq;
        for _ in 0..3 {
            t.publish(msg);
        }
        let s = t.since(Some(&CursorArg::Seq(base + 1)));
        assert_eq!(
            s.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![base + 2, base + 3]
        );
        assert!(!s.gap);
        assert_eq!(s.cursor, (base + 3).to_string());
        let s = t.since(Some(&CursorArg::Seq(base + 3)));
        assert!(s.messages.is_empty() && !s.gap);
        assert_eq!(s.cursor, (base + 3).to_string());
        let s = t.since(Some(&CursorArg::Seq(base)));
        assert_eq!(s.messages.len(), 3);
        assert!(!s.gap);
    }

    #[test]
    fn cursor_out_of_history_is_a_gap() {
        let t = Topic::new("t", 2, 0, Default::default());
        let base = t.base_seq;
        for _ in 0..5 {
            t.publish(msg);
        }
        let s = t.since(Some(&CursorArg::Seq(base + 1)));
        assert!(s.gap);
        assert_eq!(s.messages.len(), 2);
        let s = t.since(Some(&CursorArg::Seq(base + 3)));
        assert!(!s.gap);
        assert_eq!(s.messages.len(), 2);
        // A cursor from another process (before this topic's base or beyond its newest).
        assert!(t.since(Some(&CursorArg::Seq(7))).gap);
        assert!(t.since(Some(&CursorArg::Seq(base + 99))).gap);
    }

    #[test]
    fn reconnect_marks_the_next_message_as_a_gap() {
        let t = Topic::new("t", 8, 0, Default::default());
        t.set_state(SubState::Live);
        t.publish(msg);
        let c = t.since(None).cursor;
        t.set_state(SubState::Down(Instant::now()));
        t.set_state(SubState::Live);
        t.publish(msg);
        let s = t.since(Some(&CursorArg::Seq(c.parse().unwrap())));
        assert!(s.gap);
        assert_eq!(s.messages.len(), 1);
    }

    #[test]
    fn first_failure_is_failed_not_down() {
        let t = Topic::new("t", 1, 0, Default::default());
        t.set_state(SubState::Down(Instant::now()));
        assert_eq!(t.state(), SubState::Failed);
    }

    #[test]
    fn streams_read_from_where_they_resume_and_continue_after_the_newest() {
        let t = Topic::new("t", 3, 0, Default::default());
        let base = t.base_seq;
        let cold = t.after(&Resume::Newest);
        assert!(cold.messages.is_empty() && !cold.lost);
        assert_eq!(cold.seq, base);
        for _ in 0..4 {
            t.publish(msg);
        }
        let seqs = |a: &After| a.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
        // The cold stream's position now sees every message it can still get, and that
        // the first one fell out of the ring.
        let next = t.after(&Resume::After(CursorArg::Seq(cold.seq)));
        assert!(next.lost);
        assert_eq!(seqs(&next), vec![base + 2, base + 3, base + 4]);
        let newest = t.after(&Resume::Newest);
        assert_eq!(seqs(&newest), vec![base + 4]);
        assert_eq!(newest.seq, base + 4);
        assert_eq!(t.after(&Resume::All).messages.len(), 3);
        let id = t.after(&Resume::After(CursorArg::Id((base + 3).to_string())));
        assert_eq!(seqs(&id), vec![base + 4]);
        assert!(!id.lost);
        let caught_up = t.after(&Resume::After(CursorArg::Seq(base + 4)));
        assert!(caught_up.messages.is_empty() && !caught_up.lost);
        assert_eq!(caught_up.seq, base + 4);
        assert!(t.after(&Resume::After(CursorArg::Id("nope".into()))).lost);
    }

    #[tokio::test]
    async fn held_polls_enabled_before_reading_see_later_publishes() {
        let t = Arc::new(Topic::new("t", 1, 0, Default::default()));
        let wait = t.held_changed();
        let mut wait = std::pin::pin!(wait);
        wait.as_mut().enable();
        assert!(t.latest().is_none());
        let t2 = t.clone();
        tokio::spawn(async move { t2.publish(msg) });
        wait.await;
        assert!(t.latest().is_some());
    }

    /// A current-thread runtime runs woken tasks in the order they were woken, so the order
    /// the held polls run in is the order the signal woke them.
    #[tokio::test]
    async fn held_polls_are_woken_in_the_order_they_began_to_wait() {
        let t = Arc::new(Topic::new("t", 1, 0, Default::default()));
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut held = Vec::new();
        for i in 0..64 {
            let (t, order) = (t.clone(), order.clone());
            let (ready, enabled) = tokio::sync::oneshot::channel();
            held.push(tokio::spawn(async move {
                let wait = t.held_changed();
                let mut wait = std::pin::pin!(wait);
                wait.as_mut().enable();
                let _ = ready.send(());
                wait.await;
                order.lock().push(i);
            }));
            enabled.await.unwrap();
        }
        t.publish(msg);
        for h in held {
            h.await.unwrap();
        }
        let got = order.lock().clone();
        assert_eq!(
            got,
            (0..64).collect::<Vec<_>>(),
            "woken out of order: {got:?}"
        );
    }

    #[tokio::test]
    async fn watchers_subscribed_before_reading_see_later_publishes() {
        let t = Arc::new(Topic::new("t", 1, 0, Default::default()));
        let mut rx = t.watch();
        assert!(t.latest().is_none());
        let t2 = t.clone();
        tokio::spawn(async move { t2.publish(msg) });
        rx.changed().await.unwrap();
        assert!(t.latest().is_some());
    }
}
