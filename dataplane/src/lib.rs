//! # dataplane: what zerohop applications link
//!
//! The DPDK-like core an application is written against, plus re-exports of the
//! layers below ([`rings`], [`pmd`]) so one dependency suffices:
//!
//! - [`mempool`]: fixed-size packet buffers in a window area, lock-free, with
//!   per-lcore caches ([`Mempool`], shared as `Arc<Mempool>`).
//! - [`mbuf`]: packet handles over those buffers ([`Mbuf`]: headroom, data window,
//!   metadata, `prepend`/`append`/`adj`/`trim`; freed on drop or in bulk).
//! - [`lcore`]: one pinned thread per core from a `"0-3,6"` list ([`Lcores`]), and the
//!   busy-poll loop ([`poll_loop`], [`Poller`], [`Backoff`]).
//! - [`port`]: a link to a peer over a window ([`Port`]: control plane, queue
//!   handles with zero-copy `rx_burst`/`tx_burst`, peer loss and re-attach).
//! - [`stats`]: per-lcore single-writer counters over the heap or a window area
//!   ([`Stats`], [`Rates`]).
//! - [`probe`]: the core placement probe the benchmarks print.
//!
//! ```
//! use dataplane::Mempool;
//!
//! // 64 buffers of 2 KiB on the heap (a window area works the same: Mempool::new).
//! let pool = Mempool::heap(64, 2048).unwrap();
//! let mut m = pool.alloc().expect("a free buffer");
//! m.extend_from_slice(b"hello").unwrap();
//! m.prepend(2).unwrap().copy_from_slice(b"> ");
//! assert_eq!(m.data(), b"> hello");
//! assert_eq!(pool.available(), 63);
//! m.free(); // or drop(m)
//! assert_eq!(pool.available(), 64);
//! ```
#![cfg_attr(not(test), warn(missing_docs))]

pub mod lcore;
pub mod mbuf;
pub mod mempool;
pub mod port;
pub mod probe;
pub mod stats;
#[doc(hidden)]
pub mod testing;

pub use lcore::{parse_cores, poll_loop, Backoff, LcoreCtx, LcoreError, Lcores, Poller, Work};
pub use mbuf::{free_bulk, Mbuf, MbufBurst, MbufError};
pub use mempool::{Mempool, MempoolConfig, MempoolError};
pub use port::{
    free_rx_bulk, DownReason, LinkChange, LinkStatus, Port, PortConfig, PortError, PortStats,
    QueueCounters, QueueHandle, RingKind, Role, RxMbuf, TxBuf,
};
pub use stats::{Counters, LcoreStats, Rates, Snapshot, Stats, StatsError};

pub use pmd;
pub use rings;
