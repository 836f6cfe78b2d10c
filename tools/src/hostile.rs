//! `zerohop hostile`: a hostile peer, and a victim for it (docs/THREAT_MODEL.md).
//!
//! Attack mode (the default) maps a LIVE window given by any window spec, reads its
//! header and area table ONCE to learn where the rings, buffers and config block are,
//! and then writes random and adversarial values into all of them at full speed:
//! out-of-range indices, index jumps, addresses and lengths outside the data area,
//! descriptor loops, indirect tables pointing anywhere, flipped wrap flags, forged
//! credits and lap tags, torn and garbage headers, config-block status words. It never
//! reads the window again (except single words it flips in place).
//!
//! ```text
//!   attacker (this mode)                 victim (--victim)
//!   --------------------                 -----------------
//!   open window, Header::open once       create window + ring layout
//!   targets = areas (+ header page)      open both sides of queue 0
//!   loop: pick target, op, value  ──►    loop: tx, rx, verify, free
//!         store it (bounds-checked)            error? count it (typed), reset,
//!   until --writes / --duration                 re-arm, continue
//!   print {writes, duration_s, seed}     on SIGTERM/SIGINT/--duration: print
//!                                        {violations, by_kind, resets, ...}
//! ```
//!
//! The victim mode runs both halves of one queue pair (posted: side A and B; split and
//! packed: frontend and backend) over a window it creates, so every ring structure is
//! live while the attacker writes. It must never panic, hang, or touch memory outside
//! the window (shm windows are mapped between PROT_NONE guard pages, so a stray access
//! kills it with SIGSEGV).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use dataplane::rings::header::{AreaKind, Expect, Header, HEADER_SIZE};
use dataplane::rings::posted::PostedLayout;
use dataplane::rings::{Mem, Region};
use pmd::queue::testpkt::{self, TestQueue};
use pmd::queue::{
    Packed, PktHandle, PostedLinkLayout, QueueError, RingMode, RxPkt, Side, Split, VirtioLinkLayout,
};
use pmd::window::{create_spec, open_spec, OpenOptions, Window, WindowSpec};
use serde::Serialize;

use crate::demo::PollMode;

/// Ring mode of the victim (and the attacker's hint when the header cannot be read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostileRing {
    /// zerohop's posted ring.
    Posted,
    /// virtio split virtqueue.
    Split,
    /// virtio packed virtqueue.
    Packed,
}

/// `zerohop hostile` arguments.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
zerohop hostile --victim --window /dev/shm/zh-v --ring split --poll yield --json &\n  \
zerohop hostile --window /dev/shm/zh-v --writes 10000000 --json\n  \
zerohop hostile --window pci:1af4:1110/bar2 --writes 1000000 --json")]
pub struct HostileArgs {
    /// The window: a /dev/shm path or any window spec (shm:PATH, huge:PATH, pci:...).
    #[arg(long, value_name = "PATH|SPEC")]
    pub window: String,
    /// Ring mode. Attacker: only a hint (the header says); victim: what it builds.
    #[arg(long, value_enum)]
    pub ring: Option<HostileRing>,
    /// Stop after this many seconds (attacker default 10; victim: run until SIGTERM
    /// or SIGINT when 0).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Attacker: stop after this many writes.
    #[arg(long)]
    pub writes: Option<u64>,
    /// Seed of the attacker's random choices (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object at the end.
    #[arg(long)]
    pub json: bool,
    /// Run the victim instead: create the window, run both halves of a queue pair on
    /// it, count violations, reset and continue.
    #[arg(long)]
    pub victim: bool,
    /// Victim: ring size (a power of two, 2 to 4096).
    #[arg(long, default_value_t = 64)]
    pub ring_size: u16,
    /// Victim: how an idle loop waits.
    #[arg(long, value_enum, default_value_t = PollMode::Spin)]
    pub poll: PollMode,
    /// Attacker: seconds to wait for the window and a valid header to appear.
    #[arg(long, default_value_t = 10.0)]
    pub wait: f64,
    /// Open a window file owned by another user or writable by others.
    #[arg(long)]
    pub allow_foreign: bool,
    /// Attacker: leave the window header and the control block alone and write into
    /// the rings and buffers only (the victim then sees ring violations rather than a
    /// peer that restarted or broke the handshake).
    #[arg(long)]
    pub rings_only: bool,
}

/// Entry point.
pub fn run(a: &HostileArgs) -> ExitCode {
    let r = if a.victim { victim(a) } else { attack(a) };
    match r {
        Ok(json) => {
            if a.json {
                println!("{json}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zerohop hostile: {e}");
            ExitCode::from(1)
        }
    }
}

fn parse_spec(w: &str) -> Result<WindowSpec, String> {
    w.parse().map_err(|e| format!("--window {w}: {e}"))
}

// ---- random numbers -------------------------------------------------------------------

/// splitmix64: small, fast, good enough to pick attacks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

// ---- the attacker ---------------------------------------------------------------------

/// What one target structure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetKind {
    Header,
    Config,
    Split,
    Packed,
    Posted,
    Buffers,
    Other,
}

/// One structure the attacker writes into: `off..off + len` of the window.
#[derive(Clone, Copy, Debug)]
struct Target {
    kind: TargetKind,
    off: usize,
    len: usize,
    /// Ring size (entries) or buffer size, for near-boundary values.
    n: u64,
}

/// The `--json` object of the attacker.
#[derive(Serialize)]
struct AttackReport {
    writes: u64,
    duration_s: f64,
    writes_per_s: f64,
    seed: u64,
    window: String,
    window_bytes: usize,
    header_read: bool,
    targets: usize,
    by_target: BTreeMap<&'static str, u64>,
    write_errors: u64,
}

fn kind_name(k: TargetKind) -> &'static str {
    match k {
        TargetKind::Header => "header",
        TargetKind::Config => "config",
        TargetKind::Split => "split",
        TargetKind::Packed => "packed",
        TargetKind::Posted => "posted",
        TargetKind::Buffers => "buffers",
        TargetKind::Other => "other",
    }
}

fn open_window(a: &HostileArgs, spec: &WindowSpec) -> Result<Box<dyn Window>, String> {
    let deadline = Instant::now() + Duration::from_secs_f64(a.wait.max(0.0));
    let opts = OpenOptions::new().allow_foreign(a.allow_foreign);
    loop {
        match open_spec(spec, &opts) {
            Ok(w) => return Ok(w),
            Err(e) if Instant::now() >= deadline => return Err(format!("{}: {e}", a.window)),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reads the header once (retrying until it is initialised or `--wait` passes) and
/// turns its areas into targets. Without a valid header the whole window is one
/// target of the `--ring` kind.
fn learn_targets(a: &HostileArgs, region: &Region) -> (Vec<Target>, bool) {
    let deadline = Instant::now() + Duration::from_secs_f64(a.wait.max(0.0));
    let expect = Expect {
        allow_larger_mapping: true,
        generation: None,
    };
    let info = loop {
        match Header::open(region, &expect) {
            Ok(i) => break Some(i),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    let len = region.len();
    let mut t = vec![Target {
        kind: TargetKind::Header,
        off: 0,
        len: HEADER_SIZE.min(len),
        n: 0,
    }];
    let Some(info) = info else {
        let kind = match a.ring {
            Some(HostileRing::Split) => TargetKind::Split,
            Some(HostileRing::Packed) => TargetKind::Packed,
            Some(HostileRing::Posted) => TargetKind::Posted,
            None => TargetKind::Other,
        };
        if len > HEADER_SIZE {
            t.push(Target {
                kind,
                off: HEADER_SIZE,
                len: len - HEADER_SIZE,
                n: 256,
            });
        }
        return (t, false);
    };
    for ar in info.areas() {
        let (kind, n) = match ar.kind {
            AreaKind::Config => (TargetKind::Config, 0),
            AreaKind::SplitRing => (TargetKind::Split, ar.param & 0xffff),
            AreaKind::PackedRing => (TargetKind::Packed, ar.param & 0xffff),
            AreaKind::PostedRing => (TargetKind::Posted, 1u64 << ((ar.param >> 10) & 63)),
            AreaKind::Buffers => (TargetKind::Buffers, ar.param & 0xffff_ffff),
            _ => (TargetKind::Other, 0),
        };
        // Header::open validated offset + size against the window; clamp anyway.
        let (off, size) = (ar.offset as usize, ar.size as usize);
        if off >= len || size == 0 {
            continue;
        }
        t.push(Target {
            kind,
            off,
            len: size.min(len - off),
            n: n.max(2),
        });
    }
    (t, true)
}

/// Adversarial 16-bit values for a ring of `n` entries (indices, ids, flags).
fn evil_u16(r: &mut Rng, n: u64, cur: u16) -> u16 {
    let n16 = n.min(0x8000) as u16;
    match r.below(12) {
        0 => 0,
        1 => n16.wrapping_sub(1),
        2 => n16,
        3 => n16.wrapping_add(1),
        4 => 0xffff,
        5 => cur ^ 0x8000,                          // packed wrap counter / flags
        6 => cur ^ (1 << 7),                        // packed AVAIL flag
        7 => cur.wrapping_add(n16).wrapping_add(1), // index jump by N + 1
        8 => cur.wrapping_add(1 + r.below(3) as u16), // a small (maybe valid) step
        9 => cur.wrapping_sub(1),                   // going back
        10 => r.pick(&[1, 2, 4, 3, 5, 6, 7, 0x80, 0x8080, 0x0081]), // desc/lap flags
        _ => r.next() as u16,
    }
}

/// Adversarial 32-bit values (lengths, credit counts, status words).
fn evil_u32(r: &mut Rng, n: u64, cur: u32) -> u32 {
    match r.below(10) {
        0 => 0,
        1 => u32::MAX,
        2 => n as u32 + 1,
        3 => (n as u32).wrapping_mul(16),
        4 => 15,
        5 => 0x8000_0000,
        6 => cur.wrapping_add(n as u32 + 1),
        7 => cur ^ (1 << r.below(32)),
        8 => r.pick(&[1, 2, 4, 8, 64, 128, 0xff, 0x4f, 0xcf]), // status words
        _ => r.next() as u32,
    }
}

/// Adversarial 64-bit values (addresses, offsets, generations, stamps).
fn evil_u64(r: &mut Rng, window: usize, area: usize, cur: u64) -> u64 {
    match r.below(9) {
        0 => 0,
        1 => u64::MAX - r.below(4096),
        2 => area as u64,
        3 => window as u64,
        4 => area as u64 - 1,
        5 => cur ^ (1 << r.below(64)),
        6 => 1 << 63,
        7 => r.below(area as u64 + 4096) & !63,
        _ => r.next(),
    }
}

fn attack(a: &HostileArgs) -> Result<String, String> {
    let spec = parse_spec(&a.window)?;
    let w = open_window(a, &spec)?;
    let region = w.region().clone();
    let len = region.len();
    if len < 64 {
        return Err(format!("{}: window of {len} bytes is too small", a.window));
    }
    let (mut targets, header_read) = learn_targets(a, &region);
    if a.rings_only {
        targets.retain(|t| !matches!(t.kind, TargetKind::Header | TargetKind::Config));
        if targets.is_empty() {
            return Err(format!("{}: --rings-only: no ring areas", a.window));
        }
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut rng = Rng(seed);
    let max_writes = a.writes.unwrap_or(u64::MAX);
    let duration = match (a.duration, a.writes) {
        (Some(d), _) => Duration::from_secs_f64(d.max(0.0)),
        (None, Some(_)) => Duration::from_secs(3600),
        (None, None) => Duration::from_secs(10),
    };
    let start = Instant::now();
    let end = start + duration;
    // Weights: rings get most writes; the header and config block a steady share.
    let weights: Vec<u64> = targets
        .iter()
        .map(|t| match t.kind {
            TargetKind::Split | TargetKind::Packed | TargetKind::Posted => 16,
            TargetKind::Config => 4,
            TargetKind::Buffers | TargetKind::Other => 2,
            TargetKind::Header => 1,
        })
        .collect();
    let total_w: u64 = weights.iter().sum();
    let mut per_target = vec![0u64; targets.len()];
    let mut writes = 0u64;
    let mut write_errors = 0u64;
    while writes < max_writes {
        if writes & 4095 == 0 && Instant::now() >= end {
            break;
        }
        let mut pick = rng.below(total_w);
        let mut ti = 0;
        for (i, wt) in weights.iter().enumerate() {
            if pick < *wt {
                ti = i;
                break;
            }
            pick -= wt;
        }
        let t = targets[ti];
        if one_write(&region, &t, len, &mut rng).is_err() {
            write_errors += 1;
        }
        per_target[ti] += 1;
        writes += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut by_target = BTreeMap::new();
    for (t, n) in targets.iter().zip(&per_target) {
        *by_target.entry(kind_name(t.kind)).or_insert(0) += n;
    }
    let rep = AttackReport {
        writes,
        duration_s: secs,
        writes_per_s: writes as f64 / secs.max(1e-9),
        seed,
        window: a.window.clone(),
        window_bytes: len,
        header_read,
        targets: targets.len(),
        by_target,
        write_errors,
    };
    if !a.json {
        eprintln!(
            "zerohop hostile: {} writes in {:.2} s ({:.1} M/s) into {} targets of {} (seed {seed})",
            rep.writes,
            secs,
            rep.writes_per_s / 1e6,
            rep.targets,
            a.window
        );
    }
    serde_json::to_string(&rep).map_err(|e| e.to_string())
}

/// One adversarial store into target `t` (every store is bounds-checked by `Region`).
fn one_write(
    m: &Region,
    t: &Target,
    window: usize,
    r: &mut Rng,
) -> Result<(), dataplane::rings::MemError> {
    let rel = |r: &mut Rng, align: usize| -> usize {
        let span = t.len.saturating_sub(align).max(1);
        // Most writes go to the first part of an area (indices, descriptor tables,
        // slot heads), the rest anywhere in it.
        let span = if r.below(4) != 0 {
            span.min(4096)
        } else {
            span
        };
        t.off + (r.below(span as u64) as usize & !(align - 1))
    };
    match t.kind {
        TargetKind::Header => match r.below(6) {
            // Torn header: one field, a stamp, the area table.
            0 => m.store_u64(
                dataplane::rings::header::INIT_STAMP_OFFSET,
                r.next(),
                Ordering::Relaxed,
            ),
            1 => {
                let off = 64 + 32 * r.below(16) as usize + 8 * r.below(4) as usize;
                let cur = m.load_u64(off, Ordering::Relaxed)?;
                m.store_u64(off, evil_u64(r, window, window, cur), Ordering::Relaxed)
            }
            2 => m.store_u32(
                4 * r.below(16) as usize,
                evil_u32(r, 16, 0),
                Ordering::Relaxed,
            ),
            _ => {
                let off = rel(r, 8);
                m.store_u64(off, r.next(), Ordering::Relaxed)
            }
        },
        TargetKind::Config => {
            let off = rel(r, 4);
            let cur = m.load_u32(off, Ordering::Relaxed)?;
            m.store_u32(off, evil_u32(r, 64, cur), Ordering::Release)
        }
        TargetKind::Buffers | TargetKind::Other => {
            let mut b = [0u8; 64];
            let n = 1 + r.below(64) as usize;
            for x in b.iter_mut().take(n) {
                *x = r.next() as u8;
            }
            let off = t.off + r.below(t.len.saturating_sub(n).max(1) as u64) as usize;
            m.write_bytes(off, &b[..n])
        }
        TargetKind::Split | TargetKind::Packed | TargetKind::Posted => match r.below(8) {
            0..=2 => {
                let off = rel(r, 2);
                let cur = m.load_u16(off, Ordering::Relaxed)?;
                m.store_u16(off, evil_u16(r, t.n, cur), Ordering::Release)
            }
            3 => {
                let off = rel(r, 4);
                let cur = m.load_u32(off, Ordering::Relaxed)?;
                m.store_u32(off, evil_u32(r, t.n, cur), Ordering::Release)
            }
            4 => {
                let off = rel(r, 8);
                let cur = m.load_u64(off, Ordering::Relaxed)?;
                m.store_u64(off, evil_u64(r, window, t.len, cur), Ordering::Release)
            }
            5 | 6 => {
                // A whole 16-byte descriptor: {addr u64, len u32, flags/id u16, next/flags
                // u16}. Split: NEXT to itself or out of range (loops), INDIRECT with a
                // table anywhere; packed: id out of range, AVAIL/USED flipped.
                let off = rel(r, 16);
                let n = t.n;
                let slot = ((off - t.off) / 16) as u64;
                let addr = evil_u64(r, window, t.len, 0);
                let len = evil_u32(r, n, 0);
                let any = r.next() as u16;
                let (w12, w14) = match t.kind {
                    TargetKind::Packed => (
                        r.pick(&[n as u16, slot as u16, 0xffff, any]),
                        r.pick(&[0x0080, 0x8000, 0x8080, 0x0081, 0x0085, 0x0004, 0x0001])
                            ^ (r.next() as u16 & 0x8080),
                    ),
                    _ => (
                        r.pick(&[1, 3, 4, 5, 6, 7, 2]),
                        r.pick(&[slot as u16, n as u16, 0xffff, (slot as u16) ^ 1]),
                    ),
                };
                let mut d = [0u8; 16];
                d[..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[12..14].copy_from_slice(&w12.to_le_bytes());
                d[14..16].copy_from_slice(&w14.to_le_bytes());
                m.write_bytes(off, &d)
            }
            _ => {
                let mut b = [0u8; 32];
                let n = 1 + r.below(32) as usize;
                for x in b.iter_mut().take(n) {
                    *x = r.next() as u8;
                }
                let off = t.off + r.below(t.len.saturating_sub(n).max(1) as u64) as usize;
                m.write_bytes(off, &b[..n])
            }
        },
    }
}

// ---- the victim -----------------------------------------------------------------------

/// The `--json` object of the victim.
#[derive(Serialize, Default)]
struct VictimReport {
    ring: Option<HostileRing>,
    duration_s: f64,
    iterations: u64,
    sent: u64,
    received: u64,
    /// Received packets whose bytes did not verify (the attacker wrote the payload).
    corrupted: u64,
    /// Typed peer violations the queues reported (each marked the queue broken).
    violations: u64,
    /// Per violation kind (the error variant).
    by_kind: BTreeMap<String, u64>,
    /// Errors that were not peer violations (e.g. `Broken` after a violation).
    other_errors: u64,
    /// Per kind of the other errors.
    other_kinds: BTreeMap<String, u64>,
    /// Resets after a violation (both halves reset and re-armed).
    resets: u64,
    /// Resets that themselves failed (counted, retried on the next error).
    reset_errors: u64,
    /// Header checks that failed (the attacker tore the header).
    header_errors: u64,
    /// Header checks made.
    header_checks: u64,
}

/// The variant name of an error (`IndexJump`, `BadSlot`, ...).
fn variant(e: &QueueError) -> String {
    let s = match e {
        QueueError::Ring(r) => format!("{r:?}"),
        other => format!("{other:?}"),
    };
    s.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("?")
        .to_owned()
}

fn victim(a: &HostileArgs) -> Result<String, String> {
    crate::stop::install();
    let spec = parse_spec(&a.window)?;
    let ring = a.ring.unwrap_or(HostileRing::Posted);
    let n = a.ring_size;
    if !n.is_power_of_two() || !(2..=4096).contains(&n) {
        return Err(format!("--ring-size {n}: a power of two from 2 to 4096"));
    }
    let buf = 2048u32;
    // Build the layout and both halves; the window is created here and removed on drop.
    let (w, mut sides): (Box<dyn Window>, Vec<Box<dyn TestQueue>>) = match ring {
        HostileRing::Posted => {
            let pl = PostedLayout::new(u32::from(n), 128, u32::from(n), buf)
                .map_err(|e| e.to_string())?;
            let l = PostedLinkLayout::new(pl, 1).map_err(|e| e.to_string())?;
            let w = create_spec(&spec, l.window_size()).map_err(|e| e.to_string())?;
            l.create(w.as_ref()).map_err(|e| e.to_string())?;
            let qa = l
                .open_side(w.as_ref(), Side::A, 0)
                .map_err(|e| e.to_string())?;
            let qb = l
                .open_side(w.as_ref(), Side::B, 0)
                .map_err(|e| e.to_string())?;
            (w, vec![Box::new(qa), Box::new(qb)])
        }
        HostileRing::Split | HostileRing::Packed => {
            let mode = if ring == HostileRing::Split {
                RingMode::Split
            } else {
                RingMode::Packed
            };
            let l = VirtioLinkLayout::new(mode, n, buf, 1).map_err(|e| e.to_string())?;
            let w = create_spec(&spec, l.window_size()).map_err(|e| e.to_string())?;
            l.create(w.as_ref()).map_err(|e| e.to_string())?;
            let sides: Vec<Box<dyn TestQueue>> = if mode == RingMode::Split {
                vec![
                    Box::new(
                        l.open_frontend::<Split>(w.as_ref(), 0)
                            .map_err(|e| e.to_string())?,
                    ),
                    Box::new(
                        l.open_backend::<Split>(w.as_ref(), 0)
                            .map_err(|e| e.to_string())?,
                    ),
                ]
            } else {
                vec![
                    Box::new(
                        l.open_frontend::<Packed>(w.as_ref(), 0)
                            .map_err(|e| e.to_string())?,
                    ),
                    Box::new(
                        l.open_backend::<Packed>(w.as_ref(), 0)
                            .map_err(|e| e.to_string())?,
                    ),
                ]
            };
            (w, sides)
        }
    };
    let region = w.region().clone();
    let expect = Expect {
        allow_larger_mapping: true,
        generation: None,
    };
    let mut rep = VictimReport {
        ring: Some(ring),
        ..VictimReport::default()
    };
    let burst = 8usize;
    let sizes = [16usize, 64, 200, 1500];
    let mut pkts = vec![RxPkt::default(); burst];
    let mut frees: Vec<PktHandle> = Vec::with_capacity(burst);
    let mut scratch = vec![0u8; buf as usize];
    let mut payloads: Vec<Vec<u8>> = sizes.iter().map(|&s| vec![0u8; s]).collect();
    let mut seq = 0u64;
    let start = Instant::now();
    let end = a
        .duration
        .filter(|d| *d > 0.0)
        .map(|d| start + Duration::from_secs_f64(d));
    let mut idle = 0u32;
    loop {
        rep.iterations += 1;
        if rep.iterations & 255 == 0 {
            // Relaxed: see on_stop.
            if crate::stop::requested() || end.is_some_and(|e| Instant::now() >= e) {
                break;
            }
            // The header is hostile too: a torn or garbage header must come out as a
            // typed error, never a panic or an area outside the window.
            rep.header_checks += 1;
            if Header::open(&region, &expect).is_err() {
                rep.header_errors += 1;
            }
        }
        let mut progress = false;
        let mut failed: Option<QueueError> = None;
        for q in sides.iter_mut() {
            // ---- transmit a few test packets ----
            for (i, p) in payloads.iter_mut().enumerate() {
                testpkt::fill(p, seq.wrapping_add(i as u64));
            }
            let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
            match q.tx_burst(&refs, testpkt::META_COPY) {
                Ok(k) => {
                    rep.sent += k as u64;
                    seq = seq.wrapping_add(k as u64);
                    progress |= k > 0;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            // ---- receive, verify (copy out once), free ----
            let k = match q.rx_burst(&mut pkts) {
                Ok(k) => k,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            frees.clear();
            for p in &pkts[..k] {
                let len = (p.len as usize).min(scratch.len());
                match q.read_rx(p, &mut scratch[..len]) {
                    Ok(()) if testpkt::verify(&scratch[..len]).is_some() => {}
                    _ => rep.corrupted += 1,
                }
                frees.push(p.handle);
            }
            rep.received += k as u64;
            progress |= k > 0;
            if let Err(e) = q.free(&frees) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            if e.is_peer_violation() {
                rep.violations += 1;
                *rep.by_kind.entry(variant(&e)).or_insert(0) += 1;
            } else {
                rep.other_errors += 1;
                *rep.other_kinds.entry(variant(&e)).or_insert(0) += 1;
            }
            // NEEDS_RESET: both halves reset, then re-arm (posted: grant credits).
            rep.resets += 1;
            for q in sides.iter_mut() {
                if q.reset().is_err() {
                    rep.reset_errors += 1;
                }
            }
            for q in sides.iter_mut() {
                if q.start().is_err() {
                    rep.reset_errors += 1;
                }
            }
            continue;
        }
        if progress {
            idle = 0;
        } else {
            idle += 1;
            if a.poll == PollMode::Yield && idle > 16 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
    rep.duration_s = start.elapsed().as_secs_f64();
    if !a.json {
        eprintln!(
            "zerohop hostile victim ({:?}): {} violations, {} resets, {} header errors, {} corrupted, {} received in {:.2} s",
            ring, rep.violations, rep.resets, rep.header_errors, rep.corrupted, rep.received, rep.duration_s
        );
    }
    drop(sides);
    drop(w);
    serde_json::to_string(&rep).map_err(|e| e.to_string())
}
