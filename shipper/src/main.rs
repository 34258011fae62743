//! tally-shipper: Redis stream -> (Kafka ->) Postgres, exactly once in effect
//! (at-least-once delivery + dedupe on event id).
//!
//! The tree follows an event: `source/` reads the log streams and hands each batch to a path
//! in `paths/`: the direct writers, or forward -> Kafka -> persist. The path stores it through
//! `sinks/` (Kafka, Postgres) and only then does the batch's guard acknowledge it
//! (`source/ack.rs`). `commands.rs` wires the stages of each command, `ops/` holds the
//! one-shot operations (reconcile, restore, failed events, history retire), `obs/` the metrics and /healthz,
//! `event/` the event format, `redis_io/` the Redis client layer, `cli.rs` every option,
//! `retry.rs` the backoff and the `Fatal` error, `shutdown.rs` the signals.

/// The shipper allocates per entry and per row (reply values, strings, bind arrays): mimalloc
/// cut its allocator time, which glibc's malloc made the largest item of its profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod clock;
mod commands;
mod event;
mod obs;
mod ops;
mod paths;
mod redis_io;
mod retry;
mod shutdown;
mod sinks;
mod source;

use std::process::ExitCode;

use clap::Parser;

use cli::Cli;
use shutdown::Shutdown;

/// A fatal error (stderr names it), or reconcile found a mismatch.
const EXIT_FATAL: u8 = 1;
/// The shutdown deadline passed after a signal with work still in flight (re-shipped later).
const EXIT_OVERDUE: u8 = 3;
/// A panic (Rust's own code for it).
const EXIT_PANIC: u8 = 101;

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

/// Exit codes: 0 done (reconcile: match), 1 a fatal error or a reconcile mismatch, 2
/// reconcile matched with events still in flight (or bad arguments, from clap), 3 the
/// shutdown deadline passed; `failed`: 4 no such row, 5 refused, 6 still fails (ops/failed).
fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(cli));
    // Not waiting for the tasks left: past the shutdown deadline some are stuck by
    // definition (a Kafka client closing, a blocking call), and nothing they do matters now.
    rt.shutdown_background();
    ExitCode::from(code)
}

/// The command's exit code; `EXIT_OVERDUE` as soon as the deadline after a signal passed.
async fn run(cli: Cli) -> u8 {
    let shutdown = Shutdown::default();
    // The command runs as a task of its own so that an overdue shutdown ends the process
    // without waiting for it, nor dropping it here (closing a Kafka consumer can block).
    let stop = shutdown.clone();
    let mut command = tokio::spawn(async move { commands::run(cli.cmd, &stop).await });
    tokio::select! {
        joined = &mut command => match joined {
            Ok(Ok(code)) => code,
            Ok(Err(e)) => {
                // ERROR level is reserved for data loss; a fatal error goes to stderr
                eprintln!("tally-shipper: fatal: {e:#}");
                EXIT_FATAL
            }
            Err(_) => EXIT_PANIC, // the panic hook has printed it
        },
        () = shutdown.overdue.cancelled() => EXIT_OVERDUE,
    }
}
