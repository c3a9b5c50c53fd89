//! Anonymous memory mappings for the large fixed-size regions pusher reserves at start.
//!
//! Two kinds: a **lazy** region (receive-buffer pools) costs nothing until a page is first
//! written, so the budget's worst case is reserved without being resident; a pool lends its
//! buffers last-in first-out, so only as many pages as were ever in use at once become resident.
//! A **resident** region (spill hand-off rings) is faulted in at start: a ring is written all the
//! way round under any steady load, so leaving it lazy would only make RSS climb for the first
//! seconds of load and hide real growth behind it. [`prefault`] does the same for memory
//! allocated elsewhere (the payload arena).

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

/// Bytes of a page on every platform pusher runs on (x86-64, aarch64 with 4 KiB pages); a
/// larger real page size only makes [`prefault`] touch each page more than once.
const PAGE_BYTES: usize = 4096;

/// Writes one zero byte per page of `bytes`, so every page is resident now rather than on first
/// use.
pub fn prefault(bytes: &mut [u8]) {
    for offset in (0..bytes.len()).step_by(PAGE_BYTES) {
        // SAFETY: `offset` is inside the slice; a volatile write is not elided.
        unsafe { std::ptr::write_volatile(bytes.as_mut_ptr().add(offset), 0) };
    }
}

impl MappedRegion {
    /// Reserves `len` bytes and faults every page in now.
    pub fn new_resident(len: usize) -> MappedRegion {
        let region = MappedRegion::new(len);
        // SAFETY: the region was just mapped, readable and writable, and nobody else holds it.
        prefault(unsafe { std::slice::from_raw_parts_mut(region.base, region.len) });
        region
    }

    /// Reserves `len` bytes, resident only once written; panics if the kernel refuses (a
    /// start-time failure).
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

    /// The region's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a region of 0 bytes.
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
