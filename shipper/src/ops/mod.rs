//! The operations: one-shot commands beside the pipeline, each reading Redis and the
//! Postgres history directly (never through a pipeline stage).
//!
//! - `reconcile`: Redis against the history, key by key; exit 0 match, 1 mismatch, 2 in flight;
//! - `restore`: a lost Redis rebuilt from the history, then its op-id records (`op_records`);
//! - `restore_as_of`: a rollback to a moment, as correcting events through the module;
//! - `retry_failed`: failed_events decoded again and stored;
//! - `nodes`: the Redis side of an operation (a standalone server or every primary).

mod nodes;
mod op_records;
pub(crate) mod reconcile;
pub(crate) mod restore;
mod restore_as_of;
pub(crate) mod retry_failed;
