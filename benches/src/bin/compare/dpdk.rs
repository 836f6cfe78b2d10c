//! DPDK's figures (`--with-dpdk`): Debian's `dpdk-testpmd`, vhost-user <-> virtio-user,
//! split ring, one queue, driven through its interactive prompt on stdin.
//!
//! ```text
//!  vhost side  (socket server, lcores 0@0 main, 1@1 fwd)   --file-prefix zhcmp<pid>vh
//!      net_vhost0,iface=/tmp/zerohop-compare-<pid>.sock        rxonly | io
//!            ^ vhost-user: virtio rings in virtio-user's huge pages
//!  virtio side (lcores 0@1 main, 1@0 fwd)                  --file-prefix zhcmp<pid>vu
//!      net_virtio_user0,path=<same socket>                     txonly | io (tx_first)
//! ```
//!
//! Throughput: virtio `txonly` -> vhost `rxonly` at `set burst B`, `set txpkts S`; the
//! vhost side's RX-packets counter is read twice (`show port stats all`) and divided
//! by the time between the reads. Ping-pong: both sides `io`, burst 1, one packet
//! injected by `start tx_first`; each packet the virtio side receives is one round
//! trip, so RTT = elapsed / received. Between cases both sides run `rxonly` briefly so
//! no packet stays in flight.
//!
//! Set-up and clean-up: `apt-get install -y dpdk dpdk-dev` when `dpdk-testpmd` is
//! missing; 512 x 2 MiB huge pages reserved (the old count written back afterwards), a
//! hugetlbfs mounted on /dev/hugepages if none is (unmounted afterwards); the socket,
//! DPDK's runtime directories and its huge page files removed; both processes stopped
//! by PID (`quit`, then SIGTERM, then SIGKILL).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::zerohop::RING_SIZE;

const NR_HUGE: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
const WANT_HUGE: u64 = 512;
const HUGE_DIR: &str = "/dev/hugepages";

/// Finds `dpdk-testpmd`, installing Debian's packages if it is missing.
pub fn ensure_installed(log: &mut Vec<String>) -> Result<PathBuf, String> {
    if let Some(p) = which("dpdk-testpmd") {
        return Ok(p);
    }
    log.push("dpdk-testpmd not found: running apt-get install -y dpdk dpdk-dev".into());
    let st = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "dpdk",
            "dpdk-dev",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("dpdk-testpmd is not installed, and apt-get could not run: {e}"))?;
    if !st.success() {
        return Err(format!(
            "apt-get install dpdk dpdk-dev failed ({st}); run it by hand (root, network)"
        ));
    }
    which("dpdk-testpmd").ok_or_else(|| "dpdk-dev installed but no dpdk-testpmd".into())
}

/// Checks the tools the session needs besides testpmd.
pub fn check_tools() -> Result<(), String> {
    if which("stdbuf").is_none() {
        return Err(
            "stdbuf (coreutils) not found: needed to read testpmd's prompt unbuffered".into(),
        );
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Huge pages reserved and hugetlbfs mounted for the session; restored on drop.
pub struct HugePages {
    old: Option<u64>,
    mounted: bool,
}

impl HugePages {
    /// Reserves [`WANT_HUGE`] 2 MiB pages (if fewer are) and mounts hugetlbfs if needed.
    pub fn setup() -> Result<HugePages, String> {
        let cur: u64 = std::fs::read_to_string(NR_HUGE)
            .map_err(|e| format!("{NR_HUGE}: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{NR_HUGE}: {e}"))?;
        let mut h = HugePages {
            old: None,
            mounted: false,
        };
        if cur < WANT_HUGE {
            std::fs::write(NR_HUGE, WANT_HUGE.to_string())
                .map_err(|e| format!("reserving huge pages ({NR_HUGE}): {e}"))?;
            h.old = Some(cur);
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        if !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))
        {
            let _ = std::fs::create_dir_all(HUGE_DIR);
            let st = Command::new("mount")
                .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "none", HUGE_DIR])
                .status()
                .map_err(|e| format!("mount: {e}"))?;
            if !st.success() {
                return Err(format!("mount -t hugetlbfs {HUGE_DIR} failed ({st})"));
            }
            h.mounted = true;
        }
        let free: u64 = std::fs::read_to_string(NR_HUGE.replace("nr_hugepages", "free_hugepages"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if free < 256 {
            return Err(format!(
                "only {free} free 2 MiB huge pages after reserving {WANT_HUGE}"
            ));
        }
        Ok(h)
    }

    /// What it changed, for the report.
    pub fn describe(&self) -> String {
        format!(
            "huge pages: {}; hugetlbfs: {}",
            match self.old {
                Some(o) => format!("{o} -> {WANT_HUGE} x 2 MiB (restored afterwards)"),
                None => "enough already reserved".into(),
            },
            if self.mounted {
                "mounted on /dev/hugepages (unmounted afterwards)"
            } else {
                "already mounted"
            }
        )
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(HUGE_DIR).status();
        }
        if let Some(o) = self.old {
            let _ = std::fs::write(NR_HUGE, o.to_string());
        }
    }
}

/// One interactive `dpdk-testpmd`.
struct Testpmd {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Testpmd {
    fn spawn(bin: &Path, eal: &[String]) -> Result<Testpmd, String> {
        let rxd = format!("--rxd={RING_SIZE}");
        let txd = format!("--txd={RING_SIZE}");
        // stdbuf -oL: testpmd's stdout is a pipe here, which stdio would buffer in
        // 4 KiB blocks (the prompt's answers would never arrive); stdbuf execs testpmd
        // in place, so the PID is testpmd's.
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg(bin)
            .args(eal)
            .args([
                "--",
                "-i",
                "--nb-cores=1",
                "--rxq=1",
                "--txq=1",
                "--burst=32",
                &rxd,
                &txd,
                "--total-num-mbufs=16384",
                "--no-lsc-interrupt",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn dpdk-testpmd: {e}"))?;
        let stdin = child.stdin.take();
        let out = child.stdout.take().ok_or("dpdk-testpmd stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Testpmd {
            child: Some(child),
            stdin,
            lines: rx,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn send(&mut self, cmd: &str) -> Result<(), String> {
        let s = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(s, "{cmd}")
            .and_then(|_| s.flush())
            .map_err(|e| format!("dpdk-testpmd stdin: {e}"))
    }

    /// Lines up to (and including) one containing `pat`.
    fn wait_for(&self, pat: &str, limit: Duration) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(pat);
                    got.push(l);
                    if hit {
                        return Ok(got);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no '{pat}' within {limit:?}; last output: {}",
                        got.iter()
                            .rev()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "dpdk-testpmd exited; last output: {}",
                        got.iter()
                            .rev()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ))
                }
            }
        }
    }

    /// Drains pending output.
    fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// Sends commands, one at a time (no wait for output).
    fn cmds(&mut self, cmds: &[&str]) -> Result<(), String> {
        for c in cmds {
            self.send(c)?;
        }
        Ok(())
    }

    /// The port's cumulative RX-packets counter.
    fn rx_packets(&mut self) -> Result<(u64, Instant), String> {
        self.drain();
        let t = Instant::now();
        self.send("show port stats all")?;
        let lines = self.wait_for("Tx-bps", Duration::from_secs(5))?;
        let rx = lines
            .iter()
            .find_map(|l| {
                let rest = l.trim().strip_prefix("RX-packets:")?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .ok_or("no RX-packets in show port stats")?;
        Ok((rx, t))
    }

    /// `quit`, then SIGTERM, then SIGKILL, by PID.
    fn stop(&mut self) {
        let _ = self.send("quit");
        self.stdin = None;
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = c.id() as libc::pid_t;
        for (wait, sig) in [(3000, libc::SIGTERM), (2000, libc::SIGKILL)] {
            let deadline = Instant::now() + Duration::from_millis(wait);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // SAFETY: kill(2) on our own, not yet reaped child (try_wait saw it
            // running), no memory involved.
            unsafe { libc::kill(pid, sig) };
        }
        let _ = c.wait();
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The vhost-user / virtio-user pair, with everything it set up.
pub struct Session {
    vh: Testpmd,
    vu: Testpmd,
    sock: PathBuf,
    prefixes: [String; 2],
    _huge: HugePages,
    /// What was set up, for the report.
    pub setup: String,
}

impl Session {
    /// Starts both sides (the vhost side first: it is the socket server).
    pub fn start(bin: &Path) -> Result<Session, String> {
        check_tools()?;
        let huge = HugePages::setup()?;
        let pid = std::process::id();
        let sock = PathBuf::from(format!("/tmp/zerohop-compare-{pid}.sock"));
        let _ = std::fs::remove_file(&sock);
        let prefixes = [format!("zhcmp{pid}vh"), format!("zhcmp{pid}vu")];
        let eal = |lcores: &str, prefix: &str, vdev: String| -> Vec<String> {
            vec![
                "--lcores".into(),
                lcores.into(),
                "--no-pci".into(),
                "--single-file-segments".into(),
                format!("--file-prefix={prefix}"),
                "--vdev".into(),
                vdev,
                "--log-level=lib.eal:error".into(),
            ]
        };
        let setup = format!(
            "{}; {} (split ring, 1 queue of {RING_SIZE} entries, mbufs 16384, vhost fwd lcore on CPU 1, virtio fwd lcore on CPU 0)",
            bin.display(),
            huge.describe()
        );
        let vh = Testpmd::spawn(
            bin,
            &eal(
                "0@0,1@1",
                &prefixes[0],
                format!("net_vhost0,iface={},queues=1", sock.display()),
            ),
        );
        // The server prints this before it waits for the client's link.
        let vh = vh.and_then(|v| {
            v.wait_for("Checking link statuses", Duration::from_secs(20))
                .map(|_| v)
        });
        let vh = match vh {
            Ok(v) => v,
            Err(e) => {
                cleanup_files(&sock, &prefixes);
                return Err(format!("vhost side: {e}"));
            }
        };
        let vu = Testpmd::spawn(
            bin,
            &eal(
                "0@1,1@0",
                &prefixes[1],
                format!(
                    "net_virtio_user0,path={},queues=1,queue_size={RING_SIZE}",
                    sock.display()
                ),
            ),
        );
        let vu = vu.and_then(|v| v.wait_for("Done", Duration::from_secs(20)).map(|_| v));
        let vu = match vu {
            Ok(v) => v,
            Err(e) => {
                drop(vh);
                cleanup_files(&sock, &prefixes);
                return Err(format!("virtio side: {e}"));
            }
        };
        if let Err(e) = vh.wait_for("Done", Duration::from_secs(20)) {
            drop(vu);
            drop(vh);
            cleanup_files(&sock, &prefixes);
            return Err(format!("vhost side never saw the link: {e}"));
        }
        Ok(Session {
            vh,
            vu,
            sock,
            prefixes,
            _huge: huge,
            setup,
        })
    }

    /// PIDs of both processes.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (self.vh.pid(), self.vu.pid())
    }

    /// Empties the rings: both sides rxonly for a moment, then stopped.
    fn quiesce(&mut self) -> Result<(), String> {
        self.vu.cmds(&["stop"])?;
        self.vh.cmds(&["stop"])?;
        self.vh.cmds(&["set fwd rxonly", "start"])?;
        self.vu.cmds(&["set fwd rxonly", "start"])?;
        std::thread::sleep(Duration::from_millis(30));
        self.vu.cmds(&["stop"])?;
        self.vh.cmds(&["stop"])?;
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    }

    /// virtio txonly -> vhost rxonly: Mpps received by the vhost side.
    pub fn throughput(&mut self, size: usize, burst: usize, secs: f64) -> Result<f64, String> {
        self.quiesce()?;
        let b = format!("set burst {burst}");
        let s = format!("set txpkts {size}");
        self.vh.cmds(&[&b, "set fwd rxonly", "start"])?;
        self.vu.cmds(&[&b, &s, "set fwd txonly", "start"])?;
        std::thread::sleep(Duration::from_millis(100));
        let (r0, t0) = self.vh.rx_packets()?;
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (r1, t1) = self.vh.rx_packets()?;
        self.vu.cmds(&["stop"])?;
        std::thread::sleep(Duration::from_millis(10));
        self.vh.cmds(&["stop"])?;
        let dt = t1.duration_since(t0).as_secs_f64();
        if r1 <= r0 || dt <= 0.0 {
            return Err(format!("no packets received (RX-packets {r0} -> {r1})"));
        }
        Ok((r1 - r0) as f64 / dt / 1e6)
    }

    /// One packet bouncing (io on both sides, burst 1): round trip in ns.
    pub fn ping_pong(&mut self, secs: f64) -> Result<f64, String> {
        self.quiesce()?;
        self.vh.cmds(&["set burst 1", "set fwd io", "start"])?;
        self.vu.cmds(&[
            "set burst 1",
            "set txpkts 64",
            "set fwd io",
            "start tx_first",
        ])?;
        std::thread::sleep(Duration::from_millis(100));
        let (r0, t0) = self.vu.rx_packets()?;
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (r1, t1) = self.vu.rx_packets()?;
        self.vu.cmds(&["stop"])?;
        self.vh.cmds(&["stop"])?;
        let dt = t1.duration_since(t0).as_secs_f64();
        if r1 <= r0 {
            return Err(format!(
                "the packet did not bounce (RX-packets {r0} -> {r1})"
            ));
        }
        Ok(dt * 1e9 / (r1 - r0) as f64)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The virtio side first (the client), then the server.
        self.vu.stop();
        self.vh.stop();
        cleanup_files(&self.sock, &self.prefixes);
    }
}

/// Removes the socket, DPDK's runtime directories and huge page files of our prefixes.
fn cleanup_files(sock: &Path, prefixes: &[String; 2]) {
    let _ = std::fs::remove_file(sock);
    for p in prefixes {
        for run in ["/var/run/dpdk", "/run/dpdk"] {
            let _ = std::fs::remove_dir_all(Path::new(run).join(p));
            // Only if empty (DPDK created it for us, or nobody else uses it).
            let _ = std::fs::remove_dir(run);
        }
        if let Ok(rd) = std::fs::read_dir(HUGE_DIR) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(p.as_str()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}
