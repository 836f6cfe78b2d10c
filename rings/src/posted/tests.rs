//! Unit, model, hostile-peer and threaded tests of the posted ring.

use super::*;
use crate::error::MemError;
use crate::mem::Region;
use crate::sync::Ordering;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

type Tx = PostedTx<Region, Region>;
type Rx = PostedRx<Region, Region>;

/// Canary bytes around each area, to show nothing outside the regions is touched.
const GUARD: usize = 128;
const CANARY: u8 = 0xA5;

struct Guarded {
    big: Region,
    len: usize,
}

impl Guarded {
    fn new(len: usize) -> Self {
        let big = Region::heap(len + 2 * GUARD);
        big.write_bytes(0, &[CANARY; GUARD]).unwrap();
        big.write_bytes(GUARD + len, &[CANARY; GUARD]).unwrap();
        Guarded { big, len }
    }
    fn area(&self) -> Region {
        self.big.sub(GUARD, self.len).unwrap()
    }
    fn assert_canaries(&self) {
        let mut b = [0u8; GUARD];
        self.big.read_bytes(0, &mut b).unwrap();
        assert!(
            b.iter().all(|&x| x == CANARY),
            "guard before the area touched"
        );
        self.big.read_bytes(GUARD + self.len, &mut b).unwrap();
        assert!(
            b.iter().all(|&x| x == CANARY),
            "guard after the area touched"
        );
    }
}

struct Pair {
    tx: Tx,
    rx: Rx,
    tx_area: Guarded,
    rx_area: Guarded,
}

fn pair(l: PostedLayout) -> Pair {
    let tx_area = Guarded::new(l.tx_area_size());
    let rx_area = Guarded::new(l.rx_area_size());
    let tx = PostedTx::new(tx_area.area(), rx_area.area(), l).unwrap();
    let rx = PostedRx::new(rx_area.area(), tx_area.area(), l).unwrap();
    Pair {
        tx,
        rx,
        tx_area,
        rx_area,
    }
}

fn small() -> PostedLayout {
    PostedLayout::new(4, 64, 2, 64).unwrap()
}

fn payload_of(rx: &Rx, m: &RxMsg) -> Vec<u8> {
    let mut v = vec![0u8; m.len as usize];
    rx.local().read_bytes(m.payload_off(), &mut v).unwrap();
    v
}

// ---- layout -----------------------------------------------------------------------

#[test]
fn layout_validation() {
    assert!(PostedLayout::new(0, 64, 0, 64).is_err());
    assert!(PostedLayout::new(3, 64, 0, 64).is_err());
    assert!(PostedLayout::new(4, 32, 0, 64).is_err());
    assert!(PostedLayout::new(4, 96, 0, 64).is_err());
    assert!(PostedLayout::new(4, 64, 5, 64).is_err());
    assert!(PostedLayout::new(4, 64, 4, 0).is_err());
    assert!(PostedLayout::new(4, 64, 4, 100).is_err());
    assert!(PostedLayout::new(1 << 20, 4096, 1 << 20, 64).is_err());
    assert!(PostedLayout::new(1, 64, 0, 64).is_ok());
    assert!(PostedLayout::new(4, 64, 4, 64).is_ok());
}

#[test]
fn default_layout_matches_the_docs() {
    let l = PostedLayout::default();
    assert_eq!(PostedLayout::new(256, 64, 256, 2048).unwrap(), l);
    assert_eq!(l.inline_capacity(), 48);
    assert_eq!(l.slot_off(255), 0x3fc0);
    assert_eq!(l.buf_area_off(), 0x4000);
    assert_eq!(l.buf_off(255), 0x83800);
    assert_eq!(l.rx_area_size(), 0x84000);
    assert_eq!(l.credit_off(255), 0x7f8);
    assert_eq!(l.consumed_off(), 0x800);
    assert_eq!(l.tx_area_size(), 0x880);
    // Small rings still put `consumed` on its own 128-byte line.
    assert_eq!(small().consumed_off(), 128);
    assert_eq!(small().tx_area_size(), 256);
    assert_eq!(credit_entry(0, 7), (1 << 32) | 7);
    assert_eq!(credit_entry(u32::MAX, 1), 1);
}

#[test]
fn regions_too_small_are_rejected() {
    let l = small();
    let t = Region::heap(l.tx_area_size() - 1);
    let r = Region::heap(l.rx_area_size());
    assert!(matches!(
        PostedTx::new(t.clone(), r.clone(), l),
        Err(RingError::RegionTooSmall { .. })
    ));
    assert!(matches!(
        PostedRx::new(r, t, l),
        Err(RingError::RegionTooSmall { .. })
    ));
}

// ---- basic behaviour --------------------------------------------------------------

#[test]
fn inline_buffered_and_zero_copy_round_trip() {
    let mut p = pair(small());
    p.rx.init_credits().unwrap();
    assert_eq!(p.tx.poll_credits().unwrap(), 2);
    assert!(p.tx.send(b"hi", 7).unwrap());
    assert!(p.tx.send(&[9u8; 60], 8).unwrap());
    let b = p.tx.alloc().unwrap().unwrap();
    assert_eq!(b.capacity(), 64);
    p.tx.remote().write_bytes(b.offset(), b"zero-copy").unwrap();
    p.tx.enqueue(b, 9, 9).unwrap();
    let mut out = [RxMsg::default(); 8];
    assert_eq!(p.rx.poll(&mut out).unwrap(), 0, "nothing before publish");
    assert_eq!(p.tx.publish().unwrap(), 3);
    assert_eq!(p.tx.publish().unwrap(), 0);
    assert_eq!(p.rx.poll(&mut out).unwrap(), 3);
    assert!(matches!(out[0].kind, RxKind::Inline { slot_off: 0 }));
    assert_eq!(payload_of(&p.rx, &out[0]), b"hi");
    assert_eq!(out[0].meta, 7);
    assert_eq!(payload_of(&p.rx, &out[1]), vec![9u8; 60]);
    assert_eq!(payload_of(&p.rx, &out[2]), b"zero-copy");
    assert_eq!((p.tx.sent(), p.tx.inline_sent()), (3, 1));
    assert_eq!((p.rx.received(), p.rx.inline_received()), (3, 1));
    assert_eq!(p.rx.credits_outstanding(), 0);
    // Out of credits: buffered sends back-pressure, inline ones still go.
    assert!(!p.tx.send(&[1u8; 50], 0).unwrap());
    assert!(p.tx.alloc().unwrap().is_none());
    assert!(p.tx.send(&[1u8; 5], 0).unwrap());
    // Slot ring full (4 slots, none released).
    assert_eq!(p.tx.slots_free(), 0);
    assert!(!p.tx.send(&[1u8; 5], 0).unwrap());
    p.rx.release_slots(3).unwrap();
    p.rx.complete().unwrap();
    assert!(p.tx.send(&[1u8; 5], 0).unwrap());
    p.tx_area.assert_canaries();
    p.rx_area.assert_canaries();
}

#[test]
fn own_side_misuse_is_invalid_request_not_broken() {
    let mut p = pair(small());
    p.rx.init_credits().unwrap();
    assert!(matches!(
        p.rx.grant(&[0]),
        Err(RingError::InvalidRequest(_))
    ));
    assert!(matches!(
        p.rx.grant(&[2]),
        Err(RingError::InvalidRequest(_))
    ));
    assert!(matches!(
        p.rx.release_slots(1),
        Err(RingError::InvalidRequest(_))
    ));
    assert!(!p.rx.is_broken());
    p.tx.poll_credits().unwrap();
    assert!(matches!(
        p.tx.enqueue_inline(&[0; 49], 0),
        Err(RingError::InvalidRequest(_))
    ));
    assert!(matches!(
        p.tx.send(&[0; 65], 0),
        Err(RingError::InvalidRequest(_))
    ));
    let b = p.tx.alloc().unwrap().unwrap();
    assert!(matches!(
        p.tx.enqueue(b, 65, 0),
        Err(RingError::InvalidRequest(_))
    ));
    assert_eq!(p.tx.credits_held(), 2, "the buffer went back to the cache");
    let b = p.tx.alloc().unwrap().unwrap();
    p.tx.cancel(b).unwrap();
    assert_eq!(p.tx.credits_held(), 2);
    assert_eq!(p.tx.slots_free(), 4);
    assert!(!p.tx.is_broken());
}

#[test]
fn grant_is_all_or_nothing() {
    let mut p = pair(PostedLayout::new(4, 64, 4, 64).unwrap());
    assert!(p.rx.grant(&[0, 1, 1]).is_err());
    assert_eq!(p.rx.credits_outstanding(), 0);
    assert!(!p.rx.is_credited(0));
    p.rx.grant(&[3, 1]).unwrap();
    assert_eq!(p.tx.poll_credits().unwrap(), 2);
    let b = p.tx.alloc().unwrap().unwrap();
    assert_eq!(b.index(), 3);
    p.tx.cancel(b).unwrap();
    p.rx.init_credits().unwrap();
    assert_eq!(p.rx.credits_outstanding(), 4);
    assert_eq!(p.tx.poll_credits().unwrap(), 4);
}

#[test]
fn reset_restarts_both_halves() {
    let mut p = pair(small());
    p.rx.init_credits().unwrap();
    p.tx.poll_credits().unwrap();
    assert!(p.tx.send(&[3u8; 64], 1).unwrap());
    assert!(p.tx.send(&[4u8; 4], 1).unwrap());
    p.tx.publish().unwrap();
    // Break the rx half with a forged third slot.
    let forged = SlotHeader {
        seq: 3,
        len: 1,
        buf: 0,
        flags: 0x80,
        meta: 0,
    };
    p.rx_area
        .area()
        .write_obj(small().slot_off(2), &forged)
        .unwrap();
    let mut out = [RxMsg::default(); 4];
    assert!(p.rx.poll(&mut out).is_err());
    assert_eq!(p.rx.poll(&mut out), Err(RingError::Broken));
    p.rx.reset().unwrap();
    p.tx.reset().unwrap();
    p.rx.init_credits().unwrap();
    assert_eq!(p.tx.poll_credits().unwrap(), 2);
    assert!(p.tx.send(b"again", 2).unwrap());
    p.tx.publish().unwrap();
    assert_eq!(p.rx.poll(&mut out).unwrap(), 1);
    assert_eq!(payload_of(&p.rx, &out[0]), b"again");
}

// ---- hostile peers ----------------------------------------------------------------

/// Writes a forged slot at position `pos` of the rx area.
fn forge_slot(p: &Pair, pos: u32, len: u32, buf: u32, flags: u16) {
    let l = *p.rx.layout();
    let h = SlotHeader {
        seq: pos.wrapping_add(1),
        len,
        buf,
        flags,
        meta: 0,
    };
    p.rx_area
        .area()
        .write_obj(l.slot_off(pos & (l.slots() - 1)), &h)
        .unwrap();
}

fn expect_rx_broken(p: &mut Pair, want: impl Fn(&RingError) -> bool) {
    let mut out = [RxMsg::default(); 8];
    let e = p.rx.poll(&mut out).unwrap_err();
    assert!(want(&e), "unexpected error {e:?}");
    assert!(e.is_peer_violation());
    assert!(p.rx.is_broken());
    assert_eq!(p.rx.poll(&mut out), Err(RingError::Broken));
    assert_eq!(p.rx.complete(), Err(RingError::Broken));
    p.tx_area.assert_canaries();
    p.rx_area.assert_canaries();
}

fn bad_slot(e: &RingError) -> bool {
    matches!(e, RingError::BadSlot { .. })
}

#[test]
fn hostile_buffer_index_out_of_range() {
    let mut p = pair(small());
    p.rx.init_credits().unwrap();
    forge_slot(&p, 0, 8, 2, 0);
    expect_rx_broken(&mut p, |e| {
        matches!(e, RingError::DescIndexOutOfRange { index: 2, size: 2 })
    });
    let mut p = pair(small());
    forge_slot(&p, 0, 8, u32::MAX, 0);
    expect_rx_broken(&mut p, |e| {
        matches!(e, RingError::DescIndexOutOfRange { .. })
    });
}

#[test]
fn hostile_buffer_never_credited() {
    let mut p = pair(small());
    p.rx.grant(&[0]).unwrap();
    forge_slot(&p, 0, 8, 1, 0);
    expect_rx_broken(&mut p, bad_slot);
}

#[test]
fn hostile_same_buffer_delivered_twice() {
    let mut p = pair(small());
    p.rx.init_credits().unwrap();
    // Both in one burst, and across bursts.
    forge_slot(&p, 0, 8, 1, 0);
    forge_slot(&p, 1, 8, 1, 0);
    expect_rx_broken(&mut p, bad_slot);

    let mut p = pair(small());
    p.rx.init_credits().unwrap();
    p.tx.poll_credits().unwrap();
    assert!(p.tx.send(&[1u8; 64], 0).unwrap());
    p.tx.publish().unwrap();
    let mut out = [RxMsg::default(); 4];
    assert_eq!(p.rx.poll(&mut out).unwrap(), 1);
    let RxKind::Buffer { index, .. } = out[0].kind else {
        panic!("expected a buffered message")
    };
    forge_slot(&p, 1, 8, index, 0);
    expect_rx_broken(&mut p, bad_slot);
}

#[test]
fn hostile_lengths() {
    let mut p = pair(small());
    p.rx.init_credits().unwrap();
    forge_slot(&p, 0, 65, 0, 0);
    expect_rx_broken(&mut p, bad_slot);

    let mut p = pair(small());
    forge_slot(&p, 0, 49, 0, FLAG_INLINE);
    expect_rx_broken(&mut p, bad_slot);

    let mut p = pair(small());
    forge_slot(&p, 0, u32::MAX, 0, FLAG_INLINE);
    expect_rx_broken(&mut p, bad_slot);
}

#[test]
fn hostile_unknown_flags_and_torn_slot() {
    let mut p = pair(small());
    p.rx.init_credits().unwrap();
    forge_slot(&p, 0, 1, 0, FLAG_INLINE | 0x8000);
    expect_rx_broken(&mut p, bad_slot);

    // Torn: the lap tag is valid, the body is garbage.
    let mut p = pair(small());
    p.rx.init_credits().unwrap();
    p.rx_area.area().write_bytes(0, &[0xFF; 64]).unwrap();
    p.rx_area.area().store_u32(0, 1, Ordering::Release).unwrap();
    expect_rx_broken(&mut p, bad_slot);
}

#[test]
fn stale_lap_tags_are_not_ready_not_errors() {
    let mut p = pair(small());
    // Tags from the previous lap (or garbage) mean "not ready".
    for (i, seq) in [(0u32, 5u32), (1, 0), (2, 7), (3, 0xdead)] {
        p.rx_area
            .area()
            .store_u32(small().slot_off(i), seq, Ordering::Relaxed)
            .unwrap();
    }
    let mut out = [RxMsg::default(); 4];
    assert_eq!(p.rx.poll(&mut out).unwrap(), 0);
    assert!(!p.rx.is_broken());
}

fn forge_credit(p: &Pair, pos: u32, index: u32) {
    let l = *p.tx.layout();
    p.tx_area
        .area()
        .store_u64(
            l.credit_off(pos & (l.slots() - 1)),
            credit_entry(pos, index),
            Ordering::Release,
        )
        .unwrap();
}

fn expect_tx_broken(p: &mut Pair, want: impl Fn(&RingError) -> bool) {
    let e = p.tx.poll_credits().unwrap_err();
    assert!(want(&e), "unexpected error {e:?}");
    assert!(e.is_peer_violation());
    assert!(p.tx.is_broken());
    assert_eq!(p.tx.poll_credits(), Err(RingError::Broken));
    assert_eq!(p.tx.send(b"x", 0), Err(RingError::Broken));
    assert_eq!(p.tx.publish(), Err(RingError::Broken));
    p.tx_area.assert_canaries();
    p.rx_area.assert_canaries();
}

#[test]
fn hostile_credit_out_of_range() {
    let mut p = pair(small());
    forge_credit(&p, 0, 2);
    expect_tx_broken(&mut p, |e| matches!(e, RingError::BadCredit { .. }));
    let mut p = pair(small());
    forge_credit(&p, 0, u32::MAX);
    expect_tx_broken(&mut p, |e| matches!(e, RingError::BadCredit { .. }));
}

#[test]
fn hostile_credit_twice() {
    let mut p = pair(small());
    forge_credit(&p, 0, 1);
    forge_credit(&p, 1, 1);
    expect_tx_broken(&mut p, |e| matches!(e, RingError::BadCredit { .. }));
}

#[test]
fn hostile_more_credits_than_buffers() {
    let mut p = pair(small());
    forge_credit(&p, 0, 0);
    forge_credit(&p, 1, 1);
    assert_eq!(p.tx.poll_credits().unwrap(), 2);
    forge_credit(&p, 2, 0);
    expect_tx_broken(&mut p, |e| {
        matches!(
            e,
            RingError::TooManyCredits {
                granted: 3,
                limit: 2
            }
        )
    });
}

#[test]
fn hostile_consumed_jump() {
    let mut p = pair(small());
    for _ in 0..4 {
        assert!(p.tx.send(b"abc", 0).unwrap());
    }
    p.tx.publish().unwrap();
    // B claims to have consumed more than was published.
    let off = small().consumed_off();
    p.tx_area
        .area()
        .store_u32(off, 9, Ordering::Release)
        .unwrap();
    let e = p.tx.send(b"abc", 0).unwrap_err();
    assert!(matches!(
        e,
        RingError::IndexJump {
            what: "consumed",
            ..
        }
    ));
    assert!(p.tx.is_broken());
    // Backwards is a jump too (after a legitimate release).
    let mut p = pair(small());
    for _ in 0..4 {
        assert!(p.tx.send(b"abc", 0).unwrap());
    }
    p.tx.publish().unwrap();
    p.tx_area
        .area()
        .store_u32(off, 2, Ordering::Release)
        .unwrap();
    for _ in 0..2 {
        assert!(p.tx.send(b"abc", 0).unwrap());
    }
    p.tx.publish().unwrap();
    p.tx_area
        .area()
        .store_u32(off, 1, Ordering::Release)
        .unwrap();
    assert!(matches!(
        p.tx.send(b"abc", 0),
        Err(RingError::IndexJump { .. })
    ));
}

// ---- model-based property test ----------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    PollCredits,
    Send(u32),
    SendInline(u32),
    SendZeroCopy(u32),
    Publish,
    Poll(usize),
    Release(u32),
    Complete,
    Grant(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::PollCredits),
        4 => (0u32..4096).prop_map(Op::Send),
        2 => (0u32..4096).prop_map(Op::SendInline),
        2 => (0u32..4096).prop_map(Op::SendZeroCopy),
        3 => Just(Op::Publish),
        3 => (1usize..10).prop_map(Op::Poll),
        2 => (0u32..10).prop_map(Op::Release),
        2 => Just(Op::Complete),
        2 => (0usize..10).prop_map(Op::Grant),
    ]
}

fn layout_strategy() -> impl Strategy<Value = PostedLayout> {
    (0u32..4, 0u32..2, 1u32..4).prop_flat_map(|(s, ss, bs)| {
        let slots = 1 << s;
        (0..=slots)
            .prop_map(move |buffers| PostedLayout::new(slots, 64 << ss, buffers, 64 * bs).unwrap())
    })
}

#[derive(Default)]
struct Model {
    unpublished: VecDeque<(Vec<u8>, u16)>,
    published: VecDeque<(Vec<u8>, u16)>,
    pending_credits: usize,
    tx_credits: usize,
    enqueued: u64,
    polled: u64,
    released: u64,
    consumed: u64,
    app_buffers: VecDeque<u32>,
    counter: u32,
}

impl Model {
    fn next_payload(&mut self, len: u32) -> (Vec<u8>, u16) {
        self.counter = self.counter.wrapping_add(1);
        let c = self.counter;
        let v = (0..len)
            .map(|i| (c.wrapping_mul(31).wrapping_add(i)) as u8)
            .collect();
        (v, c as u16)
    }
}

fn run_model(l: PostedLayout, ops: Vec<Op>) {
    let mut p = pair(l);
    let mut m = Model::default();
    p.rx.init_credits().unwrap();
    m.pending_credits = l.buffers() as usize;
    let slots = l.slots() as u64;
    let inline_cap = l.inline_capacity();
    let mut out = vec![RxMsg::default(); 16];
    for op in ops {
        let slot_space = m.enqueued - m.consumed < slots;
        match op {
            Op::PollCredits => {
                let n = p.tx.poll_credits().unwrap();
                m.tx_credits += m.pending_credits;
                m.pending_credits = 0;
                assert_eq!(n, m.tx_credits);
            }
            Op::Send(len) | Op::SendInline(len) | Op::SendZeroCopy(len) => {
                let (inline, len) = match op {
                    Op::SendInline(len) => (true, len % (inline_cap + 1)),
                    Op::SendZeroCopy(len) => (false, len % (l.buf_size() + 1)),
                    _ => {
                        let len = len % (l.buf_size() + 1);
                        (len <= inline_cap, len)
                    }
                };
                let expect = slot_space && (inline || m.tx_credits > 0);
                let (payload, meta) = m.next_payload(len);
                if !inline && l.buffers() == 0 && matches!(op, Op::Send(_)) {
                    assert!(matches!(
                        p.tx.send(&payload, meta),
                        Err(RingError::InvalidRequest(_))
                    ));
                    continue;
                }
                let ok = match op {
                    Op::SendInline(_) => p.tx.enqueue_inline(&payload, meta).unwrap(),
                    Op::SendZeroCopy(_) => match p.tx.alloc().unwrap() {
                        Some(b) => {
                            p.tx.remote().write_bytes(b.offset(), &payload).unwrap();
                            p.tx.enqueue(b, len, meta).unwrap();
                            true
                        }
                        None => false,
                    },
                    _ => p.tx.send(&payload, meta).unwrap(),
                };
                assert_eq!(ok, expect, "send of {len} bytes");
                if ok {
                    if !inline {
                        m.tx_credits -= 1;
                    }
                    m.enqueued += 1;
                    m.unpublished.push_back((payload, meta));
                }
                assert_eq!(p.tx.credits_held() as usize, m.tx_credits);
            }
            Op::Publish => {
                let n = p.tx.publish().unwrap();
                assert_eq!(n, m.unpublished.len());
                m.published.extend(m.unpublished.drain(..));
            }
            Op::Poll(max) => {
                let n = p.rx.poll(&mut out[..max]).unwrap();
                let room = (slots - (m.polled - m.released)) as usize;
                assert_eq!(n, max.min(m.published.len()).min(room));
                for msg in &out[..n] {
                    let (want, meta) = m.published.pop_front().unwrap();
                    assert_eq!(payload_of(&p.rx, msg), want);
                    assert_eq!(msg.meta, meta);
                    match msg.kind {
                        RxKind::Inline { .. } => assert!(msg.len <= inline_cap),
                        RxKind::Buffer { index, off } => {
                            assert_eq!(off, l.buf_off(index));
                            m.app_buffers.push_back(index);
                        }
                    }
                }
                m.polled += n as u64;
            }
            Op::Release(n) => {
                let n = (n as u64).min(m.polled - m.released);
                p.rx.release_slots(n as u32).unwrap();
                m.released += n;
            }
            Op::Complete => {
                p.rx.complete().unwrap();
                m.consumed = m.released;
            }
            Op::Grant(k) => {
                let k = k.min(m.app_buffers.len());
                let v: Vec<u32> = m.app_buffers.drain(..k).collect();
                p.rx.grant(&v).unwrap();
                m.pending_credits += k;
            }
        }
        assert!(p.tx.slots_free() as u64 <= slots - (m.enqueued - m.consumed));
    }
    assert_eq!(p.rx.received(), m.polled);
    p.tx_area.assert_canaries();
    p.rx_area.assert_canaries();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn model_matches(l in layout_strategy(), ops in proptest::collection::vec(op(), 1..400)) {
        run_model(l, ops);
    }

    /// Arbitrary bytes in both areas: polling either half terminates without panic.
    #[test]
    fn random_bytes_never_panic(
        l in layout_strategy(),
        seed_rx in proptest::collection::vec(any::<u8>(), 0..2048),
        seed_tx in proptest::collection::vec(any::<u8>(), 0..1024),
        dense in any::<bool>(),
    ) {
        let mut p = pair(l);
        fill(&p.rx_area.area(), &seed_rx, dense);
        fill(&p.tx_area.area(), &seed_tx, dense);
        let mut out = [RxMsg::default(); 4];
        let mut rounds = 0;
        loop {
            rounds += 1;
            prop_assert!(rounds < 10_000, "rx poll does not terminate");
            match p.rx.poll(&mut out) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    for msg in &out[..n] {
                        let _ = payload_of(&p.rx, msg);
                    }
                    p.rx.release_slots(n as u32).unwrap();
                    p.rx.complete().unwrap();
                }
            }
        }
        rounds = 0;
        loop {
            rounds += 1;
            prop_assert!(rounds < 10_000, "tx does not terminate");
            if p.tx.poll_credits().is_err() {
                break;
            }
            match p.tx.send(&[1u8; 100][..(rounds % 100)], 0) {
                Ok(true) => { let _ = p.tx.publish(); }
                Ok(false) | Err(_) => break,
            }
        }
        p.tx_area.assert_canaries();
        p.rx_area.assert_canaries();
    }
}

/// Fills `area` with `seed` repeated; `dense` also plants lap tags that match the
/// first positions, so the validators (not just the "not ready" path) run.
fn fill(area: &Region, seed: &[u8], dense: bool) {
    if !seed.is_empty() {
        let bytes: Vec<u8> = seed.iter().copied().cycle().take(area.len()).collect();
        area.write_bytes(0, &bytes).unwrap();
    }
    if dense {
        // Slot tags (rx area) / credit tags (tx area) for positions 0.. at 64/8 strides.
        for (k, off) in (0..area.len()).step_by(64).enumerate() {
            let _ = area.store_u32(off, k as u32 + 1, Ordering::Relaxed);
        }
        for (k, off) in (0..area.len().min(512)).step_by(8).enumerate() {
            let _ = area.store_u32(off + 4, k as u32 + 1, Ordering::Relaxed);
        }
    }
}

// ---- zero remote reads ------------------------------------------------------------

/// A [`Mem`] that counts the accesses made through it.
#[derive(Clone)]
struct Counting {
    inner: Region,
    loads: Arc<AtomicUsize>,
    stores: Arc<AtomicUsize>,
}

impl Counting {
    fn new(inner: Region) -> Self {
        Counting {
            inner,
            loads: Arc::default(),
            stores: Arc::default(),
        }
    }
    fn load(&self) {
        self.loads.fetch_add(1, Ordering::Relaxed);
    }
    fn store(&self) {
        self.stores.fetch_add(1, Ordering::Relaxed);
    }
    fn counts(&self) -> (usize, usize) {
        (
            self.loads.load(Ordering::Relaxed),
            self.stores.load(Ordering::Relaxed),
        )
    }
}

impl Mem for Counting {
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn load_u16(&self, off: usize, o: Ordering) -> Result<u16, MemError> {
        self.load();
        self.inner.load_u16(off, o)
    }
    fn load_u32(&self, off: usize, o: Ordering) -> Result<u32, MemError> {
        self.load();
        self.inner.load_u32(off, o)
    }
    fn load_u64(&self, off: usize, o: Ordering) -> Result<u64, MemError> {
        self.load();
        self.inner.load_u64(off, o)
    }
    fn store_u16(&self, off: usize, v: u16, o: Ordering) -> Result<(), MemError> {
        self.store();
        self.inner.store_u16(off, v, o)
    }
    fn store_u32(&self, off: usize, v: u32, o: Ordering) -> Result<(), MemError> {
        self.store();
        self.inner.store_u32(off, v, o)
    }
    fn store_u64(&self, off: usize, v: u64, o: Ordering) -> Result<(), MemError> {
        self.store();
        self.inner.store_u64(off, v, o)
    }
    fn read_obj<T: bytemuck::Pod>(&self, off: usize) -> Result<T, MemError> {
        self.load();
        self.inner.read_obj(off)
    }
    fn write_obj<T: bytemuck::Pod>(&self, off: usize, v: &T) -> Result<(), MemError> {
        self.store();
        self.inner.write_obj(off, v)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) -> Result<(), MemError> {
        self.load();
        self.inner.read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) -> Result<(), MemError> {
        self.store();
        self.inner.write_bytes(off, src)
    }
    fn range_ptr(&self, off: usize, len: usize) -> Result<core::ptr::NonNull<u8>, MemError> {
        // Handing out a pointer counts as a load: the caller could read through it.
        self.load();
        self.inner.range_ptr(off, len)
    }
}

#[test]
fn steady_state_has_zero_remote_loads() {
    let l = PostedLayout::new(16, 64, 8, 256).unwrap();
    let tx_area = Region::heap(l.tx_area_size());
    let rx_area = Region::heap(l.rx_area_size());
    // Each half sees its own counting view of each area.
    let tx_local = Counting::new(tx_area.clone());
    let tx_remote = Counting::new(rx_area.clone());
    let rx_local = Counting::new(rx_area);
    let rx_remote = Counting::new(tx_area);
    let mut tx = PostedTx::new(tx_local.clone(), tx_remote.clone(), l).unwrap();
    let mut rx = PostedRx::new(rx_local.clone(), rx_remote.clone(), l).unwrap();
    rx.init_credits().unwrap();
    let mut out = [RxMsg::default(); 16];
    let mut freed = Vec::with_capacity(16);
    let mut payload = [0u8; 256];
    let (mut sent, mut got) = (0u64, 0u64);
    for burst in 0..2000u32 {
        tx.poll_credits().unwrap();
        for k in 0..8u32 {
            let len = ((burst * 7 + k * 13) % 257) as usize;
            payload[..len].fill(k as u8);
            if !tx.send(&payload[..len], k as u16).unwrap() {
                break;
            }
            sent += 1;
        }
        tx.publish().unwrap();
        let n = rx.poll(&mut out).unwrap();
        freed.clear();
        for m in &out[..n] {
            let mut b = [0u8; 256];
            rx.local()
                .read_bytes(m.payload_off(), &mut b[..m.len as usize])
                .unwrap();
            if let RxKind::Buffer { index, .. } = m.kind {
                freed.push(index);
            }
        }
        got += n as u64;
        rx.release_slots(n as u32).unwrap();
        rx.complete().unwrap();
        rx.grant(&freed).unwrap();
    }
    let (tx_remote_loads, tx_remote_stores) = tx_remote.counts();
    let (rx_remote_loads, rx_remote_stores) = rx_remote.counts();
    let (tx_local_loads, _) = tx_local.counts();
    let (rx_local_loads, _) = rx_local.counts();
    println!(
        "posted steady state: {sent} sent, {got} received; tx remote loads {tx_remote_loads}, \
         stores {tx_remote_stores}; rx remote loads {rx_remote_loads}, stores \
         {rx_remote_stores}; local loads tx {tx_local_loads} rx {rx_local_loads}"
    );
    assert!(sent > 10_000 && got == sent);
    assert_eq!(tx_remote_loads, 0, "Tx read B's memory");
    assert_eq!(rx_remote_loads, 0, "Rx read A's memory");
    assert!(tx_remote_stores > 0 && rx_remote_stores > 0);
}

// ---- two threads ------------------------------------------------------------------

#[cfg(not(loom))]
#[test]
fn two_threads_move_500k_messages() {
    use std::time::{Duration, Instant};
    const N: u64 = 500_000;
    const BURST: usize = 32;
    let l = PostedLayout::new(256, 64, 128, 256).unwrap();
    let tx_area = Region::heap(l.tx_area_size());
    let rx_area = Region::heap(l.rx_area_size());
    let mut tx = PostedTx::new(tx_area.clone(), rx_area.clone(), l).unwrap();
    let mut rx = PostedRx::new(rx_area, tx_area, l).unwrap();
    rx.init_credits().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);

    fn len_of(i: u64) -> usize {
        if i % 3 < 1 {
            8 + (i % 41) as usize // inline: 8..=48
        } else {
            49 + (i.wrapping_mul(2654435761) % 208) as usize // buffered: 49..=256
        }
    }

    let producer = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut i = 0u64;
        let mut sum = 0u64;
        while i < N {
            assert!(Instant::now() < deadline, "producer timed out at {i}");
            tx.poll_credits().unwrap();
            let mut progressed = false;
            for _ in 0..BURST {
                if i == N {
                    break;
                }
                let len = len_of(i);
                buf[..8].copy_from_slice(&i.to_le_bytes());
                for (j, b) in buf[8..len].iter_mut().enumerate() {
                    *b = (i as u8).wrapping_add(j as u8);
                }
                if !tx.send(&buf[..len], i as u16).unwrap() {
                    break;
                }
                sum = sum.wrapping_add(buf[..len].iter().map(|&b| b as u64).sum::<u64>());
                i += 1;
                progressed = true;
            }
            tx.publish().unwrap();
            if !progressed {
                std::thread::yield_now();
            }
        }
        (sum, tx.inline_sent())
    });

    let mut out = [RxMsg::default(); BURST];
    let mut freed = [0u32; BURST];
    let mut next = 0u64;
    let mut sum = 0u64;
    let mut buf = [0u8; 256];
    while next < N {
        assert!(Instant::now() < deadline, "consumer timed out at {next}");
        let n = rx.poll(&mut out).unwrap();
        if n == 0 {
            std::thread::yield_now();
            continue;
        }
        let mut nf = 0;
        for m in &out[..n] {
            let len = m.len as usize;
            assert_eq!(len, len_of(next));
            assert_eq!(m.meta, next as u16);
            rx.local()
                .read_bytes(m.payload_off(), &mut buf[..len])
                .unwrap();
            assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), next);
            sum = sum.wrapping_add(buf[..len].iter().map(|&b| b as u64).sum::<u64>());
            if let RxKind::Buffer { index, .. } = m.kind {
                freed[nf] = index;
                nf += 1;
            }
            next += 1;
        }
        rx.release_slots(n as u32).unwrap();
        rx.complete().unwrap();
        rx.grant(&freed[..nf]).unwrap();
    }
    let (tx_sum, inline_sent) = producer.join().unwrap();
    assert_eq!(sum, tx_sum, "checksum");
    assert_eq!(rx.received(), N);
    assert_eq!(rx.inline_received(), inline_sent);
    assert!(inline_sent > 0 && inline_sent < N);
}

// ---- notifications ------------------------------------------------------------------

#[test]
fn wake_requests_follow_event_index_rules() {
    let mut p = pair(small());
    // Nobody asked: publishing never notifies.
    assert!(p.tx.send(&[1], 0).unwrap());
    p.tx.publish().unwrap();
    assert!(!p.tx.needs_notify().unwrap());
    // B has a published slot waiting: arming says "poll instead of sleeping".
    assert!(p.rx.set_notification(true).unwrap());
    let mut out = [RxMsg::default(); 4];
    assert_eq!(p.rx.poll(&mut out).unwrap(), 1);
    p.rx.release_slots(1).unwrap();
    p.rx.complete().unwrap();
    // Nothing waiting: armed at position 1; the next publish notifies once.
    assert!(!p.rx.set_notification(true).unwrap());
    assert!(p.tx.send(&[2], 0).unwrap());
    p.tx.publish().unwrap();
    assert!(p.tx.needs_notify().unwrap());
    assert!(p.tx.send(&[3], 0).unwrap());
    p.tx.publish().unwrap();
    assert!(!p.tx.needs_notify().unwrap(), "one doorbell per request");
    // Disarmed: no more doorbells.
    p.rx.set_notification(false).unwrap();
    assert_eq!(p.rx.poll(&mut out).unwrap(), 2);
    p.rx.release_slots(2).unwrap();
    p.rx.complete().unwrap();
    assert!(p.tx.send(&[4], 0).unwrap());
    p.tx.publish().unwrap();
    assert!(!p.tx.needs_notify().unwrap());
    // A batch crossing the requested position notifies.
    assert_eq!(p.rx.poll(&mut out).unwrap(), 1);
    p.rx.release_slots(1).unwrap();
    p.rx.complete().unwrap();
    assert!(!p.rx.set_notification(true).unwrap());
    assert!(p.tx.send(&[5], 0).unwrap());
    assert!(p.tx.send(&[6], 0).unwrap());
    p.tx.publish().unwrap();
    assert!(p.tx.needs_notify().unwrap());
    // A hostile `wake` word only decides doorbells: any value is harmless.
    for w in [u32::MAX, 1, 0x8000_0000, 12345] {
        p.tx.local()
            .store_u32(small().wake_off(), w, Ordering::Relaxed)
            .unwrap();
        let _ = p.tx.needs_notify().unwrap();
    }
    // Reset zeroes the request.
    p.tx.reset().unwrap();
    assert_eq!(
        p.tx.local()
            .load_u32(small().wake_off(), Ordering::Relaxed)
            .unwrap(),
        0
    );
    p.tx_area.assert_canaries();
    p.rx_area.assert_canaries();
}
