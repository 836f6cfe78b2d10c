//! The virtio 1.x split virtqueue (virtio 1.x section 2.7), driver and device halves.
//!
//! Byte-compatible with the spec and with Linux' `struct vring_desc` / `vring_avail` /
//! `vring_used`, so a standard virtio driver or a vringh-style device can be the peer.
//! The one zerohop difference: a descriptor's `addr` is an offset into a *data area*
//! (a separate [`Mem`] of `data_len` bytes, the window's buffer
//! area), not a bus address. The device half checks `addr + len <= data_len` for
//! every buffer.
//!
//! ```text
//!        driver (SplitDriver)                          device (SplitDevice)
//!  add():  desc[] <- chain, avail.ring[i] <- head
//!  publish(): avail.idx  --- Release ------------>  Acquire  pop(): walk chain
//!                                                   push_used(): used.ring[j] <- {id,len}
//!  poll_used(): Acquire  <------------ Release ---  used.idx  publish_used()
//!
//!  ring region (SplitLayout):  | desc[N] 16B | avail: flags idx ring[N] used_event |
//!                              | pad to used_align | used: flags idx ring[N] avail_event |
//! ```
//!
//! See [`layout`] for the byte offsets, docs/SHARED_LAYOUT.md and
//! docs/MEMORY_ORDERING.md for the diagrams and the table of ordering edges.
//!
//! ```
//! use rings::split::{SplitDevice, SplitDriver, SplitLayout, Used};
//! use rings::{BufDesc, Region};
//!
//! let layout = SplitLayout::new(8)?;
//! let ring = Region::heap(layout.size());
//! let data = Region::heap(4096);
//! let mut drv = SplitDriver::new(ring.clone(), layout, data.clone(), 0)?;
//! let mut dev = SplitDevice::new(ring, layout, data, 0)?;
//!
//! let head = drv.add(&[BufDesc::readable(0, 64), BufDesc::writable(64, 128)])?;
//! drv.publish()?;
//!
//! let mut bufs = [BufDesc::default(); 8];
//! let chain = dev.pop(&mut bufs)?.expect("one chain");
//! assert_eq!((chain.id, chain.count), (head, 2));
//! dev.push_used(chain.id, 100)?;
//! dev.publish_used()?;
//!
//! assert_eq!(drv.poll_used()?, Some(Used { id: head, len: 100 }));
//! # Ok::<(), rings::RingError>(())
//! ```
//!
//! Feature bits honoured (from [`crate::features`]): `VIRTIO_F_INDIRECT_DESC`,
//! `VIRTIO_F_EVENT_IDX`, `VIRTIO_F_IN_ORDER`. Pass the *negotiated* set to both
//! halves.

pub mod device;
pub mod driver;
pub mod layout;
#[cfg(any(test, feature = "mock"))]
pub mod mock;

#[cfg(loom)]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;

pub use device::SplitDevice;
pub use driver::{SplitDriver, Used};
pub use layout::{Desc, SplitLayout, UsedElem};

use crate::error::RingError;
use crate::mem::Mem;
use crate::sync::Ordering;

/// Where one half's notification controls live (virtio 1.x 2.7.7 / 2.7.10): what it
/// reads to decide whether to notify the peer, and what it writes to ask the peer for
/// notifications. The driver reads avail_event / used.flags and writes used_event /
/// avail.flags; the device the other way round.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NotifySite {
    /// VIRTIO_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// The peer's event index (read).
    pub peer_event: usize,
    /// The peer's flags word (read) and its "do not notify me" bit.
    pub peer_flags: usize,
    pub peer_no_bit: u16,
    /// Our event index (written).
    pub own_event: usize,
    /// Our flags word (written) and its "do not notify me" bit.
    pub own_flags: usize,
    pub own_no_bit: u16,
}

impl NotifySite {
    /// The notification decision for our index moving from `old` to `new`. The caller
    /// issues the SeqCst fence that orders its index store before these loads.
    pub fn need_notify<M: Mem>(&self, ring: &M, new: u16, old: u16) -> Result<bool, RingError> {
        if self.event_idx {
            // Relaxed: a peer-written hint; any value is safe (it only decides a
            // notification), and the caller's fence orders the load.
            let event = ring.load_u16(self.peer_event, Ordering::Relaxed)?;
            Ok(vring_need_event(event, new, old))
        } else {
            // Relaxed: as above.
            let flags = ring.load_u16(self.peer_flags, Ordering::Relaxed)?;
            Ok(new != old && flags & self.peer_no_bit == 0)
        }
    }

    /// Asks the peer for notifications from position `pos` on (or, with `enable`
    /// false, stops asking: the event index goes one behind `pos`, which the peer never
    /// crosses). The caller fences after enabling, before it re-reads the peer's index.
    pub fn request<M: Mem>(&self, ring: &M, enable: bool, pos: u16) -> Result<(), RingError> {
        if self.event_idx {
            let ev = if enable { pos } else { pos.wrapping_sub(1) };
            // Relaxed: a hint for the peer; ordered before our next index load by the
            // caller's fence.
            ring.store_u16(self.own_event, ev, Ordering::Relaxed)?;
        } else {
            let flags = if enable { 0 } else { self.own_no_bit };
            // Relaxed: as above.
            ring.store_u16(self.own_flags, flags, Ordering::Relaxed)?;
        }
        Ok(())
    }
}

/// The error [`SplitDriver::add`] returns when the ring has too few free descriptors
/// (the ring is full; poll used buffers and retry).
pub const NO_FREE_DESCS: RingError = RingError::InvalidRequest("no free descriptors");

/// The notification rule of virtio 1.x 2.7.10 / Linux `vring_need_event`: after moving
/// an index from `old` to `new`, notify the peer iff it asked to be woken at
/// `event_idx` and `event_idx` lies in `[old, new)` (modulo 2^16).
#[inline]
pub const fn vring_need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}
