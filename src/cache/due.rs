//! The ledger of answers a publish has made due: held polls woken by a new message and not yet
//! answered, counted across the process.
//!
//! Why it exists: when a message wakes thousands of held polls at once, the clients answered
//! first act at once (hang up, or poll again) while the rest still wait for their answers.
//! Serving those next steps costs about as much as an answer (a `close` runs the FIN exchange
//! of both loopback sockets in the closer's system time), and the runtime serves them in
//! between the answers still due, so every later answer waits for them. nginx writes every
//! subscriber's answer in one pass before it looks at its sockets again; pollgate gets the same
//! order from this ledger: a connection answered in a fan-out, or whose client hangs up during
//! one, first waits ([`AnswersDue::after`]) until the answers that were due at that moment
//! have gone out. It waits only for those, never for later publishes, so a gateway whose
//! publishes never pause still serves every connection's next request.
//!
//! Exactness: a held poll is counted by the first publish after it began to wait (the topic
//! does this under its ring lock, see `Topic::publish`), and leaves the ledger once, when its
//! wait ends for any reason. [`SETTLE_LIMIT`] bounds every wait all the same.
//!
//! Cost: a fan-out's connections share one ticket, so they share one signal and each is woken
//! once, and one timer (its first waiter's) bounds them all; the ledger's lock is taken once
//! per answer and twice per waiting connection.

use parking_lot::Mutex;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The longest a connection waits for the answers due before it: longer than a fan-out of
/// tens of thousands of answers takes on one core, and short enough that a bug in the count
/// could only slow a connection, never stall it.
pub const SETTLE_LIMIT: Duration = Duration::from_millis(500);

/// A point in the ledger: every answer made due up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// Answers due across the process (every route's topics share one, as they share the runtime).
#[derive(Default)]
pub struct AnswersDue {
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// Answers ever made due.
    issued: u64,
    /// Answers ever given (or whose client left).
    completed: u64,
    /// One signal per ticket someone waits for: a fan-out's connections share one, so each
    /// waiter is woken once, when its own ticket is reached.
    waiting: BTreeMap<u64, Arc<Notify>>,
}

impl AnswersDue {
    /// A publish woke `n` counted held polls.
    pub fn add(&self, n: usize) {
        if n > 0 {
            self.ledger.lock().issued += n as u64;
        }
    }

    /// One counted held poll has been answered or has gone.
    pub fn done(&self) {
        let reached = {
            let mut l = self.ledger.lock();
            l.completed += 1;
            match l.waiting.first_key_value() {
                Some((&t, _)) if t <= l.completed => {
                    let after = l.completed + 1;
                    let later = l.waiting.split_off(&after);
                    std::mem::replace(&mut l.waiting, later)
                }
                _ => return,
            }
        };
        for n in reached.values() {
            n.notify_waiters();
        }
    }

    /// Answers due now.
    pub fn pending(&self) -> u64 {
        let l = self.ledger.lock();
        l.issued - l.completed
    }

    /// The answers due now; `None` when there are none (nothing to wait for).
    pub fn ticket(&self) -> Option<Ticket> {
        let l = self.ledger.lock();
        (l.issued > l.completed).then_some(Ticket(l.issued))
    }

    /// Returns once every answer due at `ticket` has been given, or after [`SETTLE_LIMIT`].
    pub async fn after(&self, ticket: Ticket) {
        let (signal, first) = {
            let mut l = self.ledger.lock();
            if l.completed >= ticket.0 {
                return;
            }
            match l.waiting.entry(ticket.0) {
                Entry::Occupied(e) => (e.get().clone(), false),
                Entry::Vacant(e) => (e.insert(Arc::default()).clone(), true),
            }
        };
        let wait = signal.notified_owned();
        let mut wait = std::pin::pin!(wait);
        wait.as_mut().enable();
        // Read again now that the signal is armed: the `done` that reached the ticket may have
        // signalled between the lock's release and `enable`.
        if self.ledger.lock().completed >= ticket.0 {
            return;
        }
        if !first {
            wait.await;
            return;
        }
        // The ticket's first waiter keeps its limit for all of them: one timer per fan-out,
        // not one per answered connection. If this waiter goes first (its task is dropped),
        // the guard releases the others.
        let release = Release {
            due: self,
            ticket: ticket.0,
        };
        let _ = tokio::time::timeout(SETTLE_LIMIT, wait).await;
        drop(release);
    }

    /// [`Self::after`] the answers due now (at once when none are).
    pub async fn settled(&self) {
        if let Some(t) = self.ticket() {
            self.after(t).await;
        }
    }
}

/// Held by a ticket's first waiter: when its wait ends, for whatever reason, every waiter of
/// the ticket is released (at once a no-op when `done` already reached it).
struct Release<'a> {
    due: &'a AnswersDue,
    ticket: u64,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let signal = self.due.ledger.lock().waiting.remove(&self.ticket);
        if let Some(n) = signal {
            n.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A task that waits on `d` for the answers due at `t`.
    fn wait_after(d: &Arc<AnswersDue>, t: Ticket) -> tokio::task::JoinHandle<()> {
        let d = d.clone();
        tokio::spawn(async move { d.after(t).await })
    }

    /// Lets spawned tasks run until they park.
    async fn run_others() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn nothing_due_means_no_ticket_and_no_wait() {
        let d = AnswersDue::default();
        assert_eq!(d.ticket(), None);
        d.settled().await;
        assert_eq!(d.pending(), 0);
    }

    // Paused time: the settle limit cannot run out while the tests yield, however slow the
    // machine.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_waits_for_the_answers_due_at_its_ticket_only() {
        let d = Arc::new(AnswersDue::default());
        d.add(2);
        let t = d.ticket().expect("two answers are due");
        let waiter = wait_after(&d, t);
        // A later publish: the waiter does not wait for its answers.
        d.add(3);
        d.done();
        run_others().await;
        assert!(
            !waiter.is_finished(),
            "finished with an answer of its ticket still due"
        );
        d.done();
        run_others().await;
        assert!(
            waiter.is_finished(),
            "still waiting after its ticket's answers were given"
        );
        assert_eq!(d.pending(), 3);
        for _ in 0..3 {
            d.done();
        }
        assert_eq!(d.pending(), 0);
        assert_eq!(d.ticket(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_waiters_limit_releases_every_waiter_of_its_ticket() {
        let d = Arc::new(AnswersDue::default());
        d.add(1);
        let t = d.ticket().expect("an answer is due");
        let start = tokio::time::Instant::now();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move {
                    d.after(t).await;
                    start.elapsed()
                })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap(), SETTLE_LIMIT);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_waiter_that_goes_away_releases_the_others() {
        let d = Arc::new(AnswersDue::default());
        d.add(1);
        let t = d.ticket().expect("an answer is due");
        let first = wait_after(&d, t);
        run_others().await;
        let second = wait_after(&d, t);
        run_others().await;
        assert!(!second.is_finished(), "released with its ticket still due");
        first.abort();
        run_others().await;
        assert!(
            second.is_finished(),
            "still waiting after the ticket's first waiter went away"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_that_never_settles_delays_a_waiter_by_the_limit_only() {
        let d = AnswersDue::default();
        d.add(1);
        let start = tokio::time::Instant::now();
        d.settled().await;
        assert_eq!(start.elapsed(), SETTLE_LIMIT);
    }
}
