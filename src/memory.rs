//! Process memory figures for `/debug/memory` and the budget check: resident set from
//! `/proc/self/statm`, heap commit from mimalloc's process info.

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
    pub current_bytes: u64,
    pub peak_bytes: u64,
}

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
