//! [`Link`]: one RPMsg link on one host: a /dev/shm window, the queue pair of the
//! chosen ring mode on it, and the [`Rpmsg`] bus over that queue pair.
//!
//! | mode     | host (Linux side, owns buffers)   | remote                        |
//! |----------|-----------------------------------|-------------------------------|
//! | `posted` | side A: creates the window        | side B: attaches              |
//! | `split`  | virtio frontend (driver): creates | virtio backend (device)       |
//! | `packed` | virtio frontend (driver): creates | virtio backend (device)       |
//!
//! The host creates the window and lays it out ([`Link::create`]); the remote opens
//! it ([`Link::attach`], [`Link::attach_wait`]). One queue pair carries both
//! directions. Both directions' rings use buffers of the larger of the two
//! configured sizes (rounded up to 64 bytes); each direction's own size is enforced
//! by the bus (send: `TooLarge`; receive: counted drop).
//!
//! ```text
//!  window: | header | rings (posted or virtio layout) | pad to 4 KiB | control block (4 KiB) |
//!                                                                      pmd::control, at the
//!                                                                      first 4 KiB boundary
//!                                                                      after the rings
//! ```
//!
//! **Control plane.** Every link runs the `pmd::control` handshake in the block after
//! the rings: the remote is the virtio *device* ([`Backend`]: it offers the rpmsg
//! features, `VIRTIO_RPMSG_F_NS` among them, device type 7 = `VIRTIO_ID_RPMSG`), the
//! host the *driver* ([`Frontend`]: it accepts the subset it wants), as in
//! `virtio_rpmsg_bus`. Call [`Link::poll_control`] every few thousand polls (it is a
//! few loads): it runs the status progression and heartbeats, and tells the bus when
//! the peer is up (negotiated features: the name service is used only if NS was
//! negotiated), lost (sends fail with [`RpmsgError::PeerLost`]; the queue pair is
//! reset) and back (the queue pair restarts, sends resume). [`Link::connect`] waits
//! for the handshake.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pmd::control::{Backend, BackendConfig, Event, Frontend, FrontendConfig, Timing};
use pmd::copy::CopyEngine;
use pmd::queue::{Packed, PktHeader, RingMode as VirtioMode, Split};
use pmd::queue::{
    PktHandle, PktReturner, PostedLinkLayout, PostedQueuePair, QueueError, QueuePair, QueueStats,
    RxPkt, Side, TxSlot, VirtioBackend, VirtioFrontend, VirtioLinkLayout,
};
use pmd::window::{OpenOptions, ShmWindow, Window};
use rings::control::{QueueConfig, RingMode as CtlMode};
use rings::posted::{PostedLayout, SLOT_HEADER_SIZE};
use rings::{Mem, Region};

use crate::bus::{BusConfig, PeerState, Rpmsg};
use crate::error::RpmsgError;
use crate::wire::HDR_SIZE;

/// Ring mode of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RingMode {
    /// zerohop's posted ring (default; fastest).
    Posted,
    /// virtio 1.x split virtqueue (the layout standard virtio rpmsg peers use).
    Split,
    /// virtio 1.x packed virtqueue.
    Packed,
}

/// Which end of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The side that owns the buffers (Linux in a Linux-to-firmware setup): creates
    /// the window.
    Host,
    /// The other side: attaches to the window.
    Remote,
}

/// Settings of one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// The window file (usually under /dev/shm).
    pub window: PathBuf,
    /// Ring mode.
    pub mode: RingMode,
    /// This side's role.
    pub role: Role,
    /// Buffer size host -> remote, header included (default 512).
    pub host_to_remote_buf: usize,
    /// Buffer size remote -> host, header included (default 512).
    pub remote_to_host_buf: usize,
    /// Ring entries per direction (a power of two; default 256).
    pub ring_size: u32,
    /// Posted mode: slot size (a power of two >= 64; messages up to `slot_size - 16`
    /// bytes, rpmsg header included, travel inline in the slot). Default 128.
    pub slot_size: u32,
    /// Everything else of the bus (its buffer sizes are set from the two above).
    /// `bus.features` is what the remote offers / the host accepts.
    pub bus: BusConfig,
    /// Control plane heartbeat and peer timeout (default 10 ms / 100 ms).
    pub timing: Timing,
}

/// `VIRTIO_ID_RPMSG`: the virtio device id of an rpmsg device.
pub const VIRTIO_ID_RPMSG: u32 = 7;

/// Bytes of the control block area after the rings.
pub const CONTROL_AREA: usize = 4096;

impl LinkConfig {
    /// Defaults for `window`, `mode`, `role`.
    pub fn new(window: impl Into<PathBuf>, mode: RingMode, role: Role) -> Self {
        LinkConfig {
            window: window.into(),
            mode,
            role,
            host_to_remote_buf: crate::wire::DEFAULT_BUF_SIZE,
            remote_to_host_buf: crate::wire::DEFAULT_BUF_SIZE,
            ring_size: 256,
            slot_size: 128,
            bus: BusConfig::default(),
            timing: Timing::default(),
        }
    }

    fn bus_config(&self) -> BusConfig {
        let (tx, rx) = match self.role {
            Role::Host => (self.host_to_remote_buf, self.remote_to_host_buf),
            Role::Remote => (self.remote_to_host_buf, self.host_to_remote_buf),
        };
        BusConfig {
            tx_buf_size: tx,
            rx_buf_size: rx,
            ..self.bus.clone()
        }
    }

    fn ring_buf(&self) -> usize {
        self.host_to_remote_buf.max(self.remote_to_host_buf)
    }

    /// Largest payload a send carries inline, in its ring slot (posted mode; 0 in
    /// split and packed mode). Up to this size the copying [`Rpmsg::send`] beats
    /// [`Rpmsg::send_nocopy`]: the message rides in the slot's own cache lines, not in
    /// a buffer line more (64 B echo round trip 395 against 455 ns, docs/RPMSG.md),
    /// so reply with `send` when the payload fits.
    pub fn inline_payload(&self) -> usize {
        match self.mode {
            RingMode::Posted => {
                (self.slot_size as usize).saturating_sub(SLOT_HEADER_SIZE as usize + HDR_SIZE)
            }
            RingMode::Split | RingMode::Packed => 0,
        }
    }
}

/// The queue pair of a [`Link`]: one of every ring mode and role, dispatched by a
/// `match` (no allocation, no dynamic call).
#[allow(clippy::large_enum_variant)]
pub enum LinkQueue {
    /// Posted, either side.
    Posted(PostedQueuePair<Region, Region, CopyEngine>),
    /// Split, host (frontend).
    SplitHost(VirtioFrontend<Split, Region, CopyEngine>),
    /// Split, remote (backend).
    SplitRemote(VirtioBackend<Split, Region, CopyEngine>),
    /// Packed, host (frontend).
    PackedHost(VirtioFrontend<Packed, Region, CopyEngine>),
    /// Packed, remote (backend).
    PackedRemote(VirtioBackend<Packed, Region, CopyEngine>),
}

macro_rules! each {
    ($self:expr, $q:ident => $e:expr) => {
        match $self {
            LinkQueue::Posted($q) => $e,
            LinkQueue::SplitHost($q) => $e,
            LinkQueue::SplitRemote($q) => $e,
            LinkQueue::PackedHost($q) => $e,
            LinkQueue::PackedRemote($q) => $e,
        }
    };
}

impl QueuePair for LinkQueue {
    #[inline]
    fn rx_burst(&mut self, out: &mut [RxPkt]) -> Result<usize, QueueError> {
        each!(self, q => QueuePair::rx_burst(q, out))
    }
    #[inline]
    fn rx_ptr(&self, pkt: &RxPkt) -> Result<core::ptr::NonNull<u8>, QueueError> {
        each!(self, q => QueuePair::rx_ptr(q, pkt))
    }
    #[inline]
    fn rx_area(&self) -> Result<pmd::queue::RxArea, QueueError> {
        each!(self, q => QueuePair::rx_area(q))
    }
    #[inline]
    fn free(&mut self, pkts: &[PktHandle]) -> Result<(), QueueError> {
        each!(self, q => QueuePair::free(q, pkts))
    }
    fn returner(&self) -> PktReturner {
        each!(self, q => QueuePair::returner(q))
    }
    #[inline]
    fn tx_burst(&mut self, pkts: &[&[u8]], meta: u16) -> Result<usize, QueueError> {
        each!(self, q => QueuePair::tx_burst(q, pkts, meta))
    }
    #[inline]
    fn alloc_tx(&mut self, out: &mut [TxSlot]) -> Result<usize, QueueError> {
        each!(self, q => QueuePair::alloc_tx(q, out))
    }
    #[inline]
    fn tx_write(&self, slot: &TxSlot, at: usize, src: &[u8]) -> Result<(), QueueError> {
        each!(self, q => QueuePair::tx_write(q, slot, at, src))
    }
    #[inline]
    fn tx_commit(&mut self, slots: &[(TxSlot, u32, u16)]) -> Result<usize, QueueError> {
        each!(self, q => QueuePair::tx_commit(q, slots))
    }
    fn tx_cancel(&mut self, slots: &[TxSlot]) -> Result<(), QueueError> {
        each!(self, q => QueuePair::tx_cancel(q, slots))
    }
    fn stats(&self) -> QueueStats {
        each!(self, q => QueuePair::stats(q))
    }
    fn is_broken(&self) -> bool {
        each!(self, q => QueuePair::is_broken(q))
    }
    fn reset(&mut self) -> Result<(), QueueError> {
        each!(self, q => QueuePair::reset(q))
    }
    fn start(&mut self) -> Result<(), QueueError> {
        each!(self, q => QueuePair::start(q))
    }
    fn enable_rx_notify(&mut self) -> Result<bool, QueueError> {
        each!(self, q => QueuePair::enable_rx_notify(q))
    }
    fn disable_rx_notify(&mut self) -> Result<(), QueueError> {
        each!(self, q => QueuePair::disable_rx_notify(q))
    }
    fn set_peer_doorbell(&mut self, db: Option<std::sync::Arc<dyn pmd::notify::Doorbell>>) {
        each!(self, q => QueuePair::set_peer_doorbell(q, db))
    }
}

enum Layout {
    Posted(PostedLinkLayout),
    Virtio(VirtioLinkLayout),
}

impl Layout {
    /// Offset of the control block: the first 4 KiB boundary after the rings.
    fn control_offset(&self) -> usize {
        match self {
            Layout::Posted(l) => l.window_size(),
            Layout::Virtio(l) => l.window_size(),
        }
        .next_multiple_of(4096)
    }
    fn window_size(&self) -> usize {
        self.control_offset() + CONTROL_AREA
    }
}

/// This side of the link's control plane.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per link, never moved on the fast path
enum Ctl {
    /// The host: the virtio driver.
    Fe(Frontend),
    /// The remote: the virtio device.
    Be(Backend),
}

fn control_for(cfg: &LinkConfig, w: &ShmWindow, off: usize) -> Result<Ctl, RpmsgError> {
    let mem = w
        .region()
        .sub(off, CONTROL_AREA)
        .map_err(QueueError::from)?;
    let features = cfg.bus.features | rings::features::VIRTIO_F_VERSION_1;
    Ok(match cfg.role {
        Role::Host => Ctl::Fe(Frontend::new(
            mem,
            &FrontendConfig {
                wanted: features,
                required: 0,
                queue_pairs: 1,
                timing: cfg.timing,
            },
        )?),
        Role::Remote => {
            let size = u16::try_from(cfg.ring_size)
                .map_err(|_| RpmsgError::Config(format!("ring_size {}", cfg.ring_size)))?;
            Ctl::Be(Backend::new(
                mem,
                &BackendConfig {
                    device_type: VIRTIO_ID_RPMSG,
                    features,
                    ring_mode: match cfg.mode {
                        RingMode::Posted => CtlMode::Posted,
                        RingMode::Split => CtlMode::Split,
                        RingMode::Packed => CtlMode::Packed,
                    },
                    queues: vec![QueueConfig::symmetric(size)],
                    timing: cfg.timing,
                },
            )?)
        }
    })
}

fn layout_for(cfg: &LinkConfig) -> Result<Layout, RpmsgError> {
    let buf = cfg.ring_buf();
    match cfg.mode {
        RingMode::Posted => {
            let ring = PostedLayout::new(
                cfg.ring_size,
                cfg.slot_size,
                cfg.ring_size,
                buf.next_multiple_of(64) as u32,
            )
            .map_err(QueueError::from)?;
            Ok(Layout::Posted(PostedLinkLayout::new(ring, 1)?))
        }
        RingMode::Split | RingMode::Packed => {
            let mode = if cfg.mode == RingMode::Split {
                VirtioMode::Split
            } else {
                VirtioMode::Packed
            };
            let size = u16::try_from(cfg.ring_size)
                .map_err(|_| RpmsgError::Config(format!("ring_size {}", cfg.ring_size)))?;
            // Buffers hold the RPMsg message alone (rpmsg_hdr at byte 0, no zerohop
            // packet header): the buffer format of Linux virtio_rpmsg_bus.
            let b = buf.next_multiple_of(64) as u32;
            Ok(Layout::Virtio(
                VirtioLinkLayout::new(mode, size, b, 1)?.with_header(PktHeader::None),
            ))
        }
    }
}

/// One RPMsg link: the window and the bus over its queue pair (see the
/// [module docs](self)). Derefs to [`Rpmsg`].
pub struct Link {
    // Field order: the bus (and its queue pair) and the control plane drop before
    // the window.
    bus: Rpmsg<LinkQueue>,
    ctl: Ctl,
    window: ShmWindow,
    cfg: LinkConfig,
}

impl Link {
    /// Creates the window and lays the link out (the host). The window file is
    /// removed when the link drops.
    pub fn create(cfg: &LinkConfig) -> Result<Link, RpmsgError> {
        if cfg.role != Role::Host {
            return Err(RpmsgError::Config(
                "Link::create is for the host role".into(),
            ));
        }
        let layout = layout_for(cfg)?;
        let copy = *CopyEngine::global();
        let (size, ctl_off) = (layout.window_size(), layout.control_offset());
        let zero_control = |w: &ShmWindow| -> Result<(), RpmsgError> {
            // Zeroed before the layout's header init stamp makes the window valid.
            w.region()
                .write_bytes(ctl_off, &[0u8; CONTROL_AREA])
                .map_err(QueueError::from)?;
            Ok(())
        };
        let (window, q) = match layout {
            Layout::Posted(l) => {
                let w = ShmWindow::create(&cfg.window, size)?;
                zero_control(&w)?;
                l.create(&w)?;
                let q = l.open_side_with(&w, Side::A, 0, 0, copy)?;
                (w, LinkQueue::Posted(q))
            }
            Layout::Virtio(l) => {
                let w = ShmWindow::create(&cfg.window, size)?;
                zero_control(&w)?;
                l.create(&w)?;
                let q = match cfg.mode {
                    RingMode::Split => {
                        LinkQueue::SplitHost(l.open_frontend_with::<Split, _>(&w, 0, 0, copy)?)
                    }
                    _ => LinkQueue::PackedHost(l.open_frontend_with::<Packed, _>(&w, 0, 0, copy)?),
                };
                (w, q)
            }
        };
        let ctl = control_for(cfg, &window, ctl_off)?;
        Ok(Link {
            bus: Rpmsg::new(q, cfg.bus_config())?,
            ctl,
            window,
            cfg: cfg.clone(),
        })
    }

    /// Opens the host's window (the remote). Fails if it is not there or not yet
    /// initialised; [`attach_wait`](Self::attach_wait) retries.
    pub fn attach(cfg: &LinkConfig) -> Result<Link, RpmsgError> {
        if cfg.role != Role::Remote {
            return Err(RpmsgError::Config(
                "Link::attach is for the remote role".into(),
            ));
        }
        let w = ShmWindow::open(&cfg.window, &OpenOptions::new())?;
        let copy = *CopyEngine::global();
        let want = layout_for(cfg)?;
        let q = match cfg.mode {
            RingMode::Posted => {
                let l = PostedLinkLayout::attach(&w)?;
                if !matches!(&want, Layout::Posted(x) if *x == l) {
                    return Err(RpmsgError::Config(
                        "window layout differs from this link's settings".into(),
                    ));
                }
                LinkQueue::Posted(l.open_side_with(&w, Side::B, 0, 0, copy)?)
            }
            RingMode::Split | RingMode::Packed => {
                let l = VirtioLinkLayout::attach(&w)?;
                if !matches!(&want, Layout::Virtio(x) if *x == l) {
                    return Err(RpmsgError::Config(
                        "window layout differs from this link's settings".into(),
                    ));
                }
                match cfg.mode {
                    RingMode::Split => {
                        LinkQueue::SplitRemote(l.open_backend_with::<Split, _>(&w, 0, 0, copy)?)
                    }
                    _ => LinkQueue::PackedRemote(l.open_backend_with::<Packed, _>(&w, 0, 0, copy)?),
                }
            }
        };
        if w.len() < want.window_size() {
            return Err(RpmsgError::Config(
                "window has no control block (made by an older rpmsg-fast?)".into(),
            ));
        }
        let ctl = control_for(cfg, &w, want.control_offset())?;
        Ok(Link {
            bus: Rpmsg::new(q, cfg.bus_config())?,
            ctl,
            window: w,
            cfg: cfg.clone(),
        })
    }

    /// [`attach`](Self::attach), retried (yielding, then sleeping 1 ms) until it
    /// succeeds or `timeout` passes (then the last error).
    pub fn attach_wait(cfg: &LinkConfig, timeout: Duration) -> Result<Link, RpmsgError> {
        let deadline = Instant::now() + timeout;
        loop {
            match Self::attach(cfg) {
                Ok(l) => return Ok(l),
                Err(e @ RpmsgError::Config(_)) => return Err(e),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Creates (host) or attaches (remote, waiting up to 10 s) by the role.
    pub fn open(cfg: &LinkConfig) -> Result<Link, RpmsgError> {
        match cfg.role {
            Role::Host => Self::create(cfg),
            Role::Remote => Self::attach_wait(cfg, Duration::from_secs(10)),
        }
    }

    /// The settings.
    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }
    /// The window.
    pub fn window(&self) -> &ShmWindow {
        &self.window
    }
    /// The bus.
    pub fn bus(&mut self) -> &mut Rpmsg<LinkQueue> {
        &mut self.bus
    }

    /// Runs the control plane once (non-blocking: a few loads, maybe a heartbeat
    /// store or a handshake step) and applies what it saw to the bus:
    ///
    /// | event | bus |
    /// |-------|-----|
    /// | `Up`, `PeerBack` | [`Rpmsg::set_peer_up`] with the negotiated features (after a loss the queue pair restarts first) |
    /// | `PeerLost`, `PeerRestarted`, `ResetRequested` | [`Rpmsg::set_peer_lost`]: sends fail with `PeerLost`, queue pair reset |
    /// | `Command` (remote) | acknowledged with result 0 (no rpmsg commands) |
    ///
    /// Call it from the busy-poll loop every few thousand polls, or every
    /// millisecond; the peer is declared lost after `timing.peer_timeout` without
    /// its heartbeat.
    pub fn poll_control(&mut self) -> Result<Event, RpmsgError> {
        let now = Instant::now();
        let ev = match &mut self.ctl {
            Ctl::Fe(f) => f.poll(now)?,
            Ctl::Be(b) => b.poll(now)?,
        };
        match ev {
            Event::Up { features, .. } | Event::PeerBack { features, .. } => {
                if self.bus.peer_state() == PeerState::Lost {
                    self.bus.queue_mut().start()?;
                }
                self.bus.set_peer_up(features);
            }
            Event::PeerLost { .. } | Event::PeerRestarted { .. } | Event::ResetRequested => {
                if self.bus.peer_state() != PeerState::Lost {
                    self.bus.set_peer_lost()?;
                }
            }
            Event::Command { seq, .. } => {
                if let Ctl::Be(b) = &mut self.ctl {
                    b.complete_command(seq, 0)?;
                }
            }
            Event::CommandDone { .. } | Event::Idle => {}
        }
        Ok(ev)
    }

    /// Polls the control plane (yielding between polls) until the handshake is
    /// complete, or `deadline` ([`RpmsgError::Timeout`]). Returns at once if the
    /// peer is already up. The peer must be polling its control plane too.
    pub fn connect(&mut self, deadline: Instant) -> Result<(), RpmsgError> {
        while self.bus.peer_state() != PeerState::Up {
            self.poll_control()?;
            if self.bus.peer_state() == PeerState::Up {
                break;
            }
            if Instant::now() >= deadline {
                return Err(RpmsgError::Timeout);
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    /// True once the handshake completed and the peer is not lost.
    pub fn is_up(&self) -> bool {
        self.bus.peer_state() == PeerState::Up
    }

    /// The control plane's generation of this side (bumped per process / reset).
    pub fn generation(&self) -> u64 {
        match &self.ctl {
            Ctl::Fe(f) => f.generation(),
            Ctl::Be(b) => b.generation(),
        }
    }

    /// [`Rpmsg::announce`], after the handshake (waiting up to the send timeout for
    /// it): the announcement goes out only if `VIRTIO_RPMSG_F_NS` was negotiated
    /// (otherwise [`RpmsgError::NsDisabled`]).
    pub fn announce(&mut self, ep: crate::EndpointId) -> Result<(), RpmsgError> {
        let deadline = Instant::now() + self.bus.config().send_timeout;
        self.connect(deadline)?;
        self.bus.announce(ep)
    }

    /// [`Rpmsg::withdraw`], after the handshake (as [`announce`](Self::announce)).
    pub fn withdraw(&mut self, ep: crate::EndpointId) -> Result<(), RpmsgError> {
        let deadline = Instant::now() + self.bus.config().send_timeout;
        self.connect(deadline)?;
        self.bus.withdraw(ep)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Tell the peer we are going (it resets its side now instead of waiting for
        // the heartbeat timeout); best effort.
        let _ = match &mut self.ctl {
            Ctl::Fe(f) => f.reset(),
            Ctl::Be(b) => b.request_reset(),
        };
    }
}

impl core::ops::Deref for Link {
    type Target = Rpmsg<LinkQueue>;
    fn deref(&self) -> &Self::Target {
        &self.bus
    }
}

impl core::ops::DerefMut for Link {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.bus
    }
}

impl core::fmt::Debug for Link {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Link")
            .field("cfg", &self.cfg)
            .field("ctl", &self.ctl)
            .field("bus", &self.bus)
            .finish()
    }
}
