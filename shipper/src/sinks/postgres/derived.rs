//! The derived tables, updated for the newly inserted events of a batch only: per-key seqs
//! (`seqs`), event_changes and balances, coupon campaigns and issues, usage totals, holds.

use std::collections::HashMap;

use sqlx::{Postgres, Transaction};

use super::copy::{copy_in, CopyRows};
use crate::event::{Body, Coupon, Event, Hold, Usage};

/// Update derived tables for newly inserted events (in arrival order). Returns the number of
/// anomalies (forks) recorded and the keys whose watermark is behind.
pub(super) async fn derive(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[&Event],
) -> Result<(usize, Vec<String>), sqlx::Error> {
    let seqs = super::seqs::record(tx, fresh).await?;
    derive_assets(tx, fresh).await?;
    derive_coupons(tx, fresh).await?;
    derive_usage(tx, fresh).await?;
    derive_holds(tx, fresh).await?;
    Ok(seqs)
}

/// One event_changes row per asset change of the batch.
#[derive(Default)]
struct ChangeRows<'a> {
    ev: Vec<&'a str>,
    uuid: Vec<uuid::Uuid>,
    idx: Vec<i32>,
    key: Vec<&'a str>,
    field: Vec<&'a str>,
    delta: Vec<&'a str>,
    bal: Vec<&'a str>,
    seq: Vec<i64>,
    ts: Vec<i64>,
}

/// event_changes rows, and per (key, field) the balance carried by the highest seq.
async fn derive_assets(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[&Event],
) -> Result<(), sqlx::Error> {
    let mut c = ChangeRows::default();
    // (key, field) -> index into c of the change with the highest seq
    let mut latest: HashMap<(&str, &str), usize> = HashMap::new();
    for e in fresh {
        if let Body::Asset(changes) = &e.body {
            for (i, ch) in changes.iter().enumerate() {
                let seq = e.seq_of(&ch.key).unwrap_or(0);
                let pos = c.ev.len();
                c.ev.push(e.id.as_str());
                c.uuid.push(e.uuid);
                c.idx.push(i as i32);
                c.key.push(ch.key.as_str());
                c.field.push(ch.field.as_str());
                c.delta.push(ch.delta.as_str());
                c.bal.push(ch.balance.as_str());
                c.seq.push(seq);
                c.ts.push(e.ts);
                let ent = latest
                    .entry((ch.key.as_str(), ch.field.as_str()))
                    .or_insert(pos);
                if c.seq[*ent] <= seq {
                    *ent = pos;
                }
            }
        }
    }
    if c.ev.is_empty() {
        return Ok(());
    }
    insert_changes(tx, &c).await?;
    let pos: Vec<usize> = latest.values().copied().collect();
    upsert_balances(tx, &c, &pos).await
}

/// The change rows by COPY; by an UNNEST insert when a value does not encode (Postgres
/// then judges it with the same error as before).
async fn insert_changes(
    tx: &mut Transaction<'_, Postgres>,
    c: &ChangeRows<'_>,
) -> Result<(), sqlx::Error> {
    if let Some(rows) = change_copy_rows(c) {
        copy_in(
            tx,
            "event_changes",
            "event_id, idx, data_key, field, delta, balance, seq, ts_ms",
            rows,
        )
        .await?;
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO event_changes (event_id, idx, data_key, field, delta, balance, seq, ts_ms)
         SELECT e::uuid, i, k, f, d::numeric, b::numeric, s, t
         FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[])
             AS u(e, i, k, f, d, b, s, t)",
    )
    .bind(&c.ev)
    .bind(&c.idx)
    .bind(&c.key)
    .bind(&c.field)
    .bind(&c.delta)
    .bind(&c.bal)
    .bind(&c.seq)
    .bind(&c.ts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn change_copy_rows(c: &ChangeRows<'_>) -> Option<Vec<u8>> {
    let mut rows = CopyRows::new();
    for i in 0..c.ev.len() {
        rows.row(8);
        rows.uuid_value(&c.uuid[i]);
        rows.int4(c.idx[i]);
        rows.text(c.key[i]);
        rows.text(c.field[i]);
        rows.numeric(c.delta[i])?;
        rows.numeric(c.bal[i])?;
        rows.int8(c.seq[i]);
        rows.int8(c.ts[i]);
    }
    Some(rows.finish())
}

/// Per (key, field), the balance of its latest change in the batch (`pos` into `c`), unless
/// a higher seq is stored already.
async fn upsert_balances(
    tx: &mut Transaction<'_, Postgres>,
    c: &ChangeRows<'_>,
    pos: &[usize],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO balances (data_key, field, balance, seq, event_id, ts_ms)
         SELECT k, f, b::numeric, s, e::uuid, t
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[]) AS u(k, f, b, s, e, t)
         ON CONFLICT (data_key, field) DO UPDATE
           SET balance = EXCLUDED.balance, seq = EXCLUDED.seq, event_id = EXCLUDED.event_id,
               ts_ms = EXCLUDED.ts_ms, updated_at = now()
         WHERE balances.seq < EXCLUDED.seq",
    )
    .bind(pos.iter().map(|&p| c.key[p]).collect::<Vec<_>>())
    .bind(pos.iter().map(|&p| c.field[p]).collect::<Vec<_>>())
    .bind(pos.iter().map(|&p| c.bal[p]).collect::<Vec<_>>())
    .bind(pos.iter().map(|&p| c.seq[p]).collect::<Vec<_>>())
    .bind(pos.iter().map(|&p| c.ev[p]).collect::<Vec<_>>())
    .bind(pos.iter().map(|&p| c.ts[p]).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

type CouponRef<'a> = (&'a Event, &'a Coupon);

/// Campaign state from the highest seq; one coupon_issues row per claim / release.
async fn derive_coupons(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[&Event],
) -> Result<(), sqlx::Error> {
    let mut campaigns: HashMap<&str, (&Event, &Coupon, i64)> = HashMap::new();
    let mut claims: HashMap<(&str, i64), CouponRef<'_>> = HashMap::new();
    let mut releases: HashMap<(&str, i64), CouponRef<'_>> = HashMap::new();
    for e in fresh {
        if let Body::Coupon(c) = &e.body {
            let seq = e.seq_of(&c.campaign).unwrap_or(e.keys[0].seq);
            let ent = campaigns.entry(c.campaign.as_str()).or_insert((e, c, seq));
            if ent.2 <= seq {
                *ent = (e, c, seq);
            }
            match (c.issue, e.typ.as_str()) {
                // a confirmed reservation becomes a claim (docs/holds.md)
                (Some(issue), "coupon.claim" | "coupon.confirm") => {
                    claims.insert((c.campaign.as_str(), issue), (e, c));
                }
                (Some(issue), "coupon.release") => {
                    releases.insert((c.campaign.as_str(), issue), (e, c));
                }
                _ => {}
            }
        }
    }
    upsert_campaigns(tx, &campaigns.values().collect::<Vec<_>>()).await?;
    upsert_issues(
        tx,
        &claims,
        "INSERT INTO coupon_issues (campaign, issue, user_id, claim_event_id, claimed_ts_ms)
         SELECT c, i, u, e::uuid, t FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[])
             AS x(c, i, u, e, t)
         ON CONFLICT (campaign, issue) DO UPDATE
           SET user_id = EXCLUDED.user_id, claim_event_id = EXCLUDED.claim_event_id,
               claimed_ts_ms = EXCLUDED.claimed_ts_ms",
    )
    .await?;
    upsert_issues(
        tx,
        &releases,
        "INSERT INTO coupon_issues (campaign, issue, user_id, released, release_event_id, released_ts_ms)
         SELECT c, i, u, true, e::uuid, t FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[])
             AS x(c, i, u, e, t)
         ON CONFLICT (campaign, issue) DO UPDATE
           SET released = true, release_event_id = EXCLUDED.release_event_id,
               released_ts_ms = EXCLUDED.released_ts_ms,
               user_id = COALESCE(coupon_issues.user_id, EXCLUDED.user_id)",
    )
    .await
}

/// Each campaign's state as carried by its highest seq in the batch (an older seq never
/// overwrites a newer one).
async fn upsert_campaigns(
    tx: &mut Transaction<'_, Postgres>,
    v: &[&(&Event, &Coupon, i64)],
) -> Result<(), sqlx::Error> {
    if v.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO coupon_campaigns (campaign, total, issued, remaining, peruser, start_ms, end_ms, seq, event_id)
         SELECT c, t, i, r, p, s, en, q, e::uuid
         FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[], $9::text[])
             AS u(c, t, i, r, p, s, en, q, e)
         ON CONFLICT (campaign) DO UPDATE
           SET total = EXCLUDED.total, issued = EXCLUDED.issued, remaining = EXCLUDED.remaining,
               peruser = EXCLUDED.peruser, start_ms = EXCLUDED.start_ms, end_ms = EXCLUDED.end_ms,
               seq = EXCLUDED.seq, event_id = EXCLUDED.event_id, updated_at = now()
         WHERE coupon_campaigns.seq < EXCLUDED.seq",
    )
    .bind(v.iter().map(|x| x.1.campaign.as_str()).collect::<Vec<_>>())
    .bind(v.iter().map(|x| x.1.total).collect::<Vec<_>>())
    .bind(v.iter().map(|x| x.1.issued).collect::<Vec<_>>())
    .bind(v.iter().map(|x| x.1.remaining).collect::<Vec<_>>())
    .bind(v.iter().map(|x| x.1.peruser).collect::<Vec<_>>())
    .bind(v.iter().map(|x| x.1.start).collect::<Vec<_>>())
    .bind(v.iter().map(|x| x.1.end).collect::<Vec<_>>())
    .bind(v.iter().map(|x| x.2).collect::<Vec<_>>())
    .bind(v.iter().map(|x| x.0.id.as_str()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One coupon_issues row per (campaign, issue): `sql` binds campaign, issue, user, event id, ts.
async fn upsert_issues(
    tx: &mut Transaction<'_, Postgres>,
    rows: &HashMap<(&str, i64), CouponRef<'_>>,
    sql: &str,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let v: Vec<_> = rows.iter().collect();
    sqlx::query(sql)
        .bind(v.iter().map(|(k, _)| k.0).collect::<Vec<_>>())
        .bind(v.iter().map(|(k, _)| k.1).collect::<Vec<_>>())
        .bind(
            v.iter()
                .map(|(_, x)| x.1.user.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(v.iter().map(|(_, x)| x.0.id.as_str()).collect::<Vec<_>>())
        .bind(v.iter().map(|(_, x)| x.0.ts).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// One usage counter's events of a batch: the latest (by seq) state, every amount consumed,
/// and how many events.
struct UsageAgg<'a> {
    ev: &'a Event,
    u: &'a Usage,
    seq: i64,
    amounts: Vec<&'a str>,
    n: i64,
}

/// The batch's usage events per (key, period_id).
fn usage_aggregates<'a>(fresh: &[&'a Event]) -> HashMap<(&'a str, &'a str), UsageAgg<'a>> {
    let mut usage: HashMap<(&str, &str), UsageAgg> = HashMap::new();
    for e in fresh {
        if let Body::Usage(u) = &e.body {
            let seq = e.seq_of(&u.key).unwrap_or(e.keys[0].seq);
            let ent = usage
                .entry((u.key.as_str(), u.period_id.as_str()))
                .or_insert(UsageAgg {
                    ev: e,
                    u,
                    seq,
                    amounts: vec![],
                    n: 0,
                });
            if ent.seq <= seq {
                ent.ev = e;
                ent.u = u;
                ent.seq = seq;
            }
            ent.n += 1;
            if let Some(a) = &u.amount {
                ent.amounts.push(a.as_str());
            }
        }
    }
    usage
}

/// Usage totals per (key, period_id): latest used/limit by seq, consumed summed in SQL.
async fn derive_usage(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[&Event],
) -> Result<(), sqlx::Error> {
    let usage = usage_aggregates(fresh);
    if !usage.is_empty() {
        let v: Vec<&UsageAgg> = usage.values().collect();
        // the sum of amounts is computed in SQL (exact NUMERIC); pass them joined by ','
        let sums: Vec<String> = v.iter().map(|a| a.amounts.join(",")).collect();
        sqlx::query(
            "INSERT INTO usage_totals (usage_key, period_id, period, used, quota, consumed, events, seq, event_id)
             SELECT k, pid, per, used::numeric, q::numeric,
                    COALESCE((SELECT sum(x::numeric) FROM unnest(string_to_array(NULLIF(am, ''), ',')) AS x), 0),
                    n, s, e::uuid
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[], $9::text[])
                 AS u(k, pid, per, used, q, am, n, s, e)
             ON CONFLICT (usage_key, period_id) DO UPDATE
               SET consumed = usage_totals.consumed + EXCLUDED.consumed,
                   events = usage_totals.events + EXCLUDED.events,
                   used = CASE WHEN usage_totals.seq < EXCLUDED.seq THEN EXCLUDED.used ELSE usage_totals.used END,
                   quota = CASE WHEN usage_totals.seq < EXCLUDED.seq THEN EXCLUDED.quota ELSE usage_totals.quota END,
                   period = CASE WHEN usage_totals.seq < EXCLUDED.seq THEN EXCLUDED.period ELSE usage_totals.period END,
                   event_id = CASE WHEN usage_totals.seq < EXCLUDED.seq THEN EXCLUDED.event_id ELSE usage_totals.event_id END,
                   seq = GREATEST(usage_totals.seq, EXCLUDED.seq),
                   updated_at = now()",
        )
        .bind(v.iter().map(|a| a.u.key.as_str()).collect::<Vec<_>>())
        .bind(v.iter().map(|a| a.u.period_id.as_str()).collect::<Vec<_>>())
        .bind(v.iter().map(|a| a.u.period.as_str()).collect::<Vec<_>>())
        .bind(v.iter().map(|a| a.u.used.as_str()).collect::<Vec<_>>())
        .bind(v.iter().map(|a| a.u.limit.as_str()).collect::<Vec<_>>())
        .bind(&sums)
        .bind(v.iter().map(|a| a.n).collect::<Vec<_>>())
        .bind(v.iter().map(|a| a.seq).collect::<Vec<_>>())
        .bind(v.iter().map(|a| a.ev.id.as_str()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// One hold's events of a batch: the newest (by seq) carries its state; the one that opened
/// it, if it is in the batch.
struct HoldAgg<'a> {
    ev: &'a Event,
    h: &'a Hold,
    seq: i64,
    opened_by: Option<&'a str>,
}

/// The batch's hold events per (key, hold id), in key order.
fn hold_aggregates<'a>(fresh: &[&'a Event]) -> Vec<(&'a str, HoldAgg<'a>)> {
    let mut holds: HashMap<(&str, i64), HoldAgg> = HashMap::new();
    for e in fresh {
        let (Some(h), Some(k)) = (&e.hold, e.keys.first()) else {
            continue;
        };
        let opened_by = (h.status == "open").then_some(e.id.as_str());
        let ent = holds.entry((k.key.as_str(), h.id)).or_insert(HoldAgg {
            ev: e,
            h,
            seq: k.seq,
            opened_by,
        });
        if ent.seq <= k.seq {
            (ent.ev, ent.h, ent.seq) = (e, h, k.seq);
        }
        ent.opened_by = ent.opened_by.or(opened_by);
    }
    let mut out: Vec<_> = holds.into_iter().map(|((k, _), a)| (k, a)).collect();
    out.sort_unstable_by(|a, b| (a.0, a.1.h.id).cmp(&(b.0, b.1.h.id)));
    out
}

/// Each hold's row: its state as carried by its highest seq (an older seq never overwrites a
/// newer one), and the event that opened it once that arrived.
async fn derive_holds(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[&Event],
) -> Result<(), sqlx::Error> {
    let v = hold_aggregates(fresh);
    if v.is_empty() {
        return Ok(());
    }
    let newer = |c: &str| {
        format!("{c} = CASE WHEN holds.seq < EXCLUDED.seq THEN EXCLUDED.{c} ELSE holds.{c} END")
    };
    let state = [
        "kind",
        "subject",
        "amount",
        "status",
        "created_ms",
        "expires_ms",
        "closed_ms",
        "settled",
        "event_id",
        "seq",
    ];
    let sets: Vec<String> = state.iter().map(|c| newer(c)).collect();
    let sql = format!(
        "INSERT INTO holds (data_key, hold_id, kind, subject, amount, status, created_ms, expires_ms,
                            closed_ms, settled, seq, event_id, open_event_id)
         SELECT k, i, kd, sb, a::numeric, st, c, x, cl, se::numeric, s, e::uuid, o::uuid
         FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
                     $8::int8[], $9::int8[], $10::text[], $11::int8[], $12::text[], $13::text[])
             AS u(k, i, kd, sb, a, st, c, x, cl, se, s, e, o)
         ON CONFLICT (data_key, hold_id) DO UPDATE
           SET {}, open_event_id = COALESCE(holds.open_event_id, EXCLUDED.open_event_id), updated_at = now()
         WHERE holds.seq < EXCLUDED.seq
            OR (holds.open_event_id IS NULL AND EXCLUDED.open_event_id IS NOT NULL)",
        sets.join(", ")
    );
    let closed = |a: &HoldAgg| (a.h.status != "open").then_some(a.ev.ts);
    sqlx::query(&sql)
        .bind(v.iter().map(|(k, _)| *k).collect::<Vec<_>>())
        .bind(v.iter().map(|(_, a)| a.h.id).collect::<Vec<_>>())
        .bind(v.iter().map(|(_, a)| a.h.kind).collect::<Vec<_>>())
        .bind(
            v.iter()
                .map(|(_, a)| a.h.subject.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            v.iter()
                .map(|(_, a)| a.h.amount.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(v.iter().map(|(_, a)| a.h.status).collect::<Vec<_>>())
        .bind(v.iter().map(|(_, a)| a.h.created).collect::<Vec<_>>())
        .bind(v.iter().map(|(_, a)| a.h.expires).collect::<Vec<_>>())
        .bind(v.iter().map(|(_, a)| closed(a)).collect::<Vec<_>>())
        .bind(
            v.iter()
                .map(|(_, a)| a.h.settled.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(v.iter().map(|(_, a)| a.seq).collect::<Vec<_>>())
        .bind(v.iter().map(|(_, a)| a.ev.id.as_str()).collect::<Vec<_>>())
        .bind(v.iter().map(|(_, a)| a.opened_by).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
