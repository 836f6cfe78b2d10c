//! A fixed-size buffer pool over a region, buffers addressed by offset (DPDK
//! `rte_mempool` style).
//!
//! The buffers live in a window (shared memory); the pool's bookkeeping (which
//! buffers are free) is process-local. A buffer is named by a [`BufRef`] (its index);
//! [`BufferPool::offset`] turns it into a byte offset from the start of the region:
//!
//! ```text
//!  region (region_len bytes)
//!  +-----------+----------+----------+-----+--------------+-------------+
//!  | ...       | buf 0    | buf 1    | ... | buf count-1  | ...         |
//!  +-----------+----------+----------+-----+--------------+-------------+
//!  0           base_off   +buf_size                       base_off + buf_size*count
//!
//!  free store: IndexRing (lock-free bounded MPMC ring of u32 buffer indices)
//!     prod_head | prod_tail | cons_head | cons_tail   each on its own 128-byte line
//!     slots[2^k >= count]: AtomicU32
//!
//!  per-lcore PoolCache (not Sync):  objs[0 .. 2*size)  LIFO stack of indices
//!     get:  pop from the stack; empty  -> refill `size` (+ request) from the ring
//!     put:  push on the stack;  full   -> flush down to `size` into the ring
//! ```
//!
//! The free store is an [`IndexRing`]: DPDK `rte_ring`'s multi-producer/multi-consumer
//! algorithm. A side reserves a range by CAS on its head, copies indices into/out of
//! the reserved slots, waits for earlier reservers of its side to finish, then
//! publishes by a Release store of its tail. Bulk operations are all-or-nothing. No
//! mutex; the only wait is for a concurrent reserver of the same side that has already
//! won its CAS and is copying (a handful of stores), as in DPDK. Every edge is listed in
//! docs/MEMORY_ORDERING.md.
//!
//! Double puts: in debug builds (`debug_assertions`) the pool keeps a bitmap with one
//! bit per buffer, set while a user holds the buffer; a put of a buffer whose bit is
//! clear is refused with [`RingError::InvalidRequest`]. It is debug-only because it
//! costs an atomic read-modify-write on a bitmap word shared by all lcores for every
//! buffer on both get and put (a contended cache line per packet), where the cache's
//! fast path is otherwise a few plain loads and stores. Out-of-range indices are always
//! refused. In release builds a double put goes undetected unless it overfills the
//! ring, which is reported as an error instead of being stored.

use core::cell::Cell;
use core::marker::PhantomData;
use core::ops::Deref;

use crossbeam_utils::CachePadded;

use crate::error::RingError;
#[cfg(debug_assertions)]
use crate::sync::AtomicU64;
use crate::sync::{AtomicU32, Ordering};

/// Largest buffer count a pool accepts.
pub const MAX_BUFFERS: u32 = 1 << 31;
/// Largest per-lcore cache size.
pub const MAX_CACHE_SIZE: u32 = 4096;
/// How many caches may exist at once per pool.
pub const MAX_CACHES: usize = 64;

/// A lock-free bounded MPMC ring of `u32` values (buffer indices), with all-or-nothing
/// bulk and up-to-n burst operations (DPDK `rte_ring` head/tail algorithm).
pub struct IndexRing {
    prod_head: CachePadded<AtomicU32>,
    prod_tail: CachePadded<AtomicU32>,
    cons_head: CachePadded<AtomicU32>,
    cons_tail: CachePadded<AtomicU32>,
    slots: Box<[AtomicU32]>,
    mask: u32,
}

impl core::fmt::Debug for IndexRing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IndexRing")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

/// Which side of the ring an operation works on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Prod,
    Cons,
}

impl IndexRing {
    /// An empty ring with at least `capacity` slots (rounded up to a power of two).
    pub fn new(capacity: u32) -> Result<Self, RingError> {
        if capacity == 0 || capacity > MAX_BUFFERS {
            return Err(RingError::InvalidConfig {
                what: "index ring capacity",
                value: capacity as u64,
                why: "must be between 1 and 2^31",
            });
        }
        let cap = capacity.next_power_of_two();
        Ok(IndexRing {
            prod_head: CachePadded::new(AtomicU32::new(0)),
            prod_tail: CachePadded::new(AtomicU32::new(0)),
            cons_head: CachePadded::new(AtomicU32::new(0)),
            cons_tail: CachePadded::new(AtomicU32::new(0)),
            slots: (0..cap).map(|_| AtomicU32::new(0)).collect(),
            mask: cap - 1,
        })
    }

    /// Number of slots (a power of two).
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.mask + 1
    }

    /// Values in the ring (exact when no operation is in flight, approximate otherwise).
    #[inline]
    pub fn len(&self) -> u32 {
        // Relaxed (both): a statistic; nothing is read on the strength of it.
        let tail = self.prod_tail.load(Ordering::Relaxed);
        let head = self.cons_tail.load(Ordering::Relaxed);
        tail.wrapping_sub(head).min(self.capacity())
    }

    /// True if the ring holds no values (snapshot).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reserves between `min` and `max` slots on `side` by moving its head; returns
    /// the old head and the count (0 means "fewer than `min`": nothing reserved).
    #[inline]
    fn reserve(&self, side: Side, min: u32, max: u32) -> (u32, u32) {
        let cap = self.capacity();
        let (head, other_tail) = match side {
            Side::Prod => (&self.prod_head, &self.cons_tail),
            Side::Cons => (&self.cons_head, &self.prod_tail),
        };
        // Relaxed: the head only reserves; the CAS below validates it, and the data
        // is ordered by the tails.
        let mut old = head.load(Ordering::Relaxed);
        loop {
            // Acquire (R1 for producers, R2 for consumers): pairs with the Release
            // store of the other side's tail in `finish`. Producers: consumers' reads
            // of slots below cons_tail happen-before we overwrite them. Consumers:
            // producers' writes of slots below prod_tail are visible to our reads.
            let other = other_tail.load(Ordering::Acquire);
            let room = match side {
                // Used slots are old - cons_tail; free = cap - used.
                Side::Prod => cap.wrapping_sub(old.wrapping_sub(other)),
                // Filled slots are prod_tail - old.
                Side::Cons => other.wrapping_sub(old),
            };
            if room > cap {
                // `old` and `other` come from different moments (our head is stale,
                // or the tail was read before it): the difference is meaningless.
                crate::sync::spin_hint();
                // Relaxed: as above.
                old = head.load(Ordering::Relaxed);
                continue;
            }
            if room < min || room == 0 {
                return (old, 0);
            }
            let n = room.min(max);
            // Relaxed (both): the CAS only claims [old, old + n) against other
            // reservers of this side; the tails carry the data edges.
            match head.compare_exchange_weak(
                old,
                old.wrapping_add(n),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return (old, n),
                Err(cur) => old = cur,
            }
        }
    }

    /// Waits for earlier reservers of `side` to publish, then publishes
    /// `[old, old + n)`.
    #[inline]
    fn finish(&self, side: Side, old: u32, n: u32) {
        let tail = match side {
            Side::Prod => &self.prod_tail,
            Side::Cons => &self.cons_tail,
        };
        #[cfg(not(loom))]
        let mut spins = 0u32;
        // Acquire (R3): pairs with the Release store of this tail by the reserver just
        // before us, so its slot accesses happen-before our Release below and the
        // other side's Acquire of our tail covers them too.
        while tail.load(Ordering::Acquire) != old {
            crate::sync::spin_hint();
            #[cfg(not(loom))]
            {
                spins = spins.wrapping_add(1);
                if spins & 127 == 0 {
                    // A preempted reserver holds us up; give it the core.
                    std::thread::yield_now();
                }
            }
        }
        // Release (R1/R2): producers publish the slot writes [old, old + n) to
        // consumers (paired with their Acquire of prod_tail in `reserve`); consumers
        // release the slots they read for reuse (paired with producers' Acquire of
        // cons_tail).
        tail.store(old.wrapping_add(n), Ordering::Release);
    }

    /// Enqueues all of `src` or nothing; returns whether it did.
    #[inline]
    pub fn enqueue_bulk(&self, src: &[u32]) -> bool {
        let Ok(n) = u32::try_from(src.len()) else {
            return false;
        };
        if n == 0 {
            return true;
        }
        let (old, got) = self.reserve(Side::Prod, n, n);
        if got == 0 {
            return false;
        }
        for (i, v) in src.iter().enumerate() {
            let slot = old.wrapping_add(i as u32) & self.mask;
            // Relaxed: published by the Release store of prod_tail in `finish` (R2).
            self.slots[slot as usize].store(*v, Ordering::Relaxed);
        }
        self.finish(Side::Prod, old, n);
        true
    }

    /// Dequeues exactly `dst.len()` values or nothing; returns whether it did.
    #[inline]
    pub fn dequeue_bulk(&self, dst: &mut [u32]) -> bool {
        match u32::try_from(dst.len()) {
            Ok(0) => true,
            Ok(n) => self.dequeue_range(dst, n) == n,
            Err(_) => false,
        }
    }

    /// Dequeues between 1 and `dst.len()` values (as many as there are); returns how
    /// many (0 if empty).
    #[inline]
    pub fn dequeue_burst(&self, dst: &mut [u32]) -> usize {
        let max = u32::try_from(dst.len()).unwrap_or(u32::MAX);
        if max == 0 {
            return 0;
        }
        self.dequeue_range(dst, 1) as usize
    }

    /// Dequeues between `min` and `dst.len()` values into the front of `dst`.
    #[inline]
    fn dequeue_range(&self, dst: &mut [u32], min: u32) -> u32 {
        let max = u32::try_from(dst.len()).unwrap_or(u32::MAX);
        let (old, n) = self.reserve(Side::Cons, min, max);
        if n == 0 {
            return 0;
        }
        for (i, d) in dst[..n as usize].iter_mut().enumerate() {
            let slot = old.wrapping_add(i as u32) & self.mask;
            // Relaxed: made visible by the Acquire of prod_tail in `reserve` (R2).
            *d = self.slots[slot as usize].load(Ordering::Relaxed);
        }
        self.finish(Side::Cons, old, n);
        n
    }
}

/// A buffer of a [`BufferPool`], named by its index.
///
/// Turn it into a region offset with [`BufferPool::offset`].
#[repr(transparent)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, bytemuck::Pod, bytemuck::Zeroable,
)]
pub struct BufRef {
    /// Index of the buffer in its pool (`0..count`).
    pub index: u32,
}

/// Marks a cache registry slot as unused.
const FREE_SLOT: u32 = u32::MAX;

/// A pool of `count` buffers of `buf_size` bytes each, laid out back to back from
/// `base_off` in a region of `region_len` bytes.
///
/// `BufferPool` is `Sync`: share it (by reference or in an `Arc`) and give each lcore
/// its own [`PoolCache`] from [`BufferPool::cache`].
pub struct BufferPool {
    ring: IndexRing,
    buf_size: u32,
    count: u32,
    base_off: u64,
    /// Published length of each live cache ([`FREE_SLOT`] when the slot is unused).
    cache_lens: Box<[CachePadded<AtomicU32>]>,
    /// Debug builds: bit `i` set while buffer `i` is held by a user.
    #[cfg(debug_assertions)]
    held: Box<[AtomicU64]>,
}

impl core::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BufferPool")
            .field("buf_size", &self.buf_size)
            .field("count", &self.count)
            .field("base_off", &self.base_off)
            .field("available", &self.available())
            .finish()
    }
}

impl BufferPool {
    /// A pool of `count` buffers of `buf_size` bytes from `base_off`, all free.
    ///
    /// Errors: `buf_size` or `count` is zero, `count` is over [`MAX_BUFFERS`], or the
    /// buffers do not fit in `region_len` bytes.
    pub fn new(
        region_len: u64,
        buf_size: u32,
        count: u32,
        base_off: u64,
    ) -> Result<Self, RingError> {
        if buf_size == 0 {
            return Err(RingError::InvalidConfig {
                what: "pool buffer size",
                value: 0,
                why: "must be non-zero",
            });
        }
        if count == 0 || count > MAX_BUFFERS {
            return Err(RingError::InvalidConfig {
                what: "pool buffer count",
                value: count as u64,
                why: "must be between 1 and 2^31",
            });
        }
        let need = (buf_size as u64)
            .checked_mul(count as u64)
            .and_then(|b| b.checked_add(base_off));
        match need {
            Some(need) if need <= region_len => {}
            _ => {
                return Err(RingError::RegionTooSmall {
                    need: need.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
                    have: usize::try_from(region_len).unwrap_or(usize::MAX),
                })
            }
        }
        let ring = IndexRing::new(count)?;
        let all: Vec<u32> = (0..count).collect();
        let filled = ring.enqueue_bulk(&all);
        debug_assert!(
            filled,
            "a fresh ring of capacity >= count takes count values"
        );
        Ok(BufferPool {
            ring,
            buf_size,
            count,
            base_off,
            cache_lens: (0..MAX_CACHES)
                .map(|_| CachePadded::new(AtomicU32::new(FREE_SLOT)))
                .collect(),
            #[cfg(debug_assertions)]
            held: (0..count.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Bytes per buffer.
    #[inline]
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// Number of buffers.
    #[inline]
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Offset of buffer 0 in the region.
    #[inline]
    pub fn base_off(&self) -> u64 {
        self.base_off
    }

    /// Byte offset of `buf` from the start of the region.
    #[inline]
    pub fn offset(&self, buf: BufRef) -> Result<u64, RingError> {
        self.check(buf)?;
        Ok(self.base_off + buf.index as u64 * self.buf_size as u64)
    }

    /// The buffer that starts at region offset `off` (e.g. an offset a peer handed
    /// back). Errors if `off` is not the start of one of the pool's buffers.
    #[inline]
    pub fn buf_at(&self, off: u64) -> Result<BufRef, RingError> {
        let rel = off
            .checked_sub(self.base_off)
            .ok_or(RingError::InvalidRequest("offset below the pool's buffers"))?;
        if rel % self.buf_size as u64 != 0 {
            return Err(RingError::InvalidRequest("offset is not a buffer start"));
        }
        let index = u32::try_from(rel / self.buf_size as u64)
            .map_err(|_| RingError::InvalidRequest("offset beyond the pool's buffers"))?;
        let buf = BufRef { index };
        self.check(buf)?;
        Ok(buf)
    }

    #[inline(always)]
    fn check(&self, buf: BufRef) -> Result<(), RingError> {
        if buf.index < self.count {
            Ok(())
        } else {
            Err(RingError::InvalidRequest("buffer index out of range"))
        }
    }

    /// Free buffers: those in the shared ring plus those in live caches. Approximate
    /// while other threads work on the pool; exact when it is quiescent.
    pub fn available(&self) -> u32 {
        let mut n = self.ring.len();
        for l in self.cache_lens.iter() {
            // Relaxed: a statistic (the cache's own published length).
            let v = l.load(Ordering::Relaxed);
            if v != FREE_SLOT {
                n = n.saturating_add(v);
            }
        }
        n.min(self.count)
    }

    /// A per-lcore cache of up to `2 * size` buffers (`size` 0: every operation goes
    /// to the shared ring). Errors if `size > MAX_CACHE_SIZE` or [`MAX_CACHES`]
    /// caches are live.
    pub fn cache(&self, size: u32) -> Result<PoolCache<&BufferPool>, RingError> {
        PoolCache::new(self, size)
    }
}

impl<P: Deref<Target = BufferPool>> PoolCache<P> {
    /// A per-lcore cache of up to `2 * size` buffers in front of `pool`, which may be
    /// any handle to a [`BufferPool`]: a reference (as [`BufferPool::cache`] makes),
    /// an `Arc<BufferPool>`, or a wrapper that derefs to one (so a cache can live in a
    /// thread-local or a struct next to the pool's owner). Errors as
    /// [`BufferPool::cache`] does.
    pub fn new(pool: P, size: u32) -> Result<Self, RingError> {
        if size > MAX_CACHE_SIZE {
            return Err(RingError::InvalidConfig {
                what: "pool cache size",
                value: size as u64,
                why: "must be at most 4096",
            });
        }
        let slot = pool
            .cache_lens
            .iter()
            // Relaxed: the CAS only claims a counter slot; no data hangs on it.
            .position(|l| {
                l.compare_exchange(FREE_SLOT, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(RingError::InvalidRequest("too many live pool caches"))?;
        Ok(PoolCache {
            pool,
            slot,
            size: size as usize,
            objs: vec![0; 2 * size as usize].into_boxed_slice(),
            len: 0,
            _not_sync: PhantomData,
        })
    }

    /// The pool this cache serves.
    #[inline]
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }
}

impl BufferPool {
    /// Takes `out.len()` buffers straight from the shared ring, all or none.
    pub fn get_bulk(&self, out: &mut [BufRef]) -> bool {
        if !self.ring.dequeue_bulk(bytemuck::cast_slice_mut(out)) {
            return false;
        }
        self.mark_held(out);
        true
    }

    /// Returns buffers straight to the shared ring. Errors (and returns none of them)
    /// if one is out of range or, in debug builds, not currently held.
    pub fn put_bulk(&self, bufs: &[BufRef]) -> Result<(), RingError> {
        self.release_check(bufs)?;
        self.enqueue(bytemuck::cast_slice(bufs))
    }

    fn enqueue(&self, idx: &[u32]) -> Result<(), RingError> {
        if self.ring.enqueue_bulk(idx) {
            Ok(())
        } else {
            Err(RingError::InvalidRequest(
                "pool overflow: more buffers returned than exist (double put?)",
            ))
        }
    }

    /// Validates buffers being returned; in debug builds also clears their held bits
    /// (and restores them if one turns out not to be held).
    fn release_check(&self, bufs: &[BufRef]) -> Result<(), RingError> {
        for b in bufs {
            self.check(*b)?;
        }
        #[cfg(debug_assertions)]
        for (i, b) in bufs.iter().enumerate() {
            let (w, bit) = (b.index as usize / 64, 1u64 << (b.index % 64));
            // Relaxed: a debug checker; the RMW order on the word is all it needs.
            if self.held[w].fetch_and(!bit, Ordering::Relaxed) & bit == 0 {
                self.mark_held(&bufs[..i]);
                return Err(RingError::InvalidRequest("buffer put twice (not held)"));
            }
        }
        Ok(())
    }

    /// Debug builds: marks buffers as held by a user.
    #[inline]
    fn mark_held(&self, _bufs: &[BufRef]) {
        #[cfg(debug_assertions)]
        for b in _bufs {
            let (w, bit) = (b.index as usize / 64, 1u64 << (b.index % 64));
            // Relaxed: as in release_check.
            let prev = self.held[w].fetch_or(bit, Ordering::Relaxed);
            debug_assert!(prev & bit == 0, "pool handed out buffer {} twice", b.index);
        }
    }
}

/// A per-lcore cache in front of a [`BufferPool`]: a LIFO stack of free buffer
/// indices refilled from and flushed to the shared ring in bulk. `Send`, not `Sync`.
/// Flushes everything back to the shared ring when dropped.
///
/// `P` is the handle the cache holds its pool by: `&BufferPool` (from
/// [`BufferPool::cache`]) or anything else that derefs to a [`BufferPool`], such as
/// `Arc<BufferPool>` (from [`PoolCache::new`]).
pub struct PoolCache<P: Deref<Target = BufferPool>> {
    pool: P,
    /// Our slot in `pool.cache_lens`.
    slot: usize,
    /// Refill/flush target.
    size: usize,
    /// `2 * size` entries; `objs[..len]` are free buffer indices.
    objs: Box<[u32]>,
    len: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl<P: Deref<Target = BufferPool>> core::fmt::Debug for PoolCache<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PoolCache")
            .field("size", &self.size)
            .field("len", &self.len)
            .finish()
    }
}

impl<P: Deref<Target = BufferPool>> PoolCache<P> {
    /// Buffers sitting in this cache.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the cache holds no buffers.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Publishes our length for [`BufferPool::available`].
    #[inline(always)]
    fn publish_len(&self) {
        // Relaxed: a statistic read by `available`; we are the slot's only writer.
        self.pool.cache_lens[self.slot].store(self.len as u32, Ordering::Relaxed);
    }

    /// Takes one buffer, or `None` if the pool is empty.
    #[inline]
    pub fn get(&mut self) -> Option<BufRef> {
        let mut b = [BufRef { index: 0 }];
        self.get_bulk(&mut b).then_some(b[0])
    }

    /// Takes `out.len()` buffers, all or none; returns whether it did.
    #[inline]
    pub fn get_bulk(&mut self, out: &mut [BufRef]) -> bool {
        let n = out.len();
        if n > self.len {
            if n > self.objs.len() {
                // Bigger than the cache: the shortfall straight from the ring.
                let need = n - self.len;
                let (from_ring, from_cache) = out.split_at_mut(need);
                if !self
                    .pool
                    .ring
                    .dequeue_bulk(bytemuck::cast_slice_mut(from_ring))
                {
                    return false;
                }
                bytemuck::cast_slice_mut(from_cache).copy_from_slice(&self.objs[..self.len]);
                self.len = 0;
                self.publish_len();
                self.pool.mark_held(out);
                return true;
            }
            // Refill to `size` above the request if the ring has it, else just the
            // shortfall, else fail with the cache untouched.
            let need = n - self.len;
            let want = (self.size + need).min(self.objs.len() - self.len);
            let got = self
                .pool
                .ring
                .dequeue_range(&mut self.objs[self.len..self.len + want], need as u32);
            if got == 0 {
                return false;
            }
            self.len += got as usize;
        }
        let start = self.len - n;
        bytemuck::cast_slice_mut(out).copy_from_slice(&self.objs[start..self.len]);
        self.len = start;
        self.publish_len();
        self.pool.mark_held(out);
        true
    }

    /// Returns one buffer. Errors if it is out of range or (debug builds) not held.
    #[inline]
    pub fn put(&mut self, buf: BufRef) -> Result<(), RingError> {
        self.put_bulk(core::slice::from_ref(&buf))
    }

    /// Returns buffers, all or none. Errors if one is out of range or (debug builds)
    /// not held.
    #[inline]
    pub fn put_bulk(&mut self, bufs: &[BufRef]) -> Result<(), RingError> {
        self.pool.release_check(bufs)?;
        let idx: &[u32] = bytemuck::cast_slice(bufs);
        let n = idx.len();
        let cap = self.objs.len();
        if self.len + n > cap {
            if n > cap {
                // Bigger than the cache: straight to the ring.
                return self.pool.enqueue(idx);
            }
            // Flush down to `size` (or lower, so the new ones fit).
            let keep = (cap - n).min(self.size);
            self.pool.enqueue(&self.objs[keep..self.len])?;
            self.len = keep;
        }
        self.objs[self.len..self.len + n].copy_from_slice(idx);
        self.len += n;
        self.publish_len();
        Ok(())
    }

    /// Returns every cached buffer to the shared ring.
    pub fn flush(&mut self) {
        let ok = self.pool.ring.enqueue_bulk(&self.objs[..self.len]);
        debug_assert!(ok, "the ring holds every buffer of the pool");
        self.len = 0;
        self.publish_len();
    }
}

impl<P: Deref<Target = BufferPool>> Drop for PoolCache<P> {
    fn drop(&mut self) {
        self.flush();
        // Relaxed: frees the counter slot; `available` only sums it.
        self.pool.cache_lens[self.slot].store(FREE_SLOT, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicU8;
    use std::time::{Duration, Instant};

    #[test]
    fn new_validates_layout() {
        assert!(BufferPool::new(4096, 0, 1, 0).is_err());
        assert!(BufferPool::new(4096, 64, 0, 0).is_err());
        assert!(matches!(
            BufferPool::new(4096, 64, 64, 1),
            Err(RingError::RegionTooSmall {
                need: 4097,
                have: 4096
            })
        ));
        assert!(BufferPool::new(u64::MAX, u32::MAX, u32::MAX, u64::MAX).is_err());
        let p = BufferPool::new(4096, 64, 64, 0).unwrap();
        assert_eq!(p.available(), 64);
        let p = BufferPool::new(4096 + 128, 64, 64, 128).unwrap();
        assert_eq!(p.offset(BufRef { index: 2 }), Ok(256));
        assert!(p.offset(BufRef { index: 64 }).is_err());
        assert_eq!(p.buf_at(256), Ok(BufRef { index: 2 }));
        assert!(p.buf_at(255).is_err());
        assert!(p.buf_at(0).is_err());
        assert!(p.buf_at(128 + 64 * 64).is_err());
    }

    #[test]
    fn out_of_range_put_is_refused() {
        let p = BufferPool::new(1 << 16, 64, 16, 0).unwrap();
        let mut c = p.cache(4).unwrap();
        let b = c.get().unwrap();
        assert_eq!(
            c.put_bulk(&[b, BufRef { index: 16 }]),
            Err(RingError::InvalidRequest("buffer index out of range"))
        );
        // Nothing was taken: b is still held and can be returned.
        c.put(b).unwrap();
        drop(c);
        assert_eq!(p.available(), 16);
    }

    #[cfg(debug_assertions)]
    #[test]
    fn double_put_is_refused_in_debug() {
        let p = BufferPool::new(1 << 16, 64, 16, 0).unwrap();
        let mut c = p.cache(4).unwrap();
        let (a, b) = (c.get().unwrap(), c.get().unwrap());
        c.put(a).unwrap();
        assert!(c.put(a).is_err());
        // All or none: b is still held after a failed bulk put that named it.
        assert!(c.put_bulk(&[b, a]).is_err());
        c.put(b).unwrap();
        assert!(p.put_bulk(&[b]).is_err());
        drop(c);
        assert_eq!(p.available(), 16);
    }

    #[test]
    fn bulk_is_all_or_nothing() {
        let p = BufferPool::new(1 << 16, 64, 10, 0).unwrap();
        let mut c = p.cache(2).unwrap();
        let mut big = [BufRef { index: 0 }; 11];
        assert!(!c.get_bulk(&mut big));
        assert_eq!(p.available(), 10);
        let mut eight = [BufRef { index: 0 }; 8];
        assert!(c.get_bulk(&mut eight));
        let mut three = [BufRef { index: 0 }; 3];
        assert!(!c.get_bulk(&mut three), "only 2 left");
        assert!(!p.get_bulk(&mut three));
        assert_eq!(p.available(), 2);
        let mut two = [BufRef { index: 0 }; 2];
        assert!(c.get_bulk(&mut two));
        assert_eq!(c.get(), None);
        let all: BTreeSet<u32> = eight.iter().chain(&two).map(|b| b.index).collect();
        assert_eq!(all.len(), 10);
        c.put_bulk(&eight).unwrap();
        p.put_bulk(&two).unwrap();
        assert_eq!(p.available(), 10);
        drop(c);
        assert_eq!(p.available(), 10);
    }

    #[test]
    fn cache_over_an_arc() {
        let p = std::sync::Arc::new(BufferPool::new(1 << 12, 64, 16, 0).unwrap());
        let mut c = PoolCache::new(p.clone(), 4).unwrap();
        let b = c.get().unwrap();
        assert_eq!(c.pool().available(), 15);
        c.put(b).unwrap();
        // Moves to another thread with its own handle on the pool.
        std::thread::spawn(move || {
            let mut out = [BufRef { index: 0 }; 3];
            assert!(c.get_bulk(&mut out));
            c.put_bulk(&out).unwrap();
        })
        .join()
        .unwrap();
        assert_eq!(p.available(), 16);
    }

    #[test]
    fn index_ring_burst_and_bulk() {
        let r = IndexRing::new(3).unwrap();
        assert_eq!(r.capacity(), 4);
        assert!(r.enqueue_bulk(&[1, 2, 3]));
        assert!(!r.enqueue_bulk(&[4, 5]));
        assert!(r.enqueue_bulk(&[4]));
        let mut d = [0; 8];
        assert!(!r.dequeue_bulk(&mut d[..5]));
        assert_eq!(r.dequeue_burst(&mut d), 4);
        assert_eq!(d[..4], [1, 2, 3, 4]);
        assert_eq!(r.dequeue_burst(&mut d), 0);
        assert!(r.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Get(usize),
        GetBulk(usize, u8),
        Put(usize, u8),
        PutBad(usize),
        Flush(usize),
        Direct(u8),
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_free_set_model(
            count in 1u32..40,
            sizes in (0u32..6, 0u32..6),
            ops in proptest::collection::vec(prop_oneof![
                (0usize..2).prop_map(Op::Get),
                (0usize..2, 0u8..20).prop_map(|(c, n)| Op::GetBulk(c, n)),
                (0usize..2, 0u8..20).prop_map(|(c, n)| Op::Put(c, n)),
                (0usize..2).prop_map(Op::PutBad),
                (0usize..2).prop_map(Op::Flush),
                (0u8..20).prop_map(Op::Direct),
            ], 1..150),
        ) {
            let p = BufferPool::new(count as u64 * 32, 32, count, 0).unwrap();
            let mut caches = [p.cache(sizes.0).unwrap(), p.cache(sizes.1).unwrap()];
            let mut free: BTreeSet<u32> = (0..count).collect();
            let mut held: Vec<BufRef> = Vec::new();
            let take = |free: &mut BTreeSet<u32>, got: &[BufRef]| -> Result<(), TestCaseError> {
                for b in got {
                    prop_assert!(free.remove(&b.index), "buffer {} handed out twice", b.index);
                }
                Ok(())
            };
            for op in ops {
                match op {
                    // A cache reaches the shared ring and itself, not the other cache.
                    Op::Get(c) => {
                        let reach = caches[c].len() + p.ring.len() as usize;
                        match caches[c].get() {
                            Some(b) => { take(&mut free, &[b])?; held.push(b); }
                            None => prop_assert_eq!(reach, 0),
                        }
                    }
                    Op::GetBulk(c, n) => {
                        let mut out = vec![BufRef { index: 0 }; n as usize];
                        let reach = caches[c].len() + p.ring.len() as usize;
                        if caches[c].get_bulk(&mut out) {
                            take(&mut free, &out)?;
                            held.extend(out);
                        } else {
                            prop_assert!(reach < n as usize);
                        }
                    }
                    Op::Put(c, n) => {
                        let n = (n as usize).min(held.len());
                        let back: Vec<BufRef> = held.drain(..n).collect();
                        caches[c].put_bulk(&back).unwrap();
                        free.extend(back.iter().map(|b| b.index));
                    }
                    Op::PutBad(c) => {
                        let bad = BufRef { index: count };
                        prop_assert!(caches[c].put(bad).is_err());
                    }
                    Op::Flush(c) => caches[c].flush(),
                    Op::Direct(n) => {
                        let mut out = vec![BufRef { index: 0 }; n as usize];
                        // Only the ring's share is reachable directly.
                        let reach = p.ring.len() as usize;
                        if p.get_bulk(&mut out) {
                            take(&mut free, &out)?;
                            p.put_bulk(&out).unwrap();
                            free.extend(out.iter().map(|b| b.index));
                        } else {
                            prop_assert!(reach < n as usize);
                        }
                    }
                }
                prop_assert_eq!(p.available() as usize, free.len());
            }
            p.put_bulk(&held).unwrap();
            drop(caches);
            prop_assert_eq!(p.available(), count);
            let mut all = vec![BufRef { index: 0 }; count as usize];
            prop_assert!(p.get_bulk(&mut all));
            let set: BTreeSet<u32> = all.iter().map(|b| b.index).collect();
            prop_assert_eq!(set.len(), count as usize);
        }
    }

    /// Two lcores, two caches, 1M get/put rounds in all. Thread A gets buffers and
    /// hands half of them to thread B through an SPSC ring; B returns them through its
    /// own cache (so A's cache drains and B's overflows into the shared ring). A
    /// per-buffer owner tag catches any buffer handed out twice.
    #[test]
    fn two_threads_never_share_a_buffer() {
        const COUNT: u32 = 96;
        const ROUNDS: u32 = 500_000;
        let deadline = Instant::now() + Duration::from_secs(60);
        let pool = BufferPool::new(COUNT as u64 * 64, 64, COUNT, 0).unwrap();
        let owner: Vec<AtomicU8> = (0..COUNT).map(|_| AtomicU8::new(0)).collect();
        let (mut tx, mut rx) = crate::spsc::channel::<BufRef>(64).unwrap();
        let claim = |bufs: &[BufRef], me: u8| {
            for b in bufs {
                let prev = owner[b.index as usize].swap(me, Ordering::Relaxed);
                assert_eq!(
                    prev, 0,
                    "buffer {} handed to {me} while owned by {prev}",
                    b.index
                );
            }
        };
        let release = |bufs: &[BufRef], me: u8| {
            for b in bufs {
                let prev = owner[b.index as usize].swap(0, Ordering::Relaxed);
                assert_eq!(
                    prev, me,
                    "buffer {} released by {me} but owned by {prev}",
                    b.index
                );
            }
        };
        std::thread::scope(|s| {
            let pool = &pool;
            s.spawn(move || {
                let mut c = pool.cache(16).unwrap();
                let mut x = 0x9e37_79b9u32;
                let mut bufs = [BufRef { index: 0 }; 8];
                for _ in 0..ROUNDS {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let n = 1 + (x % 8) as usize;
                    while !c.get_bulk(&mut bufs[..n]) {
                        assert!(Instant::now() < deadline, "A starved");
                        std::thread::yield_now();
                    }
                    claim(&bufs[..n], 1);
                    let give = n / 2;
                    release(&bufs[..give], 1);
                    claim(&bufs[..give], 2);
                    let mut sent = 0;
                    while sent < give {
                        sent += tx.push_slice(&bufs[sent..give]);
                        if sent < give {
                            assert!(Instant::now() < deadline, "B stopped reading");
                            std::thread::yield_now();
                        }
                    }
                    release(&bufs[give..n], 1);
                    c.put_bulk(&bufs[give..n]).unwrap();
                }
            });
            s.spawn(move || {
                let mut c = pool.cache(16).unwrap();
                let mut got = [BufRef { index: 0 }; 16];
                let mut own = [BufRef { index: 0 }; 3];
                for _ in 0..ROUNDS {
                    let k = rx.pop_slice(&mut got);
                    release(&got[..k], 2);
                    c.put_bulk(&got[..k]).unwrap();
                    if c.get_bulk(&mut own) {
                        claim(&own, 2);
                        release(&own, 2);
                        c.put_bulk(&own).unwrap();
                    }
                }
                // Drain what A still sends.
                while !(rx.is_abandoned() && rx.is_empty()) {
                    let k = rx.pop_slice(&mut got);
                    release(&got[..k], 2);
                    c.put_bulk(&got[..k]).unwrap();
                    assert!(Instant::now() < deadline, "A never finished");
                    if k == 0 {
                        std::thread::yield_now();
                    }
                }
            });
        });
        assert_eq!(pool.available(), COUNT, "every buffer is back");
        assert!(owner.iter().all(|o| o.load(Ordering::Relaxed) == 0));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(2);
        b.check(f);
    }

    /// Two producers enqueue bulks of 2 into a 4-slot ring at once, and one of them
    /// then dequeues all 4 before joining the other: every value comes out once, each
    /// pair in order, and the other producer's values are visible through the tail
    /// handoff (R3) alone.
    #[test]
    fn loom_pool_mpmc_bulk_enqueue() {
        model(|| {
            let r = crate::sync::Arc::new(IndexRing::new(4).unwrap());
            let r2 = r.clone();
            let t = loom::thread::spawn(move || assert!(r2.enqueue_bulk(&[1, 2])));
            assert!(r.enqueue_bulk(&[3, 4]));
            let mut d = [0; 4];
            while !r.dequeue_bulk(&mut d) {
                loom::thread::yield_now();
            }
            let pos = |v| d.iter().position(|x| *x == v).unwrap();
            assert!(pos(1) < pos(2) && pos(3) < pos(4));
            t.join().unwrap();
        });
    }

    /// Two lcores each take a bulk of 2 from a ring holding 3 and put it back: bulk
    /// is all-or-nothing, no value is held by both, all 3 are there at the end.
    #[test]
    fn loom_pool_mpmc_bulk_get_put() {
        model(|| {
            let r = crate::sync::Arc::new(IndexRing::new(4).unwrap());
            assert!(r.enqueue_bulk(&[7, 8, 9]));
            let held =
                crate::sync::Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]);
            let lcore = |r: &IndexRing, held: &[AtomicU32; 3]| {
                let mut d = [0u32; 2];
                if r.dequeue_bulk(&mut d) {
                    for v in d {
                        // Relaxed: the checker's own RMW order suffices.
                        assert_eq!(held[(v - 7) as usize].fetch_add(1, Ordering::Relaxed), 0);
                    }
                    for v in d {
                        // Relaxed: as above.
                        held[(v - 7) as usize].fetch_sub(1, Ordering::Relaxed);
                    }
                    assert!(r.enqueue_bulk(&d));
                }
            };
            let (r2, h2) = (r.clone(), held.clone());
            let t = loom::thread::spawn(move || lcore(&r2, &h2));
            lcore(&r, &held);
            t.join().unwrap();
            let mut d = [0; 4];
            assert_eq!(r.dequeue_burst(&mut d), 3);
            d[..3].sort_unstable();
            assert_eq!(d[..3], [7, 8, 9]);
        });
    }
}
