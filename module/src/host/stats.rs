//! What `INFO tally` reports, and the node-level state behind it: the command counters, the
//! op-id window (`domain::opids`, which admits or refuses new op-ids) and whether
//! `maxmemory-policy` can evict op-id records.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use redis_module::InfoContext;

use crate::domain::error::CODES;
use crate::domain::opids::Window;
use crate::host::{config, ffi};

static EVENTS: AtomicU64 = AtomicU64::new(0);
static REPLAYS: AtomicU64 = AtomicU64::new(0);
static PROPAGATION_FAILURES: AtomicU64 = AtomicU64::new(0);
static HOLDS_EXPIRED: AtomicU64 = AtomicU64::new(0);
static HOLD_EXPIRY_RETRIES: AtomicU64 = AtomicU64::new(0);
static REJECTED: [AtomicU64; CODES.len() + 1] = [const { AtomicU64::new(0) }; CODES.len() + 1];
/// Set while `maxmemory-policy` can evict op-id records (`host::eviction`).
static EVICTION_RISK: AtomicBool = AtomicBool::new(false);
static WINDOW: Mutex<Window> = Mutex::new(Window::new());

pub fn event_appended() {
    EVENTS.fetch_add(1, Relaxed);
}

pub fn propagation_failed() {
    PROPAGATION_FAILURES.fetch_add(1, Relaxed);
}

/// A hold expired (the timer or a command on its key).
pub fn hold_expired() {
    HOLDS_EXPIRED.fetch_add(1, Relaxed);
}

/// An expiry failed and was put off (logged with the reason).
pub fn hold_expiry_retried() {
    HOLD_EXPIRY_RETRIES.fetch_add(1, Relaxed);
}

pub fn replay() {
    REPLAYS.fetch_add(1, Relaxed);
}

/// Counts a rejection under its code; a code outside `CODES` counts as `other`.
pub fn rejected(code: &str) {
    let i = CODES.iter().position(|c| *c == code).unwrap_or(CODES.len());
    REJECTED[i].fetch_add(1, Relaxed);
}

pub fn set_eviction_risk(risky: bool) {
    EVICTION_RISK.store(risky, Relaxed);
}

/// The node's op-id window (commands run on Redis's main thread; the lock is never
/// contended).
pub fn op_id_window() -> MutexGuard<'static, Window> {
    WINDOW
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn snapshot() -> Vec<(String, u64)> {
    let mut out = vec![
        ("events_appended".to_string(), EVENTS.load(Relaxed)),
        ("idempotent_replays".to_string(), REPLAYS.load(Relaxed)),
        (
            "propagation_failures".to_string(),
            PROPAGATION_FAILURES.load(Relaxed),
        ),
        ("holds_expired".to_string(), HOLDS_EXPIRED.load(Relaxed)),
        (
            "hold_expiry_retries".to_string(),
            HOLD_EXPIRY_RETRIES.load(Relaxed),
        ),
    ];
    for (i, counter) in REJECTED.iter().enumerate() {
        let code = CODES.get(i).copied().unwrap_or("other");
        out.push((
            format!("rejected_{}", code.to_ascii_lowercase()),
            counter.load(Relaxed),
        ));
    }
    out
}

/// `INFO tally`: one `stats` section.
#[allow(deprecated)] // the builder API needs a section per call; these counters are flat
pub fn info(ctx: &InfoContext, _for_crash_report: bool) {
    let _ = ctx.add_info_section(Some("stats"));
    for (name, value) in snapshot() {
        let _ = ctx.add_info_field_long_long(&name, value as i64);
    }
    let _ = ctx.add_info_field_long_long("max_backlog", config::max_backlog());
    let _ = ctx.add_info_field_long_long("op_ttl_ms", config::op_ttl_ms());
    let _ = ctx.add_info_field_long_long("max_op_ids", config::max_op_ids());
    let live = op_id_window().live(ffi::now_ms());
    let _ = ctx.add_info_field_long_long("op_ids_counted", i64::try_from(live).unwrap_or(i64::MAX));
    // 1 while maxmemory-policy can evict op-id records (tally needs noeviction).
    let _ = ctx.add_info_field_long_long(
        "maxmemory_policy_evicts_op_ids",
        i64::from(EVICTION_RISK.load(Relaxed)),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn noperm_has_its_own_counter() {
        super::rejected("NOPERM");
        let snap = super::snapshot();
        let get = |n: &str| snap.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert_eq!(get("rejected_noperm"), Some(1));
        assert_eq!(get("rejected_other"), Some(0));
    }
}
