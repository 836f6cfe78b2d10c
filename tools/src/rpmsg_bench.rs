//! `zerohop rpmsg-bench`: rpmsg-fast between two processes on this host.
//!
//! ```text
//!  zerohop rpmsg-bench (host, lcore A)              zerohop rpmsg-bench --peer (remote, lcore B)
//!  placement probe A<->B (before)
//!  Link::create  /dev/shm/zerohop-rpmsg-<pid>  ───►  Link::attach_wait
//!  connect (pmd::control handshake)         ◄──────►  connect
//!  per size: one-way bursts -> SINK, END -> count     rpmsg_fast::bench::run_peer:
//!            round trips through ECHO                 SINK counts, ECHO echoes
//!  END -> ECHO, wait for the peer to exit; window removed; probe (after)
//! ```
//!
//! The loops are `rpmsg_fast::bench` (shared with the `rpmsg` bench of
//! `zerohop-benches`). Per size: one-way messages/s and MB/s (payload bytes), and
//! round-trip percentiles (HdrHistogram, ns). `--json` prints one object.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use dataplane::probe::{changed, pin, placement_probe, ProbeResult};
use hdrhistogram::Histogram;
use rpmsg_fast::bench::{self, Limit, Poll};
use rpmsg_fast::{Link, LinkConfig, RingMode, Role, RpmsgError, Timing};
use serde::Serialize;

use crate::demo::PollMode;
use crate::latency::LatencySummary;

/// `--ring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RingArg {
    /// zerohop's posted ring.
    Posted,
    /// virtio 1.x split virtqueue.
    Split,
    /// virtio 1.x packed virtqueue.
    Packed,
}

impl RingArg {
    fn mode(self) -> RingMode {
        match self {
            RingArg::Posted => RingMode::Posted,
            RingArg::Split => RingMode::Split,
            RingArg::Packed => RingMode::Packed,
        }
    }
    fn name(self) -> &'static str {
        match self {
            RingArg::Posted => "posted",
            RingArg::Split => "split",
            RingArg::Packed => "packed",
        }
    }
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    /// One-way messages/s and MB/s.
    Oneway,
    /// Round-trip latency.
    Rtt,
    /// Both (one-way first).
    Both,
}

const EXAMPLES: &str = "Examples:
  zerohop rpmsg-bench                                  # posted, sizes 16..496, 1 s each, both modes
  zerohop rpmsg-bench --ring split --sizes 64,496 --duration 3
  zerohop rpmsg-bench --mode rtt --sizes 64 --json > rtt.json
  zerohop rpmsg-bench -l 2,3 --poll yield              # shared machine";

/// Largest payload with the default 512-byte rpmsg buffers.
const MAX_SIZE: usize = 496;

/// `zerohop rpmsg-bench` arguments.
#[derive(Args, Debug, Clone)]
#[command(after_help = EXAMPLES)]
pub struct RpmsgBenchArgs {
    /// Two cores (DPDK -l syntax): the host side runs on the first, the peer on the
    /// second.
    #[arg(short = 'l', long = "lcores", default_value = "0,1")]
    pub lcores: String,
    /// Ring mode of the link.
    #[arg(long, value_enum, default_value_t = RingArg::Posted)]
    pub ring: RingArg,
    /// Payload sizes in bytes (1 to 496), comma separated.
    #[arg(long, default_value = "16,64,128,256,496")]
    pub sizes: String,
    /// Seconds per size and mode.
    #[arg(long, default_value_t = 1.0)]
    pub duration: f64,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = BenchMode::Both)]
    pub mode: BenchMode,
    /// How an idle side waits: spin (pinned busy-poll) or yield (shared machines, tests).
    #[arg(long, value_enum, default_value_t = PollMode::Spin)]
    pub poll: PollMode,
    /// Directory for the window file.
    #[arg(long, default_value = "/dev/shm")]
    pub dir: PathBuf,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Internal: run as the peer of a parent rpmsg-bench.
    #[arg(long, hide = true)]
    pub peer: bool,
    /// Internal: the peer's window file.
    #[arg(long, hide = true)]
    pub window: Option<PathBuf>,
}

/// One-way result of one size.
#[derive(Debug, Clone, Serialize)]
pub struct OneWayJson {
    /// Messages sent.
    pub sent: u64,
    /// Messages the peer counted.
    pub received: u64,
    /// sent - received.
    pub lost: u64,
    /// Seconds.
    pub secs: f64,
    /// Messages per second.
    pub msgs_per_s: f64,
    /// Payload MB (1e6 bytes) per second.
    pub mb_per_s: f64,
}

/// Results of one size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    /// Payload bytes.
    pub size: usize,
    /// One-way run (absent with `--mode rtt`).
    pub oneway: Option<OneWayJson>,
    /// Round-trip percentiles, ns (absent with `--mode oneway`).
    pub rtt: Option<LatencySummary>,
}

/// The same-run placement probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeJson {
    /// One-cache-line round trip before the run (median, ns).
    pub before_ns: f64,
    /// After the run.
    pub after_ns: f64,
    /// Placement before (near / far / unknown).
    pub before: String,
    /// Placement after.
    pub after: String,
    /// True if the run must be voided (placement moved, or a probe was not clean).
    pub changed: bool,
}

/// The whole run (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Ring mode.
    pub ring: RingArg,
    /// What was measured.
    pub mode: BenchMode,
    /// Poll mode ("spin" / "yield").
    pub poll: String,
    /// Host and peer cores.
    pub lcores: [usize; 2],
    /// Seconds per size and mode.
    pub duration_s: f64,
    /// Per size.
    pub results: Vec<SizeResult>,
    /// Placement probe.
    pub probe: ProbeJson,
    /// Messages lost over all one-way runs.
    pub lost: u64,
    /// True if the peer exited cleanly.
    pub peer_ok: bool,
}

struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn poll_of(p: PollMode) -> Poll {
    match p {
        PollMode::Spin => Poll::Spin,
        PollMode::Yield => Poll::Yield,
    }
}

fn poll_name(p: PollMode) -> &'static str {
    match p {
        PollMode::Spin => "spin",
        PollMode::Yield => "yield",
    }
}

fn link_config(a: &RpmsgBenchArgs, window: PathBuf, role: Role) -> LinkConfig {
    let mut c = LinkConfig::new(window, a.ring.mode(), role);
    if a.poll == PollMode::Yield {
        // A shared machine: a side may be descheduled for a while.
        c.timing = Timing {
            peer_timeout: Duration::from_secs(2),
            ..Timing::default()
        };
    }
    c
}

/// Checks the options; returns (sizes, cores).
fn validate(a: &RpmsgBenchArgs) -> Result<(Vec<usize>, [usize; 2]), String> {
    let mut sizes = Vec::new();
    for s in a.sizes.split(',') {
        let s = s.trim();
        let n: usize = s
            .parse()
            .map_err(|_| format!("--sizes: {s:?} is not a number"))?;
        if n == 0 || n > MAX_SIZE {
            return Err(format!(
                "--sizes: {n} bytes is outside 1..={MAX_SIZE} (512-byte rpmsg buffers)"
            ));
        }
        sizes.push(n);
    }
    if !a.duration.is_finite() || a.duration <= 0.0 || a.duration > 3600.0 {
        return Err(format!(
            "--duration {}: must be more than 0 and at most 3600 seconds",
            a.duration
        ));
    }
    let cores = dataplane::lcore::parse_cores(&a.lcores).map_err(|e| format!("--lcores: {e}"))?;
    if cores.len() != 2 || cores[0] == cores[1] {
        return Err(format!(
            "--lcores {}: give exactly two different cores (host, peer)",
            a.lcores
        ));
    }
    if !a.dir.is_dir() {
        return Err(format!("--dir {}: not a directory", a.dir.display()));
    }
    Ok((sizes, [cores[0], cores[1]]))
}

/// Longest any single wait may take.
fn deadline(a: &RpmsgBenchArgs) -> Duration {
    Duration::from_secs_f64(a.duration + 60.0)
}

fn run_peer(a: &RpmsgBenchArgs, cores: [usize; 2]) -> Result<(), String> {
    let Some(w) = a.window.clone() else {
        return Err("--peer needs --window".into());
    };
    pin(cores[1]);
    let cfg = link_config(a, w, Role::Remote);
    let mut link =
        Link::attach_wait(&cfg, Duration::from_secs(10)).map_err(|e| format!("attach: {e}"))?;
    link.connect(Instant::now() + Duration::from_secs(10))
        .map_err(|e| format!("handshake: {e}"))?;
    // The host runs one-way and round trips for every size, then ends us.
    let total = deadline(a) * (2 * a.sizes.split(',').count() as u32 + 1);
    bench::run_peer(&mut link, poll_of(a.poll), total).map_err(|e| format!("peer: {e}"))
}

fn probe(cores: [usize; 2]) -> ProbeResult {
    placement_probe((cores[0], cores[1]), 2000)
}

fn run_host(a: &RpmsgBenchArgs, sizes: &[usize], cores: [usize; 2]) -> Result<BenchResult, String> {
    let before = probe(cores);
    let path = a
        .dir
        .join(format!("zerohop-rpmsg-bench-{}", std::process::id()));
    let cfg = link_config(a, path.clone(), Role::Host);
    let mut link = Link::create(&cfg).map_err(|e| format!("{}: {e}", path.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("finding own binary: {e}"))?;
    let child = Command::new(exe)
        .args(["rpmsg-bench", "--peer", "--window"])
        .arg(&path)
        .args(["--ring", a.ring.name(), "--poll", poll_name(a.poll)])
        .args(["--lcores", &a.lcores, "--sizes", &a.sizes])
        .args(["--duration", &a.duration.to_string()])
        .arg("--dir")
        .arg(&a.dir)
        .spawn()
        .map_err(|e| format!("starting the peer: {e}"))?;
    let mut guard = ChildGuard(Some(child));
    pin(cores[0]);
    let poll = poll_of(a.poll);
    let dl = deadline(a);
    let err = |what: &str, e: RpmsgError| format!("{what}: {e}");
    link.connect(Instant::now() + Duration::from_secs(10))
        .map_err(|e| err("handshake", e))?;
    let ep = bench::client(&mut link).map_err(|e| err("endpoint", e))?;
    let time = Limit::Time(Duration::from_secs_f64(a.duration));
    let mut results = Vec::new();
    let mut lost = 0;
    for &size in sizes {
        let oneway = if a.mode != BenchMode::Rtt {
            let r = bench::one_way(&mut link, ep, size, time, poll, dl)
                .map_err(|e| err(&format!("one-way {size} B"), e))?;
            lost += r.lost();
            Some(OneWayJson {
                sent: r.sent,
                received: r.received,
                lost: r.lost(),
                secs: r.secs,
                msgs_per_s: r.msgs_per_s(),
                mb_per_s: r.mb_per_s(),
            })
        } else {
            None
        };
        let rtt = if a.mode != BenchMode::Oneway {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                .map_err(|e| format!("histogram: {e}"))?;
            bench::round_trips(&mut link, ep, size, 1000, time, poll, dl, |ns| {
                h.saturating_record(ns)
            })
            .map_err(|e| err(&format!("round trips {size} B"), e))?;
            Some(LatencySummary::of(&h))
        } else {
            None
        };
        results.push(SizeResult { size, oneway, rtt });
    }
    bench::finish(&mut link, ep, poll, dl).map_err(|e| err("ending the peer", e))?;
    let start = Instant::now();
    let peer_ok = loop {
        let Some(c) = guard.0.as_mut() else {
            break false;
        };
        match c.try_wait() {
            Ok(Some(st)) => {
                guard.0 = None;
                break st.success();
            }
            Ok(None) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => break false,
        }
    };
    drop(link);
    let after = probe(cores);
    Ok(BenchResult {
        ring: a.ring,
        mode: a.mode,
        poll: poll_name(a.poll).into(),
        lcores: cores,
        duration_s: a.duration,
        results,
        probe: ProbeJson {
            before_ns: before.median_ns,
            after_ns: after.median_ns,
            before: before.placement.to_string(),
            after: after.placement.to_string(),
            changed: changed(&before, &after),
        },
        lost,
        peer_ok,
    })
}

fn print_human(r: &BenchResult) {
    let floor = r.probe.before_ns.min(r.probe.after_ns);
    println!(
        "rpmsg-bench: {} ring, lcores {},{}, {} poll, {} s per size",
        r.ring.name(),
        r.lcores[0],
        r.lcores[1],
        r.poll,
        r.duration_s
    );
    println!(
        "  placement probe (one-cache-line round trip): {:.0} ns ({}) before, {:.0} ns ({}) after{}",
        r.probe.before_ns,
        r.probe.before,
        r.probe.after_ns,
        r.probe.after,
        if r.probe.changed {
            "  PLACEMENT CHANGED OR UNCLEAN: run void"
        } else {
            ""
        }
    );
    println!(
        "  {:>5}  {:>10} {:>9} {:>6}  {:>7} {:>7} {:>7} {:>8} {:>8} {:>7}",
        "bytes", "M msg/s", "MB/s", "lost", "p50 ns", "p90", "p99", "p99.9", "max", "p50/fl"
    );
    for s in &r.results {
        let (m, mb, lost) =
            s.oneway
                .as_ref()
                .map_or(("-".to_string(), "-".to_string(), "-".to_string()), |o| {
                    (
                        format!("{:.2}", o.msgs_per_s / 1e6),
                        format!("{:.1}", o.mb_per_s),
                        o.lost.to_string(),
                    )
                });
        let lat = s.rtt.as_ref().map_or(vec!["-".to_string(); 6], |l| {
            vec![
                l.p50.to_string(),
                l.p90.to_string(),
                l.p99.to_string(),
                l.p999.to_string(),
                l.max.to_string(),
                format!("{:.2}x", l.p50 as f64 / floor),
            ]
        });
        println!(
            "  {:>5}  {:>10} {:>9} {:>6}  {:>7} {:>7} {:>7} {:>8} {:>8} {:>7}",
            s.size, m, mb, lost, lat[0], lat[1], lat[2], lat[3], lat[4], lat[5]
        );
    }
    if !r.peer_ok {
        println!("  the peer did not exit cleanly");
    }
}

/// Runs `zerohop rpmsg-bench`.
pub fn run(a: &RpmsgBenchArgs) -> ExitCode {
    let (sizes, cores) = match validate(a) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("zerohop rpmsg-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if a.peer {
        return match run_peer(a, cores) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zerohop rpmsg-bench (peer): {e}");
                ExitCode::from(1)
            }
        };
    }
    match run_host(a, &sizes, cores) {
        Ok(r) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("results serialise")
                );
            } else {
                print_human(&r);
            }
            if r.lost > 0 || !r.peer_ok {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("zerohop rpmsg-bench: {e}");
            ExitCode::from(1)
        }
    }
}
