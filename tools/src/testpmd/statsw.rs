//! The stats window of a testpmd instance and `zerohop stats`.
//!
//! testpmd keeps its per-lcore counters ([`dataplane::stats`]) in a small window of its
//! own, `/dev/shm/zerohop-stats-<instance>`, separate from the link window (the port
//! lays that one out itself): the parent creates it (and removes it when it ends), the
//! peer process attaches to it, and `zerohop stats` maps it and only reads.
//!
//! ```text
//!  /dev/shm/zerohop-stats-<instance>
//!  +------------------+ 0
//!  | window header    |  one area: AreaKind::Stats (its size gives the queue count)
//!  +------------------+ HEADER_SIZE
//!  | gen rx  q0..qN-1 |  group 0: generator lcores, polls and received packets
//!  | gen tx  q0..qN-1 |  group 1: generator lcores, sent packets and drops
//!  | fwd rx  q0..qN-1 |  group 2: forwarding lcores, polls and received packets
//!  | fwd tx  q0..qN-1 |  group 3: forwarding lcores, sent packets and drops
//!  +------------------+  each block: dataplane::stats::Counters, 256 bytes
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dataplane::pmd::window::{self, open_header, OpenOptions, ShmWindow, Window};
use dataplane::rings::header::{Area, AreaKind, Expect, HeaderParams, HEADER_SIZE};
use dataplane::stats::{Counters, Stats, BLOCK_SIZE};

/// Block groups in the stats window.
pub const GROUPS: usize = 4;
/// Names of the groups' sides.
const SIDE: [&str; 2] = ["gen", "fwd"];

/// The stats window path of an instance.
pub fn path_of(instance: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/zerohop-stats-{instance}"))
}

/// An open stats window and its counters.
pub struct StatsWindow {
    /// The window (removed on drop if this process created it).
    #[allow(dead_code)]
    pub window: ShmWindow,
    /// Every block (4 groups of `queues`).
    pub all: Stats,
    /// Queues per side.
    pub queues: usize,
    /// Its path.
    pub path: PathBuf,
}

impl StatsWindow {
    /// Creates the window for `queues` queues per side, zeroed.
    pub fn create(path: &Path, queues: usize) -> Result<StatsWindow, String> {
        let len = Stats::region_len(GROUPS * queues);
        let size = HEADER_SIZE + len.next_multiple_of(window::page_size());
        let w = ShmWindow::create(path, size)
            .map_err(|e| format!("creating stats window {}: {e}", path.display()))?;
        let region = w
            .region()
            .sub(HEADER_SIZE, len)
            .map_err(|e| e.to_string())?;
        let all = Stats::over_region(region, GROUPS * queues).map_err(|e| e.to_string())?;
        window::init_header(
            &w,
            &HeaderParams {
                window_size: None,
                creator_pid: std::process::id(),
                flags: 0,
                areas: vec![Area::new(AreaKind::Stats, HEADER_SIZE as u64, len as u64)],
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(StatsWindow {
            window: w,
            all,
            queues,
            path: path.to_owned(),
        })
    }

    /// Opens an existing stats window (never writes to it unless a group is claimed).
    pub fn open(path: &Path) -> Result<StatsWindow, String> {
        let w = ShmWindow::open(path, &OpenOptions::new())
            .map_err(|e| format!("opening stats window {}: {e}", path.display()))?;
        let info =
            open_header(&w, &Expect::default()).map_err(|e| format!("{}: {e}", path.display()))?;
        let a = *info
            .find(AreaKind::Stats)
            .ok_or_else(|| format!("{}: no Stats area in the window header", path.display()))?;
        let blocks = a.size as usize / BLOCK_SIZE;
        let queues = blocks / GROUPS;
        if queues == 0 {
            return Err(format!("{}: stats area too small", path.display()));
        }
        let region = w
            .region()
            .sub(a.offset as usize, Stats::region_len(GROUPS * queues))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let all = Stats::attach(region, GROUPS * queues).map_err(|e| e.to_string())?;
        Ok(StatsWindow {
            window: w,
            all,
            queues,
            path: path.to_owned(),
        })
    }

    /// The stats of one group (a writer view for `Lcores::launch_with_stats`).
    pub fn group(&self, g: usize) -> Result<Stats, String> {
        let len = Stats::region_len(self.queues);
        let r = self
            .all
            .region()
            .sub(g * len, len)
            .map_err(|e| e.to_string())?;
        Stats::attach(r, self.queues).map_err(|e| e.to_string())
    }

    /// Every block's counters now.
    pub fn read(&self) -> Vec<Counters> {
        (0..GROUPS * self.queues)
            .map(|i| self.all.lcore_counters(i).unwrap_or_default())
            .collect()
    }
}

/// One fixed-width block of per-queue lines: rates between `prev` and `now` over
/// `secs` (totals when `prev` is None).
pub fn format_block(
    title: &str,
    queues: usize,
    prev: Option<&[Counters]>,
    now: &[Counters],
    secs: f64,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "---- {title:-<98}");
    let rate = prev.is_some();
    let _ = writeln!(
        s,
        "{:<4} {:>2} {:>13} {:>12} {:>13} {:>12} {:>7} {:>6} {:>10} {:>8}",
        "side",
        "q",
        if rate { "rx-pps" } else { "rx-packets" },
        if rate { "rx-Mbit/s" } else { "rx-bytes" },
        if rate { "tx-pps" } else { "tx-packets" },
        if rate { "tx-Mbit/s" } else { "tx-bytes" },
        "empty%",
        "burst",
        "drops",
        "errors"
    );
    let zero = Counters::default();
    let prec = usize::from(rate);
    for (side, side_name) in SIDE.iter().enumerate() {
        for q in 0..queues {
            let rx_i = (side * 2) * queues + q;
            let tx_i = (side * 2 + 1) * queues + q;
            let (rx, tx) = (now[rx_i], now[tx_i]);
            let (prx, ptx) = match prev {
                Some(p) => (p[rx_i], p[tx_i]),
                None => (zero, zero),
            };
            let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
            let per = |x: f64| if rate && secs > 0.0 { x / secs } else { x };
            let polls = d(rx.polls, prx.polls);
            let empty = d(rx.empty_polls, prx.empty_polls);
            let busy = polls - empty;
            let rx_p = d(rx.packets, prx.packets);
            let bits = |b: f64| if rate { b * 8.0 / 1e6 } else { b };
            let _ = writeln!(
                s,
                "{:<4} {:>2} {:>13.0} {:>12.prec$} {:>13.0} {:>12.prec$} {:>7.1} {:>6.1} {:>10} {:>8}",
                side_name,
                q,
                per(rx_p),
                per(bits(d(rx.bytes, prx.bytes))),
                per(d(tx.packets, ptx.packets)),
                per(bits(d(tx.bytes, ptx.bytes))),
                if polls > 0.0 { empty * 100.0 / polls } else { 0.0 },
                if busy > 0.0 { rx_p / busy } else { 0.0 },
                tx.drops.saturating_sub(ptx.drops) + rx.drops.saturating_sub(prx.drops),
                tx.errors.saturating_sub(ptx.errors) + rx.errors.saturating_sub(prx.errors),
            );
        }
    }
    s
}

/// `zerohop stats` arguments.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  zerohop testpmd --duration 60 --instance a &\n  zerohop stats a             # live, one block per second\n  zerohop stats a --once      # one snapshot of the totals\n  zerohop stats /dev/shm/zerohop-stats-a --once"
)]
pub struct StatsArgs {
    /// Instance name (testpmd --instance; the parent's pid by default) or the path of a
    /// stats window. Default: the only /dev/shm/zerohop-stats-* there is.
    target: Option<String>,
    /// Print one snapshot of the totals and exit.
    #[arg(long)]
    once: bool,
    /// Seconds between blocks.
    #[arg(long, default_value_t = 1.0)]
    period: f64,
    /// Stop after this many seconds (default: until the instance ends).
    #[arg(long)]
    duration: Option<f64>,
}

fn find_target(t: Option<&str>) -> Result<PathBuf, String> {
    match t {
        Some(t) if t.contains('/') => Ok(PathBuf::from(t)),
        Some(t) => Ok(path_of(t)),
        None => {
            let mut found: Vec<PathBuf> = std::fs::read_dir("/dev/shm")
                .map_err(|e| format!("listing /dev/shm: {e}"))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("zerohop-stats-"))
                })
                .collect();
            found.sort();
            match found.len() {
                0 => Err("no running testpmd instance (no /dev/shm/zerohop-stats-*)".into()),
                1 => Ok(found.remove(0)),
                _ => Err(format!(
                    "several instances running, name one: {}",
                    found
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
    }
}

/// Runs `zerohop stats`.
pub fn run(a: &StatsArgs) -> ExitCode {
    let path = match find_target(a.target.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("zerohop stats: {e}");
            return ExitCode::from(2);
        }
    };
    let sw = match StatsWindow::open(&path) {
        Ok(s) => s,
        Err(e) => {
            // Not a stats window (or none there): bad input, as for testpmd.
            eprintln!("zerohop stats: {e}");
            return ExitCode::from(2);
        }
    };
    let title = path.display().to_string();
    if a.once {
        print!(
            "{}",
            format_block(
                &format!("{title} totals "),
                sw.queues,
                None,
                &sw.read(),
                0.0
            )
        );
        return ExitCode::SUCCESS;
    }
    let period = Duration::from_secs_f64(a.period.clamp(0.05, 3600.0));
    let end = a
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let mut prev = sw.read();
    let mut t = Instant::now();
    loop {
        std::thread::sleep(period);
        if !path.exists() {
            println!("{title}: instance ended");
            return ExitCode::SUCCESS;
        }
        let now = sw.read();
        let secs = t.elapsed().as_secs_f64();
        t = Instant::now();
        print!(
            "{}",
            format_block(&format!("{title} "), sw.queues, Some(&prev), &now, secs)
        );
        prev = now;
        if end.is_some_and(|e| Instant::now() >= e) {
            return ExitCode::SUCCESS;
        }
    }
}
