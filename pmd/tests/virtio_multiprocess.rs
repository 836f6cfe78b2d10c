//! Two real processes over a /dev/shm window move packets both ways at once through a
//! split and a packed queue pair: the parent is the frontend (it creates the window;
//! rings and buffers are its memory), the child the backend. 64-byte and 1500-byte
//! packets, sequence number + checksum in every packet, mixed zero-copy and copying
//! transmit, out-of-order frees: 0 lost, 0 reordered, 0 corrupted.
//!
//! Packets per direction: `ZEROHOP_VIRTIO_MP_PKTS` (default 50 million; an
//! unoptimised build runs 1 million and says so). Run it optimised:
//! `cargo test -p pmd --profile ci --test virtio_multiprocess -- --nocapture`.

mod common;

use pmd::queue::testpkt::run_duplex;
use pmd::queue::virtio::RingKind;
use pmd::queue::{Packed, RingMode, Split, VirtioLinkLayout};

const ENV_COUNT: &str = "ZEROHOP_VIRTIO_MP_PKTS";
const CHILD: &str = "virtio_multiprocess_child";
const RING: u16 = 256;
const BUF: u32 = 2048;

fn two_processes<K: RingKind>(size: usize) {
    let count = common::count(ENV_COUNT);
    let layout = VirtioLinkLayout::new(K::MODE, RING, BUF, 1).unwrap();
    let tag = match K::MODE {
        RingMode::Split => "split",
        RingMode::Packed => "packed",
    };
    common::two_processes(
        tag,
        CHILD,
        tag,
        size,
        count,
        layout.window_size(),
        |w, t, start_peer| {
            layout.create(w).unwrap();
            let mut f = layout.open_frontend::<K>(w, 0).unwrap();
            start_peer();
            run_duplex(&mut f, t)
        },
    );
}

#[test]
fn split_two_processes_64b() {
    two_processes::<Split>(64);
}

#[test]
fn split_two_processes_1500b() {
    two_processes::<Split>(1500);
}

#[test]
fn packed_two_processes_64b() {
    two_processes::<Packed>(64);
}

#[test]
fn packed_two_processes_1500b() {
    two_processes::<Packed>(1500);
}

fn backend<K: RingKind>(w: &pmd::window::ShmWindow, size: usize) {
    let count = common::count(ENV_COUNT);
    let layout = VirtioLinkLayout::attach(w).unwrap();
    let mut b = layout.open_backend::<K>(w, 0).unwrap();
    let rep = run_duplex(&mut b, &common::traffic(count, size));
    println!("child (backend, {:?}), {size} B: {rep:?}", K::MODE);
    assert!(rep.clean(count), "backend: {rep:?}");
}

/// The peer process (the backend); does nothing unless started by `two_processes`.
#[test]
#[ignore = "started by the two-process tests as the peer"]
fn virtio_multiprocess_child() {
    let Some((w, size, mode)) = common::child_window() else {
        return;
    };
    match mode.as_str() {
        "split" => backend::<Split>(&w, size),
        "packed" => backend::<Packed>(&w, size),
        other => panic!("unknown mode {other:?}"),
    }
}
