//! Each command wired from its stages: which source feeds which path into which sink, and
//! what an operation needs. Returns the process's exit code, or the error that stops it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::{
    BatchOpts, CheckOpts, Command, FailedCommand, HistoryCommand, KafkaOpts, OpsOpts, PgOpts,
    RedisOpts,
};
use crate::clock::now_ms;
use crate::obs::{health, http, progress};
use crate::ops::{failed, reconcile, restore, retire};
use crate::paths::{Forward, Persist, Writers};
use crate::retry::with_retry;
use crate::shutdown::Shutdown;
use crate::sinks::kafka::{self, Forwarder};
use crate::sinks::postgres::{self, PgSink};
use crate::source;

/// Exit code of a command that did what it was asked (reconcile: Redis and Postgres match).
pub(crate) const EXIT_OK: u8 = 0;

pub(crate) async fn run(cmd: Command, shutdown: &Shutdown) -> anyhow::Result<u8> {
    match cmd {
        Command::Reconcile {
            target,
            pg,
            wait_ms,
        } => return reconcile_command(&target, &pg, wait_ms).await,
        Command::Restore {
            target,
            pg,
            kafka,
            force,
            as_of,
        } => return restore_command(&target, &pg, kafka, force, as_of).await,
        Command::Failed { cmd } => return failed_command(cmd).await,
        Command::History { cmd } => return history_command(cmd).await,
        Command::Migrate { pg, force } => migrate_command(&pg, force).await?,
        Command::RetryFailed { pg, limit } => retry_failed_command(&pg, limit).await?,
        Command::Run {
            redis,
            kafka,
            pg,
            batch,
            ops,
        } => run_command(redis, kafka, pg, batch, ops, shutdown).await?,
        Command::Forward {
            redis,
            kafka,
            batch,
            ops,
        } => forward_command(redis, kafka, batch, ops, shutdown).await?,
        Command::Persist {
            kafka,
            pg,
            batch,
            ops,
        } => persist_command(kafka, pg, batch, ops, shutdown).await?,
    }
    tracing::info!("stopped cleanly");
    Ok(EXIT_OK)
}

async fn migrate_command(pg: &PgOpts, force: bool) -> anyhow::Result<()> {
    let pool = postgres::connect(pg, 1).await?;
    apply_migrations(&pool, force).await
}

/// `migrate` and `--migrate`: refused for a database a newer shipper migrated (its schema is
/// unknown here), and, when there are migrations to apply, while a shipper of an older schema
/// version is connected to the database (it would fail every insert once the schema changes
/// under it), unless `force`.
async fn apply_migrations(pool: &sqlx::PgPool, force: bool) -> anyhow::Result<()> {
    let state = with_retry("schema check", || postgres::schema_state(pool)).await?;
    state.refuse_newer()?;
    let version = postgres::schema_version();
    if !state.missing.is_empty() {
        let older = with_retry("looking for older shippers", || {
            postgres::older_shippers(pool, version)
        })
        .await?;
        let list: Vec<String> = older.iter().map(ToString::to_string).collect();
        if !older.is_empty() && !force {
            anyhow::bail!(
                "refusing to migrate the schema from version {} to {version}: {} connections of shippers of an \
                 older schema version are open on this database, and such a shipper fails every insert once the \
                 schema changes under it:\n  - {}\nStop those shippers first (docs/upgrade.md, \"Order of an \
                 upgrade\"), or run `tally-shipper migrate --force` to migrate anyway",
                state.at,
                older.len(),
                list.join("\n  - ")
            );
        }
        if !older.is_empty() {
            tracing::warn!(connections = %list.join("; "), "migrate --force: shippers of an older schema version are connected");
        }
    }
    with_retry("migration", || postgres::migrate(pool)).await?;
    tracing::info!(from = state.at, to = version, "migrations applied");
    Ok(())
}

/// The fix named when a one-shot command finds migrations missing.
const MIGRATE_FIRST: &str = "run `tally-shipper migrate --database-url ...` first";

/// A one-shot command's pool, refused unless the database has exactly the schema this binary
/// knows (neither migrations missing nor migrated by a newer shipper).
async fn checked_pool(pg: &PgOpts, conns: u32) -> anyhow::Result<sqlx::PgPool> {
    let pool = postgres::connect(pg, conns).await?;
    postgres::schema_state(&pool)
        .await?
        .require_known(MIGRATE_FIRST)?;
    Ok(pool)
}

/// `retry-failed`: `failed retry --all` under its first name.
async fn retry_failed_command(pg: &PgOpts, limit: i64) -> anyhow::Result<()> {
    let pool = checked_pool(pg, 1).await?;
    failed::retry_all(&pool, limit).await
}

/// `failed list | show | retry | dismiss`: its exit code says what it did (ops/failed).
async fn failed_command(cmd: FailedCommand) -> anyhow::Result<u8> {
    let pool = checked_pool(failed::pg_opts(&cmd), 1).await?;
    failed::command(&pool, cmd).await
}

/// `history retire`: a refusal is an error (exit 1), like every other fatal one.
async fn history_command(cmd: HistoryCommand) -> anyhow::Result<u8> {
    let HistoryCommand::Retire {
        pg,
        before,
        archive_dir,
        no_archive: _,
        dry_run,
    } = cmd;
    let pool = checked_pool(&pg, 1).await?;
    let opt = retire::Options {
        before,
        archive_dir,
        dry_run,
        now_ms: now_ms(),
    };
    retire::command(&pool, &opt).await?;
    Ok(EXIT_OK)
}

/// `reconcile`: its exit code is its verdict.
async fn reconcile_command(target: &CheckOpts, pg: &PgOpts, wait_ms: u64) -> anyhow::Result<u8> {
    let pool = checked_pool(pg, 2).await?;
    reconcile::command(
        &target.urls,
        &pool,
        &reconcile::Options::new(target, wait_ms),
    )
    .await
}

/// `restore` (a lost Redis rebuilt) or `restore --as-of` (a rollback); both end with
/// reconcile, whose exit code is the command's.
async fn restore_command(
    target: &CheckOpts,
    pg: &PgOpts,
    kafka: KafkaOpts,
    force: bool,
    as_of: Option<i64>,
) -> anyhow::Result<u8> {
    let pool = checked_pool(pg, 2).await?;
    let opt = restore::Options {
        prefix: target.prefix.clone(),
        group: target.group.clone(),
        kafka: kafka.configured().then_some(kafka),
        force,
        batch: target.batch.max(1),
    };
    let wait_ms = if let Some(ms) = as_of {
        restore::as_of_command(&target.urls, &pool, &opt, ms)
            .await?
            .print(ms);
        30_000 // the corrections travel through the shipper
    } else {
        restore::command(&target.urls, &pool, &opt).await?.print();
        0
    };
    reconcile::command(
        &target.urls,
        &pool,
        &reconcile::Options::new(target, wait_ms),
    )
    .await
}

/// `run`: the direct path (stream -> writers -> Postgres) or the Kafka path (forward and
/// persist) in one process.
async fn run_command(
    redis: RedisOpts,
    kafka: KafkaOpts,
    pg: PgOpts,
    batch: BatchOpts,
    ops: OpsOpts,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    start_ops(&ops, shutdown).await?;
    if kafka.configured() {
        let pool = pg_pool(&pg, pg.pg_max_conns).await?;
        start_failed_gauges(&pg, shutdown).await?;
        return run_kafka_path(redis, kafka, PgSink::new(pool, &pg), batch, ops, shutdown).await;
    }
    // one connection per writer, and one for the watermark repair beside them
    let conns = pg.pg_max_conns.max(batch.pg_writers as u32 + 1);
    let pg_sink = PgSink::new(pg_pool(&pg, conns).await?, &pg);
    start_failed_gauges(&pg, shutdown).await?;
    tracing::info!(
        writers = batch.pg_writers,
        "no Kafka brokers configured: direct path stream -> Postgres"
    );
    let writers = Writers::start(
        batch.pg_writers,
        batch.writer_queue_jobs,
        pg_sink.clone(),
        batch.clone(),
        shutdown.requested.clone(),
    );
    let stored =
        source::run_source(redis, batch, Arc::new(writers), shutdown.requested.clone()).await;
    pg_sink.finish().await;
    Ok(stored?)
}

/// `run` with Kafka: forward and persist side by side. A persist that stops stops the whole
/// process: forward must not keep acknowledging the stream into a topic nobody persists.
async fn run_kafka_path(
    redis: RedisOpts,
    kafka: KafkaOpts,
    pg_sink: PgSink,
    batch: BatchOpts,
    ops: OpsOpts,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    kafka::ensure_topic(&kafka).await?;
    let producer = Arc::new(Forwarder::new(&kafka)?);
    let persist = Persist::new(kafka, batch.clone(), pg_sink, shutdown.requested.clone())?;
    let stop = shutdown.requested.clone();
    let persist = tokio::spawn(async move {
        let persisted = persist.run().await;
        if persisted.is_err() {
            stop.cancel();
        }
        persisted
    });
    let forward = Forward::new(producer.clone(), batch.clone(), shutdown.requested.clone());
    source::run_source(redis, batch, Arc::new(forward), shutdown.requested.clone()).await?;
    producer.flush(Duration::from_millis(ops.shutdown_deadline_ms));
    persist
        .await
        .context("persist task")?
        .context("persist stopped")
}

/// `forward`: stream -> Kafka.
async fn forward_command(
    redis: RedisOpts,
    kafka: KafkaOpts,
    batch: BatchOpts,
    ops: OpsOpts,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    start_ops(&ops, shutdown).await?;
    kafka::ensure_topic(&kafka).await?;
    let producer = Arc::new(Forwarder::new(&kafka)?);
    let forward = Forward::new(producer.clone(), batch.clone(), shutdown.requested.clone());
    source::run_source(redis, batch, Arc::new(forward), shutdown.requested.clone()).await?;
    producer.flush(Duration::from_millis(ops.shutdown_deadline_ms));
    Ok(())
}

/// `persist`: Kafka -> Postgres.
async fn persist_command(
    kafka: KafkaOpts,
    pg: PgOpts,
    batch: BatchOpts,
    ops: OpsOpts,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    start_ops(&ops, shutdown).await?;
    let pool = pg_pool(&pg, pg.pg_max_conns).await?;
    start_failed_gauges(&pg, shutdown).await?;
    kafka::ensure_topic(&kafka).await?;
    Persist::new(
        kafka,
        batch,
        PgSink::new(pool, &pg),
        shutdown.requested.clone(),
    )?
    .run()
    .await
}

/// The pool of run/persist: migrations applied (--migrate) or checked, so a missing schema,
/// or one a newer shipper migrated, stops the process at start with the fix named instead of
/// failing every batch.
async fn pg_pool(pg: &PgOpts, conns: u32) -> anyhow::Result<sqlx::PgPool> {
    let pool = postgres::connect(pg, conns).await?;
    if pg.migrate {
        apply_migrations(&pool, false).await?;
    } else {
        with_retry("schema check", || postgres::schema_state(&pool))
            .await?
            .require_known(&format!("{MIGRATE_FIRST}, or start with --migrate"))?;
    }
    Ok(pool)
}

/// run/persist: the failed_events gauges, counted every --failed-events-interval-ms on a
/// pool of their own (one connection), so they move whatever the writers are doing.
async fn start_failed_gauges(pg: &PgOpts, shutdown: &Shutdown) -> anyhow::Result<()> {
    if pg.failed_events_interval_ms > 0 {
        let pool = postgres::connect(pg, 1).await?;
        tokio::spawn(postgres::failed::sample_gauges(
            pool,
            Duration::from_millis(pg.failed_events_interval_ms),
            shutdown.requested.clone(),
        ));
    }
    Ok(())
}

/// Signal handlers, then /metrics + /healthz (bound before this returns: a taken address is
/// a fatal start-up error), then the progress line.
async fn start_ops(ops: &OpsOpts, shutdown: &Shutdown) -> anyhow::Result<()> {
    shutdown.on_signals(ops.shutdown_deadline_ms)?;
    health::set_unhealthy_after_ms(ops.unhealthy_after_ms);
    let server = http::bind(&ops.metrics_addr).await?;
    let stop = shutdown.requested.clone();
    tokio::spawn(async move {
        if let Some(listener) = server {
            if let Err(e) = http::serve(listener, stop).await {
                tracing::warn!(error = %format!("{e:#}"), "metrics server failed");
            }
        }
    });
    tokio::spawn(progress::progress(
        ops.progress_interval_ms,
        shutdown.requested.clone(),
    ));
    Ok(())
}
