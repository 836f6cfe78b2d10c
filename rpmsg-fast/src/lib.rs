//! # rpmsg-fast: RPMsg over zerohop rings
//!
//! (The RPMsg layer is built in its own issue; this crate holds its place in the
//! workspace.)
#![cfg_attr(not(test), warn(missing_docs))]
