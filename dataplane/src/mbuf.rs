//! Packet buffer handles (DPDK `rte_mbuf`, single segment).
//!
//! An [`Mbuf`] owns one buffer of a [`Mempool`](crate::mempool::Mempool) and carries
//! the packet's metadata. The metadata lives in the handle (process-local, 56 bytes),
//! the bytes in the window:
//!
//! ```text
//!  buffer in the window (buf_len bytes)
//!  +-----------------+======================+------------------+
//!  |    headroom     |        data          |     tailroom     |
//!  +-----------------+======================+------------------+
//!  0                 data_off               data_off+data_len  buf_len
//!     prepend(n) <-- | --> adj(n)              trim(n) <-- | --> append(n)
//! ```
//!
//! The mbuf goes back to its pool when dropped, through the dropping thread's cache;
//! [`free_bulk`] / [`MbufBurst`] return a whole burst with one cache operation per
//! pool run.
//!
//! # Data access and the peer
//! [`Mbuf::data`] / [`Mbuf::data_mut`] are slices over the window buffer (zero copy:
//! received packets are read in place, GUIDE.md section 4). For the *local* side this
//! is sound: the pool hands each buffer to exactly one owner, an `Mbuf` is not
//! `Clone`, it returns its buffer exactly once, and the pool's memory outlives every
//! mbuf (see [`crate::mempool`]). But if the window is also mapped by a peer, a
//! hostile or buggy peer can change these bytes at any time, under the slice. Rust
//! cannot see another process's writes; the effect is that two reads of the same byte
//! may disagree. So treat `data()` contents of a peer-visible buffer as untrusted
//! input, and when a decision depends on a value (a length, an offset), read it once
//! into a local with [`Mbuf::copy_out`] (a copy that never holds a reference into the
//! window) and validate the copy. The slice is offered anyway because copying every
//! packet would defeat zero-copy receive; the caveat is the price.

use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use rings::mem::Mem;
use rings::pool::BufRef;

use crate::mempool::{put_raw, Shared, CHUNK};

/// Why an mbuf operation was refused (nothing was changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MbufError {
    /// `prepend` asked for more than the headroom.
    #[error("prepend of {want} bytes exceeds the headroom of {have}")]
    NoHeadroom {
        /// Bytes asked for.
        want: usize,
        /// Headroom left.
        have: usize,
    },
    /// `append` asked for more than the tailroom.
    #[error("append of {want} bytes exceeds the tailroom of {have}")]
    NoTailroom {
        /// Bytes asked for.
        want: usize,
        /// Tailroom left.
        have: usize,
    },
    /// `adj` / `trim` asked to remove more than the data length.
    #[error("removing {want} bytes from a packet of {have}")]
    TooShort {
        /// Bytes asked for.
        want: usize,
        /// Data length.
        have: usize,
    },
}

/// A packet buffer handle: owns one pool buffer in the window, returned to the pool
/// on drop (or [`free_bulk`]). Single segment: `pkt_len == data_len`.
pub struct Mbuf {
    /// Start of the buffer in the window (`buf_len` bytes).
    buf_ptr: NonNull<u8>,
    /// The pool's shared state (alive while this mbuf is: see `mempool`).
    pool: NonNull<Shared>,
    buf: BufRef,
    buf_len: u32,
    data_off: u32,
    data_len: u32,
    pkt_len: u32,
    port: u16,
    queue: u16,
    /// Receive/transmit timestamp, ns.
    timestamp: u64,
    /// User / flow field (RSS hash, flow id, sequence number...).
    user: u32,
    /// Not Sync by default through the raw pointers; Send/Sync are given below.
    _own: PhantomData<[u8]>,
}

// Layout check: the handle stays within one cache line.
const _: () = assert!(core::mem::size_of::<Mbuf>() <= 64);

// SAFETY: an Mbuf exclusively owns its buffer; the pool state it points at is Sync
// (lock-free pool, Region is Sync) and lives while the mbuf does. Moving the handle to
// another thread moves that ownership; the free path works from any thread.
unsafe impl Send for Mbuf {}
// SAFETY: `&Mbuf` only reads the buffer (`data`, `copy_out`) and metadata; mutation
// needs `&mut Mbuf`.
unsafe impl Sync for Mbuf {}

impl core::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mbuf")
            .field("buf", &self.buf.index)
            .field("data_off", &self.data_off)
            .field("data_len", &self.data_len)
            .field("port", &self.port)
            .field("queue", &self.queue)
            .field("timestamp", &self.timestamp)
            .field("user", &self.user)
            .finish()
    }
}

impl Mbuf {
    /// Wraps an owned buffer.
    ///
    /// # Safety
    /// `buf_ptr` points to the `buf_len` bytes of `buf` inside the pool's region; the
    /// caller owns `buf` exclusively and hands that ownership to the mbuf; `pool`
    /// points to the pool's live shared state, which must outlive the mbuf.
    #[inline]
    pub(crate) unsafe fn from_parts(
        buf_ptr: NonNull<u8>,
        pool: NonNull<Shared>,
        buf: BufRef,
        buf_len: u32,
        headroom: u32,
    ) -> Mbuf {
        Mbuf {
            buf_ptr,
            pool,
            buf,
            buf_len,
            data_off: headroom,
            data_len: 0,
            pkt_len: 0,
            port: 0,
            queue: 0,
            timestamp: 0,
            user: 0,
            _own: PhantomData,
        }
    }

    #[inline(always)]
    fn shared(&self) -> &Shared {
        // SAFETY: the pool state outlives every mbuf (mempool module invariant).
        unsafe { self.pool.as_ref() }
    }

    /// The buffer this mbuf owns.
    #[inline]
    pub fn buf(&self) -> BufRef {
        self.buf
    }

    /// Offset of the buffer's first byte in the pool's region.
    #[inline]
    pub fn buf_offset(&self) -> u64 {
        let p = &self.shared().pool;
        p.base_off() + self.buf.index as u64 * p.buf_size() as u64
    }

    /// Offset of the first data byte in the pool's region (what a descriptor names).
    #[inline]
    pub fn data_region_offset(&self) -> u64 {
        self.buf_offset() + self.data_off as u64
    }

    /// Size of the whole buffer.
    #[inline]
    pub fn buf_len(&self) -> usize {
        self.buf_len as usize
    }

    /// Offset of the data from the start of the buffer.
    #[inline]
    pub fn data_off(&self) -> usize {
        self.data_off as usize
    }

    /// Bytes of data.
    #[inline]
    pub fn data_len(&self) -> usize {
        self.data_len as usize
    }

    /// Bytes of the whole packet (equal to `data_len`: single segment).
    #[inline]
    pub fn pkt_len(&self) -> usize {
        self.pkt_len as usize
    }

    /// Free bytes in front of the data.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.data_off as usize
    }

    /// Free bytes after the data.
    #[inline]
    pub fn tailroom(&self) -> usize {
        (self.buf_len - self.data_off - self.data_len) as usize
    }

    /// Input/output port.
    #[inline]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the port.
    #[inline]
    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// Queue within the port.
    #[inline]
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Sets the queue.
    #[inline]
    pub fn set_queue(&mut self, queue: u16) {
        self.queue = queue;
    }

    /// Timestamp in ns (clock chosen by the application).
    #[inline]
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// Sets the timestamp.
    #[inline]
    pub fn set_timestamp(&mut self, ns: u64) {
        self.timestamp = ns;
    }

    /// The 32-bit user/flow field.
    #[inline]
    pub fn user(&self) -> u32 {
        self.user
    }

    /// Sets the user/flow field.
    #[inline]
    pub fn set_user(&mut self, v: u32) {
        self.user = v;
    }

    /// Sets the data window directly (e.g. a port that received `len` bytes at `off`).
    /// Refused if `off + len` exceeds the buffer.
    #[inline]
    pub fn set_data(&mut self, off: usize, len: usize) -> Result<(), MbufError> {
        match off.checked_add(len) {
            Some(end) if end <= self.buf_len as usize => {
                self.data_off = off as u32;
                self.data_len = len as u32;
                self.pkt_len = len as u32;
                Ok(())
            }
            _ => Err(MbufError::NoTailroom {
                want: len,
                have: (self.buf_len as usize).saturating_sub(off),
            }),
        }
    }

    /// Empties the packet and restores the pool's headroom and default metadata.
    #[inline]
    pub fn reset(&mut self) {
        self.data_off = self.shared().headroom;
        self.data_len = 0;
        self.pkt_len = 0;
        self.port = 0;
        self.queue = 0;
        self.timestamp = 0;
        self.user = 0;
    }

    /// Slice of `len` bytes at `off` in the buffer (checked by the callers).
    #[inline(always)]
    fn bytes(&self, off: u32, len: u32) -> &[u8] {
        debug_assert!(off as u64 + len as u64 <= self.buf_len as u64);
        // SAFETY: `off + len <= buf_len` (every caller keeps data_off + data_len within
        // buf_len), `buf_ptr` covers the buf_len bytes of a buffer this mbuf owns
        // exclusively, and the region outlives the mbuf (pool invariant). The bytes may
        // be changed by a peer that maps the window: see the module docs.
        unsafe {
            core::slice::from_raw_parts(self.buf_ptr.as_ptr().add(off as usize), len as usize)
        }
    }

    /// Mutable slice of `len` bytes at `off` in the buffer (checked by the callers).
    #[inline(always)]
    fn bytes_mut(&mut self, off: u32, len: u32) -> &mut [u8] {
        debug_assert!(off as u64 + len as u64 <= self.buf_len as u64);
        // SAFETY: as in `bytes`; `&mut self` makes this the only live slice into the
        // buffer on our side.
        unsafe {
            core::slice::from_raw_parts_mut(self.buf_ptr.as_ptr().add(off as usize), len as usize)
        }
    }

    /// The packet data, in place in the window. If the window is peer-visible, the
    /// peer may change these bytes under the slice: see the module docs.
    #[inline]
    pub fn data(&self) -> &[u8] {
        self.bytes(self.data_off, self.data_len)
    }

    /// The packet data, mutable, in place in the window.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.bytes_mut(self.data_off, self.data_len)
    }

    /// Copies data bytes `off..off + dst.len()` into `dst` without making a reference
    /// into the window (the way to read values from a peer-visible buffer that must
    /// be validated). Returns the bytes copied (fewer if the data is shorter).
    #[inline]
    pub fn copy_out(&self, off: usize, dst: &mut [u8]) -> usize {
        let have = self.data_len().saturating_sub(off);
        let n = have.min(dst.len());
        if n == 0 {
            return 0;
        }
        let at = self.data_region_offset() as usize + off;
        match self.shared().region.read_bytes(at, &mut dst[..n]) {
            Ok(()) => n,
            Err(_) => 0,
        }
    }

    /// Grows the data by `n` bytes at the front (into the headroom) and returns the
    /// new front bytes (`rte_pktmbuf_prepend`).
    #[inline]
    pub fn prepend(&mut self, n: usize) -> Result<&mut [u8], MbufError> {
        if n > self.data_off as usize {
            return Err(MbufError::NoHeadroom {
                want: n,
                have: self.data_off as usize,
            });
        }
        let n = n as u32;
        self.data_off -= n;
        self.data_len += n;
        self.pkt_len += n;
        Ok(self.bytes_mut(self.data_off, n))
    }

    /// Grows the data by `n` bytes at the end (into the tailroom) and returns the new
    /// tail bytes (`rte_pktmbuf_append`). Their contents are whatever the buffer held.
    #[inline]
    pub fn append(&mut self, n: usize) -> Result<&mut [u8], MbufError> {
        let room = self.tailroom();
        if n > room {
            return Err(MbufError::NoTailroom {
                want: n,
                have: room,
            });
        }
        let at = self.data_off + self.data_len;
        let n = n as u32;
        self.data_len += n;
        self.pkt_len += n;
        Ok(self.bytes_mut(at, n))
    }

    /// Appends a copy of `src`.
    #[inline]
    pub fn extend_from_slice(&mut self, src: &[u8]) -> Result<(), MbufError> {
        self.append(src.len())?.copy_from_slice(src);
        Ok(())
    }

    /// Removes `n` bytes from the front (`rte_pktmbuf_adj`).
    #[inline]
    pub fn adj(&mut self, n: usize) -> Result<(), MbufError> {
        if n > self.data_len as usize {
            return Err(MbufError::TooShort {
                want: n,
                have: self.data_len as usize,
            });
        }
        let n = n as u32;
        self.data_off += n;
        self.data_len -= n;
        self.pkt_len -= n;
        Ok(())
    }

    /// Removes `n` bytes from the end (`rte_pktmbuf_trim`).
    #[inline]
    pub fn trim(&mut self, n: usize) -> Result<(), MbufError> {
        if n > self.data_len as usize {
            return Err(MbufError::TooShort {
                want: n,
                have: self.data_len as usize,
            });
        }
        let n = n as u32;
        self.data_len -= n;
        self.pkt_len -= n;
        Ok(())
    }

    /// Returns the buffer to its pool now (same as dropping the mbuf).
    #[inline]
    pub fn free(self) {
        drop(self)
    }

    /// Gives up the mbuf without returning its buffer: the caller now owns the buffer
    /// (e.g. a port that put its offset in a descriptor) and must give it back with
    /// [`Mempool::put_bulk`](crate::mempool::Mempool::put_bulk) or
    /// [`Mempool::mbuf_from_raw`](crate::mempool::Mempool::mbuf_from_raw).
    #[inline]
    pub fn into_raw(self) -> BufRef {
        ManuallyDrop::new(self).buf
    }

    #[inline(always)]
    fn same_pool(&self, other: &Mbuf) -> bool {
        self.pool == other.pool
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the pool state is live (invariant) and we own `buf`; after this the
        // handle is gone, so the buffer is returned exactly once.
        unsafe { put_raw(self.pool, core::slice::from_ref(&self.buf)) }
    }
}

/// Returns every mbuf in `v` to its pool, one cache operation per run of up to 64
/// mbufs of the same pool; `v` is left empty with its capacity (no allocation).
#[inline]
pub fn free_bulk(v: &mut Vec<Mbuf>) {
    free_bulk_from(v, 0);
}

/// Frees `v[start..]` as [`free_bulk`] does and truncates `v` to `start`.
pub(crate) fn free_bulk_from(v: &mut Vec<Mbuf>, start: usize) {
    let mut bufs = [BufRef { index: 0 }; CHUNK];
    let mut n = 0;
    let mut pool: Option<NonNull<Shared>> = None;
    for m in v.drain(start..) {
        let m = ManuallyDrop::new(m);
        if n == CHUNK || pool.is_some_and(|p| p != m.pool) {
            if let Some(p) = pool {
                // SAFETY: the mbufs whose buffers these are were consumed (ManuallyDrop,
                // never dropped), so we own the buffers; their pool is live.
                unsafe { put_raw(p, &bufs[..n]) };
            }
            n = 0;
        }
        pool = Some(m.pool);
        bufs[n] = m.buf;
        n += 1;
    }
    if let Some(p) = pool {
        // SAFETY: as above.
        unsafe { put_raw(p, &bufs[..n]) };
    }
}

/// A reusable burst of mbufs (a `Vec` with its capacity kept across bursts): fill it
/// with [`MbufBurst::alloc`] or a port's receive, use it as a slice, give it back with
/// [`MbufBurst::free_all`]. Dropping it frees what it holds.
#[derive(Debug)]
pub struct MbufBurst {
    v: Vec<Mbuf>,
}

impl MbufBurst {
    /// An empty burst with room for `cap` mbufs (the only allocation).
    pub fn with_capacity(cap: usize) -> Self {
        MbufBurst {
            v: Vec::with_capacity(cap),
        }
    }

    /// Appends `n` fresh mbufs from `pool`, all or none. No allocation within the
    /// capacity.
    #[inline]
    pub fn alloc(&mut self, pool: &crate::mempool::Mempool, n: usize) -> bool {
        pool.alloc_bulk(&mut self.v, n)
    }

    /// Frees every mbuf held (bulk, through the caller's caches).
    #[inline]
    pub fn free_all(&mut self) {
        free_bulk(&mut self.v);
    }

    /// The underlying vector (push received mbufs, drain sent ones).
    #[inline]
    pub fn vec_mut(&mut self) -> &mut Vec<Mbuf> {
        &mut self.v
    }

    /// True if every mbuf in the burst comes from the same pool.
    pub fn single_pool(&self) -> bool {
        self.v.windows(2).all(|w| w[0].same_pool(&w[1]))
    }
}

impl core::ops::Deref for MbufBurst {
    type Target = [Mbuf];
    fn deref(&self) -> &[Mbuf] {
        &self.v
    }
}

impl core::ops::DerefMut for MbufBurst {
    fn deref_mut(&mut self) -> &mut [Mbuf] {
        &mut self.v
    }
}

impl Drop for MbufBurst {
    fn drop(&mut self) {
        self.free_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mempool::{Mempool, MempoolConfig};
    use proptest::prelude::*;

    #[test]
    fn append_read_free() {
        let p = Mempool::heap(16, 256).unwrap();
        let mut m = p.alloc().unwrap();
        assert_eq!((m.headroom(), m.data_len(), m.tailroom()), (128, 0, 128));
        m.extend_from_slice(b"hello").unwrap();
        m.prepend(2).unwrap().copy_from_slice(b">>");
        assert_eq!(m.data(), b">>hello");
        assert_eq!(m.pkt_len(), 7);
        let mut out = [0u8; 4];
        assert_eq!(m.copy_out(1, &mut out), 4);
        assert_eq!(&out, b">hel");
        assert_eq!(m.copy_out(6, &mut out), 1);
        assert_eq!(
            m.data_region_offset(),
            m.buf_offset() + 126,
            "data offset in the region"
        );
        m.set_port(3);
        m.set_queue(1);
        m.set_timestamp(42);
        m.set_user(7);
        assert_eq!(
            (m.port(), m.queue(), m.timestamp(), m.user()),
            (3, 1, 42, 7)
        );
        m.reset();
        assert_eq!((m.headroom(), m.data_len(), m.port()), (128, 0, 0));
        assert_eq!(p.available(), 15);
        m.free();
        assert_eq!(p.available(), 16);
    }

    #[test]
    fn limits_are_typed_errors() {
        let mut cfg = MempoolConfig::new(8, 64);
        cfg.headroom = 16;
        let p = Mempool::heap_with(cfg).unwrap();
        let mut m = p.alloc().unwrap();
        assert_eq!(
            m.prepend(17).unwrap_err(),
            MbufError::NoHeadroom { want: 17, have: 16 }
        );
        assert_eq!(
            m.append(49).unwrap_err(),
            MbufError::NoTailroom { want: 49, have: 48 }
        );
        assert_eq!(
            m.adj(1).unwrap_err(),
            MbufError::TooShort { want: 1, have: 0 }
        );
        assert!(m.trim(1).is_err());
        assert!(m.set_data(60, 5).is_err());
        m.set_data(0, 64).unwrap();
        assert_eq!((m.headroom(), m.tailroom()), (0, 0));
    }

    #[test]
    fn raw_round_trip_and_bulk() {
        let p = Mempool::heap(64, 256).unwrap();
        let m = p.alloc().unwrap();
        let b = m.into_raw();
        assert_eq!(p.available(), 63);
        // SAFETY: b was just given up by its mbuf and is owned here.
        let m = unsafe { p.mbuf_from_raw(b) }.unwrap();
        assert_eq!(m.buf(), b);
        drop(m);
        let q = Mempool::heap(8, 256).unwrap();
        let mut v = Vec::with_capacity(200);
        assert!(p.alloc_bulk(&mut v, 64));
        assert!(!p.alloc_bulk(&mut v, 1));
        assert!(q.alloc_bulk(&mut v, 8));
        assert!(!q.alloc_bulk(&mut v, 1), "all or none leaves v as it was");
        assert_eq!(v.len(), 72);
        assert_eq!((p.available(), q.available()), (0, 0));
        // Interleave pools so free_bulk has several runs.
        v.swap(3, 70);
        free_bulk(&mut v);
        assert!(v.is_empty() && v.capacity() >= 72);
        assert_eq!((p.available(), q.available()), (64, 8));
        let mut burst = MbufBurst::with_capacity(32);
        assert!(burst.alloc(&p, 32));
        assert!(burst.single_pool());
        burst[0].extend_from_slice(b"x").unwrap();
        assert_eq!(burst.len(), 32);
        drop(burst);
        assert_eq!(p.available(), 64);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Prepend(usize),
        Append(usize, u8),
        Adj(usize),
        Trim(usize),
        Write(usize, u8),
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// adj/trim/prepend/append against a Vec<u8> model with explicit head/tail room.
        #[test]
        fn matches_vec_model(ops in proptest::collection::vec(prop_oneof![
            (0usize..80).prop_map(Op::Prepend),
            (0usize..80, any::<u8>()).prop_map(|(n, b)| Op::Append(n, b)),
            (0usize..80).prop_map(Op::Adj),
            (0usize..80).prop_map(Op::Trim),
            (0usize..300, any::<u8>()).prop_map(|(i, b)| Op::Write(i, b)),
        ], 1..60)) {
            let mut cfg = MempoolConfig::new(8, 256);
            cfg.headroom = 64;
            let p = Mempool::heap_with(cfg).unwrap();
            let mut m = p.alloc().unwrap();
            let mut model: Vec<u8> = Vec::new();
            let mut head = 64usize;
            for op in ops {
                match op {
                    Op::Prepend(n) => {
                        let r = m.prepend(n);
                        if n <= head {
                            r.unwrap().fill(0xAA);
                            head -= n;
                            model.splice(0..0, core::iter::repeat_n(0xAA, n));
                        } else {
                            prop_assert!(r.is_err());
                        }
                    }
                    Op::Append(n, b) => {
                        let room = 256 - head - model.len();
                        let r = m.append(n);
                        if n <= room {
                            r.unwrap().fill(b);
                            model.extend(core::iter::repeat_n(b, n));
                        } else {
                            prop_assert!(r.is_err());
                        }
                    }
                    Op::Adj(n) => {
                        let r = m.adj(n);
                        if n <= model.len() {
                            r.unwrap();
                            model.drain(..n);
                            head += n;
                        } else {
                            prop_assert!(r.is_err());
                        }
                    }
                    Op::Trim(n) => {
                        let r = m.trim(n);
                        if n <= model.len() {
                            r.unwrap();
                            model.truncate(model.len() - n);
                        } else {
                            prop_assert!(r.is_err());
                        }
                    }
                    Op::Write(i, b) => {
                        if !model.is_empty() {
                            let i = i % model.len();
                            m.data_mut()[i] = b;
                            model[i] = b;
                        }
                    }
                }
                prop_assert_eq!(m.data(), &model[..]);
                prop_assert_eq!(m.pkt_len(), model.len());
                prop_assert_eq!(m.headroom(), head);
                prop_assert_eq!(m.tailroom(), 256 - head - model.len());
            }
        }
    }
}
