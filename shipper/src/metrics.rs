//! Prometheus metrics, /metrics + /healthz server, progress log line.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge_vec, Encoder, GaugeVec, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, TextEncoder,
};
use tokio_util::sync::CancellationToken;

pub static EVENTS_READ: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("tally_events_read_total", "Stream entries read from Redis").unwrap()
});
pub static EVENTS_FORWARDED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_events_forwarded_total",
        "Entries delivered to Kafka (acks=all)"
    )
    .unwrap()
});
pub static EVENTS_PERSISTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_events_persisted_total",
        "Events newly inserted into Postgres"
    )
    .unwrap()
});
pub static EVENTS_DUPLICATE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_events_duplicate_total",
        "Replayed events skipped by dedupe on id"
    )
    .unwrap()
});
pub static EVENTS_FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_events_failed_total",
        "Entries recorded in failed_events"
    )
    .unwrap()
});
pub static KAFKA_CONSUMED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_kafka_messages_consumed_total",
        "Kafka messages consumed by persist"
    )
    .unwrap()
});
pub static KAFKA_PARTITIONS: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!("tally_kafka_partitions_assigned", "Partitions persist consumes (its --persist-shard, or its share of the group with --persist-group)").unwrap()
});
pub static KAFKA_FENCED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_kafka_fenced_batches_total",
        "Batches persist dropped because another instance had moved their Kafka positions (re-read from the stored positions)"
    )
    .unwrap()
});
pub static PG_COPIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_pg_copy_batches_total",
        "Batch COPYs into a history table: copied, or present (a row was stored already, so the batch was inserted row by row with ON CONFLICT)",
        &["table", "result"]
    )
    .unwrap()
});
pub static SEQ_ANOMALIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_seq_anomalies_total",
        "Per-key seq gaps / out-of-order arrivals"
    )
    .unwrap()
});
pub static RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_transient_retries_total",
        "Retries after transient failures"
    )
    .unwrap()
});
pub static DELIVERY_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_delivery_failures_total",
        "Failed attempts to deliver a batch to the next stage (each is retried with backoff)",
        &["stage"]
    )
    .unwrap()
});
pub static REDIRECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_redis_redirects_total",
        "Stream reads and acks redirected by the cluster (slot moved or being migrated) and followed",
        &["kind"]
    )
    .unwrap()
});
pub static ENTRIES_CLAIMED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_entries_claimed_total",
        "Pending entries of idle consumers taken over (XAUTOCLAIM)"
    )
    .unwrap()
});
pub static STREAM_LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "tally_stream_lag_seconds",
        "Age of the oldest entry of the stream not yet acknowledged by the group (0 when none)",
        &["stream"]
    )
    .unwrap()
});
pub static STREAM_UNREAD: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_stream_unread_entries",
        "Entries the group has not read yet",
        &["stream"]
    )
    .unwrap()
});
pub static PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_stream_pending_entries",
        "Pending (delivered, unacked) entries of the group",
        &["stream"]
    )
    .unwrap()
});
pub static STREAM_LEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("tally_stream_length", "XLEN of the log stream", &["stream"]).unwrap()
});
pub static LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "tally_end_to_end_lag_seconds",
        "now - event ts of the newest event in the last delivered batch",
        &["stage"]
    )
    .unwrap()
});
pub static BATCH_SIZE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "tally_batch_size",
        "Entries per batch",
        &["stage"],
        vec![1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]
    )
    .unwrap()
});
pub static BATCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "tally_batch_seconds",
        "Time to deliver one batch to the next stage (incl. retries)",
        &["stage"],
        vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0]
    )
    .unwrap()
});

/// 0 when healthy, else the Unix ms since which deliveries to the next stage keep failing.
pub static FAILING_SINCE_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
/// /healthz turns 503 after deliveries have failed continuously for this long
/// (`--unhealthy-after-ms`).
static UNHEALTHY_AFTER_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(10_000);

pub fn set_unhealthy_after_ms(ms: u64) {
    UNHEALTHY_AFTER_MS.store(
        i64::try_from(ms).unwrap_or(i64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
}

pub fn set_failing(failing: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    if failing {
        let _ = FAILING_SINCE_MS.compare_exchange(0, now_ms(), Relaxed, Relaxed);
    } else {
        FAILING_SINCE_MS.store(0, Relaxed);
    }
}

async fn healthz() -> (axum::http::StatusCode, String) {
    let since = FAILING_SINCE_MS.load(std::sync::atomic::Ordering::Relaxed);
    let after = UNHEALTHY_AFTER_MS.load(std::sync::atomic::Ordering::Relaxed);
    if since != 0 && now_ms() - since >= after {
        let secs = (now_ms() - since) / 1000;
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: deliveries failing for {secs}s\n"),
        )
    } else {
        (axum::http::StatusCode::OK, "ok\n".to_string())
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn record_lag(stage: &str, ts_ms: impl IntoIterator<Item = i64>) {
    if let Some(newest) = ts_ms.into_iter().max() {
        LAG.with_label_values(&[stage])
            .set(((now_ms() - newest).max(0) as f64) / 1000.0);
    }
}

fn render() -> String {
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

/// Binds the /metrics address; None when it is "off".
pub async fn bind(addr: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if addr == "off" || addr.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on --metrics-addr {addr}: {e} (use another address or \"off\")"
        )
    })?;
    tracing::info!(addr = %addr, "metrics listening");
    Ok(Some(listener))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(|| async { render() }))
        .route("/healthz", axum::routing::get(healthz));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// Logs one progress line per interval while counters move.
pub async fn progress(interval_ms: u64, shutdown: CancellationToken) {
    let mut last = (0, 0, 0, 0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval_ms.max(100))) => {}
            _ = shutdown.cancelled() => break,
        }
        let now = (
            EVENTS_READ.get(),
            EVENTS_FORWARDED.get(),
            EVENTS_PERSISTED.get(),
            EVENTS_FAILED.get(),
        );
        if now != last {
            tracing::info!(
                read = now.0,
                read_delta = now.0 - last.0,
                forwarded = now.1,
                forwarded_delta = now.1 - last.1,
                persisted = now.2,
                persisted_delta = now.2 - last.2,
                duplicates = EVENTS_DUPLICATE.get(),
                failed = now.3,
                "progress"
            );
            last = now;
        }
    }
}
