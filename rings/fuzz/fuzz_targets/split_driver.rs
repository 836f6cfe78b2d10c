//! Fuzz target `split_driver`: see `rings::fuzzing::split::run_driver`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rings::fuzzing::split::run_driver(data));
