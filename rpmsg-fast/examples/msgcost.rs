//! Per-message instruction cost of the bus, in one thread over a heap window (posted
//! ring), for `valgrind --tool=callgrind` (instruction counts are stable on a busy
//! machine, timings are not). Run it with two message counts and subtract:
//!
//! ```text
//! cargo build --release -p rpmsg-fast --example msgcost
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/msgcost 496 100000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/msgcost 496 200000
//! ```
//!
//! Each iteration: a burst of 16 copying sends (`send_burst`), one `poll` on the other
//! side, `try_recv` + `release` of each (the one-way path of `zerohop rpmsg-bench`).

use pmd::copy::CopyEngine;
use pmd::queue::{PostedLinkLayout, Side};
use pmd::window::HeapWindow;
use rings::posted::PostedLayout;
use rpmsg_fast::{Addr, BusConfig, LinkQueue, Rpmsg};

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(496);
    let msgs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let l = PostedLinkLayout::new(PostedLayout::new(256, 128, 256, 512).unwrap(), 1).unwrap();
    let w = HeapWindow::new(l.window_size()).unwrap();
    l.create(&w).unwrap();
    let copy = *CopyEngine::global();
    let a = l.open_side_with(&w, Side::A, 0, 0, copy).unwrap();
    let b = l.open_side_with(&w, Side::B, 0, 0, copy).unwrap();
    let mut tx = Rpmsg::new(LinkQueue::Posted(a), BusConfig::default()).unwrap();
    let mut rx = Rpmsg::new(LinkQueue::Posted(b), BusConfig::default()).unwrap();
    let src = tx.create_endpoint(None, Addr::Fixed(3)).unwrap();
    let dst = rx.create_endpoint(None, Addr::Fixed(2)).unwrap();
    let payload = vec![0x5au8; size];
    let burst: Vec<&[u8]> = (0..16).map(|_| &payload[..]).collect();
    let (mut sent, mut got) = (0u64, 0u64);
    while got < msgs {
        if sent < msgs {
            sent += tx.send_burst(src, 2, &burst).unwrap() as u64;
        }
        rx.poll().unwrap();
        while let Some(m) = rx.try_recv(dst).unwrap() {
            got += 1;
            rx.release(m).unwrap();
        }
        tx.poll().unwrap();
    }
    println!("{size} B: {got} messages");
}
