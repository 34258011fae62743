//! `tally-shipper restore --as-of <unix-ms>`: rolls balances and coupon claims back to what
//! they were at a moment, for the day an abuse incident must be undone.
//!
//! The rollback goes THROUGH the module, as new events: one `ASSET.INCR ... NOFLOOR` per key
//! with the deltas that bring each field back to its balance at that moment (the history has
//! every intermediate balance), and a `COUPON.RELEASE` for every claim made after it that is
//! still held. Nothing is rewritten: the history keeps the incident and its correction, the
//! shipper carries the correction like any change, and reconcile still matches. Every command
//! carries an op-id derived from the moment (`restore-as-of:<ms>:...`), so running the same
//! rollback twice replays instead of applying twice. Run it with writers stopped: a change
//! made between reading a balance and correcting it is not rolled back.
//!
//! Holds (`restore_as_of_holds`): those opened after the moment are voided, those open at it
//! and closed since are opened again until their deadline.
//!
//! Not rolled back (reported): usage counters (no command lowers `used`; a period has usually
//! moved on), claims released after the moment (their issue numbers are retired), campaigns
//! created after it.
//!
//! After `history retire`, a moment before the end of the newest retired month is refused
//! (`kept_from`); a later one is computed from the months kept (`balances_at`).
//!
//! On several standalone servers every key is first found on its server (`Nodes::locate`):
//! one that is on none, or on more than one, stops the rollback before anything is corrected.

use super::nodes::Nodes;
use anyhow::{bail, Context as _};
use sqlx::PgPool;

/// At most this many fields per ASSET.INCR (the command's own limit is 64).
const FIELDS_PER_COMMAND: usize = 64;

#[derive(Default, Debug)]
pub(crate) struct RolledBack {
    pub(crate) keys: u64,
    pub(crate) fields: u64,
    pub(crate) releases: u64,
    /// holds opened after the moment, voided
    pub(crate) holds_voided: u64,
    /// holds open at the moment and closed since, opened again
    pub(crate) holds_reopened: u64,
    pub(crate) not_rolled_back: Vec<String>,
}

impl RolledBack {
    /// What the rollback to `as_of_ms` did, for the operator (stdout).
    pub(crate) fn print(&self, as_of_ms: i64) {
        println!(
            "rolled back to {as_of_ms}: {} fields of {} keys corrected, {} claims released",
            self.fields, self.keys, self.releases
        );
        println!(
            "holds: {} opened after the moment voided, {} open at the moment opened again (new ids, same deadlines)",
            self.holds_voided, self.holds_reopened
        );
        for n in &self.not_rolled_back {
            println!("not rolled back: {n}");
        }
    }
}

/// A field's balance at the moment (decimal text).
#[derive(sqlx::FromRow)]
struct BalanceAt {
    data_key: String,
    field: String,
    balance: String,
}

/// The first moment whose balances the history still holds: the end of the newest month
/// `history retire` removed (i64::MIN when none was). A moment before it is refused: a field
/// whose changes up to it were all retired cannot be told from one that had none.
pub(crate) async fn kept_from(pool: &PgPool, as_of_ms: i64) -> anyhow::Result<i64> {
    let newest: Option<(String, i64)> =
        sqlx::query_as("SELECT month, to_ms FROM history_retired ORDER BY to_ms DESC LIMIT 1")
            .fetch_optional(pool)
            .await?;
    let Some((month, to_ms)) = newest else {
        return Ok(i64::MIN);
    };
    if as_of_ms < to_ms {
        bail!(
            "refusing restore --as-of {as_of_ms}: the history up to the end of month {month} was retired \
             (history_retired; `tally-shipper history retire`), so the balances before {to_ms} are no longer \
             known. The earliest moment a rollback can go back to is --as-of {to_ms}"
        );
    }
    Ok(to_ms)
}

/// The balance of every (key, field) at `as_of_ms` (at or after `kept_from`, the end of the
/// retired history): the last change at or before it; else (no change kept at or before it)
/// the balance before the first change after it (a field first changed after the moment:
/// 0); else the current balance (every change of the field is at or before the moment, and
/// retired). On a full history, the first rule alone, with 0 for the fields first changed
/// later. Changes older than `kept_from` (a late event stored into a retired month since) are
/// not read: they may be older than the retired ones.
async fn balances_at(
    pool: &PgPool,
    as_of_ms: i64,
    kept_from: i64,
) -> anyhow::Result<Vec<BalanceAt>> {
    Ok(sqlx::query_as(
        "SELECT b.data_key, b.field,
                COALESCE((SELECT c.balance::text FROM event_changes c
                          WHERE c.data_key = b.data_key AND c.field = b.field
                            AND c.ts_ms <= $1 AND c.ts_ms >= $2
                          ORDER BY c.seq DESC LIMIT 1),
                         (SELECT (c.balance - c.delta)::text FROM event_changes c
                          WHERE c.data_key = b.data_key AND c.field = b.field AND c.ts_ms > $1
                          ORDER BY c.seq LIMIT 1),
                         b.balance::text) AS balance
         FROM balances b ORDER BY b.data_key, b.field",
    )
    .bind(as_of_ms)
    .bind(kept_from)
    .fetch_all(pool)
    .await?)
}

/// Per field `target - current`, exact (Postgres numeric), canonical; only fields that differ.
async fn deltas(
    pool: &PgPool,
    fields: &[String],
    current: &[String],
    target: &[String],
) -> anyhow::Result<Vec<(String, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT f, (t::numeric - c::numeric)::text FROM unnest($1::text[], $2::text[], $3::text[]) AS u(f, c, t)
         WHERE t::numeric <> c::numeric",
    )
    .bind(fields)
    .bind(current)
    .bind(target)
    .fetch_all(pool)
    .await
    .context("computing the rollback deltas (a balance in Redis that is not a decimal?)")?;
    Ok(rows
        .into_iter()
        .map(|(f, d)| (f, super::decimal::canonical(&d)))
        .collect())
}

async fn roll_back_balances(
    nodes: &mut Nodes,
    pool: &PgPool,
    (prefix, as_of_ms): (&str, i64),
    rows: &[BalanceAt],
    out: &mut RolledBack,
) -> anyhow::Result<()> {
    // rows come ordered by key: one group of fields per key
    for group in rows.chunk_by(|a, b| a.data_key == b.data_key) {
        let key = &group[0].data_key;
        let fields: Vec<String> = group.iter().map(|r| r.field.clone()).collect();
        let targets: Vec<String> = group.iter().map(|r| r.balance.clone()).collect();
        let mut get = redis::cmd("HMGET");
        get.arg(key).arg(&fields);
        let current: Vec<Option<String>> =
            get.query_async(nodes.conn_for(prefix, key).await?).await?;
        let current: Vec<String> = current
            .into_iter()
            .map(|v| v.unwrap_or_else(|| "0".into()))
            .collect();
        let changes = deltas(pool, &fields, &current, &targets).await?;
        for (n, chunk) in changes.chunks(FIELDS_PER_COMMAND).enumerate() {
            let mut c = redis::cmd("ASSET.INCR");
            c.arg(key);
            for (f, d) in chunk {
                c.arg(f).arg(d);
            }
            c.arg("NOFLOOR")
                .arg("ID")
                .arg(format!("restore-as-of:{as_of_ms}:{n}"));
            c.arg("META").arg(format!("restore --as-of {as_of_ms}"));
            c.query_async::<redis::Value>(nodes.conn_for(prefix, key).await?)
                .await
                .with_context(|| format!("rolling back {key}"))?;
            out.fields += chunk.len() as u64;
        }
        if !changes.is_empty() {
            out.keys += 1;
        }
    }
    Ok(())
}

/// Claims made after the moment and still held, per (campaign, user): how many (the user's
/// most recent ones).
async fn held_since(pool: &PgPool, as_of_ms: i64) -> anyhow::Result<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT campaign, user_id, count(*) FROM coupon_issues
         WHERE claimed_ts_ms > $1 AND NOT released AND user_id IS NOT NULL
         GROUP BY campaign, user_id ORDER BY campaign, user_id",
    )
    .bind(as_of_ms)
    .fetch_all(pool)
    .await?)
}

async fn roll_back_claims(
    nodes: &mut Nodes,
    pool: &PgPool,
    (prefix, as_of_ms): (&str, i64),
    held: Vec<(String, String, i64)>,
    out: &mut RolledBack,
) -> anyhow::Result<()> {
    for (campaign, user, n) in held {
        for i in 0..n {
            redis::cmd("COUPON.RELEASE")
                .arg(&campaign)
                .arg(&user)
                .arg("ID")
                .arg(format!("restore-as-of:{as_of_ms}:{user}:{i}"))
                .arg("META")
                .arg(format!("restore --as-of {as_of_ms}"))
                .query_async::<redis::Value>(nodes.conn_for(prefix, &campaign).await?)
                .await
                .with_context(|| format!("releasing a claim of {user} in {campaign}"))?;
            out.releases += 1;
        }
    }
    report_count(
        pool,
        "SELECT count(*) FROM coupon_issues WHERE released AND claimed_ts_ms <= $1 AND released_ts_ms > $1",
        as_of_ms,
        "claims held at the moment and released after it (issue numbers are retired)",
        out,
    )
    .await
}

/// Runs `count_sql` (a count, `$1` = the moment); a non-zero count is reported as "<n> <what>"
/// among what the rollback leaves as it is.
async fn report_count(
    pool: &PgPool,
    count_sql: &str,
    as_of_ms: i64,
    what: &str,
    out: &mut RolledBack,
) -> anyhow::Result<()> {
    let n: i64 = sqlx::query_scalar(count_sql)
        .bind(as_of_ms)
        .fetch_one(pool)
        .await?;
    if n > 0 {
        out.not_rolled_back.push(format!("{n} {what}"));
    }
    Ok(())
}

async fn report_unrolled(pool: &PgPool, as_of_ms: i64, out: &mut RolledBack) -> anyhow::Result<()> {
    report_count(
        pool,
        "SELECT count(DISTINCT k.data_key) FROM event_keys k JOIN events e USING (event_id)
         WHERE e.type IN ('usage.consume', 'usage.commit') AND e.ts_ms > $1",
        as_of_ms,
        "usage counters consumed after the moment (no command lowers `used`)",
        out,
    )
    .await?;
    report_count(
        pool,
        "SELECT count(*) FROM events WHERE type = 'coupon.create' AND ts_ms > $1",
        as_of_ms,
        "campaigns created after the moment (kept)",
        out,
    )
    .await
}

/// The keys of holds the rollback may touch: opened after the moment or closed after it.
async fn held_keys(pool: &PgPool, as_of_ms: i64) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT data_key FROM holds WHERE created_ms > $1 OR closed_ms > $1",
    )
    .bind(as_of_ms)
    .fetch_all(pool)
    .await?)
}

/// The rollback to `as_of_ms`; `kept_from`: what `kept_from` returned for it.
pub(crate) async fn run(
    nodes: &mut Nodes,
    pool: &PgPool,
    prefix: &str,
    (as_of_ms, kept_from): (i64, i64),
) -> anyhow::Result<RolledBack> {
    let mut out = RolledBack::default();
    let balances = balances_at(pool, as_of_ms, kept_from).await?;
    let held = held_since(pool, as_of_ms).await?;
    let mut keys: Vec<String> = balances.iter().map(|b| b.data_key.clone()).collect();
    keys.extend(held.iter().map(|(campaign, _, _)| campaign.clone()));
    keys.extend(held_keys(pool, as_of_ms).await?);
    keys.sort_unstable();
    keys.dedup();
    nodes.locate(prefix, &keys).await?;
    roll_back_balances(nodes, pool, (prefix, as_of_ms), &balances, &mut out).await?;
    roll_back_claims(nodes, pool, (prefix, as_of_ms), held, &mut out).await?;
    super::restore_as_of_holds::roll_back_holds(nodes, pool, (prefix, as_of_ms), &mut out).await?;
    report_unrolled(pool, as_of_ms, &mut out).await?;
    Ok(out)
}
