//! [`PostedLinkLayout`]: both sides of N posted queue pairs in one window.
//!
//! ```text
//!  window
//!  +------------------------------+ 0
//!  | header (rings::header)       |   areas[2q + s] = AreaKind::PostedRing for
//!  +------------------------------+ HEADER_SIZE     queue q, side s (A = 0, B = 1)
//!  | queue 0, side A:             |
//!  |   A.tx area (credits,        |  <- written by B, read by A
//!  |     consumed)  page-aligned  |
//!  |   A.rx area (slots, buffers) |  <- written by B, read by A
//!  +------------------------------+ + block (page-aligned)
//!  | queue 0, side B: B.tx, B.rx  |
//!  +------------------------------+
//!  | queue 1, side A ...          |
//!  +------------------------------+
//!  ...                              window_size = HEADER_SIZE + 2 * queues * block
//! ```
//!
//! Each area holds one side's tx area at its start and its rx area at
//! `align_up(tx_area_size, 4096)`. The header area's `param` says which queue and side
//! it is and the ring geometry, so the peer rebuilds the layout from the header alone:
//!
//! | bits    | field                                 |
//! |---------|---------------------------------------|
//! | 0..8    | queue index                           |
//! | 8..10   | side: 0 = A, 1 = B                    |
//! | 10..16  | log2(slots)                           |
//! | 16..22  | log2(slot_size)                       |
//! | 22..50  | buffers                               |
//! | 50..64  | buf_size / 64 (so buf_size < 1 MiB)   |
//!
//! At most [`MAX_QUEUES`] queue pairs (two header areas each, 64 areas in a header).
//! The creator zeroes every ring area before it writes the header, whose init stamp
//! comes last: a peer that opens a valid header sees zeroed rings. Credits are not
//! written by the creator: each side's RX grants its own when it attaches
//! ([`PostedQueuePair::with_copy`]).

use rings::header::{Area, AreaKind, Expect, HeaderInfo, HeaderParams, HEADER_SIZE, MAX_AREAS};
use rings::posted::PostedLayout;
use rings::{Mem, Region};

use super::{CopyFn, PlainCopy, PostedQueuePair, QueueError};
use crate::window::{self, Window};

/// Most queue pairs one window holds.
pub const MAX_QUEUES: u16 = (MAX_AREAS / 2) as u16;

/// Alignment of every area (the page size on every platform zerohop targets).
const ALIGN: usize = 4096;

/// One end of a posted link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The side that created the window (by convention the frontend).
    A,
    /// The other side.
    B,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// The four areas one side of a queue pair works on.
#[derive(Clone, Debug)]
pub struct SideAreas<L, R> {
    /// Our tx area (credits, `consumed`; the peer writes, we read).
    pub local_tx: L,
    /// Our rx area (slots, buffers; the peer writes, we read).
    pub local_rx: L,
    /// The peer's tx area (we write credits and `consumed`).
    pub remote_tx: R,
    /// The peer's rx area (we write slots and payload).
    pub remote_rx: R,
}

impl<L, R> SideAreas<L, R> {
    /// Wraps the remote areas (e.g. in [`crate::window::Counted`]).
    pub fn map_remote<R2>(self, mut f: impl FnMut(R) -> R2) -> SideAreas<L, R2> {
        SideAreas {
            local_tx: self.local_tx,
            local_rx: self.local_rx,
            remote_tx: f(self.remote_tx),
            remote_rx: f(self.remote_rx),
        }
    }
    /// Wraps the local areas.
    pub fn map_local<L2>(self, mut f: impl FnMut(L) -> L2) -> SideAreas<L2, R> {
        SideAreas {
            local_tx: f(self.local_tx),
            local_rx: f(self.local_rx),
            remote_tx: self.remote_tx,
            remote_rx: self.remote_rx,
        }
    }
}

/// Where N posted queue pairs live in a window; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostedLinkLayout {
    ring: PostedLayout,
    queues: u16,
    /// Offset of the rx area inside a side's area.
    rx_off: usize,
    /// Size of one side's area, page-aligned.
    block: usize,
}

const fn bad(what: &'static str, value: u64) -> QueueError {
    QueueError::Layout { what, value }
}

impl PostedLinkLayout {
    /// A layout of `queues` queue pairs (1..=[`MAX_QUEUES`]), every ring (both
    /// directions) of geometry `ring`.
    pub fn new(ring: PostedLayout, queues: u16) -> Result<Self, QueueError> {
        if queues == 0 || queues > MAX_QUEUES {
            return Err(bad("queue count must be 1..=8", queues as u64));
        }
        if ring.buf_size() / 64 >= 1 << 14 {
            return Err(bad("buf_size must be below 1 MiB", ring.buf_size() as u64));
        }
        let rx_off = ring.tx_area_size().next_multiple_of(ALIGN);
        let block = (rx_off + ring.rx_area_size()).next_multiple_of(ALIGN);
        Ok(PostedLinkLayout {
            ring,
            queues,
            rx_off,
            block,
        })
    }

    /// The ring geometry.
    pub fn ring(&self) -> PostedLayout {
        self.ring
    }
    /// Number of queue pairs.
    pub fn queues(&self) -> u16 {
        self.queues
    }
    /// Bytes the window needs.
    pub fn window_size(&self) -> usize {
        HEADER_SIZE + 2 * self.queues as usize * self.block
    }

    /// Offset of the area of `side` for `queue` in the window.
    fn area_off(&self, queue: u16, side: Side) -> usize {
        HEADER_SIZE + (2 * queue as usize + side.index()) * self.block
    }

    fn param(&self, queue: u16, side: Side) -> u64 {
        let r = &self.ring;
        queue as u64
            | (side.index() as u64) << 8
            | (r.slots().trailing_zeros() as u64) << 10
            | (r.slot_size().trailing_zeros() as u64) << 16
            | (r.buffers() as u64) << 22
            | ((r.buf_size() / 64) as u64) << 50
    }

    /// The header areas of this layout (queue-major, side A first).
    pub fn header_areas(&self) -> Vec<Area> {
        let mut v = Vec::with_capacity(2 * self.queues as usize);
        for q in 0..self.queues {
            for side in [Side::A, Side::B] {
                let mut a = Area::new(
                    AreaKind::PostedRing,
                    self.area_off(q, side) as u64,
                    (self.rx_off + self.ring.rx_area_size()) as u64,
                );
                a.param = self.param(q, side);
                v.push(a);
            }
        }
        v
    }

    /// Lays the link out in a fresh window (side A, the creator): zeroes every ring
    /// area, then writes the header (its init stamp last). `w` must be at least
    /// [`window_size`](Self::window_size) bytes.
    pub fn create(&self, w: &dyn Window) -> Result<HeaderInfo, QueueError> {
        if w.len() < self.window_size() {
            return Err(bad("window smaller than the layout", w.len() as u64));
        }
        let region = w.region();
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut off = HEADER_SIZE;
        while off < self.window_size() {
            let n = (self.window_size() - off).min(ZEROS.len());
            region.write_bytes(off, &ZEROS[..n])?;
            off += n;
        }
        let params = HeaderParams {
            window_size: None,
            creator_pid: std::process::id(),
            flags: 0,
            areas: self.header_areas(),
        };
        // The rings are zeroed above, before the header's init stamp (written last by
        // Header::init with a Release store) makes the window valid for the peer.
        Ok(window::init_header(w, &params)?)
    }

    /// Rebuilds the layout from a validated header (the peer side) and checks that
    /// every posted area is exactly where this layout puts it.
    pub fn from_header(info: &HeaderInfo) -> Result<Self, QueueError> {
        let areas: Vec<&Area> = info
            .areas()
            .iter()
            .filter(|a| a.kind == AreaKind::PostedRing)
            .collect();
        let Some(first) = areas.first() else {
            return Err(bad("no posted ring areas in the header", 0));
        };
        let p = first.param;
        let log_slots = (p >> 10) & 0x3f;
        let log_slot_size = (p >> 16) & 0x3f;
        if log_slots >= 32 || log_slot_size >= 32 {
            return Err(bad("area param geometry out of range", p));
        }
        let ring = PostedLayout::new(
            1 << log_slots,
            1 << log_slot_size,
            ((p >> 22) & ((1 << 28) - 1)) as u32,
            ((p >> 50) * 64) as u32,
        )?;
        if areas.len() & 1 != 0 || areas.len() > 2 * MAX_QUEUES as usize {
            return Err(bad("posted area count", areas.len() as u64));
        }
        let me = Self::new(ring, (areas.len() / 2) as u16)?;
        let want = me.header_areas();
        if want.iter().zip(areas.iter()).any(|(a, b)| a != *b) {
            return Err(bad("posted areas differ from the layout they describe", p));
        }
        if (info.window_size as usize) < me.window_size() {
            return Err(bad("window smaller than the layout", info.window_size));
        }
        Ok(me)
    }

    /// Opens the header of `w` (the peer side) and rebuilds the layout.
    pub fn attach(w: &dyn Window) -> Result<Self, QueueError> {
        let info = window::open_header(w, &Expect::default())?;
        Self::from_header(&info)
    }

    /// The four regions `side` of `queue` works on.
    pub fn side_areas(
        &self,
        w: &dyn Window,
        side: Side,
        queue: u16,
    ) -> Result<SideAreas<Region, Region>, QueueError> {
        if queue >= self.queues {
            return Err(bad("queue index out of range", queue as u64));
        }
        if w.len() < self.window_size() {
            return Err(bad("window smaller than the layout", w.len() as u64));
        }
        let r = w.region();
        let tx = |s: Side| r.sub(self.area_off(queue, s), self.ring.tx_area_size());
        let rx = |s: Side| {
            r.sub(
                self.area_off(queue, s) + self.rx_off,
                self.ring.rx_area_size(),
            )
        };
        Ok(SideAreas {
            local_tx: tx(side)?,
            local_rx: rx(side)?,
            remote_tx: tx(side.peer())?,
            remote_rx: rx(side.peer())?,
        })
    }

    /// Builds the queue pair for `side` of `queue` (plain copy, default burst). Its RX
    /// grants its credits now.
    pub fn open_side(
        &self,
        w: &dyn Window,
        side: Side,
        queue: u16,
    ) -> Result<PostedQueuePair<Region, Region, PlainCopy>, QueueError> {
        self.open_side_with(w, side, queue, 0, PlainCopy)
    }

    /// As [`open_side`](Self::open_side) with a burst size and a copy routine.
    pub fn open_side_with<C: CopyFn>(
        &self,
        w: &dyn Window,
        side: Side,
        queue: u16,
        max_burst: usize,
        copy: C,
    ) -> Result<PostedQueuePair<Region, Region, C>, QueueError> {
        let areas = self.side_areas(w, side, queue)?;
        PostedQueuePair::with_copy(areas, self.ring, max_burst, copy)
    }
}

/// Builds a queue pair over any memory (for wrappers such as
/// [`crate::window::Counted`]): `areas` from [`PostedLinkLayout::side_areas`], mapped.
pub fn open_areas<L: Mem, R: Mem, C: CopyFn>(
    areas: SideAreas<L, R>,
    layout: &PostedLinkLayout,
    max_burst: usize,
    copy: C,
) -> Result<PostedQueuePair<L, R, C>, QueueError> {
    PostedQueuePair::with_copy(areas, layout.ring, max_burst, copy)
}
