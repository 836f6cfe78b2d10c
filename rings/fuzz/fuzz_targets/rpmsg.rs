//! Fuzz target `rpmsg`: see `rpmsg_fast::fuzzing::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpmsg_fast::fuzzing::run(data));
