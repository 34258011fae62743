//! The fence between `persist` instances: the Kafka positions stored in `kafka_offsets`,
//! moved in the same transaction as the batch they lead to.

use std::collections::BTreeMap;

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};

/// A Kafka position: the next offset to read of one partition, and the stored position the
/// batch continues from (`None`: nothing stored yet for the partition). The pair is the
/// fence between `persist` instances: a batch is stored only if the stored position is still
/// `from`, so an instance that lost the partition (a zombie after a rebalance, or a second
/// instance given the same partitions) can neither write its batch nor move the position.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) from: Option<i64>,
    pub(crate) next_offset: i64,
}

/// Moves (or, `advance` false, only locks) every position whose stored value is still its
/// `from`; false when any is not (nothing is left changed: the caller rolls back).
pub(super) async fn take_fence(
    tx: &mut Transaction<'_, Postgres>,
    positions: &[Position],
    advance: bool,
) -> Result<bool, sqlx::Error> {
    if positions.is_empty() {
        return Ok(true);
    }
    let (stored, fresh): (Vec<&Position>, Vec<&Position>) =
        positions.iter().partition(|p| p.from.is_some());
    let moved = sqlx::query(
        "UPDATE kafka_offsets k SET next_offset = CASE WHEN $5 THEN w.next_offset ELSE k.next_offset END,
                updated_at = CASE WHEN $5 THEN now() ELSE k.updated_at END
         FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::int8[]) AS w(topic, partition, from_offset, next_offset)
         WHERE k.topic = w.topic AND k.partition = w.partition AND k.next_offset = w.from_offset",
    )
    .bind(stored.iter().map(|p| p.topic.as_str()).collect::<Vec<_>>())
    .bind(stored.iter().map(|p| p.partition).collect::<Vec<_>>())
    .bind(stored.iter().map(|p| p.from.unwrap_or_default()).collect::<Vec<_>>())
    .bind(stored.iter().map(|p| p.next_offset).collect::<Vec<_>>())
    .bind(advance)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if moved != stored.len() as u64 {
        return Ok(false);
    }
    if fresh.is_empty() {
        return Ok(true);
    }
    let topics: Vec<&str> = fresh.iter().map(|p| p.topic.as_str()).collect();
    let partitions: Vec<i32> = fresh.iter().map(|p| p.partition).collect();
    let taken = if advance {
        // a concurrent insert of the same row waits for this one and then inserts nothing
        sqlx::query(
            "INSERT INTO kafka_offsets (topic, partition, next_offset)
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[]) ON CONFLICT DO NOTHING",
        )
        .bind(&topics)
        .bind(&partitions)
        .bind(fresh.iter().map(|p| p.next_offset).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?
        .rows_affected()
    } else {
        let present: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM kafka_offsets k JOIN UNNEST($1::text[], $2::int4[]) AS w(topic, partition)
               ON k.topic = w.topic AND k.partition = w.partition",
        )
        .bind(&topics)
        .bind(&partitions)
        .fetch_one(&mut **tx)
        .await?;
        fresh.len() as u64 - u64::try_from(present).unwrap_or(0).min(fresh.len() as u64)
    };
    Ok(taken == fresh.len() as u64)
}

/// Every stored position of `topic`: partition -> next offset.
pub(crate) async fn load_positions(
    pool: &PgPool,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM kafka_offsets WHERE topic = $1")
            .bind(topic)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}
