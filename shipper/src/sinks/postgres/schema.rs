//! The schema: the embedded migrations (`../migrations`), applying them, checking them at
//! start; and the pool every command connects through.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::cli::PgOpts;

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A lazily connecting pool whose every wait is bounded: acquiring a connection (which
/// includes connecting) by `pg_acquire_timeout_ms`, each statement by the server-side
/// `statement_timeout`, and a transaction left idle by `idle_in_transaction_session_timeout`.
pub(crate) async fn connect(pg: &PgOpts, max_conns: u32) -> Result<PgPool, sqlx::Error> {
    let statement_ms = pg.pg_statement_timeout_ms.to_string();
    let opts = PgConnectOptions::from_str(&pg.url)?.options([
        ("statement_timeout", statement_ms.as_str()),
        ("idle_in_transaction_session_timeout", statement_ms.as_str()),
    ]);
    Ok(PgPoolOptions::new()
        .max_connections(max_conns.max(1))
        .acquire_timeout(std::time::Duration::from_millis(
            pg.pg_acquire_timeout_ms.max(1),
        ))
        .connect_lazy_with(opts))
}

pub(crate) async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Versions of the embedded migrations the database has not applied (all of them when the
/// migrations table does not exist).
pub(crate) async fn missing_migrations(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| format!("{:04}_{}", m.version, m.description.replace(' ', "_")))
        .collect())
}
