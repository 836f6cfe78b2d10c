//! A raw packed-ring writer for tests (`cfg(test)` or the `mock` feature).
//!
//! [`PackedMock`] plays either side without any of the real halves' rules: it writes
//! arbitrary descriptors (any flags, ids, addresses, lengths, including hostile
//! ones), indirect tables and event suppression structures, so device and driver
//! halves in this and other crates can be tested against malformed rings.
//!
//! ```
//! # #[cfg(feature = "mock")] {
//! use rings::packed::{mock::PackedMock, PackedDesc, PackedLayout, PackedDevice};
//! use rings::packed::layout::DESC_F_NEXT;
//! use rings::{BufDesc, Region, RingError};
//! let layout = PackedLayout::new(4).unwrap();
//! let (ring, data) = (Region::heap(layout.size()), Region::heap(4096));
//! let mut mock = PackedMock::new(ring.clone(), layout);
//! // A chain whose second descriptor points past the data area.
//! mock.push_chain(&[
//!     PackedDesc { addr: 0, len: 64, id: 0, flags: DESC_F_NEXT },
//!     PackedDesc { addr: 4090, len: 64, id: 0, flags: 0 },
//! ]).unwrap();
//! let mut dev = PackedDevice::new(ring, layout, data, 0).unwrap();
//! let mut bufs = [BufDesc::default(); 4];
//! assert!(matches!(dev.pop(&mut bufs), Err(RingError::BufferOutOfRange { .. })));
//! assert_eq!(dev.pop(&mut bufs), Err(RingError::Broken));
//! # }
//! ```

use super::advance;
use super::layout::{avail_bits, EventSuppress, PackedDesc, PackedLayout, FLAGS_OFF};
use crate::error::MemError;
use crate::mem::Mem;
use crate::sync::Ordering;

/// Writes raw packed-ring contents into a ring region.
pub struct PackedMock<M: Mem> {
    ring: M,
    layout: PackedLayout,
    next: u16,
    wrap: bool,
}

impl<M: Mem> PackedMock<M> {
    /// A writer over `ring` (at least `layout.size()` bytes). The cursor for
    /// [`PackedMock::push_chain`] starts at slot 0 with wrap counter 1. Writes
    /// nothing (a fresh heap region is already the zeroed ring).
    pub fn new(ring: M, layout: PackedLayout) -> Self {
        PackedMock {
            ring,
            layout,
            next: 0,
            wrap: true,
        }
    }

    /// The layout.
    pub fn layout(&self) -> PackedLayout {
        self.layout
    }

    /// Zeroes every descriptor and both event structures; cursor back to slot 0.
    pub fn clear(&mut self) -> Result<(), MemError> {
        for slot in 0..self.layout.queue_size() {
            self.write_desc(slot, PackedDesc::default())?;
        }
        self.ring
            .store_u32(self.layout.driver_event(), 0, Ordering::Relaxed)?;
        self.ring
            .store_u32(self.layout.device_event(), 0, Ordering::Relaxed)?;
        self.next = 0;
        self.wrap = true;
        Ok(())
    }

    /// Cursor of [`PackedMock::push_chain`]: next slot and wrap counter.
    pub fn cursor(&self) -> (u16, bool) {
        (self.next, self.wrap)
    }

    /// Moves the cursor (e.g. to start a chain just before the ring end).
    pub fn set_cursor(&mut self, slot: u16, wrap: bool) {
        self.next = slot % self.layout.queue_size();
        self.wrap = wrap;
    }

    /// Writes `desc` verbatim (flags included) into `slot` (taken modulo N).
    pub fn write_desc(&self, slot: u16, desc: PackedDesc) -> Result<(), MemError> {
        let slot = slot % self.layout.queue_size();
        self.ring.write_obj(self.layout.desc(slot), &desc)
    }

    /// Reads the descriptor in `slot` (modulo N).
    pub fn read_desc(&self, slot: u16) -> Result<PackedDesc, MemError> {
        let slot = slot % self.layout.queue_size();
        self.ring.read_obj(self.layout.desc(slot))
    }

    /// Release-stores `flags` into `slot` (modulo N), e.g. to make a prepared head
    /// available.
    pub fn set_flags(&self, slot: u16, flags: u16) -> Result<(), MemError> {
        let slot = slot % self.layout.queue_size();
        // Release: publishes what was written before, like PackedDriver::publish.
        self.ring
            .store_u16(self.layout.desc(slot) + FLAGS_OFF, flags, Ordering::Release)
    }

    /// Writes a chain at the cursor the way a correct driver would place it: each
    /// descriptor gets its given `flags` (NEXT / WRITE / INDIRECT, whatever the test
    /// wants) ORed with the AVAIL/USED bits for its slot's lap, and the head's flags
    /// are stored last with Release. Returns the head slot; the cursor advances.
    pub fn push_chain(&mut self, descs: &[PackedDesc]) -> Result<u16, MemError> {
        self.push_chain_with(descs, |_, f, wrap| f | avail_bits(wrap))
    }

    /// As [`PackedMock::push_chain`], but `flags(i, given, wrap)` computes the full
    /// flags word of descriptor `i` (to write nonsense AVAIL/USED combinations).
    pub fn push_chain_with(
        &mut self,
        descs: &[PackedDesc],
        flags: impl Fn(usize, u16, bool) -> u16,
    ) -> Result<u16, MemError> {
        let n = self.layout.queue_size();
        let head = self.next;
        let mut head_flags = 0;
        let (mut pos, mut wrap) = (self.next, self.wrap);
        for (i, d) in descs.iter().enumerate() {
            let f = flags(i, d.flags, wrap);
            if i == 0 {
                head_flags = f;
                self.write_desc(
                    pos,
                    PackedDesc {
                        flags: self.read_desc(pos)?.flags,
                        ..*d
                    },
                )?;
            } else {
                self.write_desc(pos, PackedDesc { flags: f, ..*d })?;
            }
            (pos, wrap) = advance(pos, wrap, 1, n);
        }
        if !descs.is_empty() {
            self.set_flags(head, head_flags)?;
        }
        self.next = pos;
        self.wrap = wrap;
        Ok(head)
    }

    /// Writes a used descriptor verbatim at `slot` (for driver-half tests): id and
    /// len, then `flags` with Release.
    pub fn write_used(&self, slot: u16, id: u16, len: u32, flags: u16) -> Result<(), MemError> {
        let cur = self.read_desc(slot)?;
        self.write_desc(slot, PackedDesc { id, len, ..cur })?;
        self.set_flags(slot, flags)
    }

    /// Writes an indirect table at offset `off` of `data`.
    pub fn write_indirect_table<D: Mem>(
        data: &D,
        off: usize,
        entries: &[PackedDesc],
    ) -> Result<(), MemError> {
        for (i, e) in entries.iter().enumerate() {
            data.write_obj(off + i * size_of::<PackedDesc>(), e)?;
        }
        Ok(())
    }

    /// Writes the driver event suppression structure (read by the device).
    pub fn write_driver_event(&self, ev: EventSuppress) -> Result<(), MemError> {
        self.ring
            .store_u32(self.layout.driver_event(), ev.to_word(), Ordering::SeqCst)
    }

    /// Writes the device event suppression structure (read by the driver).
    pub fn write_device_event(&self, ev: EventSuppress) -> Result<(), MemError> {
        self.ring
            .store_u32(self.layout.device_event(), ev.to_word(), Ordering::SeqCst)
    }

    /// Reads the driver event suppression structure.
    pub fn read_driver_event(&self) -> Result<EventSuppress, MemError> {
        Ok(EventSuppress::from_word(
            self.ring
                .load_u32(self.layout.driver_event(), Ordering::SeqCst)?,
        ))
    }

    /// Reads the device event suppression structure.
    pub fn read_device_event(&self) -> Result<EventSuppress, MemError> {
        Ok(EventSuppress::from_word(
            self.ring
                .load_u32(self.layout.device_event(), Ordering::SeqCst)?,
        ))
    }
}
