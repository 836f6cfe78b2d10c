//! Tests of the packed virtqueue: golden bytes, hostile rings, a model-based
//! proptest, random bytes, event suppression, and a two-thread run.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::layout::*;
use super::mock::PackedMock;
use super::*;
use crate::chain::{BufDesc, ChainInfo};
use crate::error::RingError;
use crate::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_IN_ORDER};
use crate::mem::{Mem, Region};
use crate::sync::Ordering;

const DATA: usize = 4096;

fn ring_bytes(r: &Region, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    r.read_bytes(0, &mut v).unwrap();
    v
}

fn pair(n: u16, features: u64) -> (Region, PackedDriver<Region>, PackedDevice<Region>) {
    let layout = PackedLayout::new(n).unwrap();
    let ring = Region::heap(layout.size());
    let data = Region::heap(DATA);
    let drv = PackedDriver::new(ring.clone(), layout, data.clone(), features).unwrap();
    let dev = PackedDevice::new(ring.clone(), layout, data, features).unwrap();
    (ring, drv, dev)
}

// ---- 1. golden bytes ------------------------------------------------------------

#[test]
fn golden_bytes_n4() {
    let (ring, mut drv, mut dev) = pair(4, 0);
    // A 2-descriptor chain (readable 0x20 bytes at 0x100, writable 0x40 at 0x200)
    // and a single readable buffer (0x10 at 0x300), published as one burst.
    let a = drv
        .add(&[
            BufDesc::readable(0x100, 0x20),
            BufDesc::writable(0x200, 0x40),
        ])
        .unwrap();
    let b = drv.add(&[BufDesc::readable(0x300, 0x10)]).unwrap();
    assert_eq!((a, b), (0, 1));
    // Before publish the first head's flags are still zero (2.8.21.1: the first
    // descriptor's flags are written last); the second chain's head is complete.
    assert_eq!(ring.load_u16(14, Ordering::Relaxed).unwrap(), 0);
    drv.publish().unwrap();

    // Hand-computed (virtio 1.x 2.8.13 pvirtq_desc {le64 addr; le32 len; le16 id;
    // le16 flags}; 2.8.1/2.8.21.1: wrap counter 1 -> AVAIL (0x0080) set, USED clear;
    // NEXT = 0x0001 on all but the last; WRITE = 0x0002; 2.8.6: the id is in the
    // last descriptor (we write it in every one, as Linux does); 2.8.14 event
    // structures zero = ENABLE).
    #[rustfmt::skip]
    let expect: [u8; 72] = [
        // slot 0: addr 0x100, len 0x20, id 0, flags NEXT|AVAIL = 0x0081
        0x00, 0x01, 0, 0, 0, 0, 0, 0,   0x20, 0, 0, 0,   0x00, 0x00,   0x81, 0x00,
        // slot 1: addr 0x200, len 0x40, id 0, flags WRITE|AVAIL = 0x0082
        0x00, 0x02, 0, 0, 0, 0, 0, 0,   0x40, 0, 0, 0,   0x00, 0x00,   0x82, 0x00,
        // slot 2: addr 0x300, len 0x10, id 1, flags AVAIL = 0x0080
        0x00, 0x03, 0, 0, 0, 0, 0, 0,   0x10, 0, 0, 0,   0x01, 0x00,   0x80, 0x00,
        // slot 3: untouched (zero-initialised, 2.8.13)
        0, 0, 0, 0, 0, 0, 0, 0,   0, 0, 0, 0,   0, 0,   0, 0,
        // driver event suppression (off_wrap, flags) = ENABLE
        0, 0, 0, 0,
        // device event suppression = ENABLE
        0, 0, 0, 0,
    ];
    assert_eq!(ring_bytes(&ring, 72), expect);

    let mut bufs = [BufDesc::default(); 4];
    let c0 = dev.pop(&mut bufs).unwrap().unwrap();
    assert_eq!(
        c0,
        ChainInfo {
            id: 0,
            count: 2,
            readable_len: 0x20,
            writable_len: 0x40,
            slots: 2
        }
    );
    assert_eq!(
        bufs[..2],
        [
            BufDesc::readable(0x100, 0x20),
            BufDesc::writable(0x200, 0x40)
        ]
    );
    let c1 = dev.pop(&mut bufs).unwrap().unwrap();
    assert_eq!((c1.id, c1.count, c1.slots), (1, 1, 1));
    assert_eq!(dev.pop(&mut bufs).unwrap(), None);

    dev.push_used(0, 0x18, 2).unwrap();
    dev.push_used(1, 0, 1).unwrap();
    // Burst not published: slot 0 still shows the driver's flags.
    assert_eq!(ring.load_u16(14, Ordering::Relaxed).unwrap(), 0x0081);
    dev.publish_used().unwrap();
    // 2.8.22 / 2.8.6: one used descriptor per chain, written at the chain's first
    // slot (slot 0 for chain 0, slot 2 for chain 1), AVAIL = USED = device wrap
    // counter 1 (0x8080), WRITE (0x0002) when data was written (2.8.3), addr unused
    // and left as is (2.8.4).
    #[rustfmt::skip]
    let expect_used: [u8; 48] = [
        // slot 0: addr 0x100 (untouched), len 0x18, id 0, flags USED|AVAIL|WRITE
        0x00, 0x01, 0, 0, 0, 0, 0, 0,   0x18, 0, 0, 0,   0x00, 0x00,   0x82, 0x80,
        // slot 1: untouched driver descriptor
        0x00, 0x02, 0, 0, 0, 0, 0, 0,   0x40, 0, 0, 0,   0x00, 0x00,   0x82, 0x00,
        // slot 2: addr 0x300 (untouched), len 0, id 1, flags USED|AVAIL
        0x00, 0x03, 0, 0, 0, 0, 0, 0,   0x00, 0, 0, 0,   0x01, 0x00,   0x80, 0x80,
    ];
    assert_eq!(ring_bytes(&ring, 48), expect_used);
    assert_eq!(drv.poll_used().unwrap(), Some(Used { id: 0, len: 0x18 }));
    assert_eq!(drv.poll_used().unwrap(), Some(Used { id: 1, len: 0 }));
    assert_eq!(drv.poll_used().unwrap(), None);

    // Wrap once: a 2-descriptor chain in slots 3 and 0 (the wrap counter flips after
    // slot 3, so slot 0 gets AVAIL clear / USED set = 0x8000), then one in slot 1.
    let c = drv
        .add(&[BufDesc::readable(0x400, 8), BufDesc::writable(0x500, 0x30)])
        .unwrap();
    let d = drv.add(&[BufDesc::writable(0x600, 0x10)]).unwrap();
    assert_eq!((c, d), (1, 0)); // ids come back LIFO from the free list
    drv.publish().unwrap();
    #[rustfmt::skip]
    let expect_wrap: [u8; 64] = [
        // slot 0: addr 0x500, len 0x30, id 1, flags WRITE|USED (wrap 0) = 0x8002
        0x00, 0x05, 0, 0, 0, 0, 0, 0,   0x30, 0, 0, 0,   0x01, 0x00,   0x02, 0x80,
        // slot 1: addr 0x600, len 0x10, id 0, flags WRITE|USED (wrap 0) = 0x8002
        0x00, 0x06, 0, 0, 0, 0, 0, 0,   0x10, 0, 0, 0,   0x00, 0x00,   0x02, 0x80,
        // slot 2: the used descriptor of the first lap, unchanged
        0x00, 0x03, 0, 0, 0, 0, 0, 0,   0x00, 0, 0, 0,   0x01, 0x00,   0x80, 0x80,
        // slot 3: addr 0x400, len 8, id 1, flags NEXT|AVAIL (wrap 1) = 0x0081
        0x00, 0x04, 0, 0, 0, 0, 0, 0,   0x08, 0, 0, 0,   0x01, 0x00,   0x81, 0x00,
    ];
    assert_eq!(ring_bytes(&ring, 64), expect_wrap);
    let c2 = dev.pop(&mut bufs).unwrap().unwrap();
    assert_eq!((c2.id, c2.count, c2.slots), (1, 2, 2));
    let c3 = dev.pop(&mut bufs).unwrap().unwrap();
    assert_eq!((c3.id, c3.count, c3.slots), (0, 1, 1));
    dev.push_used(1, 0x30, 2).unwrap();
    dev.push_used(0, 0x10, 1).unwrap();
    dev.publish_used().unwrap();
    // Used for chain c at slot 3 with device wrap 1 (0x8082); used for chain d at
    // slot 1 (3 + 2 wraps to 1) with device wrap 0: AVAIL and USED both clear, only
    // WRITE = 0x0002.
    #[rustfmt::skip]
    let expect_used_wrap: [u8; 64] = [
        0x00, 0x05, 0, 0, 0, 0, 0, 0,   0x30, 0, 0, 0,   0x01, 0x00,   0x02, 0x80,
        0x00, 0x06, 0, 0, 0, 0, 0, 0,   0x10, 0, 0, 0,   0x00, 0x00,   0x02, 0x00,
        0x00, 0x03, 0, 0, 0, 0, 0, 0,   0x00, 0, 0, 0,   0x01, 0x00,   0x80, 0x80,
        0x00, 0x04, 0, 0, 0, 0, 0, 0,   0x30, 0, 0, 0,   0x01, 0x00,   0x82, 0x80,
    ];
    assert_eq!(ring_bytes(&ring, 64), expect_used_wrap);
    assert_eq!(drv.poll_used().unwrap(), Some(Used { id: 1, len: 0x30 }));
    assert_eq!(drv.poll_used().unwrap(), Some(Used { id: 0, len: 0x10 }));
    assert_eq!(drv.poll_used().unwrap(), None);
    assert_eq!(drv.in_flight(), 0);
    assert_eq!(drv.free_slots(), 4);
}

#[test]
fn indirect_round_trip_and_table_bytes() {
    let (ring, mut drv, mut dev) = pair(2, VIRTIO_F_INDIRECT_DESC);
    let id = drv
        .add_indirect(
            &[BufDesc::readable(0x10, 4), BufDesc::writable(0x20, 8)],
            0x800,
        )
        .unwrap();
    drv.publish().unwrap();
    let d: PackedDesc = ring.read_obj(0).unwrap();
    assert_eq!(
        d,
        PackedDesc {
            addr: 0x800,
            len: 32,
            id,
            flags: DESC_F_INDIRECT | DESC_F_AVAIL
        }
    );
    let mut bufs = [BufDesc::default(); 4];
    let c = dev.pop(&mut bufs).unwrap().unwrap();
    assert_eq!((c.id, c.count, c.slots, c.writable_len), (id, 2, 1, 8));
    assert_eq!(bufs[1], BufDesc::writable(0x20, 8));
    dev.push_used(c.id, 8, c.slots).unwrap();
    dev.publish_used().unwrap();
    assert_eq!(drv.poll_used().unwrap(), Some(Used { id, len: 8 }));
}

#[test]
fn driver_rejects_bad_requests() {
    let (_r, mut drv, _dev) = pair(4, 0);
    assert!(matches!(drv.add(&[]), Err(RingError::InvalidRequest(_))));
    assert!(matches!(
        drv.add(&[BufDesc::readable(DATA as u64 - 4, 8)]),
        Err(RingError::InvalidRequest(_))
    ));
    assert!(matches!(
        drv.add(&[BufDesc::readable(u64::MAX, 8)]),
        Err(RingError::InvalidRequest(_))
    ));
    assert!(matches!(
        drv.add(&[BufDesc::writable(0, 8), BufDesc::readable(8, 8)]),
        Err(RingError::InvalidRequest(_))
    ));
    assert!(matches!(
        drv.add(&[BufDesc::readable(0, 8); 5]),
        Err(RingError::InvalidRequest(_))
    ));
    assert!(matches!(
        drv.add_indirect(&[BufDesc::readable(0, 8)], 0),
        Err(RingError::InvalidRequest(_))
    ));
    drv.add(&[BufDesc::readable(0, 8); 3]).unwrap();
    assert_eq!(
        drv.add(&[BufDesc::readable(0, 8); 2]),
        Err(RingError::RingFull { need: 2, free: 1 })
    );
    assert!(!drv.is_broken());
}

// ---- 2. hostile inputs ----------------------------------------------------------

struct Hostile {
    mock: PackedMock<Region>,
    data: Region,
    dev: PackedDevice<Region>,
}

fn hostile(n: u16, features: u64) -> Hostile {
    let layout = PackedLayout::new(n).unwrap();
    let ring = Region::heap(layout.size());
    let data = Region::heap(DATA);
    Hostile {
        mock: PackedMock::new(ring.clone(), layout),
        dev: PackedDevice::new(ring, layout, data.clone(), features).unwrap(),
        data,
    }
}

fn desc(addr: u64, len: u32, id: u16, flags: u16) -> PackedDesc {
    PackedDesc {
        addr,
        len,
        id,
        flags,
    }
}

/// Pops with a slice of `cap` and checks the error, the broken mark, and that the
/// queue stays broken.
fn expect_broken(h: &mut Hostile, cap: usize, want: RingError) {
    let mut bufs = vec![BufDesc::default(); cap];
    assert_eq!(h.dev.pop(&mut bufs), Err(want));
    assert!(h.dev.is_broken());
    assert_eq!(h.dev.pop(&mut bufs), Err(RingError::Broken));
    assert_eq!(h.dev.push_used(0, 0, 1), Err(RingError::Broken));
}

#[test]
fn hostile_buffer_id_out_of_range() {
    let mut h = hostile(4, 0);
    h.mock.push_chain(&[desc(0, 16, 4, 0)]).unwrap();
    expect_broken(
        &mut h,
        4,
        RingError::DescIndexOutOfRange { index: 4, size: 4 },
    );
    // Reset recovers: a fresh, valid chain pops.
    h.dev.reset();
    h.mock.clear().unwrap();
    h.mock.push_chain(&[desc(0, 16, 3, 0)]).unwrap();
    let mut bufs = [BufDesc::default(); 4];
    assert_eq!(h.dev.pop(&mut bufs).unwrap().unwrap().id, 3);
}

#[test]
fn hostile_buffer_outside_data_area() {
    let mut h = hostile(4, 0);
    h.mock
        .push_chain(&[desc(0, 16, 0, DESC_F_NEXT), desc(DATA as u64 - 8, 16, 0, 0)])
        .unwrap();
    expect_broken(
        &mut h,
        4,
        RingError::BufferOutOfRange {
            addr: DATA as u64 - 8,
            len: 16,
            limit: DATA as u64,
        },
    );
    // u64 overflow of addr + len.
    let mut h = hostile(4, 0);
    h.mock.push_chain(&[desc(u64::MAX - 3, 16, 0, 0)]).unwrap();
    expect_broken(
        &mut h,
        4,
        RingError::BufferOutOfRange {
            addr: u64::MAX - 3,
            len: 16,
            limit: DATA as u64,
        },
    );
}

#[test]
fn hostile_endless_chain() {
    // Every slot NEXT, each with correct flags for its lap: the TTL stops it.
    let mut h = hostile(4, 0);
    h.mock.push_chain(&[desc(0, 8, 0, DESC_F_NEXT); 4]).unwrap();
    expect_broken(&mut h, 16, RingError::ChainTooLong { limit: 4 });
    // Same, but starting mid-ring with lap-1 flags everywhere: the slots after the
    // ring end carry the wrong wrap state.
    let mut h = hostile(5, 0);
    h.mock.set_cursor(3, true);
    h.mock
        .push_chain_with(&[desc(0, 8, 0, DESC_F_NEXT); 5], |_, f, _| {
            f | avail_bits(true)
        })
        .unwrap();
    // Move the device to slot 3 by consuming three good chains first.
    for slot in 0..3 {
        h.mock
            .write_desc(slot, desc(0, 8, 0, DESC_F_AVAIL))
            .unwrap();
    }
    let mut bufs = [BufDesc::default(); 16];
    for _ in 0..3 {
        h.dev.pop(&mut bufs).unwrap().unwrap();
    }
    expect_broken(
        &mut h,
        16,
        // Slot 0 now holds a lap-1 descriptor (AVAIL set) where lap 0 is due.
        RingError::BadWrapFlags {
            slot: 0,
            flags: DESC_F_AVAIL,
        },
    );
}

#[test]
fn hostile_wrap_flags_inside_chain() {
    // Second descriptor: each wrong AVAIL/USED combination for lap 1.
    for bad in [DESC_F_AVAIL | DESC_F_USED, 0, DESC_F_USED] {
        let mut h = hostile(4, 0);
        h.mock
            .push_chain_with(
                &[desc(0, 8, 0, DESC_F_NEXT), desc(8, 8, 0, 0)],
                |i, f, wrap| {
                    if i == 0 {
                        f | avail_bits(wrap)
                    } else {
                        f | bad
                    }
                },
            )
            .unwrap();
        expect_broken(
            &mut h,
            4,
            RingError::BadWrapFlags {
                slot: 1,
                flags: bad,
            },
        );
    }
}

#[test]
fn hostile_wrap_flags_at_head() {
    // AVAIL == USED == current wrap at the slot we are about to consume: nonsense.
    let mut h = hostile(4, 0);
    h.mock
        .push_chain_with(&[desc(0, 8, 0, 0)], |_, f, _| {
            f | DESC_F_AVAIL | DESC_F_USED
        })
        .unwrap();
    expect_broken(
        &mut h,
        4,
        RingError::BadWrapFlags {
            slot: 0,
            flags: DESC_F_AVAIL | DESC_F_USED,
        },
    );
    // AVAIL clear / USED set or both clear look like an older lap: not available,
    // not an error.
    for flags in [DESC_F_USED, 0] {
        let mut h = hostile(4, 0);
        h.mock
            .push_chain_with(&[desc(0, 8, 0, 0)], |_, f, _| f | flags)
            .unwrap();
        let mut bufs = [BufDesc::default(); 4];
        assert_eq!(h.dev.pop(&mut bufs), Ok(None));
        assert!(!h.dev.is_broken());
    }
}

#[test]
fn hostile_indirect() {
    let table = 0x400u64;
    // Nested indirect.
    let mut h = hostile(4, VIRTIO_F_INDIRECT_DESC);
    PackedMock::<Region>::write_indirect_table(
        &h.data,
        table as usize,
        &[desc(0, 8, 0, 0), desc(0x200, 32, 0, DESC_F_INDIRECT)],
    )
    .unwrap();
    h.mock
        .push_chain(&[desc(table, 32, 0, DESC_F_INDIRECT)])
        .unwrap();
    expect_broken(&mut h, 8, RingError::NestedIndirect);
    // Bad lengths: zero and not a multiple of 16.
    for len in [0u32, 24] {
        let mut h = hostile(4, VIRTIO_F_INDIRECT_DESC);
        h.mock
            .push_chain(&[desc(table, len, 0, DESC_F_INDIRECT)])
            .unwrap();
        expect_broken(&mut h, 8, RingError::BadIndirect { len });
    }
    // Table outside the data area (also via overflow).
    for addr in [DATA as u64 - 16, u64::MAX - 15] {
        let mut h = hostile(4, VIRTIO_F_INDIRECT_DESC);
        h.mock
            .push_chain(&[desc(addr, 32, 0, DESC_F_INDIRECT)])
            .unwrap();
        expect_broken(
            &mut h,
            8,
            RingError::BufferOutOfRange {
                addr,
                len: 32,
                limit: DATA as u64,
            },
        );
    }
    // INDIRECT with NEXT, and INDIRECT after a NEXT descriptor.
    let mut h = hostile(4, VIRTIO_F_INDIRECT_DESC);
    h.mock
        .push_chain(&[
            desc(table, 16, 0, DESC_F_INDIRECT | DESC_F_NEXT),
            desc(0, 8, 0, 0),
        ])
        .unwrap();
    expect_broken(&mut h, 8, RingError::BadIndirect { len: 16 });
    let mut h = hostile(4, VIRTIO_F_INDIRECT_DESC);
    h.mock
        .push_chain(&[
            desc(0, 8, 0, DESC_F_NEXT),
            desc(table, 16, 0, DESC_F_INDIRECT),
        ])
        .unwrap();
    expect_broken(&mut h, 8, RingError::BadIndirect { len: 16 });
    // Not negotiated.
    let mut h = hostile(4, 0);
    h.mock
        .push_chain(&[desc(table, 16, 0, DESC_F_INDIRECT)])
        .unwrap();
    expect_broken(&mut h, 8, RingError::IndirectNotNegotiated);
    // Table longer than the caller's slice.
    let mut h = hostile(4, VIRTIO_F_INDIRECT_DESC);
    PackedMock::<Region>::write_indirect_table(&h.data, table as usize, &[desc(0, 8, 0, 0); 3])
        .unwrap();
    h.mock
        .push_chain(&[desc(table, 48, 0, DESC_F_INDIRECT)])
        .unwrap();
    expect_broken(&mut h, 2, RingError::ChainTooLong { limit: 2 });
    // Readable after writable inside the table.
    let mut h = hostile(4, VIRTIO_F_INDIRECT_DESC);
    PackedMock::<Region>::write_indirect_table(
        &h.data,
        table as usize,
        &[desc(0, 8, 0, DESC_F_WRITE), desc(8, 8, 0, 0)],
    )
    .unwrap();
    h.mock
        .push_chain(&[desc(table, 32, 0, DESC_F_INDIRECT)])
        .unwrap();
    expect_broken(&mut h, 8, RingError::ReadableAfterWritable);
}

#[test]
fn hostile_readable_after_writable_and_long_chain() {
    let mut h = hostile(4, 0);
    h.mock
        .push_chain(&[desc(0, 8, 0, DESC_F_NEXT | DESC_F_WRITE), desc(8, 8, 0, 0)])
        .unwrap();
    expect_broken(&mut h, 4, RingError::ReadableAfterWritable);
    let mut h = hostile(4, 0);
    h.mock
        .push_chain(&[
            desc(0, 8, 0, DESC_F_NEXT),
            desc(8, 8, 0, DESC_F_NEXT),
            desc(16, 8, 0, 0),
        ])
        .unwrap();
    expect_broken(&mut h, 2, RingError::ChainTooLong { limit: 2 });
}

#[test]
fn hostile_used_descriptors() {
    let setup = || {
        let layout = PackedLayout::new(4).unwrap();
        let ring = Region::heap(layout.size());
        let mut drv = PackedDriver::new(ring.clone(), layout, Region::heap(DATA), 0).unwrap();
        let id = drv
            .add(&[BufDesc::readable(0, 8), BufDesc::writable(8, 64)])
            .unwrap();
        drv.publish().unwrap();
        (PackedMock::new(ring, layout), drv, id)
    };
    let used = used_bits(true) | DESC_F_WRITE;
    for (bad_id, len, want) in [
        (3u16, 1u32, RingError::UnexpectedUsedId { id: 3 }),
        (9, 1, RingError::UnexpectedUsedId { id: 9 }),
        (0xffff, 1, RingError::UnexpectedUsedId { id: 0xffff }),
        (0, 65, RingError::UsedLenTooLarge { len: 65, max: 64 }),
    ] {
        let (mock, mut drv, id) = setup();
        assert_eq!(id, 0);
        mock.write_used(0, bad_id, len, used).unwrap();
        assert_eq!(drv.poll_used(), Err(want));
        assert!(drv.is_broken());
        assert_eq!(drv.poll_used(), Err(RingError::Broken));
        assert_eq!(drv.add(&[BufDesc::readable(0, 1)]), Err(RingError::Broken));
        drv.reset().unwrap();
        assert!(!drv.is_broken());
    }
    // A used descriptor for a chain already returned.
    let (mock, mut drv, id) = setup();
    mock.write_used(0, id, 4, used).unwrap();
    assert_eq!(drv.poll_used().unwrap(), Some(Used { id, len: 4 }));
    mock.write_used(2, id, 4, used).unwrap();
    assert_eq!(
        drv.poll_used(),
        Err(RingError::UnexpectedUsedId { id: id as u32 })
    );
    // Without WRITE the length is ignored (2.8.4), so a huge one is not an error.
    let (mock, mut drv, id) = setup();
    mock.write_used(0, id, u32::MAX, used_bits(true)).unwrap();
    assert_eq!(drv.poll_used().unwrap(), Some(Used { id, len: 0 }));
}

// ---- IN_ORDER batches (2.8.8) ------------------------------------------------------

#[test]
fn in_order_batch_completes_earlier_chains() {
    let (_r, mut drv, mut dev) = pair(6, VIRTIO_F_IN_ORDER);
    let mut bufs = [BufDesc::default(); 4];
    for round in 0..3 {
        let ids: Vec<u16> = (0..3u64)
            .map(|i| {
                drv.add(&[BufDesc::readable(i * 16, 16), BufDesc::writable(0x100, 32)])
                    .unwrap()
            })
            .collect();
        assert_eq!(drv.free_slots(), 0, "round {round}");
        drv.publish().unwrap();
        let mut slots = 0;
        let mut last = 0;
        while let Some(c) = dev.pop(&mut bufs).unwrap() {
            slots += c.slots;
            last = c.id;
        }
        assert_eq!((slots, last), (6, ids[2]));
        // One used descriptor for the whole batch: the last id, the batch's slots.
        dev.push_used(last, 32, slots).unwrap();
        dev.publish_used().unwrap();
        assert_eq!(drv.poll_used().unwrap(), Some(Used { id: ids[0], len: 0 }));
        assert_eq!(drv.poll_used().unwrap(), Some(Used { id: ids[1], len: 0 }));
        assert_eq!(
            drv.poll_used().unwrap(),
            Some(Used {
                id: ids[2],
                len: 32
            })
        );
        assert_eq!(drv.poll_used().unwrap(), None);
        assert_eq!((drv.in_flight(), drv.free_slots()), (0, 6));
    }
}

// ---- 3. model-based proptest -----------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// Add a chain of `n` descriptors, the last `w` of them writable.
    Add {
        n: u16,
        w: u16,
    },
    Publish,
    Pop,
    /// Return the `pick`-th held chain (in-order runs always pick the oldest).
    PushUsed {
        pick: usize,
    },
    /// In-order runs: return the `k` oldest held chains with one used descriptor.
    PushBatch {
        k: usize,
    },
    PublishUsed,
    PollUsed,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u16..=3, 0u16..=3).prop_map(|(n, w)| Op::Add { n, w: w.min(n) }),
        2 => Just(Op::Publish),
        4 => Just(Op::Pop),
        3 => (0usize..8).prop_map(|pick| Op::PushUsed { pick }),
        1 => (1usize..4).prop_map(|k| Op::PushBatch { k }),
        2 => Just(Op::PublishUsed),
        4 => Just(Op::PollUsed),
    ]
}

#[derive(Clone, Debug)]
struct Chain {
    id: u16,
    bufs: Vec<BufDesc>,
    slots: u16,
    writable: u32,
}

fn run_model(n: u16, in_order: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let features = if in_order { VIRTIO_F_IN_ORDER } else { 0 };
    let (_r, mut drv, mut dev) = pair(n, features);
    let mut free = n;
    let mut pending: VecDeque<Chain> = VecDeque::new();
    let mut published: VecDeque<Chain> = VecDeque::new();
    let mut held: Vec<Chain> = Vec::new();
    let mut used_pending: Vec<Used> = Vec::new();
    let mut used_visible: VecDeque<(Used, u16)> = VecDeque::new();
    let mut seq = 0u64;
    let mut bufs = vec![BufDesc::default(); n as usize];
    for op in ops {
        match *op {
            Op::Add { n: k, w } => {
                let chain: Vec<BufDesc> = (0..k)
                    .map(|i| {
                        seq += 1;
                        BufDesc {
                            addr: (seq * 8) % 2048,
                            len: (seq % 61) as u32 + 1,
                            writable: i >= k - w,
                        }
                    })
                    .collect();
                let r = drv.add(&chain);
                if k > n {
                    prop_assert!(matches!(r, Err(RingError::InvalidRequest(_))));
                } else if k > free {
                    prop_assert_eq!(
                        r,
                        Err(RingError::RingFull {
                            need: k as u32,
                            free: free as u32
                        })
                    );
                } else {
                    let id = r.unwrap();
                    let all = pending
                        .iter()
                        .chain(published.iter())
                        .chain(held.iter())
                        .map(|c| c.id)
                        .chain(used_pending.iter().map(|u| u.id))
                        .chain(used_visible.iter().map(|u| u.0.id));
                    for other in all {
                        prop_assert_ne!(other, id);
                    }
                    free -= k;
                    let writable = chain.iter().filter(|b| b.writable).map(|b| b.len).sum();
                    pending.push_back(Chain {
                        id,
                        bufs: chain,
                        slots: k,
                        writable,
                    });
                }
            }
            Op::Publish => {
                drv.publish().unwrap();
                published.extend(pending.drain(..));
            }
            Op::Pop => {
                let got = dev.pop(&mut bufs).unwrap();
                match published.pop_front() {
                    None => prop_assert_eq!(got, None),
                    Some(c) => {
                        let info = got.unwrap();
                        prop_assert_eq!(info.id, c.id);
                        prop_assert_eq!(info.slots, c.slots);
                        prop_assert_eq!(&bufs[..info.count], &c.bufs[..]);
                        prop_assert_eq!(info.writable_len, c.writable as u64);
                        held.push(c);
                    }
                }
            }
            Op::PushUsed { pick } => {
                if held.is_empty() {
                    continue;
                }
                let i = if in_order { 0 } else { pick % held.len() };
                let c = held.remove(i);
                let len = c.writable / 2;
                dev.push_used(c.id, len, c.slots).unwrap();
                used_pending.push(Used { id: c.id, len });
            }
            Op::PushBatch { k } => {
                if !in_order || held.is_empty() {
                    continue;
                }
                let k = k.min(held.len());
                let batch: Vec<Chain> = held.drain(..k).collect();
                let slots = batch.iter().map(|c| c.slots).sum();
                let last = &batch[k - 1];
                dev.push_used(last.id, last.writable, slots).unwrap();
                for c in &batch[..k - 1] {
                    used_pending.push(Used { id: c.id, len: 0 });
                }
                used_pending.push(Used {
                    id: last.id,
                    len: last.writable,
                });
            }
            Op::PublishUsed => {
                dev.publish_used().unwrap();
                for u in used_pending.drain(..) {
                    used_visible.push_back((u, 0));
                }
            }
            Op::PollUsed => {
                let got = drv.poll_used().unwrap();
                match used_visible.pop_front() {
                    None => prop_assert_eq!(got, None),
                    Some((u, _)) => {
                        prop_assert_eq!(got, Some(u));
                        // Slots of the returned chain are free again.
                        free = drv.free_slots();
                    }
                }
            }
        }
        prop_assert_eq!(drv.free_slots(), free);
        prop_assert!(!drv.is_broken() && !dev.is_broken());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn model_random_ops(n in 1u16..=7, ops in proptest::collection::vec(op(), 1..400)) {
        run_model(n, false, &ops)?;
    }

    #[test]
    fn model_random_ops_in_order(n in 1u16..=7, ops in proptest::collection::vec(op(), 1..400)) {
        run_model(n, true, &ops)?;
    }

    // ---- 4. random bytes -------------------------------------------------------
    #[test]
    fn random_ring_bytes_never_panic(
        n in 1u16..=6,
        ring_seed in proptest::collection::vec(any::<u8>(), 16 * 6 + 8),
        data_seed in proptest::collection::vec(any::<u8>(), 0..512),
        indirect in any::<bool>(),
        cap in 1usize..10,
    ) {
        let layout = PackedLayout::new(n).unwrap();
        let ring = Region::heap(layout.size());
        ring.write_bytes(0, &ring_seed[..layout.size()]).unwrap();
        let data = Region::heap(data_seed.len());
        data.write_bytes(0, &data_seed).unwrap();
        let features = if indirect { VIRTIO_F_INDIRECT_DESC } else { 0 };
        let mut dev = PackedDevice::new(ring, layout, data, features).unwrap();
        let mut bufs = vec![BufDesc::default(); cap];
        let bound = 4 * n as usize + 4;
        let mut ended = false;
        for _ in 0..bound {
            match dev.pop(&mut bufs) {
                Ok(None) => { ended = true; break; }
                Ok(Some(c)) => {
                    prop_assert!(c.count <= cap && c.slots >= 1 && c.slots <= n);
                    for b in &bufs[..c.count] {
                        prop_assert!(b.addr + b.len as u64 <= data_seed.len() as u64);
                    }
                    dev.push_used(c.id, 0, c.slots).unwrap();
                    dev.publish_used().unwrap();
                }
                Err(e) => {
                    prop_assert!(e.is_peer_violation());
                    prop_assert!(dev.is_broken());
                    prop_assert_eq!(dev.pop(&mut bufs), Err(RingError::Broken));
                    ended = true;
                    break;
                }
            }
        }
        prop_assert!(ended, "device kept popping a static ring");
    }

    #[test]
    fn random_used_bytes_never_panic(
        n in 1u16..=6,
        adds in 0usize..6,
        ring_seed in proptest::collection::vec(any::<u8>(), 16 * 6),
    ) {
        let (ring, mut drv, _dev) = pair(n, 0);
        for i in 0..adds.min(n as usize) {
            drv.add(&[BufDesc::writable(i as u64 * 8, 8)]).unwrap();
        }
        drv.publish().unwrap();
        ring.write_bytes(0, &ring_seed[..16 * n as usize]).unwrap();
        for _ in 0..(2 * n as usize + 2) {
            match drv.poll_used() {
                Ok(Some(u)) => prop_assert!(u.len <= 8),
                Ok(None) => break,
                Err(_) => { prop_assert!(drv.is_broken()); break; }
            }
        }
    }
}

// ---- 5. event suppression ---------------------------------------------------------

fn ev(flags: u16, off: u16, wrap: bool) -> EventSuppress {
    EventSuppress {
        off_wrap: EventSuppress::encode_off_wrap(off, wrap),
        flags,
    }
}

#[test]
fn need_event_hand_cases() {
    let e = |flags, off, wrap, idx, pos, pwrap, count| {
        need_event(ev(flags, off, wrap), idx, pos, pwrap, count, 8)
    };
    // Nothing published: never.
    assert!(!e(EVENT_F_ENABLE, 0, true, true, 3, true, 0));
    assert!(e(EVENT_F_ENABLE, 0, true, true, 3, true, 1));
    assert!(!e(EVENT_F_DISABLE, 0, true, true, 3, true, 1));
    // Reserved value 3 and DESC without EVENT_IDX: treated as ENABLE.
    assert!(e(3, 0, true, true, 3, true, 1));
    assert!(e(EVENT_F_DESC, 7, false, false, 3, true, 1));
    // DESC: published slots [1, 4) in the same lap.
    assert!(e(EVENT_F_DESC, 1, true, true, 4, true, 3));
    assert!(e(EVENT_F_DESC, 3, true, true, 4, true, 3));
    assert!(!e(EVENT_F_DESC, 0, true, true, 4, true, 3));
    assert!(!e(EVENT_F_DESC, 4, true, true, 4, true, 3));
    // Across the ring end: published slots 6, 7 (lap 1) and 0 (lap 0); position 1.
    assert!(e(EVENT_F_DESC, 6, true, true, 1, false, 3));
    assert!(e(EVENT_F_DESC, 7, true, true, 1, false, 3));
    assert!(e(EVENT_F_DESC, 0, false, true, 1, false, 3));
    assert!(!e(EVENT_F_DESC, 5, true, true, 1, false, 3));
    assert!(!e(EVENT_F_DESC, 1, false, true, 1, false, 3));
    // Event in the wrong lap for slot 0 (wrap 1, i.e. one lap ago): not crossed.
    assert!(!e(EVENT_F_DESC, 0, true, true, 1, false, 3));
    // A whole lap published: always.
    assert!(e(EVENT_F_DESC, 5, false, true, 1, false, 8));
    // Hostile offset beyond N: arithmetic only, no panic.
    assert!(!e(EVENT_F_DESC, 0x7fff, true, true, 1, false, 3));
}

#[test]
fn notifications_between_halves() {
    let (ring, mut drv, mut dev) = pair(8, VIRTIO_F_EVENT_IDX);
    let mock = PackedMock::new(ring, PackedLayout::new(8).unwrap());
    // Device disables avail notifications.
    assert_eq!(dev.set_avail_notification(false), Ok(false));
    drv.add(&[BufDesc::readable(0, 8)]).unwrap();
    assert_eq!(drv.needs_notify(), Ok(false));
    // Re-enabling reports the chain already there.
    assert_eq!(dev.set_avail_notification(true), Ok(true));
    drv.add(&[BufDesc::readable(0, 8)]).unwrap();
    assert_eq!(drv.needs_notify(), Ok(true));
    // Nothing new since: no notification.
    assert_eq!(drv.needs_notify(), Ok(false));
    // DESC: notify when slot 3 (lap 1) is made available.
    dev.set_avail_event(EventMode::Desc { off: 3, wrap: true })
        .unwrap();
    assert_eq!(mock.read_device_event().unwrap(), ev(EVENT_F_DESC, 3, true));
    drv.add(&[BufDesc::readable(0, 8)]).unwrap(); // slot 2
    assert_eq!(drv.needs_notify(), Ok(false));
    drv.add(&[BufDesc::readable(0, 8); 2]).unwrap(); // slots 3, 4
    assert_eq!(drv.needs_notify(), Ok(true));

    // Used side: driver asks for a notification at used slot 2 only.
    let mut bufs = [BufDesc::default(); 8];
    let mut chains = Vec::new();
    while let Some(c) = dev.pop(&mut bufs).unwrap() {
        chains.push(c);
    }
    assert_eq!(chains.len(), 4);
    assert_eq!(
        drv.set_used_notification(EventMode::Desc { off: 2, wrap: true }),
        Ok(false)
    );
    dev.push_used(chains[0].id, 0, chains[0].slots).unwrap(); // slot 0
    assert_eq!(dev.needs_notify(), Ok(false));
    dev.push_used(chains[1].id, 0, chains[1].slots).unwrap(); // slot 1
    dev.push_used(chains[2].id, 0, chains[2].slots).unwrap(); // slot 2
    assert_eq!(dev.needs_notify(), Ok(true));
    assert_eq!(drv.set_used_notification(EventMode::Disable), Ok(false));
    dev.push_used(chains[3].id, 0, chains[3].slots).unwrap();
    assert_eq!(dev.needs_notify(), Ok(false));
    // Enabling with used descriptors waiting reports them.
    assert_eq!(drv.set_used_notification(EventMode::Enable), Ok(true));
    // DESC without EVENT_IDX or off >= N is our own error.
    assert!(matches!(
        drv.set_used_notification(EventMode::Desc { off: 8, wrap: true }),
        Err(RingError::InvalidRequest(_))
    ));
    let (_r2, mut drv2, mut dev2) = pair(4, 0);
    assert!(drv2
        .set_used_notification(EventMode::Desc { off: 0, wrap: true })
        .is_err());
    assert!(dev2
        .set_avail_event(EventMode::Desc { off: 0, wrap: true })
        .is_err());
}

// ---- 7. two threads -------------------------------------------------------------

#[test]
fn two_threads_200k_chains() {
    use std::time::{Duration, Instant};
    const TOTAL: u64 = 200_000;
    const N: u16 = 6;
    let layout = PackedLayout::new(N).unwrap();
    let ring = Region::heap(layout.size());
    let data = Region::heap(N as usize * 64);
    let mut drv = PackedDriver::new(ring.clone(), layout, data.clone(), 0).unwrap();
    let mut dev = PackedDevice::new(ring, layout, data, 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);

    let device = std::thread::spawn(move || {
        let mut bufs = [BufDesc::default(); 4];
        let mut expect = 0u64;
        let mut idle = 0u32;
        let mut burst = 0u32;
        while expect < TOTAL {
            assert!(Instant::now() < deadline, "device timed out at {expect}");
            match dev.pop(&mut bufs).unwrap() {
                Some(c) => {
                    idle = 0;
                    assert_eq!(c.count, 2);
                    // Payload written before publish (P1) is visible after A1.
                    let seq = dev
                        .data()
                        .load_u64(bufs[0].addr as usize, Ordering::Relaxed)
                        .unwrap();
                    assert_eq!(seq, expect);
                    // Reply: seq + 1 into the writable buffer.
                    dev.data()
                        .store_u64(bufs[1].addr as usize, seq + 1, Ordering::Relaxed)
                        .unwrap();
                    dev.push_used(c.id, 8, c.slots).unwrap();
                    expect += 1;
                    burst += 1;
                    if burst == 3 {
                        burst = 0;
                        dev.publish_used().unwrap();
                    }
                }
                None => {
                    dev.publish_used().unwrap();
                    idle += 1;
                    if idle > 16 {
                        std::thread::yield_now();
                    }
                }
            }
        }
        dev.publish_used().unwrap();
    });

    // Buffer pair per sequence slot: readable at slot*64, writable at +32.
    let mut sent = 0u64;
    let mut done = 0u64;
    let mut seq_of = [u64::MAX; N as usize];
    let mut idle = 0u32;
    while done < TOTAL {
        assert!(Instant::now() < deadline, "driver timed out at {done}");
        let mut progress = false;
        // Fill: at most 3 chains (2 slots each) per burst.
        for _ in 0..3 {
            if sent == TOTAL || drv.free_slots() < 2 {
                break;
            }
            // Buffers are keyed by sequence number modulo N: at most 3 chains are
            // in flight, so a buffer is reused only after its chain returned.
            let slot = (sent % N as u64) as usize;
            let rd = slot as u64 * 64;
            drv.data()
                .store_u64(rd as usize, sent, Ordering::Relaxed)
                .unwrap();
            let id = drv
                .add(&[BufDesc::readable(rd, 8), BufDesc::writable(rd + 32, 8)])
                .unwrap();
            seq_of[id as usize] = sent;
            sent += 1;
            progress = true;
        }
        drv.publish().unwrap();
        while let Some(u) = drv.poll_used().unwrap() {
            let seq = seq_of[u.id as usize];
            assert_eq!(seq, done, "completions in order");
            assert_eq!(u.len, 8);
            let slot = (seq % N as u64) as usize;
            let reply = drv
                .data()
                .load_u64(slot * 64 + 32, Ordering::Relaxed)
                .unwrap();
            assert_eq!(reply, seq + 1);
            done += 1;
            progress = true;
        }
        if progress {
            idle = 0;
        } else {
            idle += 1;
            if idle > 16 {
                std::thread::yield_now();
            }
        }
    }
    device.join().unwrap();
    assert_eq!(drv.in_flight(), 0);
}
