//! Fuzz target `posted_tx`: see `rings::fuzzing::posted::run_tx`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rings::fuzzing::posted::run_tx(data));
