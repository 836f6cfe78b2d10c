//! The self-describing window header (GUIDE.md section 5).
//!
//! Every window starts with one page (4096 bytes) that says what the window is: a
//! magic, a layout version, the sizes, a generation bumped by every creator, and a
//! small table of named *areas* (where the rings, buffers and stats live, as offsets
//! into the window). Its last word to be written is the *init stamp*: a reader that
//! does not see a stamp matching the generation gets [`OpenError::NotInitialized`],
//! never half-written fields.
//!
//! ```text
//!  offset  size  field
//!  ------  ----  ---------------------------------------------------------------
//!       0     8  magic          b"ZEROHOP\0"
//!       8     4  version        major << 16 | minor     (LE, like every field)
//!      12     4  header_size    4096 (areas start at or after it)
//!      16     8  window_size    bytes of the whole window, header included
//!      24     8  generation     bumped by each creator (never 0)
//!      32     4  creator_pid    process id of the creator (diagnostics only)
//!      36     4  flags          opaque to this module, reserved for users
//!      40     4  area_count     entries of the area table in use (<= 64)
//!      44     4  reserved       0
//!      48     8  init_stamp     INIT_STAMP ^ generation, written LAST (Release)
//!      56     8  reserved       0
//!      64  2048  areas[64]      { kind u32, flags u32, offset u64, size u64, param u64 }
//!    2112  1984  reserved       0 (room for minor versions)
//!    4096        first area (page aligned)
//! ```
//!
//! # Protocol
//! [`Header::init`] (the creator) first clears the stamp, then (after a Release
//! fence) writes every field, then stores the stamp with Release. [`Header::open`]
//! (the peer) loads the stamp with Acquire, copies the whole header once, issues an
//! Acquire fence and loads the stamp again: a seqlock read. If the two stamp loads
//! differ, or the stamp does not match `INIT_STAMP ^ generation` of the copy, the
//! header is being (re)written and the open fails with `NotInitialized`. A zeroed
//! page, a half-written page and a header re-created with a new generation while we
//! read all come out as `NotInitialized`; garbage comes out as `BadMagic`.
//!
//! Every field of the copy is validated before it is used (GUIDE.md section 8): no
//! bytes a peer can write make `open` panic, loop, or return an area outside the
//! window.
//!
//! See also docs/SHARED_LAYOUT.md.

use core::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

use crate::error::MemError;
use crate::mem::Mem;
use crate::sync::{fence, Ordering};

/// The magic at offset 0.
pub const MAGIC: [u8; 8] = *b"ZEROHOP\0";
/// Major layout version: a reader refuses any other major.
pub const VERSION_MAJOR: u16 = 1;
/// Minor layout version: additions that an older reader may ignore. 1: the area
/// table has 64 entries (minor 0: 16; a minor-0 reader opens a window of at most 16
/// areas and refuses a larger `area_count` with a typed error).
pub const VERSION_MINOR: u16 = 1;
/// `version` field value written by this code.
pub const VERSION: u32 = (VERSION_MAJOR as u32) << 16 | VERSION_MINOR as u32;
/// Size of the header: one 4 KiB page, so the first area is page aligned.
pub const HEADER_SIZE: usize = 4096;
/// Number of entries in the area table (32 posted or 21 split/packed queue pairs).
pub const MAX_AREAS: usize = 64;
/// Alignment every area offset must have (one cache line, two on some CPUs: 64 is
/// the common floor and what the ring layouts need).
pub const AREA_ALIGN: u64 = 64;
/// Constant xor'ed with the generation to form the init stamp ("ZHOPINIT").
pub const INIT_STAMP: u64 = 0x5A48_4F50_494E_4954;
/// Offset of the init stamp; fixed for every version so any reader can find it.
pub const INIT_STAMP_OFFSET: usize = offset_of!(RawHeader, init_stamp);

/// One entry of the area table, as laid out in the window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RawArea {
    /// What the area holds ([`AreaKind`] as a number; 0 = unused).
    pub kind: u32,
    /// Area flags, meaning defined per kind.
    pub flags: u32,
    /// Offset of the area from the start of the window.
    pub offset: u64,
    /// Size of the area in bytes.
    pub size: u64,
    /// One kind-specific parameter (for a ring: its size; for buffers: buffer size).
    pub param: u64,
}

const _: () = assert!(size_of::<RawArea>() == 32);
const _: () = assert!(offset_of!(RawArea, kind) == 0);
const _: () = assert!(offset_of!(RawArea, flags) == 4);
const _: () = assert!(offset_of!(RawArea, offset) == 8);
const _: () = assert!(offset_of!(RawArea, size) == 16);
const _: () = assert!(offset_of!(RawArea, param) == 24);

/// The defined part of the header, as laid out in the window (the rest of the
/// 4096-byte page is reserved and zeroed by [`Header::init`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct RawHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// `major << 16 | minor`.
    pub version: u32,
    /// Size of the header in bytes ([`HEADER_SIZE`]).
    pub header_size: u32,
    /// Size of the whole window in bytes.
    pub window_size: u64,
    /// Bumped by each creator; never 0.
    pub generation: u64,
    /// Process id of the creator (diagnostics).
    pub creator_pid: u32,
    /// Opaque flags.
    pub flags: u32,
    /// Entries of `areas` in use.
    pub area_count: u32,
    /// Zero.
    pub reserved0: u32,
    /// `INIT_STAMP ^ generation` once the header is complete.
    pub init_stamp: u64,
    /// Zero.
    pub reserved1: u64,
    /// The area table.
    pub areas: [RawArea; MAX_AREAS],
}

const _: () = assert!(offset_of!(RawHeader, magic) == 0);
const _: () = assert!(offset_of!(RawHeader, version) == 8);
const _: () = assert!(offset_of!(RawHeader, header_size) == 12);
const _: () = assert!(offset_of!(RawHeader, window_size) == 16);
const _: () = assert!(offset_of!(RawHeader, generation) == 24);
const _: () = assert!(offset_of!(RawHeader, creator_pid) == 32);
const _: () = assert!(offset_of!(RawHeader, flags) == 36);
const _: () = assert!(offset_of!(RawHeader, area_count) == 40);
const _: () = assert!(offset_of!(RawHeader, init_stamp) == 48);
const _: () = assert!(offset_of!(RawHeader, areas) == 64);
const _: () = assert!(size_of::<RawHeader>() == 2112);
const _: () = assert!(size_of::<RawHeader>() <= HEADER_SIZE);

impl Default for RawHeader {
    /// All zero (arrays over 32 entries have no derived `Default`).
    fn default() -> Self {
        Self::zeroed()
    }
}

/// What an area holds. Numbers are part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AreaKind {
    /// The virtio-style config block (device status, features, queues).
    Config,
    /// A virtio split virtqueue; `param` = queue size.
    SplitRing,
    /// A virtio packed virtqueue; `param` = queue size.
    PackedRing,
    /// A zerohop posted ring; `param` = ring size.
    PostedRing,
    /// Packet buffers; `param` = buffer size.
    Buffers,
    /// Statistics counters (read-only for `zerohop stats`).
    Stats,
    /// Free for the application.
    User,
    /// A kind this version does not know (kept, not interpreted).
    Unknown(u32),
}

impl AreaKind {
    /// The wire number of this kind.
    pub fn to_u32(self) -> u32 {
        match self {
            AreaKind::Config => 1,
            AreaKind::SplitRing => 2,
            AreaKind::PackedRing => 3,
            AreaKind::PostedRing => 4,
            AreaKind::Buffers => 5,
            AreaKind::Stats => 6,
            AreaKind::User => 7,
            AreaKind::Unknown(n) => n,
        }
    }

    /// The kind a wire number names (never fails: unknown numbers are kept).
    pub fn from_u32(n: u32) -> AreaKind {
        match n {
            1 => AreaKind::Config,
            2 => AreaKind::SplitRing,
            3 => AreaKind::PackedRing,
            4 => AreaKind::PostedRing,
            5 => AreaKind::Buffers,
            6 => AreaKind::Stats,
            7 => AreaKind::User,
            n => AreaKind::Unknown(n),
        }
    }
}

/// A validated area: `offset..offset + size` lies inside the window, after the
/// header, aligned to [`AREA_ALIGN`], and overlaps no other area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    /// What it holds.
    pub kind: AreaKind,
    /// Kind-specific flags.
    pub flags: u32,
    /// Offset from the start of the window.
    pub offset: u64,
    /// Size in bytes (non-zero).
    pub size: u64,
    /// Kind-specific parameter.
    pub param: u64,
}

impl Area {
    /// An area with no flags and no parameter.
    pub fn new(kind: AreaKind, offset: u64, size: u64) -> Area {
        Area {
            kind,
            flags: 0,
            offset,
            size,
            param: 0,
        }
    }

    fn to_raw(self) -> RawArea {
        RawArea {
            kind: self.kind.to_u32(),
            flags: self.flags,
            offset: self.offset,
            size: self.size,
            param: self.param,
        }
    }

    fn from_raw(r: RawArea) -> Area {
        Area {
            kind: AreaKind::from_u32(r.kind),
            flags: r.flags,
            offset: r.offset,
            size: r.size,
            param: r.param,
        }
    }
}

/// What is wrong with an area (shared by init and open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AreaError {
    /// More areas than the table holds.
    #[error("{count} areas, the table holds at most {MAX_AREAS}")]
    TooMany {
        /// Areas given / claimed.
        count: u64,
    },
    /// Kind 0 marks an unused slot and cannot be in use.
    #[error("area {index} has kind 0 (unused)")]
    ZeroKind {
        /// Table index.
        index: usize,
    },
    /// The area has no bytes.
    #[error("area {index} is empty")]
    Empty {
        /// Table index.
        index: usize,
    },
    /// The area starts inside the header.
    #[error("area {index} at offset {offset:#x} overlaps the {header_size}-byte header")]
    InHeader {
        /// Table index.
        index: usize,
        /// Area offset.
        offset: u64,
        /// Header size.
        header_size: u64,
    },
    /// The area does not fit the window.
    #[error("area {index} ({offset:#x}+{size:#x}) is outside the {window_size}-byte window")]
    OutOfWindow {
        /// Table index.
        index: usize,
        /// Area offset.
        offset: u64,
        /// Area size.
        size: u64,
        /// Window size.
        window_size: u64,
    },
    /// The area offset is not aligned to [`AREA_ALIGN`].
    #[error("area {index} offset {offset:#x} is not {AREA_ALIGN}-byte aligned")]
    Misaligned {
        /// Table index.
        index: usize,
        /// Area offset.
        offset: u64,
    },
    /// Two areas share bytes.
    #[error("areas {a} and {b} overlap")]
    Overlap {
        /// First table index.
        a: usize,
        /// Second table index.
        b: usize,
    },
}

/// Why [`Header::init`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    /// The memory cannot hold a header.
    #[error("window of {have} bytes is too small for the {need}-byte header")]
    TooSmall {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// `window_size` in the parameters is larger than the memory.
    #[error("window size {window_size} is larger than the {mapping}-byte mapping")]
    WindowLargerThanMapping {
        /// Requested window size.
        window_size: u64,
        /// Size of the memory.
        mapping: u64,
    },
    /// An area in the parameters is invalid.
    #[error("invalid area: {0}")]
    Area(#[from] AreaError),
    /// A memory access failed (misaligned memory).
    #[error("memory access failed: {0}")]
    Mem(#[from] MemError),
}

/// Why [`Header::open`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The memory cannot hold a header.
    #[error("window of {have} bytes is too small for the {need}-byte header")]
    TooSmall {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// The first 8 bytes are not [`MAGIC`] (and not zero): not a zerohop window.
    #[error("bad magic {found:02x?} (not a zerohop window)")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// The header is zeroed, half written, or being rewritten: try again later.
    #[error("header not initialised (creator not finished, or re-creating the window)")]
    NotInitialized,
    /// The layout major version differs.
    #[error(
        "layout version mismatch: window has {}.{}, this build speaks {}.{}",
        found >> 16, found & 0xffff, expected >> 16, expected & 0xffff
    )]
    VersionMismatch {
        /// Version field found.
        found: u32,
        /// Version this code writes.
        expected: u32,
    },
    /// `header_size` is not a multiple of 4096 between 4096 and the window size.
    #[error("bad header size {found}")]
    BadHeaderSize {
        /// Value found.
        found: u32,
    },
    /// `window_size` does not match the mapping.
    #[error("header says the window is {header} bytes, the mapping has {mapping}")]
    WindowSizeMismatch {
        /// Size in the header.
        header: u64,
        /// Size of the mapping.
        mapping: u64,
    },
    /// The window was re-created since the generation the caller expected.
    #[error("window generation is {found}, expected {expected} (peer re-created it)")]
    GenerationChanged {
        /// Generation found.
        found: u64,
        /// Generation expected.
        expected: u64,
    },
    /// An area in the table is invalid.
    #[error("invalid area: {0}")]
    Area(#[from] AreaError),
    /// A memory access failed (misaligned memory).
    #[error("memory access failed: {0}")]
    Mem(#[from] MemError),
}

/// What the creator writes.
#[derive(Clone, Debug, Default)]
pub struct HeaderParams {
    /// Window size to record; `None` = the whole memory.
    pub window_size: Option<u64>,
    /// Process id of the creator (diagnostics; rings makes no syscalls, so the
    /// caller passes `std::process::id()`).
    pub creator_pid: u32,
    /// Opaque flags.
    pub flags: u32,
    /// The area table (at most [`MAX_AREAS`]).
    pub areas: Vec<Area>,
}

/// What the opener checks beyond the format itself.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// Accept a mapping larger than the header's window size (a PCI BAR larger than
    /// the window placed at its start). Default: sizes must be equal.
    pub allow_larger_mapping: bool,
    /// Refuse a header whose generation differs (detects a re-created window).
    pub generation: Option<u64>,
}

/// A validated copy of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// `major << 16 | minor`.
    pub version: u32,
    /// Header size.
    pub header_size: u32,
    /// Window size.
    pub window_size: u64,
    /// Creator generation.
    pub generation: u64,
    /// Creator process id.
    pub creator_pid: u32,
    /// Flags.
    pub flags: u32,
    area_count: usize,
    areas: [Area; MAX_AREAS],
}

impl HeaderInfo {
    /// The validated areas, in table order.
    pub fn areas(&self) -> &[Area] {
        &self.areas[..self.area_count]
    }

    /// The first area of `kind`, if any.
    pub fn find(&self, kind: AreaKind) -> Option<&Area> {
        self.areas().iter().find(|a| a.kind == kind)
    }
}

/// The header operations (a namespace; the header itself lives in the window).
pub struct Header;

/// The generation that follows `g`: never 0 and never [`INIT_STAMP`] (whose stamp
/// would be 0, indistinguishable from a zeroed page).
fn next_generation(g: u64) -> u64 {
    let mut n = g.wrapping_add(1);
    while n == 0 || n == INIT_STAMP {
        n = n.wrapping_add(1);
    }
    n
}

/// Checks `areas` against each other and a window of `window_size` bytes whose
/// header is `header_size` bytes.
fn check_areas(areas: &[Area], header_size: u64, window_size: u64) -> Result<(), AreaError> {
    if areas.len() > MAX_AREAS {
        return Err(AreaError::TooMany {
            count: areas.len() as u64,
        });
    }
    for (index, a) in areas.iter().enumerate() {
        if a.kind.to_u32() == 0 {
            return Err(AreaError::ZeroKind { index });
        }
        if a.size == 0 {
            return Err(AreaError::Empty { index });
        }
        if a.offset < header_size {
            return Err(AreaError::InHeader {
                index,
                offset: a.offset,
                header_size,
            });
        }
        match a.offset.checked_add(a.size) {
            Some(end) if end <= window_size => {}
            _ => {
                return Err(AreaError::OutOfWindow {
                    index,
                    offset: a.offset,
                    size: a.size,
                    window_size,
                })
            }
        }
        if a.offset & (AREA_ALIGN - 1) != 0 {
            return Err(AreaError::Misaligned {
                index,
                offset: a.offset,
            });
        }
    }
    // At most 64 areas: the quadratic check is at most 2016 comparisons, once per
    // open. Ends do not overflow (checked above).
    for (i, a) in areas.iter().enumerate() {
        for (j, b) in areas.iter().enumerate().skip(i + 1) {
            if a.offset < b.offset + b.size && b.offset < a.offset + a.size {
                return Err(AreaError::Overlap { a: i, b: j });
            }
        }
    }
    Ok(())
}

impl Header {
    /// Writes a fresh header at offset 0 of `mem` (the creator side).
    ///
    /// The generation is one more than that of a valid header already there (a
    /// re-created window), else 1. The init stamp is cleared first and written last,
    /// so a concurrent [`Header::open`] sees `NotInitialized` until the end.
    pub fn init(mem: &impl Mem, params: &HeaderParams) -> Result<HeaderInfo, InitError> {
        let have = mem.size() as u64;
        if have < HEADER_SIZE as u64 {
            return Err(InitError::TooSmall {
                need: HEADER_SIZE as u64,
                have,
            });
        }
        let window_size = params.window_size.unwrap_or(have);
        if window_size > have || window_size < HEADER_SIZE as u64 {
            return Err(if window_size > have {
                InitError::WindowLargerThanMapping {
                    window_size,
                    mapping: have,
                }
            } else {
                InitError::TooSmall {
                    need: HEADER_SIZE as u64,
                    have: window_size,
                }
            });
        }
        check_areas(&params.areas, HEADER_SIZE as u64, window_size)?;

        // Generation: bump a previously valid header's. Relaxed is enough: we are the
        // creator, and a stale value only costs uniqueness, which the xor'ed stamp
        // check in `open` does not rely on across creators.
        let old_stamp = mem.load_u64(INIT_STAMP_OFFSET, Ordering::Relaxed)?;
        let old_gen = mem.load_u64(offset_of!(RawHeader, generation), Ordering::Relaxed)?;
        let generation = if old_stamp != 0 && old_stamp == INIT_STAMP ^ old_gen {
            next_generation(old_gen)
        } else {
            1
        };

        // Clear the stamp, then fence: any reader that sees one of the field writes
        // below will also see the cleared stamp on its second (post-copy) stamp load.
        // Pairs with the Acquire fence in `open` (seqlock write begin).
        mem.store_u64(INIT_STAMP_OFFSET, 0, Ordering::Relaxed)?;
        fence(Ordering::Release);

        let mut raw = RawHeader {
            magic: MAGIC,
            version: VERSION,
            header_size: HEADER_SIZE as u32,
            window_size,
            generation,
            creator_pid: params.creator_pid,
            flags: params.flags,
            area_count: params.areas.len() as u32,
            ..RawHeader::zeroed()
        };
        for (slot, a) in raw.areas.iter_mut().zip(params.areas.iter()) {
            *slot = a.to_raw();
        }
        // Zero the reserved tail of the page, then the fields (stamp still 0).
        const ZEROS: [u8; 512] = [0; 512];
        let mut off = size_of::<RawHeader>();
        while off < HEADER_SIZE {
            let n = (HEADER_SIZE - off).min(ZEROS.len());
            mem.write_bytes(off, &ZEROS[..n])?;
            off += n;
        }
        mem.write_obj(0, &raw)?;

        // Release: publishes every field written above; pairs with the Acquire load
        // of the stamp at the start of `open`.
        mem.store_u64(
            INIT_STAMP_OFFSET,
            INIT_STAMP ^ generation,
            Ordering::Release,
        )?;

        let mut areas = [Area::from_raw(RawArea::zeroed()); MAX_AREAS];
        areas[..params.areas.len()].copy_from_slice(&params.areas);
        Ok(HeaderInfo {
            version: VERSION,
            header_size: HEADER_SIZE as u32,
            window_size,
            generation,
            creator_pid: params.creator_pid,
            flags: params.flags,
            area_count: params.areas.len(),
            areas,
        })
    }

    /// Reads and validates the header at offset 0 of `mem` (the peer side).
    ///
    /// The header is copied once; every check runs on the copy.
    pub fn open(mem: &impl Mem, expect: &Expect) -> Result<HeaderInfo, OpenError> {
        let mapping = mem.size() as u64;
        if mapping < HEADER_SIZE as u64 {
            return Err(OpenError::TooSmall {
                need: HEADER_SIZE as u64,
                have: mapping,
            });
        }
        // Acquire: pairs with the Release store of the stamp at the end of `init`;
        // if it carries a valid stamp, the fields copied below are the ones it
        // published.
        let stamp1 = mem.load_u64(INIT_STAMP_OFFSET, Ordering::Acquire)?;
        let raw: RawHeader = mem.read_obj(0)?;
        // Acquire fence: orders the copy above before the second stamp load; pairs
        // with the Release fence after `init` clears the stamp (seqlock read end).
        fence(Ordering::Acquire);
        let stamp2 = mem.load_u64(INIT_STAMP_OFFSET, Ordering::Relaxed)?;

        if raw.magic != MAGIC {
            if raw.magic == [0; 8] {
                return Err(OpenError::NotInitialized);
            }
            return Err(OpenError::BadMagic { found: raw.magic });
        }
        if stamp1 != stamp2 || stamp1 == 0 || stamp1 != INIT_STAMP ^ raw.generation {
            return Err(OpenError::NotInitialized);
        }
        if raw.version >> 16 != VERSION >> 16 {
            return Err(OpenError::VersionMismatch {
                found: raw.version,
                expected: VERSION,
            });
        }
        let header_size = raw.header_size as u64;
        if header_size < HEADER_SIZE as u64
            || header_size & (HEADER_SIZE as u64 - 1) != 0
            || header_size > raw.window_size
        {
            return Err(OpenError::BadHeaderSize {
                found: raw.header_size,
            });
        }
        let size_ok = if expect.allow_larger_mapping {
            raw.window_size <= mapping
        } else {
            raw.window_size == mapping
        };
        if !size_ok {
            return Err(OpenError::WindowSizeMismatch {
                header: raw.window_size,
                mapping,
            });
        }
        if let Some(expected) = expect.generation {
            if expected != raw.generation {
                return Err(OpenError::GenerationChanged {
                    found: raw.generation,
                    expected,
                });
            }
        }
        let count = raw.area_count as usize;
        if count > MAX_AREAS {
            return Err(AreaError::TooMany {
                count: raw.area_count as u64,
            }
            .into());
        }
        let mut areas = [Area::from_raw(RawArea::zeroed()); MAX_AREAS];
        for (dst, src) in areas.iter_mut().zip(raw.areas.iter()).take(count) {
            *dst = Area::from_raw(*src);
        }
        check_areas(&areas[..count], header_size, raw.window_size)?;
        Ok(HeaderInfo {
            version: raw.version,
            header_size: raw.header_size,
            window_size: raw.window_size,
            generation: raw.generation,
            creator_pid: raw.creator_pid,
            flags: raw.flags,
            area_count: count,
            areas,
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mem::Region;
    use proptest::prelude::*;

    const WIN: usize = 3 * HEADER_SIZE;

    fn params() -> HeaderParams {
        HeaderParams {
            window_size: None,
            creator_pid: 0x1234,
            flags: 0xa5,
            areas: vec![
                Area {
                    kind: AreaKind::SplitRing,
                    flags: 1,
                    offset: 4096,
                    size: 4096,
                    param: 256,
                },
                Area::new(AreaKind::Buffers, 8192, 4096),
            ],
        }
    }

    fn fresh() -> Region {
        let r = Region::heap(WIN);
        Header::init(&r, &params()).unwrap();
        r
    }

    fn set_u32(r: &Region, off: usize, v: u32) {
        r.store_u32(off, v, Ordering::Relaxed).unwrap();
    }

    fn set_u64(r: &Region, off: usize, v: u64) {
        r.store_u64(off, v, Ordering::Relaxed).unwrap();
    }

    /// Rewrites the stamp so it is valid for the generation in the page (simulates a
    /// creator that wrote the bad field itself).
    fn restamp(r: &Region) {
        let g = r
            .load_u64(offset_of!(RawHeader, generation), Ordering::Relaxed)
            .unwrap();
        set_u64(r, INIT_STAMP_OFFSET, INIT_STAMP ^ g);
    }

    #[test]
    fn golden_bytes() {
        let r = fresh();
        let mut got = [0u8; 128];
        r.read_bytes(0, &mut got).unwrap();
        #[rustfmt::skip]
        let want: [u8; 128] = [
            // magic
            b'Z', b'E', b'R', b'O', b'H', b'O', b'P', 0,
            // version 1.1, header_size 4096
            0x01, 0x00, 0x01, 0x00, 0x00, 0x10, 0x00, 0x00,
            // window_size 12288
            0x00, 0x30, 0, 0, 0, 0, 0, 0,
            // generation 1
            1, 0, 0, 0, 0, 0, 0, 0,
            // creator_pid 0x1234, flags 0xa5
            0x34, 0x12, 0, 0, 0xa5, 0, 0, 0,
            // area_count 2, reserved
            2, 0, 0, 0, 0, 0, 0, 0,
            // init_stamp = INIT_STAMP ^ 1 (LE)
            0x55, 0x49, 0x4e, 0x49, 0x50, 0x4f, 0x48, 0x5a,
            // reserved
            0, 0, 0, 0, 0, 0, 0, 0,
            // area 0: SplitRing, flags 1, offset 4096, size 4096, param 256
            2, 0, 0, 0, 1, 0, 0, 0,
            0x00, 0x10, 0, 0, 0, 0, 0, 0,
            0x00, 0x10, 0, 0, 0, 0, 0, 0,
            0x00, 0x01, 0, 0, 0, 0, 0, 0,
            // area 1: Buffers, offset 8192, size 4096
            5, 0, 0, 0, 0, 0, 0, 0,
            0x00, 0x20, 0, 0, 0, 0, 0, 0,
            0x00, 0x10, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(got, want);
        // Everything after the two areas up to the page end is zero.
        let mut rest = vec![0xffu8; HEADER_SIZE - 128];
        r.read_bytes(128, &mut rest).unwrap();
        assert!(rest.iter().all(|&b| b == 0));
    }

    #[test]
    fn open_round_trips() {
        let r = fresh();
        let info = Header::open(&r, &Expect::default()).unwrap();
        assert_eq!(info.version, VERSION);
        assert_eq!(info.window_size, WIN as u64);
        assert_eq!(info.generation, 1);
        assert_eq!(info.creator_pid, 0x1234);
        assert_eq!(info.areas(), &params().areas[..]);
        assert_eq!(info.find(AreaKind::Buffers).unwrap().offset, 8192);
        assert!(info.find(AreaKind::Stats).is_none());
    }

    #[test]
    fn reinit_bumps_generation() {
        let r = fresh();
        let info = Header::init(&r, &params()).unwrap();
        assert_eq!(info.generation, 2);
        let got = Header::open(&r, &Expect::default()).unwrap();
        assert_eq!(got.generation, 2);
        assert_eq!(
            Header::open(
                &r,
                &Expect {
                    generation: Some(1),
                    ..Expect::default()
                }
            ),
            Err(OpenError::GenerationChanged {
                found: 2,
                expected: 1
            })
        );
        assert_eq!(next_generation(u64::MAX), 1);
        assert_eq!(next_generation(INIT_STAMP - 1), INIT_STAMP + 1);
    }

    #[test]
    fn too_small() {
        let r = Region::heap(HEADER_SIZE - 8);
        assert_eq!(
            Header::init(&r, &HeaderParams::default()),
            Err(InitError::TooSmall {
                need: 4096,
                have: 4088
            })
        );
        assert_eq!(
            Header::open(&r, &Expect::default()),
            Err(OpenError::TooSmall {
                need: 4096,
                have: 4088
            })
        );
    }

    #[test]
    fn zeroed_is_not_initialized() {
        let r = Region::heap(WIN);
        assert_eq!(
            Header::open(&r, &Expect::default()),
            Err(OpenError::NotInitialized)
        );
    }

    #[test]
    fn bad_magic() {
        let r = fresh();
        r.write_bytes(0, b"NOTZHOP!").unwrap();
        assert_eq!(
            Header::open(&r, &Expect::default()),
            Err(OpenError::BadMagic {
                found: *b"NOTZHOP!"
            })
        );
    }

    #[test]
    fn missing_or_stale_stamp() {
        let r = fresh();
        set_u64(&r, INIT_STAMP_OFFSET, 0);
        assert_eq!(
            Header::open(&r, &Expect::default()),
            Err(OpenError::NotInitialized)
        );
        // Stamp of another generation: a creator that rewrote the fields but has not
        // stamped yet.
        set_u64(&r, INIT_STAMP_OFFSET, INIT_STAMP ^ 7);
        assert_eq!(
            Header::open(&r, &Expect::default()),
            Err(OpenError::NotInitialized)
        );
    }

    #[test]
    fn version_mismatch() {
        let r = fresh();
        set_u32(&r, 8, 2 << 16);
        assert_eq!(
            Header::open(&r, &Expect::default()),
            Err(OpenError::VersionMismatch {
                found: 2 << 16,
                expected: VERSION
            })
        );
        let msg = Header::open(&r, &Expect::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("2.0") && msg.contains("1.1"), "{msg}");
        // A newer minor is accepted.
        set_u32(&r, 8, 1 << 16 | 9);
        assert!(Header::open(&r, &Expect::default()).is_ok());
    }

    #[test]
    fn bad_header_size() {
        for bad in [0u32, 100, 4095, 5000, 16384] {
            let r = fresh();
            set_u32(&r, 12, bad);
            assert_eq!(
                Header::open(&r, &Expect::default()),
                Err(OpenError::BadHeaderSize { found: bad }),
                "{bad}"
            );
        }
    }

    #[test]
    fn window_size_mismatch() {
        let r = Region::heap(WIN + 4096);
        let p = HeaderParams {
            window_size: Some(WIN as u64),
            ..params()
        };
        Header::init(&r, &p).unwrap();
        assert_eq!(
            Header::open(&r, &Expect::default()),
            Err(OpenError::WindowSizeMismatch {
                header: WIN as u64,
                mapping: WIN as u64 + 4096
            })
        );
        let larger = Expect {
            allow_larger_mapping: true,
            ..Expect::default()
        };
        assert!(Header::open(&r, &larger).is_ok());
        // A header claiming more than the mapping is refused even when larger
        // mappings are allowed.
        set_u64(&r, 16, 1 << 40);
        assert_eq!(
            Header::open(&r, &larger),
            Err(OpenError::WindowSizeMismatch {
                header: 1 << 40,
                mapping: WIN as u64 + 4096
            })
        );
        assert_eq!(
            Header::init(
                &r,
                &HeaderParams {
                    window_size: Some(1 << 40),
                    ..params()
                }
            ),
            Err(InitError::WindowLargerThanMapping {
                window_size: 1 << 40,
                mapping: WIN as u64 + 4096
            })
        );
    }

    fn area_at(i: usize) -> usize {
        offset_of!(RawHeader, areas) + i * size_of::<RawArea>()
    }

    #[test]
    fn area_errors_on_open() {
        type Poke = fn(&Region);
        let cases: [(Poke, AreaError); 7] = [
            (|r| set_u32(r, 40, 65), AreaError::TooMany { count: 65 }),
            (
                |r| set_u32(r, area_at(1), 0),
                AreaError::ZeroKind { index: 1 },
            ),
            (
                |r| set_u64(r, area_at(1) + 16, 0),
                AreaError::Empty { index: 1 },
            ),
            (
                |r| set_u64(r, area_at(0) + 8, 64),
                AreaError::InHeader {
                    index: 0,
                    offset: 64,
                    header_size: 4096,
                },
            ),
            (
                |r| set_u64(r, area_at(1) + 16, u64::MAX),
                AreaError::OutOfWindow {
                    index: 1,
                    offset: 8192,
                    size: u64::MAX,
                    window_size: WIN as u64,
                },
            ),
            (
                |r| set_u64(r, area_at(0) + 8, 4096 + 8),
                AreaError::Misaligned {
                    index: 0,
                    offset: 4104,
                },
            ),
            (
                |r| set_u64(r, area_at(0) + 16, 4096 + 64),
                AreaError::Overlap { a: 0, b: 1 },
            ),
        ];
        for (poke, want) in cases {
            let r = fresh();
            poke(&r);
            restamp(&r);
            assert_eq!(
                Header::open(&r, &Expect::default()),
                Err(OpenError::Area(want))
            );
        }
    }

    #[test]
    fn a_full_area_table_round_trips() {
        let r = Region::heap(WIN);
        let mut p = params();
        p.areas = (0..MAX_AREAS)
            .map(|i| Area::new(AreaKind::User, (HEADER_SIZE + 64 * i) as u64, 64))
            .collect();
        Header::init(&r, &p).unwrap();
        let info = Header::open(&r, &Expect::default()).unwrap();
        assert_eq!(info.areas(), &p.areas[..]);
    }

    #[test]
    fn area_errors_on_init() {
        let r = Region::heap(WIN);
        let mut p = params();
        p.areas[1].offset = 4096;
        assert_eq!(
            Header::init(&r, &p),
            Err(InitError::Area(AreaError::Overlap { a: 0, b: 1 }))
        );
        let mut p = params();
        p.areas = vec![Area::new(AreaKind::User, 4096, 64); MAX_AREAS + 1];
        assert_eq!(
            Header::init(&r, &p),
            Err(InitError::Area(AreaError::TooMany { count: 65 }))
        );
        let mut p = params();
        p.areas[0].kind = AreaKind::Unknown(0);
        assert_eq!(
            Header::init(&r, &p),
            Err(InitError::Area(AreaError::ZeroKind { index: 0 }))
        );
        // Nothing was written by the failed inits.
        assert_eq!(
            Header::open(&r, &Expect::default()),
            Err(OpenError::NotInitialized)
        );
    }

    #[test]
    fn unknown_kinds_round_trip() {
        for n in 0..20 {
            assert_eq!(AreaKind::from_u32(n).to_u32(), n);
        }
        let r = Region::heap(WIN);
        let mut p = params();
        p.areas[1].kind = AreaKind::Unknown(999);
        Header::init(&r, &p).unwrap();
        let info = Header::open(&r, &Expect::default()).unwrap();
        assert_eq!(info.areas()[1].kind, AreaKind::Unknown(999));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bytes never make `open` panic; anything it accepts is consistent.
        #[test]
        fn open_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..700),
            stamp_valid in any::<bool>(),
            magic_valid in any::<bool>(),
            extra_pages in 0usize..3,
        ) {
            let r = Region::heap(HEADER_SIZE * (1 + extra_pages));
            r.write_bytes(0, &bytes[..bytes.len().min(HEADER_SIZE)]).unwrap();
            if magic_valid {
                r.write_bytes(0, &MAGIC).unwrap();
            }
            if stamp_valid {
                restamp(&r);
            }
            if let Ok(info) = Header::open(&r, &Expect::default()) {
                prop_assert!(info.window_size as usize == r.len());
                for a in info.areas() {
                    prop_assert!(a.offset >= HEADER_SIZE as u64);
                    prop_assert!(a.offset + a.size <= info.window_size);
                }
            }
        }

        /// A header torn at any byte: the creator wrote a prefix of the fields and
        /// (as `init` does) has not stored the stamp yet; the rest is zero or stale
        /// garbage. It never opens.
        #[test]
        fn torn_header_is_refused(cut in 0usize..HEADER_SIZE, garbage in any::<u8>()) {
            let good = fresh();
            let mut page = vec![0u8; HEADER_SIZE];
            good.read_bytes(0, &mut page).unwrap();
            for b in &mut page[cut..] {
                *b = garbage;
            }
            page[INIT_STAMP_OFFSET..INIT_STAMP_OFFSET + 8].fill(0);
            let r = Region::heap(WIN);
            r.write_bytes(0, &page).unwrap();
            let res = Header::open(&r, &Expect::default());
            prop_assert!(
                matches!(res, Err(OpenError::NotInitialized | OpenError::BadMagic { .. })),
                "{:?}", res
            );
        }

        /// A stamped header with one byte changed anywhere: no panic, and whatever
        /// opens still satisfies every validated invariant.
        #[test]
        fn corrupted_byte_is_validated(pos in 0usize..size_of::<RawHeader>(), val in any::<u8>()) {
            let r = fresh();
            r.write_bytes(pos, &[val]).unwrap();
            if let Ok(info) = Header::open(&r, &Expect::default()) {
                prop_assert_eq!(info.window_size as usize, r.len());
                prop_assert!(info.areas().len() <= MAX_AREAS);
                for a in info.areas() {
                    prop_assert!(a.offset >= HEADER_SIZE as u64);
                    prop_assert!(a.offset % AREA_ALIGN == 0);
                    prop_assert!(a.offset + a.size <= info.window_size);
                }
            }
        }
    }
}
