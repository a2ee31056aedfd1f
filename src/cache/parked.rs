//! Held polls whose answer a publish writes itself, in one pass over the topic's list.
//!
//! Why: a fan-out that wakes every held poll's task hands the answers to the runtime, which
//! serves them on every worker it can wake, while the clients answered first already act
//! (read, poll again, hang up) and need the same CPUs. nginx (and so Nchan) writes every
//! subscriber's answer in one pass of the publishing worker before it looks at anything else;
//! a held poll that parks its connection here gets the same: the publish renders its answer
//! (with the same code as the poll's own path) and writes it without waiting, and the poll's
//! task, woken afterwards, only finishes what the write left (nothing, nearly always).
//!
//! The cache knows only this trait: what an answer looks like and how a connection is written
//! is the proxy's (`proxy/poll/park.rs`).

use super::message::Message;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// A held poll's connection, lent to its topic until a publish answers it or its wait ends.
pub trait Parked: Send + Sync {
    /// Writes this poll's answer to `msg` if `msg` is news to it. `scratch` is a buffer
    /// shared by the pass. Returns whether it stays parked (not news to it).
    fn answer(&self, msg: &Arc<Message>, scratch: &mut Vec<u8>) -> Stays;
}

/// What a publish left of a parked poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stays {
    /// Not news to it: it waits on, parked.
    Parked,
    /// Answered, or its wait had already ended: it leaves the list.
    Leaves,
}

/// A topic's parked polls, in the order they parked (a fan-out answers the clients that came
/// first first, as the held polls' signal wakes them).
#[derive(Default)]
pub struct ParkedList {
    inner: Mutex<List>,
}

#[derive(Default)]
struct List {
    next: u64,
    entries: BTreeMap<u64, Arc<dyn Parked>>,
}

/// A place in a topic's list, to leave it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkId(u64);

impl ParkedList {
    pub fn park(&self, p: Arc<dyn Parked>) -> ParkId {
        let mut l = self.inner.lock();
        let id = l.next;
        l.next += 1;
        l.entries.insert(id, p);
        ParkId(id)
    }

    /// Leaves the list (a no-op when a publish already took it out).
    pub fn leave(&self, id: ParkId) {
        self.inner.lock().entries.remove(&id.0);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// The pass: every parked poll is offered `msg`, outside the list's lock (a poll that
    /// parks meanwhile waits for the next publish, as it would on the signal); those to which
    /// it was not news go back in their places.
    pub fn answer_all(&self, msg: &Arc<Message>) {
        let mut taken = std::mem::take(&mut self.inner.lock().entries);
        if taken.is_empty() {
            return;
        }
        let mut scratch = Vec::new();
        let mut stay = Vec::new();
        // Outside tokio's cooperative budget: the publishing task has spent it long before
        // a pass of thousands of writes is over, and a write over budget says "not now".
        let mut pass = tokio::task::unconstrained(std::future::poll_fn(|_| {
            for (id, p) in std::mem::take(&mut taken) {
                if p.answer(msg, &mut scratch) == Stays::Parked {
                    stay.push((id, p));
                }
            }
            std::task::Poll::Ready(())
        }));
        let _ = std::pin::Pin::new(&mut pass)
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        if !stay.is_empty() {
            self.inner.lock().entries.extend(stay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        news: bool,
        answered: AtomicUsize,
        order: Arc<Mutex<Vec<usize>>>,
        me: usize,
    }

    impl Parked for Counting {
        fn answer(&self, _msg: &Arc<Message>, _scratch: &mut Vec<u8>) -> Stays {
            self.order.lock().push(self.me);
            if self.news {
                self.answered.fetch_add(1, Ordering::Relaxed);
                Stays::Leaves
            } else {
                Stays::Parked
            }
        }
    }

    fn msg() -> Arc<Message> {
        Arc::new(Message::for_test(1, false))
    }

    #[test]
    fn a_pass_answers_in_parking_order_and_keeps_those_it_was_not_news_to() {
        let list = ParkedList::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mk = |me, news| {
            Arc::new(Counting {
                news,
                answered: AtomicUsize::new(0),
                order: order.clone(),
                me,
            })
        };
        let (a, b, c) = (mk(0, true), mk(1, false), mk(2, true));
        list.park(a.clone());
        list.park(b.clone());
        let left = list.park(mk(3, true));
        list.park(c.clone());
        list.leave(left);
        list.answer_all(&msg());
        assert_eq!(*order.lock(), vec![0, 1, 2]);
        assert_eq!(list.len(), 1, "the poll it was not news to stays");
        assert_eq!(a.answered.load(Ordering::Relaxed), 1);
        assert_eq!(c.answered.load(Ordering::Relaxed), 1);
        list.answer_all(&msg());
        assert_eq!(*order.lock(), vec![0, 1, 2, 1]);
    }
}
