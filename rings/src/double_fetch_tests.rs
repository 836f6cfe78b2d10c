//! Single-fetch discipline (GUIDE.md section 8, docs/THREAT_MODEL.md): the consumers of
//! peer-written memory (split and packed device halves, the posted receiver and the
//! posted sender's credit poll) read each peer byte at most once per operation, and
//! their result does not change when the peer rewrites every byte right after it was
//! read (the "time of check / time of use" window a double fetch would open).
//!
//! [`Flip`] wraps a [`Region`]: it counts reads per byte and, when armed, overwrites
//! each byte it just returned with garbage. An operation run over it must (a) read no
//! byte twice, and (b) return exactly what it returns over the plain region.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::rc::Rc;

use bytemuck::Pod;

use crate::chain::BufDesc;
use crate::error::MemError;
use crate::features::VIRTIO_F_INDIRECT_DESC;
use crate::mem::{Mem, Region};
use crate::sync::Ordering;

#[derive(Default)]
struct Log {
    /// (tag, byte offset) -> reads in the current operation.
    reads: HashMap<(u8, usize), u32>,
    armed: bool,
}

impl Log {
    fn max_reads(&self) -> u32 {
        self.reads.values().copied().max().unwrap_or(0)
    }
}

/// A region whose reads are counted per byte and, when armed, clobbered afterwards.
#[derive(Clone)]
struct Flip {
    inner: Region,
    tag: u8,
    log: Rc<RefCell<Log>>,
}

impl Flip {
    fn after_read(&self, off: usize, len: usize) {
        let armed = {
            let mut log = self.log.borrow_mut();
            for b in off..off + len {
                *log.reads.entry((self.tag, b)).or_insert(0) += 1;
            }
            log.armed
        };
        if armed {
            let mut v = vec![0u8; len];
            let _ = self.inner.read_bytes(off, &mut v);
            v.iter_mut().for_each(|x| *x ^= 0x5A);
            let _ = self.inner.write_bytes(off, &v);
        }
    }
}

impl Mem for Flip {
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn load_u16(&self, off: usize, o: Ordering) -> Result<u16, MemError> {
        let v = self.inner.load_u16(off, o)?;
        self.after_read(off, 2);
        Ok(v)
    }
    fn load_u32(&self, off: usize, o: Ordering) -> Result<u32, MemError> {
        let v = self.inner.load_u32(off, o)?;
        self.after_read(off, 4);
        Ok(v)
    }
    fn load_u64(&self, off: usize, o: Ordering) -> Result<u64, MemError> {
        let v = self.inner.load_u64(off, o)?;
        self.after_read(off, 8);
        Ok(v)
    }
    fn store_u16(&self, off: usize, val: u16, o: Ordering) -> Result<(), MemError> {
        self.inner.store_u16(off, val, o)
    }
    fn store_u32(&self, off: usize, val: u32, o: Ordering) -> Result<(), MemError> {
        self.inner.store_u32(off, val, o)
    }
    fn store_u64(&self, off: usize, val: u64, o: Ordering) -> Result<(), MemError> {
        self.inner.store_u64(off, val, o)
    }
    fn read_obj<T: Pod>(&self, off: usize) -> Result<T, MemError> {
        let v = self.inner.read_obj::<T>(off)?;
        self.after_read(off, size_of::<T>());
        Ok(v)
    }
    fn write_obj<T: Pod>(&self, off: usize, val: &T) -> Result<(), MemError> {
        self.inner.write_obj(off, val)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.inner.read_bytes(off, dst)?;
        self.after_read(off, dst.len());
        Ok(())
    }
    fn write_bytes(&self, off: usize, src: &[u8]) -> Result<(), MemError> {
        self.inner.write_bytes(off, src)
    }
    fn range_ptr(&self, off: usize, len: usize) -> Result<NonNull<u8>, MemError> {
        self.inner.range_ptr(off, len)
    }
}

fn flip(r: &Region, tag: u8, log: &Rc<RefCell<Log>>) -> Flip {
    Flip {
        inner: r.clone(),
        tag,
        log: log.clone(),
    }
}

/// Runs `op` once per element, resetting the per-operation read counts first;
/// returns the results and the most reads any byte got within one operation.
fn per_op<T>(log: &Rc<RefCell<Log>>, n: usize, mut op: impl FnMut() -> T) -> (Vec<T>, u32) {
    let mut out = Vec::new();
    let mut worst = 0;
    for _ in 0..n {
        log.borrow_mut().reads.clear();
        out.push(op());
        worst = worst.max(log.borrow().max_reads());
    }
    (out, worst)
}

// ---- split device ------------------------------------------------------------------

fn split_run(armed: bool) -> (Vec<String>, u32) {
    use crate::split::{SplitDevice, SplitDriver, SplitLayout};
    let layout = SplitLayout::new(8).unwrap();
    let ring = Region::heap(layout.size());
    let data = Region::heap(4096);
    let f = VIRTIO_F_INDIRECT_DESC;
    let mut drv = SplitDriver::new(ring.clone(), layout, data.clone(), f).unwrap();
    let b = |addr, len, writable| BufDesc {
        addr,
        len,
        writable,
    };
    drv.add(&[b(0, 64, false), b(64, 64, false), b(128, 128, true)])
        .unwrap();
    drv.add(&[b(256, 32, true)]).unwrap();
    drv.add_indirect(&[b(512, 16, false), b(528, 16, true)], 2048)
        .unwrap();
    drv.publish().unwrap();
    let log = Rc::new(RefCell::new(Log::default()));
    let mut dev = SplitDevice::new(flip(&ring, 0, &log), layout, flip(&data, 1, &log), f).unwrap();
    log.borrow_mut().armed = armed;
    let mut bufs = [BufDesc::default(); 8];
    per_op(&log, 3, || {
        let r = dev.pop(&mut bufs);
        format!(
            "{r:?} {:?}",
            r.as_ref().ok().copied().flatten().map(|c| &bufs[..c.count])
        )
    })
}

#[test]
fn split_device_reads_each_driver_byte_once() {
    let (clean, reads) = split_run(false);
    // Three chains, three pops (a fourth pop would legitimately poll the index again).
    assert!(clean[2].contains("Some"), "{clean:?}");
    assert_eq!(reads, 1, "a driver-written byte was read twice in one pop");
    let (flipped, _) = split_run(true);
    assert_eq!(
        clean, flipped,
        "the result depends on bytes re-read after validation"
    );
}

// ---- packed device -----------------------------------------------------------------

fn packed_run(armed: bool) -> (Vec<String>, u32) {
    use crate::packed::{PackedDevice, PackedDriver, PackedLayout};
    let layout = PackedLayout::new(8).unwrap();
    let ring = Region::heap(layout.size());
    let data = Region::heap(4096);
    let f = VIRTIO_F_INDIRECT_DESC;
    let mut drv = PackedDriver::new(ring.clone(), layout, data.clone(), f).unwrap();
    let b = |addr, len, writable| BufDesc {
        addr,
        len,
        writable,
    };
    drv.add(&[b(0, 64, false), b(64, 64, false), b(128, 128, true)])
        .unwrap();
    drv.add(&[b(256, 32, true)]).unwrap();
    drv.add_indirect(&[b(512, 16, false), b(528, 16, true)], 2048)
        .unwrap();
    drv.publish().unwrap();
    let log = Rc::new(RefCell::new(Log::default()));
    let mut dev = PackedDevice::new(flip(&ring, 0, &log), layout, flip(&data, 1, &log), f).unwrap();
    log.borrow_mut().armed = armed;
    let mut bufs = [BufDesc::default(); 8];
    per_op(&log, 3, || {
        let r = dev.pop(&mut bufs);
        format!(
            "{r:?} {:?}",
            r.as_ref().ok().copied().flatten().map(|c| &bufs[..c.count])
        )
    })
}

#[test]
fn packed_device_reads_each_driver_byte_once() {
    let (clean, reads) = packed_run(false);
    // Three chains, three pops (a fourth pop would legitimately poll the index again).
    assert!(clean[2].contains("Some"), "{clean:?}");
    assert_eq!(reads, 1, "a driver-written byte was read twice in one pop");
    let (flipped, _) = packed_run(true);
    assert_eq!(
        clean, flipped,
        "the result depends on bytes re-read after validation"
    );
}

// ---- posted receiver and credit poll ------------------------------------------------

fn posted_run(armed: bool) -> (Vec<String>, u32, Vec<String>, u32) {
    use crate::posted::{PostedLayout, PostedRx, PostedTx, RxMsg};
    let l = PostedLayout::new(8, 64, 4, 256).unwrap();
    let tx_area = Region::heap(l.tx_area_size());
    let rx_area = Region::heap(l.rx_area_size());
    let log = Rc::new(RefCell::new(Log::default()));
    // The sender polls credits in its own (tx) area; the receiver polls slots in its
    // own (rx) area. Both are wrapped: every byte there is written by the peer.
    let mut tx = PostedTx::new(flip(&tx_area, 0, &log), rx_area.clone(), l).unwrap();
    let mut rx = PostedRx::new(flip(&rx_area, 1, &log), tx_area.clone(), l).unwrap();
    rx.grant(&[0, 1, 2, 3]).unwrap();
    log.borrow_mut().armed = armed;
    let (credits, credit_reads) = per_op(&log, 2, || format!("{:?}", tx.poll_credits()));
    log.borrow_mut().armed = false;
    tx.send(&[7u8; 16], 1).unwrap();
    tx.send(&[9u8; 200], 2).unwrap();
    tx.publish().unwrap();
    log.borrow_mut().armed = armed;
    let mut msgs = [RxMsg::default(); 4];
    let (polls, poll_reads) = per_op(&log, 2, || {
        let r = rx.poll(&mut msgs);
        format!("{r:?} {:?}", r.as_ref().map(|&n| &msgs[..n]).ok())
    });
    (credits, credit_reads, polls, poll_reads)
}

#[test]
fn posted_consumers_read_each_peer_byte_once() {
    let (c, cr, p, pr) = posted_run(false);
    assert!(c[0].contains("Ok(4)"), "{c:?}");
    assert!(p[0].contains("Ok(2)"), "{p:?}");
    assert_eq!(cr, 1, "a credit byte was read twice in one poll_credits");
    assert_eq!(pr, 1, "a slot byte was read twice in one poll");
    let (c2, _, p2, _) = posted_run(true);
    assert_eq!(
        (c, p),
        (c2, p2),
        "the result depends on bytes re-read after validation"
    );
}

// ---- split and packed driver halves (the used ring is device-written) ---------------

fn split_driver_run(armed: bool) -> (Vec<String>, u32) {
    use crate::split::{SplitDevice, SplitDriver, SplitLayout};
    let layout = SplitLayout::new(8).unwrap();
    let ring = Region::heap(layout.size());
    let data = Region::heap(4096);
    let log = Rc::new(RefCell::new(Log::default()));
    let mut drv = SplitDriver::new(flip(&ring, 0, &log), layout, flip(&data, 1, &log), 0).unwrap();
    let b = |addr, len, writable| BufDesc {
        addr,
        len,
        writable,
    };
    drv.add(&[b(0, 64, false), b(128, 128, true)]).unwrap();
    drv.add(&[b(256, 32, true)]).unwrap();
    drv.add(&[b(512, 16, false)]).unwrap();
    drv.publish().unwrap();
    let mut dev = SplitDevice::new(ring.clone(), layout, data.clone(), 0).unwrap();
    let mut bufs = [BufDesc::default(); 8];
    for len in [100, 32, 0] {
        let c = dev.pop(&mut bufs).unwrap().unwrap();
        dev.push_used(c.id, len).unwrap();
    }
    dev.publish_used().unwrap();
    log.borrow_mut().armed = armed;
    per_op(&log, 3, || format!("{:?}", drv.poll_used()))
}

#[test]
fn split_driver_reads_each_device_byte_once() {
    let (clean, reads) = split_driver_run(false);
    assert!(clean[2].contains("Some"), "{clean:?}");
    assert_eq!(
        reads, 1,
        "a device-written byte was read twice in one poll_used"
    );
    let (flipped, _) = split_driver_run(true);
    assert_eq!(
        clean, flipped,
        "the result depends on bytes re-read after validation"
    );
}

fn packed_driver_run(armed: bool) -> (Vec<String>, u32) {
    use crate::packed::{PackedDevice, PackedDriver, PackedLayout};
    let layout = PackedLayout::new(8).unwrap();
    let ring = Region::heap(layout.size());
    let data = Region::heap(4096);
    let log = Rc::new(RefCell::new(Log::default()));
    let mut drv = PackedDriver::new(flip(&ring, 0, &log), layout, flip(&data, 1, &log), 0).unwrap();
    let b = |addr, len, writable| BufDesc {
        addr,
        len,
        writable,
    };
    drv.add(&[b(0, 64, false), b(128, 128, true)]).unwrap();
    drv.add(&[b(256, 32, true)]).unwrap();
    drv.add(&[b(512, 16, false)]).unwrap();
    drv.publish().unwrap();
    let mut dev = PackedDevice::new(ring.clone(), layout, data.clone(), 0).unwrap();
    let mut bufs = [BufDesc::default(); 8];
    for len in [100, 32, 0] {
        let c = dev.pop(&mut bufs).unwrap().unwrap();
        dev.push_used(c.id, len, c.slots).unwrap();
    }
    dev.publish_used().unwrap();
    log.borrow_mut().armed = armed;
    per_op(&log, 3, || format!("{:?}", drv.poll_used()))
}

#[test]
fn packed_driver_reads_each_device_byte_once() {
    let (clean, reads) = packed_driver_run(false);
    assert!(clean[2].contains("Some"), "{clean:?}");
    assert_eq!(
        reads, 1,
        "a device-written byte was read twice in one poll_used"
    );
    let (flipped, _) = packed_driver_run(true);
    assert_eq!(
        clean, flipped,
        "the result depends on bytes re-read after validation"
    );
}
