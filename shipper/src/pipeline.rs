//! Sinks (the next durable stage) and retry of transient failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::config::{backoff_ms, BatchOpts};
use crate::db;
use crate::kafka::Forwarder;
use crate::metrics;
use crate::record::Record;

/// Postgres as a sink: the pool and the client-side deadline of one batch transaction.
#[derive(Clone)]
pub struct PgSink {
    pub pool: PgPool,
    pub batch_deadline: Duration,
}

impl PgSink {
    pub fn new(pool: PgPool, pg: &crate::config::PgOpts) -> PgSink {
        PgSink { pool, batch_deadline: Duration::from_millis(pg.batch_deadline_ms()) }
    }
}

#[derive(Clone)]
pub enum Sink {
    Pg(PgSink),
    Kafka(Arc<Forwarder>),
}

impl Sink {
    fn stage(&self) -> &'static str {
        match self {
            Sink::Pg(_) => "persist",
            Sink::Kafka(_) => "forward",
        }
    }

    async fn deliver_once(&self, recs: &[Record]) -> anyhow::Result<()> {
        match self {
            Sink::Pg(pg) => {
                let out = persist_robust(pg, recs).await?;
                account(&out);
                Ok(())
            }
            Sink::Kafka(f) => {
                f.send_batch(recs).await?;
                metrics::EVENTS_FORWARDED.inc_by(recs.len() as u64);
                metrics::record_lag("forward", recs.iter().filter_map(|r| r.decoded.as_ref().ok().map(|e| e.ts)));
                Ok(())
            }
        }
    }

    /// Deliver until the next stage holds the batch durably; transient failures are retried with
    /// capped exponential backoff (nothing is acknowledged meanwhile).
    pub async fn deliver(&self, recs: &[Record], b: &BatchOpts) {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            match self.deliver_once(recs).await {
                Ok(()) => {
                    metrics::set_failing(false);
                    break;
                }
                Err(e) => {
                    metrics::set_failing(true);
                    metrics::DELIVERY_FAILURES.with_label_values(&[self.stage()]).inc();
                    let wait = backoff_ms(b.retry_backoff_ms, b.retry_backoff_cap_ms, attempt);
                    metrics::RETRIES.inc();
                    tracing::warn!(stage = self.stage(), batch = recs.len(), attempt, retry_in_ms = wait, error = %format!("{e:#}"),
                        "delivery failed, will retry");
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        metrics::BATCH_SIZE.with_label_values(&[self.stage()]).observe(recs.len() as f64);
        metrics::BATCH_SECONDS.with_label_values(&[self.stage()]).observe(started.elapsed().as_secs_f64());
    }
}

pub fn account(out: &db::Outcome) {
    metrics::EVENTS_PERSISTED.inc_by(out.inserted as u64);
    metrics::EVENTS_DUPLICATE.inc_by(out.duplicates as u64);
    metrics::EVENTS_FAILED.inc_by(out.failed as u64);
    metrics::SEQ_ANOMALIES.inc_by(out.anomalies as u64);
    metrics::record_lag("persist", out.inserted_ts.iter().copied());
    if out.failed > 0 {
        tracing::warn!(count = out.failed, "entries recorded in failed_events");
    }
}

/// SQLSTATE classes that mean "this data cannot be stored" rather than "the database is unavailable".
fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.starts_with("22") || c.starts_with("23")).unwrap_or(false),
        _ => false,
    }
}

/// Persist a batch; if Postgres rejects the data itself (not a transient failure), isolate the
/// offending records one by one into failed_events so they never block the rest.
pub async fn persist_robust(pg: &PgSink, recs: &[Record]) -> Result<db::Outcome, sqlx::Error> {
    let pool = &pg.pool;
    match persist_with_deadline(pg, recs).await {
        Err(e) if is_data_error(&e) && recs.len() > 0 => {
            tracing::warn!(error = %e, batch = recs.len(), "batch rejected by Postgres, isolating records");
            let mut total = db::Outcome::default();
            for r in recs {
                let out = match db::persist_batch(pool, std::slice::from_ref(r)).await {
                    Err(e) if is_data_error(&e) => {
                        let mut bad = r.clone();
                        bad.decoded = Err(format!("rejected by Postgres: {e}"));
                        db::persist_batch(pool, std::slice::from_ref(&bad)).await?
                    }
                    other => other?,
                };
                total.inserted += out.inserted;
                total.duplicates += out.duplicates;
                total.failed += out.failed;
                total.anomalies += out.anomalies;
                total.inserted_ts.extend(out.inserted_ts);
            }
            Ok(total)
        }
        other => other,
    }
}

/// One batch transaction under the client-side deadline: a server that accepted the
/// connection and then stopped answering fails the batch instead of hanging it.
async fn persist_with_deadline(pg: &PgSink, recs: &[Record]) -> Result<db::Outcome, sqlx::Error> {
    match tokio::time::timeout(pg.batch_deadline, db::persist_batch(&pg.pool, recs)).await {
        Ok(r) => r,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("batch transaction exceeded {} ms", pg.batch_deadline.as_millis()),
        ))),
    }
}
