//! Counters for `INFO tally`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::CODES;

static EVENTS: AtomicU64 = AtomicU64::new(0);
static REPLAYS: AtomicU64 = AtomicU64::new(0);
static PROPAGATION_FAILURES: AtomicU64 = AtomicU64::new(0);
static REJECTED: [AtomicU64; CODES.len() + 1] = [const { AtomicU64::new(0) }; CODES.len() + 1];

pub fn event_appended() {
    EVENTS.fetch_add(1, Relaxed);
}

pub fn propagation_failed() {
    PROPAGATION_FAILURES.fetch_add(1, Relaxed);
}

pub fn replay() {
    REPLAYS.fetch_add(1, Relaxed);
}

/// Counts a rejection under its code; a code outside `CODES` counts as `other`.
pub fn rejected(code: &str) {
    let i = CODES.iter().position(|c| *c == code).unwrap_or(CODES.len());
    REJECTED[i].fetch_add(1, Relaxed);
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

pub fn snapshot() -> Vec<(String, u64)> {
    let mut out = vec![
        ("events_appended".to_string(), EVENTS.load(Relaxed)),
        ("idempotent_replays".to_string(), REPLAYS.load(Relaxed)),
        (
            "propagation_failures".to_string(),
            PROPAGATION_FAILURES.load(Relaxed),
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
