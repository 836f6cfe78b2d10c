//! The virtio 1.x packed virtqueue (virtio 1.x section 2.8), driver and device halves.
//!
//! A packed ring is one array of N 16-byte descriptors that both sides write, plus
//! two 4-byte event suppression structures (byte layout in [`layout`]):
//!
//! ```text
//!            driver writes available descs              device overwrites them
//!            (AVAIL = wrap, USED = !wrap)               with used descs (AVAIL = USED = wrap)
//!  slot:  0       1       2       3   ...  N-1
//!        +-------+-------+-------+-------+------+
//!        | used  | used  | avail | avail | free |      next_used (driver) -> 0
//!        +-------+-------+-------+-------+------+      next_avail (device) -> 2
//!        |16*N: driver event suppress | device event suppress |
//! ```
//!
//! - [`PackedDriver`] (the virtio driver / frontend) makes chains available and polls
//!   used descriptors. It keeps its own record of every chain in flight and never
//!   reads a descriptor it wrote back from shared memory.
//! - [`PackedDevice`] (the vhost-style backend) pops available chains, validating every
//!   descriptor as hostile input (GUIDE.md section 8), and writes used descriptors.
//! - `mock` (tests and the `mock` feature) writes arbitrary raw descriptors.
//!
//! Descriptor `addr` fields are offsets into a *data area* (a separate [`Mem`]) of
//! `data.size()` bytes; indirect tables live there too.
//!
//! Ordering (docs/MEMORY_ORDERING.md): the first descriptor's flags of a burst are
//! written last with one Release store, paired with the Acquire load of the flags
//! word by the other side; notification checks use SeqCst fences.
//!
//! [`Mem`]: crate::mem::Mem

pub mod device;
pub mod driver;
pub mod layout;
#[cfg(any(test, feature = "mock"))]
pub mod mock;

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;

pub use device::PackedDevice;
pub use driver::PackedDriver;
pub use layout::{EventSuppress, PackedDesc, PackedLayout};

/// A used buffer returned to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Buffer id given by [`PackedDriver::add`].
    pub id: u16,
    /// Bytes the device wrote into the writable part of the chain (0 if the used
    /// descriptor has no WRITE flag, 2.8.4, or the chain was completed implicitly by
    /// an in-order batch, 2.8.8).
    pub len: u32,
}

/// What an event suppression structure asks of the other side (2.8.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventMode {
    /// Notify after every batch (`RING_EVENT_FLAGS_ENABLE`).
    Enable,
    /// Do not notify (`RING_EVENT_FLAGS_DISABLE`).
    Disable,
    /// Notify when the descriptor at ring offset `off` is made available / used
    /// while the ring wrap counter is `wrap` (`RING_EVENT_FLAGS_DESC`; needs
    /// VIRTIO_F_EVENT_IDX).
    Desc {
        /// Ring slot, `< N`.
        off: u16,
        /// Wrap counter value at which the event fires.
        wrap: bool,
    },
}

impl EventMode {
    /// The structure that encodes this mode (2.8.14).
    pub(crate) fn encode(self) -> EventSuppress {
        match self {
            EventMode::Enable => EventSuppress {
                off_wrap: 0,
                flags: layout::EVENT_F_ENABLE,
            },
            EventMode::Disable => EventSuppress {
                off_wrap: 0,
                flags: layout::EVENT_F_DISABLE,
            },
            EventMode::Desc { off, wrap } => EventSuppress {
                off_wrap: EventSuppress::encode_off_wrap(off, wrap),
                flags: layout::EVENT_F_DESC,
            },
        }
    }
}

/// Decides whether to notify the peer, given the peer's event suppression structure
/// (`ev`, fetched once), the position after our latest published descriptor
/// (`new_pos`, in `0..size`, with our wrap counter `new_wrap`), and the number of
/// ring slots published since the last decision (`count`).
///
/// - DISABLE: never. ENABLE (and the reserved value 3, and DESC without
///   VIRTIO_F_EVENT_IDX): whenever something was published.
/// - DESC: when the event descriptor lies in the slots just published, i.e.
///   `old <= event < new` in a linear numbering where slots of the previous lap are
///   negative (the Linux `vring_need_event` rule, as in
///   `virtqueue_kick_prepare_packed`): an event offset whose wrap counter differs
///   from ours is taken to be in the previous lap.
///
/// Pure function of its (already fetched) inputs; never indexes anything.
pub fn need_event(
    ev: EventSuppress,
    event_idx: bool,
    new_pos: u16,
    new_wrap: bool,
    count: u32,
    size: u16,
) -> bool {
    if count == 0 {
        return false;
    }
    match ev.flags & 0x3 {
        layout::EVENT_F_DISABLE => false,
        layout::EVENT_F_DESC if event_idx => {
            if count >= size as u32 {
                // A whole lap (or more) was published: every slot was crossed.
                return true;
            }
            let new = new_pos as i32;
            let old = new - count as i32;
            let (off, wrap) = EventSuppress::decode_off_wrap(ev.off_wrap);
            let mut event = off as i32;
            if wrap != new_wrap {
                event -= size as i32;
            }
            old <= event && event < new
        }
        _ => true,
    }
}

/// Advances a ring position by `n` slots (`n <= size`), flipping the wrap counter
/// when it passes the end (2.8.1).
#[inline]
pub(crate) fn advance(pos: u16, wrap: bool, n: u16, size: u16) -> (u16, bool) {
    let p = pos as u32 + n as u32;
    if p >= size as u32 {
        ((p - size as u32) as u16, !wrap)
    } else {
        (p as u16, wrap)
    }
}
