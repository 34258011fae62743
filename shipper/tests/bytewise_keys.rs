//! Migration 0008: the key columns compare as bytes (COLLATE "C") whatever the database's own
//! collation. Run on a database whose default collation is linguistic (ICU `en`: `acct:a`
//! sorts before `acct:B`), where byte order differs from it: a database at 0007 with history
//! migrates with every row kept, its key columns in byte order, and the pipeline goes on (seqs
//! continue, a seq stored before the upgrade still detects a fork).
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use common::*;

/// 2026-02-01 00:00:00 UTC, in Unix ms.
const FEB_FIRST_MS: i64 = 1_769_904_000_000;

/// Every column 0008 sets to "C", partitions included (`table.column`, sorted).
const KEY_COLUMNS: &str =
    "SELECT table_name::text || '.' || column_name::text FROM information_schema.columns
     WHERE table_schema = 'public' AND collation_name = 'C' ORDER BY 1";

async fn keys_in_order(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT data_key FROM key_seqs ORDER BY data_key")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Every row of the tables 0008 changes, as text, in a fixed order.
async fn contents(pool: &sqlx::PgPool) -> Vec<String> {
    let mut out = Vec::new();
    for t in [
        "key_seqs",
        "balances",
        "event_keys",
        "event_changes",
        "sequence_anomalies",
    ] {
        let sql = format!("SELECT t::text FROM {t} t ORDER BY t::text COLLATE \"C\"");
        let rows: Vec<String> = sqlx::query_scalar(&sql).fetch_all(pool).await.unwrap();
        out.extend(rows.into_iter().map(|r| format!("{t} {r}")));
    }
    out
}

/// One event's rows as the 0007 shipper wrote them (one key, one change, seq 1).
async fn stored_at_0007(pool: &sqlx::PgPool, e: &str, key: &str, ts: i64) {
    let id = id_of(e);
    sqlx::query("INSERT INTO events (event_id, type, ts_ms, raw, source) VALUES ($1::uuid, 'asset.incr', $2, $3, $4)")
        .bind(&id).bind(ts).bind(e).bind(format!("redis:tally:log/{key}"))
        .execute(pool).await.unwrap();
    sqlx::query(
        "INSERT INTO event_keys (event_id, data_key, seq, ts_ms) VALUES ($1::uuid, $2, 1, $3)",
    )
    .bind(&id)
    .bind(key)
    .bind(ts)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO event_changes (event_id, idx, data_key, field, delta, balance, seq, ts_ms) VALUES ($1::uuid, 0, $2, 'gold', 1, 1, 1, $3)")
        .bind(&id).bind(key).bind(ts).execute(pool).await.unwrap();
    sqlx::query("INSERT INTO key_seqs (data_key, last_seq, event_id, contiguous_seq) VALUES ($1, 1, $2::uuid, 1)")
        .bind(key).bind(&id).execute(pool).await.unwrap();
    sqlx::query("INSERT INTO balances (data_key, field, balance, seq, event_id, ts_ms) VALUES ($1, 'gold', 1, 1, $2::uuid, $3)")
        .bind(key).bind(&id).bind(ts).execute(pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_at_0007_with_a_linguistic_collation_migrates_to_bytewise_keys() {
    let _g = serial();
    let redis = Redis::start(None);
    let mut c = redis.conn().await;
    let pg = Pg::start();
    let admin = pg.pool().await;
    sqlx::raw_sql("CREATE DATABASE icu LOCALE_PROVIDER icu ICU_LOCALE 'en' TEMPLATE template0")
        .execute(&admin)
        .await
        .unwrap();
    let url = format!("{}/icu", pg.url().rsplit_once('/').unwrap().0);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    migrate_up_to(&pool, 7).await;
    sqlx::query("SELECT count(*) FROM tally_history_months(ARRAY[$1::bigint])")
        .bind(FEB_FIRST_MS)
        .execute(&pool)
        .await
        .unwrap();
    let mut m = Model::default();
    let a1 = at(&m.asset_incr("acct:a", "gold", 100), FEB_FIRST_MS);
    let b1 = at(&m.asset_incr("acct:B", "gold", 100), FEB_FIRST_MS + 1);
    stored_at_0007(&pool, &a1, "acct:a", FEB_FIRST_MS).await;
    stored_at_0007(&pool, &b1, "acct:B", FEB_FIRST_MS + 1).await;
    assert_eq!(
        keys_in_order(&pool).await,
        ["acct:a", "acct:B"],
        "linguistic"
    );
    let before = contents(&pool).await;
    assert!(
        sqlx::query_scalar::<_, String>(KEY_COLUMNS)
            .fetch_all(&pool)
            .await
            .unwrap()
            .is_empty(),
        "nothing is in byte order at 0007"
    );

    run_migrate(&url);
    // new connections: a statement prepared before 0008 that returns a key column fails
    // ("cached plan must not change result type", docs/upgrade.md)
    pool.close().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM _sqlx_migrations WHERE success AND version = 8"
        )
        .await,
        1
    );
    assert_eq!(contents(&pool).await, before, "every row kept as it was");
    assert_eq!(keys_in_order(&pool).await, ["acct:B", "acct:a"], "bytes");
    let columns: Vec<String> = sqlx::query_scalar(KEY_COLUMNS)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        columns,
        [
            "balances.data_key",
            "balances.field",
            "coupon_campaigns.campaign",
            "coupon_issues.campaign",
            "coupon_issues.user_id",
            "event_changes.data_key",
            "event_changes.field",
            "event_changes_2026m02.data_key",
            "event_changes_2026m02.field",
            "event_keys.data_key",
            "event_keys_2026m02.data_key",
            "holds.data_key",
            "key_seqs.data_key",
            "sequence_anomalies.data_key",
            "usage_totals.period_id",
            "usage_totals.usage_key",
        ]
    );

    // after the upgrade: both keys go on at seq 2 in one batch (locked in byte order), and
    // a reissued seq 1 of acct:a is a fork of the row stored before it
    let next = [
        at(&m.asset_incr("acct:a", "gold", 5), FEB_FIRST_MS + 2),
        at(&m.asset_incr("acct:B", "gold", 5), FEB_FIRST_MS + 3),
    ];
    let mut other = Model::default();
    let reissued = at(&other.asset_incr("acct:a", "gold", 9), FEB_FIRST_MS + 4);
    let mut all = next.to_vec();
    all.push(reissued.clone());
    let dir = tmpdir("bytewise-upgrade");
    let args = base_args("run", Some(&redis.url()), Some(&url), None);
    ship_all(&mut c, &pool, &args, &dir.join("run.log"), &all, 5).await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM key_seqs WHERE last_seq = 2 AND contiguous_seq = 2"
        )
        .await,
        2
    );
    let forks: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT data_key, got_seq, event_id::text, other_event_id::text FROM sequence_anomalies
         WHERE kind = 'fork'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        forks,
        [("acct:a".to_string(), 1, id_of(&reissued), id_of(&a1))]
    );
    let balances: Vec<(String, String)> = sqlx::query_as(
        "SELECT data_key, balance::text FROM balances WHERE field = 'gold' ORDER BY data_key",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        balances,
        [
            ("acct:B".to_string(), "1.05".to_string()),
            ("acct:a".to_string(), "1.05".to_string())
        ]
    );
}
