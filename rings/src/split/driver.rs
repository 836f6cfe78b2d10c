//! Driver half of the split virtqueue (the side that posts buffers; virtio-net's
//! role in a guest, the frontend in zerohop).
//!
//! The driver keeps everything it needs to know about its own chains in local memory
//! (a free list of descriptor ids and one record per chain head) and never reads a
//! descriptor back from shared memory. The only values it reads from the ring are the
//! device-written `used.idx`, used elements, `used.flags` and `avail_event`, each
//! fetched once and validated (GUIDE.md section 8).
//!
//! ```text
//!   add()/add_indirect()  -> desc[head..], avail.ring[shadow % N] = head (plain writes)
//!   publish()             -> avail.idx = shadow                (one Release per burst)
//!   needs_notify()        -> SeqCst fence, then avail_event / used.flags
//!   poll_used()           -> used.idx (Acquire, only when the cache says empty),
//!                            used.ring[last_used % N], validated, chain freed locally
//! ```

use crate::chain::BufDesc;
use crate::error::RingError;
use crate::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_IN_ORDER};
use crate::mem::Mem;
use crate::sync::{fence, Ordering};

use super::layout::{
    Desc, SplitLayout, UsedElem, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
};
use super::NotifySite;
use super::NO_FREE_DESCS;

/// A chain the device has returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor id (as returned by [`SplitDriver::add`]).
    pub id: u16,
    /// Bytes the device wrote into the chain's writable buffers (validated to be at
    /// most their total length).
    pub len: u32,
}

/// Local record of one chain, indexed by its head id.
#[derive(Clone, Copy, Debug, Default)]
struct HeadRec {
    /// Ring descriptors the chain holds (1 for an indirect chain).
    ndescs: u16,
    /// Last ring descriptor of the chain (local links in `next` lead there).
    last: u16,
    /// Sum of the writable buffer lengths.
    writable: u64,
    /// Added and not yet returned by the device.
    in_flight: bool,
}

/// The driver half of a split virtqueue over a ring region `M` and a data area `D`.
///
/// Single-threaded: one lcore owns it (it is `Send` if `M` and `D` are).
pub struct SplitDriver<M: Mem, D: Mem = M> {
    ring: M,
    data: D,
    layout: SplitLayout,
    features: u64,
    qsize: u16,
    mask: u16,
    /// Local links: the free list, and each chain's descriptors in order.
    next: Box<[u16]>,
    free_head: u16,
    free_tail: u16,
    num_free: u16,
    heads: Box<[HeadRec]>,
    /// Head id posted at each avail position (`pos % N`), for VIRTIO_F_IN_ORDER.
    order: Box<[u16]>,
    /// Next avail position to write (the shadow of avail.idx).
    avail_shadow: u16,
    /// Last value stored to avail.idx.
    avail_published: u16,
    /// avail.idx at the previous `needs_notify` (the `old` of vring_need_event).
    notify_old: u16,
    /// Next used position to consume.
    last_used: u16,
    /// Last used.idx value read from the device.
    used_cache: u16,
    /// IN_ORDER: avail positions completed so far.
    done_idx: u16,
    /// IN_ORDER: chains of the current used batch still to hand out.
    batch_left: u16,
    /// IN_ORDER: the length the device reported for the batch's last chain.
    batch_len: u32,
    in_flight: u16,
    broken: bool,
}

impl<M: Mem, D: Mem> core::fmt::Debug for SplitDriver<M, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SplitDriver")
            .field("layout", &self.layout)
            .field("features", &self.features)
            .field("avail_shadow", &self.avail_shadow)
            .field("last_used", &self.last_used)
            .field("in_flight", &self.in_flight)
            .field("num_free", &self.num_free)
            .field("broken", &self.broken)
            .finish()
    }
}

impl<M: Mem, D: Mem> SplitDriver<M, D> {
    /// Takes a ring region laid out as `layout` and a data area, and initialises the
    /// ring (zeroes avail/used flags, indices and event words). `features` is the
    /// negotiated feature set. Allocates its local state here, never later.
    pub fn new(ring: M, layout: SplitLayout, data: D, features: u64) -> Result<Self, RingError> {
        layout.check_region(ring.size())?;
        let n = usize::from(layout.queue_size());
        let mut d = SplitDriver {
            ring,
            data,
            layout,
            features,
            qsize: layout.queue_size(),
            mask: layout.queue_size() - 1,
            next: vec![0u16; n].into_boxed_slice(),
            free_head: 0,
            free_tail: 0,
            num_free: 0,
            heads: vec![HeadRec::default(); n].into_boxed_slice(),
            order: vec![0u16; n].into_boxed_slice(),
            avail_shadow: 0,
            avail_published: 0,
            notify_old: 0,
            last_used: 0,
            used_cache: 0,
            done_idx: 0,
            batch_left: 0,
            batch_len: 0,
            in_flight: 0,
            broken: false,
        };
        d.reset()?;
        Ok(d)
    }

    /// Re-initialises the ring memory and all local state (after a virtio device
    /// reset; the device half must be reset too). Clears the broken mark.
    pub fn reset(&mut self) -> Result<(), RingError> {
        let l = self.layout;
        // Relaxed: the ring is not live during (re)initialisation; the control plane's
        // status handshake (DRIVER_OK) orders these stores before the device attaches.
        for off in [
            l.avail_flags(),
            l.avail_idx(),
            l.used_event(),
            l.used_flags(),
            l.used_idx(),
            l.avail_event(),
        ] {
            self.ring.store_u16(off, 0, Ordering::Relaxed)?;
        }
        for (i, n) in self.next.iter_mut().enumerate() {
            // i < N <= 32768, so i + 1 fits in u16.
            *n = (i as u16).wrapping_add(1) & self.mask;
        }
        self.free_head = 0;
        self.free_tail = self.mask;
        self.num_free = self.qsize;
        self.heads.fill(HeadRec::default());
        self.order.fill(0);
        self.avail_shadow = 0;
        self.avail_published = 0;
        self.notify_old = 0;
        self.last_used = 0;
        self.used_cache = 0;
        self.done_idx = 0;
        self.batch_left = 0;
        self.batch_len = 0;
        self.in_flight = 0;
        self.broken = false;
        Ok(())
    }

    /// The ring layout.
    pub fn layout(&self) -> &SplitLayout {
        &self.layout
    }
    /// The data area.
    pub fn data(&self) -> &D {
        &self.data
    }
    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }
    /// Chains added and not yet returned by the device.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }
    /// Free descriptors in the table.
    pub fn free_descs(&self) -> u16 {
        self.num_free
    }
    /// True once a device violation was seen (until [`SplitDriver::reset`]).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The driver's notification controls: reads avail_event / used.flags, writes
    /// used_event / avail.flags.
    fn notify_site(&self) -> NotifySite {
        NotifySite {
            event_idx: self.has(VIRTIO_F_EVENT_IDX),
            peer_event: self.layout.avail_event(),
            peer_flags: self.layout.used_flags(),
            peer_no_bit: VIRTQ_USED_F_NO_NOTIFY,
            own_event: self.layout.used_event(),
            own_flags: self.layout.avail_flags(),
            own_no_bit: VIRTQ_AVAIL_F_NO_INTERRUPT,
        }
    }

    fn has(&self, f: u64) -> bool {
        self.features & f != 0
    }

    /// Marks the queue broken if `e` is a peer violation, and returns it.
    fn fail<T>(&mut self, e: RingError) -> Result<T, RingError> {
        if e.is_peer_violation() {
            self.broken = true;
        }
        Err(e)
    }

    fn check_open(&self) -> Result<(), RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        Ok(())
    }

    /// Checks a chain of our own: not empty, readable buffers first, inside the data
    /// area. Returns the writable total.
    fn check_bufs(&self, bufs: &[BufDesc]) -> Result<u64, RingError> {
        if bufs.is_empty() {
            return Err(RingError::InvalidRequest("empty chain"));
        }
        if bufs.len() > usize::from(self.qsize) {
            return Err(RingError::InvalidRequest(
                "chain longer than the queue size (virtio 1.x 2.7.5.3.1)",
            ));
        }
        let limit = self.data.size() as u64;
        let mut seen_writable = false;
        let mut writable = 0u64;
        for b in bufs {
            if b.writable {
                seen_writable = true;
                writable += u64::from(b.len);
            } else if seen_writable {
                return Err(RingError::InvalidRequest(
                    "readable buffer after a writable one",
                ));
            }
            match b.addr.checked_add(u64::from(b.len)) {
                Some(end) if end <= limit => {}
                _ => return Err(RingError::InvalidRequest("buffer outside the data area")),
            }
        }
        Ok(writable)
    }

    fn buf_flags(b: &BufDesc, last: bool) -> u16 {
        let mut f = 0;
        if b.writable {
            f |= VIRTQ_DESC_F_WRITE;
        }
        if !last {
            f |= VIRTQ_DESC_F_NEXT;
        }
        f
    }

    /// Adds a chain of buffers (device-readable ones first, then device-writable
    /// ones): writes its descriptors and one avail ring entry. Not visible to the
    /// device until [`SplitDriver::publish`]. Returns the head id.
    ///
    /// Fails with [`NO_FREE_DESCS`] when the table has fewer than `bufs.len()` free
    /// descriptors, with `InvalidRequest` for an empty, misordered or out-of-range
    /// chain.
    pub fn add(&mut self, bufs: &[BufDesc]) -> Result<u16, RingError> {
        self.check_open()?;
        let writable = self.check_bufs(bufs)?;
        if bufs.len() > usize::from(self.num_free) {
            return Err(NO_FREE_DESCS);
        }
        let head = self.free_head;
        let mut id = head;
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let nxt = self.next[usize::from(id)];
            let desc = Desc::new(
                b.addr,
                b.len,
                Self::buf_flags(b, last),
                if last { 0 } else { nxt },
            );
            // Plain store: published by the Release store of avail.idx in publish().
            self.ring.write_obj(self.layout.desc(id), &desc)?;
            if !last {
                id = nxt;
            }
        }
        // bufs.len() <= num_free <= N, so it fits in u16.
        let n = bufs.len() as u16;
        self.free_head = self.next[usize::from(id)];
        self.num_free -= n;
        self.post(head, n, id, writable)?;
        Ok(head)
    }

    /// Adds a chain through an indirect table written at `table_addr` in the data area
    /// (`16 * bufs.len()` bytes, 16-byte aligned); the ring uses one descriptor.
    /// Requires VIRTIO_F_INDIRECT_DESC (virtio 1.x 2.7.5.3). Not visible until
    /// [`SplitDriver::publish`]. Returns the head id.
    pub fn add_indirect(&mut self, bufs: &[BufDesc], table_addr: u64) -> Result<u16, RingError> {
        self.check_open()?;
        if !self.has(VIRTIO_F_INDIRECT_DESC) {
            return Err(RingError::InvalidRequest(
                "VIRTIO_F_INDIRECT_DESC not negotiated",
            ));
        }
        let writable = self.check_bufs(bufs)?;
        if self.num_free == 0 {
            return Err(NO_FREE_DESCS);
        }
        // bufs.len() <= N <= 32768, so the table is at most 512 KiB.
        let table_len = 16 * bufs.len() as u64;
        if table_addr & 15 != 0 {
            return Err(RingError::InvalidRequest(
                "indirect table not 16-byte aligned",
            ));
        }
        match table_addr.checked_add(table_len) {
            Some(end) if end <= self.data.size() as u64 => {}
            _ => {
                return Err(RingError::InvalidRequest(
                    "indirect table outside the data area",
                ))
            }
        }
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let next = if last { 0 } else { (i + 1) as u16 };
            let desc = Desc::new(b.addr, b.len, Self::buf_flags(b, last), next);
            // In range: checked above (table_addr + 16 * i < end <= data size).
            let off = (table_addr + 16 * i as u64) as usize;
            // Plain store: published by the Release store of avail.idx in publish().
            self.data.write_obj(off, &desc)?;
        }
        let head = self.free_head;
        let desc = Desc::new(table_addr, table_len as u32, VIRTQ_DESC_F_INDIRECT, 0);
        // Plain store: published by the Release store of avail.idx in publish().
        self.ring.write_obj(self.layout.desc(head), &desc)?;
        self.free_head = self.next[usize::from(head)];
        self.num_free -= 1;
        self.post(head, 1, head, writable)?;
        Ok(head)
    }

    /// Records a chain locally and writes its avail ring entry.
    fn post(&mut self, head: u16, ndescs: u16, last: u16, writable: u64) -> Result<(), RingError> {
        let slot = self.avail_shadow & self.mask;
        // Relaxed: published by the Release store of avail.idx in publish().
        self.ring
            .store_u16(self.layout.avail_ring(slot), head, Ordering::Relaxed)?;
        self.heads[usize::from(head)] = HeadRec {
            ndescs,
            last,
            writable,
            in_flight: true,
        };
        self.order[usize::from(slot)] = head;
        self.avail_shadow = self.avail_shadow.wrapping_add(1);
        self.in_flight += 1;
        Ok(())
    }

    /// Makes every chain added since the last publish visible to the device: one
    /// Release store of avail.idx per burst.
    pub fn publish(&mut self) -> Result<(), RingError> {
        self.check_open()?;
        if self.avail_shadow != self.avail_published {
            // Release (D1): publishes the descriptors, indirect tables and avail ring
            // entries written since the last publish (and any payload the caller wrote
            // before add); pairs with the Acquire load of avail.idx in
            // SplitDevice::pop (V1).
            self.ring.store_u16(
                self.layout.avail_idx(),
                self.avail_shadow,
                Ordering::Release,
            )?;
            self.avail_published = self.avail_shadow;
        }
        Ok(())
    }

    /// Should the device be notified about the chains published since the previous
    /// call? With VIRTIO_F_EVENT_IDX: `vring_need_event(avail_event, new, old)`
    /// (virtio 1.x 2.7.10); otherwise: something was published and used.flags lacks
    /// VIRTQ_USED_F_NO_NOTIFY. Call after [`SplitDriver::publish`].
    pub fn needs_notify(&mut self) -> Result<bool, RingError> {
        self.check_open()?;
        // SeqCst fence (D2, Linux virtio_mb in virtqueue_kick_prepare): orders the
        // avail.idx store before the load of avail_event / used.flags below; pairs with
        // the device's fence in SplitDevice::set_avail_notification (V4), so either we
        // see its new avail_event or it sees our avail.idx.
        fence(Ordering::SeqCst);
        let new = self.avail_published;
        let old = self.notify_old;
        self.notify_old = new;
        self.notify_site().need_notify(&self.ring, new, old)
    }

    /// Asks for (or stops asking for) used-buffer notifications: writes used_event =
    /// the next used position (VIRTIO_F_EVENT_IDX; disabling writes a position just
    /// behind it, which the device never crosses) or clears / sets
    /// VIRTQ_AVAIL_F_NO_INTERRUPT in avail.flags. After enabling, call
    /// [`SplitDriver::poll_used`] once more before sleeping: a chain used before the
    /// device saw the request does not notify. Enabling returns true when a used
    /// element is already waiting (it re-reads used.idx), like
    /// [`PackedDriver::set_used_notification`](crate::packed::PackedDriver::set_used_notification).
    pub fn set_used_notification(&mut self, enable: bool) -> Result<bool, RingError> {
        self.check_open()?;
        self.notify_site()
            .request(&self.ring, enable, self.last_used)?;
        if !enable {
            return Ok(false);
        }
        // SeqCst fence (D3, Linux virtqueue_poll's virtio_mb): orders the
        // used_event / flags store before the used.idx load below; pairs with the
        // device's fence in SplitDevice::needs_notify (V3).
        fence(Ordering::SeqCst);
        if self.batch_left > 0 || self.used_cache != self.last_used {
            return Ok(true);
        }
        match self.refresh_used() {
            Ok(n) => Ok(n != 0),
            Err(e) => self.fail(e),
        }
    }

    /// Takes the next chain the device returned, if any. Validates the used element
    /// (id in range and in flight, length within the chain's writable bytes, used.idx
    /// not jumping by more than N); a violation marks the queue broken.
    ///
    /// With VIRTIO_F_IN_ORDER the device may return a batch with one used element
    /// naming its last chain (virtio 1.x 2.7.9): the earlier chains of the batch are
    /// returned first, in order, each with `len` = its full writable length (what a
    /// device that consumed it entirely would report; 0 for read-only chains); the
    /// named chain gets the device's length.
    pub fn poll_used(&mut self) -> Result<Option<Used>, RingError> {
        self.check_open()?;
        match self.poll_used_inner() {
            Ok(u) => Ok(u),
            Err(e) => self.fail(e),
        }
    }

    /// Re-reads used.idx (one fetch, validated) when the cached copy is used up;
    /// returns how many used elements are not yet taken.
    fn refresh_used(&mut self) -> Result<u16, RingError> {
        if self.used_cache == self.last_used {
            // Acquire (D4): pairs with the Release store of used.idx in
            // SplitDevice::publish_used (V2); makes the used elements (and the payload
            // the device wrote into our buffers) visible before we read them.
            let idx = self
                .ring
                .load_u16(self.layout.used_idx(), Ordering::Acquire)?;
            let ahead = idx.wrapping_sub(self.last_used);
            if ahead > self.qsize {
                return Err(RingError::IndexJump {
                    what: "used",
                    old: u32::from(self.last_used),
                    new: u32::from(idx),
                    size: u32::from(self.qsize),
                });
            }
            self.used_cache = idx;
        }
        Ok(self.used_cache.wrapping_sub(self.last_used))
    }

    fn poll_used_inner(&mut self) -> Result<Option<Used>, RingError> {
        if self.batch_left > 0 {
            return Ok(Some(self.complete_in_order()));
        }
        if self.refresh_used()? == 0 {
            return Ok(None);
        }
        let slot = self.last_used & self.mask;
        // One fetch of the element; covered by the Acquire above.
        let e: UsedElem = self.ring.read_obj(self.layout.used_ring(slot))?;
        let id = u32::from_le(e.id);
        let len = u32::from_le(e.len);
        if id >= u32::from(self.qsize) {
            return Err(RingError::DescIndexOutOfRange {
                index: id,
                size: u32::from(self.qsize),
            });
        }
        // id < N <= 32768.
        let head = id as u16;
        let rec = self.heads[usize::from(head)];
        if !rec.in_flight {
            return Err(RingError::UnexpectedUsedId { id });
        }
        if u64::from(len) > rec.writable {
            return Err(RingError::UsedLenTooLarge {
                len,
                max: rec.writable as u32,
            });
        }
        if self.has(VIRTIO_F_IN_ORDER) {
            // Find the avail position of `head` among the published, uncompleted ones
            // (at most N of them).
            let mut pos = self.done_idx;
            while pos != self.avail_published && self.order[usize::from(pos & self.mask)] != head {
                pos = pos.wrapping_add(1);
            }
            if pos == self.avail_published {
                return Err(RingError::UnexpectedUsedId { id });
            }
            self.last_used = self.last_used.wrapping_add(1);
            self.batch_left = pos.wrapping_sub(self.done_idx) + 1;
            self.batch_len = len;
            return Ok(Some(self.complete_in_order()));
        }
        self.last_used = self.last_used.wrapping_add(1);
        self.free_chain(head);
        Ok(Some(Used { id: head, len }))
    }

    /// IN_ORDER: completes the oldest chain of the current batch.
    fn complete_in_order(&mut self) -> Used {
        let head = self.order[usize::from(self.done_idx & self.mask)];
        self.done_idx = self.done_idx.wrapping_add(1);
        self.batch_left -= 1;
        let len = if self.batch_left == 0 {
            self.batch_len
        } else {
            self.heads[usize::from(head)]
                .writable
                .min(u64::from(u32::MAX)) as u32
        };
        self.free_chain(head);
        Used { id: head, len }
    }

    /// Returns a chain's descriptors to the tail of the free list (FIFO, so that with
    /// in-order completion descriptors are reused in ring order, as virtio 1.x 2.7.9
    /// asks of an IN_ORDER driver).
    fn free_chain(&mut self, head: u16) {
        let rec = &mut self.heads[usize::from(head)];
        rec.in_flight = false;
        let (ndescs, last) = (rec.ndescs, rec.last);
        if self.num_free == 0 {
            self.free_head = head;
        } else {
            self.next[usize::from(self.free_tail)] = head;
        }
        self.free_tail = last;
        self.num_free += ndescs;
        self.in_flight -= 1;
    }

    /// Test hook: start all indices at `idx` (fresh queue only), to exercise 16-bit
    /// wrap-around quickly.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn start_at(&mut self, idx: u16) -> Result<(), RingError> {
        self.ring
            .store_u16(self.layout.avail_idx(), idx, Ordering::Relaxed)?;
        self.ring
            .store_u16(self.layout.used_idx(), idx, Ordering::Relaxed)?;
        self.avail_shadow = idx;
        self.avail_published = idx;
        self.notify_old = idx;
        self.last_used = idx;
        self.used_cache = idx;
        self.done_idx = idx;
        Ok(())
    }
}
