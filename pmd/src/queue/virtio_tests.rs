//! In-process tests of the split and packed queue pairs: frontend and backend threads
//! over one window, instrumented remote accesses of the backend, hostile rings.

use std::sync::Arc;
use std::time::Duration;

use rings::packed::PackedLayout;
use rings::split::SplitLayout;
use rings::{Mem, Region, RingError};

use super::testpkt::{run_duplex, Traffic, TrafficReport};
use super::virtio::{PktHeader, RingKind, VirtioGeometry, PKT_HDR};
use super::*;
use crate::window::{AccessCounters, AccessSnapshot, Counted, HeapWindow, Window};

const RING: u16 = 256;
const BUF: u32 = 2048;

fn link(mode: RingMode, queues: u16) -> (HeapWindow, VirtioLinkLayout) {
    let l = VirtioLinkLayout::new(mode, RING, BUF, queues).unwrap();
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

fn duplex<K: RingKind>(sizes: &[usize], count: u64) -> (TrafficReport, TrafficReport) {
    let (w, l) = link(K::MODE, 1);
    let peer = VirtioLinkLayout::attach(&w).unwrap();
    assert_eq!(peer, l);
    let mut f = l.open_frontend::<K>(&w, 0).unwrap();
    let mut b = peer.open_backend::<K>(&w, 0).unwrap();
    let mut t = Traffic::new(count, sizes);
    t.deadline = Duration::from_secs(300);
    std::thread::scope(|s| {
        let hb = s.spawn(|| run_duplex(&mut b, &t));
        let rf = run_duplex(&mut f, &t);
        (rf, hb.join().unwrap())
    })
}

fn threads_1m<K: RingKind>() {
    let count = thread_count();
    for sizes in [
        &[64usize][..],
        &[1500],
        &[16, 48, 64, 40, 1500, 200, 24, 2040, 33],
    ] {
        let (f, b) = duplex::<K>(sizes, count);
        println!(
            "{:?} sizes {sizes:?}: frontend {f:?}\n  backend {b:?}",
            K::MODE
        );
        assert!(f.clean(count), "{sizes:?}: frontend {f:?}");
        assert!(b.clean(count), "{sizes:?}: backend {b:?}");
    }
}

#[test]
fn split_threads_move_1m_each_way_intact() {
    threads_1m::<Split>();
}

#[test]
fn packed_threads_move_1m_each_way_intact() {
    threads_1m::<Packed>();
}

/// The backend's view of the frontend's memory, counted: (TX ring, RX ring, data).
type Counters = [Arc<AccessCounters>; 3];

fn counted_backend<K: RingKind>(
    w: &HeapWindow,
    l: &VirtioLinkLayout,
) -> (VirtioBackend<K, Counted<Region>>, Counters) {
    let a = l.areas(w, 0).unwrap();
    let c: Counters = Default::default();
    let areas = VirtioAreas {
        tx_ring: Counted::with_counters(a.tx_ring, c[0].clone()),
        rx_ring: Counted::with_counters(a.rx_ring, c[1].clone()),
        data: Counted::with_counters(a.data, c[2].clone()),
    };
    let b = VirtioBackend::new(areas, l.geometry(), 32, PlainCopy).unwrap();
    (b, c)
}

/// Remote accesses per packet of the backend, per direction. The data area is read
/// only by the backend's RX (header + payload) and written only by its TX, so its
/// reads belong to F->B and its writes to B->F.
fn remote_accesses<K: RingKind>() {
    let (w, l) = link(K::MODE, 1);
    let mut f = l.open_frontend::<K>(&w, 0).unwrap();
    let (mut b, c) = counted_backend::<K>(&w, &l);
    for (sizes, count) in [(&[64usize][..], 50_000u64), (&[1500], 50_000)] {
        let mut t = Traffic::new(count, sizes);
        t.deadline = Duration::from_secs(120);
        let before = c.each_ref().map(|c| c.snapshot());
        let (rf, rb) = std::thread::scope(|s| {
            let hb = s.spawn(|| run_duplex(&mut b, &t));
            (run_duplex(&mut f, &t), hb.join().unwrap())
        });
        assert!(rf.clean(count) && rb.clean(count), "{rf:?} {rb:?}");
        let d: Vec<AccessSnapshot> = c
            .iter()
            .zip(before)
            .map(|(c, b)| c.snapshot() - b)
            .collect();
        let (txr, rxr, data) = (&d[0], &d[1], &d[2]);
        let per = |x: u64| x as f64 / count as f64;
        println!(
            "{:?} {sizes:?} B, backend remote accesses per packet: \
             F->B (backend RX): reads {:.2} (ring {:.2} + header/payload {:.2}), writes {:.2} \
             (used); B->F (backend TX): reads {:.2} (ring), writes {:.2} (ring {:.2} + \
             header/payload {:.2}). Frontend: 0 (all local).",
            K::MODE,
            per(txr.reads + data.reads),
            per(txr.reads),
            per(data.reads),
            per(txr.writes),
            per(rxr.reads),
            per(rxr.writes + data.writes),
            per(rxr.writes),
            per(data.writes),
        );
        assert!(txr.reads > 0 && rxr.reads > 0 && data.reads > 0 && data.writes > 0);
    }
}

#[test]
fn split_backend_remote_accesses_are_counted() {
    remote_accesses::<Split>();
}

#[test]
fn packed_backend_remote_accesses_are_counted() {
    remote_accesses::<Packed>();
}

fn zero_copy_and_frees<K: RingKind>() {
    let (w, l) = link(K::MODE, 1);
    let mut f = l.open_frontend::<K>(&w, 0).unwrap();
    let mut b = l.open_backend::<K>(&w, 0).unwrap();
    // Frontend -> backend zero-copy: 4 slots, commit 3 (out of order), cancel 1.
    let mut s = [TxSlot::default(); 4];
    assert_eq!(f.alloc_tx(&mut s).unwrap(), 4);
    for (i, slot) in s.iter().enumerate() {
        f.tx_write(slot, 0, &[i as u8 + 1; 100]).unwrap();
    }
    assert!(matches!(
        f.tx_write(&s[0], 2000, &[0; 100]),
        Err(QueueError::BadTxSlot { .. })
    ));
    let commits = [(s[2], 100, 3), (s[0], 10, 1), (s[1], 100, 2)];
    assert_eq!(f.tx_commit(&commits).unwrap(), 3);
    f.tx_cancel(&s[3..]).unwrap();
    assert!(f.tx_commit(&[(s[3], 1, 0)]).is_err());
    let mut pk = [RxPkt::default(); 8];
    assert_eq!(b.rx_burst(&mut pk).unwrap(), 3);
    let metas: Vec<u16> = pk[..3].iter().map(|p| p.meta).collect();
    assert_eq!(metas, [3, 1, 2]);
    assert_eq!(pk[1].len, 10);
    // Out-of-order frees; a double free is refused and counted.
    b.free(&[pk[2].handle, pk[0].handle]).unwrap();
    assert!(matches!(
        b.free(&[pk[0].handle]),
        Err(QueueError::BadHandle { .. })
    ));
    assert!(b.returner().put(&[pk[1].handle]));
    assert_eq!(b.rx_burst(&mut pk).unwrap(), 0);
    assert_eq!(b.stats().rx_freed, 3);
    assert_eq!(b.stats().bad_frees, 1);
    // Every TX buffer comes back.
    assert_eq!(f.tx_burst(&[], 0).unwrap(), 0);
    assert_eq!(f.tx_free(), RING as usize);

    // Backend -> frontend zero-copy, a cancelled chain is reused first.
    let mut s = [TxSlot::default(); 2];
    assert_eq!(b.alloc_tx(&mut s).unwrap(), 2);
    assert_eq!(s[0].capacity() as usize, BUF as usize - PKT_HDR);
    b.tx_cancel(&s[1..]).unwrap();
    b.tx_write(&s[0], 0, b"hello").unwrap();
    assert_eq!(b.tx_commit(&[(s[0], 5, 77)]).unwrap(), 1);
    assert_eq!(b.tx_burst(&[b"world"], 78).unwrap(), 1);
    assert_eq!(f.rx_burst(&mut pk).unwrap(), 2);
    let mut got = [0u8; 5];
    f.data().read_bytes(pk[0].off, &mut got).unwrap();
    assert_eq!((&got, pk[0].meta), (b"hello", 77));
    f.data().read_bytes(pk[1].off, &mut got).unwrap();
    assert_eq!((&got, pk[1].meta), (b"world", 78));
    assert!(f.free(&[PktHandle::from_raw(0)]).is_err());
    f.free(&[pk[1].handle, pk[0].handle]).unwrap();
    // Too large.
    let big = vec![0u8; BUF as usize];
    assert!(matches!(
        f.tx_burst(&[&big[..]], 0),
        Err(QueueError::TooLarge { .. })
    ));
    assert!(matches!(
        b.tx_burst(&[&big[..]], 0),
        Err(QueueError::TooLarge { .. })
    ));
}

#[test]
fn split_zero_copy_commit_cancel_and_out_of_order_frees() {
    zero_copy_and_frees::<Split>();
}

#[test]
fn packed_zero_copy_commit_cancel_and_out_of_order_frees() {
    zero_copy_and_frees::<Packed>();
}

fn backpressure<K: RingKind>() {
    let (w, l) = link(K::MODE, 1);
    let mut f = l.open_frontend_with::<K, _>(&w, 0, 512, PlainCopy).unwrap();
    let mut b = l.open_backend_with::<K, _>(&w, 0, 512, PlainCopy).unwrap();
    let p = [7u8; 64];
    let pkts = vec![&p[..]; 512];
    // The TX pool holds RING buffers; the backend has not consumed anything.
    assert_eq!(f.tx_burst(&pkts, 0).unwrap(), RING as usize);
    assert_eq!(f.tx_burst(&pkts, 0).unwrap(), 0);
    assert!(f.stats().tx_backpressure >= 2);
    // The frontend posted RING writable buffers.
    assert_eq!(b.tx_burst(&pkts, 0).unwrap(), RING as usize);
    assert_eq!(b.tx_burst(&pkts, 0).unwrap(), 0);
}

#[test]
fn split_backpressure_returns_fewer_not_an_error() {
    backpressure::<Split>();
}

#[test]
fn packed_backpressure_returns_fewer_not_an_error() {
    backpressure::<Packed>();
}

fn assert_broken_then_reset<Q: QueuePair>(q: &mut Q, e: QueueError) {
    assert!(e.is_peer_violation(), "{e}");
    assert!(q.is_broken());
    assert_eq!(q.stats().peer_violations, 1);
    assert!(matches!(
        q.rx_burst(&mut [RxPkt::default(); 4]),
        Err(QueueError::Ring(RingError::Broken))
    ));
    assert!(matches!(
        q.tx_burst(&[&[0u8; 64][..]], 0),
        Err(QueueError::Ring(RingError::Broken))
    ));
    q.reset().unwrap();
    assert!(!q.is_broken());
}

#[test]
fn hostile_split_rings_break_with_typed_errors() {
    let (w, l) = link(RingMode::Split, 1);
    let sl = SplitLayout::new(RING).unwrap();
    let a = l.areas(&w, 0).unwrap();
    let ord = core::sync::atomic::Ordering::Release;
    // The "frontend" moves avail.idx of its TX queue by more than N.
    let mut b = l.open_backend::<Split>(&w, 0).unwrap();
    a.tx_ring.store_u16(sl.avail_idx(), 1000, ord).unwrap();
    let e = b.rx_burst(&mut [RxPkt::default(); 4]).unwrap_err();
    assert!(
        matches!(e, QueueError::Ring(RingError::IndexJump { .. })),
        "{e}"
    );
    assert_broken_then_reset(&mut b, e);
    // The "backend" moves used.idx of the RX queue by more than N.
    let mut f = l.open_frontend::<Split>(&w, 0).unwrap();
    a.rx_ring.store_u16(sl.used_idx(), 999, ord).unwrap();
    let e = f.rx_burst(&mut [RxPkt::default(); 4]).unwrap_err();
    assert!(
        matches!(e, QueueError::Ring(RingError::IndexJump { .. })),
        "{e}"
    );
    assert_broken_then_reset(&mut f, e);
}

#[test]
fn hostile_packed_rings_break_with_typed_errors() {
    let (w, l) = link(RingMode::Packed, 1);
    let pl = PackedLayout::new(RING).unwrap();
    let a = l.areas(&w, 0).unwrap();
    // A "frontend" TX descriptor pointing outside the data area (AVAIL set, wrap 1).
    let mut b = l.open_backend::<Packed>(&w, 0).unwrap();
    let off = pl.desc(0);
    a.tx_ring
        .write_bytes(off, &(1u64 << 40).to_le_bytes())
        .unwrap();
    a.tx_ring
        .write_bytes(off + 8, &100u32.to_le_bytes())
        .unwrap();
    a.tx_ring
        .write_bytes(off + 12, &0u16.to_le_bytes())
        .unwrap();
    a.tx_ring
        .store_u16(off + 14, 1 << 7, core::sync::atomic::Ordering::Release)
        .unwrap();
    let e = b.rx_burst(&mut [RxPkt::default(); 4]).unwrap_err();
    assert!(
        matches!(e, QueueError::Ring(RingError::BufferOutOfRange { .. })),
        "{e}"
    );
    assert_broken_then_reset(&mut b, e);
    // A "backend" used descriptor naming an id never made available (AVAIL|USED set,
    // wrap 1: used).
    let mut f = l.open_frontend::<Packed>(&w, 0).unwrap();
    a.rx_ring
        .write_bytes(off + 8, &10u32.to_le_bytes())
        .unwrap();
    a.rx_ring
        .write_bytes(off + 12, &999u16.to_le_bytes())
        .unwrap();
    a.rx_ring
        .store_u16(
            off + 14,
            (1 << 7) | (1 << 15),
            core::sync::atomic::Ordering::Release,
        )
        .unwrap();
    let e = f.rx_burst(&mut [RxPkt::default(); 4]).unwrap_err();
    assert!(e.is_peer_violation(), "{e}");
    assert_broken_then_reset(&mut f, e);
}

/// Protocol violations above the ring: a writable chain on the TX queue, a chain too
/// short for the header.
fn hostile_chains<K: RingKind>() {
    let (w, l) = link(K::MODE, 1);
    let a = l.areas(&w, 0).unwrap();
    let geo = VirtioGeometry::new(RING, BUF).unwrap();
    let mut b = l.open_backend::<K>(&w, 0).unwrap();
    // A raw driver half stands in for a hostile frontend on the TX queue.
    let mut d = <K::Driver<Region> as virtio::DriverHalf<Region>>::open(
        a.tx_ring.clone(),
        geo.ring_size,
        a.data.clone(),
    )
    .unwrap();
    use virtio::DriverHalf;
    d.add(&[rings::BufDesc::writable(0, 64)]).unwrap();
    d.publish().unwrap();
    let e = b.rx_burst(&mut [RxPkt::default(); 4]).unwrap_err();
    assert!(matches!(e, QueueError::Protocol { .. }), "{e}");
    assert_broken_then_reset(&mut b, e);
    d.reset().unwrap();
    d.add(&[rings::BufDesc::readable(0, 4)]).unwrap();
    d.publish().unwrap();
    let e = b.rx_burst(&mut [RxPkt::default(); 4]).unwrap_err();
    assert!(matches!(e, QueueError::Protocol { .. }), "{e}");
}

#[test]
fn split_hostile_chains_are_protocol_errors() {
    hostile_chains::<Split>();
}

#[test]
fn packed_hostile_chains_are_protocol_errors() {
    hostile_chains::<Packed>();
}

fn garbage<K: RingKind>() {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..100 {
        let (w, l) = link(K::MODE, 1);
        let mut f = l.open_frontend::<K>(&w, 0).unwrap();
        let mut b = l.open_backend::<K>(&w, 0).unwrap();
        let a = l.areas(&w, 0).unwrap();
        // Some real traffic first, so the garbage lands on live state.
        let _ = f.tx_burst(&[&[1u8; 64][..]; 8], 1);
        let _ = b.tx_burst(&[&[2u8; 64][..]; 8], 2);
        for _ in 0..64 {
            let mem = if next() % 2 == 0 {
                &a.tx_ring
            } else {
                &a.rx_ring
            };
            let off = (next() as usize % (mem.size() / 8)) * 8;
            let v = if round % 2 == 0 {
                next()
            } else {
                // Plausible values: small ids, lengths, indices, flag bits.
                (next() % 512) | (next() % 4) << 16 | (next() & 0x8080) << 48
            };
            mem.store_u64(off, v, core::sync::atomic::Ordering::Release)
                .unwrap();
        }
        let mut pkts = [RxPkt::default(); 32];
        for _ in 0..4 {
            for q in [&mut f as &mut dyn QueuePair, &mut b] {
                if let Ok(n) = q.rx_burst(&mut pkts) {
                    let hs: Vec<PktHandle> = pkts[..n].iter().map(|p| p.handle).collect();
                    let _ = q.free(&hs);
                }
                let _ = q.tx_burst(&[&[0u8; 500][..], &[1u8; 20][..]], 0);
                let mut s = [TxSlot::default(); 4];
                if let Ok(n) = q.alloc_tx(&mut s) {
                    let c: Vec<_> = s[..n].iter().map(|s| (*s, 16, 0)).collect();
                    let _ = q.tx_commit(&c);
                }
            }
        }
    }
}

#[test]
fn split_random_garbage_never_panics() {
    garbage::<Split>();
}

#[test]
fn packed_random_garbage_never_panics() {
    garbage::<Packed>();
}

#[test]
fn layout_round_trips_and_rejects_tampering() {
    for mode in [RingMode::Split, RingMode::Packed] {
        let (w, l) = link(mode, 3);
        assert_eq!(VirtioLinkLayout::attach(&w).unwrap(), l);
        assert_eq!(l.header_areas().len(), 9);
        assert!(l.areas(&w, 3).is_err());
        let wrong = l.open_frontend::<Split>(&w, 0).is_ok() != (mode == RingMode::Split);
        assert!(!wrong, "mode check");
        let mut areas = l.header_areas();
        areas[2].param ^= 1 << 40; // ring size recorded on the data area
        let params = rings::header::HeaderParams {
            areas,
            ..Default::default()
        };
        crate::window::init_header(&w, &params).unwrap();
        assert!(matches!(
            VirtioLinkLayout::attach(&w),
            Err(QueueError::Layout { .. })
        ));
    }
    assert!(VirtioLinkLayout::new(RingMode::Split, RING, BUF, 0).is_err());
    let max = virtio_layout::MAX_VIRTIO_QUEUES;
    assert!(VirtioLinkLayout::new(RingMode::Split, RING, BUF, max).is_ok());
    assert!(VirtioLinkLayout::new(RingMode::Split, RING, BUF, max + 1).is_err());
    assert!(VirtioLinkLayout::new(RingMode::Packed, 100, BUF, 1).is_err());
    assert!(VirtioLinkLayout::new(RingMode::Packed, RING, 100, 1).is_err());
    let l = VirtioLinkLayout::new(RingMode::Split, RING, BUF, 1).unwrap();
    let tiny = HeapWindow::new(8192).unwrap();
    assert!(l.create(&tiny).is_err());
    let _ = tiny.len();
}

/// [`PktHeader::None`]: the payload starts at the buffer's first byte (as an
/// `rpmsg_hdr` does in a virtio_rpmsg_bus buffer), lengths are the descriptor's and
/// the used entry's, the mode travels in the window header, and traffic is intact.
fn raw_buffers<K: RingKind>() {
    let l = VirtioLinkLayout::new(K::MODE, RING, BUF, 1)
        .unwrap()
        .with_header(PktHeader::None);
    let w = HeapWindow::new(l.window_size()).unwrap();
    l.create(&w).unwrap();
    let peer = VirtioLinkLayout::attach(&w).unwrap();
    assert_eq!(peer, l);
    assert_eq!(peer.geometry().header, PktHeader::None);
    assert_eq!(peer.geometry().max_payload(), BUF as usize);
    let mut f = l.open_frontend::<K>(&w, 0).unwrap();
    let mut b = peer.open_backend::<K>(&w, 0).unwrap();

    let msg = b"\x00\x04\x00\x00\x35\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00hello";
    assert_eq!(f.tx_burst(&[&msg[..]], 9).unwrap(), 1);
    let mut pk = [RxPkt::default(); 4];
    assert_eq!(b.rx_burst(&mut pk).unwrap(), 1);
    assert_eq!((pk[0].len as usize, pk[0].meta), (msg.len(), 0));
    assert_eq!(
        pk[0].off % BUF as usize,
        0,
        "payload at the buffer's first byte"
    );
    let mut got = vec![0u8; msg.len()];
    b.data().read_bytes(pk[0].off, &mut got).unwrap();
    assert_eq!(&got[..], &msg[..]);
    b.free(&[pk[0].handle]).unwrap();

    let mut s = [TxSlot::default(); 1];
    assert_eq!(b.alloc_tx(&mut s).unwrap(), 1);
    assert_eq!(s[0].capacity(), BUF);
    assert_eq!(s[0].offset() % BUF as usize, 0);
    b.tx_write(&s[0], 0, b"world!").unwrap();
    assert_eq!(b.tx_commit(&[(s[0], 6, 1)]).unwrap(), 1);
    assert_eq!(f.rx_burst(&mut pk).unwrap(), 1);
    assert_eq!((pk[0].len, pk[0].meta, pk[0].off % BUF as usize), (6, 0, 0));
    f.free(&[pk[0].handle]).unwrap();
    // A full-buffer payload fits; one byte more does not.
    let full = vec![7u8; BUF as usize];
    assert_eq!(f.tx_burst(&[&full[..]], 0).unwrap(), 1);
    assert!(matches!(
        f.tx_burst(&[&[0u8; BUF as usize + 1][..]], 0),
        Err(QueueError::TooLarge { .. })
    ));
    assert_eq!(b.rx_burst(&mut pk).unwrap(), 1);
    assert_eq!(pk[0].len, BUF);
    b.free(&[pk[0].handle]).unwrap();
    drop((f, b));

    // Duplex traffic with sequence numbers and checksums in the payload.
    let l2 = VirtioLinkLayout::attach(&w).unwrap();
    l2.create(&w).unwrap();
    let mut f = l2.open_frontend::<K>(&w, 0).unwrap();
    let mut b = l2.open_backend::<K>(&w, 0).unwrap();
    let count = 20_000;
    let mut t = Traffic::new(count, &[64, 1500, 17, 2048]);
    t.deadline = Duration::from_secs(60);
    t.check_meta = false;
    let (rf, rb) = std::thread::scope(|s| {
        let hb = s.spawn(|| run_duplex(&mut b, &t));
        (run_duplex(&mut f, &t), hb.join().unwrap())
    });
    assert!(rf.clean(count), "frontend {rf:?}");
    assert!(rb.clean(count), "backend {rb:?}");
}

#[test]
fn split_raw_buffers_start_with_the_payload() {
    raw_buffers::<Split>();
}

#[test]
fn packed_raw_buffers_start_with_the_payload() {
    raw_buffers::<Packed>();
}
