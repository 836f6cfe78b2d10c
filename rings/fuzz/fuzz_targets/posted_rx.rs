//! Fuzz target `posted_rx`: see `rings::fuzzing::posted::run_rx`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rings::fuzzing::posted::run_rx(data));
