//! failed_events: the records that were not events (or that Postgres refused), kept until
//! `retry-failed` stores them.

use sqlx::postgres::PgPool;

use super::batch::persist_in_tx;
use crate::event::Record;

/// An unresolved failed_events row, as `retry-failed` reads it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct FailedRow {
    pub(crate) id: i64,
    pub(crate) source: String,
    pub(crate) via: Option<String>,
    pub(crate) stream: Option<String>,
    pub(crate) stream_id: Option<String>,
    pub(crate) raw: String,
}

/// Up to `limit` unresolved rows, oldest first.
pub(crate) async fn unresolved(pool: &PgPool, limit: i64) -> Result<Vec<FailedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, source, via, stream, stream_id, raw FROM failed_events WHERE NOT resolved ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Stores `rec` (now an event) and marks row `id` resolved, in one transaction.
pub(crate) async fn resolve(
    pool: &PgPool,
    id: i64,
    rec: &Record,
    event_id: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    persist_in_tx(&mut tx, std::slice::from_ref(rec)).await?;
    sqlx::query(
        "UPDATE failed_events SET resolved = true, resolved_at = now(), event_id = $2::uuid,
             attempts = attempts + 1, last_seen = now() WHERE id = $1",
    )
    .bind(id)
    .bind(event_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Counts one more failed attempt of row `id`, with the error it met this time.
pub(crate) async fn still_failing(pool: &PgPool, id: i64, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE failed_events SET attempts = attempts + 1, last_seen = now(), error = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}
