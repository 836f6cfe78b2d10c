//! Loom models of the packed ring's ordering edges (docs/MEMORY_ORDERING.md).
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p rings
//! --release --lib loom_packed`

use loom::thread;

use super::*;
use crate::chain::BufDesc;
use crate::mem::loom_mem::LoomMem;
use crate::mem::Mem;
use crate::sync::{spin_hint, Ordering};

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b
}

const PAYLOAD: u64 = 0x1234_5678;

/// P1/A1 and P2/A2. The driver writes a payload word into the data area, adds a
/// readable chain (id A) and a writable chain (id B) and publishes them with one
/// Release (B's head is a Relaxed store covered by A's). The device pops (bounded
/// spin), must see the payload, writes a reply into B's buffer, pushes both used
/// and publishes; the driver polls used and must see the reply with B.
#[test]
fn loom_packed_payload_round_trip() {
    builder().check(|| {
        let layout = PackedLayout::new(2).unwrap();
        let ring = LoomMem::new(layout.size());
        let data = LoomMem::new(16);
        let mut drv = PackedDriver::new(ring.clone(), layout, data.clone(), 0).unwrap();
        let mut dev = PackedDevice::new(ring, layout, data.clone(), 0).unwrap();

        let device = thread::spawn(move || {
            let mut bufs = [BufDesc::default(); 1];
            let mut popped = 0;
            for _ in 0..3 {
                let Some(c) = dev.pop(&mut bufs).unwrap() else {
                    spin_hint();
                    continue;
                };
                let b = bufs[0];
                if b.writable {
                    dev.data()
                        .store_u64(b.addr as usize, PAYLOAD + 1, Ordering::Relaxed)
                        .unwrap();
                    dev.push_used(c.id, 8, c.slots).unwrap();
                } else {
                    let v = dev
                        .data()
                        .load_u64(b.addr as usize, Ordering::Relaxed)
                        .unwrap();
                    assert_eq!(v, PAYLOAD, "payload not visible after pop");
                    dev.push_used(c.id, 0, c.slots).unwrap();
                }
                popped += 1;
                if popped == 2 {
                    break;
                }
            }
            dev.publish_used().unwrap();
        });

        data.store_u64(0, PAYLOAD, Ordering::Relaxed).unwrap();
        let a = drv.add(&[BufDesc::readable(0, 8)]).unwrap();
        let b = drv.add(&[BufDesc::writable(8, 8)]).unwrap();
        drv.publish().unwrap();
        let mut seen = 0;
        for _ in 0..3 {
            match drv.poll_used().unwrap() {
                Some(u) if u.id == a => seen += 1,
                Some(u) => {
                    assert_eq!((u.id, u.len), (b, 8));
                    let reply = data.load_u64(8, Ordering::Relaxed).unwrap();
                    assert_eq!(reply, PAYLOAD + 1, "reply not visible after poll_used");
                    seen += 1;
                }
                None => spin_hint(),
            }
            if seen == 2 {
                break;
            }
        }
        device.join().unwrap();
    });
}

/// F1/F4: no lost available-buffer notification. The device re-enables
/// notifications (`set_avail_notification(true)` returns whether a chain is already
/// there) while the driver adds, publishes and checks `needs_notify`: at least one
/// of them must see the other.
#[test]
fn loom_packed_avail_notification_not_lost() {
    builder().check(|| {
        let layout = PackedLayout::new(2).unwrap();
        let ring = LoomMem::new(layout.size());
        let data = LoomMem::new(8);
        let mut drv = PackedDriver::new(ring.clone(), layout, data.clone(), 0).unwrap();
        let mut dev = PackedDevice::new(ring, layout, data, 0).unwrap();
        dev.set_avail_notification(false).unwrap();

        let device = thread::spawn(move || dev.set_avail_notification(true).unwrap());
        drv.add(&[BufDesc::readable(0, 8)]).unwrap();
        let notify = drv.needs_notify().unwrap();
        let pending = device.join().unwrap();
        assert!(notify || pending, "lost available buffer notification");
    });
}

/// F2/F3: no lost used-buffer notification (driver re-enables, device pushes).
#[test]
fn loom_packed_used_notification_not_lost() {
    builder().check(|| {
        let layout = PackedLayout::new(2).unwrap();
        let ring = LoomMem::new(layout.size());
        let data = LoomMem::new(8);
        let mut drv = PackedDriver::new(ring.clone(), layout, data.clone(), 0).unwrap();
        let mut dev = PackedDevice::new(ring, layout, data, 0).unwrap();
        // Set up single-threaded: one chain popped by the device, driver notifications
        // disabled.
        drv.add(&[BufDesc::readable(0, 8)]).unwrap();
        drv.publish().unwrap();
        drv.set_used_notification(EventMode::Disable).unwrap();
        let mut bufs = [BufDesc::default(); 1];
        let c = dev.pop(&mut bufs).unwrap().unwrap();

        let device = thread::spawn(move || {
            dev.push_used(c.id, 0, c.slots).unwrap();
            dev.needs_notify().unwrap()
        });
        let pending = drv.set_used_notification(EventMode::Enable).unwrap();
        let notify = device.join().unwrap();
        assert!(notify || pending, "lost used buffer notification");
    });
}
