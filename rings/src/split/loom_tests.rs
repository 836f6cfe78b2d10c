//! Loom models of the split ring's ordering edges (docs/MEMORY_ORDERING.md).
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p rings
//! --release --lib loom_`

use loom::thread;

use super::{SplitDevice, SplitDriver, SplitLayout};
use crate::chain::BufDesc;
use crate::features::VIRTIO_F_EVENT_IDX;
use crate::mem::loom_mem::LoomMem;
use crate::mem::Mem;
use crate::sync::{spin_hint, Ordering};

const PAYLOAD: u64 = 0x5eed_cafe_f00d_0001;
const REPLY: u64 = 0x0bad_beef_0000_0002;
const SPINS: usize = 3;

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b
}

type Pair = (SplitDriver<LoomMem>, SplitDevice<LoomMem>, LoomMem);

/// A ring of `n`. The notify models use n = 4, where every u16 index/event word lies
/// in its own 8-byte loom word (with n = 2, used_event and used.idx share one, and
/// LoomMem's read-modify-write narrow stores would order them more strongly than
/// separate 2-byte locations are on hardware).
fn pair(n: u16, features: u64) -> Pair {
    let layout = SplitLayout::new(n).unwrap();
    let ring = LoomMem::new(layout.size());
    let data = LoomMem::new(16);
    let drv = SplitDriver::new(ring.clone(), layout, data.clone(), features).unwrap();
    let dev = SplitDevice::new(ring, layout, data.clone(), features).unwrap();
    (drv, dev, data)
}

/// D1/V1 and V2/D4: the payload written before `publish` is visible to the device
/// after `pop`, and the device's reply written before `publish_used` is visible to the
/// driver after `poll_used`.
#[test]
fn loom_split_payload_round_trip() {
    builder().check(|| {
        let (mut drv, mut dev, data) = pair(2, 0);
        let t = thread::spawn(move || {
            let mut bufs = [BufDesc::default(); 2];
            for _ in 0..SPINS {
                if let Some(c) = dev.pop(&mut bufs).unwrap() {
                    assert_eq!(c.count, 2);
                    let off = bufs[0].addr as usize;
                    // Relaxed: made visible by the Acquire in pop (V1).
                    let v = dev.data().load_u64(off, Ordering::Relaxed).unwrap();
                    assert_eq!(v, PAYLOAD, "payload not visible after pop");
                    let out = bufs[1].addr as usize;
                    // Relaxed: published by publish_used's Release (V2).
                    dev.data().store_u64(out, REPLY, Ordering::Relaxed).unwrap();
                    dev.push_used(c.id, 8).unwrap();
                    dev.publish_used().unwrap();
                    return;
                }
                spin_hint();
            }
        });
        // Relaxed: published by publish's Release (D1).
        data.store_u64(0, PAYLOAD, Ordering::Relaxed).unwrap();
        let h = drv
            .add(&[BufDesc::readable(0, 8), BufDesc::writable(8, 8)])
            .unwrap();
        drv.publish().unwrap();
        for _ in 0..SPINS {
            if let Some(u) = drv.poll_used().unwrap() {
                assert_eq!((u.id, u.len), (h, 8));
                // Relaxed: made visible by the Acquire in poll_used (D4).
                let v = data.load_u64(8, Ordering::Relaxed).unwrap();
                assert_eq!(v, REPLY, "reply not visible after poll_used");
                break;
            }
            spin_hint();
        }
        t.join().unwrap();
    });
}

/// D2/V4 (EVENT_IDX): the device enables notifications and re-checks the ring; the
/// driver publishes and asks whether to notify. No lost wake-up: either the driver
/// notifies or the device's re-check finds the chain.
#[test]
fn loom_split_avail_notify_no_lost_wakeup() {
    builder().check(|| {
        let (mut drv, mut dev, _data) = pair(4, VIRTIO_F_EVENT_IDX);
        // Start disarmed (avail_event = 0xffff), so a stale avail_event means "no
        // notify" and the model can tell the orderings apart.
        dev.set_avail_notification(false).unwrap();
        let t = thread::spawn(move || {
            let mut bufs = [BufDesc::default(); 2];
            dev.set_avail_notification(true).unwrap();
            dev.pop(&mut bufs).unwrap().is_some()
        });
        drv.add(&[BufDesc::readable(0, 8)]).unwrap();
        drv.publish().unwrap();
        let notify = drv.needs_notify().unwrap();
        let seen = t.join().unwrap();
        assert!(
            notify || seen,
            "lost wake-up: no notify and the device saw nothing"
        );
    });
}

/// D3/V3 (EVENT_IDX): the driver enables used notifications and re-polls; the device
/// publishes a used element and asks whether to notify. No lost wake-up.
#[test]
fn loom_split_used_notify_no_lost_wakeup() {
    builder().check(|| {
        let (mut drv, mut dev, _data) = pair(4, VIRTIO_F_EVENT_IDX);
        let h = drv.add(&[BufDesc::writable(0, 8)]).unwrap();
        drv.publish().unwrap();
        let mut bufs = [BufDesc::default(); 2];
        let c = dev.pop(&mut bufs).unwrap().unwrap();
        assert_eq!(c.id, h);
        // Start disarmed (used_event = 0xffff), as above.
        drv.set_used_notification(false).unwrap();
        let t = thread::spawn(move || {
            dev.push_used(c.id, 4).unwrap();
            dev.publish_used().unwrap();
            dev.needs_notify().unwrap()
        });
        drv.set_used_notification(true).unwrap();
        let seen = drv.poll_used().unwrap().is_some();
        let notify = t.join().unwrap();
        assert!(
            notify || seen,
            "lost wake-up: no notify and the driver saw nothing"
        );
    });
}
