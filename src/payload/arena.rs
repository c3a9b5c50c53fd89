//! A single-threaded FIFO ring allocator of byte blocks.
//!
//! Blocks are placed one after the other in a byte region of fixed capacity, wrapping to its start
//! when a block does not fit before its end (a block is always contiguous). Positions are virtual:
//! a block spans `[start, start + len)` of an ever-growing `u64` byte line, and lives at
//! `start % capacity` in the region.
//!
//! Invariants, checked by `check` in debug builds:
//! - every block in the table lies within one window `[front, front + capacity)` where `front` is
//!   the oldest block's start, and no block straddles a multiple of `capacity`, so the blocks'
//!   bytes never overlap;
//! - the block table holds consecutive sequence numbers `front_sequence..next_sequence`;
//! - the oldest block in the table is live: freed blocks are reclaimed as soon as they reach the
//!   front, so `used_bytes` only counts space that is held by a live block or by a freed block
//!   queued behind one.

/// A block's identity: its sequence number, increasing by one per allocation. A handle is never
/// reused, so a stale handle finds nothing rather than someone else's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle(u64);

impl Handle {
    /// The block's sequence number (handles compare by it: older is smaller).
    pub fn sequence(self) -> u64 {
        self.0
    }
}

/// Bytes of block metadata per block the arena can hold (for the memory budget).
pub const BLOCK_META_BYTES: usize = std::mem::size_of::<Block>();

#[derive(Debug, Clone, Copy)]
struct Block {
    /// Virtual byte position of the block's first byte.
    start: u64,
    len: usize,
    live: bool,
}

const BLOCK_EMPTY: Block = Block {
    start: 0,
    len: 0,
    live: false,
};

/// A FIFO byte arena with a fixed byte capacity and a fixed number of blocks.
pub struct PayloadArena {
    bytes: Box<[u8]>,
    /// Ring of block metadata, oldest at `blocks_head`.
    blocks: Box<[Block]>,
    blocks_head: usize,
    blocks_len: usize,
    /// Sequence number of the oldest block in the table (equals `next_sequence` when empty).
    front_sequence: u64,
    next_sequence: u64,
    /// Virtual byte position just past the newest block.
    tail_position: u64,
    live_blocks: usize,
    live_bytes: usize,
    used_bytes_high_water: usize,
    evicted_blocks: u64,
    evicted_bytes: u64,
    refused_blocks: u64,
}

impl PayloadArena {
    /// Allocates `capacity_bytes` of payload space and room for `blocks_max` blocks.
    pub fn new(capacity_bytes: usize, blocks_max: usize) -> PayloadArena {
        assert!(capacity_bytes > 0, "arena capacity must be positive");
        assert!(blocks_max > 0, "arena must hold at least one block");
        // Resident from the start: a FIFO ring allocator walks its whole capacity under steady
        // load anyway (see `crate::mapped`).
        let mut bytes = vec![0u8; capacity_bytes].into_boxed_slice();
        crate::mapped::prefault(&mut bytes);
        PayloadArena {
            bytes,
            blocks: vec![BLOCK_EMPTY; blocks_max].into_boxed_slice(),
            blocks_head: 0,
            blocks_len: 0,
            front_sequence: 0,
            next_sequence: 0,
            tail_position: 0,
            live_blocks: 0,
            live_bytes: 0,
            used_bytes_high_water: 0,
            evicted_blocks: 0,
            evicted_bytes: 0,
            refused_blocks: 0,
        }
    }

    /// Reserves a block of `len` bytes (contents unspecified), evicting the oldest blocks until it
    /// fits. `None` (and counted) when `len` exceeds the whole capacity.
    pub fn alloc(&mut self, len: usize) -> Option<Handle> {
        if len > self.bytes.len() {
            self.refused_blocks += 1;
            return None;
        }
        let start = self.placement(len);
        while !self.fits(start, len) {
            self.evict_front();
        }
        self.reclaim_front();
        debug_assert!(start % self.bytes.len() as u64 + len as u64 <= self.bytes.len() as u64);
        let index = self.ring_index(self.blocks_len);
        self.blocks[index] = Block {
            start,
            len,
            live: true,
        };
        self.blocks_len += 1;
        self.live_blocks += 1;
        self.live_bytes += len;
        self.tail_position = start + len as u64;
        let handle = Handle(self.next_sequence);
        self.next_sequence += 1;
        self.used_bytes_high_water = self.used_bytes_high_water.max(self.used_bytes());
        self.check();
        Some(handle)
    }

    /// Allocates a block holding a copy of `data`.
    pub fn insert(&mut self, data: &[u8]) -> Option<Handle> {
        let handle = self.alloc(data.len())?;
        self.get_mut(handle)
            .expect("a block just allocated is live")
            .copy_from_slice(data);
        Some(handle)
    }

    /// The block's bytes; `None` once it was freed or evicted.
    pub fn get(&self, handle: Handle) -> Option<&[u8]> {
        let block = self.live_block(handle)?;
        let offset = self.offset(block);
        Some(&self.bytes[offset..offset + block.len])
    }

    /// The block's bytes, writable; `None` once it was freed or evicted.
    pub fn get_mut(&mut self, handle: Handle) -> Option<&mut [u8]> {
        let block = self.live_block(handle)?;
        let offset = self.offset(block);
        Some(&mut self.bytes[offset..offset + block.len])
    }

    /// True while the block is neither freed nor evicted.
    pub fn is_live(&self, handle: Handle) -> bool {
        self.live_block(handle).is_some()
    }

    /// Releases the block. Its space is reclaimed once every older block is gone too. Returns
    /// `false` when the block was already freed or evicted.
    pub fn free(&mut self, handle: Handle) -> bool {
        let Some(index) = self.table_index(handle) else {
            return false;
        };
        let block = &mut self.blocks[index];
        if !block.live {
            return false;
        }
        block.live = false;
        self.live_blocks -= 1;
        self.live_bytes -= block.len;
        self.reclaim_front();
        self.check();
        true
    }

    /// The arena's payload space in bytes (`payload_arena_bytes_per_core`).
    pub fn capacity_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes held from the oldest block to the end of the newest: live blocks, freed blocks not
    /// yet reclaimed, and the gap skipped at a wrap.
    pub fn used_bytes(&self) -> usize {
        (self.tail_position - self.front_position()) as usize
    }

    /// The most [`PayloadArena::used_bytes`] has been.
    pub fn used_bytes_high_water(&self) -> usize {
        self.used_bytes_high_water
    }

    /// Bytes of live blocks only.
    pub fn live_bytes(&self) -> usize {
        self.live_bytes
    }

    /// Blocks allocated and neither freed nor evicted.
    pub fn live_blocks(&self) -> usize {
        self.live_blocks
    }

    /// The most blocks the arena can hold at once.
    pub fn blocks_max(&self) -> usize {
        self.blocks.len()
    }

    /// Live blocks evicted to make room.
    pub fn evicted_blocks(&self) -> u64 {
        self.evicted_blocks
    }

    /// Bytes of the live blocks evicted to make room.
    pub fn evicted_bytes(&self) -> u64 {
        self.evicted_bytes
    }

    /// Allocations refused because they were larger than the arena.
    pub fn refused_blocks(&self) -> u64 {
        self.refused_blocks
    }

    /// Where a block of `len` bytes goes: after the newest block, or at the next wrap when it
    /// would straddle the end of the region.
    fn placement(&self, len: usize) -> u64 {
        let capacity = self.bytes.len() as u64;
        let tail = self.tail_position;
        if tail % capacity + len as u64 <= capacity {
            tail
        } else {
            tail.next_multiple_of(capacity)
        }
    }

    /// Whether a block at `start` fits the table and the byte window without evicting.
    fn fits(&self, start: u64, len: usize) -> bool {
        if self.blocks_len == self.blocks.len() {
            return false;
        }
        // With no block left, the window starts at the new block itself.
        let front = if self.blocks_len == 0 {
            start
        } else {
            self.front_position()
        };
        start + len as u64 - front <= self.bytes.len() as u64
    }

    fn evict_front(&mut self) {
        debug_assert!(self.blocks_len > 0, "an empty arena fits any block");
        let block = self.blocks[self.blocks_head];
        if block.live {
            self.live_blocks -= 1;
            self.live_bytes -= block.len;
            self.evicted_blocks += 1;
            self.evicted_bytes += block.len as u64;
        }
        self.pop_front();
    }

    fn reclaim_front(&mut self) {
        while self.blocks_len > 0 && !self.blocks[self.blocks_head].live {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        self.blocks_head = self.ring_index(1);
        self.blocks_len -= 1;
        self.front_sequence += 1;
    }

    fn front_position(&self) -> u64 {
        if self.blocks_len == 0 {
            self.tail_position
        } else {
            self.blocks[self.blocks_head].start
        }
    }

    fn ring_index(&self, distance_from_head: usize) -> usize {
        (self.blocks_head + distance_from_head) % self.blocks.len()
    }

    fn table_index(&self, handle: Handle) -> Option<usize> {
        if handle.0 < self.front_sequence || handle.0 >= self.next_sequence {
            return None;
        }
        Some(self.ring_index((handle.0 - self.front_sequence) as usize))
    }

    fn live_block(&self, handle: Handle) -> Option<Block> {
        let block = self.blocks[self.table_index(handle)?];
        block.live.then_some(block)
    }

    fn offset(&self, block: Block) -> usize {
        (block.start % self.bytes.len() as u64) as usize
    }

    fn check(&self) {
        debug_assert!(self.blocks_len <= self.blocks.len());
        debug_assert!(self.used_bytes() <= self.bytes.len());
        debug_assert!(self.live_bytes <= self.used_bytes());
        debug_assert!(self.live_blocks <= self.blocks_len);
        debug_assert_eq!(
            self.next_sequence - self.front_sequence,
            self.blocks_len as u64
        );
        debug_assert!(self.blocks_len == 0 || self.blocks[self.blocks_head].live);
        debug_assert!(self.used_bytes_high_water <= self.bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(arena: &mut PayloadArena, byte: u8, len: usize) -> Handle {
        arena.insert(&vec![byte; len]).unwrap()
    }

    #[test]
    fn insert_get_and_free() {
        let mut arena = PayloadArena::new(100, 8);
        let a = arena.insert(b"hello").unwrap();
        let b = arena.insert(b"world!").unwrap();
        assert_eq!(arena.get(a), Some(&b"hello"[..]));
        assert_eq!(arena.get(b), Some(&b"world!"[..]));
        assert_eq!(b.sequence(), a.sequence() + 1);
        assert_eq!(arena.live_blocks(), 2);
        assert_eq!(arena.live_bytes(), 11);
        assert_eq!(arena.used_bytes(), 11);
        assert!(arena.free(a));
        assert_eq!(arena.get(a), None);
        assert!(!arena.free(a), "a second free finds nothing");
        assert_eq!(arena.used_bytes(), 6, "the freed front block is reclaimed");
        assert!(arena.free(b));
        assert_eq!(arena.used_bytes(), 0);
        assert_eq!(arena.live_blocks(), 0);
        assert_eq!(arena.used_bytes_high_water(), 11);
    }

    #[test]
    fn get_mut_writes_in_place() {
        let mut arena = PayloadArena::new(16, 4);
        let handle = arena.alloc(3).unwrap();
        arena.get_mut(handle).unwrap().copy_from_slice(b"abc");
        assert_eq!(arena.get(handle), Some(&b"abc"[..]));
    }

    #[test]
    fn unknown_handles_find_nothing() {
        let mut arena = PayloadArena::new(16, 4);
        let handle = arena.insert(b"x").unwrap();
        let future = Handle(handle.sequence() + 1);
        assert_eq!(arena.get(future), None);
        assert!(!arena.free(future));
        assert!(!arena.is_live(future));
        assert!(arena.is_live(handle));
    }

    #[test]
    fn freed_block_behind_a_live_one_is_reclaimed_when_it_reaches_the_front() {
        let mut arena = PayloadArena::new(100, 8);
        let a = filled(&mut arena, 1, 10);
        let b = filled(&mut arena, 2, 20);
        let c = filled(&mut arena, 3, 30);
        assert!(arena.free(b));
        assert_eq!(arena.used_bytes(), 60, "b waits behind a");
        assert_eq!(arena.live_bytes(), 40);
        assert!(arena.free(a));
        assert_eq!(arena.used_bytes(), 30, "a and b go together");
        assert_eq!(arena.get(c), Some(&[3u8; 30][..]));
    }

    #[test]
    fn wraps_around_keeping_blocks_contiguous() {
        let mut arena = PayloadArena::new(100, 8);
        let a = filled(&mut arena, 1, 40);
        let b = filled(&mut arena, 2, 40);
        assert!(arena.free(a));
        // 20 bytes remain before the end: a 30-byte block wraps to offset 0.
        let c = filled(&mut arena, 3, 30);
        assert_eq!(arena.get(b), Some(&[2u8; 40][..]));
        assert_eq!(arena.get(c), Some(&[3u8; 30][..]));
        assert_eq!(arena.used_bytes(), 40 + 20 + 30, "the skipped gap is held");
        assert_eq!(arena.evicted_blocks(), 0);
        assert!(arena.free(b));
        assert_eq!(arena.used_bytes(), 30);
    }

    #[test]
    fn evicts_the_oldest_blocks_and_counts_them() {
        let mut arena = PayloadArena::new(100, 8);
        let a = filled(&mut arena, 1, 40);
        let b = filled(&mut arena, 2, 40);
        let c = filled(&mut arena, 3, 40);
        assert_eq!(arena.get(a), None, "a was evicted for c");
        assert_eq!(arena.get(b), Some(&[2u8; 40][..]));
        assert_eq!(arena.get(c), Some(&[3u8; 40][..]));
        assert_eq!(arena.evicted_blocks(), 1);
        assert_eq!(arena.evicted_bytes(), 40);
        assert!(!arena.free(a));
        // A 70-byte block needs both b and c gone.
        let d = filled(&mut arena, 4, 70);
        assert_eq!(arena.get(b), None);
        assert_eq!(arena.get(c), None);
        assert_eq!(arena.get(d), Some(&[4u8; 70][..]));
        assert_eq!(arena.evicted_blocks(), 3);
        assert_eq!(arena.evicted_bytes(), 120);
        assert_eq!(arena.live_blocks(), 1);
    }

    #[test]
    fn evicting_a_freed_block_is_not_counted() {
        let mut arena = PayloadArena::new(100, 8);
        let a = filled(&mut arena, 1, 50);
        let b = filled(&mut arena, 2, 50);
        assert!(arena.free(b));
        let c = filled(&mut arena, 3, 100);
        assert_eq!(arena.get(a), None);
        assert_eq!(arena.get(c), Some(&[3u8; 100][..]));
        assert_eq!(arena.evicted_blocks(), 1);
        assert_eq!(arena.evicted_bytes(), 50);
    }

    #[test]
    fn a_full_block_table_evicts_the_oldest_block() {
        let mut arena = PayloadArena::new(1000, 3);
        let handles: Vec<Handle> = (0..5).map(|i| filled(&mut arena, i, 1)).collect();
        assert_eq!(arena.live_blocks(), 3);
        assert_eq!(arena.evicted_blocks(), 2);
        assert_eq!(arena.get(handles[0]), None);
        assert_eq!(arena.get(handles[1]), None);
        for (i, handle) in handles.iter().enumerate().skip(2) {
            assert_eq!(arena.get(*handle), Some(&[i as u8][..]));
        }
    }

    #[test]
    fn oversize_blocks_are_refused_and_counted() {
        let mut arena = PayloadArena::new(64, 4);
        let kept = filled(&mut arena, 9, 10);
        assert_eq!(arena.alloc(65), None);
        assert_eq!(arena.refused_blocks(), 1);
        assert_eq!(arena.get(kept), Some(&[9u8; 10][..]), "nothing was evicted");
        let whole = filled(&mut arena, 7, 64);
        assert_eq!(arena.get(whole), Some(&[7u8; 64][..]));
        assert_eq!(arena.used_bytes(), 64);
        assert_eq!(arena.get(kept), None);
    }

    #[test]
    fn an_empty_arena_takes_a_whole_capacity_block_at_any_position() {
        let mut arena = PayloadArena::new(64, 4);
        let a = filled(&mut arena, 1, 33);
        assert!(arena.free(a));
        let b = filled(&mut arena, 2, 64);
        assert_eq!(arena.get(b), Some(&[2u8; 64][..]));
        assert_eq!(arena.evicted_blocks(), 0);
        assert_eq!(arena.used_bytes(), 64);
    }

    #[test]
    fn zero_length_blocks_hold_no_bytes() {
        let mut arena = PayloadArena::new(8, 4);
        let empty = arena.alloc(0).unwrap();
        assert_eq!(arena.get(empty), Some(&[][..]));
        assert_eq!(arena.used_bytes(), 0);
        assert_eq!(arena.live_blocks(), 1);
        assert!(arena.free(empty));
    }

    /// A long run against a model: whatever the arena still holds is exactly what was written,
    /// only the oldest blocks ever disappear, and its figures stay within bounds.
    #[test]
    fn long_run_keeps_a_suffix_of_blocks_intact() {
        let mut arena = PayloadArena::new(257, 16);
        let mut live: Vec<(Handle, u8, usize)> = Vec::new();
        let mut state = 12345u64;
        for step in 0..20_000u32 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let roll = (state >> 33) as usize;
            if roll.is_multiple_of(4) && !live.is_empty() {
                let (handle, _, _) = live.remove(roll % live.len());
                assert!(arena.free(handle));
            } else {
                let len = roll % 90;
                let byte = step as u8;
                let handle = arena.insert(&vec![byte; len]).unwrap();
                live.push((handle, byte, len));
            }
            let (kept, evicted): (Vec<_>, Vec<_>) = live
                .iter()
                .partition(|(handle, _, _)| arena.is_live(*handle));
            if let (Some(newest_evicted), Some(oldest_kept)) = (
                evicted.iter().map(|(handle, _, _)| *handle).max(),
                kept.iter().map(|(handle, _, _)| *handle).min(),
            ) {
                assert!(newest_evicted < oldest_kept, "only the oldest are evicted");
            }
            live = kept;
            assert_eq!(arena.live_blocks(), live.len());
            assert_eq!(
                arena.live_bytes(),
                live.iter().map(|(_, _, len)| len).sum::<usize>()
            );
            for (handle, byte, len) in &live {
                assert_eq!(arena.get(*handle), Some(&vec![*byte; *len][..]));
            }
            assert!(arena.used_bytes() <= arena.capacity_bytes());
        }
        assert!(arena.evicted_blocks() > 0);
        assert!(arena.used_bytes_high_water() <= 257);
    }
}
