//! History format 2 (migration 0007): event_keys and event_changes by month. A fork is found
//! across months, a late event of an old month (or of a month an operator detached) is stored
//! in its month, the account statement reads every month in seq order, and a database at 0006
//! with rows migrates with the same meaning: an old (key, seq) still detects a fork after it.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use common::*;
use serde_json::Value;

/// 2026-01-31 23:59:59.999 UTC and the next millisecond (2026-02-01), in Unix ms.
const JAN_LAST_MS: i64 = 1_769_903_999_999;
const FEB_FIRST_MS: i64 = JAN_LAST_MS + 1;
/// 2025-06-15 UTC: a late event of an old month.
const JUNE_2025_MS: i64 = 1_749_945_600_000;

async fn months_of(pool: &sqlx::PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::regclass ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn statement(pool: &sqlx::PgPool, key: &str) -> Vec<(i64, String)> {
    sqlx::query_as(
        "SELECT seq, balance::text FROM event_changes WHERE data_key = $1 AND field = 'gold'
         ORDER BY seq DESC LIMIT 50",
    )
    .bind(key)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn forks(pool: &sqlx::PgPool) -> Vec<(String, i64, String, String)> {
    sqlx::query_as(
        "SELECT data_key, got_seq, event_id::text, other_event_id::text FROM sequence_anomalies
         WHERE kind = 'fork' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A key whose seq 2 falls on the last millisecond of January and whose fork (the "new
/// primary" reissuing seq 2) on the first of February: the fork is recorded with both ids
/// though the two versions live in different months; a late event of June 2025 gets its own
/// month; the statement lists every seq across the months.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_across_months_is_recorded_and_old_months_are_created_on_demand() {
    let _g = serial();
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let first = at(&m.asset_incr("acct:m", "gold", 100), JAN_LAST_MS - 1);
    let second = at(&m.asset_incr("acct:m", "gold", 5), JAN_LAST_MS);
    let third = at(&m.asset_incr("acct:m", "gold", 1), FEB_FIRST_MS + 10);
    let mut other = Model::default();
    other.asset_incr("acct:m", "gold", 100);
    let fork = at(&other.asset_incr("acct:m", "gold", 7), FEB_FIRST_MS);
    let late = at(&m.asset_incr("acct:old", "gold", 3), JUNE_2025_MS);
    let dir = tmpdir("months-fork");
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    // the fork in its own batch, after the version it forks is stored
    ship_all(
        &mut c,
        &pool,
        &args,
        &dir.join("1.log"),
        &[first, second.clone(), late],
        3,
    )
    .await;
    ship_all(
        &mut c,
        &pool,
        &args,
        &dir.join("2.log"),
        &[fork.clone(), third],
        5,
    )
    .await;

    assert_eq!(
        forks(&pool).await,
        vec![("acct:m".to_string(), 2, id_of(&fork), id_of(&second))]
    );
    let holder: Vec<(String, String)> = sqlx::query_as(
        "SELECT tableoid::regclass::text, event_id::text FROM event_keys WHERE data_key = 'acct:m' AND seq = 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        holder,
        vec![("event_keys_2026m01".to_string(), id_of(&second))],
        "the first version holds seq 2, in January"
    );
    // both versions of seq 2 are history (the fork's own change included)
    let mut rows = statement(&pool, "acct:m").await;
    rows.sort();
    let want = [(1, "1"), (2, "1.05"), (2, "1.07"), (3, "1.06")];
    assert_eq!(rows, want.map(|(s, b)| (s, b.to_string())).to_vec());
    // the statement function: the same rows newest first, with the event's type; pages by seq
    let f: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT seq, balance::text, type FROM tally_statement('acct:m', 'gold', NULL, 2)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(f[0], (3, "1.06".to_string(), "asset.incr".to_string()));
    assert_eq!((f.len(), f[1].0), (2, 2));
    let older: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, balance::text FROM tally_statement('acct:m', 'gold', 2)")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(older, vec![(1, "1".to_string())]);
    for t in ["event_keys", "event_changes"] {
        let months = months_of(&pool, t).await;
        for m in ["2025m06", "2026m01", "2026m02"] {
            assert!(months.contains(&format!("{t}_{m}")), "{t}: {months:?}");
        }
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM key_seqs WHERE data_key = 'acct:m' AND last_seq = 3 AND contiguous_seq = 3").await,
        1
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM failed_events").await, 0);
}

/// An operator detached (retired) a month; a late event of that month arrives: it is stored
/// in a new, empty partition of the month, not refused into failed_events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_a_detached_month_recreates_the_month() {
    let _g = serial();
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let dir = tmpdir("months-detached");
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    let old = at(&m.asset_incr("acct:a", "gold", 100), JUNE_2025_MS);
    ship_all(&mut c, &pool, &args, &dir.join("1.log"), &[old], 1).await;
    for t in ["event_keys", "event_changes"] {
        sqlx::raw_sql(&format!(
            "ALTER TABLE {t} DETACH PARTITION {t}_2025m06; ALTER TABLE {t}_2025m06 RENAME TO {t}_2025m06_archived"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    let late = at(&m.asset_incr("acct:b", "gold", 40), JUNE_2025_MS + 5);
    ship_all(&mut c, &pool, &args, &dir.join("2.log"), &[late], 2).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM failed_events").await, 0);
    assert_eq!(
        statement(&pool, "acct:b").await,
        vec![(1, "0.4".to_string())]
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM event_changes_2025m06").await,
        1,
        "the month is back with the late event only"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM event_changes_2025m06_archived").await,
        1
    );
}

/// A database at 0006 with history (two months, a fork recorded by the 0006 shipper) migrates:
/// every event_keys / event_changes row is kept with its event's time, in its month; the
/// statement is the same; a new event continues the key's seqs, and an event reissuing a seq
/// stored before the upgrade is recorded as a fork against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_at_0006_migrates_to_history_by_month() {
    let _g = serial();
    let redis = Redis::start(None);
    let mut c = redis.conn().await;
    let pg = Pg::start();
    let pool = pg.pool().await;
    migrate_up_to(&pool, 6).await;
    let mut m = Model::default();
    let events = [
        at(&m.asset_incr("acct:u", "gold", 100), JAN_LAST_MS),
        at(&m.asset_incr("acct:u", "gold", 20), FEB_FIRST_MS),
    ];
    // rows as the 0006 shipper wrote them (event_keys without ts_ms)
    for (i, e) in events.iter().enumerate() {
        let v: Value = serde_json::from_str(e).unwrap();
        let seq = i as i64 + 1;
        let bal = if i == 0 { "1" } else { "1.2" };
        let delta = if i == 0 { "1" } else { "0.2" };
        let ts = v["ts"].as_i64().unwrap();
        sqlx::query("INSERT INTO events (event_id, type, ts_ms, raw, source) VALUES ($1::uuid, 'asset.incr', $2, $3, $4)")
            .bind(id_of(e)).bind(ts).bind(e).bind(format!("redis:tally:log/{seq}-0"))
            .execute(&pool).await.unwrap();
        sqlx::query(
            "INSERT INTO event_keys (event_id, data_key, seq) VALUES ($1::uuid, 'acct:u', $2)",
        )
        .bind(id_of(e))
        .bind(seq)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO event_changes (event_id, idx, data_key, field, delta, balance, seq, ts_ms) VALUES ($1::uuid, 0, 'acct:u', 'gold', $2::numeric, $3::numeric, $4, $5)")
            .bind(id_of(e)).bind(delta).bind(bal).bind(seq).bind(ts)
            .execute(&pool).await.unwrap();
    }
    sqlx::query("INSERT INTO key_seqs (data_key, last_seq, event_id, contiguous_seq) VALUES ('acct:u', 2, $1::uuid, 2)")
        .bind(id_of(&events[1])).execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO balances (data_key, field, balance, seq, event_id, ts_ms) VALUES ('acct:u', 'gold', 1.2, 2, $1::uuid, $2)")
        .bind(id_of(&events[1])).bind(FEB_FIRST_MS).execute(&pool).await.unwrap();
    let before_statement = statement(&pool, "acct:u").await;
    let keys_sql = "SELECT k.event_id::text, k.data_key, k.seq FROM event_keys k ORDER BY seq";
    let keys_before: Vec<(String, String, i64)> =
        sqlx::query_as(keys_sql).fetch_all(&pool).await.unwrap();

    run_migrate(&pg.url());
    // new connections: 0008 changes the collation of data_key, which a statement prepared
    // before it returns ("cached plan must not change result type", docs/upgrade.md)
    let pool = pg.pool().await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM _sqlx_migrations WHERE success AND version = 7"
        )
        .await,
        1
    );
    let keys_after: Vec<(String, String, i64)> =
        sqlx::query_as(keys_sql).fetch_all(&pool).await.unwrap();
    assert_eq!(keys_after, keys_before);
    assert_eq!(statement(&pool, "acct:u").await, before_statement);
    let placed: Vec<(String, i64)> =
        sqlx::query_as("SELECT tableoid::regclass::text, ts_ms FROM event_keys ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        placed,
        vec![
            ("event_keys_2026m01".to_string(), JAN_LAST_MS),
            ("event_keys_2026m02".to_string(), FEB_FIRST_MS)
        ]
    );

    // after the upgrade: seq 3 continues, and a reissued seq 1 is a fork of the stored one
    let next = at(&m.asset_incr("acct:u", "gold", 5), FEB_FIRST_MS + 1);
    let mut other = Model::default();
    let reissued = at(&other.asset_incr("acct:u", "gold", 9), FEB_FIRST_MS + 2);
    let dir = tmpdir("months-upgrade");
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    ship_all(
        &mut c,
        &pool,
        &args,
        &dir.join("run.log"),
        &[next, reissued.clone()],
        4,
    )
    .await;
    assert_eq!(
        forks(&pool).await,
        vec![("acct:u".to_string(), 1, id_of(&reissued), id_of(&events[0]))]
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM key_seqs WHERE data_key = 'acct:u' AND last_seq = 3 AND contiguous_seq = 3").await,
        1
    );
    assert_eq!(statement(&pool, "acct:u").await[0], (3, "1.25".to_string()));
}
