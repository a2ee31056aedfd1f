//! Exponential backoff with full jitter: a fleet of gateways reconnecting after a backend restart
//! spreads out instead of arriving in lockstep.
//!
//! A successful handshake does not reset the backoff: a backend that accepts and then sends an
//! invalid frame would otherwise be reconnected every `min`. Only a socket that proved healthy
//! ([`Session::healthy`]) resets it.

use rand::Rng;
use std::time::{Duration, Instant};

/// The shortest uptime that proves a socket healthy without it delivering a message (raised to
/// `2 * min` when `min` is larger): long enough that a backend which accepts and then fails
/// costs at most one handshake per socket per this period.
pub const STABLE_FLOOR: Duration = Duration::from_secs(5);

pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How long a socket must stay up to count as healthy without delivering a message.
    pub fn stable_period(&self) -> Duration {
        self.min.saturating_mul(2).max(STABLE_FLOOR)
    }

    /// Settles a connected socket that ended: back to `min` if it proved healthy, else the
    /// delays keep growing as if the handshake had failed.
    pub fn ended(&mut self, session: &Session) {
        if session.healthy(session.since.elapsed(), self.stable_period()) {
            self.reset();
        }
    }

    /// The ceiling for the next wait: `min * 2^attempt`, capped at `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next wait: uniform in `[min, ceiling]`, then the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceil = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        if ceil <= self.min {
            return self.min;
        }
        let span = (ceil - self.min).as_millis() as u64;
        self.min + Duration::from_millis(rand::rng().random_range(0..=span))
    }
}

/// What one connected socket showed before it ended.
pub struct Session {
    since: Instant,
    delivered: bool,
    violated: bool,
}

impl Session {
    pub fn start() -> Session {
        Session {
            since: Instant::now(),
            delivered: false,
            violated: false,
        }
    }

    /// A message from this socket was cached.
    pub fn delivered(&mut self) {
        self.delivered = true;
    }

    /// The upstream broke the protocol on this socket (invalid or oversize frame).
    pub fn violated(&mut self) {
        self.violated = true;
    }

    /// Healthy: up for the stable period, or it delivered a message and ended by a plain drop
    /// (close, EOF, reset, stall). A backend that sends one good message and then an invalid
    /// frame on every connection is not healthy: reconnecting fast will not cure it.
    pub fn healthy(&self, up_for: Duration, stable: Duration) -> bool {
        up_for >= stable || (self.delivered && !self.violated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut ceilings = vec![];
        for _ in 0..12 {
            ceilings.push(b.ceiling());
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(100) && d <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[3], Duration::from_millis(800));
        assert_eq!(*ceilings.last().unwrap(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn only_a_healthy_session_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        assert_eq!(b.stable_period(), STABLE_FLOOR);
        assert_eq!(
            Backoff::new(Duration::from_secs(4), Duration::from_secs(30)).stable_period(),
            Duration::from_secs(8)
        );
        for _ in 0..4 {
            b.next_delay();
        }
        // Handshake, then an invalid frame at once: no reset.
        let mut s = Session::start();
        s.violated();
        b.ended(&s);
        assert_eq!(b.ceiling(), Duration::from_millis(1600));
        // Nothing delivered and closed at once: no reset either.
        b.ended(&Session::start());
        assert_eq!(b.ceiling(), Duration::from_millis(1600));
        let stable = b.stable_period();
        let short = Duration::from_millis(10);
        let mut good = Session::start();
        good.delivered();
        assert!(good.healthy(short, stable));
        good.violated();
        assert!(!good.healthy(short, stable));
        assert!(
            good.healthy(stable, stable),
            "a long-lived socket is healthy"
        );
        assert!(Session::start().healthy(stable, stable));
        let mut s = Session::start();
        s.delivered();
        b.ended(&s);
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
