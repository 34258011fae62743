//! The per-key order proof, independent of arrival order.
//!
//! Every event carries, per key it touched, the key's seq (1, 2, 3, ... without holes, issued
//! by the module). Postgres keeps, per key, the highest seq seen (`last_seq`) and the
//! contiguous watermark (`contiguous_seq`: the highest n such that 1..n are all present).
//! An event that arrives early (a transfer's second key travels on another Kafka partition)
//! is not an anomaly: the watermark simply waits for the missing ones. A gap is a seq still
//! missing once the pipeline has drained (`reconcile` reports it). A fork is one (key, seq)
//! carried by two different event ids: recorded, never overwritten.
//!
//! Key order is byte order everywhere: every statement that locks key_seqs rows sorts its
//! keys `COLLATE "C"` (the collation of `data_key` since migration 0008), the order of this
//! file's `BTreeMap`s. Two lockers sorting by different collations could each hold a key the
//! other waits for.

use std::collections::{BTreeMap, HashMap};

use sqlx::{PgPool, Postgres, Transaction};

use super::copy::{copy_in, CopyRows};
use crate::event::Event;

/// A (key, seq) carried by two different events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fork {
    pub(crate) key: String,
    pub(crate) seq: i64,
    /// the event that arrived second
    pub(crate) event_id: String,
    /// the version already stored (or earlier in the same batch)
    pub(crate) other_event_id: String,
}

/// A key's row of key_seqs: its highest seq seen and its contiguous watermark.
#[derive(sqlx::FromRow)]
struct KeySeqRow {
    data_key: String,
    contiguous_seq: i64,
    last_seq: i64,
}

/// The new watermark: from `contiguous`, advance over `seqs_above` (the stored seqs of the
/// key greater than `contiguous`, any order, duplicates allowed) while they are consecutive.
pub(crate) fn advance_watermark(contiguous: i64, seqs_above: &[i64]) -> i64 {
    let mut sorted: Vec<i64> = seqs_above
        .iter()
        .copied()
        .filter(|s| *s > contiguous)
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut c = contiguous;
    for s in sorted {
        if s != c + 1 {
            break;
        }
        c = s;
    }
    c
}

/// One key's seqs in a batch: the highest and lowest, whether its distinct seqs are
/// consecutive, and the first event that carried the highest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyBatch<'a> {
    pub(crate) max: i64,
    pub(crate) min: i64,
    pub(crate) run: bool,
    pub(crate) newest: &'a str,
}

/// Per key (in key order), its `KeyBatch` from `(key, seq, event)` in arrival order.
pub(crate) fn key_batches<'a>(
    pairs: impl IntoIterator<Item = (&'a str, i64, &'a str)>,
) -> BTreeMap<&'a str, KeyBatch<'a>> {
    let mut seqs: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut newest: HashMap<&str, (i64, &str)> = HashMap::new();
    for (key, seq, ev) in pairs {
        seqs.entry(key).or_default().push(seq);
        let n = newest.entry(key).or_insert((seq, ev));
        if seq > n.0 {
            *n = (seq, ev);
        }
    }
    seqs.into_iter()
        .filter_map(|(key, mut s)| {
            s.sort_unstable();
            s.dedup();
            let (min, max) = (*s.first()?, *s.last()?);
            let run = max.checked_sub(min).and_then(|d| d.checked_add(1)) == Some(s.len() as i64);
            let newest = newest.get(key)?.1;
            Some((
                key,
                KeyBatch {
                    max,
                    min,
                    run,
                    newest,
                },
            ))
        })
        .collect()
}

/// Whether a key's watermark after the batch is known without reading event_keys: it had no
/// early arrivals stored (`last == contiguous`) and the batch brings exactly the next seqs.
pub(crate) fn fast(contiguous: i64, last: i64, b: &KeyBatch<'_>) -> bool {
    last == contiguous && b.min.checked_sub(1) == Some(contiguous) && b.run
}

/// One (key, seq) an event carried.
struct Pair<'a> {
    ev: &'a str,
    uuid: uuid::Uuid,
    key: &'a str,
    seq: i64,
    ts: i64,
}

/// Records the batch's (key, seq) pairs and its forks, and advances each key's watermark.
/// Returns the number of forks and the keys whose watermark stayed below their highest seq.
///
/// Every key's key_seqs row is locked first (`lock_keys`, in key order), so no other
/// transaction writes pairs of these keys until this one ends: a pair above the key's highest
/// seq cannot be stored yet, and only the others are looked up in event_keys (every month).
/// That is what makes a fork exact without a unique (key, seq) index, which a table
/// partitioned by month cannot have across months.
pub(crate) async fn record(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[&Event],
) -> Result<(usize, Vec<String>), sqlx::Error> {
    let mut pairs = Vec::new();
    for e in fresh {
        for k in &e.keys {
            pairs.push(Pair {
                ev: e.id.as_str(),
                uuid: e.uuid,
                key: k.key.as_str(),
                seq: k.seq,
                ts: e.ts,
            });
        }
    }
    let batches = key_batches(pairs.iter().map(|p| (p.key, p.seq, p.ev)));
    let before = advance_keys(tx, &batches).await?;
    let highest = |k: &str| before.get(k).map(|c| c.1).unwrap_or(0);
    let seen: Vec<(&str, i64)> = pairs
        .iter()
        .filter(|p| p.seq <= highest(p.key))
        .map(|p| (p.key, p.seq))
        .collect();
    // (key, seq) -> the event that keeps it: stored before, or the first of this batch
    let mut keeper: HashMap<(String, i64), String> = stored_versions(tx, &seen).await?;
    let mut store = Vec::new();
    let mut forks = Vec::new();
    for p in &pairs {
        match keeper.get(&(p.key.to_string(), p.seq)) {
            Some(other) if other != p.ev => forks.push(Fork {
                key: p.key.to_string(),
                seq: p.seq,
                event_id: p.ev.to_string(),
                other_event_id: other.clone(),
            }),
            Some(_) => {} // the same event twice: nothing new
            None => {
                keeper.insert((p.key.to_string(), p.seq), p.ev.to_string());
                store.push(p);
            }
        }
    }
    copy_keys(tx, &store).await?;
    insert_forks(tx, &forks).await?;
    let behind = settle_slow(tx, &batches, &before).await?;
    Ok((forks.len(), behind))
}

/// The key_seqs rows of the keys whose first event (seq 1) is in `records`, created before
/// the batch's transaction, in key order and committed at once, with nothing to roll back but
/// a row at seq 0. Created inside it (by `insert_keys`), a new key was a lock taken after
/// the batch's locks on existing keys, out of key order: two writers sharing a new key and an
/// old one deadlocked (`direct.rs`'s outage test). This statement holds no other lock while it
/// waits for a concurrent insert of the same key. `insert_keys` stays for keys first seen past
/// seq 1.
pub(crate) async fn create_new_keys(
    pool: &PgPool,
    records: &[crate::event::Record],
) -> Result<(), sqlx::Error> {
    let mut new: BTreeMap<&str, &str> = BTreeMap::new();
    for e in records.iter().filter_map(|r| r.decoded.as_ref().ok()) {
        for k in e.keys.iter().filter(|k| k.seq == 1) {
            new.entry(k.key.as_str()).or_insert(e.id.as_str());
        }
    }
    if new.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO key_seqs (data_key, last_seq, event_id, contiguous_seq)
         SELECT k, 0, e::uuid, 0 FROM UNNEST($1::text[], $2::text[]) AS t(k, e) ORDER BY k COLLATE \"C\"
         ON CONFLICT (data_key) DO NOTHING",
    )
    .bind(new.keys().copied().collect::<Vec<_>>())
    .bind(new.values().copied().collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

/// Every key of the batch, in key order: locks its key_seqs row (creating the missing ones),
/// moves `last_seq` to the batch's highest seq and `contiguous_seq` along when `fast` holds,
/// and returns each key's (contiguous_seq, last_seq) as they were before. The rows are locked
/// in key order, so two batches sharing keys (a transfer whose keys went to two writers) wait
/// for each other instead of deadlocking. Pairs above the previous highest seq go in
/// unchecked (see `record`); last_seq moves only over those, so forks never move it. A key
/// another transaction created meanwhile is taken by the next round.
async fn advance_keys(
    tx: &mut Transaction<'_, Postgres>,
    batches: &BTreeMap<&str, KeyBatch<'_>>,
) -> Result<HashMap<String, (i64, i64)>, sqlx::Error> {
    // A key needs at most two: created by another transaction meanwhile (not found by the
    // lock, skipped by the insert), then locked. One more for margin.
    const ROUNDS: usize = 3;
    let mut before = HashMap::new();
    for round in 0..=ROUNDS {
        let todo: Vec<&str> = batches
            .keys()
            .filter(|k| !before.contains_key(**k))
            .copied()
            .collect();
        if todo.is_empty() {
            return Ok(before);
        }
        if round == ROUNDS {
            break;
        }
        let locked = lock_keys(tx, &todo).await?;
        write_keys(tx, batches, &locked).await?;
        before.extend(
            locked
                .into_iter()
                .map(|r| (r.data_key, (r.contiguous_seq, r.last_seq))),
        );
        let missing: Vec<&str> = todo
            .into_iter()
            .filter(|k| !before.contains_key(*k))
            .collect();
        for k in insert_keys(tx, batches, &missing).await? {
            before.insert(k, (0, 0));
        }
    }
    let left: Vec<&str> = batches
        .keys()
        .filter(|k| !before.contains_key(**k))
        .take(3)
        .copied()
        .collect();
    Err(sqlx::Error::Protocol(format!(
        "key_seqs: keys still taken concurrently after {ROUNDS} rounds (first: {left:?}); \
         the batch is retried"
    )))
}

/// A key_seqs row locked by `lock_keys`: where it is and its values before the batch.
#[derive(sqlx::FromRow)]
struct LockedKey {
    tid: String,
    data_key: String,
    contiguous_seq: i64,
    last_seq: i64,
}

/// Locks the existing key_seqs rows of `keys` in key order and reads them: after waiting for
/// another writer, the version it committed. One primary-key lookup per key (a LATERAL join
/// over the keys sorted in SQL, bytewise, as every other locker of key_seqs sorts):
/// `data_key = ANY($1)` let the planner scan the whole table and hash-join
/// when the batch is large against it (about 11 blocks read per key in the capacity run).
async fn lock_keys(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[&str],
) -> Result<Vec<LockedKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT l.tid::text AS tid, l.data_key, l.contiguous_seq, l.last_seq
         FROM (SELECT k FROM UNNEST($1::text[]) AS k ORDER BY k COLLATE \"C\") i CROSS JOIN LATERAL (
             SELECT ks.ctid AS tid, ks.data_key, ks.contiguous_seq, ks.last_seq FROM key_seqs ks
             WHERE ks.data_key = i.k FOR UPDATE) l",
    )
    .bind(keys)
    .fetch_all(&mut **tx)
    .await
}

/// The locked rows' new values, written where `lock_keys` found them (a TID scan, not a
/// second key lookup). This statement's snapshot is newer than the lock's wait, and the lock
/// is held: each row it updates is the version the lock read.
async fn write_keys(
    tx: &mut Transaction<'_, Postgres>,
    batches: &BTreeMap<&str, KeyBatch<'_>>,
    locked: &[LockedKey],
) -> Result<(), sqlx::Error> {
    let (mut tid, mut last, mut newest, mut contiguous) = (vec![], vec![], vec![], vec![]);
    for r in locked {
        let Some(b) = batches.get(r.data_key.as_str()) else {
            continue; // not asked for: cannot happen, and nothing to write
        };
        tid.push(r.tid.as_str());
        last.push(r.last_seq.max(b.max));
        newest.push((b.max > r.last_seq).then_some(b.newest));
        contiguous.push(if fast(r.contiguous_seq, r.last_seq, b) {
            b.max
        } else {
            r.contiguous_seq
        });
    }
    if tid.is_empty() {
        return Ok(());
    }
    let updated = sqlx::query(
        "UPDATE key_seqs ks SET last_seq = t.last, event_id = COALESCE(t.e::uuid, ks.event_id),
             contiguous_seq = t.c, updated_at = now()
         FROM UNNEST($1::text[]::tid[], $2::int8[], $3::text[], $4::int8[]) AS t(tid, last, e, c)
         WHERE ks.ctid = ANY($1::text[]::tid[]) AND ks.ctid = t.tid",
    )
    .bind(&tid)
    .bind(&last)
    .bind(&newest)
    .bind(&contiguous)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    // every row is locked by this transaction: none can have moved
    if updated != tid.len() as u64 {
        return Err(sqlx::Error::Protocol(format!(
            "key_seqs: {updated} of {} locked rows updated",
            tid.len()
        )));
    }
    Ok(())
}

/// Creates the key_seqs rows of `keys` (none was found), in key order; returns the keys
/// created. A key another transaction created meanwhile is skipped (taken by the next round).
/// A key first seen at seq 1 was created before the transaction (`create_new_keys`); this is
/// for keys first seen past it.
async fn insert_keys(
    tx: &mut Transaction<'_, Postgres>,
    batches: &BTreeMap<&str, KeyBatch<'_>>,
    keys: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let rows: Vec<(&str, &KeyBatch)> = keys
        .iter()
        .filter_map(|k| batches.get(k).map(|b| (*k, b)))
        .collect();
    sqlx::query_scalar(
        "INSERT INTO key_seqs (data_key, last_seq, event_id, contiguous_seq)
         SELECT k, mx, e::uuid, CASE WHEN mn = 1 AND run THEN mx ELSE 0 END
         FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::bool[], $5::text[]) AS t(k, mx, mn, run, e)
         ORDER BY k COLLATE \"C\"
         ON CONFLICT (data_key) DO NOTHING
         RETURNING data_key",
    )
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.max).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.min).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.run).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.newest).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await
}

/// The stored event of each (key, seq) in `seen` that event_keys holds.
async fn stored_versions(
    tx: &mut Transaction<'_, Postgres>,
    seen: &[(&str, i64)],
) -> Result<HashMap<(String, i64), String>, sqlx::Error> {
    if seen.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT ek.data_key, ek.seq, ek.event_id::text FROM UNNEST($1::text[], $2::int8[]) AS t(k, s)
         JOIN event_keys ek ON ek.data_key = t.k AND ek.seq = t.s",
    )
    .bind(seen.iter().map(|f| f.0).collect::<Vec<_>>())
    .bind(seen.iter().map(|f| f.1).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(k, s, e)| ((k, s), e)).collect())
}

/// The new (key, seq) pairs by COPY (nothing in them is stored yet: see `record`).
async fn copy_keys(
    tx: &mut Transaction<'_, Postgres>,
    store: &[&Pair<'_>],
) -> Result<(), sqlx::Error> {
    if store.is_empty() {
        return Ok(());
    }
    let mut rows = CopyRows::new();
    for p in store {
        rows.row(4);
        rows.uuid_value(&p.uuid);
        rows.text(p.key);
        rows.int8(p.seq);
        rows.int8(p.ts);
    }
    copy_in(
        tx,
        "event_keys",
        "event_id, data_key, seq, ts_ms",
        rows.finish(),
    )
    .await?;
    Ok(())
}

async fn insert_forks(
    tx: &mut Transaction<'_, Postgres>,
    forks: &[Fork],
) -> Result<(), sqlx::Error> {
    if forks.is_empty() {
        return Ok(());
    }
    for f in forks {
        // ERROR is reserved for data loss: a fork means one timeline of this key was lost
        tracing::error!(key = %f.key, seq = f.seq, event_id = %f.event_id, other_event_id = %f.other_event_id,
            "fork: one seq carried by two events (a failover lost writes that were already shipped?)");
    }
    sqlx::query(
        "INSERT INTO sequence_anomalies (data_key, kind, expected_seq, got_seq, event_id, other_event_id)
         SELECT k, 'fork', s, s, e::uuid, o::uuid FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[]) AS t(k, s, e, o)",
    )
    .bind(forks.iter().map(|f| f.key.as_str()).collect::<Vec<_>>())
    .bind(forks.iter().map(|f| f.seq).collect::<Vec<_>>())
    .bind(forks.iter().map(|f| f.event_id.as_str()).collect::<Vec<_>>())
    .bind(forks.iter().map(|f| f.other_event_id.as_str()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The watermark of the keys `advance_keys` could not move (`fast` false: an early arrival,
/// a gap, a late seq): advanced over the seqs stored above it, this batch's included. Returns
/// the keys left with contiguous_seq < last_seq.
async fn settle_slow(
    tx: &mut Transaction<'_, Postgres>,
    batches: &BTreeMap<&str, KeyBatch<'_>>,
    before: &HashMap<String, (i64, i64)>,
) -> Result<Vec<String>, sqlx::Error> {
    let prev = |k: &str| before.get(k).copied().unwrap_or((0, 0));
    let slow: Vec<&str> = batches
        .iter()
        .filter(|(k, b)| {
            let (c, last) = prev(k);
            !fast(c, last, b)
        })
        .map(|(k, _)| *k)
        .collect();
    if slow.is_empty() {
        return Ok(vec![]);
    }
    let from: Vec<i64> = slow.iter().map(|k| prev(k).0).collect();
    let above = seqs_above(&mut **tx, &slow, &from).await?;
    let (mut uk, mut uc, mut behind) = (vec![], vec![], vec![]);
    for (k, c) in slow.iter().zip(&from) {
        let n = advance_watermark(*c, above.get(*k).map(Vec::as_slice).unwrap_or(&[]));
        if n > *c {
            uk.push(*k);
            uc.push(n);
        }
        if n < prev(k).1.max(batches.get(k).map_or(0, |b| b.max)) {
            behind.push(k.to_string());
        }
    }
    raise_watermarks(&mut **tx, &uk, &uc).await?;
    Ok(behind)
}

/// Stored seqs above each key's watermark.
async fn seqs_above<'e, E>(
    ex: E,
    keys: &[&str],
    from: &[i64],
) -> Result<HashMap<String, Vec<i64>>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let above: Vec<(String, i64)> = sqlx::query_as(
        "SELECT t.k, ek.seq FROM UNNEST($1::text[], $2::int8[]) AS t(k, c)
         JOIN event_keys ek ON ek.data_key = t.k AND ek.seq > t.c",
    )
    .bind(keys)
    .bind(from)
    .fetch_all(ex)
    .await?;
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for (k, s) in above {
        out.entry(k).or_default().push(s);
    }
    Ok(out)
}

/// `repair` over every key whose watermark is below its highest seq (a scan of key_seqs, in
/// pages): at start, after a crash lost the in-process repair queue, and at shutdown.
pub(crate) async fn repair_all(pool: &PgPool) -> Result<usize, sqlx::Error> {
    const PAGE: i64 = 1_000;
    let mut after = String::new();
    let mut still = 0;
    loop {
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT data_key FROM key_seqs WHERE last_seq > contiguous_seq AND data_key > $1 ORDER BY data_key LIMIT $2",
        )
        .bind(&after)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
        let Some(last) = keys.last().cloned() else {
            return Ok(still);
        };
        still += repair(pool, &keys).await?.len();
        after = last;
    }
}

/// Recompute the watermark of `keys` from everything committed (after concurrent writers
/// finished). Returns the keys still behind their highest seq: early arrivals waiting for
/// the rest, or, once the pipeline has drained, gaps.
pub(crate) async fn repair(pool: &PgPool, keys: &[String]) -> Result<Vec<String>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let rows: Vec<KeySeqRow> = sqlx::query_as(
        "SELECT data_key, contiguous_seq, last_seq FROM key_seqs WHERE data_key = ANY($1::text[])",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    let behind: Vec<KeySeqRow> = rows
        .into_iter()
        .filter(|r| r.contiguous_seq < r.last_seq)
        .collect();
    let ks: Vec<&str> = behind.iter().map(|r| r.data_key.as_str()).collect();
    let from: Vec<i64> = behind.iter().map(|r| r.contiguous_seq).collect();
    let above = seqs_above(pool, &ks, &from).await?;
    let mut still = Vec::new();
    let (mut uk, mut uc) = (vec![], vec![]);
    for r in &behind {
        let c = r.contiguous_seq;
        let n = advance_watermark(c, above.get(&r.data_key).map(Vec::as_slice).unwrap_or(&[]));
        if n > c {
            uk.push(r.data_key.as_str());
            uc.push(n);
        }
        if n < r.last_seq {
            still.push(r.data_key.clone());
        }
    }
    raise_watermarks(pool, &uk, &uc).await?;
    Ok(still)
}

/// contiguous_seq of each key in `keys` raised to its value in `to` (never lowered).
async fn raise_watermarks<'e, E>(ex: E, keys: &[&str], to: &[i64]) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    if keys.is_empty() {
        return Ok(());
    }
    // The rows are locked in key order first, as `advance_keys` locks them: updated in plan
    // order, this (the repair loop's, on its own connection) deadlocked with a writer holding
    // one of the keys and waiting for another (`direct.rs`'s outage test, 4 runs in 8).
    sqlx::query(
        "WITH locked AS (
             SELECT ks.data_key FROM key_seqs ks WHERE ks.data_key = ANY($1::text[])
             ORDER BY ks.data_key COLLATE \"C\" FOR UPDATE
         )
         UPDATE key_seqs ks SET contiguous_seq = GREATEST(ks.contiguous_seq, t.c), updated_at = now()
         FROM UNNEST($1::text[], $2::int8[]) AS t(k, c) JOIN locked l ON l.data_key = t.k
         WHERE ks.data_key = t.k",
    )
    .bind(keys)
    .bind(to)
    .execute(ex)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_advances_only_over_consecutive_seqs() {
        assert_eq!(advance_watermark(0, &[1, 2, 3]), 3);
        assert_eq!(
            advance_watermark(0, &[3, 1, 2]),
            3,
            "arrival order does not matter"
        );
        assert_eq!(advance_watermark(0, &[2, 3]), 0, "1 is missing: wait");
        assert_eq!(advance_watermark(5, &[6, 8, 9]), 6, "7 is missing");
        assert_eq!(
            advance_watermark(5, &[7, 6, 6, 8]),
            8,
            "duplicates are harmless"
        );
        assert_eq!(
            advance_watermark(5, &[1, 2, 3]),
            5,
            "seqs at or below the watermark change nothing"
        );
        assert_eq!(advance_watermark(4, &[]), 4);
    }

    #[test]
    fn early_arrival_then_the_missing_one_closes_the_gap() {
        // batch 1 brings seq 2 and 3 of key a (they came through a faster partition)
        let c = advance_watermark(0, &[2, 3]);
        assert_eq!(c, 0);
        // batch 2 brings seq 1: stored seqs above 0 are now 1, 2, 3
        assert_eq!(advance_watermark(c, &[1, 2, 3]), 3);
    }

    #[test]
    fn fast_path_only_for_the_next_seqs_of_a_settled_key() {
        let batch = key_batches([
            ("a", 7, "e2"),
            ("a", 6, "e1"),
            ("b", 3, "e1"),
            ("new", 1, "e3"),
            ("new", 2, "e4"),
            ("new", 2, "e5"),
            ("late", 2, "e6"),
            ("gap", 6, "e7"),
            ("gap", 8, "e8"),
        ]);
        assert_eq!(
            batch["a"],
            KeyBatch {
                max: 7,
                min: 6,
                run: true,
                newest: "e2"
            }
        );
        // the first event that carried the highest seq keeps it (e5 is a fork of e4)
        assert_eq!(batch["new"].newest, "e4");
        assert!(fast(5, 5, &batch["a"]));
        assert!(fast(0, 0, &batch["new"]));
        // b had early arrivals stored (last 4 > contiguous 2); "late" lacks seq 1; 7 is missing
        assert!(!fast(2, 4, &batch["b"]));
        assert!(!fast(0, 0, &batch["late"]));
        assert!(!batch["gap"].run);
        assert!(!fast(5, 5, &batch["gap"]));
    }
}
