//! Ports: what an application opens to talk to a peer (DPDK `rte_ethdev`).
//!
//! A [`Port`] is one window + the control plane ([`pmd::control`]) + N queue pairs
//! ([`QueuePair`], any ring mode). The control API ([`Port::create`] /
//! [`Port::attach`], [`Port::start`], [`Port::stop`], [`Port::reset`],
//! [`Port::stats`], [`Port::link_status`]) is kept apart from the fast path: each
//! queue pair is a [`QueueHandle`] that one lcore owns (`Send`, not shared) and calls
//! [`rx_burst`](QueueHandle::rx_burst) / [`tx_burst`](QueueHandle::tx_burst) /
//! [`alloc_tx`](QueueHandle::alloc_tx) + [`commit`](QueueHandle::commit) on.
//!
//! ```text
//!  window (created by Port::create, side A; opened by Port::attach, side B)
//!  +----------------------+ 0
//!  | header (init stamp   |   areas: 2 per queue (PostedRing, A and B), 1 Config
//!  |   written last)      |
//!  +----------------------+ HEADER_SIZE
//!  | queue 0 side A, B    |   pmd::queue::PostedLinkLayout
//!  | queue 1 side A, B .. |
//!  +----------------------+ align 4096
//!  | Config area          |   rings::control block: offer, status handshake,
//!  +----------------------+   heartbeats, generations
//!
//!  process-local
//!  Port --Arc--> LinkShared { word = epoch << 1 | up }  <--Arc-- QueueHandle (lcore)
//!   |                                                            |  Box<dyn QueuePair>
//!   +--Arc--> QueueShared { acked epoch, broken, stats } <--Arc--+
//!                 |  owns (Box, freed only when no RxMbuf is out)
//!                 v
//!             RxShared { PktReturner, queue epoch, outstanding, Arc<window> }
//!                 ^ raw pointer (no refcount per packet)
//!             RxMbuf { ptr, len, handle, epoch }
//! ```
//!
//! # Liveness on the fast path
//! [`Port::poll_control`] (call it every N bursts from one lcore; it costs a few
//! loads and maybe one heartbeat store) runs the control state machine. When the link
//! goes down (peer lost, restarted, reset asked, or [`Port::stop`]) it bumps the
//! *link epoch* in `LinkShared`; every queue handle loads that word once per burst
//! (one Acquire load of a process-local line that is written only on link changes),
//! and on a change resets its queue pair: held packets and zero-copy slots of the old
//! epoch become stale (they are dropped without touching the rings), every buffer is
//! the queue's own again. The port does not progress the next handshake until every
//! handle has acknowledged the reset (so the peer never writes into our areas before
//! we cleared them), and once the link is up again each handle grants its receive
//! buffers to the peer ([`QueuePair::start`]) on its next burst.
//!
//! # Ownership of received packets
//! An [`RxMbuf`] is a zero-copy view of a packet in the local receive area of the
//! window. It is the application's until dropped or freed ([`free_rx_bulk`],
//! [`QueueHandle::free`]); freeing gives the buffer back to its queue through the
//! queue's [`PktReturner`] (from any thread) or directly on the queue's lcore.
//!
//! Why an `RxMbuf` holds a raw pointer and not an `Arc`: an `Arc` per packet is an
//! atomic increment and decrement on a line shared by every lcore. Instead the
//! per-queue state ([`RxShared`], which also keeps the window mapped) lives in a
//! `Box` owned by `QueueShared`, and the invariant that makes the pointer sound is:
//! **`RxShared` is freed only when no `RxMbuf` of its queue is out.** Each receive
//! burst adds its count and every free through the handle subtracts it in a plain
//! field of the handle (no atomic on the fast path: a locked instruction would wait
//! for the handle's posted stores to the peer to drain), which the handle folds into
//! `outstanding` when it goes; every other free (an `RxMbuf` dropped anywhere)
//! subtracts from `outstanding` (one atomic subtract per freed run, as its last
//! access to `RxShared`). The two may wrap apart; their sum is what is out.
//! When the last `Arc<QueueShared>` goes (the port and the handle are both gone, so
//! no more packets can be received), `Drop` frees `RxShared` only if `outstanding`
//! is 0; otherwise it leaks it (with a message) rather than free memory under live
//! mbufs.
//!
//! As with [`Mbuf`](crate::Mbuf), the bytes of a received packet are in memory the
//! peer can write: copy values out ([`RxMbuf::copy_out`]) before validating them.
//! After a link loss a still-held packet's buffer may be reused by the next session:
//! copy out what you need before the link goes down, or accept that the bytes may
//! change.

use core::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use pmd::control::{Backend, BackendConfig, Event, Frontend, FrontendConfig, Timing};
use pmd::copy::CopyEngine;
use pmd::queue::{
    Packed, PktHandle, PktReturner, PostedLinkLayout, PostedQueuePair, QueueError, QueuePair,
    RxPkt, Side, Split, TxSlot, VirtioLinkLayout, MAX_BURST,
};
use pmd::window::{
    create_spec, init_header, open_header, open_spec, OpenOptions, Window, WindowError, WindowSpec,
};
use rings::control::{ControlError, QueueConfig, RingMode};
use rings::header::{Area, AreaKind, Expect, HeaderParams, HEADER_SIZE, MAX_AREAS};
use rings::posted::PostedLayout;
use rings::{Mem, Region};

/// Size of the Config area (the control block needs `rings::control::BLOCK_SIZE`).
const CONFIG_AREA: usize = 4096;
/// Slot size of posted rings (see `pmd::queue::POSTED_SLOT_SIZE`).
const SLOT_SIZE: u32 = pmd::queue::POSTED_SLOT_SIZE;
/// Most queue pairs a port has (posted mode; see [`RingKind::max_queues`]): the
/// header has [`MAX_AREAS`] areas, two per posted queue pair plus the Config area.
pub const MAX_PORT_QUEUES: u16 = ((MAX_AREAS - 1) / 2) as u16;
/// Handles per free run (a stack array, no allocation).
const FREE_CHUNK: usize = 64;
/// `acked` value of a handle that was dropped (the port stops waiting for it).
const GONE: u64 = u64::MAX;

/// Which side of the control handshake this port plays (GUIDE.md section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The driver side (accepts the backend's offer).
    Frontend,
    /// The device side (offers features and queues).
    Backend,
}

/// Ring layout of the port's queues (GUIDE.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingKind {
    /// zerohop's posted ring (the default).
    Posted,
    /// virtio 1.x split virtqueues (rings and buffers in the frontend's memory).
    Split,
    /// virtio 1.x packed virtqueues (rings and buffers in the frontend's memory).
    Packed,
}

impl RingKind {
    /// Most queue pairs a port of this mode has: the header's [`MAX_AREAS`] areas
    /// hold the Config area and two areas per posted queue pair (31 pairs), three
    /// per split or packed one (21 pairs).
    pub fn max_queues(self) -> u16 {
        match self {
            RingKind::Posted => MAX_PORT_QUEUES,
            RingKind::Split | RingKind::Packed => ((MAX_AREAS - 1) / 3) as u16,
        }
    }
}

/// How to build a port.
#[derive(Clone, Debug)]
pub struct PortConfig {
    /// Where the window lives (`WindowSpec::Shm("/dev/shm/...")` usually).
    pub window: WindowSpec,
    /// Handshake role.
    pub role: Role,
    /// Ring mode.
    pub ring: RingKind,
    /// Queue pairs (1..=[`MAX_PORT_QUEUES`]; the attaching side takes the creator's).
    pub queues: u16,
    /// Slots per ring (a power of two); as many receive buffers per queue.
    pub ring_size: u32,
    /// Receive buffer size in bytes (a multiple of 64, below 1 MiB).
    pub buf_size: u32,
    /// Largest burst (1..=512; 0 = 32).
    pub burst: usize,
    /// Heartbeat interval and peer timeout.
    pub timing: Timing,
    /// How long [`Port::start`] waits for the peer's handshake.
    pub handshake_timeout: Duration,
    /// [`Port::attach`]: accept a window file owned by another user or writable by
    /// group or others (refused by default; see `pmd::window::OpenOptions`).
    pub allow_foreign: bool,
}

impl PortConfig {
    /// Defaults: posted, 1 queue pair, 256 slots of 2 KiB buffers, burst 32, 100 ms
    /// peer timeout, 10 s handshake timeout.
    pub fn new(window: WindowSpec, role: Role) -> PortConfig {
        PortConfig {
            window,
            role,
            ring: RingKind::Posted,
            queues: 1,
            ring_size: 256,
            buf_size: 2048,
            burst: 32,
            timing: Timing::default(),
            handshake_timeout: Duration::from_secs(10),
            allow_foreign: false,
        }
    }
}

/// Why the link is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DownReason {
    /// [`Port::start`] has not completed yet.
    NotStarted = 0,
    /// The peer's heartbeat stopped.
    PeerLost = 1,
    /// The peer came back with a new generation (it restarted).
    PeerRestarted = 2,
    /// The peer (or this side, [`Port::reset`]) asked for a reset.
    ResetRequested = 3,
    /// [`Port::stop`].
    Stopped = 4,
    /// A queue saw a peer protocol violation.
    Broken = 5,
}

impl DownReason {
    fn from_u32(v: u32) -> DownReason {
        match v {
            1 => DownReason::PeerLost,
            2 => DownReason::PeerRestarted,
            3 => DownReason::ResetRequested,
            4 => DownReason::Stopped,
            5 => DownReason::Broken,
            _ => DownReason::NotStarted,
        }
    }
}

/// Everything a port can report.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// A configuration value out of range.
    #[error("invalid port config: {what} = {value}")]
    InvalidConfig {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// Creating or opening the window failed.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The control plane failed (handshake refused, peer wrote garbage).
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The peer did not finish the handshake in time.
    #[error("handshake timed out after {waited_ms} ms ({waiting_for})")]
    HandshakeTimeout {
        /// What the handshake was waiting for.
        waiting_for: &'static str,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The peer disappeared; the queue was reset and waits for it to come back.
    #[error("peer lost: link down until it re-attaches")]
    PeerLost,
    /// The link is down for another reason (not started, stopped, reset).
    #[error("link down ({0:?})")]
    LinkDown(DownReason),
    /// The two sides disagree on the link (ring mode, queue count).
    #[error("link mismatch: {what}: ours {ours}, peer's {theirs}")]
    Mismatch {
        /// What differs.
        what: &'static str,
        /// Our value.
        ours: u64,
        /// The peer's value.
        theirs: u64,
    },
    /// The queue handle was already taken (or the index is out of range).
    #[error("queue {0} does not exist or its handle was already taken")]
    NoQueue(u16),
    /// A zero-copy buffer has no room for the write.
    #[error("zero-copy buffer: {want} bytes do not fit in the {room} left")]
    NoRoom {
        /// Bytes asked for.
        want: usize,
        /// Room left.
        room: usize,
    },
}

impl PortError {
    /// True for the errors [`Port::attach`] gives while the creator is still setting
    /// the window up (no file yet, a file not yet sized, a header whose init stamp is
    /// not written yet): worth retrying. Every other error (bad magic, wrong version,
    /// someone else's file, a symlink, a truncated file, ...) is permanent.
    pub fn is_not_ready(&self) -> bool {
        use rings::header::OpenError;
        matches!(
            self,
            PortError::Window(
                WindowError::NotFound { .. }
                    | WindowError::TooSmall { size: 0, .. }
                    | WindowError::Header {
                        source: OpenError::NotInitialized,
                        ..
                    }
            )
        )
    }
}

/// A change [`Port::poll_control`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// Nothing changed.
    None,
    /// The link came up (first time or again after a loss).
    Up,
    /// The link went down.
    Down(DownReason),
}

/// The link as [`Port::link_status`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    /// True while the link is up.
    pub up: bool,
    /// Why it is down (meaningless while up).
    pub reason: DownReason,
    /// Link epoch (bumped on every up and down).
    pub epoch: u64,
    /// The peer's generation of the current (or last) session.
    pub peer_generation: u64,
    /// Negotiated features.
    pub features: u64,
    /// Times the link came up.
    pub ups: u64,
    /// Times the link went down after being up.
    pub downs: u64,
}

/// Per-queue counters, summed by [`Port::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Queue resets after a link change.
    pub resets: u64,
    /// Errors returned by the queue (peer violations, bad frees, ...).
    pub errors: u64,
}

const N_COUNTERS: usize = 6;

impl QueueCounters {
    fn to_array(self) -> [u64; N_COUNTERS] {
        [
            self.rx_packets,
            self.rx_bytes,
            self.tx_packets,
            self.tx_bytes,
            self.resets,
            self.errors,
        ]
    }
    fn from_array(a: [u64; N_COUNTERS]) -> QueueCounters {
        QueueCounters {
            rx_packets: a[0],
            rx_bytes: a[1],
            tx_packets: a[2],
            tx_bytes: a[3],
            resets: a[4],
            errors: a[5],
        }
    }
    fn minus(self, b: QueueCounters) -> QueueCounters {
        let (a, b) = (self.to_array(), b.to_array());
        QueueCounters::from_array(core::array::from_fn(|i| a[i].wrapping_sub(b[i])))
    }
    fn plus(self, b: QueueCounters) -> QueueCounters {
        let (a, b) = (self.to_array(), b.to_array());
        QueueCounters::from_array(core::array::from_fn(|i| a[i].wrapping_add(b[i])))
    }
}

/// [`Port::stats`]: per queue and total.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// One entry per queue pair.
    pub queues: Vec<QueueCounters>,
    /// Sum of the queues.
    pub total: QueueCounters,
}

// ---- shared state ---------------------------------------------------------------

/// The link word every handle loads once per burst.
#[derive(Debug)]
struct LinkShared {
    /// `epoch << 1 | up`. Written by the port (control thread) only.
    word: CachePadded<AtomicU64>,
    /// [`DownReason`] of the current down epoch.
    reason: AtomicU32,
}

/// Per-queue state the receive path of [`RxMbuf`] needs (see the module docs for
/// why it is reached through a raw pointer).
#[derive(Debug)]
pub struct RxShared {
    returner: PktReturner,
    /// Queue epoch: bumped (by the handle) at every queue reset. Packets of an older
    /// epoch are dropped without touching the rings.
    epoch: AtomicU32,
    /// Received packets not yet freed, less the handle's own count (`rx_held`,
    /// folded in when the handle goes): wraps below zero while the handle lives.
    outstanding: CachePadded<AtomicUsize>,
    /// Keeps the window mapped while packets point into it.
    _window: Arc<dyn Window>,
}

impl RxShared {
    /// Gives `handles` (received in queue epoch `epoch`) back; its last access to
    /// `self` is the Release subtract (see the module docs).
    #[inline]
    fn release(&self, handles: &[PktHandle], epoch: u32) {
        // Acquire: pairs with the Release store of a reset (Q1), so a stale handle is
        // not sent to a queue that forgot it. A free racing a reset can still slip
        // through; the queue then refuses it unless the same buffer is held again.
        if self.epoch.load(Ordering::Acquire) == epoch {
            let _ = self.returner.put(handles);
        }
        // Release: our accesses to RxShared and the packet bytes happen before the
        // Acquire load in QueueShared::drop (O1) that may free them.
        self.outstanding.fetch_sub(handles.len(), Ordering::Release);
    }
}

/// One queue's state shared by the port and its handle.
#[derive(Debug)]
struct QueueShared {
    rx: NonNull<RxShared>,
    /// Link epoch the handle last reset for ([`GONE`]: handle dropped).
    acked: CachePadded<AtomicU64>,
    /// Set by the handle when the queue broke (the port asks for a reset).
    broken: AtomicBool,
    /// Counters the handle publishes (single writer, plain Relaxed stores).
    stats: CachePadded<[AtomicU64; N_COUNTERS]>,
}

// SAFETY: `rx` points to a Box-owned RxShared (Sync: atomics, PktReturner, Arc of a
// Send + Sync window) that lives until this QueueShared is dropped; the other fields
// are atomics.
unsafe impl Send for QueueShared {}
// SAFETY: as above: every access through `&QueueShared` is to atomics or to the Sync
// RxShared.
unsafe impl Sync for QueueShared {}

impl QueueShared {
    #[inline(always)]
    fn rx(&self) -> &RxShared {
        // SAFETY: RxShared lives at least as long as self (freed only in Drop).
        unsafe { self.rx.as_ref() }
    }
}

impl Drop for QueueShared {
    fn drop(&mut self) {
        // Acquire: pairs with the Release subtract of every free (O1): if we read 0,
        // every mbuf is done with RxShared and the window.
        let out = self.rx().outstanding.load(Ordering::Acquire);
        if out == 0 {
            // SAFETY: `rx` came from Box::into_raw in Port::build_queue, is freed only
            // here (Drop runs once), and no RxMbuf refers to it (outstanding == 0, and
            // no handle or port is left to receive more).
            drop(unsafe { Box::from_raw(self.rx.as_ptr()) });
        } else {
            eprintln!(
                "zerohop port: {out} received packets still held at teardown; \
                 leaking the queue state (and the window mapping) so they stay valid"
            );
        }
    }
}

// ---- received packets -----------------------------------------------------------

/// A received packet: a zero-copy view into the window, given back to its queue on
/// drop (or in bulk with [`free_rx_bulk`] / [`QueueHandle::free`]).
pub struct RxMbuf {
    ptr: NonNull<u8>,
    shared: NonNull<RxShared>,
    handle: PktHandle,
    len: u32,
    epoch: u32,
    meta: u16,
    queue: u16,
}

const _: () = assert!(core::mem::size_of::<RxMbuf>() <= 32);

// SAFETY: an RxMbuf exclusively owns its packet until freed; RxShared is Sync and
// outlives it (module invariant); freeing works from any thread (PktReturner).
unsafe impl Send for RxMbuf {}
// SAFETY: `&RxMbuf` only reads the packet bytes and metadata.
unsafe impl Sync for RxMbuf {}

impl core::fmt::Debug for RxMbuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RxMbuf")
            .field("handle", &self.handle.raw())
            .field("len", &self.len)
            .field("meta", &self.meta)
            .field("queue", &self.queue)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl RxMbuf {
    /// Payload length.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// True for an empty payload.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The sender's 16-bit user field.
    #[inline]
    pub fn meta(&self) -> u16 {
        self.meta
    }
    /// Queue it arrived on.
    #[inline]
    pub fn queue(&self) -> u16 {
        self.queue
    }
    /// The payload, in place in the window. The peer may change these bytes (and,
    /// after a link loss, the next session may reuse the buffer): see the module docs.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: `ptr` covers `len` bytes of the local rx area (QueuePair::rx_ptr
        // checked the range); the window stays mapped while this mbuf lives (RxShared
        // owns an Arc of it and outlives the mbuf). Peer writes: module docs.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len as usize) }
    }
    /// Copies payload bytes `off..` into `dst` with volatile-free plain copies that
    /// never keep a reference into the window; returns the bytes copied.
    #[inline]
    pub fn copy_out(&self, off: usize, dst: &mut [u8]) -> usize {
        let n = (self.len as usize).saturating_sub(off).min(dst.len());
        if n == 0 {
            return 0;
        }
        // SAFETY: `off + n <= len` and the range is mapped (as in `data`); the copy
        // reads the bytes once into `dst`, which does not overlap the window.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), dst.as_mut_ptr(), n) };
        n
    }
    /// Frees the packet now (same as dropping it).
    #[inline]
    pub fn free(self) {
        drop(self)
    }
}

impl Drop for RxMbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: RxShared outlives every RxMbuf of its queue (module invariant); this
        // is the mbuf's one release.
        unsafe { self.shared.as_ref() }.release(core::slice::from_ref(&self.handle), self.epoch);
    }
}

/// Frees every packet in `v` (from any thread): one returner call and one atomic
/// subtract per run of up to 64 packets of the same queue and epoch; `v` is left
/// empty with its capacity.
pub fn free_rx_bulk(v: &mut Vec<RxMbuf>) {
    let mut buf = [PktHandle::default(); FREE_CHUNK];
    let mut n = 0;
    let mut cur: Option<(NonNull<RxShared>, u32)> = None;
    for m in v.drain(..) {
        let m = core::mem::ManuallyDrop::new(m);
        let key = (m.shared, m.epoch);
        if n == FREE_CHUNK || cur.is_some_and(|c| c != key) {
            if let Some((s, e)) = cur {
                // SAFETY: the mbufs of these handles were consumed without dropping,
                // so their release is ours; RxShared outlives them (invariant).
                unsafe { s.as_ref() }.release(&buf[..n], e);
            }
            n = 0;
        }
        cur = Some(key);
        buf[n] = m.handle;
        n += 1;
    }
    if let Some((s, e)) = cur {
        // SAFETY: as above.
        unsafe { s.as_ref() }.release(&buf[..n], e);
    }
}

// ---- zero-copy transmit ---------------------------------------------------------

/// A peer-visible transmit buffer from [`QueueHandle::alloc_tx`]: fill it with
/// [`QueueHandle::write`], send it with [`QueueHandle::commit`] or give it back with
/// [`QueueHandle::cancel`]. A buffer dropped without either stays reserved until the
/// next queue reset.
#[derive(Clone, Copy, Debug)]
pub struct TxBuf {
    slot: TxSlot,
    len: u32,
    meta: u16,
    epoch: u32,
}

impl TxBuf {
    /// Bytes written so far.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// True if nothing was written.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Capacity of the buffer.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.slot.capacity() as usize
    }
    /// Sets the 16-bit user field sent with the packet.
    #[inline]
    pub fn set_meta(&mut self, meta: u16) {
        self.meta = meta;
    }
    /// Sets the length directly (after writing through [`ptr`](Self::ptr)).
    #[inline]
    pub fn set_len(&mut self, len: usize) -> Result<(), PortError> {
        if len > self.capacity() {
            return Err(PortError::NoRoom {
                want: len,
                room: self.capacity(),
            });
        }
        self.len = len as u32;
        Ok(())
    }
    /// Raw pointer to the buffer (in the peer's memory): writing through it is
    /// `unsafe` at the use site and allowed only until commit or cancel, and only
    /// while the link epoch it was allocated in lasts.
    #[inline]
    pub fn ptr(&self) -> NonNull<u8> {
        self.slot.ptr()
    }
}

// ---- queue handle ---------------------------------------------------------------

/// One queue pair's fast path, owned by one lcore (`Send`).
pub struct QueueHandle {
    qp: Box<dyn QueuePair>,
    shared: Arc<QueueShared>,
    rx: NonNull<RxShared>,
    link: Arc<LinkShared>,
    /// Last link word processed.
    seen: u64,
    /// Queue epoch (this handle is its only writer).
    epoch: u32,
    queue: u16,
    burst: usize,
    pkts: Box<[RxPkt]>,
    frees: Box<[PktHandle]>,
    slots: Box<[TxSlot]>,
    commits: Box<[(TxSlot, u32, u16)]>,
    /// Zero-copy buffers handed out in this epoch and not committed or cancelled.
    tx_out: usize,
    /// Packets received here minus packets freed through this handle (wrapping; see
    /// the module docs): the handle's share of `RxShared::outstanding`.
    rx_held: usize,
    counters: QueueCounters,
}

// SAFETY: the handle owns its queue pair (Send) and Arcs of Sync state; `rx` points
// to the RxShared its own `shared` keeps alive. It is used by one thread at a time
// (every fast-path method takes `&mut self`).
unsafe impl Send for QueueHandle {}

impl core::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("QueueHandle")
            .field("queue", &self.queue)
            .field("epoch", &self.epoch)
            .field("counters", &self.counters)
            .finish()
    }
}

impl QueueHandle {
    #[inline(always)]
    fn rxs(&self) -> &RxShared {
        // SAFETY: `self.shared` keeps RxShared alive.
        unsafe { self.rx.as_ref() }
    }

    /// Queue index.
    pub fn index(&self) -> u16 {
        self.queue
    }

    /// Largest burst.
    pub fn burst(&self) -> usize {
        self.burst
    }

    /// Received packets of this queue not yet freed (any epoch).
    pub fn rx_outstanding(&self) -> usize {
        self.rxs()
            .outstanding
            .load(Ordering::Relaxed)
            .wrapping_add(self.rx_held)
    }

    /// Zero-copy transmit buffers handed out in this epoch and not yet committed or
    /// cancelled.
    pub fn tx_outstanding(&self) -> usize {
        self.tx_out
    }

    /// This handle's counters.
    pub fn counters(&self) -> QueueCounters {
        self.counters
    }

    /// True while the link is up (one load; also applies a pending link change).
    pub fn link_up(&mut self) -> bool {
        self.check_link().is_ok()
    }

    /// Checks the link word (one Acquire load) and applies a change.
    #[inline]
    fn check_link(&mut self) -> Result<(), PortError> {
        // Acquire: pairs with the Release store in Port::set_link (L1), so the port's
        // view of the link (reason, reset of parked queues) is visible.
        let w = self.link.word.load(Ordering::Acquire);
        if w != self.seen {
            self.link_changed(w)?;
        }
        if w & 1 == 0 {
            return Err(self.down_error());
        }
        Ok(())
    }

    #[cold]
    fn down_error(&self) -> PortError {
        match DownReason::from_u32(self.link.reason.load(Ordering::Relaxed)) {
            DownReason::PeerLost => PortError::PeerLost,
            r => PortError::LinkDown(r),
        }
    }

    /// Applies link word `w`: a down epoch resets the queue and acknowledges it; an
    /// up epoch (always after our acknowledged reset) grants our buffers.
    #[cold]
    fn link_changed(&mut self, w: u64) -> Result<(), PortError> {
        self.seen = w;
        if w & 1 == 0 {
            self.reset_queue()?;
            // Release: our reset (zeroed local ring words) happens before the port's
            // Acquire load of `acked` (A1), after which it lets the handshake go on.
            self.shared.acked.store(w >> 1, Ordering::Release);
        } else if let Err(e) = self.qp.start() {
            self.note_error(&e);
            return Err(e.into());
        }
        Ok(())
    }

    fn reset_queue(&mut self) -> Result<(), PortError> {
        self.epoch = self.epoch.wrapping_add(1);
        // Release: pairs with the Acquire load in RxShared::release (Q1): frees of
        // older packets are dropped from now on.
        self.rxs().epoch.store(self.epoch, Ordering::Release);
        self.tx_out = 0;
        self.counters.resets += 1;
        self.shared.broken.store(false, Ordering::Relaxed);
        self.publish();
        self.qp.reset()?;
        Ok(())
    }

    #[cold]
    fn note_error(&mut self, e: &QueueError) {
        self.counters.errors += 1;
        if e.is_peer_violation() || self.qp.is_broken() {
            // Relaxed: a hint polled by Port::poll_control, which then asks for a reset.
            self.shared.broken.store(true, Ordering::Relaxed);
        }
        self.publish();
    }

    #[inline]
    fn queue_result<T>(&mut self, r: Result<T, QueueError>) -> Result<T, PortError> {
        r.map_err(|e| {
            self.note_error(&e);
            PortError::Queue(e)
        })
    }

    /// Publishes the counters (plain Relaxed stores: one writer).
    #[inline]
    fn publish(&self) {
        let a = self.counters.to_array();
        for (s, v) in self.shared.stats.iter().zip(a) {
            // Relaxed: statistics, read without ordering by Port::stats.
            s.store(v, Ordering::Relaxed);
        }
    }

    /// Notifications, for an lcore that would rather sleep than poll an idle queue:
    /// asks the peer to ring our doorbell when it next sends on this queue. Returns
    /// true when packets are already waiting (receive instead of sleeping). The peer
    /// rings the [`Doorbell`](crate::pmd::notify::Doorbell) it was given with
    /// [`set_peer_doorbell`](Self::set_peer_doorbell) (an eventfd handed over with
    /// [`Rendezvous`](crate::pmd::notify::Rendezvous) on one host, a doorbell
    /// register on PCI/NTB); after waking, [`disable_rx_notify`](Self::disable_rx_notify)
    /// and poll. While nobody calls this, the peer rings nothing.
    pub fn enable_rx_notify(&mut self) -> Result<bool, PortError> {
        self.check_link()?;
        let r = self.qp.enable_rx_notify();
        self.queue_result(r)
    }

    /// Stops asking for doorbells (we poll again).
    pub fn disable_rx_notify(&mut self) -> Result<(), PortError> {
        self.check_link()?;
        let r = self.qp.disable_rx_notify();
        self.queue_result(r)
    }

    /// The doorbell to ring (at most once per transmit burst) when the peer asked
    /// for it; `None` (the default): never rung.
    pub fn set_peer_doorbell(&mut self, db: Option<Arc<dyn crate::pmd::notify::Doorbell>>) {
        self.qp.set_peer_doorbell(db);
    }

    /// Receives up to `max` (at most the burst) packets, appended to `out` as
    /// zero-copy [`RxMbuf`]s. Give `out` capacity for a burst to keep this
    /// allocation-free. While the link is down: [`PortError::PeerLost`] or
    /// [`PortError::LinkDown`] (the queue was reset; keep calling, it comes back).
    #[inline]
    pub fn rx_burst(&mut self, out: &mut Vec<RxMbuf>, max: usize) -> Result<usize, PortError> {
        self.check_link()?;
        let want = max.min(self.burst);
        let r = self.qp.rx_burst(&mut self.pkts[..want]);
        let n = self.queue_result(r)?;
        if n == 0 {
            return Ok(0);
        }
        self.rx_held = self.rx_held.wrapping_add(n);
        let mut bytes = 0u64;
        let (shared, epoch, queue) = (self.rx, self.epoch, self.queue);
        let area = self.qp.rx_area().map_err(|e| self.note_error(&e)).ok();
        out.reserve(n);
        let base = out.len();
        let mut k = 0;
        for i in 0..n {
            let p = self.pkts[i];
            let Some(ptr) = area.and_then(|a| a.ptr(&p)) else {
                // Cannot happen for a validated packet; give it back at once.
                let e = QueueError::Ring(rings::RingError::InvalidRequest(
                    "received packet outside the rx area",
                ));
                self.note_error(&e);
                let _ = self.qp.free(core::slice::from_ref(&p.handle));
                self.rx_held = self.rx_held.wrapping_sub(1);
                continue;
            };
            bytes += p.len as u64;
            // Written in place (not pushed): a pushed value is assembled on the stack
            // first and copied with wide loads that cannot forward from the narrow
            // field stores (a store-forwarding stall per packet).
            out.spare_capacity_mut()[k].write(RxMbuf {
                ptr,
                shared,
                handle: p.handle,
                len: p.len,
                epoch,
                meta: p.meta,
                queue,
            });
            k += 1;
        }
        // SAFETY: `reserve(n)` made room for `n >= k` more; the first `k` spare slots
        // were initialised above.
        unsafe { out.set_len(base + k) };
        self.counters.rx_packets += n as u64;
        self.counters.rx_bytes += bytes;
        self.publish();
        Ok(n)
    }

    /// Frees every packet in `v`: those of this queue and epoch straight into the
    /// queue (no returner atomics), others through their queue's returner. `v` is
    /// left empty with its capacity.
    pub fn free(&mut self, v: &mut Vec<RxMbuf>) {
        let mut n = 0;
        let mut frees = core::mem::take(&mut self.frees);
        for m in v.drain(..) {
            if m.shared != self.rx || m.epoch != self.epoch {
                drop(m); // another queue or a stale epoch: its own release path
                continue;
            }
            let m = core::mem::ManuallyDrop::new(m);
            frees[n] = m.handle;
            n += 1;
            if n == frees.len() {
                self.free_handles(&frees[..n]);
                n = 0;
            }
        }
        if n > 0 {
            self.free_handles(&frees[..n]);
        }
        self.frees = frees;
    }

    /// Frees handles of this queue and epoch whose mbufs were consumed.
    fn free_handles(&mut self, h: &[PktHandle]) {
        if let Err(e) = self.qp.free(h) {
            self.note_error(&e);
        }
        self.rx_held = self.rx_held.wrapping_sub(h.len());
    }

    /// Copying transmit: copies each payload once into a peer-visible buffer (or
    /// inline into its slot), one publish. Returns how many were accepted (fewer
    /// under back-pressure).
    #[inline]
    pub fn tx_burst(&mut self, pkts: &[&[u8]]) -> Result<usize, PortError> {
        self.tx_burst_meta(pkts, 0)
    }

    /// [`tx_burst`](Self::tx_burst) with a 16-bit user field on every packet.
    #[inline]
    pub fn tx_burst_meta(&mut self, pkts: &[&[u8]], meta: u16) -> Result<usize, PortError> {
        self.check_link()?;
        let r = self.qp.tx_burst(pkts, meta);
        let n = self.queue_result(r)?;
        if n > 0 {
            self.counters.tx_packets += n as u64;
            self.counters.tx_bytes += pkts[..n].iter().map(|p| p.len() as u64).sum::<u64>();
            self.publish();
        }
        Ok(n)
    }

    /// Zero-copy transmit, step 1: appends up to `n` (at most the burst) empty
    /// peer-visible buffers to `out`.
    #[inline]
    pub fn alloc_tx(&mut self, out: &mut Vec<TxBuf>, n: usize) -> Result<usize, PortError> {
        self.check_link()?;
        let want = n.min(self.burst);
        let r = self.qp.alloc_tx(&mut self.slots[..want]);
        let got = self.queue_result(r)?;
        for &slot in &self.slots[..got] {
            out.push(TxBuf {
                slot,
                len: 0,
                meta: 0,
                epoch: self.epoch,
            });
        }
        self.tx_out += got;
        Ok(got)
    }

    /// Appends `src` to a zero-copy buffer (one checked copy into the peer's memory).
    #[inline]
    pub fn write(&self, buf: &mut TxBuf, src: &[u8]) -> Result<(), PortError> {
        if buf.epoch != self.epoch {
            return Err(self.down_error_or_stale());
        }
        let room = buf.capacity() - buf.len();
        if src.len() > room {
            return Err(PortError::NoRoom {
                want: src.len(),
                room,
            });
        }
        self.qp.tx_write(&buf.slot, buf.len(), src)?;
        buf.len += src.len() as u32;
        Ok(())
    }

    fn down_error_or_stale(&self) -> PortError {
        match self.down_error() {
            PortError::LinkDown(DownReason::NotStarted) => PortError::LinkDown(
                DownReason::from_u32(self.link.reason.load(Ordering::Relaxed)),
            ),
            e => e,
        }
    }

    /// Zero-copy transmit, step 2: sends every buffer in `bufs` (in order, one
    /// publish per burst) and empties `bufs`. Buffers from before a link reset are
    /// dropped (their memory already went back to the queue). Returns how many were
    /// sent.
    pub fn commit(&mut self, bufs: &mut Vec<TxBuf>) -> Result<usize, PortError> {
        let up = self.check_link();
        let mut sent = 0;
        let mut result = Ok(());
        let mut n = 0;
        let mut bytes = 0u64;
        let total = bufs.len();
        for (k, b) in bufs.drain(..).enumerate() {
            if b.epoch != self.epoch || up.is_err() || result.is_err() {
                continue;
            }
            self.commits[n] = (b.slot, b.len, b.meta);
            bytes += b.len as u64;
            n += 1;
            if n == self.commits.len() || k + 1 == total {
                let r = self.qp.tx_commit(&self.commits[..n]);
                match r {
                    Ok(c) => sent += c,
                    Err(e) => {
                        self.note_error(&e);
                        result = Err(PortError::Queue(e));
                    }
                }
                n = 0;
            }
        }
        if n > 0 && result.is_ok() {
            match self.qp.tx_commit(&self.commits[..n]) {
                Ok(c) => sent += c,
                Err(e) => {
                    self.note_error(&e);
                    result = Err(PortError::Queue(e));
                }
            }
        }
        self.tx_out = self.tx_out.saturating_sub(sent);
        if sent > 0 {
            self.counters.tx_packets += sent as u64;
            self.counters.tx_bytes += bytes;
            self.publish();
        }
        up?;
        result.map(|()| sent)
    }

    /// Gives unused zero-copy buffers back; empties `bufs`.
    pub fn cancel(&mut self, bufs: &mut Vec<TxBuf>) -> Result<(), PortError> {
        let mut result = Ok(());
        for b in bufs.drain(..) {
            if b.epoch != self.epoch {
                continue;
            }
            match self.qp.tx_cancel(core::slice::from_ref(&b.slot)) {
                Ok(()) => self.tx_out = self.tx_out.saturating_sub(1),
                Err(e) => result = Err(PortError::Queue(e)),
            }
        }
        result
    }
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        // Stop using the rings; forget held packets (they are released as stale).
        let _ = self.reset_queue();
        // Release: as in RxShared::release (O1): folds our count in, ordered before
        // the Acquire load in QueueShared::drop that may free RxShared.
        self.rxs()
            .outstanding
            .fetch_add(self.rx_held, Ordering::Release);
        // Release: as in link_changed (A1): the port stops waiting for this queue.
        self.shared.acked.store(GONE, Ordering::Release);
    }
}

// ---- port -----------------------------------------------------------------------

enum Control {
    Fe(Box<Frontend>),
    Be(Box<Backend>),
}

impl Control {
    fn poll(&mut self, now: Instant) -> Result<Event, ControlError> {
        match self {
            Control::Fe(f) => f.poll(now),
            Control::Be(b) => b.poll(now),
        }
    }
    fn waiting_for(&self) -> &'static str {
        match self {
            Control::Fe(f) => f.waiting_for(),
            Control::Be(b) => b.waiting_for(),
        }
    }
    /// Tells the peer to start over (frontend: new generation; backend:
    /// DEVICE_NEEDS_RESET).
    fn request_reset(&mut self) -> Result<(), ControlError> {
        match self {
            Control::Fe(f) => f.reset(),
            Control::Be(b) => b.request_reset(),
        }
    }
}

/// A port: see the [module docs](self).
pub struct Port {
    cfg: PortConfig,
    window: Arc<dyn Window>,
    layout: LinkLayout,
    config: Region,
    ctl: Option<Control>,
    link: Arc<LinkShared>,
    epoch: u64,
    up: bool,
    /// Down, waiting for every handle to acknowledge its reset.
    draining: bool,
    queues: Vec<Arc<QueueShared>>,
    parked: Vec<Option<QueueHandle>>,
    status: LinkStatus,
    stats_base: Vec<QueueCounters>,
}

impl core::fmt::Debug for Port {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Port")
            .field("window", &self.window.describe())
            .field("role", &self.cfg.role)
            .field("queues", &self.queues.len())
            .field("status", &self.status)
            .finish()
    }
}

/// The queue layout of a port's window, for any ring mode.
#[derive(Clone, Debug)]
enum LinkLayout {
    Posted(PostedLinkLayout),
    Virtio(VirtioLinkLayout),
}

impl LinkLayout {
    /// The layout `cfg` asks for.
    fn new(cfg: &PortConfig) -> Result<LinkLayout, PortError> {
        let virtio = |mode| -> Result<LinkLayout, PortError> {
            let size = u16::try_from(cfg.ring_size).map_err(|_| PortError::InvalidConfig {
                what: "ring_size",
                value: cfg.ring_size as u64,
            })?;
            Ok(LinkLayout::Virtio(VirtioLinkLayout::new(
                mode,
                size,
                cfg.buf_size,
                cfg.queues,
            )?))
        };
        match cfg.ring {
            RingKind::Posted => {
                let ring = PostedLayout::new(cfg.ring_size, SLOT_SIZE, cfg.ring_size, cfg.buf_size)
                    .map_err(QueueError::from)?;
                Ok(LinkLayout::Posted(PostedLinkLayout::new(ring, cfg.queues)?))
            }
            RingKind::Split => virtio(pmd::queue::RingMode::Split),
            RingKind::Packed => virtio(pmd::queue::RingMode::Packed),
        }
    }

    /// The layout a window's header describes (posted if it has posted ring areas).
    fn from_header(info: &rings::header::HeaderInfo) -> Result<LinkLayout, PortError> {
        if info.find(AreaKind::PostedRing).is_some() {
            Ok(LinkLayout::Posted(PostedLinkLayout::from_header(info)?))
        } else {
            Ok(LinkLayout::Virtio(VirtioLinkLayout::from_header(info)?))
        }
    }

    fn kind(&self) -> RingKind {
        match self {
            LinkLayout::Posted(_) => RingKind::Posted,
            LinkLayout::Virtio(v) => match v.mode() {
                pmd::queue::RingMode::Split => RingKind::Split,
                pmd::queue::RingMode::Packed => RingKind::Packed,
            },
        }
    }

    /// The ring mode as the control plane announces it.
    fn control_mode(&self) -> RingMode {
        match self.kind() {
            RingKind::Posted => RingMode::Posted,
            RingKind::Split => RingMode::Split,
            RingKind::Packed => RingMode::Packed,
        }
    }

    fn queues(&self) -> u16 {
        match self {
            LinkLayout::Posted(l) => l.queues(),
            LinkLayout::Virtio(l) => l.queues(),
        }
    }

    fn window_size(&self) -> usize {
        match self {
            LinkLayout::Posted(l) => l.window_size(),
            LinkLayout::Virtio(l) => l.window_size(),
        }
    }

    fn header_areas(&self) -> Vec<Area> {
        match self {
            LinkLayout::Posted(l) => l.header_areas(),
            LinkLayout::Virtio(l) => l.header_areas(),
        }
    }

    /// Entries per ring.
    fn ring_size(&self) -> u32 {
        match self {
            LinkLayout::Posted(l) => l.ring().slots(),
            LinkLayout::Virtio(l) => l.geometry().ring_size as u32,
        }
    }

    /// Bytes per packet buffer.
    fn buf_size(&self) -> u32 {
        match self {
            LinkLayout::Posted(l) => l.ring().buf_size(),
            LinkLayout::Virtio(l) => l.geometry().buf_size,
        }
    }

    /// Queue pair `q` for this side. Posted rings are symmetric (the creator is side
    /// A); a virtio queue pair is the driver half on the frontend and the device half
    /// on the backend, whichever side created the window.
    fn open_queue(
        &self,
        window: &dyn Window,
        created: bool,
        role: Role,
        q: u16,
        burst: usize,
    ) -> Result<Box<dyn QueuePair>, PortError> {
        let copy = CopyEngine::detect();
        Ok(match (self, role) {
            (LinkLayout::Posted(l), _) => {
                let side = if created { Side::A } else { Side::B };
                let areas = l.side_areas(window, side, q)?;
                Box::new(PostedQueuePair::with_copy_stopped(
                    areas,
                    l.ring(),
                    burst,
                    copy,
                )?)
            }
            (LinkLayout::Virtio(l), Role::Frontend) => match l.mode() {
                pmd::queue::RingMode::Split => {
                    Box::new(l.open_frontend_with::<Split, _>(window, q, burst, copy)?)
                }
                pmd::queue::RingMode::Packed => {
                    Box::new(l.open_frontend_with::<Packed, _>(window, q, burst, copy)?)
                }
            },
            (LinkLayout::Virtio(l), Role::Backend) => match l.mode() {
                pmd::queue::RingMode::Split => {
                    Box::new(l.open_backend_with::<Split, _>(window, q, burst, copy)?)
                }
                pmd::queue::RingMode::Packed => {
                    Box::new(l.open_backend_with::<Packed, _>(window, q, burst, copy)?)
                }
            },
        })
    }
}

impl Port {
    /// Creates the window (side A): zeroes it, lays out the queues and the Config
    /// area, then writes the header (its init stamp last). Call [`start`](Self::start)
    /// next.
    pub fn create(cfg: &PortConfig) -> Result<Port, PortError> {
        if cfg.queues == 0 || cfg.queues > cfg.ring.max_queues() {
            return Err(PortError::InvalidConfig {
                what: "queues",
                value: cfg.queues as u64,
            });
        }
        if cfg.ring_size > rings::control::MAX_QUEUE_SIZE as u32 {
            return Err(PortError::InvalidConfig {
                what: "ring_size",
                value: cfg.ring_size as u64,
            });
        }
        let layout = LinkLayout::new(cfg)?;
        let cfg_off = layout.window_size().next_multiple_of(4096);
        let size = cfg_off + CONFIG_AREA;
        let window: Arc<dyn Window> = Arc::from(create_spec(&cfg.window, size)?);
        let region = window.region();
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut off = HEADER_SIZE;
        while off < size {
            let n = (size - off).min(ZEROS.len());
            region
                .write_bytes(off, &ZEROS[..n])
                .map_err(QueueError::from)?;
            off += n;
        }
        let mut areas = layout.header_areas();
        areas.push(Area::new(
            AreaKind::Config,
            cfg_off as u64,
            CONFIG_AREA as u64,
        ));
        // The rings and the Config block are zeroed above, before the header's init
        // stamp (written last, Release) makes the window valid for the peer.
        init_header(
            &*window,
            &HeaderParams {
                window_size: None,
                creator_pid: std::process::id(),
                flags: 0,
                areas,
            },
        )?;
        let config = region.sub(cfg_off, CONFIG_AREA).map_err(QueueError::from)?;
        Port::build(cfg.clone(), window, layout, config, true)
    }

    /// Opens a window a peer created (side B) and validates its header; the queue
    /// count and ring geometry come from the header. Call [`start`](Self::start) next.
    pub fn attach(cfg: &PortConfig) -> Result<Port, PortError> {
        let opts = OpenOptions::new().allow_foreign(cfg.allow_foreign);
        let window: Arc<dyn Window> = Arc::from(open_spec(&cfg.window, &opts)?);
        let info = open_header(&*window, &Expect::default())?;
        let layout = LinkLayout::from_header(&info)?;
        let Some(a) = info.find(AreaKind::Config).copied() else {
            return Err(PortError::Mismatch {
                what: "window has no Config area",
                ours: 1,
                theirs: 0,
            });
        };
        let config = window
            .region()
            .sub(a.offset as usize, a.size as usize)
            .map_err(QueueError::from)?;
        let mut cfg = cfg.clone();
        cfg.queues = layout.queues();
        cfg.ring = layout.kind();
        cfg.ring_size = layout.ring_size();
        cfg.buf_size = layout.buf_size();
        Port::build(cfg, window, layout, config, false)
    }

    fn build(
        cfg: PortConfig,
        window: Arc<dyn Window>,
        layout: LinkLayout,
        config: Region,
        created: bool,
    ) -> Result<Port, PortError> {
        let burst = match cfg.burst {
            0 => pmd::queue::DEFAULT_BURST,
            b => b.min(MAX_BURST),
        };
        let link = Arc::new(LinkShared {
            word: CachePadded::new(AtomicU64::new(0)),
            reason: AtomicU32::new(DownReason::NotStarted as u32),
        });
        let mut queues = Vec::with_capacity(layout.queues() as usize);
        let mut parked = Vec::with_capacity(layout.queues() as usize);
        for q in 0..layout.queues() {
            let mut qp = layout.open_queue(&*window, created, cfg.role, q, burst)?;
            // Clears whatever an earlier session left in our areas; nothing is
            // written to the peer until the handshake says it has reset too.
            qp.reset()?;
            let rx = Box::new(RxShared {
                returner: qp.returner(),
                epoch: AtomicU32::new(0),
                outstanding: CachePadded::new(AtomicUsize::new(0)),
                _window: window.clone(),
            });
            let shared = Arc::new(QueueShared {
                rx: NonNull::from(Box::leak(rx)),
                acked: CachePadded::new(AtomicU64::new(0)),
                broken: AtomicBool::new(false),
                stats: CachePadded::new(core::array::from_fn(|_| AtomicU64::new(0))),
            });
            parked.push(Some(QueueHandle {
                qp,
                rx: shared.rx,
                shared: shared.clone(),
                link: link.clone(),
                seen: 0,
                epoch: 0,
                queue: q,
                burst,
                pkts: vec![RxPkt::default(); burst].into_boxed_slice(),
                frees: vec![PktHandle::default(); FREE_CHUNK].into_boxed_slice(),
                slots: vec![TxSlot::default(); burst].into_boxed_slice(),
                commits: vec![(TxSlot::default(), 0, 0); burst].into_boxed_slice(),
                tx_out: 0,
                rx_held: 0,
                counters: QueueCounters::default(),
            }));
            queues.push(shared);
        }
        Ok(Port {
            stats_base: vec![QueueCounters::default(); queues.len()],
            cfg,
            window,
            layout,
            config,
            ctl: None,
            link,
            epoch: 0,
            up: false,
            draining: false,
            queues,
            parked,
            status: LinkStatus {
                up: false,
                reason: DownReason::NotStarted,
                epoch: 0,
                peer_generation: 0,
                features: 0,
                ups: 0,
                downs: 0,
            },
        })
    }

    /// The configuration (queues and ring geometry as in use).
    pub fn config(&self) -> &PortConfig {
        &self.cfg
    }

    /// The window.
    pub fn window(&self) -> &dyn Window {
        &*self.window
    }

    /// Number of queue pairs.
    pub fn queue_count(&self) -> u16 {
        self.layout.queues()
    }

    /// Takes the fast-path handle of queue `q` (once) to move it to its lcore. A
    /// handle not taken is kept (and reset on link changes) by the port.
    pub fn queue(&mut self, q: u16) -> Result<QueueHandle, PortError> {
        self.parked
            .get_mut(q as usize)
            .and_then(Option::take)
            .ok_or(PortError::NoQueue(q))
    }

    fn make_control(&self) -> Result<Control, PortError> {
        let n = self.layout.queues() as usize;
        Ok(match self.cfg.role {
            Role::Backend => Control::Be(Box::new(Backend::new(
                self.config.clone(),
                &BackendConfig {
                    device_type: 1,
                    features: rings::features::VIRTIO_F_VERSION_1,
                    ring_mode: self.layout.control_mode(),
                    queues: vec![QueueConfig::symmetric(self.layout.ring_size() as u16); n],
                    timing: self.cfg.timing,
                },
            )?)),
            Role::Frontend => Control::Fe(Box::new(Frontend::new(
                self.config.clone(),
                &FrontendConfig {
                    queue_pairs: n as u32,
                    timing: self.cfg.timing,
                    ..FrontendConfig::default()
                },
            )?)),
        })
    }

    /// Runs the handshake until the link is up, polling with yields; a peer that
    /// does not finish it by the configured timeout is
    /// [`PortError::HandshakeTimeout`]. Handles already taken must keep being polled
    /// (their bursts apply link changes) for the link to come up.
    pub fn start(&mut self) -> Result<(), PortError> {
        if self.ctl.is_none() {
            self.ctl = Some(self.make_control()?);
        }
        let t0 = Instant::now();
        let deadline = t0 + self.cfg.handshake_timeout;
        let mut spins = 0u32;
        loop {
            let now = Instant::now();
            self.poll_control(now)?;
            if self.up {
                return Ok(());
            }
            if now >= deadline {
                return Err(PortError::HandshakeTimeout {
                    waiting_for: self.ctl.as_ref().map_or("stopped", Control::waiting_for),
                    waited_ms: now.saturating_duration_since(t0).as_millis() as u64,
                });
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                std::thread::sleep(Duration::from_micros(100));
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Stops the port: tells the peer (it resets too), stops heartbeating, takes the
    /// link down; every queue resets on its next burst. [`start`](Self::start)
    /// brings it back.
    pub fn stop(&mut self) -> Result<(), PortError> {
        let r = match self.ctl.take() {
            Some(mut c) => c.request_reset(),
            None => Ok(()),
        };
        self.set_link(false, DownReason::Stopped);
        r.map_err(PortError::from)
    }

    /// Resets the link (DPDK `rte_eth_dev_reset`): both sides reset their queues and
    /// run the handshake again; non-blocking (the link comes back through
    /// [`poll_control`](Self::poll_control)).
    pub fn reset(&mut self) -> Result<(), PortError> {
        if let Some(c) = self.ctl.as_mut() {
            c.request_reset()?;
        }
        self.set_link(false, DownReason::ResetRequested);
        Ok(())
    }

    /// The link state.
    pub fn link_status(&self) -> LinkStatus {
        self.status
    }

    /// Counters per queue and in total, since the last
    /// [`stats_reset`](Self::stats_reset).
    pub fn stats(&self) -> PortStats {
        let mut s = PortStats {
            queues: Vec::with_capacity(self.queues.len()),
            total: QueueCounters::default(),
        };
        for (q, base) in self.queues.iter().zip(&self.stats_base) {
            let c = Self::read_counters(q).minus(*base);
            s.total = s.total.plus(c);
            s.queues.push(c);
        }
        s
    }

    fn read_counters(q: &QueueShared) -> QueueCounters {
        // Relaxed: statistics (each value is one atomic word).
        QueueCounters::from_array(core::array::from_fn(|i| q.stats[i].load(Ordering::Relaxed)))
    }

    /// Zeroes what [`stats`](Self::stats) reports.
    pub fn stats_reset(&mut self) {
        for (q, base) in self.queues.iter().zip(self.stats_base.iter_mut()) {
            *base = Self::read_counters(q);
        }
    }

    /// Publishes a link change: bumps the epoch, stores the word (Release), and
    /// applies it to the parked handles.
    fn set_link(&mut self, up: bool, reason: DownReason) {
        self.epoch += 1;
        if !up {
            if self.up {
                self.status.downs += 1;
            }
            // Relaxed: published by the Release store of the word below.
            self.link.reason.store(reason as u32, Ordering::Relaxed);
            self.draining = true;
        } else {
            self.status.ups += 1;
        }
        self.up = up;
        self.status.up = up;
        self.status.reason = reason;
        self.status.epoch = self.epoch;
        let w = self.epoch << 1 | up as u64;
        // Release (L1): pairs with the Acquire load in QueueHandle::check_link.
        self.link.word.store(w, Ordering::Release);
        for h in self.parked.iter_mut().flatten() {
            let _ = h.link_changed(w);
        }
    }

    /// One step of the control plane (never blocks): heartbeat, liveness, handshake.
    /// Call it every N bursts from one lcore (`now` from that loop). Returns the link
    /// change it saw, if any. After a loss it does not progress the next handshake
    /// until every taken queue handle has reset (on its next burst).
    pub fn poll_control(&mut self, now: Instant) -> Result<LinkChange, PortError> {
        if self.ctl.is_none() {
            return Ok(LinkChange::None);
        }
        if self.draining {
            let e = self.epoch;
            // Acquire (A1): pairs with the handles' Release store of `acked`: their
            // resets are done before we let the peer go on.
            let done = self.queues.iter().all(|q| {
                let a = q.acked.load(Ordering::Acquire);
                a == e || a == GONE
            });
            if !done {
                return Ok(LinkChange::None);
            }
            self.draining = false;
        }
        if self.up && self.queues.iter().any(|q| q.broken.load(Ordering::Relaxed)) {
            if let Some(c) = self.ctl.as_mut() {
                c.request_reset()?;
            }
            self.set_link(false, DownReason::Broken);
            return Ok(LinkChange::Down(DownReason::Broken));
        }
        let Some(ctl) = self.ctl.as_mut() else {
            return Ok(LinkChange::None);
        };
        let ev = ctl.poll(now)?;
        let down = |p: &mut Port, r| {
            p.set_link(false, r);
            Ok(LinkChange::Down(r))
        };
        match ev {
            Event::Up {
                peer_generation,
                features,
            }
            | Event::PeerBack {
                peer_generation,
                features,
            } => {
                if let Control::Fe(f) = ctl {
                    let n = self.layout.queues() as u64;
                    let got = f.queue_pairs() as u64;
                    let mode = f.offer().map(|o| o.backend.ring_mode);
                    if mode != Some(self.layout.control_mode()) {
                        f.reset()?;
                        return Err(PortError::Mismatch {
                            what: "ring mode (3 = posted)",
                            ours: RingMode::Posted as u64,
                            theirs: mode.map_or(0, |m| m as u64),
                        });
                    }
                    if got != n {
                        f.reset()?;
                        return Err(PortError::Mismatch {
                            what: "queue pairs",
                            ours: n,
                            theirs: got,
                        });
                    }
                }
                self.status.peer_generation = peer_generation;
                self.status.features = features;
                self.set_link(true, DownReason::NotStarted);
                Ok(LinkChange::Up)
            }
            Event::PeerLost { .. } => down(self, DownReason::PeerLost),
            Event::PeerRestarted { .. } => down(self, DownReason::PeerRestarted),
            Event::ResetRequested => down(self, DownReason::ResetRequested),
            Event::Command { seq, .. } => {
                // No port-level commands are defined yet: acknowledge with 0.
                if let Control::Be(b) = ctl {
                    b.complete_command(seq, 0)?;
                }
                Ok(LinkChange::None)
            }
            Event::CommandDone { .. } | Event::Idle => Ok(LinkChange::None),
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // Tell the peer we are going (it resets), best effort.
        if let Some(mut c) = self.ctl.take() {
            let _ = c.request_reset();
        }
        self.set_link(false, DownReason::Stopped);
    }
}

#[cfg(test)]
mod tests;
