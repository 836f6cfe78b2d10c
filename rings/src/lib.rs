//! # rings: zerohop's shared-memory layouts
//!
//! Everything in this crate works on memory given to it as a [`mem::Mem`]: a mapped
//! window, a heap buffer in tests, or loom-modelled memory under `--cfg loom`. It makes
//! no syscalls. The modules:
//!
//! - [`mem`]: bounds-checked views over shared memory ([`mem::Region`]), the one
//!   place raw pointers into a window are dereferenced.
//! - [`control`]: the config block (features, per-side status, heartbeats, queue table).
//! - [`header`]: the self-describing window header (magic, version, sizes, init stamp).
//! - [`split`]: the virtio 1.x split virtqueue, driver and device halves.
//! - [`packed`]: the virtio 1.x packed virtqueue, driver and device halves.
//! - [`posted`]: zerohop's posted-write ring: each side polls only its own memory.
//! - [`spsc`]: a local single-producer single-consumer ring for lcore-to-lcore handoff.
//! - [`pool`]: a fixed-size buffer pool over a region, buffers addressed by offset.
//! - [`zhvq`]: the ZHVQ block, a virtio transport in shared memory for a Linux
//!   guest's own virtio drivers, and [`zhvq::GuestRegs`], what a device reads and
//!   writes in any such block.
//! - [`rproc`]: the ZHRT block, a remoteproc resource table in shared memory that
//!   Linux's remoteproc core attaches to.
//!
//! Every half that reads memory a peer writes treats it as hostile (GUIDE.md section 8):
//! each value is fetched once, validated, then used, and violations are typed
//! [`RingError`]s that mark the queue broken.
#![cfg_attr(not(test), warn(missing_docs))]

pub mod chain;
pub mod control;
pub mod error;
#[cfg(any(all(test, not(loom)), feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod header;
pub mod mem;
pub mod packed;
pub mod pool;
pub mod posted;
pub mod rproc;
pub mod split;
pub mod spsc;
pub mod sync;
pub mod zhvq;

pub use chain::{BufDesc, ChainInfo};
pub use error::{MemError, RingError};
pub use mem::{Mem, Region};

/// The virtio feature bits the rings implement (virtio 1.x section 6).
pub mod features {
    /// Indirect descriptors (virtio 1.x 6, bit 28).
    pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event notification suppression (bit 29).
    pub const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
    /// Virtio 1.x device (bit 32).
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
    /// Packed virtqueue layout (bit 34).
    pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
    /// Buffers are used in the order they were made available (bit 35).
    pub const VIRTIO_F_IN_ORDER: u64 = 1 << 35;
}

#[cfg(all(test, not(loom)))]
mod double_fetch_tests;
