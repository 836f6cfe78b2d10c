//! `zerohop demo`: both sides of a link on one host, in two processes, over a fresh
//! shared-memory window, driving each ring mode directly.
//!
//! The parent creates the window, lays out the rings, and spawns itself as the peer
//! (`zerohop demo-peer ...`). The parent is the sender (virtio driver side for split and
//! packed, the posted sender), the child the receiver (device side / posted receiver).
//! Every entry carries a sequence number and a send timestamp (CLOCK_MONOTONIC, which is
//! one clock for every process on the host); the receiver checks order and records the
//! one-way latency into an HdrHistogram, then reports back as one JSON line on stdout.

mod link;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::latency::LatencySummary;

pub use link::{Mode, PollMode};

/// Parameters shared by both processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoParams {
    /// Ring mode.
    pub mode: Mode,
    /// Entries to move.
    pub count: u64,
    /// Bytes per entry (at least 16: sequence number and timestamp).
    pub size: u32,
    /// Burst size.
    pub burst: u32,
    /// Ring size (entries).
    pub ring_size: u32,
    /// How an idle side waits.
    pub poll: PollMode,
    /// Give up after this long.
    pub deadline: Duration,
}

/// What the receiver saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RxReport {
    /// Entries received.
    pub received: u64,
    /// Entries whose sequence number was skipped.
    pub lost: u64,
    /// Entries that arrived with a lower sequence number than one seen before.
    pub reordered: u64,
    /// Entries whose sequence number had been seen already.
    pub duplicated: u64,
    /// Entries whose payload check failed.
    pub corrupted: u64,
    /// Nanoseconds from the first to the last entry received.
    pub elapsed_ns: u64,
    /// The latency histogram, V2-serialised, hex-encoded.
    pub histogram_hex: String,
    /// An error that stopped the receiver, if any.
    pub error: Option<String>,
}

/// One mode's result as the parent prints it.
#[derive(Debug, Clone, Serialize)]
pub struct DemoResult {
    /// Ring mode.
    pub mode: Mode,
    /// Entries sent.
    pub sent: u64,
    /// The receiver's report.
    pub rx: RxReport,
    /// Million entries per second.
    pub mpps: f64,
    /// Payload gigabits per second.
    pub gbps: f64,
    /// Latency percentiles in ns.
    pub latency_ns: LatencySummary,
    /// An error on the sender side, if any.
    pub tx_error: Option<String>,
    /// Same-run placement probe (one-cache-line ping-pong RTT, ns) before and after
    /// the run, when both sides were pinned (spin mode); 0 otherwise.
    pub placement_probe_ns: (f64, f64),
    /// True if the probe says the core placement changed during the run (the
    /// throughput figure is then void as a comparison; see BASELINES.md).
    pub placement_changed: bool,
}

/// Nanoseconds on CLOCK_MONOTONIC: comparable across processes on one host.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds")
}

fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serialising to a Vec cannot fail");
    hex_encode(&buf)
}

fn decode_histogram(s: &str) -> Option<Histogram<u64>> {
    let bytes = hex_decode(s)?;
    Deserializer::new().deserialize(&mut &bytes[..]).ok()
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Pins the calling thread to `core` (by number, not by the inherited affinity mask:
/// the peer process starts with the parent's mask).
fn pin(core: usize) -> bool {
    dataplane::probe::pin(core)
}

/// Kills and reaps a child on every exit path.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs one mode: creates the window, spawns the receiver, sends, collects.
pub fn run_mode(p: &DemoParams, dir: &Path) -> Result<DemoResult, String> {
    let path: PathBuf = dir.join(format!(
        "zerohop-demo-{}-{}",
        std::process::id(),
        p.mode.name()
    ));
    let link = link::Link::create(&path, p).map_err(|e| format!("creating window: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("finding own binary: {e}"))?;
    let params = serde_json::to_string(p).expect("params serialise");
    let child = Command::new(exe)
        .arg("demo-peer")
        .arg("--window")
        .arg(&path)
        .arg("--params")
        .arg(&params)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning the peer process: {e}"))?;
    let mut guard = ChildGuard(Some(child));
    let stdout = guard
        .0
        .as_mut()
        .and_then(|c| c.stdout.take())
        .ok_or("peer has no stdout")?;

    let probe = |spin: bool| spin.then(|| dataplane::probe::placement_probe((0, 1), 20_000));
    let before = probe(p.poll == PollMode::Spin);
    if p.poll == PollMode::Spin {
        pin(0);
    }
    let started = Instant::now();
    let tx_result = link.send_all(p);
    let sent = *tx_result.as_ref().unwrap_or(&0);

    // The receiver prints exactly one JSON line when it is done (or gives up at its
    // own deadline, which is the same as ours).
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    let read = reader.read_line(&mut line);
    let waited = started.elapsed();
    if let Some(mut c) = guard.0.take() {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match c.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
            }
        }
    }
    drop(link);
    let after = probe(p.poll == PollMode::Spin);
    let (placement_probe_ns, placement_changed) = match (&before, &after) {
        (Some(b), Some(a)) => ((b.median_ns, a.median_ns), dataplane::probe::changed(b, a)),
        _ => ((0.0, 0.0), false),
    };
    let rx: RxReport = match read {
        Ok(n) if n > 0 => serde_json::from_str(line.trim())
            .map_err(|e| format!("peer sent a bad report ({e}): {line}"))?,
        _ => {
            return Err(format!(
                "peer exited without a report after {:.1} s",
                waited.as_secs_f64()
            ))
        }
    };
    let hist = decode_histogram(&rx.histogram_hex).unwrap_or_else(new_histogram);
    let secs = rx.elapsed_ns.max(1) as f64 / 1e9;
    Ok(DemoResult {
        mode: p.mode,
        sent,
        mpps: rx.received as f64 / secs / 1e6,
        gbps: rx.received as f64 * p.size as f64 * 8.0 / secs / 1e9,
        latency_ns: LatencySummary::of(&hist),
        rx,
        tx_error: tx_result.err(),
        placement_probe_ns,
        placement_changed,
    })
}

/// The child side: attaches to the window and receives.
pub fn run_peer(window: &Path, params: &str) -> i32 {
    let p: DemoParams = match serde_json::from_str(params) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("zerohop demo-peer: bad --params: {e}");
            return 2;
        }
    };
    if p.poll == PollMode::Spin {
        pin(1);
    }
    let report = match link::Link::open(window, &p) {
        Ok(link) => link.receive_all(&p),
        Err(e) => RxReport {
            error: Some(format!("attaching to {}: {e}", window.display())),
            ..Default::default()
        },
    };
    println!(
        "{}",
        serde_json::to_string(&report).expect("report serialises")
    );
    0
}

/// Prints a human summary of the results and one latency distribution per mode.
pub fn print_human(results: &[DemoResult], p: &DemoParams) {
    println!(
        "zerohop demo: {} entries of {} B per ring mode, burst {}, ring {} (two processes, /dev/shm window)",
        p.count, p.size, p.burst, p.ring_size
    );
    println!(
        "{:<7} {:>10} {:>8} {:>8} {:>5} {:>5} {:>5} {:>5} | one-way latency ns: {:>6} {:>6} {:>6} {:>7} {:>8}",
        "ring", "received", "Mpps", "Gbit/s", "lost", "reord", "dup", "corr", "p50", "p90", "p99", "p99.9", "max"
    );
    for r in results {
        let l = &r.latency_ns;
        println!(
            "{:<7} {:>10} {:>8.2} {:>8.2} {:>5} {:>5} {:>5} {:>5} |                     {:>6} {:>6} {:>6} {:>7} {:>8}",
            r.mode.name(),
            r.rx.received,
            r.mpps,
            r.gbps,
            r.rx.lost,
            r.rx.reordered,
            r.rx.duplicated,
            r.rx.corrupted,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
        if r.placement_probe_ns.0 > 0.0 {
            println!(
                "        placement probe: {:.0} ns before, {:.0} ns after{}",
                r.placement_probe_ns.0,
                r.placement_probe_ns.1,
                if r.placement_changed {
                    " (placement changed during the run: figure void for comparisons)"
                } else {
                    ""
                }
            );
        }
        if let Some(e) = &r.tx_error {
            println!("        sender error: {e}");
        }
        if let Some(e) = &r.rx.error {
            println!("        receiver error: {e}");
        }
    }
    for r in results {
        if let Some(h) = decode_histogram(&r.rx.histogram_hex) {
            println!();
            println!("latency histogram, {} ring (one-way, ns):", r.mode.name());
            print_histogram(&h);
        }
    }
}

/// A compact text histogram: one row per percentile band, with a bar.
fn print_histogram(h: &Histogram<u64>) {
    if h.is_empty() {
        println!("  (no samples)");
        return;
    }
    let bands = [0.0, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 0.99999, 1.0_f64];
    let total = h.len() as f64;
    for w in bands.windows(2) {
        let lo = h.value_at_quantile(w[0]);
        let hi = h.value_at_quantile(w[1]);
        let n = h.count_between(lo, hi) as f64;
        let bar = "#".repeat(((n / total) * 50.0).round() as usize);
        println!(
            "  p{:<8} {:>9} .. {:>9} ns {:>10} {bar}",
            format!("{:.3}", w[1] * 100.0),
            lo,
            hi,
            n as u64
        );
    }
}
