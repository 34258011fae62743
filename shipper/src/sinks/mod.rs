//! The durable stores the paths write to: Kafka (forward's sink, persist's source) and
//! Postgres (the history and its derived tables).
//!
//! In: batches of `event::Record`s, each delivery retried until stored (`retry`). Out: the
//! batch held durably (Kafka acks=all, a committed transaction), or a `retry::Fatal`.

pub(crate) mod kafka;
pub(crate) mod postgres;
