//! Fuzz target `split_device`: see `rings::fuzzing::split::run_device`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rings::fuzzing::split::run_device(data));
