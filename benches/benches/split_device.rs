//! Device-side split-virtqueue processing on one thread: zerohop's `SplitDevice`
//! against rust-vmm's `virtio-queue` (the yardstick in BASELINES.md: 12.3 M
//! 1-descriptor chains/s on this kind of machine). Target: >= 3x.
//!
//! Both devices process the same ring contents: a 256-entry ring whose descriptors are
//! each a 64-byte readable buffer, made available again each round by one Release store
//! of `avail.idx` (the "driver"). Per chain, each device fetches the avail entry and the
//! descriptor, validates them, touches the buffer address and length, and returns the
//! chain on the used ring. virtio-queue publishes `used.idx` per `add_used`; zerohop's
//! natural API publishes once per burst, and a third contender ("zerohop, publish per
//! chain") shows what that batching is worth.
//!
//! Run: `cargo bench -p zerohop-benches --bench split_device` (criterion, then an
//! interleaved A B C round-robin that prints medians and same-run ratios). Add
//! `-- --quick` for a short run. Single-threaded, so core placement does not matter.

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use rings::split::{SplitDevice, SplitLayout};
use rings::{BufDesc, Mem, Region};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Ring size (chains per round).
const N: u16 = 256;
/// Payload buffer size.
const BUF: u64 = 64;

/// zerohop's device over a heap region laid out like a virtio ring plus a data area.
struct Zh {
    ring: Region,
    layout: SplitLayout,
    dev: SplitDevice<Region, Region>,
    avail: u16,
    bufs: [BufDesc; 4],
}

impl Zh {
    fn new() -> Zh {
        let layout = SplitLayout::new(N).expect("layout");
        let ring = Region::heap(layout.size());
        let data = Region::heap(N as usize * BUF as usize);
        for i in 0..N {
            let d = rings::split::Desc::new(i as u64 * BUF, BUF as u32, 0, 0);
            ring.write_obj(layout.desc(i), &d).expect("desc");
            ring.store_u16(layout.avail_ring(i), i, Ordering::Relaxed)
                .expect("avail entry");
        }
        let dev = SplitDevice::new(ring.clone(), layout, data, 0).expect("device");
        Zh {
            ring,
            layout,
            dev,
            avail: 0,
            bufs: [BufDesc::default(); 4],
        }
    }

    /// The driver: makes all N chains available again with one Release store.
    fn refill(&mut self) {
        self.avail = self.avail.wrapping_add(N);
        self.ring
            .store_u16(self.layout.avail_idx(), self.avail, Ordering::Release)
            .expect("avail idx");
    }

    /// Processes one round; publishes the used index once (or per chain).
    fn round(&mut self, publish_each: bool) -> u64 {
        self.refill();
        let mut sum = 0u64;
        while let Some(c) = self.dev.pop(&mut self.bufs).expect("pop") {
            sum += self.bufs[0].addr + self.bufs[0].len as u64;
            self.dev.push_used(c.id, 0).expect("push_used");
            if publish_each {
                self.dev.publish_used().expect("publish");
            }
        }
        self.dev.publish_used().expect("publish");
        sum
    }
}

/// rust-vmm virtio-queue over vm-memory's mmap-backed guest memory, same layout.
struct Vq {
    mem: GuestMemoryMmap<()>,
    q: Queue,
    avail_idx_addr: GuestAddress,
    avail: u16,
}

impl Vq {
    fn new() -> Vq {
        let layout = SplitLayout::new(N).expect("layout");
        let data_base = 0x10_0000u64;
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).expect("guest memory");
        for i in 0..N {
            let d = layout.desc(i) as u64;
            mem.write_obj(data_base + i as u64 * BUF, GuestAddress(d))
                .expect("desc addr");
            mem.write_obj(BUF as u32, GuestAddress(d + 8))
                .expect("desc len");
            mem.write_obj(0u16, GuestAddress(d + 12))
                .expect("desc flags");
            mem.write_obj(0u16, GuestAddress(d + 14))
                .expect("desc next");
            mem.write_obj(i, GuestAddress(layout.avail_ring(i) as u64))
                .expect("avail entry");
        }
        let mut q = Queue::new(N).expect("queue");
        q.set_size(N);
        q.try_set_desc_table_address(GuestAddress(layout.desc_offset() as u64))
            .expect("desc table");
        q.try_set_avail_ring_address(GuestAddress(layout.avail_offset() as u64))
            .expect("avail ring");
        q.try_set_used_ring_address(GuestAddress(layout.used_offset() as u64))
            .expect("used ring");
        q.set_ready(true);
        Vq {
            mem,
            q,
            avail_idx_addr: GuestAddress(layout.avail_idx() as u64),
            avail: 0,
        }
    }

    fn round(&mut self) -> u64 {
        self.avail = self.avail.wrapping_add(N);
        self.mem
            .store(self.avail, self.avail_idx_addr, Ordering::Release)
            .expect("avail idx");
        let mut sum = 0u64;
        while let Some(chain) = self.q.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            for d in chain {
                sum += d.addr().0 + d.len() as u64;
            }
            self.q.add_used(&self.mem, head, 0).expect("add_used");
        }
        sum
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Zerohop,
    ZerohopPublishEach,
    VirtioQueue,
}

impl Contender {
    const ALL: [Contender; 3] = [
        Contender::Zerohop,
        Contender::ZerohopPublishEach,
        Contender::VirtioQueue,
    ];
    fn name(self) -> &'static str {
        match self {
            Contender::Zerohop => "zerohop SplitDevice",
            Contender::ZerohopPublishEach => "zerohop, publish per chain",
            Contender::VirtioQueue => "virtio-queue 0.18",
        }
    }
}

struct Devices {
    zh: Zh,
    vq: Vq,
}

impl Devices {
    fn run(&mut self, c: Contender, rounds: u64) -> Duration {
        let t = Instant::now();
        let mut sum = 0;
        for _ in 0..rounds {
            sum += match c {
                Contender::Zerohop => self.zh.round(false),
                Contender::ZerohopPublishEach => self.zh.round(true),
                Contender::VirtioQueue => self.vq.round(),
            };
        }
        black_box(sum);
        t.elapsed()
    }
}

fn criterion_benches(c: &mut Criterion, d: &mut Devices) {
    let mut g = c.benchmark_group("split_device_1desc_chains");
    g.throughput(Throughput::Elements(N as u64));
    for k in Contender::ALL {
        g.bench_function(k.name(), |b| b.iter_custom(|iters| d.run(k, iters)));
    }
    g.finish();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Interleaved rounds (A B C, B C A, ...): medians and per-round ratios.
fn ratio_report(rounds: usize, d: &mut Devices) {
    let per_run = 4000u64; // 4000 x 256 = ~1M chains per measurement
    let mut rates: Vec<[f64; 3]> = Vec::new();
    for r in 0..rounds {
        let mut row = [0.0; 3];
        for k in 0..3 {
            let i = (r + k) % 3;
            let t = d.run(Contender::ALL[i], per_run);
            row[i] = (per_run * N as u64) as f64 / t.as_secs_f64();
        }
        rates.push(row);
    }
    println!();
    println!(
        "split_device: 1-descriptor chains, ring {N}, one thread, {rounds} interleaved rounds of {} chains each",
        per_run * N as u64
    );
    println!("| contender | median M chains/s | min - max |");
    println!("|---|---|---|");
    for (i, k) in Contender::ALL.iter().enumerate() {
        let mut v: Vec<f64> = rates.iter().map(|r| r[i] / 1e6).collect();
        let (lo, hi) = (
            v.iter().cloned().fold(f64::MAX, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        );
        println!(
            "| {} | {:.1} | {:.1} - {:.1} |",
            k.name(),
            median(&mut v),
            lo,
            hi
        );
    }
    let mut r0: Vec<f64> = rates.iter().map(|r| r[0] / r[2]).collect();
    let mut r1: Vec<f64> = rates.iter().map(|r| r[1] / r[2]).collect();
    println!(
        "| ratio zerohop / virtio-queue (target >= 3.0x) | {:.2}x | |",
        median(&mut r0)
    );
    println!(
        "| ratio zerohop publish-per-chain / virtio-queue | {:.2}x | |",
        median(&mut r1)
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut d = Devices {
        zh: Zh::new(),
        vq: Vq::new(),
    };
    // Both devices must see the same chains: check one round of each agrees.
    assert_eq!(d.zh.round(false), d.vq.round() - 0x10_0000 * N as u64);
    if !quick {
        let mut c = Criterion::default()
            .configure_from_args()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        criterion_benches(&mut c, &mut d);
        c.final_summary();
    }
    ratio_report(if quick { 5 } else { 21 }, &mut d);
}
