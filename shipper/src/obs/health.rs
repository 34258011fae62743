//! Whether deliveries to the next stage (Kafka or Postgres) keep failing, for /healthz.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use crate::clock::now_ms;

/// 0 when healthy, else the Unix ms since which deliveries to the next stage keep failing.
static FAILING_SINCE_MS: AtomicI64 = AtomicI64::new(0);
/// /healthz turns 503 after deliveries have failed continuously for this long
/// (`--unhealthy-after-ms`).
static UNHEALTHY_AFTER_MS: AtomicI64 = AtomicI64::new(10_000);

pub(crate) fn set_unhealthy_after_ms(ms: u64) {
    UNHEALTHY_AFTER_MS.store(i64::try_from(ms).unwrap_or(i64::MAX), Relaxed);
}

/// A delivery failed (`true`) or succeeded (`false`).
pub(crate) fn set_failing(failing: bool) {
    if failing {
        let _ = FAILING_SINCE_MS.compare_exchange(0, now_ms(), Relaxed, Relaxed);
    } else {
        FAILING_SINCE_MS.store(0, Relaxed);
    }
}

/// How many seconds deliveries have been failing, once that is longer than
/// `--unhealthy-after-ms`; None while healthy.
pub(crate) fn degraded_for_s() -> Option<i64> {
    let since = FAILING_SINCE_MS.load(Relaxed);
    let after = UNHEALTHY_AFTER_MS.load(Relaxed);
    (since != 0 && now_ms() - since >= after).then(|| (now_ms() - since) / 1000)
}
