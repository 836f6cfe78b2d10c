//! [`Rpmsg`]: the RPMsg bus over one queue pair of any ring mode, with endpoints, the
//! name service and the zero-copy calls.
//!
//! ```text
//!            poll(): one rx_burst
//!  queue pair ─────────────────────> header copied out (16 B), validated once
//!                                       │
//!            dst == 53 ─────────────────┼──> name service table (create/destroy)
//!            dst unknown ───────────────┼──> counted drop, buffer freed
//!            endpoint with a callback ──┼──> callback(&Msg) in place, buffer freed
//!            otherwise ─────────────────┴──> endpoint queue (bounded, in order):
//!                                               buffered packet: kept in place (zero copy)
//!                                               inline packet:   copied to the endpoint's slab
//!                                               queue full:      counted drop, buffer freed
//!  recv(ep) -> RxBuf (held) ... payload(&buf) ... release(buf)
//! ```
//!
//! Inline packets (posted mode, short messages inside a ring slot) are copied into a
//! per-endpoint slab when queued, because a held inline slot holds back the release of
//! every later slot: an endpoint that never reads must not stall the others. Buffered
//! packets stay in place until released.
//!
//! All tables and scratch arrays are allocated when the bus or an endpoint is created;
//! poll, send and receive allocate nothing.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use pmd::queue::{PktHandle, QueuePair, RxPkt, TxSlot, MAX_BURST};
use rings::{Mem, Region};

use crate::error::{RpmsgError, WireError};
use crate::wire::{
    NsAction, NsMsg, RpmsgHdr, ADDR_ANY, DEFAULT_BUF_SIZE, HDR_SIZE, NAME_SIZE, NS_ADDR,
    NS_MSG_SIZE, RESERVED_ADDRESSES, VIRTIO_RPMSG_F_NS,
};

/// Messages one [`Rpmsg::send_burst`] call stages at most.
pub const SEND_BURST: usize = 32;

/// Addresses below this are found through a direct-indexed table on receive (fixed
/// addresses and the first dynamic ones); larger ones through a hash map.
pub const DIRECT_ADDRS: usize = 2048;

/// Released ring buffers batched before one `free` (see [`Rpmsg::release`]).
const FREE_BATCH: usize = 32;

/// The peer as the link's control plane last saw it ([`Rpmsg::set_peer_up`],
/// [`Rpmsg::set_peer_lost`]; `Link::poll_control` calls them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// No handshake has completed yet (or the bus has no control plane): sends go
    /// out; the ring's own back-pressure applies.
    Unknown,
    /// The handshake completed; features negotiated.
    Up,
    /// The peer was lost (heartbeat stopped, restarted, reset): sends fail with
    /// [`RpmsgError::PeerLost`] until the handshake completes again.
    Lost,
}

/// Settings of one bus (one side of one link).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusConfig {
    /// Bytes of each buffer this side sends (header included); the peer's receive
    /// size. Default 512.
    pub tx_buf_size: usize,
    /// Bytes of each buffer this side receives (header included). Default 512.
    pub rx_buf_size: usize,
    /// Virtio feature bits of the rpmsg device; bit [`VIRTIO_RPMSG_F_NS`] turns the
    /// name service on. Both sides must agree. Default: name service on.
    pub features: u64,
    /// Most endpoints at once. Default 64.
    pub max_endpoints: usize,
    /// Messages one endpoint queues before it drops (and counts). Default 32.
    pub rx_queue_depth: usize,
    /// Remote services remembered from announcements. Default 64.
    pub max_services: usize,
    /// How long [`Rpmsg::send`] waits for a buffer (Linux waits 15 s). Default 15 s.
    pub send_timeout: Duration,
    /// Messages one [`Rpmsg::poll`] takes from the ring at most. Default 32.
    pub rx_burst: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            tx_buf_size: DEFAULT_BUF_SIZE,
            rx_buf_size: DEFAULT_BUF_SIZE,
            features: 1 << VIRTIO_RPMSG_F_NS,
            max_endpoints: 64,
            rx_queue_depth: 32,
            max_services: 64,
            send_timeout: Duration::from_secs(15),
            rx_burst: 32,
        }
    }
}

/// How an endpoint gets its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Addr {
    /// This address (not 53, not `RPMSG_ADDR_ANY`).
    Fixed(u32),
    /// The next free address from 1024 up.
    Dynamic,
}

/// Names a local endpoint. Stale handles (destroyed endpoints) are refused with
/// [`RpmsgError::NoEndpoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointId {
    slot: u16,
    gen: u16,
}

/// A message handed to a callback, in place.
#[derive(Debug)]
pub struct Msg<'a> {
    /// Sender's address.
    pub src: u32,
    /// Our endpoint's address.
    pub dst: u32,
    /// The payload (in shared memory: copy values out before validating them).
    pub data: &'a [u8],
}

/// A name service event (for [`Rpmsg::on_service`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsEvent<'a> {
    /// Service name.
    pub name: &'a str,
    /// Its address on the peer.
    pub addr: u32,
    /// Create or destroy.
    pub action: NsAction,
}

/// Per-endpoint counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Messages delivered (queued or handed to the callback).
    pub rx: u64,
    /// Messages dropped because the endpoint's queue was full.
    pub dropped_full: u64,
    /// Messages sent from this endpoint.
    pub tx: u64,
}

/// Bus counters (serialised as they are named, e.g. in `zerohop rpmsg-guest --json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BusStats {
    /// Messages taken from the ring.
    pub rx: u64,
    /// Messages sent.
    pub tx: u64,
    /// Dropped: too short for a header, or `len` past the buffer.
    pub bad_header: u64,
    /// Dropped: no endpoint at the destination.
    pub unknown_dst: u64,
    /// Dropped: a queue was full.
    pub dropped_full: u64,
    /// Name service messages handled.
    pub ns_rx: u64,
    /// Name service messages refused (bad size, no NUL, bad flags, unknown destroy,
    /// table full, or name service off).
    pub ns_errors: u64,
}

/// Where a queued or held message lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// In the ring's receive buffer, payload at `off` of the queue pair's rx memory.
    Ring { pkt: RxPkt },
    /// Copied into the endpoint slab slot `idx`.
    Slab { idx: u16 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    place: Place,
    src: u32,
    dst: u32,
    len: u16,
}

/// A received message the application holds (from [`Rpmsg::recv`]). Read it with
/// [`Rpmsg::payload`]; give it back with [`Rpmsg::release`], which consumes it, so a
/// released buffer cannot be used again. Dropping it without releasing leaks its ring
/// buffer until the bus is reset.
#[must_use = "a received buffer must be given back with Rpmsg::release"]
#[derive(Debug, PartialEq, Eq)]
pub struct RxBuf {
    entry: Entry,
    ep: EndpointId,
    /// The bus's peer epoch when queued: a buffer from before a peer loss (the queue
    /// was reset since) is released as a no-op.
    epoch: u32,
}

impl RxBuf {
    /// Sender's address.
    pub fn src(&self) -> u32 {
        self.entry.src
    }
    /// Destination (our endpoint's address).
    pub fn dst(&self) -> u32 {
        self.entry.dst
    }
    /// Payload length.
    pub fn len(&self) -> usize {
        self.entry.len as usize
    }
    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.entry.len == 0
    }
}

/// A transmit buffer in peer-visible memory (from [`Rpmsg::get_tx_buffer`]): fill
/// [`payload_mut`](Self::payload_mut) in place, then [`Rpmsg::send_nocopy`] (or
/// [`Rpmsg::cancel_tx`]); both consume it.
#[must_use = "a transmit buffer must be sent or cancelled"]
#[derive(Debug)]
pub struct TxBuf {
    slot: TxSlot,
    max: usize,
    /// The bus's peer epoch when taken (a buffer from before a peer loss is stale).
    epoch: u32,
}

impl TxBuf {
    /// Payload capacity (the direction's buffer size minus the 16-byte header).
    pub fn capacity(&self) -> usize {
        self.max
    }
    /// The payload area, in the peer-visible buffer (no copy on send).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        // SAFETY: the slot's pointer covers `capacity()` bytes of a buffer the queue
        // handed to us exclusively (alloc_tx) and that stays mapped while the queue
        // lives; `max + HDR_SIZE <= capacity` was checked in get_tx_buffer. The slice
        // borrows `self`, and `self` is consumed by send_nocopy / cancel_tx, so no
        // slice outlives our ownership of the buffer.
        unsafe { core::slice::from_raw_parts_mut(self.slot.ptr().as_ptr().add(HDR_SIZE), self.max) }
    }
}

/// A per-endpoint receive callback.
type MsgCallback = Box<dyn FnMut(&Msg<'_>) + Send>;
/// A name service event callback.
type NsCallback = Box<dyn FnMut(NsEvent<'_>) + Send>;

struct Endpoint {
    gen: u16,
    live: bool,
    addr: u32,
    name: [u8; NAME_SIZE],
    name_len: usize,
    announced: bool,
    /// Default destination (from `bind` or `set_destination`).
    dst: u32,
    /// Name this endpoint is bound to (resolved through announcements).
    bind: [u8; NAME_SIZE],
    bind_len: usize,
    /// Queue of `depth` entries (ring buffer).
    queue: Box<[Entry]>,
    head: usize,
    count: usize,
    /// Copies of queued/held inline messages: `depth` slots of `rx_buf_size`.
    slab: Region,
    slab_free: Vec<u16>,
    callback: Option<MsgCallback>,
    stats: EndpointStats,
}

impl Endpoint {
    fn name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }
}

const EMPTY_ENTRY: Entry = Entry {
    place: Place::Slab { idx: 0 },
    src: 0,
    dst: 0,
    len: 0,
};

/// The RPMsg bus over one queue pair `Q`; see the [module docs](self).
pub struct Rpmsg<Q: QueuePair> {
    q: Q,
    cfg: BusConfig,
    eps: Vec<Endpoint>,
    /// Addresses >= DIRECT_ADDRS -> endpoint slot.
    by_addr: HashMap<u32, u16>,
    /// Addresses < DIRECT_ADDRS -> endpoint slot + 1 (0: none).
    direct: Box<[u16]>,
    /// Released ring buffers not yet freed (freed in one batch: poll, flush, full).
    pending_free: Vec<PktHandle>,
    peer: PeerState,
    /// Features the control plane negotiated (None: no handshake yet).
    negotiated: Option<u64>,
    /// Bumped on every peer loss (the queue pair is reset then).
    epoch: u32,
    next_dynamic: u32,
    services: Vec<([u8; NAME_SIZE], u32)>,
    ns_cb: Option<NsCallback>,
    rx: Box<[RxPkt]>,
    frees: Vec<PktHandle>,
    stage: Box<[u8]>,
    stats: BusStats,
    last_error: Option<WireError>,
}

fn name_bytes(name: &str) -> Result<([u8; NAME_SIZE], usize), RpmsgError> {
    let n = name.as_bytes();
    if n.is_empty() || n.len() >= NAME_SIZE || n.contains(&0) {
        return Err(WireError::BadName { len: n.len() }.into());
    }
    let mut b = [0u8; NAME_SIZE];
    b[..n.len()].copy_from_slice(n);
    Ok((b, n.len()))
}

/// How long a blocking send may wait: until an instant, or for a duration counted
/// from the first time no buffer is free (so a send that succeeds at once reads no
/// clock).
#[derive(Clone, Copy)]
enum Until {
    At(Instant),
    After(Duration),
}

impl<Q: QueuePair> Rpmsg<Q> {
    /// A bus over `q`. Buffer sizes must be at least 17 bytes (a header and one
    /// payload byte) and at most 65535 + 16 (the header's `len` is a `u16`).
    pub fn new(q: Q, cfg: BusConfig) -> Result<Self, RpmsgError> {
        for (what, v) in [
            ("tx_buf_size", cfg.tx_buf_size),
            ("rx_buf_size", cfg.rx_buf_size),
        ] {
            if v <= HDR_SIZE || v > HDR_SIZE + u16::MAX as usize {
                return Err(RpmsgError::Config(format!("{what} {v} outside 17..=65551")));
            }
        }
        if cfg.max_endpoints == 0 || cfg.max_endpoints > u16::MAX as usize {
            return Err(RpmsgError::Config("max_endpoints must be 1..=65535".into()));
        }
        if cfg.rx_queue_depth == 0 || cfg.rx_queue_depth > u16::MAX as usize {
            return Err(RpmsgError::Config(
                "rx_queue_depth must be 1..=65535".into(),
            ));
        }
        let burst = cfg.rx_burst.clamp(1, MAX_BURST);
        Ok(Rpmsg {
            q,
            eps: Vec::with_capacity(cfg.max_endpoints),
            by_addr: HashMap::with_capacity(cfg.max_endpoints * 2),
            direct: vec![0u16; DIRECT_ADDRS].into_boxed_slice(),
            pending_free: Vec::with_capacity(FREE_BATCH),
            peer: PeerState::Unknown,
            negotiated: None,
            epoch: 0,
            next_dynamic: RESERVED_ADDRESSES,
            services: Vec::with_capacity(cfg.max_services),
            ns_cb: None,
            rx: vec![RxPkt::default(); burst].into_boxed_slice(),
            frees: Vec::with_capacity(burst),
            stage: vec![0u8; SEND_BURST * cfg.tx_buf_size].into_boxed_slice(),
            stats: BusStats::default(),
            last_error: None,
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &BusConfig {
        &self.cfg
    }
    /// The queue pair.
    pub fn queue(&self) -> &Q {
        &self.q
    }
    /// The queue pair, mutable (reset after a peer violation).
    pub fn queue_mut(&mut self) -> &mut Q {
        &mut self.q
    }
    /// Bus counters.
    pub fn stats(&self) -> BusStats {
        self.stats
    }
    /// The last malformed input seen (for logs).
    pub fn last_error(&self) -> Option<WireError> {
        self.last_error
    }
    /// True if the name service is on (`VIRTIO_RPMSG_F_NS`): configured, and
    /// negotiated if a handshake has run ([`set_peer_up`](Self::set_peer_up)).
    pub fn ns_enabled(&self) -> bool {
        let f = self.negotiated.unwrap_or(self.cfg.features) & self.cfg.features;
        f & (1 << VIRTIO_RPMSG_F_NS) != 0
    }

    /// The features the control plane negotiated, if a handshake completed.
    pub fn negotiated_features(&self) -> Option<u64> {
        self.negotiated
    }

    /// The peer's state as the control plane last reported it.
    pub fn peer_state(&self) -> PeerState {
        self.peer
    }

    /// The handshake completed with `features` accepted: sends go out again, and
    /// the name service is used only if `VIRTIO_RPMSG_F_NS` is among `features`.
    pub fn set_peer_up(&mut self, features: u64) {
        self.negotiated = Some(features);
        self.peer = PeerState::Up;
    }

    /// The peer is gone: later sends fail with [`RpmsgError::PeerLost`]; queued
    /// messages are dropped (held [`RxBuf`]s release as no-ops), the peer's
    /// services are forgotten (bound endpoints lose their destination), and the
    /// queue pair is reset. After the handshake completes again, call
    /// `queue_mut().start()` then [`set_peer_up`](Self::set_peer_up)
    /// (`Link::poll_control` does all this).
    pub fn set_peer_lost(&mut self) -> Result<(), RpmsgError> {
        self.peer = PeerState::Lost;
        self.epoch = self.epoch.wrapping_add(1);
        self.pending_free.clear();
        for e in self.eps.iter_mut() {
            while e.count > 0 {
                if let Place::Slab { idx } = e.queue[e.head].place {
                    e.slab_free.push(idx);
                }
                e.head = (e.head + 1) % e.queue.len();
                e.count -= 1;
            }
            if e.bind_len > 0 {
                e.dst = ADDR_ANY;
            }
        }
        self.services.clear();
        self.q.reset()?;
        Ok(())
    }

    /// Frees the ring buffers released since the last poll (one batch).
    /// [`poll`](Self::poll) does this first, so a busy-poll loop never needs it; call it
    /// when you stop polling but keep the link.
    pub fn flush(&mut self) -> Result<(), RpmsgError> {
        if !self.pending_free.is_empty() {
            let r = self.q.free(&self.pending_free);
            self.pending_free.clear();
            r?;
        }
        Ok(())
    }

    #[inline]
    fn slot_of(&self, addr: u32) -> Option<u16> {
        match self.direct.get(addr as usize) {
            Some(&s) => s.checked_sub(1),
            None => self.by_addr.get(&addr).copied(),
        }
    }
    fn addr_taken(&self, addr: u32) -> bool {
        self.slot_of(addr).is_some()
    }
    fn map_addr(&mut self, addr: u32, slot: u16) {
        match self.direct.get_mut(addr as usize) {
            Some(d) => *d = slot + 1,
            None => {
                self.by_addr.insert(addr, slot);
            }
        }
    }
    fn unmap_addr(&mut self, addr: u32) {
        match self.direct.get_mut(addr as usize) {
            Some(d) => *d = 0,
            None => {
                self.by_addr.remove(&addr);
            }
        }
    }
    /// Largest payload this side can send.
    pub fn max_payload(&self) -> usize {
        self.cfg.tx_buf_size - HDR_SIZE
    }

    // ------------------------------------------------------------- endpoints ----

    fn ep(&self, id: EndpointId) -> Result<&Endpoint, RpmsgError> {
        match self.eps.get(id.slot as usize) {
            Some(e) if e.live && e.gen == id.gen => Ok(e),
            _ => Err(RpmsgError::NoEndpoint),
        }
    }
    fn ep_mut(&mut self, id: EndpointId) -> Result<&mut Endpoint, RpmsgError> {
        match self.eps.get_mut(id.slot as usize) {
            Some(e) if e.live && e.gen == id.gen => Ok(e),
            _ => Err(RpmsgError::NoEndpoint),
        }
    }

    fn pick_dynamic(&mut self) -> Result<u32, RpmsgError> {
        // At most max_endpoints addresses are taken, so this ends within that many
        // steps past the cursor.
        for _ in 0..=self.cfg.max_endpoints {
            let a = self.next_dynamic;
            self.next_dynamic = if a >= ADDR_ANY - 1 {
                RESERVED_ADDRESSES
            } else {
                a + 1
            };
            if !self.addr_taken(a) {
                return Ok(a);
            }
        }
        Err(RpmsgError::NoSpace)
    }

    /// Creates an endpoint at `addr`, with an optional service `name` (for
    /// [`announce`](Self::announce)). Not announced yet.
    pub fn create_endpoint(
        &mut self,
        name: Option<&str>,
        addr: Addr,
    ) -> Result<EndpointId, RpmsgError> {
        let (nb, nlen) = match name {
            Some(n) => name_bytes(n)?,
            None => ([0; NAME_SIZE], 0),
        };
        let addr = match addr {
            Addr::Fixed(a) => {
                if a == NS_ADDR || a == ADDR_ANY || self.addr_taken(a) {
                    return Err(RpmsgError::AddrInUse { addr: a });
                }
                a
            }
            Addr::Dynamic => self.pick_dynamic()?,
        };
        let slot = match self.eps.iter().position(|e| !e.live) {
            Some(s) => s,
            None if self.eps.len() < self.cfg.max_endpoints => {
                let depth = self.cfg.rx_queue_depth;
                self.eps.push(Endpoint {
                    gen: 0,
                    live: false,
                    addr: 0,
                    name: [0; NAME_SIZE],
                    name_len: 0,
                    announced: false,
                    dst: ADDR_ANY,
                    bind: [0; NAME_SIZE],
                    bind_len: 0,
                    queue: vec![EMPTY_ENTRY; depth].into_boxed_slice(),
                    head: 0,
                    count: 0,
                    slab: Region::heap(depth * self.cfg.rx_buf_size),
                    slab_free: Vec::with_capacity(depth),
                    callback: None,
                    stats: EndpointStats::default(),
                });
                self.eps.len() - 1
            }
            None => return Err(RpmsgError::NoSpace),
        };
        let depth = self.cfg.rx_queue_depth;
        let e = &mut self.eps[slot];
        e.gen = e.gen.wrapping_add(1);
        e.live = true;
        e.addr = addr;
        e.name = nb;
        e.name_len = nlen;
        e.announced = false;
        e.dst = ADDR_ANY;
        e.bind_len = 0;
        e.head = 0;
        e.count = 0;
        e.slab_free.clear();
        e.slab_free.extend((0..depth as u16).rev());
        e.callback = None;
        e.stats = EndpointStats::default();
        let id = EndpointId {
            slot: slot as u16,
            gen: e.gen,
        };
        self.map_addr(addr, slot as u16);
        Ok(id)
    }

    /// The endpoint's address.
    pub fn addr(&self, ep: EndpointId) -> Result<u32, RpmsgError> {
        Ok(self.ep(ep)?.addr)
    }
    /// The endpoint's counters.
    pub fn endpoint_stats(&self, ep: EndpointId) -> Result<EndpointStats, RpmsgError> {
        Ok(self.ep(ep)?.stats)
    }
    /// Messages queued for the endpoint.
    pub fn pending(&self, ep: EndpointId) -> Result<usize, RpmsgError> {
        Ok(self.ep(ep)?.count)
    }
    /// Sets the endpoint's default destination (for [`send_default`](Self::send_default)).
    pub fn set_destination(&mut self, ep: EndpointId, dst: u32) -> Result<(), RpmsgError> {
        self.ep_mut(ep)?.dst = dst;
        Ok(())
    }
    /// The endpoint's default destination, if it has one.
    pub fn destination(&self, ep: EndpointId) -> Result<Option<u32>, RpmsgError> {
        let d = self.ep(ep)?.dst;
        Ok((d != ADDR_ANY).then_some(d))
    }

    /// Binds the endpoint to the remote service `name`: its default destination
    /// follows that service's announcements (set now if already announced, cleared
    /// on destroy).
    pub fn bind(&mut self, ep: EndpointId, name: &str) -> Result<(), RpmsgError> {
        let (nb, nlen) = name_bytes(name)?;
        let known = self.lookup(name);
        let e = self.ep_mut(ep)?;
        e.bind = nb;
        e.bind_len = nlen;
        e.dst = known.unwrap_or(ADDR_ANY);
        Ok(())
    }

    /// Sets a callback: messages for the endpoint are handed to it in place during
    /// [`poll`](Self::poll) and freed when it returns (they are not queued).
    pub fn set_callback(
        &mut self,
        ep: EndpointId,
        cb: impl FnMut(&Msg<'_>) + Send + 'static,
    ) -> Result<(), RpmsgError> {
        self.ep_mut(ep)?.callback = Some(Box::new(cb));
        Ok(())
    }

    /// Removes the endpoint's callback (messages are queued again).
    pub fn clear_callback(&mut self, ep: EndpointId) -> Result<(), RpmsgError> {
        self.ep_mut(ep)?.callback = None;
        Ok(())
    }

    /// Sets a callback for name service events from the peer.
    pub fn on_service(&mut self, cb: impl FnMut(NsEvent<'_>) + Send + 'static) {
        self.ns_cb = Some(Box::new(cb));
    }

    /// Announces the endpoint's name to the peer (`RPMSG_NS_CREATE`, waits up to the
    /// send timeout for a buffer).
    pub fn announce(&mut self, ep: EndpointId) -> Result<(), RpmsgError> {
        self.ns_send(ep, NsAction::Create)?;
        self.ep_mut(ep)?.announced = true;
        Ok(())
    }

    /// Withdraws the announcement (`RPMSG_NS_DESTROY`).
    pub fn withdraw(&mut self, ep: EndpointId) -> Result<(), RpmsgError> {
        self.ns_send(ep, NsAction::Destroy)?;
        self.ep_mut(ep)?.announced = false;
        Ok(())
    }

    fn ns_send(&mut self, ep: EndpointId, action: NsAction) -> Result<(), RpmsgError> {
        if !self.ns_enabled() {
            return Err(RpmsgError::NsDisabled);
        }
        let e = self.ep(ep)?;
        let name = core::str::from_utf8(e.name()).map_err(|_| WireError::BadName { len: 0 })?;
        let m = NsMsg::new(name, e.addr, action)?.to_bytes();
        let addr = e.addr;
        self.send_raw_deadline(addr, NS_ADDR, &m, Until::After(self.cfg.send_timeout))
    }

    /// Destroys the endpoint: withdraws its announcement (if the name service is on
    /// and a buffer is free), frees its queued messages, releases its address.
    /// Held [`RxBuf`]s of it must still be released.
    pub fn destroy_endpoint(&mut self, ep: EndpointId) -> Result<(), RpmsgError> {
        let announced = self.ep(ep)?.announced;
        if announced && self.ns_enabled() {
            // Best effort: the endpoint goes away even if no buffer is free.
            let m = {
                let e = self.ep(ep)?;
                let name = core::str::from_utf8(e.name()).unwrap_or("");
                NsMsg::new(name, e.addr, NsAction::Destroy).map(|m| (m.to_bytes(), e.addr))
            };
            if let Ok((m, addr)) = m {
                let _ = self.send_raw(addr, NS_ADDR, &m);
            }
        }
        let mut frees = core::mem::take(&mut self.frees);
        frees.clear();
        let e = self.ep_mut(ep)?;
        while e.count > 0 {
            let ent = e.queue[e.head];
            e.head = (e.head + 1) % e.queue.len();
            e.count -= 1;
            if let Place::Ring { pkt } = ent.place {
                frees.push(pkt.handle);
                if frees.len() == frees.capacity() {
                    break;
                }
            }
        }
        let rest = e.count;
        e.live = false;
        e.callback = None;
        let addr = e.addr;
        self.unmap_addr(addr);
        let r = self.q.free(&frees);
        frees.clear();
        self.frees = frees;
        r?;
        if rest > 0 {
            // More queued than one free batch: free the remainder.
            let e = &mut self.eps[ep.slot as usize];
            let mut left = Vec::with_capacity(rest);
            while e.count > 0 {
                let ent = e.queue[e.head];
                e.head = (e.head + 1) % e.queue.len();
                e.count -= 1;
                if let Place::Ring { pkt } = ent.place {
                    left.push(pkt.handle);
                }
            }
            self.q.free(&left)?;
        }
        Ok(())
    }

    /// The peer's address for the service `name`, if announced.
    pub fn lookup(&self, name: &str) -> Option<u32> {
        let (nb, _) = name_bytes(name).ok()?;
        self.services.iter().find(|s| s.0 == nb).map(|s| s.1)
    }

    // --------------------------------------------------------------- receive ----

    fn bad(&mut self, e: WireError) {
        self.last_error = Some(e);
    }

    /// Takes one burst from the ring and dispatches it (name service, callbacks,
    /// endpoint queues). Returns the messages taken. Call it from the busy-poll loop;
    /// [`recv`](Self::recv) calls it when the endpoint's queue is empty.
    pub fn poll(&mut self) -> Result<usize, RpmsgError> {
        self.flush()?;
        let n = self.q.rx_burst(&mut self.rx)?;
        if n == 0 {
            return Ok(0);
        }
        self.frees.clear();
        for i in 0..n {
            let pkt = self.rx[i];
            self.stats.rx += 1;
            if !self.dispatch(pkt)? {
                self.frees.push(pkt.handle);
            }
        }
        if !self.frees.is_empty() {
            self.q.free(&self.frees)?;
            self.frees.clear();
        }
        Ok(n)
    }

    /// Dispatches one packet; true if it was kept (queued in place).
    fn dispatch(&mut self, pkt: RxPkt) -> Result<bool, RpmsgError> {
        let Ok(ptr) = self.q.rx_ptr(&pkt) else {
            self.stats.bad_header += 1;
            return Ok(false);
        };
        let delivered = pkt.len as usize;
        // Copy the header out once (the peer can rewrite shared memory at any time).
        let mut hb = [0u8; HDR_SIZE];
        if delivered < HDR_SIZE {
            self.stats.bad_header += 1;
            self.bad(WireError::Short { len: delivered });
            return Ok(false);
        }
        // SAFETY: rx_ptr validated [off, off + len) inside the queue's rx memory, and
        // len >= HDR_SIZE; the buffer is ours until freed. A racing peer write can only
        // change the bytes we copy (u8 has no invalid values).
        unsafe { core::ptr::copy_nonoverlapping(ptr.as_ptr(), hb.as_mut_ptr(), HDR_SIZE) };
        let h = RpmsgHdr::from_bytes(&hb);
        if let Err(e) = RpmsgHdr::check_len(h.len, delivered, self.cfg.rx_buf_size) {
            self.stats.bad_header += 1;
            self.bad(e);
            return Ok(false);
        }
        let len = h.len as usize;
        // SAFETY: HDR_SIZE + len <= delivered (checked above), inside the validated range.
        let payload = unsafe { NonNull::new_unchecked(ptr.as_ptr().add(HDR_SIZE)) };
        if h.dst == NS_ADDR && self.ns_enabled() {
            self.stats.ns_rx += 1;
            let mut m = [0u8; NS_MSG_SIZE];
            let r = if len == NS_MSG_SIZE {
                // SAFETY: len == NS_MSG_SIZE bytes are inside the validated range.
                unsafe {
                    core::ptr::copy_nonoverlapping(payload.as_ptr(), m.as_mut_ptr(), NS_MSG_SIZE)
                };
                NsMsg::parse(&m)
            } else {
                Err(WireError::NsSize { len })
            };
            match r {
                Ok(msg) => {
                    if self.handle_ns(&msg).is_err() {
                        self.stats.ns_errors += 1;
                    }
                }
                Err(e) => {
                    self.stats.ns_errors += 1;
                    self.bad(e);
                }
            }
            return Ok(false);
        }
        let Some(slot) = self.slot_of(h.dst) else {
            self.stats.unknown_dst += 1;
            return Ok(false);
        };
        let rx_buf_size = self.cfg.rx_buf_size;
        let e = &mut self.eps[slot as usize];
        if let Some(cb) = e.callback.as_mut() {
            // SAFETY: `len` bytes at `payload` are inside the validated range of a
            // buffer we hold until it is freed after this call.
            let data = unsafe { core::slice::from_raw_parts(payload.as_ptr(), len) };
            cb(&Msg {
                src: h.src,
                dst: h.dst,
                data,
            });
            e.stats.rx += 1;
            return Ok(false);
        }
        if e.count == e.queue.len() {
            e.stats.dropped_full += 1;
            self.stats.dropped_full += 1;
            return Ok(false);
        }
        let place = if pkt.handle.is_inline() {
            // Copy out: a held inline slot would hold back every later slot.
            let Some(idx) = e.slab_free.pop() else {
                e.stats.dropped_full += 1;
                self.stats.dropped_full += 1;
                return Ok(false);
            };
            // SAFETY: as above, `len` validated bytes of a buffer we hold.
            let data = unsafe { core::slice::from_raw_parts(payload.as_ptr(), len) };
            if e.slab
                .write_bytes(idx as usize * rx_buf_size, data)
                .is_err()
            {
                e.slab_free.push(idx);
                return Ok(false);
            }
            Place::Slab { idx }
        } else {
            Place::Ring {
                pkt: RxPkt {
                    off: pkt.off + HDR_SIZE,
                    len: len as u32,
                    ..pkt
                },
            }
        };
        let at = (e.head + e.count) % e.queue.len();
        e.queue[at] = Entry {
            place,
            src: h.src,
            dst: h.dst,
            len: h.len,
        };
        e.count += 1;
        e.stats.rx += 1;
        Ok(matches!(place, Place::Ring { .. }))
    }

    fn handle_ns(&mut self, m: &NsMsg) -> Result<(), RpmsgError> {
        let name = m.name_str()?;
        let action = m.action()?;
        let pos = self.services.iter().position(|s| s.0 == m.name);
        match action {
            NsAction::Create => match pos {
                Some(p) => self.services[p].1 = m.addr,
                None if self.services.len() < self.cfg.max_services => {
                    self.services.push((m.name, m.addr))
                }
                None => return Err(RpmsgError::NoSpace),
            },
            NsAction::Destroy => match pos {
                Some(p) => {
                    self.services.swap_remove(p);
                }
                None => {
                    return Err(RpmsgError::UnknownService {
                        name: name.to_owned(),
                    })
                }
            },
        }
        let dst = match action {
            NsAction::Create => m.addr,
            NsAction::Destroy => ADDR_ANY,
        };
        for e in self.eps.iter_mut().filter(|e| e.live && e.bind_len > 0) {
            if e.bind == m.name {
                e.dst = dst;
            }
        }
        if let Some(cb) = self.ns_cb.as_mut() {
            cb(NsEvent {
                name,
                addr: m.addr,
                action,
            });
        }
        Ok(())
    }

    /// The next queued message of `ep`, held (zero copy) until
    /// [`release`](Self::release). Polls the ring once if the queue is empty.
    pub fn recv(&mut self, ep: EndpointId) -> Result<Option<RxBuf>, RpmsgError> {
        if self.ep(ep)?.count == 0 {
            self.poll()?;
        }
        self.try_recv(ep)
    }

    /// The next queued message of `ep`, without polling the ring (drain the
    /// endpoints after one [`poll`](Self::poll)).
    pub fn try_recv(&mut self, ep: EndpointId) -> Result<Option<RxBuf>, RpmsgError> {
        let e = self.ep_mut(ep)?;
        if e.count == 0 {
            return Ok(None);
        }
        let ent = e.queue[e.head];
        e.head = (e.head + 1) % e.queue.len();
        e.count -= 1;
        Ok(Some(RxBuf {
            entry: ent,
            ep,
            epoch: self.epoch,
        }))
    }

    /// As [`recv`](Self::recv), polling (and yielding the thread between polls)
    /// until a message arrives or `deadline` passes ([`RpmsgError::Timeout`]).
    pub fn recv_deadline(
        &mut self,
        ep: EndpointId,
        deadline: Instant,
    ) -> Result<RxBuf, RpmsgError> {
        loop {
            if let Some(b) = self.recv(ep)? {
                return Ok(b);
            }
            if Instant::now() >= deadline {
                return Err(RpmsgError::Timeout);
            }
            std::thread::yield_now();
        }
    }

    /// Receives one message by copy into `out` and releases its buffer; returns
    /// `(src, len)` (payload truncated to `out.len()`), or `None` if none is queued.
    pub fn recv_copy(
        &mut self,
        ep: EndpointId,
        out: &mut [u8],
    ) -> Result<Option<(u32, usize)>, RpmsgError> {
        let Some(b) = self.recv(ep)? else {
            return Ok(None);
        };
        let d = self.payload(&b);
        let n = d.len().min(out.len());
        out[..n].copy_from_slice(&d[..n]);
        let src = b.src();
        self.release(b)?;
        Ok(Some((src, n)))
    }

    /// The payload of a held message (in place for ring buffers). A buffer of
    /// another bus, or of a destroyed endpoint, gives an empty slice.
    pub fn payload(&self, b: &RxBuf) -> &[u8] {
        let len = b.entry.len as usize;
        let ptr = match b.entry.place {
            Place::Ring { .. } if b.epoch != self.epoch => None,
            Place::Ring { pkt } => self.q.rx_ptr(&pkt).ok(),
            Place::Slab { idx } => self.ep(b.ep).ok().and_then(|e| {
                e.slab
                    .range_ptr(idx as usize * self.cfg.rx_buf_size, len)
                    .ok()
            }),
        };
        match ptr {
            // SAFETY: rx_ptr / range_ptr validated `len` bytes inside memory that the
            // queue (or the endpoint's slab) keeps mapped while `self` is borrowed; the
            // buffer is held (RxBuf is not Clone), so neither the queue nor the peer
            // reuses it before release. Writes to the slab need `&mut self`.
            Some(p) => unsafe { core::slice::from_raw_parts(p.as_ptr(), len) },
            None => &[],
        }
    }

    /// Gives a held message back (its ring buffer returns to the peer). Consumes it.
    /// Ring buffers are freed in batches: at the next [`poll`](Self::poll) (or
    /// [`recv`](Self::recv), or a waiting send), at [`flush`](Self::flush), or when
    /// 32 are pending.
    pub fn release(&mut self, b: RxBuf) -> Result<(), RpmsgError> {
        match b.entry.place {
            Place::Ring { .. } if b.epoch != self.epoch => {}
            Place::Ring { pkt } => {
                if self.pending_free.len() == self.pending_free.capacity() {
                    self.flush()?;
                }
                self.pending_free.push(pkt.handle);
            }
            Place::Slab { idx } => {
                if let Ok(e) = self.ep_mut(b.ep) {
                    e.slab_free.push(idx);
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ send ----

    fn check_len(&self, len: usize) -> Result<(), RpmsgError> {
        if len > self.max_payload() {
            return Err(RpmsgError::TooLarge {
                len,
                max: self.max_payload(),
            });
        }
        Ok(())
    }

    #[inline]
    fn check_peer(&self) -> Result<(), RpmsgError> {
        if self.peer == PeerState::Lost {
            return Err(RpmsgError::PeerLost);
        }
        Ok(())
    }

    fn send_raw(&mut self, src: u32, dst: u32, data: &[u8]) -> Result<(), RpmsgError> {
        self.check_peer()?;
        self.check_len(data.len())?;
        let hdr = RpmsgHdr::new(src, dst, data.len() as u16).to_bytes();
        let m = HDR_SIZE + data.len();
        self.stage[..HDR_SIZE].copy_from_slice(&hdr);
        self.stage[HDR_SIZE..m].copy_from_slice(data);
        // One copy across the link (tx_burst), from the cache-hot stage.
        let n = self.q.tx_burst(&[&self.stage[..m]], 0)?;
        if n == 0 {
            return Err(RpmsgError::WouldBlock);
        }
        self.stats.tx += 1;
        Ok(())
    }

    fn send_raw_deadline(
        &mut self,
        src: u32,
        dst: u32,
        data: &[u8],
        mut until: Until,
    ) -> Result<(), RpmsgError> {
        loop {
            match self.send_raw(src, dst, data) {
                Err(RpmsgError::WouldBlock) => {
                    let now = Instant::now();
                    // The clock is read only once no buffer is free: a read (~20 ns
                    // of vDSO) on every send is on the critical path of a reply.
                    let deadline = match until {
                        Until::At(t) => t,
                        Until::After(d) => {
                            until = Until::At(now + d);
                            now + d
                        }
                    };
                    if now >= deadline {
                        return Err(RpmsgError::Timeout);
                    }
                    // Keep receiving meanwhile: our frees are what lets the peer
                    // send, and the peer may be waiting for us.
                    self.poll()?;
                    std::thread::yield_now();
                }
                r => return r,
            }
        }
    }

    /// Sends `data` from `ep` to `dst` if a buffer is free now; never blocks
    /// ([`RpmsgError::WouldBlock`] otherwise).
    pub fn try_send(&mut self, ep: EndpointId, dst: u32, data: &[u8]) -> Result<(), RpmsgError> {
        let src = self.ep(ep)?.addr;
        self.send_raw(src, dst, data)?;
        self.eps[ep.slot as usize].stats.tx += 1;
        Ok(())
    }

    /// Sends, waiting (polling receive and yielding) until `deadline` for a buffer.
    pub fn send_deadline(
        &mut self,
        ep: EndpointId,
        dst: u32,
        data: &[u8],
        deadline: Instant,
    ) -> Result<(), RpmsgError> {
        self.send_until(ep, dst, data, Until::At(deadline))
    }

    /// Sends, waiting up to the send timeout (like Linux `rpmsg_send`).
    pub fn send(&mut self, ep: EndpointId, dst: u32, data: &[u8]) -> Result<(), RpmsgError> {
        self.send_until(ep, dst, data, Until::After(self.cfg.send_timeout))
    }

    fn send_until(
        &mut self,
        ep: EndpointId,
        dst: u32,
        data: &[u8],
        until: Until,
    ) -> Result<(), RpmsgError> {
        let src = self.ep(ep)?.addr;
        self.send_raw_deadline(src, dst, data, until)?;
        self.eps[ep.slot as usize].stats.tx += 1;
        Ok(())
    }

    /// Sends to the endpoint's default destination (bound by name or set).
    pub fn send_default(&mut self, ep: EndpointId, data: &[u8]) -> Result<(), RpmsgError> {
        let dst = self.ep(ep)?.dst;
        if dst == ADDR_ANY {
            return Err(RpmsgError::NoDestination);
        }
        self.send(ep, dst, data)
    }

    /// Sends up to [`SEND_BURST`] messages from `ep` to `dst` with one publish;
    /// returns how many were accepted (fewer under back-pressure; never blocks).
    pub fn send_burst(
        &mut self,
        ep: EndpointId,
        dst: u32,
        msgs: &[&[u8]],
    ) -> Result<usize, RpmsgError> {
        let src = self.ep(ep)?.addr;
        self.check_peer()?;
        let k = msgs.len().min(SEND_BURST);
        let sz = self.cfg.tx_buf_size;
        let mut lens = [0usize; SEND_BURST];
        for (i, m) in msgs[..k].iter().enumerate() {
            self.check_len(m.len())?;
            let at = i * sz;
            let hdr = RpmsgHdr::new(src, dst, m.len() as u16).to_bytes();
            self.stage[at..at + HDR_SIZE].copy_from_slice(&hdr);
            self.stage[at + HDR_SIZE..at + HDR_SIZE + m.len()].copy_from_slice(m);
            lens[i] = HDR_SIZE + m.len();
        }
        let mut views: [&[u8]; SEND_BURST] = [&[]; SEND_BURST];
        for (i, v) in views[..k].iter_mut().enumerate() {
            *v = &self.stage[i * sz..i * sz + lens[i]];
        }
        let n = self.q.tx_burst(&views[..k], 0)?;
        self.stats.tx += n as u64;
        self.eps[ep.slot as usize].stats.tx += n as u64;
        Ok(n)
    }

    /// Takes an empty transmit buffer in peer-visible memory (zero-copy send);
    /// `None` if none is free now.
    pub fn get_tx_buffer(&mut self) -> Result<Option<TxBuf>, RpmsgError> {
        self.check_peer()?;
        let mut s = [TxSlot::default()];
        if self.q.alloc_tx(&mut s)? == 0 {
            return Ok(None);
        }
        let cap = (s[0].capacity() as usize).min(self.cfg.tx_buf_size);
        if cap <= HDR_SIZE {
            self.q.tx_cancel(&s)?;
            return Err(RpmsgError::Config(format!(
                "ring buffers of {cap} bytes cannot hold an rpmsg header"
            )));
        }
        Ok(Some(TxBuf {
            slot: s[0],
            max: cap - HDR_SIZE,
            epoch: self.epoch,
        }))
    }

    /// Sends a filled transmit buffer (`len` payload bytes) from `ep` to `dst`
    /// without copying the payload. Consumes the buffer.
    pub fn send_nocopy(
        &mut self,
        ep: EndpointId,
        dst: u32,
        buf: TxBuf,
        len: usize,
    ) -> Result<(), RpmsgError> {
        if buf.epoch != self.epoch || self.peer == PeerState::Lost {
            // The queue was reset at a loss since: the slot is stale, nothing to cancel.
            return Err(RpmsgError::PeerLost);
        }
        let src = match self.ep(ep) {
            Ok(e) => e.addr,
            Err(e) => {
                self.q.tx_cancel(&[buf.slot])?;
                return Err(e);
            }
        };
        if len > buf.max {
            self.q.tx_cancel(&[buf.slot])?;
            return Err(RpmsgError::TooLarge { len, max: buf.max });
        }
        let hdr = RpmsgHdr::new(src, dst, len as u16).to_bytes();
        self.q.tx_write(&buf.slot, 0, &hdr)?;
        let n = self
            .q
            .tx_commit(&[(buf.slot, (HDR_SIZE + len) as u32, 0)])?;
        if n == 0 {
            return Err(RpmsgError::WouldBlock);
        }
        self.stats.tx += 1;
        self.eps[ep.slot as usize].stats.tx += 1;
        Ok(())
    }

    /// Gives an unused transmit buffer back.
    pub fn cancel_tx(&mut self, buf: TxBuf) -> Result<(), RpmsgError> {
        if buf.epoch != self.epoch {
            return Ok(());
        }
        self.q.tx_cancel(&[buf.slot])?;
        Ok(())
    }
}

impl<Q: QueuePair> core::fmt::Debug for Rpmsg<Q> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rpmsg")
            .field("cfg", &self.cfg)
            .field("endpoints", &self.eps.iter().filter(|e| e.live).count())
            .field("peer", &self.peer)
            .field("services", &self.services.len())
            .field("stats", &self.stats)
            .finish()
    }
}
