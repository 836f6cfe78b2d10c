//! Types shared by the split and packed virtqueues.
//!
//! Buffer addresses in zerohop descriptors are offsets into a *data area* of known
//! size (the part of the window that holds packet buffers), never pointers. A device
//! half checks `addr + len <= data_len` for every buffer before handing it out.

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufDesc {
    /// Offset of the buffer in the data area.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// True if the device writes this buffer (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

impl BufDesc {
    /// A device-readable buffer.
    pub const fn readable(addr: u64, len: u32) -> Self {
        BufDesc {
            addr,
            len,
            writable: false,
        }
    }

    /// A device-writable buffer.
    pub const fn writable(addr: u64, len: u32) -> Self {
        BufDesc {
            addr,
            len,
            writable: true,
        }
    }
}

/// What a device half reports for one popped chain; the chain's buffers were copied
/// (validated) into the caller's `&mut [BufDesc]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainInfo {
    /// Id to return in the used entry (head descriptor index for split, buffer id for
    /// packed).
    pub id: u16,
    /// Number of buffers written to the caller's slice.
    pub count: usize,
    /// Sum of the device-readable lengths.
    pub readable_len: u64,
    /// Sum of the device-writable lengths.
    pub writable_len: u64,
    /// Ring slots the chain occupied (packed ring: how far the device's position
    /// moved; split ring: always 1 avail entry).
    pub slots: u16,
}
