//! Error types shared by every ring.
//!
//! [`MemError`] is an access outside (or misaligned within) a region. [`RingError`] is
//! everything a ring half can report: bad configuration on our side, and every way a
//! hostile or buggy peer can violate a ring protocol (GUIDE.md section 8). A half that
//! sees a peer violation marks its queue broken; later calls return
//! [`RingError::Broken`] until the queue is reset.

/// An access that does not fit the region it was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// `offset..offset + len` is not inside the `size`-byte region.
    #[error("access of {len} bytes at offset {offset} is outside the {size}-byte region")]
    OutOfBounds {
        /// Offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Size of the region.
        size: usize,
    },
    /// The access is not aligned for its type.
    #[error("access at offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        /// Offset of the access.
        offset: usize,
        /// Required alignment.
        align: usize,
    },
}

/// Everything a ring half can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    // ---- our own configuration -------------------------------------------------
    /// A memory access failed (the region is smaller than the layout needs, or a
    /// peer-supplied offset pointed outside it).
    #[error("memory access failed: {0}")]
    Mem(#[from] MemError),
    /// A size parameter is invalid (zero, not a power of two, or too large).
    #[error("invalid {what}: {value} ({why})")]
    InvalidConfig {
        /// Which parameter.
        what: &'static str,
        /// The value given.
        value: u64,
        /// What is expected.
        why: &'static str,
    },
    /// The region is too small for the requested layout.
    #[error("region of {have} bytes is too small for the layout ({need} bytes needed)")]
    RegionTooSmall {
        /// Bytes the layout needs.
        need: usize,
        /// Bytes the region has.
        have: usize,
    },
    /// A request from our own side that cannot be honoured (for example a chain longer
    /// than the ring, or a buffer outside the data area we were given).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),

    // ---- peer violations -------------------------------------------------------
    /// A peer-written index moved by more than the ring size since we last saw it.
    #[error("{what} index jumped from {old} to {new} on a ring of {size}")]
    IndexJump {
        /// Which index (e.g. "avail", "used").
        what: &'static str,
        /// Last value we accepted.
        old: u32,
        /// Value the peer wrote.
        new: u32,
        /// Ring size.
        size: u32,
    },
    /// A descriptor or buffer id is outside the ring / table.
    #[error("descriptor index {index} out of range (table of {size})")]
    DescIndexOutOfRange {
        /// The index read.
        index: u32,
        /// Table size.
        size: u32,
    },
    /// A buffer address/length does not lie inside the data area.
    #[error("buffer {addr:#x}+{len} is outside the data area of {limit} bytes")]
    BufferOutOfRange {
        /// Address (offset) read from the peer.
        addr: u64,
        /// Length read from the peer.
        len: u64,
        /// Size of the data area.
        limit: u64,
    },
    /// A descriptor chain is longer than the ring allows (usually a loop).
    #[error("descriptor chain longer than {limit} (loop?)")]
    ChainTooLong {
        /// The walk limit.
        limit: u32,
    },
    /// An indirect descriptor inside an indirect table.
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    /// An indirect descriptor with a length that is zero, not a multiple of 16, or too
    /// long, or that also has NEXT set.
    #[error("malformed indirect descriptor (len {len})")]
    BadIndirect {
        /// Length field of the indirect descriptor.
        len: u32,
    },
    /// Indirect descriptors were used but not negotiated.
    #[error("indirect descriptor used but VIRTIO_F_INDIRECT_DESC not negotiated")]
    IndirectNotNegotiated,
    /// A device-readable descriptor follows a device-writable one in a chain.
    #[error("readable descriptor after a writable one in a chain")]
    ReadableAfterWritable,
    /// Packed ring: a descriptor's AVAIL/USED flags do not match any valid state.
    #[error("packed ring slot {slot}: nonsense wrap flags {flags:#06x}")]
    BadWrapFlags {
        /// Ring slot.
        slot: u32,
        /// Flags read.
        flags: u16,
    },
    /// The device returned a buffer id that is not in flight.
    #[error("used id {id} is not in flight")]
    UnexpectedUsedId {
        /// The id returned.
        id: u32,
    },
    /// The device reported a used length larger than the writable part of the chain.
    #[error("used length {len} exceeds the {max} writable bytes of the chain")]
    UsedLenTooLarge {
        /// Length reported.
        len: u32,
        /// Writable bytes of the chain.
        max: u32,
    },
    /// Posted ring: a credit names a buffer outside the credit area or misaligned.
    #[error("credit for buffer offset {offset:#x} is not a valid buffer")]
    BadCredit {
        /// Offset named by the credit.
        offset: u64,
    },
    /// Posted ring: the peer granted more credits than there are buffers.
    #[error("peer granted {granted} credits, more than the {limit} buffers")]
    TooManyCredits {
        /// Credits outstanding after the grant.
        granted: u32,
        /// Buffers that exist.
        limit: u32,
    },
    /// Posted ring: a slot whose fields are inconsistent (length over the buffer or
    /// inline capacity, unknown flags).
    #[error("posted slot {slot}: {why}")]
    BadSlot {
        /// Ring slot.
        slot: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// The queue was marked broken by an earlier violation; it must be reset.
    #[error("queue is broken (needs reset)")]
    Broken,

    // ---- packed ----
    /// Our own request does not fit: the ring has fewer free slots than the chain
    /// needs (back-pressure, not a violation; retry after used buffers return).
    #[error("ring full: {need} slots needed, {free} free")]
    RingFull {
        /// Slots the request needs.
        need: u32,
        /// Slots free now.
        free: u32,
    },
}

impl RingError {
    /// True if this error means the peer violated the protocol (as opposed to a bad
    /// request or configuration on our own side). Such errors mark the queue broken.
    pub fn is_peer_violation(&self) -> bool {
        !matches!(
            self,
            RingError::InvalidConfig { .. }
                | RingError::RegionTooSmall { .. }
                | RingError::InvalidRequest(_)
                | RingError::Broken
                | RingError::RingFull { .. }
        )
    }
}
