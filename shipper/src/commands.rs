//! Each command wired from its stages: which source feeds which path into which sink, and
//! what an operation needs. Returns the process's exit code, or the error that stops it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::{BatchOpts, CheckOpts, Command, KafkaOpts, OpsOpts, PgOpts, RedisOpts};
use crate::obs::{health, http, progress};
use crate::ops::{reconcile, restore, retry_failed};
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
        Command::Migrate { pg } => migrate_command(&pg).await?,
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

async fn migrate_command(pg: &PgOpts) -> anyhow::Result<()> {
    let pool = postgres::connect(pg, 1).await?;
    with_retry("migration", || postgres::migrate(&pool)).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn retry_failed_command(pg: &PgOpts, limit: i64) -> anyhow::Result<()> {
    let pool = postgres::connect(pg, 1).await?;
    let (ok, bad) = retry_failed::retry_failed(&pool, limit).await?;
    tracing::info!(resolved = ok, still_failing = bad, "retry-failed done");
    println!("resolved={ok} still_failing={bad}");
    Ok(())
}

/// `reconcile`: its exit code is its verdict.
async fn reconcile_command(target: &CheckOpts, pg: &PgOpts, wait_ms: u64) -> anyhow::Result<u8> {
    let pool = postgres::connect(pg, 2).await?;
    reconcile::command(
        &target.url,
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
    let pool = postgres::connect(pg, 2).await?;
    let opt = restore::Options {
        prefix: target.prefix.clone(),
        group: target.group.clone(),
        kafka: kafka.configured().then_some(kafka),
        force,
        batch: target.batch.max(1),
    };
    let wait_ms = if let Some(ms) = as_of {
        restore::as_of_command(&target.url, &pool, &opt, ms)
            .await?
            .print(ms);
        30_000 // the corrections travel through the shipper
    } else {
        restore::command(&target.url, &pool, &opt).await?.print();
        0
    };
    reconcile::command(
        &target.url,
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
        return run_kafka_path(redis, kafka, PgSink::new(pool, &pg), batch, ops, shutdown).await;
    }
    // one connection per writer, and one for the watermark repair beside them
    let conns = pg.pg_max_conns.max(batch.pg_writers as u32 + 1);
    let pg_sink = PgSink::new(pg_pool(&pg, conns).await?, &pg);
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

/// The pool of run/persist: migrations applied (--migrate) or checked, so a missing schema
/// stops the process at start with the fix named instead of failing every batch.
async fn pg_pool(pg: &PgOpts, conns: u32) -> anyhow::Result<sqlx::PgPool> {
    let pool = postgres::connect(pg, conns).await?;
    if pg.migrate {
        with_retry("migration", || postgres::migrate(&pool)).await?;
    } else {
        let missing = with_retry("schema check", || postgres::missing_migrations(&pool)).await?;
        if !missing.is_empty() {
            anyhow::bail!(
                "the database lacks tally's migrations {}: run `tally-shipper migrate --database-url ...` first, or start with --migrate",
                missing.join(", ")
            );
        }
    }
    Ok(pool)
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
