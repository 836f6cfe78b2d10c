//! Packed virtqueue targets: the device half against a hostile driver
//! ([`run_device`]) and the driver half against a hostile device ([`run_driver`]).

use std::collections::HashMap;

use crate::chain::BufDesc;
use crate::fuzzing::split::{chain, check_chain, Config as SplitConfig, DATA_LEN};
use crate::fuzzing::{check_broken, decode, snapshot};
use crate::mem::{Mem, Region};
use crate::packed::layout::{avail_bits, used_bits, DESC_F_WRITE};
use crate::packed::{EventMode, PackedDesc, PackedDevice, PackedDriver, PackedLayout};
use crate::sync::Ordering;

/// Same knobs as the split targets (queue size, features, pop slice length).
pub type Config = SplitConfig;

fn layout(cfg: &Config) -> PackedLayout {
    PackedLayout::new(1 << (cfg.qsize_log % 6)).expect("power of two <= 32")
}

fn features(cfg: &Config) -> u64 {
    // Same bit assignment as the split targets.
    let mut f = 0;
    if cfg.features & 1 != 0 {
        f |= crate::features::VIRTIO_F_INDIRECT_DESC;
    }
    if cfg.features & 2 != 0 {
        f |= crate::features::VIRTIO_F_EVENT_IDX;
    }
    if cfg.features & 4 != 0 {
        f |= crate::features::VIRTIO_F_IN_ORDER;
    }
    f
}

/// Flags byte of a peer-written descriptor: `sel` 0 = as given, 1 = available in
/// the peer's current lap, 2 = used in it.
fn lap_flags(flags: u16, sel: u8, wrap: bool) -> u16 {
    const BITS: u16 = (1 << 7) | (1 << 15);
    match sel % 3 {
        0 => flags,
        1 => (flags & !BITS) | avail_bits(wrap),
        _ => (flags & !BITS) | used_bits(wrap),
    }
}

crate::fuzz_ops! {
    /// Operations on a packed device half; the `Peer*` ones are the hostile driver.
    pub enum DeviceOp {
        /// Driver writes descriptor `slot % N` (flags per `sel`, see `lap_flags`).
        PeerDesc = 0 { slot: u16, addr: u64, len: u32, id: u16, flags: u16, sel: u8 },
        /// Driver makes a chain of `1 + n % 4` buffers available at its cursor
        /// (head flags last), the last `w % (n + 1)` writable, with buffer id `id`.
        PeerPushChain = 1 { n: u8, w: u8, addr: u16, len: u16, id: u16, extra: u16 },
        /// Driver writes an indirect table entry at `off % DATA_LEN`.
        PeerTableDesc = 2 { off: u16, addr: u64, len: u32, id: u16, flags: u16 },
        /// Driver writes one byte anywhere in the ring region.
        PeerPoke = 3 { off: u16, val: u8 },
        /// Driver writes its event suppression word.
        PeerEvent = 4 { word: u32 },
        /// Driver moves its own cursor (the ring itself is unchanged).
        PeerCursor = 5 { slot: u16, wrap: bool },
        /// Device pops a chain.
        Pop = 6 {},
        /// Device returns the `k`-th popped chain with `slots` (0: the chain's own).
        PushUsed = 7 { k: u8, len: u32, slots: u16 },
        /// Device publishes its used descriptors.
        PublishUsed = 8 {},
        /// Device checks whether to notify.
        NeedsNotify = 9 {},
        /// Device enables / disables available notifications.
        SetAvailNotification = 10 { enable: bool },
        /// Device asks for a descriptor event.
        SetAvailEvent = 11 { off: u16, wrap: bool },
        /// Device and driver reset (ring zeroed).
        Reset = 12 {},
    }
}

/// Runs one input against [`PackedDevice`].
pub fn run_device(data: &[u8]) {
    let (cfg, ops) = decode::<Config, DeviceOp>(data);
    let layout = layout(&cfg);
    let n = layout.queue_size();
    let ring = Region::heap(layout.size());
    let mem = Region::heap(DATA_LEN);
    let mut dev =
        PackedDevice::new(ring.clone(), layout, mem.clone(), features(&cfg)).expect("fits");
    let mut bufs = vec![BufDesc::default(); 1 + usize::from(cfg.bufs % 24)];
    let mut popped: Vec<(u16, u16)> = Vec::new();
    let (mut cur, mut wrap) = (0u16, true);
    for op in ops {
        let drv_event = snapshot(&ring, layout.driver_event(), 4);
        let was_broken = dev.is_broken();
        let mut device_op = true;
        match op {
            DeviceOp::PeerDesc {
                slot,
                addr,
                len,
                id,
                flags,
                sel,
            } => {
                device_op = false;
                let d = PackedDesc {
                    addr,
                    len,
                    id,
                    flags: lap_flags(flags, sel, wrap),
                };
                ring.write_obj(layout.desc(slot % n), &d).expect("in ring");
            }
            DeviceOp::PeerPushChain {
                n: k,
                w,
                addr,
                len,
                id,
                extra,
            } => {
                device_op = false;
                let bufs = chain(k, w, addr, len);
                let mut pos = cur;
                let mut head_flags = 0;
                for (i, b) in bufs.iter().enumerate() {
                    let last = i + 1 == bufs.len();
                    let mut f = avail_bits(wrap) | (extra & 0x7f & !DESC_F_WRITE & !1);
                    if b.writable {
                        f |= DESC_F_WRITE;
                    }
                    if !last {
                        f |= 1; // NEXT
                    }
                    let d = PackedDesc {
                        addr: b.addr,
                        len: b.len,
                        id,
                        flags: f,
                    };
                    if i == 0 {
                        head_flags = f;
                        let cur_flags = ring
                            .load_u16(layout.desc(pos) + 14, Ordering::Relaxed)
                            .expect("in ring");
                        ring.write_obj(
                            layout.desc(pos),
                            &PackedDesc {
                                flags: cur_flags,
                                ..d
                            },
                        )
                        .expect("in ring");
                    } else {
                        ring.write_obj(layout.desc(pos), &d).expect("in ring");
                    }
                    pos += 1;
                    if pos == n {
                        pos = 0;
                        wrap = !wrap;
                    }
                }
                // Head flags last (2.8.21), Release as a real driver does.
                ring.store_u16(layout.desc(cur) + 14, head_flags, Ordering::Release)
                    .expect("in ring");
                cur = pos;
            }
            DeviceOp::PeerTableDesc {
                off,
                addr,
                len,
                id,
                flags,
            } => {
                device_op = false;
                let off = usize::from(off) % (DATA_LEN - 15);
                let d = PackedDesc {
                    addr,
                    len,
                    id,
                    flags,
                };
                mem.write_bytes(off, bytemuck::bytes_of(&d))
                    .expect("in data area");
            }
            DeviceOp::PeerPoke { off, val } => {
                device_op = false;
                let off = usize::from(off) % layout.size();
                ring.write_bytes(off, &[val]).expect("in ring");
            }
            DeviceOp::PeerEvent { word } => {
                device_op = false;
                ring.store_u32(layout.driver_event(), word, Ordering::Relaxed)
                    .expect("in ring");
            }
            DeviceOp::PeerCursor { slot, wrap: w } => {
                device_op = false;
                cur = slot % n;
                wrap = w;
            }
            DeviceOp::Pop {} => {
                let r = dev.pop(&mut bufs);
                check_broken(was_broken, &r, dev.is_broken());
                if let Ok(Some(c)) = r {
                    check_chain(&c, &bufs, n, DATA_LEN);
                    assert!(c.slots >= 1 && c.slots <= n, "chain of {} slots", c.slots);
                    popped.push((c.id, c.slots));
                    crate::fuzzing::progress();
                }
            }
            DeviceOp::PushUsed { k, len, slots } => {
                let (id, own) = if popped.is_empty() {
                    (u16::from(k), 1)
                } else {
                    popped.remove(usize::from(k) % popped.len())
                };
                let s = if slots == 0 { own } else { slots };
                let _ = dev.push_used(id, len, s);
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
            DeviceOp::SetAvailEvent { off, wrap: w } => {
                let _ = dev.set_avail_event(EventMode::Desc { off, wrap: w });
            }
            DeviceOp::Reset {} => {
                device_op = false;
                ring.write_bytes(0, &vec![0u8; ring.len()])
                    .expect("whole ring");
                dev.reset();
                popped.clear();
                (cur, wrap) = (0, true);
                assert!(!dev.is_broken());
            }
        }
        if device_op {
            assert_eq!(
                drv_event,
                snapshot(&ring, layout.driver_event(), 4),
                "the device wrote the driver's event suppression structure"
            );
        }
    }
}

crate::fuzz_ops! {
    /// Operations on a packed driver half; the `Peer*` ones are the hostile device.
    pub enum DriverOp {
        /// Driver adds a chain (see `fuzzing::split::chain`).
        Add = 0 { n: u8, w: u8, addr: u16, len: u16 },
        /// Driver adds an indirect chain, table at `table`.
        AddIndirect = 1 { n: u8, w: u8, addr: u16, len: u16, table: u16 },
        /// Driver publishes.
        Publish = 2 {},
        /// Driver checks whether to notify.
        NeedsNotify = 3 {},
        /// Driver sets its event suppression (`mode % 3`: enable, disable, desc).
        SetUsedNotification = 4 { mode: u8, off: u16, wrap: bool },
        /// Driver polls one used buffer.
        PollUsed = 5 {},
        /// Driver and device reset.
        Reset = 6 {},
        /// Device writes descriptor `slot % N` as a used descriptor (flags per `sel`).
        PeerUsed = 7 { slot: u16, id: u16, len: u32, flags: u16, sel: u8 },
        /// Device returns the `k`-th chain in flight at its cursor (well-behaved),
        /// advancing by the chain's slots.
        PeerComplete = 8 { k: u8, len: u32, write: bool },
        /// Device writes one byte anywhere in the ring region.
        PeerPoke = 9 { off: u16, val: u8 },
        /// Device writes its event suppression word.
        PeerEvent = 10 { word: u32 },
    }
}

/// Runs one input against [`PackedDriver`].
pub fn run_driver(data: &[u8]) {
    let (cfg, ops) = decode::<Config, DriverOp>(data);
    let layout = layout(&cfg);
    let n = layout.queue_size();
    let ring = Region::heap(layout.size());
    let mem = Region::heap(DATA_LEN);
    let mut drv =
        PackedDriver::new(ring.clone(), layout, mem.clone(), features(&cfg)).expect("fits");
    // Model: id -> (writable bytes, ring slots), in add order.
    let mut model: HashMap<u16, (u64, u16)> = HashMap::new();
    let mut order: Vec<u16> = Vec::new();
    let (mut cur, mut wrap) = (0u16, true);
    for op in ops {
        let dev_event = snapshot(&ring, layout.device_event(), 4);
        let was_broken = drv.is_broken();
        let mut driver_op = true;
        match op {
            DriverOp::Add { n: k, w, addr, len } => {
                let bufs = chain(k, w, addr, len);
                if let Ok(id) = drv.add(&bufs) {
                    note_add(&mut model, &mut order, id, &bufs, bufs.len() as u16);
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
                if let Ok(id) = drv.add_indirect(&bufs, u64::from(table)) {
                    note_add(&mut model, &mut order, id, &bufs, 1);
                }
            }
            DriverOp::Publish {} => {
                let _ = drv.publish();
            }
            DriverOp::NeedsNotify {} => {
                let _ = drv.needs_notify();
            }
            DriverOp::SetUsedNotification { mode, off, wrap: w } => {
                let m = match mode % 3 {
                    0 => EventMode::Enable,
                    1 => EventMode::Disable,
                    _ => EventMode::Desc { off, wrap: w },
                };
                let _ = drv.set_used_notification(m);
            }
            DriverOp::PollUsed {} => {
                let r = drv.poll_used();
                check_broken(was_broken, &r, drv.is_broken());
                if let Ok(Some(u)) = r {
                    let Some((w, _)) = model.remove(&u.id) else {
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
                    (cur, wrap) = (0, true);
                    assert!(!drv.is_broken());
                }
            }
            DriverOp::PeerUsed {
                slot,
                id,
                len,
                flags,
                sel,
            } => {
                driver_op = false;
                let off = layout.desc(slot % n);
                ring.store_u16(off + 12, id, Ordering::Relaxed)
                    .expect("in ring");
                ring.store_u32(off + 8, len, Ordering::Relaxed)
                    .expect("in ring");
                ring.store_u16(off + 14, lap_flags(flags, sel, wrap), Ordering::Release)
                    .expect("in ring");
            }
            DriverOp::PeerComplete { k, len, write } => {
                driver_op = false;
                if !order.is_empty() {
                    let id = order[usize::from(k) % order.len()];
                    let (w, slots) = model.get(&id).copied().unwrap_or((0, 1));
                    let len = if w == 0 { 0 } else { len % (w as u32 + 1) };
                    let off = layout.desc(cur);
                    ring.store_u16(off + 12, id, Ordering::Relaxed)
                        .expect("in ring");
                    ring.store_u32(off + 8, len, Ordering::Relaxed)
                        .expect("in ring");
                    let f = used_bits(wrap) | if write { DESC_F_WRITE } else { 0 };
                    ring.store_u16(off + 14, f, Ordering::Release)
                        .expect("in ring");
                    let next = u32::from(cur) + u32::from(slots);
                    if next >= u32::from(n) {
                        wrap = !wrap;
                    }
                    cur = (next % u32::from(n)) as u16;
                }
            }
            DriverOp::PeerPoke { off, val } => {
                driver_op = false;
                let off = usize::from(off) % layout.size();
                ring.write_bytes(off, &[val]).expect("in ring");
            }
            DriverOp::PeerEvent { word } => {
                driver_op = false;
                ring.store_u32(layout.device_event(), word, Ordering::Relaxed)
                    .expect("in ring");
            }
        }
        if !drv.is_broken() {
            assert_eq!(usize::from(drv.in_flight()), model.len(), "in-flight count");
            assert!(drv.free_slots() <= n, "free slots {} > N", drv.free_slots());
        }
        if driver_op {
            assert_eq!(
                dev_event,
                snapshot(&ring, layout.device_event(), 4),
                "the driver wrote the device's event suppression structure"
            );
        }
    }
}

fn note_add(
    model: &mut HashMap<u16, (u64, u16)>,
    order: &mut Vec<u16>,
    id: u16,
    bufs: &[BufDesc],
    slots: u16,
) {
    let w = bufs
        .iter()
        .filter(|b| b.writable)
        .map(|b| u64::from(b.len))
        .sum();
    assert!(
        model.insert(id, (w, slots)).is_none(),
        "id {id} handed out twice"
    );
    order.push(id);
}
