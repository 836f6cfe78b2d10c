//! In-process tests of the posted queue pair: two threads over one window, the
//! instrumented remote-access counts, out-of-order frees, hostile peers, the layout.

use std::sync::Arc;
use std::time::Duration;

use rings::posted::{credit_entry, PostedLayout, FLAG_INLINE};
use rings::{Mem, Region, RingError};

use super::testpkt::{self, run_duplex, Traffic, TrafficReport};
use super::*;
use crate::window::{AccessCounters, Counted, HeapWindow, Window};

fn ring() -> PostedLayout {
    PostedLayout::new(256, 64, 256, 2048).unwrap()
}

fn link(queues: u16) -> (HeapWindow, PostedLinkLayout) {
    let l = PostedLinkLayout::new(ring(), queues).unwrap();
    let w = HeapWindow::new(l.window_size()).unwrap();
    l.create(&w).unwrap();
    (w, l)
}

/// Packets per direction for the threaded test (env `ZEROHOP_QUEUE_TEST_PKTS`).
fn thread_count() -> u64 {
    std::env::var("ZEROHOP_QUEUE_TEST_PKTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn duplex_threads(sizes: &[usize], count: u64) -> (TrafficReport, TrafficReport) {
    let (w, l) = link(1);
    let peer = PostedLinkLayout::attach(&w).unwrap();
    assert_eq!(peer, l);
    let mut a = l.open_side(&w, Side::A, 0).unwrap();
    let mut b = peer.open_side(&w, Side::B, 0).unwrap();
    let mut t = Traffic::new(count, sizes);
    t.deadline = Duration::from_secs(120);
    std::thread::scope(|s| {
        let hb = s.spawn(|| run_duplex(&mut b, &t));
        let ra = run_duplex(&mut a, &t);
        (ra, hb.join().unwrap())
    })
}

#[test]
fn threads_move_1m_each_way_intact_64_1500_and_mix() {
    let count = thread_count();
    for sizes in [
        &[64usize][..],
        &[1500],
        &[16, 48, 64, 40, 1500, 200, 24, 1024, 33],
    ] {
        let (a, b) = duplex_threads(sizes, count);
        println!("sizes {sizes:?}: A {a:?}\n  B {b:?}");
        assert!(a.clean(count), "{sizes:?}: A {a:?}");
        assert!(b.clean(count), "{sizes:?}: B {b:?}");
    }
}

#[test]
fn remote_reads_are_zero_and_writes_are_counted() {
    let (w, l) = link(1);
    // Per side: one counter for the peer's rx area (our TX: slots + payload) and one
    // for the peer's tx area (our RX: credits + consumed).
    let counted = |side: Side| {
        let ar = l.side_areas(&w, side, 0).unwrap();
        let (tx, rx) = (
            Arc::new(AccessCounters::default()),
            Arc::new(AccessCounters::default()),
        );
        let areas = SideAreas {
            local_tx: ar.local_tx,
            local_rx: ar.local_rx,
            remote_tx: Counted::with_counters(ar.remote_tx, rx.clone()),
            remote_rx: Counted::with_counters(ar.remote_rx, tx.clone()),
        };
        (PostedQueuePair::new(areas, l.ring(), 32).unwrap(), tx, rx)
    };
    let (mut a, a_tx, a_rx) = counted(Side::A);
    let (mut b, b_tx, b_rx) = counted(Side::B);
    let all = [&a_tx, &a_rx, &b_tx, &b_rx];
    for (sizes, count) in [
        (&[64usize][..], 50_000u64),
        (&[1500], 50_000),
        (&[32], 50_000),
    ] {
        let mut t = Traffic::new(count, sizes);
        t.deadline = Duration::from_secs(60);
        let before = all.map(|c| c.snapshot());
        let (ra, rb) = std::thread::scope(|s| {
            let hb = s.spawn(|| run_duplex(&mut b, &t));
            (run_duplex(&mut a, &t), hb.join().unwrap())
        });
        assert!(ra.clean(count) && rb.clean(count), "{ra:?} {rb:?}");
        let d: Vec<_> = all
            .iter()
            .zip(before)
            .map(|(c, b)| c.snapshot() - b)
            .collect();
        // Each side sent `count` and received `count` packets.
        let per = |x: u64| x as f64 / count as f64;
        for (name, tx, rx) in [("A", &d[0], &d[1]), ("B", &d[2], &d[3])] {
            println!(
                "sizes {sizes:?}, side {name}, per packet: remote reads {:.3}; remote writes: \
                 TX (payload + slot) {:.3} = {:.1} B, RX (credits + consumed) {:.3} = {:.1} B",
                per(tx.reads + rx.reads),
                per(tx.writes),
                per(tx.bytes_written),
                per(rx.writes),
                per(rx.bytes_written),
            );
            assert_eq!(tx.reads + rx.reads, 0, "side {name} read remote memory");
            assert!(tx.writes > 0);
        }
    }
    // Start-up (credit grants) included: never a remote read.
    assert_eq!(all.iter().map(|c| c.snapshot().reads).sum::<u64>(), 0);
}

#[test]
fn out_of_order_frees_release_slots_in_ring_order() {
    let (w, l) = link(1);
    let mut a = l.open_side(&w, Side::A, 0).unwrap();
    let mut b = l.open_side(&w, Side::B, 0).unwrap();
    // 6 inline packets (16 B) and 2 buffered ones.
    let mut bufs = Vec::new();
    for seq in 0..8u64 {
        let len = if seq % 4 == 3 { 100 } else { 16 };
        let mut p = vec![0u8; len];
        testpkt::fill(&mut p, seq);
        bufs.push(p);
    }
    let refs: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
    assert_eq!(a.tx_burst(&refs, 7).unwrap(), 8);
    let mut pkts = [RxPkt::default(); 16];
    assert_eq!(b.rx_burst(&mut pkts).unwrap(), 8);
    let consumed = |a: &PostedQueuePair<Region, Region>| {
        a.local_tx_mem()
            .load_u32(ring().consumed_off(), core::sync::atomic::Ordering::Acquire)
            .unwrap()
    };
    for (i, p) in pkts[..8].iter().enumerate() {
        let mut v = vec![0u8; p.len as usize];
        b.rx_mem().read_bytes(p.off, &mut v).unwrap();
        assert_eq!(testpkt::verify(&v), Some(i as u64));
        assert_eq!(p.meta, 7);
        assert_eq!(p.handle.is_inline(), i % 4 != 3);
    }
    // Free 5, 2, 1: nothing released yet (slot 0 still held).
    b.free(&[pkts[5].handle, pkts[2].handle, pkts[1].handle])
        .unwrap();
    assert_eq!(consumed(&a), 0);
    // Free 0: slots 0..3 released (3 is buffered, done at poll).
    b.free(&[pkts[0].handle]).unwrap();
    assert_eq!(consumed(&a), 4);
    // Double free is refused, without breaking anything.
    assert!(matches!(
        b.free(&[pkts[0].handle]),
        Err(QueueError::BadHandle { .. })
    ));
    assert!(!b.is_broken());
    // Free 4 from another thread through the returner; 6 locally.
    let ret = b.returner();
    std::thread::scope(|s| {
        s.spawn(|| assert!(ret.put(&[pkts[4].handle])));
    });
    b.free(&[pkts[6].handle]).unwrap();
    assert_eq!(consumed(&a), 4);
    assert_eq!(b.slots_unreleased(), 4);
    assert_eq!(b.rx_burst(&mut pkts[8..]).unwrap(), 0); // drains the returner
    assert_eq!(b.slots_unreleased(), 0);
    assert_eq!(consumed(&a), 8);
    // The buffered packets' slots were released at poll; their buffers are still ours.
    assert_eq!(a.tx_credits(), 254);
    b.free(&[pkts[7].handle, pkts[3].handle]).unwrap();
    assert_eq!(a.poll_credits().unwrap(), 256);
    assert_eq!(a.tx_credits(), 256);
    assert_eq!(b.stats().rx_freed, 8);
    assert_eq!(b.stats().bad_frees, 1);
    assert_eq!(b.stats().rx_empty_polls, 1);
}

#[test]
fn only_replies_are_demoted() {
    let (w, l) = link(1);
    let mut a = l.open_side(&w, Side::A, 0).unwrap();
    let mut b = l.open_side(&w, Side::B, 0).unwrap();
    let mut pkts = [RxPkt::default(); 8];
    let small = [7u8; 40];
    let big = [9u8; 300];
    // A stream: nothing received in between, any burst size.
    assert_eq!(a.tx_burst(&[&small[..]], 0).unwrap(), 1);
    assert_eq!(a.tx_burst(&[&small[..]; 8], 0).unwrap(), 8);
    assert_eq!(a.stats().tx_demoted, 0);
    // B waits (two empty polls), receives, answers: a reply, demoted (inline and
    // buffered packets); the answer arrives intact.
    for want in [8, 1] {
        assert_eq!(b.rx_burst(&mut pkts).unwrap(), want);
        b.free(&pkts[..want].iter().map(|p| p.handle).collect::<Vec<_>>())
            .unwrap();
    }
    assert_eq!(b.rx_burst(&mut pkts).unwrap(), 0);
    assert_eq!(b.rx_burst(&mut pkts).unwrap(), 0);
    assert_eq!(a.tx_burst(&[&small[..]], 0).unwrap(), 1);
    assert_eq!(b.rx_burst(&mut pkts).unwrap(), 1);
    assert_eq!(b.tx_burst(&[&small[..], &big[..]], 0).unwrap(), 2);
    assert_eq!(b.stats().tx_demoted, 1);
    assert_eq!(a.rx_burst(&mut pkts).unwrap(), 2);
    for (p, want) in pkts[..2].iter().zip([&small[..], &big[..]]) {
        let mut v = vec![0u8; p.len as usize];
        a.rx_mem().read_bytes(p.off, &mut v).unwrap();
        assert_eq!(v, want);
    }
    // Received without waiting first, or a burst over 4: not a reply.
    assert_eq!(b.rx_burst(&mut pkts).unwrap(), 0);
    assert_eq!(b.tx_burst(&[&small[..]], 0).unwrap(), 1);
    assert_eq!(b.stats().tx_demoted, 1);
    a.free(&[pkts[0].handle, pkts[1].handle]).unwrap();
    for _ in 0..2 {
        assert_eq!(b.rx_burst(&mut pkts).unwrap(), 0);
    }
    assert_eq!(a.rx_burst(&mut pkts).unwrap(), 1);
    assert_eq!(a.tx_burst(&[&small[..]], 0).unwrap(), 1);
    assert_eq!(a.stats().tx_demoted, 0);
    assert_eq!(b.rx_burst(&mut pkts).unwrap(), 1);
    assert_eq!(b.tx_burst(&[&small[..]; 5], 0).unwrap(), 5);
    assert_eq!(b.stats().tx_demoted, 1);
}

#[test]
fn backpressure_returns_fewer_not_an_error() {
    let small = PostedLayout::new(8, 64, 4, 256).unwrap();
    let l = PostedLinkLayout::new(small, 1).unwrap();
    let w = HeapWindow::new(l.window_size()).unwrap();
    l.create(&w).unwrap();
    let mut a = l.open_side(&w, Side::A, 0).unwrap();
    let _b = l.open_side(&w, Side::B, 0).unwrap();
    let big = [1u8; 200];
    let pkts = [&big[..]; 8];
    assert_eq!(a.tx_burst(&pkts, 0).unwrap(), 4); // 4 credits
    assert_eq!(a.tx_burst(&pkts, 0).unwrap(), 0);
    let tiny = [2u8; 8];
    assert_eq!(a.tx_burst(&[&tiny[..]; 8], 0).unwrap(), 4); // 8 slots
    assert_eq!(a.stats().tx_backpressure, 3);
    let mut slots = [TxSlot::default(); 4];
    assert_eq!(a.alloc_tx(&mut slots).unwrap(), 0);
    assert!(matches!(
        a.tx_burst(&[&[0u8; 300][..]], 0),
        Err(QueueError::TooLarge { len: 300, max: 256 })
    ));
}

#[test]
fn zero_copy_slots_commit_and_cancel() {
    let (w, l) = link(1);
    let mut a = l.open_side(&w, Side::A, 0).unwrap();
    let mut b = l.open_side(&w, Side::B, 0).unwrap();
    let mut slots = [TxSlot::default(); 4];
    assert_eq!(a.alloc_tx(&mut slots).unwrap(), 4);
    let mut p = vec![0u8; 700];
    testpkt::fill(&mut p, 0);
    a.tx_write(&slots[0], 0, &p).unwrap();
    assert!(a.tx_write(&slots[1], 2000, &p).is_err());
    a.tx_cancel(&slots[2..]).unwrap();
    assert!(a.tx_cancel(&slots[2..3]).is_err());
    testpkt::fill(&mut p[..100], 1);
    a.tx_write(&slots[1], 0, &p[..100]).unwrap();
    assert!(matches!(
        a.tx_commit(&[(slots[0], 3000, 0)]),
        Err(QueueError::BadTxSlot { .. })
    ));
    assert_eq!(
        a.tx_commit(&[(slots[0], 700, 1), (slots[1], 100, 2)])
            .unwrap(),
        2
    );
    assert!(a.tx_commit(&[(slots[0], 700, 1)]).is_err());
    let mut pkts = [RxPkt::default(); 4];
    assert_eq!(b.rx_burst(&mut pkts).unwrap(), 2);
    for (i, pk) in pkts[..2].iter().enumerate() {
        let mut v = vec![0u8; pk.len as usize];
        b.rx_mem().read_bytes(pk.off, &mut v).unwrap();
        assert_eq!(testpkt::verify(&v), Some(i as u64));
        assert_eq!(pk.meta, i as u16 + 1);
    }
}

#[test]
fn hostile_credits_break_the_queue_with_a_typed_error() {
    let (w, l) = link(1);
    let mut a = l.open_side(&w, Side::A, 0).unwrap();
    // The "peer" B never attaches; it writes a forged credit into A's tx area:
    // position 0 naming buffer 9999.
    let b_areas = l.side_areas(&w, Side::B, 0).unwrap();
    b_areas
        .remote_tx
        .store_u64(
            0,
            credit_entry(0, 9999),
            core::sync::atomic::Ordering::Release,
        )
        .unwrap();
    let p = [0u8; 500];
    let e = a.tx_burst(&[&p[..]], 0).unwrap_err();
    assert!(e.is_peer_violation(), "{e}");
    assert!(matches!(e, QueueError::Ring(RingError::BadCredit { .. })));
    assert!(a.is_broken());
    assert_eq!(a.stats().peer_violations, 1);
    assert!(matches!(
        a.rx_burst(&mut [RxPkt::default(); 4]),
        Err(QueueError::Ring(RingError::Broken))
    ));
    a.reset().unwrap();
    assert!(!a.is_broken());
}

#[test]
fn hostile_slots_break_the_queue_with_a_typed_error() {
    let (w, l) = link(1);
    let mut a = l.open_side(&w, Side::A, 0).unwrap();
    let b_areas = l.side_areas(&w, Side::B, 0).unwrap();
    let rx = &b_areas.remote_rx; // A's rx area, as B sees it
    let ord = core::sync::atomic::Ordering::Release;
    // Slot 0: buffer 300 (out of range).
    rx.store_u32(4, 100, ord).unwrap();
    rx.store_u32(8, 300, ord).unwrap();
    rx.store_u32(12, 0, ord).unwrap();
    rx.store_u32(0, 1, ord).unwrap();
    let e = a.rx_burst(&mut [RxPkt::default(); 4]).unwrap_err();
    assert!(e.is_peer_violation(), "{e}");
    assert!(a.is_broken());
    a.reset().unwrap();
    a.start().unwrap();
    // Slot 0: inline, length over the inline capacity.
    rx.store_u32(4, 4000, ord).unwrap();
    rx.store_u32(12, FLAG_INLINE as u32, ord).unwrap();
    rx.store_u32(0, 1, ord).unwrap();
    let e = a.rx_burst(&mut [RxPkt::default(); 4]).unwrap_err();
    assert!(
        matches!(e, QueueError::Ring(RingError::BadSlot { .. })),
        "{e}"
    );
    assert_eq!(a.stats().peer_violations, 2);
}

#[test]
fn random_garbage_from_the_peer_never_panics() {
    // xorshift: deterministic garbage over A's local areas, then every operation.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..200 {
        let (w, l) = link(1);
        let mut a = l.open_side(&w, Side::A, 0).unwrap();
        let b = l.side_areas(&w, Side::B, 0).unwrap();
        for _ in 0..64 {
            let (mem, size) = if next() % 2 == 0 {
                (&b.remote_tx, l.ring().tx_area_size())
            } else {
                (&b.remote_rx, l.ring().slots() as usize * 64)
            };
            let off = (next() as usize % (size / 8)) * 8;
            let v = if round % 2 == 0 {
                next()
            } else {
                // Plausible values: small lap tags and indices.
                ((next() % 4) << 32) | (next() % 300)
            };
            mem.store_u64(off, v, core::sync::atomic::Ordering::Release)
                .unwrap();
        }
        let mut pkts = [RxPkt::default(); 32];
        for _ in 0..4 {
            if let Ok(n) = a.rx_burst(&mut pkts) {
                let hs: Vec<PktHandle> = pkts[..n].iter().map(|p| p.handle).collect();
                let _ = a.free(&hs);
            }
            let _ = a.tx_burst(&[&[0u8; 500][..], &[1u8; 20][..]], 0);
            let mut s = [TxSlot::default(); 4];
            let _ = a.alloc_tx(&mut s);
        }
    }
}

#[test]
fn layout_round_trips_and_rejects_tampering() {
    let (w, l) = link(3);
    assert_eq!(PostedLinkLayout::attach(&w).unwrap(), l);
    assert_eq!(l.header_areas().len(), 6);
    for q in 0..3 {
        for s in [Side::A, Side::B] {
            l.open_side(&w, s, q).unwrap();
        }
    }
    assert!(l.open_side(&w, Side::A, 3).is_err());
    assert!(PostedLinkLayout::new(ring(), 0).is_err());
    assert!(PostedLinkLayout::new(ring(), layout::MAX_QUEUES).is_ok());
    assert!(PostedLinkLayout::new(ring(), layout::MAX_QUEUES + 1).is_err());
    // A header whose posted areas do not match their own geometry is refused.
    let mut areas = l.header_areas();
    areas[1].param ^= 1 << 22; // buffers
    let params = rings::header::HeaderParams {
        areas,
        ..Default::default()
    };
    crate::window::init_header(&w, &params).unwrap();
    assert!(matches!(
        PostedLinkLayout::attach(&w),
        Err(QueueError::Layout { .. })
    ));
    // Too small a window.
    let tiny = HeapWindow::new(8192).unwrap();
    assert!(l.create(&tiny).is_err());
    let _ = tiny.len();
}
