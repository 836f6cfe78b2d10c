//! Atomics facade: std atomics normally, loom's under `--cfg loom`, so the index
//! protocols can be model-checked (the s2n-quic `sync/primitive.rs` pattern).
//!
//! Ring code takes fences from here, never from `core::sync::atomic` directly.

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize};

pub use core::sync::atomic::Ordering;

#[cfg(loom)]
pub use loom::sync::Arc;
#[cfg(not(loom))]
pub use std::sync::Arc;

/// Spin-wait hint for busy-poll loops (a no-op yield under loom).
#[inline(always)]
pub fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}
