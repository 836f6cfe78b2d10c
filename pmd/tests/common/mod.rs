//! The two-process harness shared by the multi-process queue tests: the parent test
//! creates a /dev/shm window and re-executes its own test binary as the peer
//! (`current_exe() --exact <child test> --ignored --nocapture`), passing the window
//! path, packet size, packet count and a free-form argument in environment variables.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pmd::queue::testpkt::{Traffic, TrafficReport};
use pmd::window::{OpenOptions, ShmWindow};

/// Serialises the two-process tests of one binary (each uses both cores).
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Each side gives up after this long; the parent kills the child a bit later.
pub const DEADLINE: Duration = Duration::from_secs(900);
/// Packets per direction in optimised builds (the figure).
pub const DEFAULT_COUNT: u64 = 50_000_000;
/// Packets per direction in unoptimised builds.
pub const REDUCED_COUNT: u64 = 1_000_000;

const ENV_WINDOW: &str = "ZEROHOP_MP_WINDOW";
const ENV_SIZE: &str = "ZEROHOP_MP_SIZE";
const ENV_ARG: &str = "ZEROHOP_MP_ARG";
const ENV_CHILD_COUNT: &str = "ZEROHOP_MP_CHILD_PKTS";

/// Packets per direction: `env_count` if set; else 50 million, unless this is an
/// unoptimised build (the plain `cargo test` dev profile), where the test's own
/// packet fill and checksum alone would take many minutes: then 1 million, said out
/// loud. A child uses the parent's count.
pub fn count(env_count: &str) -> u64 {
    for var in [ENV_CHILD_COUNT, env_count] {
        if let Some(n) = std::env::var(var).ok().and_then(|s| s.parse().ok()) {
            return n;
        }
    }
    if !cfg!(zerohop_optimized) {
        println!(
            "unoptimised build: {REDUCED_COUNT} packets each way instead of {DEFAULT_COUNT} \
             (use --profile ci, or set {env_count})"
        );
        return REDUCED_COUNT;
    }
    DEFAULT_COUNT
}

/// The traffic both sides run: `count` packets of `size` bytes, mixed zero-copy and
/// copying transmit, out-of-order frees.
pub fn traffic(count: u64, size: usize) -> Traffic {
    let mut t = Traffic::new(count, &[size]);
    t.deadline = DEADLINE;
    t
}

/// Kills and reaps the child if the test ends early (panic or timeout).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs one two-process test: creates a window of `window_size` bytes and calls
/// `run(window, traffic, start_peer)`, which lays the window out, opens this side,
/// calls `start_peer()` (starting `child_test` as the peer, with `arg`) and runs the
/// traffic. Then waits for the child and checks both reports. Returns the wall time.
#[allow(clippy::too_many_arguments)]
pub fn two_processes(
    tag: &str,
    child_test: &str,
    arg: &str,
    size: usize,
    count: u64,
    window_size: usize,
    run: impl FnOnce(&ShmWindow, &Traffic, &mut dyn FnMut()) -> TrafficReport,
) -> Duration {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = PathBuf::from(format!(
        "/dev/shm/zerohop-{tag}-{}-{size}-{nanos}",
        std::process::id()
    ));
    // Removed when it drops (also on panic).
    let w = ShmWindow::create(&path, window_size).unwrap();
    let t = traffic(count, size);
    let start = Instant::now();
    let mut peer = None;
    let rep = run(&w, &t, &mut || {
        peer = Some(spawn_peer(child_test, &path, arg, size, count));
    });
    println!(
        "{tag} parent, {size} B: {rep:?}, {:.1} Mpkt/s each way",
        count as f64 / rep.elapsed.as_secs_f64() / 1e6
    );
    let ok = peer.expect("run() did not start the peer").wait(start);
    let took = finish(tag, size, count, start, rep, &path, w);
    assert!(ok, "{tag}: child failed");
    took
}

/// Starts the peer process for the window at `path`.
fn spawn_peer(
    child_test: &str,
    path: &std::path::Path,
    arg: &str,
    size: usize,
    count: u64,
) -> PeerProcess {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", child_test, "--ignored", "--nocapture"])
        .env(ENV_WINDOW, path)
        .env(ENV_SIZE, size.to_string())
        .env(ENV_ARG, arg)
        .env(ENV_CHILD_COUNT, count.to_string())
        .spawn()
        .unwrap();
    PeerProcess(ChildGuard(Some(child)))
}

/// A running peer process (killed and reaped if dropped before [`PeerProcess::wait`]).
pub struct PeerProcess(ChildGuard);

impl PeerProcess {
    /// Waits for the peer (at most `DEADLINE` + 30 s after `start`); true if it
    /// succeeded.
    pub fn wait(mut self, start: Instant) -> bool {
        let kill_at = start + DEADLINE + Duration::from_secs(30);
        loop {
            let c = self.0 .0.as_mut().unwrap();
            if let Some(st) = c.try_wait().unwrap() {
                self.0 .0 = None;
                return st.success();
            }
            assert!(Instant::now() < kill_at, "child did not finish; killed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn finish(
    tag: &str,
    size: usize,
    count: u64,
    start: Instant,
    rep: TrafficReport,
    path: &std::path::Path,
    w: ShmWindow,
) -> Duration {
    let took = start.elapsed();
    println!(
        "{tag}: {size} B x {count} packets each way, two processes: {:.1} s",
        took.as_secs_f64()
    );
    assert!(rep.clean(count), "{tag} parent: {rep:?}");
    drop(w);
    assert!(!path.exists(), "window file left behind");
    took
}

/// In the child: the window (opened), the packet size, the free-form argument, or
/// `None` when the test was not started by a parent.
pub fn child_window() -> Option<(ShmWindow, usize, String)> {
    let path = std::env::var(ENV_WINDOW).ok()?;
    let size: usize = std::env::var(ENV_SIZE).ok()?.parse().ok()?;
    let arg = std::env::var(ENV_ARG).unwrap_or_default();
    let w = ShmWindow::open(&path, &OpenOptions::new()).unwrap();
    Some((w, size, arg))
}
