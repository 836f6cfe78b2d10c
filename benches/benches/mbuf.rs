//! Criterion benchmark: mbuf alloc + free through the calling thread's mempool cache,
//! 32 mbufs per iteration (one thread, no contention): bulk (`alloc_bulk` +
//! `free_bulk`) and one by one (`alloc` + drop). Divide the time per iteration by 32
//! for ns/mbuf (criterion prints it directly as time per element).
//!
//! `cargo bench -p zerohop-benches --bench mbuf`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::mbuf::{free_bulk, Mbuf};
use dataplane::Mempool;

const BURST: usize = 32;

fn mbuf(c: &mut Criterion) {
    let pool = Mempool::heap(4096, 2048).expect("pool");
    pool.warm_up();
    let mut g = c.benchmark_group("mbuf_alloc_free_32");
    g.throughput(Throughput::Elements(BURST as u64));
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    let mut v: Vec<Mbuf> = Vec::with_capacity(BURST);
    g.bench_function("bulk", |b| {
        b.iter(|| {
            assert!(pool.alloc_bulk(&mut v, BURST));
            free_bulk(&mut v);
        })
    });
    g.bench_function("bulk_append64", |b| {
        b.iter(|| {
            assert!(pool.alloc_bulk(&mut v, BURST));
            for m in v.iter_mut() {
                m.append(64).expect("tailroom")[0] = 1;
            }
            free_bulk(&mut v);
        })
    });
    g.bench_function("single_drop", |b| {
        b.iter(|| {
            for _ in 0..BURST {
                v.push(pool.alloc().expect("free buffer"));
            }
            // Drop one by one (each Mbuf's Drop).
            v.truncate(0);
        })
    });
    // Reference for the design choice in dataplane::mempool: what holding an Arc per
    // mbuf would add (one clone + one drop per mbuf), uncontended, same thread. Across
    // lcores (alloc on one core, free on another) the counter line also bounces.
    let arc = std::sync::Arc::new(0u64);
    let mut arcs: Vec<std::sync::Arc<u64>> = Vec::with_capacity(BURST);
    g.bench_function("reference_arc_clone_drop", |b| {
        b.iter(|| {
            for _ in 0..BURST {
                arcs.push(std::hint::black_box(&arc).clone());
            }
            arcs.truncate(0);
        })
    });
    g.finish();
}

criterion_group!(benches, mbuf);
criterion_main!(benches);
