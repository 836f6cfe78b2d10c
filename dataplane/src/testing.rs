//! Test support shared by the dataplane's and the ports' tests (not a stable API).
//!
//! [`CountingAlloc`] is a global allocator that counts allocations per thread and in
//! all, so a test can assert that a fast-path loop allocates nothing after start-up:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: dataplane::testing::CountingAlloc = dataplane::testing::CountingAlloc;
//!
//! let (_, n) = dataplane::testing::allocs_during(|| hot_loop());
//! assert_eq!(n, 0);
//! ```
//!
//! The per-thread counter is a `const`-initialised thread-local `Cell<u64>` (no
//! destructor, so touching it never allocates or registers anything).

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};
use std::alloc::{GlobalAlloc, Layout, System};

/// A global allocator that forwards to [`System`] and counts allocations
/// (`alloc`, `alloc_zeroed` and `realloc`; frees are not counted).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

static TOTAL: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

#[inline(always)]
fn note() {
    // Relaxed: a counter nobody synchronises on.
    TOTAL.fetch_add(1, Ordering::Relaxed);
    // Fails only while the thread's locals are being torn down; those allocations
    // count in TOTAL only.
    let _ = THREAD.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// System's guarantees (and the caller's obligations) carry over; counting touches no
// allocator state.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded; the caller upholds GlobalAlloc::alloc's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded, as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from this allocator, i.e. from System.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded; `ptr` came from System with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations made by the calling thread so far (0 unless [`CountingAlloc`] is the
/// global allocator).
pub fn thread_allocs() -> u64 {
    THREAD.try_with(Cell::get).unwrap_or(0)
}

/// Allocations made by all threads so far.
pub fn total_allocs() -> u64 {
    // Relaxed: a statistic.
    TOTAL.load(Ordering::Relaxed)
}

/// Runs `f` and returns its result with the number of allocations the calling
/// thread made meanwhile.
pub fn allocs_during<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = thread_allocs();
    let r = f();
    (r, thread_allocs() - before)
}
