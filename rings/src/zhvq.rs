//! The ZHVQ block: a virtio transport whose registers are plain shared memory, so a
//! Linux guest's own virtio drivers (virtio_rpmsg_bus above all) can drive a zerohop
//! poll-mode device with no device model in the hypervisor.
//!
//! The block sits at offset 0 of a small window the guest sees as a PCI BAR (QEMU's
//! `ivshmem-plain`, BAR 2); the guest's `zh_virtio` driver (rpmsg-fast/linux) binds to
//! it. The virtqueues and buffers are ordinary guest RAM: the guest writes their
//! guest-physical addresses here, and the device maps the guest's RAM whole (QEMU: a
//! shared `memory-backend-file`), as a vhost-user backend does. Nobody notifies: the
//! device polls the avail rings, the guest a kernel thread polls the used rings.
//!
//! ```text
//! offset  field            written by   meaning
//!   0     magic u32        device       "ZHVQ" (0x5156485a), stored last at init
//!   4     major u16        device       1 (a driver of another major refuses)
//!   6     minor u16        device       0
//!   8     device_id u32    device       virtio device id (7 = rpmsg)
//!  12     num_queues u32   device       virtqueues the device serves
//!  16     device_feat u64  device       offered feature bits
//!  24     driver_feat u64  guest        accepted bits (before FEATURES_OK)
//!  32     status u32       guest        virtio device status (low byte)
//!  36     queue_size u32   device       entries per virtqueue (the guest uses exactly this)
//!  40     reset_seq u32    guest        bumped by every reset, before status = 0
//!  44     reset_ack u32    device       = reset_seq once the device let go of the rings
//!  48     heartbeat u32    device       bumped while the device runs
//!  52     kicks u32        guest        notifications the guest would have sent
//!  56     reserved u64
//!  64     queues[8]        guest        {desc u64, avail u64, used u64, num u32,
//!                                        ready u32}: guest-physical addresses; ready last
//! ```
//!
//! Ordering: the device's init stores are Release-ordered before `magic`; the guest
//! writes features and queue registers, then `wmb()`, then status / `ready`, and the
//! device reads those with Acquire before reading what they publish. A reset is a
//! handshake because the guest frees the rings afterwards: it bumps `reset_seq`,
//! writes status 0 and waits for `reset_ack` (the device's Release store, made after
//! it dropped every view of the rings).
//!
//! Everything the guest writes is untrusted: [`Zhvq::queue`] only copies the
//! registers out; whoever maps the addresses checks them.

use crate::mem::Mem;
use crate::sync::Ordering;
use crate::MemError;

/// `magic`: "ZHVQ" as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"ZHVQ");
/// Major version this build speaks.
pub const VERSION_MAJOR: u16 = 1;
/// Minor version this build writes.
pub const VERSION_MINOR: u16 = 0;
/// Queue register sets in the block.
pub const MAX_QUEUES: usize = 8;
/// Bytes of the block.
pub const BLOCK_SIZE: usize = 320;

/// Virtio device status bits (virtio 1.x 2.1), as the control block names them.
pub use crate::control::status;

/// Field offsets (see the module table).
pub mod off {
    /// `magic`.
    pub const MAGIC: usize = 0;
    /// `major`.
    pub const MAJOR: usize = 4;
    /// `minor`.
    pub const MINOR: usize = 6;
    /// `device_id`.
    pub const DEVICE_ID: usize = 8;
    /// `num_queues`.
    pub const NUM_QUEUES: usize = 12;
    /// `device_features`.
    pub const DEVICE_FEATURES: usize = 16;
    /// `driver_features`.
    pub const DRIVER_FEATURES: usize = 24;
    /// `status`.
    pub const STATUS: usize = 32;
    /// `queue_size`.
    pub const QUEUE_SIZE: usize = 36;
    /// `reset_seq`.
    pub const RESET_SEQ: usize = 40;
    /// `reset_ack`.
    pub const RESET_ACK: usize = 44;
    /// `heartbeat`.
    pub const HEARTBEAT: usize = 48;
    /// `kicks`.
    pub const KICKS: usize = 52;
    /// `queues[0]`.
    pub const QUEUES: usize = 64;
}

/// The block as a struct, to pin the offsets above at compile time.
#[repr(C)]
struct RawBlock {
    magic: u32,
    major: u16,
    minor: u16,
    device_id: u32,
    num_queues: u32,
    device_features: u64,
    driver_features: u64,
    status: u32,
    queue_size: u32,
    reset_seq: u32,
    reset_ack: u32,
    heartbeat: u32,
    kicks: u32,
    reserved: u64,
    queues: [RawQueue; MAX_QUEUES],
}

#[repr(C)]
struct RawQueue {
    desc: u64,
    avail: u64,
    used: u64,
    num: u32,
    ready: u32,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(RawBlock, magic) == off::MAGIC);
    assert!(offset_of!(RawBlock, major) == off::MAJOR);
    assert!(offset_of!(RawBlock, minor) == off::MINOR);
    assert!(offset_of!(RawBlock, device_id) == off::DEVICE_ID);
    assert!(offset_of!(RawBlock, num_queues) == off::NUM_QUEUES);
    assert!(offset_of!(RawBlock, device_features) == off::DEVICE_FEATURES);
    assert!(offset_of!(RawBlock, driver_features) == off::DRIVER_FEATURES);
    assert!(offset_of!(RawBlock, status) == off::STATUS);
    assert!(offset_of!(RawBlock, queue_size) == off::QUEUE_SIZE);
    assert!(offset_of!(RawBlock, reset_seq) == off::RESET_SEQ);
    assert!(offset_of!(RawBlock, reset_ack) == off::RESET_ACK);
    assert!(offset_of!(RawBlock, heartbeat) == off::HEARTBEAT);
    assert!(offset_of!(RawBlock, kicks) == off::KICKS);
    assert!(offset_of!(RawBlock, queues) == off::QUEUES);
    assert!(size_of::<RawQueue>() == QUEUE_REGS);
    assert!(offset_of!(RawQueue, avail) == 8);
    assert!(offset_of!(RawQueue, used) == 16);
    assert!(offset_of!(RawQueue, num) == 24);
    assert!(offset_of!(RawQueue, ready) == 28);
    assert!(size_of::<RawBlock>() == BLOCK_SIZE);
};

/// Bytes of one queue's registers.
const QUEUE_REGS: usize = 32;

/// What the device reads and writes in a register block a Linux guest's transport
/// driver shares with it: [`Zhvq`] here, [`crate::rproc::Rproc`] (a remoteproc
/// resource table). The guest's values come back unvalidated; the reset handshake
/// and the counters are the same words in both.
pub trait GuestRegs: core::fmt::Debug {
    /// The block's memory.
    type M: Mem;

    /// The block's memory.
    fn mem(&self) -> &Self::M;

    /// Where the block keeps the handshake words.
    fn handshake(&self) -> &'static Handshake;

    /// The guest's virtio device status (Acquire: pairs with the guest's store of it,
    /// made after what it publishes: features and queue registers).
    fn status(&self) -> Result<u32, MemError>;

    /// The feature bits the guest accepted (read after [`status`](Self::status)).
    fn driver_features(&self) -> Result<u64, MemError>;

    /// Queue `i`'s registers (all zero for a queue the block does not have).
    fn queue(&self, i: usize) -> Result<QueueRegs, MemError>;

    /// Called by [`ack_reset`](Self::ack_reset) before the acknowledgement: puts the
    /// block's guest-written part back as the device first wrote it, where that
    /// matters (a resource table).
    fn before_ack(&self) -> Result<(), MemError> {
        Ok(())
    }

    /// A reset the device has not acknowledged yet: `Some(reset_seq)`.
    fn pending_reset(&self) -> Result<Option<u32>, MemError> {
        let (m, h) = (self.mem(), self.handshake());
        // Acquire: pairs with the guest's wmb() before its reset_seq store.
        let seq = m.load_u32(h.reset_seq, Ordering::Acquire)?;
        // Relaxed: our own field.
        let ack = m.load_u32(h.reset_ack, Ordering::Relaxed)?;
        Ok((seq != ack).then_some(seq))
    }

    /// Acknowledges reset `seq`: the device no longer touches the guest's rings.
    fn ack_reset(&self, seq: u32) -> Result<(), MemError> {
        self.before_ack()?;
        // Release: every access to the rings (and before_ack's rewrite) happens-before
        // the guest frees the rings (its loop on reset_ack, then a barrier).
        self.mem()
            .store_u32(self.handshake().reset_ack, seq, Ordering::Release)
    }

    /// Bumps the heartbeat.
    fn beat(&self) -> Result<(), MemError> {
        let (m, at) = (self.mem(), self.handshake().heartbeat);
        // Relaxed: a liveness counter, nothing is published with it.
        let v = m.load_u32(at, Ordering::Relaxed)?;
        m.store_u32(at, v.wrapping_add(1), Ordering::Relaxed)
    }

    /// Notifications the guest counted.
    fn kicks(&self) -> Result<u32, MemError> {
        // Relaxed: statistics.
        self.mem()
            .load_u32(self.handshake().kicks, Ordering::Relaxed)
    }
}

/// Where a block keeps the words of the reset handshake and the liveness counters.
#[derive(Debug)]
pub struct Handshake {
    /// Guest: bumped by every reset.
    pub reset_seq: usize,
    /// Device: = `reset_seq` once it let go of the rings.
    pub reset_ack: usize,
    /// Device: bumped while it runs.
    pub heartbeat: usize,
    /// Guest: notifications it would have sent.
    pub kicks: usize,
}

const HANDSHAKE: Handshake = Handshake {
    reset_seq: off::RESET_SEQ,
    reset_ack: off::RESET_ACK,
    heartbeat: off::HEARTBEAT,
    kicks: off::KICKS,
};

/// What the device offers ([`Zhvq::init`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Virtio device id.
    pub device_id: u32,
    /// Virtqueues served (at most [`MAX_QUEUES`]).
    pub num_queues: u32,
    /// Entries per virtqueue.
    pub queue_size: u32,
    /// Offered feature bits.
    pub features: u64,
}

/// One queue's registers as the guest wrote them (unvalidated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRegs {
    /// Guest-physical address of the descriptor table.
    pub desc: u64,
    /// Guest-physical address of the avail ring.
    pub avail: u64,
    /// Guest-physical address of the used ring.
    pub used: u64,
    /// Entries.
    pub num: u32,
    /// Non-zero once the guest set the queue up.
    pub ready: bool,
}

/// The device's view of a ZHVQ block.
#[derive(Clone, Debug)]
pub struct Zhvq<M: Mem> {
    mem: M,
}

impl<M: Mem> Zhvq<M> {
    /// Wraps `mem` (at least [`BLOCK_SIZE`] bytes, 8-byte aligned).
    pub fn new(mem: M) -> Result<Self, MemError> {
        if mem.size() < BLOCK_SIZE {
            return Err(MemError::OutOfBounds {
                offset: 0,
                len: BLOCK_SIZE,
                size: mem.size(),
            });
        }
        Ok(Zhvq { mem })
    }

    /// Writes a fresh block offering `info` (every guest-written field zeroed), with
    /// `magic` last.
    pub fn init(&self, info: &DeviceInfo) -> Result<(), MemError> {
        let m = &self.mem;
        m.store_u32(off::MAGIC, 0, Ordering::Relaxed)?;
        m.write_bytes(4, &[0u8; BLOCK_SIZE - 4])?;
        m.store_u16(off::MAJOR, VERSION_MAJOR, Ordering::Relaxed)?;
        m.store_u16(off::MINOR, VERSION_MINOR, Ordering::Relaxed)?;
        m.store_u32(off::DEVICE_ID, info.device_id, Ordering::Relaxed)?;
        m.store_u32(off::NUM_QUEUES, info.num_queues, Ordering::Relaxed)?;
        m.store_u64(off::DEVICE_FEATURES, info.features, Ordering::Relaxed)?;
        m.store_u32(off::QUEUE_SIZE, info.queue_size, Ordering::Relaxed)?;
        // Release: pairs with the guest driver's read of magic at probe (it reads the
        // fields above after it).
        m.store_u32(off::MAGIC, MAGIC, Ordering::Release)
    }
}

impl<M: Mem + core::fmt::Debug> GuestRegs for Zhvq<M> {
    type M = M;

    fn mem(&self) -> &M {
        &self.mem
    }

    fn handshake(&self) -> &'static Handshake {
        &HANDSHAKE
    }

    /// The guest's device status (Acquire: pairs with the guest's `wmb(); status =`,
    /// so what the status publishes, features and queue registers, reads complete).
    fn status(&self) -> Result<u32, MemError> {
        self.mem.load_u32(off::STATUS, Ordering::Acquire)
    }

    /// The feature bits the guest accepted (read after [`status`](Self::status)).
    fn driver_features(&self) -> Result<u64, MemError> {
        // Relaxed: ordered by the Acquire load of status before it.
        self.mem.load_u64(off::DRIVER_FEATURES, Ordering::Relaxed)
    }

    /// Queue `i`'s registers (all zero for `i >= MAX_QUEUES`).
    fn queue(&self, i: usize) -> Result<QueueRegs, MemError> {
        if i >= MAX_QUEUES {
            return Ok(QueueRegs::default());
        }
        let base = off::QUEUES + i * QUEUE_REGS;
        let m = &self.mem;
        // Acquire: pairs with the guest's wmb() before `ready = 1`; the addresses
        // below are read after it.
        let ready = m.load_u32(base + 28, Ordering::Acquire)? != 0;
        Ok(QueueRegs {
            // Relaxed: ordered by the Acquire load of ready.
            desc: m.load_u64(base, Ordering::Relaxed)?,
            avail: m.load_u64(base + 8, Ordering::Relaxed)?,
            used: m.load_u64(base + 16, Ordering::Relaxed)?,
            num: m.load_u32(base + 24, Ordering::Relaxed)?,
            ready,
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::Region;

    /// Writes what the guest driver writes, at the offsets rpmsg-fast/linux/zh_virtio.c
    /// uses (its static_asserts pin the same numbers).
    fn guest_sets_up(m: &Region) {
        m.store_u64(off::DRIVER_FEATURES, 0x1_2000_0001, Ordering::Relaxed)
            .unwrap();
        let q1 = off::QUEUES + QUEUE_REGS;
        m.store_u64(q1, 0x10_0000, Ordering::Relaxed).unwrap();
        m.store_u64(q1 + 8, 0x10_1000, Ordering::Relaxed).unwrap();
        m.store_u64(q1 + 16, 0x10_1204, Ordering::Relaxed).unwrap();
        m.store_u32(q1 + 24, 256, Ordering::Relaxed).unwrap();
        m.store_u32(q1 + 28, 1, Ordering::Relaxed).unwrap();
        m.store_u32(off::STATUS, 0xf, Ordering::Relaxed).unwrap();
    }

    #[test]
    fn golden_bytes_of_a_fresh_block() {
        let m = Region::heap(BLOCK_SIZE);
        m.write_bytes(0, &[0xaa; BLOCK_SIZE]).unwrap();
        let z = Zhvq::new(m.clone()).unwrap();
        z.init(&DeviceInfo {
            device_id: 7,
            num_queues: 2,
            queue_size: 256,
            features: (1 << 32) | (1 << 29) | 1,
        })
        .unwrap();
        let mut b = [0u8; BLOCK_SIZE];
        m.read_bytes(0, &mut b).unwrap();
        let mut want = [0u8; BLOCK_SIZE];
        want[..4].copy_from_slice(b"ZHVQ");
        want[4..8].copy_from_slice(&[1, 0, 0, 0]);
        want[8] = 7;
        want[12] = 2;
        want[16..24].copy_from_slice(&[1, 0, 0, 0x20, 1, 0, 0, 0]);
        want[36..40].copy_from_slice(&[0, 1, 0, 0]);
        assert_eq!(b, want);
        assert_eq!(z.status().unwrap(), 0);
        assert_eq!(z.pending_reset().unwrap(), None);
    }

    #[test]
    fn reads_what_the_guest_wrote_and_acks_resets() {
        let m = Region::heap(BLOCK_SIZE);
        let z = Zhvq::new(m.clone()).unwrap();
        z.init(&DeviceInfo {
            device_id: 7,
            num_queues: 2,
            queue_size: 256,
            features: 1,
        })
        .unwrap();
        guest_sets_up(&m);
        assert_eq!(z.status().unwrap(), 0xf);
        assert_eq!(z.driver_features().unwrap(), 0x1_2000_0001);
        assert_eq!(z.queue(0).unwrap(), QueueRegs::default());
        assert_eq!(
            z.queue(1).unwrap(),
            QueueRegs {
                desc: 0x10_0000,
                avail: 0x10_1000,
                used: 0x10_1204,
                num: 256,
                ready: true
            }
        );
        assert_eq!(z.queue(MAX_QUEUES).unwrap(), QueueRegs::default());

        m.store_u32(off::RESET_SEQ, 5, Ordering::Relaxed).unwrap();
        assert_eq!(z.pending_reset().unwrap(), Some(5));
        z.ack_reset(5).unwrap();
        assert_eq!(z.pending_reset().unwrap(), None);
        z.beat().unwrap();
        assert_eq!(m.load_u32(off::HEARTBEAT, Ordering::Relaxed).unwrap(), 1);
        assert!(Zhvq::new(Region::heap(BLOCK_SIZE - 1)).is_err());
    }
}
