//! [`PostedQueuePair`]: one queue pair of the `posted` ring mode (GUIDE.md section 3).
//!
//! The pair is symmetric: on each side, TX is a [`PostedTx`] over (our tx area, the
//! peer's rx area) and RX is a [`PostedRx`] over (our rx area, the peer's tx area), so
//! the same type serves the frontend and the backend.
//!
//! ```text
//!          side A                                         side B
//!  +---------------------+   slots + payload (A writes)   +---------------------+
//!  | A.tx: credits,      | -----------------------------> | B.rx: slots,        |
//!  |   consumed  <-------|--- credits + consumed (B) ---- |   buffers           |
//!  | A.rx: slots,        | <----------------------------- | B.tx: credits,      |
//!  |   buffers           | ---- credits + consumed (A) -->|   consumed          |
//!  +---------------------+                                +---------------------+
//!  PostedTx(A.tx, B.rx)  PostedRx(A.rx, B.tx)   PostedTx(B.tx, A.rx)  PostedRx(B.rx, A.tx)
//! ```
//!
//! Every word a side reads lives in its own two areas; the other two are only written.
//!
//! # Buffer ownership
//!
//! - RX: a packet from [`rx_burst`](PostedQueuePair::rx_burst) is the application's
//!   until it is freed, with [`free`](PostedQueuePair::free) on the polling lcore or a
//!   [`PktReturner`] from any thread. Its payload is read in place in the local rx area
//!   ([`rx_mem`](PostedQueuePair::rx_mem)). A buffered packet's buffer goes back to the
//!   sender as a credit; an inline packet pins its slot, and slots are released in
//!   ring order, so a held inline packet holds back the release of every later slot
//!   (the sender stalls after `slots` messages if one is never freed).
//! - TX zero-copy: a [`TxSlot`] from [`alloc_tx`](PostedQueuePair::alloc_tx) is a
//!   credited buffer in the peer's memory, ours until
//!   [`tx_commit`](PostedQueuePair::tx_commit) (then the peer's) or
//!   [`tx_cancel`](PostedQueuePair::tx_cancel). Never write it after the commit.
//! - TX copying: [`tx_burst`](PostedQueuePair::tx_burst) copies each payload once;
//!   the caller's slices are free again when it returns.
//!
//! # Per-burst order (edges P1/P2 of `rings::posted`)
//!
//! payload copies ([`CopyFn::copy`]) -> slot bodies -> [`CopyFn::fence`] -> one
//! `publish` (its Release fence, then the lap tags). RX: one `poll`; the frees of a
//! burst are batched into one `grant` (one credit store per buffer) and one `complete`
//! (one store of `consumed`).

use std::ptr::NonNull;
use std::sync::Arc;

use rings::pool::IndexRing;
use rings::posted::{PostedLayout, PostedRx, PostedTx, RxKind, RxMsg, TxBuf};
use rings::{Mem, RingError};

use super::{
    ring_doorbell, Bits, CopyFn, PeerDoorbell, PlainCopy, QueueError, SideAreas, DEFAULT_BURST,
    MAX_BURST,
};

/// Handle bit: the packet is inline in a slot (the low bits are the slot index);
/// otherwise the low bits are the receive buffer index.
const HANDLE_INLINE: u32 = 1 << 31;

/// Names a received packet until it is freed. Plain `u32` inside (bit 31: inline slot,
/// low bits: slot or buffer index), so it travels through [`PktReturner`] rings.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PktHandle(u32);

impl PktHandle {
    /// The raw value (for storing in an mbuf).
    #[inline]
    pub fn raw(self) -> u32 {
        self.0
    }
    /// A handle from a raw value (validated when freed).
    #[inline]
    pub fn from_raw(raw: u32) -> Self {
        PktHandle(raw)
    }
    /// True if the payload is inline in a slot (its slot is released in ring order).
    #[inline]
    pub fn is_inline(self) -> bool {
        self.0 & HANDLE_INLINE != 0
    }
}

/// One received packet, in place in the local rx area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxPkt {
    /// Give it back with [`PostedQueuePair::free`] or a [`PktReturner`].
    pub handle: PktHandle,
    /// Offset of the first payload byte in the local rx area
    /// ([`PostedQueuePair::rx_mem`]).
    pub off: usize,
    /// Payload length (validated against the slot or buffer).
    pub len: u32,
    /// The sender's 16-bit user field.
    pub meta: u16,
}

/// The memory a queue's received packets live in: turns many [`RxPkt`]s into
/// pointers with no call per packet (see `QueuePair::rx_area`). Valid as long as the
/// queue pair that handed it out.
#[derive(Clone, Copy, Debug)]
pub struct RxArea {
    base: NonNull<u8>,
    len: usize,
}

impl RxArea {
    /// The area of a whole [`Mem`].
    pub fn of<M: Mem>(m: &M) -> Result<RxArea, rings::MemError> {
        Ok(RxArea {
            base: m.range_ptr(0, m.size())?,
            len: m.size(),
        })
    }

    /// Pointer to `pkt`'s first byte; `None` if `pkt` does not lie inside the area
    /// (never for a packet this queue's `rx_burst` returned).
    #[inline(always)]
    pub fn ptr(&self, pkt: &RxPkt) -> Option<NonNull<u8>> {
        let end = pkt.off.checked_add(pkt.len as usize)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `off <= end <= len`, and `base..base + len` is one mapped range
        // (from `range_ptr(0, size)`), so the result is inside it or one past its end.
        Some(unsafe { self.base.add(pkt.off) })
    }
}

/// A credited buffer in the peer's memory, handed out by
/// [`PostedQueuePair::alloc_tx`] for a zero-copy send.
///
/// Write the payload through [`PostedQueuePair::tx_write`] (checked, counted), or
/// through [`ptr`](Self::ptr) (raw; report the bytes with the remote `Mem`'s
/// `note_write` when it is instrumented), then [`PostedQueuePair::tx_commit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxSlot {
    index: u32,
    off: usize,
    cap: u32,
    ptr: NonNull<u8>,
}

impl Default for TxSlot {
    /// An empty placeholder (capacity 0, dangling pointer) for output arrays.
    fn default() -> Self {
        TxSlot {
            index: u32::MAX,
            off: 0,
            cap: 0,
            ptr: NonNull::dangling(),
        }
    }
}

impl TxSlot {
    /// A slot for the queue implementations of this module tree.
    pub(crate) fn new(index: u32, off: usize, cap: u32, ptr: NonNull<u8>) -> Self {
        TxSlot {
            index,
            off,
            cap,
            ptr,
        }
    }
    /// Receive buffer index in the peer's rx area.
    #[inline]
    pub fn index(&self) -> u32 {
        self.index
    }
    /// Offset of the buffer in the peer's rx area.
    #[inline]
    pub fn offset(&self) -> usize {
        self.off
    }
    /// Capacity in bytes.
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.cap
    }
    /// Pointer to the `capacity` bytes of the buffer (from `Mem::range_ptr`). Valid
    /// while the queue lives; writing through it is `unsafe` at the use site and
    /// allowed only until the slot is committed or cancelled.
    #[inline]
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

/// Returns packet handles to their queue from any thread (mbufs freed on another
/// lcore). Lock-free MPMC ring of handles ([`IndexRing`], bulk operations);
/// [`PostedQueuePair::rx_burst`] drains it.
///
/// Use [`PostedQueuePair::free`] on the lcore that polls the queue (no atomics at
/// all); use a returner only from other threads (a CAS and a Release store per call).
#[derive(Clone, Debug)]
pub struct PktReturner {
    ring: Arc<IndexRing>,
}

impl PktReturner {
    /// A returner over `ring` (the queue drains it at its next `rx_burst`).
    pub(crate) fn new(ring: Arc<IndexRing>) -> Self {
        PktReturner { ring }
    }
    /// Queues `pkts` for freeing at the next `rx_burst`. All or nothing: `false` only
    /// when the ring is full, which valid handles cannot cause (it holds every handle
    /// that can be outstanding at once), so `false` means double frees.
    pub fn put(&self, pkts: &[PktHandle]) -> bool {
        self.ring.enqueue_bulk(bytemuck::cast_slice(pkts))
    }
}

/// Per-queue counters (plain fields: the queue is used by one lcore).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets published.
    pub tx_packets: u64,
    /// Payload bytes published.
    pub tx_bytes: u64,
    /// Transmit bursts that published at least one packet.
    pub tx_bursts: u64,
    /// Transmit calls that accepted fewer packets than asked (credits or slots).
    pub tx_backpressure: u64,
    /// Transmit bursts sent as replies and demoted to the shared cache (see
    /// [`PostedQueuePair::tx_burst`]).
    pub tx_demoted: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Payload bytes received.
    pub rx_bytes: u64,
    /// `rx_burst` calls that returned packets.
    pub rx_bursts: u64,
    /// `rx_burst` calls that returned none.
    pub rx_empty_polls: u64,
    /// Packets freed.
    pub rx_freed: u64,
    /// Handles refused by `free` or the returner (double frees, foreign handles).
    pub bad_frees: u64,
    /// Peer protocol violations seen (each one broke the queue).
    pub peer_violations: u64,
    /// Doorbells rung for the peer (it asked: [`QueuePair::enable_rx_notify`](super::QueuePair::enable_rx_notify)).
    pub doorbells: u64,
    /// Doorbells that failed to ring (the packets were published all the same).
    pub doorbell_errors: u64,
}

/// One queue pair of the posted ring mode: see the [module docs](self).
///
/// `L` is the local memory (our tx and rx areas), `R` the remote memory (the peer's),
/// `C` the copy routine of [`tx_burst`](Self::tx_burst).
pub struct PostedQueuePair<L: Mem, R: Mem, C: CopyFn = PlainCopy> {
    tx: PostedTx<L, R>,
    rx: PostedRx<L, R>,
    copy: C,
    layout: PostedLayout,
    mask: u32,
    max_burst: usize,
    // ---- receive ----
    msgs: Box<[RxMsg]>,
    /// Slot position of the next polled message (mirrors the ring's cursor).
    poll_pos: u32,
    /// Slot positions `< rel_pos` were released to the ring (mirrors `released`).
    rel_pos: u32,
    /// Per slot index: polled, done with, not yet released (waits for the prefix).
    slot_done: Bits,
    /// Per slot index: an inline packet the application holds.
    slot_held: Bits,
    /// Per buffer index: a buffered packet the application holds.
    buf_held: Bits,
    /// Buffers freed since the last grant (capacity `buffers`: never reallocates).
    grants: Vec<u32>,
    returns: Arc<IndexRing>,
    ret_scratch: Box<[u32]>,
    // ---- transmit ----
    /// Outstanding zero-copy buffers by buffer index.
    tx_bufs: Box<[Option<TxBuf>]>,
    /// The buffered run of a copying burst (capacity `max_burst`).
    run: Vec<TxBuf>,
    stats: QueueStats,
    /// `stats.rx_packets` and `stats.rx_empty_polls` at the last publish (for
    /// [`is_reply`](Self::is_reply)).
    at_publish: (u64, u64),
    /// The peer's doorbell, if it may sleep ([`QueuePair::set_peer_doorbell`](super::QueuePair::set_peer_doorbell)).
    peer_db: PeerDoorbell,
    broken: bool,
}

impl<L: Mem, R: Mem> PostedQueuePair<L, R, PlainCopy> {
    /// Attaches a queue pair with the plain copy; see [`with_copy`](Self::with_copy).
    pub fn new(
        areas: SideAreas<L, R>,
        layout: PostedLayout,
        max_burst: usize,
    ) -> Result<Self, QueueError> {
        Self::with_copy(areas, layout, max_burst, PlainCopy)
    }
}

impl<L: Mem, R: Mem, C: CopyFn> PostedQueuePair<L, R, C> {
    /// Attaches a queue pair over `areas` (same `layout` both ways) and grants every
    /// receive buffer to the peer as a credit (the credit state is ours, process-local:
    /// each side's RX grants its own credits when it attaches).
    ///
    /// Our local areas must be zeroed (a fresh window, [`crate::queue::PostedLinkLayout`]
    /// does it) before the peer writes into them. `max_burst` is clamped to
    /// `1..=`[`MAX_BURST`]; 0 means [`DEFAULT_BURST`].
    pub fn with_copy(
        areas: SideAreas<L, R>,
        layout: PostedLayout,
        max_burst: usize,
        copy: C,
    ) -> Result<Self, QueueError> {
        let mut q = Self::with_copy_stopped(areas, layout, max_burst, copy)?;
        q.start()?;
        Ok(q)
    }

    /// As [`with_copy`](Self::with_copy) but grants no credits: nothing is written to
    /// the peer's memory until [`start`](Self::start). A port uses it to attach while
    /// the peer's side may still hold an older session's state (it resets first, and
    /// starts once the control-plane handshake says the peer has reset too).
    pub fn with_copy_stopped(
        areas: SideAreas<L, R>,
        layout: PostedLayout,
        max_burst: usize,
        copy: C,
    ) -> Result<Self, QueueError> {
        let SideAreas {
            local_tx,
            local_rx,
            remote_tx,
            remote_rx,
        } = areas;
        let max_burst = if max_burst == 0 {
            DEFAULT_BURST
        } else {
            max_burst.min(MAX_BURST)
        };
        let tx = PostedTx::new(local_tx, remote_rx, layout)?;
        let rx = PostedRx::new(local_rx, remote_tx, layout)?;
        // Every handle the application can hold at once: one per slot (inline) plus
        // one per buffer.
        let returns = Arc::new(IndexRing::new(layout.slots() + layout.buffers().max(1))?);
        let cap = returns.capacity() as usize;
        Ok(PostedQueuePair {
            tx,
            rx,
            copy,
            layout,
            mask: layout.slots() - 1,
            max_burst,
            msgs: vec![RxMsg::default(); max_burst].into_boxed_slice(),
            poll_pos: 0,
            rel_pos: 0,
            slot_done: Bits::new(layout.slots()),
            slot_held: Bits::new(layout.slots()),
            buf_held: Bits::new(layout.buffers()),
            grants: Vec::with_capacity(layout.buffers() as usize),
            returns,
            ret_scratch: vec![0u32; cap].into_boxed_slice(),
            tx_bufs: (0..layout.buffers()).map(|_| None).collect(),
            run: Vec::with_capacity(max_burst),
            stats: QueueStats::default(),
            at_publish: (0, 0),
            peer_db: None,
            broken: false,
        })
    }

    /// Grants every receive buffer not yet credited (done by the constructor; call it
    /// again after [`reset`](Self::reset) once the peer has reset too).
    pub fn start(&mut self) -> Result<(), QueueError> {
        let r = self.rx.init_credits();
        self.ring(r)
    }

    /// The ring geometry (both directions).
    #[inline]
    pub fn layout(&self) -> &PostedLayout {
        &self.layout
    }
    /// Largest burst one call handles.
    #[inline]
    pub fn max_burst(&self) -> usize {
        self.max_burst
    }
    /// The counters.
    #[inline]
    pub fn stats(&self) -> QueueStats {
        self.stats
    }
    /// The local rx area: received payloads are at [`RxPkt::off`] here.
    #[inline]
    pub fn rx_mem(&self) -> &L {
        self.rx.local()
    }
    /// The peer's rx area (remote): zero-copy payloads go at [`TxSlot::offset`] here.
    #[inline]
    pub fn tx_mem(&self) -> &R {
        self.tx.remote()
    }
    /// The peer's tx area (remote; we write credits and `consumed` there).
    #[inline]
    pub fn credit_mem(&self) -> &R {
        self.rx.remote()
    }
    /// Our tx area (local; the peer writes credits there).
    #[inline]
    pub fn local_tx_mem(&self) -> &L {
        self.tx.local()
    }
    /// The copy routine.
    #[inline]
    pub fn copier(&self) -> &C {
        &self.copy
    }
    /// True after a peer violation, until [`reset`](Self::reset).
    #[inline]
    pub fn is_broken(&self) -> bool {
        self.broken || self.tx.is_broken() || self.rx.is_broken()
    }
    /// A handle-return path for other threads.
    pub fn returner(&self) -> PktReturner {
        PktReturner::new(self.returns.clone())
    }
    /// Slots polled but not yet released to the sender (held inline packets and every
    /// slot after the first of them).
    pub fn slots_unreleased(&self) -> u32 {
        self.poll_pos.wrapping_sub(self.rel_pos)
    }
    /// Credits (free peer buffers) cached for sending.
    pub fn tx_credits(&self) -> u32 {
        self.tx.credits_held()
    }

    /// Maps a ring result, counting a peer violation and breaking the queue.
    #[inline]
    fn ring<T>(&mut self, r: Result<T, RingError>) -> Result<T, QueueError> {
        r.map_err(|e| {
            if e.is_peer_violation() {
                self.broken = true;
                self.stats.peer_violations += 1;
            }
            QueueError::Ring(e)
        })
    }

    #[inline]
    fn check_broken(&self) -> Result<(), QueueError> {
        if self.is_broken() {
            return Err(QueueError::Ring(RingError::Broken));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- receive ----

    /// Receives up to `out.len()` (at most [`max_burst`](Self::max_burst)) packets in
    /// place: one `poll` of the ring (local loads only). Frees queued by other threads
    /// ([`PktReturner`]) and pending releases are flushed first.
    pub fn rx_burst(&mut self, out: &mut [RxPkt]) -> Result<usize, QueueError> {
        self.check_broken()?;
        self.drain_returns();
        self.flush()?;
        let want = out.len().min(self.max_burst);
        let r = self.rx.poll(&mut self.msgs[..want]);
        let n = self.ring(r)?;
        if n == 0 {
            self.stats.rx_empty_polls += 1;
            return Ok(0);
        }
        let mut bytes = 0u64;
        for (m, o) in self.msgs[..n].iter().zip(out.iter_mut()) {
            let slot = self.poll_pos & self.mask;
            self.poll_pos = self.poll_pos.wrapping_add(1);
            let handle = match m.kind {
                RxKind::Inline { .. } => {
                    // The slot holds the payload until the application frees it.
                    self.slot_held.set(slot, true);
                    PktHandle(HANDLE_INLINE | slot)
                }
                RxKind::Buffer { index, .. } => {
                    // The payload is in the buffer: the slot itself is done now.
                    self.slot_done.set(slot, true);
                    self.buf_held.set(index, true);
                    PktHandle(index)
                }
            };
            *o = RxPkt {
                handle,
                off: m.payload_off(),
                len: m.len,
                meta: m.meta,
            };
            bytes += m.len as u64;
        }
        self.stats.rx_packets += n as u64;
        self.stats.rx_bytes += bytes;
        self.stats.rx_bursts += 1;
        Ok(n)
    }

    /// Frees received packets (any order, any subset): their buffers go back to the
    /// peer as credits in one batch, their slots are released up to the longest freed
    /// prefix, and `consumed` is written once. Handles not held are skipped and
    /// reported (the first one) after the valid ones are freed.
    pub fn free(&mut self, pkts: &[PktHandle]) -> Result<(), QueueError> {
        self.check_broken()?;
        let mut bad = None;
        for &h in pkts {
            if !self.mark_free(h) {
                self.stats.bad_frees += 1;
                bad.get_or_insert(h.0);
            }
        }
        self.flush()?;
        match bad {
            Some(raw) => Err(QueueError::BadHandle { raw }),
            None => Ok(()),
        }
    }

    /// Records one free; false if the handle is not held.
    #[inline]
    fn mark_free(&mut self, h: PktHandle) -> bool {
        if h.is_inline() {
            let slot = h.0 & !HANDLE_INLINE;
            if slot > self.mask || !self.slot_held.get(slot) {
                return false;
            }
            self.slot_held.set(slot, false);
            self.slot_done.set(slot, true);
        } else {
            let index = h.0;
            if index >= self.layout.buffers() || !self.buf_held.get(index) {
                return false;
            }
            self.buf_held.set(index, false);
            // Cannot exceed capacity: each buffer is held at most once.
            self.grants.push(index);
        }
        self.stats.rx_freed += 1;
        true
    }

    /// Frees the handles other threads queued.
    fn drain_returns(&mut self) {
        if self.returns.is_empty() {
            return;
        }
        let n = self.returns.dequeue_burst(&mut self.ret_scratch);
        for i in 0..n {
            let h = PktHandle(self.ret_scratch[i]);
            if !self.mark_free(h) {
                self.stats.bad_frees += 1;
            }
        }
    }

    /// One grant for every freed buffer, release of the longest done prefix of slots,
    /// one `complete` (a store only if `consumed` moved).
    fn flush(&mut self) -> Result<(), QueueError> {
        if !self.grants.is_empty() {
            let r = self.rx.grant(&self.grants);
            self.grants.clear();
            self.ring(r)?;
        }
        let pending = self.poll_pos.wrapping_sub(self.rel_pos);
        let mut k = 0;
        while k < pending {
            let slot = self.rel_pos.wrapping_add(k) & self.mask;
            if !self.slot_done.get(slot) {
                break;
            }
            self.slot_done.set(slot, false);
            k += 1;
        }
        if k > 0 {
            let r = self.rx.release_slots(k);
            self.ring(r)?;
            self.rel_pos = self.rel_pos.wrapping_add(k);
        }
        let r = self.rx.complete();
        self.ring(r)
    }

    // --------------------------------------------------------------- transmit ----

    /// Copying transmit: copies each payload once, inline into its slot when it fits
    /// (`len <= slot_size - 16`), else into a credited buffer in the peer's memory
    /// with the [`CopyFn`]. One publish for the burst. Returns how many packets (a
    /// prefix of `pkts`, at most [`max_burst`](Self::max_burst)) were accepted; fewer
    /// than asked is back-pressure (out of credits or slots), not an error.
    ///
    /// Store order: for each run of buffered packets, all payload copies, then their
    /// slot bodies (an inline packet writes its payload and body together); then
    /// [`CopyFn::fence`]; then one publish (Release fence, lap tags).
    ///
    /// A reply (at most 4 packets, sent after this side received something it had
    /// waited for since its last send: a ping-pong, an echo, an RPC) is then demoted
    /// ([`Mem::demote`]): its slot lines leave this core's private caches, so the
    /// peer, polling for them, takes them from the shared cache instead of snooping
    /// this core once per line. A stream never is (counted in
    /// [`QueueStats::tx_demoted`]).
    ///
    /// A payload over the buffer size is [`QueueError::TooLarge`] if it is the first;
    /// otherwise the packets before it are sent and the count says where it stopped.
    pub fn tx_burst(&mut self, pkts: &[&[u8]], meta: u16) -> Result<usize, QueueError> {
        self.check_broken()?;
        let want = pkts.len().min(self.max_burst);
        let inline_cap = self.layout.inline_capacity() as usize;
        let buffered = pkts[..want].iter().filter(|p| p.len() > inline_cap).count();
        self.refill_credits(buffered)?;
        let max = self.max_len();
        let mut i = 0;
        let mut bytes = 0u64;
        let mut result = Ok(());
        while i < want {
            let p = pkts[i];
            if p.len() <= inline_cap {
                let r = self.tx.enqueue_inline(p, meta);
                match self.ring(r) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
                bytes += p.len() as u64;
                i += 1;
                continue;
            }
            if p.len() > max {
                if i == 0 {
                    result = Err(QueueError::TooLarge { len: p.len(), max });
                }
                break;
            }
            // A run of buffered packets: all copies first, then all slot bodies.
            let start = i;
            let mut short = false;
            while i < want && pkts[i].len() > inline_cap && pkts[i].len() <= max {
                let r = self.tx.alloc();
                let buf = match self.ring(r) {
                    Ok(Some(b)) => b,
                    Ok(None) => {
                        short = true;
                        break;
                    }
                    Err(e) => {
                        result = Err(e);
                        short = true;
                        break;
                    }
                };
                if let Err(e) = self.copy.copy(self.tx.remote(), buf.offset(), pkts[i]) {
                    let _ = self.tx.cancel(buf);
                    result = Err(e.into());
                    short = true;
                    break;
                }
                self.run.push(buf);
                i += 1;
            }
            let mut committed = start;
            let mut run = std::mem::take(&mut self.run);
            let mut drain = run.drain(..);
            for buf in drain.by_ref() {
                let len = pkts[committed].len();
                let r = self.tx.enqueue(buf, len as u32, meta);
                if let Err(e) = self.ring(r) {
                    result = Err(e);
                    break;
                }
                bytes += len as u64;
                committed += 1;
            }
            // Only after an enqueue error: give the rest back (best effort).
            for buf in drain {
                let _ = self.tx.cancel(buf);
            }
            self.run = run;
            i = committed;
            if short || result.is_err() {
                break;
            }
        }
        let published = self.publish(i, bytes)?;
        if published < pkts.len() && result.is_ok() {
            self.stats.tx_backpressure += 1;
        }
        result.map(|()| published)
    }

    /// Largest payload the layout carries.
    #[inline]
    fn max_len(&self) -> usize {
        if self.layout.buffers() == 0 {
            self.layout.inline_capacity() as usize
        } else {
            self.layout.buf_size() as usize
        }
    }

    /// Is a send of `n` packets now a reply: a few packets, after something arrived
    /// that this side had waited for (`DEMOTE_AFTER_EMPTY` empty polls or more)
    /// since its last send? Then the peer is polling for them and this side will
    /// wait again: the time [`demote`](Self::demote) costs is idle time here, and
    /// it saves the peer a snoop of this core per line. Never true on a stream
    /// (nothing received, or bursts over `DEMOTE_MAX`).
    fn is_reply(&self, n: usize) -> bool {
        let st = &self.stats;
        n <= DEMOTE_MAX
            && st.rx_packets != self.at_publish.0
            && st.rx_empty_polls.wrapping_sub(self.at_publish.1) >= DEMOTE_AFTER_EMPTY
    }

    /// Demotes the `n` slots just published. Out of line: a stream never calls it.
    #[inline(never)]
    fn demote(&mut self, n: usize) {
        self.stats.tx_demoted += 1;
        self.tx.demote_published(n as u32);
    }

    /// The copy engine's fence, then one publish; counts `n` packets of `bytes`.
    fn publish(&mut self, n: usize, bytes: u64) -> Result<usize, QueueError> {
        if n == 0 {
            return Ok(0);
        }
        // Orders non-temporal payload stores before the ring's Release fence and lap
        // tags (P1); a no-op for plain stores.
        self.copy.fence();
        let r = self.tx.publish();
        self.ring(r)?;
        if self.is_reply(n) {
            self.demote(n);
        }
        self.at_publish = (self.stats.rx_packets, self.stats.rx_empty_polls);
        self.stats.tx_packets += n as u64;
        self.stats.tx_bytes += bytes;
        self.stats.tx_bursts += 1;
        if self.peer_db.is_some() {
            let r = self.tx.needs_notify();
            let due = self.ring(r)?;
            ring_doorbell(&self.peer_db, due, &mut self.stats);
        }
        Ok(n)
    }

    /// Asks the peer to ring our doorbell when it publishes the next packet for us;
    /// true when one is already waiting (poll instead of sleeping). See
    /// [`QueuePair::enable_rx_notify`](super::QueuePair::enable_rx_notify).
    pub fn enable_rx_notify(&mut self) -> Result<bool, QueueError> {
        self.check_broken()?;
        let r = self.rx.set_notification(true);
        self.ring(r)
    }

    /// The peer's doorbell; see [`QueuePair::set_peer_doorbell`](super::QueuePair::set_peer_doorbell).
    pub fn set_peer_doorbell(&mut self, db: PeerDoorbell) {
        self.peer_db = db;
    }

    /// Stops asking for doorbells (we poll again).
    pub fn disable_rx_notify(&mut self) -> Result<(), QueueError> {
        self.check_broken()?;
        let r = self.rx.set_notification(false);
        self.ring(r).map(drop)
    }

    /// Reads every credit the receiver granted since the last poll; returns the credits
    /// now cached. The transmit calls do this by themselves when a burst needs more
    /// credits than are cached.
    pub fn poll_credits(&mut self) -> Result<usize, QueueError> {
        self.check_broken()?;
        let r = self.tx.poll_credits();
        self.ring(r)
    }

    /// Reads newly granted credits, but only when fewer than `needed` are cached: each
    /// poll touches the credit line the receiver writes (a cross-core transfer even
    /// though it is local memory), so a burst that is already covered skips it.
    fn refill_credits(&mut self, needed: usize) -> Result<(), QueueError> {
        if needed > 0 && (self.tx.credits_held() as usize) < needed {
            let r = self.tx.poll_credits();
            self.ring(r)?;
        }
        Ok(())
    }

    /// Zero-copy transmit, step 1: hands out up to `out.len()` (at most
    /// [`max_burst`](Self::max_burst)) credited buffers in the peer's memory. Each
    /// also reserves a slot. Returns how many (0: no credits or no slots).
    pub fn alloc_tx(&mut self, out: &mut [TxSlot]) -> Result<usize, QueueError> {
        self.check_broken()?;
        let want = out.len().min(self.max_burst);
        self.refill_credits(want)?;
        let mut n = 0;
        while n < want {
            let r = self.tx.alloc();
            let Some(buf) = self.ring(r)? else { break };
            let ptr = match self
                .tx
                .remote()
                .range_ptr(buf.offset(), buf.capacity() as usize)
            {
                Ok(p) => p,
                Err(e) => {
                    let _ = self.tx.cancel(buf);
                    return Err(e.into());
                }
            };
            out[n] = TxSlot {
                index: buf.index(),
                off: buf.offset(),
                cap: buf.capacity(),
                ptr,
            };
            if let Some(b) = self.tx_bufs.get_mut(buf.index() as usize) {
                *b = Some(buf);
            }
            n += 1;
        }
        if n < out.len() {
            self.stats.tx_backpressure += 1;
        }
        Ok(n)
    }

    /// Writes `src` at `at` bytes into an outstanding zero-copy slot, through the
    /// [`CopyFn`] (checked against the slot's capacity; counted by instrumented memory).
    pub fn tx_write(&self, slot: &TxSlot, at: usize, src: &[u8]) -> Result<(), QueueError> {
        let live = self
            .tx_bufs
            .get(slot.index as usize)
            .is_some_and(|b| b.as_ref().is_some_and(|b| b.offset() == slot.off));
        let end = at.checked_add(src.len());
        if !live || end.is_none_or(|e| e > slot.cap as usize) {
            return Err(QueueError::BadTxSlot {
                index: slot.index,
                len: end.unwrap_or(usize::MAX).min(u32::MAX as usize) as u32,
            });
        }
        self.copy.copy(self.tx.remote(), slot.off + at, src)?;
        Ok(())
    }

    /// Zero-copy transmit, step 2: sends the slots in the given order, `(slot, len,
    /// meta)` each: slot bodies, then [`CopyFn::fence`], then one publish. Returns how
    /// many were sent. A slot that is not outstanding or a `len` over its capacity
    /// stops the commit there with [`QueueError::BadTxSlot`] (the slots before it are
    /// published; it and the ones after stay outstanding).
    pub fn tx_commit(&mut self, slots: &[(TxSlot, u32, u16)]) -> Result<usize, QueueError> {
        self.check_broken()?;
        let mut n = 0;
        let mut bytes = 0u64;
        let mut result = Ok(());
        for &(slot, len, meta) in slots {
            let entry = self.tx_bufs.get_mut(slot.index as usize);
            let buf = match entry {
                Some(e)
                    if len <= slot.cap && e.as_ref().is_some_and(|b| b.offset() == slot.off) =>
                {
                    e.take()
                }
                _ => None,
            };
            let Some(buf) = buf else {
                result = Err(QueueError::BadTxSlot {
                    index: slot.index,
                    len,
                });
                break;
            };
            let r = self.tx.enqueue(buf, len, meta);
            if let Err(e) = self.ring(r) {
                result = Err(e);
                break;
            }
            bytes += len as u64;
            n += 1;
        }
        let published = self.publish(n, bytes)?;
        result.map(|()| published)
    }

    /// Gives unused zero-copy slots back (their credits return to the cache).
    pub fn tx_cancel(&mut self, slots: &[TxSlot]) -> Result<(), QueueError> {
        for slot in slots {
            let buf = self
                .tx_bufs
                .get_mut(slot.index as usize)
                .and_then(|e| e.take_if(|b| b.offset() == slot.off));
            let Some(buf) = buf else {
                return Err(QueueError::BadTxSlot {
                    index: slot.index,
                    len: 0,
                });
            };
            let r = self.tx.cancel(buf);
            self.ring(r)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ reset ----

    /// Forgets every packet and slot in flight, zeroes the ring words of our local
    /// areas and clears the broken state. Coordinate with the peer (control plane):
    /// both sides reset, then each calls [`start`](Self::start) to grant its credits.
    /// Handles and [`TxSlot`]s handed out before are invalid afterwards.
    pub fn reset(&mut self) -> Result<(), QueueError> {
        self.tx.reset()?;
        self.rx.reset()?;
        self.poll_pos = 0;
        self.rel_pos = 0;
        self.slot_done.clear_all();
        self.slot_held.clear_all();
        self.buf_held.clear_all();
        self.grants.clear();
        while self.returns.dequeue_burst(&mut self.ret_scratch) > 0 {}
        self.tx_bufs.iter_mut().for_each(|b| *b = None);
        self.run.clear();
        self.broken = false;
        Ok(())
    }
}

impl<L: Mem, R: Mem, C: CopyFn> core::fmt::Debug for PostedQueuePair<L, R, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PostedQueuePair")
            .field("layout", &self.layout)
            .field("max_burst", &self.max_burst)
            .field("broken", &self.is_broken())
            .field("stats", &self.stats)
            .finish()
    }
}

/// Empty receive polls since the last send that make the next send a reply
/// ([`PostedQueuePair::is_reply`]).
const DEMOTE_AFTER_EMPTY: u64 = 2;
/// Largest burst that is demoted.
const DEMOTE_MAX: usize = 4;
