//! Exponential backoff with full jitter: a fleet of gateways reconnecting after a backend restart
//! spreads out instead of arriving in lockstep.

use rand::Rng;
use std::time::Duration;

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
}
