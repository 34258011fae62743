//! Where the reading of one stream stands (`Cursor`): own pending entries first, then claims
//! of entries other consumers left idle, then new entries; and the replies of those reads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

use crate::obs::metrics;
use crate::redis_io::{as_array, as_str, parse_entries, Entry};

/// XREADGROUP reply: `[[stream, [entries]]]` (RESP2) or a map (RESP3); Nil on timeout.
pub(super) fn parse_xread(v: &Value) -> Vec<Entry> {
    match v {
        Value::Nil => vec![],
        Value::Map(m) => m.iter().flat_map(|(_, e)| parse_entries(e)).collect(),
        other => as_array(other)
            .iter()
            .flat_map(|s| parse_entries(as_array(s).get(1).unwrap_or(&Value::Nil)))
            .collect(),
    }
}

/// What the next read of a stream asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Read {
    /// own pending entries after this id (left by an earlier run or a reply lost on the way)
    Pending(String),
    /// XAUTOCLAIM of entries other consumers left idle, from this cursor
    Claim(String),
    /// entries never delivered to the group
    New,
}

/// Where the reading of one stream stands.
pub(super) struct Cursor {
    pub(super) stream: String,
    /// Some while re-reading own pending entries
    pending_from: Option<String>,
    pub(super) group_ready: bool,
    claim_cursor: String,
    last_claim: Option<Instant>,
    /// the slot moved to another primary (MOVED): dropped here, read there
    pub(super) moved: bool,
    /// the last read was redirected by ASK (slot being migrated): swept, never blocking,
    /// until a read is answered here again
    pub(super) asked: bool,
    /// ids being delivered downstream: never re-read or claimed meanwhile
    pub(super) held: Arc<Mutex<HashSet<String>>>,
}

impl Cursor {
    pub(super) fn new(stream: &str) -> Cursor {
        Cursor {
            stream: stream.to_string(),
            pending_from: Some("0".into()),
            group_ready: false,
            claim_cursor: "0-0".into(),
            last_claim: None,
            moved: false,
            asked: false,
            held: Default::default(),
        }
    }

    /// After a new connection: re-read own pending entries from the start, check the group.
    pub(super) fn reset(&mut self) {
        self.pending_from = Some("0".into());
        self.group_ready = false;
    }

    pub(super) fn next_read(&self, claim_every: Duration) -> Read {
        if let Some(from) = &self.pending_from {
            return Read::Pending(from.clone());
        }
        let due = self.claim_cursor != "0-0"
            || self.last_claim.is_none_or(|t| t.elapsed() >= claim_every);
        if due {
            Read::Claim(self.claim_cursor.clone())
        } else {
            Read::New
        }
    }

    /// Take the reply of `read`: move the cursor on and return the entries to hand over.
    pub(super) fn advance(&mut self, read: &Read, reply: &Value) -> Vec<Entry> {
        match read {
            Read::Pending(_) => {
                let entries = parse_xread(reply);
                self.pending_from = entries.last().map(|l| l.id.clone());
                if !entries.is_empty() {
                    tracing::info!(stream = %self.stream, count = entries.len(), "re-reading own pending entries");
                }
                self.not_in_flight(entries)
            }
            Read::Claim(_) => {
                let (next, entries, deleted) = parse_autoclaim(reply);
                if deleted > 0 {
                    tracing::error!(stream = %self.stream, count = deleted,
                        "pending entries were deleted from the stream before being shipped (removed by someone else)");
                }
                if next == "0-0" {
                    self.last_claim = Some(Instant::now());
                }
                self.claim_cursor = next;
                // our own batches still being delivered go idle during an outage: not claims
                let entries = self.not_in_flight(entries);
                if !entries.is_empty() {
                    metrics::ENTRIES_CLAIMED.inc_by(entries.len() as u64);
                    tracing::info!(stream = %self.stream, count = entries.len(), "claimed idle pending entries");
                }
                entries
            }
            Read::New => parse_xread(reply),
        }
    }

    fn not_in_flight(&self, entries: Vec<Entry>) -> Vec<Entry> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .into_iter()
            .filter(|e| !held.contains(&e.id))
            .collect()
    }
}

/// XAUTOCLAIM reply: (next cursor, claimed entries, how many ids were deleted meanwhile).
fn parse_autoclaim(v: &Value) -> (String, Vec<Entry>, usize) {
    let parts = as_array(v);
    let next = parts
        .first()
        .and_then(as_str)
        .unwrap_or_else(|| "0-0".into());
    let entries = parts.get(1).map(parse_entries).unwrap_or_default();
    let deleted = parts.get(2).map(as_array).map(|a| a.len()).unwrap_or(0);
    (next, entries, deleted)
}

/// Keep one cursor per stream the node holds now: new streams are added, gone ones dropped
/// (their batches in flight still finish and are acknowledged).
pub(super) fn sync_cursors(cursors: &mut Vec<Cursor>, streams: &[String]) {
    cursors.retain(|c| streams.contains(&c.stream));
    for s in streams {
        if !cursors.iter().any(|c| &c.stream == s) {
            cursors.push(Cursor::new(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Record;
    use crate::redis_io::bulk;
    use crate::source::batch::entry_to_record;

    #[test]
    fn parses_xreadgroup_reply_and_builds_records() {
        let good = r#"{"v":1,"id":"0193508e-7c4a-7b3e-9f1c-3d2a8e5b6c01","type":"asset.incr","ts":1,"op":null,"meta":null,"keys":[{"key":"a","seq":1}],"changes":[{"key":"a","field":"g","delta":"1","balance":"1"}]}"#;
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("tally:log"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("event"), bulk(good)]),
                ]),
                Value::Array(vec![
                    bulk("1-1"),
                    Value::Array(vec![bulk("junk"), bulk("x")]),
                ]),
                Value::Array(vec![bulk("1-2"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_xread(&reply);
        assert_eq!(entries.len(), 3);
        let recs: Vec<Record> = entries
            .into_iter()
            .map(|e| entry_to_record("tally:log", e))
            .collect();
        assert!(recs[0].decoded.is_ok());
        assert_eq!(recs[0].source, "redis:tally:log/1-0");
        assert_eq!(
            recs[1].decoded.as_ref().unwrap_err(),
            "stream entry has no `event` field"
        );
        assert_eq!(recs[1].raw, r#"{"junk":"x"}"#);
        assert!(recs[2].decoded.as_ref().unwrap_err().contains("deleted"));
        assert!(parse_xread(&Value::Nil).is_empty());
    }

    fn entries(ids: &[&str]) -> Value {
        Value::Array(
            ids.iter()
                .map(|id| {
                    Value::Array(vec![
                        bulk(id),
                        Value::Array(vec![bulk("event"), bulk("{}")]),
                    ])
                })
                .collect(),
        )
    }

    fn entries_reply(stream: &str, ids: &[&str]) -> Value {
        Value::Array(vec![Value::Array(vec![bulk(stream), entries(ids)])])
    }

    #[test]
    fn a_cursor_rereads_own_pending_then_claims_then_reads_new() {
        let every = Duration::from_secs(60);
        let mut c = Cursor::new("s");
        assert_eq!(c.next_read(every), Read::Pending("0".into()));
        let got = c.advance(
            &Read::Pending("0".into()),
            &entries_reply("s", &["1-0", "2-0"]),
        );
        assert_eq!(got.len(), 2);
        assert_eq!(
            c.next_read(every),
            Read::Pending("2-0".into()),
            "pending entries are paged by the last id"
        );
        assert!(c
            .advance(&Read::Pending("2-0".into()), &entries_reply("s", &[]))
            .is_empty());
        assert_eq!(
            c.next_read(every),
            Read::Claim("0-0".into()),
            "a claim is due at the start"
        );
        let claim_page = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ]);
        c.advance(&Read::Claim("0-0".into()), &claim_page);
        assert_eq!(
            c.next_read(every),
            Read::Claim("7-0".into()),
            "an unfinished claim goes on"
        );
        let claim_done = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ]);
        c.advance(&Read::Claim("7-0".into()), &claim_done);
        assert_eq!(c.next_read(every), Read::New);
        assert_eq!(
            c.next_read(Duration::ZERO),
            Read::Claim("0-0".into()),
            "the next claim comes after the interval"
        );
        c.reset();
        assert_eq!(
            c.next_read(every),
            Read::Pending("0".into()),
            "a new connection re-reads own pending entries"
        );
        assert!(!c.group_ready);
    }

    #[test]
    fn entries_in_flight_are_never_reread_or_claimed() {
        let mut c = Cursor::new("s");
        c.held.lock().unwrap().insert("1-0".into());
        let got = c.advance(
            &Read::Pending("0".into()),
            &entries_reply("s", &["1-0", "2-0"]),
        );
        assert_eq!(
            got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec!["2-0"]
        );
        assert_eq!(
            c.next_read(Duration::ZERO),
            Read::Pending("2-0".into()),
            "paging still moves past held ids"
        );
        let claimed = Value::Array(vec![
            bulk("0-0"),
            entries(&["1-0", "3-0"]),
            Value::Array(vec![]),
        ]);
        let got = c.advance(&Read::Claim("0-0".into()), &claimed);
        assert_eq!(
            got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec!["3-0"]
        );
    }

    #[test]
    fn cursors_follow_the_streams_a_node_holds() {
        let mut cursors = vec![Cursor::new("a"), Cursor::new("b")];
        cursors[0].pending_from = None;
        sync_cursors(&mut cursors, &["a".to_string(), "c".to_string()]);
        let names: Vec<&str> = cursors.iter().map(|c| c.stream.as_str()).collect();
        assert_eq!(names, vec!["a", "c"]);
        assert_eq!(
            cursors[0].pending_from, None,
            "a kept stream keeps its position"
        );
        sync_cursors(&mut cursors, &[]);
        assert!(cursors.is_empty());
    }
}
