//! Byte layout of a virtio 1.x packed virtqueue (virtio 1.x section 2.8, Linux
//! `include/uapi/linux/virtio_ring.h`: `struct vring_packed_desc`,
//! `struct vring_packed_desc_event`).
//!
//! One contiguous ring region holds the three parts, each at its spec alignment
//! (2.8.10.1 "Structure Size and Alignment": descriptor ring 16, event suppression
//! structures 4):
//!
//! ```text
//!  offset 0                                  16*N        16*N+4      16*N+8
//!  +--------+--------+-----+------------+ ---+-----------+-----------+
//!  | desc 0 | desc 1 | ... | desc N-1   |    | driver ev | device ev |
//!  +--------+--------+-----+------------+ ---+-----------+-----------+
//!   16 bytes each (align 16)                  4 bytes     4 bytes
//!                                             (align 4)   (align 4)
//!
//!  PackedDesc (16 bytes, 2.8.13)         EventSuppress (4 bytes, 2.8.14)
//!  +0  addr  u64 (data-area offset)      +0 off_wrap u16: bits 0..15 desc offset,
//!  +8  len   u32                                          bit 15 wrap counter
//!  +12 id    u16 (buffer id)             +2 flags    u16: 0 ENABLE, 1 DISABLE, 2 DESC
//!  +14 flags u16 NEXT=1 WRITE=2 INDIRECT=4 AVAIL=1<<7 USED=1<<15
//! ```
//!
//! The driver event suppression area is written by the driver and read by the
//! device (it controls used buffer notifications); the device area is the reverse.
//! Every field is little-endian on the wire; zerohop only builds for little-endian
//! targets (checked at compile time below), so native loads and stores are the wire
//! format.

use crate::error::RingError;

// All fields are le16/le32/le64 on the wire (2.8.13); we store them natively.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "packed ring layout assumes a little-endian target"
);

/// `VIRTQ_DESC_F_NEXT`: the chain continues in the next ring slot (2.8.6).
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: device-writable buffer (2.8.3); in a used descriptor,
/// "the device wrote data" (its `len` is valid only with this bit).
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer is a table of descriptors (2.8.7).
pub const DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_DESC_F_AVAIL` (2.8.1).
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// `VIRTQ_DESC_F_USED` (2.8.1).
pub const DESC_F_USED: u16 = 1 << 15;

/// `RING_EVENT_FLAGS_ENABLE` (2.8.10).
pub const EVENT_F_ENABLE: u16 = 0;
/// `RING_EVENT_FLAGS_DISABLE` (2.8.10).
pub const EVENT_F_DISABLE: u16 = 1;
/// `RING_EVENT_FLAGS_DESC`, valid only with VIRTIO_F_EVENT_IDX (2.8.10).
pub const EVENT_F_DESC: u16 = 2;

/// Largest packed queue size: "Packed virtqueues support up to 2^15 entries" (2.8).
pub const MAX_QUEUE_SIZE: u16 = 1 << 15;

/// One packed ring descriptor, `struct pvirtq_desc` (2.8.13) /
/// `struct vring_packed_desc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PackedDesc {
    /// Buffer address: an offset into the data area (zerohop), not a pointer.
    pub addr: u64,
    /// Buffer length; in a used descriptor, bytes written by the device.
    pub len: u32,
    /// Buffer id (carried by the last descriptor of a chain, 2.8.6).
    pub id: u16,
    /// `DESC_F_*` bits.
    pub flags: u16,
}

const _: () = assert!(core::mem::size_of::<PackedDesc>() == 16);
const _: () = assert!(core::mem::offset_of!(PackedDesc, addr) == 0);
const _: () = assert!(core::mem::offset_of!(PackedDesc, len) == 8);
const _: () = assert!(core::mem::offset_of!(PackedDesc, id) == 12);
const _: () = assert!(core::mem::offset_of!(PackedDesc, flags) == 14);

/// Event suppression structure, `struct pvirtq_event_suppress` (2.8.14) /
/// `struct vring_packed_desc_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EventSuppress {
    /// Descriptor offset (bits 0..15) | wrap counter << 15.
    pub off_wrap: u16,
    /// `EVENT_F_*` (low two bits; the rest reserved, 0).
    pub flags: u16,
}

const _: () = assert!(core::mem::size_of::<EventSuppress>() == 4);
const _: () = assert!(core::mem::offset_of!(EventSuppress, off_wrap) == 0);
const _: () = assert!(core::mem::offset_of!(EventSuppress, flags) == 2);

impl EventSuppress {
    /// Encodes `off_wrap` (2.8.14: `desc_event_off : 15; desc_event_wrap : 1`).
    #[inline]
    pub const fn encode_off_wrap(off: u16, wrap: bool) -> u16 {
        (off & 0x7fff) | ((wrap as u16) << 15)
    }

    /// Splits `off_wrap` into (offset, wrap counter).
    #[inline]
    pub const fn decode_off_wrap(off_wrap: u16) -> (u16, bool) {
        (off_wrap & 0x7fff, off_wrap >> 15 != 0)
    }

    /// The structure as the one little-endian 32-bit word it occupies (off_wrap in
    /// the low half), so it can be written and read with a single atomic access.
    #[inline]
    pub const fn to_word(self) -> u32 {
        self.off_wrap as u32 | (self.flags as u32) << 16
    }

    /// Inverse of [`EventSuppress::to_word`].
    #[inline]
    pub const fn from_word(w: u32) -> Self {
        EventSuppress {
            off_wrap: w as u16,
            flags: (w >> 16) as u16,
        }
    }
}

/// The AVAIL/USED bits of a descriptor the driver makes available while its wrap
/// counter is `wrap` (2.8.1: AVAIL = wrap counter, USED = its inverse).
#[inline]
pub const fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        DESC_F_AVAIL
    } else {
        DESC_F_USED
    }
}

/// The AVAIL/USED bits of a descriptor the device marks used while its wrap counter
/// is `wrap` (2.8.1: both equal to the wrap counter).
#[inline]
pub const fn used_bits(wrap: bool) -> u16 {
    if wrap {
        DESC_F_AVAIL | DESC_F_USED
    } else {
        0
    }
}

/// Offsets of the parts of a packed ring of `queue_size` descriptors: one contiguous
/// region ([`PackedLayout::new`], the module diagram), or three parts anywhere in a
/// larger region ([`PackedLayout::at`]: Linux allocates them separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedLayout {
    queue_size: u16,
    desc_ring: usize,
    driver_event: usize,
    device_event: usize,
    size: usize,
}

impl PackedLayout {
    /// Layout for `queue_size` descriptors (1..=32768; need not be a power of two,
    /// 2.8.10.1).
    pub fn new(queue_size: u16) -> Result<Self, RingError> {
        if queue_size == 0 || queue_size > MAX_QUEUE_SIZE {
            return Err(RingError::InvalidConfig {
                what: "packed queue size",
                value: queue_size as u64,
                why: "must be 1..=32768",
            });
        }
        let desc_bytes = queue_size as usize * size_of::<PackedDesc>();
        // Descriptor ring at 0 (align 16); 16*N is a multiple of 4, so the two
        // event structures follow without padding (align 4 each).
        let driver_event = desc_bytes;
        let device_event = driver_event + size_of::<EventSuppress>();
        Ok(PackedLayout {
            queue_size,
            desc_ring: 0,
            driver_event,
            device_event,
            size: device_event + size_of::<EventSuppress>(),
        })
    }

    /// Layout whose three parts sit at the given offsets of one region (a guest's
    /// RAM: Linux' `vring_create_virtqueue_packed` allocates the descriptor ring and
    /// each event structure separately). Checks the alignments (16 for the ring, 4 for
    /// the events) and that no two parts overlap; [`size`](Self::size) is the end of
    /// the last part, which the region must reach.
    pub fn at(
        queue_size: u16,
        desc_ring: usize,
        driver_event: usize,
        device_event: usize,
    ) -> Result<Self, RingError> {
        let base = Self::new(queue_size)?;
        let bad = |what, value: usize, why| RingError::InvalidConfig {
            what,
            value: value as u64,
            why,
        };
        let ev = size_of::<EventSuppress>();
        let ring_end = desc_ring
            .checked_add(queue_size as usize * size_of::<PackedDesc>())
            .ok_or(bad("packed descriptor ring offset", desc_ring, "overflows"))?;
        if !desc_ring.is_multiple_of(Self::ALIGN) {
            return Err(bad(
                "packed descriptor ring offset",
                desc_ring,
                "must be 16-aligned",
            ));
        }
        for (what, off) in [
            ("packed driver event offset", driver_event),
            ("packed device event offset", device_event),
        ] {
            if !off.is_multiple_of(4) {
                return Err(bad(what, off, "must be 4-aligned"));
            }
            let Some(end) = off.checked_add(ev) else {
                return Err(bad(what, off, "overflows"));
            };
            if off < ring_end && desc_ring < end {
                return Err(bad(what, off, "overlaps the descriptor ring"));
            }
        }
        if driver_event.abs_diff(device_event) < ev {
            return Err(bad(
                "packed device event offset",
                device_event,
                "overlaps the driver event",
            ));
        }
        Ok(PackedLayout {
            desc_ring,
            driver_event,
            device_event,
            size: ring_end.max(driver_event + ev).max(device_event + ev),
            ..base
        })
    }

    /// Number of descriptors N.
    #[inline]
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Offset of the descriptor ring (0 for [`new`](Self::new); alignment 16).
    #[inline]
    pub fn desc_ring(&self) -> usize {
        self.desc_ring
    }

    /// Offset of descriptor `slot` (`slot < N`).
    #[inline]
    pub fn desc(&self, slot: u16) -> usize {
        self.desc_ring + slot as usize * size_of::<PackedDesc>()
    }

    /// Offset of the driver event suppression structure (written by the driver).
    #[inline]
    pub fn driver_event(&self) -> usize {
        self.driver_event
    }

    /// Offset of the device event suppression structure (written by the device).
    #[inline]
    pub fn device_event(&self) -> usize {
        self.device_event
    }

    /// Bytes the ring region needs: `16*N + 8` for [`new`](Self::new), the end of the
    /// last part for [`at`](Self::at).
    #[inline]
    pub fn size(&self) -> usize {
        self.size
    }

    /// Alignment the region's base must have (the descriptor ring's, 16).
    pub const ALIGN: usize = 16;
}

/// Offset of the `len` field of a descriptor at `desc_off`.
pub(crate) const LEN_OFF: usize = core::mem::offset_of!(PackedDesc, len);
/// Offset of the `id` field of a descriptor at `desc_off`.
pub(crate) const ID_OFF: usize = core::mem::offset_of!(PackedDesc, id);
/// Offset of the `flags` field of a descriptor at `desc_off`.
pub(crate) const FLAGS_OFF: usize = core::mem::offset_of!(PackedDesc, flags);

#[cfg(test)]
mod tests {
    #[test]
    fn parts_at_offsets_of_a_larger_region() {
        let l = PackedLayout::at(4, 0x1000, 0x2000, 0x3004).unwrap();
        assert_eq!(
            (l.desc_ring(), l.desc(3), l.driver_event(), l.device_event()),
            (0x1000, 0x1030, 0x2000, 0x3004)
        );
        assert_eq!(l.size(), 0x3008);
        // Contiguous, as `new` lays it out.
        let n = PackedLayout::new(4).unwrap();
        assert_eq!(PackedLayout::at(4, 0, 64, 68).unwrap(), n);
        for (d, e1, e2) in [
            (0x1008, 0x2000, 0x3000),          // ring misaligned
            (0x1000, 0x2002, 0x3000),          // event misaligned
            (0x1000, 0x1030, 0x3000),          // event inside the ring
            (0x1000, 0x2000, 0x2000),          // events overlap
            (0x1000, usize::MAX - 3, 0x3000),  // event past the address space
            (usize::MAX - 15, 0x2000, 0x3000), // ring past the address space
        ] {
            assert!(
                PackedLayout::at(4, d, e1, e2).is_err(),
                "{d:#x} {e1:#x} {e2:#x}"
            );
        }
    }

    use super::*;

    #[test]
    fn layout_offsets() {
        let l = PackedLayout::new(4).unwrap();
        assert_eq!(l.desc(3), 48);
        assert_eq!(l.driver_event(), 64);
        assert_eq!(l.device_event(), 68);
        assert_eq!(l.size(), 72);
        let l = PackedLayout::new(3).unwrap();
        assert_eq!((l.driver_event(), l.device_event(), l.size()), (48, 52, 56));
        assert!(PackedLayout::new(0).is_err());
        assert!(PackedLayout::new(32769).is_err());
        assert_eq!(PackedLayout::new(32768).unwrap().size(), 16 * 32768 + 8);
    }

    #[test]
    fn off_wrap_encoding() {
        assert_eq!(EventSuppress::encode_off_wrap(5, true), 0x8005);
        assert_eq!(EventSuppress::decode_off_wrap(0x8005), (5, true));
        assert_eq!(EventSuppress::decode_off_wrap(0x7fff), (0x7fff, false));
        let e = EventSuppress {
            off_wrap: 0x8003,
            flags: EVENT_F_DESC,
        };
        assert_eq!(e.to_word(), 0x0002_8003);
        assert_eq!(EventSuppress::from_word(e.to_word()), e);
        assert_eq!(bytemuck::bytes_of(&e), &[0x03, 0x80, 0x02, 0x00]);
    }
}
