//! Kafka: the topic forward produces to and persist consumes from.
//!
//! In (producer): batches of `Record`s, one message each, keyed by the event's first data
//! key, with the `tally_source` header (and `event_id`, `tally_error` when known). Out
//! (consumer): messages turned back into `Record`s, and the topic's watermarks.
//!
//! - `client`: configuration shared by both sides, topic creation, header names, logs;
//! - `producer`: `Forwarder`, an idempotent producer (acks=all);
//! - `consumer`: the consumer's configuration, message -> record, watermarks.

mod client;
mod consumer;
mod producer;

pub(crate) use client::{ensure_topic, QuietContext};
pub(crate) use consumer::{
    consumer_config, message_to_record, unpersisted, watermarks, BROKER_REQUEST_TIMEOUT,
};
pub(crate) use producer::Forwarder;
