//! Loom models of the posted ring's three synchronisation paths, on the real ring code
//! over [`LoomMem`]. Run with
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p rings --release --lib loom_posted`.
//!
//! Loom models stale reads (store buffering) but not load buffering, so the second
//! half of edges C1 and K1 ("B's reads of a buffer / slot happen before A overwrites
//! it") cannot fail under loom even with Relaxed; those halves rest on the Release /
//! Acquire pairing argued in the module docs. Removing the fence and the Release of P1
//! does make `loom_posted_payload_is_visible_after_publish` fail (checked by hand).

use super::*;
use crate::mem::loom_mem::LoomMem;
use crate::sync::spin_hint;

/// Safety bound on spin loops; loom's scheduler runs the peer while one side yields,
/// so correct code finishes long before it.
const SPIN_LIMIT: usize = 200;

/// Exhaustive exploration (no preemption bound): with 3-4 byte payloads and
/// word-sized header accesses the three models finish in about 3 s together.
fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = None;
    b
}

fn halves(l: PostedLayout) -> (PostedTx<LoomMem, LoomMem>, PostedRx<LoomMem, LoomMem>) {
    let ta = LoomMem::new(l.tx_area_size());
    let ra = LoomMem::new(l.rx_area_size());
    let tx = PostedTx::new(ta.clone(), ra.clone(), l).unwrap();
    let rx = PostedRx::new(ra, ta, l).unwrap();
    (tx, rx)
}

fn check_msg(rx: &PostedRx<LoomMem, LoomMem>, m: &RxMsg, k: usize) {
    let mut b = [0u8; 4];
    let len = m.len as usize;
    assert!(len <= 4);
    rx.local()
        .read_bytes(m.payload_off(), &mut b[..len])
        .unwrap();
    match k {
        0 => {
            assert!(matches!(m.kind, RxKind::Buffer { index: 0, .. }));
            assert_eq!((&b[..len], m.meta), (&[1u8, 2, 3][..], 9));
        }
        _ => {
            assert!(matches!(m.kind, RxKind::Inline { .. }));
            assert_eq!((&b[..len], m.meta), (&[5u8, 6][..], 1));
        }
    }
}

/// (a) Payload (zero-copy buffer + inline) then publish; the receiver that sees the
/// lap tag must see the slot body and payload (edge P1 -> P2).
#[test]
fn loom_posted_payload_is_visible_after_publish() {
    builder().check(|| {
        let l = PostedLayout::new(2, 64, 1, 64).unwrap();
        let (mut tx, mut rx) = halves(l);
        rx.init_credits().unwrap();
        assert_eq!(tx.poll_credits().unwrap(), 1);
        let t = loom::thread::spawn(move || {
            let b = tx.alloc().unwrap().unwrap();
            tx.remote().write_bytes(b.offset(), &[1, 2, 3]).unwrap();
            tx.enqueue(b, 3, 9).unwrap();
            assert!(tx.send(&[5, 6], 1).unwrap());
            assert_eq!(tx.publish().unwrap(), 2);
        });
        let mut out = [RxMsg::default(); 2];
        let mut got = 0;
        for _ in 0..3 {
            let n = rx.poll(&mut out[got..]).unwrap();
            for (k, m) in out[got..got + n].iter().enumerate() {
                check_msg(&rx, m, got + k);
            }
            got += n;
            if got == 2 {
                break;
            }
            spin_hint();
        }
        t.join().unwrap();
        let n = rx.poll(&mut out[got..]).unwrap();
        for (k, m) in out[got..got + n].iter().enumerate() {
            check_msg(&rx, m, got + k);
        }
        assert_eq!(got + n, 2);
    });
}

/// (b) Credits: B reads its buffer, then grants it; A that sees the credit sees it in
/// order and its write into the buffer cannot be seen by B's earlier read (C1 -> C2).
#[test]
fn loom_posted_credits_are_visible_and_ordered() {
    builder().check(|| {
        let l = PostedLayout::new(2, 64, 2, 64).unwrap();
        let (mut tx, mut rx) = halves(l);
        rx.local().write_bytes(l.buf_off(0), &[7]).unwrap();
        let t = loom::thread::spawn(move || {
            let mut b = [0u8; 1];
            rx.local().read_bytes(l.buf_off(0), &mut b).unwrap();
            assert_eq!(b[0], 7, "A wrote the buffer before B granted it");
            rx.grant(&[0, 1]).unwrap();
        });
        let mut credits = 0;
        for _ in 0..SPIN_LIMIT {
            credits = tx.poll_credits().unwrap();
            if credits > 0 {
                break;
            }
            spin_hint();
        }
        if credits > 0 {
            let b = tx.alloc().unwrap().unwrap();
            assert_eq!(b.index(), 0, "credits arrive in grant order");
            tx.remote().write_bytes(b.offset(), &[9]).unwrap();
            tx.cancel(b).unwrap();
        }
        t.join().unwrap();
        assert_eq!(tx.poll_credits().unwrap(), 2);
    });
}

/// (c) Inline only, ring of 2 slots, 3 messages: A fills the ring and must wait for
/// B's `consumed` (K1 -> K2) before reusing slot 0; B sees every message in order.
#[test]
fn loom_posted_inline_waits_for_consumed() {
    builder().check(|| {
        let l = PostedLayout::new(2, 64, 0, 64).unwrap();
        let (mut tx, mut rx) = halves(l);
        let t = loom::thread::spawn(move || {
            for i in 0..3u8 {
                let mut spins = 0;
                while !tx.send(&[i], i as u16).unwrap() {
                    spins += 1;
                    assert!(spins < SPIN_LIMIT, "sender starved");
                    spin_hint();
                }
                tx.publish().unwrap();
            }
        });
        let mut out = [RxMsg::default(); 2];
        let mut next = 0u8;
        let mut spins = 0;
        while next < 3 {
            let n = rx.poll(&mut out).unwrap();
            for m in &out[..n] {
                let mut b = [0u8; 1];
                assert_eq!(m.len, 1);
                rx.local().read_bytes(m.payload_off(), &mut b).unwrap();
                assert_eq!((b[0], m.meta), (next, next as u16));
                next += 1;
            }
            if n == 0 {
                spins += 1;
                assert!(spins < SPIN_LIMIT, "receiver starved");
                spin_hint();
            }
            rx.release_slots(n as u32).unwrap();
            rx.complete().unwrap();
        }
        t.join().unwrap();
    });
}

/// (d) No lost wake-up (edges W1/W2): B arms `wake` and re-checks its slot while A
/// publishes and checks `wake`. Either B's re-check sees the slot (it polls instead
/// of sleeping) or A is told to ring the doorbell; never neither.
#[test]
fn loom_posted_wake_request_is_never_lost() {
    builder().check(|| {
        let l = PostedLayout::new(2, 64, 0, 64).unwrap();
        let (mut tx, mut rx) = halves(l);
        let t = loom::thread::spawn(move || {
            assert!(tx.send(&[7], 0).unwrap());
            tx.publish().unwrap();
            tx.needs_notify().unwrap()
        });
        let ready = rx.set_notification(true).unwrap();
        let notified = t.join().unwrap();
        assert!(ready || notified, "lost wake-up");
    });
}
