//! The receive buffers held by peers: a connection whose buffer holds an incomplete message
//! (not stalled by pusher's own backpressure) is *parked*. When every buffer of the core is lent
//! and another connection needs one, the buffer parked the longest, for at least
//! [`EVICT_AGE_MS_MIN`], is taken back: that connection closes with 1008 (its message was never
//! complete, so nothing it sent was handled and lost). Honest messages complete within
//! milliseconds; a peer trickling a large frame cannot keep a buffer from the others. The
//! message deadline (`message_timeout_ms`) bounds a parked buffer even without contention.
//!
//! Invariant: at most one entry per connection (slot key and generation); the list never holds
//! more entries than the core has receive buffers (a parked connection holds one).

use std::cell::RefCell;

use crate::session::Millis;

pub use crate::connection::EVICT_AGE_MS_MIN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parked {
    key: usize,
    generation: u32,
    since: Millis,
}

/// This core's connections that hold a receive buffer for an incomplete message, and since when.
pub struct ParkedBuffers {
    entries: RefCell<Vec<Parked>>,
}

impl ParkedBuffers {
    /// For a core with `buffers` receive buffers.
    pub fn new(buffers: usize) -> ParkedBuffers {
        ParkedBuffers {
            entries: RefCell::new(Vec::with_capacity(buffers)),
        }
    }

    /// The connection (`key`, `generation`) holds an incomplete message since `since`.
    pub fn park(&self, key: usize, generation: u32, since: Millis) {
        let mut entries = self.entries.borrow_mut();
        match entries
            .iter_mut()
            .find(|p| p.key == key && p.generation == generation)
        {
            Some(parked) => parked.since = since,
            None => {
                assert!(
                    entries.len() < entries.capacity(),
                    "a parked connection holds a receive buffer"
                );
                entries.push(Parked {
                    key,
                    generation,
                    since,
                });
            }
        }
    }

    /// The connection holds no incomplete message any more (or no buffer).
    pub fn unpark(&self, key: usize, generation: u32) {
        self.entries
            .borrow_mut()
            .retain(|p| !(p.key == key && p.generation == generation));
    }

    /// Takes the longest-parked entry older than [`EVICT_AGE_MS_MIN`] at `now`: the connection
    /// whose buffer goes back to the pool.
    pub fn evict_oldest(&self, now: Millis) -> Option<(usize, u32)> {
        let mut entries = self.entries.borrow_mut();
        let (index, oldest) = entries.iter().enumerate().min_by_key(|(_, p)| p.since)?;
        if now.0.saturating_sub(oldest.since.0) < EVICT_AGE_MS_MIN {
            return None;
        }
        let taken = (oldest.key, oldest.generation);
        entries.swap_remove(index);
        Some(taken)
    }

    /// Connections parked.
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_old_enough_is_evicted_once() {
        let parked = ParkedBuffers::new(3);
        parked.park(1, 0, Millis(500));
        parked.park(2, 0, Millis(100));
        parked.park(3, 7, Millis(50));
        parked.unpark(3, 7);
        let old = EVICT_AGE_MS_MIN;
        assert_eq!(
            parked.evict_oldest(Millis(100 + old - 1)),
            None,
            "not old enough"
        );
        assert_eq!(parked.evict_oldest(Millis(100 + old)), Some((2, 0)));
        assert_eq!(parked.evict_oldest(Millis(100 + old)), None);
        assert_eq!(parked.evict_oldest(Millis(500 + old)), Some((1, 0)));
        assert_eq!(parked.len(), 0);
    }

    #[test]
    fn parking_again_updates_and_generations_are_distinct() {
        let parked = ParkedBuffers::new(2);
        parked.park(1, 0, Millis(0));
        parked.park(1, 0, Millis(900));
        assert_eq!(parked.len(), 1);
        parked.unpark(1, 1);
        assert_eq!(parked.len(), 1, "another session in the same slot");
        assert_eq!(
            parked.evict_oldest(Millis(900 + EVICT_AGE_MS_MIN - 1)),
            None
        );
    }
}
