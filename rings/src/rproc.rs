//! The ZHRT block: a remoteproc resource table (Linux `include/linux/remoteproc.h`,
//! the table OpenAMP firmware links into its image) in shared memory, with the reset
//! handshake of [`crate::zhvq`] around it, so Linux's own remoteproc core *attaches*
//! to a zerohop device as it attaches to an already running remote processor on a
//! board, and runs virtio_rpmsg_bus over the vrings it allocates.
//!
//! The block sits at offset 0 of the window the guest sees as BAR 2 of QEMU's
//! `ivshmem-plain` (the guest's `zh_rproc` driver in rpmsg-fast/linux binds to it and
//! hands the table to the remoteproc core in place). The vrings and buffers are guest
//! RAM, as with ZHVQ: Linux writes each vring's guest-physical address into the table.
//!
//! ```text
//! offset  field                 written by  meaning
//!   0     magic u32             device      "ZHRT" (0x5452485a), stored last at init
//!   4     major u16, minor u16  device      1, 0 (a driver of another major refuses)
//!   8     table_off u32         device      64
//!  12     table_len u32         device      92
//!  16     reset_seq u32         guest       bumped by the driver's stop op, after the
//!                                           vdev reset, before Linux frees the vrings
//!  20     reset_ack u32         device      = reset_seq once the device let go of the
//!                                           vrings and rewrote the table
//!  24     heartbeat u32         device      bumped while the device runs
//!  28     kicks u32             guest       notifications the guest would have sent
//!  32     reserved[32]
//!  64     struct resource_table { ver = 1, num = 1, reserved[2], offset[0] = 24 }, pad
//!  88     struct fw_rsc_hdr { type = RSC_VDEV }
//!  92     struct fw_rsc_vdev { id, notifyid*, dfeatures, gfeatures*, config_len = 0,
//!           status* u8, num_of_vrings = 2, reserved[2],
//!  116      vring[2] { da*, align, num, notifyid*, pa } }      (* written by Linux)
//! 156     end
//! ```
//!
//! remoteproc speaks legacy virtio: feature words are 32 bits (no `VIRTIO_F_VERSION_1`,
//! no packed rings), and each vring is one block from `da`: descriptors, the avail
//! ring, then the used ring at the next multiple of `align`. The device asks for
//! `align` = [`VRING_ALIGN`] (4), which puts the used ring where
//! [`crate::split::SplitLayout`] does; `da` = [`FW_RSC_ADDR_ANY`] lets Linux place it.
//!
//! Ordering: Linux's remoteproc core writes the table with plain stores (vring `da`
//! when a queue is created, then `status` = DRIVER_OK after its driver's probe); the
//! device loads `status` with Acquire and everything after it. On x86 (TSO) the stores
//! reach memory in program order; [`Rproc::queue`] copies the vring registers out and
//! whoever maps them checks them, so a torn view is refused, never trusted. The reset
//! handshake is the ZHVQ one: the guest bumps `reset_seq` (after `wmb()`) and waits
//! for `reset_ack`, which [`Rproc::ack_reset`] stores with Release after putting the
//! table back as it was at init (Linux refuses a vring `da` it did not choose).

use crate::mem::Mem;
use crate::sync::Ordering;
use crate::zhvq::{GuestRegs, Handshake, QueueRegs};
use crate::MemError;

/// `magic`: "ZHRT" as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"ZHRT");
/// Major version this build speaks.
pub const VERSION_MAJOR: u16 = 1;
/// Minor version this build writes.
pub const VERSION_MINOR: u16 = 0;
/// `RSC_VDEV`: a virtio device resource.
pub const RSC_VDEV: u32 = 3;
/// `FW_RSC_ADDR_ANY`: "Linux, choose the address".
pub const FW_RSC_ADDR_ANY: u32 = u32::MAX;
/// Vrings of the device (rpmsg: Linux receives on 0, sends on 1).
pub const VRINGS: usize = 2;
/// The used-ring alignment the device asks for.
pub const VRING_ALIGN: u32 = 4;
/// Bytes of the resource table.
pub const TABLE_LEN: usize = 92;
/// Bytes of the block.
pub const BLOCK_SIZE: usize = off::TABLE + TABLE_LEN;

/// Virtio device status bits, as the control block names them.
pub use crate::control::status;

/// Field offsets (see the module table).
pub mod off {
    /// `magic`.
    pub const MAGIC: usize = 0;
    /// `major`.
    pub const MAJOR: usize = 4;
    /// `minor`.
    pub const MINOR: usize = 6;
    /// `table_off`.
    pub const TABLE_OFF: usize = 8;
    /// `table_len`.
    pub const TABLE_LEN: usize = 12;
    /// `reset_seq`.
    pub const RESET_SEQ: usize = 16;
    /// `reset_ack`.
    pub const RESET_ACK: usize = 20;
    /// `heartbeat`.
    pub const HEARTBEAT: usize = 24;
    /// `kicks`.
    pub const KICKS: usize = 28;
    /// The resource table (`struct resource_table`).
    pub const TABLE: usize = 64;
    /// `fw_rsc_vdev.id`.
    pub const ID: usize = 92;
    /// `fw_rsc_vdev.notifyid`.
    pub const NOTIFYID: usize = 96;
    /// `fw_rsc_vdev.dfeatures`.
    pub const DFEATURES: usize = 100;
    /// `fw_rsc_vdev.gfeatures`.
    pub const GFEATURES: usize = 104;
    /// `fw_rsc_vdev.status` (a byte; the u32 here also holds `num_of_vrings`).
    pub const STATUS: usize = 112;
    /// `fw_rsc_vdev.vring[0]`.
    pub const VRING: usize = 116;
    /// Bytes of one `fw_rsc_vdev_vring`.
    pub const VRING_SIZE: usize = 20;
}

/// The block as structs, to pin the offsets above at compile time.
#[repr(C)]
struct RawBlock {
    magic: u32,
    major: u16,
    minor: u16,
    table_off: u32,
    table_len: u32,
    reset_seq: u32,
    reset_ack: u32,
    heartbeat: u32,
    kicks: u32,
    reserved: [u32; 8],
    table: RawTable,
}

/// `struct resource_table` with one entry, then the entry.
#[repr(C)]
struct RawTable {
    ver: u32,
    num: u32,
    reserved: [u32; 2],
    offset: [u32; 1],
    pad: u32,
    /// `struct fw_rsc_hdr`.
    rsc_type: u32,
    vdev: RawVdev,
}

/// `struct fw_rsc_vdev`.
#[repr(C)]
struct RawVdev {
    id: u32,
    notifyid: u32,
    dfeatures: u32,
    gfeatures: u32,
    config_len: u32,
    status: u8,
    num_of_vrings: u8,
    reserved: [u8; 2],
    vring: [RawVring; VRINGS],
}

/// `struct fw_rsc_vdev_vring`.
#[repr(C)]
struct RawVring {
    da: u32,
    align: u32,
    num: u32,
    notifyid: u32,
    pa: u32,
}

const HANDSHAKE: Handshake = Handshake {
    reset_seq: off::RESET_SEQ,
    reset_ack: off::RESET_ACK,
    heartbeat: off::HEARTBEAT,
    kicks: off::KICKS,
};

/// Offset of the vdev entry's header in the table (`offset[0]`).
const VDEV_ENTRY: usize = 24;

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(RawBlock, major) == off::MAJOR);
    assert!(offset_of!(RawBlock, minor) == off::MINOR);
    assert!(offset_of!(RawBlock, table_off) == off::TABLE_OFF);
    assert!(offset_of!(RawBlock, table_len) == off::TABLE_LEN);
    assert!(offset_of!(RawBlock, reset_seq) == off::RESET_SEQ);
    assert!(offset_of!(RawBlock, reset_ack) == off::RESET_ACK);
    assert!(offset_of!(RawBlock, heartbeat) == off::HEARTBEAT);
    assert!(offset_of!(RawBlock, kicks) == off::KICKS);
    assert!(offset_of!(RawBlock, table) == off::TABLE);
    assert!(offset_of!(RawTable, rsc_type) == VDEV_ENTRY);
    assert!(off::TABLE + offset_of!(RawTable, vdev) + offset_of!(RawVdev, id) == off::ID);
    assert!(
        off::TABLE + offset_of!(RawTable, vdev) + offset_of!(RawVdev, notifyid) == off::NOTIFYID
    );
    assert!(
        off::TABLE + offset_of!(RawTable, vdev) + offset_of!(RawVdev, dfeatures) == off::DFEATURES
    );
    assert!(
        off::TABLE + offset_of!(RawTable, vdev) + offset_of!(RawVdev, gfeatures) == off::GFEATURES
    );
    assert!(off::TABLE + offset_of!(RawTable, vdev) + offset_of!(RawVdev, status) == off::STATUS);
    assert!(off::TABLE + offset_of!(RawTable, vdev) + offset_of!(RawVdev, vring) == off::VRING);
    assert!(size_of::<RawVring>() == off::VRING_SIZE);
    assert!(size_of::<RawTable>() == TABLE_LEN);
    assert!(size_of::<RawBlock>() == BLOCK_SIZE);
};

/// What the device offers ([`Rproc::create`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VdevInfo {
    /// Virtio device id.
    pub device_id: u32,
    /// Offered feature bits (remoteproc carries 32).
    pub features: u32,
    /// Entries per vring.
    pub queue_size: u32,
}

/// The device's view of a ZHRT block.
#[derive(Clone, Debug)]
pub struct Rproc<M: Mem> {
    mem: M,
    info: VdevInfo,
}

impl<M: Mem> Rproc<M> {
    /// Writes a fresh block offering `info` into `mem` (at least [`BLOCK_SIZE`] bytes,
    /// 8-byte aligned), with `magic` last.
    pub fn create(mem: M, info: VdevInfo) -> Result<Self, MemError> {
        if mem.size() < BLOCK_SIZE {
            return Err(MemError::OutOfBounds {
                offset: 0,
                len: BLOCK_SIZE,
                size: mem.size(),
            });
        }
        let r = Rproc { mem, info };
        let m = &r.mem;
        m.store_u32(off::MAGIC, 0, Ordering::Relaxed)?;
        m.write_bytes(4, &[0u8; off::TABLE - 4])?;
        m.store_u16(off::MAJOR, VERSION_MAJOR, Ordering::Relaxed)?;
        m.store_u16(off::MINOR, VERSION_MINOR, Ordering::Relaxed)?;
        m.store_u32(off::TABLE_OFF, off::TABLE as u32, Ordering::Relaxed)?;
        m.store_u32(off::TABLE_LEN, TABLE_LEN as u32, Ordering::Relaxed)?;
        r.write_table()?;
        // Release: pairs with the guest driver's read of magic at probe (it reads the
        // fields above after it).
        m.store_u32(off::MAGIC, MAGIC, Ordering::Release)?;
        Ok(r)
    }

    /// Writes the whole resource table as the device offers it: what Linux writes
    /// (notify ids, gfeatures, status, vring addresses) back at its initial values.
    fn write_table(&self) -> Result<(), MemError> {
        let (m, t) = (&self.mem, off::TABLE);
        // Relaxed, all: published by the Release store that follows (magic or
        // reset_ack).
        m.write_bytes(t, &[0u8; TABLE_LEN])?;
        m.store_u32(t, 1, Ordering::Relaxed)?; // ver
        m.store_u32(t + 4, 1, Ordering::Relaxed)?; // num
        m.store_u32(t + 16, VDEV_ENTRY as u32, Ordering::Relaxed)?; // offset[0]
        m.store_u32(t + VDEV_ENTRY, RSC_VDEV, Ordering::Relaxed)?;
        m.store_u32(off::ID, self.info.device_id, Ordering::Relaxed)?;
        m.store_u32(off::DFEATURES, self.info.features, Ordering::Relaxed)?;
        // status 0, num_of_vrings.
        m.store_u32(off::STATUS, (VRINGS as u32) << 8, Ordering::Relaxed)?;
        for i in 0..VRINGS {
            let v = off::VRING + i * off::VRING_SIZE;
            m.store_u32(v, FW_RSC_ADDR_ANY, Ordering::Relaxed)?;
            m.store_u32(v + 4, VRING_ALIGN, Ordering::Relaxed)?;
            m.store_u32(v + 8, self.info.queue_size, Ordering::Relaxed)?;
        }
        Ok(())
    }
}

impl<M: Mem + core::fmt::Debug> GuestRegs for Rproc<M> {
    type M = M;

    fn mem(&self) -> &M {
        &self.mem
    }

    fn handshake(&self) -> &'static Handshake {
        &HANDSHAKE
    }

    /// Rewrites the table as [`Rproc::create`] wrote it, whatever the guest scribbled
    /// into it: the next attach must find vring `da` = [`FW_RSC_ADDR_ANY`] (Linux
    /// refuses an address it did not choose).
    fn before_ack(&self) -> Result<(), MemError> {
        self.write_table()
    }

    /// The guest's device status byte (Acquire: pairs with the order of Linux's
    /// stores before it, see the module docs).
    fn status(&self) -> Result<u32, MemError> {
        Ok(self.mem.load_u32(off::STATUS, Ordering::Acquire)? & 0xff)
    }

    /// The feature bits Linux accepted (`gfeatures`; read after [`status`](Self::status)).
    fn driver_features(&self) -> Result<u64, MemError> {
        // Relaxed: ordered by the Acquire load of status before it.
        Ok(self.mem.load_u32(off::GFEATURES, Ordering::Relaxed)?.into())
    }

    /// Vring `i` as queue registers (all zero for `i >= VRINGS`): `ready` once Linux
    /// wrote its address; the avail and used addresses follow from `da`, `num` and
    /// `align` as Linux's `vring_init` computes them (an `align` that is not a power
    /// of two gives used = 0, which no layout accepts).
    fn queue(&self, i: usize) -> Result<QueueRegs, MemError> {
        if i >= VRINGS {
            return Ok(QueueRegs::default());
        }
        let v = off::VRING + i * off::VRING_SIZE;
        let m = &self.mem;
        // Relaxed, all: ordered by the Acquire load of status (module docs).
        let da = m.load_u32(v, Ordering::Relaxed)?;
        let align = u64::from(m.load_u32(v + 4, Ordering::Relaxed)?);
        let num = m.load_u32(v + 8, Ordering::Relaxed)?;
        let desc = u64::from(da);
        let avail = desc + 16 * u64::from(num);
        // flags, idx, ring[num], used_event: 2 * (3 + num) bytes.
        let avail_end = avail + 2 * (3 + u64::from(num));
        let used = if align.is_power_of_two() {
            avail_end.next_multiple_of(align)
        } else {
            0
        };
        Ok(QueueRegs {
            desc,
            avail,
            used,
            num,
            ready: da != FW_RSC_ADDR_ANY,
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::split::SplitLayout;
    use crate::Region;

    fn fresh() -> (Region, Rproc<Region>) {
        let m = Region::heap(BLOCK_SIZE);
        m.write_bytes(0, &[0xaa; BLOCK_SIZE]).unwrap();
        let info = VdevInfo {
            device_id: 7,
            features: (1 << 29) | 1,
            queue_size: 256,
        };
        let r = Rproc::create(m.clone(), info).unwrap();
        (m, r)
    }

    /// The block byte for byte, as `struct resource_table` / `fw_rsc_vdev` /
    /// `fw_rsc_vdev_vring` (include/linux/remoteproc.h) lay it out.
    #[test]
    fn golden_bytes_of_a_fresh_block() {
        let (m, r) = fresh();
        let mut b = [0u8; BLOCK_SIZE];
        m.read_bytes(0, &mut b).unwrap();
        let mut want = [0u8; BLOCK_SIZE];
        want[..4].copy_from_slice(b"ZHRT");
        want[4] = 1; // major
        want[8] = 64; // table_off
        want[12] = 92; // table_len
        want[64] = 1; // resource_table.ver
        want[68] = 1; // num
        want[80] = 24; // offset[0]
        want[88] = 3; // fw_rsc_hdr.type = RSC_VDEV
        want[92] = 7; // fw_rsc_vdev.id = VIRTIO_ID_RPMSG
        want[100..104].copy_from_slice(&[1, 0, 0, 0x20]); // dfeatures
        want[113] = 2; // num_of_vrings
        for v in [116, 136] {
            want[v..v + 4].copy_from_slice(&[0xff; 4]); // da = FW_RSC_ADDR_ANY
            want[v + 4] = 4; // align
            want[v + 8..v + 12].copy_from_slice(&[0, 1, 0, 0]); // num = 256
        }
        assert_eq!(b, want);
        assert_eq!(r.status().unwrap(), 0);
        assert_eq!(r.pending_reset().unwrap(), None);
        assert!(!r.queue(0).unwrap().ready);
        let info = VdevInfo {
            device_id: 7,
            features: 0,
            queue_size: 2,
        };
        assert!(Rproc::create(Region::heap(BLOCK_SIZE - 1), info).is_err());
    }

    #[test]
    fn reads_what_linux_wrote_and_resets_the_table() {
        let (m, r) = fresh();
        // What remoteproc writes: notify ids, vring 1 at 0x10_0000, gfeatures, status.
        m.store_u32(off::NOTIFYID, 2, Ordering::Relaxed).unwrap();
        m.store_u32(off::VRING + off::VRING_SIZE, 0x10_0000, Ordering::Relaxed)
            .unwrap();
        m.store_u32(off::GFEATURES, 1 << 29, Ordering::Relaxed)
            .unwrap();
        m.write_bytes(off::STATUS, &[0xf]).unwrap();
        assert_eq!(r.status().unwrap(), 0xf);
        assert_eq!(r.driver_features().unwrap(), 1 << 29);
        assert!(!r.queue(0).unwrap().ready);
        let l = SplitLayout::new(256).unwrap();
        assert_eq!(
            r.queue(1).unwrap(),
            QueueRegs {
                desc: 0x10_0000,
                avail: 0x10_0000 + l.avail_offset() as u64,
                used: 0x10_0000 + l.used_offset() as u64,
                num: 256,
                ready: true
            }
        );
        assert_eq!(r.queue(VRINGS).unwrap(), QueueRegs::default());
        // A hostile align: no used ring any layout accepts.
        m.store_u32(off::VRING + off::VRING_SIZE + 4, 3, Ordering::Relaxed)
            .unwrap();
        assert_eq!(r.queue(1).unwrap().used, 0);
        let mut before = [0u8; BLOCK_SIZE];
        m.read_bytes(0, &mut before).unwrap();

        m.store_u32(off::RESET_SEQ, 5, Ordering::Relaxed).unwrap();
        assert_eq!(r.pending_reset().unwrap(), Some(5));
        r.ack_reset(5).unwrap();
        assert_eq!(r.pending_reset().unwrap(), None);
        assert_eq!(r.status().unwrap(), 0);
        assert_eq!(r.driver_features().unwrap(), 0);
        assert!(!r.queue(1).unwrap().ready);
        // The whole table is back as created, the hostile align included.
        let mut after = [0u8; BLOCK_SIZE];
        m.read_bytes(0, &mut after).unwrap();
        let (_, fresh) = fresh();
        let mut want = [0u8; BLOCK_SIZE];
        fresh.mem.read_bytes(0, &mut want).unwrap();
        assert_eq!(after[off::TABLE..], want[off::TABLE..]);
        assert_ne!(before[off::TABLE..], want[off::TABLE..]);
        r.beat().unwrap();
        assert_eq!(m.load_u32(off::HEARTBEAT, Ordering::Relaxed).unwrap(), 1);
    }
}
