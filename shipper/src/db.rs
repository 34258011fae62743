//! Postgres persistence: one transaction per batch, multi-row inserts via UNNEST,
//! dedupe on event_id, derived tables updated only for newly inserted events.

use std::collections::{HashMap, HashSet};

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::config::PgOpts;
use crate::event::{Body, Event};
use crate::pgcopy::{copy_in, copy_unless_present, CopyRows};
use crate::record::Record;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A lazily connecting pool whose every wait is bounded: acquiring a connection (which
/// includes connecting) by `pg_acquire_timeout_ms`, each statement by the server-side
/// `statement_timeout`, and a transaction left idle by `idle_in_transaction_session_timeout`.
pub async fn connect(pg: &PgOpts, max_conns: u32) -> Result<PgPool, sqlx::Error> {
    let statement_ms = pg.pg_statement_timeout_ms.to_string();
    let opts = PgConnectOptions::from_str(&pg.url)?.options([
        ("statement_timeout", statement_ms.as_str()),
        ("idle_in_transaction_session_timeout", statement_ms.as_str()),
    ]);
    Ok(PgPoolOptions::new()
        .max_connections(max_conns.max(1))
        .acquire_timeout(std::time::Duration::from_millis(
            pg.pg_acquire_timeout_ms.max(1),
        ))
        .connect_lazy_with(opts))
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Versions of the embedded migrations the database has not applied (all of them when the
/// migrations table does not exist).
pub async fn missing_migrations(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| format!("{:04}_{}", m.version, m.description.replace(' ', "_")))
        .collect())
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// events newly inserted
    pub inserted: usize,
    /// decoded events already present (replays)
    pub duplicates: usize,
    /// records written to failed_events
    pub failed: usize,
    /// sequence anomalies recorded
    pub anomalies: usize,
    /// ts_ms of the newly inserted events (for lag metrics)
    pub inserted_ts: Vec<i64>,
    /// keys whose contiguous watermark stayed below their highest seq
    pub behind_keys: Vec<String>,
    /// nothing was written: another instance moved a Kafka position this batch continued
    /// from (see `Position`)
    pub fenced: bool,
}

impl Outcome {
    pub fn add(&mut self, o: Outcome) {
        self.inserted += o.inserted;
        self.duplicates += o.duplicates;
        self.failed += o.failed;
        self.anomalies += o.anomalies;
        self.inserted_ts.extend(o.inserted_ts);
        self.behind_keys.extend(o.behind_keys);
        self.fenced |= o.fenced;
    }
}

/// A Kafka position: the next offset to read of one partition, and the stored position the
/// batch continues from (`None`: nothing stored yet for the partition). The pair is the
/// fence between `persist` instances: a batch is stored only if the stored position is still
/// `from`, so an instance that lost the partition (a zombie after a rebalance, or a second
/// instance given the same partitions) can neither write its batch nor move the position.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub from: Option<i64>,
    pub next_offset: i64,
}

/// One transaction: the records, and the Kafka positions they came from (empty on the direct
/// path). With positions, the fence is taken first (row locks on the positions) and the
/// transaction is rolled back, writing nothing, when another instance moved one of them:
/// `Outcome::fenced`. `advance` false checks the fence without moving the positions (the
/// records of a batch being isolated one by one).
pub async fn persist_batch(
    pool: &PgPool,
    records: &[Record],
    positions: &[Position],
    advance: bool,
) -> Result<Outcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !take_fence(&mut tx, positions, advance).await? {
        tx.rollback().await?;
        return Ok(Outcome {
            fenced: true,
            ..Outcome::default()
        });
    }
    let outcome = persist_in_tx(&mut tx, records).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Moves (or, `advance` false, only locks) every position whose stored value is still its
/// `from`; false when any is not (nothing is left changed: the caller rolls back).
async fn take_fence(
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
pub async fn load_positions(
    pool: &PgPool,
    topic: &str,
) -> Result<std::collections::BTreeMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM kafka_offsets WHERE topic = $1")
            .bind(topic)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

async fn persist_in_tx(
    tx: &mut Transaction<'_, Postgres>,
    records: &[Record],
) -> Result<Outcome, sqlx::Error> {
    let mut outcome = Outcome {
        failed: insert_failed(tx, records).await?,
        ..Outcome::default()
    };
    // events (dedupe on id within the batch, keep first arrival)
    let mut seen_id = HashSet::new();
    let mut batch: Vec<(&Record, &Event)> = Vec::new();
    for r in records {
        if let Ok(e) = &r.decoded {
            if seen_id.insert(e.id.as_str()) {
                batch.push((r, e));
            } else {
                outcome.duplicates += 1;
            }
        }
    }
    if batch.is_empty() {
        return Ok(outcome);
    }
    // in id order: two concurrent batches holding the same replayed events lock them in the
    // same order, so they wait for each other instead of deadlocking
    batch.sort_unstable_by(|a, b| a.1.id.cmp(&b.1.id));
    let fresh: Vec<&Event> = if copy_events(tx, &batch).await? {
        batch.iter().map(|(_, e)| *e).collect()
    } else {
        let new_ids = insert_events(tx, &batch).await?;
        batch
            .iter()
            .map(|(_, e)| *e)
            .filter(|e| new_ids.contains(&e.id))
            .collect()
    };
    outcome.inserted = fresh.len();
    outcome.duplicates += batch.len() - fresh.len();
    outcome.inserted_ts = fresh.iter().map(|e| e.ts).collect();
    if fresh.is_empty() {
        return Ok(outcome);
    }
    (outcome.anomalies, outcome.behind_keys) = derive(tx, &fresh).await?;
    Ok(outcome)
}

/// Records that are not events go to failed_events (deduplicated on source within the
/// batch; a source seen again counts an attempt). Returns how many.
async fn insert_failed(
    tx: &mut Transaction<'_, Postgres>,
    records: &[Record],
) -> Result<usize, sqlx::Error> {
    let mut seen_src = HashSet::new();
    let (mut f_src, mut f_via, mut f_stream, mut f_sid, mut f_raw, mut f_err) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for r in records {
        if let Err(e) = &r.decoded {
            if seen_src.insert(r.source.clone()) {
                f_src.push(r.source.clone());
                f_via.push(r.via.clone());
                f_stream.push(r.stream.clone());
                f_sid.push(r.stream_id.clone());
                f_raw.push(r.raw.replace('\0', "\\u0000"));
                f_err.push(e.clone());
            }
        }
    }
    if f_src.is_empty() {
        return Ok(0);
    }
    sqlx::query(
        "INSERT INTO failed_events (source, via, stream, stream_id, raw, error)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
         ON CONFLICT (source) DO UPDATE
           SET attempts = failed_events.attempts + 1, last_seen = now(), error = EXCLUDED.error",
    )
    .bind(&f_src)
    .bind(&f_via)
    .bind(&f_stream)
    .bind(&f_sid)
    .bind(&f_raw)
    .bind(&f_err)
    .execute(&mut **tx)
    .await?;
    Ok(f_src.len())
}

/// The batch's events by COPY when none of them is stored yet (the catch-up case): true
/// when they all went in, false when one was there already (a replay), and nothing was
/// written: the caller inserts them with `insert_events`.
async fn copy_events(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[(&Record, &Event)],
) -> Result<bool, sqlx::Error> {
    let mut rows = CopyRows::new();
    for (r, e) in batch {
        rows.row(10);
        rows.uuid_value(&e.uuid);
        rows.text(&e.typ);
        rows.int8(e.ts);
        rows.opt_text(e.op.as_deref());
        rows.opt_text(e.meta.as_deref());
        rows.text(&r.raw);
        rows.opt_text(r.stream.as_deref());
        rows.opt_text(r.stream_id.as_deref());
        rows.text(&r.source);
        rows.opt_text(r.via.as_deref());
    }
    let columns = "event_id, type, ts_ms, op, meta, raw, stream, stream_id, source, via";
    copy_unless_present(tx, "events", columns, rows.finish()).await
}

/// Inserts the events; returns the ids that were new (a replayed event is skipped).
async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[(&Record, &Event)],
) -> Result<HashSet<String>, sqlx::Error> {
    let ids: Vec<&str> = batch.iter().map(|(_, e)| e.id.as_str()).collect();
    let types: Vec<&str> = batch.iter().map(|(_, e)| e.typ.as_str()).collect();
    let ts: Vec<i64> = batch.iter().map(|(_, e)| e.ts).collect();
    let ops: Vec<Option<&str>> = batch.iter().map(|(_, e)| e.op.as_deref()).collect();
    let metas: Vec<Option<&str>> = batch.iter().map(|(_, e)| e.meta.as_deref()).collect();
    let raws: Vec<&str> = batch.iter().map(|(r, _)| r.raw.as_str()).collect();
    let streams: Vec<Option<&str>> = batch.iter().map(|(r, _)| r.stream.as_deref()).collect();
    let sids: Vec<Option<&str>> = batch.iter().map(|(r, _)| r.stream_id.as_deref()).collect();
    let sources: Vec<&str> = batch.iter().map(|(r, _)| r.source.as_str()).collect();
    let vias: Vec<Option<&str>> = batch.iter().map(|(r, _)| r.via.as_deref()).collect();
    let inserted: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO events (event_id, type, ts_ms, op, meta, raw, stream, stream_id, source, via)
         SELECT id::uuid, type, ts_ms, op, meta, raw, stream, stream_id, source, via
         FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[])
              AS t(id, type, ts_ms, op, meta, raw, stream, stream_id, source, via)
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id::text",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&ts)
    .bind(&ops)
    .bind(&metas)
    .bind(&raws)
    .bind(&streams)
    .bind(&sids)
    .bind(&sources)
    .bind(&vias)
    .fetch_all(&mut **tx)
    .await?;
    Ok(inserted.into_iter().map(|(s,)| s).collect())
}

/// Update derived tables for newly inserted events (in arrival order). Returns the number of
/// anomalies (forks) recorded and the keys whose watermark is behind.
async fn derive(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[&Event],
) -> Result<(usize, Vec<String>), sqlx::Error> {
    let seqs = crate::seqs::record(tx, fresh).await?;
    derive_assets(tx, fresh).await?;
    derive_coupons(tx, fresh).await?;
    derive_usage(tx, fresh).await?;
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

type CouponRef<'a> = (&'a Event, &'a crate::event::Coupon);

/// Campaign state from the highest seq; one coupon_issues row per claim / release.
async fn derive_coupons(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[&Event],
) -> Result<(), sqlx::Error> {
    let mut campaigns: HashMap<&str, (&Event, &crate::event::Coupon, i64)> = HashMap::new();
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
                (Some(issue), "coupon.claim") => {
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
    v: &[&(&Event, &crate::event::Coupon, i64)],
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

/// Usage totals per (key, period_id): latest used/limit by seq, consumed summed in SQL.
async fn derive_usage(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[&Event],
) -> Result<(), sqlx::Error> {
    struct Agg<'a> {
        ev: &'a Event,
        u: &'a crate::event::Usage,
        seq: i64,
        amounts: Vec<&'a str>,
        n: i64,
    }
    let mut usage: HashMap<(&str, &str), Agg> = HashMap::new();
    for e in fresh {
        if let Body::Usage(u) = &e.body {
            let seq = e.seq_of(&u.key).unwrap_or(e.keys[0].seq);
            let ent = usage
                .entry((u.key.as_str(), u.period_id.as_str()))
                .or_insert(Agg {
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
    if !usage.is_empty() {
        let v: Vec<&Agg> = usage.values().collect();
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

/// Re-process unresolved failed_events, each row in its own transaction: a row that still
/// fails (to decode, or to be stored) is counted and left for later, never blocking the
/// rows after it. Returns (resolved, still failing).
pub async fn retry_failed(pool: &PgPool, limit: i64) -> Result<(usize, usize), sqlx::Error> {
    let rows: Vec<(i64, String, Option<String>, Option<String>, Option<String>, String)> = sqlx::query_as(
        "SELECT id, source, via, stream, stream_id, raw FROM failed_events WHERE NOT resolved ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let (mut ok, mut bad) = (0, 0);
    for (id, source, via, stream, stream_id, raw) in rows {
        let rec = Record::new(source, via, stream, stream_id, raw, None);
        let error = match &rec.decoded {
            Ok(ev) => match resolve_one(pool, id, &rec, &ev.id).await {
                Ok(()) => None,
                Err(
                    e @ (sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed),
                ) => return Err(e),
                Err(e) => Some(format!("refused by Postgres: {e}")),
            },
            Err(e) => Some(e.clone()),
        };
        if let Some(e) = error {
            sqlx::query("UPDATE failed_events SET attempts = attempts + 1, last_seen = now(), error = $2 WHERE id = $1")
                .bind(id)
                .bind(&e)
                .execute(pool)
                .await?;
            bad += 1;
        } else {
            ok += 1;
        }
    }
    Ok((ok, bad))
}

async fn resolve_one(
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
