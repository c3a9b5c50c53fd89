//! Anonymous memory mappings for the large fixed-size regions pusher reserves at start (receive
//! buffer pools, spill hand-off rings): their pages are zero and cost nothing until first
//! written, so the budget's worst case is reserved without being resident.

/// An anonymous private mapping, unmapped on drop.
pub struct MappedRegion {
    base: *mut u8,
    len: usize,
}

// SAFETY: the region is plain memory; who may touch which bytes is decided by its owners
// (a pool lends disjoint buffers; a hand-off ring splits producer and consumer ranges).
unsafe impl Send for MappedRegion {}
// SAFETY: as above; `MappedRegion` itself only hands out a raw pointer.
unsafe impl Sync for MappedRegion {}

impl MappedRegion {
    /// Reserves `len` bytes; panics if the kernel refuses (a start-time failure).
    pub fn new(len: usize) -> MappedRegion {
        assert!(len > 0);
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(
            base != libc::MAP_FAILED,
            "cannot reserve {len} bytes of memory"
        );
        MappedRegion {
            base: base as *mut u8,
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte; offsets below `len()` stay inside the region.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}
