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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::runtime::{Handle, RuntimeFlavor};

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

/// A topic's parked polls, one shard per worker thread that parked some, each in the order
/// its polls parked (a fan-out answers the clients that came first first, as the held polls'
/// signal wakes them).
///
/// Why shards: with `work_stealing: false` each worker thread runs a runtime of its own and
/// keeps the connections it accepted. Each shard's pass runs on the worker that owns its
/// connections, the publishing worker's at once and every other's as a task spawned there, so
/// the workers write their halves of a fan-out side by side, as nginx's workers each write
/// their own subscribers. A work-stealing runtime has no owner to give a connection to: its
/// polls share one shard, written by the publishing task.
#[derive(Default)]
pub struct ParkedList {
    shards: Mutex<Vec<Arc<Shard>>>,
}

struct Shard {
    /// The worker thread whose connections these are.
    worker: Worker,
    /// Its runtime (`None` outside one: the pass then runs where the publish does).
    runtime: Option<Handle>,
    list: Mutex<List>,
    /// The newest message offered to this shard, and the newest its pass has run with.
    offered: Mutex<Option<Arc<Message>>>,
    passed: AtomicU64,
    /// A pass task is queued on the shard's worker and has not begun.
    queued: AtomicBool,
}

#[derive(Default)]
struct List {
    next: u64,
    entries: BTreeMap<u64, Arc<dyn Parked>>,
}

/// Which worker thread a poll parked from: each single-threaded runtime's thread is a worker
/// of its own; every thread of a work-stealing runtime (and any thread outside a runtime) is
/// worker 0, the publishing task's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Worker(usize);

impl Worker {
    fn current() -> (Worker, Option<Handle>) {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        thread_local! {
            static ME: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::CurrentThread => {
                (Worker(ME.with(|me| *me)), Some(h))
            }
            Ok(h) => (Worker(0), Some(h)),
            Err(_) => (Worker(0), None),
        }
    }
}

/// A place in a topic's list, to leave it by.
#[derive(Clone)]
pub struct ParkId {
    shard: Arc<Shard>,
    id: u64,
}

impl ParkedList {
    pub fn park(&self, p: Arc<dyn Parked>) -> ParkId {
        let (worker, runtime) = Worker::current();
        let shard = {
            let mut shards = self.shards.lock();
            match shards.iter().find(|s| s.worker == worker) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Shard {
                        worker,
                        runtime,
                        list: Mutex::default(),
                        offered: Mutex::new(None),
                        passed: AtomicU64::new(0),
                        queued: AtomicBool::new(false),
                    });
                    shards.push(s.clone());
                    s
                }
            }
        };
        let id = {
            let mut l = shard.list.lock();
            let id = l.next;
            l.next += 1;
            l.entries.insert(id, p);
            id
        };
        ParkId { shard, id }
    }

    /// Leaves the list (a no-op when a publish already took it out).
    pub fn leave(&self, id: &ParkId) {
        id.shard.list.lock().entries.remove(&id.id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let shards = self.shards.lock().clone();
        shards.iter().map(|s| s.list.lock().entries.len()).sum()
    }

    /// The pass: every parked poll is offered `msg`, the publishing worker's at once, every
    /// other worker's by a task queued on that worker before the publish wakes anyone (so it
    /// runs before the tasks the publish wakes there).
    pub fn answer_all(&self, msg: &Arc<Message>) {
        let (me, _) = Worker::current();
        let shards = self.shards.lock().clone();
        for shard in shards {
            *shard.offered.lock() = Some(msg.clone());
            match &shard.runtime {
                Some(rt) if shard.worker != me => {
                    if !shard.queued.swap(true, Ordering::AcqRel) {
                        let s = shard.clone();
                        rt.spawn(async move {
                            s.queued.store(false, Ordering::Release);
                            s.pass();
                        });
                    }
                }
                _ => shard.pass(),
            }
        }
    }
}

impl Shard {
    /// Offers the newest message offered to this shard to its polls, outside the list's lock
    /// (a poll that parks meanwhile waits for the next publish, as it would on the signal);
    /// those to which it was not news go back in their places. Runs again while a newer
    /// message arrived during the pass (only a pass queued on another worker can see that), so
    /// a poll it was not news to is never left out of a later publish.
    fn pass(&self) {
        loop {
            let Some(msg) = self.offered.lock().clone() else {
                return;
            };
            if self.passed.fetch_max(msg.seq, Ordering::AcqRel) >= msg.seq {
                return;
            }
            let mut taken = std::mem::take(&mut self.list.lock().entries);
            if taken.is_empty() {
                return;
            }
            let mut scratch = Vec::new();
            let mut stay = Vec::new();
            // Outside tokio's cooperative budget: the publishing task has spent it long before
            // a pass of thousands of writes is over, and a write over budget says "not now".
            let mut pass = tokio::task::unconstrained(std::future::poll_fn(|_| {
                for (id, p) in std::mem::take(&mut taken) {
                    if p.answer(&msg, &mut scratch) == Stays::Parked {
                        stay.push((id, p));
                    }
                }
                std::task::Poll::Ready(())
            }));
            let _ = std::pin::Pin::new(&mut pass)
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
            if stay.is_empty() {
                return;
            }
            self.list.lock().entries.extend(stay);
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

    fn msg(seq: u64) -> Arc<Message> {
        Arc::new(Message::for_test(seq, false))
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
        list.leave(&left);
        list.answer_all(&msg(1));
        assert_eq!(*order.lock(), vec![0, 1, 2]);
        assert_eq!(list.len(), 1, "the poll it was not news to stays");
        assert_eq!(a.answered.load(Ordering::Relaxed), 1);
        assert_eq!(c.answered.load(Ordering::Relaxed), 1);
        list.answer_all(&msg(2));
        assert_eq!(*order.lock(), vec![0, 1, 2, 1]);
    }
}
