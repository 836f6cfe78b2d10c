//! Per-lcore counters, summed on read (DPDK `rte_eth_stats` / `dpdk-proc-info` style).
//!
//! Each lcore owns one counter block and is its only writer; anyone may read every
//! block at any time. The blocks are plain `#[repr(C)]` `u64` words in a
//! [`Region`], so the same layout works on the heap ([`Stats::heap`]) and in a window
//! area ([`Stats::over_region`]) that a tool such as `zerohop stats` maps read-only
//! and opens with [`Stats::attach`].
//!
//! ```text
//!  region: | block 0 (256 B) | block 1 (256 B) | ... | block lcores-1 |
//!  block:  off   0 packets       off  48 burst_hist[0]  (bursts of 0: empty polls)
//!          off   8 bytes         off  56 burst_hist[1]  (1)
//!          off  16 empty_polls   off  64 burst_hist[2]  (2-3)
//!          off  24 polls         ...    burst_hist[k]  (2^(k-1) .. 2^k - 1)
//!          off  32 errors        off 128 burst_hist[10] (512 and more)
//!          off  40 drops         off 136 .. 256 padding (own 128-byte lines)
//! ```
//!
//! # Single writer: Relaxed load + store instead of `fetch_add`
//! A block is written only by the lcore holding its [`LcoreStats`] (claimed once,
//! `Send` but not `Sync`). With one writer, `load; store(v + n)` cannot lose an update:
//! nobody else stores between the two. Readers only need each word untorn, which an
//! atomic store guarantees; they do not need the counters to be ordered against each
//! other or against packet data, so Relaxed suffices. A `fetch_add` would be a locked
//! read-modify-write (`lock xadd` on x86-64, a full barrier and tens of cycles) on
//! every update for nothing; the load and store are plain `mov`s on a line this core
//! already owns. Each block is padded to its own pair of 128-byte lines so lcores do
//! not false-share (adjacent-line prefetch pairs 64-byte lines on x86-64).

use core::mem::offset_of;
use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rings::mem::{Mem, Region};

/// Burst-size histogram buckets: 0, 1, 2-3, 4-7, ..., 256-511, 512+.
pub const HIST_BUCKETS: usize = 11;
/// Bytes per lcore counter block in the region.
pub const BLOCK_SIZE: usize = 256;

/// One lcore's counters (or a sum of them): the layout of a block in the region.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Counters {
    /// Packets handled.
    pub packets: u64,
    /// Bytes handled.
    pub bytes: u64,
    /// Polls that found nothing.
    pub empty_polls: u64,
    /// All polls.
    pub polls: u64,
    /// Errors.
    pub errors: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Polls by burst size: see [`bucket`].
    pub burst_hist: [u64; HIST_BUCKETS],
}

const _: () = assert!(offset_of!(Counters, packets) == 0);
const _: () = assert!(offset_of!(Counters, bytes) == 8);
const _: () = assert!(offset_of!(Counters, empty_polls) == 16);
const _: () = assert!(offset_of!(Counters, polls) == 24);
const _: () = assert!(offset_of!(Counters, errors) == 32);
const _: () = assert!(offset_of!(Counters, drops) == 40);
const _: () = assert!(offset_of!(Counters, burst_hist) == 48);
const _: () = assert!(core::mem::size_of::<Counters>() == 136);
const _: () = assert!(core::mem::size_of::<Counters>() <= BLOCK_SIZE);

const WORDS: usize = core::mem::size_of::<Counters>() / 8;

/// The histogram bucket of a burst of `n`: 0 for 0, else `1 + floor(log2 n)`, capped
/// at 10 (512 and more).
#[inline(always)]
pub fn bucket(n: u32) -> usize {
    ((u32::BITS - n.leading_zeros()) as usize).min(HIST_BUCKETS - 1)
}

impl Counters {
    /// Field-wise sum.
    pub fn add(&mut self, o: &Counters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.empty_polls += o.empty_polls;
        self.polls += o.polls;
        self.errors += o.errors;
        self.drops += o.drops;
        for (a, b) in self.burst_hist.iter_mut().zip(o.burst_hist) {
            *a += b;
        }
    }

    /// Mean packets per non-empty poll (0 if none).
    pub fn mean_burst(&self) -> f64 {
        let busy = self.polls.saturating_sub(self.empty_polls);
        if busy == 0 {
            0.0
        } else {
            self.packets as f64 / busy as f64
        }
    }
}

/// Errors from building stats or claiming a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    /// The region cannot hold the blocks.
    #[error("stats region of {have} bytes is too small: {need} needed")]
    RegionTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The region does not start on an 8-byte boundary.
    #[error("stats region at {addr:#x} is not 8-byte aligned")]
    Misaligned {
        /// Its address.
        addr: usize,
    },
    /// No block of that number.
    #[error("no stats block for lcore {lcore} (have {lcores})")]
    NoSuchLcore {
        /// Asked for.
        lcore: usize,
        /// Blocks.
        lcores: usize,
    },
    /// The block already has a writer.
    #[error("lcore {lcore}'s stats block already has a writer")]
    AlreadyClaimed {
        /// The lcore.
        lcore: usize,
    },
}

/// Counters of every lcore, over a region (heap or window area).
#[derive(Debug, Clone)]
pub struct Stats {
    region: Region,
    lcores: usize,
    claimed: Arc<[AtomicBool]>,
}

impl Stats {
    /// Region bytes needed for `lcores` blocks.
    pub const fn region_len(lcores: usize) -> usize {
        lcores * BLOCK_SIZE
    }

    /// Zeroed stats for `lcores` lcores on the heap.
    pub fn heap(lcores: usize) -> Stats {
        Self::attach(Region::heap(Self::region_len(lcores)), lcores)
            .expect("a heap region of region_len bytes, 128-byte aligned, fits")
    }

    /// Stats laid out in `region` (a window area), zeroed first.
    pub fn over_region(region: Region, lcores: usize) -> Result<Stats, StatsError> {
        let s = Self::attach(region, lcores)?;
        for off in (0..Self::region_len(lcores)).step_by(8) {
            // Relaxed: initialisation before any writer exists; readers tolerate any
            // value.
            let _ = s.region.store_u64(off, 0, Ordering::Relaxed);
        }
        Ok(s)
    }

    /// Stats already laid out in `region` (by this or another process), not zeroed:
    /// for readers such as `zerohop stats`.
    pub fn attach(region: Region, lcores: usize) -> Result<Stats, StatsError> {
        let need = Self::region_len(lcores);
        if region.len() < need {
            return Err(StatsError::RegionTooSmall {
                need,
                have: region.len(),
            });
        }
        if region.addr() & 7 != 0 {
            return Err(StatsError::Misaligned {
                addr: region.addr(),
            });
        }
        Ok(Stats {
            region,
            lcores,
            claimed: (0..lcores).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    /// Number of lcore blocks.
    pub fn lcores(&self) -> usize {
        self.lcores
    }

    /// The region the counters live in.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The writer for `lcore`'s block (once at a time per process; released on drop).
    pub fn writer(&self, lcore: usize) -> Result<LcoreStats, StatsError> {
        let flag = self.claimed.get(lcore).ok_or(StatsError::NoSuchLcore {
            lcore,
            lcores: self.lcores,
        })?;
        // Acquire: pairs with the Release in LcoreStats::drop, so the previous
        // writer's stores happen-before ours (the single-writer rule across owners).
        if flag.swap(true, Ordering::Acquire) {
            return Err(StatsError::AlreadyClaimed { lcore });
        }
        let block = self
            .region
            .sub(lcore * BLOCK_SIZE, BLOCK_SIZE)
            .expect("attach checked the region holds every block");
        Ok(LcoreStats {
            block,
            claimed: self.claimed.clone(),
            lcore,
            _not_sync: core::marker::PhantomData,
        })
    }

    /// One lcore's counters now (each word read atomically; words may come from
    /// slightly different moments).
    pub fn lcore_counters(&self, lcore: usize) -> Result<Counters, StatsError> {
        if lcore >= self.lcores {
            return Err(StatsError::NoSuchLcore {
                lcore,
                lcores: self.lcores,
            });
        }
        let mut w = [0u64; WORDS];
        for (i, v) in w.iter_mut().enumerate() {
            // Relaxed: a statistic; pairs with the writer's Relaxed stores only for
            // atomicity (no tearing), nothing is read on the strength of it.
            *v = self
                .region
                .load_u64(lcore * BLOCK_SIZE + i * 8, Ordering::Relaxed)
                .unwrap_or(0);
        }
        Ok(bytemuck::cast(w))
    }

    /// The sum over all lcores, stamped with the time it was taken.
    pub fn snapshot(&self) -> Snapshot {
        let mut total = Counters::default();
        for l in 0..self.lcores {
            if let Ok(c) = self.lcore_counters(l) {
                total.add(&c);
            }
        }
        Snapshot {
            counters: total,
            at: Instant::now(),
        }
    }
}

/// Counters summed over lcores at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// The sums.
    pub counters: Counters,
    /// When they were read.
    pub at: Instant,
}

/// Rates between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rates {
    /// Seconds between the snapshots.
    pub secs: f64,
    /// Packets per second.
    pub pps: f64,
    /// Bits per second.
    pub bps: f64,
    /// Empty polls / polls in the interval (0 if no polls).
    pub empty_poll_ratio: f64,
    /// Packets per non-empty poll in the interval.
    pub mean_burst: f64,
}

impl Rates {
    /// Rates from `earlier` to `later` (counters are monotonic; a reset reads as 0).
    pub fn between(earlier: &Snapshot, later: &Snapshot) -> Rates {
        let secs = later.at.saturating_duration_since(earlier.at).as_secs_f64();
        let (a, b) = (&earlier.counters, &later.counters);
        let d = |x: u64, y: u64| y.saturating_sub(x);
        let packets = d(a.packets, b.packets);
        let polls = d(a.polls, b.polls);
        let empty = d(a.empty_polls, b.empty_polls);
        let per_s = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        Rates {
            secs,
            pps: per_s(packets as f64),
            bps: per_s(d(a.bytes, b.bytes) as f64 * 8.0),
            empty_poll_ratio: if polls == 0 {
                0.0
            } else {
                empty as f64 / polls as f64
            },
            mean_burst: if polls > empty {
                packets as f64 / (polls - empty) as f64
            } else {
                0.0
            },
        }
    }
}

/// The single writer of one lcore's block. `Send`, not `Sync`.
pub struct LcoreStats {
    block: Region,
    claimed: Arc<[AtomicBool]>,
    lcore: usize,
    _not_sync: core::marker::PhantomData<core::cell::Cell<()>>,
}

impl core::fmt::Debug for LcoreStats {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LcoreStats")
            .field("lcore", &self.lcore)
            .finish()
    }
}

impl LcoreStats {
    /// The lcore (block number) this writer updates.
    pub fn lcore(&self) -> usize {
        self.lcore
    }

    #[inline(always)]
    fn add(&self, off: usize, n: u64) {
        // Relaxed load + store: we are this word's only writer (see the module docs),
        // so no update is lost; readers need only an untorn value. The offsets are
        // constants inside the block, so the checked accesses cannot fail.
        if let Ok(v) = self.block.load_u64(off, Ordering::Relaxed) {
            // Relaxed: as above.
            let _ = self
                .block
                .store_u64(off, v.wrapping_add(n), Ordering::Relaxed);
        }
    }

    /// Records one poll that returned `packets` packets of `bytes` bytes in all.
    #[inline]
    pub fn record_poll(&self, packets: u32, bytes: u64) {
        self.add(offset_of!(Counters, polls), 1);
        if packets == 0 {
            self.add(offset_of!(Counters, empty_polls), 1);
        } else {
            self.add(offset_of!(Counters, packets), packets as u64);
            self.add(offset_of!(Counters, bytes), bytes);
        }
        self.add(offset_of!(Counters, burst_hist) + bucket(packets) * 8, 1);
    }

    /// Adds packets and bytes without counting a poll.
    #[inline]
    pub fn add_packets(&self, packets: u64, bytes: u64) {
        self.add(offset_of!(Counters, packets), packets);
        self.add(offset_of!(Counters, bytes), bytes);
    }

    /// Adds `n` errors.
    #[inline]
    pub fn add_errors(&self, n: u64) {
        self.add(offset_of!(Counters, errors), n);
    }

    /// Adds `n` drops.
    #[inline]
    pub fn add_drops(&self, n: u64) {
        self.add(offset_of!(Counters, drops), n);
    }
}

impl Drop for LcoreStats {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in Stats::writer (the next owner's claim).
        self.claimed[self.lcore].store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        let b: Vec<usize> = [0, 1, 2, 3, 4, 7, 8, 32, 255, 256, 511, 512, 4096]
            .iter()
            .map(|n| bucket(*n))
            .collect();
        assert_eq!(b, [0, 1, 2, 2, 3, 3, 4, 6, 8, 9, 9, 10, 10]);
    }

    #[test]
    fn per_lcore_blocks_sum() {
        let s = Stats::heap(3);
        let w0 = s.writer(0).unwrap();
        assert_eq!(
            s.writer(0).unwrap_err(),
            StatsError::AlreadyClaimed { lcore: 0 }
        );
        assert!(matches!(
            s.writer(3),
            Err(StatsError::NoSuchLcore { lcore: 3, .. })
        ));
        let w2 = s.writer(2).unwrap();
        let a = s.snapshot();
        w0.record_poll(0, 0);
        w0.record_poll(32, 32 * 64);
        w2.record_poll(3, 300);
        w2.add_errors(2);
        w2.add_drops(5);
        let c = s.lcore_counters(2).unwrap();
        assert_eq!((c.polls, c.packets, c.errors, c.drops), (1, 3, 2, 5));
        let b = s.snapshot();
        let t = b.counters;
        assert_eq!(
            (t.polls, t.empty_polls, t.packets, t.bytes),
            (3, 1, 35, 2348)
        );
        assert_eq!(t.burst_hist[0], 1);
        assert_eq!(t.burst_hist[2], 1);
        assert_eq!(t.burst_hist[6], 1);
        assert_eq!(t.mean_burst(), 17.5);
        let r = Rates::between(&a, &b);
        assert!((r.empty_poll_ratio - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.mean_burst, 17.5);
        drop(w0);
        assert!(s.writer(0).is_ok(), "released on drop");
    }

    #[test]
    fn over_a_window_region_and_attach() {
        let window = Region::heap(4096);
        let area = window.sub(1024, Stats::region_len(2)).unwrap();
        let s = Stats::over_region(area.clone(), 2).unwrap();
        s.writer(1).unwrap().record_poll(4, 400);
        // A reader attaching to the same bytes sees the counters at the documented
        // offsets.
        let r = Stats::attach(area, 2).unwrap();
        assert_eq!(r.lcore_counters(1).unwrap().packets, 4);
        assert_eq!(
            window.load_u64(1024 + BLOCK_SIZE + 8, Ordering::Relaxed),
            Ok(400)
        );
        assert!(matches!(
            Stats::over_region(window.sub(0, 100).unwrap(), 1),
            Err(StatsError::RegionTooSmall { .. })
        ));
        assert!(matches!(
            Stats::attach(window.sub(4, 512).unwrap(), 1),
            Err(StatsError::Misaligned { .. })
        ));
    }

    #[test]
    fn rates_from_snapshots() {
        let t0 = Instant::now();
        let mk = |p, b, e, polls, secs| Snapshot {
            counters: Counters {
                packets: p,
                bytes: b,
                empty_polls: e,
                polls,
                ..Counters::default()
            },
            at: t0 + std::time::Duration::from_secs(secs),
        };
        let r = Rates::between(&mk(0, 0, 0, 0, 0), &mk(2000, 128_000, 50, 100, 2));
        assert_eq!(r.pps, 1000.0);
        assert_eq!(r.bps, 512_000.0);
        assert_eq!(r.empty_poll_ratio, 0.5);
        assert_eq!(r.mean_burst, 40.0);
    }
}
