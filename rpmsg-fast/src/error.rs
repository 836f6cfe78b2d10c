//! Error types.

use pmd::queue::QueueError;

/// A malformed message or announcement (peer input; counted, never a panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than a `struct rpmsg_hdr`.
    #[error("message of {len} bytes is shorter than the 16-byte rpmsg header")]
    Short {
        /// Bytes delivered.
        len: usize,
    },
    /// The header's `len` runs past the delivered bytes or the buffer size.
    #[error("header len {len} exceeds the {room} payload bytes of the buffer")]
    LenTooLarge {
        /// The header's `len`.
        len: u16,
        /// Payload bytes actually available.
        room: usize,
    },
    /// A name-service payload that is not 40 bytes.
    #[error("name service message of {len} bytes (expected 40)")]
    NsSize {
        /// Payload length.
        len: usize,
    },
    /// A name with no NUL in its 32 bytes.
    #[error("service name is not NUL-terminated within 32 bytes")]
    NameNotTerminated,
    /// An empty, too long, non-UTF-8 or NUL-containing name.
    #[error("bad service name ({len} bytes; 1..=31 bytes of UTF-8 without NUL)")]
    BadName {
        /// Length seen.
        len: usize,
    },
    /// Unknown name-service flags.
    #[error("unknown name service flags {flags:#x}")]
    NsFlags {
        /// The flags word.
        flags: u32,
    },
}

/// Everything the RPMsg layer can report.
#[derive(Debug, thiserror::Error)]
pub enum RpmsgError {
    /// The queue pair failed (a peer violation breaks it until reset).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A malformed message or announcement.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The address is taken (by a local endpoint) or reserved.
    #[error("address {addr} is in use or reserved")]
    AddrInUse {
        /// The address.
        addr: u32,
    },
    /// No dynamic address left, or the endpoint table is full.
    #[error("no free endpoint slot or dynamic address")]
    NoSpace,
    /// The endpoint handle does not name a live endpoint.
    #[error("no such endpoint (destroyed, or from another bus)")]
    NoEndpoint,
    /// The payload does not fit the direction's buffer.
    #[error("payload of {len} bytes exceeds {max} bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Largest payload.
        max: usize,
    },
    /// No transmit buffer now (`try_send`), or none before the deadline.
    #[error("no transmit buffer available (would block)")]
    WouldBlock,
    /// A deadline passed.
    #[error("deadline passed")]
    Timeout,
    /// The endpoint has no destination (not bound, or the service is not announced).
    #[error("endpoint has no destination address")]
    NoDestination,
    /// The name service is not negotiated on this link (`VIRTIO_RPMSG_F_NS` off).
    #[error("the name service (VIRTIO_RPMSG_F_NS) is off on this link")]
    NsDisabled,
    /// A destroy announcement for a name we never heard of.
    #[error("destroy announcement for unknown service {name:?}")]
    UnknownService {
        /// The name.
        name: String,
    },
    /// A window could not be created or opened.
    #[error(transparent)]
    Window(#[from] pmd::window::WindowError),
    /// Bad link or endpoint settings.
    #[error("bad setting: {0}")]
    Config(String),
    /// The link's peer was lost (its heartbeat stopped, or it restarted or reset):
    /// nothing is sent until the handshake completes again (`Link::poll_control`).
    #[error("the peer is lost (waiting for it to re-attach)")]
    PeerLost,
    /// The link's control plane failed (handshake refused, a malformed peer section).
    #[error(transparent)]
    Control(#[from] rings::control::ControlError),
    /// A Linux guest's transport ([`crate::guest::GuestLink`]): its files, or registers
    /// the guest wrote that the device refuses.
    #[error(transparent)]
    Guest(#[from] pmd::guest::GuestError),
}
