//! Driver half of the packed virtqueue: makes chains available, polls used
//! descriptors (virtio 1.x 2.8.21 "Supplying Buffers to The Device", 2.8.22
//! "Receiving Used Buffers From The Device").
//!
//! All chain bookkeeping (descriptor count and writable bytes per buffer id, the
//! in-order FIFO) is local; nothing the driver wrote is read back from the ring, and
//! everything the device wrote (used id, len, flags) is fetched once and validated.

use std::collections::VecDeque;

use super::layout::{
    avail_bits, EventSuppress, PackedDesc, PackedLayout, DESC_F_AVAIL, DESC_F_INDIRECT,
    DESC_F_NEXT, DESC_F_USED, DESC_F_WRITE, FLAGS_OFF, ID_OFF, LEN_OFF,
};
use super::{advance, need_event, EventMode, Used};
use crate::chain::BufDesc;
use crate::error::RingError;
use crate::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_IN_ORDER};
use crate::mem::Mem;
use crate::sync::{fence, Ordering};

/// Local record of one buffer id.
#[derive(Clone, Copy, Debug, Default)]
struct IdRec {
    /// Ring slots the chain occupies (how far `next_used` moves when it is used).
    ndesc: u16,
    /// Sum of the device-writable lengths (bound for the used length).
    writable: u64,
    /// Made available and not yet returned.
    in_flight: bool,
}

/// The driver (frontend) half of a packed virtqueue.
///
/// `M` is the ring region ([`PackedLayout::size`] bytes), `D` the data area that
/// descriptor addresses are offsets into (indirect tables are written there too).
pub struct PackedDriver<M: Mem, D: Mem = M> {
    ring: M,
    layout: PackedLayout,
    data: D,
    data_len: u64,
    features: u64,
    size: u16,
    /// Next slot to fill and the Driver Ring Wrap Counter (2.8.1).
    next_avail: u16,
    avail_wrap: bool,
    /// Next slot where a used descriptor is expected, and its wrap counter.
    next_used: u16,
    used_wrap: bool,
    free_slots: u16,
    free_ids: Vec<u16>,
    recs: Vec<IdRec>,
    /// In-flight ids in the order they were added (only kept with IN_ORDER).
    order: VecDeque<u16>,
    in_flight: u16,
    /// Head slot and flags of the first chain added since the last publish.
    pending_head: Option<(u16, u16)>,
    pending_slots: u32,
    /// Slots published since the last `needs_notify`.
    since_notify: u32,
    /// IN_ORDER batch in progress: the id and len of its (last) used descriptor.
    batch_end: Option<Used>,
    broken: bool,
}

impl<M: Mem, D: Mem> PackedDriver<M, D> {
    /// Initialises the ring in `ring` (all descriptors zero, both event structures
    /// ENABLE, wrap counters 1: 2.8.1, 2.8.13 "The descriptor ring is
    /// zero-initialized") and takes ownership of the driver side.
    pub fn new(ring: M, layout: PackedLayout, data: D, features: u64) -> Result<Self, RingError> {
        if ring.size() < layout.size() {
            return Err(RingError::RegionTooSmall {
                need: layout.size(),
                have: ring.size(),
            });
        }
        let n = layout.queue_size();
        let mut d = PackedDriver {
            ring,
            layout,
            data_len: data.size() as u64,
            data,
            features,
            size: n,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            free_slots: n,
            free_ids: Vec::with_capacity(n as usize),
            recs: vec![IdRec::default(); n as usize],
            order: VecDeque::with_capacity(if features & VIRTIO_F_IN_ORDER != 0 {
                n as usize
            } else {
                0
            }),
            in_flight: 0,
            pending_head: None,
            pending_slots: 0,
            since_notify: 0,
            batch_end: None,
            broken: false,
        };
        d.reset()?;
        Ok(d)
    }

    /// Zeroes the ring and the event structures and forgets every chain in flight
    /// (the device must be reset too).
    pub fn reset(&mut self) -> Result<(), RingError> {
        let zero = PackedDesc::default();
        for slot in 0..self.size {
            self.ring.write_obj(self.layout.desc(slot), &zero)?;
        }
        // Relaxed: nothing is published yet; the device attaches after the reset
        // handshake (control plane), which orders these stores.
        self.ring
            .store_u32(self.layout.driver_event(), 0, Ordering::Relaxed)?;
        self.ring
            .store_u32(self.layout.device_event(), 0, Ordering::Relaxed)?;
        self.next_avail = 0;
        self.avail_wrap = true;
        self.next_used = 0;
        self.used_wrap = true;
        self.free_slots = self.size;
        self.free_ids.clear();
        // Hand out low ids first (pop from the end).
        self.free_ids.extend((0..self.size).rev());
        self.recs.iter_mut().for_each(|r| *r = IdRec::default());
        self.order.clear();
        self.in_flight = 0;
        self.pending_head = None;
        self.pending_slots = 0;
        self.since_notify = 0;
        self.batch_end = None;
        self.broken = false;
        Ok(())
    }

    /// Queue size N.
    pub fn queue_size(&self) -> u16 {
        self.size
    }

    /// Chains added and not yet returned by [`PackedDriver::poll_used`].
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Ring slots free for new descriptors.
    pub fn free_slots(&self) -> u16 {
        self.free_slots
    }

    /// True after a device violation, until [`PackedDriver::reset`].
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The ring memory.
    pub fn ring(&self) -> &M {
        &self.ring
    }

    /// The data area.
    pub fn data(&self) -> &D {
        &self.data
    }

    fn check_bufs(&self, bufs: &[BufDesc]) -> Result<u64, RingError> {
        if bufs.is_empty() {
            return Err(RingError::InvalidRequest("empty chain"));
        }
        if bufs.len() > self.size as usize {
            // 2.8.17: "A driver MUST NOT create a descriptor list longer than the
            // Queue Size."
            return Err(RingError::InvalidRequest(
                "chain longer than the queue size",
            ));
        }
        let mut writable = 0u64;
        let mut seen_writable = false;
        for b in bufs {
            let end = b.addr.checked_add(b.len as u64);
            if !matches!(end, Some(e) if e <= self.data_len) {
                return Err(RingError::InvalidRequest("buffer outside the data area"));
            }
            if b.writable {
                seen_writable = true;
                writable += b.len as u64;
            } else if seen_writable {
                // 2.8.17: writable elements after all readable ones.
                return Err(RingError::InvalidRequest(
                    "readable buffer after a writable one",
                ));
            }
        }
        Ok(writable)
    }

    /// Writes a chain whose descriptors are produced by `desc(i)` (addr, len, flags
    /// without NEXT/AVAIL/USED) into the ring at `next_avail`, deferring or writing
    /// its head flags (see [`PackedDriver::add`]). The caller checked there is room.
    fn write_chain(
        &mut self,
        n: u16,
        writable: u64,
        desc: impl Fn(usize) -> (u64, u32, u16),
    ) -> Result<u16, RingError> {
        let Some(id) = self.free_ids.pop() else {
            return Err(RingError::RingFull {
                need: n as u32,
                free: 0,
            });
        };
        let head = self.next_avail;
        let mut head_flags = 0;
        let (mut pos, mut wrap) = (self.next_avail, self.avail_wrap);
        for i in 0..n as usize {
            let (addr, len, base) = desc(i);
            // 2.8.21.1: AVAIL = driver wrap counter, USED = its inverse; NEXT on all
            // but the last. The id goes into every descriptor (Linux does the same);
            // the device takes it from the last one (2.8.6).
            let mut flags = base | avail_bits(wrap);
            if i + 1 < n as usize {
                flags |= DESC_F_NEXT;
            }
            let off = self.layout.desc(pos);
            if i == 0 {
                head_flags = flags;
                // Relaxed: the head's fields are published by the Release store of
                // the burst's first head flags (publish, edge P1).
                self.ring.store_u64(off, addr, Ordering::Relaxed)?;
                self.ring.store_u32(off + LEN_OFF, len, Ordering::Relaxed)?;
                self.ring.store_u16(off + ID_OFF, id, Ordering::Relaxed)?;
            } else {
                // Plain (volatile) write: the device reads this slot only after its
                // Acquire of the head flags (P1), which this write precedes.
                self.ring.write_obj(
                    off,
                    &PackedDesc {
                        addr,
                        len,
                        id,
                        flags,
                    },
                )?;
            }
            (pos, wrap) = advance(pos, wrap, 1, self.size);
        }
        if self.pending_head.is_none() {
            // First chain of the burst: its flags are the burst's publication point.
            self.pending_head = Some((head, head_flags));
        } else {
            // Relaxed: a later head of the burst; the device polls it only after
            // acquiring the burst's first head (P1), whose Release follows this store
            // (2.8.21: "writing the first flags last").
            self.ring.store_u16(
                self.layout.desc(head) + FLAGS_OFF,
                head_flags,
                Ordering::Relaxed,
            )?;
        }
        self.next_avail = pos;
        self.avail_wrap = wrap;
        self.free_slots -= n;
        self.pending_slots += n as u32;
        self.in_flight += 1;
        self.recs[id as usize] = IdRec {
            ndesc: n,
            writable,
            in_flight: true,
        };
        if self.features & VIRTIO_F_IN_ORDER != 0 {
            self.order.push_back(id);
        }
        Ok(id)
    }

    /// Adds a chain of direct descriptors (readable buffers first, then writable)
    /// and returns its buffer id. The chain is not visible to the device until
    /// [`PackedDriver::publish`]: the first chain of a burst has its head flags
    /// deferred, later chains are complete but sit behind it in the ring.
    ///
    /// Errors: [`RingError::RingFull`] if fewer than `bufs.len()` slots are free;
    /// [`RingError::InvalidRequest`] for an empty chain, one longer than N, a buffer
    /// outside the data area, or a readable buffer after a writable one.
    pub fn add(&mut self, bufs: &[BufDesc]) -> Result<u16, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        let writable = self.check_bufs(bufs)?;
        let n = bufs.len() as u16;
        if n > self.free_slots {
            return Err(RingError::RingFull {
                need: n as u32,
                free: self.free_slots as u32,
            });
        }
        self.write_chain(n, writable, |i| {
            let b = bufs[i];
            (b.addr, b.len, if b.writable { DESC_F_WRITE } else { 0 })
        })
    }

    /// Adds `bufs` through an indirect table written at `table_addr` in the data
    /// area (`16 * bufs.len()` bytes, 8-byte aligned); the chain takes one ring slot
    /// (2.8.7). Needs VIRTIO_F_INDIRECT_DESC. Publish as for [`PackedDriver::add`].
    pub fn add_indirect(&mut self, bufs: &[BufDesc], table_addr: u64) -> Result<u16, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        if self.features & VIRTIO_F_INDIRECT_DESC == 0 {
            return Err(RingError::InvalidRequest(
                "VIRTIO_F_INDIRECT_DESC not negotiated",
            ));
        }
        let writable = self.check_bufs(bufs)?;
        let table_len = bufs.len() as u64 * size_of::<PackedDesc>() as u64;
        let end = table_addr.checked_add(table_len);
        if !matches!(end, Some(e) if e <= self.data_len) || table_addr & 7 != 0 {
            return Err(RingError::InvalidRequest(
                "indirect table outside the data area or misaligned",
            ));
        }
        if self.free_slots == 0 {
            return Err(RingError::RingFull { need: 1, free: 0 });
        }
        for (i, b) in bufs.iter().enumerate() {
            // 2.8.7: WRITE is the only valid flag inside an indirect table; the id
            // is reserved. The table is published with the ring slot (P1).
            let e = PackedDesc {
                addr: b.addr,
                len: b.len,
                id: 0,
                flags: if b.writable { DESC_F_WRITE } else { 0 },
            };
            self.data
                .write_obj(table_addr as usize + i * size_of::<PackedDesc>(), &e)?;
        }
        // In-bounds: table_len <= 16 * N <= 512 KiB.
        self.write_chain(1, writable, |_| {
            (table_addr, table_len as u32, DESC_F_INDIRECT)
        })
    }

    /// Makes every chain added since the last publish visible to the device: one
    /// Release store of the first pending chain's head flags (2.8.21.1, "defers
    /// updating the descriptor flags for the first descriptor ... until after the
    /// rest of the descriptors have been initialized").
    pub fn publish(&mut self) -> Result<(), RingError> {
        if let Some((slot, flags)) = self.pending_head.take() {
            // Release (P1): publishes every descriptor, indirect table and payload
            // written since the last publish; pairs with the Acquire load of this
            // flags word in PackedDevice::pop (A1).
            self.ring
                .store_u16(self.layout.desc(slot) + FLAGS_OFF, flags, Ordering::Release)?;
        }
        self.since_notify += core::mem::take(&mut self.pending_slots);
        Ok(())
    }

    /// Publishes pending chains, then tells whether the device asked to be notified
    /// of them (device event suppression structure, 2.8.10, 2.8.21.2).
    pub fn needs_notify(&mut self) -> Result<bool, RingError> {
        self.publish()?;
        // SeqCst fence (F1): orders the flags store above before the load of the
        // device's event structure; pairs with the fence in
        // PackedDevice::set_avail_event (F4), so either the device sees our
        // descriptors when it re-checks or we see its ENABLE (2.8.21.2: "perform a
        // suitable memory barrier before reading the Event Suppression structure").
        fence(Ordering::SeqCst);
        // Relaxed: ordered by F1; one fetch of the whole structure.
        let ev = EventSuppress::from_word(
            self.ring
                .load_u32(self.layout.device_event(), Ordering::Relaxed)?,
        );
        let notify = need_event(
            ev,
            self.features & VIRTIO_F_EVENT_IDX != 0,
            self.next_avail,
            self.avail_wrap,
            self.since_notify,
            self.size,
        );
        self.since_notify = 0;
        Ok(notify)
    }

    /// Flags at `next_used` if they mark a used descriptor for the current lap.
    fn used_flags(&self) -> Result<Option<u16>, RingError> {
        // Acquire (A2): pairs with the Release store of the used flags in
        // PackedDevice::publish_used (P2): makes the used id/len and the payload
        // the device wrote visible.
        let flags = self.ring.load_u16(
            self.layout.desc(self.next_used) + FLAGS_OFF,
            Ordering::Acquire,
        )?;
        let a = flags & DESC_F_AVAIL != 0;
        let u = flags & DESC_F_USED != 0;
        // 2.8.1: used iff AVAIL == USED == the driver's used wrap counter.
        Ok((a == self.used_wrap && u == self.used_wrap).then_some(flags))
    }

    fn complete(&mut self, id: u16) {
        let rec = &mut self.recs[id as usize];
        rec.in_flight = false;
        let n = rec.ndesc;
        (self.next_used, self.used_wrap) = advance(self.next_used, self.used_wrap, n, self.size);
        self.free_slots += n;
        self.in_flight -= 1;
        self.free_ids.push(id);
    }

    fn fail(&mut self, e: RingError) -> RingError {
        self.broken = true;
        e
    }

    /// Returns the next used buffer, if the device has published one.
    ///
    /// The used descriptor's id must name a chain in flight
    /// ([`RingError::UnexpectedUsedId`]) and its length (when WRITE is set, 2.8.4)
    /// must not exceed the chain's writable bytes ([`RingError::UsedLenTooLarge`]);
    /// violations mark the queue broken. With VIRTIO_F_IN_ORDER one used descriptor
    /// may complete a batch (2.8.8): the earlier chains are returned first, one per
    /// call, with `len` 0.
    pub fn poll_used(&mut self) -> Result<Option<Used>, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        if let Some(end) = self.batch_end {
            return Ok(Some(self.next_in_batch(end)));
        }
        let Some(flags) = self.used_flags()? else {
            return Ok(None);
        };
        let off = self.layout.desc(self.next_used);
        // Relaxed: ordered after A2. Each field fetched once.
        let id = self.ring.load_u16(off + ID_OFF, Ordering::Relaxed)?;
        let raw_len = self.ring.load_u32(off + LEN_OFF, Ordering::Relaxed)?;
        // 2.8.4: "Element Length is reserved for used descriptors without the
        // VIRTQ_DESC_F_WRITE flag, and is ignored by drivers."
        let len = if flags & DESC_F_WRITE != 0 {
            raw_len
        } else {
            0
        };
        let rec = match self.recs.get(id as usize) {
            Some(r) if r.in_flight => *r,
            _ => return Err(self.fail(RingError::UnexpectedUsedId { id: id as u32 })),
        };
        if len as u64 > rec.writable {
            return Err(self.fail(RingError::UsedLenTooLarge {
                len,
                max: rec.writable.min(u32::MAX as u64) as u32,
            }));
        }
        if self.features & VIRTIO_F_IN_ORDER != 0 {
            // `id` is in flight, so it is in `order`: the batch ends there.
            return Ok(Some(self.next_in_batch(Used { id, len })));
        }
        self.complete(id);
        Ok(Some(Used { id, len }))
    }

    /// IN_ORDER: completes the oldest chain; the batch ends at `end.id` (in flight,
    /// hence in `order`, so this terminates).
    fn next_in_batch(&mut self, end: Used) -> Used {
        let Some(front) = self.order.pop_front() else {
            // Unreachable: `end.id` was validated in flight. Stay safe anyway.
            self.batch_end = None;
            return end;
        };
        self.complete(front);
        if front == end.id {
            self.batch_end = None;
            end
        } else {
            self.batch_end = Some(end);
            Used { id: front, len: 0 }
        }
    }

    /// The event that fires at the next used descriptor this driver will read
    /// (for [`set_used_notification`](Self::set_used_notification) with
    /// VIRTIO_F_EVENT_IDX: one notification, exactly when the device passes it).
    pub fn next_used_event(&self) -> EventMode {
        EventMode::Desc {
            off: self.next_used,
            wrap: self.used_wrap,
        }
    }

    /// Sets the driver event suppression structure: whether (and at which used
    /// descriptor) the device should send used buffer notifications (2.8.10).
    /// Returns true if a used descriptor is already waiting, so the caller polls
    /// again instead of sleeping (2.8.22: re-check after re-enabling).
    /// [`EventMode::Desc`] needs VIRTIO_F_EVENT_IDX and `off < N`.
    pub fn set_used_notification(&mut self, mode: EventMode) -> Result<bool, RingError> {
        if let EventMode::Desc { off, .. } = mode {
            if self.features & VIRTIO_F_EVENT_IDX == 0 || off >= self.size {
                return Err(RingError::InvalidRequest(
                    "descriptor event needs VIRTIO_F_EVENT_IDX and off < N",
                ));
            }
        }
        // Relaxed, one 32-bit store so the device never sees a torn off_wrap/flags
        // pair; ordered against the re-check below by F2.
        self.ring.store_u32(
            self.layout.driver_event(),
            mode.encode().to_word(),
            Ordering::Relaxed,
        )?;
        if mode == EventMode::Disable {
            return Ok(false);
        }
        // SeqCst fence (F2): pairs with the device's F3 in PackedDevice::needs_notify:
        // either the device sees this ENABLE, or we see its used descriptor below.
        fence(Ordering::SeqCst);
        if self.batch_end.is_some() {
            return Ok(true);
        }
        Ok(self.used_flags()?.is_some())
    }
}
