//! Same-placement ratio harness for the SPSC contenders (BASELINES.md).
//!
//! Rounds of `zerohop chunk, zerohop slice, rtrb chunk, ArrayQueue`, interleaved and
//! rotated so no contender always runs first (A B C D, B C D A, C D A B, ...), each
//! round bracketed by a placement probe of cores 0 and 1. A
//! round whose probes differ (or timed out) is void. Reports, per placement, each
//! contender's median items/s with its min-max spread over the valid rounds, and the
//! ratios zerohop/rtrb and zerohop/ArrayQueue computed round by round (each ratio
//! pairs runs from the same round, hence the same placement) as median (min-max), then
//! a markdown table for docs/BENCHMARKS.md.
//!
//! `cargo bench -p zerohop-benches --bench spsc_ratio [-- --quick] [-- --secs N]`

use std::time::{Duration, Instant};

use dataplane::probe::{changed, placement_probe, Placement, ProbeResult};

mod common;
use common::{Contender, BURST, RING};

const CORES: (usize, usize) = (0, 1);
const PROBE_ROUND_TRIPS: u32 = 20_000;

struct Round {
    before: ProbeResult,
    after: ProbeResult,
    /// Items per second, per contender (`None`: the run hit its deadline).
    rates: [Option<f64>; 4],
}

impl Round {
    fn valid(&self) -> bool {
        !changed(&self.before, &self.after) && self.rates.iter().all(Option::is_some)
    }
}

fn median_min_max(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((med, v[0], v[n - 1]))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(if quick { 8 } else { 40 });
    let max_rounds = if quick { 10 } else { 60 };
    // Ring contenders move ~16M items per run (10-35 ms), ArrayQueue 2M (20-160 ms).
    let scale = if quick { 4 } else { 1 };
    let items = |c: Contender| match c {
        Contender::ArrayQueue => (2u64 << 20) / scale,
        _ => (16u64 << 20) / scale,
    };

    println!(
        "spsc_ratio: u64 items, burst {BURST}, ring {RING}, producer core {} -> consumer core {}, \
         up to {max_rounds} rounds / {secs} s{}",
        CORES.0,
        CORES.1,
        if quick { " (--quick)" } else { "" }
    );
    let budget = Instant::now() + Duration::from_secs(secs);
    let mut rounds: Vec<Round> = Vec::new();
    while rounds.len() < max_rounds && Instant::now() < budget {
        let before = placement_probe(CORES, PROBE_ROUND_TRIPS);
        let mut rates = [None; 4];
        // Rotate the starting contender each round (A B C D, B C D A, ...) so that no
        // contender always runs first after the probe.
        for k in 0..Contender::ALL.len() {
            let i = (k + rounds.len()) % Contender::ALL.len();
            let c = Contender::ALL[i];
            let n = items(c);
            rates[i] = c.run(n, CORES).map(|d| n as f64 / d.as_secs_f64());
        }
        let after = placement_probe(CORES, PROBE_ROUND_TRIPS);
        let r = Round {
            before,
            after,
            rates,
        };
        let fmt = |x: Option<f64>| x.map_or("timeout".to_string(), |v| format!("{:7.1}", v / 1e6));
        println!(
            "round {:2}: probe {:>4} {:4.0} ns -> {:>4} {:4.0} ns | M items/s: zh-chunk {} zh-slice {} rtrb {} AQ {}{}",
            rounds.len(),
            r.before.placement.to_string(),
            r.before.median_ns,
            r.after.placement.to_string(),
            r.after.median_ns,
            fmt(r.rates[0]),
            fmt(r.rates[1]),
            fmt(r.rates[2]),
            fmt(r.rates[3]),
            if r.valid() { "" } else { "  VOID" }
        );
        rounds.push(r);
    }

    let void = rounds.iter().filter(|r| !r.valid()).count();
    println!(
        "\n{} rounds, {} void (placement changed, probe timed out, or a run hit its deadline)",
        rounds.len(),
        void
    );

    let mut table = Vec::new();
    for placement in [Placement::Near, Placement::Far] {
        let valid: Vec<&Round> = rounds
            .iter()
            .filter(|r| r.valid() && r.before.placement == placement)
            .collect();
        if valid.is_empty() {
            println!("\n{placement}: no valid rounds");
            continue;
        }
        let rtt =
            median_min_max(valid.iter().map(|r| r.before.median_ns).collect()).expect("non-empty");
        println!(
            "\n{placement} ({} valid rounds, probe RTT median {:.0} ns, {:.0}-{:.0}):",
            valid.len(),
            rtt.0,
            rtt.1,
            rtt.2
        );
        let mut cells = vec![
            placement.to_string(),
            valid.len().to_string(),
            format!("{:.0}", rtt.0),
        ];
        for (i, c) in Contender::ALL.into_iter().enumerate() {
            let m = median_min_max(valid.iter().filter_map(|r| r.rates[i]).collect())
                .expect("valid rounds have every rate");
            println!(
                "  {:14} {:8.1} M items/s  ({:.1}-{:.1})",
                c.name(),
                m.0 / 1e6,
                m.1 / 1e6,
                m.2 / 1e6
            );
            cells.push(format!(
                "{:.0} ({:.0}-{:.0})",
                m.0 / 1e6,
                m.1 / 1e6,
                m.2 / 1e6
            ));
        }
        for (num, den) in [(0, 2), (1, 2), (0, 3), (1, 3)] {
            let ratios: Vec<f64> = valid
                .iter()
                .filter_map(|r| Some(r.rates[num]? / r.rates[den]?))
                .collect();
            let m = median_min_max(ratios).expect("valid rounds have every rate");
            println!(
                "  {} / {}: {:.2}x ({:.2}-{:.2})",
                Contender::ALL[num].name(),
                Contender::ALL[den].name(),
                m.0,
                m.1,
                m.2
            );
            cells.push(format!("{:.2}x ({:.2}-{:.2})", m.0, m.1, m.2));
        }
        table.push(cells);
    }

    println!(
        "\nMarkdown (docs/BENCHMARKS.md), `cargo bench -p zerohop-benches --bench spsc_ratio`:\n"
    );
    println!(
        "| placement | valid rounds | probe RTT ns | zerohop chunk M/s | zerohop slice M/s | rtrb chunk M/s | ArrayQueue M/s | chunk/rtrb | slice/rtrb | chunk/AQ | slice/AQ |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &table {
        println!("| {} |", row.join(" | "));
    }
    println!(
        "\n(u64 items, burst {BURST}, ring {RING}, cores {}->{}; {} rounds, {} void; median (min-max) over valid rounds; ratios per round)",
        CORES.0,
        CORES.1,
        rounds.len(),
        void
    );
}
