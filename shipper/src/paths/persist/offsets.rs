//! Kafka offsets and the positions stored in Postgres: where each partition starts, which
//! messages of a batch this instance owns, and the positions a stored batch leads to.

use std::collections::{BTreeMap, HashMap};

use crate::event::Record;
use crate::sinks::postgres::Position;

/// Positions after a batch: per (topic, partition) the highest offset seen + 1, continuing
/// from the stored position `from` gives.
pub(crate) fn next_positions(
    seen: impl IntoIterator<Item = (String, i32, i64)>,
    from: impl Fn(i32) -> Option<i64>,
) -> Vec<Position> {
    let mut max: HashMap<(String, i32), i64> = HashMap::new();
    for (t, p, o) in seen {
        let e = max.entry((t, p)).or_insert(o);
        *e = (*e).max(o);
    }
    let mut out: Vec<Position> = max
        .into_iter()
        .map(|((topic, partition), o)| Position {
            topic,
            partition,
            from: from(partition),
            next_offset: o + 1,
        })
        .collect();
    out.sort();
    out
}

/// A message read from Kafka, as a record, and where it was read.
#[derive(Debug)]
pub(crate) struct Consumed {
    pub(crate) record: Record,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// A batch read from Kafka, in the order read.
pub(crate) type Batch = Vec<Consumed>;

/// Keeps the messages of partitions this instance owns, at or past the position they
/// continue from (a message from before an assignment or a re-read is dropped); the
/// positions the kept ones lead to; and how many messages were dropped.
pub(crate) fn owned_part(
    batch: Batch,
    owned: &BTreeMap<i32, Option<i64>>,
) -> (Vec<Record>, Vec<Position>, usize) {
    let total = batch.len();
    let (recs, coords): (Vec<Record>, Vec<(String, i32, i64)>) = batch
        .into_iter()
        .filter(|m| {
            owned
                .get(&m.partition)
                .is_some_and(|from| from.is_none_or(|f| m.offset >= f))
        })
        .map(|m| (m.record, (m.topic, m.partition, m.offset)))
        .unzip();
    let dropped = total - recs.len();
    let positions = next_positions(coords, |p| owned.get(&p).copied().flatten());
    (recs, positions, dropped)
}

/// Where to start each partition, given the stored positions and the broker's (low, high)
/// watermarks. Err names every partition whose unpersisted events the broker no longer has.
pub(crate) fn start_offsets(
    topic: &str,
    watermarks: &BTreeMap<i32, (i64, i64)>,
    stored: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, Option<i64>>, String> {
    let mut out = BTreeMap::new();
    let mut lost = Vec::new();
    for (&p, &(low, high)) in watermarks {
        match stored.get(&p) {
            Some(&next) if next < low => lost.push(format!("partition {p}: offsets {next}..{} (earliest now {low})", low - 1)),
            Some(&next) if next > high => lost.push(format!(
                "partition {p}: stored position {next} is past the end {high} (was the topic deleted and recreated?)"
            )),
            Some(&next) => {
                out.insert(p, Some(next));
            }
            None => {
                out.insert(p, None); // never persisted anything: from the beginning
            }
        }
    }
    if lost.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "topic {topic}: events were deleted by Kafka retention before they were persisted: {}. \
             They are not in Postgres; replay them from another copy, or delete the kafka_offsets rows to start over",
            lost.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Origin;

    #[test]
    fn next_position_per_partition() {
        let seen = vec![
            ("t".to_string(), 0, 5),
            ("t".to_string(), 1, 9),
            ("t".to_string(), 0, 7),
            ("t".to_string(), 0, 6),
            ("u".to_string(), 0, 0),
        ];
        let pos = |t: &str, p, o| Position {
            topic: t.into(),
            partition: p,
            from: (p == 1).then_some(3),
            next_offset: o,
        };
        let from = |p| (p == 1).then_some(3);
        assert_eq!(
            next_positions(seen, from),
            vec![pos("t", 0, 8), pos("t", 1, 10), pos("u", 0, 1)]
        );
        assert!(next_positions(Vec::new(), from).is_empty());
    }

    #[test]
    fn only_owned_partitions_at_or_past_their_position_are_stored() {
        let rec = |p: i32, o: i64| Consumed {
            record: Record::new(
                Origin {
                    source: format!("kafka:t/{p}/{o}"),
                    ..Origin::default()
                },
                "{}".into(),
                None,
            ),
            topic: "t".to_string(),
            partition: p,
            offset: o,
        };
        let owned = BTreeMap::from([(0, Some(10)), (1, None)]);
        let batch = vec![
            rec(0, 9),
            rec(0, 10),
            rec(0, 12),
            rec(1, 0),
            rec(1, 4),
            rec(2, 50),
        ];
        let (recs, positions, dropped) = owned_part(batch, &owned);
        assert_eq!(recs.len(), 4);
        assert_eq!(
            dropped, 2,
            "offset 9 is before partition 0's position; partition 2 is not owned"
        );
        let pos = |partition, from, next_offset| Position {
            topic: "t".into(),
            partition,
            from,
            next_offset,
        };
        assert_eq!(positions, vec![pos(0, Some(10), 13), pos(1, None, 5)]);
        let (recs, positions, dropped) = owned_part(vec![rec(2, 1)], &owned);
        assert!(recs.is_empty() && positions.is_empty());
        assert_eq!(dropped, 1);
    }

    #[test]
    fn start_from_stored_positions_or_the_beginning() {
        let marks = BTreeMap::from([(0, (0, 100)), (1, (10, 50)), (2, (0, 0))]);
        let stored = BTreeMap::from([(0, 40), (1, 10)]);
        let got = start_offsets("t", &marks, &stored).unwrap();
        assert_eq!(
            got,
            BTreeMap::from([(0, Some(40)), (1, Some(10)), (2, None)])
        );
        // a position at the end is fine (everything persisted)
        assert!(start_offsets("t", &marks, &BTreeMap::from([(0, 100)])).is_ok());
    }

    #[test]
    fn retention_that_deleted_unpersisted_events_is_named() {
        let marks = BTreeMap::from([(0, (0, 100)), (1, (30, 50))]);
        let stored = BTreeMap::from([(0, 40), (1, 12)]);
        let e = start_offsets("t", &marks, &stored).unwrap_err();
        assert!(
            e.contains("partition 1: offsets 12..29 (earliest now 30)"),
            "{e}"
        );
        assert!(!e.contains("partition 0"), "{e}");
        let e = start_offsets("t", &marks, &BTreeMap::from([(0, 101)])).unwrap_err();
        assert!(e.contains("past the end"), "{e}");
    }
}
