//! [`VirtioLinkLayout`]: N split or packed queue pairs in one window, all of it the
//! frontend's memory (virtio convention).
//!
//! ```text
//!  window
//!  +------------------------------+ 0
//!  | header (rings::header)       |   per queue q, 3 header areas:
//!  +------------------------------+ HEADER_SIZE
//!  | queue 0: tx ring (page-align)|   Split/PackedRing, param: size | q<<16 | 0<<24 | buf<<32
//!  |          rx ring (page-align)|   Split/PackedRing, param: size | q<<16 | 1<<24 | buf<<32
//!  |          data: 2N buffers    |   Buffers,          param: buf | q<<32 | size<<40
//!  |            (TX pool 0..N,    |
//!  |             RX pool N..2N)   |
//!  +------------------------------+ + block (page-aligned)
//!  | queue 1 ...                  |
//!  +------------------------------+
//!  ...                              window_size = HEADER_SIZE + queues * block
//! ```
//!
//! `raw` is 1 when buffers carry no zerohop packet header ([`PktHeader::None`]).
//!
//! The creator (the frontend) zeroes every area, initialises every ring with its
//! driver halves, and only then writes the header, whose init stamp comes last: a
//! backend that opens a valid header sees initialised rings. The backend rebuilds the
//! whole layout from the header alone ([`VirtioLinkLayout::attach`]).

use rings::header::{Area, AreaKind, Expect, HeaderInfo, HeaderParams, HEADER_SIZE, MAX_AREAS};
use rings::{Mem, Region};

use super::virtio::{
    DriverHalf, Packed, PktHeader, RingKind, RingMode, Split, VirtioAreas, VirtioBackend,
    VirtioFrontend, VirtioGeometry,
};
use super::{CopyFn, PlainCopy, QueueError};
use crate::window::{self, Window};

/// Most queue pairs one window holds (three header areas each).
pub const MAX_VIRTIO_QUEUES: u16 = (MAX_AREAS / 3) as u16;

const ALIGN: usize = 4096;

const fn bad(what: &'static str, value: u64) -> QueueError {
    QueueError::Layout { what, value }
}

/// Where N split or packed queue pairs live in a window; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioLinkLayout {
    mode: RingMode,
    geo: VirtioGeometry,
    queues: u16,
    ring_bytes: usize,
    /// Offset of the rx ring and of the data area inside a queue's block.
    rx_off: usize,
    data_off: usize,
    block: usize,
}

impl VirtioLinkLayout {
    /// A layout of `queues` (1..=[`MAX_VIRTIO_QUEUES`]) queue pairs of `mode` with
    /// `ring_size` entries per virtqueue and `buf_size`-byte buffers (header included).
    pub fn new(
        mode: RingMode,
        ring_size: u16,
        buf_size: u32,
        queues: u16,
    ) -> Result<Self, QueueError> {
        if queues == 0 || queues > MAX_VIRTIO_QUEUES {
            return Err(bad("queue count must be 1..=5", queues as u64));
        }
        let geo = VirtioGeometry::new(ring_size, buf_size)?;
        let ring_bytes = match mode {
            RingMode::Split => Split::ring_bytes(ring_size)?,
            RingMode::Packed => Packed::ring_bytes(ring_size)?,
        };
        let rx_off = ring_bytes.next_multiple_of(ALIGN);
        let data_off = rx_off + ring_bytes.next_multiple_of(ALIGN);
        let block = (data_off + geo.data_bytes()).next_multiple_of(ALIGN);
        Ok(VirtioLinkLayout {
            mode,
            geo,
            queues,
            ring_bytes,
            rx_off,
            data_off,
            block,
        })
    }

    /// The same layout with buffers that start with `header` (default
    /// [`PktHeader::Meta`]); recorded in the window header, so the backend learns it.
    pub fn with_header(mut self, header: PktHeader) -> Self {
        self.geo = self.geo.with_header(header);
        self
    }

    /// The ring mode.
    pub fn mode(&self) -> RingMode {
        self.mode
    }
    /// Ring and buffer sizes.
    pub fn geometry(&self) -> VirtioGeometry {
        self.geo
    }
    /// Number of queue pairs.
    pub fn queues(&self) -> u16 {
        self.queues
    }
    /// Bytes the window needs.
    pub fn window_size(&self) -> usize {
        HEADER_SIZE + self.queues as usize * self.block
    }

    fn block_off(&self, q: u16) -> usize {
        HEADER_SIZE + q as usize * self.block
    }

    fn ring_kind(&self) -> AreaKind {
        match self.mode {
            RingMode::Split => AreaKind::SplitRing,
            RingMode::Packed => AreaKind::PackedRing,
        }
    }

    /// The header areas of this layout (per queue: tx ring, rx ring, data).
    pub fn header_areas(&self) -> Vec<Area> {
        let mut v = Vec::with_capacity(3 * self.queues as usize);
        let size = self.geo.ring_size as u64;
        let buf = self.geo.buf_size as u64;
        let raw = self.geo.header.is_empty() as u64;
        for q in 0..self.queues {
            let base = self.block_off(q);
            for (dir, off) in [(0u64, 0usize), (1, self.rx_off)] {
                let mut a = Area::new(
                    self.ring_kind(),
                    (base + off) as u64,
                    self.ring_bytes as u64,
                );
                a.param = size | (q as u64) << 16 | dir << 24 | raw << 25 | buf << 32;
                v.push(a);
            }
            let mut d = Area::new(
                AreaKind::Buffers,
                (base + self.data_off) as u64,
                self.geo.data_bytes() as u64,
            );
            d.param = buf | (q as u64) << 32 | size << 40;
            v.push(d);
        }
        v
    }

    /// Lays the link out in a fresh window (the frontend, the creator): zeroes every
    /// area, initialises every ring (driver halves), then writes the header (its init
    /// stamp last). `w` must be at least [`window_size`](Self::window_size) bytes.
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
        for q in 0..self.queues {
            let a = self.areas(w, q)?;
            let n = self.geo.ring_size;
            match self.mode {
                RingMode::Split => {
                    <Split as RingKind>::Driver::open(a.tx_ring, n, a.data.clone())?;
                    <Split as RingKind>::Driver::open(a.rx_ring, n, a.data)?;
                }
                RingMode::Packed => {
                    <Packed as RingKind>::Driver::open(a.tx_ring, n, a.data.clone())?;
                    <Packed as RingKind>::Driver::open(a.rx_ring, n, a.data)?;
                }
            }
        }
        let params = HeaderParams {
            window_size: None,
            creator_pid: std::process::id(),
            flags: 0,
            areas: self.header_areas(),
        };
        // The rings are initialised above, before the header's init stamp (written
        // last by Header::init with a Release store) makes the window valid.
        Ok(window::init_header(w, &params)?)
    }

    /// Rebuilds the layout from a validated header and checks that every virtio area
    /// is exactly where this layout puts it.
    pub fn from_header(info: &HeaderInfo) -> Result<Self, QueueError> {
        let areas: Vec<&Area> = info
            .areas()
            .iter()
            .filter(|a| {
                matches!(
                    a.kind,
                    AreaKind::SplitRing | AreaKind::PackedRing | AreaKind::Buffers
                )
            })
            .collect();
        let Some(first) = areas.first() else {
            return Err(bad("no virtio ring areas in the header", 0));
        };
        let mode = match first.kind {
            AreaKind::SplitRing => RingMode::Split,
            AreaKind::PackedRing => RingMode::Packed,
            _ => return Err(bad("first virtio area is not a ring", first.param)),
        };
        let p = first.param;
        let size = (p & 0xffff) as u16;
        let buf = p >> 32;
        if buf > u32::MAX as u64 {
            return Err(bad("buffer size out of range", buf));
        }
        if !areas.len().is_multiple_of(3) || areas.len() > 3 * MAX_VIRTIO_QUEUES as usize {
            return Err(bad("virtio area count", areas.len() as u64));
        }
        let header = if p >> 25 & 1 == 1 {
            PktHeader::None
        } else {
            PktHeader::Meta
        };
        let me = Self::new(mode, size, buf as u32, (areas.len() / 3) as u16)?.with_header(header);
        let want = me.header_areas();
        if want.iter().zip(areas.iter()).any(|(a, b)| a != *b) {
            return Err(bad("virtio areas differ from the layout they describe", p));
        }
        if (info.window_size as usize) < me.window_size() {
            return Err(bad("window smaller than the layout", info.window_size));
        }
        Ok(me)
    }

    /// Opens the header of `w` (the backend) and rebuilds the layout.
    pub fn attach(w: &dyn Window) -> Result<Self, QueueError> {
        let info = window::open_header(w, &Expect::default())?;
        Self::from_header(&info)
    }

    /// The three regions of queue `q`.
    pub fn areas(&self, w: &dyn Window, q: u16) -> Result<VirtioAreas<Region>, QueueError> {
        if q >= self.queues {
            return Err(bad("queue index out of range", q as u64));
        }
        if w.len() < self.window_size() {
            return Err(bad("window smaller than the layout", w.len() as u64));
        }
        let r = w.region();
        let base = self.block_off(q);
        Ok(VirtioAreas {
            tx_ring: r.sub(base, self.ring_bytes)?,
            rx_ring: r.sub(base + self.rx_off, self.ring_bytes)?,
            data: r.sub(base + self.data_off, self.geo.data_bytes())?,
        })
    }

    /// The frontend of queue `q` (plain copy, default burst). `K` must match
    /// [`mode`](Self::mode).
    pub fn open_frontend<K: RingKind>(
        &self,
        w: &dyn Window,
        q: u16,
    ) -> Result<VirtioFrontend<K, Region, PlainCopy>, QueueError> {
        self.open_frontend_with(w, q, 0, PlainCopy)
    }

    /// As [`open_frontend`](Self::open_frontend) with a burst size and a copy routine.
    pub fn open_frontend_with<K: RingKind, C: CopyFn>(
        &self,
        w: &dyn Window,
        q: u16,
        max_burst: usize,
        copy: C,
    ) -> Result<VirtioFrontend<K, Region, C>, QueueError> {
        self.check_mode::<K>()?;
        VirtioFrontend::new(self.areas(w, q)?, self.geo, max_burst, copy)
    }

    /// The backend of queue `q` (plain copy, default burst).
    pub fn open_backend<K: RingKind>(
        &self,
        w: &dyn Window,
        q: u16,
    ) -> Result<VirtioBackend<K, Region, PlainCopy>, QueueError> {
        self.open_backend_with(w, q, 0, PlainCopy)
    }

    /// As [`open_backend`](Self::open_backend) with a burst size and a copy routine.
    pub fn open_backend_with<K: RingKind, C: CopyFn>(
        &self,
        w: &dyn Window,
        q: u16,
        max_burst: usize,
        copy: C,
    ) -> Result<VirtioBackend<K, Region, C>, QueueError> {
        self.check_mode::<K>()?;
        VirtioBackend::new(self.areas(w, q)?, self.geo, max_burst, copy)
    }

    fn check_mode<K: RingKind>(&self) -> Result<(), QueueError> {
        if K::MODE != self.mode {
            return Err(bad(
                "ring kind does not match the layout's mode",
                K::MODE as u64,
            ));
        }
        Ok(())
    }
}
