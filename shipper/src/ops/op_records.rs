//! `restore`, last step: the op-id records still inside their window. Every event of a
//! command sent with `ID` carries its idempotency record (`fp`, the request's fingerprint,
//! and `reply`); the record is written back as the module writes it, `SET <op key>
//! "<fp>\n<reply>" PXAT <event time + tally.op-ttl-ms> NX`, so a client's retry after the
//! restore gets its first reply instead of being applied twice.

use anyhow::Context as _;
use serde::Deserialize;
use sqlx::PgPool;

use super::nodes::Nodes;

#[derive(Default, Debug)]
pub(crate) struct OpRecords {
    pub(crate) restored: u64,
    /// events with an op-id inside the window but no record in them (written by a module
    /// older than the `fp`/`reply` fields): a retry of these is applied again
    pub(crate) without_record: u64,
}

#[derive(Deserialize)]
struct OpEvent {
    ts: i64,
    op: Option<String>,
    keys: Vec<KeyOnly>,
    fp: Option<String>,
    reply: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct KeyOnly {
    key: String,
}

/// The smallest UUIDv7 of millisecond `ms`: event ids are UUIDv7 of the event's time, so the
/// primary key index starts a time range.
fn first_uuid_of_ms(ms: i64) -> uuid::Uuid {
    let ms = u64::try_from(ms.max(0)).unwrap_or(0) & 0xffff_ffff_ffff;
    uuid::Uuid::from_u128(u128::from(ms) << 80)
}

/// The window the module keeps op-ids for (`tally.op-ttl-ms` of the first node).
async fn op_ttl_ms(nodes: &mut Nodes) -> anyhow::Result<i64> {
    let conn = nodes.conns.first_mut().context("no redis node")?;
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("tally.op-ttl-ms")
        .query_async(conn)
        .await
        .context("reading tally.op-ttl-ms (CONFIG GET) to rebuild op-id records")?;
    v.get(1)
        .and_then(|s| s.parse().ok())
        .context("tally.op-ttl-ms is not set: is the tally module loaded?")
}

/// Writes the op-id records of the events newer than `now - tally.op-ttl-ms`.
pub(crate) async fn restore(
    nodes: &mut Nodes,
    pool: &PgPool,
    prefix: &str,
    now_ms: i64,
    batch: usize,
) -> anyhow::Result<OpRecords> {
    let ttl_ms = op_ttl_ms(nodes).await?;
    let since = now_ms.saturating_sub(ttl_ms);
    let mut after = first_uuid_of_ms(since).to_string();
    let mut done = OpRecords::default();
    loop {
        let page: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_id::text, raw FROM events WHERE event_id > $1::uuid AND op IS NOT NULL AND ts_ms > $2 ORDER BY event_id LIMIT $3",
        ).bind(&after).bind(since).bind(i64::try_from(batch.max(1)).unwrap_or(1000)).fetch_all(pool).await?;
        let Some(last) = page.last() else { break };
        after = last.0.clone();
        let mut pipes = nodes.pipes();
        for (id, raw) in &page {
            let e: OpEvent = serde_json::from_str(raw)
                .with_context(|| format!("event {id} in the history is not an event"))?;
            let (Some(op), Some(first)) = (e.op.as_deref(), e.keys.first()) else {
                continue;
            };
            // in the future: the query keeps only events newer than now - ttl
            let deadline = e.ts.saturating_add(ttl_ms);
            let (Some(fp), Some(reply)) = (e.fp.as_deref(), e.reply.as_ref()) else {
                done.without_record += 1;
                continue;
            };
            let key = nodes.op_key(prefix, &first.key, op);
            pipes
                .on(nodes, &first.key)
                .cmd("SET")
                .arg(key)
                .arg(format!("{fp}\n{reply}"))
                .arg("PXAT")
                .arg(deadline)
                .arg("NX")
                .ignore();
            done.restored += 1;
        }
        pipes
            .send(nodes)
            .await
            .context("writing op-id records to redis")?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_uuid_of_a_millisecond_sorts_before_its_events() {
        let ms = 1_763_900_000_123_i64;
        let first = super::first_uuid_of_ms(ms);
        assert_eq!(first.as_u128() >> 80, ms as u128);
        assert_eq!(first.as_u128() & ((1u128 << 80) - 1), 0);
        let event = uuid::Uuid::from_u128(((ms as u128) << 80) | (0x7abc << 64) | 1);
        let earlier = uuid::Uuid::from_u128((((ms - 1) as u128) << 80) | ((1u128 << 80) - 1));
        assert!(first < event && earlier < first);
        assert_eq!(super::first_uuid_of_ms(-5), uuid::Uuid::nil());
    }
}
