//! The Prometheus metrics (names and help texts are part of the interface: dashboards and
//! alerts use them) and their text exposition.

use std::sync::LazyLock;

use crate::clock::now_ms;
use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge_vec, Encoder, GaugeVec, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, TextEncoder,
};

pub(crate) static EVENTS_READ: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("tally_events_read_total", "Stream entries read from Redis").unwrap()
});
pub(crate) static EVENTS_FORWARDED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_events_forwarded_total",
        "Entries delivered to Kafka (acks=all)"
    )
    .unwrap()
});
pub(crate) static EVENTS_PERSISTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_events_persisted_total",
        "Events newly inserted into Postgres"
    )
    .unwrap()
});
pub(crate) static EVENTS_DUPLICATE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_events_duplicate_total",
        "Replayed events skipped by dedupe on id"
    )
    .unwrap()
});
pub(crate) static EVENTS_FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_events_failed_total",
        "Entries recorded in failed_events"
    )
    .unwrap()
});
/// Sampled from Postgres by `run` and `persist` only (`sinks::postgres::failed`): a process
/// without Postgres (`forward`) does not export them.
pub(crate) static FAILED_EVENTS_UNRESOLVED: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "tally_failed_events_unresolved",
        "Rows of failed_events neither stored by a retry nor dismissed (they block restore), counted every --failed-events-interval-ms"
    )
    .unwrap()
});
pub(crate) static FAILED_EVENTS_DISMISSED: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "tally_failed_events_dismissed",
        "Rows of failed_events an operator dismissed (tally-shipper failed dismiss), counted every --failed-events-interval-ms"
    )
    .unwrap()
});
pub(crate) static KAFKA_CONSUMED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_kafka_messages_consumed_total",
        "Kafka messages consumed by persist"
    )
    .unwrap()
});
pub(crate) static KAFKA_PARTITIONS: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!("tally_kafka_partitions_assigned", "Partitions persist consumes (its --persist-shard, or its share of the group with --persist-group)").unwrap()
});
pub(crate) static KAFKA_FENCED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_kafka_fenced_batches_total",
        "Batches persist dropped because another instance had moved their Kafka positions (re-read from the stored positions)"
    )
    .unwrap()
});
pub(crate) static PG_COPIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_pg_copy_batches_total",
        "Batch COPYs into a history table: copied, or present (a row was stored already, so the batch was inserted row by row with ON CONFLICT)",
        &["table", "result"]
    )
    .unwrap()
});
pub(crate) static SEQ_ANOMALIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_seq_anomalies_total",
        "Per-key seq gaps / out-of-order arrivals"
    )
    .unwrap()
});
pub(crate) static RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_transient_retries_total",
        "Retries after transient failures"
    )
    .unwrap()
});
pub(crate) static DELIVERY_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_delivery_failures_total",
        "Failed attempts to deliver a batch to the next stage (each is retried with backoff)",
        &["stage"]
    )
    .unwrap()
});
pub(crate) static REDIRECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_redis_redirects_total",
        "Stream reads and acks redirected by the cluster (slot moved or being migrated) and followed",
        &["kind"]
    )
    .unwrap()
});
pub(crate) static ENTRIES_CLAIMED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_entries_claimed_total",
        "Pending entries of idle consumers taken over (XAUTOCLAIM)"
    )
    .unwrap()
});
pub(crate) static STREAM_LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "tally_stream_lag_seconds",
        "Age of the oldest entry of the stream not yet acknowledged by the group (0 when none)",
        &["stream"]
    )
    .unwrap()
});
pub(crate) static STREAM_UNREAD: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_stream_unread_entries",
        "Entries the group has not read yet",
        &["stream"]
    )
    .unwrap()
});
pub(crate) static PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_stream_pending_entries",
        "Pending (delivered, unacked) entries of the group",
        &["stream"]
    )
    .unwrap()
});
pub(crate) static STREAM_LEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("tally_stream_length", "XLEN of the log stream", &["stream"]).unwrap()
});
pub(crate) static LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "tally_end_to_end_lag_seconds",
        "now - event ts of the newest event in the last delivered batch",
        &["stage"]
    )
    .unwrap()
});
pub(crate) static BATCH_SIZE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "tally_batch_size",
        "Entries per batch",
        &["stage"],
        vec![1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]
    )
    .unwrap()
});
pub(crate) static BATCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "tally_batch_seconds",
        "Time to deliver one batch to the next stage (incl. retries)",
        &["stage"],
        vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0]
    )
    .unwrap()
});

pub(crate) fn record_lag(stage: &str, ts_ms: impl IntoIterator<Item = i64>) {
    if let Some(newest) = ts_ms.into_iter().max() {
        LAG.with_label_values(&[stage])
            .set(((now_ms() - newest).max(0) as f64) / 1000.0);
    }
}

pub(crate) fn render() -> String {
    // touch the lazies so every series is exported from the start
    let _ = (
        &*EVENTS_READ,
        &*EVENTS_FORWARDED,
        &*EVENTS_PERSISTED,
        &*EVENTS_DUPLICATE,
        &*EVENTS_FAILED,
    );
    let _ = (&*KAFKA_PARTITIONS, &*KAFKA_FENCED);
    let _ = (
        &*KAFKA_CONSUMED,
        &*SEQ_ANOMALIES,
        &*RETRIES,
        &*PENDING,
        &*STREAM_LEN,
        &*LAG,
        &*BATCH_SIZE,
        &*BATCH_SECONDS,
    );
    let _ = (&*ENTRIES_CLAIMED, &*STREAM_LAG, &*STREAM_UNREAD);
    for stage in ["forward", "persist"] {
        let _ = DELIVERY_FAILURES.with_label_values(&[stage]);
    }
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut buf)
        .ok();
    String::from_utf8(buf).unwrap_or_default()
}
