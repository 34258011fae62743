//! `cargo fuzz run decimal`: see tally_fuzz::decimal (fuzz/src/decimal.rs) for the input and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::decimal::run(data));
