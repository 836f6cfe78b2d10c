//! The machine's floor: ping-pongs between two processes over a MAP_SHARED /dev/shm
//! file, and single-core copy bandwidth into cold memory (plain `write_bytes` and
//! `CopyEngine` non-temporal stores, one sfence per 32 copies).
//!
//! ```text
//!  parent (core 0)                            peer = `compare --peer floorN PATH` (core 1)
//!  1 line:   off 0 := 2k+1       ---->  sees it; off 0 := 2k+2  (the same line back)
//!  2 lines:  off 0 := k          ---->  sees it; off 128 := k   (a line per direction)
//!  message:  off 0 slot: 64 B + tag ---> reads it all; slot at off 4096 := 64 B + tag
//!  shared:   off 0 slot: 64 B + tag 2k+1 ---> reads it all; the same slot := 64 B + 2k+2
//!  u64::MAX at off 0 = stop; batches of 1000 round trips are timed and divided
//! ```
//!
//! The message floor is what any ring that never reads the peer's memory must do to
//! move a 64-byte packet: the payload and a tag after it in a 128-byte slot of the
//! reader's memory (two cache lines, as a posted slot's 16-byte header and 64 bytes
//! of payload), written with plain stores, tag last; the reader polls the tag, then
//! reads the payload. The shared-message floor drops that rule: request and reply
//! take turns in the same two lines, as the 1-line floor does with one line. It bounds
//! what any layout, whoever's memory it sits in, can do for a 64-byte round trip.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dataplane::probe::pin;
use pmd::window::{OpenOptions, ShmWindow, Window};
use rings::{Mem, Region};

use crate::peer::{on_core, scratch_path, Peer};

const PING_OFF: usize = 0;
const PONG_LINE_OFF: usize = 128;
const PONG_SLOT_OFF: usize = 4096;
/// Payload of a message-floor slot: 64 bytes after a 16-byte header.
const MSG_PAYLOAD_OFF: usize = 16;
const WINDOW: usize = 8192;
const BATCH: usize = 1000;
const DEADLINE: Duration = Duration::from_secs(5);

/// Which floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    /// Both directions through one line.
    OneLine,
    /// A line per direction (8-byte counters).
    TwoLines,
    /// A 64-byte payload and a tag per direction, in two lines of the reader's memory.
    Message,
    /// A 64-byte payload and a tag, both directions through the same two lines.
    SharedMessage,
}

impl Floor {
    /// Every floor, in the order a repeat measures them.
    pub const ALL: [Floor; 4] = [
        Floor::OneLine,
        Floor::TwoLines,
        Floor::Message,
        Floor::SharedMessage,
    ];

    /// Do both directions go through the same place (pings odd, answers even)?
    fn shared(self) -> bool {
        matches!(self, Floor::OneLine | Floor::SharedMessage)
    }

    /// Does a message carry a 64-byte payload besides its tag?
    fn has_payload(self) -> bool {
        matches!(self, Floor::Message | Floor::SharedMessage)
    }

    /// The `--peer` argument of its peer process.
    pub fn peer_arg(self) -> &'static str {
        match self {
            Floor::OneLine => "floor1",
            Floor::TwoLines => "floor2",
            Floor::Message => "floormsg",
            Floor::SharedMessage => "floorshared",
        }
    }

    /// Parses [`peer_arg`](Self::peer_arg).
    pub fn from_peer_arg(s: &str) -> Option<Floor> {
        Floor::ALL.into_iter().find(|f| f.peer_arg() == s)
    }

    /// Where the answer to `ping` is written, and its value.
    fn answer(self, ping: u64) -> (usize, u64) {
        match self {
            Floor::OneLine | Floor::SharedMessage => (PING_OFF, ping + 1),
            Floor::TwoLines => (PONG_LINE_OFF, ping),
            Floor::Message => (PONG_SLOT_OFF, ping),
        }
    }

    /// Is `v` at the ping word a ping not yet answered (`last` is the last answer)?
    fn fresh(self, v: u64, last: u64) -> bool {
        v != last && (!self.shared() || v & 1 == 1)
    }
}

/// Writes `tag` at `off`; for the message floors, a 64-byte payload first (Relaxed
/// stores; the tag's Release orders them before it).
fn send(m: &Region, f: Floor, off: usize, tag: u64) -> Result<(), String> {
    if f.has_payload() {
        for w in 0..8 {
            m.store_u64(
                off + MSG_PAYLOAD_OFF + 8 * w,
                tag ^ w as u64,
                Ordering::Relaxed,
            )
            .map_err(|e| e.to_string())?;
        }
    }
    // Release: publishes the payload; pairs with the reader's Acquire load of the tag.
    m.store_u64(off, tag, Ordering::Release)
        .map_err(|e| e.to_string())
}

/// The reader's side of a received message: its 64-byte payload (checked).
fn take(m: &Region, f: Floor, off: usize, tag: u64) -> Result<(), String> {
    if f.has_payload() {
        for w in 0..8 {
            // Relaxed: ordered after the tag's Acquire load.
            let v = m
                .load_u64(off + MSG_PAYLOAD_OFF + 8 * w, Ordering::Relaxed)
                .map_err(|e| e.to_string())?;
            if v != tag ^ w as u64 {
                return Err(format!("floor message: word {w} is {v:#x}"));
            }
        }
    }
    Ok(())
}

/// Median over `batches` batches of the mean round trip (ns), two processes.
pub fn ping_pong(f: Floor, batches: usize) -> Result<f64, String> {
    let path = scratch_path("floor");
    let w = ShmWindow::create(&path, WINDOW).map_err(|e| e.to_string())?;
    let m = w.region().clone();
    let peer = Peer::spawn(&[
        "--peer".into(),
        f.peer_arg().into(),
        path.display().to_string(),
    ])?;
    peer.line("READY", Instant::now() + DEADLINE)?;
    // The peer has it mapped: the name can go now (nothing left behind on any exit).
    let _ = std::fs::remove_file(&path);
    let res = on_core(0, || pinger(&m, f, batches));
    // Release: the stop word; pairs with the peer's Acquire load.
    let _ = m.store_u64(PING_OFF, u64::MAX, Ordering::Release);
    peer.finish(Instant::now() + DEADLINE)?;
    let means = res?;
    crate::stats::summarize(&means)
        .map(|s| s.median)
        .ok_or_else(|| "floor: no batch".into())
}

/// The parent's side: batch means (ns) of `batches` timed batches after one warm-up.
fn pinger(m: &Region, f: Floor, batches: usize) -> Result<Vec<f64>, String> {
    let deadline = Instant::now() + DEADLINE;
    let mut seq = 0u64;
    let mut spins = 0u32;
    let mut rt = || -> Result<(), String> {
        seq += if f.shared() { 2 } else { 1 };
        let ping = if f.shared() { seq - 1 } else { seq };
        let (off, want) = f.answer(ping);
        send(m, f, PING_OFF, ping)?;
        // Acquire: pairs with the peer's Release store of the answer.
        while m.load_u64(off, Ordering::Acquire).ok() != Some(want) {
            spins = spins.wrapping_add(1);
            if spins & 0xfff == 0 && Instant::now() >= deadline {
                return Err("floor ping-pong: deadline".into());
            }
            core::hint::spin_loop();
        }
        take(m, f, off, want)
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
pub fn peer_main(f: Floor, path: &str) -> Result<(), String> {
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
        if f.fresh(v, last) {
            take(m, f, PING_OFF, v)?;
            let (off, ans) = f.answer(v);
            last = ans;
            send(m, f, off, ans)?;
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
