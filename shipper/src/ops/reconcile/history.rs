//! The history's side: each key's contiguous watermark, the keys it knows that Redis lost,
//! and its own proof: forks, and gaps once the pipeline has drained.

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;
use sqlx::PgPool;

use super::options::Options;
use super::report::Report;
use super::scan::{scan_keys, SeqPager};
use crate::sinks::postgres::repair_watermarks;

/// Per key, the contiguous watermark: the highest n such that seqs 1..n are all in Postgres.
pub(super) async fn pg_seqs(
    pool: &PgPool,
    keys: &[String],
) -> anyhow::Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT data_key, contiguous_seq FROM key_seqs WHERE data_key = ANY($1)")
            .bind(keys)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// How many keys have a Postgres sequence behind Redis.
pub(super) async fn keys_behind(
    conn: &mut MultiplexedConnection,
    pool: &PgPool,
    prefix: &str,
    batch: usize,
) -> anyhow::Result<u64> {
    let mut pager = SeqPager::new(conn, prefix).await?;
    let mut behind = 0;
    while let Some(page) = pager.next(conn, batch).await? {
        let keys: Vec<String> = page.iter().map(|(k, _)| k.clone()).collect();
        let mut pg = pg_seqs(pool, &keys).await?;
        let lagging: Vec<String> = page
            .iter()
            .filter(|(k, s)| pg.get(k).copied().unwrap_or(0) < *s)
            .map(|(k, _)| k.clone())
            .collect();
        if !lagging.is_empty() {
            // a watermark left behind by concurrent writers is recomputed before it counts
            repair_watermarks(pool, &lagging).await?;
            pg = pg_seqs(pool, &keys).await?;
        }
        behind += page
            .iter()
            .filter(|(k, s)| pg.get(k).copied().unwrap_or(0) < *s)
            .count() as u64;
    }
    Ok(behind)
}

/// Postgres -> Redis: every key with history must still have its sequence in Redis.
pub(super) async fn check_keys_with_history(
    nodes: &mut [MultiplexedConnection],
    pool: &PgPool,
    opt: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut seq_hashes = Vec::new();
    for (i, conn) in nodes.iter_mut().enumerate() {
        seq_hashes.extend(
            scan_keys(conn, &format!("{}:seq*", opt.prefix), "hash")
                .await?
                .into_iter()
                .map(|h| (i, h)),
        );
    }
    let mut after = String::new();
    loop {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT data_key, last_seq FROM key_seqs WHERE data_key > $1 ORDER BY data_key LIMIT $2")
            .bind(&after).bind(opt.batch as i64).fetch_all(pool).await?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        let mut found: HashMap<String, bool> = HashMap::new();
        for (node, h) in &seq_hashes {
            let mut pipe = redis::pipe();
            for (k, _) in &rows {
                pipe.cmd("HEXISTS").arg(h).arg(k);
            }
            let exists: Vec<bool> = pipe.query_async(&mut nodes[*node]).await?;
            for ((k, _), e) in rows.iter().zip(exists) {
                *found.entry(k.clone()).or_insert(false) |= e;
            }
        }
        for (k, s) in &rows {
            if !found.get(k).copied().unwrap_or(false) {
                report.sequences.checked += 1;
                report.sequences.mismatched += 1;
                report.mismatch(
                    opt.show,
                    format!("sequences {k}: postgres seq {s}, missing in redis"),
                );
            }
        }
    }
    Ok(())
}

/// A fork as sequence_anomalies records it: `data_key`'s seq `got_seq` carried by `event_id`
/// after `other_event_id`.
#[derive(sqlx::FromRow)]
struct ForkRow {
    data_key: String,
    got_seq: i64,
    event_id: String,
    other_event_id: Option<String>,
}

/// The history's own proof: every fork (one seq carried by two events), and, once the
/// pipeline has drained, every gap (seqs missing below the highest seen).
pub(super) async fn check_history(
    pool: &PgPool,
    report: &mut Report,
    opt: &Options,
    events_pending: bool,
) -> anyhow::Result<()> {
    check_forks(pool, report, opt).await?;
    if events_pending {
        return Ok(());
    }
    check_gaps(pool, report, opt).await
}

/// Every fork sequence_anomalies recorded.
async fn check_forks(pool: &PgPool, report: &mut Report, opt: &Options) -> anyhow::Result<()> {
    let forks: Vec<ForkRow> = sqlx::query_as(
        "SELECT data_key, got_seq, event_id::text AS event_id, other_event_id::text AS other_event_id
         FROM sequence_anomalies WHERE kind = 'fork' ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    for f in forks {
        report.forks += 1;
        let other = f.other_event_id.unwrap_or_else(|| "?".into());
        report.mismatch(
            opt.show,
            format!(
                "fork {} seq {}: events {other} and {} (one timeline was lost, e.g. by a failover)",
                f.data_key, f.got_seq, f.event_id
            ),
        );
    }
    Ok(())
}

/// Every key whose watermark stays below its highest seq once recomputed: a gap, with the
/// missing seqs named.
async fn check_gaps(pool: &PgPool, report: &mut Report, opt: &Options) -> anyhow::Result<()> {
    let gaps: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT data_key, contiguous_seq, last_seq FROM key_seqs WHERE last_seq > contiguous_seq ORDER BY data_key",
    )
    .fetch_all(pool)
    .await?;
    let candidates: Vec<String> = gaps.iter().map(|g| g.0.clone()).collect();
    let still: std::collections::HashSet<String> = repair_watermarks(pool, &candidates)
        .await?
        .into_iter()
        .collect();
    for (key, _, last) in gaps.into_iter().filter(|g| still.contains(&g.0)) {
        let c: i64 = sqlx::query_scalar("SELECT contiguous_seq FROM key_seqs WHERE data_key = $1")
            .bind(&key)
            .fetch_one(pool)
            .await?;
        let ranges = missing_seqs(pool, &key, c).await?;
        report.gaps += 1;
        report.mismatch(
            opt.show,
            format!(
                "gap {key}: seq {} missing (contiguous to {c}, highest seen {last})",
                ranges.join(", ")
            ),
        );
    }
    Ok(())
}

/// The first 20 runs of seqs of `key` missing above `contiguous`, as `n` or `a..b`.
async fn missing_seqs(pool: &PgPool, key: &str, contiguous: i64) -> anyhow::Result<Vec<String>> {
    let missing: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT s + 1, next_s - 1 FROM (
             SELECT seq AS s, lead(seq) OVER (ORDER BY seq) AS next_s
             FROM (SELECT DISTINCT seq FROM event_keys WHERE data_key = $1 AND seq >= $2
                   UNION SELECT $2) d) x
         WHERE next_s > s + 1 ORDER BY s LIMIT 20",
    )
    .bind(key)
    .bind(contiguous)
    .fetch_all(pool)
    .await?;
    Ok(missing
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}..{b}")
            }
        })
        .collect())
}
