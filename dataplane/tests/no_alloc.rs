//! After start-up, the fast path allocates nothing: mempool get/put, mbuf
//! alloc/append/free (single and bulk), stats updates and an SPSC handoff of mbufs
//! between two threads, for 1M packets.

use std::time::{Duration, Instant};

use dataplane::mbuf::{free_bulk, Mbuf};
use dataplane::mempool::Mempool;
use dataplane::rings::pool::BufRef;
use dataplane::rings::spsc;
use dataplane::stats::Stats;
use dataplane::testing::{self, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const PACKETS: u64 = 1_000_000;
/// Packets before counting starts (creates the thread-local caches).
const WARM: u64 = 10_000;
const BURST: usize = 32;

#[test]
fn fast_path_makes_zero_allocations() {
    let deadline = Instant::now() + Duration::from_secs(120);
    let pool = Mempool::heap(1024, 2048).unwrap();
    let stats = Stats::heap(2);
    let (mut tx, mut rx) = spsc::channel::<Mbuf>(256).unwrap();
    let (v, n) = testing::allocs_during(|| Vec::<u8>::with_capacity(10));
    assert_eq!(
        n, 1,
        "the counting allocator sees this thread's allocations"
    );
    drop(v);

    let (p, s) = (pool.clone(), stats.clone());
    let producer = std::thread::spawn(move || {
        let w = s.writer(0).unwrap();
        let mut v: Vec<Mbuf> = Vec::with_capacity(BURST);
        let mut raw = [BufRef { index: 0 }; 4];
        let mut seq = 0u64;
        let mut start = 0;
        while seq < PACKETS {
            if seq >= WARM && start == 0 {
                start = testing::thread_allocs();
            }
            if !p.alloc_bulk(&mut v, BURST) {
                w.record_poll(0, 0);
                assert!(Instant::now() < deadline, "producer starved");
                std::thread::yield_now();
                continue;
            }
            // Raw get/put through the cache as well.
            if p.get_bulk(&mut raw) {
                // SAFETY: taken just above, returned once.
                unsafe { p.put_bulk(&raw).unwrap() };
            }
            let mut bytes = 0;
            for mut m in v.drain(..) {
                m.extend_from_slice(&seq.to_le_bytes()).unwrap();
                m.append(56).unwrap().fill(0x5a);
                m.prepend(14).unwrap().fill(0xee);
                m.adj(14).unwrap();
                m.set_timestamp(seq);
                m.set_user(seq as u32);
                bytes += m.data_len() as u64;
                seq += 1;
                while let Err(back) = tx.push(m) {
                    m = back;
                    assert!(Instant::now() < deadline, "consumer stalled");
                    std::thread::yield_now();
                }
            }
            w.record_poll(BURST as u32, bytes);
        }
        testing::thread_allocs() - start
    });

    let (p, s) = (pool.clone(), stats.clone());
    let consumer = std::thread::spawn(move || {
        let w = s.writer(1).unwrap();
        let mut v: Vec<Mbuf> = Vec::with_capacity(BURST);
        let mut want = 0u64;
        let mut start = 0;
        while want < PACKETS {
            if want >= WARM && start == 0 {
                start = testing::thread_allocs();
            }
            while v.len() < BURST {
                match rx.pop() {
                    Some(m) => v.push(m),
                    None => break,
                }
            }
            if v.is_empty() {
                w.record_poll(0, 0);
                assert!(Instant::now() < deadline, "producer stalled");
                std::thread::yield_now();
                continue;
            }
            let mut bytes = 0;
            for m in &v {
                let mut b = [0u8; 8];
                b.copy_from_slice(&m.data()[..8]);
                assert_eq!(u64::from_le_bytes(b), want);
                assert_eq!(m.timestamp(), want);
                bytes += m.pkt_len() as u64;
                want += 1;
            }
            w.record_poll(v.len() as u32, bytes);
            if want & 1 == 0 {
                free_bulk(&mut v);
            } else {
                // One by one, through Drop.
                v.truncate(0);
            }
            // A pool operation on this thread too.
            if let Some(mut m) = p.alloc() {
                m.extend_from_slice(b"x").unwrap();
                w.add_drops(1);
            }
        }
        testing::thread_allocs() - start
    });

    let produced = producer.join().unwrap();
    let consumed = consumer.join().unwrap();
    assert_eq!(produced, 0, "producer allocated on the fast path");
    assert_eq!(consumed, 0, "consumer allocated on the fast path");
    let c = stats.snapshot().counters;
    assert_eq!(c.packets, 2 * PACKETS, "both lcores counted every packet");
    assert_eq!(
        pool.available(),
        1024,
        "the mempool holds every buffer again"
    );
}

/// A posted port pair in two threads (each with its own port and control poll):
/// copying and zero-copy transmit on one side, rx_burst and all three free paths on
/// the other, 1M packets after start-up: 0 allocations.
#[test]
fn port_fast_path_makes_zero_allocations() {
    use dataplane::pmd::window::WindowSpec;
    use dataplane::port::{free_rx_bulk, Port, PortConfig, Role};

    let path = std::path::PathBuf::from(format!("/dev/shm/zh-noalloc-port-{}", std::process::id()));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut ca = PortConfig::new(WindowSpec::Shm(path.clone()), Role::Backend);
    ca.ring_size = 256;
    let cb = PortConfig::new(WindowSpec::Shm(path), Role::Frontend);
    let mut a = Port::create(&ca).unwrap();
    let mut b = Port::attach(&cb).unwrap();

    let sender = std::thread::spawn(move || {
        a.start().unwrap();
        let mut q = a.queue(0).unwrap();
        let payload = [0x5au8; 200];
        let mut zc = Vec::with_capacity(BURST);
        let (mut sent, mut iter, mut start) = (0u64, 0u64, 0);
        while sent < PACKETS {
            if sent >= WARM && start == 0 {
                start = testing::thread_allocs();
            }
            iter += 1;
            if iter % 64 == 0 {
                a.poll_control(Instant::now()).unwrap();
            }
            let n = if iter & 1 == 0 {
                let pkts = [&payload[..]; BURST];
                q.tx_burst(&pkts).unwrap()
            } else {
                q.alloc_tx(&mut zc, BURST).unwrap();
                for t in zc.iter_mut() {
                    q.write(t, &payload[..64]).unwrap();
                }
                q.commit(&mut zc).unwrap()
            };
            sent += n as u64;
            if n == 0 {
                assert!(Instant::now() < deadline, "receiver stalled");
                std::thread::yield_now();
            }
        }
        let allocs = testing::thread_allocs() - start;
        // Keep the port (and its control plane) alive until the receiver is done.
        (allocs, a, q)
    });
    let receiver = std::thread::spawn(move || {
        b.start().unwrap();
        let mut q = b.queue(0).unwrap();
        let mut v = Vec::with_capacity(BURST);
        let (mut got, mut iter, mut start) = (0u64, 0u64, 0);
        while got < PACKETS {
            if got >= WARM && start == 0 {
                start = testing::thread_allocs();
            }
            iter += 1;
            if iter % 64 == 0 {
                b.poll_control(Instant::now()).unwrap();
            }
            let n = q.rx_burst(&mut v, BURST).unwrap();
            if n == 0 {
                assert!(Instant::now() < deadline, "sender stalled");
                std::thread::yield_now();
                continue;
            }
            got += n as u64;
            assert!(v.iter().all(|m| m.data()[0] == 0x5a));
            match iter % 3 {
                0 => q.free(&mut v),
                1 => free_rx_bulk(&mut v),
                _ => v.truncate(0), // one by one, through Drop
            }
        }
        let allocs = testing::thread_allocs() - start;
        assert_eq!(q.rx_outstanding(), 0);
        (allocs, b, q)
    });
    let (received, b, qb) = receiver.join().unwrap();
    let (sent, a, qa) = sender.join().unwrap();
    assert_eq!(sent, 0, "sender allocated on the fast path");
    assert_eq!(received, 0, "receiver allocated on the fast path");
    drop((qa, qb, a, b));
}
