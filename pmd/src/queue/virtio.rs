//! Split and packed (virtio 1.x) queue pairs: [`VirtioFrontend`] (the driver side,
//! like virtio-net) and [`VirtioBackend`] (the device side, like vhost), one
//! implementation for both ring types through [`RingKind`].
//!
//! A queue pair is two virtqueues. By virtio convention both rings and every packet
//! buffer live in the **frontend's** memory; the backend reaches all of it through the
//! window (on real PCIe: remote reads of descriptors, indices and payload).
//!
//! ```text
//!   frontend memory (VirtioAreas)                         backend
//!  +-----------------------------------+
//!  | tx ring  driver: add/publish  ----|--- pop (remote reads) ---> rx_burst (in place)
//!  |          poll_used  <-------------|--- push_used/publish_used  <- free
//!  | rx ring  driver: add writable ----|--- pop (remote reads) ---> tx_burst / alloc_tx
//!  |          poll_used -> rx_burst <--|--- payload + push_used ---  (remote writes)
//!  | data: buffers 0..N    (TX pool)   |
//!  |       buffers N..2N   (RX pool)   |
//!  +-----------------------------------+
//! ```
//!
//! By default ([`PktHeader::Meta`]) every buffer starts with an 8-byte packet header
//! (the role of `virtio_net_hdr`):
//!
//! ```text
//!  0      2          8                         8 + len
//!  +------+----------+-------------------------+
//!  | meta | reserved | payload                 |
//!  +------+----------+-------------------------+
//! ```
//!
//! Each chain is a single descriptor covering header + payload. The frontend's TX
//! chains are device-readable (`len` = 8 + payload), its RX chains device-writable
//! (`len` = the buffer size; the used length is 8 + payload).
//!
//! With [`PktHeader::None`] a buffer holds the payload alone, from its first byte,
//! and the lengths above lose the 8: the buffer format of a stock virtio device
//! whose protocol carries its own header (a virtio_rpmsg_bus buffer starts with
//! `struct rpmsg_hdr`; a virtio-net application puts `virtio_net_hdr` first). The
//! choice is recorded in the window header ([`super::VirtioLinkLayout`]).
//!
//! # Buffer ownership
//!
//! - Frontend TX: a buffer of the TX pool is the frontend's while it is free or handed
//!   out by [`alloc_tx`](QueuePair::alloc_tx); from `add` until the backend returns
//!   it in the used ring (reclaimed at the start of each transmit call) it is the
//!   backend's.
//! - Frontend RX: the RX pool's buffers are posted writable; from the used ring to
//!   [`free`](QueuePair::free) (or a [`PktReturner`]) they are the application's,
//!   then free again, reposted at the next `rx_burst` (at most N posted or held).
//! - Backend RX: a popped readable chain is the application's (payload read in place
//!   in the frontend's memory) until it is freed; the free writes its used entry.
//! - Backend TX: a popped writable chain is filled and returned in one burst, or held
//!   through `alloc_tx` until `tx_commit`/`tx_cancel` (a cancelled chain is kept and
//!   used first next time: a popped chain cannot be put back).
//!
//! # Per-burst order
//!
//! payload copies ([`CopyFn::copy`]) and headers -> descriptors / used entries ->
//! [`CopyFn::fence`] -> one `publish` / `publish_used` (the ring's Release store of
//! the index or flags).

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

use rings::packed::{EventMode, PackedDevice, PackedDriver, PackedLayout};
use rings::pool::IndexRing;
use rings::split::{SplitDevice, SplitDriver, SplitLayout, NO_FREE_DESCS};
use rings::{BufDesc, ChainInfo, Mem, RingError};

use super::{
    ring_doorbell, Bits, CopyFn, PeerDoorbell, PktHandle, PktReturner, PlainCopy, QueueError,
    QueuePair, QueueStats, RxArea, RxPkt, TxSlot, DEFAULT_BURST, MAX_BURST,
};

/// Bytes of the per-buffer packet header (meta + reserved).
pub const PKT_HDR: usize = 8;
/// Ring features both halves of every zerohop virtqueue use: event-index
/// notification suppression (the only feature that changes the shared layout's
/// behaviour; it is read only when a doorbell is configured).
const FEATURES: u64 = rings::features::VIRTIO_F_EVENT_IDX;
/// No buffer / chain recorded for a ring id.
const NONE: u32 = u32::MAX;

// ------------------------------------------------------------------ ring kinds ----

/// Which virtqueue format a queue pair uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RingMode {
    /// virtio 1.x split virtqueue.
    Split,
    /// virtio 1.x packed virtqueue.
    Packed,
}

/// The driver half of a virtqueue, as the frontend uses it (1-descriptor chains,
/// no notifications: poll mode).
pub trait DriverHalf<M: Mem>: Send + Sized {
    /// Attaches to `ring` and initialises it (zeroed indices / descriptors).
    fn open(ring: M, size: u16, data: M) -> Result<Self, RingError>;
    /// Adds a chain; not visible before `publish`.
    fn add(&mut self, bufs: &[BufDesc]) -> Result<u16, RingError>;
    /// Makes the added chains visible (one Release store).
    fn publish(&mut self) -> Result<(), RingError>;
    /// The next used chain `(id, len)`.
    fn poll_used(&mut self) -> Result<Option<(u16, u32)>, RingError>;
    /// Re-initialises the ring memory and the local state.
    fn reset(&mut self) -> Result<(), RingError>;
    /// True after a peer violation.
    fn is_broken(&self) -> bool;
    /// The data area.
    fn data(&self) -> &M;
    /// Did the device ask to be notified of the chains published since the previous
    /// call (event idx / flags)? Call after `publish`.
    fn needs_notify(&mut self) -> Result<bool, RingError>;
    /// Asks for (or stops asking for) used-buffer notifications; enabling returns
    /// true when a used chain is already waiting (poll instead of sleeping).
    fn set_notify(&mut self, enable: bool) -> Result<bool, RingError>;
}

/// The device half of a virtqueue, as the backend uses it.
pub trait DeviceHalf<M: Mem>: Send + Sized {
    /// Attaches to a ring the driver initialised (writes nothing).
    fn open(ring: M, size: u16, data: M) -> Result<Self, RingError>;
    /// The next available chain, its buffers copied (validated) into `bufs`.
    fn pop(&mut self, bufs: &mut [BufDesc]) -> Result<Option<ChainInfo>, RingError>;
    /// Writes a used entry (`slots` from [`ChainInfo::slots`]; ignored by split).
    fn push_used(&mut self, id: u16, len: u32, slots: u16) -> Result<(), RingError>;
    /// Makes the pushed used entries visible (one Release store).
    fn publish_used(&mut self) -> Result<(), RingError>;
    /// Forgets the local state.
    fn reset(&mut self);
    /// True after a peer violation.
    fn is_broken(&self) -> bool;
    /// The data area.
    fn data(&self) -> &M;
    /// Did the driver ask to be notified of the used entries published since the
    /// previous call? Call after `publish_used`.
    fn needs_notify(&mut self) -> Result<bool, RingError>;
    /// Asks for (or stops asking for) available-buffer notifications; enabling
    /// returns true when a chain is already available (pop instead of sleeping).
    fn set_notify(&mut self, enable: bool) -> Result<bool, RingError>;
}

/// A virtqueue format: [`Split`] or [`Packed`]. The queue pairs are written once
/// against this trait.
pub trait RingKind: Send + Sync + 'static {
    /// The mode this kind is.
    const MODE: RingMode;
    /// The driver half over memory `M`.
    type Driver<M: Mem + Send>: DriverHalf<M>;
    /// The device half over memory `M`.
    type Device<M: Mem + Send>: DeviceHalf<M>;
    /// Bytes one ring of `size` entries needs.
    fn ring_bytes(size: u16) -> Result<usize, RingError>;
}

/// The split virtqueue ([`rings::split`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Split;
/// The packed virtqueue ([`rings::packed`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Packed;

impl RingKind for Split {
    const MODE: RingMode = RingMode::Split;
    type Driver<M: Mem + Send> = SplitDriver<M, M>;
    type Device<M: Mem + Send> = SplitDevice<M, M>;
    fn ring_bytes(size: u16) -> Result<usize, RingError> {
        Ok(SplitLayout::new(size)?.size())
    }
}

impl RingKind for Packed {
    const MODE: RingMode = RingMode::Packed;
    type Driver<M: Mem + Send> = PackedDriver<M, M>;
    type Device<M: Mem + Send> = PackedDevice<M, M>;
    fn ring_bytes(size: u16) -> Result<usize, RingError> {
        Ok(PackedLayout::new(size)?.size())
    }
}

impl<M: Mem + Send> DriverHalf<M> for SplitDriver<M, M> {
    fn open(ring: M, size: u16, data: M) -> Result<Self, RingError> {
        SplitDriver::new(ring, SplitLayout::new(size)?, data, FEATURES)
    }
    fn add(&mut self, bufs: &[BufDesc]) -> Result<u16, RingError> {
        SplitDriver::add(self, bufs)
    }
    fn publish(&mut self) -> Result<(), RingError> {
        SplitDriver::publish(self)
    }
    fn poll_used(&mut self) -> Result<Option<(u16, u32)>, RingError> {
        Ok(SplitDriver::poll_used(self)?.map(|u| (u.id, u.len)))
    }
    fn reset(&mut self) -> Result<(), RingError> {
        SplitDriver::reset(self)
    }
    fn is_broken(&self) -> bool {
        SplitDriver::is_broken(self)
    }
    fn data(&self) -> &M {
        SplitDriver::data(self)
    }
    fn needs_notify(&mut self) -> Result<bool, RingError> {
        SplitDriver::needs_notify(self)
    }
    fn set_notify(&mut self, enable: bool) -> Result<bool, RingError> {
        SplitDriver::set_used_notification(self, enable)
    }
}

impl<M: Mem + Send> DriverHalf<M> for PackedDriver<M, M> {
    fn open(ring: M, size: u16, data: M) -> Result<Self, RingError> {
        PackedDriver::new(ring, PackedLayout::new(size)?, data, FEATURES)
    }
    fn add(&mut self, bufs: &[BufDesc]) -> Result<u16, RingError> {
        PackedDriver::add(self, bufs)
    }
    fn publish(&mut self) -> Result<(), RingError> {
        PackedDriver::publish(self)
    }
    fn poll_used(&mut self) -> Result<Option<(u16, u32)>, RingError> {
        Ok(PackedDriver::poll_used(self)?.map(|u| (u.id, u.len)))
    }
    fn reset(&mut self) -> Result<(), RingError> {
        PackedDriver::reset(self)
    }
    fn is_broken(&self) -> bool {
        PackedDriver::is_broken(self)
    }
    fn data(&self) -> &M {
        PackedDriver::data(self)
    }
    fn needs_notify(&mut self) -> Result<bool, RingError> {
        PackedDriver::needs_notify(self)
    }
    fn set_notify(&mut self, enable: bool) -> Result<bool, RingError> {
        let mode = if enable {
            self.next_used_event()
        } else {
            EventMode::Disable
        };
        PackedDriver::set_used_notification(self, mode)
    }
}

impl<M: Mem + Send> DeviceHalf<M> for SplitDevice<M, M> {
    fn open(ring: M, size: u16, data: M) -> Result<Self, RingError> {
        SplitDevice::new(ring, SplitLayout::new(size)?, data, FEATURES)
    }
    fn pop(&mut self, bufs: &mut [BufDesc]) -> Result<Option<ChainInfo>, RingError> {
        SplitDevice::pop(self, bufs)
    }
    fn push_used(&mut self, id: u16, len: u32, _slots: u16) -> Result<(), RingError> {
        SplitDevice::push_used(self, id, len)
    }
    fn publish_used(&mut self) -> Result<(), RingError> {
        SplitDevice::publish_used(self)
    }
    fn reset(&mut self) {
        SplitDevice::reset(self)
    }
    fn is_broken(&self) -> bool {
        SplitDevice::is_broken(self)
    }
    fn data(&self) -> &M {
        SplitDevice::data(self)
    }
    fn needs_notify(&mut self) -> Result<bool, RingError> {
        SplitDevice::needs_notify(self)
    }
    fn set_notify(&mut self, enable: bool) -> Result<bool, RingError> {
        SplitDevice::set_avail_notification(self, enable)
    }
}

impl<M: Mem + Send> DeviceHalf<M> for PackedDevice<M, M> {
    fn open(ring: M, size: u16, data: M) -> Result<Self, RingError> {
        PackedDevice::new(ring, PackedLayout::new(size)?, data, FEATURES)
    }
    fn pop(&mut self, bufs: &mut [BufDesc]) -> Result<Option<ChainInfo>, RingError> {
        PackedDevice::pop(self, bufs)
    }
    fn push_used(&mut self, id: u16, len: u32, slots: u16) -> Result<(), RingError> {
        PackedDevice::push_used(self, id, len, slots)
    }
    fn publish_used(&mut self) -> Result<(), RingError> {
        PackedDevice::publish_used(self)
    }
    fn reset(&mut self) {
        PackedDevice::reset(self)
    }
    fn is_broken(&self) -> bool {
        PackedDevice::is_broken(self)
    }
    fn data(&self) -> &M {
        PackedDevice::data(self)
    }
    fn needs_notify(&mut self) -> Result<bool, RingError> {
        PackedDevice::needs_notify(self)
    }
    fn set_notify(&mut self, enable: bool) -> Result<bool, RingError> {
        let mode = if enable {
            self.next_avail_event()
        } else {
            EventMode::Disable
        };
        PackedDevice::set_avail_event(self, mode)
    }
}

// ----------------------------------------------------------------- shared bits ----

/// The memory of one queue pair, all of it in the frontend's memory.
#[derive(Clone, Debug)]
pub struct VirtioAreas<M> {
    /// The TX virtqueue (frontend -> backend).
    pub tx_ring: M,
    /// The RX virtqueue (backend -> frontend).
    pub rx_ring: M,
    /// The packet buffers: `2 * ring_size` buffers of `buf_size` bytes (TX pool first).
    pub data: M,
}

impl<M> VirtioAreas<M> {
    /// Wraps every area (e.g. in [`crate::window::Counted`] with shared counters).
    pub fn map<M2>(self, mut f: impl FnMut(M) -> M2) -> VirtioAreas<M2> {
        VirtioAreas {
            tx_ring: f(self.tx_ring),
            rx_ring: f(self.rx_ring),
            data: f(self.data),
        }
    }
}

/// Ring size and buffer size of one queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioGeometry {
    /// Entries per virtqueue (a power of two, 2..=32768).
    pub ring_size: u16,
    /// Bytes per buffer, header included (a multiple of 64, > [`PKT_HDR`]).
    pub buf_size: u32,
    /// What each buffer starts with.
    pub header: PktHeader,
}

/// What each packet buffer of a split/packed queue pair starts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PktHeader {
    /// zerohop's 8-byte header (`meta`, reserved): the default; carries the `meta`
    /// argument of the transmit calls.
    #[default]
    Meta,
    /// Nothing: the payload starts at the buffer's first byte and its length is the
    /// descriptor's (or used entry's) length, as in a stock virtio_rpmsg_bus buffer
    /// (which starts with its own `rpmsg_hdr`). `meta` is not carried (received as 0).
    None,
}

impl PktHeader {
    /// Bytes of the header in each buffer (8 or 0).
    pub const fn len(self) -> usize {
        match self {
            PktHeader::Meta => PKT_HDR,
            PktHeader::None => 0,
        }
    }
    /// True for [`PktHeader::None`].
    pub const fn is_empty(self) -> bool {
        matches!(self, PktHeader::None)
    }
}

impl VirtioGeometry {
    /// Checks the numbers.
    pub fn new(ring_size: u16, buf_size: u32) -> Result<Self, QueueError> {
        if !ring_size.is_power_of_two() || !(2..=32768).contains(&ring_size) {
            return Err(QueueError::Layout {
                what: "ring size must be a power of two in 2..=32768",
                value: ring_size as u64,
            });
        }
        if buf_size as usize <= PKT_HDR || !buf_size.is_multiple_of(64) {
            return Err(QueueError::Layout {
                what: "buffer size must be a multiple of 64 above the header",
                value: buf_size as u64,
            });
        }
        Ok(VirtioGeometry {
            ring_size,
            buf_size,
            header: PktHeader::Meta,
        })
    }
    /// The same geometry with buffers that start with `header`.
    pub fn with_header(mut self, header: PktHeader) -> Self {
        self.header = header;
        self
    }
    /// Bytes of the data area (`2 * ring_size` buffers).
    pub fn data_bytes(&self) -> usize {
        2 * self.ring_size as usize * self.buf_size as usize
    }
    /// Largest payload.
    pub fn max_payload(&self) -> usize {
        self.buf_size as usize - self.header.len()
    }
}

fn clamp_burst(max_burst: usize) -> usize {
    if max_burst == 0 {
        DEFAULT_BURST
    } else {
        max_burst.min(MAX_BURST)
    }
}

/// Maps a ring result, counting a peer violation and breaking the queue.
#[inline]
fn ring_err<T>(
    broken: &mut bool,
    stats: &mut QueueStats,
    r: Result<T, RingError>,
) -> Result<T, QueueError> {
    r.map_err(|e| {
        if e.is_peer_violation() {
            *broken = true;
            stats.peer_violations += 1;
        }
        QueueError::Ring(e)
    })
}

/// A peer protocol violation above the ring (chain shape, header length): breaks.
#[inline]
fn protocol(
    broken: &mut bool,
    stats: &mut QueueStats,
    what: &'static str,
    value: u64,
) -> QueueError {
    *broken = true;
    stats.peer_violations += 1;
    QueueError::Protocol { what, value }
}

/// Writes the packet header (meta) at `off` (nothing with [`PktHeader::None`]).
#[inline]
fn write_hdr<M: Mem>(hdr: PktHeader, mem: &M, off: usize, meta: u16) -> Result<(), QueueError> {
    if hdr.is_empty() {
        return Ok(());
    }
    let mut h = [0u8; PKT_HDR];
    h[..2].copy_from_slice(&meta.to_le_bytes());
    Ok(mem.write_bytes(off, &h)?)
}

/// Reads the meta field of the packet header at `off` (one fetch; 0 with
/// [`PktHeader::None`]).
#[inline]
fn read_meta<M: Mem>(hdr: PktHeader, mem: &M, off: usize) -> Result<u16, QueueError> {
    if hdr.is_empty() {
        return Ok(0);
    }
    let mut m = [0u8; 2];
    mem.read_bytes(off, &mut m)?;
    Ok(u16::from_le_bytes(m))
}

/// Handle-return ring sized for every handle that can be out at once.
fn returns_ring(n: u32) -> Result<(Arc<IndexRing>, Box<[u32]>), QueueError> {
    let ring = Arc::new(IndexRing::new(n)?);
    let cap = ring.capacity() as usize;
    Ok((ring, vec![0u32; cap].into_boxed_slice()))
}

/// The notification methods of [`QueuePair`], the same in both roles: `rx` is the
/// half this side receives on (driver half of the RX ring for the frontend, device
/// half of the TX ring for the backend).
macro_rules! notify_methods {
    () => {
        fn enable_rx_notify(&mut self) -> Result<bool, QueueError> {
            self.check_broken()?;
            let r = self.rx.set_notify(true);
            ring_err(&mut self.broken, &mut self.stats, r)
        }
        fn disable_rx_notify(&mut self) -> Result<(), QueueError> {
            self.check_broken()?;
            let r = self.rx.set_notify(false);
            ring_err(&mut self.broken, &mut self.stats, r).map(drop)
        }
        fn set_peer_doorbell(&mut self, db: PeerDoorbell) {
            self.peer_db = db;
        }
    };
}

// ------------------------------------------------------------------- frontend ----

/// The frontend (driver side) of one split or packed queue pair; see the
/// [module docs](self). `K` is [`Split`] or [`Packed`], `M` the frontend's (local)
/// memory, `C` the transmit copy.
pub struct VirtioFrontend<K: RingKind, M: Mem + Send, C: CopyFn = PlainCopy> {
    tx: K::Driver<M>,
    rx: K::Driver<M>,
    geo: VirtioGeometry,
    copy: C,
    max_burst: usize,
    /// Free TX buffers (indices `0..N`).
    tx_free: Vec<u32>,
    /// TX ring id -> buffer index.
    tx_ids: Box<[u32]>,
    /// TX buffers handed out by `alloc_tx`.
    tx_out: Bits,
    /// Free RX buffers (indices `N..2N`), reposted at the next refill.
    rx_free: Vec<u32>,
    /// RX ring id -> buffer index.
    rx_ids: Box<[u32]>,
    /// RX buffers the application holds.
    rx_held: Bits,
    /// RX buffers posted in the ring.
    rx_posted: u32,
    returns: Arc<IndexRing>,
    ret_scratch: Box<[u32]>,
    stats: QueueStats,
    /// The peer's doorbell, if it may sleep ([`QueuePair::set_peer_doorbell`]).
    peer_db: PeerDoorbell,
    broken: bool,
    _k: PhantomData<K>,
}

impl<K: RingKind, M: Mem + Send, C: CopyFn> VirtioFrontend<K, M, C> {
    /// Bytes of the packet header at the start of each buffer (8 or 0).
    #[inline(always)]
    fn hdr(&self) -> usize {
        self.geo.header.len()
    }

    /// Attaches the frontend: initialises both rings (driver halves) and posts the
    /// whole RX pool. `max_burst` is clamped to `1..=`[`MAX_BURST`]; 0 means
    /// [`DEFAULT_BURST`].
    pub fn new(
        areas: VirtioAreas<M>,
        geo: VirtioGeometry,
        max_burst: usize,
        copy: C,
    ) -> Result<Self, QueueError>
    where
        M: Clone,
    {
        if areas.data.size() < geo.data_bytes() {
            return Err(QueueError::Layout {
                what: "data area smaller than 2 * ring_size buffers",
                value: areas.data.size() as u64,
            });
        }
        let n = geo.ring_size as u32;
        let tx = K::Driver::open(areas.tx_ring, geo.ring_size, areas.data.clone())?;
        let rx = K::Driver::open(areas.rx_ring, geo.ring_size, areas.data)?;
        let (returns, ret_scratch) = returns_ring(n)?;
        let mut q = VirtioFrontend {
            tx,
            rx,
            geo,
            copy,
            max_burst: clamp_burst(max_burst),
            tx_free: Vec::with_capacity(n as usize),
            tx_ids: vec![NONE; n as usize].into_boxed_slice(),
            tx_out: Bits::new(n),
            rx_free: Vec::with_capacity(n as usize),
            rx_ids: vec![NONE; n as usize].into_boxed_slice(),
            rx_held: Bits::new(2 * n),
            rx_posted: 0,
            returns,
            ret_scratch,
            stats: QueueStats::default(),
            peer_db: None,
            broken: false,
            _k: PhantomData,
        };
        q.init_pools();
        q.refill()?;
        // We poll: no used-buffer notifications (zeroed packed event structures mean
        // ENABLE).
        DriverHalf::set_notify(&mut q.rx, false)?;
        Ok(q)
    }

    fn init_pools(&mut self) {
        let n = self.geo.ring_size as u32;
        self.tx_free.clear();
        self.tx_free.extend((0..n).rev());
        self.rx_free.clear();
        self.rx_free.extend((n..2 * n).rev());
        self.tx_ids.fill(NONE);
        self.rx_ids.fill(NONE);
        self.tx_out.clear_all();
        self.rx_held.clear_all();
        self.rx_posted = 0;
    }

    /// The geometry.
    pub fn geometry(&self) -> VirtioGeometry {
        self.geo
    }
    /// Largest burst one call handles.
    pub fn max_burst(&self) -> usize {
        self.max_burst
    }
    /// The data area (local: the frontend owns it).
    pub fn data(&self) -> &M {
        self.rx.data()
    }
    /// Free TX buffers (after the last reclaim).
    pub fn tx_free(&self) -> usize {
        self.tx_free.len()
    }

    #[inline]
    fn buf_off(&self, buf: u32) -> usize {
        buf as usize * self.geo.buf_size as usize
    }

    #[inline]
    fn check_broken(&self) -> Result<(), QueueError> {
        if self.is_broken_now() {
            return Err(QueueError::Ring(RingError::Broken));
        }
        Ok(())
    }

    fn is_broken_now(&self) -> bool {
        self.broken || self.tx.is_broken() || self.rx.is_broken()
    }

    /// Takes back every TX chain the backend completed.
    fn reclaim(&mut self) -> Result<(), QueueError> {
        loop {
            let r = self.tx.poll_used();
            let Some((id, _len)) = ring_err(&mut self.broken, &mut self.stats, r)? else {
                return Ok(());
            };
            // The driver half validated `id` (in range, in flight).
            let buf = self
                .tx_ids
                .get_mut(id as usize)
                .map(|b| std::mem::replace(b, NONE));
            match buf {
                Some(b) if b != NONE => self.tx_free.push(b),
                _ => {
                    return Err(protocol(
                        &mut self.broken,
                        &mut self.stats,
                        "used id names no tx buffer",
                        id as u64,
                    ))
                }
            }
        }
    }

    /// Posts free RX buffers (at most N posted or held at once); one publish.
    fn refill(&mut self) -> Result<(), QueueError> {
        let n = self.geo.ring_size as u32;
        let mut added = 0;
        while self.rx_posted < n {
            let Some(buf) = self.rx_free.pop() else { break };
            let off = self.buf_off(buf);
            let r = self
                .rx
                .add(&[BufDesc::writable(off as u64, self.geo.buf_size)]);
            match r {
                Ok(id) => {
                    if let Some(s) = self.rx_ids.get_mut(id as usize) {
                        *s = buf;
                    }
                    self.rx_posted += 1;
                    added += 1;
                }
                Err(e) => {
                    self.rx_free.push(buf);
                    if e == NO_FREE_DESCS || matches!(e, RingError::RingFull { .. }) {
                        break;
                    }
                    return ring_err(&mut self.broken, &mut self.stats, Err(e));
                }
            }
        }
        if added > 0 {
            let r = self.rx.publish();
            ring_err(&mut self.broken, &mut self.stats, r)?;
        }
        Ok(())
    }

    /// Records one free; false if the handle is not held.
    fn mark_free(&mut self, h: PktHandle) -> bool {
        let buf = h.raw();
        if !self.rx_held.get(buf) {
            return false;
        }
        self.rx_held.set(buf, false);
        self.rx_free.push(buf);
        self.stats.rx_freed += 1;
        true
    }

    fn drain_returns(&mut self) {
        if self.returns.is_empty() {
            return;
        }
        let n = self.returns.dequeue_burst(&mut self.ret_scratch);
        for i in 0..n {
            if !self.mark_free(PktHandle::from_raw(self.ret_scratch[i])) {
                self.stats.bad_frees += 1;
            }
        }
    }

    /// Adds one readable chain for TX buffer `buf` with `len` payload bytes (header
    /// already written).
    fn add_tx(&mut self, buf: u32, len: usize) -> Result<(), QueueError> {
        let off = self.buf_off(buf);
        let r = self
            .tx
            .add(&[BufDesc::readable(off as u64, (self.hdr() + len) as u32)]);
        let id = ring_err(&mut self.broken, &mut self.stats, r)?;
        if let Some(s) = self.tx_ids.get_mut(id as usize) {
            *s = buf;
        }
        Ok(())
    }

    /// The copy engine's fence, then one publish; counts `n` packets of `bytes`.
    fn publish(&mut self, n: usize, bytes: u64) -> Result<usize, QueueError> {
        if n == 0 {
            return Ok(0);
        }
        // Orders non-temporal payload stores before the ring's Release store of the
        // avail index / flags (payload -> descriptor -> fence -> index).
        self.copy.fence();
        let r = self.tx.publish();
        ring_err(&mut self.broken, &mut self.stats, r)?;
        if self.peer_db.is_some() {
            let r = self.tx.needs_notify();
            let due = ring_err(&mut self.broken, &mut self.stats, r)?;
            ring_doorbell(&self.peer_db, due, &mut self.stats);
        }
        self.stats.tx_packets += n as u64;
        self.stats.tx_bytes += bytes;
        self.stats.tx_bursts += 1;
        Ok(n)
    }

    fn live_slot(&self, slot: &TxSlot) -> bool {
        slot.index() < self.geo.ring_size as u32
            && self.tx_out.get(slot.index())
            && slot.offset() == self.buf_off(slot.index()) + self.hdr()
    }
}

impl<K: RingKind, M: Mem + Send, C: CopyFn + Send> QueuePair for VirtioFrontend<K, M, C> {
    notify_methods!();
    fn rx_burst(&mut self, out: &mut [RxPkt]) -> Result<usize, QueueError> {
        self.check_broken()?;
        self.drain_returns();
        self.refill()?;
        let want = out.len().min(self.max_burst);
        let mut n = 0;
        let mut bytes = 0u64;
        while n < want {
            let r = self.rx.poll_used();
            let Some((id, len)) = ring_err(&mut self.broken, &mut self.stats, r)? else {
                break;
            };
            let buf = self
                .rx_ids
                .get_mut(id as usize)
                .map(|b| std::mem::replace(b, NONE))
                .unwrap_or(NONE);
            if buf == NONE {
                return Err(protocol(
                    &mut self.broken,
                    &mut self.stats,
                    "used id names no rx buffer",
                    id as u64,
                ));
            }
            self.rx_posted -= 1;
            // `len` was checked against the buffer by the driver half.
            if (len as usize) < self.hdr() {
                self.rx_free.push(buf);
                return Err(protocol(
                    &mut self.broken,
                    &mut self.stats,
                    "used length shorter than the packet header",
                    len as u64,
                ));
            }
            let off = self.buf_off(buf);
            let meta = read_meta(self.geo.header, self.rx.data(), off)?;
            self.rx_held.set(buf, true);
            out[n] = RxPkt {
                handle: PktHandle::from_raw(buf),
                off: off + self.hdr(),
                len: len - self.hdr() as u32,
                meta,
            };
            bytes += (len as usize - self.hdr()) as u64;
            n += 1;
        }
        if n == 0 {
            self.stats.rx_empty_polls += 1;
        } else {
            self.stats.rx_packets += n as u64;
            self.stats.rx_bytes += bytes;
            self.stats.rx_bursts += 1;
        }
        Ok(n)
    }

    fn rx_ptr(&self, pkt: &RxPkt) -> Result<NonNull<u8>, QueueError> {
        Ok(self.rx.data().range_ptr(pkt.off, pkt.len as usize)?)
    }

    fn rx_area(&self) -> Result<RxArea, QueueError> {
        Ok(RxArea::of(self.rx.data())?)
    }

    fn free(&mut self, pkts: &[PktHandle]) -> Result<(), QueueError> {
        self.check_broken()?;
        let mut bad = None;
        for &h in pkts {
            if !self.mark_free(h) {
                self.stats.bad_frees += 1;
                bad.get_or_insert(h.raw());
            }
        }
        match bad {
            Some(raw) => Err(QueueError::BadHandle { raw }),
            None => Ok(()),
        }
    }

    fn returner(&self) -> PktReturner {
        PktReturner::new(self.returns.clone())
    }

    fn tx_burst(&mut self, pkts: &[&[u8]], meta: u16) -> Result<usize, QueueError> {
        self.check_broken()?;
        self.reclaim()?;
        let want = pkts.len().min(self.max_burst);
        let max = self.geo.max_payload();
        let mut n = 0;
        let mut bytes = 0u64;
        let mut result = Ok(());
        while n < want {
            let p = pkts[n];
            if p.len() > max {
                if n == 0 {
                    result = Err(QueueError::TooLarge { len: p.len(), max });
                }
                break;
            }
            let Some(buf) = self.tx_free.pop() else { break };
            let off = self.buf_off(buf);
            let r = write_hdr(self.geo.header, self.tx.data(), off, meta)
                .and_then(|()| Ok(self.copy.copy(self.tx.data(), off + self.hdr(), p)?))
                .and_then(|()| self.add_tx(buf, p.len()));
            if let Err(e) = r {
                self.tx_free.push(buf);
                result = Err(e);
                break;
            }
            bytes += p.len() as u64;
            n += 1;
        }
        let published = self.publish(n, bytes)?;
        if published < pkts.len() && result.is_ok() {
            self.stats.tx_backpressure += 1;
        }
        result.map(|()| published)
    }

    fn alloc_tx(&mut self, out: &mut [TxSlot]) -> Result<usize, QueueError> {
        self.check_broken()?;
        self.reclaim()?;
        let want = out.len().min(self.max_burst);
        let cap = self.geo.max_payload();
        let mut n = 0;
        while n < want {
            let Some(buf) = self.tx_free.pop() else { break };
            let off = self.buf_off(buf) + self.hdr();
            let ptr = match self.tx.data().range_ptr(off, cap) {
                Ok(p) => p,
                Err(e) => {
                    self.tx_free.push(buf);
                    return Err(e.into());
                }
            };
            self.tx_out.set(buf, true);
            out[n] = TxSlot::new(buf, off, cap as u32, ptr);
            n += 1;
        }
        if n < out.len() {
            self.stats.tx_backpressure += 1;
        }
        Ok(n)
    }

    fn tx_write(&self, slot: &TxSlot, at: usize, src: &[u8]) -> Result<(), QueueError> {
        let end = at.checked_add(src.len());
        if !self.live_slot(slot) || end.is_none_or(|e| e > slot.capacity() as usize) {
            return Err(QueueError::BadTxSlot {
                index: slot.index(),
                len: end.unwrap_or(usize::MAX).min(u32::MAX as usize) as u32,
            });
        }
        Ok(self.copy.copy(self.tx.data(), slot.offset() + at, src)?)
    }

    fn tx_commit(&mut self, slots: &[(TxSlot, u32, u16)]) -> Result<usize, QueueError> {
        self.check_broken()?;
        let mut n = 0;
        let mut bytes = 0u64;
        let mut result = Ok(());
        for &(slot, len, meta) in slots {
            if !self.live_slot(&slot) || len > slot.capacity() {
                result = Err(QueueError::BadTxSlot {
                    index: slot.index(),
                    len,
                });
                break;
            }
            let buf = slot.index();
            let r = write_hdr(self.geo.header, self.tx.data(), self.buf_off(buf), meta)
                .and_then(|()| self.add_tx(buf, len as usize));
            if let Err(e) = r {
                result = Err(e);
                break;
            }
            self.tx_out.set(buf, false);
            bytes += len as u64;
            n += 1;
        }
        let published = self.publish(n, bytes)?;
        result.map(|()| published)
    }

    fn tx_cancel(&mut self, slots: &[TxSlot]) -> Result<(), QueueError> {
        for slot in slots {
            if !self.live_slot(slot) {
                return Err(QueueError::BadTxSlot {
                    index: slot.index(),
                    len: 0,
                });
            }
            self.tx_out.set(slot.index(), false);
            self.tx_free.push(slot.index());
        }
        Ok(())
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }

    fn is_broken(&self) -> bool {
        self.is_broken_now()
    }

    /// Re-initialises both rings and every buffer pool, then reposts the RX pool.
    /// The backend must reset too (control plane handshake).
    fn reset(&mut self) -> Result<(), QueueError> {
        self.tx.reset()?;
        self.rx.reset()?;
        self.init_pools();
        while self.returns.dequeue_burst(&mut self.ret_scratch) > 0 {}
        self.broken = false;
        self.refill()
    }
}

impl<K: RingKind, M: Mem + Send, C: CopyFn> core::fmt::Debug for VirtioFrontend<K, M, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioFrontend")
            .field("mode", &K::MODE)
            .field("geometry", &self.geo)
            .field("broken", &self.is_broken_now())
            .field("stats", &self.stats)
            .finish()
    }
}

// -------------------------------------------------------------------- backend ----

/// A chain popped by the backend and not yet returned.
#[derive(Clone, Copy, Debug, Default)]
struct Chain {
    id: u16,
    slots: u16,
    /// Offset of the buffer in the data area (header first).
    addr: usize,
    /// Buffer length (header included).
    len: u32,
}

/// The backend (device side, vhost-like) of one split or packed queue pair; see the
/// [module docs](self). `M` is its view of the frontend's memory (remote on real
/// hardware: wrap it in [`crate::window::Counted`] to count the accesses).
pub struct VirtioBackend<K: RingKind, M: Mem + Send, C: CopyFn = PlainCopy> {
    /// The frontend's TX virtqueue: we receive from it.
    rx: K::Device<M>,
    /// The frontend's RX virtqueue: we transmit into its writable buffers.
    tx: K::Device<M>,
    geo: VirtioGeometry,
    copy: C,
    max_burst: usize,
    scratch: [BufDesc; 1],
    /// Received chains the application holds, by id.
    rx_held: Bits,
    /// Ring slots of each held chain (packed `push_used` needs them).
    rx_slots: Box<[u16]>,
    /// Frees since the last `publish_used`.
    rx_pending: u32,
    /// Popped writable chains not yet used (cancelled or left over).
    tx_stash: Vec<Chain>,
    /// Writable chains handed out by `alloc_tx`, by id.
    tx_out: Box<[Option<Chain>]>,
    returns: Arc<IndexRing>,
    ret_scratch: Box<[u32]>,
    stats: QueueStats,
    /// The peer's doorbell, if it may sleep ([`QueuePair::set_peer_doorbell`]).
    peer_db: PeerDoorbell,
    broken: bool,
    _k: PhantomData<K>,
}

impl<K: RingKind, M: Mem + Send, C: CopyFn> VirtioBackend<K, M, C> {
    /// Bytes of the packet header at the start of each buffer (8 or 0).
    #[inline(always)]
    fn hdr(&self) -> usize {
        self.geo.header.len()
    }

    /// Attaches to the rings the frontend initialised; the one store it makes there turns
    /// off available-buffer notifications (this side polls).
    pub fn new(
        areas: VirtioAreas<M>,
        geo: VirtioGeometry,
        max_burst: usize,
        copy: C,
    ) -> Result<Self, QueueError>
    where
        M: Clone,
    {
        let rx = K::Device::open(areas.tx_ring, geo.ring_size, areas.data.clone())?;
        let tx = K::Device::open(areas.rx_ring, geo.ring_size, areas.data)?;
        Self::from_halves(rx, tx, geo, max_burst, copy)
    }

    /// Like [`new`](Self::new), from device halves opened by the caller (rings whose
    /// parts are not where this module's layouts put them: a guest's packed rings,
    /// [`crate::guest`]). `rx` is the frontend's TX virtqueue, `tx` its RX one; both
    /// of `geo.ring_size` entries.
    pub fn from_halves(
        mut rx: K::Device<M>,
        tx: K::Device<M>,
        geo: VirtioGeometry,
        max_burst: usize,
        copy: C,
    ) -> Result<Self, QueueError> {
        let n = geo.ring_size as u32;
        let (returns, ret_scratch) = returns_ring(n)?;
        // We poll: no available-buffer notifications (one store into the frontend's
        // event structure; zeroed packed event structures mean ENABLE).
        rx.set_notify(false)?;
        Ok(VirtioBackend {
            rx,
            tx,
            geo,
            copy,
            max_burst: clamp_burst(max_burst),
            scratch: [BufDesc::default()],
            rx_held: Bits::new(n),
            rx_slots: vec![0u16; n as usize].into_boxed_slice(),
            rx_pending: 0,
            tx_stash: Vec::with_capacity(n as usize),
            tx_out: vec![None; n as usize].into_boxed_slice(),
            returns,
            ret_scratch,
            stats: QueueStats::default(),
            peer_db: None,
            broken: false,
            _k: PhantomData,
        })
    }

    /// The geometry.
    pub fn geometry(&self) -> VirtioGeometry {
        self.geo
    }
    /// Largest burst one call handles.
    pub fn max_burst(&self) -> usize {
        self.max_burst
    }
    /// The frontend's data area (remote): received payloads are at [`RxPkt::off`].
    pub fn data(&self) -> &M {
        self.rx.data()
    }

    fn is_broken_now(&self) -> bool {
        self.broken || self.tx.is_broken() || self.rx.is_broken()
    }

    #[inline]
    fn check_broken(&self) -> Result<(), QueueError> {
        if self.is_broken_now() {
            return Err(QueueError::Ring(RingError::Broken));
        }
        Ok(())
    }

    /// Pops one single-buffer chain of the expected direction from `dev`.
    fn pop_chain(
        dev: &mut K::Device<M>,
        scratch: &mut [BufDesc; 1],
        broken: &mut bool,
        stats: &mut QueueStats,
        writable: bool,
        hdr: usize,
    ) -> Result<Option<Chain>, QueueError> {
        let r = dev.pop(scratch);
        let Some(c) = ring_err(broken, stats, r)? else {
            return Ok(None);
        };
        let b = scratch[0];
        if c.count != 1 || b.writable != writable {
            return Err(protocol(
                broken,
                stats,
                "chain is not one buffer of the expected direction",
                c.count as u64,
            ));
        }
        // The device half checked `addr + len` against the data area.
        if (b.len as usize) < hdr {
            return Err(protocol(
                broken,
                stats,
                "buffer shorter than the packet header",
                b.len as u64,
            ));
        }
        Ok(Some(Chain {
            id: c.id,
            slots: c.slots,
            addr: b.addr as usize,
            len: b.len,
        }))
    }

    fn mark_free(&mut self, h: PktHandle) -> Result<bool, QueueError> {
        let id = h.raw();
        if !self.rx_held.get(id) {
            return Ok(false);
        }
        self.rx_held.set(id, false);
        let slots = self.rx_slots.get(id as usize).copied().unwrap_or(1);
        let r = self.rx.push_used(id as u16, 0, slots);
        ring_err(&mut self.broken, &mut self.stats, r)?;
        self.rx_pending += 1;
        self.stats.rx_freed += 1;
        Ok(true)
    }

    /// One `publish_used` for the frees since the last one.
    fn flush_frees(&mut self) -> Result<(), QueueError> {
        if self.rx_pending > 0 {
            self.rx_pending = 0;
            let r = self.rx.publish_used();
            ring_err(&mut self.broken, &mut self.stats, r)?;
        }
        Ok(())
    }

    fn drain_returns(&mut self) -> Result<(), QueueError> {
        if self.returns.is_empty() {
            return Ok(());
        }
        let n = self.returns.dequeue_burst(&mut self.ret_scratch);
        for i in 0..n {
            if !self.mark_free(PktHandle::from_raw(self.ret_scratch[i]))? {
                self.stats.bad_frees += 1;
            }
        }
        Ok(())
    }

    /// The next writable chain: a stashed one first, else popped.
    fn next_tx_chain(&mut self) -> Result<Option<Chain>, QueueError> {
        if let Some(c) = self.tx_stash.pop() {
            return Ok(Some(c));
        }
        let hdr = self.hdr();
        Self::pop_chain(
            &mut self.tx,
            &mut self.scratch,
            &mut self.broken,
            &mut self.stats,
            true,
            hdr,
        )
    }

    fn publish(&mut self, n: usize, bytes: u64) -> Result<usize, QueueError> {
        if n == 0 {
            return Ok(0);
        }
        // Orders non-temporal payload stores before the ring's Release store of
        // used.idx / the used flags (payload -> used entry -> fence -> index).
        self.copy.fence();
        let r = self.tx.publish_used();
        ring_err(&mut self.broken, &mut self.stats, r)?;
        if self.peer_db.is_some() {
            let r = self.tx.needs_notify();
            let due = ring_err(&mut self.broken, &mut self.stats, r)?;
            ring_doorbell(&self.peer_db, due, &mut self.stats);
        }
        self.stats.tx_packets += n as u64;
        self.stats.tx_bytes += bytes;
        self.stats.tx_bursts += 1;
        Ok(n)
    }

    fn live_slot(&self, slot: &TxSlot) -> Option<Chain> {
        let c = (*self.tx_out.get(slot.index() as usize)?)?;
        (c.addr + self.hdr() == slot.offset()).then_some(c)
    }
}

impl<K: RingKind, M: Mem + Send, C: CopyFn + Send> QueuePair for VirtioBackend<K, M, C> {
    notify_methods!();
    fn rx_burst(&mut self, out: &mut [RxPkt]) -> Result<usize, QueueError> {
        self.check_broken()?;
        self.drain_returns()?;
        self.flush_frees()?;
        let want = out.len().min(self.max_burst);
        let mut n = 0;
        let mut bytes = 0u64;
        let hdr = self.hdr();
        while n < want {
            let Some(c) = Self::pop_chain(
                &mut self.rx,
                &mut self.scratch,
                &mut self.broken,
                &mut self.stats,
                false,
                hdr,
            )?
            else {
                break;
            };
            let meta = read_meta(self.geo.header, self.rx.data(), c.addr)?;
            // Ids are < N (validated by the device half).
            self.rx_held.set(c.id as u32, true);
            if let Some(s) = self.rx_slots.get_mut(c.id as usize) {
                *s = c.slots;
            }
            let len = c.len - self.hdr() as u32;
            out[n] = RxPkt {
                handle: PktHandle::from_raw(c.id as u32),
                off: c.addr + self.hdr(),
                len,
                meta,
            };
            bytes += len as u64;
            n += 1;
        }
        if n == 0 {
            self.stats.rx_empty_polls += 1;
        } else {
            self.stats.rx_packets += n as u64;
            self.stats.rx_bytes += bytes;
            self.stats.rx_bursts += 1;
        }
        Ok(n)
    }

    fn rx_ptr(&self, pkt: &RxPkt) -> Result<NonNull<u8>, QueueError> {
        Ok(self.rx.data().range_ptr(pkt.off, pkt.len as usize)?)
    }

    fn rx_area(&self) -> Result<RxArea, QueueError> {
        Ok(RxArea::of(self.rx.data())?)
    }

    fn free(&mut self, pkts: &[PktHandle]) -> Result<(), QueueError> {
        self.check_broken()?;
        let mut bad = None;
        let mut result = Ok(());
        for &h in pkts {
            match self.mark_free(h) {
                Ok(true) => {}
                Ok(false) => {
                    self.stats.bad_frees += 1;
                    bad.get_or_insert(h.raw());
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.flush_frees()?;
        result?;
        match bad {
            Some(raw) => Err(QueueError::BadHandle { raw }),
            None => Ok(()),
        }
    }

    fn returner(&self) -> PktReturner {
        PktReturner::new(self.returns.clone())
    }

    fn tx_burst(&mut self, pkts: &[&[u8]], meta: u16) -> Result<usize, QueueError> {
        self.check_broken()?;
        let want = pkts.len().min(self.max_burst);
        let mut n = 0;
        let mut bytes = 0u64;
        let mut result = Ok(());
        while n < want {
            let p = pkts[n];
            let Some(c) = (match self.next_tx_chain() {
                Ok(c) => c,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }) else {
                break;
            };
            let max = c.len as usize - self.hdr();
            if p.len() > max {
                self.tx_stash.push(c);
                if n == 0 {
                    result = Err(QueueError::TooLarge { len: p.len(), max });
                }
                break;
            }
            let data = self.tx.data();
            let r = write_hdr(self.geo.header, data, c.addr, meta)
                .and_then(|()| Ok(self.copy.copy(data, c.addr + self.hdr(), p)?));
            if let Err(e) = r {
                self.tx_stash.push(c);
                result = Err(e);
                break;
            }
            let r = self
                .tx
                .push_used(c.id, (self.hdr() + p.len()) as u32, c.slots);
            if let Err(e) = ring_err(&mut self.broken, &mut self.stats, r) {
                result = Err(e);
                break;
            }
            bytes += p.len() as u64;
            n += 1;
        }
        let published = self.publish(n, bytes)?;
        if published < pkts.len() && result.is_ok() {
            self.stats.tx_backpressure += 1;
        }
        result.map(|()| published)
    }

    fn alloc_tx(&mut self, out: &mut [TxSlot]) -> Result<usize, QueueError> {
        self.check_broken()?;
        let want = out.len().min(self.max_burst);
        let mut n = 0;
        while n < want {
            let Some(c) = self.next_tx_chain()? else {
                break;
            };
            let cap = c.len as usize - self.hdr();
            let ptr = match self.tx.data().range_ptr(c.addr + self.hdr(), cap) {
                Ok(p) => p,
                Err(e) => {
                    self.tx_stash.push(c);
                    return Err(e.into());
                }
            };
            let Some(entry) = self.tx_out.get_mut(c.id as usize) else {
                self.tx_stash.push(c);
                break;
            };
            *entry = Some(c);
            out[n] = TxSlot::new(c.id as u32, c.addr + self.hdr(), cap as u32, ptr);
            n += 1;
        }
        if n < out.len() {
            self.stats.tx_backpressure += 1;
        }
        Ok(n)
    }

    fn tx_write(&self, slot: &TxSlot, at: usize, src: &[u8]) -> Result<(), QueueError> {
        let end = at.checked_add(src.len());
        let live = self.live_slot(slot).is_some();
        if !live || end.is_none_or(|e| e > slot.capacity() as usize) {
            return Err(QueueError::BadTxSlot {
                index: slot.index(),
                len: end.unwrap_or(usize::MAX).min(u32::MAX as usize) as u32,
            });
        }
        Ok(self.copy.copy(self.tx.data(), slot.offset() + at, src)?)
    }

    fn tx_commit(&mut self, slots: &[(TxSlot, u32, u16)]) -> Result<usize, QueueError> {
        self.check_broken()?;
        let mut n = 0;
        let mut bytes = 0u64;
        let mut result = Ok(());
        for &(slot, len, meta) in slots {
            let Some(c) = self.live_slot(&slot).filter(|_| len <= slot.capacity()) else {
                result = Err(QueueError::BadTxSlot {
                    index: slot.index(),
                    len,
                });
                break;
            };
            if let Err(e) = write_hdr(self.geo.header, self.tx.data(), c.addr, meta) {
                result = Err(e);
                break;
            }
            let r = self.tx.push_used(c.id, self.hdr() as u32 + len, c.slots);
            if let Err(e) = ring_err(&mut self.broken, &mut self.stats, r) {
                result = Err(e);
                break;
            }
            if let Some(e) = self.tx_out.get_mut(c.id as usize) {
                *e = None;
            }
            bytes += len as u64;
            n += 1;
        }
        let published = self.publish(n, bytes)?;
        result.map(|()| published)
    }

    fn tx_cancel(&mut self, slots: &[TxSlot]) -> Result<(), QueueError> {
        for slot in slots {
            let Some(c) = self.live_slot(slot) else {
                return Err(QueueError::BadTxSlot {
                    index: slot.index(),
                    len: 0,
                });
            };
            if let Some(e) = self.tx_out.get_mut(c.id as usize) {
                *e = None;
            }
            self.tx_stash.push(c);
        }
        Ok(())
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }

    fn is_broken(&self) -> bool {
        self.is_broken_now()
    }

    /// Forgets every chain in flight and the device halves' positions. The frontend
    /// must reset (re-initialise the rings) too.
    fn reset(&mut self) -> Result<(), QueueError> {
        self.rx.reset();
        self.tx.reset();
        self.rx_held.clear_all();
        self.rx_pending = 0;
        self.tx_stash.clear();
        self.tx_out.iter_mut().for_each(|e| *e = None);
        while self.returns.dequeue_burst(&mut self.ret_scratch) > 0 {}
        self.broken = false;
        Ok(())
    }
}

impl<K: RingKind, M: Mem + Send, C: CopyFn> core::fmt::Debug for VirtioBackend<K, M, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioBackend")
            .field("mode", &K::MODE)
            .field("geometry", &self.geo)
            .field("broken", &self.is_broken_now())
            .field("stats", &self.stats)
            .finish()
    }
}
