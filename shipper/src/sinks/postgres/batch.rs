//! One batch into Postgres: one transaction, events deduplicated on event_id (by COPY when
//! none is stored yet, else by multi-row inserts via UNNEST), records that are not events into
//! failed_events, and the derived tables for the newly inserted events only.

use std::collections::HashSet;

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};

use super::copy::{copy_unless_present, CopyRows};
use super::derived::derive;
use super::fence::{take_fence, Position};
use crate::event::{Event, Record};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// events newly inserted
    pub(crate) inserted: usize,
    /// decoded events already present (replays)
    pub(crate) duplicates: usize,
    /// records written to failed_events
    pub(crate) failed: usize,
    /// sequence anomalies recorded
    pub(crate) anomalies: usize,
    /// ts_ms of the newly inserted events (for lag metrics)
    pub(crate) inserted_ts: Vec<i64>,
    /// keys whose contiguous watermark stayed below their highest seq
    pub(crate) behind_keys: Vec<String>,
    /// nothing was written: another instance moved a Kafka position this batch continued
    /// from (see `Position`)
    pub(crate) fenced: bool,
}

impl Outcome {
    pub(crate) fn add(&mut self, o: Outcome) {
        self.inserted += o.inserted;
        self.duplicates += o.duplicates;
        self.failed += o.failed;
        self.anomalies += o.anomalies;
        self.inserted_ts.extend(o.inserted_ts);
        self.behind_keys.extend(o.behind_keys);
        self.fenced |= o.fenced;
    }
}

/// One transaction: the records, and the Kafka positions they came from (empty on the direct
/// path). With positions, the fence is taken first (row locks on the positions) and the
/// transaction is rolled back, writing nothing, when another instance moved one of them:
/// `Outcome::fenced`. `advance` false checks the fence without moving the positions (the
/// records of a batch being isolated one by one).
pub(crate) async fn persist_batch(
    pool: &PgPool,
    records: &[Record],
    positions: &[Position],
    advance: bool,
) -> Result<Outcome, sqlx::Error> {
    before_tx(pool, records).await?;
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

/// What the records need before their transaction, each committed at once: the month
/// partitions their events will be written to (see `months`), and the key_seqs rows of their
/// new keys (see `seqs::create_new_keys`).
pub(super) async fn before_tx(pool: &PgPool, records: &[Record]) -> Result<(), sqlx::Error> {
    let ts = records
        .iter()
        .filter_map(|r| r.decoded.as_ref().ok().map(|e| e.ts));
    super::months::ensure(pool, ts).await?;
    super::seqs::create_new_keys(pool, records).await
}

/// The records in `tx`; their months and new keys exist (`before_tx`).
pub(super) async fn persist_in_tx(
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
