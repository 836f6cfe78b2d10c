//! Child processes of the compare run: the re-executed compare binary as a peer
//! (`--peer ...`), killed and reaped on drop; scratch names under /dev/shm; running a
//! closure on a pinned thread (so the main thread, and every child it spawns, keeps the
//! default affinity).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

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

pub use zerohop_benches::Peer;
