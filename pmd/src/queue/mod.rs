//! Poll-mode queues over the rings: the index-based fast path the dataplane's mbuf
//! layer wraps (GUIDE.md sections 3, 4 and 6).
//!
//! - [`posted`]: [`PostedQueuePair`], one queue pair of zerohop's default `posted` ring
//!   mode: a [`rings::posted::PostedTx`] for the direction we send and a
//!   [`rings::posted::PostedRx`] for the direction we receive, with zero-copy receive
//!   ([`PostedQueuePair::rx_burst`] / [`PostedQueuePair::free`]), zero-copy transmit
//!   ([`PostedQueuePair::alloc_tx`] / [`PostedQueuePair::tx_commit`]) and a copying
//!   transmit ([`PostedQueuePair::tx_burst`]) that takes its copy routine as a
//!   [`CopyFn`].
//! - [`layout`]: [`PostedLinkLayout`], which places both sides' areas of N queue pairs
//!   in one window, records them in the window header and opens one side.
//! - [`virtio`]: [`VirtioFrontend`] and [`VirtioBackend`], split and packed (virtio
//!   1.x) queue pairs for the driver and the device role, one implementation over
//!   [`virtio::RingKind`]; [`virtio_layout`]: [`VirtioLinkLayout`] places them in a
//!   window.
//! - [`testpkt`]: test-pattern packets (sequence number + checksum) and a duplex
//!   traffic loop, shared by the tests, benches and tools.
//!
//! `docs/POSTED_PMD.md` has the rules (who owns a buffer when, the per-burst store
//! order) and the measured remote accesses per packet.

use std::sync::Arc;

use rings::{Mem, MemError, RingError};

use crate::notify::Doorbell;

pub mod layout;
pub mod measure;
pub mod posted;
pub mod testpkt;
pub mod virtio;
pub mod virtio_layout;

#[cfg(test)]
mod notify_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod virtio_tests;

pub use layout::{PostedLinkLayout, Side, SideAreas};
pub use posted::{PktHandle, PktReturner, PostedQueuePair, QueueStats, RxArea, RxPkt, TxSlot};
pub use virtio::VirtioGeometry;
pub use virtio::{Packed, PktHeader, RingMode, Split, VirtioAreas, VirtioBackend, VirtioFrontend};
pub use virtio_layout::VirtioLinkLayout;

/// Default burst size (GUIDE.md section 4).
pub const DEFAULT_BURST: usize = 32;
/// Slot size of the posted rings ports build: two cache lines, 112 bytes of inline
/// payload, so a 64-byte packet travels in its slot with no buffer and no credit
/// (measured with `ZEROHOP_BENCH_SLOT=128 cargo bench -p zerohop-benches --bench pmd`:
/// 64 B one-way 20.9 against 18.9 Mpps, ping-pong 320 against 344 ns with 64-byte
/// slots).
pub const POSTED_SLOT_SIZE: u32 = 128;
/// Largest burst a queue accepts.
pub const MAX_BURST: usize = 512;

/// Everything a queue operation can report.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The ring reported an error. Peer violations
    /// ([`RingError::is_peer_violation`]) mark the queue broken; later calls return
    /// `Ring(RingError::Broken)` until [`PostedQueuePair::reset`].
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A payload copy failed (an offset outside the area: a bug, never a peer value).
    #[error("payload copy failed: {0}")]
    Mem(#[from] MemError),
    /// [`PostedQueuePair::free`] (or a [`PktReturner`]) got a handle that is not held
    /// by the application (never handed out, already freed, or from another queue).
    #[error("packet handle {raw:#x} is not held (double free or foreign handle)")]
    BadHandle {
        /// The raw handle.
        raw: u32,
    },
    /// A [`TxSlot`] that is not outstanding (already committed or cancelled, or from
    /// another queue), or a commit length over its capacity.
    #[error("tx slot for buffer {index} is not outstanding, or len {len} exceeds its capacity")]
    BadTxSlot {
        /// Buffer index named by the slot.
        index: u32,
        /// Length asked for.
        len: u32,
    },
    /// A payload that can never be sent on this queue (over the buffer size).
    #[error("payload of {len} bytes exceeds the largest message ({max} bytes)")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Largest payload the layout carries.
        max: usize,
    },
    /// A window layout problem (window too small, header areas not a posted link).
    #[error("posted link layout: {what} ({value})")]
    Layout {
        /// What is wrong.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
    /// Creating or opening the window header failed.
    #[error(transparent)]
    Window(#[from] crate::window::WindowError),
    /// The peer broke the queue pair's protocol above the ring (a split/packed chain
    /// of the wrong shape, a length shorter than the packet header): a peer violation,
    /// the queue is broken until reset.
    #[error("peer protocol violation: {what} ({value})")]
    Protocol {
        /// What is wrong.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
}

impl QueueError {
    /// True if the error means the peer violated the ring protocol (the queue is
    /// broken until reset).
    pub fn is_peer_violation(&self) -> bool {
        match self {
            QueueError::Ring(e) => e.is_peer_violation(),
            QueueError::Protocol { .. } => true,
            _ => false,
        }
    }
}

/// How the copying transmit path moves payload into the peer's memory.
///
/// The non-temporal copy engine (`pmd::copy`) plugs in here; [`PlainCopy`] is the
/// default. The queue calls [`copy`](CopyFn::copy) for every buffered payload of a
/// burst, then writes the slot bodies, then calls [`fence`](CopyFn::fence) once, then
/// publishes the lap tags (GUIDE.md section 4: payload -> descriptor -> fence ->
/// index). Inline payloads (a few dozen bytes inside the slot) are always written with
/// plain stores by the ring itself: non-temporal stores do not pay off at that size.
pub trait CopyFn {
    /// Copies `src` into `mem` at `off`.
    fn copy<M: Mem>(&self, mem: &M, off: usize, src: &[u8]) -> Result<(), MemError>;
    /// Orders every copy made so far before the stores that follow (an `sfence` for
    /// non-temporal stores; nothing for plain stores, which the ring's own Release
    /// fence orders).
    fn fence(&self);
}

/// The default copy: [`Mem::write_bytes`] (plain stores, counted by instrumented
/// memory) and no fence of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlainCopy;

impl CopyFn for PlainCopy {
    #[inline(always)]
    fn copy<M: Mem>(&self, mem: &M, off: usize, src: &[u8]) -> Result<(), MemError> {
        mem.write_bytes(off, src)
    }
    #[inline(always)]
    fn fence(&self) {}
}

/// One queue pair of any ring mode, as a port drives it: zero-copy receive with
/// explicit frees, zero-copy or copying transmit, one publish per burst. Implemented by
/// [`PostedQueuePair`] and by the split/packed (virtio) queue pairs, for both the
/// frontend and the backend role, so ports, tools and tests are written once.
///
/// Receive: [`rx_burst`](QueuePair::rx_burst) returns packets in place; each stays
/// valid (and owned by the caller) until its handle is given back through
/// [`free`](QueuePair::free) or the thread-safe [`returner`](QueuePair::returner).
/// [`rx_ptr`](QueuePair::rx_ptr) gives its bytes. Transmit:
/// [`tx_burst`](QueuePair::tx_burst) copies; [`alloc_tx`](QueuePair::alloc_tx) +
/// [`tx_commit`](QueuePair::tx_commit) build packets in the peer-visible buffers.
pub trait QueuePair: Send {
    /// Receives up to `out.len()` packets; 0 when there are none.
    fn rx_burst(&mut self, out: &mut [RxPkt]) -> Result<usize, QueueError>;
    /// Pointer to the first byte of a received packet (valid until it is freed). The
    /// bytes live in memory the peer can write: copy values out before validating them.
    fn rx_ptr(&self, pkt: &RxPkt) -> Result<core::ptr::NonNull<u8>, QueueError>;
    /// The memory received packets live in, to turn a burst of them into pointers
    /// without a call per packet ([`RxArea::ptr`]).
    fn rx_area(&self) -> Result<RxArea, QueueError>;
    /// Gives received packets back (from the queue's own lcore).
    fn free(&mut self, pkts: &[PktHandle]) -> Result<(), QueueError>;
    /// A handle for freeing received packets from any thread.
    fn returner(&self) -> PktReturner;
    /// Copies each payload once into a peer-visible buffer and publishes the burst;
    /// returns how many were accepted (fewer under back-pressure, never an error for
    /// that).
    fn tx_burst(&mut self, pkts: &[&[u8]], meta: u16) -> Result<usize, QueueError>;
    /// Takes up to `out.len()` empty peer-visible transmit buffers.
    fn alloc_tx(&mut self, out: &mut [TxSlot]) -> Result<usize, QueueError>;
    /// Writes `src` at `at` inside a transmit buffer from `alloc_tx`.
    fn tx_write(&self, slot: &TxSlot, at: usize, src: &[u8]) -> Result<(), QueueError>;
    /// Publishes filled transmit buffers `(slot, len, meta)`; returns how many.
    fn tx_commit(&mut self, slots: &[(TxSlot, u32, u16)]) -> Result<usize, QueueError>;
    /// Gives unused transmit buffers back.
    fn tx_cancel(&mut self, slots: &[TxSlot]) -> Result<(), QueueError>;
    /// Counters.
    fn stats(&self) -> QueueStats;
    /// True once a peer violation broke the queue (reset to use it again).
    fn is_broken(&self) -> bool;
    /// Resets the queue's own state (after the peer is gone or the queue broke).
    fn reset(&mut self) -> Result<(), QueueError>;
    /// Notifications, for a side that would rather sleep than poll: asks the peer to
    /// ring our doorbell ([`crate::notify`]) when it next publishes packets for this
    /// queue. Returns true when packets are already waiting: poll again instead of
    /// sleeping. While we poll, never call it: the peer then rings nothing (virtio
    /// event-idx / flags suppression; posted: the `wake` word).
    fn enable_rx_notify(&mut self) -> Result<bool, QueueError>;
    /// Stops asking for doorbells (after a wake-up, while we poll again).
    fn disable_rx_notify(&mut self) -> Result<(), QueueError>;
    /// The peer's doorbell, rung (at most once per transmit burst) when the peer
    /// asked for it. `None`, the default: never rung, and the peer's request is never
    /// even read.
    fn set_peer_doorbell(&mut self, db: Option<Arc<dyn Doorbell>>);
    /// After a [`reset`](QueuePair::reset) on both sides: makes this side's receive
    /// buffers available to the peer again (posted: grants every credit). The default
    /// does nothing (modes whose reset already republishes their buffers).
    fn start(&mut self) -> Result<(), QueueError> {
        Ok(())
    }
}

impl<L, R, C> QueuePair for PostedQueuePair<L, R, C>
where
    L: Mem + Send,
    R: Mem + Send,
    C: CopyFn + Send,
{
    fn rx_burst(&mut self, out: &mut [RxPkt]) -> Result<usize, QueueError> {
        PostedQueuePair::rx_burst(self, out)
    }
    fn rx_ptr(&self, pkt: &RxPkt) -> Result<core::ptr::NonNull<u8>, QueueError> {
        Ok(self.rx_mem().range_ptr(pkt.off, pkt.len as usize)?)
    }
    fn rx_area(&self) -> Result<RxArea, QueueError> {
        Ok(RxArea::of(self.rx_mem())?)
    }
    fn free(&mut self, pkts: &[PktHandle]) -> Result<(), QueueError> {
        PostedQueuePair::free(self, pkts)
    }
    fn returner(&self) -> PktReturner {
        PostedQueuePair::returner(self)
    }
    fn tx_burst(&mut self, pkts: &[&[u8]], meta: u16) -> Result<usize, QueueError> {
        PostedQueuePair::tx_burst(self, pkts, meta)
    }
    fn alloc_tx(&mut self, out: &mut [TxSlot]) -> Result<usize, QueueError> {
        PostedQueuePair::alloc_tx(self, out)
    }
    fn tx_write(&self, slot: &TxSlot, at: usize, src: &[u8]) -> Result<(), QueueError> {
        PostedQueuePair::tx_write(self, slot, at, src)
    }
    fn tx_commit(&mut self, slots: &[(TxSlot, u32, u16)]) -> Result<usize, QueueError> {
        PostedQueuePair::tx_commit(self, slots)
    }
    fn tx_cancel(&mut self, slots: &[TxSlot]) -> Result<(), QueueError> {
        PostedQueuePair::tx_cancel(self, slots)
    }
    fn stats(&self) -> QueueStats {
        PostedQueuePair::stats(self)
    }
    fn is_broken(&self) -> bool {
        PostedQueuePair::is_broken(self)
    }
    fn reset(&mut self) -> Result<(), QueueError> {
        PostedQueuePair::reset(self)
    }
    fn start(&mut self) -> Result<(), QueueError> {
        PostedQueuePair::start(self)
    }
    fn enable_rx_notify(&mut self) -> Result<bool, QueueError> {
        PostedQueuePair::enable_rx_notify(self)
    }
    fn disable_rx_notify(&mut self) -> Result<(), QueueError> {
        PostedQueuePair::disable_rx_notify(self)
    }
    fn set_peer_doorbell(&mut self, db: Option<Arc<dyn Doorbell>>) {
        PostedQueuePair::set_peer_doorbell(self, db)
    }
}

/// A queue pair's handle on the peer's doorbell.
pub(crate) type PeerDoorbell = Option<Arc<dyn Doorbell>>;

/// Rings `db` if `due`, counting the outcome (a failed ring does not fail the burst:
/// its packets are published).
#[inline]
pub(crate) fn ring_doorbell(db: &PeerDoorbell, due: bool, stats: &mut QueueStats) {
    if let (true, Some(db)) = (due, db) {
        match db.ring() {
            Ok(()) => stats.doorbells += 1,
            Err(_) => stats.doorbell_errors += 1,
        }
    }
}

/// The copy engine: non-temporal stores for large payloads (one `sfence` per burst),
/// plain stores for small ones (see [`crate::copy`]).
impl CopyFn for crate::copy::CopyEngine {
    #[inline(always)]
    fn copy<M: Mem>(&self, mem: &M, off: usize, src: &[u8]) -> Result<(), MemError> {
        self.copy_to(mem, off, src)
    }
    #[inline(always)]
    fn fence(&self) {
        crate::copy::CopyEngine::fence(self)
    }
}

/// A fixed-size bitmap, allocated at construction.
#[derive(Debug)]
pub(crate) struct Bits {
    words: Box<[u64]>,
}

impl Bits {
    pub(crate) fn new(n: u32) -> Self {
        Bits {
            words: vec![0u64; (n as usize).div_ceil(64)].into_boxed_slice(),
        }
    }
    /// Bit `i` (false outside the bitmap).
    #[inline]
    pub(crate) fn get(&self, i: u32) -> bool {
        self.words
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    /// Sets bit `i` to `v` (ignored outside the bitmap).
    #[inline]
    pub(crate) fn set(&mut self, i: u32, v: bool) {
        if let Some(w) = self.words.get_mut(i as usize / 64) {
            if v {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }
    pub(crate) fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }
}
