//! Per-core payload storage: a FIFO byte arena and drop-oldest rings of handles into it.
//!
//! Droppable items (transcripts, audio-bytes items, speaker-sample requests) keep their bytes in
//! the core's [`PayloadArena`] and travel through a [`DropOldestRing`] as small `Copy` items that
//! hold a [`Handle`]. When either runs out of room the **oldest** data goes, and is counted.
//!
//! Invariant: nothing here grows after construction. The arena's bytes and block table and each
//! ring's slots are allocated once, in `new`; every later operation works within them.

mod arena;
mod ring;

pub use arena::{BLOCK_META_BYTES, Handle, PayloadArena};
pub use ring::{DropOldestRing, RingItem};
