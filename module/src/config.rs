//! Module configuration: `--loadmodule libtally.so prefix tally max-backlog 1000000 ...`
//! or `CONFIG SET tally.<name> <value>` at run time (prefix is fixed at load time).

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use crate::slot;

pub static MAX_BACKLOG: AtomicI64 = AtomicI64::new(DEFAULT_MAX_BACKLOG);
pub static OP_TTL_MS: AtomicI64 = AtomicI64::new(DEFAULT_OP_TTL_MS);
pub static PREFIX: OnceLock<Mutex<String>> = OnceLock::new();
static TAGS: OnceLock<Vec<String>> = OnceLock::new();

pub const DEFAULT_MAX_BACKLOG: i64 = 1_000_000;
pub const DEFAULT_OP_TTL_MS: i64 = 86_400_000;
pub const DEFAULT_PREFIX: &str = "tally";

pub fn prefix_cell() -> &'static Mutex<String> {
    PREFIX.get_or_init(|| Mutex::new(DEFAULT_PREFIX.to_string()))
}

pub fn prefix() -> String {
    match prefix_cell().lock() {
        Ok(p) => p.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// The prefix as fixed at load time (it is immutable afterwards), read once on the first
/// command and kept: no lock and no copy per command.
pub fn prefix_fixed() -> &'static str {
    static FIXED: OnceLock<String> = OnceLock::new();
    FIXED.get_or_init(prefix).as_str()
}

pub fn max_backlog() -> i64 {
    MAX_BACKLOG.load(Relaxed)
}

pub fn op_ttl_ms() -> i64 {
    OP_TTL_MS.load(Relaxed)
}

/// The hash tag for `slot` (built once, on first use in cluster mode).
pub fn slot_tag(slot: usize) -> &'static str {
    let table = TAGS.get_or_init(slot::build_tag_table);
    table.get(slot).map(String::as_str).unwrap_or("0")
}
