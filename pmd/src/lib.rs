//! # pmd: memory windows and poll-mode drivers
//!
//! - [`window`]: one [`window::Window`] trait and its backends (a file under /dev/shm,
//!   huge pages, a PCI BAR through sysfs, a heap buffer for tests), plus the
//!   instrumented and link-model wrappers that make a PCIe link visible on one host.
//! - [`control`]: the link's control plane: feature negotiation, the device-status
//!   handshake, heartbeats (a dead or restarted peer is noticed within 100 ms) and
//!   re-attach.
//! - [`copy`]: the copy engine: one non-temporal (AVX-512 / AVX2) or plain copy of a
//!   payload into the peer-visible buffer, chosen at run time, and its `sfence` rule.
//! - [`queue`]: the poll-mode queue pairs (the posted ring's zero-copy RX, zero-copy
//!   and copying TX, one publish per burst) and the window layout of a link.
//! - [`guest`]: a poll-mode virtio device for a Linux guest's own virtio drivers,
//!   over the guest's shared RAM and a ZHVQ block ([`rings::zhvq`]).
//! - [`tsc`]: the time-stamp counter as a cheap clock for timing messages.
//! - [`notify`]: the optional slow path for a side that sleeps: eventfds exchanged
//!   over a unix socket on one host, doorbell registers on PCI and NTB.
#![cfg_attr(not(test), warn(missing_docs))]

pub mod control;
pub mod copy;
pub mod guest;
pub mod notify;
pub mod queue;
pub mod tsc;
pub mod window;
