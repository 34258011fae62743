//! Stopping the long-running commands (run, forward, persist): SIGTERM or SIGINT stops the
//! reads and lets the batches in flight finish; once --shutdown-deadline-ms has passed after
//! the signal, `main` ends the process with exit code 3, whatever is still in flight left
//! unacknowledged (it is shipped again by the next run and deduplicated).

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

/// The plumbing every task of a command watches.
#[derive(Clone, Default)]
pub(crate) struct Shutdown {
    /// cancelled by a signal or by a failure that stops the process: stop reading, finish
    /// what is in flight
    pub(crate) requested: CancellationToken,
    /// cancelled once the deadline after a signal has passed (`main` stops waiting then)
    pub(crate) overdue: CancellationToken,
}

impl Shutdown {
    /// SIGTERM/SIGINT -> `requested`; `deadline_ms` later -> `overdue`. The handlers are
    /// registered before this returns, so once /healthz answers a SIGTERM is never lost.
    pub(crate) fn on_signals(&self, deadline_ms: u64) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let (requested, overdue) = (self.requested.clone(), self.overdue.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping reads, finishing in-flight batch"),
                _ = int.recv() => tracing::info!("SIGINT: stopping reads, finishing in-flight batch"),
            }
            requested.cancel();
            tokio::time::sleep(Duration::from_millis(deadline_ms)).await;
            tracing::warn!(deadline_ms, "shutdown deadline exceeded; exiting with in-flight work unacknowledged (it will be re-shipped)");
            overdue.cancel();
        });
        Ok(())
    }
}
