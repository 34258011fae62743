//! The delivery stage: hand a batch to the next durable stage (Kafka or Postgres) and retry
//! transient failures with capped backoff. Nothing is acknowledged upstream until this
//! returns Ok; a permanent failure stops the process instead of retrying forever.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cli::BatchOpts;
use crate::event::Record;
use crate::obs::{health, metrics};
use crate::sinks::kafka::Forwarder;
use crate::sinks::postgres::{classify, permanent_message, ErrorClass, Outcome, PgSink, Position};

#[derive(Clone)]
pub enum Sink {
    Pg(PgSink),
    Kafka(Arc<Forwarder>),
}

/// Why the process must stop: retrying cannot help.
#[derive(Debug, Clone)]
pub struct Fatal(pub String);

static FATAL: OnceLock<String> = OnceLock::new();

/// Record the first fatal error and stop every task; `main` exits non-zero with it.
pub fn fail(msg: String, shutdown: &CancellationToken) {
    let _ = FATAL.set(msg);
    shutdown.cancel();
}

pub fn fatal_error() -> Option<String> {
    FATAL.get().cloned()
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// the next stage holds the batch durably
    Done,
    /// nothing was written: another `persist` instance moved a Kafka position the batch
    /// continued from (only with positions; see `db::Position`)
    Fenced,
}

enum Failure {
    Retry(anyhow::Error),
    Stop(String),
}

impl Sink {
    fn stage(&self) -> &'static str {
        match self {
            Sink::Pg(_) => "persist",
            Sink::Kafka(_) => "forward",
        }
    }

    async fn deliver_once(
        &self,
        recs: &[Record],
        positions: &[Position],
    ) -> Result<Delivered, Failure> {
        match self {
            Sink::Pg(pg) => match pg.persist(recs, positions).await {
                Ok(out) if out.fenced => Ok(Delivered::Fenced),
                Ok(out) => {
                    account(&out);
                    Ok(Delivered::Done)
                }
                Err(e) if classify(&e) == ErrorClass::Permanent => {
                    Err(Failure::Stop(permanent_message(&e)))
                }
                Err(e) => Err(Failure::Retry(e.into())),
            },
            Sink::Kafka(f) => {
                f.send_batch(recs).await.map_err(Failure::Retry)?;
                metrics::EVENTS_FORWARDED.inc_by(recs.len() as u64);
                metrics::record_lag(
                    "forward",
                    recs.iter()
                        .filter_map(|r| r.decoded.as_ref().ok().map(|e| e.ts)),
                );
                Ok(Delivered::Done)
            }
        }
    }

    /// Deliver until the next stage holds the batch durably (transient failures are retried
    /// with capped exponential backoff; nothing is acknowledged meanwhile), or until a
    /// permanent failure, which the caller must not acknowledge.
    pub async fn deliver(
        &self,
        recs: &[Record],
        positions: &[Position],
        b: &BatchOpts,
    ) -> Result<Delivered, Fatal> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            match self.deliver_once(recs, positions).await {
                Ok(Delivered::Fenced) => {
                    health::set_failing(false);
                    metrics::KAFKA_FENCED.inc();
                    return Ok(Delivered::Fenced);
                }
                Ok(Delivered::Done) => {
                    health::set_failing(false);
                    break;
                }
                Err(Failure::Stop(msg)) => {
                    health::set_failing(true);
                    metrics::DELIVERY_FAILURES
                        .with_label_values(&[self.stage()])
                        .inc();
                    return Err(Fatal(msg));
                }
                Err(Failure::Retry(e)) => {
                    health::set_failing(true);
                    metrics::DELIVERY_FAILURES
                        .with_label_values(&[self.stage()])
                        .inc();
                    let wait = backoff_ms(b.retry_backoff_ms, b.retry_backoff_cap_ms, attempt);
                    metrics::RETRIES.inc();
                    tracing::warn!(stage = self.stage(), batch = recs.len(), attempt, retry_in_ms = wait, error = %format!("{e:#}"),
                        "delivery failed, will retry");
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        metrics::BATCH_SIZE
            .with_label_values(&[self.stage()])
            .observe(recs.len() as f64);
        metrics::BATCH_SECONDS
            .with_label_values(&[self.stage()])
            .observe(started.elapsed().as_secs_f64());
        Ok(Delivered::Done)
    }
}

pub fn account(out: &Outcome) {
    metrics::EVENTS_PERSISTED.inc_by(out.inserted as u64);
    metrics::EVENTS_DUPLICATE.inc_by(out.duplicates as u64);
    metrics::EVENTS_FAILED.inc_by(out.failed as u64);
    metrics::SEQ_ANOMALIES.inc_by(out.anomalies as u64);
    metrics::record_lag("persist", out.inserted_ts.iter().copied());
    if out.failed > 0 {
        tracing::warn!(count = out.failed, "entries recorded in failed_events");
    }
}

/// Capped exponential backoff: base * 2^attempt, at most cap.
pub fn backoff_ms(base: u64, cap: u64, attempt: u32) -> u64 {
    base.max(1)
        .saturating_mul(1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX))
        .min(cap.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_exponential() {
        assert_eq!(backoff_ms(100, 10_000, 0), 100);
        assert_eq!(backoff_ms(100, 10_000, 1), 200);
        assert_eq!(backoff_ms(100, 10_000, 5), 3_200);
        assert_eq!(backoff_ms(100, 10_000, 7), 10_000);
        assert_eq!(backoff_ms(100, 10_000, 1_000), 10_000);
    }
}
