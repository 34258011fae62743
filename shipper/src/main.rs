//! tally-shipper: Redis stream -> (Kafka ->) Postgres, exactly once in effect
//! (at-least-once delivery + dedupe on event id).

/// The shipper allocates per entry and per row (reply values, strings, bind arrays): mimalloc
/// cut its allocator time, which glibc's malloc made the largest item of its profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod clock;
mod event;
mod obs;
mod ops;
mod paths;
mod redis_io;
mod retry;
mod sinks;
mod source;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command, OpsOpts, PgOpts};
use obs::{health, http, progress};
use ops::{reconcile, restore};
use sinks::kafka::{self as kafka_client, Forwarder};
use sinks::postgres::{self as db, PgSink};

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,rdkafka=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

/// SIGTERM/SIGINT -> cancel the token; then enforce the shutdown deadline. The handlers are
/// registered before this returns, so once /healthz answers a SIGTERM is never lost.
fn install_signals(shutdown: CancellationToken, deadline_ms: u64) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping reads, finishing in-flight batch"),
            _ = int.recv() => tracing::info!("SIGINT: stopping reads, finishing in-flight batch"),
        }
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(deadline_ms)).await;
        tracing::warn!(deadline_ms, "shutdown deadline exceeded; exiting with in-flight work unacknowledged (it will be re-shipped)");
        std::process::exit(3);
    });
    Ok(())
}

/// The pool of run/persist: migrations applied (--migrate) or checked, so a missing schema
/// stops the process at start with the fix named instead of failing every batch.
async fn pg_pool(pg: &PgOpts, conns: u32) -> anyhow::Result<sqlx::PgPool> {
    let pool = db::connect(pg, conns).await?;
    if pg.migrate {
        retry::with_retry("migration", || db::migrate(&pool)).await?;
    } else {
        let missing = retry::with_retry("schema check", || db::missing_migrations(&pool)).await?;
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
async fn start_ops(ops: &OpsOpts, shutdown: &CancellationToken) -> anyhow::Result<()> {
    install_signals(shutdown.clone(), ops.shutdown_deadline_ms)?;
    health::set_unhealthy_after_ms(ops.unhealthy_after_ms);
    let server = http::bind(&ops.metrics_addr).await?;
    let s = shutdown.clone();
    tokio::spawn(async move {
        if let Some(listener) = server {
            if let Err(e) = http::serve(listener, s).await {
                tracing::warn!(error = %format!("{e:#}"), "metrics server failed");
            }
        }
    });
    tokio::spawn(progress::progress(
        ops.progress_interval_ms,
        shutdown.clone(),
    ));
    Ok(())
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    match cli.cmd {
        Command::Migrate { pg } => {
            let pool = db::connect(&pg, 1).await?;
            retry::with_retry("migration", || db::migrate(&pool)).await?;
            tracing::info!("migrations applied");
        }
        Command::RetryFailed { pg, limit } => {
            let pool = db::connect(&pg, 1).await?;
            let (ok, bad) = ops::retry_failed::retry_failed(&pool, limit).await?;
            tracing::info!(resolved = ok, still_failing = bad, "retry-failed done");
            println!("resolved={ok} still_failing={bad}");
        }
        Command::Reconcile {
            target,
            pg,
            wait_ms,
        } => {
            let pool = db::connect(&pg, 2).await?;
            let code = reconcile::command(&target.url, &pool, &reconcile_options(&target, wait_ms))
                .await?;
            std::process::exit(code);
        }
        Command::Restore {
            target,
            pg,
            kafka,
            force,
            as_of,
        } => restore_command(target, pg, kafka, force, as_of).await?,
        Command::Run {
            redis,
            kafka,
            pg,
            batch,
            ops,
        } => run_command(redis, kafka, pg, batch, ops, &shutdown).await?,
        Command::Forward {
            redis,
            kafka,
            batch,
            ops,
        } => {
            start_ops(&ops, &shutdown).await?;
            kafka_client::ensure_topic(&kafka).await?;
            let fwd = Arc::new(Forwarder::new(&kafka)?);
            let forward = paths::Forward::new(fwd.clone(), batch.clone(), shutdown.clone());
            source::run_source(redis, batch, Arc::new(forward), shutdown.clone()).await?;
            fwd.flush(Duration::from_millis(ops.shutdown_deadline_ms));
        }
        Command::Persist {
            kafka,
            pg,
            batch,
            ops,
        } => {
            start_ops(&ops, &shutdown).await?;
            let pool = pg_pool(&pg, pg.pg_max_conns).await?;
            kafka_client::ensure_topic(&kafka).await?;
            paths::Persist::new(kafka, batch, PgSink::new(pool, &pg), shutdown.clone())?
                .run()
                .await?;
        }
    }
    if let Some(msg) = retry::fatal_error() {
        anyhow::bail!(msg);
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `restore` (a lost Redis rebuilt) or `restore --as-of` (a rollback); both end with
/// reconcile, whose exit code is the command's.
async fn restore_command(
    target: cli::CheckOpts,
    pg: cli::PgOpts,
    kafka: cli::KafkaOpts,
    force: bool,
    as_of: Option<i64>,
) -> anyhow::Result<()> {
    let pool = db::connect(&pg, 2).await?;
    let kafka = kafka.configured().then_some(kafka);
    let opt = restore::Options {
        prefix: target.prefix.clone(),
        group: target.group.clone(),
        kafka,
        force,
        batch: target.batch.max(1),
    };
    let wait_ms = if let Some(ms) = as_of {
        let done = restore::as_of_command(&target.url, &pool, &opt, ms).await?;
        println!(
            "rolled back to {ms}: {} fields of {} keys corrected, {} claims released",
            done.fields, done.keys, done.releases
        );
        for n in &done.not_rolled_back {
            println!("not rolled back: {n}");
        }
        30_000 // the corrections travel through the shipper
    } else {
        let done = restore::command(&target.url, &pool, &opt).await?;
        println!(
            "restored {} balance keys ({} fields), {} campaigns ({} holders), {} usage counters, {} sequences",
            done.balance_keys, done.balance_fields, done.campaigns, done.holders, done.usage_keys, done.sequences
        );
        println!(
            "restored {} op-id records still inside tally.op-ttl-ms",
            done.op_ids.restored
        );
        if done.op_ids.without_record > 0 {
            println!(
                "not restored: {} op-ids inside the window whose events carry no record (written by an older module); a retry of one is applied again",
                done.op_ids.without_record
            );
        }
        0
    };
    let code = reconcile::command(&target.url, &pool, &reconcile_options(&target, wait_ms)).await?;
    std::process::exit(code);
}

/// `run`: the direct path (stream -> writers -> Postgres) or the Kafka path in one process.
async fn run_command(
    redis: cli::RedisOpts,
    kafka: cli::KafkaOpts,
    pg: cli::PgOpts,
    batch: cli::BatchOpts,
    ops: cli::OpsOpts,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    start_ops(&ops, shutdown).await?;
    let direct = !kafka.configured();
    let conns = if direct {
        pg.pg_max_conns.max(batch.pg_writers as u32 + 1)
    } else {
        pg.pg_max_conns
    };
    let pool = pg_pool(&pg, conns).await?;
    let pg_sink = PgSink::new(pool, &pg);
    if direct {
        tracing::info!(
            writers = batch.pg_writers,
            "no Kafka brokers configured: direct path stream -> Postgres"
        );
        let writers = paths::Writers::start(
            batch.pg_writers,
            batch.writer_queue_jobs,
            pg_sink.clone(),
            batch.clone(),
            shutdown.clone(),
        );
        let stored = source::run_source(redis, batch, Arc::new(writers), shutdown.clone()).await;
        pg_sink.finish().await;
        return Ok(stored?);
    }
    kafka_client::ensure_topic(&kafka).await?;
    let fwd = Arc::new(Forwarder::new(&kafka)?);
    let persist = paths::Persist::new(kafka.clone(), batch.clone(), pg_sink, shutdown.clone())?;
    // a persist that dies stops the whole process: forward must not keep acknowledging the
    // stream into a topic nobody persists
    let s = shutdown.clone();
    let persist = tokio::spawn(async move {
        if let Err(e) = persist.run().await {
            retry::fail(format!("persist stopped: {e:#}"), &s);
        }
    });
    let forward = paths::Forward::new(fwd.clone(), batch.clone(), shutdown.clone());
    source::run_source(redis, batch, Arc::new(forward), shutdown.clone()).await?;
    fwd.flush(Duration::from_millis(ops.shutdown_deadline_ms));
    persist.await.context("persist task")?;
    Ok(())
}

fn reconcile_options(t: &cli::CheckOpts, wait_ms: u64) -> reconcile::Options {
    reconcile::Options {
        prefix: t.prefix.clone(),
        group: t.group.clone(),
        wait_ms,
        batch: t.batch.max(1),
        show: t.show,
    }
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(real_main(cli)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            // ERROR level is reserved for data loss; a fatal start-up/config error goes to stderr
            eprintln!("tally-shipper: fatal: {e:#}");
            std::process::exit(1);
        }
    }
}
