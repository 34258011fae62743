//! The unit of work: a tally event (docs/events.md, format version 1) and the `Record` that
//! carries it through the pipeline.
//!
//! In: an event's JSON text, from a stream entry or a Kafka message, with where it came from.
//! Out: a `Record`: its origin, the text as received, and the decoded `Event` or the reason it
//! is not one (which sends it to failed_events). Pure logic: no I/O.

mod decode;
mod record;

pub(crate) use decode::{Body, Coupon, Event, Hold, Usage};
pub(crate) use record::{next_stream_id, parse_stream_id, Origin, Record};
