//! zerohop's posted-write ring: each side polls and reads only its own memory.
//!
//! GUIDE.md section 3. On a PCIe link a read across the window is a non-posted
//! transaction (~0.5-2 us) while a write is posted and cheap (write-combined when the
//! BAR is mapped WC). This ring is laid out so that **every word a side polls or reads
//! on the fast path lives in that side's own memory; the peer only writes to it.** In
//! steady state neither half performs a single load on the peer's memory (the test
//! `steady_state_has_zero_remote_loads` counts them).
//!
//! One instance carries one direction, A sends to B. The other direction is a second
//! instance with the roles swapped.
//!
//! # Layout
//!
//! Two areas, each its own [`Mem`]. Offsets below are for the default layout
//! ([`PostedLayout::default`]: 256 slots of 64 bytes, 256 buffers of 2048 bytes).
//!
//! ```text
//!  Rx area: B's memory, A only writes it      Tx area: A's memory, B only writes it
//!  +-------------------------------------+    +---------------------------------+
//!  | 0x00000 slot 0 (64 B)               |    | 0x000 credit 0: u64             |
//!  |   +0  seq:   u32  lap tag (p + 1)   |    |   (seq << 32) | buffer_index    |
//!  |   +4  len:   u32                    |    | 0x008 credit 1                  |
//!  |   +8  buf:   u32  buffer index      |    |  ...                            |
//!  |   +12 flags: u16  INLINE | reserved |    | 0x7f8 credit 255                |
//!  |   +14 meta:  u16  free user field   |    +---------------------------------+
//!  |   +16 inline[slot_size - 16]        |    | 0x800 consumed: u32 (B's slot   |
//!  | 0x00040 slot 1                      |    |   consumer position), padded    |
//!  |  ...                                |    |   to its own 128-byte line      |
//!  | 0x03fc0 slot 255                    |    +---------------------------------+
//!  +-------------------------------------+    0x880 end (tx_area_size = 2176)
//!  | 0x04000 buffer 0 (2048 B)           |
//!  | 0x04800 buffer 1                    |
//!  |  ...                                |
//!  | 0x83800 buffer 255                  |
//!  +-------------------------------------+
//!    0x84000 end (rx_area_size = 540672)
//! ```
//!
//! | word                | lives in | written by | read/polled by |
//! |---------------------|----------|------------|----------------|
//! | slot header, inline | B        | A          | B (local)      |
//! | receive buffers     | B        | A          | B (local, in place) |
//! | credit entries      | A        | B          | A (local)      |
//! | `consumed`          | A        | B          | A (local, only when the cached copy says full) |
//!
//! # Lap tags instead of indices
//!
//! Positions are free-running `u32` counters. The slot at position `p` lives in slot
//! `p % slots` and is valid for B iff its `seq == p.wrapping_add(1)`; the credit at
//! position `c` lives in entry `c % slots` and is valid for A iff the entry's upper
//! half `== c.wrapping_add(1)`. Zeroed memory is therefore never valid at position 0,
//! and a slot left over from the previous lap carries `p + 1 - slots != p + 1`. No
//! producer index is ever read across the link and there is no head index line: the
//! reader discovers new entries by polling the next entry in its own memory, and
//! stops at the first one whose tag does not match ("not ready", never an error).
//!
//! # Flow control, and why no entry is overwritten too early
//!
//! *Credits.* B grants a credit only for a buffer it owns, and tracks the buffers
//! currently credited to A in a bitmap: a buffer is credited at most once, so
//! `outstanding = granted - returned <= buffers <= slots`. When B writes credit
//! position `c`, after the grant `c + 1 - returned <= buffers`, so at least
//! `returned >= c + 1 - buffers` credits came back as messages. Each returned message
//! used a credit A had already read, and A reads credits in order, so A has read every
//! position `< c + 1 - buffers`, in particular `c - slots <= c - buffers`: the entry
//! B is about to overwrite was already consumed. B needs no credit tail. (A's read
//! happens-before B's overwrite: A's Acquire of the credit precedes its Release of the
//! slot that returns the buffer, which B acquired before re-granting.)
//!
//! *Slots.* Buffered messages consume a credit, inline messages
//! (`len <= slot_size - 16`) do not, so A must respect slot-ring space independently:
//! A writes position `p` only if `p - consumed < slots`, where `consumed` is the value
//! B last stored. Slot `p % slots` then held position `p - slots < consumed`, which B
//! has released. A keeps a cached copy of `consumed` and re-reads it (a *local* read)
//! only when the cache says full; a value that moved backwards or past what A has
//! published is an [`RingError::IndexJump`]. B never looks further than `slots`
//! positions past what its caller released.
//!
//! # Ordering (edges; docs/MEMORY_ORDERING.md has the full table)
//!
//! - **P1** [`PostedTx::publish`]: payload and slot bodies -> `fence(Release)` once per
//!   burst -> Release store of each slot's `seq`. Pairs with **P2**, the Acquire load of
//!   `seq` in [`PostedRx::poll`]. A caller that filled buffers with non-temporal /
//!   write-combining stores must issue one `sfence` before calling `publish`.
//! - **C1** [`PostedRx::grant`]: one 8-byte Release store per credit; pairs with **C2**,
//!   the Acquire load of each credit entry in [`PostedTx::poll_credits`]. It also
//!   orders B's last reads of the buffer before A's next writes into it.
//! - **K1** [`PostedRx::complete`]: one Release store of `consumed` per burst; pairs
//!   with **K2**, A's Acquire load of `consumed` when its cache says full. It orders B's
//!   reads of released inline slots before A overwrites them.
//!
//! # Threat model
//!
//! Everything read from the local area was written by the peer: each slot header and
//! credit entry is fetched once, validated, then used. A violation returns a typed
//! [`RingError`] and marks the half broken; later calls return [`RingError::Broken`]
//! until [`PostedTx::reset`] / [`PostedRx::reset`]. Payload handed out in place may be
//! changed by a hostile peer at any time (that is inherent to zero copy); lengths and
//! offsets handed out are always validated against the layout.
//!
//! # Starting and resetting
//!
//! `new` does not write memory: each side's local area must be zeroed (fresh windows
//! are) or reset before the peer starts writing. `reset` zeroes the ring words of the
//! local area and the local state; both sides reset (coordinated by the control plane)
//! before either resumes.

use crate::error::RingError;
use crate::mem::Mem;

mod rx;
mod tx;

pub use rx::PostedRx;
pub use tx::PostedTx;

#[cfg(test)]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;

/// Cache line size the layout aligns to.
pub const CACHE_LINE: u32 = 64;
/// Padding of the `consumed` line (128 bytes: the adjacent-line prefetcher on x86-64
/// and aarch64 pairs lines, as in crossbeam's `CachePadded`).
pub const PAD: u32 = 128;
/// Size of the slot header; inline payload follows it.
pub const SLOT_HEADER_SIZE: u32 = 16;

/// Slot flag: the payload is in the slot (`inline`), no buffer is used.
pub const FLAG_INLINE: u16 = 1 << 0;
/// Every flag bit the ring knows; the others are reserved and must be zero.
pub const FLAGS_KNOWN: u16 = FLAG_INLINE;

/// The 16-byte header at the start of every slot (wire layout, little-endian hosts).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SlotHeader {
    /// Lap tag: `position + 1` once the slot is published for that position.
    pub seq: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Receive buffer index (buffered messages; ignored for INLINE).
    pub buf: u32,
    /// [`FLAG_INLINE`]; other bits reserved (zero).
    pub flags: u16,
    /// Free 16-bit user field (queue/port info for the PMD).
    pub meta: u16,
}

const _: () = assert!(core::mem::size_of::<SlotHeader>() == SLOT_HEADER_SIZE as usize);
const _: () = assert!(core::mem::offset_of!(SlotHeader, seq) == 0);
const _: () = assert!(core::mem::offset_of!(SlotHeader, len) == 4);
const _: () = assert!(core::mem::offset_of!(SlotHeader, buf) == 8);
const _: () = assert!(core::mem::offset_of!(SlotHeader, flags) == 12);
const _: () = assert!(core::mem::offset_of!(SlotHeader, meta) == 14);

/// Offset of `len` in a slot.
const OFF_LEN: usize = core::mem::offset_of!(SlotHeader, len);
/// Offset of `buf` in a slot.
const OFF_BUF: usize = core::mem::offset_of!(SlotHeader, buf);
/// Offset of the 32-bit word holding `flags` (low address) and `meta`.
const OFF_FLAGS: usize = core::mem::offset_of!(SlotHeader, flags);

/// Size of one credit entry: `(seq << 32) | buffer_index`, written with one store.
pub const CREDIT_SIZE: u32 = 8;
const _: () = assert!(core::mem::size_of::<u64>() == CREDIT_SIZE as usize);

/// Encodes the credit entry for credit position `pos` naming `buffer`.
#[inline(always)]
pub const fn credit_entry(pos: u32, buffer: u32) -> u64 {
    ((pos.wrapping_add(1) as u64) << 32) | buffer as u64
}

/// Geometry of one posted ring (one direction). Built only by [`PostedLayout::new`],
/// so every value is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostedLayout {
    slots: u32,
    slot_size: u32,
    buffers: u32,
    buf_size: u32,
}

impl Default for PostedLayout {
    /// 256 slots of 64 bytes (48 inline bytes), 256 buffers of 2048 bytes.
    fn default() -> Self {
        PostedLayout {
            slots: 256,
            slot_size: 64,
            buffers: 256,
            buf_size: 2048,
        }
    }
}

impl PostedLayout {
    /// Validates and builds a layout.
    ///
    /// - `slots`: a power of two, at least 1;
    /// - `slot_size`: a power of two, at least 64;
    /// - `buffers <= slots` (may be 0 for an inline-only ring);
    /// - `buf_size`: a non-zero multiple of 64;
    /// - both areas must fit in `u32` offsets.
    pub fn new(slots: u32, slot_size: u32, buffers: u32, buf_size: u32) -> Result<Self, RingError> {
        if slots == 0 || !slots.is_power_of_two() {
            return Err(RingError::InvalidConfig {
                what: "slots",
                value: slots as u64,
                why: "must be a non-zero power of two",
            });
        }
        if slot_size < CACHE_LINE || !slot_size.is_power_of_two() {
            return Err(RingError::InvalidConfig {
                what: "slot_size",
                value: slot_size as u64,
                why: "must be a power of two >= 64",
            });
        }
        if buffers > slots {
            return Err(RingError::InvalidConfig {
                what: "buffers",
                value: buffers as u64,
                why: "must be <= slots",
            });
        }
        if buf_size == 0 || buf_size & (CACHE_LINE - 1) != 0 {
            return Err(RingError::InvalidConfig {
                what: "buf_size",
                value: buf_size as u64,
                why: "must be a non-zero multiple of 64",
            });
        }
        let rx = slots as u64 * slot_size as u64 + buffers as u64 * buf_size as u64;
        if rx > u32::MAX as u64 {
            return Err(RingError::InvalidConfig {
                what: "rx area size",
                value: rx,
                why: "must fit in u32 offsets",
            });
        }
        // The tx area is at most 8 * 2^26 + 256 bytes (slots <= 2^26 here), no overflow.
        Ok(PostedLayout {
            slots,
            slot_size,
            buffers,
            buf_size,
        })
    }

    /// Number of slots (power of two).
    #[inline]
    pub fn slots(&self) -> u32 {
        self.slots
    }
    /// Bytes per slot (power of two >= 64).
    #[inline]
    pub fn slot_size(&self) -> u32 {
        self.slot_size
    }
    /// Number of receive buffers (<= slots).
    #[inline]
    pub fn buffers(&self) -> u32 {
        self.buffers
    }
    /// Bytes per receive buffer (multiple of 64).
    #[inline]
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }
    /// Largest payload carried inline in a slot: `slot_size - 16`.
    #[inline]
    pub fn inline_capacity(&self) -> u32 {
        self.slot_size - SLOT_HEADER_SIZE
    }

    /// Rx area: offset of slot `i` (`i < slots`).
    #[inline]
    pub fn slot_off(&self, i: u32) -> usize {
        i as usize * self.slot_size as usize
    }
    /// Rx area: offset of the buffer area (cache-line aligned, right after the slots).
    #[inline]
    pub fn buf_area_off(&self) -> usize {
        self.slots as usize * self.slot_size as usize
    }
    /// Rx area: offset of buffer `i` (`i < buffers`).
    #[inline]
    pub fn buf_off(&self, i: u32) -> usize {
        self.buf_area_off() + i as usize * self.buf_size as usize
    }
    /// Bytes the rx area needs.
    #[inline]
    pub fn rx_area_size(&self) -> usize {
        self.buf_off(self.buffers)
    }

    /// Tx area: offset of credit entry `i` (`i < slots`).
    #[inline]
    pub fn credit_off(&self, i: u32) -> usize {
        i as usize * CREDIT_SIZE as usize
    }
    /// Tx area: offset of `consumed` (its own 128-byte line after the credit ring).
    #[inline]
    pub fn consumed_off(&self) -> usize {
        (self.slots as usize * CREDIT_SIZE as usize).next_multiple_of(PAD as usize)
    }
    /// Tx area: offset of `wake` (B's "notify me" request, in the second half of
    /// `consumed`'s 128-byte line): 0 = B polls, no notification; `p + 1` = B sleeps
    /// until A publishes position `p` (virtio's event index, with a lap-tag style
    /// encoding so that zeroed memory means "not armed").
    #[inline]
    pub fn wake_off(&self) -> usize {
        self.consumed_off() + 64
    }
    /// Bytes the tx area needs.
    #[inline]
    pub fn tx_area_size(&self) -> usize {
        self.consumed_off() + PAD as usize
    }

    /// Offset in the rx area that a credit for `index` names, as a u64 that cannot
    /// overflow for any `index` (for error reports).
    fn buf_off_u64(&self, index: u32) -> u64 {
        self.buf_area_off() as u64 + index as u64 * self.buf_size as u64
    }
}

/// Checks that `mem` is large enough for `need` bytes.
fn check_size<M: Mem>(mem: &M, need: usize) -> Result<(), RingError> {
    if mem.size() < need {
        return Err(RingError::RegionTooSmall {
            need,
            have: mem.size(),
        });
    }
    Ok(())
}

/// Where a received message's payload is, in the receiver's (local) rx area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxKind {
    /// The payload is inline in the slot at `slot_off + 16`; valid until the slot is
    /// released ([`PostedRx::release_slots`]).
    Inline {
        /// Offset of the slot in the rx area (the payload starts 16 bytes later).
        slot_off: usize,
    },
    /// The payload is in receive buffer `index` at `off`; the buffer belongs to the
    /// caller until it is granted back ([`PostedRx::grant`]).
    Buffer {
        /// Buffer index.
        index: u32,
        /// Offset of the buffer in the rx area.
        off: usize,
    },
}

/// One received message, validated: `len` fits the slot or buffer it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxMsg {
    /// Where the payload is.
    pub kind: RxKind,
    /// Payload length.
    pub len: u32,
    /// The sender's 16-bit user field.
    pub meta: u16,
}

impl Default for RxMsg {
    fn default() -> Self {
        RxMsg {
            kind: RxKind::Inline { slot_off: 0 },
            len: 0,
            meta: 0,
        }
    }
}

impl RxMsg {
    /// Offset of the first payload byte in the rx area.
    #[inline]
    pub fn payload_off(&self) -> usize {
        match self.kind {
            RxKind::Inline { slot_off } => slot_off + SLOT_HEADER_SIZE as usize,
            RxKind::Buffer { off, .. } => off,
        }
    }
}

/// A held credit handed out by [`PostedTx::alloc`]: buffer `index` at `offset` in the
/// receiver's area, `capacity` bytes. Build the payload there (through the remote
/// [`Mem`]'s `write_bytes` or `range_ptr`), then pass it to [`PostedTx::enqueue`], or
/// give it back with [`PostedTx::cancel`]. It also reserves one slot.
#[must_use = "a TxBuf holds a credit and a slot; enqueue or cancel it"]
#[derive(Debug, PartialEq, Eq)]
pub struct TxBuf {
    index: u32,
    offset: usize,
    capacity: u32,
}

impl TxBuf {
    /// Receive buffer index.
    #[inline]
    pub fn index(&self) -> u32 {
        self.index
    }
    /// Offset of the buffer in the receiver's (remote) area.
    #[inline]
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Capacity in bytes (`buf_size`).
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// A fixed-size bitmap, allocated at construction.
#[derive(Debug)]
struct Bits {
    words: Box<[u64]>,
}

impl Bits {
    fn new(n: u32) -> Self {
        Bits {
            words: vec![0u64; (n as usize).div_ceil(64)].into_boxed_slice(),
        }
    }
    /// Bit `i`; callers check `i` against the bitmap size first (false if outside).
    #[inline]
    fn get(&self, i: u32) -> bool {
        self.words
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    #[inline]
    fn set(&mut self, i: u32, v: bool) {
        if let Some(w) = self.words.get_mut(i as usize / 64) {
            if v {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }
    fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }
}
