//! The two ways from the streams to Postgres, and the stages they are made of.
//!
//! In: `source::Batch`es (records and their in-flight guard), through the
//! `source::Downstream` each path implements; persist reads Kafka instead. Out: the batch
//! durable in the next stage (`sinks`), then its entries acknowledged (`InFlight::ack`), or,
//! when retrying cannot help, a `retry::Fatal` returned to the command.
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
