//! Bounds-checked views over memory shared with a peer.
//!
//! Everything a ring reads or writes in a window goes through the [`Mem`] trait. The
//! plain implementation is [`Region`]: a pointer and a length whose only `unsafe` part
//! is its constructor ([`Region::from_raw`]); every access after that is range- and
//! alignment-checked and returns a [`MemError`] instead of touching memory outside the
//! region. Wrappers (the instrumented and link-model windows in `pmd`, `loom_mem`
//! under `--cfg loom`) implement the same trait, so ring code is written once and
//! monomorphised per backend.
//!
//! The peer may write any byte at any time. Accesses are therefore either atomic (for
//! indices and flags, with an explicit [`Ordering`]) or volatile copies (for descriptors
//! and payload). No Rust reference into shared memory is ever handed out, so a peer
//! changing bytes under us can only ever give us arbitrary *values*, which callers
//! validate after copying them once (GUIDE.md section 8).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytemuck::Pod;

use crate::error::MemError;

/// Memory shared with a peer, accessed only through checked operations.
///
/// Offsets are relative to the start of the memory. Every method fails with
/// [`MemError`] instead of accessing anything outside `0..size()`.
///
/// # Implementation safety
/// An implementation must never access memory outside the range it was built over,
/// and `range_ptr` must return a pointer to `len` bytes valid for reads and writes
/// for as long as `self` (or a clone of it) lives.
pub trait Mem {
    /// Size of the memory in bytes.
    fn size(&self) -> usize;

    /// Atomic 16-bit load at `off` (must be 2-byte aligned).
    fn load_u16(&self, off: usize, order: Ordering) -> Result<u16, MemError>;
    /// Atomic 32-bit load at `off` (must be 4-byte aligned).
    fn load_u32(&self, off: usize, order: Ordering) -> Result<u32, MemError>;
    /// Atomic 64-bit load at `off` (must be 8-byte aligned).
    fn load_u64(&self, off: usize, order: Ordering) -> Result<u64, MemError>;
    /// Atomic 16-bit store at `off`.
    fn store_u16(&self, off: usize, val: u16, order: Ordering) -> Result<(), MemError>;
    /// Atomic 32-bit store at `off`.
    fn store_u32(&self, off: usize, val: u32, order: Ordering) -> Result<(), MemError>;
    /// Atomic 64-bit store at `off`.
    fn store_u64(&self, off: usize, val: u64, order: Ordering) -> Result<(), MemError>;

    /// Volatile copy of a plain-old-data value out of the memory (one fetch; the
    /// caller validates the copy). `off` must be aligned for `T`.
    fn read_obj<T: Pod>(&self, off: usize) -> Result<T, MemError>;
    /// Volatile store of a plain-old-data value. `off` must be aligned for `T`.
    fn write_obj<T: Pod>(&self, off: usize, val: &T) -> Result<(), MemError>;

    /// Copies `dst.len()` bytes starting at `off` into `dst`.
    fn read_bytes(&self, off: usize, dst: &mut [u8]) -> Result<(), MemError>;
    /// Copies `src` into the memory starting at `off`.
    fn write_bytes(&self, off: usize, src: &[u8]) -> Result<(), MemError>;

    /// Raw pointer to the checked range `off..off + len`, for copy engines and
    /// zero-copy buffer views. The pointer stays valid while `self` lives; using it is
    /// `unsafe` at the use site, and the memory behind it may change at any time.
    /// Accesses made through it are not counted: report them with
    /// [`Mem::note_read`] / [`Mem::note_write`].
    fn range_ptr(&self, off: usize, len: usize) -> Result<NonNull<u8>, MemError>;

    /// Hint: the line holding `off` will be read soon. Never faults, never fails.
    #[inline(always)]
    fn prefetch(&self, _off: usize) {}

    /// Hint: this side is done writing the line holding `off` for now; move it from
    /// this core's private caches to the shared cache, so that the reader's miss is
    /// served there instead of by a snoop of this core. Never faults, never fails.
    #[inline(always)]
    fn demote(&self, _off: usize) {}

    /// Instrumentation hook: `bytes` were read through a pointer from `range_ptr`.
    #[inline(always)]
    fn note_read(&self, _bytes: usize) {}
    /// Instrumentation hook: `bytes` were written through a pointer from `range_ptr`.
    #[inline(always)]
    fn note_write(&self, _bytes: usize) {}
}

/// Keeps the memory behind a [`Region`] alive (a mapping, a heap buffer).
pub type Owner = Arc<dyn Send + Sync>;

/// A bounds-checked view of `len` bytes of shared memory.
///
/// Cloning is cheap (it clones the keep-alive handle, if any). Sub-views made with
/// [`Region::sub`] share the owner, so a ring can hold its part of a window without
/// borrowing from the window object.
#[derive(Clone)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    _owner: Option<Owner>,
}

// SAFETY: a Region is a pointer to memory that is by contract valid for the lifetime of
// the Region (see `from_raw`) and is only accessed through atomics or volatile copies
// that tolerate concurrent modification; nothing in it is tied to the creating thread.
unsafe impl Send for Region {}
// SAFETY: as for Send: all accesses through `&Region` are atomic or volatile copies,
// which may race with other threads and processes without creating references.
unsafe impl Sync for Region {}

impl core::fmt::Debug for Region {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Region")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

/// Alignment of the allocation behind [`Region::heap`]: two cache lines, enough for
/// every ring structure (virtio asks for at most 16; zerohop pads to 128).
pub const HEAP_ALIGN: usize = 128;

struct HeapBuf {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: HeapBuf exclusively owns its allocation; it is only freed in Drop.
unsafe impl Send for HeapBuf {}
// SAFETY: HeapBuf exposes no access itself; access goes through Region's checked,
// atomic/volatile operations.
unsafe impl Sync for HeapBuf {}

impl Drop for HeapBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was returned by alloc_zeroed with exactly this layout and is freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl Region {
    /// Makes a view of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for as long as the
    /// returned Region or any clone or sub-view of it lives (pass an `owner` that keeps
    /// the memory mapped, or guarantee it otherwise). The memory may be shared with
    /// other threads and processes; it must never be accessed through Rust references
    /// elsewhere while a Region to it exists.
    pub unsafe fn from_raw(ptr: NonNull<u8>, len: usize, owner: Option<Owner>) -> Region {
        Region {
            ptr,
            len,
            _owner: owner,
        }
    }

    /// A zeroed, 128-byte aligned heap region of `len` bytes (unit tests, Miri, and
    /// the heap window). `len == 0` gives an empty region.
    pub fn heap(len: usize) -> Region {
        let layout = std::alloc::Layout::from_size_align(len.max(1), HEAP_ALIGN)
            .expect("heap region size overflows isize");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        let owner: Owner = Arc::new(HeapBuf { ptr, layout });
        // SAFETY: the allocation is len.max(1) bytes, owned by `owner`, which every
        // clone and sub-view of the Region keeps alive.
        unsafe { Region::from_raw(ptr, len, Some(owner)) }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the region has no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of the first byte (for alignment checks and diagnostics).
    #[inline]
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// A view of `off..off + len` of this region, sharing its owner.
    pub fn sub(&self, off: usize, len: usize) -> Result<Region, MemError> {
        let p = self.check(off, len, 1)?;
        Ok(Region {
            ptr: p,
            len,
            _owner: self._owner.clone(),
        })
    }

    /// Checks `off..off+len` lies inside the region and that its start is aligned to
    /// `align` (a power of two); returns a pointer to its start.
    #[inline(always)]
    fn check(&self, off: usize, len: usize, align: usize) -> Result<NonNull<u8>, MemError> {
        let end = off.checked_add(len);
        match end {
            Some(end) if end <= self.len => {}
            _ => {
                return Err(MemError::OutOfBounds {
                    offset: off,
                    len,
                    size: self.len,
                })
            }
        }
        // `off <= self.len`, so the addition stays inside (or one past) the region.
        let addr = self.addr().wrapping_add(off);
        if addr & (align - 1) != 0 {
            return Err(MemError::Misaligned { offset: off, align });
        }
        // SAFETY: off <= len, so ptr + off is inside the region or one past its end,
        // and it is not null because ptr is not null and the range does not wrap.
        Ok(unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(off)) })
    }
}

macro_rules! atomic_access {
    ($load:ident, $store:ident, $int:ty, $atomic:ty) => {
        #[inline(always)]
        fn $load(&self, off: usize, order: Ordering) -> Result<$int, MemError> {
            let p = self.check(off, size_of::<$int>(), align_of::<$atomic>())?;
            // SAFETY: the range is inside the region (valid per `from_raw`'s contract)
            // and aligned for the atomic type; it is only ever accessed atomically or
            // by volatile copies, never through a non-atomic Rust reference.
            let a = unsafe { <$atomic>::from_ptr(p.as_ptr().cast::<$int>()) };
            Ok(a.load(order))
        }

        #[inline(always)]
        fn $store(&self, off: usize, val: $int, order: Ordering) -> Result<(), MemError> {
            let p = self.check(off, size_of::<$int>(), align_of::<$atomic>())?;
            // SAFETY: as in the load above.
            let a = unsafe { <$atomic>::from_ptr(p.as_ptr().cast::<$int>()) };
            a.store(val, order);
            Ok(())
        }
    };
}

impl Mem for Region {
    #[inline(always)]
    fn size(&self) -> usize {
        self.len
    }

    atomic_access!(load_u16, store_u16, u16, AtomicU16);
    atomic_access!(load_u32, store_u32, u32, AtomicU32);
    atomic_access!(load_u64, store_u64, u64, AtomicU64);

    #[inline(always)]
    fn read_obj<T: Pod>(&self, off: usize) -> Result<T, MemError> {
        let p = self.check(off, size_of::<T>(), align_of::<T>())?;
        // SAFETY: in bounds and aligned for T; T is Pod, so any bytes the peer left
        // there form a valid T. The volatile read copies it out exactly once.
        Ok(unsafe { core::ptr::read_volatile(p.as_ptr().cast::<T>()) })
    }

    #[inline(always)]
    fn write_obj<T: Pod>(&self, off: usize, val: &T) -> Result<(), MemError> {
        let p = self.check(off, size_of::<T>(), align_of::<T>())?;
        // SAFETY: in bounds and aligned for T; shared memory is only accessed by
        // volatile/atomic operations, so no reference is invalidated.
        unsafe { core::ptr::write_volatile(p.as_ptr().cast::<T>(), *val) };
        Ok(())
    }

    #[inline(always)]
    fn read_bytes(&self, off: usize, dst: &mut [u8]) -> Result<(), MemError> {
        let p = self.check(off, dst.len(), 1)?;
        // SAFETY: source range checked above; `dst` is a distinct local buffer, so the
        // ranges cannot overlap. A concurrent peer write can only change which bytes
        // we copy, never where we copy from or to.
        unsafe { core::ptr::copy_nonoverlapping(p.as_ptr(), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    #[inline(always)]
    fn write_bytes(&self, off: usize, src: &[u8]) -> Result<(), MemError> {
        let p = self.check(off, src.len(), 1)?;
        // SAFETY: destination range checked above; `src` is local memory and cannot
        // overlap the shared region's range we write.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr(), src.len()) };
        Ok(())
    }

    #[inline(always)]
    fn range_ptr(&self, off: usize, len: usize) -> Result<NonNull<u8>, MemError> {
        self.check(off, len, 1)
    }

    #[inline(always)]
    fn prefetch(&self, off: usize) {
        #[cfg(target_arch = "x86_64")]
        if off < self.len {
            // SAFETY: `off < len`, so the address is inside the region; a prefetch
            // is a hint that never faults and changes no memory.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    self.ptr.as_ptr().add(off).cast(),
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = off;
    }

    #[inline(always)]
    fn demote(&self, off: usize) {
        #[cfg(target_arch = "x86_64")]
        if off < self.len {
            // SAFETY: `off < len`, so the address is inside the region. CLDEMOTE is a
            // hint that never faults and changes no memory; CPUs without it decode it
            // as a NOP (it lies in the reserved-NOP opcode space 0F 1C).
            unsafe {
                core::arch::asm!(
                    "cldemote [{p}]",
                    p = in(reg) self.ptr.as_ptr().add(off),
                    options(nostack, preserves_flags, readonly)
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = off;
    }
}

/// A [`Mem`] backed by loom atomics, so the real ring code runs under loom's model
/// checker (`RUSTFLAGS="--cfg loom" cargo test -p rings --release loom`).
///
/// Memory is an array of 64-bit loom atomics; narrower accesses are read-modify-write
/// on the containing word (a faithful model of a narrower atomic store: the other
/// bytes are left as they are). Byte copies use relaxed atomics per word, so loom
/// tracks that payload is only visible after the acquire that pairs with its release.
#[cfg(loom)]
pub mod loom_mem {
    use super::*;
    use loom::sync::atomic::AtomicU64 as LAtomicU64;

    /// Loom-checked shared memory of a fixed size.
    #[derive(Clone)]
    pub struct LoomMem {
        words: Arc<Vec<LAtomicU64>>,
        len: usize,
    }

    impl LoomMem {
        /// Zeroed memory of `len` bytes (rounded up to whole words internally).
        pub fn new(len: usize) -> Self {
            let n = len.div_ceil(8);
            LoomMem {
                words: Arc::new((0..n).map(|_| LAtomicU64::new(0)).collect()),
                len,
            }
        }

        fn check(&self, off: usize, len: usize, align: usize) -> Result<(), MemError> {
            match off.checked_add(len) {
                Some(end) if end <= self.len => {}
                _ => {
                    return Err(MemError::OutOfBounds {
                        offset: off,
                        len,
                        size: self.len,
                    })
                }
            }
            if off & (align - 1) != 0 {
                return Err(MemError::Misaligned { offset: off, align });
            }
            Ok(())
        }

        fn load_n(&self, off: usize, n: usize, order: Ordering) -> u64 {
            let w = self.words[off / 8].load(order);
            let shift = (off % 8) * 8;
            if n == 8 {
                w
            } else {
                (w >> shift) & ((1u64 << (n * 8)) - 1)
            }
        }

        fn store_n(&self, off: usize, n: usize, val: u64, order: Ordering) {
            let word = &self.words[off / 8];
            if n == 8 {
                word.store(val, order);
                return;
            }
            let shift = (off % 8) * 8;
            let mask = ((1u64 << (n * 8)) - 1) << shift;
            let load_order = if order == Ordering::SeqCst {
                Ordering::SeqCst
            } else {
                Ordering::Relaxed
            };
            let mut cur = word.load(load_order);
            loop {
                let new = (cur & !mask) | ((val << shift) & mask);
                match word.compare_exchange(cur, new, order, load_order) {
                    Ok(_) => break,
                    Err(c) => cur = c,
                }
            }
        }
    }

    impl Mem for LoomMem {
        fn size(&self) -> usize {
            self.len
        }
        fn load_u16(&self, off: usize, order: Ordering) -> Result<u16, MemError> {
            self.check(off, 2, 2)?;
            Ok(self.load_n(off, 2, order) as u16)
        }
        fn load_u32(&self, off: usize, order: Ordering) -> Result<u32, MemError> {
            self.check(off, 4, 4)?;
            Ok(self.load_n(off, 4, order) as u32)
        }
        fn load_u64(&self, off: usize, order: Ordering) -> Result<u64, MemError> {
            self.check(off, 8, 8)?;
            Ok(self.load_n(off, 8, order))
        }
        fn store_u16(&self, off: usize, val: u16, order: Ordering) -> Result<(), MemError> {
            self.check(off, 2, 2)?;
            self.store_n(off, 2, val as u64, order);
            Ok(())
        }
        fn store_u32(&self, off: usize, val: u32, order: Ordering) -> Result<(), MemError> {
            self.check(off, 4, 4)?;
            self.store_n(off, 4, val as u64, order);
            Ok(())
        }
        fn store_u64(&self, off: usize, val: u64, order: Ordering) -> Result<(), MemError> {
            self.check(off, 8, 8)?;
            self.store_n(off, 8, val, order);
            Ok(())
        }
        fn read_obj<T: Pod>(&self, off: usize) -> Result<T, MemError> {
            self.check(off, size_of::<T>(), align_of::<T>())?;
            let mut v = T::zeroed();
            self.read_bytes(off, bytemuck::bytes_of_mut(&mut v))?;
            Ok(v)
        }
        fn write_obj<T: Pod>(&self, off: usize, val: &T) -> Result<(), MemError> {
            self.check(off, size_of::<T>(), align_of::<T>())?;
            self.write_bytes(off, bytemuck::bytes_of(val))
        }
        fn read_bytes(&self, off: usize, dst: &mut [u8]) -> Result<(), MemError> {
            self.check(off, dst.len(), 1)?;
            for (i, b) in dst.iter_mut().enumerate() {
                *b = self.load_n(off + i, 1, Ordering::Relaxed) as u8;
            }
            Ok(())
        }
        fn write_bytes(&self, off: usize, src: &[u8]) -> Result<(), MemError> {
            self.check(off, src.len(), 1)?;
            for (i, b) in src.iter().enumerate() {
                self.store_n(off + i, 1, *b as u64, Ordering::Relaxed);
            }
            Ok(())
        }
        fn range_ptr(&self, off: usize, len: usize) -> Result<NonNull<u8>, MemError> {
            // Loom memory has no raw bytes to point at; callers under loom must use
            // the copying accessors.
            Err(MemError::OutOfBounds {
                offset: off,
                len,
                size: 0,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_region_is_zeroed_and_aligned() {
        let r = Region::heap(256);
        assert_eq!(r.addr() % HEAP_ALIGN, 0);
        for off in (0..256).step_by(8) {
            assert_eq!(r.load_u64(off, Ordering::Relaxed).unwrap(), 0);
        }
    }

    #[test]
    fn prefetch_and_demote_are_hints_anywhere() {
        let r = Region::heap(128);
        r.store_u32(64, 7, Ordering::Relaxed).unwrap();
        // Inside, at the last byte, past the end and far past it: no fault, no change.
        for off in [0, 64, 127, 128, usize::MAX] {
            r.prefetch(off);
            r.demote(off);
        }
        assert_eq!(r.load_u32(64, Ordering::Relaxed).unwrap(), 7);
    }

    #[test]
    fn out_of_bounds_and_misaligned_are_errors() {
        let r = Region::heap(64);
        assert_eq!(
            r.load_u32(62, Ordering::Relaxed),
            Err(MemError::OutOfBounds {
                offset: 62,
                len: 4,
                size: 64
            })
        );
        assert_eq!(
            r.load_u32(2, Ordering::Relaxed),
            Err(MemError::Misaligned {
                offset: 2,
                align: 4
            })
        );
        assert!(r.write_bytes(usize::MAX, &[1]).is_err());
        assert!(r.sub(60, 8).is_err());
        let mut buf = [0u8; 65];
        assert!(r.read_bytes(0, &mut buf).is_err());
    }

    #[test]
    fn sub_views_share_memory() {
        let r = Region::heap(128);
        let s = r.sub(64, 64).unwrap();
        s.store_u32(4, 0xdead_beef, Ordering::Release).unwrap();
        assert_eq!(r.load_u32(68, Ordering::Acquire).unwrap(), 0xdead_beef);
        let mut b = [0u8; 4];
        r.read_bytes(68, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
        assert!(s.load_u32(64, Ordering::Relaxed).is_err());
    }

    #[test]
    fn objects_round_trip() {
        let r = Region::heap(64);
        r.write_obj(16, &[1u64, 2u64]).unwrap();
        assert_eq!(r.read_obj::<[u64; 2]>(16).unwrap(), [1, 2]);
        assert!(r.read_obj::<u64>(12).is_err());
    }
}
