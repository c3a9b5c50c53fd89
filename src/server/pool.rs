//! Per-core pools of byte buffers, reserved at start. A connection borrows a receive buffer only
//! while it has bytes to parse, so an idle session owns none.
//!
//! A pool is one anonymous `mmap` region cut into equal buffers: its pages are zero and not
//! resident until a buffer is first written, so the budget's worst case costs nothing at start
//! (an allocator's zeroed allocation may touch every page). Buffers are lent most-recently-returned
//! first, so a lightly loaded core keeps touching the same few pages.
//!
//! Invariant: `free.len() + lent == capacity` at all times; nothing is allocated after
//! [`BufferPool::new`] (the free list has its full capacity from the start).

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;

use prometheus_client::metrics::gauge::Gauge;

use crate::mapped::MappedRegion;

/// A fixed set of equal byte buffers in one lazily mapped region, lent one at a time.
pub struct BufferPool {
    region: MappedRegion,
    buffer_bytes: usize,
    capacity: usize,
    free: RefCell<Vec<u32>>,
    in_use: Option<Gauge>,
}

impl BufferPool {
    /// `count` buffers of `buffer_bytes` each.
    pub fn new(count: usize, buffer_bytes: usize, in_use: Option<Gauge>) -> Rc<BufferPool> {
        assert!(count > 0 && buffer_bytes > 0 && count <= u32::MAX as usize);
        let region = MappedRegion::new(
            count
                .checked_mul(buffer_bytes)
                .expect("pool size overflows"),
        );
        let free = (0..count as u32).rev().collect();
        Rc::new(BufferPool {
            region,
            buffer_bytes,
            capacity: count,
            free: RefCell::new(free),
            in_use,
        })
    }

    /// Lends a buffer, or None when all are lent.
    pub fn take(self: &Rc<Self>) -> Option<PooledBuf> {
        let index = self.free.borrow_mut().pop()?;
        self.report();
        Some(PooledBuf {
            index,
            pool: Rc::clone(self),
        })
    }

    /// Buffers not lent now.
    pub fn available(&self) -> usize {
        self.free.borrow().len()
    }

    /// Buffers in the pool.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn give_back(&self, index: u32) {
        let mut free = self.free.borrow_mut();
        debug_assert!(!free.contains(&index), "buffer returned twice");
        debug_assert!(free.len() < self.capacity);
        free.push(index);
        drop(free);
        self.report();
    }

    fn report(&self) {
        if let Some(gauge) = &self.in_use {
            gauge.set((self.capacity - self.available()) as i64);
        }
    }

    fn buffer_ptr(&self, index: u32) -> *mut u8 {
        debug_assert!((index as usize) < self.capacity);
        // SAFETY: index < capacity, so the offset stays inside the region.
        unsafe { self.region.as_ptr().add(index as usize * self.buffer_bytes) }
    }
}

/// A lent buffer; it goes back to its pool when dropped. Only one `PooledBuf` exists per buffer
/// index at a time (the free list hands each index out once), so its slice is exclusive.
pub struct PooledBuf {
    index: u32,
    pool: Rc<BufferPool>,
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the range lies inside the live region and is lent to this value only.
        unsafe {
            std::slice::from_raw_parts(self.pool.buffer_ptr(self.index), self.pool.buffer_bytes)
        }
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(self.pool.buffer_ptr(self.index), self.pool.buffer_bytes)
        }
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lends_until_empty_and_takes_back() {
        let pool = BufferPool::new(2, 16, None);
        let mut a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert!(pool.take().is_none());
        assert_eq!(a.len(), 16);
        a[15] = 7;
        assert!(b.iter().all(|&x| x == 0), "buffers do not overlap");
        drop(a);
        assert_eq!(pool.available(), 1);
        let again = pool.take().unwrap();
        assert_eq!(
            again[15], 7,
            "the most recently returned buffer is lent first"
        );
        drop(again);
        drop(b);
        assert_eq!(pool.available(), pool.capacity());
    }
}
