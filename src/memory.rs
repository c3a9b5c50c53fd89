//! Process memory figures for `/debug/memory` and the budget check: resident set from
//! `/proc/self/statm`, heap bytes in use (now and at peak) from [`CountingAllocator`], heap
//! commit from mimalloc's process info.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

static HEAP_IN_USE_BYTES: AtomicU64 = AtomicU64::new(0);
static HEAP_PEAK_BYTES: AtomicU64 = AtomicU64::new(0);

/// A global allocator that counts the bytes its inner allocator has handed out and not yet
/// taken back. Two relaxed atomics per allocation; the receive path allocates nothing, so the
/// cost stays off the hot path.
pub struct CountingAllocator<A>(pub A);

// SAFETY: every call is forwarded unchanged to the inner allocator; the counters only observe.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.0.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.0.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.dealloc(ptr, layout) };
        HEAP_IN_USE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let new = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            HEAP_IN_USE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

fn grew(bytes: usize) {
    let now = HEAP_IN_USE_BYTES.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
    if now > HEAP_PEAK_BYTES.load(Ordering::Relaxed) {
        HEAP_PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
    }
}

/// mimalloc's `mi_option_purge_delay`: its place in `mi_option_e` (mimalloc.h, v3), which the
/// bindings do not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// The environment variable by which an operator sets the purge delay instead.
const PURGE_DELAY_VARIABLE: &str = "MIMALLOC_PURGE_DELAY";
/// Milliseconds mimalloc keeps a wholly freed page resident before it gives the page back to the
/// OS (mimalloc v3's default is 1,000; v2's was 10). Egress allocates and frees a connection's
/// buffers with every process call; under the chaos load RSS still rose 1.23 MB/min with the
/// 1 s delay and 0.35–0.63 MB/min with this one (`docs/0007-resident-memory-under-churn.md`).
pub const PURGE_DELAY_MS: i64 = 10;

/// Sets pusher's allocator options: [`PURGE_DELAY_MS`], unless `MIMALLOC_PURGE_DELAY` is set
/// (mimalloc has read it at load). Call first in `main`; any later time is also safe.
pub fn configure_allocator() {
    if std::env::var_os(PURGE_DELAY_VARIABLE).is_none() {
        // SAFETY: mi_option_set takes any option index and value; 15 is a valid option.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// mimalloc's purge delay in force, in milliseconds (-1: never purges).
pub fn purge_delay_ms() -> i64 {
    // SAFETY: mi_option_get takes any option index; 15 is a valid option.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

/// Heap bytes in use now and at peak, as [`CountingAllocator`] counted them (0 when the
/// process runs another global allocator, as unit tests do).
#[derive(Debug, Clone, Copy)]
pub struct HeapInUse {
    /// Bytes allocated and not yet freed.
    pub current_bytes: u64,
    /// The most bytes allocated at once since the process started.
    pub peak_bytes: u64,
}

/// Reads the counting allocator's two figures (relaxed loads).
pub fn heap_in_use() -> HeapInUse {
    HeapInUse {
        current_bytes: HEAP_IN_USE_BYTES.load(Ordering::Relaxed),
        peak_bytes: HEAP_PEAK_BYTES.load(Ordering::Relaxed),
    }
}

/// Resident set size in bytes (0 if /proc cannot be read).
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let resident_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    resident_pages * page_bytes()
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 { page as u64 } else { 4096 }
}

/// Heap memory committed by the allocator now and at its peak, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct HeapCommit {
    /// Bytes mimalloc has committed now.
    pub current_bytes: u64,
    /// The most bytes mimalloc has had committed.
    pub peak_bytes: u64,
}

/// Asks mimalloc (`mi_process_info`) for its committed bytes.
pub fn heap_commit() -> HeapCommit {
    let mut elapsed_ms = 0;
    let mut user_ms = 0;
    let mut system_ms = 0;
    let mut current_rss = 0;
    let mut peak_rss = 0;
    let mut current_commit = 0;
    let mut peak_commit = 0;
    let mut page_faults = 0;
    // SAFETY: every pointer is to a live local usize, as mi_process_info requires.
    unsafe {
        libmimalloc_sys::mi_process_info(
            &mut elapsed_ms,
            &mut user_ms,
            &mut system_ms,
            &mut current_rss,
            &mut peak_rss,
            &mut current_commit,
            &mut peak_commit,
            &mut page_faults,
        );
    }
    HeapCommit {
        current_bytes: current_commit as u64,
        peak_bytes: peak_commit as u64,
    }
}
