//! failed_events: the records that were not events (or that Postgres refused), kept until a
//! retry stores them or an operator dismisses them (`tally-shipper failed ...`).
//!
//! A row is unresolved (`NOT resolved`), resolved (a retry stored it: `event_id`) or
//! dismissed (`resolved` and `dismissed_at`, with who and why); migrations/0005 says why
//! dismissal is a kind of resolved.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio_util::sync::CancellationToken;

use super::batch::{before_tx, persist_in_tx};
use crate::event::Record;
use crate::obs::metrics;

/// An unresolved failed_events row, as a retry reads it.
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

/// Row `id` if it is unresolved.
pub(crate) async fn unresolved_row(
    pool: &PgPool,
    id: i64,
) -> Result<Option<FailedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, source, via, stream, stream_id, raw FROM failed_events WHERE id = $1 AND NOT resolved",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Stores `rec` (now an event) and marks row `id` resolved, in one transaction. False (and
/// nothing stored) when the row was resolved or dismissed meanwhile.
pub(crate) async fn resolve(
    pool: &PgPool,
    id: i64,
    rec: &Record,
    event_id: &str,
) -> Result<bool, sqlx::Error> {
    before_tx(pool, std::slice::from_ref(rec)).await?;
    let mut tx = pool.begin().await?;
    persist_in_tx(&mut tx, std::slice::from_ref(rec)).await?;
    let done = sqlx::query(
        "UPDATE failed_events SET resolved = true, resolved_at = now(), event_id = $2::uuid,
             attempts = attempts + 1, last_seen = now() WHERE id = $1 AND NOT resolved",
    )
    .bind(id)
    .bind(event_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if done == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// Counts one more failed attempt of row `id`, with the error it met this time.
pub(crate) async fn still_failing(pool: &PgPool, id: i64, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE failed_events SET attempts = attempts + 1, last_seen = now(), error = $2
         WHERE id = $1 AND NOT resolved",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// A failed_events row as an operator sees it; times are RFC 3339 text in UTC, `raw` is
/// only read by `entry`.
#[derive(Debug, sqlx::FromRow, serde::Serialize)]
pub(crate) struct Entry {
    pub(crate) id: i64,
    /// unresolved | resolved | dismissed
    pub(crate) state: String,
    pub(crate) source: String,
    pub(crate) via: Option<String>,
    pub(crate) stream: Option<String>,
    pub(crate) stream_id: Option<String>,
    pub(crate) error: String,
    pub(crate) attempts: i32,
    pub(crate) first_seen: String,
    pub(crate) last_seen: String,
    pub(crate) resolved_at: Option<String>,
    /// the event a retry stored (resolved rows)
    pub(crate) event_id: Option<String>,
    pub(crate) dismissed_at: Option<String>,
    pub(crate) dismissed_by: Option<String>,
    pub(crate) dismiss_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) raw: Option<String>,
}

fn utc(col: &str) -> String {
    format!(r#"to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS {col}"#)
}

/// The columns of `Entry`, `raw` being `raw_expr`.
fn entry_columns(raw_expr: &str) -> String {
    format!(
        "id, CASE WHEN NOT resolved THEN 'unresolved' WHEN dismissed_at IS NOT NULL THEN 'dismissed'
                  ELSE 'resolved' END AS state,
         source, via, stream, stream_id, error, attempts, {}, {}, {}, event_id::text AS event_id,
         {}, dismissed_by, dismiss_reason, {raw_expr} AS raw",
        utc("first_seen"),
        utc("last_seen"),
        utc("resolved_at"),
        utc("dismissed_at"),
    )
}

static LIST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM failed_events WHERE (NOT resolved OR $1) ORDER BY id LIMIT $2",
        entry_columns("NULL::text")
    )
});
static ENTRY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM failed_events WHERE id = $1",
        entry_columns("raw")
    )
});

/// Up to `limit` rows, oldest first: the unresolved ones, or every row with `all`.
pub(crate) async fn entries(
    pool: &PgPool,
    all: bool,
    limit: i64,
) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(LIST_SQL.as_str())
        .bind(all)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Row `id` with its payload.
pub(crate) async fn entry(pool: &PgPool, id: i64) -> Result<Option<Entry>, sqlx::Error> {
    sqlx::query_as(ENTRY_SQL.as_str())
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// How many rows are in each state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Counts {
    pub(crate) unresolved: i64,
    pub(crate) resolved: i64,
    pub(crate) dismissed: i64,
}

/// The rows in each state (the unresolved and dismissed ones through their partial indexes;
/// the resolved ones by a scan, so not for the gauges).
pub(crate) async fn counts(pool: &PgPool) -> Result<Counts, sqlx::Error> {
    let (unresolved, dismissed, resolved): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM failed_events WHERE NOT resolved),
                (SELECT count(*) FROM failed_events WHERE dismissed_at IS NOT NULL),
                (SELECT count(*) FROM failed_events WHERE resolved AND dismissed_at IS NULL)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Counts {
        unresolved,
        resolved,
        dismissed,
    })
}

/// Marks unresolved row `id` dismissed by `by` for `reason`; the time it recorded, or None
/// when the row does not exist or is not unresolved (nothing changed).
pub(crate) async fn dismiss(
    pool: &PgPool,
    id: i64,
    by: &str,
    reason: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "UPDATE failed_events SET resolved = true, resolved_at = now(), dismissed_at = now(),
                dismissed_by = $2, dismiss_reason = $3
         WHERE id = $1 AND NOT resolved RETURNING {}",
        utc("dismissed_at")
    ))
    .bind(id)
    .bind(by)
    .bind(reason)
    .fetch_optional(pool)
    .await
}

/// `run`/`persist`: sets `tally_failed_events_unresolved` and `tally_failed_events_dismissed`
/// now and every `every` until `stop`, on `pool` (a connection of their own). Two counts on
/// partial indexes: cheap whatever the size of the table. While Postgres does not answer the
/// gauges keep their last values (the delivery metrics say why).
pub(crate) async fn sample_gauges(pool: PgPool, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match tokio::time::timeout(every.max(Duration::from_secs(5)), gauge_counts(&pool)).await {
            Ok(Ok((unresolved, dismissed))) => {
                metrics::FAILED_EVENTS_UNRESOLVED.set(unresolved);
                metrics::FAILED_EVENTS_DISMISSED.set(dismissed);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "counting failed_events"),
            Err(_) => tracing::debug!("counting failed_events timed out"),
        }
    }
}

async fn gauge_counts(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM failed_events WHERE NOT resolved),
                (SELECT count(*) FROM failed_events WHERE dismissed_at IS NOT NULL)",
    )
    .fetch_one(pool)
    .await
}

/// The unresolved rows (what blocks `restore`).
pub(crate) async fn unresolved_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM failed_events WHERE NOT resolved")
        .fetch_one(pool)
        .await
}

/// The dismissed rows; 0 on a database without migration 0005 (no row can be dismissed
/// there).
pub(crate) async fn dismissed_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    match sqlx::query_scalar("SELECT count(*) FROM failed_events WHERE dismissed_at IS NOT NULL")
        .fetch_one(pool)
        .await
    {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42703") => Ok(0),
        other => other,
    }
}
