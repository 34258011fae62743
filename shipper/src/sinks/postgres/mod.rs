//! Postgres: the history (events, failed_events) and the tables derived from it, written one
//! transaction per batch.
//!
//! In: batches of `Record`s from the direct writers or persist (`PgSink`), with persist's
//! Kafka positions (`Position`, the fence between persist instances). Out: the rows, the
//! batch's `Outcome` (inserted, duplicates, failed), and a fenced batch written not at all.
//!
//! - `sink`: `PgSink`, the error policy (retry, stop, isolate a bad record) and the watermark
//!   repair beside it;
//! - `batch`: one batch in one transaction (events deduplicated on id, failed_events);
//! - `fence`: the Kafka positions stored with the batch;
//! - `derived`: balances, coupons, usage; `seqs`: the per-key order proof;
//! - `copy`: binary COPY for the history tables; `months`: their month partitions;
//! - `schema`: migrations, the schema version check, and the pool; `failed`: failed_events
//!   for `tally-shipper failed ...` / `retry-failed`, and the gauges of run/persist.

mod batch;
mod copy;
mod derived;
pub(crate) mod failed;
mod fence;
mod months;
mod schema;
mod seqs;
mod sink;

pub(crate) use fence::{load_positions, Position};
pub(crate) use schema::{connect, migrate, older_shippers, schema_state, schema_version};
pub(crate) use seqs::repair as repair_watermarks;
pub(crate) use sink::{PgSink, Stored};
