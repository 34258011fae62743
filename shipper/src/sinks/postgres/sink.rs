//! Postgres as a sink: one transaction per batch under bounded waits, retried until stored,
//! and the error policy that keeps one bad event from wedging a stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::batch::{persist_batch, Outcome};
use super::fence::Position;
use super::seqs;
use crate::cli::BatchOpts;
use crate::event::Record;
use crate::obs::health::{Step, Wait};
use crate::obs::metrics;
use crate::retry::{observe_batch, until_durable, Failure, Fatal, Stage};

/// The pool, the client-side deadline of one batch transaction, and the keys whose
/// watermark a concurrent commit may have left behind (see `seqs::repair`).
#[derive(Clone)]
pub(crate) struct PgSink {
    pub(crate) pool: PgPool,
    pub(crate) batch_deadline: Duration,
    behind: Arc<Mutex<HashMap<String, u32>>>,
}

/// How often keys left behind are recomputed, how many per pass, and how many passes a key
/// gets before it is left to `reconcile` (a real early arrival or gap stays behind).
const REPAIR_INTERVAL: Duration = Duration::from_millis(1_000);
const REPAIR_KEYS_PER_PASS: usize = 1_000;
const REPAIR_PASSES: u32 = 10;

async fn repair_loop(pool: PgPool, behind: Arc<Mutex<HashMap<String, u32>>>) {
    match seqs::repair_all(&pool).await {
        Ok(n) if n > 0 => tracing::info!(
            keys = n,
            "keys whose history waits for missing seqs (reconcile names them once drained)"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(error = %e, "start-up watermark repair failed; reconcile repeats it")
        }
    }
    loop {
        tokio::time::sleep(REPAIR_INTERVAL).await;
        let keys: Vec<(String, u32)> = {
            let mut q = behind.lock().unwrap_or_else(|e| e.into_inner());
            let take: Vec<String> = q.keys().take(REPAIR_KEYS_PER_PASS).cloned().collect();
            take.into_iter()
                .filter_map(|k| q.remove_entry(&k))
                .collect()
        };
        if keys.is_empty() {
            continue;
        }
        let names: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
        match seqs::repair(&pool, &names).await {
            Ok(still) => {
                let still: std::collections::HashSet<String> = still.into_iter().collect();
                let mut q = behind.lock().unwrap_or_else(|e| e.into_inner());
                for (k, passes) in keys {
                    if still.contains(&k) && passes + 1 < REPAIR_PASSES {
                        q.insert(k, passes + 1);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "watermark repair failed; retried next pass");
                let mut q = behind.lock().unwrap_or_else(|e| e.into_inner());
                q.extend(keys);
            }
        }
    }
}

/// How a delivery to Postgres ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Postgres holds the batch
    Done,
    /// nothing was written: another `persist` instance moved a Kafka position the batch
    /// continued from (see `Position`)
    Fenced,
}

/// The counters of a stored batch.
fn account(out: &Outcome) {
    metrics::EVENTS_PERSISTED.inc_by(out.inserted as u64);
    metrics::EVENTS_DUPLICATE.inc_by(out.duplicates as u64);
    metrics::EVENTS_FAILED.inc_by(out.failed as u64);
    metrics::SEQ_ANOMALIES.inc_by(out.anomalies as u64);
    metrics::record_lag("persist", out.inserted_ts.iter().copied());
    if out.failed > 0 {
        tracing::warn!(count = out.failed, "entries recorded in failed_events");
    }
}

/// What a failed batch means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// the database is unavailable, slow or busy: retry the batch with backoff
    Transient,
    /// retrying cannot help (schema missing, permission denied, wrong database): stop
    Permanent,
    /// the data itself is refused: isolate the offending events into failed_events
    Data,
}

/// A month partition detached under a batch is transient (`months`). SQLSTATE classes: 08 connection, 40 transaction rollback (serialization, deadlock),
/// 53 insufficient resources, 57 operator intervention (incl. statement timeout 57014),
/// 55P03 lock not available; 28 auth, 3D/3F missing database/schema, 42501 privilege,
/// 42P01/42703/42883 missing table/column/function (migrations not applied).
pub(crate) fn classify(e: &sqlx::Error) -> ErrorClass {
    if super::months::is_missing_month(e) {
        return ErrorClass::Transient;
    }
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.to_string()).unwrap_or_default();
            let class = code.get(..2).unwrap_or("");
            if matches!(class, "08" | "40" | "53" | "57") || code == "55P03" {
                ErrorClass::Transient
            } else if matches!(class, "28" | "3D" | "3F")
                || matches!(code.as_str(), "42501" | "42P01" | "42703" | "42883")
            {
                ErrorClass::Permanent
            } else {
                ErrorClass::Data
            }
        }
        sqlx::Error::Configuration(_) => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

/// A failure that retrying cannot fix, with the fix named.
pub(crate) fn permanent_message(e: &sqlx::Error) -> String {
    let hint = match e {
        sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("42P01" | "42703" | "42883")) => {
            "the schema is missing or old: run `tally-shipper migrate --database-url ...` (or start with --migrate)"
        }
        sqlx::Error::Database(d) if d.code().as_deref() == Some("42501") => {
            "the database user lacks a privilege on tally's tables: GRANT it, or use the user that ran the migrations"
        }
        _ => "check --database-url and the database's state",
    };
    format!("Postgres refused the batch permanently: {e}; {hint}")
}

impl PgSink {
    /// Also starts the watermark repair task (runs until the process exits).
    pub(crate) fn new(pool: PgPool, pg: &crate::cli::PgOpts) -> PgSink {
        let behind: Arc<Mutex<HashMap<String, u32>>> = Default::default();
        tokio::spawn(repair_loop(pool.clone(), behind.clone()));
        PgSink {
            pool,
            batch_deadline: Duration::from_millis(pg.batch_deadline_ms()),
            behind,
        }
    }

    /// At shutdown, after the last commit: leave every watermark exact.
    pub(crate) async fn finish(&self) {
        self.behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if let Err(e) = seqs::repair_all(&self.pool).await {
            tracing::warn!(error = %e, "final watermark repair failed; the next start or reconcile repeats it");
        }
    }

    fn note_behind(&self, out: &Outcome) {
        if out.behind_keys.is_empty() {
            return;
        }
        let mut q = self.behind.lock().unwrap_or_else(|e| e.into_inner());
        for k in &out.behind_keys {
            q.entry(k.clone()).or_insert(0);
        }
    }

    /// Direct path: stores the batch, retrying transient failures (nothing is acknowledged
    /// meanwhile). Err: retrying cannot help; nothing of the batch is stored.
    pub(crate) async fn store(&self, recs: &[Record], b: &BatchOpts) -> Result<(), Fatal> {
        // without Kafka positions there is no fence: a batch is never refused as fenced
        let stored = self.deliver(recs, &[], b).await?;
        debug_assert_eq!(stored, Stored::Done);
        Ok(())
    }

    /// persist: stores the batch with the Kafka positions it leads to, fenced: `Fenced` when
    /// another instance moved one of the positions it continues from (nothing was written).
    pub(crate) async fn store_fenced(
        &self,
        recs: &[Record],
        positions: &[Position],
        b: &BatchOpts,
    ) -> Result<Stored, Fatal> {
        self.deliver(recs, positions, b).await
    }

    async fn deliver(
        &self,
        recs: &[Record],
        positions: &[Position],
        b: &BatchOpts,
    ) -> Result<Stored, Fatal> {
        let started = Instant::now();
        // /healthz: the batch waits for Postgres until a transaction of it commits
        let wait = Wait::start(Step::Persist);
        let out = until_durable(Stage::Persist, recs.len(), b, || async {
            match self.persist(recs, positions, &wait).await {
                Ok(out) => Ok(out),
                Err(e) if classify(&e) == ErrorClass::Permanent => {
                    Err(Failure::Stop(Fatal(permanent_message(&e))))
                }
                Err(e) => Err(Failure::Retry(e.into())),
            }
        })
        .await?;
        if out.fenced {
            metrics::KAFKA_FENCED.inc();
            return Ok(Stored::Fenced);
        }
        account(&out);
        observe_batch(Stage::Persist, recs.len(), started);
        Ok(Stored::Done)
    }

    /// Persist a batch; when Postgres refuses the data itself, isolate the offending records
    /// one by one into failed_events so they never block the rest. Positions are stored with
    /// the batch, or after the isolated records (each of which checks the fence). A fenced
    /// outcome wrote nothing more.
    async fn persist(
        &self,
        recs: &[Record],
        positions: &[Position],
        wait: &Wait,
    ) -> Result<Outcome, sqlx::Error> {
        let out = self.persist_isolating(recs, positions, wait).await?;
        self.note_behind(&out);
        Ok(out)
    }

    async fn persist_isolating(
        &self,
        recs: &[Record],
        positions: &[Position],
        wait: &Wait,
    ) -> Result<Outcome, sqlx::Error> {
        match self.once(recs, positions, true, wait).await {
            Err(e) if classify(&e) == ErrorClass::Data && !recs.is_empty() => {
                tracing::warn!(error = %e, batch = recs.len(), "batch refused by Postgres, isolating its records");
                let mut total = Outcome::default();
                for r in recs {
                    total.add(self.persist_one(r, positions, wait).await?);
                    if total.fenced {
                        return Ok(total);
                    }
                }
                total.add(self.once(&[], positions, true, wait).await?);
                Ok(total)
            }
            other => other,
        }
    }

    async fn persist_one(
        &self,
        r: &Record,
        positions: &[Position],
        wait: &Wait,
    ) -> Result<Outcome, sqlx::Error> {
        match self
            .once(std::slice::from_ref(r), positions, false, wait)
            .await
        {
            Err(e) if classify(&e) == ErrorClass::Data => {
                let mut bad = r.clone();
                bad.decoded = Err(format!("refused by Postgres: {e}"));
                self.once(std::slice::from_ref(&bad), positions, false, wait)
                    .await
            }
            other => other,
        }
    }

    /// One transaction under the client-side deadline: a server that accepted the
    /// connection and then stopped answering fails the batch instead of hanging it (and
    /// shows in /healthz long before that, through `wait`, which a commit moves on).
    async fn once(
        &self,
        recs: &[Record],
        positions: &[Position],
        advance: bool,
        wait: &Wait,
    ) -> Result<Outcome, sqlx::Error> {
        match tokio::time::timeout(
            self.batch_deadline,
            persist_batch(&self.pool, recs, positions, advance),
        )
        .await
        {
            Ok(Ok(out)) => {
                wait.again(Duration::ZERO);
                Ok(out)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "batch transaction exceeded {} ms",
                    self.batch_deadline.as_millis()
                ),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_and_pool_errors_are_transient() {
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
        assert_eq!(
            classify(&sqlx::Error::Io(std::io::Error::other("x"))),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(&sqlx::Error::Configuration("bad url".into())),
            ErrorClass::Permanent
        );
    }
}
