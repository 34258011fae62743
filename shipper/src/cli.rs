//! Command line / environment configuration: every option of every command (clap, with
//! `TALLY_*` environment variables).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::ops::retire::Month;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tally-shipper",
    version,
    about = "Ships tally change-log events: Redis stream -> Kafka -> Postgres"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Command,
}

#[derive(Subcommand, Debug, Clone)]
pub(crate) enum Command {
    /// Whole pipeline in one process: stream -> Kafka -> Postgres, or stream -> Postgres when no
    /// Kafka brokers are configured.
    Run {
        #[command(flatten)]
        redis: RedisOpts,
        #[command(flatten)]
        kafka: KafkaOpts,
        #[command(flatten)]
        pg: PgOpts,
        #[command(flatten)]
        batch: BatchOpts,
        #[command(flatten)]
        ops: OpsOpts,
    },
    /// Stream -> Kafka sidecar.
    Forward {
        #[command(flatten)]
        redis: RedisOpts,
        #[command(flatten)]
        kafka: KafkaOpts,
        #[command(flatten)]
        batch: BatchOpts,
        #[command(flatten)]
        ops: OpsOpts,
    },
    /// Kafka -> Postgres sidecar.
    Persist {
        #[command(flatten)]
        kafka: KafkaOpts,
        #[command(flatten)]
        pg: PgOpts,
        #[command(flatten)]
        batch: BatchOpts,
        #[command(flatten)]
        ops: OpsOpts,
    },
    /// Apply the embedded migrations (safe to rerun). Refuses a database migrated by a newer
    /// shipper, and, when it has migrations to apply, any other connection to the database
    /// named `tally-shipper/<v>` with v older than this binary's schema version (a shipper that
    /// would fail every insert once the schema changes under it).
    Migrate {
        #[command(flatten)]
        pg: PgOpts,
        /// Migrate although shippers of an older schema version are connected.
        #[arg(long)]
        force: bool,
    },
    /// Decode unresolved failed_events again; those that now succeed are persisted and marked
    /// resolved. The same as `failed retry --all`.
    RetryFailed {
        #[command(flatten)]
        pg: PgOpts,
        /// Maximum number of rows to process.
        #[arg(long, env = "TALLY_RETRY_LIMIT", default_value_t = 10_000)]
        limit: i64,
    },
    /// The failed_events rows (entries that could not be stored as events): list, show, retry
    /// or dismiss them. Exit codes: 0 done, 1 a fatal error, 2 bad arguments, 4 no such row,
    /// 5 refused for the row's state, 6 `retry ID`: the row still fails.
    Failed {
        #[command(subcommand)]
        cmd: FailedCommand,
    },
    /// The history in Postgres by month: `history retire` archives and removes old months
    /// (docs/history.md).
    History {
        #[command(subcommand)]
        cmd: HistoryCommand,
    },
    /// Compare Redis with Postgres (balances, coupons, usage, sequences); exit 0 when they
    /// match, 1 on any mismatch, 2 when they match but events are still in flight.
    Reconcile {
        #[command(flatten)]
        target: CheckOpts,
        #[command(flatten)]
        pg: PgOpts,
        /// Wait up to this long for the pipeline to drain before comparing (0 = do not wait).
        #[arg(long, env = "TALLY_RECONCILE_WAIT_MS", default_value_t = 60_000)]
        wait_ms: u64,
    },
    /// Rebuild Redis state from Postgres after Redis lost its data, then reconcile. Refuses
    /// unless the pipeline has drained (stream, Kafka when --kafka-brokers is given or the
    /// history came through Kafka, failed_events, keys with missing seqs).
    Restore {
        #[command(flatten)]
        target: CheckOpts,
        #[command(flatten)]
        pg: PgOpts,
        #[command(flatten)]
        kafka: KafkaOpts,
        /// Run although the pipeline has not drained (prints exactly what will be lost) and
        /// overwrite keys that already exist in Redis.
        #[arg(long)]
        force: bool,
        /// Instead of rebuilding a lost Redis, roll its balances and coupon claims back to
        /// what they were at this moment (unix milliseconds, e.g. `date -d '2026-11-23 10:00Z' +%s%3N`),
        /// by appending correcting events through the module. Writers should be stopped.
        #[arg(long, value_name = "UNIX_MS")]
        as_of: Option<i64>,
    },
}

/// `tally-shipper history ...`: the history in Postgres, by month (docs/history.md).
#[derive(Subcommand, Debug, Clone)]
pub(crate) enum HistoryCommand {
    /// Archive, then remove, every month of the history before --before.
    ///
    /// Every month of event_keys/event_changes that ends at or before the start of --before
    /// (UTC), oldest first: its rows of events, event_keys and event_changes are written to CSV
    /// files in --archive-dir (unless --no-archive), then removed in one transaction (its
    /// partitions detached and dropped) that records the month in history_retired. A month
    /// retired before is skipped. Refuses a --before that would retire the current or the
    /// previous month. Exit 0 done, 1 refused or a fatal error.
    Retire {
        #[command(flatten)]
        pg: PgOpts,
        /// The first month kept, YYYY-MM (UTC): every month before it is retired.
        #[arg(long, value_name = "YYYY-MM", value_parser = Month::parse)]
        before: Month,
        /// Write each month's rows to <table>_<yyyy>m<mm>.csv in this directory (it must
        /// exist) before they are removed.
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "no_archive",
            conflicts_with = "no_archive"
        )]
        archive_dir: Option<PathBuf>,
        /// Remove the rows without writing them anywhere.
        #[arg(long)]
        no_archive: bool,
        /// Print each month that would be retired with its row counts; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `tally-shipper failed ...`: the rows of failed_events, for an operator.
#[derive(Subcommand, Debug, Clone)]
pub(crate) enum FailedCommand {
    /// The unresolved rows, oldest first: id, source (stream and entry id, or Kafka
    /// coordinates), attempts, first and last seen, error. Exit 0, also when there are none.
    List {
        #[command(flatten)]
        pg: PgOpts,
        /// Every row: resolved ones (stored by a retry) and dismissed ones (who, when, why) too.
        #[arg(long)]
        all: bool,
        /// A JSON array of the rows, for scripts.
        #[arg(long)]
        json: bool,
        /// Most rows printed (the counts per state are always complete).
        #[arg(long, default_value_t = 1_000)]
        limit: i64,
    },
    /// One row, with its payload as received. Exit 4 when there is no such row.
    Show {
        #[command(flatten)]
        pg: PgOpts,
        id: i64,
        /// The row as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Decode row ID (or every unresolved row with --all) again: one that is an event now is
    /// stored and marked resolved; one that still fails counts an attempt. ID: exit 4 no such
    /// row, 5 not unresolved, 6 still fails. --all: exit 0, `resolved=N still_failing=M`.
    Retry {
        #[command(flatten)]
        pg: PgOpts,
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every unresolved row, oldest first (what `retry-failed` does).
        #[arg(long)]
        all: bool,
        /// --all: most rows processed.
        #[arg(long, env = "TALLY_RETRY_LIMIT", default_value_t = 10_000)]
        limit: i64,
    },
    /// Set unresolved row ID aside for good (an entry that is not a tally event), recording
    /// who, when and why: it no longer blocks `restore` and is never stored. Exit 4 no such
    /// row; 5 the row is resolved or dismissed already, or its payload is a tally event.
    Dismiss {
        #[command(flatten)]
        pg: PgOpts,
        id: i64,
        /// Why (kept in the row; required, not empty).
        #[arg(long, value_parser = non_empty)]
        reason: String,
        /// Who (kept in the row). Default: $USER, else the OS user.
        #[arg(long, value_parser = non_empty)]
        by: Option<String>,
        /// Dismiss the row although its payload decodes as a tally event (one Postgres
        /// refused): the history, and a restore from it, will never have that event.
        #[arg(long)]
        discard_event: bool,
    },
}

/// A value that is not empty or blank, trimmed.
pub(crate) fn non_empty(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod failed_tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<FailedCommand, clap::Error> {
        let mut all = vec!["tally-shipper", "failed"];
        all.extend_from_slice(args);
        all.extend(["--database-url", "postgres://x"]);
        match Cli::try_parse_from(all)?.cmd {
            Command::Failed { cmd } => Ok(cmd),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failed_subcommands_parse_and_refuse_bad_arguments() {
        assert!(matches!(
            parse(&["list", "--all", "--json"]),
            Ok(FailedCommand::List {
                all: true,
                json: true,
                limit: 1_000,
                ..
            })
        ));
        assert!(matches!(
            parse(&["retry", "7"]),
            Ok(FailedCommand::Retry {
                id: Some(7),
                all: false,
                ..
            })
        ));
        assert!(matches!(
            parse(&["retry", "--all"]),
            Ok(FailedCommand::Retry {
                id: None,
                all: true,
                ..
            })
        ));
        match parse(&["dismiss", "3", "--reason", "  not an event "]) {
            Ok(FailedCommand::Dismiss {
                id: 3,
                reason,
                by: None,
                discard_event: false,
                ..
            }) => assert_eq!(reason, "not an event"),
            other => panic!("{other:?}"),
        }
        for bad in [
            &["retry"][..],
            &["retry", "7", "--all"],
            &["dismiss", "3"],
            &["dismiss", "3", "--reason", ""],
            &["dismiss", "3", "--reason", " "],
            &["dismiss", "3", "--reason", "r", "--by", ""],
            &["show"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<HistoryCommand, clap::Error> {
        let mut all = vec!["tally-shipper", "history", "retire"];
        all.extend_from_slice(args);
        all.extend(["--database-url", "postgres://x"]);
        match Cli::try_parse_from(all)?.cmd {
            Command::History { cmd } => Ok(cmd),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retire_takes_a_month_and_one_of_archive_dir_and_no_archive() {
        match parse(&["--before", "2025-06", "--archive-dir", "/a", "--dry-run"]) {
            Ok(HistoryCommand::Retire {
                before,
                archive_dir: Some(dir),
                no_archive: false,
                dry_run: true,
                ..
            }) => assert_eq!((before.suffix(), dir), ("2025m06".into(), "/a".into())),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["--before", "2025-06", "--no-archive"]),
            Ok(HistoryCommand::Retire {
                archive_dir: None,
                no_archive: true,
                dry_run: false,
                ..
            })
        ));
        for bad in [
            &["--before", "2025-06"][..],
            &["--before", "2025-06", "--no-archive", "--archive-dir", "/a"],
            &["--before", "2025-6", "--no-archive"],
            &["--before", "2025-13", "--no-archive"],
            &["--no-archive"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}

/// Options of `reconcile` and `restore`: the same Redis URL list as `run` takes.
#[derive(Args, Debug, Clone)]
pub(crate) struct CheckOpts {
    /// Redis URL(s), comma separated or repeated, as `run` and `forward` take them. Cluster:
    /// seeds, tried in order until one answers; every primary of its CLUSTER SLOTS is used.
    /// Standalone: every server listed (each holds its own keys; all must answer). `restore`
    /// without --as-of takes one standalone server or a cluster, not several servers.
    #[arg(
        long = "redis-url",
        id = "redis_url",
        env = "TALLY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        value_delimiter = ','
    )]
    pub(crate) urls: Vec<String>,
    /// Module key prefix (`tally.prefix`).
    #[arg(long, env = "TALLY_PREFIX", default_value = "tally")]
    pub(crate) prefix: String,
    /// The shipper's consumer group (to count entries still in flight).
    #[arg(long = "group", env = "TALLY_GROUP", default_value = "tally-shipper")]
    pub(crate) group: String,
    /// Keys per batch (SCAN/HSCAN page, Postgres query, Redis pipeline).
    #[arg(
        long = "check-batch",
        env = "TALLY_CHECK_BATCH",
        default_value_t = 1000
    )]
    pub(crate) batch: usize,
    /// How many mismatches to print.
    #[arg(long, default_value_t = 20)]
    pub(crate) show: usize,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct RedisOpts {
    /// Redis URL(s), comma separated or repeated. Standalone: one per server. Cluster: any
    /// node(s) as seeds; the primaries and their slots are read from CLUSTER SLOTS.
    #[arg(
        long = "redis-url",
        env = "TALLY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        value_delimiter = ','
    )]
    pub(crate) urls: Vec<String>,
    /// Module key prefix (`tally.prefix`): streams are `<prefix>:log` and `<prefix>:log:{tag}`.
    #[arg(long, env = "TALLY_PREFIX", default_value = "tally")]
    pub(crate) prefix: String,
    /// Consumer group name.
    #[arg(long = "group", env = "TALLY_GROUP", default_value = "tally-shipper")]
    pub(crate) redis_group: String,
    /// Consumer name (keep it stable across restarts so own pending entries are re-read).
    #[arg(long, env = "TALLY_CONSUMER", default_value_t = default_consumer())]
    pub(crate) consumer: String,
    /// Claim pending entries of other consumers idle for at least this long.
    #[arg(long, env = "TALLY_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub(crate) claim_idle_ms: u64,
    /// How often to run XAUTOCLAIM.
    #[arg(long, env = "TALLY_CLAIM_INTERVAL_MS", default_value_t = 5_000)]
    pub(crate) claim_interval_ms: u64,
    /// XREADGROUP BLOCK time (a standalone server's one stream). Cluster mode: the longest
    /// pause between two sweeps of a primary's streams while they are all empty.
    #[arg(long, env = "TALLY_BLOCK_MS", default_value_t = 1_000)]
    pub(crate) block_ms: u64,
    /// Cluster mode: the pause after a sweep of a primary's streams (one pipelined round of
    /// non-blocking XREADGROUP on one connection) found nothing; it doubles, up to
    /// --block-ms, while they stay empty, and is back to this after any entry.
    #[arg(long, env = "TALLY_POLL_MIN_MS", default_value_t = 10)]
    pub(crate) poll_min_ms: u64,
    /// How often to trim acknowledged entries (XTRIM MINID); 0 disables trimming.
    #[arg(long, env = "TALLY_TRIM_INTERVAL_MS", default_value_t = 1_000)]
    pub(crate) trim_interval_ms: u64,
    /// Cluster mode: how often to re-read CLUSTER SLOTS and look for per-slot log streams
    /// (computed names, one pipelined EXISTS per primary). Standalone: unused.
    #[arg(long, env = "TALLY_DISCOVER_INTERVAL_MS", default_value_t = 10_000)]
    pub(crate) discover_interval_ms: u64,
    /// How often to sample each stream's length, pending entries and lag for /metrics, on a
    /// connection of its own (so the figures keep moving while Kafka or Postgres is down).
    #[arg(
        long,
        env = "TALLY_STREAM_METRICS_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub(crate) stream_metrics_interval_ms: u64,
}

pub(crate) fn default_consumer() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".into());
    format!("shipper-{host}")
}

#[derive(Args, Debug, Clone)]
pub(crate) struct KafkaOpts {
    /// Kafka bootstrap servers; when empty `run` uses the direct path (stream -> Postgres).
    #[arg(long = "kafka-brokers", env = "TALLY_KAFKA_BROKERS")]
    pub(crate) brokers: Option<String>,
    /// Topic carrying the events.
    #[arg(
        long = "kafka-topic",
        env = "TALLY_KAFKA_TOPIC",
        default_value = "tally.events"
    )]
    pub(crate) topic: String,
    /// Group id under which `persist` commits its offsets to the broker, for lag tools only
    /// (its positions live in Postgres, table kafka_offsets). It joins this group only with
    /// --persist-group.
    #[arg(
        long = "kafka-group",
        env = "TALLY_KAFKA_GROUP",
        default_value = "tally-persist"
    )]
    pub(crate) kafka_group: String,
    /// persist: share the topic's partitions with the other instances of --kafka-group
    /// through the broker's consumer group (static membership, see --kafka-instance-id)
    /// instead of assigning them itself. On every assignment it starts from the positions
    /// stored in Postgres; a batch is stored only if its positions were not moved meanwhile,
    /// so an instance that lost a partition cannot write it. Not with --persist-shard.
    #[arg(long = "persist-group", env = "TALLY_PERSIST_GROUP")]
    pub(crate) persist_group: bool,
    /// persist --persist-group: this instance's static member id (group.instance.id), stable
    /// across restarts and distinct per instance. A restarted instance gets its partitions
    /// back without a rebalance; a dead one's go to the others after session.timeout.ms
    /// (librdkafka default 45 s; set it with --kafka-opt). Default: the --consumer name.
    #[arg(long = "kafka-instance-id", env = "TALLY_KAFKA_INSTANCE_ID")]
    pub(crate) kafka_instance_id: Option<String>,
    /// librdkafka property passthrough, `key=value` (repeatable), e.g. for SASL/TLS. From the
    /// environment: TALLY_KAFKA_OPTS, one `key=value` per line (keeps secrets off the command line).
    #[arg(long = "kafka-opt", env = "TALLY_KAFKA_OPTS", value_parser = parse_kv, value_delimiter = '\n')]
    pub(crate) opts: Vec<(String, String)>,
    /// Producer delivery timeout (message.timeout.ms); the batch is retried after it.
    #[arg(long, env = "TALLY_KAFKA_MESSAGE_TIMEOUT_MS", default_value_t = 30_000)]
    pub(crate) kafka_message_timeout_ms: u64,
    /// Create the topic at start if it does not exist (with --kafka-topic-partitions).
    #[arg(long, env = "TALLY_KAFKA_CREATE_TOPIC")]
    pub(crate) kafka_create_topic: bool,
    #[arg(long, env = "TALLY_KAFKA_TOPIC_PARTITIONS", default_value_t = 3)]
    pub(crate) kafka_topic_partitions: i32,
    /// persist: how often to look for partitions added to the topic (they are assigned at
    /// their stored positions, or from the beginning).
    #[arg(
        long,
        env = "TALLY_KAFKA_METADATA_INTERVAL_MS",
        default_value_t = 30_000
    )]
    pub(crate) kafka_metadata_interval_ms: u64,
    /// persist: the partitions this instance owns, `i/n` = every partition p with p % n == i.
    /// Several `persist` instances given 0/n .. (n-1)/n share the topic without a consumer
    /// group (no coordinator, no rebalance); partitions added later go to their owner.
    #[arg(long = "persist-shard", env = "TALLY_PERSIST_SHARD", default_value = "0/1", value_parser = parse_shard)]
    pub(crate) persist_shard: Shard,
}

impl KafkaOpts {
    /// Whether brokers are given (an empty value means the direct path, no Kafka).
    pub(crate) fn configured(&self) -> bool {
        self.brokers
            .as_deref()
            .is_some_and(|b| !b.trim().is_empty())
    }
}

/// `i/n`: this instance owns the partitions p with p % n == i.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) index: u32,
    pub(crate) count: u32,
}

/// The most persist instances one topic can be split over.
pub(crate) const MAX_SHARDS: u32 = 1024;

impl Shard {
    pub(crate) fn owns(&self, partition: i32) -> bool {
        u32::try_from(partition).is_ok_and(|p| p % self.count.max(1) == self.index)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

pub(crate) fn parse_shard(s: &str) -> Result<Shard, String> {
    let bad = || format!("expected i/n with 0 <= i < n <= {MAX_SHARDS} (e.g. 0/2), got {s:?}");
    let (i, n) = s.trim().split_once('/').ok_or_else(bad)?;
    let (index, count): (u32, u32) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if count == 0 || count > MAX_SHARDS || index >= count {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

#[derive(Args, Debug, Clone)]
pub(crate) struct PgOpts {
    /// Postgres URL.
    #[arg(long = "database-url", env = "TALLY_DATABASE_URL")]
    pub(crate) url: String,
    /// Connection pool size.
    #[arg(long, env = "TALLY_PG_MAX_CONNS", default_value_t = 4)]
    pub(crate) pg_max_conns: u32,
    /// Apply migrations at start (run/persist).
    #[arg(long, env = "TALLY_MIGRATE")]
    pub(crate) migrate: bool,
    /// Longest wait for a pooled connection (including connecting); past it the batch fails
    /// and is retried with backoff, so a Postgres that does not answer shows as a failure.
    #[arg(long, env = "TALLY_PG_ACQUIRE_TIMEOUT_MS", default_value_t = 5_000)]
    pub(crate) pg_acquire_timeout_ms: u64,
    /// Server-side `statement_timeout` of every shipper connection. The whole batch
    /// transaction also has a client-side deadline of acquire + 2 x statement timeout, which
    /// catches a server that stopped answering altogether.
    #[arg(long, env = "TALLY_PG_STATEMENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub(crate) pg_statement_timeout_ms: u64,
    /// run/persist: how often to count the unresolved and the dismissed failed_events rows
    /// for /metrics (two counts on partial indexes, on a connection of their own); 0 disables.
    #[arg(
        long,
        env = "TALLY_FAILED_EVENTS_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub(crate) failed_events_interval_ms: u64,
}

impl PgOpts {
    /// Client-side deadline of one batch transaction.
    pub(crate) fn batch_deadline_ms(&self) -> u64 {
        self.pg_acquire_timeout_ms
            .saturating_add(self.pg_statement_timeout_ms.saturating_mul(2))
    }
}

#[derive(Args, Debug, Clone)]
pub(crate) struct BatchOpts {
    /// Maximum entries per batch (one Postgres transaction / one Kafka produce round).
    #[arg(long, env = "TALLY_BATCH_SIZE", default_value_t = 2_000)]
    pub(crate) batch_size: usize,
    /// How long to keep filling a batch after its first entry.
    #[arg(long, env = "TALLY_BATCH_WAIT_MS", default_value_t = 50)]
    pub(crate) batch_wait_ms: u64,
    /// Kafka path (forward): maximum batches in flight (read, produced or being acknowledged),
    /// across streams; their messages enter the producer one batch at a time, and each is
    /// acknowledged in the stream as soon as all its delivery reports are in.
    #[arg(long, env = "TALLY_MAX_IN_FLIGHT", default_value_t = 4)]
    pub(crate) max_in_flight: usize,
    /// Direct path: Postgres writers, each owning a partition of the keys (hash of the
    /// event's first key) and committing its own transactions.
    #[arg(long, env = "TALLY_PG_WRITERS", default_value_t = 4)]
    pub(crate) pg_writers: usize,
    /// Direct path: jobs (parts of read batches) queued per writer before the reader waits.
    #[arg(long, env = "TALLY_WRITER_QUEUE_JOBS", default_value_t = 8)]
    pub(crate) writer_queue_jobs: usize,
    /// First retry delay after a transient failure.
    #[arg(long, env = "TALLY_RETRY_BACKOFF_MS", default_value_t = 100)]
    pub(crate) retry_backoff_ms: u64,
    /// Cap of the exponential retry delay.
    #[arg(long, env = "TALLY_RETRY_BACKOFF_CAP_MS", default_value_t = 10_000)]
    pub(crate) retry_backoff_cap_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct OpsOpts {
    /// Address of /metrics and /healthz ("off" disables).
    #[arg(long, env = "TALLY_METRICS_ADDR", default_value = "127.0.0.1:9187")]
    pub(crate) metrics_addr: String,
    /// After SIGTERM/SIGINT: time allowed to finish the in-flight batch, flush and commit.
    #[arg(long, env = "TALLY_SHUTDOWN_DEADLINE_MS", default_value_t = 30_000)]
    pub(crate) shutdown_deadline_ms: u64,
    /// Interval of the progress log line (only while events flow).
    #[arg(long, env = "TALLY_PROGRESS_INTERVAL_MS", default_value_t = 10_000)]
    pub(crate) progress_interval_ms: u64,
    /// /healthz answers 503 "degraded" once deliveries to the next stage (Kafka or Postgres)
    /// have failed continuously for this long; /metrics counts every failure at once.
    #[arg(long, env = "TALLY_UNHEALTHY_AFTER_MS", default_value_t = 10_000)]
    pub(crate) unhealthy_after_ms: u64,
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

#[cfg(test)]
mod shard_tests {
    use super::*;

    #[test]
    fn shards_split_the_partitions_exactly_once() {
        assert_eq!(parse_shard("1/3"), Ok(Shard { index: 1, count: 3 }));
        for bad in ["", "1", "3/3", "0/0", "-1/2", "a/b", "0/1025", "1/2/3"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
        let shards: Vec<Shard> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        for p in 0..10 {
            assert_eq!(
                shards.iter().filter(|s| s.owns(p)).count(),
                1,
                "partition {p}"
            );
        }
        assert!(!Shard { index: 0, count: 1 }.owns(-1));
        assert!(Shard { index: 0, count: 1 }.owns(7));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn kv_parsing() {
        assert_eq!(
            parse_kv("security.protocol=SASL_SSL").unwrap(),
            ("security.protocol".into(), "SASL_SSL".into())
        );
        assert_eq!(parse_kv("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_kv("novalue").is_err());
        assert!(parse_kv("=x").is_err());
    }

    #[test]
    fn run_defaults_and_options() {
        let cli = Cli::try_parse_from([
            "tally-shipper",
            "run",
            "--database-url",
            "postgres://x",
            "--redis-url",
            "redis://a:1,redis://b:2",
            "--kafka-opt",
            "sasl.mechanism=PLAIN",
            "--kafka-opt",
            "security.protocol=SASL_SSL",
            "--batch-size",
            "7",
        ])
        .unwrap();
        match cli.cmd {
            Command::Run {
                redis,
                kafka,
                pg,
                batch,
                ops,
            } => {
                assert_eq!(redis.urls, vec!["redis://a:1", "redis://b:2"]);
                assert_eq!(redis.prefix, "tally");
                assert_eq!(kafka.brokers, None);
                assert_eq!(kafka.topic, "tally.events");
                assert_eq!(kafka.opts.len(), 2);
                assert_eq!(pg.url, "postgres://x");
                assert_eq!(batch.batch_size, 7);
                assert_eq!(batch.retry_backoff_cap_ms, 10_000);
                assert_eq!(ops.metrics_addr, "127.0.0.1:9187");
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["tally-shipper", "run", "--kafka-opt", "bad"]).is_err());
        // reconcile and restore take the list run takes
        for cmd in ["reconcile", "restore"] {
            let cli = Cli::try_parse_from([
                "tally-shipper",
                cmd,
                "--database-url",
                "postgres://x",
                "--redis-url",
                "redis://a:1,redis://b:2",
                "--redis-url",
                "redis://c:3",
            ])
            .unwrap();
            let (Command::Reconcile { target, .. } | Command::Restore { target, .. }) = cli.cmd
            else {
                panic!("{cmd}")
            };
            assert_eq!(
                target.urls,
                vec!["redis://a:1", "redis://b:2", "redis://c:3"]
            );
        }
        assert!(
            Cli::try_parse_from(["tally-shipper", "migrate"]).is_err()
                || std::env::var("TALLY_DATABASE_URL").is_ok()
        );
    }
}
