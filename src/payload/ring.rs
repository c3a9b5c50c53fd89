//! A fixed-capacity ring of payload handles that drops its oldest item when full.
//!
//! Invariants: the ring never holds more than its capacity; every item that leaves it other than
//! through [`DropOldestRing::pop`] has its arena block freed; every item lost (pushed out by a
//! newer one, or found evicted by the arena on pop) is counted exactly once.

use crossbeam_queue::ArrayQueue;

use super::arena::{Handle, PayloadArena};

/// An item a ring can carry: small, `Copy`, and owning one arena block.
pub trait RingItem: Copy {
    /// The arena block that holds the item's bytes.
    fn handle(&self) -> Handle;
}

/// A fixed-capacity FIFO of items whose bytes live in a [`PayloadArena`]; full, it drops its
/// oldest item (counted). Never grows.
pub struct DropOldestRing<T> {
    queue: ArrayQueue<T>,
    dropped_full: u64,
    dropped_evicted: u64,
    high_water: usize,
}

impl<T: RingItem> DropOldestRing<T> {
    /// A ring of `capacity` slots (at least one), allocated now.
    pub fn new(capacity: usize) -> DropOldestRing<T> {
        assert!(capacity > 0, "a ring needs at least one slot");
        DropOldestRing {
            queue: ArrayQueue::new(capacity),
            dropped_full: 0,
            dropped_evicted: 0,
            high_water: 0,
        }
    }

    /// Appends `item`; when the ring is full the oldest item is pushed out, its block freed, and
    /// the drop counted.
    pub fn push(&mut self, item: T, arena: &mut PayloadArena) {
        if let Some(oldest) = self.queue.force_push(item) {
            arena.free(oldest.handle());
            self.dropped_full += 1;
        }
        self.high_water = self.high_water.max(self.queue.len());
        debug_assert!(self.queue.len() <= self.queue.capacity());
    }

    /// The oldest item whose block is still live. Items whose block the arena evicted are
    /// skipped and counted as drops. The returned item's block stays live: the caller frees it
    /// once done with the bytes.
    pub fn pop(&mut self, arena: &PayloadArena) -> Option<T> {
        while let Some(item) = self.queue.pop() {
            if arena.is_live(item.handle()) {
                return Some(item);
            }
            self.dropped_evicted += 1;
        }
        None
    }

    /// Empties the ring, freeing every item's block; returns how many items were discarded.
    /// Discarded items are not counted as drops.
    pub fn clear(&mut self, arena: &mut PayloadArena) -> usize {
        let mut discarded = 0;
        while let Some(item) = self.queue.pop() {
            arena.free(item.handle());
            discarded += 1;
        }
        discarded
    }

    /// Items queued, including any whose block was evicted (skipped by [`DropOldestRing::pop`]).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no item is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The most items the ring holds.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Every item lost: pushed out by a newer one or evicted from the arena.
    pub fn dropped(&self) -> u64 {
        self.dropped_full + self.dropped_evicted
    }

    /// Items pushed out because the ring was full.
    pub fn dropped_full(&self) -> u64 {
        self.dropped_full
    }

    /// Items whose block the arena evicted before they were popped.
    pub fn dropped_evicted(&self) -> u64 {
        self.dropped_evicted
    }

    /// The most items the ring has held at once.
    pub fn high_water(&self) -> usize {
        self.high_water
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Item {
        handle: Handle,
        tag: u32,
    }

    impl RingItem for Item {
        fn handle(&self) -> Handle {
            self.handle
        }
    }

    fn push(ring: &mut DropOldestRing<Item>, arena: &mut PayloadArena, tag: u32) -> Handle {
        let handle = arena.insert(&tag.to_le_bytes()).unwrap();
        ring.push(Item { handle, tag }, arena);
        handle
    }

    #[test]
    fn fifo_order_and_sizes() {
        let mut arena = PayloadArena::new(1024, 16);
        let mut ring = DropOldestRing::new(4);
        assert!(ring.is_empty());
        for tag in 0..3 {
            push(&mut ring, &mut arena, tag);
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.capacity(), 4);
        for tag in 0..3 {
            let item = ring.pop(&arena).unwrap();
            assert_eq!(item.tag, tag);
            assert_eq!(arena.get(item.handle), Some(&tag.to_le_bytes()[..]));
            assert!(arena.free(item.handle));
        }
        assert_eq!(ring.pop(&arena), None);
        assert_eq!(ring.dropped(), 0);
        assert_eq!(ring.high_water(), 3);
        assert_eq!(arena.live_blocks(), 0);
    }

    #[test]
    fn full_ring_drops_the_oldest_and_frees_its_block() {
        let mut arena = PayloadArena::new(1024, 16);
        let mut ring = DropOldestRing::new(3);
        let handles: Vec<Handle> = (0..5).map(|tag| push(&mut ring, &mut arena, tag)).collect();
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.dropped_full(), 2);
        assert_eq!(ring.dropped(), 2);
        assert_eq!(ring.high_water(), 3);
        assert!(!arena.is_live(handles[0]));
        assert!(!arena.is_live(handles[1]));
        assert_eq!(arena.live_blocks(), 3);
        let tags: Vec<u32> = std::iter::from_fn(|| ring.pop(&arena))
            .map(|item| item.tag)
            .collect();
        assert_eq!(tags, [2, 3, 4]);
    }

    #[test]
    fn items_evicted_by_the_arena_are_skipped_and_counted_on_pop() {
        // Room for two 4-byte blocks only.
        let mut arena = PayloadArena::new(8, 16);
        let mut ring = DropOldestRing::new(10);
        for tag in 0..5 {
            push(&mut ring, &mut arena, tag);
        }
        assert_eq!(arena.evicted_blocks(), 3);
        assert_eq!(ring.dropped(), 0, "not known until popped");
        assert_eq!(ring.pop(&arena).map(|item| item.tag), Some(3));
        assert_eq!(ring.dropped_evicted(), 3);
        assert_eq!(ring.pop(&arena).map(|item| item.tag), Some(4));
        assert_eq!(ring.pop(&arena), None);
        assert_eq!(ring.dropped(), 3);
        assert_eq!(ring.dropped_full(), 0);
    }

    #[test]
    fn pushing_out_an_already_evicted_item_counts_once() {
        let mut arena = PayloadArena::new(4, 16);
        let mut ring = DropOldestRing::new(1);
        let first = push(&mut ring, &mut arena, 1);
        let second = push(&mut ring, &mut arena, 2);
        assert!(!arena.is_live(first));
        assert_eq!(ring.dropped(), 1);
        assert_eq!(ring.pop(&arena).map(|item| item.handle), Some(second));
        assert_eq!(ring.dropped(), 1);
    }

    #[test]
    fn clear_frees_every_block() {
        let mut arena = PayloadArena::new(1024, 16);
        let mut ring = DropOldestRing::new(8);
        for tag in 0..5 {
            push(&mut ring, &mut arena, tag);
        }
        assert_eq!(ring.clear(&mut arena), 5);
        assert!(ring.is_empty());
        assert_eq!(arena.live_blocks(), 0);
        assert_eq!(arena.used_bytes(), 0);
        assert_eq!(ring.dropped(), 0);
        assert_eq!(ring.high_water(), 5);
    }
}
