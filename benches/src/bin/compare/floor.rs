//! The machine's floor: a one-line and a two-line ping-pong between two processes over
//! a MAP_SHARED /dev/shm file, and single-core copy bandwidth into cold memory (plain
//! `write_bytes` and `CopyEngine` non-temporal stores, one sfence per 32 copies).
//!
//! ```text
//!  parent (core 0)                            peer = `compare --peer floor1|floor2 PATH` (core 1)
//!  off 0   ping := 2k+1 (1 line) / k (2 lines) ---->  sees it
//!  off 0   sees 2k+2   <---- 1 line: off 0 := 2k+2 | 2 lines: off 128 := k
//!  u64::MAX at off 0 = stop; batches of 1000 round trips are timed and divided
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dataplane::probe::pin;
use pmd::window::{OpenOptions, ShmWindow, Window};
use rings::{Mem, Region};

use crate::peer::{on_core, scratch_path, Peer};

const PING_OFF: usize = 0;
const PONG_OFF: usize = 128;
const WINDOW: usize = 8192;
const BATCH: usize = 1000;
const DEADLINE: Duration = Duration::from_secs(5);

/// Median over `batches` batches of the mean round trip (ns), two processes.
pub fn ping_pong(lines: u8, batches: usize) -> Result<f64, String> {
    let path = scratch_path("floor");
    let w = ShmWindow::create(&path, WINDOW).map_err(|e| e.to_string())?;
    let m = w.region().clone();
    let peer = Peer::spawn(&[
        "--peer".into(),
        format!("floor{lines}"),
        path.display().to_string(),
    ])?;
    peer.line("READY", Instant::now() + DEADLINE)?;
    // The peer has it mapped: the name can go now (nothing left behind on any exit).
    let _ = std::fs::remove_file(&path);
    let res = on_core(0, || pinger(&m, lines, batches));
    // Release: the stop word; pairs with the peer's Acquire load.
    let _ = m.store_u64(PING_OFF, u64::MAX, Ordering::Release);
    peer.finish(Instant::now() + DEADLINE)?;
    let means = res?;
    crate::stats::summarize(&means)
        .map(|s| s.median)
        .ok_or_else(|| "floor: no batch".into())
}

/// The parent's side: batch means (ns) of `batches` timed batches after one warm-up.
fn pinger(m: &Region, lines: u8, batches: usize) -> Result<Vec<f64>, String> {
    let deadline = Instant::now() + DEADLINE;
    let mut seq = 0u64;
    let mut spins = 0u32;
    let mut rt = || -> Result<(), String> {
        let (ping, off, want) = if lines == 1 {
            seq += 2;
            (seq - 1, PING_OFF, seq)
        } else {
            seq += 1;
            (seq, PONG_OFF, seq)
        };
        // Release: the ping; pairs with the Acquire load in `peer_main`.
        m.store_u64(PING_OFF, ping, Ordering::Release)
            .map_err(|e| e.to_string())?;
        // Acquire: pairs with the peer's Release store of the answer.
        while m.load_u64(off, Ordering::Acquire).ok() != Some(want) {
            spins = spins.wrapping_add(1);
            if spins & 0xfff == 0 && Instant::now() >= deadline {
                return Err("floor ping-pong: deadline".into());
            }
            core::hint::spin_loop();
        }
        Ok(())
    };
    let mut means = Vec::with_capacity(batches);
    for b in 0..=batches {
        let t = Instant::now();
        for _ in 0..BATCH {
            rt()?;
        }
        if b > 0 {
            // Batch 0 is warm-up.
            means.push(t.elapsed().as_nanos() as f64 / BATCH as f64);
        }
    }
    Ok(means)
}

/// The peer side: answers pings until `u64::MAX` (or the deadline).
pub fn peer_main(lines: u8, path: &str) -> Result<(), String> {
    let w = ShmWindow::open(path, &OpenOptions::new()).map_err(|e| e.to_string())?;
    let m = w.region();
    pin(1);
    println!("READY");
    let deadline = Instant::now() + DEADLINE * 4;
    let mut last = 0u64;
    let mut spins = 0u32;
    loop {
        // Acquire: pairs with the parent's Release store of the ping.
        let v = m
            .load_u64(PING_OFF, Ordering::Acquire)
            .map_err(|e| e.to_string())?;
        if v == u64::MAX {
            return Ok(());
        }
        let fresh = v != last && (lines != 1 || v & 1 == 1);
        if fresh {
            let (off, ans) = if lines == 1 {
                (PING_OFF, v + 1)
            } else {
                (PONG_OFF, v)
            };
            last = ans;
            // Release: the answer; pairs with the parent's Acquire wait.
            m.store_u64(off, ans, Ordering::Release)
                .map_err(|e| e.to_string())?;
        } else {
            spins = spins.wrapping_add(1);
            if spins & 0xfff == 0 && Instant::now() >= deadline {
                return Err("floor peer: deadline".into());
            }
            core::hint::spin_loop();
        }
    }
}

/// The copy baseline, run on core 0.
pub struct CopyBench(zerohop_benches::CopyBench);

impl CopyBench {
    /// Allocates and faults in `cold` bytes of destination.
    pub fn new(cold: usize) -> CopyBench {
        CopyBench(zerohop_benches::CopyBench::new(cold))
    }

    /// GB/s copying about `total` bytes in `size`-byte copies on core 0.
    pub fn run(&mut self, size: usize, nt: bool, total: usize) -> Result<f64, String> {
        on_core(0, || self.0.copy(size, nt, total))
    }
}
