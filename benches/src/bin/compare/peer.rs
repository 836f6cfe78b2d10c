//! Child processes of the compare run: the re-executed compare binary as a peer
//! (`--peer ...`), killed and reaped on drop; scratch names under /dev/shm; running a
//! closure on a pinned thread (so the main thread, and every child it spawns, keeps the
//! default affinity).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use dataplane::probe::pin;

/// A fresh `/dev/shm/zerohop-compare-<pid>-<tag>-<n>` name.
pub fn scratch_path(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    // Relaxed: only makes the name unique within this process.
    let n = N.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(format!(
        "/dev/shm/zerohop-compare-{}-{tag}-{n}",
        std::process::id()
    ))
}

/// Runs `f` on a thread pinned to `core` and returns its value.
pub fn on_core<T: Send>(core: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(core);
            f()
        })
        .join()
        .expect("pinned worker panicked")
    })
}

/// The compare binary re-executed as a peer process.
pub struct Peer {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl Peer {
    /// Spawns `compare <args>` with its stdout read line by line.
    pub fn spawn(args: &[String]) -> Result<Peer, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn peer: {e}"))?;
        let out = child.stdout.take().ok_or("peer stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Ends at the peer's EOF (its exit or kill).
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Peer {
            child: Some(child),
            lines: rx,
        })
    }

    /// The next line starting with `prefix` (an `ERROR` line or EOF fails).
    pub fn line(&self, prefix: &str, deadline: Instant) -> Result<String, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(l) if l.starts_with("ERROR") => return Err(format!("peer: {l}")),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("peer: no {prefix} before the deadline"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("peer exited before {prefix}"))
                }
            }
        }
    }

    /// Waits for the peer to exit successfully (killed at the deadline).
    pub fn finish(mut self, deadline: Instant) -> Result<(), String> {
        let Some(c) = self.child.as_mut() else {
            return Ok(());
        };
        loop {
            match c.try_wait() {
                Ok(Some(st)) => {
                    self.child = None;
                    return if st.success() {
                        Ok(())
                    } else {
                        Err(format!("peer failed: {st}"))
                    };
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Ok(None) => return Err("peer did not exit; killed".into()),
                Err(e) => return Err(format!("wait peer: {e}")),
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
