//! Making the link visible on one host (GUIDE.md section 6).
//!
//! On one host both sides of a window are the same RAM, so the costs that matter on
//! PCIe (a non-posted read across the link costs ~0.5-2 us; posted writes are cheap)
//! are invisible. Two wrappers put them back:
//!
//! - [`Counted`] counts every access made through it: remote reads (atomic loads,
//!   `read_obj`, `read_bytes`, and `note_read` for accesses through `range_ptr`),
//!   remote writes (stores, `write_obj`, `write_bytes`, `note_write`) and the bytes
//!   of each. Wrap the *peer's* memory with it (the part of the window a real link
//!   would reach through the BAR), and benchmarks can report remote reads per packet.
//! - [`LinkModel`] counts like `Counted` (it contains one) and busy-waits a
//!   configurable time per remote read and per [`LinkModel::doorbell`], so ring
//!   modes can be compared as they would behave over PCIe.
//!
//! Counter updates are `fetch_add(Relaxed)` on separate cache-padded words: a
//! wrapper is `Sync` and may be cloned into several threads (a port and a stats
//! thread, or two queues over one window), so a load+store pair could lose counts;
//! exact counts are what the tests and the per-packet numbers rely on. An
//! uncontended `lock xadd` costs ~20 cycles, small next to the ~1 us a modelled read
//! charges, and the wrapper is never used on an unmeasured fast path. Relaxed is
//! enough: the counters order nothing, and a snapshot is only exact once the
//! counting threads have been joined (joining synchronises).

use core::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use crossbeam_utils::CachePadded;
use rings::{Mem, MemError};

/// Access counters shared by a wrapper and its clones (each on its own cache line so
/// two threads counting different things do not false-share).
#[derive(Debug, Default)]
pub struct AccessCounters {
    reads: CachePadded<AtomicU64>,
    writes: CachePadded<AtomicU64>,
    bytes_read: CachePadded<AtomicU64>,
    bytes_written: CachePadded<AtomicU64>,
    doorbells: CachePadded<AtomicU64>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessSnapshot {
    /// Remote read operations.
    pub reads: u64,
    /// Remote write operations.
    pub writes: u64,
    /// Bytes read remotely.
    pub bytes_read: u64,
    /// Bytes written remotely.
    pub bytes_written: u64,
    /// Doorbells rung (only [`LinkModel`] rings them).
    pub doorbells: u64,
}

impl core::ops::Sub for AccessSnapshot {
    type Output = AccessSnapshot;

    /// The counts between two snapshots (`later - earlier`).
    fn sub(self, rhs: AccessSnapshot) -> AccessSnapshot {
        AccessSnapshot {
            reads: self.reads.wrapping_sub(rhs.reads),
            writes: self.writes.wrapping_sub(rhs.writes),
            bytes_read: self.bytes_read.wrapping_sub(rhs.bytes_read),
            bytes_written: self.bytes_written.wrapping_sub(rhs.bytes_written),
            doorbells: self.doorbells.wrapping_sub(rhs.doorbells),
        }
    }
}

impl AccessCounters {
    /// Reads every counter (Relaxed: see the module doc).
    pub fn snapshot(&self) -> AccessSnapshot {
        AccessSnapshot {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            doorbells: self.doorbells.load(Ordering::Relaxed),
        }
    }

    /// Sets every counter to zero (not atomic as a whole; call while idle).
    pub fn reset(&self) {
        for c in [
            &self.reads,
            &self.writes,
            &self.bytes_read,
            &self.bytes_written,
            &self.doorbells,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    #[inline(always)]
    fn read(&self, bytes: usize) {
        // Relaxed: statistics only; see the module doc for fetch_add vs load+store.
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    #[inline(always)]
    fn write(&self, bytes: usize) {
        // Relaxed: statistics only.
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    #[inline(always)]
    fn doorbell(&self) {
        // Relaxed: statistics only.
        self.doorbells.fetch_add(1, Ordering::Relaxed);
    }
}

/// A [`Mem`] that counts every access to the memory it wraps.
///
/// Failed accesses (out of bounds, misaligned) touch nothing and are not counted.
#[derive(Clone, Debug)]
pub struct Counted<M: Mem> {
    inner: M,
    counters: Arc<AccessCounters>,
}

impl<M: Mem> Counted<M> {
    /// Wraps `inner` with fresh counters.
    pub fn new(inner: M) -> Self {
        Self::with_counters(inner, Arc::new(AccessCounters::default()))
    }

    /// Wraps `inner`, counting into existing counters (e.g. one set per direction
    /// shared by several queues).
    pub fn with_counters(inner: M, counters: Arc<AccessCounters>) -> Self {
        Counted { inner, counters }
    }

    /// The shared counters.
    pub fn counters(&self) -> &Arc<AccessCounters> {
        &self.counters
    }

    /// The counts so far.
    pub fn snapshot(&self) -> AccessSnapshot {
        self.counters.snapshot()
    }

    /// The wrapped memory.
    pub fn inner(&self) -> &M {
        &self.inner
    }
}

/// Forwards one access to `self.inner`, counting it with `$count(bytes)` on success.
macro_rules! counted {
    ($self:ident, $count:ident, $bytes:expr, $call:expr) => {{
        let r = $call;
        if r.is_ok() {
            $self.on_ok_access(AccessDir::$count, $bytes);
        }
        r
    }};
}

/// Direction of a counted access.
#[derive(Clone, Copy)]
enum AccessDir {
    Read,
    Write,
}

trait OnAccess {
    fn on_ok_access(&self, dir: AccessDir, bytes: usize);
}

impl<M: Mem> OnAccess for Counted<M> {
    #[inline(always)]
    fn on_ok_access(&self, dir: AccessDir, bytes: usize) {
        match dir {
            AccessDir::Read => self.counters.read(bytes),
            AccessDir::Write => self.counters.write(bytes),
        }
    }
}

/// Implements `Mem` for a wrapper by delegating to `self.$inner` and calling
/// `on_ok_access` after each successful access.
macro_rules! delegate_mem {
    ($ty:ident, $inner:ident) => {
        impl<M: Mem> Mem for $ty<M> {
            #[inline(always)]
            fn size(&self) -> usize {
                self.$inner.size()
            }
            #[inline(always)]
            fn load_u16(&self, off: usize, order: Ordering) -> Result<u16, MemError> {
                counted!(self, Read, 2, self.$inner.load_u16(off, order))
            }
            #[inline(always)]
            fn load_u32(&self, off: usize, order: Ordering) -> Result<u32, MemError> {
                counted!(self, Read, 4, self.$inner.load_u32(off, order))
            }
            #[inline(always)]
            fn load_u64(&self, off: usize, order: Ordering) -> Result<u64, MemError> {
                counted!(self, Read, 8, self.$inner.load_u64(off, order))
            }
            #[inline(always)]
            fn store_u16(&self, off: usize, val: u16, order: Ordering) -> Result<(), MemError> {
                counted!(self, Write, 2, self.$inner.store_u16(off, val, order))
            }
            #[inline(always)]
            fn store_u32(&self, off: usize, val: u32, order: Ordering) -> Result<(), MemError> {
                counted!(self, Write, 4, self.$inner.store_u32(off, val, order))
            }
            #[inline(always)]
            fn store_u64(&self, off: usize, val: u64, order: Ordering) -> Result<(), MemError> {
                counted!(self, Write, 8, self.$inner.store_u64(off, val, order))
            }
            #[inline(always)]
            fn read_obj<T: Pod>(&self, off: usize) -> Result<T, MemError> {
                counted!(self, Read, size_of::<T>(), self.$inner.read_obj(off))
            }
            #[inline(always)]
            fn write_obj<T: Pod>(&self, off: usize, val: &T) -> Result<(), MemError> {
                counted!(self, Write, size_of::<T>(), self.$inner.write_obj(off, val))
            }
            #[inline(always)]
            fn read_bytes(&self, off: usize, dst: &mut [u8]) -> Result<(), MemError> {
                let n = dst.len();
                counted!(self, Read, n, self.$inner.read_bytes(off, dst))
            }
            #[inline(always)]
            fn write_bytes(&self, off: usize, src: &[u8]) -> Result<(), MemError> {
                counted!(self, Write, src.len(), self.$inner.write_bytes(off, src))
            }
            #[inline(always)]
            fn range_ptr(&self, off: usize, len: usize) -> Result<NonNull<u8>, MemError> {
                // Handing out a pointer is not an access; its users report theirs
                // with note_read / note_write.
                self.$inner.range_ptr(off, len)
            }
            #[inline(always)]
            fn demote(&self, off: usize) {
                // A hint about our own writes: moves no data across a link.
                self.$inner.demote(off);
            }
            #[inline(always)]
            fn prefetch(&self, off: usize) {
                // Across a link a prefetch would be a read: count it as one (the
                // fast path never prefetches remote memory; the counts prove it).
                self.$inner.prefetch(off);
                self.on_ok_access(AccessDir::Read, 1);
            }
            #[inline(always)]
            fn note_read(&self, bytes: usize) {
                self.$inner.note_read(bytes);
                self.on_ok_access(AccessDir::Read, bytes);
            }
            #[inline(always)]
            fn note_write(&self, bytes: usize) {
                self.$inner.note_write(bytes);
                self.on_ok_access(AccessDir::Write, bytes);
            }
        }
    };
}

delegate_mem!(Counted, inner);

/// Costs charged by a [`LinkModel`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCost {
    /// Charged per remote read (PCIe non-posted read: ~0.5-2 us).
    pub read: Duration,
    /// Charged per remote write (posted; usually 0).
    pub write: Duration,
    /// Charged per doorbell (an MMIO write plus the peer's interrupt/poll latency).
    pub doorbell: Duration,
}

impl LinkCost {
    /// A typical PCIe Gen3/4 link through a BAR: 1 us reads, free posted writes,
    /// 1 us doorbells.
    pub fn pcie() -> Self {
        LinkCost {
            read: Duration::from_micros(1),
            write: Duration::ZERO,
            doorbell: Duration::from_micros(1),
        }
    }
}

/// A [`Mem`] that counts like [`Counted`] and charges [`LinkCost`] by busy-waiting
/// on the monotonic clock (`Instant`, a vDSO call: no syscall). Busy-waiting rather
/// than sleeping is the point: a real non-posted read stalls the core.
#[derive(Clone, Debug)]
pub struct LinkModel<M: Mem> {
    inner: Counted<M>,
    cost: LinkCost,
}

impl<M: Mem> LinkModel<M> {
    /// Wraps `inner` with fresh counters.
    pub fn new(inner: M, cost: LinkCost) -> Self {
        LinkModel {
            inner: Counted::new(inner),
            cost,
        }
    }

    /// Wraps `inner`, counting into existing counters.
    pub fn with_counters(inner: M, cost: LinkCost, counters: Arc<AccessCounters>) -> Self {
        LinkModel {
            inner: Counted::with_counters(inner, counters),
            cost,
        }
    }

    /// Rings the peer's doorbell: counted, and charged `cost.doorbell`.
    pub fn doorbell(&self) {
        self.inner.counters.doorbell();
        spin_for(self.cost.doorbell);
    }

    /// The costs charged.
    pub fn cost(&self) -> LinkCost {
        self.cost
    }

    /// The shared counters.
    pub fn counters(&self) -> &Arc<AccessCounters> {
        self.inner.counters()
    }

    /// The counts so far.
    pub fn snapshot(&self) -> AccessSnapshot {
        self.inner.snapshot()
    }
}

impl<M: Mem> OnAccess for LinkModel<M> {
    #[inline(always)]
    fn on_ok_access(&self, dir: AccessDir, bytes: usize) {
        // `inner` (a Counted) has already counted the access; only charge here.
        let _ = bytes;
        match dir {
            AccessDir::Read => spin_for(self.cost.read),
            AccessDir::Write => spin_for(self.cost.write),
        }
    }
}

delegate_mem!(LinkModel, inner);

/// Busy-waits for `d` on the monotonic clock (returns at once for zero).
#[inline]
fn spin_for(d: Duration) {
    if d.is_zero() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < d {
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rings::Region;

    #[test]
    fn counts_exactly() {
        let m = Counted::new(Region::heap(256));
        m.load_u32(0, Ordering::Acquire).unwrap();
        m.load_u16(4, Ordering::Relaxed).unwrap();
        m.load_u64(8, Ordering::Relaxed).unwrap();
        assert_eq!(m.snapshot().reads, 3);
        assert_eq!(m.snapshot().bytes_read, 14);
        m.store_u64(0, 1, Ordering::Release).unwrap();
        m.write_bytes(16, &[1; 10]).unwrap();
        m.write_obj(32, &7u64).unwrap();
        let _: u64 = m.read_obj(32).unwrap();
        let mut b = [0u8; 5];
        m.read_bytes(16, &mut b).unwrap();
        m.note_read(100);
        m.note_write(3);
        // Failed accesses are not counted.
        assert!(m.load_u32(1000, Ordering::Relaxed).is_err());
        let _ = m.range_ptr(0, 8).unwrap();
        assert_eq!(
            m.snapshot(),
            AccessSnapshot {
                reads: 6,
                writes: 4,
                bytes_read: 14 + 8 + 5 + 100,
                bytes_written: 8 + 10 + 8 + 3,
                doorbells: 0,
            }
        );
        let before = m.snapshot();
        m.load_u32(0, Ordering::Relaxed).unwrap();
        assert_eq!((m.snapshot() - before).reads, 1);
        m.counters().reset();
        assert_eq!(m.snapshot(), AccessSnapshot::default());
    }

    #[test]
    fn link_model_counts_and_rings() {
        let cost = LinkCost {
            read: Duration::from_nanos(500),
            ..LinkCost::default()
        };
        let m = LinkModel::new(Region::heap(64), cost);
        for _ in 0..3 {
            m.load_u32(0, Ordering::Acquire).unwrap();
        }
        m.store_u32(4, 1, Ordering::Release).unwrap();
        m.doorbell();
        let s = m.snapshot();
        assert_eq!((s.reads, s.writes, s.doorbells), (3, 1, 1));
        assert_eq!(m.cost(), cost);
    }
}
