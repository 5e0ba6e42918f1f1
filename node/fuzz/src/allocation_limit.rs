//! A single allocation above [`ALLOCATION_BYTES_MAX`] is a finding. libFuzzer's own
//! `-malloc_limit_mb` needs a sanitizer's malloc hooks, which these builds do not link, so
//! the targets' allocator refuses such a request itself: the allocation fails, and Rust
//! aborts the process (`handle_alloc_error`), which libFuzzer reports as a crash with its
//! input, and `cargo test` as a failed test binary. An allocator must not unwind, so it
//! cannot panic instead.

use std::alloc::{GlobalAlloc, Layout, System};

/// No input of up to 16 KiB has a reason to ask for this much at once.
pub const ALLOCATION_BYTES_MAX: usize = 256 * 1024 * 1024;

struct Limited;

// SAFETY: every call is forwarded to the system allocator unchanged, except that requests
// above the limit return null, which `GlobalAlloc` allows (it means "out of memory").
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout, whose contract the caller upholds.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, hence from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_BYTES_MAX {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static LIMITED: Limited = Limited;

#[cfg(test)]
mod tests {
    use super::ALLOCATION_BYTES_MAX;

    /// The limit is in force in every binary of this crate (the targets and the tests).
    #[test]
    fn an_allocation_past_the_limit_fails_and_one_below_succeeds() {
        let mut bytes: Vec<u8> = Vec::new();
        assert!(bytes.try_reserve_exact(ALLOCATION_BYTES_MAX + 1).is_err());
        assert!(bytes.try_reserve_exact(1024 * 1024).is_ok());
    }
}
