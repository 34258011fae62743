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

use sqlx::{Postgres, Transaction};

use crate::event::Event;

/// A (key, seq) carried by two different events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    pub key: String,
    pub seq: i64,
    /// the event that arrived second
    pub event_id: String,
    /// the version already stored (or earlier in the same batch)
    pub other_event_id: String,
}

/// The new watermark: from `contiguous`, advance over `seqs_above` (the stored seqs of the
/// key greater than `contiguous`, any order, duplicates allowed) while they are consecutive.
pub fn advance_watermark(contiguous: i64, seqs_above: &[i64]) -> i64 {
    let mut sorted: Vec<i64> = seqs_above.iter().copied().filter(|s| *s > contiguous).collect();
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

/// Forks among the fresh events of one batch (the same (key, seq) twice with different ids).
pub fn forks_within(fresh: &[&Event]) -> Vec<Fork> {
    let mut first: HashMap<(&str, i64), &str> = HashMap::new();
    let mut out = Vec::new();
    for e in fresh {
        for k in &e.keys {
            match first.get(&(k.key.as_str(), k.seq)) {
                Some(other) if *other != e.id => out.push(Fork {
                    key: k.key.clone(),
                    seq: k.seq,
                    event_id: e.id.clone(),
                    other_event_id: other.to_string(),
                }),
                Some(_) => {}
                None => {
                    first.insert((k.key.as_str(), k.seq), e.id.as_str());
                }
            }
        }
    }
    out
}

/// Records the batch's (key, seq) pairs, its forks, and advances each key's watermark.
/// Returns the number of forks found.
pub async fn record(tx: &mut Transaction<'_, Postgres>, fresh: &[&Event]) -> Result<usize, sqlx::Error> {
    let (mut k_ev, mut k_key, mut k_seq) = (vec![], vec![], vec![]);
    for e in fresh {
        for k in &e.keys {
            k_ev.push(e.id.as_str());
            k_key.push(k.key.as_str());
            k_seq.push(k.seq);
        }
    }
    lock_keys(tx, &k_key).await?;
    let mut forks = forks_within(fresh);
    forks.extend(stored_forks(tx, &k_key, &k_seq, &k_ev).await?);
    sqlx::query(
        "INSERT INTO event_keys (event_id, data_key, seq)
         SELECT e::uuid, k, s FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS t(e, k, s)",
    )
    .bind(&k_ev)
    .bind(&k_key)
    .bind(&k_seq)
    .execute(&mut **tx)
    .await?;
    insert_forks(tx, &forks).await?;
    advance(tx, fresh).await?;
    Ok(forks.len())
}

/// Serializes the batches that touch the same keys (batches are committed concurrently, and
/// a transfer's two keys may sit in two of them): a transaction-scoped advisory lock per key,
/// taken in key order so two batches cannot deadlock on them. It also covers keys that have
/// no key_seqs row yet, which `SELECT ... FOR UPDATE` could not lock. The last batch to
/// take a key's lock sees every other batch's seqs committed, so the watermark it computes
/// is complete.
async fn lock_keys(tx: &mut Transaction<'_, Postgres>, keys: &[&str]) -> Result<(), sqlx::Error> {
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sqlx::query("SELECT count(pg_advisory_xact_lock(hashtextextended(k, 7357))) FROM unnest($1::text[]) WITH ORDINALITY AS t(k, i)")
        .bind(&sorted)
        .fetch_one(&mut **tx)
        .await?;
    Ok(())
}

/// Forks against versions stored by earlier batches.
async fn stored_forks(tx: &mut Transaction<'_, Postgres>, keys: &[&str], seqs: &[i64], ids: &[&str]) -> Result<Vec<Fork>, sqlx::Error> {
    let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT t.k, t.s, t.e, ek.event_id::text
         FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS t(k, s, e)
         JOIN event_keys ek ON ek.data_key = t.k AND ek.seq = t.s AND ek.event_id <> t.e::uuid",
    )
    .bind(keys)
    .bind(seqs)
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(key, seq, event_id, other_event_id)| Fork { key, seq, event_id, other_event_id }).collect())
}

async fn insert_forks(tx: &mut Transaction<'_, Postgres>, forks: &[Fork]) -> Result<(), sqlx::Error> {
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

/// Upsert key_seqs: last_seq = highest seen, contiguous_seq advanced over stored seqs.
async fn advance(tx: &mut Transaction<'_, Postgres>, fresh: &[&Event]) -> Result<(), sqlx::Error> {
    // key -> (max seq in batch, its event id); BTreeMap: rows are locked in key order
    let mut batch_max: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
    for e in fresh {
        for k in &e.keys {
            let ent = batch_max.entry(k.key.as_str()).or_insert((k.seq, e.id.as_str()));
            if k.seq > ent.0 {
                *ent = (k.seq, e.id.as_str());
            }
        }
    }
    let keys: Vec<&str> = batch_max.keys().copied().collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT data_key, contiguous_seq FROM key_seqs WHERE data_key = ANY($1::text[])",
    )
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await?;
    let current: HashMap<String, i64> = rows.into_iter().collect();
    let from: Vec<i64> = keys.iter().map(|k| current.get(*k).copied().unwrap_or(0)).collect();
    let above: Vec<(String, i64)> = sqlx::query_as(
        "SELECT t.k, ek.seq FROM UNNEST($1::text[], $2::int8[]) AS t(k, c)
         JOIN event_keys ek ON ek.data_key = t.k AND ek.seq > t.c",
    )
    .bind(&keys)
    .bind(&from)
    .fetch_all(&mut **tx)
    .await?;
    let mut seqs: HashMap<&str, Vec<i64>> = HashMap::new();
    for (k, s) in &above {
        seqs.entry(k.as_str()).or_default().push(*s);
    }
    let contiguous: Vec<i64> = keys
        .iter()
        .zip(&from)
        .map(|(k, c)| advance_watermark(*c, seqs.get(k).map(Vec::as_slice).unwrap_or(&[])))
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
    .bind(keys.iter().map(|k| batch_max[k].0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| batch_max[k].1).collect::<Vec<_>>())
    .bind(&contiguous)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode;

    fn ev(id: u8, keys: &[(&str, i64)]) -> Event {
        let ks: Vec<String> = keys.iter().map(|(k, s)| format!(r#"{{"key":"{k}","seq":{s}}}"#)).collect();
        let ch: Vec<String> =
            keys.iter().map(|(k, _)| format!(r#"{{"key":"{k}","field":"g","delta":"1","balance":"1"}}"#)).collect();
        let typ = if keys.len() == 2 { "asset.transfer" } else { "asset.incr" };
        decode(&format!(
            r#"{{"v":1,"id":"0193508e-7c4a-7b3e-9f1c-3d2a8e5b6c{id:02x}","type":"{typ}","ts":1,"op":null,"meta":null,"keys":[{}],"changes":[{}]}}"#,
            ks.join(","),
            ch.join(",")
        ))
        .unwrap()
    }

    #[test]
    fn watermark_advances_only_over_consecutive_seqs() {
        assert_eq!(advance_watermark(0, &[1, 2, 3]), 3);
        assert_eq!(advance_watermark(0, &[3, 1, 2]), 3, "arrival order does not matter");
        assert_eq!(advance_watermark(0, &[2, 3]), 0, "1 is missing: wait");
        assert_eq!(advance_watermark(5, &[6, 8, 9]), 6, "7 is missing");
        assert_eq!(advance_watermark(5, &[7, 6, 6, 8]), 8, "duplicates are harmless");
        assert_eq!(advance_watermark(5, &[1, 2, 3]), 5, "seqs at or below the watermark change nothing");
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
    fn forks_within_a_batch_are_named_once() {
        let a = ev(1, &[("a", 1)]);
        let b = ev(2, &[("a", 2), ("b", 1)]);
        let fork = ev(3, &[("a", 2)]);
        let replay = ev(2, &[("a", 2), ("b", 1)]);
        let got = forks_within(&[&a, &b, &fork, &replay]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].key.as_str(), got[0].seq), ("a", 2));
        assert_eq!(got[0].event_id, fork.id);
        assert_eq!(got[0].other_event_id, b.id);
        assert!(forks_within(&[&a, &b]).is_empty());
    }
}
