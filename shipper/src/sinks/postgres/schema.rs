//! The schema: the embedded migrations (`../migrations`), applying them, checking them at
//! start; and the pool every command connects through.
//!
//! The schema version is the newest migration applied. A binary writes the schema of its
//! newest embedded migration (`schema_version`) and names every connection after it
//! (`tally-shipper/<version>`), so that `migrate` can see a shipper of an older version still
//! connected (`older_shippers`), and a shipper refuses a database migrated past what it knows
//! (`SchemaState::require_known`).

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::cli::PgOpts;

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The `application_name` prefix of every shipper connection; the schema version follows it.
const APP_NAME_PREFIX: &str = "tally-shipper/";

/// The schema this binary writes: the version of its newest embedded migration.
pub(crate) fn schema_version() -> i64 {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// `tally-shipper/<schema version>`: the `application_name` of every connection.
fn application_name() -> String {
    format!("{APP_NAME_PREFIX}{}", schema_version())
}

/// A lazily connecting pool whose every wait is bounded: acquiring a connection (which
/// includes connecting) by `pg_acquire_timeout_ms`, each statement by the server-side
/// `statement_timeout`, and a transaction left idle by `idle_in_transaction_session_timeout`.
pub(crate) async fn connect(pg: &PgOpts, max_conns: u32) -> Result<PgPool, sqlx::Error> {
    let statement_ms = pg.pg_statement_timeout_ms.to_string();
    let opts = PgConnectOptions::from_str(&pg.url)?.options([
        ("statement_timeout", statement_ms.as_str()),
        ("idle_in_transaction_session_timeout", statement_ms.as_str()),
    ]);
    // named after the schema it writes (for `migrate`'s check), over any name in the URL
    let opts = opts.application_name(&application_name());
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

/// The database's `_sqlx_migrations` against the migrations embedded in this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaState {
    /// the newest migration applied (0: none)
    pub(crate) at: i64,
    /// applied migrations this binary does not embed: a newer shipper migrated the database
    pub(crate) unknown: Vec<i64>,
    /// embedded migrations not applied, named as their files (`0004_lean_schema`)
    pub(crate) missing: Vec<String>,
}

/// What the database has applied (no migrations table: nothing) against this binary.
pub(crate) async fn schema_state(pool: &PgPool) -> anyhow::Result<SchemaState> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(SchemaState::of(&applied))
}

impl SchemaState {
    /// The state of a database whose applied migrations are `applied`.
    fn of(applied: &[i64]) -> SchemaState {
        let embedded = |v: i64| {
            MIGRATOR
                .iter()
                .any(|m| !m.migration_type.is_down_migration() && m.version == v)
        };
        SchemaState {
            at: applied.iter().copied().max().unwrap_or(0),
            unknown: applied.iter().copied().filter(|v| !embedded(*v)).collect(),
            missing: MIGRATOR
                .iter()
                .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
                .map(|m| format!("{:04}_{}", m.version, m.description.replace(' ', "_")))
                .collect(),
        }
    }

    /// Err when the database has a migration this binary does not embed: a newer shipper
    /// migrated it, and this one would write (or read) a schema it does not know, failing
    /// inserts or worse.
    pub(crate) fn refuse_newer(&self) -> anyhow::Result<()> {
        if self.unknown.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = self.unknown.iter().map(|v| format!("{v:04}")).collect();
        anyhow::bail!(
            "the schema is at version {}, this shipper knows up to {}: upgrade the shipper (the database has \
             migration {} that this binary does not embed)",
            self.at,
            schema_version(),
            list.join(", ")
        )
    }

    /// Err unless the database has exactly what this binary knows: newer (`refuse_newer`), or
    /// lacking migrations (`fix` names what to do).
    pub(crate) fn require_known(&self, fix: &str) -> anyhow::Result<()> {
        self.refuse_newer()?;
        if !self.missing.is_empty() {
            anyhow::bail!(
                "the database lacks tally's migrations {}: {fix}",
                self.missing.join(", ")
            );
        }
        Ok(())
    }
}

/// A connection of a shipper older than the schema `migrate` is about to apply.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct OlderShipper {
    pub(crate) pid: i32,
    pub(crate) application_name: String,
    pub(crate) client: Option<String>,
    pub(crate) since: String,
}

impl std::fmt::Display for OlderShipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}, from {}, connected since {})",
            self.application_name,
            self.pid,
            self.client.as_deref().unwrap_or("a local socket"),
            self.since
        )
    }
}

/// Other connections to this database whose `application_name` is `tally-shipper/<v>` with
/// v older than `version` (or not a number). Binaries released before the name was set
/// connect without it and are not seen; nor is a shipper that connects after this look.
pub(crate) async fn older_shippers(
    pool: &PgPool,
    version: i64,
) -> anyhow::Result<Vec<OlderShipper>> {
    let rows: Vec<OlderShipper> = sqlx::query_as(
        "SELECT pid, application_name, host(client_addr) AS client,
                to_char(backend_start, 'YYYY-MM-DD HH24:MI:SS TZ') AS since
         FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND starts_with(application_name, $1)
         ORDER BY backend_start",
    )
    .bind(APP_NAME_PREFIX)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|r| {
            r.application_name
                .strip_prefix(APP_NAME_PREFIX)
                .and_then(|v| v.parse::<i64>().ok())
                .is_none_or(|v| v < version)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_is_newer_when_it_has_a_migration_the_binary_lacks() {
        let all: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        let current = SchemaState::of(&all);
        assert_eq!(current.at, schema_version());
        assert!(current.unknown.is_empty() && current.missing.is_empty());
        assert!(current.require_known("migrate").is_ok());

        let newer = SchemaState::of(&[all.clone(), vec![schema_version() + 1]].concat());
        let e = newer.require_known("migrate").unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "the schema is at version {}, this shipper knows up to {}: upgrade the shipper",
                schema_version() + 1,
                schema_version()
            )),
            "{e}"
        );

        let empty = SchemaState::of(&[]);
        assert_eq!(empty.missing.len(), all.len());
        assert!(empty.missing[0].starts_with("0001_"), "{:?}", empty.missing);
        let e = empty.require_known("run migrate").unwrap_err().to_string();
        assert!(e.ends_with(": run migrate"), "{e}");
        assert_eq!(
            application_name(),
            format!("tally-shipper/{}", schema_version())
        );
    }
}
