//! What `tally-bench shipper` writes: one JSON document, read by `bench/report_shipper.py`
//! (through `bench/report.py shipper`). Every figure is a raw measurement (seconds, bytes,
//! counts); rates and ratios are computed by the report. Field names are the schema.

use serde::Serialize;

#[derive(Serialize)]
pub struct Results {
    pub run: RunInfo,
    pub settings: Settings,
    /// Section 1: the direct drains (one per writer count), then the Kafka drains.
    pub drains: Vec<DrainRun>,
    /// The server-side insert ceiling the direct drains are compared with.
    pub ceiling: Ceiling,
    /// Section 1b; absent when Kafka was skipped or the plain-client ceiling failed.
    pub stages: Option<KafkaStages>,
    /// Section 3, one per target rate.
    pub freshness: Vec<FreshRun>,
}

/// The machine, the software and when the run happened; `L`: the load averages taken
/// during the run (`LoadAverages` for `tally-bench shipper`, a list of `LoadAt` otherwise).
#[derive(Serialize)]
pub struct RunInfo<L = LoadAverages> {
    pub started_unix: u64,
    pub finished_unix: u64,
    pub nproc: usize,
    pub cpu: String,
    pub load: L,
    /// `redis-server --version`
    pub redis_version: String,
    /// `postgres --version`
    pub postgres_version: String,
    /// fsync, synchronous_commit, shared_buffers, wal_level, max_wal_size and the settings of
    /// BENCH_PG_CONF as `name=value` (current_setting, with its unit), at the end of the run.
    pub postgres_settings: String,
    /// BENCH_PG_CONF: the `name=value` settings Postgres was started with (`-c`).
    pub postgres_start_settings: Vec<String>,
    /// `tansu --version`, absent without tansu.
    pub tansu_version: Option<String>,
    pub module: Binary,
    pub shipper: Binary,
}

/// `/proc/loadavg` (1/5/15 min) at the stage boundaries.
#[derive(Serialize)]
pub struct LoadAverages {
    pub start: String,
    pub after_direct: String,
    pub after_kafka: String,
    pub end: String,
}

/// `/proc/loadavg` (1/5/15 min) at a named point of the run.
#[derive(Serialize)]
pub struct LoadAt {
    pub at: String,
    pub loadavg: String,
}

#[derive(Serialize)]
pub struct Binary {
    pub path: String,
    /// The first 12 hex digits of its SHA-256.
    pub sha256: String,
    pub modified_unix: i64,
}

/// The knobs of this run (BENCH_SHIPPER_*).
#[derive(Serialize, Clone)]
pub struct Settings {
    pub n: u64,
    pub writers: Vec<u32>,
    /// `None`: the shipper's default batch size.
    pub batch_size: Option<u32>,
    pub kafka_n: u64,
    pub kafka_batch_sizes: Vec<Option<u32>>,
    pub stages_n: u64,
    pub tansu_storage: String,
    pub drain_timeout_s: u64,
    pub kafka_timeout_s: u64,
    pub fresh_rates: Vec<f64>,
    pub fresh_seconds: f64,
    pub fresh_batch_size: Option<u32>,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Direct,
    Kafka,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    Timeout,
    ShipperExited,
    FillFailed,
}

/// One drain: a backlog of `n` events, then `tally-shipper run` until Postgres holds them.
#[derive(Serialize)]
pub struct DrainRun {
    pub route: Route,
    /// `--pg-writers` (direct runs).
    pub writers: Option<u32>,
    pub batch_size: Option<u32>,
    pub n: u64,
    pub status: Status,
    /// Absent when the backlog could not be filled.
    pub measured: Option<Drained>,
}

#[derive(Serialize, Default)]
pub struct Drained {
    pub fill_s: f64,
    /// `used_memory` after FLUSHALL, with the backlog, and after the drain.
    pub used_memory_empty: u64,
    pub used_memory_backlog: u64,
    pub used_memory_after: u64,
    /// `MEMORY USAGE tally:log SAMPLES 0` with the backlog and after the drain.
    pub stream_memory_backlog: u64,
    pub stream_memory_after: u64,
    pub xlen_after: u64,
    /// From starting the shipper until `count(*) FROM events` reached n (or the limit).
    pub drain_s: f64,
    pub rows: u64,
    pub first_row_s: Option<f64>,
    /// Lines with " WARN " and with "session timed out" in the shipper's log.
    pub warn_lines: u64,
    pub session_timeouts: u64,
    /// avg(length(raw)) of the events stored.
    pub mean_raw_len: u32,
}

/// `rows` event-sized rows inserted by one INSERT ... SELECT generate_series statement.
#[derive(Serialize)]
pub struct Ceiling {
    pub rows: u64,
    pub raw_len: u32,
    pub seconds: f64,
}

#[derive(Serialize)]
pub struct KafkaStages {
    pub n: u64,
    /// Message size of the plain clients: the mean raw event length of the persisted events.
    pub message_bytes: u32,
    pub forward: Stage,
    pub persist: Stage,
    pub plain: PlainClients,
}

/// `events` moved by one stage in `seconds`.
#[derive(Serialize)]
pub struct Stage {
    pub events: u64,
    pub seconds: f64,
    pub status: Status,
}

/// Seconds the plain librdkafka clients (shipper/examples/kafka_ceiling.rs) took for n messages.
#[derive(Serialize)]
pub struct PlainClients {
    pub produce_s: f64,
    pub consume_s: f64,
    pub produce_headers_s: f64,
    pub consume_headers_s: f64,
}

#[derive(Serialize)]
pub struct FreshRun {
    pub target_rate: f64,
    pub load: Load,
    /// Commands that succeeded (each appended one event).
    pub expected: u64,
    pub freshness: Freshness,
}

/// What the fixed-rate load did, and the stream sampled every second meanwhile.
#[derive(Serialize)]
pub struct Load {
    pub seconds: f64,
    pub sent: u64,
    pub errors: u64,
    pub max_behind_schedule_s: f64,
    pub samples: Vec<Sample>,
}

/// `t` seconds after the load started: XLEN tally:log, and the first group's `pending`
/// (read, not acked) and `lag` (not yet read) from XINFO GROUPS.
#[derive(Serialize)]
pub struct Sample {
    pub t: f64,
    pub xlen: Option<i64>,
    pub pending: Option<i64>,
    pub lag: Option<i64>,
}

/// Commit time of the row's transaction - the event's `ts_ms`, in ms, over all events.
#[derive(Serialize, Default)]
pub struct Freshness {
    pub events: i64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
}

// ---------------------------------------------------------------- tally-bench capacity

/// What `tally-bench capacity` writes (read by bench/report_capacity.py).
#[derive(Serialize)]
pub struct CapacityResults {
    pub run: RunInfo<Vec<LoadAt>>,
    pub settings: CapacitySettings,
    /// Events the setup appended (coupon campaigns, usage limits, opening balances), shipped
    /// before the first step.
    pub setup_events: u64,
    /// The whole run's events against what it should have stored.
    pub stored: StoredTotal,
    pub steps: Vec<Step>,
    /// The highest target rate of a passed step (None: none passed).
    pub capacity: Option<f64>,
    /// The drain ceiling of the same run on the same path (drain.rs: an ASSET.INCR backlog,
    /// then `tally-shipper run` with the steps' `--pg-writers`).
    pub drain: DrainRun,
}

/// After the run drained: the events the setup and every successful command produced, the
/// rows of `events` (waited for until they match, or the drain timeout), of failed_events.
#[derive(Debug, Clone, Serialize)]
pub struct StoredTotal {
    pub expected: u64,
    pub stored: u64,
    pub failed_events: i64,
}

/// The knobs of `tally-bench capacity` and `tally-bench growth` (CAPACITY_*, GROWTH_*).
#[derive(Serialize, Clone)]
pub struct CapacitySettings {
    /// CAPACITY_PATH: the direct path, or through Kafka (tansu on the same machine).
    pub path: Route,
    pub rates: Vec<f64>,
    pub step_seconds: f64,
    pub clients: u32,
    /// `--pg-writers` of the shipper (None: its default).
    pub writers: Option<u32>,
    /// A step's backlog is bounded when end <= start + slack; slack = max(slack_min,
    /// slack_seconds x target rate).
    pub slack_min: u64,
    pub slack_seconds: f64,
    /// A step passes only when its achieved rate is at least this fraction of its target.
    pub achieved_min: f64,
    pub drain_n: u64,
    /// Steps stop after this many unbounded or slow steps in a row.
    pub stop_after_failed: u32,
    pub growth_sizes: Vec<u64>,
    pub growth_accounts: u64,
    pub growth_backlog: u64,
    pub growth_backlog_accounts: u64,
    pub growth_queries: u32,
    /// `name=value` Postgres settings the growth run applies (ALTER SYSTEM) before its first
    /// point; empty: initdb's defaults.
    pub pg_set: Vec<String>,
    /// Account counts of the Redis memory measurement ("" skips it).
    pub redis_accounts: Vec<u64>,
    pub drain_timeout_s: u64,
}

/// One fixed-rate step of the mixed workload, shipper running throughout.
#[derive(Serialize)]
pub struct Step {
    pub target_rate: f64,
    pub seconds: f64,
    /// Commands sent / that replied with an error (an error appends no event).
    pub sent: u64,
    pub errors: u64,
    /// Successful commands per type: asset.incr, asset.transfer, coupon.claim, usage.consume.
    pub by_type: [u64; 4],
    /// Most any client fell behind its schedule (it then sends at once to catch up).
    pub max_behind_schedule_s: f64,
    /// Unix ms of the step's start and end (events with ts_ms in it belong to the step).
    pub start_ms: i64,
    pub end_ms: i64,
    /// Group lag + pending at the start and the end of the step.
    pub backlog_start: i64,
    pub backlog_end: i64,
    /// Stream and group sampled every second.
    pub samples: Vec<Sample>,
    /// Events committed to Postgres while the step ran (by their commit timestamp).
    pub shipped: i64,
    /// Freshness of the step's events, measured after the run drained (events not stored
    /// by then are missing from `freshness.events`).
    pub freshness: Freshness,
    /// CPU seconds (user + system) during the step.
    pub cpu: CpuSeconds,
    /// backlog_end <= backlog_start + slack; passed: bounded, and the achieved rate at least
    /// `achieved_min` x target, p99 freshness < 1 s and every successful command's event stored.
    pub bounded: bool,
    pub passed: bool,
}

#[derive(Serialize, Default, Clone, Copy)]
pub struct CpuSeconds {
    pub redis: f64,
    pub shipper: f64,
    /// The postmaster, its live children, and children it reaped during the step.
    pub postgres: f64,
    /// tally-bench itself (the load generator).
    pub bench: f64,
    /// The Kafka broker (tansu), on the Kafka path; 0 without one.
    #[serde(default)]
    pub broker: f64,
}

// ---------------------------------------------------------------- tally-bench growth

/// What `tally-bench growth` writes.
#[derive(Serialize)]
pub struct GrowthResults {
    pub run: RunInfo<Vec<LoadAt>>,
    pub settings: CapacitySettings,
    pub points: Vec<GrowthPoint>,
    /// Redis memory with `accounts` asset hashes (after FLUSHALL, stream trimmed to 0).
    pub redis_memory: Vec<RedisMemory>,
}

#[derive(Serialize)]
pub struct RedisMemory {
    pub accounts: u64,
    pub used_memory_empty: u64,
    pub used_memory: u64,
    /// MEMORY USAGE of the (trimmed) stream, part of `used_memory`.
    pub stream_memory: u64,
}

/// One history size: the synthetic history, then a drain into it and the statement query.
#[derive(Serialize)]
pub struct GrowthPoint {
    /// Synthetic events in the history (before this point's drain; earlier drains add theirs).
    pub history_events: u64,
    /// Rows of events / event_keys / event_changes before the drain (all sources).
    pub rows: TableRows,
    /// The current UTC month's partitions (the drain's events land there) before the drain.
    pub drain_month: MonthRows,
    /// Seconds the COPY of this point's new history took, and the index rebuild after it.
    pub copy_s: f64,
    pub index_s: f64,
    /// The backlog drained right after the CHECKPOINT that follows the rebuild.
    pub drain: GrowthDrain,
    /// The same backlog drained again at once after `drain`, in the same checkpoint cycle.
    pub again: GrowthDrain,
    pub hot: QueryLatency,
    pub cold: QueryLatency,
    pub database_bytes: i64,
    /// pg_total_relation_size of events, event_keys, event_changes (all partitions).
    pub table_bytes: [i64; 3],
    pub loadavg: String,
}

#[derive(Serialize, Default)]
pub struct TableRows {
    pub events: i64,
    pub event_keys: i64,
    pub event_changes: i64,
}

/// Rows of the `event_keys_<month>` and `event_changes_<month>` partitions of one month.
#[derive(Serialize, Default)]
pub struct MonthRows {
    /// `<yyyy>m<mm>` as in the partitions' names (2026m12).
    pub month: String,
    pub event_keys: i64,
    pub event_changes: i64,
    /// pg_total_relation_size of the two partitions (0: not created yet).
    pub table_bytes: [i64; 2],
}

#[derive(Serialize)]
pub struct GrowthDrain {
    pub n: u64,
    pub fill_s: f64,
    /// From starting the shipper until its group had nothing pending or unread.
    pub drain_s: f64,
    pub status: Status,
    /// Rows the drain added to `events` (counted after it, minus `rows.events`).
    pub stored: i64,
    pub cpu: CpuSeconds,
    /// WAL written during the drain (pg_stat_wal, read once the shipper's connections closed):
    /// records, full-page images, bytes.
    pub wal: [i64; 3],
}

/// The account statement query (docs/operations.md), `queries` times on random accounts of
/// the class, timed at the client (one connection, prepared statement).
#[derive(Serialize, Default)]
pub struct QueryLatency {
    pub queries: u32,
    /// Mean rows returned (at most 50).
    pub mean_rows: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}
