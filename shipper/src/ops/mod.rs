//! The operations: one-shot commands beside the pipeline, each reading Redis and the
//! Postgres history directly (never through a pipeline stage).
//!
//! In: the Redis URL list `run` takes (standalone servers, or seeds of a cluster: `nodes`)
//! and the Postgres history, through `redis_io` and the facades of `sinks::postgres` /
//! `sinks::kafka`. Out: Redis rewritten (restore), old months of the history archived and
//! removed (retire), a report on stdout, an exit code.
//!
//! - `reconcile`: Redis against the history, key by key; exit 0 match, 1 mismatch, 2 in flight;
//! - `restore`: a lost Redis rebuilt from the history (`restore_holds`: its open holds), then
//!   its op-id records (`op_records`);
//! - `restore_as_of`: a rollback to a moment, as correcting events through the module
//!   (`restore_as_of_holds`: the holds open at it);
//! - `retire`: `history retire`, old months of the history archived to files and removed;
//! - `failed`: the failed_events rows listed, shown, retried (decoded again and stored) or
//!   dismissed with a recorded reason; exit 0 done, 4 no such row, 5 refused, 6 still fails;
//! - `nodes`: the Redis side of an operation (standalone servers or every primary);
//! - `decimal`: decimal text in one canonical form.

mod decimal;
pub(crate) mod failed;
mod nodes;
mod op_records;
pub(crate) mod reconcile;
pub(crate) mod restore;
mod restore_as_of;
mod restore_as_of_holds;
mod restore_holds;
pub(crate) mod retire;
