//! The topic cache: per route, a map of topics, each a ring of recent messages with a change
//! signal (`topic.rs`), and the process-wide limits and shutdown signal they share (`Store`).

mod due;
mod message;
mod parked;
mod topic;

pub use due::{AnswersDue, Ticket, SETTLE_LIMIT};
pub use message::{
    etag_for, json_fragment, latest_heads, pointer_cursor, HeadTemplate, Heads, Message,
};
pub use parked::{ParkId, Parked, Stays};
pub use topic::{After, CursorArg, Resume, Since, SubState, Topic};

use crate::config::PollRoute;
use crate::limits::take;
use crate::metrics::RouteMetrics;
use dashmap::DashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Why a topic could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("the gateway holds its maximum number of topics")]
    GlobalTopicLimit,
    #[error("this route holds its maximum number of topics")]
    RouteTopicLimit,
}

/// Process-wide cache state: a cheap-clone handle.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    epoch: Instant,
    topics: AtomicUsize,
    max_topics: AtomicUsize,
    held: AtomicUsize,
    max_held: AtomicUsize,
    streams: AtomicUsize,
    max_streams: AtomicUsize,
    shutdown: watch::Sender<bool>,
    due: Arc<AnswersDue>,
}

impl Store {
    pub fn new(max_topics: usize, max_held: usize, max_streams: usize) -> Store {
        Store {
            inner: Arc::new(StoreInner {
                epoch: Instant::now(),
                topics: AtomicUsize::new(0),
                max_topics: AtomicUsize::new(max_topics),
                held: AtomicUsize::new(0),
                max_held: AtomicUsize::new(max_held),
                streams: AtomicUsize::new(0),
                max_streams: AtomicUsize::new(max_streams),
                shutdown: watch::channel(false).0,
                due: Arc::default(),
            }),
        }
    }

    /// Milliseconds since the store was made: a cheap monotonic clock for idle tracking.
    pub fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    pub fn set_limits(&self, max_topics: usize, max_held: usize, max_streams: usize) {
        self.inner.max_topics.store(max_topics, Ordering::Relaxed);
        self.inner.max_held.store(max_held, Ordering::Relaxed);
        self.inner.max_streams.store(max_streams, Ordering::Relaxed);
    }

    pub fn topic_count(&self) -> usize {
        self.inner.topics.load(Ordering::Relaxed)
    }

    pub fn held_count(&self) -> usize {
        self.inner.held.load(Ordering::Relaxed)
    }

    /// EventSource streams open now, across all routes.
    pub fn stream_count(&self) -> usize {
        self.inner.streams.load(Ordering::Relaxed)
    }

    /// Answers every held poll now: called once when the server starts shutting down.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Held polls woken by a publish and not yet answered (see `due.rs`).
    pub fn answers_due(&self) -> &AnswersDue {
        &self.inner.due
    }

    pub fn shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Reserves a held-poll slot under the global cap.
    fn try_hold(&self) -> bool {
        take(
            &self.inner.held,
            self.inner.max_held.load(Ordering::Relaxed),
        )
    }

    fn release_hold(&self) {
        self.inner.held.fetch_sub(1, Ordering::AcqRel);
    }

    /// Reserves an EventSource stream slot under the global cap.
    fn try_stream(&self) -> bool {
        take(
            &self.inner.streams,
            self.inner.max_streams.load(Ordering::Relaxed),
        )
    }

    fn release_stream(&self) {
        self.inner.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One poll route's topics.
pub struct RouteCache {
    pub name: Arc<str>,
    pub poll: Arc<PollRoute>,
    pub metrics: RouteMetrics,
    pub store: Store,
    topics: DashMap<Box<str>, Arc<Topic>>,
    held: AtomicUsize,
    streams: AtomicUsize,
}

/// A held-poll slot; releasing it (on drop) keeps the gauges right on every exit path,
/// including a client that hung up mid-wait.
pub struct HoldGuard {
    route: Arc<RouteCache>,
    topic: Arc<Topic>,
    /// From `Topic::hold_began`: whether a publish has counted this poll as an answer due.
    began: u64,
}

impl HoldGuard {
    /// The poll woke but keeps waiting (the change was not news to it): it is no longer an
    /// answer due, and the next publish counts it again.
    pub fn rearm(&mut self) {
        self.topic.hold_ended(self.began);
        self.began = self.topic.hold_began();
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.topic.hold_ended(self.began);
        self.route.held.fetch_sub(1, Ordering::AcqRel);
        self.route.store.release_hold();
        self.route.metrics.held.dec();
        self.topic.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An EventSource stream's slot, held for the stream's whole life: dropping it (the client
/// hung up, the server shut down, the write failed) gives the slot back and keeps the gauges
/// right.
pub struct StreamGuard {
    route: Arc<RouteCache>,
    topic: Arc<Topic>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.route.streams.fetch_sub(1, Ordering::AcqRel);
        self.route.store.release_stream();
        self.route.metrics.sse_active.dec();
        self.topic.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RouteCache {
    pub fn new(name: Arc<str>, poll: Arc<PollRoute>, store: Store) -> RouteCache {
        RouteCache {
            metrics: RouteMetrics::new(&name),
            name,
            poll,
            store,
            topics: DashMap::new(),
            held: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
        }
    }

    pub fn get(&self, topic: &str) -> Option<Arc<Topic>> {
        self.topics.get(topic).map(|t| t.value().clone())
    }

    /// Returns the topic, creating it under the limits; `true` when this call created it
    /// (exactly one caller wins however many race, so one subscription is opened).
    pub fn get_or_create(&self, topic: &str) -> Result<(Arc<Topic>, bool), CacheError> {
        if let Some(t) = self.get(topic) {
            return Ok((t, false));
        }
        if let Some(max) = self.poll.max_topics {
            if self.topics.len() >= max {
                return Err(CacheError::RouteTopicLimit);
            }
        }
        let inner = &self.store.inner;
        let max = inner.max_topics.load(Ordering::Relaxed);
        if !take(&inner.topics, max) {
            return Err(CacheError::GlobalTopicLimit);
        }
        let capacity = match self.poll.mode {
            crate::config::Mode::Latest => 1,
            crate::config::Mode::Since => self.poll.history,
        };
        let mut created = false;
        let t = self
            .topics
            .entry(topic.into())
            .or_insert_with(|| {
                created = true;
                Arc::new(Topic::new(
                    topic,
                    capacity,
                    self.store.now_ms(),
                    self.store.inner.due.clone(),
                ))
            })
            .value()
            .clone();
        if created {
            self.metrics.topics.inc();
        } else {
            inner.topics.fetch_sub(1, Ordering::AcqRel);
        }
        Ok((t, created))
    }

    /// Drops a topic from the cache; `true` if it was there.
    pub fn remove(&self, topic: &str) -> bool {
        if self.topics.remove(topic).is_some() {
            self.store.inner.topics.fetch_sub(1, Ordering::AcqRel);
            self.metrics.topics.dec();
            true
        } else {
            false
        }
    }

    /// A snapshot of the topics (no guard is held afterwards).
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.iter().map(|e| e.value().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Reserves a held-poll slot under the route and global caps.
    pub fn try_hold(self: &Arc<Self>, topic: &Arc<Topic>) -> Option<HoldGuard> {
        if !take(&self.held, self.poll.max_held_polls.unwrap_or(usize::MAX)) {
            return None;
        }
        if !self.store.try_hold() {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.held.inc();
        topic.held.fetch_add(1, Ordering::Relaxed);
        Some(HoldGuard {
            route: self.clone(),
            topic: topic.clone(),
            began: topic.hold_began(),
        })
    }

    /// Reserves an EventSource stream slot under the route and global caps. Streams have caps
    /// of their own rather than sharing `max_held_polls`: a stream stays open for as long as
    /// its client is there, a held poll for at most `long_poll`, so shared slots would let
    /// streams starve long-pollers.
    pub fn try_stream(self: &Arc<Self>, topic: &Arc<Topic>) -> Option<StreamGuard> {
        if !take(
            &self.streams,
            self.poll.max_sse_streams.unwrap_or(usize::MAX),
        ) {
            return None;
        }
        if !self.store.try_stream() {
            self.streams.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.sse_active.inc();
        topic.streams.fetch_add(1, Ordering::Relaxed);
        Some(StreamGuard {
            route: self.clone(),
            topic: topic.clone(),
        })
    }
}
