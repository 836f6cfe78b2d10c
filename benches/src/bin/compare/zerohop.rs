//! zerohop's figures: `zerohop testpmd --json` (two processes, `--role both`), one run
//! per sample, in every ring mode.
//!
//! ```text
//!  compare ──spawn──> zerohop testpmd --json --ring R --forward-mode rxonly|latency
//!                        probe | frontend (core 0) ──link window──> backend (core 1) | probe
//!                     <── one JSON object: mpps, gbps, latency p50, remote reads/writes
//!                         per packet (measured in the same run), both probes
//! ```
//!
//! One-way throughput: `rxonly` (the generator sends, the peer receives and checks every
//! packet). Ping-pong: `latency` (one packet in flight, burst 1), the round trip is the
//! p50 of the per-packet round trips. testpmd stamps and checks every packet, so these
//! figures include that work (a bare ring would be faster).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Ring modes, in the order they run.
pub const RINGS: [&str; 3] = ["posted", "split", "packed"];
/// Ring entries on both sides of every comparison: zerohop `--rxd/--txd`, DPDK
/// virtio-user `queue_size` and testpmd `--rxd/--txd`. (With 256, a burst of 256 is
/// the whole ring and each side waits for the other to drain it.)
pub const RING_SIZE: usize = 1024;

/// Finds (building it if needed) the `zerohop` binary of the same profile as this one.
pub fn locate() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("ZEROHOP_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe.parent().ok_or("no exe dir")?;
    let bin = dir.join("zerohop");
    let profile = dir
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("release")
        .to_owned();
    // Keep it current (a no-op when up to date); skipped when cargo is not around.
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&ws)
        .args(["build", "-q", "-p", "zerohop"])
        .stdout(Stdio::null());
    match profile.as_str() {
        "release" => cmd.arg("--release"),
        "debug" => &mut cmd,
        p => cmd.args(["--profile", p]),
    };
    let built = cmd.status().map(|s| s.success()).unwrap_or(false);
    if bin.is_file() {
        Ok(bin)
    } else if built {
        Err(format!(
            "cargo built zerohop but {} is missing",
            bin.display()
        ))
    } else {
        Err(format!(
            "{} not found and `cargo build -p zerohop` failed",
            bin.display()
        ))
    }
}

/// What one testpmd run measured.
#[derive(Debug, Clone)]
pub struct Run {
    /// Mpps.
    pub mpps: f64,
    /// Gbit/s of packet bytes.
    pub gbps: f64,
    /// p50 / p99 latency in ns (round trip for `latency`, one way for `rxonly`).
    pub p50_ns: f64,
    /// p99 latency.
    pub p99_ns: f64,
    /// Remote reads per packet on the path (measured in the same run).
    pub reads: Option<f64>,
    /// Remote writes per packet on the path.
    pub writes: Option<f64>,
    /// Probe before, ns.
    pub probe_before: Option<f64>,
    /// Probe after, ns.
    pub probe_after: Option<f64>,
}

/// One `zerohop testpmd` run.
pub fn run(
    bin: &Path,
    ring: &str,
    mode: &str,
    size: usize,
    burst: usize,
    secs: f64,
) -> Result<Run, String> {
    let (ok, out) = run_with_deadline_raw(
        Command::new(bin)
            .args(["testpmd", "--json", "-l", "0,1"])
            .args(["--ring", ring, "--forward-mode", mode])
            .args(["--burst", &burst.to_string()])
            .args([
                "--rxd",
                &RING_SIZE.to_string(),
                "--txd",
                &RING_SIZE.to_string(),
            ])
            .args(["--txpkts", &size.to_string()])
            .args(["--duration", &secs.to_string()]),
        Duration::from_secs_f64(secs + 30.0),
    )?;
    let v: Value = serde_json::from_str(out.trim()).map_err(|e| {
        format!(
            "testpmd --json ({}): {e}: {}",
            if ok { "exit 0" } else { "failed" },
            one_line(&out)
        )
    })?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(format!("testpmd: {e}"));
    }
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    let lost = v.get("lost").and_then(Value::as_u64).unwrap_or(0);
    let corrupted = v.get("corrupted").and_then(Value::as_u64).unwrap_or(0);
    if lost > 0 || corrupted > 0 {
        return Err(format!("testpmd: {lost} lost, {corrupted} corrupted"));
    }
    let lat = |k: &str| {
        v.get("latency_ns")
            .and_then(|l| l.get(k))
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    Ok(Run {
        mpps: f("mpps").ok_or("testpmd: no mpps")?,
        gbps: f("gbps").unwrap_or(f64::NAN),
        p50_ns: lat("p50"),
        p99_ns: lat("p99"),
        reads: f("remote_reads_per_pkt"),
        writes: f("remote_writes_per_pkt"),
        probe_before: f("placement_probe_ns"),
        probe_after: f("placement_probe_after_ns"),
    })
}

/// `s` on one line, at most 300 characters (for reports).
pub fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// Runs `cmd` to completion (killed after `limit`): its output, or why it could not
/// be run or did not finish.
fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r.map_err(|e| format!("wait: {e}")),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid (not yet reaped: the waiter thread
            // is still blocked in wait), no memory involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            Err(format!("no result within {limit:?}; killed pid {pid}"))
        }
    }
}

/// Runs `cmd` to completion (killed after `limit`): (exited 0, stdout), or why it
/// could not be run or did not finish. A failed run with no stdout gives its status
/// and stderr instead.
pub fn run_with_deadline_raw(cmd: &mut Command, limit: Duration) -> Result<(bool, String), String> {
    let o = output_within(cmd, limit)?;
    let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() && out.trim().is_empty() {
        out = format!(
            "{}: {}",
            o.status,
            one_line(&String::from_utf8_lossy(&o.stderr))
        );
    }
    Ok((o.status.success(), out))
}

/// Runs `cmd` to completion (killed after `limit`) and returns its stdout; a failed
/// run is an error with its status, stdout and stderr.
pub fn run_with_deadline(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let o = output_within(cmd, limit)?;
    if o.status.success() {
        return Ok(String::from_utf8_lossy(&o.stdout).into_owned());
    }
    Err(format!(
        "{}: {} {}",
        o.status,
        one_line(&String::from_utf8_lossy(&o.stdout)),
        one_line(&String::from_utf8_lossy(&o.stderr))
    ))
}
