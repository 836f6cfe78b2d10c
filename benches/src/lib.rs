//! Shared helpers of zerohop's benchmarks (the criterion benches and the `compare`
//! binary): a re-executed peer process and the single-core copy baseline.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use pmd::copy::CopyEngine;
use rings::{Mem, Region};

/// This benchmark binary re-executed as a peer process (`args` name its part), its
/// stdout read line by line; killed and reaped on drop unless it exited.
pub struct Peer {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl Peer {
    /// Spawns `<this binary> <args>`.
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

/// Copies per burst of [`CopyBench`] (one sfence per burst on the NT path).
pub const COPY_BURST: usize = 32;

/// Single-core copies into a cold destination larger than the L3: the copy-bandwidth
/// baseline (plain `write_bytes`, or `CopyEngine` non-temporal stores).
pub struct CopyBench {
    dst: Region,
    src: Vec<u8>,
    cursor: usize,
    cold: usize,
}

impl CopyBench {
    /// Allocates and faults in `cold` bytes of destination.
    pub fn new(cold: usize) -> CopyBench {
        let dst = Region::heap(cold);
        for off in (0..cold).step_by(4096) {
            // Fault every page in now.
            let _ = dst.write_bytes(off, &[1]);
        }
        CopyBench {
            dst,
            src: (0..64 * 1024).map(|i| (i * 7 + 3) as u8).collect(),
            cursor: 0,
            cold,
        }
    }

    /// GB/s copying about `total` bytes in `size`-byte copies, bursts of
    /// [`COPY_BURST`] (NT: `CopyEngine` streaming every copy, one sfence per burst),
    /// on the calling thread.
    pub fn copy(&mut self, size: usize, nt: bool, total: usize) -> Result<f64, String> {
        let engine = CopyEngine::detect().with_threshold(0);
        let stride = size.next_multiple_of(64);
        let src = &self.src[..size.min(self.src.len())];
        let bursts = (total / (size * COPY_BURST)).max(1);
        let mut cursor = self.cursor;
        let t = Instant::now();
        for _ in 0..bursts {
            let mut b = engine.burst();
            for _ in 0..COPY_BURST {
                if cursor + stride > self.cold {
                    cursor = 0;
                }
                if nt {
                    b.copy_to(&self.dst, cursor, src)
                } else {
                    self.dst.write_bytes(cursor, src)
                }
                .map_err(|e| e.to_string())?;
                cursor += stride;
            }
            b.finish();
        }
        let dt = t.elapsed().as_secs_f64();
        self.cursor = std::hint::black_box(cursor);
        Ok((bursts * COPY_BURST * src.len()) as f64 / dt / 1e9)
    }
}
