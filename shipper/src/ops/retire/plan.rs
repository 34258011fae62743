//! What a retirement would touch: the month partitions before `--before`, their row counts,
//! and the checks made before a month's rows leave.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context as _};
use sqlx::{PgPool, Postgres};

use super::month::Month;
use super::Counts;

/// The two partitioned history tables, in the order their locks are taken (the shipper's
/// batches write event_keys before event_changes, and `tally_history_months` creates them in
/// that order too).
pub(super) const TABLES: [&str; 2] = ["event_keys", "event_changes"];

/// One month before `--before`: its partitions as they exist now.
#[derive(Debug)]
pub(super) struct MonthParts {
    pub(super) month: Month,
    /// the partition of each of `TABLES` (None: that table has no partition of the month)
    pub(super) parts: [Option<String>; 2],
    /// `history_retired.retired_at` when the month was retired before (its partitions came
    /// back with late events since)
    pub(super) retired_at: Option<String>,
}

/// Every month that has a partition in either table and ends at or before the start of
/// `before`, oldest first.
pub(super) async fn months_before(pool: &PgPool, before: Month) -> anyhow::Result<Vec<MonthParts>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT p.relname::text, c.relname::text, pg_get_expr(c.relpartbound, c.oid)
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
         WHERE i.inhparent IN ('event_keys'::regclass, 'event_changes'::regclass)",
    )
    .fetch_all(pool)
    .await
    .context("listing the month partitions")?;
    let retired: HashMap<String, String> =
        sqlx::query_as("SELECT month, retired_at::text FROM history_retired")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let mut months: BTreeMap<Month, MonthParts> = BTreeMap::new();
    for (parent, part, bound) in rows {
        let month = partition_month(&parent, &part, &bound)?;
        if month >= before {
            continue;
        }
        let slot = usize::from(parent == TABLES[1]);
        months
            .entry(month)
            .or_insert_with(|| MonthParts {
                month,
                parts: [None, None],
                retired_at: retired.get(&month.suffix()).cloned(),
            })
            .parts[slot] = Some(part);
    }
    Ok(months.into_values().collect())
}

/// The month a partition holds, from its name (`<table>_<yyyy>m<mm>`), checked against its
/// bounds: a partition that is not one of the layout's months is refused, not guessed at.
fn partition_month(parent: &str, part: &str, bound: &str) -> anyhow::Result<Month> {
    let Some(month) = part
        .strip_prefix(parent)
        .and_then(|s| s.strip_prefix('_'))
        .and_then(Month::from_suffix)
    else {
        bail!(
            "refusing: partition {part} of {parent} is not named {parent}_<yyyy>m<mm> \
             (docs/history.md); detach it, or retire it by hand"
        );
    };
    let want = format!(
        "FOR VALUES FROM ('{}') TO ('{}')",
        month.start_ms(),
        month.end_ms()
    );
    if bound != want {
        bail!("refusing: partition {part} holds {bound}, not the month its name says ({want})");
    }
    Ok(month)
}

/// Runs `sql` as a simple query (several statements, no parameters).
pub(super) async fn simple_query(conn: &mut sqlx::PgConnection, sql: &str) -> sqlx::Result<()> {
    sqlx::Executor::execute(conn, sql).await?;
    Ok(())
}

/// Rows of the month in `events` (by `ts_ms`) and in each partition.
pub(super) async fn count(conn: &mut sqlx::PgConnection, m: &MonthParts) -> anyhow::Result<Counts> {
    let events = sqlx::query_scalar("SELECT count(*) FROM events WHERE ts_ms >= $1 AND ts_ms < $2")
        .bind(m.month.start_ms())
        .bind(m.month.end_ms())
        .fetch_one(&mut *conn)
        .await?;
    let [event_keys, event_changes] = count_parts(conn, m).await?;
    Ok(Counts {
        events,
        event_keys,
        event_changes,
    })
}

/// Rows in each partition of the month (0 for a table without one).
pub(super) async fn count_parts(
    conn: &mut sqlx::PgConnection,
    m: &MonthParts,
) -> anyhow::Result<[i64; 2]> {
    let mut out = [0; 2];
    for (n, part) in out.iter_mut().zip(&m.parts) {
        if let Some(part) = part {
            *n = sqlx::query_scalar::<Postgres, i64>(&format!("SELECT count(*) FROM \"{part}\""))
                .fetch_one(&mut *conn)
                .await?;
        }
    }
    Ok(out)
}

/// Refuses a month holding seqs above their key's contiguous watermark (a seq below them is
/// missing: an event still in flight, or one Postgres refused): retired, they could never
/// count when the missing seq arrives, and the key's watermark would stay behind for good
/// (reconcile would report a gap, restore would refuse).
pub(super) async fn refuse_gaps(pool: &PgPool, m: &MonthParts) -> anyhow::Result<()> {
    let Some(part) = &m.parts[0] else {
        return Ok(());
    };
    let behind: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT s.data_key, s.contiguous_seq, s.last_seq FROM key_seqs s
         WHERE s.last_seq > s.contiguous_seq
           AND EXISTS (SELECT 1 FROM \"{part}\" k WHERE k.data_key = s.data_key AND k.seq > s.contiguous_seq)
         ORDER BY s.data_key"
    ))
    .fetch_all(pool)
    .await?;
    if behind.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = behind
        .iter()
        .take(5)
        .map(|(k, c, l)| format!("{k} (contiguous to {c}, highest {l})"))
        .collect();
    bail!(
        "refusing to retire {}: {} keys have seqs in it above their contiguous watermark, e.g. {}. A seq \
         below them is missing (in flight, or refused into failed_events); once retired, those seqs could \
         never count when it arrives and the key's watermark would stay behind for good. Resolve the gaps \
         first (`tally-shipper reconcile` names them, `tally-shipper failed list` the refused events)",
        m.month.suffix(),
        behind.len(),
        shown.join(", ")
    )
}
