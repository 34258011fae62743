//! Retrying with capped exponential backoff: a start-up step (`with_retry`), and the delivery
//! of a batch to the next durable stage (`until_durable`), which ends when the stage holds the
//! batch or with a `Fatal` error when retrying cannot help.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::cli::BatchOpts;
use crate::obs::{health, metrics};

/// Capped exponential backoff: base * 2^attempt, at most cap.
pub(crate) fn backoff_ms(base: u64, cap: u64, attempt: u32) -> u64 {
    base.max(1)
        .saturating_mul(1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX))
        .min(cap.max(1))
}

/// Retries a start-up step while Postgres is not reachable yet (about 2 minutes in all).
pub(crate) async fn with_retry<T, F, Fut>(what: &str, f: F) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 30 => {
                tracing::warn!(error = %format!("{e:#}"), attempt, step = what, "start-up step failed, retrying");
                tokio::time::sleep(Duration::from_millis(backoff_ms(200, 5_000, attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Why the process must stop: retrying cannot help. It travels up to `main` (exit code 1);
/// whatever it concerned stays unacknowledged, to be shipped again by the next run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fatal(pub(crate) String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// How one attempt to deliver a batch failed.
pub(crate) enum Failure<S> {
    /// the next stage is unavailable, slow or busy: the batch is retried with backoff
    Retry(anyhow::Error),
    /// retrying cannot help (`S`: why; `Infallible` for a stage that only ever retries)
    Stop(S),
}

/// The next durable stage a batch is delivered to: the label of the delivery metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// to Kafka
    Forward,
    /// to Postgres (the direct writers and persist)
    Persist,
}

impl Stage {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Stage::Forward => "forward",
            Stage::Persist => "persist",
        }
    }
}

/// Runs `attempt` until the next stage holds the batch (Ok) or retrying cannot help (Err):
/// transient failures are retried with capped exponential backoff (--retry-backoff-ms,
/// --retry-backoff-cap-ms), and nothing is acknowledged meanwhile. /healthz and the failure
/// metrics follow every attempt.
pub(crate) async fn until_durable<T, S, F, Fut>(
    stage: Stage,
    batch_len: usize,
    b: &BatchOpts,
    mut attempt: F,
) -> Result<T, S>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure<S>>>,
{
    let mut n = 0u32;
    loop {
        let failure = match attempt().await {
            Ok(v) => {
                health::set_failing(false);
                return Ok(v);
            }
            Err(f) => f,
        };
        health::set_failing(true);
        metrics::DELIVERY_FAILURES
            .with_label_values(&[stage.label()])
            .inc();
        let e = match failure {
            Failure::Stop(why) => return Err(why),
            Failure::Retry(e) => e,
        };
        let wait = backoff_ms(b.retry_backoff_ms, b.retry_backoff_cap_ms, n);
        metrics::RETRIES.inc();
        tracing::warn!(stage = stage.label(), batch = batch_len, attempt = n, retry_in_ms = wait, error = %format!("{e:#}"),
            "delivery failed, will retry");
        tokio::time::sleep(Duration::from_millis(wait)).await;
        n = n.saturating_add(1);
    }
}

/// A batch the next stage holds now: its size, and how long its delivery took (retries
/// included) since `started`.
pub(crate) fn observe_batch(stage: Stage, batch_len: usize, started: Instant) {
    metrics::BATCH_SIZE
        .with_label_values(&[stage.label()])
        .observe(batch_len as f64);
    metrics::BATCH_SECONDS
        .with_label_values(&[stage.label()])
        .observe(started.elapsed().as_secs_f64());
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
