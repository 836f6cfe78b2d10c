//! A local (in-process) single-producer single-consumer ring for lcore-to-lcore
//! handoff, in the style of `rtrb` and DPDK's SP/SC `rte_ring`.
//!
//! [`channel`] makes a ring and returns its two halves. Each half is `Send` (move it to
//! its lcore) but not `Sync`: exactly one thread produces and one consumes.
//!
//! ```text
//!   Producer (lcore A)                                Consumer (lcore B)
//!   tail (own copy), cached_head                      head (own copy), cached_tail
//!        |                                                   |
//!        | Release store (P1)          Acquire load (P1)     |
//!        +--------------------> [ tail ] <-------------------+    own 128-byte line
//!        +--------------------> [ head ] <-------------------+    own 128-byte line
//!          Acquire load (C1)          Release store (C1)
//!
//!   buffer: capacity = 2^k slots, slot of index i is i & (capacity - 1)
//!   +-----+-----+-----+-----+-----+-----+-----+-----+
//!   |     |  x  |  x  |  x  |  x  |     |     |     |
//!   +-----+-----+-----+-----+-----+-----+-----+-----+
//!          ^head                   ^tail         items = tail - head (wrapping)
//! ```
//!
//! `head` and `tail` are free-running `usize` counters (they wrap at `usize::MAX`,
//! never at the capacity), so full (`tail - head == capacity`) and empty
//! (`tail == head`) are told apart without a spare slot. The capacity is **rounded up
//! to a power of two** so that a slot index is a mask, not a modulo; read it back
//! with [`Producer::capacity`].
//!
//! Each side keeps a cached copy of the other side's counter and re-reads the shared
//! one (with Acquire) only when the cached value says the ring is full (producer) or
//! empty (consumer) for the request at hand. In steady state a burst costs one
//! Release store and, at most, one Acquire load (docs/MEMORY_ORDERING.md has the edges).
//! A consumer chunk also prefetches the lines of the next chunk, as far as the cached
//! tail says they are written (so never a line the producer is still filling): their
//! misses then overlap this chunk's reads (rtrb does not; docs/BENCHMARKS.md).
//!
//! Three ways in and out:
//! - per item: [`Producer::push`] / [`Consumer::pop`];
//! - copies of `T: Copy` bursts: [`Producer::push_slice`] / [`Consumer::pop_slice`],
//!   and [`Producer::push_iter`] for any `T`;
//! - zero-copy chunks (rtrb `chunks.rs`, DPDK `rte_ring_peek_zc.h`):
//!   [`Producer::write_chunk_uninit`] gives two `&mut [MaybeUninit<T>]` slices to
//!   fill and an `unsafe` [`WriteChunkUninit::commit`]; [`Consumer::read_chunk`] gives
//!   two `&[T]` slices and [`ReadChunk::commit`], which consumes (drops) the items.
//!
//! Items still in the ring when both halves are gone are dropped.
//!
//! ```
//! let (mut tx, mut rx) = rings::spsc::channel::<u64>(4).unwrap();
//! assert_eq!(tx.push_slice(&[1, 2, 3]), 3);
//! let chunk = rx.read_chunk(2).unwrap();
//! let (a, b) = chunk.as_slices();
//! assert_eq!(a.len() + b.len(), 2);
//! chunk.commit_all();
//! assert_eq!(rx.pop(), Some(3));
//! ```
//!
//! Loom: the slots live in ordinary heap memory accessed through raw pointers (the
//! chunk API hands out slices, which loom's `UnsafeCell` cannot). Under `--cfg loom`
//! every slot also has a zero-sized `loom::cell::UnsafeCell<()>` shadow that the ring
//! touches (`with_mut` for producer writes, `with` for consumer reads) exactly where
//! it touches the real slot, so loom's causality checker sees every slot access and
//! reports any that is not ordered by the index protocol. The index protocol itself
//! runs on `crate::sync` (loom) atomics.

use core::cell::{Cell, UnsafeCell};
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use std::alloc::Layout;

use crossbeam_utils::CachePadded;

use crate::error::RingError;
use crate::sync::{Arc, AtomicUsize, Ordering};

/// Largest capacity [`channel`] accepts (after rounding up to a power of two).
pub const MAX_CAPACITY: usize = 1 << 30;

/// A chunk request asked for more slots than the ring has right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Only this many slots (free ones for a write, full ones for a read) are there.
    #[error("only {0} slots available")]
    TooFewSlots(usize),
}

/// The part both halves share.
///
/// Keep `tail` before `head`: with the `Arc` counts in front of this block, putting
/// `head` first measured 0.63x-0.94x of the current order in `spsc_ratio` (two full
/// runs each); the mechanism (probably a prefetcher pulling the other side's line) is
/// not verified.
struct Shared<T> {
    /// Next index the producer writes. Written only by the producer.
    tail: CachePadded<AtomicUsize>,
    /// Next index the consumer reads. Written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// `mask + 1` slots. Slot `i & mask` is initialised iff `head <= i < tail`.
    buf: SlotBuf<T>,
    mask: usize,
    /// Loom-only shadow cells: one per slot, touched wherever the slot is.
    #[cfg(loom)]
    shadow: Box<[loom::cell::UnsafeCell<()>]>,
}

impl<T> Shared<T> {
    #[inline(always)]
    fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Pointer to slot `slot` (already masked). `slot < capacity` is the caller's
    /// invariant; the pointer is only dereferenced under the protocol's rules.
    #[inline(always)]
    fn slot_ptr(&self, slot: usize) -> *mut MaybeUninit<T> {
        debug_assert!(slot <= self.mask);
        // `slot <= mask < capacity`, so the element pointer stays in the allocation;
        // `raw_get` gives write access through the UnsafeCell without a reference.
        UnsafeCell::raw_get(self.buf.ptr.as_ptr().wrapping_add(slot))
    }

    /// Splits the `n` slots from counter value `from` into the (up to) two contiguous
    /// runs they occupy: (first slot, first run length, second run length).
    #[inline(always)]
    fn runs(&self, from: usize, n: usize) -> (usize, usize, usize) {
        let first = from & self.mask;
        let len1 = n.min(self.capacity() - first);
        (first, len1, n - len1)
    }

    /// Loom: records producer writes to `n` slots from counter `from`.
    #[inline(always)]
    fn note_write(&self, _from: usize, _n: usize) {
        #[cfg(loom)]
        for i in 0.._n {
            self.shadow[_from.wrapping_add(i) & self.mask].with_mut(|_| ());
        }
    }

    /// Loom: records consumer reads of `n` slots from counter `from`.
    #[inline(always)]
    fn note_read(&self, _from: usize, _n: usize) {
        #[cfg(loom)]
        for i in 0.._n {
            self.shadow[_from.wrapping_add(i) & self.mask].with(|_| ());
        }
    }
}

/// The slot array: `capacity` slots in one allocation aligned to 128 bytes (at least),
/// so that a burst of small items starts on a cache-line pair boundary whenever its
/// index is a multiple of the items per line (a burst of 32 u64 is exactly two
/// 128-byte pairs, not five 64-byte lines straddling them, as with a plain `Vec`).
struct SlotBuf<T> {
    ptr: NonNull<UnsafeCell<MaybeUninit<T>>>,
    /// `None` for zero-sized `T` (nothing allocated; `ptr` is dangling but aligned).
    layout: Option<Layout>,
}

/// Alignment of the slot array (two cache lines: the adjacent-line prefetcher pairs
/// lines on x86-64, see crossbeam's `CachePadded`).
const SLOT_ALIGN: usize = 128;

impl<T> SlotBuf<T> {
    fn new(cap: usize) -> Option<Self> {
        let size = size_of::<T>().checked_mul(cap)?;
        if size == 0 {
            return Some(SlotBuf {
                ptr: NonNull::dangling(),
                layout: None,
            });
        }
        let layout = Layout::from_size_align(size, align_of::<T>().max(SLOT_ALIGN)).ok()?;
        // SAFETY: the layout has a non-zero size (checked above).
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        Some(SlotBuf {
            ptr: ptr.cast(),
            layout: Some(layout),
        })
    }
}

impl<T> Drop for SlotBuf<T> {
    fn drop(&mut self) {
        if let Some(layout) = self.layout {
            // SAFETY: `ptr` came from `alloc` with exactly this layout and is freed once.
            // The items in it were dropped by `Shared::drop`, which runs first (the
            // buffer is a field of `Shared`); slots themselves need no drop.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) }
        }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Relaxed: both halves are gone; the Arc's final decrement already ordered
        // their last stores before this drop.
        let head = self.head.load(Ordering::Relaxed);
        // Relaxed: as above.
        let tail = self.tail.load(Ordering::Relaxed);
        let mut i = head;
        while i != tail {
            let p = self.slot_ptr(i & self.mask);
            self.note_read(i, 1);
            // SAFETY: head <= i < tail, so this slot holds an initialised item that
            // nobody else can reach any more (we are the last owner); each item is
            // dropped once because `i` visits every index once.
            unsafe { (*p).assume_init_drop() };
            i = i.wrapping_add(1);
        }
    }
}

/// A read prefetch of the line holding `p` (a hint: never faults, changes nothing).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint; it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Makes a ring of at least `capacity` slots (rounded up to a power of two) and
/// returns its producer and consumer halves.
///
/// Errors: `capacity` is 0 or larger than [`MAX_CAPACITY`].
pub fn channel<T>(capacity: usize) -> Result<(Producer<T>, Consumer<T>), RingError> {
    if capacity == 0 || capacity > MAX_CAPACITY {
        return Err(RingError::InvalidConfig {
            what: "spsc capacity",
            value: capacity as u64,
            why: "must be between 1 and 2^30",
        });
    }
    let cap = capacity.next_power_of_two();
    let buf = SlotBuf::new(cap).ok_or(RingError::InvalidConfig {
        what: "spsc capacity",
        value: capacity as u64,
        why: "capacity * size_of::<T>() overflows",
    })?;
    let shared = Arc::new(Shared {
        tail: CachePadded::new(AtomicUsize::new(0)),
        head: CachePadded::new(AtomicUsize::new(0)),
        buf,
        mask: cap - 1,
        #[cfg(loom)]
        shadow: (0..cap).map(|_| loom::cell::UnsafeCell::new(())).collect(),
    });
    let producer = Producer {
        shared: shared.clone(),
        tail: 0,
        cached_head: 0,
        _not_sync: PhantomData,
    };
    let consumer = Consumer {
        shared,
        head: 0,
        cached_tail: 0,
        _not_sync: PhantomData,
    };
    Ok((producer, consumer))
}

/// The writing half of a ring made by [`channel`].
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Our own copy of `shared.tail` (we are its only writer).
    tail: usize,
    /// Last value of `shared.head` we loaded; the real one can only be larger.
    cached_head: usize,
    _not_sync: PhantomData<Cell<()>>,
}

// SAFETY: a Producer is the only handle allowed to write slots and the tail; moving it
// to another thread moves that right with it (and the items it will write, hence
// `T: Send`). The shared part is reached only through the protocol (atomics with the
// Acquire/Release edges documented in docs/MEMORY_ORDERING.md), never through `&T`
// shared between threads. It is not Sync (the PhantomData<Cell> marker): two threads
// must never produce at once.
unsafe impl<T: Send> Send for Producer<T> {}

/// The reading half of a ring made by [`channel`].
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Our own copy of `shared.head` (we are its only writer).
    head: usize,
    /// Last value of `shared.tail` we loaded; the real one can only be larger.
    cached_tail: usize,
    _not_sync: PhantomData<Cell<()>>,
}

// SAFETY: a Consumer is the only handle allowed to read and drop items and to move the
// head; moving it to another thread moves that right (and the items, hence `T: Send`).
// It is not Sync: two threads must never consume at once.
unsafe impl<T: Send> Send for Consumer<T> {}

impl<T> core::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("tail", &self.tail)
            .finish()
    }
}

impl<T> core::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity())
            .field("head", &self.head)
            .finish()
    }
}

impl<T> Producer<T> {
    /// Number of slots (a power of two).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// Free slots right now (re-reads the consumer's head).
    #[inline]
    pub fn slots(&self) -> usize {
        // Acquire (C1): pairs with the Release store of head in Consumer::advance, as
        // in `free_upto`; here it only makes the count current.
        let head = self.shared.head.load(Ordering::Acquire);
        self.capacity() - self.tail.wrapping_sub(head)
    }

    /// Items in the ring right now (a snapshot).
    #[inline]
    pub fn len(&self) -> usize {
        self.capacity() - self.slots()
    }

    /// True if the ring holds no items right now (a snapshot).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if the consumer half has been dropped.
    #[inline]
    pub fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.shared) == 1
    }

    /// Free slots, re-reading the shared head only if the cached one says fewer than
    /// `n` are free. Returns the free count it knows (may be below `n`).
    #[inline(always)]
    fn free_upto(&mut self, n: usize) -> usize {
        let cap = self.capacity();
        let free = cap - self.tail.wrapping_sub(self.cached_head);
        if free >= n {
            return free;
        }
        // Acquire (C1): pairs with the Release store of head in Consumer::advance; the
        // consumer's reads (and drops) of every slot below that head happen-before
        // we overwrite those slots.
        self.cached_head = self.shared.head.load(Ordering::Acquire);
        cap - self.tail.wrapping_sub(self.cached_head)
    }

    /// Publishes `n` more written slots.
    #[inline(always)]
    fn publish(&mut self, n: usize) {
        self.tail = self.tail.wrapping_add(n);
        // Release (P1): publishes the slot writes [old tail, new tail) to the consumer;
        // pairs with the Acquire load of tail in Consumer::avail_upto.
        self.shared.tail.store(self.tail, Ordering::Release);
    }

    /// Pushes one item, or gives it back if the ring is full.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), T> {
        if self.free_upto(1) == 0 {
            return Err(value);
        }
        let p = self.shared.slot_ptr(self.tail & self.shared.mask);
        self.shared.note_write(self.tail, 1);
        // SAFETY: the slot is free (tail - head < capacity, and the Acquire in
        // free_upto ordered the consumer's last use of it before this write), and
        // only the producer writes slots in [tail, head + capacity).
        unsafe { p.write(MaybeUninit::new(value)) };
        self.publish(1);
        Ok(())
    }

    /// Pushes as many items of `src` as fit (all of them or up to the free space) and
    /// returns how many were pushed.
    #[inline]
    pub fn push_slice(&mut self, src: &[T]) -> usize
    where
        T: Copy,
    {
        let n = src.len().min(self.free_upto(src.len()));
        if n == 0 {
            return 0;
        }
        let mut chunk = self.chunk(n);
        let (a, b) = chunk.as_mut_slices();
        let (s1, s2) = src[..n].split_at(a.len());
        // SAFETY: MaybeUninit<T> has the layout of T, so a `&[T]` is a valid
        // `&[MaybeUninit<T>]`; the source is a shared borrow and T is Copy.
        let (s1, s2) = unsafe {
            (
                &*(s1 as *const [T] as *const [MaybeUninit<T>]),
                &*(s2 as *const [T] as *const [MaybeUninit<T>]),
            )
        };
        a.copy_from_slice(s1);
        b.copy_from_slice(s2);
        // SAFETY: both slices (all n slots) were just initialised.
        unsafe { chunk.commit_all() };
        n
    }

    /// Pushes items from `iter` until it ends or the ring is full; returns how many.
    /// An item is taken from the iterator only when there is a slot for it.
    #[inline]
    pub fn push_iter<I: IntoIterator<Item = T>>(&mut self, iter: I) -> usize {
        let free = self.free_upto(usize::MAX);
        if free == 0 {
            return 0;
        }
        self.chunk(free).fill_from_iter(iter)
    }

    /// Reserves exactly `n` free slots for zero-copy writing, or reports how many are
    /// free. Nothing is published until [`WriteChunkUninit::commit`].
    #[inline]
    pub fn write_chunk_uninit(&mut self, n: usize) -> Result<WriteChunkUninit<'_, T>, ChunkError> {
        let free = self.free_upto(n);
        if free < n {
            return Err(ChunkError::TooFewSlots(free));
        }
        Ok(self.chunk(n))
    }

    /// A chunk over `n` slots known to be free.
    #[inline(always)]
    fn chunk(&mut self, n: usize) -> WriteChunkUninit<'_, T> {
        let (first, len1, len2) = self.shared.runs(self.tail, n);
        self.shared.note_write(self.tail, n);
        WriteChunkUninit {
            first: self.shared.slot_ptr(first),
            len1,
            second: self.shared.slot_ptr(0),
            len2,
            producer: self,
        }
    }
}

impl<T> Consumer<T> {
    /// Number of slots (a power of two).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// Items ready to read right now (re-reads the producer's tail).
    #[inline]
    pub fn slots(&self) -> usize {
        // Acquire (P1): pairs with the Release store of tail in Producer::publish; here
        // it only makes the count current.
        let tail = self.shared.tail.load(Ordering::Acquire);
        tail.wrapping_sub(self.head)
    }

    /// Items in the ring right now (same as [`Consumer::slots`]).
    #[inline]
    pub fn len(&self) -> usize {
        self.slots()
    }

    /// True if there is nothing to read right now.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slots() == 0
    }

    /// True if the producer half has been dropped.
    #[inline]
    pub fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.shared) == 1
    }

    /// Readable items, re-reading the shared tail only if the cached one says fewer
    /// than `n` are there.
    #[inline(always)]
    fn avail_upto(&mut self, n: usize) -> usize {
        let avail = self.cached_tail.wrapping_sub(self.head);
        if avail >= n {
            return avail;
        }
        // Acquire (P1): pairs with the Release store of tail in Producer::publish; the
        // producer's writes of every slot below that tail are visible to our reads.
        self.cached_tail = self.shared.tail.load(Ordering::Acquire);
        self.cached_tail.wrapping_sub(self.head)
    }

    /// Frees `n` consumed slots for the producer.
    #[inline(always)]
    fn advance(&mut self, n: usize) {
        self.head = self.head.wrapping_add(n);
        // Release (C1): our reads (and drops) of slots [old head, new head) happen-
        // before the producer reuses them; pairs with the Acquire load of head in
        // Producer::free_upto.
        self.shared.head.store(self.head, Ordering::Release);
    }

    /// Starts the cache misses of the up to `n` items after the `n` about to be read,
    /// as far as the cached tail says they are written (so the producer is never
    /// raced for a line it is still filling): they then overlap with this chunk's
    /// reads instead of following them.
    #[inline(always)]
    fn prefetch_next(&self, n: usize) {
        let start = self.head.wrapping_add(n);
        let ahead = self.cached_tail.wrapping_sub(start).min(n);
        let per_line = (64 / size_of::<T>().max(1)).max(1);
        for i in (0..ahead).step_by(per_line) {
            prefetch(
                self.shared
                    .slot_ptr(start.wrapping_add(i) & self.shared.mask),
            );
        }
    }

    /// Pops one item, or `None` if the ring is empty.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.avail_upto(1) == 0 {
            return None;
        }
        let p = self.shared.slot_ptr(self.head & self.shared.mask);
        self.shared.note_read(self.head, 1);
        // SAFETY: head < tail, so the slot holds an initialised item, made visible by
        // the Acquire in avail_upto; advancing head below moves it out exactly once.
        let v = unsafe { p.read().assume_init() };
        self.advance(1);
        Some(v)
    }

    /// Pops up to `dst.len()` items into `dst`; returns how many.
    #[inline]
    pub fn pop_slice(&mut self, dst: &mut [T]) -> usize
    where
        T: Copy,
    {
        let n = dst.len().min(self.avail_upto(dst.len()));
        if n == 0 {
            return 0;
        }
        let chunk = self.chunk(n);
        let (a, b) = chunk.as_slices();
        dst[..a.len()].copy_from_slice(a);
        dst[a.len()..n].copy_from_slice(b);
        chunk.commit_all();
        n
    }

    /// Gives zero-copy read access to exactly `n` items, or reports how many there
    /// are. Nothing is consumed until [`ReadChunk::commit`].
    #[inline]
    pub fn read_chunk(&mut self, n: usize) -> Result<ReadChunk<'_, T>, ChunkError> {
        let avail = self.avail_upto(n);
        if avail < n {
            return Err(ChunkError::TooFewSlots(avail));
        }
        Ok(self.chunk(n))
    }

    /// A chunk over `n` slots known to hold items.
    #[inline(always)]
    fn chunk(&mut self, n: usize) -> ReadChunk<'_, T> {
        self.prefetch_next(n);
        let (first, len1, len2) = self.shared.runs(self.head, n);
        self.shared.note_read(self.head, n);
        ReadChunk {
            first: self.shared.slot_ptr(first),
            len1,
            second: self.shared.slot_ptr(0),
            len2,
            consumer: self,
        }
    }
}

/// `n` reserved free slots, as up to two contiguous runs of uninitialised memory.
///
/// Fill a prefix of them (first run, then second), then [`commit`](Self::commit) how
/// many were filled. Dropping the chunk without committing publishes nothing.
pub struct WriteChunkUninit<'a, T> {
    first: *mut MaybeUninit<T>,
    len1: usize,
    second: *mut MaybeUninit<T>,
    len2: usize,
    producer: &'a mut Producer<T>,
}

impl<T> WriteChunkUninit<'_, T> {
    /// The reserved slots: the run up to the end of the buffer, then the wrapped run
    /// from its start (often empty).
    #[inline]
    pub fn as_mut_slices(&mut self) -> (&mut [MaybeUninit<T>], &mut [MaybeUninit<T>]) {
        // SAFETY: the two runs are disjoint ranges of free slots (`runs` never lets
        // them overlap: len1 + len2 <= capacity) that only this producer may touch
        // until it publishes them; `&mut self` makes the borrows exclusive.
        unsafe {
            (
                core::slice::from_raw_parts_mut(self.first, self.len1),
                core::slice::from_raw_parts_mut(self.second, self.len2),
            )
        }
    }

    /// Number of reserved slots.
    #[inline]
    pub fn len(&self) -> usize {
        self.len1 + self.len2
    }

    /// True if no slots were reserved.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes the first `k` slots to the consumer. Values written to slots past
    /// `k` are not published and never dropped (they are overwritten later).
    ///
    /// # Safety
    /// The first `k` slots (in order: first run, then second run) must have been
    /// initialised. Panics if `k > self.len()`.
    #[inline]
    pub unsafe fn commit(self, k: usize) {
        assert!(k <= self.len(), "commit({k}) on a chunk of {}", self.len());
        self.producer.publish(k);
    }

    /// Publishes every slot of the chunk.
    ///
    /// # Safety
    /// Every slot of the chunk must have been initialised.
    #[inline]
    pub unsafe fn commit_all(self) {
        let k = self.len();
        self.producer.publish(k);
    }

    /// Moves items from `iter` into the chunk until it is full or the iterator ends,
    /// then publishes them; returns how many. Safe: only written slots are committed.
    #[inline]
    pub fn fill_from_iter<I: IntoIterator<Item = T>>(mut self, iter: I) -> usize {
        let mut n = 0;
        let mut it = iter.into_iter();
        let (a, b) = self.as_mut_slices();
        for slot in a.iter_mut().chain(b.iter_mut()) {
            match it.next() {
                Some(v) => {
                    slot.write(v);
                    n += 1;
                }
                None => break,
            }
        }
        self.producer.publish(n);
        n
    }
}

/// `n` readable items, as up to two contiguous slices.
///
/// [`commit`](Self::commit) consumes (drops) a prefix; dropping the chunk without
/// committing consumes nothing.
pub struct ReadChunk<'a, T> {
    first: *const MaybeUninit<T>,
    len1: usize,
    second: *const MaybeUninit<T>,
    len2: usize,
    consumer: &'a mut Consumer<T>,
}

impl<T> ReadChunk<'_, T> {
    /// The items: the run up to the end of the buffer, then the wrapped run.
    #[inline]
    pub fn as_slices(&self) -> (&[T], &[T]) {
        // SAFETY: both runs lie in [head, tail): initialised items that the Acquire in
        // avail_upto made visible, and that the producer cannot overwrite until we
        // advance head (which needs `self` by value, after these borrows end).
        unsafe {
            (
                core::slice::from_raw_parts(self.first.cast::<T>(), self.len1),
                core::slice::from_raw_parts(self.second.cast::<T>(), self.len2),
            )
        }
    }

    /// Number of items in the chunk.
    #[inline]
    pub fn len(&self) -> usize {
        self.len1 + self.len2
    }

    /// True if the chunk has no items.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Consumes the first `k` items (dropping them) and frees their slots. Panics if
    /// `k > self.len()`.
    #[inline]
    pub fn commit(self, k: usize) {
        assert!(k <= self.len(), "commit({k}) on a chunk of {}", self.len());
        if core::mem::needs_drop::<T>() {
            let k1 = k.min(self.len1);
            // SAFETY: the first k items of the chunk are initialised and owned by the
            // ring; we drop each once and then advance head past them, so they are
            // never read or dropped again.
            unsafe {
                core::ptr::drop_in_place(core::ptr::slice_from_raw_parts_mut(
                    self.first.cast::<T>().cast_mut(),
                    k1,
                ));
                core::ptr::drop_in_place(core::ptr::slice_from_raw_parts_mut(
                    self.second.cast::<T>().cast_mut(),
                    k - k1,
                ));
            }
        }
        self.consumer.advance(k);
    }

    /// Consumes every item of the chunk.
    #[inline]
    pub fn commit_all(self) {
        let k = self.len();
        self.commit(k);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    #[test]
    fn capacity_is_rounded_up_and_checked() {
        assert!(channel::<u8>(0).is_err());
        assert!(channel::<u8>(MAX_CAPACITY + 1).is_err());
        let (p, c) = channel::<u8>(5).unwrap();
        assert_eq!(p.capacity(), 8);
        assert_eq!(c.capacity(), 8);
        let (p, _c) = channel::<u8>(1).unwrap();
        assert_eq!(p.capacity(), 1);
    }

    #[test]
    fn slots_are_cache_line_aligned() {
        let (mut p, _c) = channel::<u64>(64).unwrap();
        let mut w = p.write_chunk_uninit(1).unwrap();
        assert_eq!(w.as_mut_slices().0.as_ptr() as usize % SLOT_ALIGN, 0);
        #[repr(align(256))]
        struct Big(#[allow(dead_code)] u8);
        let (mut p, _c) = channel::<Big>(2).unwrap();
        let mut w = p.write_chunk_uninit(1).unwrap();
        assert_eq!(w.as_mut_slices().0.as_ptr() as usize % 256, 0);
        assert!(channel::<[u8; 1 << 40]>(1 << 30).is_err());
    }

    #[test]
    fn push_pop_full_empty() {
        let (mut p, mut c) = channel::<u32>(2).unwrap();
        assert_eq!(c.pop(), None);
        assert_eq!(p.push(1), Ok(()));
        assert_eq!(p.push(2), Ok(()));
        assert_eq!(p.push(3), Err(3));
        assert_eq!(p.len(), 2);
        assert_eq!(c.slots(), 2);
        assert!(matches!(
            p.write_chunk_uninit(1),
            Err(ChunkError::TooFewSlots(0))
        ));
        assert_eq!(c.pop(), Some(1));
        assert_eq!(p.slots(), 1);
        assert!(matches!(c.read_chunk(2), Err(ChunkError::TooFewSlots(1))));
        assert_eq!(c.pop(), Some(2));
        assert!(c.is_empty());
        assert!(!p.is_abandoned());
        drop(c);
        assert!(p.is_abandoned());
    }

    #[test]
    fn chunks_wrap_into_two_slices() {
        let (mut p, mut c) = channel::<u64>(4).unwrap();
        assert_eq!(p.push_slice(&[1, 2, 3]), 3);
        let mut out = [0; 2];
        assert_eq!(c.pop_slice(&mut out), 2);
        assert_eq!(out, [1, 2]);
        // tail at 3, head at 2: a 3-slot write wraps (slot 3, then 0, 1).
        let mut w = p.write_chunk_uninit(3).unwrap();
        let (a, b) = w.as_mut_slices();
        assert_eq!((a.len(), b.len()), (1, 2));
        a[0].write(4);
        b[0].write(5);
        b[1].write(6);
        // SAFETY: all three slots written above.
        unsafe { w.commit(3) };
        let r = c.read_chunk(4).unwrap();
        let (a, b) = r.as_slices();
        assert_eq!((a, b), (&[3, 4][..], &[5, 6][..]));
        r.commit(1);
        assert_eq!(c.pop(), Some(4));
        // An uncommitted chunk consumes nothing.
        let _ = c.read_chunk(2).unwrap();
        assert_eq!(c.slots(), 2);
    }

    #[test]
    fn push_iter_takes_only_what_fits() {
        let (mut p, mut c) = channel::<u32>(4).unwrap();
        let mut it = 0..10;
        assert_eq!(p.push_iter(&mut it), 4);
        assert_eq!(it.next(), Some(4), "no item lost to a full ring");
        assert_eq!(p.push_iter(0..10), 0);
        let mut out = [0; 8];
        assert_eq!(c.pop_slice(&mut out), 4);
        assert_eq!(out[..4], [0, 1, 2, 3]);
    }

    #[test]
    fn zero_sized_items() {
        let (mut p, mut c) = channel::<()>(2).unwrap();
        assert_eq!(p.push_iter(core::iter::repeat(())), 2);
        assert_eq!(c.pop(), Some(()));
        assert_eq!(c.read_chunk(1).unwrap().len(), 1);
    }

    /// Counts live values: every clone of the Rc is one live item.
    #[test]
    fn drops_every_item_exactly_once() {
        let token = Rc::new(());
        {
            let (mut p, mut c) = channel::<Rc<()>>(4).unwrap();
            for _ in 0..3 {
                p.push(token.clone()).unwrap();
            }
            assert_eq!(Rc::strong_count(&token), 4);
            drop(c.pop()); // one dropped by the caller
            assert_eq!(Rc::strong_count(&token), 3);
            c.read_chunk(1).unwrap().commit(1); // one dropped by commit
            assert_eq!(Rc::strong_count(&token), 2);
            let _ = c.read_chunk(1).unwrap(); // not committed: still in the ring
            assert_eq!(Rc::strong_count(&token), 2);
            // Wrap around, then drop the consumer first and the producer last.
            assert_eq!(p.push_iter(core::iter::repeat_with(|| token.clone())), 3);
            assert_eq!(Rc::strong_count(&token), 5);
            let w = p.write_chunk_uninit(0).unwrap();
            // SAFETY: nothing to initialise.
            unsafe { w.commit(0) };
            drop(c);
            assert_eq!(Rc::strong_count(&token), 5);
        }
        assert_eq!(Rc::strong_count(&token), 1, "ring drop released the rest");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32),
        Pop,
        PushSlice(u8),
        PopSlice(u8),
        WriteChunk(u8, u8),
        ReadChunk(u8, u8),
        PushIter(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u32>().prop_map(Op::Push),
            Just(Op::Pop),
            (0u8..10).prop_map(Op::PushSlice),
            (0u8..10).prop_map(Op::PopSlice),
            (0u8..10, 0u8..10).prop_map(|(n, k)| Op::WriteChunk(n, k)),
            (0u8..10, 0u8..10).prop_map(|(n, k)| Op::ReadChunk(n, k)),
            (0u8..10).prop_map(Op::PushIter),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_vecdeque(cap_log in 0u32..4, ops in proptest::collection::vec(op(), 1..200)) {
            let cap = 1usize << cap_log;
            let (mut p, mut c) = channel::<u32>(cap).unwrap();
            let mut model = VecDeque::new();
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Push(v) => {
                        let r = p.push(v);
                        if model.len() < cap { prop_assert_eq!(r, Ok(())); model.push_back(v); }
                        else { prop_assert_eq!(r, Err(v)); }
                    }
                    Op::Pop => prop_assert_eq!(c.pop(), model.pop_front()),
                    Op::PushSlice(n) => {
                        let src: Vec<u32> = (0..n as u32).map(|i| next + i).collect();
                        let k = p.push_slice(&src);
                        prop_assert_eq!(k, (n as usize).min(cap - model.len()));
                        model.extend(&src[..k]);
                        next += n as u32;
                    }
                    Op::PopSlice(n) => {
                        let mut dst = vec![0; n as usize];
                        let k = c.pop_slice(&mut dst);
                        prop_assert_eq!(k, (n as usize).min(model.len()));
                        for v in &dst[..k] { prop_assert_eq!(Some(*v), model.pop_front()); }
                    }
                    Op::WriteChunk(n, k) => match p.write_chunk_uninit(n as usize) {
                        Ok(mut w) => {
                            prop_assert!(n as usize <= cap - model.len());
                            let k = (k as usize).min(n as usize);
                            let (a, b) = w.as_mut_slices();
                            prop_assert_eq!(a.len() + b.len(), n as usize);
                            for (i, s) in a.iter_mut().chain(b.iter_mut()).take(k).enumerate() {
                                s.write(next + i as u32);
                                model.push_back(next + i as u32);
                            }
                            next += k as u32;
                            // SAFETY: the first k slots were written above.
                            unsafe { w.commit(k) };
                        }
                        Err(ChunkError::TooFewSlots(f)) => {
                            prop_assert_eq!(f, cap - model.len());
                            prop_assert!(f < n as usize);
                        }
                    },
                    Op::ReadChunk(n, k) => match c.read_chunk(n as usize) {
                        Ok(r) => {
                            let (a, b) = r.as_slices();
                            let got: Vec<u32> = a.iter().chain(b).copied().collect();
                            let want: Vec<u32> = model.iter().take(n as usize).copied().collect();
                            prop_assert_eq!(got, want);
                            let k = (k as usize).min(n as usize);
                            r.commit(k);
                            model.drain(..k);
                        }
                        Err(ChunkError::TooFewSlots(f)) => {
                            prop_assert_eq!(f, model.len());
                            prop_assert!(f < n as usize);
                        }
                    },
                    Op::PushIter(n) => {
                        let k = p.push_iter((0..n as u32).map(|i| next + i));
                        prop_assert_eq!(k, (n as usize).min(cap - model.len()));
                        model.extend((0..k as u32).map(|i| next + i));
                        next += n as u32;
                    }
                }
                prop_assert_eq!(p.len(), model.len());
                prop_assert_eq!(c.len(), model.len());
            }
        }
    }

    #[test]
    fn two_threads_move_10m_in_order() {
        const N: u64 = 10_000_000;
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut p, mut c) = channel::<u64>(1024).unwrap();
        let producer = std::thread::spawn(move || {
            let mut next = 0u64;
            let mut buf = [0u64; 32];
            while next < N {
                let n = (N - next).min(32) as usize;
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    *b = next + i as u64;
                }
                // Alternate between the slice API and the chunk API.
                let k = if next & 63 == 0 {
                    p.push_slice(&buf[..n])
                } else {
                    p.push_iter(buf[..n].iter().copied())
                };
                next += k as u64;
                if k == 0 {
                    assert!(Instant::now() < deadline, "producer timed out at {next}");
                    std::thread::yield_now();
                }
            }
        });
        let mut expect = 0u64;
        let mut buf = [0u64; 32];
        while expect < N {
            let k = if expect & 1 == 0 {
                c.pop_slice(&mut buf)
            } else {
                match c.read_chunk(c.slots().min(32)) {
                    Ok(r) => {
                        let (a, b) = r.as_slices();
                        let k = a.len() + b.len();
                        buf[..a.len()].copy_from_slice(a);
                        buf[a.len()..k].copy_from_slice(b);
                        r.commit_all();
                        k
                    }
                    Err(_) => 0,
                }
            };
            for v in &buf[..k] {
                assert_eq!(*v, expect);
                expect += 1;
            }
            if k == 0 {
                assert!(Instant::now() < deadline, "consumer timed out at {expect}");
                std::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert!(c.is_empty());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    /// Three items through a 2-slot ring, per item: order and slot reuse after wrap.
    #[test]
    fn loom_spsc_push_pop() {
        model(|| {
            let (mut p, mut c) = channel::<u32>(2).unwrap();
            let t = loom::thread::spawn(move || {
                for v in 1..=3 {
                    let mut v = v;
                    while let Err(back) = p.push(v) {
                        v = back;
                        loom::thread::yield_now();
                    }
                }
            });
            let mut expect = 1;
            while expect <= 3 {
                match c.pop() {
                    Some(v) => {
                        assert_eq!(v, expect);
                        expect += 1;
                    }
                    None => loom::thread::yield_now(),
                }
            }
            t.join().unwrap();
        });
    }

    /// Chunks of 2 and 1 through a 2-slot ring (a wrapped chunk on the second lap).
    #[test]
    fn loom_spsc_chunks() {
        model(|| {
            let (mut p, mut c) = channel::<u32>(2).unwrap();
            let t = loom::thread::spawn(move || {
                let mut sent = 0u32;
                while sent < 3 {
                    let want = if sent == 0 { 2 } else { 1 };
                    match p.write_chunk_uninit(want) {
                        Ok(mut w) => {
                            let (a, b) = w.as_mut_slices();
                            for (i, s) in a.iter_mut().chain(b.iter_mut()).enumerate() {
                                s.write(sent + i as u32);
                            }
                            // SAFETY: every slot of the chunk was written above.
                            unsafe { w.commit_all() };
                            sent += want as u32;
                        }
                        Err(_) => loom::thread::yield_now(),
                    }
                }
            });
            let mut expect = 0u32;
            while expect < 3 {
                match c.read_chunk(1) {
                    Ok(r) => {
                        let (a, b) = r.as_slices();
                        assert_eq!(a.iter().chain(b).next(), Some(&expect));
                        r.commit(1);
                        expect += 1;
                    }
                    Err(_) => loom::thread::yield_now(),
                }
            }
            t.join().unwrap();
        });
    }

    /// Items left in the ring are dropped once, whichever half goes last.
    #[test]
    fn loom_spsc_drop_remaining() {
        model(|| {
            let token = Arc::new(());
            let (mut p, c) = channel::<Arc<()>>(2).unwrap();
            let tok = token.clone();
            let t = loom::thread::spawn(move || {
                let _ = p.push(tok.clone());
                let _ = p.push(tok);
            });
            drop(c);
            t.join().unwrap();
            assert_eq!(Arc::strong_count(&token), 1);
        });
    }
}
