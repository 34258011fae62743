//! The durable stores the paths write to: Kafka (forward's sink, persist's source) and
//! Postgres (the history and its derived tables).

pub(crate) mod kafka;
pub(crate) mod postgres;
