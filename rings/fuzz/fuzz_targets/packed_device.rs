//! Fuzz target `packed_device`: see `rings::fuzzing::packed::run_device`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rings::fuzzing::packed::run_device(data));
