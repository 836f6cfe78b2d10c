//! Single-core copy bandwidth into cold memory: `memcpy` against the copy engine's
//! non-temporal paths (`pmd::copy`), for 64 B, 256 B, 1500 B, 4 KiB and 64 KiB copies.
//!
//! The yardstick is BASELINES.md's floor table ("single-core copy, to cold memory:
//! memcpy / non-temporal AVX-512, one sfence per 32 copies"). Each copy goes from one hot
//! source buffer to the next 64-byte aligned slot of a large destination region (1 GiB
//! by default, more than this machine's 480 MiB L3, so the destination lines are cold
//! when they are written again). The NT contenders stream every copy (threshold 0) and
//! issue one `sfence` per burst of 32 copies; `memcpy` is `Region::write_bytes`
//! (`copy_nonoverlapping`); "auto" is `CopyEngine::detect()` with its default
//! threshold, i.e. what a port gets.
//!
//! Run: `cargo bench -p zerohop-benches --bench copy` (criterion, then an interleaved
//! round-robin that prints markdown tables of medians and NT/memcpy ratios, for the
//! cold destination and for a 4 MiB "warm" one that stays in the caches; ~60 s).
//! `-- --quick` skips criterion. `ZEROHOP_COPY_BENCH_MIB` sets the destination size.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use pmd::copy::{CopyEngine, CopyKind, DEFAULT_NT_THRESHOLD};
use rings::{Mem, Region};

/// Copies per burst (one sfence per burst on the NT paths).
const BURST: usize = 32;
/// Copy sizes measured.
const SIZES: [usize; 5] = [64, 256, 1500, 4096, 64 * 1024];
/// Copy sizes in the interleaved table (the criterion sizes plus a few between, to
/// locate the plain/NT crossover).
const TABLE_SIZES: [usize; 8] = [64, 128, 256, 512, 1024, 1500, 4096, 64 * 1024];
/// Destination span of the "warm" table: a reused buffer pool (e.g. 2048 x 2 KiB)
/// that stays in the caches, as a port's own TX buffers usually do.
const WARM_SPAN: usize = 4 << 20;
/// Default destination size: larger than the 480 MiB L3 of this machine.
const DEFAULT_DST_MIB: usize = 1024;

/// One way of copying.
#[derive(Clone, Copy, Debug)]
enum Contender {
    /// `copy_nonoverlapping` via `Region::write_bytes`.
    Memcpy,
    /// A copy engine (NT ones with threshold 0, i.e. streaming every copy).
    Engine(CopyEngine),
}

impl Contender {
    fn name(&self) -> String {
        match self {
            Contender::Memcpy => "memcpy".to_owned(),
            Contender::Engine(e) if e.nt_threshold() == 0 => format!("{} NT", e.kind()),
            Contender::Engine(e) => format!("auto ({}, NT >= {} B)", e.kind(), e.nt_threshold()),
        }
    }
}

/// The contenders this CPU supports: memcpy, each NT path, and the default engine.
fn contenders() -> Vec<Contender> {
    let mut v = vec![Contender::Memcpy];
    for k in [CopyKind::Avx512Nt, CopyKind::Avx2Nt] {
        if let Ok(e) = CopyEngine::with_kind(k) {
            v.push(Contender::Engine(e.with_threshold(0)));
        }
    }
    v.push(Contender::Engine(CopyEngine::detect()));
    v
}

/// The destination region, a hot source buffer and the next destination slot.
struct Bench {
    dst: Region,
    src: Vec<u8>,
    cursor: usize,
}

impl Bench {
    fn new(dst_bytes: usize) -> Bench {
        let dst = Region::heap(dst_bytes);
        // Fault every page in now, so no measurement pays for first touches.
        for off in (0..dst_bytes).step_by(4096) {
            dst.write_bytes(off, &[1]).expect("prefault");
        }
        let src = (0..SIZES[SIZES.len() - 1])
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        Bench {
            dst,
            src,
            cursor: 0,
        }
    }

    /// `bursts` bursts of [`BURST`] copies of `size` bytes into the first `span` bytes
    /// of the destination; returns the elapsed time.
    fn run(&mut self, c: Contender, size: usize, bursts: u64, span: usize) -> Duration {
        let stride = size.next_multiple_of(64);
        let src = &self.src[..size];
        let len = span.min(self.dst.len());
        let mut cursor = self.cursor;
        let t = Instant::now();
        for _ in 0..bursts {
            match c {
                Contender::Memcpy => {
                    for _ in 0..BURST {
                        if cursor + stride > len {
                            cursor = 0;
                        }
                        self.dst.write_bytes(cursor, src).expect("copy in bounds");
                        cursor += stride;
                    }
                }
                Contender::Engine(ref e) => {
                    let mut burst = e.burst();
                    for _ in 0..BURST {
                        if cursor + stride > len {
                            cursor = 0;
                        }
                        burst
                            .copy_to(&self.dst, cursor, src)
                            .expect("copy in bounds");
                        cursor += stride;
                    }
                    // One sfence per burst if any copy streamed, else a Release fence.
                    burst.finish();
                }
            }
        }
        let el = t.elapsed();
        self.cursor = black_box(cursor);
        el
    }
}

fn criterion_benches(c: &mut Criterion, b: &mut Bench, cs: &[Contender]) {
    for size in SIZES {
        let mut g = c.benchmark_group(format!("copy_cold_{size}B"));
        g.throughput(Throughput::Bytes((size * BURST) as u64));
        for k in cs {
            g.bench_function(BenchmarkId::from_parameter(k.name()), |bn| {
                bn.iter_custom(|iters| b.run(*k, size, iters, usize::MAX))
            });
        }
        g.finish();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Interleaved rounds (A B C D, B C D A, ...) per size; medians and per-round ratios.
fn ratio_report(rounds: usize, b: &mut Bench, cs: &[Contender], span: usize, what: &str) {
    // ~64 MiB copied per measurement.
    const PER_RUN: usize = 64 << 20;
    println!();
    println!(
        "copy: single core, hot source -> {what} destination ({} KiB cycled), burst {BURST}, \
         one fence per burst, {rounds} interleaved rounds of ~{} MiB each",
        span.min(b.dst.len()) >> 10,
        PER_RUN >> 20
    );
    print!("| size |");
    for k in cs {
        print!(" {} GB/s |", k.name());
    }
    for k in &cs[1..] {
        print!(" {} / memcpy |", k.name());
    }
    println!();
    println!("|{}", "---|".repeat(1 + 2 * cs.len() - 1));
    for size in TABLE_SIZES {
        let bursts = (PER_RUN / (size * BURST)).max(1) as u64;
        let bytes = (bursts as usize * BURST * size) as f64;
        let mut rates: Vec<Vec<f64>> = Vec::new();
        for r in 0..rounds {
            let mut row = vec![0.0; cs.len()];
            for j in 0..cs.len() {
                let i = (r + j) % cs.len();
                row[i] = bytes / b.run(cs[i], size, bursts, span).as_secs_f64() / 1e9;
            }
            rates.push(row);
        }
        print!("| {size} B |");
        for i in 0..cs.len() {
            let mut v: Vec<f64> = rates.iter().map(|r| r[i]).collect();
            print!(" {:.1} |", median(&mut v));
        }
        for i in 1..cs.len() {
            let mut v: Vec<f64> = rates.iter().map(|r| r[i] / r[0]).collect();
            print!(" {:.2}x |", median(&mut v));
        }
        println!();
    }
    println!(
        "(auto = CopyEngine::detect(): plain copy below {DEFAULT_NT_THRESHOLD} B, NT at or above; engine: {})",
        CopyEngine::detect().describe()
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mib = std::env::var("ZEROHOP_COPY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_DST_MIB);
    if let Some(core) = core_affinity::get_core_ids().and_then(|v| v.last().copied()) {
        core_affinity::set_for_current(core);
    }
    let cs = contenders();
    let mut b = Bench::new(mib << 20);
    // Warm-up: one full pass over the destination with each contender.
    for k in &cs {
        b.run(
            *k,
            64 * 1024,
            ((mib << 20) / (64 * 1024 * BURST)) as u64,
            usize::MAX,
        );
    }
    if !quick {
        let mut c = Criterion::default()
            .configure_from_args()
            .sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        criterion_benches(&mut c, &mut b, &cs);
        c.final_summary();
    }
    let rounds = if quick { 5 } else { 15 };
    ratio_report(rounds, &mut b, &cs, usize::MAX, "cold");
    ratio_report(rounds, &mut b, &cs, WARM_SPAN, "warm (cache-resident)");
}
