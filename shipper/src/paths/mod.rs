//! The two ways from the streams to Postgres, and the stages they are made of.
//!
//! - Direct (`direct`): the source hands each batch to per-key writers, which commit it to
//!   Postgres and acknowledge its entries.
//! - Kafka: `forward` (stream -> topic; each batch acknowledged once every message has its
//!   delivery report) and `persist` (topic -> Postgres; the Kafka positions stored in the
//!   same transaction as the batch, fenced between instances).

mod direct;
mod forward;
mod persist;

pub(crate) use direct::Writers;
pub(crate) use forward::Forward;
pub(crate) use persist::Persist;
