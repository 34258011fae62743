//! A month's rows removed, in one transaction: its events deleted, its two partitions
//! detached and dropped, and its `history_retired` row inserted. Nothing else is touched:
//! balances, key_seqs, holds, coupons and usage are derived state and stay whole.
//!
//! The shipper may store a late event of the month meanwhile. The partitions are counted
//! before the events are deleted (or the archive's counts are taken) and again under an
//! ACCESS EXCLUSIVE lock of both parent tables (no batch writes either while it is held);
//! any difference rolls everything back: nothing leaves that the archive does not hold, and
//! no event row stays without its keys and changes. A batch that waited for the lock finds
//! the month gone and is retried by the shipper, which creates the month again for it.

use std::path::Path;

use anyhow::{bail, Context as _};
use sqlx::PgPool;

use super::plan::{count_parts, simple_query, MonthParts, TABLES};
use super::Counts;

/// How long the removal waits for the lock of event_keys and event_changes (the shipper's
/// batches and readers hold theirs briefly; a long query would block everyone behind it).
const LOCK_TIMEOUT: &str = "30s";

/// Removes the month; `archived`: the archive's directory and row counts, which must be
/// exactly what is removed. Returns the rows removed.
pub(super) async fn remove_month(
    pool: &PgPool,
    m: &MonthParts,
    archived: Option<(&Path, Counts)>,
) -> anyhow::Result<Counts> {
    let mut tx = pool.begin().await?;
    simple_query(
        &mut tx,
        &format!("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"),
    )
    .await?;
    let before = match archived {
        Some((_, c)) => [c.event_keys, c.event_changes],
        None => count_parts(&mut tx, m).await?,
    };
    let events = sqlx::query("DELETE FROM events WHERE ts_ms >= $1 AND ts_ms < $2")
        .bind(m.month.start_ms())
        .bind(m.month.end_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
    simple_query(
        &mut tx,
        &format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", TABLES.join(", ")),
    )
    .await
    .with_context(|| {
        format!(
            "locking {} (nothing was removed; run again)",
            TABLES.join(" and ")
        )
    })?;
    let [event_keys, event_changes] = count_parts(&mut tx, m).await?;
    let removed = Counts {
        events,
        event_keys,
        event_changes,
    };
    let expected = Counts {
        events: archived.map_or(events, |(_, c)| c.events),
        event_keys: before[0],
        event_changes: before[1],
    };
    if removed != expected {
        bail!(
            "{}: rows of the month were stored while it was being retired (late events): {removed} now, {expected} \
             {}; nothing was removed, run again",
            m.month.suffix(),
            if archived.is_some() { "archived" } else { "counted at the start" }
        );
    }
    drop_parts(&mut tx, m).await?;
    sqlx::query(
        "INSERT INTO history_retired (month, from_ms, to_ms, events, event_keys, event_changes, archive)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(m.month.suffix())
    .bind(m.month.start_ms())
    .bind(m.month.end_ms())
    .bind(removed.events)
    .bind(removed.event_keys)
    .bind(removed.event_changes)
    .bind(archived.map(|(dir, _)| dir.display().to_string()))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(removed)
}

/// Detaches and drops the month's partitions (their parents are locked).
async fn drop_parts(tx: &mut sqlx::PgConnection, m: &MonthParts) -> anyhow::Result<()> {
    for (parent, part) in TABLES.iter().zip(&m.parts) {
        if let Some(part) = part {
            simple_query(
                tx,
                &format!("ALTER TABLE {parent} DETACH PARTITION \"{part}\"; DROP TABLE \"{part}\""),
            )
            .await?;
        }
    }
    Ok(())
}
