//! Device half of the packed virtqueue: pops available chains, writes used
//! descriptors (virtio 1.x 2.8.2, 2.8.6, 2.8.7, 2.8.15, 2.8.18).
//!
//! Everything in the ring and the data area is written by the driver and hostile:
//! each descriptor is fetched once ([`Mem::read_obj`]) and validated before use, every
//! walk is bounded, and a violation marks the queue broken with a typed error.

use super::layout::{
    used_bits, EventSuppress, PackedDesc, PackedLayout, DESC_F_AVAIL, DESC_F_INDIRECT, DESC_F_NEXT,
    DESC_F_USED, DESC_F_WRITE, FLAGS_OFF, ID_OFF, LEN_OFF,
};
use super::{advance, need_event, EventMode};
use crate::chain::{BufDesc, ChainInfo};
use crate::error::RingError;
use crate::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use crate::mem::Mem;
use crate::sync::{fence, Ordering};

/// The device (backend) half of a packed virtqueue.
///
/// `M` is the ring region, `D` the data area descriptor addresses point into.
pub struct PackedDevice<M: Mem, D: Mem = M> {
    ring: M,
    layout: PackedLayout,
    data: D,
    data_len: u64,
    features: u64,
    size: u16,
    /// Next slot to look for an available descriptor, and the Device Ring Wrap
    /// Counter as seen by the avail side (2.8.1).
    next_avail: u16,
    avail_wrap: bool,
    /// Next slot to write a used descriptor and its wrap counter.
    next_used: u16,
    used_wrap: bool,
    /// Slots popped and not yet returned with push_used.
    outstanding: u32,
    /// Slot and flags of the first used descriptor written since publish_used.
    pending_used: Option<(u16, u16)>,
    pending_slots: u32,
    since_notify: u32,
    broken: bool,
}

/// Chain walk state: validated buffers copied into the caller's slice.
struct Walk<'a> {
    bufs: &'a mut [BufDesc],
    count: usize,
    readable: u64,
    writable: u64,
    data_len: u64,
}

impl Walk<'_> {
    /// Checks one buffer lies in the data area and appends it (the caller checks
    /// the readable/writable order).
    fn push(&mut self, addr: u64, len: u32, writable: bool) -> Result<(), RingError> {
        let end = addr.checked_add(len as u64);
        if !matches!(end, Some(e) if e <= self.data_len) {
            return Err(RingError::BufferOutOfRange {
                addr,
                len: len as u64,
                limit: self.data_len,
            });
        }
        let Some(slot) = self.bufs.get_mut(self.count) else {
            return Err(RingError::ChainTooLong {
                limit: self.bufs.len() as u32,
            });
        };
        *slot = BufDesc {
            addr,
            len,
            writable,
        };
        self.count += 1;
        if writable {
            self.writable += len as u64;
        } else {
            self.readable += len as u64;
        }
        Ok(())
    }
}

impl<M: Mem, D: Mem> PackedDevice<M, D> {
    /// Attaches to a ring the driver initialised. Writes nothing.
    pub fn new(ring: M, layout: PackedLayout, data: D, features: u64) -> Result<Self, RingError> {
        if ring.size() < layout.size() {
            return Err(RingError::RegionTooSmall {
                need: layout.size(),
                have: ring.size(),
            });
        }
        // Probe alignment of the region base once (descriptor and event accesses).
        ring.read_obj::<PackedDesc>(layout.desc(0))?;
        ring.load_u32(layout.device_event(), Ordering::Relaxed)?;
        Ok(PackedDevice {
            ring,
            layout,
            data_len: data.size() as u64,
            data,
            features,
            size: layout.queue_size(),
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            outstanding: 0,
            pending_used: None,
            pending_slots: 0,
            since_notify: 0,
            broken: false,
        })
    }

    /// Forgets all state (back to slot 0, wrap counters 1) and clears the broken
    /// mark. Writes nothing; the driver re-initialises the ring.
    pub fn reset(&mut self) {
        self.next_avail = 0;
        self.avail_wrap = true;
        self.next_used = 0;
        self.used_wrap = true;
        self.outstanding = 0;
        self.pending_used = None;
        self.pending_slots = 0;
        self.since_notify = 0;
        self.broken = false;
    }

    /// True after a driver violation, until [`PackedDevice::reset`].
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Queue size N.
    pub fn queue_size(&self) -> u16 {
        self.size
    }

    /// The ring memory.
    pub fn ring(&self) -> &M {
        &self.ring
    }

    /// The data area (to read and write the buffers of popped chains).
    pub fn data(&self) -> &D {
        &self.data
    }

    /// 2.8.1: a descriptor is available in the lap with wrap counter `wrap` iff
    /// AVAIL == wrap and USED != wrap.
    #[inline]
    fn is_avail(flags: u16, wrap: bool) -> bool {
        (flags & DESC_F_AVAIL != 0) == wrap && (flags & DESC_F_USED != 0) != wrap
    }

    /// Pops the next available chain, copying its validated buffers into `bufs`.
    ///
    /// `Ok(None)`: nothing available. Errors (all but `Mem` on our own ring mark the
    /// queue broken): [`RingError::BadWrapFlags`] (head or a later descriptor with
    /// flags that are not "available in this lap"), [`RingError::ChainTooLong`]
    /// (more than N descriptors, or more buffers than `bufs.len()`),
    /// [`RingError::DescIndexOutOfRange`] (buffer id >= N),
    /// [`RingError::BufferOutOfRange`], [`RingError::ReadableAfterWritable`], and
    /// the indirect errors ([`RingError::IndirectNotNegotiated`],
    /// [`RingError::BadIndirect`], [`RingError::NestedIndirect`]).
    pub fn pop(&mut self, bufs: &mut [BufDesc]) -> Result<Option<ChainInfo>, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        match self.pop_inner(bufs) {
            Err(e) => {
                if e.is_peer_violation() {
                    self.broken = true;
                }
                Err(e)
            }
            ok => ok,
        }
    }

    fn pop_inner(&mut self, bufs: &mut [BufDesc]) -> Result<Option<ChainInfo>, RingError> {
        let head_off = self.layout.desc(self.next_avail);
        // Acquire (A1): pairs with the Release of the burst's first head flags in
        // PackedDriver::publish (P1); makes this chain, the rest of the burst,
        // indirect tables and payload visible.
        let head_flags = self
            .ring
            .load_u16(head_off + FLAGS_OFF, Ordering::Acquire)?;
        if !Self::is_avail(head_flags, self.avail_wrap) {
            let a = head_flags & DESC_F_AVAIL != 0;
            let u = head_flags & DESC_F_USED != 0;
            if a == self.avail_wrap && u == self.avail_wrap {
                // "Used in the current lap" at a slot we have not consumed yet: only
                // the device writes used descriptors, and never ahead of next_avail.
                return Err(RingError::BadWrapFlags {
                    slot: self.next_avail as u32,
                    flags: head_flags,
                });
            }
            // Previous lap's available (AVAIL = !wrap, USED = wrap) or used
            // (both !wrap, incl. the zeroed ring): nothing new.
            return Ok(None);
        }
        let mut walk = Walk {
            bufs,
            count: 0,
            readable: 0,
            writable: 0,
            data_len: self.data_len,
        };
        let mut seen_writable = false;
        let (mut pos, mut wrap) = (self.next_avail, self.avail_wrap);
        let mut slots: u16 = 0;
        let id = loop {
            if slots == self.size {
                // TTL: 2.8.17 "MUST NOT create a descriptor list longer than the
                // Queue Size" (an endless NEXT ring lands here).
                return Err(RingError::ChainTooLong {
                    limit: self.size as u32,
                });
            }
            // One fetch of the whole descriptor; everything below uses the copy. The
            // head's flags were already fetched by the Acquire load above: copy only
            // its other 14 bytes and reuse that value (single fetch, GUIDE.md section
            // 8; still two accesses for the head, as before).
            let d: PackedDesc = if slots == 0 {
                let w: [u16; 7] = self.ring.read_obj(self.layout.desc(pos))?;
                let [a, b, c, e, f, g, h] = w;
                bytemuck::cast([a, b, c, e, f, g, h, head_flags])
            } else {
                self.ring.read_obj(self.layout.desc(pos))?
            };
            // 2.8.6: "all flags, including AVAIL, USED, WRITE must be set/cleared
            // correctly in all descriptors in the list" (incl. the head's copy,
            // which must agree with the Acquire load above).
            if !Self::is_avail(d.flags, wrap) {
                return Err(RingError::BadWrapFlags {
                    slot: pos as u32,
                    flags: d.flags,
                });
            }
            slots += 1;
            (pos, wrap) = advance(pos, wrap, 1, self.size);
            if d.flags & DESC_F_INDIRECT != 0 {
                // 2.8.19: INDIRECT needs the feature, and is never part of a NEXT
                // list (neither with NEXT set nor after a NEXT descriptor).
                if self.features & VIRTIO_F_INDIRECT_DESC == 0 {
                    return Err(RingError::IndirectNotNegotiated);
                }
                if d.flags & DESC_F_NEXT != 0 || slots != 1 {
                    return Err(RingError::BadIndirect { len: d.len });
                }
                self.walk_indirect(&d, &mut walk)?;
                break d.id;
            }
            let writable = d.flags & DESC_F_WRITE != 0;
            if !writable && seen_writable {
                return Err(RingError::ReadableAfterWritable);
            }
            seen_writable |= writable;
            walk.push(d.addr, d.len, writable)?;
            if d.flags & DESC_F_NEXT == 0 {
                // 2.8.6: "Buffer ID is included in the last descriptor in the list."
                break d.id;
            }
        };
        if id >= self.size {
            return Err(RingError::DescIndexOutOfRange {
                index: id as u32,
                size: self.size as u32,
            });
        }
        self.next_avail = pos;
        self.avail_wrap = wrap;
        self.outstanding += slots as u32;
        Ok(Some(ChainInfo {
            id,
            count: walk.count,
            readable_len: walk.readable,
            writable_len: walk.writable,
            slots,
        }))
    }

    /// Reads an indirect table (2.8.7) from the data area into `walk`.
    fn walk_indirect(&self, d: &PackedDesc, walk: &mut Walk<'_>) -> Result<(), RingError> {
        const DESC: u32 = size_of::<PackedDesc>() as u32;
        if d.len == 0 || d.len & (DESC - 1) != 0 || d.addr & 7 != 0 {
            return Err(RingError::BadIndirect { len: d.len });
        }
        let end = d.addr.checked_add(d.len as u64);
        if !matches!(end, Some(e) if e <= self.data_len) {
            return Err(RingError::BufferOutOfRange {
                addr: d.addr,
                len: d.len as u64,
                limit: self.data_len,
            });
        }
        let n = d.len / DESC;
        if n > self.size as u32 {
            // 2.8.5: "If not limited, the maximum number of descriptors in a list is
            // the virt queue size."
            return Err(RingError::ChainTooLong {
                limit: self.size as u32,
            });
        }
        // In range: addr + len <= data_len <= usize::MAX.
        let base = d.addr as usize;
        let mut seen_writable = false;
        for i in 0..n as usize {
            // Plain (volatile) copy, fetched once: ordered after A1 (the table was
            // written before P1).
            let e: PackedDesc = self.data.read_obj(base + i * DESC as usize)?;
            if e.flags & DESC_F_INDIRECT != 0 {
                return Err(RingError::NestedIndirect);
            }
            // 2.8.7: only WRITE is valid inside the table; NEXT and the id are
            // reserved and ignored (entries are consecutive).
            let writable = e.flags & DESC_F_WRITE != 0;
            if !writable && seen_writable {
                return Err(RingError::ReadableAfterWritable);
            }
            seen_writable |= writable;
            walk.push(e.addr, e.len, writable)?;
        }
        Ok(())
    }

    /// Writes a used descriptor for buffer `id` (from [`ChainInfo::id`]) at the next
    /// used slot, with `len` bytes written by the device, and moves the used
    /// position by `slots` ([`ChainInfo::slots`]; with VIRTIO_F_IN_ORDER one used
    /// descriptor may cover a batch: pass the last id and the batch's total slots,
    /// 2.8.8). Visible to the driver after [`PackedDevice::publish_used`].
    pub fn push_used(&mut self, id: u16, len: u32, slots: u16) -> Result<(), RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        if id >= self.size || slots == 0 || slots as u32 > self.outstanding {
            return Err(RingError::InvalidRequest(
                "push_used: id >= N, or slots not in 1..=slots popped and not returned",
            ));
        }
        let off = self.layout.desc(self.next_used);
        // Relaxed: published by the Release in publish_used (P2). 2.8.4: addr is
        // unused in a used descriptor and left as it is.
        self.ring.store_u16(off + ID_OFF, id, Ordering::Relaxed)?;
        self.ring.store_u32(off + LEN_OFF, len, Ordering::Relaxed)?;
        // 2.8.1: AVAIL = USED = device wrap counter; 2.8.3: WRITE says data was
        // written (and makes len meaningful).
        let flags = used_bits(self.used_wrap) | if len > 0 { DESC_F_WRITE } else { 0 };
        if self.pending_used.is_none() {
            self.pending_used = Some((self.next_used, flags));
        } else {
            // Relaxed: a later used descriptor of the burst; the driver reads it only
            // after acquiring the burst's first (P2/A2), 2.8.9.
            self.ring
                .store_u16(off + FLAGS_OFF, flags, Ordering::Relaxed)?;
        }
        (self.next_used, self.used_wrap) =
            advance(self.next_used, self.used_wrap, slots, self.size);
        self.outstanding -= slots as u32;
        self.pending_slots += slots as u32;
        Ok(())
    }

    /// Makes the used descriptors written since the last call visible: one Release
    /// store of the first one's flags (2.8.9: "mark the descriptor corresponding to
    /// the first buffer ... used after the rest").
    pub fn publish_used(&mut self) -> Result<(), RingError> {
        if let Some((slot, flags)) = self.pending_used.take() {
            // Release (P2): publishes the used ids/lens of the burst and the payload
            // written into writable buffers; pairs with the Acquire in
            // PackedDriver::poll_used (A2).
            self.ring
                .store_u16(self.layout.desc(slot) + FLAGS_OFF, flags, Ordering::Release)?;
        }
        self.since_notify += core::mem::take(&mut self.pending_slots);
        Ok(())
    }

    /// Publishes pending used descriptors, then tells whether the driver asked for
    /// a used buffer notification (driver event suppression structure, 2.8.10).
    pub fn needs_notify(&mut self) -> Result<bool, RingError> {
        self.publish_used()?;
        // SeqCst fence (F3): orders the used flags store before the load of the
        // driver's event structure; pairs with F2 in
        // PackedDriver::set_used_notification.
        fence(Ordering::SeqCst);
        // Relaxed: ordered by F3; one fetch of the whole (hostile) structure, used
        // only arithmetically.
        let ev = EventSuppress::from_word(
            self.ring
                .load_u32(self.layout.driver_event(), Ordering::Relaxed)?,
        );
        let notify = need_event(
            ev,
            self.features & VIRTIO_F_EVENT_IDX != 0,
            self.next_used,
            self.used_wrap,
            self.since_notify,
            self.size,
        );
        self.since_notify = 0;
        Ok(notify)
    }

    /// Enables or disables available buffer notifications (device event suppression
    /// structure). Returns true if a chain is already available, so the caller
    /// polls again instead of sleeping.
    pub fn set_avail_notification(&mut self, enable: bool) -> Result<bool, RingError> {
        self.set_avail_event(if enable {
            EventMode::Enable
        } else {
            EventMode::Disable
        })
    }

    /// Sets the device event suppression structure to `mode` ([`EventMode::Desc`]
    /// needs VIRTIO_F_EVENT_IDX and `off < N`). Returns as
    /// [`PackedDevice::set_avail_notification`].
    pub fn set_avail_event(&mut self, mode: EventMode) -> Result<bool, RingError> {
        if let EventMode::Desc { off, .. } = mode {
            if self.features & VIRTIO_F_EVENT_IDX == 0 || off >= self.size {
                return Err(RingError::InvalidRequest(
                    "descriptor event needs VIRTIO_F_EVENT_IDX and off < N",
                ));
            }
        }
        // Relaxed: one 32-bit store (no torn off_wrap/flags); ordered by F4.
        self.ring.store_u32(
            self.layout.device_event(),
            mode.encode().to_word(),
            Ordering::Relaxed,
        )?;
        if mode == EventMode::Disable {
            return Ok(false);
        }
        // SeqCst fence (F4): pairs with F1 in PackedDriver::needs_notify.
        fence(Ordering::SeqCst);
        // Acquire: as A1 (a peek; pop re-reads and validates).
        let flags = self.ring.load_u16(
            self.layout.desc(self.next_avail) + FLAGS_OFF,
            Ordering::Acquire,
        )?;
        Ok(Self::is_avail(flags, self.avail_wrap))
    }
}
