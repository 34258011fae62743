//! The hand-off from the source: one stream's entries as records (`Batch`), held in flight
//! until the `Downstream` they are handed to acknowledges them or lets them go.

use std::future::Future;

use super::ack::InFlight;
use crate::event::{Origin, Record};
use crate::redis_io::Entry;
use crate::retry::Fatal;

/// What the source hands downstream: one stream's entries as records (in the order read), and
/// the guard that keeps them in flight until they are acknowledged (`InFlight::ack`) or
/// dropped (left pending, read again).
pub(crate) struct Batch {
    pub(crate) records: Vec<Record>,
    /// the entries of `records`, the i-th id the i-th record's
    pub(crate) in_flight: InFlight,
}

/// Where the source hands its batches: the direct path's writers or forward (`paths/`).
pub(crate) trait Downstream: Send + Sync + 'static {
    /// Takes one stream's batch, waiting while the downstream is full (the read-ahead bound).
    /// From then on the downstream owns the batch's `InFlight` guard: it acknowledges the
    /// entries once the next stage holds them durably, or drops the guard and leaves them
    /// pending.
    fn take(&self, batch: Batch) -> impl Future<Output = ()> + Send;

    /// Called once every reader has stopped: returns when every batch taken is delivered and
    /// acknowledged (or left pending after a failure retrying cannot fix, which is returned).
    fn finish(&self) -> impl Future<Output = Result<(), Fatal>> + Send;
}

impl Batch {
    /// The batch as `n` batches (some maybe empty): record i goes to `part_of(record i)` (at
    /// most `n - 1`), with its entry's id. Nothing is released.
    pub(crate) fn split(self, n: usize, part_of: impl Fn(&Record) -> usize) -> Vec<Batch> {
        let n = n.max(1);
        let parts: Vec<usize> = self.records.iter().map(|r| part_of(r).min(n - 1)).collect();
        let guards = self.in_flight.split(n, |i| parts[i]);
        let mut records: Vec<Vec<Record>> = (0..n).map(|_| Vec::new()).collect();
        for (r, p) in self.records.into_iter().zip(&parts) {
            records[*p].push(r);
        }
        records
            .into_iter()
            .zip(guards)
            .map(|(records, in_flight)| Batch { records, in_flight })
            .collect()
    }
}

/// Convert an entry to a pipeline record (never fails: problems become the record's error).
/// The entry is consumed: its `event` bytes become the record's text without a copy.
pub(super) fn entry_to_record(stream: &str, e: Entry) -> Record {
    let (raw, err) = match e.fields {
        None => (
            "".to_string(),
            Some("stream entry was deleted before it could be shipped".to_string()),
        ),
        Some(mut fields) => match fields.iter().position(|(k, _)| k == "event") {
            Some(i) => match String::from_utf8(fields.swap_remove(i).1) {
                Ok(s) => (s, None),
                Err(v) => (
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    Some("`event` field is not UTF-8".to_string()),
                ),
            },
            None => {
                let obj: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                        )
                    })
                    .collect();
                (
                    serde_json::Value::Object(obj).to_string(),
                    Some("stream entry has no `event` field".to_string()),
                )
            }
        },
    };
    Record::new(Origin::stream_entry(stream, e.id), raw, err)
}
