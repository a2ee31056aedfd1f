//! Counting caps: a slot is taken under a maximum and given back when dropped, so every exit
//! path (a client that vanishes, a tunnel that errors) releases it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A taken slot of a counter; dropping it releases the slot.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one more if fewer than `max` are counted; the caller gives it back itself.
pub fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// Takes a slot if fewer than `max` are taken; the slot gives itself back when dropped.
pub fn try_take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
    take(counter, max).then(|| Slot(counter.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released_on_drop() {
        let c = Arc::new(AtomicUsize::new(0));
        let a = try_take(&c, 2).unwrap();
        let _b = try_take(&c, 2).unwrap();
        assert!(try_take(&c, 2).is_none());
        drop(a);
        assert!(try_take(&c, 2).is_some());
        assert_eq!(c.load(Ordering::Relaxed), 1);
    }
}
