//! Criterion benchmark: SPSC handoff of u64 items between two pinned cores (0 -> 1),
//! burst 32, ring of 1024: zerohop chunks, zerohop slices, rtrb chunks, crossbeam
//! ArrayQueue. Prints a placement probe before and after (BASELINES.md); for ratios
//! that are valid under the near/far flips use the `spsc_ratio` bench instead.
//!
//! `cargo bench -p zerohop-benches --bench spsc`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::probe::placement_probe;

mod common;
use common::Contender;

/// Items per criterion iteration.
const ITEMS: u64 = 1 << 16;
const CORES: (usize, usize) = (0, 1);

fn spsc(c: &mut Criterion) {
    println!("before: {}", placement_probe(CORES, 20_000));
    let mut g = c.benchmark_group("spsc_u64_burst32");
    g.throughput(Throughput::Elements(ITEMS));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    for contender in Contender::ALL {
        g.bench_function(contender.name(), |b| {
            b.iter_custom(|iters| {
                contender
                    .run(iters * ITEMS, CORES)
                    .expect("a run hit its deadline (cores unavailable?)")
            })
        });
    }
    g.finish();
    println!("after: {}", placement_probe(CORES, 20_000));
}

criterion_group!(benches, spsc);
criterion_main!(benches);
