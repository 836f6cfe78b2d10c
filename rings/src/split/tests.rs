//! Tests of the split virtqueue: golden bytes against the spec, hostile peers for
//! both halves (through [`super::mock`]), a model-based property test with 16-bit
//! wrap-around, a random-bytes fuzz, event-idx decisions, and a two-thread stress.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::layout::*;
use super::mock::MockRing;
use super::*;
use crate::chain::BufDesc;
use crate::error::RingError;
use crate::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_IN_ORDER};
use crate::mem::{Mem, Region};
use crate::sync::Ordering;

const DATA_LEN: usize = 4096;

struct Q {
    drv: SplitDriver<Region>,
    dev: SplitDevice<Region>,
    mock: MockRing<Region>,
    ring: Region,
    data: Region,
}

fn queue(n: u16, features: u64) -> Q {
    let layout = SplitLayout::new(n).unwrap();
    let ring = Region::heap(layout.size());
    let data = Region::heap(DATA_LEN);
    let drv = SplitDriver::new(ring.clone(), layout, data.clone(), features).unwrap();
    let dev = SplitDevice::new(ring.clone(), layout, data.clone(), features).unwrap();
    let mock = MockRing::new(ring.clone(), layout).unwrap();
    Q {
        drv,
        dev,
        mock,
        ring,
        data,
    }
}

fn ring_bytes(r: &Region) -> Vec<u8> {
    let mut v = vec![0u8; r.len()];
    r.read_bytes(0, &mut v).unwrap();
    v
}

// ---- 1. layout and golden bytes ------------------------------------------------

/// Linux `vring_size` (include/uapi/linux/virtio_ring.h), transcribed.
fn linux_vring_size(num: usize, align: usize) -> usize {
    ((16 * num + 2 * (3 + num) + align - 1) & !(align - 1)) + 2 * 3 + 8 * num
}

#[test]
fn layout_matches_linux_vring_size() {
    // By hand: 256 entries, align 4096: desc 16*256 = 4096, avail 2*(3+256) = 518,
    // 4614 rounded up to 8192, + 6 + 8*256 = 10246.
    let l = SplitLayout::with_used_align(256, LEGACY_USED_ALIGN).unwrap();
    assert_eq!(
        (l.avail_offset(), l.used_offset(), l.size()),
        (4096, 8192, 10246)
    );
    // 128 entries, align 4096: 2048 + 262 = 2310 -> 4096, + 6 + 1024 = 5126.
    let l = SplitLayout::with_used_align(128, 4096).unwrap();
    assert_eq!(
        (l.avail_offset(), l.used_offset(), l.size()),
        (2048, 4096, 5126)
    );
    // 256 entries, align 4 (virtio 1.x): 4614 -> 4616, + 6 + 2048 = 6670.
    let l = SplitLayout::new(256).unwrap();
    assert_eq!((l.used_offset(), l.size()), (4616, 6670));
    for n in [1u16, 2, 4, 64, 256, 1024, 32768] {
        for a in [4usize, 64, 4096] {
            let l = SplitLayout::with_used_align(n, a).unwrap();
            assert_eq!(l.size(), linux_vring_size(usize::from(n), a), "n={n} a={a}");
            assert_eq!(l.used_offset() % a, 0);
            assert_eq!(l.used_event(), l.avail_offset() + 4 + 2 * usize::from(n));
            assert_eq!(l.avail_event(), l.size() - 2);
        }
    }
    assert!(SplitLayout::new(0).is_err());
    assert!(SplitLayout::new(3).is_err());
    assert!(SplitLayout::new(32768).is_ok());
    assert!(SplitLayout::with_used_align(4, 2).is_err());
    assert!(SplitLayout::with_used_align(4, 48).is_err());
    let l = SplitLayout::new(4).unwrap();
    assert_eq!(
        SplitDriver::new(Region::heap(l.size() - 1), l, Region::heap(8), 0).unwrap_err(),
        RingError::RegionTooSmall {
            need: l.size(),
            have: l.size() - 1
        }
    );
}

/// Ring of 4, used ring aligned to 4: desc @0..64, avail @64..78, pad, used @80..118.
#[rustfmt::skip]
const GOLDEN_AVAIL: [u8; 118] = [
    // virtio 1.x 2.7.5 descriptor table: {le64 addr, le32 len, le16 flags, le16 next}
    // desc[0]: addr 0x100, len 0x10, flags NEXT(1), next 1   (readable head)
    0x00, 0x01, 0, 0, 0, 0, 0, 0,   0x10, 0, 0, 0,   0x01, 0x00,   0x01, 0x00,
    // desc[1]: addr 0x200, len 0x20, flags WRITE(2), next 0  (writable tail)
    0x00, 0x02, 0, 0, 0, 0, 0, 0,   0x20, 0, 0, 0,   0x02, 0x00,   0x00, 0x00,
    // desc[2]: addr 0x300, len 0x30, flags 0, next 0        (single readable buffer)
    0x00, 0x03, 0, 0, 0, 0, 0, 0,   0x30, 0, 0, 0,   0x00, 0x00,   0x00, 0x00,
    // desc[3]: unused
    0, 0, 0, 0, 0, 0, 0, 0,   0, 0, 0, 0,   0, 0,   0, 0,
    // virtio 1.x 2.7.6 available ring @64: le16 flags, le16 idx, le16 ring[4],
    // le16 used_event
    0x00, 0x00,   0x02, 0x00,   0x00, 0x00,  0x02, 0x00,  0x00, 0x00,  0x00, 0x00,
    0x00, 0x00,
    // padding to the used ring's 4-byte alignment (2.7: used ring alignment 4)
    0, 0,
    // virtio 1.x 2.7.8 used ring @80: le16 flags, le16 idx, {le32 id, le32 len}[4],
    // le16 avail_event -- untouched by the driver except zeroing
    0, 0,   0, 0,
    0, 0, 0, 0, 0, 0, 0, 0,   0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0,   0, 0, 0, 0, 0, 0, 0, 0,
    0, 0,
];

/// The used ring part (bytes 80..118) after the device returned both chains.
#[rustfmt::skip]
const GOLDEN_USED: [u8; 38] = [
    // virtio 1.x 2.7.8: le16 flags 0, le16 idx 2
    0x00, 0x00,   0x02, 0x00,
    // ring[0] = {id 0, len 0x18}: 0x18 bytes written into desc[1]'s buffer
    0x00, 0x00, 0x00, 0x00,   0x18, 0x00, 0x00, 0x00,
    // ring[1] = {id 2, len 0}: read-only chain
    0x02, 0x00, 0x00, 0x00,   0x00, 0x00, 0x00, 0x00,
    // ring[2], ring[3]: unused
    0, 0, 0, 0, 0, 0, 0, 0,   0, 0, 0, 0, 0, 0, 0, 0,
    // le16 avail_event (2.7.10), untouched without EVENT_IDX
    0x00, 0x00,
];

#[test]
fn golden_bytes_driver_and_device() {
    let mut q = queue(4, 0);
    // Dirty the ring first: the driver must zero the index/flag/event words itself.
    let layout = *q.drv.layout();
    q.ring.write_bytes(0, &[0xAA; 118]).unwrap();
    q.drv = SplitDriver::new(q.ring.clone(), layout, q.data.clone(), 0).unwrap();
    q.ring.write_bytes(0, &[0; 64]).unwrap();
    q.ring.write_bytes(70, &[0; 8]).unwrap();
    q.ring.write_bytes(78, &[0; 2]).unwrap();
    q.ring.write_bytes(84, &[0; 32]).unwrap();

    let h0 = q
        .drv
        .add(&[
            BufDesc::readable(0x100, 0x10),
            BufDesc::writable(0x200, 0x20),
        ])
        .unwrap();
    let h1 = q.drv.add(&[BufDesc::readable(0x300, 0x30)]).unwrap();
    assert_eq!((h0, h1), (0, 2));
    q.drv.publish().unwrap();
    assert_eq!(ring_bytes(&q.ring), GOLDEN_AVAIL.to_vec());

    let mut bufs = [BufDesc::default(); 4];
    let c = q.dev.pop(&mut bufs).unwrap().unwrap();
    assert_eq!(
        (c.id, c.count, c.readable_len, c.writable_len),
        (0, 2, 0x10, 0x20)
    );
    assert_eq!(bufs[1], BufDesc::writable(0x200, 0x20));
    q.dev.push_used(c.id, 0x18).unwrap();
    let c = q.dev.pop(&mut bufs).unwrap().unwrap();
    assert_eq!((c.id, c.count), (2, 1));
    q.dev.push_used(c.id, 0).unwrap();
    q.dev.publish_used().unwrap();
    let all = ring_bytes(&q.ring);
    assert_eq!(&all[..80], &GOLDEN_AVAIL[..80]);
    assert_eq!(&all[80..], &GOLDEN_USED[..]);

    assert_eq!(q.drv.poll_used().unwrap(), Some(Used { id: 0, len: 0x18 }));
    assert_eq!(q.drv.poll_used().unwrap(), Some(Used { id: 2, len: 0 }));
    assert_eq!(q.drv.poll_used().unwrap(), None);
    assert_eq!(q.drv.free_descs(), 4);
}

// ---- 2. hostile driver (device half) ------------------------------------------

/// Runs `pop` on a device fed by `setup` and checks the typed error, the broken mark,
/// and that a reset clears it.
fn hostile(
    features: u64,
    nbufs: usize,
    setup: impl FnOnce(&MockRing<Region>, &Region),
) -> RingError {
    let mut q = queue(4, features);
    setup(&q.mock, &q.data);
    let mut bufs = vec![BufDesc::default(); nbufs];
    let err = q.dev.pop(&mut bufs).unwrap_err();
    assert!(err.is_peer_violation(), "{err:?}");
    assert!(q.dev.is_broken());
    assert_eq!(q.dev.pop(&mut bufs), Err(RingError::Broken));
    assert_eq!(q.dev.push_used(0, 0), Err(RingError::Broken));
    assert_eq!(q.dev.publish_used(), Err(RingError::Broken));
    q.dev.reset();
    assert!(!q.dev.is_broken());
    err
}

const R: u16 = 0;
const N_: u16 = VIRTQ_DESC_F_NEXT;
const W: u16 = VIRTQ_DESC_F_WRITE;
const I: u16 = VIRTQ_DESC_F_INDIRECT;

#[test]
fn device_rejects_head_out_of_range() {
    let e = hostile(0, 4, |m, _| m.push_avail(4).unwrap());
    assert_eq!(e, RingError::DescIndexOutOfRange { index: 4, size: 4 });
    let e = hostile(0, 4, |m, _| m.push_avail(0xffff).unwrap());
    assert_eq!(
        e,
        RingError::DescIndexOutOfRange {
            index: 0xffff,
            size: 4
        }
    );
}

#[test]
fn device_rejects_next_out_of_range() {
    let e = hostile(0, 4, |m, _| {
        m.desc(0, 0, 8, R | N_, 7).unwrap();
        m.push_avail(0).unwrap();
    });
    assert_eq!(e, RingError::DescIndexOutOfRange { index: 7, size: 4 });
}

#[test]
fn device_rejects_buffer_outside_data_area() {
    let e = hostile(0, 4, |m, _| {
        m.desc(0, DATA_LEN as u64 - 8, 16, R, 0).unwrap();
        m.push_avail(0).unwrap();
    });
    assert_eq!(
        e,
        RingError::BufferOutOfRange {
            addr: DATA_LEN as u64 - 8,
            len: 16,
            limit: DATA_LEN as u64
        }
    );
    // addr + len overflows u64.
    let e = hostile(0, 4, |m, _| {
        m.desc(0, u64::MAX - 2, 16, W, 0).unwrap();
        m.push_avail(0).unwrap();
    });
    assert!(matches!(e, RingError::BufferOutOfRange { addr, .. } if addr == u64::MAX - 2));
    // Exactly at the end is fine, one past is not.
    let mut q = queue(4, 0);
    q.mock.desc(0, DATA_LEN as u64 - 16, 16, R, 0).unwrap();
    q.mock.push_avail(0).unwrap();
    let mut bufs = [BufDesc::default(); 4];
    assert!(q.dev.pop(&mut bufs).unwrap().is_some());
}

#[test]
fn device_rejects_loops() {
    // a -> b -> a
    let e = hostile(0, 16, |m, _| {
        m.desc(0, 0, 8, R | N_, 1).unwrap();
        m.desc(1, 8, 8, R | N_, 0).unwrap();
        m.push_avail(0).unwrap();
    });
    assert_eq!(e, RingError::ChainTooLong { limit: 4 });
    // self-loop
    let e = hostile(0, 16, |m, _| {
        m.desc(2, 0, 8, W | N_, 2).unwrap();
        m.push_avail(2).unwrap();
    });
    assert_eq!(e, RingError::ChainTooLong { limit: 4 });
    // self-loop inside an indirect table of 2 entries
    let e = hostile(VIRTIO_F_INDIRECT_DESC, 16, |m, d| {
        MockRing::<Region>::write_table(
            d,
            0x100,
            &[Desc::new(0, 8, R | N_, 1), Desc::new(8, 8, R | N_, 1)],
        )
        .unwrap();
        m.desc(0, 0x100, 32, I, 0).unwrap();
        m.push_avail(0).unwrap();
    });
    assert_eq!(e, RingError::ChainTooLong { limit: 2 });
}

#[test]
fn device_rejects_bad_indirect() {
    let f = VIRTIO_F_INDIRECT_DESC;
    // indirect inside indirect
    let e = hostile(f, 8, |m, d| {
        MockRing::<Region>::write_table(d, 0x100, &[Desc::new(0x200, 16, I, 0)]).unwrap();
        m.desc(0, 0x100, 16, I, 0).unwrap();
        m.push_avail(0).unwrap();
    });
    assert_eq!(e, RingError::NestedIndirect);
    for len in [0u32, 8, 24] {
        let e = hostile(f, 8, |m, _| {
            m.desc(0, 0x100, len, I, 0).unwrap();
            m.push_avail(0).unwrap();
        });
        assert_eq!(e, RingError::BadIndirect { len });
    }
    // INDIRECT together with NEXT
    let e = hostile(f, 8, |m, _| {
        m.desc(0, 0x100, 16, I | N_, 1).unwrap();
        m.push_avail(0).unwrap();
    });
    assert_eq!(e, RingError::BadIndirect { len: 16 });
    // table outside the data area
    let e = hostile(f, 8, |m, _| {
        m.desc(0, DATA_LEN as u64 - 16, 32, I, 0).unwrap();
        m.push_avail(0).unwrap();
    });
    assert!(matches!(e, RingError::BufferOutOfRange { len: 32, .. }));
    // next inside the table beyond its length
    let e = hostile(f, 8, |m, d| {
        MockRing::<Region>::write_table(d, 0x100, &[Desc::new(0, 8, R | N_, 5)]).unwrap();
        m.desc(0, 0x100, 16, I, 0).unwrap();
        m.push_avail(0).unwrap();
    });
    assert_eq!(e, RingError::DescIndexOutOfRange { index: 5, size: 1 });
    // buffer in the table outside the data area
    let e = hostile(f, 8, |m, d| {
        MockRing::<Region>::write_table(d, 0x100, &[Desc::new(u64::MAX, 1, W, 0)]).unwrap();
        m.desc(0, 0x100, 16, I, 0).unwrap();
        m.push_avail(0).unwrap();
    });
    assert!(matches!(e, RingError::BufferOutOfRange { .. }));
}

#[test]
fn device_rejects_indirect_not_negotiated() {
    let e = hostile(0, 8, |m, _| {
        m.desc(0, 0x100, 16, I, 0).unwrap();
        m.push_avail(0).unwrap();
    });
    assert_eq!(e, RingError::IndirectNotNegotiated);
}

#[test]
fn device_rejects_avail_idx_jump() {
    let e = hostile(0, 8, |m, _| m.set_avail_idx(5).unwrap());
    assert_eq!(
        e,
        RingError::IndexJump {
            what: "avail",
            old: 0,
            new: 5,
            size: 4
        }
    );
    // Going backwards is a jump of 65535.
    let e = hostile(0, 8, |m, _| m.set_avail_idx(0xffff).unwrap());
    assert!(matches!(e, RingError::IndexJump { new: 0xffff, .. }));
    // Exactly N ahead is fine.
    let mut q = queue(4, 0);
    for i in 0..4 {
        q.mock.desc(i, 0, 8, R, 0).unwrap();
        q.mock.set_avail_entry(i, i).unwrap();
    }
    q.mock.set_avail_idx(4).unwrap();
    let mut bufs = [BufDesc::default(); 4];
    for i in 0..4 {
        assert_eq!(q.dev.pop(&mut bufs).unwrap().unwrap().id, i);
    }
    assert_eq!(q.dev.pop(&mut bufs).unwrap(), None);
}

#[test]
fn device_rejects_readable_after_writable() {
    let e = hostile(0, 8, |m, _| {
        m.desc(0, 0, 8, W | N_, 1).unwrap();
        m.desc(1, 8, 8, R, 0).unwrap();
        m.push_avail(0).unwrap();
    });
    assert_eq!(e, RingError::ReadableAfterWritable);
}

#[test]
fn device_rejects_chain_longer_than_slice() {
    let e = hostile(0, 2, |m, _| {
        m.desc(0, 0, 8, R | N_, 1).unwrap();
        m.desc(1, 8, 8, R | N_, 2).unwrap();
        m.desc(2, 16, 8, W, 0).unwrap();
        m.push_avail(0).unwrap();
    });
    assert_eq!(e, RingError::ChainTooLong { limit: 2 });
}

#[test]
fn device_accepts_direct_then_indirect_and_unaligned_table() {
    let f = VIRTIO_F_INDIRECT_DESC;
    let mut q = queue(4, f);
    MockRing::<Region>::write_table(
        &q.data,
        0x104,
        &[Desc::new(0x20, 4, R | N_, 1), Desc::new(0x40, 8, W, 0)],
    )
    .unwrap();
    q.mock.desc(1, 0x10, 2, R | N_, 3).unwrap();
    q.mock.desc(3, 0x104, 32, I | W, 0).unwrap();
    q.mock.push_avail(1).unwrap();
    let mut bufs = [BufDesc::default(); 4];
    let c = q.dev.pop(&mut bufs).unwrap().unwrap();
    assert_eq!(
        (c.id, c.count, c.readable_len, c.writable_len),
        (1, 3, 6, 8)
    );
    assert_eq!(
        &bufs[..3],
        &[
            BufDesc::readable(0x10, 2),
            BufDesc::readable(0x20, 4),
            BufDesc::writable(0x40, 8)
        ]
    );
}

// ---- 2b. hostile device (driver half) -----------------------------------------

fn hostile_used(setup: impl FnOnce(&MockRing<Region>)) -> RingError {
    let mut q = queue(4, 0);
    let h = q
        .drv
        .add(&[BufDesc::readable(0, 8), BufDesc::writable(8, 8)])
        .unwrap();
    assert_eq!(h, 0);
    q.drv.publish().unwrap();
    setup(&q.mock);
    let err = q.drv.poll_used().unwrap_err();
    assert!(err.is_peer_violation());
    assert!(q.drv.is_broken());
    assert_eq!(q.drv.poll_used(), Err(RingError::Broken));
    assert_eq!(
        q.drv.add(&[BufDesc::readable(0, 1)]),
        Err(RingError::Broken)
    );
    q.drv.reset().unwrap();
    assert!(!q.drv.is_broken());
    assert_eq!((q.drv.free_descs(), q.drv.in_flight()), (4, 0));
    err
}

#[test]
fn driver_rejects_hostile_used_ring() {
    assert_eq!(
        hostile_used(|m| m.push_used(9, 0).unwrap()),
        RingError::DescIndexOutOfRange { index: 9, size: 4 }
    );
    assert_eq!(
        hostile_used(|m| m.push_used(0x1_0000, 0).unwrap()),
        RingError::DescIndexOutOfRange {
            index: 0x1_0000,
            size: 4
        }
    );
    // Descriptor 1 is part of chain 0 but not a head; 3 was never added.
    assert_eq!(
        hostile_used(|m| m.push_used(1, 0).unwrap()),
        RingError::UnexpectedUsedId { id: 1 }
    );
    assert_eq!(
        hostile_used(|m| m.push_used(3, 0).unwrap()),
        RingError::UnexpectedUsedId { id: 3 }
    );
    assert_eq!(
        hostile_used(|m| m.push_used(0, 9).unwrap()),
        RingError::UsedLenTooLarge { len: 9, max: 8 }
    );
    assert_eq!(
        hostile_used(|m| m.set_used_idx(5).unwrap()),
        RingError::IndexJump {
            what: "used",
            old: 0,
            new: 5,
            size: 4
        }
    );
    // The same chain returned twice.
    let mut q = queue(4, 0);
    q.drv.add(&[BufDesc::writable(0, 8)]).unwrap();
    q.drv.publish().unwrap();
    q.mock.push_used(0, 8).unwrap();
    q.mock.push_used(0, 8).unwrap();
    assert_eq!(q.drv.poll_used().unwrap(), Some(Used { id: 0, len: 8 }));
    assert_eq!(
        q.drv.poll_used(),
        Err(RingError::UnexpectedUsedId { id: 0 })
    );
    assert!(q.drv.is_broken());
}

#[test]
fn driver_rejects_bad_requests_without_breaking() {
    let mut q = queue(4, 0);
    let bad = |e: RingError| matches!(e, RingError::InvalidRequest(_));
    assert!(bad(q.drv.add(&[]).unwrap_err()));
    assert!(bad(q
        .drv
        .add(&[BufDesc::writable(0, 1), BufDesc::readable(0, 1)])
        .unwrap_err()));
    assert!(bad(q
        .drv
        .add(&[BufDesc::readable(DATA_LEN as u64, 1)])
        .unwrap_err()));
    assert!(bad(q
        .drv
        .add(&[BufDesc::readable(u64::MAX, 2)])
        .unwrap_err()));
    assert!(bad(q.drv.add(&[BufDesc::readable(0, 1); 5]).unwrap_err()));
    assert!(bad(q
        .drv
        .add_indirect(&[BufDesc::readable(0, 1)], 0)
        .unwrap_err()));
    assert!(!q.drv.is_broken());
    // Full: three descriptors taken, a 2-chain does not fit, a 1-chain does.
    q.drv.add(&[BufDesc::readable(0, 1); 3]).unwrap();
    assert_eq!(q.drv.add(&[BufDesc::readable(0, 1); 2]), Err(NO_FREE_DESCS));
    q.drv.add(&[BufDesc::readable(0, 1)]).unwrap();
    assert_eq!(q.drv.add(&[BufDesc::readable(0, 1)]), Err(NO_FREE_DESCS));
    assert_eq!((q.drv.free_descs(), q.drv.in_flight()), (0, 2));
}

#[test]
fn indirect_round_trip() {
    let mut q = queue(2, VIRTIO_F_INDIRECT_DESC);
    // A chain, indirect or not, may not be longer than the queue (2.7.5.3.1).
    assert!(matches!(
        q.drv.add_indirect(&[BufDesc::readable(0, 1); 3], 0x100),
        Err(RingError::InvalidRequest(_))
    ));
    let mut q = queue(4, VIRTIO_F_INDIRECT_DESC);
    let bufs = [
        BufDesc::readable(0x0, 4),
        BufDesc::readable(0x10, 4),
        BufDesc::writable(0x20, 16),
    ];
    assert!(matches!(
        q.drv.add_indirect(&bufs, 0x108),
        Err(RingError::InvalidRequest(_))
    ));
    let h = q.drv.add_indirect(&bufs, 0x100).unwrap();
    let h2 = q.drv.add_indirect(&bufs[..1], 0x200).unwrap();
    assert_eq!(q.drv.free_descs(), 2);
    q.drv.publish().unwrap();
    let mut out = [BufDesc::default(); 8];
    let c = q.dev.pop(&mut out).unwrap().unwrap();
    assert_eq!((c.id, c.count, c.writable_len), (h, 3, 16));
    assert_eq!(&out[..3], &bufs);
    let c2 = q.dev.pop(&mut out).unwrap().unwrap();
    assert_eq!((c2.id, c2.count), (h2, 1));
    q.dev.push_used(c2.id, 0).unwrap();
    q.dev.push_used(c.id, 16).unwrap();
    q.dev.publish_used().unwrap();
    assert_eq!(q.drv.poll_used().unwrap(), Some(Used { id: h2, len: 0 }));
    assert_eq!(q.drv.poll_used().unwrap(), Some(Used { id: h, len: 16 }));
    assert_eq!(q.drv.free_descs(), 4);
}

#[test]
fn in_order_batch_completes_skipped_chains() {
    let f = VIRTIO_F_IN_ORDER;
    let mut q = queue(8, f);
    let a = q.drv.add(&[BufDesc::writable(0, 10)]).unwrap();
    let b = q
        .drv
        .add(&[BufDesc::readable(16, 4), BufDesc::writable(32, 20)])
        .unwrap();
    let c = q.drv.add(&[BufDesc::writable(64, 30)]).unwrap();
    assert_eq!((a, b, c), (0, 1, 3));
    q.drv.publish().unwrap();
    let mut out = [BufDesc::default(); 4];
    for want in [a, b, c] {
        assert_eq!(q.dev.pop(&mut out).unwrap().unwrap().id, want);
    }
    q.dev.push_used_batch(c, 7).unwrap();
    q.dev.publish_used().unwrap();
    assert_eq!(q.mock.used_idx().unwrap(), 1);
    // Skipped chains get their full writable length; the named one the device's.
    assert_eq!(q.drv.poll_used().unwrap(), Some(Used { id: a, len: 10 }));
    assert_eq!(q.drv.poll_used().unwrap(), Some(Used { id: b, len: 20 }));
    assert_eq!(q.drv.poll_used().unwrap(), Some(Used { id: c, len: 7 }));
    assert_eq!(q.drv.poll_used().unwrap(), None);
    // Descriptors are reused in ring order (virtio 1.x 2.7.9): next is 4, then 5.
    assert_eq!(q.drv.add(&[BufDesc::writable(0, 1)]).unwrap(), 4);
    assert_eq!(q.drv.add(&[BufDesc::writable(0, 1); 4]).unwrap(), 5);
    // 5,6,7 then wraps to 0 in ring order.
    assert_eq!(q.drv.add(&[BufDesc::writable(0, 1)]).unwrap(), 1);
    // Without IN_ORDER, push_used_batch is refused.
    let mut q2 = queue(4, 0);
    assert!(matches!(
        q2.dev.push_used_batch(0, 0),
        Err(RingError::InvalidRequest(_))
    ));
}

#[test]
fn in_order_rejects_unknown_batch_id() {
    let mut q = queue(4, VIRTIO_F_IN_ORDER);
    q.drv.add(&[BufDesc::writable(0, 10)]).unwrap();
    let unpublished = q.drv.add(&[BufDesc::writable(0, 10)]).unwrap();
    // Publish only the first: put idx to 1 by hand.
    q.mock.set_avail_idx(1).unwrap();
    // Internal publish state still says 0, so the second chain is not searchable;
    // neither is the first, because the driver has not published it itself.
    q.mock.push_used(u32::from(unpublished), 0).unwrap();
    assert_eq!(
        q.drv.poll_used(),
        Err(RingError::UnexpectedUsedId {
            id: u32::from(unpublished)
        })
    );
}

// ---- 3. model-based property test ----------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Add { nr: u8, nw: u8 },
    AddIndirect { nr: u8, nw: u8 },
    Publish,
    Pop,
    PushUsed(usize),
    PublishUsed,
    PollUsed,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3, 0u8..3).prop_map(|(nr, nw)| Op::Add { nr, nw }),
        1 => (0u8..3, 0u8..3).prop_map(|(nr, nw)| Op::AddIndirect { nr, nw }),
        2 => Just(Op::Publish),
        3 => Just(Op::Pop),
        3 => any::<usize>().prop_map(Op::PushUsed),
        2 => Just(Op::PublishUsed),
        3 => Just(Op::PollUsed),
    ]
}

struct Chain {
    head: u16,
    bufs: Vec<BufDesc>,
    ndescs: u16,
    writable: u64,
    table: Option<u64>,
}

/// Runs `ops` on a ring of `n` entries with all indices starting at `start`, against
/// a VecDeque model.
fn run_model(n: u16, start: u16, ops: &[Op]) {
    let mut q = queue(n, VIRTIO_F_INDIRECT_DESC);
    q.drv.start_at(start).unwrap();
    q.dev.start_at(start);
    // Indirect table slots in the upper half of the data area, one per possible
    // in-flight chain.
    let mut tables: Vec<u64> = (0..u64::from(n)).map(|i| 2048 + 64 * i).collect();
    let mut free = n;
    let mut unpublished: VecDeque<Chain> = VecDeque::new();
    let mut avail: VecDeque<Chain> = VecDeque::new();
    let mut popped: Vec<Chain> = Vec::new();
    let mut pushed: VecDeque<(Chain, u32)> = VecDeque::new();
    let mut used: VecDeque<(Chain, u32)> = VecDeque::new();
    let mut counter = 0u64;
    let mut out = vec![BufDesc::default(); 8];
    for op in ops {
        match *op {
            Op::Add { nr, nw } | Op::AddIndirect { nr, nw } => {
                let indirect = matches!(op, Op::AddIndirect { .. });
                let mut bufs = Vec::new();
                for i in 0..(nr + nw).max(1) {
                    counter += 1;
                    let addr = (counter * 24) % 2000;
                    let len = (counter % 23) as u32;
                    bufs.push(if i < nr {
                        BufDesc::readable(addr, len)
                    } else {
                        BufDesc::writable(addr, len)
                    });
                }
                let writable = bufs
                    .iter()
                    .filter(|b| b.writable)
                    .map(|b| u64::from(b.len))
                    .sum();
                let ndescs = if indirect { 1 } else { bufs.len() as u16 };
                let res = if indirect {
                    let t = tables.last().copied().unwrap_or(2048);
                    q.drv.add_indirect(&bufs, t)
                } else {
                    q.drv.add(&bufs)
                };
                if bufs.len() > usize::from(n) {
                    assert!(matches!(res, Err(RingError::InvalidRequest(_))));
                    continue;
                }
                if ndescs > free {
                    assert_eq!(res, Err(NO_FREE_DESCS));
                    continue;
                }
                let head = res.unwrap();
                free -= ndescs;
                let table = if indirect { tables.pop() } else { None };
                unpublished.push_back(Chain {
                    head,
                    bufs,
                    ndescs,
                    writable,
                    table,
                });
            }
            Op::Publish => {
                q.drv.publish().unwrap();
                avail.extend(unpublished.drain(..));
            }
            Op::Pop => match avail.pop_front() {
                None => assert_eq!(q.dev.pop(&mut out).unwrap(), None),
                Some(c) => {
                    let info = q.dev.pop(&mut out).unwrap().unwrap();
                    assert_eq!(info.id, c.head);
                    assert_eq!(&out[..info.count], &c.bufs[..]);
                    assert_eq!(info.writable_len, c.writable);
                    popped.push(c);
                }
            },
            Op::PushUsed(i) => {
                if popped.is_empty() {
                    continue;
                }
                let c = popped.swap_remove(i % popped.len());
                let len = (c.writable / 2) as u32;
                q.dev.push_used(c.head, len).unwrap();
                pushed.push_back((c, len));
            }
            Op::PublishUsed => {
                q.dev.publish_used().unwrap();
                used.extend(pushed.drain(..));
            }
            Op::PollUsed => match used.pop_front() {
                None => assert_eq!(q.drv.poll_used().unwrap(), None),
                Some((c, len)) => {
                    assert_eq!(q.drv.poll_used().unwrap(), Some(Used { id: c.head, len }));
                    free += c.ndescs;
                    if let Some(t) = c.table {
                        tables.push(t);
                    }
                }
            },
        }
        assert_eq!(q.drv.free_descs(), free);
        let in_flight = unpublished.len() + avail.len() + popped.len() + pushed.len() + used.len();
        assert_eq!(usize::from(q.drv.in_flight()), in_flight);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn model_random_ops(
        n in prop_oneof![Just(1u16), Just(2), Just(4), Just(8)],
        start in prop_oneof![Just(0u16), Just(65530), Just(65535), any::<u16>()],
        ops in proptest::collection::vec(op_strategy(), 1..300),
    ) {
        run_model(n, start, &ops);
    }
}

#[test]
fn wraps_16_bit_indices_without_hooks() {
    // 70000 chains through a ring of 4: avail.idx and used.idx wrap past 65535.
    let mut q = queue(4, 0);
    let mut out = [BufDesc::default(); 4];
    for i in 0..70_000u32 {
        let h = q
            .drv
            .add(&[
                BufDesc::readable(u64::from(i % 64), 1),
                BufDesc::writable(128, 4),
            ])
            .unwrap();
        q.drv.publish().unwrap();
        let c = q.dev.pop(&mut out).unwrap().unwrap();
        assert_eq!((c.id, out[0].addr), (h, u64::from(i % 64)));
        q.dev.push_used(c.id, i % 5).unwrap();
        q.dev.publish_used().unwrap();
        assert_eq!(q.drv.poll_used().unwrap(), Some(Used { id: h, len: i % 5 }));
    }
    assert_eq!(q.mock.avail_idx().unwrap(), (70_000u32 % 65536) as u16);
    assert_eq!(q.mock.used_idx().unwrap(), (70_000u32 % 65536) as u16);
}

// ---- 4. random bytes ------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn device_survives_random_bytes(
        ring_bytes in proptest::collection::vec(any::<u8>(), 222),
        data_bytes in proptest::collection::vec(any::<u8>(), 256),
        feat in 0u8..8,
        nbufs in 1usize..12,
    ) {
        let features = (if feat & 1 != 0 { VIRTIO_F_INDIRECT_DESC } else { 0 })
            | (if feat & 2 != 0 { VIRTIO_F_EVENT_IDX } else { 0 })
            | (if feat & 4 != 0 { VIRTIO_F_IN_ORDER } else { 0 });
        let layout = SplitLayout::new(8).unwrap();
        prop_assert_eq!(layout.size(), 222);
        let ring = Region::heap(layout.size());
        let data = Region::heap(data_bytes.len());
        ring.write_bytes(0, &ring_bytes).unwrap();
        data.write_bytes(0, &data_bytes).unwrap();
        let mut dev = SplitDevice::new(ring.clone(), layout, data.clone(), features).unwrap();
        let mut out = vec![BufDesc::default(); nbufs];
        let mut steps = 0;
        loop {
            steps += 1;
            prop_assert!(steps <= 10, "device kept popping");
            match dev.pop(&mut out) {
                Ok(None) => break,
                Ok(Some(c)) => {
                    prop_assert!(c.id < 8 && c.count >= 1 && c.count <= nbufs);
                    for b in &out[..c.count] {
                        prop_assert!(b.addr + u64::from(b.len) <= 256);
                    }
                    dev.push_used(c.id, 0).unwrap();
                }
                Err(e) => {
                    prop_assert!(e.is_peer_violation());
                    prop_assert!(dev.is_broken());
                    prop_assert_eq!(dev.pop(&mut out), Err(RingError::Broken));
                    break;
                }
            }
        }
        let _ = dev.publish_used();
        let _ = dev.needs_notify();

        // The driver half against a random used ring (bytes 80.. of the used part).
        let mut drv = SplitDriver::new(ring.clone(), layout, data, features).unwrap();
        for i in 0..4u64 {
            drv.add(&[BufDesc::readable(i, 1), BufDesc::writable(64 + i, 8)]).unwrap();
        }
        drv.publish().unwrap();
        let used_part = layout.used_offset();
        ring.write_bytes(used_part, &ring_bytes[used_part..]).unwrap();
        for _ in 0..20 {
            match drv.poll_used() {
                Ok(Some(u)) => prop_assert!(u.len <= 8 && u.id < 8),
                Ok(None) => break,
                Err(e) => {
                    prop_assert!(e.is_peer_violation());
                    prop_assert_eq!(drv.poll_used(), Err(RingError::Broken));
                    break;
                }
            }
        }
    }
}

// ---- 5. event idx ----------------------------------------------------------------

#[test]
fn vring_need_event_hand_cases() {
    // virtio 1.x 2.7.10: notify iff event in [old, new) (mod 2^16).
    assert!(vring_need_event(0, 1, 0));
    assert!(!vring_need_event(1, 1, 0));
    assert!(vring_need_event(5, 10, 3));
    assert!(vring_need_event(3, 10, 3));
    assert!(!vring_need_event(10, 10, 3));
    assert!(!vring_need_event(2, 10, 3));
    assert!(vring_need_event(65535, 2, 65534));
    assert!(vring_need_event(0, 2, 65534));
    assert!(!vring_need_event(2, 2, 65534));
    assert!(!vring_need_event(7, 7, 7));
}

#[test]
fn driver_needs_notify_event_idx() {
    let mut q = queue(8, VIRTIO_F_EVENT_IDX);
    let add = |q: &mut Q, k: usize| {
        for _ in 0..k {
            q.drv.add(&[BufDesc::readable(0, 1)]).unwrap();
        }
        q.drv.publish().unwrap();
    };
    // old 0, new 1, avail_event 0 -> in [0,1): notify.
    add(&mut q, 1);
    assert!(q.drv.needs_notify().unwrap());
    // old 1, new 2, avail_event still 0 -> not in [1,2).
    add(&mut q, 1);
    assert!(!q.drv.needs_notify().unwrap());
    // avail_event 3; old 2, new 4 -> 3 in [2,4).
    q.mock.set_avail_event(3).unwrap();
    add(&mut q, 2);
    assert!(q.drv.needs_notify().unwrap());
    // avail_event 9; old 4, new 6 -> no.
    q.mock.set_avail_event(9).unwrap();
    add(&mut q, 2);
    assert_eq!(q.drv.needs_notify().unwrap(), vring_need_event(9, 6, 4));
    assert!(!vring_need_event(9, 6, 4));
    // NO_NOTIFY is ignored with EVENT_IDX.
    q.mock.set_used_flags(VIRTQ_USED_F_NO_NOTIFY).unwrap();
    q.mock.set_avail_event(6).unwrap();
    // drain two chains to make room
    let mut out = [BufDesc::default(); 2];
    for _ in 0..6 {
        let c = q.dev.pop(&mut out).unwrap().unwrap();
        q.dev.push_used(c.id, 0).unwrap();
    }
    q.dev.publish_used().unwrap();
    while q.drv.poll_used().unwrap().is_some() {}
    add(&mut q, 1);
    assert!(q.drv.needs_notify().unwrap());
}

#[test]
fn driver_needs_notify_flags() {
    let mut q = queue(4, 0);
    q.drv.add(&[BufDesc::readable(0, 1)]).unwrap();
    q.drv.publish().unwrap();
    assert!(q.drv.needs_notify().unwrap());
    // Nothing new since the last decision.
    assert!(!q.drv.needs_notify().unwrap());
    q.mock.set_used_flags(VIRTQ_USED_F_NO_NOTIFY).unwrap();
    q.drv.add(&[BufDesc::readable(0, 1)]).unwrap();
    q.drv.publish().unwrap();
    assert!(!q.drv.needs_notify().unwrap());
    // The device half sets and clears the flag.
    q.dev.set_avail_notification(true).unwrap();
    assert_eq!(q.mock.used_flags().unwrap(), 0);
    q.drv.add(&[BufDesc::readable(0, 1)]).unwrap();
    q.drv.publish().unwrap();
    assert!(q.drv.needs_notify().unwrap());
    q.dev.set_avail_notification(false).unwrap();
    assert_eq!(q.mock.used_flags().unwrap(), VIRTQ_USED_F_NO_NOTIFY);
}

#[test]
fn device_needs_notify_event_idx_and_flags() {
    let mut q = queue(8, VIRTIO_F_EVENT_IDX);
    for _ in 0..8 {
        q.drv.add(&[BufDesc::writable(0, 4)]).unwrap();
    }
    q.drv.publish().unwrap();
    let mut out = [BufDesc::default(); 2];
    let mut ids = Vec::new();
    while let Some(c) = q.dev.pop(&mut out).unwrap() {
        ids.push(c.id);
    }
    assert_eq!(ids.len(), 8);
    let mut give = |q: &mut Q, k: usize| {
        for _ in 0..k {
            q.dev.push_used(ids.remove(0), 1).unwrap();
        }
        q.dev.publish_used().unwrap();
    };
    // used_event 0; old 0, new 1 -> notify.
    give(&mut q, 1);
    assert!(q.dev.needs_notify().unwrap());
    // old 1, new 3, used_event 0 -> no.
    give(&mut q, 2);
    assert!(!q.dev.needs_notify().unwrap());
    // The driver asks to be woken at its next used position (0: it has polled none).
    q.drv.set_used_notification(true).unwrap();
    assert_eq!(
        q.ring
            .load_u16(q.drv.layout().used_event(), Ordering::Relaxed)
            .unwrap(),
        0
    );
    for _ in 0..3 {
        q.drv.poll_used().unwrap().unwrap();
    }
    q.drv.set_used_notification(true).unwrap();
    assert_eq!(
        q.ring
            .load_u16(q.drv.layout().used_event(), Ordering::Relaxed)
            .unwrap(),
        3
    );
    // old 3, new 5, used_event 3 -> notify.
    give(&mut q, 2);
    assert!(q.dev.needs_notify().unwrap());
    // Disabling puts used_event just behind: never reached.
    q.drv.set_used_notification(false).unwrap();
    assert_eq!(
        q.ring
            .load_u16(q.drv.layout().used_event(), Ordering::Relaxed)
            .unwrap(),
        2
    );
    give(&mut q, 3);
    assert!(!q.dev.needs_notify().unwrap());
    // avail_event written by the device = last avail idx seen (8).
    q.dev.set_avail_notification(true).unwrap();
    assert_eq!(q.mock.avail_event().unwrap(), 8);

    // Without EVENT_IDX: avail.flags NO_INTERRUPT.
    let mut q = queue(4, 0);
    q.drv.add(&[BufDesc::writable(0, 4)]).unwrap();
    q.drv.add(&[BufDesc::writable(0, 4)]).unwrap();
    q.drv.publish().unwrap();
    let c = q.dev.pop(&mut out).unwrap().unwrap();
    q.dev.push_used(c.id, 0).unwrap();
    q.dev.publish_used().unwrap();
    assert!(q.dev.needs_notify().unwrap());
    assert!(!q.dev.needs_notify().unwrap());
    q.drv.set_used_notification(false).unwrap();
    assert_eq!(
        q.ring
            .load_u16(q.drv.layout().avail_flags(), Ordering::Relaxed)
            .unwrap(),
        VIRTQ_AVAIL_F_NO_INTERRUPT
    );
    let c = q.dev.pop(&mut out).unwrap().unwrap();
    q.dev.push_used(c.id, 0).unwrap();
    q.dev.publish_used().unwrap();
    assert!(!q.dev.needs_notify().unwrap());
}

// ---- 7. two threads --------------------------------------------------------------

#[cfg(not(loom))]
#[test]
fn two_threads_move_200k_chains() {
    use std::time::{Duration, Instant};
    const TOTAL: u64 = 200_000;
    const N: u16 = 64;
    let layout = SplitLayout::new(N).unwrap();
    let ring = Region::heap(layout.size());
    let data = Region::heap(usize::from(N) * 16);
    let mut drv = SplitDriver::new(ring.clone(), layout, data.clone(), VIRTIO_F_EVENT_IDX).unwrap();
    let mut dev = SplitDevice::new(ring, layout, data.clone(), VIRTIO_F_EVENT_IDX).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);

    let device = std::thread::spawn(move || {
        let mut out = [BufDesc::default(); 4];
        let mut expect = 0u64;
        while expect < TOTAL {
            assert!(Instant::now() < deadline, "device timed out at {expect}");
            let mut got = 0;
            while let Some(c) = dev.pop(&mut out).unwrap() {
                assert_eq!(c.count, 2);
                let seq = dev
                    .data()
                    .load_u64(out[0].addr as usize, Ordering::Relaxed)
                    .unwrap();
                assert_eq!(seq, expect, "payload out of order or not visible");
                dev.data()
                    .store_u64(out[1].addr as usize, !seq, Ordering::Relaxed)
                    .unwrap();
                dev.push_used(c.id, 8).unwrap();
                expect += 1;
                got += 1;
                if got == 32 {
                    break;
                }
            }
            if got > 0 {
                dev.publish_used().unwrap();
            } else {
                std::thread::yield_now();
            }
        }
    });

    // Buffer slot per descriptor head (a 2-chain uses heads from a FIFO free list,
    // so map head -> (slot, seq)).
    let mut slot_free: Vec<u16> = (0..N / 2).collect();
    let mut meta = vec![(0u16, 0u64); usize::from(N)];
    let (mut sent, mut done) = (0u64, 0u64);
    while done < TOTAL {
        assert!(Instant::now() < deadline, "driver timed out at {done}");
        let mut progress = false;
        let mut burst = 0;
        while sent < TOTAL && burst < 32 {
            let Some(slot) = slot_free.pop() else { break };
            let off = u64::from(slot) * 32;
            data.store_u64(off as usize, sent, Ordering::Relaxed)
                .unwrap();
            let h = drv
                .add(&[BufDesc::readable(off, 8), BufDesc::writable(off + 8, 8)])
                .unwrap();
            meta[usize::from(h)] = (slot, sent);
            sent += 1;
            burst += 1;
        }
        if burst > 0 {
            drv.publish().unwrap();
            let _ = drv.needs_notify().unwrap();
            progress = true;
        }
        while let Some(u) = drv.poll_used().unwrap() {
            let (slot, seq) = meta[usize::from(u.id)];
            assert_eq!(seq, done, "completions out of order");
            assert_eq!(u.len, 8);
            let back = data
                .load_u64(usize::from(slot) * 32 + 8, Ordering::Relaxed)
                .unwrap();
            assert_eq!(back, !seq);
            slot_free.push(slot);
            done += 1;
            progress = true;
        }
        if !progress {
            std::thread::yield_now();
        }
    }
    device.join().unwrap();
    assert_eq!(drv.in_flight(), 0);
}
