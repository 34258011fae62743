//! `cargo fuzz run event_decode`: see tally_fuzz::event (fuzz/src/event.rs) for the input and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::event::run(data));
