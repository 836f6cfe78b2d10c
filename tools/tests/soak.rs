//! Soak: both sides at full rate for a configurable time, two processes, every packet
//! sequence-numbered and checked (testpmd's generator stamps a sequence number and a
//! pattern, the io forwarder sends each packet back, the generator checks order and
//! every byte). Back-pressure instead of drops: a full ring makes the sender retry.
//!
//! Asserted per ring mode: packets moved, 0 lost, 0 reordered, 0 corrupted, 0 drops,
//! 0 errors, and memory use flat: the resident set (VmRSS from /proc) of both
//! processes, sampled every 500 ms, never grows past the first sample after warm-up
//! (a fifth of the run, at least 1 s) by more than [`RSS_SLACK_KIB`].
//!
//! Knobs: `ZEROHOP_SOAK_SECS` (default 30: the whole soak, split evenly across the
//! ring modes), `ZEROHOP_SOAK_RINGS` (default `posted,split,packed`). By hand, ten
//! minutes per ring mode:
//!
//! ```sh
//! ZEROHOP_SOAK_SECS=1800 cargo test -p zerohop --profile ci --test soak -- --nocapture
//! ```

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// Allowed growth of a process's resident set after warm-up.
const RSS_SLACK_KIB: u64 = 2048;

/// Kills (SIGKILL) and reaps the child on drop (a failed assertion mid-run).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// VmRSS of `pid` in KiB, if it is still there.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The first child of `pid` (testpmd's peer process).
fn child_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Is `flat`: no sample after warm-up above the first one after warm-up + slack.
fn check_flat(who: &str, ring: &str, samples: &[(f64, u64)], warmup: f64) {
    let after: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= warmup)
        .map(|s| s.1)
        .collect();
    assert!(
        after.len() >= 2,
        "{ring}: too few {who} RSS samples after warm-up: {samples:?}"
    );
    let (base, max) = (after[0], *after.iter().max().unwrap_or(&0));
    println!(
        "  {who:<9} RSS KiB: first {} | after warm-up {base} .. max {max} | last {} ({} samples)",
        samples[0].1,
        after[after.len() - 1],
        samples.len()
    );
    assert!(
        max <= base + RSS_SLACK_KIB,
        "{ring}: {who} resident set grew from {base} KiB to {max} KiB: {samples:?}"
    );
}

fn soak(ring: &str, txpkts: u32, secs: f64) {
    let child = Command::new(env!("CARGO_BIN_EXE_zerohop"))
        .args(["testpmd", "--role", "both", "--poll", "yield", "--json"])
        .args(["--forward-mode", "io", "--ring", ring])
        .args(["--txpkts", &txpkts.to_string()])
        .args(["--duration", &secs.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zerohop testpmd");
    let pid = child.id();
    let mut guard = ChildGuard(Some(child));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs + 60.0);
    let (mut gen, mut fwd) = (Vec::new(), Vec::new());
    let mut peer = None;
    loop {
        let c = guard.0.as_mut().expect("child");
        if let Ok(Some(_)) = c.try_wait() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ring}: testpmd ran past its deadline"
        );
        let t = t0.elapsed().as_secs_f64();
        // Sample only while traffic runs (not during start-up or the final drain).
        if t < secs {
            if peer.is_none() {
                peer = child_of(pid);
            }
            if let (Some(a), Some(b)) = (rss_kib(pid), peer.and_then(rss_kib)) {
                gen.push((t, a));
                fwd.push((t, b));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = guard
        .0
        .take()
        .expect("child")
        .wait_with_output()
        .expect("collect output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{ring}: testpmd failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    let u = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{ring}: no {k} in {v}"))
    };
    println!(
        "soak {ring} ({txpkts} B, io, both directions): {:.1} s, {} packets round trip \
         ({} sent), {:.3} Mpps; lost {} reordered {} corrupted {} drops {} errors {}",
        v["duration_s"].as_f64().unwrap_or(0.0),
        u("packets"),
        u("sent"),
        v["mpps"].as_f64().unwrap_or(0.0),
        u("lost"),
        u("reordered"),
        u("corrupted"),
        u("drops"),
        u("errors")
    );
    assert!(u("packets") > 0, "{ring}: nothing moved");
    for k in ["lost", "reordered", "corrupted", "drops", "errors"] {
        assert_eq!(u(k), 0, "{ring}: {k} in {v}");
    }
    assert!(v["error"].is_null(), "{ring}: {}", v["error"]);
    let warmup = (secs / 5.0).max(1.0);
    check_flat("generator", ring, &gen, warmup);
    check_flat("forwarder", ring, &fwd, warmup);
    for p in [
        format!("/dev/shm/zerohop-testpmd-{pid}"),
        format!("/dev/shm/zerohop-stats-{pid}"),
    ] {
        assert!(!std::path::Path::new(&p).exists(), "{p} left behind");
    }
    if let Some(p) = peer {
        assert!(
            rss_kib(p).is_none(),
            "{ring}: the peer process {p} outlived testpmd"
        );
    }
}

#[test]
fn soak_every_ring_mode() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let total: f64 = std::env::var("ZEROHOP_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30.0);
    let rings =
        std::env::var("ZEROHOP_SOAK_RINGS").unwrap_or_else(|_| "posted,split,packed".to_string());
    let rings: Vec<&str> = rings.split(',').filter(|r| !r.is_empty()).collect();
    let per = total / rings.len().max(1) as f64;
    for ring in rings {
        // Sizes that exercise each mode's other path: posted buffered (past the
        // 64-byte inline slots), split small, packed near an MTU.
        let txpkts = match ring {
            "posted" => 512,
            "split" => 64,
            _ => 1500,
        };
        soak(ring, txpkts, per);
    }
}
