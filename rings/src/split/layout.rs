//! Byte layout of a split virtqueue (virtio 1.x section 2.7, Linux
//! `include/uapi/linux/virtio_ring.h`).
//!
//! One contiguous ring region of [`SplitLayout::size`] bytes holds the three parts
//! (offsets for a queue of `N` entries, used ring aligned to `A`):
//!
//! ```text
//! offset                      contents                                  written by
//! 0                           desc[N]: {addr u64, len u32, flags u16,    driver
//!                                       next u16}   16 bytes each
//! 16N             (avail)     flags u16                                 driver
//! 16N + 2                     idx u16                                   driver
//! 16N + 4                     ring[N] u16 (head descriptor ids)         driver
//! 16N + 4 + 2N                used_event u16 (VIRTIO_F_EVENT_IDX)       driver
//! U = align_up(18N + 6, A)    (used) flags u16                          device
//! U + 2                       idx u16                                   device
//! U + 4                       ring[N]: {id u32, len u32}  8 bytes each  device
//! U + 4 + 8N                  avail_event u16 (VIRTIO_F_EVENT_IDX)      device
//! U + 6 + 8N                  end = size()
//! ```
//!
//! Alignments (virtio 1.x 2.7, table "Virtqueue Part Alignment"): descriptor table 16,
//! avail ring 2, used ring 4. Linux' legacy `vring_init` aligns the used ring to 4096
//! ([`LEGACY_USED_ALIGN`]); [`SplitLayout::new`] uses the virtio 1.x minimum of 4.
//! `size()` equals Linux' `vring_size(num, align)`.
//!
//! Every field is little-endian (virtio 1.x 2.7: "le16/le32/le64"). zerohop only
//! targets little-endian hosts, so native-endian atomics *are* little-endian; a
//! big-endian build fails at compile time below rather than corrupting the wire.

use bytemuck::{Pod, Zeroable};

use crate::error::RingError;

#[cfg(not(target_endian = "little"))]
compile_error!("rings::split assumes a little-endian host (virtio 1.x rings are little-endian)");

/// Descriptor continues in `next` (virtio 1.x 2.7.5, `VIRTQ_DESC_F_NEXT`).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Buffer is device-writable (`VIRTQ_DESC_F_WRITE`).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Buffer holds an indirect descriptor table (`VIRTQ_DESC_F_INDIRECT`).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// avail.flags: driver does not want used-buffer notifications (2.7.7,
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`). Ignored by the device when EVENT_IDX is negotiated.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// used.flags: device does not want available-buffer notifications (2.7.10,
/// `VIRTQ_USED_F_NO_NOTIFY`). Ignored by the driver when EVENT_IDX is negotiated.
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// Largest split queue size (virtio 1.x 2.7: "Queue Size ... maximum 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Used-ring alignment of Linux' legacy `vring_init` / virtio 0.9.5 (a page).
pub const LEGACY_USED_ALIGN: usize = 4096;
/// Minimum used-ring alignment of virtio 1.x (2.7).
pub const USED_ALIGN: usize = 4;
/// Alignment the descriptor table (and so the ring region) needs.
pub const DESC_ALIGN: usize = 16;

/// One descriptor (virtio 1.x 2.7.5 `struct virtq_desc`, Linux `struct vring_desc`).
///
/// Fields are stored little-endian; use [`Desc::new`] and the accessors rather than the
/// raw fields so the intent stays visible.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Desc {
    /// Buffer offset in the data area (le64). zerohop: an offset, not a guest address.
    pub addr: u64,
    /// Buffer length (le32).
    pub len: u32,
    /// `VIRTQ_DESC_F_*` (le16).
    pub flags: u16,
    /// Next descriptor id if `flags & NEXT` (le16).
    pub next: u16,
}

const _: () = assert!(core::mem::size_of::<Desc>() == 16);
const _: () = assert!(core::mem::offset_of!(Desc, addr) == 0);
const _: () = assert!(core::mem::offset_of!(Desc, len) == 8);
const _: () = assert!(core::mem::offset_of!(Desc, flags) == 12);
const _: () = assert!(core::mem::offset_of!(Desc, next) == 14);

impl Desc {
    /// A descriptor with its fields converted to little-endian.
    pub const fn new(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
        Desc {
            addr: addr.to_le(),
            len: len.to_le(),
            flags: flags.to_le(),
            next: next.to_le(),
        }
    }
    /// Buffer offset (host order).
    pub const fn addr(&self) -> u64 {
        u64::from_le(self.addr)
    }
    /// Buffer length (host order).
    pub const fn len(&self) -> u32 {
        u32::from_le(self.len)
    }
    /// True if the length is zero.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Flags (host order).
    pub const fn flags(&self) -> u16 {
        u16::from_le(self.flags)
    }
    /// Next id (host order).
    pub const fn next(&self) -> u16 {
        u16::from_le(self.next)
    }
}

/// One used-ring element (virtio 1.x 2.7.8 `struct virtq_used_elem`, Linux
/// `struct vring_used_elem`): `id` is the head descriptor id of the chain, `len` the
/// bytes the device wrote into it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct UsedElem {
    /// Head descriptor id (le32).
    pub id: u32,
    /// Bytes written by the device (le32).
    pub len: u32,
}

const _: () = assert!(core::mem::size_of::<UsedElem>() == 8);
const _: () = assert!(core::mem::offset_of!(UsedElem, id) == 0);
const _: () = assert!(core::mem::offset_of!(UsedElem, len) == 4);

/// Offsets inside the avail ring header (`struct virtq_avail`).
const AVAIL_FLAGS: usize = 0;
const AVAIL_IDX: usize = 2;
const AVAIL_RING: usize = 4;
/// Offsets inside the used ring header (`struct virtq_used`).
const USED_FLAGS: usize = 0;
const USED_IDX: usize = 2;
const USED_RING: usize = 4;

/// Where the parts of a split ring of a given size lie in its ring region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitLayout {
    queue_size: u16,
    used_align: usize,
    avail: usize,
    used: usize,
    size: usize,
}

// Spot checks of the formula (the same arithmetic as Linux `vring_size`).
const _: () = {
    let l = SplitLayout::compute(256, 4096);
    assert!(l.avail == 4096 && l.used == 8192 && l.size == 10246);
    let l = SplitLayout::compute(4, 4);
    assert!(l.avail == 64 && l.used == 80 && l.size == 118);
};

impl SplitLayout {
    /// Layout for `queue_size` entries (a power of two in 1..=32768) with the virtio
    /// 1.x minimum used-ring alignment (4).
    pub fn new(queue_size: u16) -> Result<Self, RingError> {
        Self::with_used_align(queue_size, USED_ALIGN)
    }

    /// Layout with an explicit used-ring alignment (a power of two, at least 4 and at
    /// most 65536): [`LEGACY_USED_ALIGN`] reproduces Linux' legacy `vring_init`.
    pub fn with_used_align(queue_size: u16, used_align: usize) -> Result<Self, RingError> {
        if queue_size == 0 || !queue_size.is_power_of_two() || queue_size > MAX_QUEUE_SIZE {
            return Err(RingError::InvalidConfig {
                what: "split queue size",
                value: u64::from(queue_size),
                why: "must be a power of two in 1..=32768",
            });
        }
        if !used_align.is_power_of_two() || !(USED_ALIGN..=65536).contains(&used_align) {
            return Err(RingError::InvalidConfig {
                what: "split used-ring alignment",
                value: used_align as u64,
                why: "must be a power of two in 4..=65536",
            });
        }
        Ok(Self::compute(queue_size, used_align))
    }

    const fn compute(queue_size: u16, used_align: usize) -> Self {
        let n = queue_size as usize;
        let avail = 16 * n;
        let avail_end = avail + 2 * (3 + n);
        let used = (avail_end + used_align - 1) & !(used_align - 1);
        let size = used + 2 * 3 + 8 * n;
        SplitLayout {
            queue_size,
            used_align,
            avail,
            used,
            size,
        }
    }

    /// Number of entries (`N`).
    #[inline]
    pub const fn queue_size(&self) -> u16 {
        self.queue_size
    }
    /// Alignment of the used ring.
    #[inline]
    pub const fn used_align(&self) -> usize {
        self.used_align
    }
    /// Total bytes of the ring region (Linux `vring_size`).
    #[inline]
    pub const fn size(&self) -> usize {
        self.size
    }
    /// Offset of the descriptor table (always 0).
    #[inline]
    pub const fn desc_offset(&self) -> usize {
        0
    }
    /// Offset of the avail ring.
    #[inline]
    pub const fn avail_offset(&self) -> usize {
        self.avail
    }
    /// Offset of the used ring.
    #[inline]
    pub const fn used_offset(&self) -> usize {
        self.used
    }
    /// Offset of descriptor `i` (caller keeps `i < N`).
    #[inline]
    pub const fn desc(&self, i: u16) -> usize {
        16 * i as usize
    }
    /// Offset of avail.flags.
    #[inline]
    pub const fn avail_flags(&self) -> usize {
        self.avail + AVAIL_FLAGS
    }
    /// Offset of avail.idx.
    #[inline]
    pub const fn avail_idx(&self) -> usize {
        self.avail + AVAIL_IDX
    }
    /// Offset of avail.ring\[slot\] (caller keeps `slot < N`).
    #[inline]
    pub const fn avail_ring(&self, slot: u16) -> usize {
        self.avail + AVAIL_RING + 2 * slot as usize
    }
    /// Offset of used_event (the last u16 of the avail ring).
    #[inline]
    pub const fn used_event(&self) -> usize {
        self.avail + AVAIL_RING + 2 * self.queue_size as usize
    }
    /// Offset of used.flags.
    #[inline]
    pub const fn used_flags(&self) -> usize {
        self.used + USED_FLAGS
    }
    /// Offset of used.idx.
    #[inline]
    pub const fn used_idx(&self) -> usize {
        self.used + USED_IDX
    }
    /// Offset of used.ring\[slot\] (caller keeps `slot < N`).
    #[inline]
    pub const fn used_ring(&self, slot: u16) -> usize {
        self.used + USED_RING + 8 * slot as usize
    }
    /// Offset of avail_event (the last u16 of the used ring).
    #[inline]
    pub const fn avail_event(&self) -> usize {
        self.used + USED_RING + 8 * self.queue_size as usize
    }

    /// Checks that a ring region of `have` bytes can hold this layout.
    pub fn check_region(&self, have: usize) -> Result<(), RingError> {
        if have < self.size {
            return Err(RingError::RegionTooSmall {
                need: self.size,
                have,
            });
        }
        Ok(())
    }
}
