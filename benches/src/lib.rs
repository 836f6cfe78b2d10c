//! Shared helpers for zerohop's criterion benchmarks.
