//! The progress log line.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::metrics::{
    EVENTS_DUPLICATE, EVENTS_FAILED, EVENTS_FORWARDED, EVENTS_PERSISTED, EVENTS_READ,
};

/// Logs one progress line per interval while counters move.
pub(crate) async fn progress(interval_ms: u64, shutdown: CancellationToken) {
    let mut last = (0, 0, 0, 0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval_ms.max(100))) => {}
            _ = shutdown.cancelled() => break,
        }
        let now = (
            EVENTS_READ.get(),
            EVENTS_FORWARDED.get(),
            EVENTS_PERSISTED.get(),
            EVENTS_FAILED.get(),
        );
        if now != last {
            tracing::info!(
                read = now.0,
                read_delta = now.0 - last.0,
                forwarded = now.1,
                forwarded_delta = now.1 - last.1,
                persisted = now.2,
                persisted_delta = now.2 - last.2,
                duplicates = EVENTS_DUPLICATE.get(),
                failed = now.3,
                "progress"
            );
            last = now;
        }
    }
}
