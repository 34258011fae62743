//! The checks the fuzz targets run (fuzz_targets/*.rs are one line each): what each target
//! feeds to tally's parsers, and the invariants it asserts on what they return. A panic here
//! is a finding (libFuzzer saves the input under fuzz/artifacts/<target>/).
//!
//! - [`request`]: every command's argument parsing (`domain::request`), the canonical form
//!   and fingerprints of what parses, and the event the module would append for it, checked
//!   against serde_json and decoded by the shipper's decoder; [`holds`] does the same for the
//!   eleven hold commands (`domain::hold_request`), with the hold records and hold events.
//! - [`decimal`]: `Decimal::parse`, its canonical text, the arithmetic and `apply_delta`,
//!   against a reference written here with plain integers and strings.
//! - [`event`]: the shipper's event decoder on arbitrary text.
//!
//! The code under test is compiled into this crate from its source files, unchanged:
//! - the module's `domain/` (pure Rust, no redis_module, `scripts/check-module-purity.sh`),
//!   mounted at `crate::domain` as in the module. Depending on the `tally` crate is not an
//!   option: `domain` is private there, and its rlib installs Redis's allocator as the global
//!   allocator (`redis_module!`), which does not exist outside a server.
//! - the shipper's `event/decode.rs` (it uses serde, serde_json and uuid only): the shipper is
//!   a binary crate, with no lib target to depend on.
//!
//! If either file moves, these paths are what to change (fuzz/README.md).

pub mod decimal;
pub mod event;
pub mod holds;
pub mod request;

#[allow(dead_code, unused_imports)]
#[path = "../../module/src/domain/mod.rs"]
pub mod domain;

#[allow(dead_code)]
#[path = "../../shipper/src/event/decode.rs"]
pub mod shipper_decode;

/// An error reply's text: it starts with a known code and holds no control character (the
/// parsers never echo raw client bytes, `text::printable` filters them).
pub fn check_error_text(e: &domain::error::CmdError) {
    use domain::error::CODES;
    let text = e.to_string();
    assert!(CODES.contains(&e.code_name()), "unknown code in {text:?}");
    assert!(text.starts_with(e.code_name()), "{text:?}");
    assert!(
        !text.chars().any(char::is_control),
        "control character in the error reply {text:?}"
    );
}
