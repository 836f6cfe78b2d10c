//! The virtio-style config block of a zerohop link (GUIDE.md section 5): layout and
//! the pure logic around it (no syscalls, no clocks; `pmd::control` runs the state
//! machines on top of it).
//!
//! The block lives in the window area of kind [`AreaKind::Config`](crate::header::AreaKind)
//! and is made of **two sections, each written by exactly one side**, plus the queue
//! table that belongs to the backend:
//!
//! ```text
//!  offset  size  written by   contents
//!  ------  ----  ----------   -----------------------------------------------------
//!       0   128  frontend     RawFrontend (one 128-byte line, see below)
//!     128   128  backend      RawBackend  (one 128-byte line, see below)
//!     256   512  backend      queue table: 64 x RawQueue { tx_size u16, rx_size u16,
//!                             flags u32 }   (part of the backend's seqlock)
//!     768        BLOCK_SIZE
//!
//!  RawFrontend (driver side)               RawBackend (device side)
//!  off size field                          off size field
//!    0   4  seq       seqlock word           0   4  seq       seqlock word
//!    4   4  status    driver status bits     4   4  status    device status bits
//!    8   8  generation (0 = never started)   8   8  generation
//!   16   8  heartbeat (own atomic store)    16   8  heartbeat
//!   24   8  peer_generation: backend gen    24   8  peer_generation: frontend gen
//!           the offer was read from                 whose features were acked
//!   32   8  features  accepted              32   8  features  offered
//!   40   4  queue_pairs used                40   4  queue_pairs offered (1..=64)
//!   44   4  reason    why FAILED            44   4  reason    why FAILED
//!   48   4  cmd_seq   command number        48   4  ack_seq   last command done
//!   52   4  cmd       command code          52   4  result    its result
//!   56   8  cmd_arg   command argument      56   4  device_type (virtio id, != 0)
//!   64  64  reserved (0)                    60   4  ring_mode 1 split 2 packed 3 posted
//!                                           64  64  reserved (0)
//! ```
//!
//! # Why per-side status instead of one shared status byte
//! virtio 1.x (section 2.1 "Device Status Field", section 3.1.1 "Device
//! Initialization") has a single status byte that the driver writes and the device
//! may change (it clears FEATURES_OK to refuse features, sets DEVICE_NEEDS_RESET).
//! That works because a real device *traps* the driver's register writes. Over a
//! zerohop window nobody traps anything: on real hardware the endpoint cannot trap
//! BAR writes, so a shared byte would have two writers racing with plain stores
//! (PCIe has no cross-link read-modify-write we can rely on), and a reader could
//! never tell whose write it saw. So each side has its own status word in its own
//! section, and every step of the handshake is a write by one side that the other
//! *polls* and acknowledges in its own section:
//!
//! - frontend status: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, FAILED — the
//!   virtio driver bits, set in the virtio order;
//! - backend status: FEATURES_OK (the acknowledgement of the frontend's accepted
//!   subset, instead of "the device leaves FEATURES_OK set"), DRIVER_OK (the
//!   acknowledgement that the link is live), DEVICE_NEEDS_RESET and FAILED.
//!
//! The classic virtio byte is still available as a view: [`combined_status`].
//!
//! # Consistent copies: a seqlock per section
//! A side rewrites its section as a seqlock writer ([`ControlLayout::publish_frontend`]):
//! `seq` odd (Relaxed) → Release fence → all fields → `seq` even (Release). The peer
//! reads it as a seqlock reader ([`ControlLayout::read_frontend`]): `seq` (Acquire),
//! one copy of the whole section, Acquire fence, `seq` again; a differing or odd `seq`
//! means "torn, try on the next poll" (`Ok(None)`), never a retry loop, so a peer that
//! keeps `seq` odd forever only stalls its own handshake (which has a deadline).
//! The heartbeat is the one field stored on its own (an atomic Release store every
//! heartbeat interval) and loaded on its own (Acquire).
//!
//! Every copy is validated before use (GUIDE.md section 8): unknown status bits,
//! status bits out of order, an unknown ring mode, a zero device type, a queue count
//! or size out of range come back as a typed [`ControlError`]; feature subsets are
//! checked by [`check_accepted`]. No byte pattern makes these functions panic.
//!
//! # Mediation
//! A port in the middle (a frontend towards a backend, and itself a backend towards
//! another frontend, e.g. a forwarding SoC) cannot offer more than it got: it offers
//! its frontend [`mediate`]`(backend_offered, port_supported)`, the intersection of
//! what the backend offered and what the port itself can carry through. The subset
//! its frontend accepts is then, by construction, acceptable to the backend as well
//! ([`check_accepted`] against `backend_offered` holds), so the port accepts exactly
//! that subset upstream.

use core::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

use crate::error::MemError;
use crate::mem::Mem;
use crate::sync::{fence, Ordering};

/// Most queue pairs a block describes.
pub const MAX_QUEUE_PAIRS: usize = 64;
/// Largest queue size (virtio 1.x: a queue has at most 32768 entries).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Size of one section (two 64-byte cache lines: the adjacent-line prefetcher of
/// x86-64 and aarch64 pulls lines in pairs, so 128 keeps the two writers apart).
pub const SECTION_SIZE: usize = 128;
/// Offset of the frontend section in the block.
pub const FRONTEND_OFFSET: usize = 0;
/// Offset of the backend section in the block.
pub const BACKEND_OFFSET: usize = 128;
/// Offset of the backend's queue table in the block.
pub const QUEUES_OFFSET: usize = 256;
/// Bytes of the whole block; a Config area must be at least this large.
pub const BLOCK_SIZE: usize = QUEUES_OFFSET + MAX_QUEUE_PAIRS * size_of::<RawQueue>();

/// Device status bits (virtio 1.x section 2.1 "Device Status Field").
pub mod status {
    /// The guest/driver has noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The driver knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// Something went wrong; the side gave up.
    pub const FAILED: u32 = 128;
    /// Bits a frontend may set in its own section.
    pub const FRONTEND_BITS: u32 = ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK | FAILED;
    /// Bits a backend may set in its own section.
    pub const BACKEND_BITS: u32 = FEATURES_OK | DRIVER_OK | DEVICE_NEEDS_RESET | FAILED;
}

/// Reason codes a side writes next to FAILED (its `reason` field); see
/// [`ControlError::reason_code`] and [`reason_name`].
pub mod reason {
    /// No reason given.
    pub const NONE: u32 = 0;
    /// The frontend accepted a feature that was not offered.
    pub const FEATURES_NOT_OFFERED: u32 = 1;
    /// The backend does not offer a feature the frontend requires.
    pub const MISSING_FEATURES: u32 = 2;
    /// A queue count out of range.
    pub const QUEUE_COUNT: u32 = 3;
    /// A queue size out of range.
    pub const QUEUE_SIZE: u32 = 4;
    /// An unknown ring mode.
    pub const RING_MODE: u32 = 5;
    /// Unknown status bits.
    pub const STATUS_BITS: u32 = 6;
    /// Status bits set out of order.
    pub const STATUS_ORDER: u32 = 7;
    /// Device type 0.
    pub const DEVICE_TYPE: u32 = 8;
    /// Anything else.
    pub const OTHER: u32 = 255;
}

/// A short name for a reason code found in a peer's section.
pub fn reason_name(code: u32) -> &'static str {
    match code {
        reason::NONE => "none given",
        reason::FEATURES_NOT_OFFERED => "accepted features that were not offered",
        reason::MISSING_FEATURES => "required features not offered",
        reason::QUEUE_COUNT => "queue count out of range",
        reason::QUEUE_SIZE => "queue size out of range",
        reason::RING_MODE => "unknown ring mode",
        reason::STATUS_BITS => "unknown status bits",
        reason::STATUS_ORDER => "status bits out of order",
        reason::DEVICE_TYPE => "bad device type",
        _ => "unknown reason",
    }
}

/// Which side of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The driver side (accepts features).
    Frontend,
    /// The device side (offers features).
    Backend,
}

impl core::fmt::Display for Side {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Side::Frontend => "frontend",
            Side::Backend => "backend",
        })
    }
}

/// Ring layout of every queue of a link. Numbers are part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RingMode {
    /// virtio 1.x split virtqueue (sizes must be powers of two).
    Split = 1,
    /// virtio 1.x packed virtqueue.
    Packed = 2,
    /// zerohop posted ring.
    Posted = 3,
}

impl RingMode {
    /// The mode a wire number names, if any.
    pub fn from_u32(n: u32) -> Option<RingMode> {
        match n {
            1 => Some(RingMode::Split),
            2 => Some(RingMode::Packed),
            3 => Some(RingMode::Posted),
            _ => None,
        }
    }
}

/// Everything the control plane can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// A memory access failed.
    #[error("memory access failed: {0}")]
    Mem(#[from] MemError),
    /// The Config area is smaller than the block.
    #[error("config area of {have} bytes is too small for the {need}-byte control block")]
    AreaTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Our own configuration is unusable.
    #[error("invalid control config: {what} ({why})")]
    InvalidConfig {
        /// Which parameter.
        what: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// A section's status word has bits that side may not set.
    #[error("{side} status {status:#x} has unknown bits {unknown:#x}")]
    UnknownStatusBits {
        /// Whose section.
        side: Side,
        /// The status word.
        status: u32,
        /// The bits not allowed.
        unknown: u32,
    },
    /// Status bits set out of the virtio order (e.g. DRIVER_OK without FEATURES_OK).
    #[error("{side} status {status:#x} has bits out of order (virtio 1.x 3.1.1)")]
    StatusOrder {
        /// Whose section.
        side: Side,
        /// The status word.
        status: u32,
    },
    /// The frontend accepted features the backend did not offer.
    #[error("accepted features {accepted:#x} include {extra:#x}, not offered ({offered:#x})")]
    FeaturesNotOffered {
        /// Accepted set.
        accepted: u64,
        /// Offered set.
        offered: u64,
        /// `accepted & !offered`.
        extra: u64,
    },
    /// The backend does not offer a feature the frontend cannot work without.
    #[error("required features {missing:#x} not offered (offered {offered:#x})")]
    MissingFeatures {
        /// Offered set.
        offered: u64,
        /// Required bits missing from it.
        missing: u64,
    },
    /// A queue pair count out of range.
    #[error("queue pair count {count} out of range 1..={max}")]
    QueueCount {
        /// Count found.
        count: u32,
        /// Allowed maximum.
        max: u32,
    },
    /// A queue size out of range (0, over 32768, or not a power of two in split mode).
    #[error("queue {queue}: size {size} invalid ({why})")]
    QueueSize {
        /// Queue pair index.
        queue: u32,
        /// Size found.
        size: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// A ring mode this version does not know.
    #[error("unknown ring mode {mode}")]
    UnknownRingMode {
        /// Value found.
        mode: u32,
    },
    /// Device type 0 (reserved in virtio).
    #[error("device type 0 is invalid")]
    BadDeviceType,
    /// The peer set FAILED for us, with a reason code.
    #[error("{side} failed the handshake: {} (reason {reason})", reason_name(*reason))]
    PeerFailed {
        /// The side that failed.
        side: Side,
        /// Its reason code.
        reason: u32,
    },
    /// A blocking connect gave up at its deadline.
    #[error(
        "{side}: link not up after {waited_ms} ms, still {waiting_for} \
         (is the peer running, and does it use the same window?)"
    )]
    HandshakeTimeout {
        /// Who timed out.
        side: Side,
        /// The step it was stuck at.
        waiting_for: &'static str,
        /// How long it waited.
        waited_ms: u64,
    },
    /// A command was issued while the link is not up.
    #[error("link is not up")]
    NotUp,
    /// A command was issued while the previous one is not acknowledged yet.
    #[error("command {seq} is still pending")]
    CommandPending {
        /// The pending command number.
        seq: u32,
    },
}

impl ControlError {
    /// The code written into our section's `reason` field when this error makes us
    /// set FAILED.
    pub fn reason_code(&self) -> u32 {
        match self {
            ControlError::FeaturesNotOffered { .. } => reason::FEATURES_NOT_OFFERED,
            ControlError::MissingFeatures { .. } => reason::MISSING_FEATURES,
            ControlError::QueueCount { .. } => reason::QUEUE_COUNT,
            ControlError::QueueSize { .. } => reason::QUEUE_SIZE,
            ControlError::UnknownRingMode { .. } => reason::RING_MODE,
            ControlError::UnknownStatusBits { .. } => reason::STATUS_BITS,
            ControlError::StatusOrder { .. } => reason::STATUS_ORDER,
            ControlError::BadDeviceType => reason::DEVICE_TYPE,
            _ => reason::OTHER,
        }
    }

    /// True if the error means the peer's section is invalid (as opposed to our own
    /// configuration, a timeout or a misuse).
    pub fn is_peer_violation(&self) -> bool {
        matches!(
            self,
            ControlError::UnknownStatusBits { .. }
                | ControlError::StatusOrder { .. }
                | ControlError::FeaturesNotOffered { .. }
                | ControlError::QueueCount { .. }
                | ControlError::QueueSize { .. }
                | ControlError::UnknownRingMode { .. }
                | ControlError::BadDeviceType
        )
    }
}

/// The frontend's section, as laid out in the block (see the module diagram).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RawFrontend {
    /// Seqlock word: odd while the frontend rewrites the section.
    pub seq: u32,
    /// Driver status bits ([`status::FRONTEND_BITS`]).
    pub status: u32,
    /// Bumped on each (re)start of the handshake; 0 = never started.
    pub generation: u64,
    /// Bumped every heartbeat interval (stored on its own).
    pub heartbeat: u64,
    /// The backend generation whose offer the accepted features answer.
    pub peer_generation: u64,
    /// Accepted features (a subset of the offer).
    pub features: u64,
    /// Queue pairs the frontend uses (<= offered).
    pub queue_pairs: u32,
    /// Why FAILED is set ([`reason`]).
    pub reason: u32,
    /// Number of the latest command.
    pub cmd_seq: u32,
    /// Command code.
    pub cmd: u32,
    /// Command argument.
    pub cmd_arg: u64,
    /// Zero.
    pub reserved: [u64; 8],
}

const _: () = assert!(size_of::<RawFrontend>() == SECTION_SIZE);
const _: () = assert!(offset_of!(RawFrontend, seq) == 0);
const _: () = assert!(offset_of!(RawFrontend, status) == 4);
const _: () = assert!(offset_of!(RawFrontend, generation) == 8);
const _: () = assert!(offset_of!(RawFrontend, heartbeat) == 16);
const _: () = assert!(offset_of!(RawFrontend, peer_generation) == 24);
const _: () = assert!(offset_of!(RawFrontend, features) == 32);
const _: () = assert!(offset_of!(RawFrontend, queue_pairs) == 40);
const _: () = assert!(offset_of!(RawFrontend, reason) == 44);
const _: () = assert!(offset_of!(RawFrontend, cmd_seq) == 48);
const _: () = assert!(offset_of!(RawFrontend, cmd) == 52);
const _: () = assert!(offset_of!(RawFrontend, cmd_arg) == 56);
const _: () = assert!(offset_of!(RawFrontend, reserved) == 64);

/// The backend's section, as laid out in the block (see the module diagram).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RawBackend {
    /// Seqlock word: odd while the backend rewrites the section or the queue table.
    pub seq: u32,
    /// Device status bits ([`status::BACKEND_BITS`]).
    pub status: u32,
    /// Bumped on each start; 0 = never started.
    pub generation: u64,
    /// Bumped every heartbeat interval (stored on its own).
    pub heartbeat: u64,
    /// The frontend generation whose features were acknowledged (or failed).
    pub peer_generation: u64,
    /// Offered features.
    pub features: u64,
    /// Queue pairs offered (1..=64); entries of the queue table in use.
    pub queue_pairs: u32,
    /// Why FAILED is set ([`reason`]).
    pub reason: u32,
    /// Number of the last command handled.
    pub ack_seq: u32,
    /// Result of that command.
    pub result: u32,
    /// virtio device id (non-zero).
    pub device_type: u32,
    /// [`RingMode`] as a number.
    pub ring_mode: u32,
    /// Zero.
    pub reserved: [u64; 8],
}

const _: () = assert!(size_of::<RawBackend>() == SECTION_SIZE);
const _: () = assert!(offset_of!(RawBackend, seq) == 0);
const _: () = assert!(offset_of!(RawBackend, status) == 4);
const _: () = assert!(offset_of!(RawBackend, generation) == 8);
const _: () = assert!(offset_of!(RawBackend, heartbeat) == 16);
const _: () = assert!(offset_of!(RawBackend, peer_generation) == 24);
const _: () = assert!(offset_of!(RawBackend, features) == 32);
const _: () = assert!(offset_of!(RawBackend, queue_pairs) == 40);
const _: () = assert!(offset_of!(RawBackend, reason) == 44);
const _: () = assert!(offset_of!(RawBackend, ack_seq) == 48);
const _: () = assert!(offset_of!(RawBackend, result) == 52);
const _: () = assert!(offset_of!(RawBackend, device_type) == 56);
const _: () = assert!(offset_of!(RawBackend, ring_mode) == 60);
const _: () = assert!(offset_of!(RawBackend, reserved) == 64);

/// One entry of the backend's queue table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RawQueue {
    /// Entries of the frontend-to-backend (transmit) queue.
    pub tx_size: u16,
    /// Entries of the backend-to-frontend (receive) queue.
    pub rx_size: u16,
    /// Reserved (0; ignored by readers).
    pub flags: u32,
}

const _: () = assert!(size_of::<RawQueue>() == 8);
const _: () = assert!(offset_of!(RawQueue, tx_size) == 0);
const _: () = assert!(offset_of!(RawQueue, rx_size) == 2);
const _: () = assert!(offset_of!(RawQueue, flags) == 4);
const _: () = assert!(BLOCK_SIZE == 768);
const _: () = assert!(FRONTEND_OFFSET + SECTION_SIZE <= BACKEND_OFFSET);
const _: () = assert!(BACKEND_OFFSET + SECTION_SIZE <= QUEUES_OFFSET);

/// The sizes of one queue pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Entries of the transmit (frontend to backend) queue.
    pub tx_size: u16,
    /// Entries of the receive (backend to frontend) queue.
    pub rx_size: u16,
}

impl QueueConfig {
    /// Both directions of `size` entries.
    pub fn symmetric(size: u16) -> QueueConfig {
        QueueConfig {
            tx_size: size,
            rx_size: size,
        }
    }
}

/// Checks one queue size for `mode`: 1..=32768, and a power of two for split rings
/// (virtio 1.x 2.7: split queue sizes are powers of two; packed ones need not be).
pub fn check_queue_size(queue: u32, size: u16, mode: RingMode) -> Result<(), ControlError> {
    let why = if size == 0 {
        "zero"
    } else if size > MAX_QUEUE_SIZE {
        "over 32768"
    } else if mode == RingMode::Split && !size.is_power_of_two() {
        "split rings need a power of two"
    } else {
        return Ok(());
    };
    Err(ControlError::QueueSize { queue, size, why })
}

/// Checks a queue pair count against `max`.
pub fn check_queue_count(count: u32, max: u32) -> Result<(), ControlError> {
    if count == 0 || count > max {
        return Err(ControlError::QueueCount { count, max });
    }
    Ok(())
}

/// Features both sides want: what the frontend accepts of an offer.
pub const fn negotiate(offered: u64, wanted: u64) -> u64 {
    offered & wanted
}

/// The offer a port in the middle makes to its own frontend: the intersection of
/// what the backend offered and what the port itself supports (can carry through).
/// Whatever subset its frontend then accepts is also a valid acceptance towards the
/// backend, so the port accepts the same subset upstream.
pub const fn mediate(backend_offered: u64, port_supported: u64) -> u64 {
    backend_offered & port_supported
}

/// Checks that `accepted` is a subset of `offered` (the backend's side of virtio
/// 1.x 3.1.1 step 5-6: a device refuses a subset it did not offer).
pub fn check_accepted(offered: u64, accepted: u64) -> Result<(), ControlError> {
    let extra = accepted & !offered;
    if extra != 0 {
        return Err(ControlError::FeaturesNotOffered {
            accepted,
            offered,
            extra,
        });
    }
    Ok(())
}

/// Checks that `offered` contains every bit of `required`.
pub fn check_required(offered: u64, required: u64) -> Result<(), ControlError> {
    let missing = required & !offered;
    if missing != 0 {
        return Err(ControlError::MissingFeatures { offered, missing });
    }
    Ok(())
}

/// The classic virtio status byte seen through both sections: the frontend's driver
/// bits, FEATURES_OK only while the backend acknowledges it, and the backend's
/// DEVICE_NEEDS_RESET / FAILED. For diagnostics (`zerohop stats`).
pub fn combined_status(frontend: u32, backend: u32) -> u8 {
    let mut s = frontend
        & (status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK | status::FAILED)
        & 0xff;
    if frontend & backend & status::FEATURES_OK != 0 {
        s |= status::FEATURES_OK;
    }
    s |= backend & (status::DEVICE_NEEDS_RESET | status::FAILED);
    s as u8
}

/// Checks a section's status word: only `allowed` bits, and in the virtio order
/// (FEATURES_OK needs ACKNOWLEDGE and DRIVER on the frontend; DRIVER_OK needs
/// FEATURES_OK on both sides).
fn check_status(side: Side, st: u32) -> Result<(), ControlError> {
    let allowed = match side {
        Side::Frontend => status::FRONTEND_BITS,
        Side::Backend => status::BACKEND_BITS,
    };
    let unknown = st & !allowed;
    if unknown != 0 {
        return Err(ControlError::UnknownStatusBits {
            side,
            status: st,
            unknown,
        });
    }
    let driver = status::ACKNOWLEDGE | status::DRIVER;
    let bad_order = (st & status::DRIVER_OK != 0 && st & status::FEATURES_OK == 0)
        || (side == Side::Frontend && st & status::FEATURES_OK != 0 && st & driver != driver);
    if bad_order {
        return Err(ControlError::StatusOrder { side, status: st });
    }
    Ok(())
}

/// A validated copy of the frontend's section (heartbeat excluded: it is loaded on
/// its own). A section with generation 0 (never started) validates as all zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendView {
    /// Driver status bits.
    pub status: u32,
    /// Reason code next to FAILED.
    pub reason: u32,
    /// Generation (0 = absent).
    pub generation: u64,
    /// The backend generation the frontend answered.
    pub peer_generation: u64,
    /// Accepted features (not yet checked against the offer: see
    /// [`FrontendView::check_against`]).
    pub features: u64,
    /// Queue pairs used (<= 64; >= 1 once FEATURES_OK is set).
    pub queue_pairs: u32,
    /// Command number.
    pub cmd_seq: u32,
    /// Command code.
    pub cmd: u32,
    /// Command argument.
    pub cmd_arg: u64,
}

impl FrontendView {
    /// Validates a raw copy.
    pub fn validate(raw: &RawFrontend) -> Result<FrontendView, ControlError> {
        if raw.generation == 0 {
            return Ok(FrontendView::default());
        }
        check_status(Side::Frontend, raw.status)?;
        if raw.status & status::FEATURES_OK != 0 {
            check_queue_count(raw.queue_pairs, MAX_QUEUE_PAIRS as u32)?;
        } else if raw.queue_pairs > MAX_QUEUE_PAIRS as u32 {
            return Err(ControlError::QueueCount {
                count: raw.queue_pairs,
                max: MAX_QUEUE_PAIRS as u32,
            });
        }
        Ok(FrontendView {
            status: raw.status,
            reason: raw.reason,
            generation: raw.generation,
            peer_generation: raw.peer_generation,
            features: raw.features,
            queue_pairs: raw.queue_pairs,
            cmd_seq: raw.cmd_seq,
            cmd: raw.cmd,
            cmd_arg: raw.cmd_arg,
        })
    }

    /// The backend's check of an acceptance (FEATURES_OK set) against its offer:
    /// features a subset, queue pairs within the offer.
    pub fn check_against(&self, offered: u64, queue_pairs: u32) -> Result<(), ControlError> {
        check_accepted(offered, self.features)?;
        check_queue_count(self.queue_pairs, queue_pairs)
    }
}

/// A validated copy of the backend's section line (heartbeat excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendView {
    /// Device status bits.
    pub status: u32,
    /// Reason code next to FAILED.
    pub reason: u32,
    /// Generation (0 = absent; then every other field is zero/default).
    pub generation: u64,
    /// The frontend generation acknowledged.
    pub peer_generation: u64,
    /// Offered features.
    pub features: u64,
    /// Queue pairs offered (1..=64 when present).
    pub queue_pairs: u32,
    /// Last command handled.
    pub ack_seq: u32,
    /// Its result.
    pub result: u32,
    /// virtio device id.
    pub device_type: u32,
    /// Ring mode.
    pub ring_mode: RingMode,
}

impl BackendView {
    fn absent() -> BackendView {
        BackendView {
            status: 0,
            reason: 0,
            generation: 0,
            peer_generation: 0,
            features: 0,
            queue_pairs: 0,
            ack_seq: 0,
            result: 0,
            device_type: 0,
            ring_mode: RingMode::Posted,
        }
    }

    /// Validates a raw copy.
    pub fn validate(raw: &RawBackend) -> Result<BackendView, ControlError> {
        if raw.generation == 0 {
            return Ok(BackendView::absent());
        }
        check_status(Side::Backend, raw.status)?;
        if raw.device_type == 0 {
            return Err(ControlError::BadDeviceType);
        }
        let ring_mode = RingMode::from_u32(raw.ring_mode).ok_or(ControlError::UnknownRingMode {
            mode: raw.ring_mode,
        })?;
        check_queue_count(raw.queue_pairs, MAX_QUEUE_PAIRS as u32)?;
        Ok(BackendView {
            status: raw.status,
            reason: raw.reason,
            generation: raw.generation,
            peer_generation: raw.peer_generation,
            features: raw.features,
            queue_pairs: raw.queue_pairs,
            ack_seq: raw.ack_seq,
            result: raw.result,
            device_type: raw.device_type,
            ring_mode,
        })
    }
}

/// The backend's whole offer: its section plus the queue table, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The backend section it came with.
    pub backend: BackendView,
    queues: [QueueConfig; MAX_QUEUE_PAIRS],
}

impl Offer {
    /// Validates a raw section and queue table (`queues` beyond `queue_pairs` are
    /// ignored).
    pub fn validate(
        raw: &RawBackend,
        table: &[RawQueue; MAX_QUEUE_PAIRS],
    ) -> Result<Option<Offer>, ControlError> {
        let backend = BackendView::validate(raw)?;
        if backend.generation == 0 {
            return Ok(None);
        }
        let mut queues = [QueueConfig::default(); MAX_QUEUE_PAIRS];
        // queue_pairs <= MAX_QUEUE_PAIRS was validated above.
        for (i, (q, dst)) in table
            .iter()
            .zip(queues.iter_mut())
            .take(backend.queue_pairs as usize)
            .enumerate()
        {
            check_queue_size(i as u32, q.tx_size, backend.ring_mode)?;
            check_queue_size(i as u32, q.rx_size, backend.ring_mode)?;
            *dst = QueueConfig {
                tx_size: q.tx_size,
                rx_size: q.rx_size,
            };
        }
        Ok(Some(Offer { backend, queues }))
    }

    /// The offered queue pairs.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues[..(self.backend.queue_pairs as usize).min(MAX_QUEUE_PAIRS)]
    }
}

/// Where the block lies in a memory, and the accessors of its sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlLayout {
    base: usize,
}

impl ControlLayout {
    /// The block at `base` of a memory of `mem_len` bytes (usually the Config area
    /// itself: `base` 0). `base` must be 8-byte aligned (in practice the area is
    /// 64-byte aligned).
    pub fn new(base: usize, mem_len: usize) -> Result<ControlLayout, ControlError> {
        let have = mem_len.saturating_sub(base);
        if base > mem_len || have < BLOCK_SIZE {
            return Err(ControlError::AreaTooSmall {
                need: BLOCK_SIZE,
                have,
            });
        }
        if !base.is_multiple_of(8) {
            return Err(ControlError::Mem(MemError::Misaligned {
                offset: base,
                align: 8,
            }));
        }
        Ok(ControlLayout { base })
    }

    /// Offset of the frontend section.
    pub fn frontend_offset(&self) -> usize {
        self.base + FRONTEND_OFFSET
    }

    /// Offset of the backend section.
    pub fn backend_offset(&self) -> usize {
        self.base + BACKEND_OFFSET
    }

    /// Offset of the queue table.
    pub fn queues_offset(&self) -> usize {
        self.base + QUEUES_OFFSET
    }

    /// One seqlock copy of `T` at `off` guarded by the u32 at `seq_off`, plus an
    /// optional second object under the same seqlock. `Ok(None)` = torn (the writer
    /// was busy): try again on the next poll.
    fn read_seqlock<M: Mem, T: Pod, U: Pod>(
        mem: &M,
        seq_off: usize,
        off: usize,
        extra: Option<usize>,
    ) -> Result<Option<(T, U)>, ControlError> {
        // Acquire: pairs with the Release store of the even seq that ends a publish
        // (C2): every field stored before it is visible to the copy below.
        let s1 = mem.load_u32(seq_off, Ordering::Acquire)?;
        if s1 & 1 != 0 {
            return Ok(None);
        }
        let v: T = mem.read_obj(off)?;
        let u: U = match extra {
            Some(o) => mem.read_obj(o)?,
            None => U::zeroed(),
        };
        // Acquire fence (C3): keeps the copies above before the re-load of seq; pairs
        // with the writer's Release fence after it made seq odd (C1), so if a publish
        // overlapped the copy, the re-load sees its seq change.
        fence(Ordering::Acquire);
        let s2 = mem.load_u32(seq_off, Ordering::Relaxed)?;
        Ok((s1 == s2).then_some((v, u)))
    }

    /// The odd seq that opens a publish after the (even) local `seq`.
    fn odd_after(seq: u32) -> u32 {
        resume_seq(seq).wrapping_add(1)
    }

    /// Rewrites the frontend section from `sec` (seqlock publish; `sec.seq` is
    /// updated, `sec.heartbeat` must be the value last stored with
    /// [`ControlLayout::store_frontend_heartbeat`]).
    pub fn publish_frontend<M: Mem>(
        &self,
        mem: &M,
        sec: &mut RawFrontend,
    ) -> Result<(), ControlError> {
        let off = self.frontend_offset();
        let odd = Self::odd_after(sec.seq);
        // The copy written carries the odd seq (the word is rewritten with the value
        // it already holds), the final store makes it even.
        sec.seq = odd;
        sec.seq = Self::publish_obj(mem, off, odd, off, &*sec)?;
        Ok(())
    }

    /// Seqlock write: `seq_off` made `odd`, then `obj` at `off`, then `seq_off`
    /// made even (returned).
    fn publish_obj<M: Mem, T: Pod>(
        mem: &M,
        seq_off: usize,
        odd: u32,
        off: usize,
        obj: &T,
    ) -> Result<u32, ControlError> {
        // Relaxed: the odd seq only has to be visible before the field stores, which
        // the Release fence below orders (C1).
        mem.store_u32(seq_off, odd, Ordering::Relaxed)?;
        // Release fence (C1): the odd seq is visible before any field store below;
        // pairs with the reader's Acquire fence (C3) in read_seqlock.
        fence(Ordering::Release);
        mem.write_obj(off, obj)?;
        let even = odd.wrapping_add(1);
        // Release (C2): publishes every field above; pairs with the reader's Acquire
        // load of seq in read_seqlock.
        mem.store_u32(seq_off, even, Ordering::Release)?;
        Ok(even)
    }

    /// Rewrites the backend section, and the queue table if given, under one
    /// seqlock publish.
    pub fn publish_backend<M: Mem>(
        &self,
        mem: &M,
        sec: &mut RawBackend,
        queues: Option<&[RawQueue; MAX_QUEUE_PAIRS]>,
    ) -> Result<(), ControlError> {
        let off = self.backend_offset();
        let odd = Self::odd_after(sec.seq);
        sec.seq = odd;
        // Relaxed + Release fence (C1), as in publish_frontend.
        mem.store_u32(off, odd, Ordering::Relaxed)?;
        // Release fence (C1): pairs with the reader's Acquire fence (C3).
        fence(Ordering::Release);
        if let Some(q) = queues {
            mem.write_obj(self.queues_offset(), q)?;
        }
        mem.write_obj(off, &*sec)?;
        sec.seq = odd.wrapping_add(1);
        // Release (C2): publishes the section and the table; pairs with the Acquire
        // load of seq in read_seqlock.
        mem.store_u32(off, sec.seq, Ordering::Release)?;
        Ok(())
    }

    /// Stores the frontend heartbeat.
    pub fn store_frontend_heartbeat<M: Mem>(&self, mem: &M, v: u64) -> Result<(), ControlError> {
        // Release (H1): pairs with the backend's Acquire load in
        // load_frontend_heartbeat (H2); a moving counter is all it publishes.
        mem.store_u64(
            self.frontend_offset() + offset_of!(RawFrontend, heartbeat),
            v,
            Ordering::Release,
        )?;
        Ok(())
    }

    /// Stores the backend heartbeat.
    pub fn store_backend_heartbeat<M: Mem>(&self, mem: &M, v: u64) -> Result<(), ControlError> {
        // Release (H1): pairs with the frontend's Acquire load in
        // load_backend_heartbeat (H2).
        mem.store_u64(
            self.backend_offset() + offset_of!(RawBackend, heartbeat),
            v,
            Ordering::Release,
        )?;
        Ok(())
    }

    /// Loads the frontend heartbeat (any value is valid: only changes matter).
    pub fn load_frontend_heartbeat<M: Mem>(&self, mem: &M) -> Result<u64, ControlError> {
        // Acquire (H2): pairs with the frontend's Release store (H1).
        Ok(mem.load_u64(
            self.frontend_offset() + offset_of!(RawFrontend, heartbeat),
            Ordering::Acquire,
        )?)
    }

    /// Loads the backend heartbeat (any value is valid: only changes matter).
    pub fn load_backend_heartbeat<M: Mem>(&self, mem: &M) -> Result<u64, ControlError> {
        // Acquire (H2): pairs with the backend's Release store (H1).
        Ok(mem.load_u64(
            self.backend_offset() + offset_of!(RawBackend, heartbeat),
            Ordering::Acquire,
        )?)
    }

    /// One raw copy of the frontend section (not validated); `Ok(None)` if torn.
    pub fn read_frontend_raw<M: Mem>(&self, mem: &M) -> Result<Option<RawFrontend>, ControlError> {
        let off = self.frontend_offset();
        Ok(Self::read_seqlock::<M, RawFrontend, u64>(mem, off, off, None)?.map(|(v, _)| v))
    }

    /// One raw copy of the backend section (not validated); `Ok(None)` if torn.
    pub fn read_backend_raw<M: Mem>(&self, mem: &M) -> Result<Option<RawBackend>, ControlError> {
        let off = self.backend_offset();
        Ok(Self::read_seqlock::<M, RawBackend, u64>(mem, off, off, None)?.map(|(v, _)| v))
    }

    /// Reads the frontend section once and validates the copy.
    pub fn read_frontend<M: Mem>(&self, mem: &M) -> Result<Option<FrontendView>, ControlError> {
        match self.read_frontend_raw(mem)? {
            Some(raw) => FrontendView::validate(&raw).map(Some),
            None => Ok(None),
        }
    }

    /// Reads the backend section once and validates the copy.
    pub fn read_backend<M: Mem>(&self, mem: &M) -> Result<Option<BackendView>, ControlError> {
        match self.read_backend_raw(mem)? {
            Some(raw) => BackendView::validate(&raw).map(Some),
            None => Ok(None),
        }
    }

    /// Reads the backend section and queue table once (one seqlock read) and
    /// validates them. `Ok(None)` if torn or if the backend never started.
    pub fn read_offer<M: Mem>(&self, mem: &M) -> Result<Option<Offer>, ControlError> {
        let off = self.backend_offset();
        match Self::read_seqlock::<M, RawBackend, [RawQueue; MAX_QUEUE_PAIRS]>(
            mem,
            off,
            off,
            Some(self.queues_offset()),
        )? {
            Some((raw, table)) => Offer::validate(&raw, &table),
            None => Ok(None),
        }
    }

    /// Reads this side's own frontend section as a previous instance left it (to
    /// continue its generation, heartbeat, seq and command numbers after a
    /// restart). Not validated: only counters are taken from it.
    pub fn own_frontend<M: Mem>(&self, mem: &M) -> Result<RawFrontend, ControlError> {
        Ok(mem.read_obj(self.frontend_offset())?)
    }

    /// As [`ControlLayout::own_frontend`], for the backend section.
    pub fn own_backend<M: Mem>(&self, mem: &M) -> Result<RawBackend, ControlError> {
        Ok(mem.read_obj(self.backend_offset())?)
    }
}

/// The next generation after `g` (never 0).
pub fn next_generation(g: u64) -> u64 {
    match g.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// A seq word to continue from after a restart: even (a writer killed mid-publish
/// left it odd).
pub fn resume_seq(seq: u32) -> u32 {
    if seq & 1 == 0 {
        seq
    } else {
        seq.wrapping_add(1)
    }
}

/// Converts a list of queue configs into the wire table (entries past the list
/// are zero). Fails if there are more than [`MAX_QUEUE_PAIRS`].
pub fn queue_table(queues: &[QueueConfig]) -> Result<[RawQueue; MAX_QUEUE_PAIRS], ControlError> {
    if queues.is_empty() || queues.len() > MAX_QUEUE_PAIRS {
        return Err(ControlError::QueueCount {
            count: queues.len().min(u32::MAX as usize) as u32,
            max: MAX_QUEUE_PAIRS as u32,
        });
    }
    let mut t = [RawQueue::default(); MAX_QUEUE_PAIRS];
    for (dst, q) in t.iter_mut().zip(queues) {
        *dst = RawQueue {
            tx_size: q.tx_size,
            rx_size: q.rx_size,
            flags: 0,
        };
    }
    Ok(t)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mem::Region;
    use proptest::prelude::*;

    fn backend_raw() -> RawBackend {
        RawBackend {
            generation: 3,
            heartbeat: 0,
            features: 0x1_0000_0000 | 0x3,
            queue_pairs: 2,
            device_type: 1,
            ring_mode: RingMode::Split as u32,
            ..Default::default()
        }
    }

    fn table() -> [RawQueue; MAX_QUEUE_PAIRS] {
        queue_table(&[QueueConfig::symmetric(256), QueueConfig::symmetric(1024)]).unwrap()
    }

    #[test]
    fn golden_bytes() {
        let r = Region::heap(BLOCK_SIZE);
        let l = ControlLayout::new(0, r.len()).unwrap();
        let mut fe = RawFrontend {
            status: status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            generation: 0x0102_0304_0506_0708,
            heartbeat: 9,
            peer_generation: 3,
            features: 0xAABB,
            queue_pairs: 2,
            reason: 0,
            cmd_seq: 5,
            cmd: 6,
            cmd_arg: 7,
            ..Default::default()
        };
        l.publish_frontend(&r, &mut fe).unwrap();
        assert_eq!(fe.seq, 2);
        let mut b = [0u8; 64];
        r.read_bytes(0, &mut b).unwrap();
        #[rustfmt::skip]
        let want: [u8; 64] = [
            2, 0, 0, 0,  11, 0, 0, 0,                 // seq, status
            8, 7, 6, 5, 4, 3, 2, 1,                   // generation
            9, 0, 0, 0, 0, 0, 0, 0,                   // heartbeat
            3, 0, 0, 0, 0, 0, 0, 0,                   // peer_generation
            0xBB, 0xAA, 0, 0, 0, 0, 0, 0,             // features
            2, 0, 0, 0,  0, 0, 0, 0,                  // queue_pairs, reason
            5, 0, 0, 0,  6, 0, 0, 0,                  // cmd_seq, cmd
            7, 0, 0, 0, 0, 0, 0, 0,                   // cmd_arg
        ];
        assert_eq!(b, want);

        let mut be = backend_raw();
        l.publish_backend(&r, &mut be, Some(&table())).unwrap();
        let mut b = [0u8; 64];
        r.read_bytes(BACKEND_OFFSET, &mut b).unwrap();
        #[rustfmt::skip]
        let want: [u8; 64] = [
            2, 0, 0, 0,  0, 0, 0, 0,                  // seq, status
            3, 0, 0, 0, 0, 0, 0, 0,                   // generation
            0, 0, 0, 0, 0, 0, 0, 0,                   // heartbeat
            0, 0, 0, 0, 0, 0, 0, 0,                   // peer_generation
            3, 0, 0, 0, 1, 0, 0, 0,                   // features
            2, 0, 0, 0,  0, 0, 0, 0,                  // queue_pairs, reason
            0, 0, 0, 0,  0, 0, 0, 0,                  // ack_seq, result
            1, 0, 0, 0,  1, 0, 0, 0,                  // device_type, ring_mode
        ];
        assert_eq!(b, want);
        let mut q = [0u8; 16];
        r.read_bytes(QUEUES_OFFSET, &mut q).unwrap();
        assert_eq!(q, [0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 0, 4, 0, 0, 0, 0]);

        // Round trip through the readers.
        let v = l.read_frontend(&r).unwrap().unwrap();
        assert_eq!(v.generation, 0x0102_0304_0506_0708);
        assert_eq!(v.features, 0xAABB);
        let o = l.read_offer(&r).unwrap().unwrap();
        assert_eq!(o.backend.ring_mode, RingMode::Split);
        assert_eq!(
            o.queues(),
            &[QueueConfig::symmetric(256), QueueConfig::symmetric(1024)]
        );
        l.store_backend_heartbeat(&r, 77).unwrap();
        assert_eq!(l.load_backend_heartbeat(&r).unwrap(), 77);
    }

    #[test]
    fn torn_sections_read_as_none() {
        let r = Region::heap(BLOCK_SIZE);
        let l = ControlLayout::new(0, r.len()).unwrap();
        let mut be = backend_raw();
        l.publish_backend(&r, &mut be, Some(&table())).unwrap();
        r.store_u32(BACKEND_OFFSET, 7, Ordering::Relaxed).unwrap();
        assert_eq!(l.read_backend(&r).unwrap(), None);
        assert_eq!(l.read_offer(&r).unwrap(), None);
        // A writer killed mid-publish left seq odd: the next instance resumes even.
        be.seq = resume_seq(7);
        l.publish_backend(&r, &mut be, None).unwrap();
        assert_eq!(be.seq, 10);
        assert!(l.read_backend(&r).unwrap().is_some());
    }

    #[test]
    fn absent_sections_are_zero() {
        let r = Region::heap(BLOCK_SIZE);
        let l = ControlLayout::new(0, r.len()).unwrap();
        assert_eq!(l.read_frontend(&r).unwrap(), Some(FrontendView::default()));
        assert_eq!(l.read_backend(&r).unwrap().unwrap().generation, 0);
        assert_eq!(l.read_offer(&r).unwrap(), None);
    }

    #[test]
    fn layout_checks_size() {
        assert_eq!(
            ControlLayout::new(0, 700),
            Err(ControlError::AreaTooSmall {
                need: BLOCK_SIZE,
                have: 700
            })
        );
        assert!(ControlLayout::new(4, 4096).is_err());
        assert!(ControlLayout::new(5000, 4096).is_err());
        assert!(ControlLayout::new(64, 64 + BLOCK_SIZE).is_ok());
    }

    #[test]
    fn hostile_sections_are_typed_errors() {
        let mut fe = RawFrontend {
            generation: 1,
            status: 0x100,
            ..Default::default()
        };
        assert!(matches!(
            FrontendView::validate(&fe),
            Err(ControlError::UnknownStatusBits { unknown: 0x100, .. })
        ));
        fe.status = status::DEVICE_NEEDS_RESET;
        assert!(matches!(
            FrontendView::validate(&fe),
            Err(ControlError::UnknownStatusBits { .. })
        ));
        fe.status = status::DRIVER_OK;
        assert!(matches!(
            FrontendView::validate(&fe),
            Err(ControlError::StatusOrder { .. })
        ));
        fe.status = status::FEATURES_OK;
        assert!(matches!(
            FrontendView::validate(&fe),
            Err(ControlError::StatusOrder { .. })
        ));
        fe.status = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        fe.queue_pairs = 0;
        assert!(matches!(
            FrontendView::validate(&fe),
            Err(ControlError::QueueCount { count: 0, .. })
        ));
        fe.queue_pairs = 3;
        let v = FrontendView::validate(&fe).unwrap();
        assert!(matches!(
            v.check_against(0, 2),
            Err(ControlError::QueueCount { count: 3, max: 2 })
        ));

        let mut be = backend_raw();
        be.ring_mode = 9;
        assert_eq!(
            BackendView::validate(&be),
            Err(ControlError::UnknownRingMode { mode: 9 })
        );
        be = backend_raw();
        be.device_type = 0;
        assert_eq!(BackendView::validate(&be), Err(ControlError::BadDeviceType));
        be = backend_raw();
        be.queue_pairs = 65;
        assert!(matches!(
            BackendView::validate(&be),
            Err(ControlError::QueueCount { count: 65, .. })
        ));
        be = backend_raw();
        be.status = status::ACKNOWLEDGE;
        assert!(matches!(
            BackendView::validate(&be),
            Err(ControlError::UnknownStatusBits { .. })
        ));
        be = backend_raw();
        let mut t = table();
        t[1].rx_size = 1000; // not a power of two: bad for split
        assert!(matches!(
            Offer::validate(&be, &t),
            Err(ControlError::QueueSize {
                queue: 1,
                size: 1000,
                ..
            })
        ));
        be.ring_mode = RingMode::Packed as u32;
        assert!(Offer::validate(&be, &t).unwrap().is_some());
        t[0].tx_size = 0;
        assert!(matches!(
            Offer::validate(&be, &t),
            Err(ControlError::QueueSize {
                queue: 0,
                size: 0,
                ..
            })
        ));
        assert!(check_queue_size(0, 40000, RingMode::Posted).is_err());
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(0b1011, 0b0110), 0b0010);
        assert_eq!(negotiate(0, u64::MAX), 0);
        assert_eq!(check_accepted(0b1011, 0b0011), Ok(()));
        assert_eq!(
            check_accepted(0b1011, 0b0111),
            Err(ControlError::FeaturesNotOffered {
                accepted: 0b0111,
                offered: 0b1011,
                extra: 0b0100
            })
        );
        assert_eq!(
            check_required(0b1011, 0b1100),
            Err(ControlError::MissingFeatures {
                offered: 0b1011,
                missing: 0b0100
            })
        );
        assert!(check_required(0b1011, 0b1001).is_ok());
        // A mediating port: backend offers A|B|C, the port can carry B|C|D; its
        // frontend is offered B|C; whatever subset it accepts is fine upstream.
        let (a, b, c, d) = (1u64, 2u64, 4u64, 8u64);
        let offer = mediate(a | b | c, b | c | d);
        assert_eq!(offer, b | c);
        let accepted = negotiate(offer, c | d);
        assert_eq!(accepted, c);
        assert!(check_accepted(a | b | c, accepted).is_ok());
        assert!(check_accepted(offer, d).is_err());
        assert_eq!(
            ControlError::FeaturesNotOffered {
                accepted: 0,
                offered: 0,
                extra: 0
            }
            .reason_code(),
            reason::FEATURES_NOT_OFFERED
        );
    }

    #[test]
    fn combined_status_view() {
        use status::*;
        let fe = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
        assert_eq!(combined_status(fe, FEATURES_OK | DRIVER_OK), 15);
        assert_eq!(combined_status(fe, 0), 7);
        assert_eq!(combined_status(0, DEVICE_NEEDS_RESET), 64);
        assert_eq!(next_generation(u64::MAX), 1);
        assert_eq!(next_generation(0), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random block contents: the readers never panic, and whatever validates
        /// obeys every documented invariant.
        #[test]
        fn random_block_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), BLOCK_SIZE),
            even_seq in any::<bool>(),
        ) {
            let r = Region::heap(BLOCK_SIZE);
            r.write_bytes(0, &bytes).unwrap();
            if even_seq {
                r.store_u32(FRONTEND_OFFSET, 0, Ordering::Relaxed).unwrap();
                r.store_u32(BACKEND_OFFSET, 0, Ordering::Relaxed).unwrap();
            }
            let l = ControlLayout::new(0, r.len()).unwrap();
            let _ = l.load_frontend_heartbeat(&r);
            if let Ok(Some(v)) = l.read_frontend(&r) {
                prop_assert_eq!(v.status & !status::FRONTEND_BITS, 0);
                prop_assert!(v.queue_pairs as usize <= MAX_QUEUE_PAIRS);
                let _ = v.check_against(bytes[0] as u64, bytes[1] as u32);
            }
            if let Ok(Some(v)) = l.read_backend(&r) {
                prop_assert_eq!(v.status & !status::BACKEND_BITS, 0);
                if v.generation != 0 {
                    prop_assert!((1..=MAX_QUEUE_PAIRS as u32).contains(&v.queue_pairs));
                    prop_assert!(v.device_type != 0);
                }
            }
            match l.read_offer(&r) {
                Ok(Some(o)) => {
                    for q in o.queues() {
                        prop_assert!(q.tx_size >= 1 && q.tx_size <= MAX_QUEUE_SIZE);
                        prop_assert!(q.rx_size >= 1 && q.rx_size <= MAX_QUEUE_SIZE);
                    }
                }
                Ok(None) => {}
                Err(e) => prop_assert!(e.is_peer_violation(), "{:?}", e),
            }
        }

        /// Negotiation: the accepted set is always a subset of both and passes the
        /// backend's check; any extra bit fails it.
        #[test]
        fn negotiation_props(offered in any::<u64>(), wanted in any::<u64>(), extra in 0u32..64) {
            let acc = negotiate(offered, wanted);
            prop_assert_eq!(acc & !offered, 0);
            prop_assert_eq!(acc & !wanted, 0);
            prop_assert!(check_accepted(offered, acc).is_ok());
            let bit = 1u64 << extra;
            prop_assert_eq!(check_accepted(offered, acc | bit).is_err(), offered & bit == 0);
            prop_assert_eq!(mediate(offered, wanted), acc);
        }
    }
}
