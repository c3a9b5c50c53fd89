//! The per-core delay queue of speaker-sample requests (docs/downstream.md §4): each becomes due a
//! fixed delay after it arrived and outlives its session.
//!
//! Every entry has the same delay, so arrival order is due order and the queue is a FIFO ring.
//! A per-owner bound (docs/protocol.md §3: 100 per session) drops that owner's oldest entry, which
//! may sit anywhere in the ring: it is marked dead in place (found by a scan bounded by the
//! capacity) and skipped when it reaches the front.
//!
//! Invariants: the ring holds at most `capacity` entries (live or dead) and never reallocates;
//! `live` counts the live ones; entries leave in arrival order.

use std::collections::VecDeque;

use crate::session::Millis;

/// Bytes of a core's speaker-sample arena per entry of its delay queue: a request body is a
/// few hundred bytes (ids, the segment ids, the sample rate). The arena holds the queue's
/// capacity times this; a backlog of larger bodies loses its oldest (counted as dropped).
pub const BODY_BYTES_PER_ENTRY: usize = 1024;

/// Who queued an entry: a session slot on this core, as (slot key, slot generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The owning session's slot key.
    pub key: usize,
    /// The slot's generation when the entry was queued.
    pub generation: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry<T> {
    due: Millis,
    owner: Owner,
    value: T,
    live: bool,
}

/// Bytes one entry of a `DelayQueue<T>` takes.
pub const fn entry_bytes<T>() -> usize {
    std::mem::size_of::<Entry<T>>()
}

/// A fixed-capacity FIFO of values due at a time, each with an [`Owner`]; full, it drops its
/// oldest.
pub struct DelayQueue<T> {
    entries: VecDeque<Entry<T>>,
    capacity: usize,
    live: usize,
}

impl<T: Copy> DelayQueue<T> {
    /// An empty queue of `capacity` entries (above 0), allocated once here.
    pub fn new(capacity: usize) -> DelayQueue<T> {
        assert!(capacity > 0, "a delay queue needs room for one entry");
        DelayQueue {
            entries: VecDeque::with_capacity(capacity),
            capacity,
            live: 0,
        }
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no live entry is queued.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Appends an entry due at `due` (not earlier than any queued one). When the ring is full,
    /// the oldest entry leaves first; it is returned if it was live (a drop to count and free).
    pub fn push(&mut self, due: Millis, owner: Owner, value: T) -> Option<(Owner, T)> {
        debug_assert!(
            self.entries.back().is_none_or(|last| last.due <= due),
            "entries arrive in due order"
        );
        let mut evicted = None;
        if self.entries.len() == self.capacity {
            let oldest = self.entries.pop_front().expect("full");
            if oldest.live {
                self.live -= 1;
                evicted = Some((oldest.owner, oldest.value));
            }
        }
        self.entries.push_back(Entry {
            due,
            owner,
            value,
            live: true,
        });
        self.live += 1;
        debug_assert!(
            self.entries.capacity() >= self.capacity && self.entries.len() <= self.capacity
        );
        evicted
    }

    /// Live entries of `owner` (a scan bounded by the capacity).
    pub fn count_of(&self, owner: Owner) -> usize {
        self.entries
            .iter()
            .filter(|e| e.live && e.owner == owner)
            .count()
    }

    /// Marks `owner`'s oldest live entry dead and returns its value.
    pub fn drop_oldest_of(&mut self, owner: Owner) -> Option<T> {
        let entry = self
            .entries
            .iter_mut()
            .find(|e| e.live && e.owner == owner)?;
        entry.live = false;
        self.live -= 1;
        Some(entry.value)
    }

    /// The next live entry due at or before `now`, dead entries at the front skipped.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Owner, T)> {
        while let Some(front) = self.entries.front() {
            if front.live && front.due > now {
                return None;
            }
            let entry = self.entries.pop_front().expect("front exists");
            if entry.live {
                self.live -= 1;
                return Some((entry.owner, entry.value));
            }
        }
        None
    }

    /// True when a live entry is due at or before `now`.
    pub fn has_due(&self, now: Millis) -> bool {
        self.entries
            .iter()
            .find(|e| e.live)
            .is_some_and(|e| e.due <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(key: usize) -> Owner {
        Owner { key, generation: 0 }
    }

    #[test]
    fn entries_leave_when_due_in_arrival_order() {
        let mut queue = DelayQueue::new(4);
        queue.push(Millis(100), owner(1), 'a');
        queue.push(Millis(150), owner(2), 'b');
        assert_eq!(queue.pop_due(Millis(99)), None);
        assert_eq!(queue.pop_due(Millis(120)), Some((owner(1), 'a')));
        assert_eq!(queue.pop_due(Millis(120)), None);
        assert!(queue.has_due(Millis(150)));
        assert_eq!(queue.pop_due(Millis(1000)), Some((owner(2), 'b')));
        assert!(queue.is_empty());
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_returns_it() {
        let mut queue = DelayQueue::new(2);
        assert_eq!(queue.push(Millis(1), owner(1), 1), None);
        assert_eq!(queue.push(Millis(2), owner(2), 2), None);
        assert_eq!(queue.push(Millis(3), owner(3), 3), Some((owner(1), 1)));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop_due(Millis(10)), Some((owner(2), 2)));
    }

    #[test]
    fn an_owners_oldest_is_dropped_in_place_and_skipped() {
        let mut queue = DelayQueue::new(8);
        queue.push(Millis(1), owner(1), 10);
        queue.push(Millis(2), owner(2), 20);
        queue.push(Millis(3), owner(1), 11);
        assert_eq!(queue.count_of(owner(1)), 2);
        assert_eq!(queue.drop_oldest_of(owner(1)), Some(10));
        assert_eq!(queue.count_of(owner(1)), 1);
        assert_eq!(queue.drop_oldest_of(owner(3)), None);
        assert_eq!(queue.len(), 2);
        assert!(!queue.has_due(Millis(1)), "the dead entry is not due");
        assert_eq!(queue.pop_due(Millis(5)), Some((owner(2), 20)));
        assert_eq!(queue.pop_due(Millis(5)), Some((owner(1), 11)));
        assert_eq!(queue.pop_due(Millis(5)), None);
    }

    #[test]
    fn a_dead_entry_evicted_by_a_full_queue_is_not_reported() {
        let mut queue = DelayQueue::new(2);
        queue.push(Millis(1), owner(1), 1);
        queue.push(Millis(2), owner(2), 2);
        queue.drop_oldest_of(owner(1));
        assert_eq!(queue.push(Millis(3), owner(3), 3), None);
        assert_eq!(queue.len(), 2);
    }
}
