//! Delivered (client, message) pairs: which message each answer held, checked against when each
//! message was published, so a lost, skipped, repeated or premature message is counted, never
//! averaged away.

use std::time::Instant;

/// What one client received: the topic it polls and every message found in its answers, with
/// the instant the answer holding it was whole.
pub struct Received {
    pub topic: usize,
    pub got: Vec<(u32, Instant)>,
}

#[derive(Debug, Default)]
pub struct Tally {
    /// Clients times messages.
    pub expected: u64,
    /// Distinct (client, message) pairs received after their publish.
    pub delivered: u64,
    /// Pairs a client never received although it received a later message of its topic.
    pub skipped: u64,
    /// Messages received again by a client that already had them.
    pub duplicates: u64,
    /// Messages received before their publish was sent (the answer held something else).
    pub early: u64,
    /// Sequence numbers outside 1..=messages.
    pub unknown: u64,
    /// Publish-to-answer of every delivered pair, in microseconds.
    pub latencies_us: Vec<u64>,
    /// The same, by message: `[i]` for message `i + 1` (which publish of a run is slow).
    pub by_message_us: Vec<Vec<u64>>,
    /// The last delivered pair's answer.
    pub last_at: Option<Instant>,
}

impl Tally {
    /// Pairs expected but not delivered.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
}

/// Scores every client's messages; `published[round][topic]` is when message `round + 1` of
/// `topic` was sent, `clients` the clients that should have had every message.
pub fn tally(clients: usize, published: &[Vec<Instant>], received: &[Received]) -> Tally {
    let n = published.len();
    let mut t = Tally {
        expected: (clients * n) as u64,
        by_message_us: vec![Vec::new(); n],
        ..Tally::default()
    };
    for r in received {
        let mut seen = vec![false; n + 1];
        let mut newest = 0usize;
        for &(seq, at) in &r.got {
            let seq = seq as usize;
            let Some(sent) = seq
                .checked_sub(1)
                .and_then(|i| published.get(i))
                .and_then(|round| round.get(r.topic))
            else {
                t.unknown += 1;
                continue;
            };
            if at < *sent {
                t.early += 1;
            } else if seen[seq] {
                t.duplicates += 1;
            } else {
                seen[seq] = true;
                newest = newest.max(seq);
                t.delivered += 1;
                let us = at.duration_since(*sent).as_micros() as u64;
                t.latencies_us.push(us);
                t.by_message_us[seq - 1].push(us);
                t.last_at = Some(t.last_at.map_or(at, |l| l.max(at)));
            }
        }
        t.skipped += seen[1..newest.max(1)].iter().filter(|s| !**s).count() as u64;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_kind_of_miss_is_counted() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        // Two rounds on one topic, published at 0 and 100 ms.
        let published = vec![vec![ms(0)], vec![ms(100)]];
        let clients = vec![
            // Both, in order: 2 pairs, 5 and 20 ms.
            Received {
                topic: 0,
                got: vec![(1, ms(5)), (2, ms(120))],
            },
            // Skipped message 1, then got message 2 twice.
            Received {
                topic: 0,
                got: vec![(2, ms(110)), (2, ms(130))],
            },
            // Message 2 "answered" before it was published; a sequence number never sent.
            Received {
                topic: 0,
                got: vec![(1, ms(1)), (2, ms(50)), (9, ms(60))],
            },
        ];
        let t = tally(3, &published, &clients);
        assert_eq!(t.expected, 6);
        assert_eq!(t.delivered, 4, "{t:?}");
        assert_eq!(t.lost(), 2);
        assert_eq!(t.skipped, 1);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.early, 1);
        assert_eq!(t.unknown, 1);
        let mut l = t.latencies_us.clone();
        l.sort_unstable();
        assert_eq!(l, vec![1_000, 5_000, 10_000, 20_000]);
        assert_eq!(t.by_message_us, vec![vec![5_000, 1_000], vec![20_000, 10_000]]);
        assert_eq!(t.last_at, Some(ms(120)));
    }
}
