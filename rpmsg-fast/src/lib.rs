//! # rpmsg-fast: RPMsg over zerohop rings
//!
//! Speaks the RPMsg wire format of Linux `virtio_rpmsg_bus` and OpenAMP (GUIDE.md
//! section 7; `docs/RPMSG.md`) over any zerohop ring mode, written once against
//! [`pmd::queue::QueuePair`]:
//!
//! - [`wire`]: `struct rpmsg_hdr` and `struct rpmsg_ns_msg`, byte for byte.
//! - [`bus`]: [`Rpmsg`], endpoints (fixed or dynamic addresses, bind by name,
//!   announce/withdraw), receive by polling or callback, send / try-send / send with
//!   a deadline, and the zero-copy calls ([`Rpmsg::get_tx_buffer`] +
//!   [`Rpmsg::send_nocopy`]; [`Rpmsg::recv`] + [`Rpmsg::release`]).
//! - [`link`]: [`Link`], a /dev/shm window + queue pair + bus, per ring mode and role.
//! - [`guest`]: [`guest::GuestLink`], the remote of a Linux guest's own
//!   `virtio_rpmsg_bus` (its RAM shared, the ZHVQ transport of `rpmsg-fast/linux`).
//! - [`config`]: links and endpoints from a TOML file.
//! - [`bench`](mod@bench): the two-process benchmark's loops (`zerohop rpmsg-bench`).
//!
//! ```no_run
//! use rpmsg_fast::{Addr, Link, LinkConfig, RingMode, Role};
//! # fn main() -> Result<(), rpmsg_fast::RpmsgError> {
//! let mut link = Link::create(&LinkConfig::new("/dev/shm/rpmsg0", RingMode::Posted, Role::Host))?;
//! let ep = link.create_endpoint(Some("rpmsg-echo"), Addr::Dynamic)?;
//! link.announce(ep)?;
//! loop {
//!     if let Some(m) = link.recv(ep)? {
//!         let (src, data) = (m.src(), link.payload(&m).to_vec());
//!         link.release(m)?;
//!         link.send(ep, src, &data)?;
//!     }
//! }
//! # }
//! ```

pub mod bench;
pub mod bus;
pub mod config;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod guest;
pub mod link;
pub mod wire;

#[cfg(test)]
mod tests;

pub use bus::{
    Addr, BusConfig, BusStats, EndpointId, EndpointStats, Msg, NsEvent, PeerState, Rpmsg, RxBuf,
    TxBuf,
};
pub use error::{RpmsgError, WireError};
pub use link::{Link, LinkConfig, LinkQueue, RingMode, Role, VIRTIO_ID_RPMSG};
pub use pmd::control::{Event as ControlEvent, Timing};
pub use wire::{NsAction, NsMsg, RpmsgHdr};
