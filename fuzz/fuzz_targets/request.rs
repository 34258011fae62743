//! `cargo fuzz run request`: see tally_fuzz::request (fuzz/src/request.rs) for the input and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::request::run(data));
