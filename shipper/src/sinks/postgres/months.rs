//! The month partitions of event_keys and event_changes (history format 2, migration 0007):
//! before a batch is written, every month its events fall in exists.
//!
//! Asked of Postgres every batch (`tally_history_months`, one round trip that takes no lock
//! when the months exist) rather than remembered here: an operator who detaches a month while
//! the shipper runs (docs/history.md) gets it back, empty, when a late event of that month
//! arrives, instead of a batch refused. Called outside the batch's transaction: creating a
//! partition locks the parent table, which a batch must not hold while it waits for others.

use sqlx::PgPool;

/// How far ahead of a batch's newest event the next month is created: the first batch of a
/// month then finds it, instead of creating it while the other writers wait.
const AHEAD_MS: i64 = 7 * 24 * 3_600_000;

/// The instants whose months must exist before `ts` (event times, Unix ms) are written: the
/// distinct days among them (one per day keeps the call small for a long backlog), and the
/// newest plus `AHEAD_MS`.
pub(crate) fn instants(ts: impl IntoIterator<Item = i64>) -> Vec<i64> {
    const DAY_MS: i64 = 86_400_000;
    let mut days: Vec<i64> = ts
        .into_iter()
        .map(|t| t.div_euclid(DAY_MS) * DAY_MS)
        .collect();
    let Some(newest) = days.iter().copied().max() else {
        return days;
    };
    days.push(newest.saturating_add(AHEAD_MS));
    days.sort_unstable();
    days.dedup();
    days
}

/// Creates the months of `ts` (and the one after the newest, ahead) that do not exist yet.
pub(crate) async fn ensure(
    pool: &PgPool,
    ts: impl IntoIterator<Item = i64>,
) -> Result<(), sqlx::Error> {
    let at = instants(ts);
    if at.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT count(*) FROM tally_history_months($1::bigint[])")
        .bind(&at)
        .execute(pool)
        .await?;
    Ok(())
}

/// Postgres found no month partition for a row: a month detached since `ensure` ran. The
/// batch is retried (its `ensure` creates the month again), never taken for bad data.
pub(crate) fn is_missing_month(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().as_deref() == Some("23514") && d.message().starts_with("no partition of relation"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_instant_per_day_and_the_week_ahead() {
        let day = 86_400_000;
        let at = instants([5 * day + 7, 5 * day + 9_999, 3 * day + 1, 5 * day]);
        assert_eq!(at, vec![3 * day, 5 * day, 5 * day + AHEAD_MS]);
        assert!(instants(std::iter::empty()).is_empty());
        // before 1970 rounds down, not toward zero
        assert_eq!(instants([-1])[0], -day);
    }
}
