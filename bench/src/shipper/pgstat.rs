//! Diagnosis only: when Postgres was started with `shared_preload_libraries=pg_stat_statements`
//! (BENCH_PG_CONF; add `pg_stat_statements.track_planning=on` for planning time), each
//! capacity step's statements by total execution time go to
//! `pg_statements.txt` in the run's work dir (kept with BENCH_SHIPPER_KEEP). Not part of any
//! figure.

use std::io::Write as _;
use std::path::Path;

use sqlx::PgPool;

/// A superuser connection to the database when the extension is loaded (it is then created
/// there); None otherwise.
pub async fn connect(url: &str) -> Option<PgPool> {
    let pg = PgPool::connect(url).await.ok()?;
    let loaded: bool = sqlx::query_scalar(
        "SELECT current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'",
    )
    .fetch_one(&pg)
    .await
    .ok()?;
    let created = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pg)
        .await;
    (loaded && created.is_ok()).then_some(pg)
}

/// Zeroes the counts.
pub async fn reset(pg: &PgPool) {
    let _ = sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(pg)
        .await;
}

/// Appends the top statements since `reset` under `title` to `dir/pg_statements.txt`.
pub async fn dump(pg: &PgPool, dir: &Path, title: &str) {
    let rows: Vec<(f64, f64, i64, i64, f64, String)> = sqlx::query_as(
        "SELECT total_exec_time, total_plan_time, calls, rows, \
         (shared_blks_hit + shared_blks_read)::float8, \
         left(regexp_replace(query, '\\s+', ' ', 'g'), 160) \
         FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25",
    )
    .fetch_all(pg)
    .await
    .unwrap_or_default();
    let _ = std::fs::create_dir_all(dir);
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("pg_statements.txt"))
    else {
        return;
    };
    let _ = writeln!(f, "== {title}\n exec_ms plan_ms calls rows blocks query");
    for (ms, plan_ms, calls, n, blocks, q) in rows {
        let _ = writeln!(
            f,
            "{ms:>10.0} {plan_ms:>7.0} {calls:>8} {n:>9} {blocks:>10.0} {q}"
        );
    }
}
