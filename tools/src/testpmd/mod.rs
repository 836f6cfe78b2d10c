//! `zerohop testpmd`: DPDK testpmd habits over a zerohop port.
//!
//! ```text
//!  zerohop testpmd (parent, --role both)            zerohop testpmd --child (peer)
//!  Port::create  frontend  --- link window --->  Port::attach  backend
//!  gen lcores (gen.rs): seq + TSC stamp, check     fwd lcores: ENGINE (fwd/*.rs)
//!  main: poll_control, live stats, phases  <-stdin/stdout->  main: poll_control
//!                    \                                    /
//!                     +-- /dev/shm/zerohop-stats-<instance> (statsw.rs) --+
//! ```
//!
//! Run phases: RUN (for `--duration`), DRAIN (generators stop; round trips in flight
//! come back), then the parent writes `stop <sent per queue>` to the peer's stdin; the
//! peer drains to those counts (rxonly), stops, and prints one JSON report; for
//! txonly/flowgen the parent then drains to the peer's sent counts. The link window and
//! the stats window are removed when their owners drop (every exit path).

pub mod fwd;
pub(crate) mod gen;
pub mod pkt;
pub mod statsw;

use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use dataplane::lcore::{Backoff, Lcores, Poller};
use dataplane::pmd::window::WindowSpec;
use dataplane::port::{LinkChange, Port, PortConfig, QueueHandle, RingKind, Role, MAX_PORT_QUEUES};
use dataplane::stats::LcoreStats;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::demo::PollMode;
use crate::latency::{self, LatencySummary};
use fwd::{FwdCtx, PHASE_DRAIN, PHASE_RUN};
use gen::{GenKind, GenResult};
use pkt::Checker;
use statsw::StatsWindow;

/// Forwarding modes (`--forward-mode`), one engine each in `fwd/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FwdMode {
    /// Send every packet back unchanged.
    Io,
    /// Rewrite the MAC addresses, send back.
    Mac,
    /// Swap the MAC addresses, send back.
    Macswap,
    /// The peer receives and checks; the generator only sends.
    Rxonly,
    /// The peer generates; this side receives and checks.
    Txonly,
    /// The peer generates over many flows; this side receives and checks.
    Flowgen,
    /// Send every packet back through the zero-copy path.
    Echo,
    /// Ping-pong, one packet in flight: round-trip latency.
    Latency,
}

impl FwdMode {
    /// The mode's name (its engine's name).
    pub fn name(self) -> &'static str {
        match self {
            FwdMode::Io => "io",
            FwdMode::Mac => "mac",
            FwdMode::Macswap => "macswap",
            FwdMode::Rxonly => "rxonly",
            FwdMode::Txonly => "txonly",
            FwdMode::Flowgen => "flowgen",
            FwdMode::Echo => "echo",
            FwdMode::Latency => "latency",
        }
    }

    fn gen_kind(self) -> GenKind {
        match self {
            FwdMode::Rxonly => GenKind::Stream,
            FwdMode::Txonly | FwdMode::Flowgen => GenKind::Sink,
            FwdMode::Latency => GenKind::PingPong,
            _ => GenKind::RoundTrip,
        }
    }
}

/// `--ring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RingArg {
    /// zerohop's posted-write ring (no remote reads).
    Posted,
    /// virtio 1.x split virtqueues.
    Split,
    /// virtio 1.x packed virtqueues.
    Packed,
}

impl RingArg {
    fn kind(self) -> RingKind {
        match self {
            RingArg::Posted => RingKind::Posted,
            RingArg::Split => RingKind::Split,
            RingArg::Packed => RingKind::Packed,
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

/// `--role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Create the window, be the frontend and the generator (the peer runs elsewhere).
    Frontend,
    /// Attach to the window, be the backend and run the forwarding engine.
    Backend,
    /// Both, in two processes on this host (the parent re-executes itself as the peer).
    Both,
}

const EXAMPLES: &str = "Examples:
  zerohop testpmd                                    # default: throughput + latency summary
  zerohop testpmd --forward-mode io --duration 5     # round trips through the peer
  zerohop testpmd --forward-mode rxonly --ring split --burst 64 --txpkts 1500
  zerohop testpmd --forward-mode latency --hgrm lat.hgrm --latency-json lat.json
  zerohop testpmd -l 0-3 --rxq 2 --txq 2 --forward-mode macswap --stats-period 1
  zerohop testpmd --forward-mode txonly --json > run.json
  zerohop testpmd --role frontend --window /dev/shm/zh-a --forward-mode io   # this host
  zerohop testpmd --role backend  --window /dev/shm/zh-a --forward-mode io   # the peer";

/// `zerohop testpmd` arguments.
#[derive(Args, Debug, Clone)]
#[command(after_help = EXAMPLES)]
pub struct TestpmdArgs {
    /// Cores (DPDK -l syntax: 0-3,6). Queue q's generator lcore runs on the (q mod n)-th
    /// core, its forwarding lcore on the ((queues + q) mod n)-th.
    #[arg(short = 'l', long = "lcores", default_value = "0,1")]
    pub lcores: String,
    /// Packets per burst (1 to 512).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub burst: u32,
    /// Packet size in bytes (32 to 65536: header, sequence number, timestamp, pattern).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(32..=65536))]
    pub txpkts: u32,
    /// Receive queues (1 to 31 posted, 21 split or packed; a port has queue pairs:
    /// max(rxq, txq) pairs are used).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_PORT_QUEUES as i64))]
    pub rxq: u16,
    /// Transmit queues (see --rxq).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_PORT_QUEUES as i64))]
    pub txq: u16,
    /// Receive ring size (a power of two, 2 to 32768; the port uses max(rxd, txd)).
    #[arg(long, default_value_t = 256)]
    pub rxd: u32,
    /// Transmit ring size (see --rxd).
    #[arg(long, default_value_t = 256)]
    pub txd: u32,
    /// What the forwarding side does.
    #[arg(long, value_enum, default_value_t = FwdMode::Io)]
    pub forward_mode: FwdMode,
    /// Print per-queue rates every SECS seconds (0: off).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub stats_period: f64,
    /// Ring mode.
    #[arg(long, value_enum, default_value_t = RingArg::Posted)]
    pub ring: RingArg,
    /// Which side(s) this process runs.
    #[arg(long, value_enum, default_value_t = RoleArg::Both)]
    pub role: RoleArg,
    /// The link window: a /dev/shm path or any window spec (shm:PATH, huge:..., pci:...).
    /// Default: a fresh `/dev/shm/zerohop-testpmd-<pid>`, removed afterwards.
    #[arg(long, value_name = "PATH|SPEC")]
    pub window: Option<String>,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Print one JSON object at the end instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Write the latency distribution (.hgrm, microseconds) here.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Write the latency percentiles (JSON, ns) here.
    #[arg(long, value_name = "FILE")]
    pub latency_json: Option<PathBuf>,
    /// How an idle lcore waits: spin (pinned busy-poll) or yield (shared machines, tests).
    #[arg(long, value_enum, default_value_t = PollMode::Spin)]
    pub poll: PollMode,
    /// Instance name for `zerohop stats` (default: this process's pid).
    #[arg(long, value_parser = parse_instance)]
    pub instance: Option<String>,
    /// Seconds to wait for the peer to finish the handshake (and, for a backend, for
    /// the frontend's window to appear) before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_secs)]
    pub handshake_timeout: f64,
    /// Attach to a window file owned by another user or writable by group or others
    /// (refused by default: whoever can write the file can write the rings).
    #[arg(long)]
    pub allow_foreign: bool,
    /// Flows for flowgen.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub flows: u16,
    /// Exact-count run between two independently started sides (`--role frontend` /
    /// `backend`, modes rxonly, txonly, flowgen): the generating side sends exactly N
    /// packets per queue, then waits for the peer to leave; the checking side stops
    /// once it has N per queue (or when the peer leaves); both print `exact` counts.
    /// `--duration` becomes the deadline.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub packets: Option<u64>,
    /// Seconds without a peer heartbeat before the peer counts as lost (default 0.1,
    /// 2 with `--poll yield`; raise it for emulated guests).
    #[arg(long, value_name = "SECS")]
    pub peer_timeout: Option<f64>,
    /// Internal: run as the peer process of a --role both parent.
    #[arg(long, hide = true)]
    pub child: bool,
    /// Internal: the parent's stats window.
    #[arg(long, hide = true)]
    pub stats_window: Option<PathBuf>,
    /// Internal: the parent's TSC calibration.
    #[arg(long, hide = true)]
    pub ns_per_tick: Option<f64>,
}

// ---- Ctrl-C -------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    // Relaxed: a flag polled by the main loop; nothing else is published with it.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn install_sigint() {
    let h: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe { libc::signal(libc::SIGINT, h as libc::sighandler_t) };
}

fn interrupted() -> bool {
    // Relaxed: see on_sigint.
    INTERRUPTED.load(Ordering::Relaxed)
}

// ---- results --------------------------------------------------------------------------

/// Per-queue counts from one side.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueueReport {
    /// Packets sent.
    pub sent: u64,
    /// Packets received (and checked, where this side checks).
    pub received: u64,
    /// Packets received out of order.
    pub reordered: u64,
    /// Packets whose header or payload was wrong.
    pub corrupted: u64,
    /// Packets dropped (not accepted before the run ended).
    pub drops: u64,
    /// Queue errors.
    pub errors: u64,
}

/// What the peer process reports (one JSON line on stdout).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerReport {
    /// One entry per queue.
    pub queues: Vec<QueueReport>,
    /// Latency histogram (V2, hex) of what the peer checked (rxonly).
    pub hist_hex: String,
    /// An error that stopped the peer.
    pub error: Option<String>,
    /// `--packets` runs: the exact counts of this side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<ExactReport>,
    /// The first queue error (typed: `PortError` / `QueueError` display), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_queue_error: Option<String>,
    /// Queue errors that were peer protocol violations (`QueueError::is_peer_violation`:
    /// garbage in the rings); each broke the queue and reset the link.
    #[serde(default)]
    pub violations: u64,
    /// The first of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_violation: Option<String>,
    /// Times the link went down after being up (peer lost, restarted, reset, broken).
    #[serde(default)]
    pub link_downs: u64,
    /// Why the link is down at the end (`DownReason`), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_down_reason: Option<String>,
}

/// The counts of an exact-count (`--packets N`) run, as one side saw them. The side
/// that checks (`checked_here`) has the verdict: `lost = expected - received`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactReport {
    /// `--packets` (per queue).
    pub per_queue: u64,
    /// Packets the run was to move: per_queue x queues.
    pub expected: u64,
    /// True if this side generated the packets.
    pub generated_here: bool,
    /// True if this side received and checked them (the other side's report has 0s).
    pub checked_here: bool,
    /// Packets this side sent.
    pub sent: u64,
    /// Packets this side received and checked.
    pub received: u64,
    /// expected - received (checking side; 0 on the generating side).
    pub lost: u64,
    /// Packets received out of order.
    pub reordered: u64,
    /// Packets with a wrong header or payload.
    pub corrupted: u64,
    /// Queue errors (typed ring errors: peer protocol violations and the like).
    pub errors: u64,
    /// True if the peer left (link down) before this side was done.
    pub peer_left_early: bool,
}

impl ExactReport {
    fn new(per_queue: u64, queues: usize, gen_here: bool, v: &[QueueReport]) -> ExactReport {
        let sum = |f: fn(&QueueReport) -> u64| v.iter().map(f).sum::<u64>();
        let expected = per_queue.saturating_mul(queues as u64);
        let received = sum(|q| q.received);
        ExactReport {
            per_queue,
            expected,
            generated_here: gen_here,
            checked_here: !gen_here,
            sent: sum(|q| q.sent),
            received,
            lost: if gen_here {
                0
            } else {
                expected.saturating_sub(received)
            },
            reordered: sum(|q| q.reordered),
            corrupted: sum(|q| q.corrupted),
            errors: sum(|q| q.errors),
            peer_left_early: false,
        }
    }

    /// True if this side's part of the run is clean: the generator sent everything,
    /// the checker received everything in order and intact.
    pub fn clean(&self) -> bool {
        let mine = if self.generated_here {
            self.sent == self.expected
        } else {
            self.received == self.expected && self.lost == 0
        };
        mine && self.reordered == 0 && self.corrupted == 0 && !self.peer_left_early
    }
}

/// The `--json` object.
#[derive(Debug, Clone, Serialize)]
pub struct TestpmdResult {
    /// Forwarding mode.
    pub forward_mode: FwdMode,
    /// Ring mode.
    pub ring: RingArg,
    /// Queue pairs.
    pub queues: u16,
    /// Burst.
    pub burst: u32,
    /// Packet size (bytes).
    pub pkt_size: u32,
    /// Ring size.
    pub ring_size: u32,
    /// Seconds of traffic.
    pub duration_s: f64,
    /// Packets that completed the mode's path (returned, or received by the checking side).
    pub packets: u64,
    /// Packets the sending side sent.
    pub sent: u64,
    /// sent - packets (after the drain).
    pub lost: u64,
    /// Packets received out of order.
    pub reordered: u64,
    /// Packets with a bad header or payload.
    pub corrupted: u64,
    /// Packets dropped by a forwarding or generating lcore at the end of the run.
    pub drops: u64,
    /// Queue errors.
    pub errors: u64,
    /// Million packets per second.
    pub mpps: f64,
    /// Packet gigabits per second.
    pub gbps: f64,
    /// Remote (peer-memory) reads per packet on the mode's path.
    pub remote_reads_per_pkt: Option<f64>,
    /// Remote writes per packet on the mode's path.
    pub remote_writes_per_pkt: Option<f64>,
    /// Where the remote figures come from.
    pub remote_access_note: String,
    /// Same-run placement probe before the run: one-cache-line ping-pong RTT (ns)
    /// between the first two cores of --lcores.
    pub placement_probe_ns: Option<f64>,
    /// The probe after the run.
    pub placement_probe_after_ns: Option<f64>,
    /// True if the probe says the placement changed during the run.
    pub placement_changed: bool,
    /// "round_trip" (io, mac, macswap, echo, latency) or "one_way" (rxonly, txonly, flowgen).
    pub latency_kind: &'static str,
    /// Latency percentiles (ns).
    pub latency_ns: LatencySummary,
    /// Per queue, generator side.
    pub gen_queues: Vec<QueueReport>,
    /// Per queue, forwarding side.
    pub fwd_queues: Vec<QueueReport>,
    /// An error, if the run did not complete cleanly.
    pub error: Option<String>,
    /// `--packets` runs: the exact counts of this side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<ExactReport>,
    #[serde(skip)]
    hist: Option<Histogram<u64>>,
}

fn encode_hist(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    let _ = V2Serializer::new().serialize(h, &mut buf);
    buf.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_hist(s: &str) -> Option<Histogram<u64>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    Deserializer::new().deserialize(&mut &bytes?[..]).ok()
}

/// Remote accesses per packet, measured in this run before the timed phase: a short
/// duplex run of the same ring mode and packet size between two threads, with every
/// area a side reaches through the link wrapped in `pmd::window::Counted`
/// (`pmd::queue::measure`). Directions: the generator is the frontend, so gen -> fwd
/// is frontend -> backend.
fn remote_per_pkt(ring: RingArg, kind: GenKind, size: u32) -> (Option<f64>, Option<f64>, String) {
    use pmd::queue::measure::{remote_accesses, MeasuredRing};
    const PACKETS: u64 = 20_000;
    let measured = match ring {
        RingArg::Posted => MeasuredRing::Posted,
        RingArg::Split => MeasuredRing::Split,
        RingArg::Packed => MeasuredRing::Packed,
    };
    // The measuring layout has 2 KiB buffers (8 bytes of them a virtio header).
    let probe_size = (size as usize).min(2040);
    let m = match remote_accesses(measured, probe_size, PACKETS) {
        Ok(m) => m,
        Err(e) => return (None, None, format!("not measured: {e}")),
    };
    let (fb, bf) = (m.to_backend, m.to_frontend);
    let (r, w) = match kind {
        GenKind::Stream => (fb.reads, fb.writes),
        GenKind::Sink => (bf.reads, bf.writes),
        GenKind::RoundTrip | GenKind::PingPong => (fb.reads + bf.reads, fb.writes + bf.writes),
    };
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    (
        Some(round(r)),
        Some(round(w)),
        format!(
            "measured in this run: {PACKETS} packets of {probe_size} B each way between two threads over a scratch /dev/shm window, \
             remote areas wrapped in pmd::window::Counted; per packet on the mode's path ({})",
            match kind {
                GenKind::Stream => "gen->fwd",
                GenKind::Sink => "fwd->gen",
                _ => "gen->fwd->gen, both directions",
            }
        ),
    )
}

// ---- shared helpers -----------------------------------------------------------------

/// Kills and reaps the peer on every exit path.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn poller(p: PollMode) -> Poller {
    Poller {
        backoff: match p {
            PollMode::Spin => Backoff::None,
            PollMode::Yield => Backoff::Yield { after: 64 },
        },
        stop_check_every: 64,
    }
}

fn ring_size(a: &TestpmdArgs) -> Result<u32, String> {
    for (what, n) in [("--rxd", a.rxd), ("--txd", a.txd)] {
        if !n.is_power_of_two() || !(2..=32768).contains(&n) {
            return Err(format!(
                "{what} {n}: the ring size must be a power of two from 2 to 32768"
            ));
        }
    }
    Ok(a.rxd.max(a.txd))
}

/// An instance name: it becomes part of a /dev/shm file name, so 1 to 64 of
/// `A-Z a-z 0-9 . _ -`, not starting with a dot (no `/`, no `..`).
fn parse_instance(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: 1 to 64 of A-Z a-z 0-9 . _ - (not starting with a dot); it names a /dev/shm file"
        ))
    }
}

/// A positive, finite number of seconds (at most a day).
fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s}: want seconds, more than 0 and at most 86400")),
    }
}

fn port_config(a: &TestpmdArgs, spec: WindowSpec, role: Role) -> Result<PortConfig, String> {
    let mut c = PortConfig::new(spec, role);
    c.ring = a.ring.kind();
    c.queues = a.rxq.max(a.txq);
    if c.queues > c.ring.max_queues() {
        return Err(format!(
            "--rxq/--txq {}: a {:?} port has at most {} queue pairs",
            c.queues,
            c.ring,
            c.ring.max_queues()
        ));
    }
    c.ring_size = ring_size(a)?;
    c.buf_size = (a.txpkts + 64).next_multiple_of(64).max(2048);
    c.burst = a.burst as usize;
    if a.poll == PollMode::Yield {
        // A shared machine (tests, CI): a side may be descheduled for a while; do not
        // call the peer lost after the default 100 ms.
        c.timing.peer_timeout = Duration::from_secs(2);
    }
    let secs = |what: &str, s: f64| {
        Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{what} {s}: must be a positive number of seconds"))
    };
    if let Some(t) = a.peer_timeout {
        c.timing.peer_timeout = secs("--peer-timeout", t)?;
    }
    c.handshake_timeout = secs("--handshake-timeout", a.handshake_timeout)?;
    c.allow_foreign = a.allow_foreign;
    if a.packets.is_some() {
        if a.role == RoleArg::Both {
            return Err("--packets is for two independently started sides: --role frontend on one, --role backend on the other".into());
        }
        if !matches!(
            a.forward_mode,
            FwdMode::Rxonly | FwdMode::Txonly | FwdMode::Flowgen
        ) {
            return Err(format!(
                "--packets works with --forward-mode rxonly, txonly or flowgen, not {}",
                a.forward_mode.name()
            ));
        }
    }
    Ok(c)
}

fn window_spec(a: &TestpmdArgs) -> Result<(WindowSpec, String), String> {
    match &a.window {
        Some(w) => {
            let spec: WindowSpec = w.parse().map_err(|e| format!("--window {w}: {e}"))?;
            if let WindowSpec::Shm(p) = &spec {
                if let Some(d) = p.parent() {
                    if !d.as_os_str().is_empty() && !d.is_dir() {
                        return Err(format!(
                            "--window {w}: directory {} does not exist",
                            d.display()
                        ));
                    }
                }
            }
            Ok((spec, w.clone()))
        }
        None => {
            let p = format!("/dev/shm/zerohop-testpmd-{}", std::process::id());
            Ok((WindowSpec::Shm(PathBuf::from(&p)), p))
        }
    }
}

/// The main thread's wait: polls the control plane every millisecond, prints live
/// stats, returns at `until`, on Ctrl-C, or when `done()` says so. In a `--packets`
/// run the link going down (the peer left) also ends the wait, and is returned as
/// `Err` for the caller to judge (expected once this side is done).
fn tend(
    port: &mut Port,
    until: Instant,
    a: &TestpmdArgs,
    sw: Option<&StatsWindow>,
    last: &mut (Instant, Vec<dataplane::stats::Counters>),
    done: impl FnMut() -> bool,
) -> Option<String> {
    match tend_exact(port, until, a, sw, last, done) {
        Ok(e) => e,
        Err(down) => Some(down),
    }
}

/// [`tend`], returning `Err(why)` if a `--packets` run saw the link go down.
fn tend_exact(
    port: &mut Port,
    until: Instant,
    a: &TestpmdArgs,
    sw: Option<&StatsWindow>,
    last: &mut (Instant, Vec<dataplane::stats::Counters>),
    mut done: impl FnMut() -> bool,
) -> Result<Option<String>, String> {
    let mut err = None;
    while Instant::now() < until && !done() {
        if !a.child && interrupted() {
            break;
        }
        match port.poll_control(Instant::now()) {
            Ok(LinkChange::Down(r)) if a.packets.is_some() => {
                return Err(format!("link down: {r:?}"))
            }
            Ok(LinkChange::Down(r)) if err.is_none() => err = Some(format!("link down: {r:?}")),
            Err(e) if err.is_none() => err = Some(format!("control plane: {e}")),
            _ => {}
        }
        if let Some(sw) = sw {
            if a.stats_period > 0.0 && last.0.elapsed().as_secs_f64() >= a.stats_period {
                let now = sw.read();
                let secs = last.0.elapsed().as_secs_f64();
                print!(
                    "{}",
                    statsw::format_block(
                        &format!("{} {} ", a.forward_mode.name(), a.ring.name()),
                        sw.queues,
                        Some(&last.1),
                        &now,
                        secs
                    )
                );
                *last = (Instant::now(), now);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(err)
}

type Slots<T> = Arc<Mutex<Vec<Option<T>>>>;

fn take<T>(s: &Slots<T>, i: usize) -> Option<T> {
    s.lock().ok()?.get_mut(i)?.take()
}

// ---- the parent / frontend side -------------------------------------------------------

/// Runs one testpmd configuration as the generator side (spawning the peer for
/// `--role both`) and returns the result.
pub fn run_generator(a: &TestpmdArgs) -> Result<TestpmdResult, String> {
    let cores = dataplane::lcore::parse_cores(&a.lcores).map_err(|e| format!("--lcores: {e}"))?;
    let nq = a.rxq.max(a.txq) as usize;
    let (spec, spec_text) = window_spec(a)?;
    let cfg = port_config(a, spec, Role::Frontend)?;
    let secs_ok = |v: f64| v.is_finite() && v >= 0.0; // also refuses NaN
    if !secs_ok(a.stats_period) || !secs_ok(a.duration) {
        return Err("--duration and --stats-period must be 0 or more seconds".into());
    }
    let ns_per_tick = pkt::calibrate();
    let probe = |c: &[usize]| {
        (c.len() >= 2 && c[0] != c[1])
            .then(|| dataplane::probe::placement_probe((c[0], c[1]), 20_000))
    };
    let before = probe(&cores);
    let mut port = Port::create(&cfg).map_err(|e| format!("--window {spec_text}: {e}"))?;
    if a.role == RoleArg::Frontend {
        // A peer started by hand (or by a harness watching this log) attaches now.
        eprintln!(
            "zerohop: testpmd: window {spec_text} ready ({} ring, {nq} queue pair(s)); waiting for the peer",
            a.ring.name()
        );
    }
    let instance = a
        .instance
        .clone()
        .unwrap_or_else(|| std::process::id().to_string());
    let sw = StatsWindow::create(&statsw::path_of(&instance), nq)?;

    let mut guard = ChildGuard(None);
    let mut child_in: Option<ChildStdin> = None;
    let (rep_tx, rep_rx) = mpsc::channel::<String>();
    if a.role == RoleArg::Both {
        let exe = std::env::current_exe().map_err(|e| format!("finding own binary: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args(["testpmd", "--child", "--role", "backend"])
            .args(["--window", &spec_text])
            .args(["--lcores", &a.lcores])
            .args(["--forward-mode", a.forward_mode.name()])
            .args(["--burst", &a.burst.to_string()])
            .args(["--txpkts", &a.txpkts.to_string()])
            .args(["--rxq", &a.rxq.to_string(), "--txq", &a.txq.to_string()])
            .args(["--flows", &a.flows.to_string()])
            .args(["--duration", &(a.duration + 60.0).to_string()])
            .args(["--ns-per-tick", &ns_per_tick.to_string()])
            .arg("--stats-window")
            .arg(&sw.path)
            .args([
                "--poll",
                if a.poll == PollMode::Spin {
                    "spin"
                } else {
                    "yield"
                },
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("spawning the peer: {e}"))?;
        child_in = child.stdin.take();
        let out = child.stdout.take().ok_or("peer has no stdout")?;
        guard.0 = Some(child);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if rep_tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    port.start().map_err(|e| format!("link start: {e}"))?;

    // Lcores: one generator per queue.
    let handles: Slots<QueueHandle> = Arc::new(Mutex::new(
        (0..nq as u16).map(|q| port.queue(q).ok()).collect(),
    ));
    let tx_group = sw.group(1)?;
    let tx_writers: Slots<LcoreStats> = Arc::new(Mutex::new(
        (0..nq).map(|q| tx_group.writer(q).ok()).collect(),
    ));
    let phase = Arc::new(AtomicU32::new(PHASE_RUN));
    let expected: Arc<[AtomicU64]> = (0..nq).map(|_| AtomicU64::new(u64::MAX)).collect();
    let quiet: Arc<[AtomicBool]> = (0..nq).map(|_| AtomicBool::new(false)).collect();
    let gcfg = gen::GenCfg {
        kind: a.forward_mode.gen_kind(),
        size: a.txpkts as usize,
        burst: a.burst as usize,
        window: ring_size(a)? as u64,
        ns_per_tick,
        limit: a.packets.unwrap_or(u64::MAX),
    };
    if let Some(n) = a.packets {
        for e in expected.iter() {
            // Relaxed: run control, before the lcores start.
            e.store(n, Ordering::Relaxed);
        }
    }
    let gen_cores: Vec<usize> = (0..nq).map(|q| cores[q % cores.len()]).collect();
    let pl = poller(a.poll);
    let (h2, w2, p2, e2, q2) = (
        handles.clone(),
        tx_writers.clone(),
        phase.clone(),
        expected.clone(),
        quiet.clone(),
    );
    let lcores = Lcores::launch_with_stats(&gen_cores, Arc::new(sw.group(0)?), move |ctx| {
        let i = ctx.lcore_id as usize;
        let (Some(q), Some(w)) = (take(&h2, i), take(&w2, i)) else {
            return GenResult::failed("queue handle missing", &gcfg);
        };
        gen::run(ctx, &pl, q, &w, &gcfg, &p2, &e2[i], &q2[i])
    })
    .map_err(|e| format!("--lcores: {e}"))?;

    let start = Instant::now();
    let mut last = (Instant::now(), sw.read());
    let sw_ref = Some(&sw);
    let until = start + Duration::from_secs_f64(a.duration.max(0.0));
    let all_quiet = || quiet.iter().all(|x| x.load(Ordering::Relaxed));
    let mut peer_left_early = false;
    let mut error = match a.packets {
        None => tend(&mut port, until, a, sw_ref, &mut last, || false),
        Some(n) => {
            // This side is done when its generators sent (Stream) or received (Sink)
            // n per queue; a generating side then waits for the checking peer to
            // leave, which is its signal that everything arrived.
            let sink = gcfg.kind == GenKind::Sink;
            let r = tend_exact(&mut port, until, a, sw_ref, &mut last, || {
                sink && all_quiet()
            });
            let what = if sink { "received" } else { "sent" };
            match r {
                Err(_) if all_quiet() => None,
                Err(down) => {
                    peer_left_early = true;
                    Some(format!(
                        "{down}: the peer left before this side {what} {n} packets per queue"
                    ))
                }
                Ok(e) if sink && all_quiet() => e,
                Ok(e) => e.or(Some(if all_quiet() {
                    "--duration passed before the peer finished (it never left)".to_owned()
                } else {
                    format!("--duration passed before this side {what} {n} packets per queue")
                })),
            }
        }
    };
    let run_secs = start.elapsed().as_secs_f64();
    // DRAIN: generators stop; round trips come back.
    // Relaxed: a run-control flag (see fwd::FwdCtx::running).
    phase.store(PHASE_DRAIN, Ordering::Relaxed);
    if a.packets.is_none() {
        let drain_end = Instant::now() + Duration::from_secs(1);
        error = error.or(tend(&mut port, drain_end, a, None, &mut last, all_quiet));
    }

    let mut peer = None;
    if let Some(mut stdin) = child_in.take() {
        let sent: Vec<String> = (0..nq)
            .map(|q| {
                tx_group
                    .lcore_counters(q)
                    .map_or(0, |c| c.packets)
                    .to_string()
            })
            .collect();
        let _ = writeln!(stdin, "stop {}", sent.join(","));
        let _ = stdin.flush();
        // Wait for the report (keeping the control plane alive while the peer drains).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = None;
        while Instant::now() < deadline && got.is_none() {
            let _ = port.poll_control(Instant::now());
            match rep_rx.recv_timeout(Duration::from_millis(1)) {
                Ok(line) => got = Some(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(stdin);
        match got.map(|l| serde_json::from_str::<PeerReport>(&l)) {
            Some(Ok(r)) => peer = Some(r),
            Some(Err(e)) => error = error.or(Some(format!("peer sent a bad report: {e}"))),
            None => error = error.or(Some("peer exited without a report".into())),
        }
    }
    // Sink modes: drain to what the peer says it sent.
    if let Some(r) = &peer {
        for (q, e) in expected.iter().enumerate() {
            // Relaxed: run control, as the phase.
            e.store(r.queues.get(q).map_or(0, |x| x.sent), Ordering::Relaxed);
        }
    } else if a.packets.is_none() {
        for e in expected.iter() {
            e.store(0, Ordering::Relaxed);
        }
    }
    let gens = lcores
        .stop_and_join(Duration::from_secs(5))
        .map_err(|e| format!("generator lcores: {e}"))?;
    if let Some(mut c) = guard.0.take() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(port);
    let after = probe(&cores);
    let mut r = assemble(a, gens, peer, run_secs, before, after, error);
    if let Some(x) = r.exact.as_mut() {
        x.peer_left_early = peer_left_early;
    }
    Ok(r)
}

fn assemble(
    a: &TestpmdArgs,
    gens: Vec<GenResult>,
    peer: Option<PeerReport>,
    secs: f64,
    before: Option<dataplane::probe::ProbeResult>,
    after: Option<dataplane::probe::ProbeResult>,
    mut error: Option<String>,
) -> TestpmdResult {
    let kind = a.forward_mode.gen_kind();
    let mut hist = pkt::new_histogram();
    let gen_queues: Vec<QueueReport> = gens
        .into_iter()
        .map(|mut g| {
            let _ = hist.add(g.checker.histogram());
            if error.is_none() {
                error = g.error.clone();
            }
            g.report()
        })
        .collect();
    let fwd_queues = peer.as_ref().map(|p| p.queues.clone()).unwrap_or_default();
    if let Some(p) = &peer {
        error = error.or(p.error.clone());
    }
    let sum = |v: &[QueueReport], f: fn(&QueueReport) -> u64| v.iter().map(f).sum::<u64>();
    // Which side sent and which side checked.
    let (sent, checked) = match kind {
        GenKind::Stream => {
            if let Some(h) = peer.as_ref().and_then(|p| decode_hist(&p.hist_hex)) {
                let _ = hist.add(&h);
            }
            (sum(&gen_queues, |q| q.sent), &fwd_queues)
        }
        GenKind::Sink => (sum(&fwd_queues, |q| q.sent), &gen_queues),
        _ => (sum(&gen_queues, |q| q.sent), &gen_queues),
    };
    let packets = sum(checked, |q| q.received);
    // An exact-count run against an independently started peer: only this side's
    // counts are known; the peer was told to send exactly --packets per queue.
    let exact = match (a.packets, &peer) {
        (Some(n), None) => Some(ExactReport::new(
            n,
            gen_queues.len(),
            kind != GenKind::Sink,
            &gen_queues,
        )),
        _ => None,
    };
    let (sent, lost) = match &exact {
        Some(x) if x.checked_here => (x.expected, x.lost),
        // Checked by the peer: its report has the verdict.
        Some(_) => (sent, 0),
        None => (sent, sent.saturating_sub(packets)),
    };
    let (rr, rw, note) = remote_per_pkt(a.ring, kind, a.txpkts);
    let secs = secs.max(1e-9);
    TestpmdResult {
        forward_mode: a.forward_mode,
        ring: a.ring,
        queues: a.rxq.max(a.txq),
        burst: a.burst,
        pkt_size: a.txpkts,
        ring_size: a.rxd.max(a.txd),
        duration_s: secs,
        packets,
        sent,
        lost,
        reordered: sum(checked, |q| q.reordered),
        corrupted: sum(checked, |q| q.corrupted),
        drops: sum(&gen_queues, |q| q.drops) + sum(&fwd_queues, |q| q.drops),
        errors: sum(&gen_queues, |q| q.errors) + sum(&fwd_queues, |q| q.errors),
        mpps: packets as f64 / secs / 1e6,
        gbps: packets as f64 * a.txpkts as f64 * 8.0 / secs / 1e9,
        remote_reads_per_pkt: rr,
        remote_writes_per_pkt: rw,
        remote_access_note: note,
        placement_probe_ns: before.as_ref().map(|b| b.median_ns),
        placement_probe_after_ns: after.as_ref().map(|b| b.median_ns),
        placement_changed: matches!((&before, &after), (Some(b), Some(x)) if dataplane::probe::changed(b, x)),
        latency_kind: match kind {
            GenKind::Stream | GenKind::Sink => "one_way",
            _ => "round_trip",
        },
        latency_ns: LatencySummary::of(&hist),
        gen_queues,
        fwd_queues,
        error,
        exact,
        hist: Some(hist),
    }
}

// ---- the peer / backend side ----------------------------------------------------------

/// Peer protocol violations one forwarding lcore saw.
#[derive(Debug, Default)]
struct Violations {
    count: u64,
    first: Option<String>,
}

impl Violations {
    fn note(&mut self, e: &dataplane::port::PortError, what: &str) {
        if let dataplane::port::PortError::Queue(q) = e {
            if q.is_peer_violation() {
                self.count += 1;
                self.first.get_or_insert_with(|| format!("{what}: {q}"));
            }
        }
    }
}

/// Runs the forwarding side: attaches, runs the engine on every queue until told to
/// stop (stdin, with `--child`), Ctrl-C or `--duration`; returns its report.
pub fn run_forwarder(a: &TestpmdArgs) -> PeerReport {
    match forwarder(a) {
        Ok(r) => r,
        Err(e) => PeerReport {
            error: Some(e),
            ..Default::default()
        },
    }
}

fn forwarder(a: &TestpmdArgs) -> Result<PeerReport, String> {
    let cores = dataplane::lcore::parse_cores(&a.lcores).map_err(|e| format!("--lcores: {e}"))?;
    let (spec, spec_text) = window_spec(a)?;
    let cfg = port_config(a, spec, Role::Backend)?;
    let ns_per_tick = a.ns_per_tick.unwrap_or_else(pkt::calibrate);
    // Attach (retrying briefly while a separately started frontend is still setting
    // the window up; a bad window fails at once).
    let t0 = Instant::now();
    let mut port = loop {
        match Port::attach(&cfg) {
            Ok(p) => break p,
            Err(e) if t0.elapsed() > cfg.handshake_timeout || a.child || !e.is_not_ready() => {
                return Err(format!("--window {spec_text}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let nq = port.queue_count() as usize;
    let sw = match &a.stats_window {
        Some(p) => StatsWindow::open(p)?,
        None => {
            let inst = a
                .instance
                .clone()
                .unwrap_or_else(|| std::process::id().to_string());
            StatsWindow::create(&statsw::path_of(&inst), nq)?
        }
    };
    if sw.queues != nq {
        return Err(format!(
            "stats window has {} queues, the port {nq}",
            sw.queues
        ));
    }
    port.start().map_err(|e| format!("link start: {e}"))?;

    let stdin_rx = if a.child {
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(line);
        });
        Some(rx)
    } else {
        None
    };

    let handles: Slots<QueueHandle> = Arc::new(Mutex::new(
        (0..nq as u16).map(|q| port.queue(q).ok()).collect(),
    ));
    let tx_group = sw.group(3)?;
    let tx_writers: Slots<LcoreStats> = Arc::new(Mutex::new(
        (0..nq).map(|q| tx_group.writer(q).ok()).collect(),
    ));
    let phase = Arc::new(AtomicU32::new(PHASE_RUN));
    let limit = a.packets.unwrap_or(u64::MAX);
    let expected: Arc<[AtomicU64]> = (0..nq)
        .map(|_| AtomicU64::new(a.packets.unwrap_or(0)))
        .collect();
    // --packets: lcores that sent (generating engines) or received (rxonly) `limit`.
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fwd_cores: Vec<usize> = (0..nq).map(|q| cores[(nq + q) % cores.len()]).collect();
    let pl = poller(a.poll);
    let (mode, size, burst, flows) = (a.forward_mode, a.txpkts as usize, a.burst as usize, a.flows);
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (h2, w2, p2, e2, fin2, r2) = (
        handles.clone(),
        tx_writers.clone(),
        phase.clone(),
        expected.clone(),
        finished.clone(),
        reached.clone(),
    );
    let lcores = Lcores::launch_with_stats(&fwd_cores, Arc::new(sw.group(2)?), move |ctx| {
        let i = ctx.lcore_id as usize;
        let (Some(mut q), Some(w)) = (take(&h2, i), take(&w2, i)) else {
            return (
                QueueReport::default(),
                pkt::new_histogram(),
                None,
                Violations::default(),
            );
        };
        let Some(mut engine) = fwd::new_engine(mode.name()) else {
            return (
                QueueReport::default(),
                pkt::new_histogram(),
                None,
                Violations::default(),
            );
        };
        let mut f = FwdCtx {
            size,
            burst,
            seq: 0,
            flows,
            sent: 0,
            limit,
            drops: 0,
            checker: Checker::new(ns_per_tick),
            tx_stats: &w,
            phase: &p2,
            scratch: (0..burst).map(|_| pkt::template(size)).collect(),
            txbufs: Vec::with_capacity(burst),
        };
        let mut rx = Vec::with_capacity(burst);
        let mut errors = 0u64;
        let mut first_err: Option<String> = None;
        let mut viol = Violations::default();
        let mut drain_end: Option<Instant> = None;
        let gens = engine.generates();
        let mut done_here = false;
        pl.run(ctx, |ctx| {
            if limit != u64::MAX && !done_here {
                let got = if gens { f.seq } else { f.checker.received };
                if got >= limit {
                    done_here = true;
                    // Relaxed: a progress count the main thread polls.
                    r2.fetch_add(1, Ordering::Relaxed);
                }
            }
            if done_here && mode == FwdMode::Rxonly {
                // The checking side of a --packets run has everything: leave (the
                // generating peer takes that as its end).
                return dataplane::lcore::Work::Stop;
            }
            // Relaxed: run control.
            if p2.load(Ordering::Relaxed) != PHASE_RUN {
                // Only the checking engine drains, to the count the generator sent.
                let want = e2[i].load(Ordering::Relaxed);
                let end = *drain_end.get_or_insert_with(|| Instant::now() + Duration::from_secs(1));
                if mode != FwdMode::Rxonly || f.checker.received >= want || Instant::now() > end {
                    return dataplane::lcore::Work::Stop;
                }
            }
            let mut moved = fwd::Moved::default();
            if gens {
                match engine.generate(&mut q, &mut f) {
                    Ok(m) => moved = m,
                    Err(e) => {
                        errors += 1;
                        ctx.stats.add_errors(1);
                        viol.note(&e, "tx");
                        first_err.get_or_insert_with(|| format!("tx: {e}"));
                    }
                }
            }
            let n = match q.rx_burst(&mut rx, burst) {
                Ok(n) => n,
                // Done generating in a --packets run: the checking peer leaving (link
                // down) is the expected end, not an error.
                Err(_) if done_here => return dataplane::lcore::Work::Idle,
                Err(e) => {
                    errors += 1;
                    ctx.stats.add_errors(1);
                    viol.note(&e, "rx");
                    first_err.get_or_insert_with(|| format!("rx: {e}"));
                    0
                }
            };
            if n > 0 {
                let bytes: u64 = rx.iter().map(|m| m.len() as u64).sum();
                if let Err(e) = engine.on_burst(&mut rx, &mut q, &mut f) {
                    errors += 1;
                    ctx.stats.add_errors(1);
                    viol.note(&e, "forward");
                    first_err.get_or_insert_with(|| format!("forward: {e}"));
                }
                rx.clear();
                return dataplane::lcore::Work::Busy {
                    packets: n as u32,
                    bytes,
                };
            }
            if moved.packets > 0 {
                // Generated only: counted in the tx block, not as received.
                return dataplane::lcore::Work::Busy {
                    packets: 0,
                    bytes: 0,
                };
            }
            dataplane::lcore::Work::Idle
        });
        let c = &mut f.checker;
        // Relaxed: a progress count the main thread polls; join orders the rest.
        fin2.fetch_add(1, Ordering::Relaxed);
        (
            QueueReport {
                sent: f.sent,
                received: if mode == FwdMode::Rxonly {
                    c.received
                } else {
                    q.counters().rx_packets
                },
                reordered: c.reordered,
                corrupted: c.corrupted,
                drops: f.drops,
                errors,
            },
            c.histogram().clone(),
            first_err,
            viol,
        )
    })
    .map_err(|e| format!("--lcores: {e}"))?;

    let end = Instant::now() + Duration::from_secs_f64(a.duration.max(0.0));
    let mut last = (Instant::now(), sw.read());
    let mut stop_line = None;
    let checks = a.packets.is_some() && a.forward_mode == FwdMode::Rxonly;
    let all_reached = || reached.load(Ordering::Relaxed) >= nq;
    let r = tend_exact(&mut port, end, a, Some(&sw), &mut last, || {
        if let Some(rx) = &stdin_rx {
            if let Ok(l) = rx.try_recv() {
                stop_line = Some(l);
                return true;
            }
        }
        checks && all_reached()
    });
    let mut peer_left_early = false;
    let error = match (r, a.packets) {
        (Ok(e), None) => e,
        (Err(down), None) => Some(down),
        (Err(_), Some(_)) if all_reached() => None,
        (Err(down), Some(n)) => {
            peer_left_early = true;
            Some(format!(
                "{down}: the peer left before this side {} {n} packets per queue",
                if checks { "received" } else { "sent" }
            ))
        }
        (Ok(e), Some(n)) if !all_reached() => e.or(Some(format!(
            "--duration passed before this side {} {n} packets per queue",
            if checks { "received" } else { "sent" }
        ))),
        (Ok(e), Some(_)) if !checks => e.or(Some(
            "--duration passed before the peer finished (it never left)".to_owned(),
        )),
        (Ok(e), Some(_)) => e,
    };
    if let Some(l) = &stop_line {
        let counts = l.trim().strip_prefix("stop").unwrap_or("").trim();
        for (e, v) in expected.iter().zip(counts.split(',')) {
            e.store(v.trim().parse().unwrap_or(0), Ordering::Relaxed);
        }
    }
    phase.store(PHASE_DRAIN, Ordering::Relaxed);
    let mut last2 = last.clone();
    // Keep the control plane alive while the lcores drain and stop.
    let all_done = || finished.load(Ordering::Relaxed) >= nq;
    let _ = tend(
        &mut port,
        Instant::now() + Duration::from_millis(1500),
        a,
        None,
        &mut last2,
        all_done,
    );
    let link = port.link_status();
    let results = lcores
        .stop_and_join(Duration::from_secs(5))
        .map_err(|e| format!("forwarding lcores: {e}"))?;
    let mut hist = pkt::new_histogram();
    let mut queues = Vec::new();
    let mut first_queue_error = None;
    let mut violations = Violations::default();
    for (r, h, e, v) in results {
        let _ = hist.add(&h);
        queues.push(r);
        first_queue_error = first_queue_error.or(e);
        violations.count += v.count;
        violations.first = violations.first.or(v.first);
    }
    let exact = a.packets.map(|n| {
        let mut x = ExactReport::new(n, nq, !checks, &queues);
        x.peer_left_early = peer_left_early;
        x
    });
    Ok(PeerReport {
        queues,
        hist_hex: encode_hist(&hist),
        error,
        exact,
        first_queue_error,
        violations: violations.count,
        first_violation: violations.first,
        link_downs: link.downs,
        link_down_reason: (!link.up).then(|| format!("{:?}", link.reason)),
    })
}

// ---- entry ------------------------------------------------------------------------------

fn print_result(r: &TestpmdResult) {
    println!(
        "{} {} ring, {} B, burst {}, {} queue pair(s), {:.1} s:",
        r.forward_mode.name(),
        r.ring.name(),
        r.pkt_size,
        r.burst,
        r.queues,
        r.duration_s
    );
    println!(
        "  {:>7.3} Mpps  {:>7.3} Gbit/s  packets {}  sent {}  lost {}  reordered {}  corrupted {}  drops {}  errors {}",
        r.mpps, r.gbps, r.packets, r.sent, r.lost, r.reordered, r.corrupted, r.drops, r.errors
    );
    let f = |x: Option<f64>| x.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
    println!(
        "  remote reads/pkt {}  remote writes/pkt {}  (measured: instrumented pre-run)",
        f(r.remote_reads_per_pkt),
        f(r.remote_writes_per_pkt)
    );
    if let Some(b) = r.placement_probe_ns {
        println!(
            "  placement probe: {b:.0} ns before, {} ns after{}",
            r.placement_probe_after_ns
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}")),
            if r.placement_changed {
                " (changed during the run: figure void for comparisons)"
            } else {
                ""
            }
        );
    }
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
}

fn print_latency(r: &TestpmdResult) {
    let l = &r.latency_ns;
    println!(
        "  latency ({}, ns, {} samples): p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
        r.latency_kind.replace('_', "-"),
        l.count,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.p9999,
        l.max
    );
    if let Some(h) = &r.hist {
        if !h.is_empty() {
            let bands = [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0_f64];
            for w in bands.windows(2) {
                let lo = h.value_at_quantile(w[0]);
                let hi = h.value_at_quantile(w[1]);
                let n = h.count_between(lo, hi);
                let bar = "#".repeat(((n as f64 / h.len() as f64) * 40.0).round() as usize);
                println!(
                    "    p{:<7} {lo:>9} .. {hi:>9} ns {n:>10} {bar}",
                    format!("{:.2}", w[1] * 100.0)
                );
            }
        }
    }
}

fn write_latency_files(a: &TestpmdArgs, r: &TestpmdResult) -> Result<(), String> {
    let Some(h) = &r.hist else { return Ok(()) };
    if let Some(p) = &a.hgrm {
        latency::write_hgrm(p, h).map_err(|e| format!("--hgrm {}: {e}", p.display()))?;
    }
    if let Some(p) = &a.latency_json {
        latency::write_latency_json(p, h)
            .map_err(|e| format!("--latency-json {}: {e}", p.display()))?;
    }
    Ok(())
}

fn failed(r: &TestpmdResult) -> bool {
    if let Some(x) = &r.exact {
        return r.error.is_some() || !x.clean();
    }
    r.error.is_some() || r.corrupted > 0 || r.packets == 0
}

/// Runs `zerohop testpmd` (`no_args`: the default throughput + latency summary).
pub fn run(a: &TestpmdArgs, no_args: bool) -> ExitCode {
    install_sigint();
    if no_args {
        return run_default(a);
    }
    match a.role {
        RoleArg::Backend => {
            let r = run_forwarder(a);
            // Could not start (bad window, no peer): the error only, exit 2 like the
            // frontend's set-up errors.
            let setup_failed = r.error.is_some() && r.queues.is_empty();
            if a.child || a.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else if setup_failed {
                if let Some(e) = &r.error {
                    eprintln!("zerohop testpmd: {e}");
                }
            } else {
                let s = |f: fn(&QueueReport) -> u64| r.queues.iter().map(f).sum::<u64>();
                println!(
                    "forwarder {}: received {} sent {} drops {} errors {}",
                    a.forward_mode.name(),
                    s(|q| q.received),
                    s(|q| q.sent),
                    s(|q| q.drops),
                    s(|q| q.errors)
                );
                if let Some(e) = &r.error {
                    eprintln!("zerohop testpmd: {e}");
                }
            }
            let exact_bad = r
                .exact
                .as_ref()
                .is_some_and(|x| r.error.is_some() || !x.clean());
            if setup_failed {
                ExitCode::from(2)
            } else if exact_bad {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        RoleArg::Both | RoleArg::Frontend => match run_generator(a) {
            Ok(r) => {
                if let Err(e) = write_latency_files(a, &r) {
                    eprintln!("zerohop testpmd: {e}");
                    return ExitCode::from(1);
                }
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                } else {
                    print_result(&r);
                    print_latency(&r);
                }
                if failed(&r) {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("zerohop testpmd: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// The no-argument run: 3 s of txonly -> rxonly throughput (posted, 64 B), then 2 s
/// of ping-pong latency.
fn run_default(a: &TestpmdArgs) -> ExitCode {
    println!(
        "zerohop testpmd: both sides on this host, two processes over a fresh /dev/shm window\n"
    );
    let mut tput = a.clone();
    tput.forward_mode = FwdMode::Rxonly;
    tput.duration = 3.0;
    let mut lat = a.clone();
    lat.forward_mode = FwdMode::Latency;
    lat.burst = 1;
    lat.duration = 2.0;
    let mut bad = false;
    for (what, cfg) in [("throughput", &tput), ("latency", &lat)] {
        println!(
            "== {what}: --forward-mode {} --ring {} --txpkts {} --burst {} --duration {}",
            cfg.forward_mode.name(),
            cfg.ring.name(),
            cfg.txpkts,
            cfg.burst,
            cfg.duration
        );
        match run_generator(cfg) {
            Ok(r) => {
                print_result(&r);
                print_latency(&r);
                bad |= failed(&r);
            }
            Err(e) => {
                eprintln!("zerohop testpmd: {e}");
                bad = true;
            }
        }
        println!();
    }
    if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
