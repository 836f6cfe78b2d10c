//! Notifications through the queue pairs: a receiver that sleeps on an eventfd when
//! its queue is empty, a sender that rings it only when asked (posted `wake` word,
//! split event idx, packed event suppression). Every packet arrives, in order, and no
//! wake-up is lost (a lost one would show as a wait that times out with packets
//! waiting).

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::virtio::RingKind;
use super::*;
use crate::notify::EventFd;
use crate::window::HeapWindow;

const COUNT: u64 = 20_000;

#[derive(Debug, Default)]
struct Sleeper {
    received: u64,
    sleeps: u64,
    lost_wakeups: u64,
    armed_but_ready: u64,
}

/// Sends COUNT sequence-numbered packets from `tx` to `rx`; the receiver sleeps on
/// an eventfd whenever its queue is empty. Returns the receiver's counts and the
/// sender's stats.
fn sleeping_receiver<T: QueuePair, R: QueuePair>(tx: &mut T, rx: &mut R) -> (Sleeper, QueueStats) {
    let efd = EventFd::new().unwrap();
    let ring_side = EventFd::from_owned(efd.as_fd().try_clone_to_owned().unwrap());
    tx.set_peer_doorbell(Some(Arc::new(ring_side)));
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut seq = 0u64;
            let mut bursts = 0u64;
            while seq < COUNT {
                assert!(Instant::now() < deadline, "sender: deadline");
                let n = (1 + bursts % 7).min(COUNT - seq) as usize;
                let pkts: Vec<[u8; 64]> = (0..n as u64)
                    .map(|i| {
                        let mut p = [0u8; 64];
                        p[..8].copy_from_slice(&(seq + i).to_le_bytes());
                        p
                    })
                    .collect();
                let refs: Vec<&[u8]> = pkts.iter().map(|p| &p[..]).collect();
                let sent = tx.tx_burst(&refs, 0).unwrap();
                seq += sent as u64;
                bursts += 1;
                // Pause now and then so that the receiver runs dry and sleeps.
                if bursts.is_multiple_of(16) || sent == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            tx.stats()
        });
        let mut me = Sleeper::default();
        let mut out = [RxPkt::default(); 32];
        while me.received < COUNT {
            assert!(Instant::now() < deadline, "receiver: deadline");
            let n = rx.rx_burst(&mut out).unwrap();
            for p in &out[..n] {
                let ptr = rx.rx_ptr(p).unwrap();
                let mut b = [0u8; 8];
                // SAFETY: rx_ptr points at p.len >= 8 received bytes, ours until freed.
                unsafe { core::ptr::copy_nonoverlapping(ptr.as_ptr(), b.as_mut_ptr(), 8) };
                assert_eq!(u64::from_le_bytes(b), me.received, "order");
                me.received += 1;
            }
            let handles: Vec<PktHandle> = out[..n].iter().map(|p| p.handle).collect();
            rx.free(&handles).unwrap();
            if n > 0 {
                continue;
            }
            // Flush the frees (grants / used entries) before sleeping.
            rx.rx_burst(&mut out[..0]).unwrap();
            if rx.enable_rx_notify().unwrap() {
                me.armed_but_ready += 1;
            } else {
                me.sleeps += 1;
                if efd.wait(Duration::from_secs(5)).unwrap() == 0 {
                    me.lost_wakeups += 1;
                }
            }
            rx.disable_rx_notify().unwrap();
        }
        (me, h.join().unwrap())
    })
}

fn check(name: &str, me: &Sleeper, st: &QueueStats) {
    println!(
        "{name}: {me:?}, doorbells {} (errors {})",
        st.doorbells, st.doorbell_errors
    );
    assert_eq!(me.received, COUNT);
    assert_eq!(me.lost_wakeups, 0, "{name}: a wait timed out: lost wake-up");
    assert_eq!(st.doorbell_errors, 0);
    assert!(me.sleeps > 0, "{name}: the receiver never slept");
    assert!(st.doorbells > 0, "{name}: nothing rang");
    // One doorbell per request at most (event index): a request whose re-check
    // already saw a packet may still be rung once.
    assert!(
        st.doorbells <= me.sleeps + me.armed_but_ready,
        "{name}: doorbells are suppressed except when the receiver asked"
    );
}

/// While the receiver polls, nothing is rung (and the request is never read).
fn polling_rings_nothing<T: QueuePair, R: QueuePair>(tx: &mut T, rx: &mut R) {
    let efd = EventFd::new().unwrap();
    tx.set_peer_doorbell(Some(Arc::new(efd)));
    let mut out = [RxPkt::default(); 32];
    for i in 0..1000u64 {
        assert_eq!(
            tx.tx_burst(&[&i.to_le_bytes()[..], &[1; 64]], 0).unwrap(),
            2
        );
        let n = rx.rx_burst(&mut out).unwrap();
        let handles: Vec<PktHandle> = out[..n].iter().map(|p| p.handle).collect();
        rx.free(&handles).unwrap();
    }
    assert_eq!(tx.stats().doorbells, 0);
}

fn posted() -> (HeapWindow, PostedLinkLayout) {
    let l = PostedLinkLayout::new(
        rings::posted::PostedLayout::new(64, 64, 64, 256).unwrap(),
        1,
    )
    .unwrap();
    let w = HeapWindow::new(l.window_size()).unwrap();
    l.create(&w).unwrap();
    (w, l)
}

#[test]
fn posted_sleeping_receiver_gets_every_packet() {
    let (w, l) = posted();
    let mut a = l.open_side(&w, Side::A, 0).unwrap();
    let mut b = l.open_side(&w, Side::B, 0).unwrap();
    let (me, st) = sleeping_receiver(&mut a, &mut b);
    check("posted A->B", &me, &st);
    let (w, l) = posted();
    let mut a = l.open_side(&w, Side::A, 0).unwrap();
    let mut b = l.open_side(&w, Side::B, 0).unwrap();
    polling_rings_nothing(&mut a, &mut b);
}

fn virtio<K: RingKind>() {
    let mk = || {
        let l = VirtioLinkLayout::new(K::MODE, 64, 256, 1).unwrap();
        let w = HeapWindow::new(l.window_size()).unwrap();
        l.create(&w).unwrap();
        (w, l)
    };
    let (w, l) = mk();
    let mut f = l.open_frontend::<K>(&w, 0).unwrap();
    let mut b = l.open_backend::<K>(&w, 0).unwrap();
    let (me, st) = sleeping_receiver(&mut f, &mut b);
    check(&format!("{:?} frontend->backend", K::MODE), &me, &st);
    let (w, l) = mk();
    let mut f = l.open_frontend::<K>(&w, 0).unwrap();
    let mut b = l.open_backend::<K>(&w, 0).unwrap();
    let (me, st) = sleeping_receiver(&mut b, &mut f);
    check(&format!("{:?} backend->frontend", K::MODE), &me, &st);
    let (w, l) = mk();
    let mut f = l.open_frontend::<K>(&w, 0).unwrap();
    let mut b = l.open_backend::<K>(&w, 0).unwrap();
    polling_rings_nothing(&mut f, &mut b);
    polling_rings_nothing(&mut b, &mut f);
}

#[test]
fn split_sleeping_receiver_gets_every_packet() {
    virtio::<Split>();
}

#[test]
fn packed_sleeping_receiver_gets_every_packet() {
    virtio::<Packed>();
}
