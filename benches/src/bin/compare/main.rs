//! `compare`: zerohop side by side with DPDK, iceoryx2, rtrb/crossbeam and the
//! machine's floor, in one command (issue 6).
//!
//! ```text
//!  cargo run --release -p zerohop-benches --bin compare -- [--with-dpdk] [--quick]
//!      [--repeats N] [--only floor,zerohop,dpdk,iceoryx2,spsc] [--scaling]
//!      [--json FILE] [--markdown docs/BENCHMARKS.md] [--svg docs/img/compare.svg]
//!
//!  repeat r (r = 0..N): every case once, in the order below (reversed on odd r, so
//!  peers run A B then B A), each between two placement probes (cores 0 and 1):
//!    floor 1 line, floor 2 lines, floor 64 B message, iceoryx2 RTT, copy 1500/64K plain/NT,
//!    zerohop ping-pong per ring (+ DPDK ping-pong),
//!    for 64 B, 1500 B: for burst 1, 32, 256: DPDK, zerohop posted, split, packed
//!    64 KiB x burst 1/32/256 per ring, SPSC contenders
//!  a void sample (the probe changed) is run again up to VOID_RETRIES times
//!  report: medians (min-max) of valid samples, per-repeat ratios, verdicts, link model
//! ```
//!
//! Peer processes re-execute this binary: `compare --peer floor1|floor2|floormsg PATH` and
//! `compare --peer iox PREFIX`.

#[allow(dead_code)]
#[path = "../../../benches/common/mod.rs"]
mod common;
mod dpdk;
mod floor;
mod iox;
mod linkmodel;
mod peer;
mod report;
mod spsc;
mod stats;
mod zerohop;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dataplane::probe::placement_probe;
use floor::Floor;
use stats::{Sample, VOID_RETRIES};

/// Round trips per placement probe.
const PROBE_RTS: u32 = 20_000;
/// Packet sizes of the throughput figures.
const SIZES: [usize; 3] = [64, 1500, 65536];
/// Bursts of the throughput figures.
const BURSTS: [usize; 3] = [1, 32, 256];
/// Sections `--only` accepts.
const SECTIONS: [&str; 5] = ["floor", "zerohop", "dpdk", "iceoryx2", "spsc"];

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Run the DPDK section (installs `dpdk`/`dpdk-dev`, reserves huge pages).
    pub with_dpdk: bool,
    /// Short runs, one repeat (smoke test).
    pub quick: bool,
    /// Interleaved repeats.
    pub repeats: usize,
    /// Sections to run.
    pub only: Vec<String>,
    /// Run the queue-pair scaling table.
    pub scaling: bool,
    /// JSON output file ("-": stdout).
    pub json: Option<PathBuf>,
    /// Markdown file whose generated block is rewritten.
    pub markdown: Option<PathBuf>,
    /// SVG picture.
    pub svg: Option<PathBuf>,
    /// The command line as typed.
    pub command: String,
}

const USAGE: &str = "usage: compare [--with-dpdk] [--quick] [--repeats N] [--only LIST] [--scaling]
               [--json FILE|-] [--markdown FILE] [--svg FILE]
  LIST: comma-separated of floor,zerohop,dpdk,iceoryx2,spsc (default: all; dpdk only with --with-dpdk)";

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        with_dpdk: false,
        quick: false,
        repeats: 0,
        only: SECTIONS.iter().map(|s| s.to_string()).collect(),
        scaling: false,
        json: None,
        markdown: None,
        svg: None,
        command: format!(
            "cargo run --release -p zerohop-benches --bin compare --{}",
            args.iter().fold(String::new(), |a, s| a + " " + s)
        ),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--with-dpdk" => o.with_dpdk = true,
            "--quick" => o.quick = true,
            "--scaling" => o.scaling = true,
            "--repeats" => {
                o.repeats = val("--repeats")?
                    .parse()
                    .map_err(|e| format!("--repeats: {e}"))?
            }
            "--only" => {
                o.only = val("--only")?.split(',').map(str::to_owned).collect();
                if let Some(bad) = o.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    return Err(format!("--only: unknown section {bad}"));
                }
            }
            "--json" => o.json = Some(val("--json")?.into()),
            "--markdown" => o.markdown = Some(val("--markdown")?.into()),
            "--svg" => o.svg = Some(val("--svg")?.into()),
            "-h" | "--help" => return Err(String::new()),
            x => return Err(format!("unknown argument {x}")),
        }
    }
    if o.repeats == 0 {
        o.repeats = if o.quick { 1 } else { 5 };
    }
    Ok(o)
}

/// Durations and sizes of one run (quick or full).
#[derive(Debug, Clone, Copy)]
struct Budget {
    testpmd_secs: f64,
    dpdk_secs: f64,
    batches: usize,
    spsc_items: u64,
    copy_bytes: usize,
    cold_bytes: usize,
}

impl Budget {
    fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                testpmd_secs: 0.1,
                dpdk_secs: 0.2,
                batches: 5,
                spsc_items: 2_000_000,
                copy_bytes: 64 << 20,
                cold_bytes: 64 << 20,
            }
        } else {
            Budget {
                testpmd_secs: 0.25,
                dpdk_secs: 0.3,
                batches: 20,
                spsc_items: 10_000_000,
                copy_bytes: 512 << 20,
                cold_bytes: 512 << 20,
            }
        }
    }
}

/// One figure: its samples over the repeats, or why it has none.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    /// Stable key (JSON, ratios).
    pub key: String,
    /// Section: floor, zerohop, dpdk, iceoryx2, spsc.
    pub section: &'static str,
    /// Human label.
    pub label: String,
    /// Unit of the values.
    pub unit: &'static str,
    /// True if a probe change voids it (cross-core figures).
    pub cross_core: bool,
    /// Every sample, void ones included (marked).
    pub samples: Vec<Sample>,
    /// Failed attempts.
    pub errors: Vec<String>,
}

/// A case: how to measure one figure once.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Case {
    Floor(Floor),
    Copy {
        size: usize,
        nt: bool,
    },
    Iox,
    ZhPing(&'static str),
    ZhTput {
        ring: &'static str,
        size: usize,
        burst: usize,
    },
    DpdkPing,
    DpdkTput {
        size: usize,
        burst: usize,
    },
    Spsc(usize),
}

impl Case {
    fn key(self) -> String {
        match self {
            Case::Floor(Floor::OneLine) => "floor.rtt1".into(),
            Case::Floor(Floor::TwoLines) => "floor.rtt2".into(),
            Case::Floor(Floor::Message) => "floor.rttmsg".into(),
            Case::Floor(Floor::SharedMessage) => "floor.rttshared".into(),
            Case::Copy { size, nt } => {
                format!("copy.{size}.{}", if nt { "nt" } else { "plain" })
            }
            Case::Iox => "iceoryx2.rtt".into(),
            Case::ZhPing(r) => format!("zerohop.{r}.pingpong"),
            Case::ZhTput { ring, size, burst } => format!("zerohop.{ring}.{size}.b{burst}"),
            Case::DpdkPing => "dpdk.pingpong".into(),
            Case::DpdkTput { size, burst } => format!("dpdk.{size}.b{burst}"),
            Case::Spsc(i) => spsc::CONTENDERS[i].1.into(),
        }
    }

    fn section(self) -> &'static str {
        match self {
            Case::Floor(_) | Case::Copy { .. } => "floor",
            Case::Iox => "iceoryx2",
            Case::ZhPing(_) | Case::ZhTput { .. } => "zerohop",
            Case::DpdkPing | Case::DpdkTput { .. } => "dpdk",
            Case::Spsc(_) => "spsc",
        }
    }

    fn label(self) -> String {
        match self {
            Case::Floor(Floor::OneLine) => "floor: 1 cache line ping-pong, 2 processes".into(),
            Case::Floor(Floor::TwoLines) => "floor: 2 lines ping-pong, 2 processes".into(),
            Case::Floor(Floor::Message) => {
                "floor: 64 B message ping-pong (payload + tag, 2 lines in the reader's memory), 2 processes".into()
            }
            Case::Floor(Floor::SharedMessage) => {
                "floor: 64 B message ping-pong, both directions in the same 2 lines, 2 processes".into()
            }
            Case::Copy { size, nt } => format!(
                "floor: copy {} to cold memory, 1 core, {}",
                human(size),
                if nt {
                    "non-temporal (CopyEngine, sfence per 32)"
                } else {
                    "plain"
                }
            ),
            Case::Iox => "iceoryx2 0.10 pub-sub round trip, 64 B, 2 processes".into(),
            Case::ZhPing(r) => format!("zerohop {r}: 64 B ping-pong RTT (testpmd latency p50)"),
            Case::ZhTput { ring, size, burst } => {
                format!("zerohop {ring}: {} one-way, burst {burst}", human(size))
            }
            Case::DpdkPing => "DPDK vhost/virtio: 1-packet ping-pong RTT".into(),
            Case::DpdkTput { size, burst } => {
                format!(
                    "DPDK virtio txonly -> vhost rxonly: {}, burst {burst}",
                    human(size)
                )
            }
            Case::Spsc(i) => format!("SPSC {} (u64, burst 32)", spsc::CONTENDERS[i].0.name()),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Case::Floor(_) | Case::Iox | Case::ZhPing(_) | Case::DpdkPing => "ns RTT",
            Case::Copy { .. } => "GB/s",
            Case::ZhTput { size: 65536, .. } => "Gbit/s",
            Case::ZhTput { .. } | Case::DpdkTput { .. } => "Mpps",
            Case::Spsc(_) => "M items/s",
        }
    }

    fn cross_core(self) -> bool {
        !matches!(self, Case::Copy { .. })
    }
}

fn human(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// What the cases need: the zerohop binary, the DPDK session, the copy buffers.
struct Ctx {
    budget: Budget,
    zh_bin: Option<PathBuf>,
    dpdk: Option<dpdk::Session>,
    copy: Option<floor::CopyBench>,
}

fn probe() -> Option<f64> {
    let p = placement_probe((0, 1), PROBE_RTS);
    (!p.timed_out && p.pinned && p.median_ns.is_finite()).then_some(p.median_ns)
}

/// Runs `f` between two probes.
fn probed(
    rep: usize,
    cross: bool,
    f: impl FnOnce() -> Result<f64, String>,
) -> Result<Sample, String> {
    let before = probe();
    let v = f()?;
    let after = probe();
    Ok(Sample::new(rep, v, before, after, cross))
}

fn run_case(c: Case, rep: usize, ctx: &mut Ctx) -> Result<Sample, String> {
    let b = ctx.budget;
    match c {
        Case::Floor(f) => probed(rep, true, || floor::ping_pong(f, b.batches)),
        Case::Copy { size, nt } => {
            let cb = ctx
                .copy
                .get_or_insert_with(|| floor::CopyBench::new(b.cold_bytes));
            probed(rep, false, || cb.run(size, nt, b.copy_bytes))
        }
        Case::Iox => probed(rep, true, || iox::round_trip(b.batches)),
        Case::ZhPing(ring) | Case::ZhTput { ring, .. } => {
            let bin = ctx.zh_bin.as_ref().ok_or("no zerohop binary")?;
            let (mode, size, burst) = match c {
                Case::ZhTput { size, burst, .. } => ("rxonly", size, burst),
                _ => ("latency", 64, 1),
            };
            let r = zerohop::run(bin, ring, mode, size, burst, b.testpmd_secs)?;
            let v = match c {
                Case::ZhPing(_) => r.p50_ns,
                Case::ZhTput { size: 65536, .. } => r.gbps,
                _ => r.mpps,
            };
            let mut s = Sample::new(rep, v, r.probe_before, r.probe_after, true)
                .with("gbps", r.gbps)
                .with("mpps", r.mpps)
                .with("p99_ns", r.p99_ns);
            if matches!(c, Case::ZhPing(_)) && r.mpps > 0.0 {
                // One packet in flight: the mean round trip is the run's time per packet.
                s = s.with("mean_rtt_ns", 1e3 / r.mpps);
            }
            if let Some(x) = r.reads {
                s = s.with("remote_reads_per_pkt", x);
            }
            if let Some(x) = r.writes {
                s = s.with("remote_writes_per_pkt", x);
            }
            Ok(s)
        }
        Case::DpdkPing => {
            let d = ctx.dpdk.as_mut().ok_or("DPDK not running")?;
            probed(rep, true, || d.ping_pong(b.dpdk_secs))
        }
        Case::DpdkTput { size, burst } => {
            let d = ctx.dpdk.as_mut().ok_or("DPDK not running")?;
            probed(rep, true, || d.throughput(size, burst, b.dpdk_secs))
        }
        Case::Spsc(i) => probed(rep, true, || spsc::run(spsc::CONTENDERS[i].0, b.spsc_items)),
    }
}

/// The cases of one repeat, in interleaved order (peers next to each other).
fn schedule(o: &Opts, with_dpdk: bool, with_zh: bool) -> Vec<Case> {
    let on = |s: &str| o.only.iter().any(|x| x == s);
    let zh = on("zerohop") && with_zh;
    let dp = on("dpdk") && with_dpdk;
    let mut v = Vec::new();
    if on("floor") {
        v.extend(Floor::ALL.map(Case::Floor));
    }
    if on("iceoryx2") {
        v.push(Case::Iox);
    }
    if dp {
        v.push(Case::DpdkPing);
    }
    if zh {
        v.extend(zerohop::RINGS.map(Case::ZhPing));
    }
    if on("floor") {
        for size in [1500, 65536] {
            for nt in [false, true] {
                v.push(Case::Copy { size, nt });
            }
        }
    }
    for size in SIZES {
        for burst in BURSTS {
            if dp && size <= 1500 {
                v.push(Case::DpdkTput { size, burst });
            }
            if zh {
                for ring in zerohop::RINGS {
                    v.push(Case::ZhTput { ring, size, burst });
                }
            }
        }
    }
    if on("spsc") {
        v.extend((0..spsc::CONTENDERS.len()).map(Case::Spsc));
    }
    v
}

/// Everything one run produced.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    /// Command line.
    pub command: String,
    /// Machine description.
    pub machine: report::Machine,
    /// Interleaved repeats.
    pub repeats: usize,
    /// Quick mode.
    pub quick: bool,
    /// Every figure.
    pub figures: Vec<Figure>,
    /// What was skipped, and why.
    pub skipped: Vec<String>,
    /// Notes (DPDK set-up, clean-up).
    pub notes: Vec<String>,
    /// Queue-pair scaling rows (queue pairs, Mpps) or why not.
    pub scaling: Vec<(u16, Result<f64, String>)>,
    /// Wall time of the whole command, s.
    pub wall_s: f64,
}

fn scaling(o: &Opts, ctx: &Ctx, skipped: &mut Vec<String>) -> Vec<(u16, Result<f64, String>)> {
    let mut rows = Vec::new();
    if !o.scaling {
        skipped.push("scaling table (1/2/4/8 queue pairs): not asked for (--scaling)".into());
        return rows;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(bin) = ctx.zh_bin.as_ref() else {
        skipped.push("scaling table: no zerohop binary".into());
        return rows;
    };
    for n in [1u16, 2, 4, 8] {
        if 2 * n as usize > cores {
            skipped.push(format!(
                "scaling, {n} queue pairs: needs {} cores (one lcore pair each), this machine has {cores}",
                2 * n
            ));
            continue;
        }
        let lc = format!("0-{}", 2 * n - 1);
        let out = zerohop::run_with_deadline(
            std::process::Command::new(bin)
                .args(["testpmd", "--json", "-l", &lc, "--forward-mode", "rxonly"])
                .args(["--rxq", &n.to_string(), "--txq", &n.to_string()])
                .args(["--duration", "1"]),
            std::time::Duration::from_secs(40),
        );
        let r = out.and_then(|s| {
            serde_json::from_str::<serde_json::Value>(s.trim())
                .map_err(|e| e.to_string())?
                .get("mpps")
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| "no mpps".to_owned())
        });
        rows.push((n, r));
    }
    rows
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--peer") {
        return peer_dispatch(&args[1..]);
    }
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("compare: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let out = run(&o);
    report::emit(&o, &out)
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Relaxed: a flag polled between cases; nothing else rides on it.
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Ctrl-C / SIGTERM: finish the current case, then clean up and report what ran.
fn install_signals() {
    let h: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, h as libc::sighandler_t) };
    }
}

fn interrupted() -> bool {
    // Relaxed: see on_signal.
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

fn run(o: &Opts) -> Outcome {
    install_signals();
    let t0 = Instant::now();
    let load_before = report::loadavg();
    let cpu_busy_before = report::cpu_busy(Duration::from_secs(1));
    let mut skipped = Vec::new();
    let mut notes = Vec::new();
    let on = |s: &str| o.only.iter().any(|x| x == s);
    let mut ctx = Ctx {
        budget: Budget::new(o.quick),
        zh_bin: None,
        dpdk: None,
        copy: None,
    };
    if on("zerohop") || o.scaling {
        match zerohop::locate() {
            Ok(p) => ctx.zh_bin = Some(p),
            Err(e) => skipped.push(format!("zerohop section: {e}")),
        }
    }
    if on("dpdk") && !o.with_dpdk {
        skipped.push("DPDK section: not asked for (pass --with-dpdk; it installs Debian's dpdk and dpdk-dev if missing and reserves 512 x 2 MiB huge pages for the run)".into());
    } else if on("dpdk") {
        let mut log = Vec::new();
        let r = dpdk::ensure_installed(&mut log).and_then(|bin| dpdk::Session::start(&bin));
        notes.extend(log);
        match r {
            Ok(s) => {
                notes.push(format!("DPDK: {}", s.setup));
                let (a, b) = s.pids();
                eprintln!("compare: DPDK testpmd running, pids {a:?} (vhost) {b:?} (virtio)");
                ctx.dpdk = Some(s);
            }
            Err(e) => skipped.push(format!("DPDK section: {e}")),
        }
    }
    let cases = schedule(o, ctx.dpdk.is_some(), ctx.zh_bin.is_some());
    let mut figures: Vec<Figure> = cases
        .iter()
        .map(|&c| Figure {
            key: c.key(),
            section: c.section(),
            label: c.label(),
            unit: c.unit(),
            cross_core: c.cross_core(),
            samples: Vec::new(),
            errors: Vec::new(),
        })
        .collect();
    for rep in 0..o.repeats {
        if interrupted() {
            break;
        }
        eprintln!(
            "compare: repeat {}/{} ({} cases, {:.0} s so far)",
            rep + 1,
            o.repeats,
            cases.len(),
            t0.elapsed().as_secs_f64()
        );
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            if interrupted() {
                break;
            }
            for attempt in 0..=VOID_RETRIES {
                match run_case(cases[i], rep, &mut ctx) {
                    Ok(s) => {
                        let void = s.void;
                        figures[i].samples.push(s);
                        if !void {
                            break;
                        }
                    }
                    Err(e) => {
                        figures[i].errors.push(format!("repeat {rep}: {e}"));
                        if attempt == VOID_RETRIES {
                            break;
                        }
                    }
                }
            }
        }
    }
    if interrupted() {
        skipped.push(format!(
            "interrupted (SIGINT/SIGTERM) after {:.0} s: the cases after that point did not run",
            t0.elapsed().as_secs_f64()
        ));
    }
    let scal = if interrupted() {
        Vec::new()
    } else {
        scaling(o, &ctx, &mut skipped)
    };
    if let Some(d) = ctx.dpdk.take() {
        drop(d);
        notes.push(
            "DPDK: both testpmd processes stopped by PID; socket, runtime dirs and huge page files removed; huge page count and mounts restored".into(),
        );
    }
    for s in SECTIONS {
        if !on(s) {
            skipped.push(format!("{s} section: not in --only"));
        }
    }
    let mut machine = report::Machine::detect();
    machine.load_before = load_before;
    machine.cpu_busy_before = cpu_busy_before;
    machine.load_after = report::loadavg();
    Outcome {
        command: o.command.clone(),
        machine,
        repeats: o.repeats,
        quick: o.quick,
        figures,
        skipped,
        notes,
        scaling: scal,
        wall_s: t0.elapsed().as_secs_f64(),
    }
}

fn peer_dispatch(args: &[String]) -> ExitCode {
    let role = args.first().map(String::as_str);
    let floor = role.and_then(Floor::from_peer_arg);
    let r: Result<(), String> = match (role, floor, args.get(1)) {
        (_, Some(f), Some(p)) => floor::peer_main(f, p),
        (Some("iox"), _, Some(p)) => iox::peer_main(p).map_err(|e| e.to_string()),
        _ => Err(format!("bad peer arguments {args:?}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("ERROR {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_and_schedules() {
        let o = parse(&args("--quick --only spsc,floor --json -")).unwrap();
        assert_eq!(o.repeats, 1);
        let c = schedule(&o, false, true);
        assert!(c.iter().all(|c| matches!(c.section(), "floor" | "spsc")));
        assert!(c.contains(&Case::Floor(Floor::OneLine)));
        let o = parse(&args("--with-dpdk")).unwrap();
        assert_eq!(o.repeats, 5);
        let c = schedule(&o, true, true);
        // DPDK sits right before the zerohop cases of the same configuration.
        let d = c
            .iter()
            .position(|&x| {
                x == Case::DpdkTput {
                    size: 64,
                    burst: 32,
                }
            })
            .unwrap();
        assert_eq!(
            c[d + 1],
            Case::ZhTput {
                ring: "posted",
                size: 64,
                burst: 32
            }
        );
        assert!(!c
            .iter()
            .any(|x| matches!(x, Case::DpdkTput { size: 65536, .. })));
        assert!(parse(&args("--only nope")).is_err());
        assert!(parse(&args("--bogus")).is_err());
    }
}
