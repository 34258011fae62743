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

/// The machine, the software and when the run happened.
#[derive(Serialize)]
pub struct RunInfo {
    pub started_unix: u64,
    pub finished_unix: u64,
    pub nproc: usize,
    pub cpu: String,
    pub load: LoadAverages,
    /// `redis-server --version`
    pub redis_version: String,
    /// `postgres --version`
    pub postgres_version: String,
    /// fsync, synchronous_commit, shared_buffers, wal_level, max_wal_size as `name=setting`.
    pub postgres_settings: String,
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
