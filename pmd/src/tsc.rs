//! The time-stamp counter as a clock for per-packet and per-message timing.
//!
//! A `clock_gettime` (`Instant::now`) costs about 21 ns on the guests zerohop is
//! benchmarked on, `rdtsc` about 8 ns; a round trip timed with two clock reads pays
//! the difference twice. The TSC is one counter for every process on a host (x86-64
//! with an invariant TSC), so a tick value from one process converts in another with
//! the same [`ns_per_tick`]. Elsewhere [`ticks`] is monotonic nanoseconds.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Reads the time-stamp counter (x86-64), or monotonic nanoseconds elsewhere.
#[inline(always)]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions; every x86-64 CPU has it.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// [`ticks`] ordered after every older load and before every younger instruction
/// (`lfence; rdtsc; lfence` on x86-64): the end of a timed interval. A plain `rdtsc`
/// after a receive can run before that receive's last loads complete: an RPMsg round
/// trip timed with it read ~80 ns shorter than with this (or with `Instant::now`).
#[inline(always)]
pub fn ticks_ordered() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: lfence and rdtsc have no preconditions; every x86-64 CPU has them.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_mm_lfence();
            let t = core::arch::x86_64::_rdtsc();
            core::arch::x86_64::_mm_lfence();
            t
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        ticks()
    }
}

/// Nanoseconds per [`ticks`] unit, measured against the monotonic clock over 20 ms.
pub fn calibrate() -> f64 {
    let (t0, c0) = (Instant::now(), ticks());
    std::thread::sleep(Duration::from_millis(20));
    let (t1, c1) = (Instant::now(), ticks());
    let ns = (t1 - t0).as_nanos() as f64;
    let dt = c1.wrapping_sub(c0).max(1) as f64;
    ns / dt
}

/// [`calibrate`]d once per process (the first call takes 20 ms).
pub fn ns_per_tick() -> f64 {
    static NS: OnceLock<f64> = OnceLock::new();
    *NS.get_or_init(calibrate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_advance_and_convert_to_about_the_wall_clock() {
        let per = ns_per_tick();
        assert!(per > 0.0 && per.is_finite());
        let (t0, c0) = (Instant::now(), ticks());
        std::thread::sleep(Duration::from_millis(30));
        let (t1, c1) = (Instant::now(), ticks());
        let by_ticks = c1.wrapping_sub(c0) as f64 * per;
        let by_clock = (t1 - t0).as_nanos() as f64;
        // Generous: a loaded 2-core machine may preempt between the two reads.
        assert!(
            by_ticks > 0.5 * by_clock && by_ticks < 2.0 * by_clock,
            "{by_ticks} vs {by_clock}"
        );
    }
}
