//! Split virtqueue targets: the device half against a hostile driver
//! ([`run_device`]) and the driver half against a hostile device ([`run_driver`]).

use std::collections::HashMap;

use crate::chain::BufDesc;
use crate::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_IN_ORDER};
use crate::fuzzing::{check_broken, decode, snapshot};
use crate::mem::{Mem, Region};
use crate::split::layout::Desc;
use crate::split::{SplitDevice, SplitDriver, SplitLayout};
use crate::sync::Ordering;

/// Bytes of the data area the descriptors point into.
pub const DATA_LEN: usize = 4096;

crate::fuzz_config! {
    /// Queue geometry and negotiated features of one run.
    pub struct Config {
        /// Queue size `1 << (qsize_log % 6)`.
        qsize_log: u8,
        /// Bit 0: INDIRECT_DESC, bit 1: EVENT_IDX, bit 2: IN_ORDER.
        features: u8,
        /// Length of the caller's buffer slice for pop: `1 + bufs % 24`.
        bufs: u8,
    }
}

impl Config {
    fn layout(&self) -> SplitLayout {
        SplitLayout::new(1 << (self.qsize_log % 6)).expect("power of two <= 32")
    }
    fn features(&self) -> u64 {
        let mut f = 0;
        if self.features & 1 != 0 {
            f |= VIRTIO_F_INDIRECT_DESC;
        }
        if self.features & 2 != 0 {
            f |= VIRTIO_F_EVENT_IDX;
        }
        if self.features & 4 != 0 {
            f |= VIRTIO_F_IN_ORDER;
        }
        f
    }
}

crate::fuzz_ops! {
    /// Operations on a split device half; the `Peer*` ones are the hostile driver.
    pub enum DeviceOp {
        /// Driver writes descriptor `i % N`.
        PeerDesc = 0 { i: u16, addr: u64, len: u32, flags: u16, next: u16 },
        /// Driver writes avail.ring[slot % N].
        PeerAvailEntry = 1 { slot: u16, head: u16 },
        /// Driver stores avail.idx.
        PeerAvailIdx = 2 { idx: u16 },
        /// Driver appends `head` at avail.idx and bumps avail.idx.
        PeerPushAvail = 3 { head: u16 },
        /// Driver writes a 16-byte descriptor into the data area at `off % DATA_LEN`
        /// (an indirect table entry; any alignment).
        PeerTableDesc = 4 { off: u16, addr: u64, len: u32, flags: u16, next: u16 },
        /// Driver writes one byte anywhere in the ring region.
        PeerPoke = 5 { off: u16, val: u8 },
        /// Driver writes avail.flags and used_event.
        PeerEvent = 6 { flags: u16, used_event: u16 },
        /// Device pops a chain.
        Pop = 7 {},
        /// Device returns the `k`-th popped chain (or id `k` if none is held).
        PushUsed = 8 { k: u8, len: u32 },
        /// Device returns a batch ending at the `k`-th popped chain (IN_ORDER).
        PushUsedBatch = 9 { k: u8, len: u32 },
        /// Device publishes used.idx.
        PublishUsed = 10 {},
        /// Device checks whether to notify.
        NeedsNotify = 11 {},
        /// Device asks for (or stops asking for) notifications.
        SetAvailNotification = 12 { enable: bool },
        /// Device reset (the driver re-initialises the ring: zeroed here).
        Reset = 13 {},
    }
}

/// Runs one input against [`SplitDevice`].
pub fn run_device(data: &[u8]) {
    let (cfg, ops) = decode::<Config, DeviceOp>(data);
    let layout = cfg.layout();
    let n = layout.queue_size();
    let ring = Region::heap(layout.size());
    let mem = Region::heap(DATA_LEN);
    let mut dev =
        SplitDevice::new(ring.clone(), layout, mem.clone(), cfg.features()).expect("fits");
    let mut bufs = vec![BufDesc::default(); 1 + usize::from(cfg.bufs % 24)];
    let mut popped: Vec<u16> = Vec::new();
    // The driver-owned part (descriptors, avail ring) the device must never write.
    let drv_part = layout.used_offset();
    for op in ops {
        let before = snapshot(&ring, 0, drv_part);
        let was_broken = dev.is_broken();
        let mut device_op = true;
        match op {
            DeviceOp::PeerDesc {
                i,
                addr,
                len,
                flags,
                next,
            } => {
                device_op = false;
                let d = Desc::new(addr, len, flags, next);
                ring.write_obj(layout.desc(i % n), &d).expect("in ring");
            }
            DeviceOp::PeerAvailEntry { slot, head } => {
                device_op = false;
                ring.store_u16(layout.avail_ring(slot % n), head, Ordering::Relaxed)
                    .expect("in ring");
            }
            DeviceOp::PeerAvailIdx { idx } => {
                device_op = false;
                ring.store_u16(layout.avail_idx(), idx, Ordering::Release)
                    .expect("in ring");
            }
            DeviceOp::PeerPushAvail { head } => {
                device_op = false;
                let idx = ring
                    .load_u16(layout.avail_idx(), Ordering::Relaxed)
                    .expect("in ring");
                ring.store_u16(layout.avail_ring(idx % n), head, Ordering::Relaxed)
                    .expect("in ring");
                ring.store_u16(layout.avail_idx(), idx.wrapping_add(1), Ordering::Release)
                    .expect("in ring");
            }
            DeviceOp::PeerTableDesc {
                off,
                addr,
                len,
                flags,
                next,
            } => {
                device_op = false;
                let off = usize::from(off) % (DATA_LEN - 15);
                let d = Desc::new(addr, len, flags, next);
                mem.write_bytes(off, bytemuck::bytes_of(&d))
                    .expect("in data area");
            }
            DeviceOp::PeerPoke { off, val } => {
                device_op = false;
                let off = usize::from(off) % layout.size();
                ring.write_bytes(off, &[val]).expect("in ring");
            }
            DeviceOp::PeerEvent { flags, used_event } => {
                device_op = false;
                ring.store_u16(layout.avail_flags(), flags, Ordering::Relaxed)
                    .expect("in ring");
                ring.store_u16(layout.used_event(), used_event, Ordering::Relaxed)
                    .expect("in ring");
            }
            DeviceOp::Pop {} => {
                let r = dev.pop(&mut bufs);
                check_broken(was_broken, &r, dev.is_broken());
                if let Ok(Some(c)) = r {
                    check_chain(&c, &bufs, n, DATA_LEN);
                    popped.push(c.id);
                    crate::fuzzing::progress();
                }
            }
            DeviceOp::PushUsed { k, len } => {
                let id = pick(&mut popped, k);
                let _ = dev.push_used(id, len);
            }
            DeviceOp::PushUsedBatch { k, len } => {
                let id = pick(&mut popped, k);
                let _ = dev.push_used_batch(id, len);
            }
            DeviceOp::PublishUsed {} => {
                let _ = dev.publish_used();
            }
            DeviceOp::NeedsNotify {} => {
                let _ = dev.needs_notify();
            }
            DeviceOp::SetAvailNotification { enable } => {
                let _ = dev.set_avail_notification(enable);
            }
            DeviceOp::Reset {} => {
                device_op = false;
                zero(&ring);
                dev.reset();
                popped.clear();
                assert!(!dev.is_broken());
            }
        }
        if device_op {
            assert_eq!(
                before,
                snapshot(&ring, 0, drv_part),
                "the device wrote the driver's part of the ring"
            );
        }
    }
}

/// The `k`-th held id (removed), or `k` itself when none is held.
fn pick(held: &mut Vec<u16>, k: u8) -> u16 {
    if held.is_empty() {
        return u16::from(k);
    }
    let i = usize::from(k) % held.len();
    held.remove(i)
}

fn zero(r: &Region) {
    r.write_bytes(0, &vec![0u8; r.len()]).expect("whole region");
}

/// A popped chain: its buffers are inside the data area, readable ones first, the
/// totals add up and the id names a descriptor.
pub(crate) fn check_chain(c: &crate::ChainInfo, bufs: &[BufDesc], n: u16, data_len: usize) {
    assert!(c.id < n, "chain id {} >= N {n}", c.id);
    assert!(
        c.count >= 1 && c.count <= bufs.len(),
        "chain of {} buffers",
        c.count
    );
    let (mut rd, mut wr, mut seen_w) = (0u64, 0u64, false);
    for b in &bufs[..c.count] {
        let end = b.addr.checked_add(u64::from(b.len)).expect("no overflow");
        assert!(end <= data_len as u64, "buffer {b:?} outside the data area");
        if b.writable {
            seen_w = true;
            wr += u64::from(b.len);
        } else {
            assert!(!seen_w, "readable buffer after a writable one");
            rd += u64::from(b.len);
        }
    }
    assert_eq!((rd, wr), (c.readable_len, c.writable_len), "chain totals");
}

crate::fuzz_ops! {
    /// Operations on a split driver half; the `Peer*` ones are the hostile device.
    pub enum DriverOp {
        /// Driver adds a chain of `1 + n % 4` buffers, the last `w % (n + 1)` writable.
        Add = 0 { n: u8, w: u8, addr: u16, len: u16 },
        /// Driver adds an indirect chain, table at `table`.
        AddIndirect = 1 { n: u8, w: u8, addr: u16, len: u16, table: u16 },
        /// Driver publishes avail.idx.
        Publish = 2 {},
        /// Driver checks whether to notify.
        NeedsNotify = 3 {},
        /// Driver asks for (or stops asking for) used notifications.
        SetUsedNotification = 4 { enable: bool },
        /// Driver polls one used chain.
        PollUsed = 5 {},
        /// Driver reset.
        Reset = 6 {},
        /// Device writes used.ring[slot % N].
        PeerUsedElem = 7 { slot: u16, id: u32, len: u32 },
        /// Device stores used.idx.
        PeerUsedIdx = 8 { idx: u16 },
        /// Device appends {id, len} at used.idx and bumps used.idx.
        PeerPushUsed = 9 { id: u32, len: u32 },
        /// Device returns the `k`-th chain in flight (a well-behaved completion).
        PeerComplete = 10 { k: u8, len: u32 },
        /// Device writes one byte anywhere in the ring region.
        PeerPoke = 11 { off: u16, val: u8 },
        /// Device writes used.flags and avail_event.
        PeerEvent = 12 { flags: u16, avail_event: u16 },
    }
}

/// Runs one input against [`SplitDriver`].
pub fn run_driver(data: &[u8]) {
    let (cfg, ops) = decode::<Config, DriverOp>(data);
    let layout = cfg.layout();
    let n = layout.queue_size();
    let ring = Region::heap(layout.size());
    let mem = Region::heap(DATA_LEN);
    let mut drv =
        SplitDriver::new(ring.clone(), layout, mem.clone(), cfg.features()).expect("fits");
    // Model: chains in flight (head -> writable bytes), in add order.
    let mut model: HashMap<u16, u64> = HashMap::new();
    let mut order: Vec<u16> = Vec::new();
    let used_part = (layout.used_offset(), layout.size() - layout.used_offset());
    for op in ops {
        let before = snapshot(&ring, used_part.0, used_part.1);
        let was_broken = drv.is_broken();
        let mut driver_op = true;
        match op {
            DriverOp::Add { n: k, w, addr, len } => {
                let bufs = chain(k, w, addr, len);
                if let Ok(head) = drv.add(&bufs) {
                    note_add(&mut model, &mut order, head, &bufs);
                }
            }
            DriverOp::AddIndirect {
                n: k,
                w,
                addr,
                len,
                table,
            } => {
                let bufs = chain(k, w, addr, len);
                if let Ok(head) = drv.add_indirect(&bufs, u64::from(table)) {
                    note_add(&mut model, &mut order, head, &bufs);
                }
            }
            DriverOp::Publish {} => {
                let _ = drv.publish();
            }
            DriverOp::NeedsNotify {} => {
                let _ = drv.needs_notify();
            }
            DriverOp::SetUsedNotification { enable } => {
                let _ = drv.set_used_notification(enable);
            }
            DriverOp::PollUsed {} => {
                let r = drv.poll_used();
                check_broken(was_broken, &r, drv.is_broken());
                if let Ok(Some(u)) = r {
                    let Some(w) = model.remove(&u.id) else {
                        panic!("poll_used returned {u:?}, not in flight");
                    };
                    assert!(u64::from(u.len) <= w, "used len {} > writable {w}", u.len);
                    order.retain(|&h| h != u.id);
                    crate::fuzzing::progress();
                }
            }
            DriverOp::Reset {} => {
                driver_op = false;
                if drv.reset().is_ok() {
                    model.clear();
                    order.clear();
                    assert!(!drv.is_broken());
                }
            }
            DriverOp::PeerUsedElem { slot, id, len } => {
                driver_op = false;
                let off = layout.used_ring(slot % n);
                ring.store_u32(off, id, Ordering::Relaxed).expect("in ring");
                ring.store_u32(off + 4, len, Ordering::Relaxed)
                    .expect("in ring");
            }
            DriverOp::PeerUsedIdx { idx } => {
                driver_op = false;
                ring.store_u16(layout.used_idx(), idx, Ordering::Release)
                    .expect("in ring");
            }
            DriverOp::PeerPushUsed { id, len } => {
                driver_op = false;
                peer_push_used(&ring, &layout, id, len);
            }
            DriverOp::PeerComplete { k, len } => {
                driver_op = false;
                if !order.is_empty() {
                    let head = order[usize::from(k) % order.len()];
                    let w = model.get(&head).copied().unwrap_or(0);
                    let len = if w == 0 { 0 } else { len % (w as u32 + 1) };
                    peer_push_used(&ring, &layout, u32::from(head), len);
                }
            }
            DriverOp::PeerPoke { off, val } => {
                driver_op = false;
                let off = usize::from(off) % layout.size();
                ring.write_bytes(off, &[val]).expect("in ring");
            }
            DriverOp::PeerEvent { flags, avail_event } => {
                driver_op = false;
                ring.store_u16(layout.used_flags(), flags, Ordering::Relaxed)
                    .expect("in ring");
                ring.store_u16(layout.avail_event(), avail_event, Ordering::Relaxed)
                    .expect("in ring");
            }
        }
        if !drv.is_broken() {
            assert_eq!(usize::from(drv.in_flight()), model.len(), "in-flight count");
        }
        if driver_op {
            assert_eq!(
                before,
                snapshot(&ring, used_part.0, used_part.1),
                "the driver wrote the device's part of the ring"
            );
        }
    }
}

fn peer_push_used(ring: &Region, layout: &SplitLayout, id: u32, len: u32) {
    let idx = ring
        .load_u16(layout.used_idx(), Ordering::Relaxed)
        .expect("in ring");
    let off = layout.used_ring(idx % layout.queue_size());
    ring.store_u32(off, id, Ordering::Relaxed).expect("in ring");
    ring.store_u32(off + 4, len, Ordering::Relaxed)
        .expect("in ring");
    ring.store_u16(layout.used_idx(), idx.wrapping_add(1), Ordering::Release)
        .expect("in ring");
}

/// A chain of `1 + k % 4` buffers of `len % 512` bytes from `addr % DATA_LEN` on, the
/// last `w % (n + 1)` writable (lengths clipped so most stay in range).
pub(crate) fn chain(k: u8, w: u8, addr: u16, len: u16) -> Vec<BufDesc> {
    let n = 1 + usize::from(k % 4);
    let nw = usize::from(w) % (n + 1);
    let len = u32::from(len % 512);
    (0..n)
        .map(|i| {
            let a = (u64::from(addr) + i as u64 * u64::from(len)) % DATA_LEN as u64;
            if i >= n - nw {
                BufDesc::writable(a, len)
            } else {
                BufDesc::readable(a, len)
            }
        })
        .collect()
}

fn note_add(model: &mut HashMap<u16, u64>, order: &mut Vec<u16>, head: u16, bufs: &[BufDesc]) {
    let w = bufs
        .iter()
        .filter(|b| b.writable)
        .map(|b| u64::from(b.len))
        .sum();
    assert!(
        model.insert(head, w).is_none(),
        "head {head} handed out twice"
    );
    order.push(head);
}
