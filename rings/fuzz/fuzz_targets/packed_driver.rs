//! Fuzz target `packed_driver`: see `rings::fuzzing::packed::run_driver`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rings::fuzzing::packed::run_driver(data));
