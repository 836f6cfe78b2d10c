//! Device half of the split virtqueue (the side that consumes posted buffers; the
//! vhost/vringh role, the backend in zerohop).
//!
//! Everything read from the ring or the data area is written by the driver and is
//! untrusted: each index, avail entry and 16-byte descriptor is fetched once into a
//! local, validated, then used; chain walks are bounded; any violation marks the queue
//! broken (GUIDE.md section 8). The device writes only the used ring (and
//! `used.flags` / `avail_event`).
//!
//! ```text
//!   pop()          -> avail.idx (Acquire, only when the cache says empty),
//!                     avail.ring[last_avail % N] -> head -> desc walk (TTL N)
//!                     [-> indirect table in the data area (TTL len/16)]
//!   push_used()    -> used.ring[shadow % N] = {id, len}   (plain write)
//!   publish_used() -> used.idx = shadow                    (one Release per burst)
//!   needs_notify() -> SeqCst fence, then used_event / avail.flags
//! ```

use crate::chain::{BufDesc, ChainInfo};
use crate::error::{MemError, RingError};
use crate::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_IN_ORDER};
use crate::mem::Mem;
use crate::sync::{fence, Ordering};

use super::layout::{
    Desc, SplitLayout, UsedElem, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
};
use super::NotifySite;

/// The device half of a split virtqueue over a ring region `M` and a data area `D`
/// (which it reads only for indirect tables; buffers are handed to the caller as
/// validated offsets).
///
/// Single-threaded: one lcore owns it (it is `Send` if `M` and `D` are).
pub struct SplitDevice<M: Mem, D: Mem = M> {
    ring: M,
    data: D,
    layout: SplitLayout,
    features: u64,
    qsize: u16,
    mask: u16,
    /// Next avail position to consume.
    last_avail: u16,
    /// Last avail.idx value read from the driver.
    avail_cache: u16,
    /// Next used position to write (the shadow of used.idx).
    used_shadow: u16,
    /// Last value stored to used.idx.
    used_published: u16,
    /// used.idx at the previous `needs_notify` (the `old` of vring_need_event).
    notify_old: u16,
    broken: bool,
}

impl<M: Mem, D: Mem> core::fmt::Debug for SplitDevice<M, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SplitDevice")
            .field("layout", &self.layout)
            .field("features", &self.features)
            .field("last_avail", &self.last_avail)
            .field("used_shadow", &self.used_shadow)
            .field("broken", &self.broken)
            .finish()
    }
}

/// Running totals of one chain walk.
struct Walk<'a> {
    bufs: &'a mut [BufDesc],
    count: usize,
    readable: u64,
    writable: u64,
    seen_writable: bool,
    data_len: u64,
}

impl Walk<'_> {
    /// Validates one buffer and appends it to the caller's slice.
    fn push(&mut self, addr: u64, len: u32, writable: bool) -> Result<(), RingError> {
        match addr.checked_add(u64::from(len)) {
            Some(end) if end <= self.data_len => {}
            _ => {
                return Err(RingError::BufferOutOfRange {
                    addr,
                    len: u64::from(len),
                    limit: self.data_len,
                })
            }
        }
        if writable {
            self.seen_writable = true;
            self.writable += u64::from(len);
        } else if self.seen_writable {
            return Err(RingError::ReadableAfterWritable);
        } else {
            self.readable += u64::from(len);
        }
        let limit = self.bufs.len();
        let Some(slot) = self.bufs.get_mut(self.count) else {
            return Err(RingError::ChainTooLong {
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            });
        };
        *slot = BufDesc {
            addr,
            len,
            writable,
        };
        self.count += 1;
        Ok(())
    }
}

impl<M: Mem, D: Mem> SplitDevice<M, D> {
    /// Attaches to a ring region laid out as `layout` (initialised by the driver) and
    /// the data area its descriptors point into. Writes nothing. `features` is the
    /// negotiated feature set.
    pub fn new(ring: M, layout: SplitLayout, data: D, features: u64) -> Result<Self, RingError> {
        layout.check_region(ring.size())?;
        Ok(SplitDevice {
            ring,
            data,
            layout,
            features,
            qsize: layout.queue_size(),
            mask: layout.queue_size() - 1,
            last_avail: 0,
            avail_cache: 0,
            used_shadow: 0,
            used_published: 0,
            notify_old: 0,
            broken: false,
        })
    }

    /// Forgets all local state (after a virtio device reset; the driver re-initialises
    /// the ring) and clears the broken mark.
    pub fn reset(&mut self) {
        self.last_avail = 0;
        self.avail_cache = 0;
        self.used_shadow = 0;
        self.used_published = 0;
        self.notify_old = 0;
        self.broken = false;
    }

    /// True once a driver violation was seen (until [`SplitDevice::reset`]).
    pub fn is_broken(&self) -> bool {
        self.broken
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
    /// Next avail position the device will consume.
    pub fn last_avail_idx(&self) -> u16 {
        self.last_avail
    }

    /// The device's notification controls: reads used_event / avail.flags, writes
    /// avail_event / used.flags.
    fn notify_site(&self) -> NotifySite {
        NotifySite {
            event_idx: self.has(VIRTIO_F_EVENT_IDX),
            peer_event: self.layout.used_event(),
            peer_flags: self.layout.avail_flags(),
            peer_no_bit: VIRTQ_AVAIL_F_NO_INTERRUPT,
            own_event: self.layout.avail_event(),
            own_flags: self.layout.used_flags(),
            own_no_bit: VIRTQ_USED_F_NO_NOTIFY,
        }
    }

    fn has(&self, f: u64) -> bool {
        self.features & f != 0
    }

    fn check_open(&self) -> Result<(), RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        Ok(())
    }

    /// Takes the next available chain, if any: its buffers are validated and copied
    /// into `bufs` (readable ones first); the returned [`ChainInfo::id`] goes back in
    /// [`SplitDevice::push_used`]. Pass a slice long enough for the longest chain the
    /// driver may post (N, or the longest indirect table): a longer chain is an error
    /// that marks the queue broken.
    ///
    /// Errors (all but `InvalidRequest` mark the queue broken): `IndexJump` (avail.idx
    /// moved by more than N), `DescIndexOutOfRange` (head or next id >= N, or next >=
    /// table length inside an indirect table), `ChainTooLong` (loop, or more buffers
    /// than `bufs.len()`), `IndirectNotNegotiated`, `BadIndirect` (len zero / not a
    /// multiple of 16, or INDIRECT together with NEXT), `NestedIndirect`,
    /// `BufferOutOfRange` (buffer or table outside the data area),
    /// `ReadableAfterWritable`.
    pub fn pop(&mut self, bufs: &mut [BufDesc]) -> Result<Option<ChainInfo>, RingError> {
        self.check_open()?;
        if bufs.is_empty() {
            return Err(RingError::InvalidRequest("empty buffer slice"));
        }
        match self.pop_inner(bufs) {
            Ok(c) => Ok(c),
            Err(e) => {
                if e.is_peer_violation() {
                    self.broken = true;
                }
                Err(e)
            }
        }
    }

    /// Re-reads avail.idx (one fetch, validated) when the cached copy is used up;
    /// returns how many chains are available and not yet popped.
    fn refresh_avail(&mut self) -> Result<u16, RingError> {
        if self.avail_cache == self.last_avail {
            // Acquire (V1): pairs with the Release store of avail.idx in
            // SplitDriver::publish (D1); makes the avail entries, descriptors, indirect
            // tables and payload written before it visible.
            let idx = self
                .ring
                .load_u16(self.layout.avail_idx(), Ordering::Acquire)?;
            let ahead = idx.wrapping_sub(self.last_avail);
            if ahead > self.qsize {
                return Err(RingError::IndexJump {
                    what: "avail",
                    old: u32::from(self.last_avail),
                    new: u32::from(idx),
                    size: u32::from(self.qsize),
                });
            }
            self.avail_cache = idx;
        }
        Ok(self.avail_cache.wrapping_sub(self.last_avail))
    }

    fn pop_inner(&mut self, bufs: &mut [BufDesc]) -> Result<Option<ChainInfo>, RingError> {
        if self.refresh_avail()? == 0 {
            return Ok(None);
        }
        let slot = self.last_avail & self.mask;
        // Relaxed: covered by the Acquire of avail.idx (V1) that revealed this slot.
        let head = self
            .ring
            .load_u16(self.layout.avail_ring(slot), Ordering::Relaxed)?;
        if head >= self.qsize {
            return Err(RingError::DescIndexOutOfRange {
                index: u32::from(head),
                size: u32::from(self.qsize),
            });
        }
        let mut walk = Walk {
            bufs,
            count: 0,
            readable: 0,
            writable: 0,
            seen_writable: false,
            data_len: self.data.size() as u64,
        };
        self.walk_chain(head, &mut walk)?;
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Some(ChainInfo {
            id: head,
            count: walk.count,
            readable_len: walk.readable,
            writable_len: walk.writable,
            slots: 1,
        }))
    }

    /// Walks a chain in the descriptor table, at most N descriptors.
    fn walk_chain(&self, head: u16, walk: &mut Walk<'_>) -> Result<(), RingError> {
        let mut id = head;
        let mut ttl = self.qsize;
        loop {
            if ttl == 0 {
                return Err(RingError::ChainTooLong {
                    limit: u32::from(self.qsize),
                });
            }
            ttl -= 1;
            // One fetch of the whole descriptor (id < N was checked); validated below.
            let d: Desc = self.ring.read_obj(self.layout.desc(id))?;
            let (addr, len, flags, next) = (d.addr(), d.len(), d.flags(), d.next());
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                // virtio 1.x 2.7.5.3.1: only if negotiated, never with NEXT.
                if !self.has(VIRTIO_F_INDIRECT_DESC) {
                    return Err(RingError::IndirectNotNegotiated);
                }
                if flags & VIRTQ_DESC_F_NEXT != 0 || len == 0 || len & 15 != 0 {
                    return Err(RingError::BadIndirect { len });
                }
                match addr.checked_add(u64::from(len)) {
                    Some(end) if end <= walk.data_len => {}
                    _ => {
                        return Err(RingError::BufferOutOfRange {
                            addr,
                            len: u64::from(len),
                            limit: walk.data_len,
                        })
                    }
                }
                return self.walk_indirect(addr, len / 16, walk);
            }
            walk.push(addr, len, flags & VIRTQ_DESC_F_WRITE != 0)?;
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if next >= self.qsize {
                return Err(RingError::DescIndexOutOfRange {
                    index: u32::from(next),
                    size: u32::from(self.qsize),
                });
            }
            id = next;
        }
    }

    /// Walks an indirect table of `n` entries at `table` (inside the data area, as
    /// checked by the caller), at most `n` descriptors.
    fn walk_indirect(&self, table: u64, n: u32, walk: &mut Walk<'_>) -> Result<(), RingError> {
        let mut i = 0u32;
        let mut ttl = n;
        loop {
            if ttl == 0 {
                return Err(RingError::ChainTooLong { limit: n });
            }
            ttl -= 1;
            // table + 16 * i < table + len <= data_len, which came from a usize.
            let off = (table + 16 * u64::from(i)) as usize;
            let d = self.read_table_desc(off)?;
            let (addr, len, flags, next) = (d.addr(), d.len(), d.flags(), d.next());
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(RingError::NestedIndirect);
            }
            walk.push(addr, len, flags & VIRTQ_DESC_F_WRITE != 0)?;
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if u32::from(next) >= n {
                return Err(RingError::DescIndexOutOfRange {
                    index: u32::from(next),
                    size: n,
                });
            }
            i = u32::from(next);
        }
    }

    /// One fetch of an indirect-table descriptor; a table that is not 8-byte aligned
    /// (the spec does not require it) is copied bytewise instead.
    fn read_table_desc(&self, off: usize) -> Result<Desc, RingError> {
        match self.data.read_obj::<Desc>(off) {
            Ok(d) => Ok(d),
            Err(MemError::Misaligned { .. }) => {
                let mut b = [0u8; 16];
                self.data.read_bytes(off, &mut b)?;
                Ok(bytemuck::pod_read_unaligned(&b))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes one used element `{id, len}` (not yet visible to the driver: call
    /// [`SplitDevice::publish_used`]). `id` is a [`ChainInfo::id`] from `pop`, `len`
    /// the bytes written into the chain's writable buffers.
    pub fn push_used(&mut self, id: u16, len: u32) -> Result<(), RingError> {
        self.check_open()?;
        if id >= self.qsize {
            return Err(RingError::InvalidRequest("used id out of range"));
        }
        if self.used_shadow.wrapping_sub(self.used_published) >= self.qsize {
            return Err(RingError::InvalidRequest(
                "more than N unpublished used elements",
            ));
        }
        let slot = self.used_shadow & self.mask;
        let e = UsedElem {
            id: u32::from(id).to_le(),
            len: len.to_le(),
        };
        // Plain store: published by the Release store of used.idx in publish_used().
        self.ring.write_obj(self.layout.used_ring(slot), &e)?;
        self.used_shadow = self.used_shadow.wrapping_add(1);
        Ok(())
    }

    /// VIRTIO_F_IN_ORDER (virtio 1.x 2.7.9): returns every popped chain up to and
    /// including `last_id` with one used element; the driver completes the earlier
    /// ones of the batch itself. `len` is the bytes written into `last_id`'s chain.
    pub fn push_used_batch(&mut self, last_id: u16, len: u32) -> Result<(), RingError> {
        if !self.has(VIRTIO_F_IN_ORDER) {
            return Err(RingError::InvalidRequest(
                "VIRTIO_F_IN_ORDER not negotiated",
            ));
        }
        self.push_used(last_id, len)
    }

    /// Makes every used element pushed since the last publish visible to the driver:
    /// one Release store of used.idx per burst.
    pub fn publish_used(&mut self) -> Result<(), RingError> {
        self.check_open()?;
        if self.used_shadow != self.used_published {
            // Release (V2): publishes the used elements written since the last publish
            // and the payload written into the chains' buffers; pairs with the Acquire
            // load of used.idx in SplitDriver::poll_used (D4).
            self.ring
                .store_u16(self.layout.used_idx(), self.used_shadow, Ordering::Release)?;
            self.used_published = self.used_shadow;
        }
        Ok(())
    }

    /// Should the driver be notified about the used elements published since the
    /// previous call? With VIRTIO_F_EVENT_IDX: `vring_need_event(used_event, new,
    /// old)` (virtio 1.x 2.7.10); otherwise: something was published and avail.flags
    /// lacks VIRTQ_AVAIL_F_NO_INTERRUPT. Call after [`SplitDevice::publish_used`].
    pub fn needs_notify(&mut self) -> Result<bool, RingError> {
        self.check_open()?;
        // SeqCst fence (V3, Linux virtio_mb / vhost's smp_mb in vhost_notify): orders
        // the used.idx store before the load of used_event / avail.flags; pairs with
        // the driver's fence in SplitDriver::set_used_notification (D3).
        fence(Ordering::SeqCst);
        let new = self.used_published;
        let old = self.notify_old;
        self.notify_old = new;
        self.notify_site().need_notify(&self.ring, new, old)
    }

    /// Asks for (or stops asking for) available-buffer notifications: writes
    /// avail_event = the last avail.idx seen (VIRTIO_F_EVENT_IDX; disabling writes a
    /// position just behind it) or clears / sets VIRTQ_USED_F_NO_NOTIFY in used.flags.
    /// After enabling it re-reads avail.idx and returns true when a chain is already
    /// available (pop instead of sleeping), like [`PackedDevice::set_avail_notification`](crate::packed::PackedDevice::set_avail_notification).
    pub fn set_avail_notification(&mut self, enable: bool) -> Result<bool, RingError> {
        self.check_open()?;
        self.notify_site()
            .request(&self.ring, enable, self.avail_cache)?;
        if !enable {
            return Ok(false);
        }
        // SeqCst fence (V4, vhost_enable_notify's smp_mb): orders the avail_event
        // / flags store before the avail.idx load below; pairs with the driver's
        // fence in SplitDriver::needs_notify (D2).
        fence(Ordering::SeqCst);
        match self.refresh_avail() {
            Ok(n) => Ok(n != 0),
            Err(e) => {
                if e.is_peer_violation() {
                    self.broken = true;
                }
                Err(e)
            }
        }
    }

    /// Test hook: start all indices at `idx` (fresh queue only).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn start_at(&mut self, idx: u16) {
        self.last_avail = idx;
        self.avail_cache = idx;
        self.used_shadow = idx;
        self.used_published = idx;
        self.notify_old = idx;
    }
}
