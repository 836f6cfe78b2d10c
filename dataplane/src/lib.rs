//! # dataplane: what zerohop applications link
//!
//! Re-exports the layers below so one dependency suffices.
#![cfg_attr(not(test), warn(missing_docs))]

pub mod lcore;
pub mod mbuf;
pub mod mempool;
pub mod probe;
pub mod stats;
#[doc(hidden)]
pub mod testing;

pub use pmd;
pub use rings;
