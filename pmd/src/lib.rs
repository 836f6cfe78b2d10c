//! # pmd: memory windows and poll-mode drivers
//!
//! - [`window`]: one [`window::Window`] trait and its backends (a file under /dev/shm,
//!   huge pages, a PCI BAR through sysfs, a heap buffer for tests), plus the
//!   instrumented and link-model wrappers that make a PCIe link visible on one host.
#![cfg_attr(not(test), warn(missing_docs))]

pub mod control;
pub mod window;
