//! `tally-bench growth RESULTS.json`: at each history size (GROWTH_SIZES, after a first
//! point on the empty database) the synthetic history (history.rs) grows to that size, spread
//! over the 12 month partitions ending with the current month (history format 2,
//! docs/history.md), the indexes are rebuilt, then: a fixed backlog drained by `tally-shipper
//! run` into the current month (right after a CHECKPOINT, then once more at once), the
//! account statement query of docs/operations.md on hot and cold accounts, and the sizes (the
//! totals and the current month's partitions).

use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::PgPool;

use super::capacity::{at, wait_backlog};
use super::history::{account_key, month_bounds, History};
use super::probe::{Probe, STREAM};
use super::results::{
    CapacitySettings, GrowthDrain, GrowthPoint, GrowthResults, MonthRows, QueryLatency,
    RedisMemory, Route, Status, TableRows,
};
use super::servers::{RunArgs, Servers};
use super::{cpu, fill, loadavg, say, unix_now, Config};

/// Events per COPY.
const CHUNK: u64 = 100_000;

/// The indexes of the three history tables, dropped while COPY runs and built again after,
/// with the definitions of migrations/0004_lean_schema.sql (events) and
/// migrations/0007_history_by_month.sql (the partitioned event_keys and event_changes: the
/// index of the parent, which every month's partition gets).
const DROP_INDEXES: &str = "ALTER TABLE events DROP CONSTRAINT events_pkey; \
     DROP INDEX events_ts_brin; \
     DROP INDEX event_keys_key_seq_idx; \
     DROP INDEX event_changes_key_field_seq_idx";
const CREATE_INDEXES: &str = "SET maintenance_work_mem = '512MB'; \
     ALTER TABLE events ADD PRIMARY KEY (event_id); \
     CREATE INDEX events_ts_brin ON events USING brin (ts_ms); \
     CREATE INDEX event_keys_key_seq_idx ON event_keys (data_key, seq); \
     CREATE INDEX event_changes_key_field_seq_idx ON event_changes (data_key, field, seq)";

const STATEMENT: &str = "SELECT seq, to_timestamp(ts_ms / 1000.0) AS at, delta, balance, \
     op, meta, type FROM tally_statement($1, 'gold')";

pub async fn run(cfg: &Config, k: &CapacitySettings) -> Result<GrowthResults> {
    let started_unix = unix_now();
    let (s, mut p, mut loads) = super::start(cfg, false).await?;
    for setting in &k.pg_set {
        superuser(&s, &alter_system(setting)?).await?;
    }
    if !k.pg_set.is_empty() {
        superuser(&s, "SELECT pg_reload_conf()").await?;
    }
    let mut h = History::new(k.growth_accounts, month_bounds(&p.pg).await?);
    let mut sizes = vec![0];
    sizes.extend(k.growth_sizes.iter().copied().filter(|&n| n > 0));
    let mut points = Vec::new();
    for size in sizes {
        points.push(point(&s, &mut p, cfg, k, &mut h, size).await?);
    }
    let redis_memory = redis_memory(&mut p, &k.redis_accounts).await?;
    loads.push(at("end"));
    let run = super::run_info(cfg, &s, &p, started_unix, loads).await?;
    Ok(GrowthResults {
        run,
        settings: k.clone(),
        points,
        redis_memory,
    })
}

/// The history grown to `size` (indexes rebuilt, VACUUM ANALYZE, CHECKPOINT), then measured.
async fn point(
    s: &Servers,
    p: &mut Probe,
    cfg: &Config,
    k: &CapacitySettings,
    h: &mut History,
    size: u64,
) -> Result<GrowthPoint> {
    say(&format!("growth: history to {size} events"));
    let t0 = Instant::now();
    let grows = size > h.events;
    if grows {
        sqlx::raw_sql(DROP_INDEXES).execute(&p.pg).await?;
        h.grow(&p.pg, size, CHUNK).await?;
    }
    let copy_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    if grows {
        h.derived(&p.pg).await?;
        sqlx::raw_sql(CREATE_INDEXES).execute(&p.pg).await?;
    }
    sqlx::raw_sql("VACUUM ANALYZE").execute(&p.pg).await?;
    superuser(s, "CHECKPOINT").await?;
    let index_s = t1.elapsed().as_secs_f64();
    let rows = rows(&p.pg).await?;
    let drain_month = drain_month(&p.pg).await?;
    say(&format!(
        "growth: {size} history events (rows {}/{}/{}; {} {}/{}), copy {copy_s:.1}s, index+vacuum {index_s:.1}s",
        rows.events,
        rows.event_keys,
        rows.event_changes,
        drain_month.month,
        drain_month.event_keys,
        drain_month.event_changes
    ));
    let loadavg = loadavg();
    let first = drain(s, p, cfg, k, size, rows.events, "").await?;
    // The same backlog again at once, in the checkpoint cycle the first drain began: most pages
    // it writes already have their full-page image in this cycle, as in a pipeline running
    // for minutes. The difference between the two is what the checkpoint's page images cost.
    let again_before = rows.events + first.stored;
    let again = drain(s, p, cfg, k, size, again_before, "-again").await?;
    let hot = statement(&p.pg, k.growth_queries, |_| {
        account_key(h.by_rank(fastrand::u64(..100)))
    })
    .await?;
    let cold = statement(&p.pg, k.growth_queries, |_| cold(h)).await?;
    say(&format!(
        "growth {size}: statement hot p50 {:.2} p99 {:.2} ms, cold p50 {:.2} p99 {:.2} ms",
        hot.p50_ms, hot.p99_ms, cold.p50_ms, cold.p99_ms
    ));
    let (database_bytes, table_bytes) = sizes(&p.pg).await?;
    Ok(GrowthPoint {
        history_events: h.events,
        rows,
        drain_month,
        copy_s,
        index_s,
        drain: first,
        again,
        hot,
        cold,
        database_bytes,
        table_bytes,
        loadavg,
    })
}

/// After FLUSHALL, `ASSET.INCR acct:<i> gold 1` for every i up to each count in turn
/// (pipelined, 10,000 a round trip), then `used_memory` with the stream trimmed to nothing.
async fn redis_memory(p: &mut Probe, counts: &[u64]) -> Result<Vec<RedisMemory>> {
    if counts.is_empty() {
        return Ok(Vec::new());
    }
    redis::cmd("FLUSHALL").exec_async(&mut p.redis).await?;
    let _ = redis::cmd("MEMORY")
        .arg("PURGE")
        .exec_async(&mut p.redis)
        .await;
    let empty = p.used_memory().await?;
    let (mut done, mut out) = (0u64, Vec::new());
    for &count in counts {
        while done < count {
            let mut pipe = redis::pipe();
            for i in done..count.min(done + 10_000) {
                pipe.cmd("ASSET.INCR")
                    .arg(crate::key("acct:", i))
                    .arg(&["gold", "1"])
                    .ignore();
            }
            pipe.exec_async(&mut p.redis).await?;
            done = count.min(done + 10_000);
            redis::cmd("XTRIM")
                .arg(&[STREAM, "MAXLEN", "0"])
                .exec_async(&mut p.redis)
                .await?;
        }
        let used = p.used_memory().await?;
        let stream = p.stream_memory().await?;
        say(&format!(
            "growth: redis used_memory with {count} accounts: {used} ({:.0} bytes per account)",
            (used - empty) as f64 / count as f64
        ));
        out.push(RedisMemory {
            accounts: count,
            used_memory_empty: empty,
            used_memory: used,
            stream_memory: stream,
        });
    }
    Ok(out)
}

/// `sql` as the superuser (the probe is the owner, `tally`).
async fn superuser(s: &Servers, sql: &str) -> Result<()> {
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(&s.pg.url("postgres", "tally")).await?;
    sqlx::raw_sql(sql).execute(&mut c).await?;
    c.close().await?;
    Ok(())
}

/// `name=value` as ALTER SYSTEM (the name a plain identifier, the value quoted).
fn alter_system(setting: &str) -> Result<String> {
    let (name, value) = setting
        .split_once('=')
        .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .ok_or_else(|| anyhow::anyhow!("GROWTH_PG_SET: {setting:?} is not name=value"))?;
    Ok(format!(
        "ALTER SYSTEM SET {name} = '{}'",
        value.replace('\'', "''")
    ))
}

/// A random account with 1 to 3 events (the long tail).
fn cold(h: &History) -> String {
    for _ in 0..1_000_000 {
        let a = fastrand::u64(..h.accounts());
        if (1..=3).contains(&h.seq_of(a)) {
            return account_key(a);
        }
    }
    account_key(0)
}

/// The database's size and pg_total_relation_size of events, event_keys and event_changes,
/// each with all its partitions.
async fn sizes(pg: &PgPool) -> Result<(i64, [i64; 3])> {
    let database = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(pg)
        .await?;
    let mut tables = [0i64; 3];
    for (b, t) in tables
        .iter_mut()
        .zip(["events", "event_keys", "event_changes"])
    {
        // pg_partition_tree lists nothing for a table that is not partitioned
        *b = sqlx::query_scalar(
            "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) \
             FROM pg_partition_tree($1::regclass))::bigint, pg_total_relation_size($1::regclass))",
        )
        .bind(t)
        .fetch_one(pg)
        .await?;
    }
    Ok((database, tables))
}

/// The current UTC month's partitions (where the drain's events land): rows and sizes. A
/// month not created yet counts as empty.
async fn drain_month(pg: &PgPool) -> Result<MonthRows> {
    let (month, from_ms, to_ms): (String, i64, i64) = sqlx::query_as(
        "SELECT to_char(m, 'YYYY\"m\"MM'), (extract(epoch FROM m) * 1000)::bigint, \
         (extract(epoch FROM m + interval '1 month') * 1000)::bigint \
         FROM date_trunc('month', now() AT TIME ZONE 'UTC') AS m",
    )
    .fetch_one(pg)
    .await?;
    let mut counts = [0i64; 2];
    let mut bytes = [0i64; 2];
    for ((c, b), t) in counts
        .iter_mut()
        .zip(bytes.iter_mut())
        .zip(["event_keys", "event_changes"])
    {
        let sql = format!("SELECT count(*) FROM {t} WHERE ts_ms >= $1 AND ts_ms < $2");
        *c = sqlx::query_scalar(&sql)
            .bind(from_ms)
            .bind(to_ms)
            .fetch_one(pg)
            .await?;
        *b = sqlx::query_scalar("SELECT coalesce(pg_total_relation_size(to_regclass($1)), 0)")
            .bind(format!("{t}_{month}"))
            .fetch_one(pg)
            .await?;
    }
    Ok(MonthRows {
        month,
        event_keys: counts[0],
        event_changes: counts[1],
        table_bytes: bytes,
    })
}

async fn rows(pg: &PgPool) -> Result<TableRows> {
    let count = |t: &str| format!("SELECT count(*) FROM {t}");
    Ok(TableRows {
        events: sqlx::query_scalar(&count("events")).fetch_one(pg).await?,
        event_keys: sqlx::query_scalar(&count("event_keys"))
            .fetch_one(pg)
            .await?,
        event_changes: sqlx::query_scalar(&count("event_changes"))
            .fetch_one(pg)
            .await?,
    })
}

/// A backlog of `growth_backlog` ASSET.INCR events over `growth_backlog_accounts` accounts,
/// then `tally-shipper run` timed until its group has nothing pending or unread; `before`:
/// the rows of `events` before it; `label`: after the size in the shipper's name and the log.
async fn drain(
    s: &Servers,
    p: &mut Probe,
    cfg: &Config,
    k: &CapacitySettings,
    size: u64,
    before: i64,
    label: &str,
) -> Result<GrowthDrain> {
    let n = k.growth_backlog;
    let fill_s = fill::backlog(s, p, n, k.growth_backlog_accounts).await?;
    let args = RunArgs {
        writers: k.writers,
        ..RunArgs::default()
    };
    let wal0 = wal(&p.pg).await?;
    let cpu0 = cpu::now(s, None);
    let t0 = Instant::now();
    let mut shipper = s.shipper_run(cfg, &format!("growth-{size}{label}"), args)?;
    let limit = Duration::from_secs(k.drain_timeout_s);
    let done = wait_backlog(p, Route::Direct, 0, limit).await;
    let drain_s = t0.elapsed().as_secs_f64();
    let mut cpu = cpu::now(s, Some(&shipper)) - cpu0;
    cpu.shipper += cpu0.shipper; // it started after the first reading
    let status = match (done, shipper.alive()) {
        (true, _) => Status::Ok,
        (false, true) => Status::Timeout,
        (false, false) => Status::ShipperExited,
    };
    shipper.stop().await;
    let wal1 = wal_after(&p.pg).await?;
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&p.pg)
        .await?;
    let stored = after - before;
    say(&format!(
        "growth {size}{label}: drained {n} in {drain_s:.2}s = {:.0} ev/s ({status:?}, {stored} stored)",
        n as f64 / drain_s
    ));
    Ok(GrowthDrain {
        n,
        fill_s,
        drain_s,
        status,
        stored,
        cpu,
        wal: [wal1[0] - wal0[0], wal1[1] - wal0[1], wal1[2] - wal0[2]],
    })
}

/// `wal` once the shipper's connections (`tally-shipper/<v>`) are gone (10 s at most): a busy
/// backend adds its WAL to pg_stat_wal at most once a second, and when it exits; read while
/// the shipper is connected, a drain of a second or two would miss most of its WAL.
async fn wal_after(pg: &PgPool) -> Result<[i64; 3]> {
    for _ in 0..100 {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE starts_with(application_name, 'tally-shipper/')",
        )
        .fetch_one(pg)
        .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // an exiting backend leaves pg_stat_activity just before it reports its statistics
    tokio::time::sleep(Duration::from_millis(200)).await;
    wal(pg).await
}

/// pg_stat_wal's wal_records, wal_fpi (full-page images) and wal_bytes.
async fn wal(pg: &PgPool) -> Result<[i64; 3]> {
    let r: (i64, i64, i64) =
        sqlx::query_as("SELECT wal_records, wal_fpi, wal_bytes::bigint FROM pg_stat_wal")
            .fetch_one(pg)
            .await?;
    Ok([r.0, r.1, r.2])
}

/// The statement query `queries` times, each on the account `pick` returns.
async fn statement(
    pg: &PgPool,
    queries: u32,
    pick: impl Fn(u32) -> String,
) -> Result<QueryLatency> {
    let mut conn = pg.acquire().await?;
    let mut ms = Vec::new();
    let mut rows = 0usize;
    for i in 0..queries {
        let key = pick(i);
        let t = Instant::now();
        let r = sqlx::query(STATEMENT)
            .bind(&key)
            .fetch_all(&mut *conn)
            .await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        rows += r.len();
    }
    ms.sort_by(f64::total_cmp);
    let q = |f: f64| {
        let i = ((f * ms.len() as f64).ceil() as usize).clamp(1, ms.len().max(1)) - 1;
        ms.get(i).map_or(0.0, |v| (v * 1000.0).round() / 1000.0)
    };
    Ok(QueryLatency {
        queries,
        mean_rows: rows as f64 / f64::from(queries.max(1)),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        max_ms: q(1.0),
    })
}
