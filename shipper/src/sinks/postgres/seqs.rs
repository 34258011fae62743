//! The per-key order proof, independent of arrival order.
//!
//! Every event carries, per key it touched, the key's seq (1, 2, 3, ... without holes, issued
//! by the module). Postgres keeps, per key, the highest seq seen (`last_seq`) and the
//! contiguous watermark (`contiguous_seq`: the highest n such that 1..n are all present).
//! An event that arrives early (a transfer's second key travels on another Kafka partition)
//! is not an anomaly: the watermark simply waits for the missing ones. A gap is a seq still
//! missing once the pipeline has drained (`reconcile` reports it). A fork is one (key, seq)
//! carried by two different event ids: recorded, never overwritten.

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

/// The watermark of each key after a batch, when it can be decided without reading
/// event_keys: the key had no early arrivals stored (`last == contiguous`) and the batch
/// brings exactly the next seqs. The keys returned second need `advance_watermark` over the
/// stored seqs above their watermark.
pub(crate) fn fast_watermarks<'a>(
    current: &HashMap<String, (i64, i64)>,
    batch: &BTreeMap<&'a str, Vec<i64>>,
) -> (HashMap<&'a str, i64>, Vec<&'a str>) {
    let mut fast = HashMap::new();
    let mut slow = Vec::new();
    for (key, seqs) in batch {
        let (c, last) = current.get(*key).copied().unwrap_or((0, 0));
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        let consecutive = sorted
            .iter()
            .enumerate()
            .all(|(i, s)| *s == c + 1 + i as i64);
        if last == c && consecutive {
            fast.insert(*key, c + sorted.len() as i64);
        } else {
            slow.push(*key);
        }
    }
    (fast, slow)
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
    let current = lock_keys(tx, &pairs).await?;
    let highest = |k: &str| current.get(k).map(|c| c.1).unwrap_or(0);
    let seen: Vec<(&str, i64)> = pairs
        .iter()
        .filter(|p| p.seq <= highest(p.key))
        .map(|p| (p.key, p.seq))
        .collect();
    // (key, seq) -> the event that keeps it: stored before, or the first of this batch
    let mut keeper: HashMap<(String, i64), String> = stored_versions(tx, &seen).await?;
    let mut kept: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut newest: HashMap<&str, (i64, &str)> = HashMap::new();
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
                kept.entry(p.key).or_default().push(p.seq);
                let n = newest.entry(p.key).or_insert((p.seq, p.ev));
                if p.seq > n.0 {
                    *n = (p.seq, p.ev);
                }
                store.push(p);
            }
        }
    }
    copy_keys(tx, &store).await?;
    insert_forks(tx, &forks).await?;
    let behind = advance(tx, &kept, &newest, &current).await?;
    Ok((forks.len(), behind))
}

/// Locks the key_seqs row of every key of `pairs`, in key order, creating the missing ones
/// (highest and contiguous seq 0, until `advance` sets them), and returns each key's
/// (contiguous_seq, last_seq) as stored. One statement: the no-op update of an existing row is
/// what locks it, and the rows are taken in the order given, so two batches sharing keys (a
/// transfer whose keys went to two writers) wait for each other instead of deadlocking.
async fn lock_keys(
    tx: &mut Transaction<'_, Postgres>,
    pairs: &[Pair<'_>],
) -> Result<HashMap<String, (i64, i64)>, sqlx::Error> {
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    for p in pairs {
        first.entry(p.key).or_insert(p.ev);
    }
    if first.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<KeySeqRow> = sqlx::query_as(
        "INSERT INTO key_seqs (data_key, last_seq, event_id, contiguous_seq)
         SELECT k, 0, e::uuid, 0 FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS t(k, e, n) ORDER BY n
         ON CONFLICT (data_key) DO UPDATE SET last_seq = key_seqs.last_seq
         RETURNING data_key, contiguous_seq, last_seq",
    )
    .bind(first.keys().copied().collect::<Vec<_>>())
    .bind(first.values().copied().collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.data_key, (r.contiguous_seq, r.last_seq)))
        .collect())
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

/// Upsert key_seqs: last_seq = highest seen, contiguous_seq advanced. Returns the keys left
/// with contiguous_seq < last_seq.
async fn advance(
    tx: &mut Transaction<'_, Postgres>,
    kept: &BTreeMap<&str, Vec<i64>>,
    newest: &HashMap<&str, (i64, &str)>,
    current: &HashMap<String, (i64, i64)>,
) -> Result<Vec<String>, sqlx::Error> {
    // Every row exists and is locked (`lock_keys`); one statement, in key order, all the same.
    if kept.is_empty() {
        return Ok(vec![]);
    }
    let keys: Vec<&str> = kept.keys().copied().collect();
    let (mut contiguous, slow) = fast_watermarks(current, kept);
    if !slow.is_empty() {
        let from: Vec<i64> = slow
            .iter()
            .map(|k| current.get(*k).map(|c| c.0).unwrap_or(0))
            .collect();
        let above = seqs_above(&mut **tx, &slow, &from).await?;
        for (k, c) in slow.iter().zip(&from) {
            contiguous.insert(
                k,
                advance_watermark(*c, above.get(*k).map(Vec::as_slice).unwrap_or(&[])),
            );
        }
    }
    let c: Vec<i64> = keys
        .iter()
        .map(|k| contiguous.get(k).copied().unwrap_or(0))
        .collect();
    let last: Vec<i64> = keys
        .iter()
        .map(|k| newest.get(k).map(|n| n.0).unwrap_or(0))
        .collect();
    sqlx::query(
        "INSERT INTO key_seqs (data_key, last_seq, event_id, contiguous_seq)
         SELECT k, s, e::uuid, c FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[]) AS t(k, s, e, c)
         ON CONFLICT (data_key) DO UPDATE SET
             last_seq = GREATEST(key_seqs.last_seq, EXCLUDED.last_seq),
             event_id = CASE WHEN EXCLUDED.last_seq > key_seqs.last_seq THEN EXCLUDED.event_id ELSE key_seqs.event_id END,
             contiguous_seq = GREATEST(key_seqs.contiguous_seq, EXCLUDED.contiguous_seq),
             updated_at = now()",
    )
    .bind(&keys)
    .bind(&last)
    .bind(keys.iter().map(|k| newest.get(k).map(|n| n.1).unwrap_or("")).collect::<Vec<_>>())
    .bind(&c)
    .execute(&mut **tx)
    .await?;
    let highest = |k: &str, batch_max: i64| current.get(k).map(|x| x.1).unwrap_or(0).max(batch_max);
    Ok(keys
        .iter()
        .zip(c.iter().zip(&last))
        .filter(|(k, (c, l))| **c < highest(k, **l))
        .map(|(k, _)| k.to_string())
        .collect())
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
    if !uk.is_empty() {
        sqlx::query(
            "UPDATE key_seqs ks SET contiguous_seq = GREATEST(ks.contiguous_seq, t.c), updated_at = now()
             FROM UNNEST($1::text[], $2::int8[]) AS t(k, c) WHERE ks.data_key = t.k",
        )
        .bind(&uk)
        .bind(&uc)
        .execute(pool)
        .await?;
    }
    Ok(still)
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
        let current = HashMap::from([("a".to_string(), (5, 5)), ("b".to_string(), (2, 4))]);
        let batch: BTreeMap<&str, Vec<i64>> = BTreeMap::from([
            ("a", vec![7, 6]),
            ("b", vec![3]),
            ("new", vec![1, 2]),
            ("late", vec![2]),
        ]);
        let (fast, mut slow) = fast_watermarks(&current, &batch);
        slow.sort();
        assert_eq!(fast, HashMap::from([("a", 7), ("new", 2)]));
        // b had early arrivals stored (last 4 > contiguous 2); "late" lacks seq 1
        assert_eq!(slow, vec!["b", "late"]);
        let gap: BTreeMap<&str, Vec<i64>> = BTreeMap::from([("a", vec![6, 8])]);
        assert_eq!(fast_watermarks(&current, &gap).1, vec!["a"]);
    }
}
