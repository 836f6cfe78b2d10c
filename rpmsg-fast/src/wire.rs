//! The RPMsg wire format, byte for byte as Linux `drivers/rpmsg/virtio_rpmsg_bus.c`
//! and OpenAMP (`lib/rpmsg/rpmsg_internal.h`) lay it out. Everything is
//! little-endian (virtio byte order), whatever the host.
//!
//! ```text
//!  one RPMsg buffer (512 bytes by default)
//!  0        4        8          12     14      16                      16 + len
//!  +--------+--------+----------+------+-------+-----------------------+
//!  | src    | dst    | reserved | len  | flags | payload (len bytes)   |
//!  | u32 LE | u32 LE | u32 (0)  | u16  | u16   |                       |
//!  +--------+--------+----------+------+-------+-----------------------+
//!    struct rpmsg_hdr (16 bytes)
//!
//!  name service announcement: the payload of a message to address 53
//!  0                                32        36        40
//!  +--------------------------------+---------+---------+
//!  | name[32], NUL-terminated,      | addr    | flags   |
//!  |   NUL-padded                   | u32 LE  | u32 LE  |
//!  +--------------------------------+---------+---------+
//!    struct rpmsg_ns_msg (40 bytes); flags: 0 = create, 1 = destroy
//! ```
//!
//! The structs are `#[repr(C)]` to pin the offsets (asserted at compile time); the
//! byte conversions ([`RpmsgHdr::to_bytes`], [`RpmsgHdr::parse`], ...) go through
//! explicit little-endian conversions, so they are right on a big-endian host too.

use crate::error::WireError;

/// Size of `struct rpmsg_hdr`.
pub const HDR_SIZE: usize = 16;
/// Size of `struct rpmsg_ns_msg`.
pub const NS_MSG_SIZE: usize = 40;
/// `RPMSG_NAME_SIZE`: bytes of a service name, NUL included.
pub const NAME_SIZE: usize = 32;
/// `RPMSG_NS_ADDR`: the name service's address.
pub const NS_ADDR: u32 = 53;
/// `RPMSG_RESERVED_ADDRESSES`: dynamic addresses start here.
pub const RESERVED_ADDRESSES: u32 = 1024;
/// `RPMSG_ADDR_ANY`: "no address" / "pick one".
pub const ADDR_ANY: u32 = 0xffff_ffff;
/// Default buffer size (`MAX_RPMSG_BUF_SIZE` in Linux), header included.
pub const DEFAULT_BUF_SIZE: usize = 512;
/// `VIRTIO_RPMSG_F_NS`: the device supports the name service (feature bit 0).
pub const VIRTIO_RPMSG_F_NS: u32 = 0;
/// `RPMSG_NS_CREATE`.
pub const NS_CREATE: u32 = 0;
/// `RPMSG_NS_DESTROY`.
pub const NS_DESTROY: u32 = 1;

/// `struct rpmsg_hdr` (Linux `virtio_rpmsg_bus.c`, OpenAMP `rpmsg_internal.h`).
/// Field values are host-order here; [`to_bytes`](Self::to_bytes) writes them LE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RpmsgHdr {
    /// Source address.
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Payload length.
    pub len: u16,
    /// Flags (zero; unused by Linux).
    pub flags: u16,
}

const _: () = assert!(core::mem::size_of::<RpmsgHdr>() == HDR_SIZE);
const _: () = assert!(core::mem::offset_of!(RpmsgHdr, src) == 0);
const _: () = assert!(core::mem::offset_of!(RpmsgHdr, dst) == 4);
const _: () = assert!(core::mem::offset_of!(RpmsgHdr, reserved) == 8);
const _: () = assert!(core::mem::offset_of!(RpmsgHdr, len) == 12);
const _: () = assert!(core::mem::offset_of!(RpmsgHdr, flags) == 14);

impl RpmsgHdr {
    /// A header for `len` payload bytes from `src` to `dst`.
    pub fn new(src: u32, dst: u32, len: u16) -> Self {
        RpmsgHdr {
            src,
            dst,
            reserved: 0,
            len,
            flags: 0,
        }
    }

    /// The 16 wire bytes (little-endian).
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..4].copy_from_slice(&self.src.to_le_bytes());
        b[4..8].copy_from_slice(&self.dst.to_le_bytes());
        b[8..12].copy_from_slice(&self.reserved.to_le_bytes());
        b[12..14].copy_from_slice(&self.len.to_le_bytes());
        b[14..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Decodes 16 wire bytes (no validation).
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        RpmsgHdr {
            src: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            dst: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            reserved: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            len: u16::from_le_bytes([b[12], b[13]]),
            flags: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// Decodes and validates the header at the start of a received buffer of
    /// `buf.len()` bytes (already copied out of shared memory): the buffer must hold
    /// the header, and `len` must fit in what follows it and in `max_msg` (the
    /// direction's buffer size, header included).
    pub fn parse(buf: &[u8], max_msg: usize) -> Result<Self, WireError> {
        let Some(h) = buf.first_chunk::<HDR_SIZE>() else {
            return Err(WireError::Short { len: buf.len() });
        };
        let h = Self::from_bytes(h);
        Self::check_len(h.len, buf.len(), max_msg)?;
        Ok(h)
    }

    /// Checks a header's `len` against the bytes the transport delivered
    /// (`delivered`, header included) and the direction's buffer size.
    pub fn check_len(len: u16, delivered: usize, max_msg: usize) -> Result<(), WireError> {
        let need = HDR_SIZE + len as usize;
        if need > delivered || need > max_msg {
            return Err(WireError::LenTooLarge {
                len,
                room: delivered.min(max_msg).saturating_sub(HDR_SIZE),
            });
        }
        Ok(())
    }
}

/// `struct rpmsg_ns_msg`: a name service announcement (payload of a message to
/// [`NS_ADDR`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NsMsg {
    /// Service name, NUL-terminated and NUL-padded.
    pub name: [u8; NAME_SIZE],
    /// Address of the announcing endpoint.
    pub addr: u32,
    /// [`NS_CREATE`] or [`NS_DESTROY`].
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<NsMsg>() == NS_MSG_SIZE);
const _: () = assert!(core::mem::offset_of!(NsMsg, name) == 0);
const _: () = assert!(core::mem::offset_of!(NsMsg, addr) == 32);
const _: () = assert!(core::mem::offset_of!(NsMsg, flags) == 36);

/// What a name service message asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NsAction {
    /// `RPMSG_NS_CREATE`: the service exists at `addr`.
    Create,
    /// `RPMSG_NS_DESTROY`: the service is gone.
    Destroy,
}

impl NsMsg {
    /// An announcement. `name` must be at most 31 bytes (room for the NUL) and
    /// contain no NUL.
    pub fn new(name: &str, addr: u32, action: NsAction) -> Result<Self, WireError> {
        let n = name.as_bytes();
        if n.is_empty() || n.len() >= NAME_SIZE || n.contains(&0) {
            return Err(WireError::BadName { len: n.len() });
        }
        let mut buf = [0u8; NAME_SIZE];
        buf[..n.len()].copy_from_slice(n);
        Ok(NsMsg {
            name: buf,
            addr,
            flags: match action {
                NsAction::Create => NS_CREATE,
                NsAction::Destroy => NS_DESTROY,
            },
        })
    }

    /// The 40 wire bytes (little-endian).
    pub fn to_bytes(&self) -> [u8; NS_MSG_SIZE] {
        let mut b = [0u8; NS_MSG_SIZE];
        b[..NAME_SIZE].copy_from_slice(&self.name);
        b[32..36].copy_from_slice(&self.addr.to_le_bytes());
        b[36..40].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Decodes and validates an announcement payload (copied out of shared memory):
    /// exactly 40 bytes, a NUL inside the name, a known flag.
    pub fn parse(payload: &[u8]) -> Result<Self, WireError> {
        let Ok(b) = <&[u8; NS_MSG_SIZE]>::try_from(payload) else {
            return Err(WireError::NsSize { len: payload.len() });
        };
        let mut name = [0u8; NAME_SIZE];
        name.copy_from_slice(&b[..NAME_SIZE]);
        let m = NsMsg {
            name,
            addr: u32::from_le_bytes([b[32], b[33], b[34], b[35]]),
            flags: u32::from_le_bytes([b[36], b[37], b[38], b[39]]),
        };
        m.name_str()?;
        m.action()?;
        Ok(m)
    }

    /// The name up to its NUL; an error if there is none, it is empty or not UTF-8.
    pub fn name_str(&self) -> Result<&str, WireError> {
        let Some(end) = self.name.iter().position(|&c| c == 0) else {
            return Err(WireError::NameNotTerminated);
        };
        if end == 0 {
            return Err(WireError::BadName { len: 0 });
        }
        core::str::from_utf8(&self.name[..end]).map_err(|_| WireError::BadName { len: end })
    }

    /// The action of the flags word.
    pub fn action(&self) -> Result<NsAction, WireError> {
        match self.flags {
            NS_CREATE => Ok(NsAction::Create),
            NS_DESTROY => Ok(NsAction::Destroy),
            f => Err(WireError::NsFlags { flags: f }),
        }
    }
}
