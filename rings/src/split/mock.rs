//! A raw split-ring harness for tests (the vm-virtio `mock` pattern): it writes any
//! descriptor, avail entry, index or flag value into a ring region, hostile ones
//! included, so tests (here and in other crates, with the `mock` feature) can drive a
//! [`SplitDevice`](super::SplitDevice) with inputs a correct driver never produces.
//! It can also play a hostile device (raw used elements and used.idx) against a
//! [`SplitDriver`](super::SplitDriver).
//!
//! No validation is done: offsets of out-of-range slots wrap modulo N, descriptor ids
//! are written as given.

use crate::error::RingError;
use crate::mem::Mem;
use crate::sync::Ordering;

use super::layout::{Desc, SplitLayout, UsedElem};

/// Raw writer/reader over a split ring region.
#[derive(Debug, Clone)]
pub struct MockRing<M: Mem> {
    ring: M,
    layout: SplitLayout,
}

impl<M: Mem> MockRing<M> {
    /// Wraps `ring` laid out as `layout` (checks the size only).
    pub fn new(ring: M, layout: SplitLayout) -> Result<Self, RingError> {
        layout.check_region(ring.size())?;
        Ok(MockRing { ring, layout })
    }

    /// The memory.
    pub fn ring(&self) -> &M {
        &self.ring
    }
    /// The layout.
    pub fn layout(&self) -> &SplitLayout {
        &self.layout
    }

    fn wrap(&self, i: u16) -> u16 {
        i & (self.layout.queue_size() - 1)
    }

    /// Writes descriptor `i % N` of the table.
    pub fn set_desc(&self, i: u16, d: Desc) -> Result<(), RingError> {
        Ok(self.ring.write_obj(self.layout.desc(self.wrap(i)), &d)?)
    }

    /// Writes descriptor `i % N` from its fields.
    pub fn desc(
        &self,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), RingError> {
        self.set_desc(i, Desc::new(addr, len, flags, next))
    }

    /// Writes an indirect table (any contents) at `addr` of a data area.
    pub fn write_table<D: Mem>(data: &D, addr: u64, descs: &[Desc]) -> Result<(), RingError> {
        for (i, d) in descs.iter().enumerate() {
            let off = usize::try_from(addr)
                .ok()
                .and_then(|a| a.checked_add(16 * i))
                .ok_or(RingError::InvalidRequest("table address overflows"))?;
            data.write_bytes(off, bytemuck::bytes_of(d))?;
        }
        Ok(())
    }

    /// Writes avail.ring\[slot % N\] = head.
    pub fn set_avail_entry(&self, slot: u16, head: u16) -> Result<(), RingError> {
        // Relaxed: published by a later set_avail_idx (Release).
        Ok(self.ring.store_u16(
            self.layout.avail_ring(self.wrap(slot)),
            head,
            Ordering::Relaxed,
        )?)
    }

    /// Stores avail.idx (Release: publishes everything written before, like a driver).
    pub fn set_avail_idx(&self, idx: u16) -> Result<(), RingError> {
        Ok(self
            .ring
            .store_u16(self.layout.avail_idx(), idx, Ordering::Release)?)
    }

    /// Reads avail.idx.
    pub fn avail_idx(&self) -> Result<u16, RingError> {
        Ok(self
            .ring
            .load_u16(self.layout.avail_idx(), Ordering::Acquire)?)
    }

    /// Appends `head` to the avail ring and publishes it (avail.idx + 1).
    pub fn push_avail(&self, head: u16) -> Result<(), RingError> {
        let idx = self.avail_idx()?;
        self.set_avail_entry(idx, head)?;
        self.set_avail_idx(idx.wrapping_add(1))
    }

    /// Stores avail.flags.
    pub fn set_avail_flags(&self, flags: u16) -> Result<(), RingError> {
        Ok(self
            .ring
            .store_u16(self.layout.avail_flags(), flags, Ordering::Relaxed)?)
    }

    /// Stores used_event.
    pub fn set_used_event(&self, ev: u16) -> Result<(), RingError> {
        Ok(self
            .ring
            .store_u16(self.layout.used_event(), ev, Ordering::Relaxed)?)
    }

    /// Reads used.idx (Acquire, like a driver).
    pub fn used_idx(&self) -> Result<u16, RingError> {
        Ok(self
            .ring
            .load_u16(self.layout.used_idx(), Ordering::Acquire)?)
    }

    /// Reads used.ring\[slot % N\] as `(id, len)`.
    pub fn used_elem(&self, slot: u16) -> Result<(u32, u32), RingError> {
        let e: UsedElem = self.ring.read_obj(self.layout.used_ring(self.wrap(slot)))?;
        Ok((u32::from_le(e.id), u32::from_le(e.len)))
    }

    /// Reads used.flags.
    pub fn used_flags(&self) -> Result<u16, RingError> {
        Ok(self
            .ring
            .load_u16(self.layout.used_flags(), Ordering::Relaxed)?)
    }

    /// Reads avail_event.
    pub fn avail_event(&self) -> Result<u16, RingError> {
        Ok(self
            .ring
            .load_u16(self.layout.avail_event(), Ordering::Relaxed)?)
    }

    /// Hostile device: writes used.ring\[slot % N\] = {id, len}.
    pub fn set_used_elem(&self, slot: u16, id: u32, len: u32) -> Result<(), RingError> {
        let e = UsedElem {
            id: id.to_le(),
            len: len.to_le(),
        };
        Ok(self
            .ring
            .write_obj(self.layout.used_ring(self.wrap(slot)), &e)?)
    }

    /// Hostile device: stores used.idx (Release).
    pub fn set_used_idx(&self, idx: u16) -> Result<(), RingError> {
        Ok(self
            .ring
            .store_u16(self.layout.used_idx(), idx, Ordering::Release)?)
    }

    /// Hostile device: appends a used element and publishes it.
    pub fn push_used(&self, id: u32, len: u32) -> Result<(), RingError> {
        let idx = self.used_idx()?;
        self.set_used_elem(idx, id, len)?;
        self.set_used_idx(idx.wrapping_add(1))
    }

    /// Hostile device: stores used.flags.
    pub fn set_used_flags(&self, flags: u16) -> Result<(), RingError> {
        Ok(self
            .ring
            .store_u16(self.layout.used_flags(), flags, Ordering::Relaxed)?)
    }

    /// Hostile device: stores avail_event.
    pub fn set_avail_event(&self, ev: u16) -> Result<(), RingError> {
        Ok(self
            .ring
            .store_u16(self.layout.avail_event(), ev, Ordering::Relaxed)?)
    }
}
