//! What reconcile is asked to compare, and how.

/// The options of one reconcile run.
pub(crate) struct Options {
    pub(crate) prefix: String,
    pub(crate) group: String,
    pub(crate) wait_ms: u64,
    pub(crate) batch: usize,
    pub(crate) show: usize,
}

impl Options {
    /// The options of `target`, waiting up to `wait_ms` for the pipeline to drain.
    pub(crate) fn new(target: &crate::cli::CheckOpts, wait_ms: u64) -> Options {
        Options {
            prefix: target.prefix.clone(),
            group: target.group.clone(),
            wait_ms,
            batch: target.batch.max(1),
            show: target.show,
        }
    }
}
