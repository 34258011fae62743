//! `restore --as-of <ms>`, the holds: brought back to what was open at the moment, through the
//! module like the rest of the rollback (new events, op-ids derived from the moment).
//!
//! - A hold opened after the moment and still open is voided (`ASSET.VOID`, `USAGE.CANCEL`,
//!   `COUPON.CANCEL`), op-id `restore-as-of:<ms>:void:<id>`.
//! - A hold open at the moment and closed since (settled, voided or expired) whose deadline is
//!   still ahead is opened again, as a new hold with the same field or user, amount and
//!   deadline (`ASSET.HOLD ... NOFLOOR`, `USAGE.RESERVE`, `COUPON.RESERVE`), op-id
//!   `restore-as-of:<ms>:hold:<old id>`. Its id is a new one (a coupon's a new issue
//!   number): ids are never reused. One whose deadline has passed stays closed: it would have
//!   expired by now. A run again does not open it twice (a hold opened under that op-id is
//!   found in the history) and does not void what a run opened.
//!
//! Runs after balances and claims are rolled back (a settle's amount is back in the balance,
//! a confirmed reservation's claim released). A reopening the module refuses (a usage limit
//! consumed since, a campaign sold out) is reported, not retried.

use anyhow::Context as _;
use sqlx::PgPool;

use super::decimal::canonical;
use super::nodes::Nodes;
use super::restore_as_of::RolledBack;
use crate::clock::now_ms;

/// A hold as the rollback needs it.
#[derive(sqlx::FromRow)]
struct HoldRow {
    data_key: String,
    hold_id: i64,
    kind: String,
    subject: Option<String>,
    amount: String,
    expires_ms: i64,
}

/// Open holds opened after the moment, except those a run of this rollback opened.
async fn opened_since(pool: &PgPool, as_of_ms: i64) -> anyhow::Result<Vec<HoldRow>> {
    Ok(sqlx::query_as(
        "SELECT h.data_key, h.hold_id, h.kind, h.subject, h.amount::text AS amount, h.expires_ms
         FROM holds h
         WHERE h.status = 'open' AND h.created_ms > $1
           AND NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = h.open_event_id
                           AND e.op LIKE 'restore-as-of:' || $1 || ':hold:%')
         ORDER BY h.data_key, h.hold_id",
    )
    .bind(as_of_ms)
    .fetch_all(pool)
    .await?)
}

/// Holds open at the moment, closed since, with their deadline after `now`, not yet opened
/// again by a run of this rollback.
async fn closed_since(pool: &PgPool, as_of_ms: i64, now: i64) -> anyhow::Result<Vec<HoldRow>> {
    Ok(sqlx::query_as(
        "SELECT h.data_key, h.hold_id, h.kind, h.subject, h.amount::text AS amount, h.expires_ms
         FROM holds h
         WHERE h.created_ms <= $1 AND h.closed_ms > $1 AND h.expires_ms > $2
           AND NOT EXISTS (SELECT 1 FROM holds r JOIN events e ON e.event_id = r.open_event_id
                           WHERE r.data_key = h.data_key
                             AND e.op = 'restore-as-of:' || $1 || ':hold:' || h.hold_id)
         ORDER BY h.data_key, h.hold_id",
    )
    .bind(as_of_ms)
    .bind(now)
    .fetch_all(pool)
    .await?)
}

/// The command that voids `h` (its own kind's), with op-id and META.
fn void_command(h: &HoldRow, as_of_ms: i64) -> redis::Cmd {
    let mut c = match (h.kind.as_str(), &h.subject) {
        ("coupon", Some(user)) => {
            let mut c = redis::cmd("COUPON.CANCEL");
            c.arg(&h.data_key).arg(user);
            c
        }
        ("usage", _) => {
            let mut c = redis::cmd("USAGE.CANCEL");
            c.arg(&h.data_key);
            c
        }
        _ => {
            let mut c = redis::cmd("ASSET.VOID");
            c.arg(&h.data_key);
            c
        }
    };
    c.arg(h.hold_id)
        .arg("ID")
        .arg(format!("restore-as-of:{as_of_ms}:void:{}", h.hold_id))
        .arg("META")
        .arg(format!("restore --as-of {as_of_ms}"));
    c
}

/// The command that opens `h` again until its deadline (`ttl_ms` from now).
fn reopen_command(h: &HoldRow, as_of_ms: i64, ttl_ms: i64) -> redis::Cmd {
    let subject = h.subject.as_deref().unwrap_or_default();
    let amount = canonical(&h.amount);
    let mut c = match h.kind.as_str() {
        "coupon" => redis::cmd("COUPON.RESERVE"),
        "usage" => redis::cmd("USAGE.RESERVE"),
        _ => redis::cmd("ASSET.HOLD"),
    };
    c.arg(&h.data_key);
    match h.kind.as_str() {
        "coupon" => c.arg(subject).arg("TTL").arg(ttl_ms),
        "usage" => c.arg(&amount).arg("TTL").arg(ttl_ms),
        _ => c
            .arg(subject)
            .arg(&amount)
            .arg("TTL")
            .arg(ttl_ms)
            .arg("NOFLOOR"),
    };
    c.arg("ID")
        .arg(format!("restore-as-of:{as_of_ms}:hold:{}", h.hold_id))
        .arg("META")
        .arg(format!("restore --as-of {as_of_ms}"));
    c
}

/// Voids the holds opened after the moment, then opens again those closed since.
pub(crate) async fn roll_back_holds(
    nodes: &mut Nodes,
    pool: &PgPool,
    (prefix, as_of_ms): (&str, i64),
    out: &mut RolledBack,
) -> anyhow::Result<()> {
    for h in opened_since(pool, as_of_ms).await? {
        let conn = nodes.conn_for(prefix, &h.data_key).await?;
        match void_command(&h, as_of_ms)
            .query_async::<redis::Value>(conn)
            .await
        {
            Ok(_) => out.holds_voided += 1,
            // closed meanwhile (its deadline came): nothing left to void
            Err(e) if e.code() == Some("NOTFOUND") => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("voiding hold {} of {}", h.hold_id, h.data_key))
            }
        }
    }
    let now = now_ms();
    let mut refused = Vec::new();
    for h in closed_since(pool, as_of_ms, now).await? {
        let ttl = (h.expires_ms - now).max(1);
        let conn = nodes.conn_for(prefix, &h.data_key).await?;
        match reopen_command(&h, as_of_ms, ttl)
            .query_async::<redis::Value>(conn)
            .await
        {
            Ok(_) => out.holds_reopened += 1,
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                return Err(e).context("reopening a hold");
            }
            Err(e) => refused.push(format!("{} hold {} ({e})", h.data_key, h.hold_id)),
        }
    }
    if !refused.is_empty() {
        out.not_rolled_back.push(format!(
            "{} holds open at the moment that the module refused to open again, e.g. {}",
            refused.len(),
            refused
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(())
}
