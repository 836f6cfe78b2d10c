//! Placement probe: how far apart are two cores right now?
//!
//! On the shared VMs zerohop is benchmarked on, a cache-line round trip between two
//! vCPUs takes either ~70-110 ns ("near") or ~400-500 ns ("far"), and the host flips
//! between the two by itself (BASELINES.md). Every cross-core benchmark therefore runs
//! [`placement_probe`] before and after each measurement, prints it next to the result,
//! and voids the measurement if [`changed`] says the placement moved.
//!
//! ```text
//!   pinger (core a)                      ponger (core b)
//!   line := 2k+1  ------ one 128-byte line ----->  sees odd 2k+1
//!   sees 2k+2     <------------------------------  line := 2k+2
//!   (one round trip; batches of BATCH of them are timed and divided)
//! ```
//!
//! The clock is read once per batch, not per round trip: the TSC on these machines
//! ticks in 10 ns steps. The probe has a deadline: if either thread cannot be scheduled
//! (the cores are busy with other work), it stops and reports what it measured, marked
//! `timed_out`, and never hangs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

/// Round trips per timed batch.
pub const BATCH: u32 = 1000;
/// A median round trip at or above this many nanoseconds is [`Placement::Far`].
///
/// Near pairs measure ~70-110 ns and far pairs ~390-500 ns on the reference machine
/// (BASELINES.md, "the floor"); 250 ns sits in the empty middle.
pub const NEAR_FAR_THRESHOLD_NS: f64 = 250.0;
/// How long a probe may take in all before it gives up.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Where two cores sit relative to each other, as a round trip shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Median round trip below [`NEAR_FAR_THRESHOLD_NS`].
    Near,
    /// Median round trip at or above [`NEAR_FAR_THRESHOLD_NS`].
    Far,
    /// No batch completed (the probe timed out before measuring anything).
    Unknown,
}

impl core::fmt::Display for Placement {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Placement::Near => "near",
            Placement::Far => "far",
            Placement::Unknown => "unknown",
        })
    }
}

/// What one probe measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// The two cores (pinger, ponger).
    pub cores: (usize, usize),
    /// True if both threads were pinned to their cores.
    pub pinned: bool,
    /// Batches timed.
    pub batches: u32,
    /// Round trips per batch.
    pub batch_len: u32,
    /// Median over batches of the mean round trip in a batch, in ns.
    pub median_ns: f64,
    /// 99th percentile over batches of the mean round trip in a batch, in ns.
    pub p99_ns: f64,
    /// Classification of `median_ns`.
    pub placement: Placement,
    /// True if the deadline cut the probe short.
    pub timed_out: bool,
}

impl core::fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "probe cores {}<->{}: {} (RTT median {:.0} ns, p99 {:.0} ns, {} x {} round trips{}{})",
            self.cores.0,
            self.cores.1,
            self.placement,
            self.median_ns,
            self.p99_ns,
            self.batches,
            self.batch_len,
            if self.pinned { "" } else { ", NOT PINNED" },
            if self.timed_out { ", TIMED OUT" } else { "" },
        )
    }
}

/// True if a measurement bracketed by `before` and `after` must be voided: the
/// placement differs, or either probe is not a clean measurement (unknown placement,
/// timed out, or unpinned).
pub fn changed(before: &ProbeResult, after: &ProbeResult) -> bool {
    let clean = |p: &ProbeResult| p.placement != Placement::Unknown && !p.timed_out && p.pinned;
    !(clean(before) && clean(after) && before.placement == after.placement)
}

/// Classifies a median round trip.
pub fn classify(median_ns: f64) -> Placement {
    if median_ns.is_nan() {
        Placement::Unknown
    } else if median_ns < NEAR_FAR_THRESHOLD_NS {
        Placement::Near
    } else {
        Placement::Far
    }
}

/// Pins the calling thread to `core`; false if the core does not exist or pinning
/// failed.
pub fn pin(core: usize) -> bool {
    // core_affinity indexes a fixed-size cpu_set_t (and panics past its end).
    core < libc::CPU_SETSIZE as usize
        && core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// Ping-pongs one cache line between threads pinned to `cores.0` and `cores.1` for
/// about `round_trips` round trips (in batches of [`BATCH`], at least one batch) and
/// reports the median and p99 round trip over batches. Gives up after [`DEADLINE`].
pub fn placement_probe(cores: (usize, usize), round_trips: u32) -> ProbeResult {
    let batches = round_trips.div_ceil(BATCH).max(1);
    let deadline = Instant::now() + DEADLINE;
    let line = CachePadded::new(AtomicU64::new(0));
    let stop = CachePadded::new(AtomicBool::new(false));
    let ready = CachePadded::new(AtomicBool::new(false));

    let (pinned_a, pinned_b, samples, timed_out) = std::thread::scope(|s| {
        let ponger = s.spawn(|| {
            let pinned = pin(cores.1);
            // Release: tells the pinger we are pinned and polling (pairs with its
            // Acquire wait on `ready`).
            ready.store(true, Ordering::Release);
            let mut last = 0u64;
            let mut spins = 0u32;
            loop {
                // Acquire: pairs with the pinger's Release store of an odd value.
                let v = line.load(Ordering::Acquire);
                if v != last && v & 1 == 1 {
                    last = v + 1;
                    // Release: answers the ping; pairs with the pinger's Acquire load.
                    line.store(last, Ordering::Release);
                    spins = 0;
                    continue;
                }
                spins = spins.wrapping_add(1);
                if spins & 0xfff == 0 {
                    // Relaxed: `stop` carries no data, only "finish now".
                    if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        break;
                    }
                    // Far longer than any round trip: the pinger is not running (or
                    // is done); let it have the core.
                    std::thread::yield_now();
                }
                core::hint::spin_loop();
            }
            pinned
        });

        let pinger = s.spawn(|| {
            // Sets `stop` however this thread ends (also on panic), so the ponger
            // always exits.
            struct StopOnDrop<'a>(&'a AtomicBool);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    // Relaxed: see the ponger's load.
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop = StopOnDrop(&stop);
            let pinned = pin(cores.0);
            // Acquire: pairs with the ponger's Release store of `ready`.
            while !ready.load(Ordering::Acquire) {
                if Instant::now() >= deadline {
                    return (pinned, Vec::new(), true);
                }
                std::thread::yield_now();
            }
            let mut seq = 0u64;
            let round_trip = |seq: &mut u64| -> bool {
                *seq += 2;
                // Release: the ping; pairs with the ponger's Acquire load.
                line.store(*seq - 1, Ordering::Release);
                let mut spins = 0u32;
                // Acquire: pairs with the ponger's Release store of the answer.
                while line.load(Ordering::Acquire) != *seq {
                    spins = spins.wrapping_add(1);
                    if spins & 0xfff == 0 {
                        if Instant::now() >= deadline {
                            return false;
                        }
                        // The ponger is not running: let it have the core.
                        std::thread::yield_now();
                    }
                    core::hint::spin_loop();
                }
                true
            };
            // Warm-up: bring the line and both threads into steady state.
            for _ in 0..BATCH / 4 {
                if !round_trip(&mut seq) {
                    return (pinned, Vec::new(), true);
                }
            }
            let mut samples = Vec::with_capacity(batches as usize);
            for _ in 0..batches {
                let t0 = Instant::now();
                for _ in 0..BATCH {
                    if !round_trip(&mut seq) {
                        return (pinned, samples, true);
                    }
                }
                samples.push(t0.elapsed().as_nanos() as f64 / BATCH as f64);
            }
            (pinned, samples, false)
        });

        let (pa, samples, timed_out) = pinger.join().unwrap_or((false, Vec::new(), true));
        let pb = ponger.join().unwrap_or(false);
        (pa, pb, samples, timed_out)
    });

    let mut sorted = samples;
    sorted.sort_by(f64::total_cmp);
    let median_ns = percentile(&sorted, 0.5);
    ProbeResult {
        cores,
        pinned: pinned_a && pinned_b,
        batches: sorted.len() as u32,
        batch_len: BATCH,
        median_ns,
        p99_ns: percentile(&sorted, 0.99),
        placement: classify(median_ns),
        timed_out,
    }
}

/// The `q` quantile of sorted samples (nearest rank), NaN if there are none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(placement: Placement) -> ProbeResult {
        ProbeResult {
            cores: (0, 1),
            pinned: true,
            batches: 1,
            batch_len: BATCH,
            median_ns: 100.0,
            p99_ns: 100.0,
            placement,
            timed_out: false,
        }
    }

    #[test]
    fn classification_and_change() {
        assert_eq!(classify(80.0), Placement::Near);
        assert_eq!(classify(450.0), Placement::Far);
        assert_eq!(classify(f64::NAN), Placement::Unknown);
        let near = result(Placement::Near);
        let far = result(Placement::Far);
        assert!(!changed(&near, &near));
        assert!(changed(&near, &far));
        assert!(changed(
            &result(Placement::Unknown),
            &result(Placement::Unknown)
        ));
        let mut cut = near.clone();
        cut.timed_out = true;
        assert!(changed(&near, &cut));
    }

    #[test]
    fn percentiles() {
        assert!(percentile(&[], 0.5).is_nan());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    /// Runs a real probe (no timing assertions: the machine is shared).
    #[test]
    fn probe_runs_and_ends() {
        let r = placement_probe((0, 1), 2 * BATCH);
        assert!(r.batches <= 2);
        if !r.timed_out {
            assert_eq!(r.batches, 2);
            assert!(r.median_ns > 0.0 && r.p99_ns >= r.median_ns);
            assert_ne!(r.placement, Placement::Unknown);
        }
        // A core that does not exist: unpinned, still ends.
        let r = placement_probe((0, 100_000), 1);
        assert!(!r.pinned);
        assert!(changed(&r, &r));
    }
}
