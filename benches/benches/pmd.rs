//! Poll-mode drivers across two processes (issue 3): zerohop's queue pairs against the
//! floor of this machine, as same-run, same-placement ratios (BASELINES.md).
//!
//! The parent (core 0) re-executes its own binary as the peer process (core 1):
//! `pmd --peer <role> --window <path> --ring <ring> --size <bytes> --burst <n>
//! [--counted]`. Each measurement gets a fresh window file in `/dev/shm`; the parent
//! removes its name as soon as the peer has mapped it (so nothing is left behind on any
//! exit path) and a guard kills the peer if the parent gives up. Every wait has a
//! deadline; the peer also stops when its parent is gone.
//!
//! ```text
//!  round k:  probe | case (k mod N), case (k+1 mod N), ...  (rotated)  | probe
//!            ^ thread ping-pong, cores 0<->1: near/far; a round whose probes differ is void
//!
//!  cases:  floor 1 line   floor 2 lines   (two processes, MAP_SHARED /dev/shm)
//!          copy 1500 B / 64 KiB: memcpy, CopyEngine NT   (core 0, 1 GiB cold destination)
//!          <ring> 64 B tx_burst, 64 B alloc_tx/tx_commit, 1500 B, 64 KiB  x burst 1/32/256
//!          <ring> 64 B ping-pong, burst 1
//! ```
//!
//! Throughput: the parent sends for a fixed time, then one packet with `meta = STOP`;
//! the peer frees every burst and times from its first burst to the stop packet
//! (packets of the first burst are not counted). Ping-pong: batches of 1000 round trips
//! timed as a whole (median and p99 of the batch means), then per-round-trip samples
//! (one clock read per round trip; the TSC here ticks in 10 ns steps, so those samples
//! are quantised to 10 ns and include one clock read).
//!
//! `cargo bench -p zerohop-benches --bench pmd [-- --quick] [-- --secs N]`

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::probe::{changed, pin, placement_probe, Placement, ProbeResult};
use pmd::copy::CopyEngine;
use pmd::queue::layout::open_areas;
use pmd::queue::{PktHandle, PostedLinkLayout, QueuePair, RxPkt, Side, TxSlot};
use pmd::window::{AccessCounters, Counted, OpenOptions, ShmWindow, Window};
use rings::posted::PostedLayout;
use rings::{Mem, Region};
use zerohop_benches::{CopyBench, Peer};

/// Parent (pinger, sender) on the first core, the peer process on the second.
const CORES: (usize, usize) = (0, 1);
/// Round trips of each placement probe.
const PROBE_ROUND_TRIPS: u32 = 20_000;
/// Any single wait (peer start, a run, the peer's exit) gives up after this long.
const RUN_DEADLINE: Duration = Duration::from_secs(5);
/// `meta` of the packet that ends a throughput run or a ping-pong.
const META_STOP: u16 = 0x5709;
/// Round trips per timed batch.
const BATCH: usize = 1000;
/// Cold destination of the copy baseline: larger than this machine's L3.
const COLD_BYTES: usize = 1 << 30;
/// Bytes the floor window maps (at least a window header, as `ShmWindow::open` wants).
const FLOOR_WINDOW: usize = 8192;

// ------------------------------------------------------------------ ring modes ----

/// A ring mode measured through the [`QueuePair`] trait.
///
/// HOOK (split/packed): when their queue pairs land, add `Split` and `Packed` here,
/// to [`Ring::ALL`], and one arm to each `match` marked `HOOK` below (the window size,
/// the creation of the layout with `VirtioLinkLayout`, and the opening of one side).
/// Every case, job and report is generic over `QueuePair` and needs no change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ring {
    /// `PostedQueuePair` over `PostedLinkLayout`.
    Posted,
}

impl Ring {
    /// Every ring mode measured (HOOK: `Ring::Split, Ring::Packed`).
    const ALL: [Ring; 1] = [Ring::Posted];

    fn name(self) -> &'static str {
        match self {
            Ring::Posted => "posted",
        }
    }

    fn parse(s: &str) -> Option<Ring> {
        Ring::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The posted geometry for packets of `size` bytes: 64 and 1500 B packets use
    /// 1024 slots of 64 B and 1024 buffers of 2 KiB (64 B does not fit the 48 inline
    /// bytes, so every packet here uses a buffer); 64 KiB packets use 256 slots and
    /// 256 buffers of 64 KiB (16 MiB per direction).
    fn posted_layout(size: usize) -> Result<PostedLinkLayout, String> {
        // ZEROHOP_BENCH_SLOT=128 gives 112 inline bytes (64-byte packets go inline).
        let slot = std::env::var("ZEROHOP_BENCH_SLOT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(64u32);
        let ring = if size > 2048 {
            PostedLayout::new(256, slot, 256, size.next_multiple_of(64) as u32)
        } else {
            PostedLayout::new(1024, slot, 1024, 2048)
        }
        .map_err(|e| format!("posted layout: {e}"))?;
        PostedLinkLayout::new(ring, 1).map_err(|e| format!("posted link layout: {e}"))
    }

    /// Bytes of the window for packets of `size` bytes.
    fn window_size(self, size: usize) -> Result<usize, String> {
        match self {
            Ring::Posted => Ok(Self::posted_layout(size)?.window_size()),
            // HOOK: Ring::Split | Ring::Packed => VirtioLinkLayout::...window_size(),
        }
    }

    /// Lays the link out in a fresh window (the creator, side A).
    fn create(self, w: &dyn Window, size: usize) -> Result<String, String> {
        match self {
            Ring::Posted => {
                let l = Self::posted_layout(size)?;
                l.create(w).map_err(|e| format!("create: {e}"))?;
                let r = l.ring();
                Ok(format!(
                    "{} slots x {} B, {} buffers x {} B",
                    r.slots(),
                    r.slot_size(),
                    r.buffers(),
                    r.buf_size()
                ))
            } // HOOK: Ring::Split | Ring::Packed => VirtioLinkLayout::...create(w),
        }
    }

    /// Opens `side` of queue 0 in `w` with `burst` and the copy engine as its
    /// [`pmd::queue::CopyFn`], and runs `job` on it. With `counters`, the remote areas
    /// are wrapped in [`Counted`] sharing those counters.
    fn with_queue<J: Job>(
        self,
        w: &dyn Window,
        side: Side,
        burst: usize,
        counters: Option<&Arc<AccessCounters>>,
        job: J,
    ) -> Result<J::Out, String> {
        let copy = CopyEngine::detect();
        match self {
            Ring::Posted => {
                let layout = PostedLinkLayout::attach(w).map_err(|e| format!("attach: {e}"))?;
                let areas = layout
                    .side_areas(w, side, 0)
                    .map_err(|e| format!("side areas: {e}"))?;
                match counters {
                    None => {
                        let mut q = open_areas(areas, &layout, burst, copy)
                            .map_err(|e| format!("open: {e}"))?;
                        Ok(job.run(&mut q))
                    }
                    Some(c) => {
                        let areas = areas.map_remote(|r| Counted::with_counters(r, c.clone()));
                        let mut q = open_areas(areas, &layout, burst, copy)
                            .map_err(|e| format!("open: {e}"))?;
                        Ok(job.run(&mut q))
                    }
                }
            } // HOOK: Ring::Split | Ring::Packed => open the VirtioLinkLayout side, job.run(&mut q)
        }
    }
}

/// Work done on one queue pair, generic over the ring mode.
trait Job {
    type Out;
    fn run<Q: QueuePair>(self, q: &mut Q) -> Self::Out;
}

/// Checks a deadline (and that the parent still lives, for the peer) every 4096 calls.
struct Waiter {
    spins: u32,
    deadline: Instant,
    parent: Option<u32>,
}

impl Waiter {
    fn new(deadline: Instant, parent: Option<u32>) -> Self {
        Waiter {
            spins: 0,
            deadline,
            parent,
        }
    }
    /// True when the wait must stop.
    #[inline]
    fn expired(&mut self) -> bool {
        self.spins = self.spins.wrapping_add(1);
        if self.spins & 0xfff == 0 {
            if Instant::now() >= self.deadline {
                return true;
            }
            if self
                .parent
                .is_some_and(|p| std::os::unix::process::parent_id() != p)
            {
                return true;
            }
        }
        core::hint::spin_loop();
        false
    }
}

/// Parent: sends `size`-byte packets for `dur`, then one stop packet. Returns packets
/// published (including the stop packet).
struct TxJob {
    size: usize,
    burst: usize,
    zero_copy: bool,
    dur: Duration,
}

impl Job for TxJob {
    type Out = Result<u64, String>;
    fn run<Q: QueuePair>(self, q: &mut Q) -> Self::Out {
        let payload: Vec<u8> = (0..self.size).map(|i| i as u8).collect();
        let pkts: Vec<&[u8]> = vec![&payload[..]; self.burst];
        let mut slots = vec![TxSlot::default(); self.burst];
        let mut commits: Vec<(TxSlot, u32, u16)> = Vec::with_capacity(self.burst);
        let start = Instant::now();
        let end = start + self.dur;
        let mut w = Waiter::new(start + self.dur + RUN_DEADLINE, None);
        let mut sent = 0u64;
        let mut k = 0u32;
        loop {
            // The clock is read once every 64 calls: a clock read costs about as much
            // as a small burst.
            k = k.wrapping_add(1);
            if k & 63 == 0 && Instant::now() >= end {
                break;
            }
            let n = if self.zero_copy {
                let n = q
                    .alloc_tx(&mut slots)
                    .map_err(|e| format!("alloc_tx: {e}"))?;
                commits.clear();
                for s in &slots[..n] {
                    q.tx_write(s, 0, &payload)
                        .map_err(|e| format!("tx_write: {e}"))?;
                    commits.push((*s, self.size as u32, 0));
                }
                q.tx_commit(&commits)
                    .map_err(|e| format!("tx_commit: {e}"))?
            } else {
                q.tx_burst(&pkts, 0).map_err(|e| format!("tx_burst: {e}"))?
            };
            sent += n as u64;
            if n == 0 && w.expired() {
                return Err(format!("tx: deadline after {sent} packets"));
            }
        }
        while q
            .tx_burst(&pkts[..1], META_STOP)
            .map_err(|e| format!("tx_burst: {e}"))?
            == 0
        {
            if w.expired() {
                return Err("tx: stop packet not accepted before the deadline".into());
            }
        }
        Ok(sent + 1)
    }
}

/// What the sink measured.
struct SinkReport {
    /// Packets after the first burst, stop packet excluded.
    pkts: u64,
    /// Packets received in all.
    total: u64,
    /// From the first burst to the stop packet.
    ns: u128,
}

/// Peer: receives and frees bursts until the stop packet.
struct SinkJob {
    burst: usize,
    parent: u32,
}

impl Job for SinkJob {
    type Out = Result<SinkReport, String>;
    fn run<Q: QueuePair>(self, q: &mut Q) -> Self::Out {
        let mut rx = vec![RxPkt::default(); self.burst];
        let mut handles = vec![PktHandle::default(); self.burst];
        let mut w = Waiter::new(Instant::now() + RUN_DEADLINE * 2, Some(self.parent));
        let mut t0: Option<Instant> = None;
        let (mut pkts, mut total) = (0u64, 0u64);
        loop {
            let n = q.rx_burst(&mut rx).map_err(|e| format!("rx_burst: {e}"))?;
            if n == 0 {
                if w.expired() {
                    return Err(format!("rx: deadline after {total} packets"));
                }
                continue;
            }
            let mut stop = false;
            for (h, p) in handles.iter_mut().zip(&rx[..n]) {
                *h = p.handle;
                stop |= p.meta == META_STOP;
            }
            q.free(&handles[..n]).map_err(|e| format!("free: {e}"))?;
            total += n as u64;
            match t0 {
                None => t0 = Some(Instant::now()),
                Some(_) => pkts += n as u64,
            }
            if stop {
                let ns = t0.map_or(0, |t| t.elapsed().as_nanos());
                return Ok(SinkReport {
                    pkts: pkts.saturating_sub(1),
                    total,
                    ns,
                });
            }
        }
    }
}

/// Parent: ping-pong of one `size`-byte packet, burst 1.
struct PingJob {
    size: usize,
    batches: usize,
    samples: usize,
}

impl Job for PingJob {
    type Out = Result<(PingReport, u64), String>;
    fn run<Q: QueuePair>(self, q: &mut Q) -> Self::Out {
        let payload: Vec<u8> = (0..self.size).map(|i| i as u8).collect();
        let pkt: [&[u8]; 1] = [&payload];
        let mut rx = [RxPkt::default(); 1];
        let mut w = Waiter::new(Instant::now() + RUN_DEADLINE, None);
        let mut err = None;
        let mut trips = 0u64;
        let rep = ping_pong(self.batches, self.samples, || {
            loop {
                match q.tx_burst(&pkt, 0) {
                    Ok(1) => break,
                    Ok(_) if !w.expired() => {}
                    Ok(_) => return false,
                    Err(e) => {
                        err = Some(format!("tx_burst: {e}"));
                        return false;
                    }
                }
            }
            loop {
                match q.rx_burst(&mut rx) {
                    Ok(1) => break,
                    Ok(_) if !w.expired() => {}
                    Ok(_) => return false,
                    Err(e) => {
                        err = Some(format!("rx_burst: {e}"));
                        return false;
                    }
                }
            }
            if let Err(e) = q.free(&[rx[0].handle]) {
                err = Some(format!("free: {e}"));
                return false;
            }
            trips += 1;
            true
        });
        if let Some(e) = err {
            return Err(e);
        }
        let rep = rep.ok_or("ping-pong: deadline")?;
        while q
            .tx_burst(&pkt, META_STOP)
            .map_err(|e| format!("tx_burst: {e}"))?
            == 0
        {
            if w.expired() {
                return Err("ping: stop packet not accepted before the deadline".into());
            }
        }
        Ok((rep, trips))
    }
}

/// Peer: answers each packet with a fresh `size`-byte packet (copying `tx_burst`),
/// then frees the received one; ends at the stop packet. Returns packets received.
struct EchoJob {
    size: usize,
    parent: u32,
}

impl Job for EchoJob {
    type Out = Result<u64, String>;
    fn run<Q: QueuePair>(self, q: &mut Q) -> Self::Out {
        let payload: Vec<u8> = (0..self.size).map(|i| (i * 3) as u8).collect();
        let pkt: [&[u8]; 1] = [&payload];
        let mut rx = [RxPkt::default(); 1];
        let mut w = Waiter::new(Instant::now() + RUN_DEADLINE * 2, Some(self.parent));
        let mut got = 0u64;
        loop {
            if q.rx_burst(&mut rx).map_err(|e| format!("rx_burst: {e}"))? == 0 {
                if w.expired() {
                    return Err(format!("echo: deadline after {got} packets"));
                }
                continue;
            }
            got += 1;
            if rx[0].meta == META_STOP {
                q.free(&[rx[0].handle]).map_err(|e| format!("free: {e}"))?;
                return Ok(got);
            }
            while q.tx_burst(&pkt, 0).map_err(|e| format!("tx_burst: {e}"))? == 0 {
                if w.expired() {
                    return Err("echo: no credit before the deadline".into());
                }
            }
            q.free(&[rx[0].handle]).map_err(|e| format!("free: {e}"))?;
        }
    }
}

// ------------------------------------------------------------------- ping-pong ----

/// Round-trip times.
#[derive(Clone, Copy, Debug)]
struct PingReport {
    /// Median over batches of the mean round trip of a batch of [`BATCH`], ns.
    batch_med: f64,
    /// 99th percentile of the batch means, ns.
    batch_p99: f64,
    /// Median of per-round-trip samples (10 ns clock steps, one clock read each), ns.
    rt_p50: f64,
    /// 99th percentile of per-round-trip samples, ns.
    rt_p99: f64,
}

/// Runs `rt` (one round trip; false = give up): a warm-up, `batches` timed batches of
/// [`BATCH`], then `samples` individually timed round trips.
fn ping_pong(batches: usize, samples: usize, mut rt: impl FnMut() -> bool) -> Option<PingReport> {
    for _ in 0..BATCH {
        if !rt() {
            return None;
        }
    }
    let mut means = Vec::with_capacity(batches);
    for _ in 0..batches {
        let t0 = Instant::now();
        for _ in 0..BATCH {
            if !rt() {
                return None;
            }
        }
        means.push(t0.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    let mut each = vec![0f64; samples];
    let ns_per_tick = ns_per_tick();
    let mut t = ticks();
    for s in each.iter_mut() {
        if !rt() {
            return None;
        }
        let t2 = ticks();
        *s = t2.wrapping_sub(t) as f64 * ns_per_tick;
        t = t2;
    }
    means.sort_by(f64::total_cmp);
    each.sort_by(f64::total_cmp);
    Some(PingReport {
        batch_med: percentile(&means, 0.5),
        batch_p99: percentile(&means, 0.99),
        rt_p50: percentile(&each, 0.5),
        rt_p99: percentile(&each, 0.99),
    })
}

/// The time stamp counter (one `rdtsc`, ~10-20 ns here, against ~100 ns for
/// `Instant::now` in this VM); a monotonic clock elsewhere.
#[inline(always)]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` has no preconditions and exists on every x86_64 CPU; it
        // reads a counter and touches no memory.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Involuntary context switches of the calling thread so far (0 if unknown): a
/// measurement during which the parent or the peer was preempted (the machine is
/// shared) is discarded, like one whose placement changed.
fn preemptions() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// More involuntary switches than this in either process voids a measurement
/// (`--max-preempt N` changes it; default 50: a busy-polling process on a 2-vCPU guest sees a few involuntary switches per second from kernel threads even on an idle machine).
fn max_preemptions() -> u64 {
    static M: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *M.get_or_init(|| {
        let args: Vec<String> = std::env::args().collect();
        arg(&args, "--max-preempt")
            .and_then(|v| v.parse().ok())
            .unwrap_or(50)
    })
}

/// Nanoseconds per [`ticks`] unit, calibrated once against `Instant` over 20 ms.
fn ns_per_tick() -> f64 {
    static NS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *NS.get_or_init(|| {
        let (i0, t0) = (Instant::now(), ticks());
        std::thread::sleep(Duration::from_millis(20));
        let (dt, dk) = (i0.elapsed().as_nanos() as f64, ticks().wrapping_sub(t0));
        if dk == 0 {
            1.0
        } else {
            dt / dk as f64
        }
    })
}

/// The `q` quantile of sorted samples (nearest rank), NaN if empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Offsets of the floor's words: the ping line and (two-line variant) the pong line.
const PING_OFF: usize = 0;
const PONG_OFF: usize = 128;

/// Peer side of the floor: answers pings until `u64::MAX`.
fn floor_peer(m: &Region, lines: u8, parent: u32) -> Result<(), String> {
    let mut w = Waiter::new(Instant::now() + RUN_DEADLINE * 2, Some(parent));
    let mut last = 0u64;
    loop {
        // Acquire: pairs with the parent's Release store of the ping (floor_rt).
        let v = m
            .load_u64(PING_OFF, Ordering::Acquire)
            .map_err(|e| e.to_string())?;
        if v == u64::MAX {
            return Ok(());
        }
        let fresh = if lines == 1 {
            v & 1 == 1 && v != last
        } else {
            v != last
        };
        if fresh {
            let (off, ans) = if lines == 1 {
                (PING_OFF, v + 1)
            } else {
                (PONG_OFF, v)
            };
            last = if lines == 1 { v + 1 } else { v };
            // Release: the answer; pairs with the parent's Acquire wait in floor_rt.
            m.store_u64(off, ans, Ordering::Release)
                .map_err(|e| e.to_string())?;
        } else if w.expired() {
            return Err("floor peer: deadline".into());
        }
    }
}

// ------------------------------------------------------------------- the peer ----

/// Arguments of the peer process.
struct PeerArgs {
    role: String,
    window: PathBuf,
    ring: Ring,
    size: usize,
    burst: usize,
    counted: bool,
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn parse_peer(args: &[String]) -> Result<PeerArgs, String> {
    let need = |n: &str| arg(args, n).ok_or(format!("missing {n}"));
    Ok(PeerArgs {
        role: need("--peer")?.to_owned(),
        window: PathBuf::from(need("--window")?),
        ring: Ring::parse(arg(args, "--ring").unwrap_or("posted")).ok_or("bad --ring")?,
        size: need("--size")?.parse().map_err(|_| "bad --size")?,
        burst: need("--burst")?.parse().map_err(|_| "bad --burst")?,
        counted: args.iter().any(|a| a == "--counted"),
    })
}

/// The peer process: prints `READY` once attached, then `RESULT ...` (or `ERROR ...`).
fn peer_main(args: &[String]) -> i32 {
    let r = (|| -> Result<String, String> {
        let a = parse_peer(args)?;
        if !pin(CORES.1) {
            return Err(format!("cannot pin to core {}", CORES.1));
        }
        let parent = std::os::unix::process::parent_id();
        let w = ShmWindow::open(&a.window, &OpenOptions::new()).map_err(|e| e.to_string())?;
        let counters = a.counted.then(|| Arc::new(AccessCounters::default()));
        let nv0 = std::cell::Cell::new(0u64);
        let ready = || {
            nv0.set(preemptions());
            println!("READY")
        };
        let out = match a.role.as_str() {
            "floor1" | "floor2" => {
                ready();
                let lines = if a.role == "floor1" { 1 } else { 2 };
                floor_peer(w.region(), lines, parent)?;
                "RESULT".to_owned()
            }
            "sink" => {
                let job = ReadyThen(
                    SinkJob {
                        burst: a.burst,
                        parent,
                    },
                    ready,
                );
                let rep = a
                    .ring
                    .with_queue(&w, Side::B, a.burst, counters.as_ref(), job)??;
                format!("RESULT pkts={} total={} ns={}", rep.pkts, rep.total, rep.ns)
            }
            "echo" => {
                let job = ReadyThen(
                    EchoJob {
                        size: a.size,
                        parent,
                    },
                    ready,
                );
                let got = a
                    .ring
                    .with_queue(&w, Side::B, 1, counters.as_ref(), job)??;
                format!("RESULT pkts={got} total={got} ns=0")
            }
            r => return Err(format!("unknown role {r}")),
        };
        let out = format!("{out} nvcs={}", preemptions().saturating_sub(nv0.get()));
        Ok(match counters {
            Some(c) => {
                let s = c.snapshot();
                format!("{out} reads={} writes={}", s.reads, s.writes)
            }
            None => out,
        })
    })();
    match r {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            println!("ERROR {e}");
            eprintln!("pmd bench peer: {e}");
            1
        }
    }
}

/// Runs `f` (prints `READY`) once the queue is open, then the job.
struct ReadyThen<J, F>(J, F);

impl<J: Job, F: FnOnce()> Job for ReadyThen<J, F> {
    type Out = J::Out;
    fn run<Q: QueuePair>(self, q: &mut Q) -> J::Out {
        (self.1)();
        self.0.run(q)
    }
}

// ----------------------------------------------------------------- the parent ----

/// A fresh window file name.
fn window_path(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    PathBuf::from(format!(
        "/dev/shm/zerohop-bench-pmd-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Parses `key=value` from a peer's `RESULT` line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Start of the error of a measurement voided by preemption.
const PREEMPTED: &str = "preempted";

/// Creates a window, starts the peer with `role`, removes the window's name once the
/// peer has mapped it, runs `body`, and returns its value with the peer's `RESULT`.
fn with_peer<T>(
    w: &ShmWindow,
    path: &Path,
    role: &str,
    extra: &[String],
    body: impl FnOnce() -> Result<T, String>,
) -> Result<(T, String), String> {
    let mut args = vec![
        "--peer".to_owned(),
        role.to_owned(),
        "--window".to_owned(),
        path.display().to_string(),
    ];
    args.extend_from_slice(extra);
    let peer = Peer::spawn(&args)?;
    peer.line("READY", Instant::now() + RUN_DEADLINE)?;
    // The peer has mapped it: drop the name now so that no exit path leaves it behind.
    let _ = std::fs::remove_file(path);
    let _ = w;
    let nv = preemptions();
    let v = body()?;
    let nv = preemptions().saturating_sub(nv);
    let res = peer.line("RESULT", Instant::now() + RUN_DEADLINE * 2)?;
    peer.finish(Instant::now() + RUN_DEADLINE)?;
    let peer_nv = field(&res, "nvcs").unwrap_or(0);
    // Counted runs are not timed: preemption does not change their counts.
    let timed = !extra.iter().any(|a| a == "--counted");
    if timed && (nv > max_preemptions() || peer_nv > max_preemptions()) {
        return Err(format!(
            "{PREEMPTED} (parent {nv}, peer {peer_nv} involuntary context switches)"
        ));
    }
    Ok((v, res))
}

/// Floor: one-line or two-line ping-pong between two processes over MAP_SHARED.
fn floor(lines: u8, batches: usize, samples: usize) -> Result<PingReport, String> {
    let path = window_path("floor");
    let w = ShmWindow::create(&path, FLOOR_WINDOW).map_err(|e| e.to_string())?;
    let m = w.region().clone();
    let role = if lines == 1 { "floor1" } else { "floor2" };
    let extra = ["--size", "8", "--burst", "1"].map(String::from);
    let (rep, _) = with_peer(&w, &path, role, &extra, || {
        let mut seq = 0u64;
        let mut waiter = Waiter::new(Instant::now() + RUN_DEADLINE, None);
        let rep = ping_pong(batches, samples, || {
            let (ping, off, want) = if lines == 1 {
                seq += 2;
                (seq - 1, PING_OFF, seq)
            } else {
                seq += 1;
                (seq, PONG_OFF, seq)
            };
            // Release: the ping; pairs with the peer's Acquire load in floor_peer.
            if m.store_u64(PING_OFF, ping, Ordering::Release).is_err() {
                return false;
            }
            // Acquire: pairs with the peer's Release store of the answer.
            while m.load_u64(off, Ordering::Acquire).ok() != Some(want) {
                if waiter.expired() {
                    return false;
                }
            }
            true
        });
        // Release: the stop word; pairs with the peer's Acquire load.
        let _ = m.store_u64(PING_OFF, u64::MAX, Ordering::Release);
        rep.ok_or_else(|| "floor ping-pong: deadline".to_owned())
    })?;
    Ok(rep)
}

/// One throughput run of `ring`; returns (Mpps, peer's RESULT line, packets sent).
fn throughput(
    ring: Ring,
    size: usize,
    burst: usize,
    zero_copy: bool,
    dur: Duration,
    counters: Option<&Arc<AccessCounters>>,
) -> Result<(f64, String, u64), String> {
    let path = window_path("tput");
    let w = ShmWindow::create(&path, ring.window_size(size)?).map_err(|e| e.to_string())?;
    ring.create(&w, size)?;
    let mut extra = vec![
        "--ring".to_owned(),
        ring.name().to_owned(),
        "--size".to_owned(),
        size.to_string(),
        "--burst".to_owned(),
        burst.to_string(),
    ];
    if counters.is_some() {
        extra.push("--counted".into());
    }
    let job = TxJob {
        size,
        burst,
        zero_copy,
        dur,
    };
    let (sent, res) = with_peer(&w, &path, "sink", &extra, || {
        ring.with_queue(&w, Side::A, burst, counters, job)?
    })?;
    let pkts = field(&res, "pkts").ok_or("peer RESULT without pkts")?;
    let ns = field(&res, "ns").ok_or("peer RESULT without ns")?;
    if ns == 0 || pkts == 0 {
        return Err(format!("no packets timed ({res})"));
    }
    Ok((pkts as f64 * 1e3 / ns as f64, res, sent))
}

/// Ping-pong of `ring`, burst 1; returns (times, peer's RESULT line, round trips).
fn ring_ping_pong(
    ring: Ring,
    size: usize,
    batches: usize,
    samples: usize,
    counters: Option<&Arc<AccessCounters>>,
) -> Result<(PingReport, String, u64), String> {
    let path = window_path("ping");
    let w = ShmWindow::create(&path, ring.window_size(size)?).map_err(|e| e.to_string())?;
    ring.create(&w, size)?;
    let extra = [
        "--ring",
        ring.name(),
        "--size",
        &size.to_string(),
        "--burst",
        "1",
    ]
    .map(String::from);
    let mut extra = extra.to_vec();
    if counters.is_some() {
        extra.push("--counted".into());
    }
    let job = PingJob {
        size,
        batches,
        samples,
    };
    let ((rep, trips), res) = with_peer(&w, &path, "echo", &extra, || {
        ring.with_queue(&w, Side::A, 1, counters, job)?
    })?;
    Ok((rep, res, trips))
}

// ---------------------------------------------------------------------- cases ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Case {
    Floor {
        lines: u8,
    },
    Copy {
        size: usize,
        nt: bool,
    },
    Tput {
        ring: Ring,
        size: usize,
        burst: usize,
        zc: bool,
    },
    Ping {
        ring: Ring,
        size: usize,
    },
}

impl Case {
    fn name(&self) -> String {
        match *self {
            Case::Floor { lines } => {
                format!("floor, {lines} line{}", if lines == 1 { "" } else { "s" })
            }
            Case::Copy { size, nt } => {
                format!("copy {} {}", human(size), if nt { "NT" } else { "memcpy" })
            }
            Case::Tput {
                ring,
                size,
                burst,
                zc,
            } => format!(
                "{} {} {} burst {burst}",
                ring.name(),
                human(size),
                if zc { "zero-copy" } else { "tx_burst" }
            ),
            Case::Ping { ring, size } => {
                format!("{} {} ping-pong burst 1", ring.name(), human(size))
            }
        }
    }

    /// Unit of the main figure.
    fn unit(&self) -> &'static str {
        match self {
            Case::Floor { .. } | Case::Ping { .. } => "RTT ns",
            Case::Copy { .. } => "GB/s",
            Case::Tput { size, .. } if *size <= 64 => "Mpps",
            Case::Tput { .. } => "Gbit/s",
        }
    }

    /// The same-run baseline this case is divided by.
    fn baseline(&self) -> Option<Case> {
        match *self {
            Case::Floor { lines: 2 } => Some(Case::Floor { lines: 1 }),
            Case::Ping { .. } => Some(Case::Floor { lines: 1 }),
            Case::Tput { size, .. } if size > 64 => Some(Case::Copy { size, nt: true }),
            _ => None,
        }
    }
}

fn human(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// One case's result in one round.
#[derive(Clone, Copy, Debug)]
struct Meas {
    /// The main figure, in [`Case::unit`] (RTT: median of batch means).
    value: f64,
    /// Gbit/s for throughput cases, GB/s for copies (for the ratio), else NaN.
    bytes_rate: f64,
    /// Ping-pong only.
    ping: Option<PingReport>,
}

struct Cfg {
    dur: Duration,
    batches: usize,
    samples: usize,
    copy_total: usize,
}

fn run_case(c: &Case, cfg: &Cfg, copies: &mut CopyBench) -> Result<Meas, String> {
    match *c {
        Case::Floor { lines } => {
            let p = floor(lines, cfg.batches, cfg.samples)?;
            Ok(Meas {
                value: p.batch_med,
                bytes_rate: f64::NAN,
                ping: Some(p),
            })
        }
        Case::Copy { size, nt } => {
            let nv = preemptions();
            let g = copies.copy(size, nt, cfg.copy_total)?;
            let nv = preemptions().saturating_sub(nv);
            if nv > max_preemptions() {
                return Err(format!("{PREEMPTED} ({nv} involuntary context switches)"));
            }
            Ok(Meas {
                value: g,
                bytes_rate: g * 8.0,
                ping: None,
            })
        }
        Case::Tput {
            ring,
            size,
            burst,
            zc,
        } => {
            let (mpps, _, _) = throughput(ring, size, burst, zc, cfg.dur, None)?;
            let gbit = mpps * size as f64 * 8.0 / 1e3;
            Ok(Meas {
                value: if size <= 64 { mpps } else { gbit },
                bytes_rate: gbit,
                ping: None,
            })
        }
        Case::Ping { ring, size } => {
            let (p, _, _) = ring_ping_pong(ring, size, cfg.batches / 2, cfg.samples / 2, None)?;
            Ok(Meas {
                value: p.batch_med,
                bytes_rate: f64::NAN,
                ping: Some(p),
            })
        }
    }
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        Case::Floor { lines: 1 },
        Case::Floor { lines: 2 },
        Case::Copy {
            size: 1500,
            nt: false,
        },
        Case::Copy {
            size: 1500,
            nt: true,
        },
        Case::Copy {
            size: 64 * 1024,
            nt: false,
        },
        Case::Copy {
            size: 64 * 1024,
            nt: true,
        },
    ];
    for ring in Ring::ALL {
        for (size, zc) in [(64, false), (64, true), (1500, false), (64 * 1024, false)] {
            for burst in [1, 32, 256] {
                v.push(Case::Tput {
                    ring,
                    size,
                    burst,
                    zc,
                });
            }
        }
        v.push(Case::Ping { ring, size: 64 });
    }
    v
}

struct Round {
    before: ProbeResult,
    after: ProbeResult,
    res: Vec<Result<Meas, String>>,
}

impl Round {
    fn valid(&self) -> bool {
        !changed(&self.before, &self.after)
    }
}

fn median_min_max(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.retain(|x| x.is_finite());
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

fn fmt_mmm(m: Option<(f64, f64, f64)>, prec: usize) -> String {
    match m {
        Some((a, b, c)) => format!("{a:.prec$} ({b:.prec$}-{c:.prec$})"),
        None => "-".into(),
    }
}

/// The ratio of case `i` to its baseline in one round, in the direction "bigger is
/// zerohop slower" for times and "share of the baseline" for rates.
fn ratio(r: &Round, i: usize, all: &[Case], rt: bool) -> Option<f64> {
    let base = all[i].baseline()?;
    let j = all.iter().position(|c| *c == base)?;
    let a = r.res[i].as_ref().ok()?;
    let b = r.res[j].as_ref().ok()?;
    match all[i] {
        Case::Floor { .. } | Case::Ping { .. } => {
            if rt {
                Some(a.ping?.rt_p50 / b.ping?.rt_p50)
            } else {
                Some(a.value / b.value)
            }
        }
        _ => Some(a.bytes_rate / b.bytes_rate),
    }
}

fn dpdk_reference(p: Placement) -> &'static str {
    match p {
        Placement::Near => "64 B virtio->vhost 49.6 Mpps, 1500 B 22.2 Mpps (266 Gbit/s), 1-packet ping-pong 0.23 us RTT",
        _ => "64 B virtio->vhost 17.4 Mpps, 1500 B 7.0 Mpps (84 Gbit/s), 1-packet ping-pong 1.15 us RTT",
    }
}

/// The extra round with the remote areas wrapped in `Counted`.
fn counted_round(cfg: &Cfg) {
    println!("\nRemote accesses per packet (one extra round, remote areas wrapped in pmd::window::Counted; counted runs are not timed):");
    println!("| case | sender remote reads/pkt | sender remote writes/pkt | receiver remote reads/pkt | receiver remote writes/pkt |");
    println!("|---|---|---|---|---|");
    for ring in Ring::ALL {
        for (size, zc) in [(64, false), (64, true), (1500, false), (64 * 1024, false)] {
            let c = Arc::new(AccessCounters::default());
            let name = Case::Tput {
                ring,
                size,
                burst: 32,
                zc,
            }
            .name();
            match throughput(ring, size, 32, zc, cfg.dur / 2, Some(&c)) {
                Ok((_, res, sent)) => {
                    let s = c.snapshot();
                    let total = field(&res, "total").unwrap_or(0).max(1) as f64;
                    let rr = field(&res, "reads").unwrap_or(0) as f64;
                    let rw = field(&res, "writes").unwrap_or(0) as f64;
                    let sent = sent.max(1) as f64;
                    println!(
                        "| {name} | {:.3} | {:.2} | {:.3} | {:.2} |",
                        s.reads as f64 / sent,
                        s.writes as f64 / sent,
                        rr / total,
                        rw / total
                    );
                }
                Err(e) => println!("| {name} | failed: {e} | | | |"),
            }
        }
        let c = Arc::new(AccessCounters::default());
        match ring_ping_pong(ring, 64, 5, 1000, Some(&c)) {
            Ok((_, res, trips)) => {
                let s = c.snapshot();
                // Per round trip each side sends one packet and receives one: divide
                // both sides by the packets the echo side received.
                let _ = trips;
                let total = field(&res, "total").unwrap_or(0).max(1) as f64;
                println!(
                    "| {} 64 B ping-pong (per round trip, each side) | {:.3} (pinger) | {:.2} (pinger) | {:.3} (echo) | {:.2} (echo) |",
                    ring.name(),
                    s.reads as f64 / total,
                    s.writes as f64 / total,
                    field(&res, "reads").unwrap_or(0) as f64 / total,
                    field(&res, "writes").unwrap_or(0) as f64 / total,
                );
            }
            Err(e) => println!("| {} ping-pong | failed: {e} | | | |", ring.name()),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--peer") {
        std::process::exit(peer_main(&args));
    }
    let quick = args.iter().any(|a| a == "--quick");
    let secs = arg(&args, "--secs")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(if quick { 15 } else { 90 });
    let max_rounds = if quick { 12 } else { 60 };
    let cfg = Cfg {
        dur: Duration::from_millis(if quick { 40 } else { 100 }),
        batches: if quick { 20 } else { 50 },
        samples: if quick { 20_000 } else { 50_000 },
        copy_total: if quick { 64 << 20 } else { 256 << 20 },
    };
    if !pin(CORES.0) {
        eprintln!("pmd bench: cannot pin to core {}", CORES.0);
    }
    let engine = CopyEngine::detect();
    let tick = ns_per_tick();
    println!(
        "pmd: two processes, parent (sender, pinger) on core {} -> peer process on core {}; \
         up to {max_rounds} rounds / {secs} s{}",
        CORES.0,
        CORES.1,
        if quick { " (--quick)" } else { "" }
    );
    println!(
        "copy engine for tx_burst and the NT baseline: {}; throughput runs {} ms each",
        engine.describe(),
        cfg.dur.as_millis()
    );
    println!(
        "per-round-trip samples: rdtsc, {:.3} ns per tick calibrated (the TSC here advances \
         in 10 ns steps: samples are quantised to 10 ns and include one rdtsc)",
        tick
    );
    for ring in Ring::ALL {
        for size in [64usize, 64 * 1024] {
            if let (Ok(l), Ok(n)) = (Ring::posted_layout(size), ring.window_size(size)) {
                let r = l.ring();
                println!(
                    "{} layout for {}: {} slots x {} B, {} buffers x {} B ({} KiB window)",
                    ring.name(),
                    if size > 2048 {
                        "64 KiB"
                    } else {
                        "64 B and 1500 B"
                    },
                    r.slots(),
                    r.slot_size(),
                    r.buffers(),
                    r.buf_size(),
                    n >> 10
                );
            }
        }
    }
    println!(
        "DPDK comparison is not part of this bench (a later issue runs it); BASELINES.md \
         figures are quoted below per placement as reference, not same-run."
    );
    let mut copies = CopyBench::new(COLD_BYTES);
    let all = cases();
    let budget = Instant::now() + Duration::from_secs(secs);
    let mut rounds: Vec<Round> = Vec::new();
    while rounds.len() < max_rounds && Instant::now() < budget {
        let before = placement_probe(CORES, PROBE_ROUND_TRIPS);
        let mut res: Vec<Result<Meas, String>> = vec![Err("not run".into()); all.len()];
        // Rotate the starting case each round so no case always runs first.
        for k in 0..all.len() {
            let i = (k + rounds.len()) % all.len();
            res[i] = run_case(&all[i], &cfg, &mut copies);
        }
        let after = placement_probe(CORES, PROBE_ROUND_TRIPS);
        let r = Round { before, after, res };
        let failed: Vec<String> = r
            .res
            .iter()
            .zip(&all)
            .filter_map(|(x, c)| x.as_ref().err().map(|e| format!("{}: {e}", c.name())))
            .collect();
        let get = |c: Case| {
            all.iter()
                .position(|x| *x == c)
                .and_then(|i| r.res[i].as_ref().ok())
                .map_or(f64::NAN, |m| m.value)
        };
        println!(
            "round {:2}: probe {:>4} {:4.0} ns -> {:>4} {:4.0} ns | floor {:4.0} ns, posted 64 B b32 {:5.1} Mpps, ping {:4.0} ns{}",
            rounds.len(),
            r.before.placement.to_string(),
            r.before.median_ns,
            r.after.placement.to_string(),
            r.after.median_ns,
            get(Case::Floor { lines: 1 }),
            get(Case::Tput {
                ring: Ring::Posted,
                size: 64,
                burst: 32,
                zc: false
            }),
            get(Case::Ping {
                ring: Ring::Posted,
                size: 64
            }),
            if r.valid() {
                String::new()
            } else {
                "  VOID (placement changed or probe not clean)".into()
            }
        );
        let pre = failed.iter().filter(|f| f.contains(PREEMPTED)).count();
        if pre > 0 {
            println!("    {pre} case(s) voided: a process was preempted (the machine is shared)");
        }
        for f in failed.iter().filter(|f| !f.contains(PREEMPTED)) {
            println!("    failed: {f}");
        }
        rounds.push(r);
    }

    let void = rounds.iter().filter(|r| !r.valid()).count();
    println!(
        "\n{} rounds, {} void (the probe before and after differed, timed out, or was unpinned)",
        rounds.len(),
        void
    );

    let today = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    for placement in [Placement::Near, Placement::Far] {
        let valid: Vec<&Round> = rounds
            .iter()
            .filter(|r| r.valid() && r.before.placement == placement)
            .collect();
        if valid.is_empty() {
            println!("\n{placement}: no valid rounds");
            continue;
        }
        let probe = median_min_max(valid.iter().map(|r| r.before.median_ns).collect());
        println!(
            "\n### {placement}: {} valid rounds, placement probe RTT {} ns\n",
            valid.len(),
            fmt_mmm(probe, 0)
        );
        println!(
            "Markdown (docs/BENCHMARKS.md), `cargo bench -p zerohop-benches --bench pmd` ({}):\n",
            today.trim()
        );
        println!("| case | unit | median (min-max) | p99 / per-round-trip p50, p99 | ratio to same-run baseline (min-max) | baseline |");
        println!("|---|---|---|---|---|---|");
        for (i, c) in all.iter().enumerate() {
            let ok: Vec<&Meas> = valid
                .iter()
                .filter_map(|r| r.res[i].as_ref().ok())
                .collect();
            let prec = if matches!(c, Case::Floor { .. } | Case::Ping { .. }) {
                0
            } else {
                1
            };
            let main = fmt_mmm(median_min_max(ok.iter().map(|m| m.value).collect()), prec);
            let extra = if ok.iter().any(|m| m.ping.is_some()) {
                let med = |f: fn(&PingReport) -> f64| {
                    median_min_max(ok.iter().filter_map(|m| m.ping.as_ref().map(f)).collect())
                        .map_or(f64::NAN, |x| x.0)
                };
                format!(
                    "batch p99 {:.0}; per-RT p50 {:.0}, p99 {:.0}",
                    med(|p| p.batch_p99),
                    med(|p| p.rt_p50),
                    med(|p| p.rt_p99)
                )
            } else if let Case::Tput { size, .. } = c {
                if *size <= 64 {
                    let g = median_min_max(ok.iter().map(|m| m.bytes_rate).collect());
                    format!("{} Gbit/s", fmt_mmm(g, 1))
                } else {
                    let g = median_min_max(
                        ok.iter()
                            .map(|m| m.bytes_rate * 1e3 / (*size as f64 * 8.0))
                            .collect(),
                    );
                    format!("{} Mpps", fmt_mmm(g, 2))
                }
            } else {
                String::new()
            };
            let (rat, base) = match c.baseline() {
                Some(b) => {
                    let r1 = median_min_max(
                        valid
                            .iter()
                            .filter_map(|r| ratio(r, i, &all, false))
                            .collect(),
                    );
                    let s = match c {
                        Case::Ping { .. } | Case::Floor { .. } => {
                            let r2 = median_min_max(
                                valid
                                    .iter()
                                    .filter_map(|r| ratio(r, i, &all, true))
                                    .collect(),
                            );
                            format!("{}x batch; {}x per-RT p50", fmt_mmm(r1, 2), fmt_mmm(r2, 2))
                        }
                        _ => format!("{}x", fmt_mmm(r1, 2)),
                    };
                    (s, b.name())
                }
                None => ("-".into(), "none same-run (DPDK: reference below)".into()),
            };
            let n_ok = ok.len();
            let main = format!("{main} [{n_ok}]");
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                c.name(),
                c.unit(),
                main,
                extra,
                rat,
                base
            );
        }
        println!(
            "\n({} valid of {} rounds in this placement; median (min-max) [measurements] over valid rounds, leaving out runs where either process was preempted; ratios computed within each round. \
             Throughput ratios: Gbit/s over the same round's single-core NT copy of the same size to cold memory.)",
            valid.len(),
            rounds.len()
        );
        println!(
            "DPDK 22.11 testpmd virtio-user<->vhost-user, {placement} (BASELINES.md; reference, not same-run): {}",
            dpdk_reference(placement)
        );
    }

    let before = placement_probe(CORES, PROBE_ROUND_TRIPS);
    counted_round(&cfg);
    let after = placement_probe(CORES, PROBE_ROUND_TRIPS);
    println!(
        "(counted round: probe {} {:.0} ns -> {} {:.0} ns; counts do not depend on placement)",
        before.placement, before.median_ns, after.placement, after.median_ns
    );
}
