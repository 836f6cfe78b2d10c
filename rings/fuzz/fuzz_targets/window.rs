//! Fuzz target `window`: see `rings::fuzzing::window::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rings::fuzzing::window::run(data));
