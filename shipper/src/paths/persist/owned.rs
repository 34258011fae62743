//! What this `persist` instance owns: its partitions, each with the stored position it
//! continues from.

use std::collections::BTreeMap;

use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::obs::metrics;
use crate::sinks::postgres::Position;

/// The partitions this instance owns, each with the stored position it continues from
/// (`None`: nothing stored yet), and a counter bumped by every change of the assignment.
#[derive(Debug, Default)]
pub(crate) struct Owned {
    pub(crate) generation: u64,
    pub(crate) from: BTreeMap<i32, Option<i64>>,
}

impl Owned {
    /// A new assignment (or the same partitions re-read from their stored positions).
    pub(crate) fn replace(&mut self, from: BTreeMap<i32, Option<i64>>) {
        self.generation += 1;
        self.from = from;
        metrics::KAFKA_PARTITIONS.set(i64::try_from(self.from.len()).unwrap_or(i64::MAX));
    }

    /// Partitions added (cooperative protocol) or removed.
    pub(super) fn change(&mut self, add: BTreeMap<i32, Option<i64>>, remove: &[i32]) {
        let mut from = std::mem::take(&mut self.from);
        from.extend(add);
        from.retain(|p, _| !remove.contains(p));
        self.replace(from);
    }

    /// After a stored batch: its positions are the stored ones now.
    pub(crate) fn advance(&mut self, positions: &[Position]) {
        for p in positions {
            if let Some(from) = self.from.get_mut(&p.partition) {
                *from = Some(p.next_offset);
            }
        }
    }
}

/// The partitions of `topic` at the positions they continue from: the stored offset, or the
/// beginning when nothing is stored yet.
pub(crate) fn at_positions(
    topic: &str,
    from: &BTreeMap<i32, Option<i64>>,
) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (p, start) in from {
        tpl.add_partition_offset(
            topic,
            *p,
            start.map(Offset::Offset).unwrap_or(Offset::Beginning),
        )?;
    }
    Ok(tpl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_partitions_follow_assignments_and_batches() {
        let mut o = Owned::default();
        o.replace(BTreeMap::from([(0, Some(5)), (1, None)]));
        assert_eq!(o.generation, 1);
        let pos = |partition, from, next_offset| Position {
            topic: "t".into(),
            partition,
            from,
            next_offset,
        };
        o.advance(&[pos(0, Some(5), 9), pos(1, None, 3), pos(7, None, 2)]);
        assert_eq!(
            o.from,
            BTreeMap::from([(0, Some(9)), (1, Some(3))]),
            "a partition not owned is not adopted"
        );
        o.change(BTreeMap::from([(2, Some(4))]), &[0]);
        assert_eq!(o.from, BTreeMap::from([(1, Some(3)), (2, Some(4))]));
        assert_eq!(o.generation, 2);
    }
}
