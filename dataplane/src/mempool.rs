//! Fixed-size packet buffers in a window area, shared by every lcore (DPDK
//! `rte_mempool` + `rte_pktmbuf_pool`).
//!
//! A [`Mempool`] is a [`rings::pool::BufferPool`] (the lock-free free store of buffer
//! indices) over a [`Region`] (the memory the buffers live in: a window area, or the
//! heap in tests). Buffers are named by index ([`BufRef`]) and addressed by offset from
//! the start of the region, never by pointer, so the same pool layout works in a
//! window a peer maps at another address.
//!
//! ```text
//!  Arc<Mempool> (user handles) --owns--> Arc<Shared> { BufferPool, Region, config }
//!                                              ^   ^
//!  thread-local caches, one per (thread, pool) |   |  raw pointer (no refcount)
//!  Entry { Arc<Shared>, PoolCache } -----------+   +------------------- Mbuf
//!
//!  region:  | ...base_off | buf 0 | buf 1 | ... | buf count-1 |
//!  buffer:  | headroom (default 128) | data ... | tailroom |
//! ```
//!
//! # Per-lcore caches
//! Every thread that takes or returns buffers gets its own [`PoolCache`] for the pool,
//! kept in a thread-local table (created on the thread's first use of the pool, so
//! call [`Mempool::warm_up`] at start-up to keep allocation out of the fast path).
//! Lookups are a scan of that table (usually one entry): no lock, no atomic
//! read-modify-write, no allocation per packet. Threads started by
//! [`crate::lcore::Lcores`] flush their caches when their closure returns; other
//! threads flush when they exit, or explicitly with [`flush_thread_caches`].
//!
//! # Lifetime: why an `Mbuf` holds a raw pointer and not an `Arc`
//! An `Arc` per mbuf costs an atomic increment on alloc and a decrement on free, on a
//! counter shared by every lcore: a contended cache line per packet when one lcore
//! allocates and another frees. Instead an [`Mbuf`] holds a raw pointer to the pool's
//! shared state, and the pool guarantees the invariant that makes it sound:
//!
//! **The shared state (and the window memory it owns) lives while any buffer of the
//! pool is out.** Dropping the last `Arc<Mempool>` first flushes the dropping thread's
//! cache, then tries to take *all* `count` buffers from the shared ring in one
//! all-or-nothing dequeue. That dequeue is a single atomic reservation, so success
//! proves that at that instant no mbuf, raw buffer or other cache held one; only then
//! is the pool's reference released. Otherwise the pool is **leaked** (with a message
//! on stderr) instead of freeing memory under live mbufs. Each thread-local cache
//! holds its own `Arc` to the shared state, so a thread still finishing a `put` (the
//! cache length store after the ring publish) never touches freed memory.
//!
//! Returning a raw buffer twice would break the invariant (the ring could hold
//! `count` entries while an mbuf still owns one), which is why
//! [`Mempool::put_bulk`] is `unsafe`; mbufs return their buffer exactly once by
//! construction.

use core::cell::RefCell;
use core::ops::Deref;
use core::ptr::NonNull;
use std::sync::Arc;

use rings::mem::{Mem, Region};
use rings::pool::{BufRef, BufferPool, PoolCache, MAX_CACHE_SIZE};
use rings::RingError;

use crate::mbuf::Mbuf;

/// Default headroom in front of the data of a fresh mbuf (DPDK `RTE_PKTMBUF_HEADROOM`).
pub const DEFAULT_HEADROOM: u32 = 128;
/// Default per-lcore cache size (clamped to `count / 8`).
pub const DEFAULT_CACHE_SIZE: u32 = 256;
/// Buffers moved per chunk by the bulk helpers (a stack array, no allocation).
pub(crate) const CHUNK: usize = 64;

// Handles cross lcores: the pool is shared, mbufs move through SPSC rings.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Mempool>();
    send_sync::<Mbuf>();
};

/// Errors from building or using a [`Mempool`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    /// A configuration value is out of range.
    #[error("invalid mempool config: {what} = {value}: {why}")]
    InvalidConfig {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: u64,
        /// What it must be.
        why: &'static str,
    },
    /// The underlying buffer pool refused (layout, range, double put).
    #[error(transparent)]
    Pool(#[from] RingError),
}

/// How to lay out a [`Mempool`] in its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MempoolConfig {
    /// Number of buffers.
    pub count: u32,
    /// Bytes per buffer (headroom included).
    pub buf_size: u32,
    /// Bytes reserved in front of the data of a fresh mbuf (default 128).
    pub headroom: u32,
    /// Per-lcore cache size (default 256; clamped to `count / 8`, 0 disables caches).
    pub cache_size: u32,
    /// Offset of buffer 0 in the region.
    pub base_off: u64,
}

impl MempoolConfig {
    /// `count` buffers of `buf_size` bytes from offset 0, default headroom and cache.
    pub fn new(count: u32, buf_size: u32) -> Self {
        MempoolConfig {
            count,
            buf_size,
            headroom: DEFAULT_HEADROOM,
            cache_size: DEFAULT_CACHE_SIZE,
            base_off: 0,
        }
    }

    /// Region bytes this layout needs (`base_off + count * buf_size`).
    pub fn region_len(&self) -> u64 {
        self.base_off + self.count as u64 * self.buf_size as u64
    }
}

/// What every handle, cache and mbuf of one pool points at.
pub(crate) struct Shared {
    pub(crate) pool: BufferPool,
    pub(crate) region: Region,
    pub(crate) headroom: u32,
    pub(crate) cache_size: u32,
}

/// A cache's handle on the pool: keeps the shared state alive while the cache lives.
struct SharedRef(Arc<Shared>);

impl Deref for SharedRef {
    type Target = BufferPool;
    #[inline(always)]
    fn deref(&self) -> &BufferPool {
        &self.0.pool
    }
}

/// One thread's state for one pool.
struct Entry {
    key: *const Shared,
    /// `None` if the pool had no cache slot left (more than `MAX_CACHES` threads):
    /// the thread then works on the shared ring directly.
    cache: Option<PoolCache<SharedRef>>,
    /// Keeps the shared state alive while this thread may still touch it.
    shared: Arc<Shared>,
}

impl Entry {
    #[inline]
    fn get_bulk(&mut self, out: &mut [BufRef]) -> bool {
        match &mut self.cache {
            Some(c) => c.get_bulk(out),
            None => self.shared.pool.get_bulk(out),
        }
    }

    #[inline]
    fn put_bulk(&mut self, bufs: &[BufRef]) -> Result<(), RingError> {
        match &mut self.cache {
            Some(c) => c.put_bulk(bufs),
            None => self.shared.pool.put_bulk(bufs),
        }
    }
}

thread_local! {
    /// This thread's caches, one per pool it has used.
    static LOCAL: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's entry for the pool at `key`, creating it on first use.
/// `None` if the thread-local table is gone (the thread is exiting) or busy.
///
/// # Safety
/// `key` must point to a live `Shared` owned by an `Arc` (the pool invariant: true
/// while the caller holds a `Mempool` handle or owns one of the pool's buffers).
#[inline]
unsafe fn with_entry<R>(key: NonNull<Shared>, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
    LOCAL
        .try_with(|l| {
            let mut l = l.try_borrow_mut().ok()?;
            let i = match l.iter().position(|e| core::ptr::eq(e.key, key.as_ptr())) {
                Some(i) => i,
                None => {
                    // SAFETY: `key` points to a live Arc-owned Shared (this function's
                    // contract); we take one more strong reference for the entry.
                    let shared = unsafe { arc_from_key(key) };
                    new_entry(&mut l, shared)
                }
            };
            Some(f(&mut l[i]))
        })
        .ok()
        .flatten()
}

/// A new strong reference to the shared state at `key`.
///
/// # Safety
/// As for [`with_entry`]: `key` came from `Arc::as_ptr` of a still-live `Arc<Shared>`.
unsafe fn arc_from_key(key: NonNull<Shared>) -> Arc<Shared> {
    // SAFETY: per the contract the Arc allocation is live, so bumping its strong count
    // and materialising one more Arc for that count is balanced and sound.
    unsafe {
        Arc::increment_strong_count(key.as_ptr());
        Arc::from_raw(key.as_ptr())
    }
}

/// Adds an entry (start-up path: may allocate) and returns its index.
#[cold]
fn new_entry(l: &mut Vec<Entry>, shared: Arc<Shared>) -> usize {
    // Drop entries of pools nobody else refers to any more (each entry holds two
    // references: its own and its cache's).
    l.retain(|e| Arc::strong_count(&e.shared) > 1 + e.cache.is_some() as usize);
    let cache = PoolCache::new(SharedRef(shared.clone()), shared.cache_size).ok();
    l.push(Entry {
        key: Arc::as_ptr(&shared),
        cache,
        shared,
    });
    l.len() - 1
}

/// Returns buffers of the pool at `key` through this thread's cache.
///
/// # Safety
/// `key` as for [`with_entry`], and the caller owns `bufs` (each taken from this pool
/// and not returned since).
pub(crate) unsafe fn put_raw(key: NonNull<Shared>, bufs: &[BufRef]) {
    // SAFETY: forwarded contract.
    let done = unsafe { with_entry(key, |e| e.put_bulk(bufs)) };
    let res = match done {
        Some(r) => r,
        None => {
            // Thread-local table gone (thread exit): straight to the shared ring,
            // holding a reference across the put so the state outlives it.
            // SAFETY: forwarded contract.
            let shared = unsafe { arc_from_key(key) };
            shared.pool.put_bulk(bufs)
        }
    };
    debug_assert!(res.is_ok(), "returning owned buffers cannot fail: {res:?}");
}

/// Flushes and forgets every cache this thread holds (all pools). Call it before a
/// long-lived thread stops using its pools, so [`Mempool::available`] counts the
/// buffers as free in the shared ring and a pool can be dropped without leaking.
pub fn flush_thread_caches() {
    let entries = LOCAL
        .try_with(|l| {
            l.try_borrow_mut()
                .map(|mut l| core::mem::take(&mut *l))
                .ok()
        })
        .ok()
        .flatten();
    drop(entries);
}

/// A pool of fixed-size packet buffers in a window area, shared by lcores as
/// `Arc<Mempool>`. See the [module docs](self) for the design.
pub struct Mempool {
    shared: Arc<Shared>,
}

impl core::fmt::Debug for Mempool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mempool")
            .field("count", &self.count())
            .field("buf_size", &self.buf_size())
            .field("headroom", &self.headroom())
            .field("available", &self.available())
            .finish()
    }
}

impl Mempool {
    /// A pool laid out in `region` as `cfg` says.
    pub fn new(region: Region, cfg: MempoolConfig) -> Result<Arc<Mempool>, MempoolError> {
        if cfg.headroom >= cfg.buf_size {
            return Err(MempoolError::InvalidConfig {
                what: "headroom",
                value: cfg.headroom as u64,
                why: "must be smaller than buf_size",
            });
        }
        if cfg.cache_size > MAX_CACHE_SIZE {
            return Err(MempoolError::InvalidConfig {
                what: "cache_size",
                value: cfg.cache_size as u64,
                why: "must be at most rings::pool::MAX_CACHE_SIZE",
            });
        }
        let pool = BufferPool::new(region.len() as u64, cfg.buf_size, cfg.count, cfg.base_off)?;
        Ok(Arc::new(Mempool {
            shared: Arc::new(Shared {
                pool,
                region,
                headroom: cfg.headroom,
                cache_size: cfg.cache_size.min(cfg.count / 8),
            }),
        }))
    }

    /// A pool of `count` buffers of `buf_size` bytes on the heap (tests, examples, and
    /// the heap window), with default headroom and cache.
    pub fn heap(count: u32, buf_size: u32) -> Result<Arc<Mempool>, MempoolError> {
        Self::heap_with(MempoolConfig::new(count, buf_size))
    }

    /// A heap pool with a custom config (`base_off` bytes in front are left unused).
    pub fn heap_with(cfg: MempoolConfig) -> Result<Arc<Mempool>, MempoolError> {
        let len = usize::try_from(cfg.region_len()).map_err(|_| MempoolError::InvalidConfig {
            what: "count * buf_size",
            value: cfg.region_len(),
            why: "must fit in memory",
        })?;
        Self::new(Region::heap(len), cfg)
    }

    #[inline(always)]
    fn key(&self) -> NonNull<Shared> {
        NonNull::from(&*self.shared)
    }

    /// Number of buffers.
    #[inline]
    pub fn count(&self) -> u32 {
        self.shared.pool.count()
    }

    /// Bytes per buffer.
    #[inline]
    pub fn buf_size(&self) -> u32 {
        self.shared.pool.buf_size()
    }

    /// Headroom of a fresh mbuf.
    #[inline]
    pub fn headroom(&self) -> u32 {
        self.shared.headroom
    }

    /// Per-lcore cache size in use (after clamping).
    #[inline]
    pub fn cache_size(&self) -> u32 {
        self.shared.cache_size
    }

    /// The region the buffers live in.
    #[inline]
    pub fn region(&self) -> &Region {
        &self.shared.region
    }

    /// The underlying buffer pool (offsets, `buf_at` for offsets a peer hands back).
    #[inline]
    pub fn pool(&self) -> &BufferPool {
        &self.shared.pool
    }

    /// Free buffers (shared ring plus every live cache). Exact when no thread is
    /// working on the pool; approximate otherwise.
    pub fn available(&self) -> u32 {
        self.shared.pool.available()
    }

    /// Creates this thread's cache for the pool now (allocates), so the first packet
    /// does not.
    pub fn warm_up(&self) {
        // SAFETY: we hold a handle, so the shared state is live.
        unsafe { with_entry(self.key(), |_| ()) };
    }

    /// Flushes this thread's cache of this pool to the shared ring and forgets it.
    pub fn flush_local_cache(&self) {
        let key = self.key().as_ptr();
        let gone = LOCAL
            .try_with(|l| {
                let mut l = l.try_borrow_mut().ok()?;
                let i = l.iter().position(|e| core::ptr::eq(e.key, key))?;
                Some(l.swap_remove(i))
            })
            .ok()
            .flatten();
        drop(gone);
    }

    /// Takes `out.len()` buffers through this thread's cache, all or none.
    #[inline]
    pub fn get_bulk(&self, out: &mut [BufRef]) -> bool {
        // SAFETY: we hold a handle, so the shared state is live.
        match unsafe { with_entry(self.key(), |e| e.get_bulk(out)) } {
            Some(ok) => ok,
            None => self.shared.pool.get_bulk(out),
        }
    }

    /// Returns raw buffers through this thread's cache, all or none.
    ///
    /// # Safety
    /// Each buffer must have been taken from this pool (by [`Mempool::get_bulk`] or
    /// [`Mbuf::into_raw`]) and not returned since, and nothing may use it afterwards.
    /// A buffer returned twice could be handed to two mbufs at once (aliasing
    /// `&mut [u8]`) and defeats the pool's drop check.
    #[inline]
    pub unsafe fn put_bulk(&self, bufs: &[BufRef]) -> Result<(), MempoolError> {
        // SAFETY: we hold a handle, so the shared state is live.
        match unsafe { with_entry(self.key(), |e| e.put_bulk(bufs)) } {
            Some(r) => Ok(r?),
            None => Ok(self.shared.pool.put_bulk(bufs)?),
        }
    }

    /// One mbuf with `headroom` bytes of headroom and no data, or `None` if the pool
    /// is empty.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        let mut b = [BufRef { index: 0 }];
        if !self.get_bulk(&mut b) {
            return None;
        }
        Some(self.wrap(b[0]))
    }

    /// Pushes `n` fresh mbufs onto `out`, all or none; returns whether it did. Does
    /// not allocate if `out` has the capacity.
    #[inline]
    pub fn alloc_bulk(&self, out: &mut Vec<Mbuf>, n: usize) -> bool {
        let mut bufs = [BufRef { index: 0 }; CHUNK];
        let mut done = 0;
        while done < n {
            let k = (n - done).min(CHUNK);
            if !self.get_bulk(&mut bufs[..k]) {
                // Give back what this call already took.
                let start = out.len() - done;
                crate::mbuf::free_bulk_from(out, start);
                return false;
            }
            out.extend(bufs[..k].iter().map(|b| self.wrap(*b)));
            done += k;
        }
        true
    }

    /// An mbuf that owns `buf` again (e.g. a buffer a port got back from a ring),
    /// with fresh metadata (empty data at `headroom`).
    ///
    /// # Safety
    /// `buf` must have been taken from this pool and be owned by the caller (not
    /// returned, not owned by another mbuf).
    pub unsafe fn mbuf_from_raw(&self, buf: BufRef) -> Result<Mbuf, MempoolError> {
        self.shared.pool.offset(buf)?;
        Ok(self.wrap(buf))
    }

    /// Wraps a buffer this thread now owns.
    #[inline]
    fn wrap(&self, buf: BufRef) -> Mbuf {
        let s = &*self.shared;
        let size = s.pool.buf_size();
        // The pool only hands out in-range indices and `new` checked the region holds
        // every buffer, so neither lookup fails.
        let ptr = s
            .pool
            .offset(buf)
            .ok()
            .and_then(|off| usize::try_from(off).ok())
            .and_then(|off| s.region.range_ptr(off, size as usize).ok())
            .expect("pool buffers lie inside the region (checked in Mempool::new)");
        // SAFETY: Mbuf::from_parts's contract holds: the buffer is exclusively ours, `ptr`
        // covers its `size` bytes, and the shared state outlives the mbuf (module
        // invariant).
        unsafe { Mbuf::from_parts(ptr, self.key(), buf, size, s.headroom) }
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        self.flush_local_cache();
        let count = self.count();
        let mut all = vec![BufRef { index: 0 }; count as usize];
        if self.shared.pool.get_bulk(&mut all) {
            // Every buffer is in our hands: no mbuf or cache holds one, and none can
            // be made any more. Release our reference; the state goes when the last
            // thread-local cache entry does.
            return;
        }
        let out = count - self.available().min(count);
        eprintln!(
            "dataplane::Mempool dropped with about {out} of {count} buffers still out or in \
             other threads' caches; leaking it so live mbufs stay valid"
        );
        core::mem::forget(self.shared.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    #[test]
    fn config_is_validated() {
        let mut cfg = MempoolConfig::new(16, 128);
        assert!(matches!(
            Mempool::heap_with(cfg),
            Err(MempoolError::InvalidConfig {
                what: "headroom",
                ..
            })
        ));
        cfg.headroom = 0;
        cfg.cache_size = MAX_CACHE_SIZE + 1;
        assert!(Mempool::heap_with(cfg).is_err());
        assert!(matches!(
            Mempool::new(Region::heap(100), MempoolConfig::new(16, 256)),
            Err(MempoolError::Pool(RingError::RegionTooSmall { .. }))
        ));
        let p = Mempool::heap(64, 256).unwrap();
        assert_eq!(p.cache_size(), 8);
        assert_eq!(p.available(), 64);
    }

    #[test]
    fn get_put_counts_exactly() {
        let p = Mempool::heap(64, 256).unwrap();
        let mut b = [BufRef { index: 0 }; 20];
        assert!(p.get_bulk(&mut b));
        assert_eq!(p.available(), 44);
        let set: BTreeSet<u32> = b.iter().map(|b| b.index).collect();
        assert_eq!(set.len(), 20);
        // SAFETY: taken above, returned once.
        unsafe { p.put_bulk(&b).unwrap() };
        assert_eq!(p.available(), 64);
        let mut all = [BufRef { index: 0 }; 65];
        assert!(!p.get_bulk(&mut all));
        assert!(p.get_bulk(&mut all[..64]));
        assert_eq!(p.available(), 0);
        // SAFETY: as above.
        unsafe { p.put_bulk(&all[..64]).unwrap() };
        p.flush_local_cache();
        assert_eq!(p.available(), 64);
    }

    #[test]
    fn bad_raw_put_is_refused() {
        let p = Mempool::heap(16, 256).unwrap();
        // SAFETY: an out-of-range index is refused before anything is touched.
        let r = unsafe { p.put_bulk(&[BufRef { index: 99 }]) };
        assert!(matches!(r, Err(MempoolError::Pool(_))));
        assert_eq!(p.available(), 16);
    }

    /// Two lcores: A allocates mbufs and hands them to B over an SPSC ring; B frees
    /// them (its cache overflows into the shared ring, A's refills from it).
    #[test]
    fn two_lcores_share_a_pool() {
        const N: u32 = 50_000;
        let deadline = Instant::now() + Duration::from_secs(30);
        let p = Mempool::heap(128, 256).unwrap();
        let (mut tx, mut rx) = rings::spsc::channel::<Mbuf>(64).unwrap();
        let pa = p.clone();
        let a = std::thread::spawn(move || {
            let mut v = Vec::with_capacity(8);
            let mut seq = 0u32;
            while seq < N {
                if !pa.alloc_bulk(&mut v, 8) {
                    assert!(Instant::now() < deadline, "A starved");
                    std::thread::yield_now();
                    continue;
                }
                for mut m in v.drain(..) {
                    m.append(4).unwrap().copy_from_slice(&seq.to_le_bytes());
                    seq += 1;
                    let mut m = m;
                    loop {
                        match tx.push(m) {
                            Ok(()) => break,
                            Err(back) => {
                                m = back;
                                assert!(Instant::now() < deadline, "B stalled");
                                std::thread::yield_now();
                            }
                        }
                    }
                }
            }
            flush_thread_caches();
        });
        let b = std::thread::spawn(move || {
            let mut want = 0u32;
            while want < N {
                match rx.pop() {
                    Some(m) => {
                        assert_eq!(m.data(), want.to_le_bytes());
                        want += 1;
                    }
                    None => {
                        assert!(Instant::now() < deadline, "A stalled");
                        std::thread::yield_now();
                    }
                }
            }
        });
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(p.available(), 128, "the mempool holds every buffer again");
    }

    #[test]
    fn drop_with_mbufs_out_leaks_instead_of_freeing() {
        let p = Mempool::heap(16, 256).unwrap();
        let mut m = p.alloc().unwrap();
        m.append(3).unwrap().copy_from_slice(b"abc");
        drop(p);
        // The pool is gone but the mbuf's memory is still valid (leaked pool).
        assert_eq!(m.data(), b"abc");
        drop(m);
    }

    #[test]
    fn drop_when_quiescent_releases() {
        let p = Mempool::heap(16, 256).unwrap();
        let weak = Arc::downgrade(&p.shared);
        let m = p.alloc().unwrap();
        drop(m);
        drop(p);
        assert!(
            weak.upgrade().is_none(),
            "state freed once every buffer was back"
        );
    }
}
