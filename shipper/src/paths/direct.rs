//! Parallel Postgres writers for the direct path (stream -> Postgres).
//!
//! Each writer owns a partition of the keys (a hash of the event's first key), so one key's
//! events are always committed by the same writer in the order they were read. A transfer
//! whose second key belongs to another writer is committed by its first key's writer; the
//! second key's watermark may then lag for a moment (`seqs` repairs it). A writer merges
//! the jobs queued for it into one transaction of up to --batch-size events, then
//! acknowledges every stream entry of those jobs: the one ack path of the direct pipeline.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::BatchOpts;
use crate::event::Record;
use crate::retry::Fatal;
use crate::sinks::postgres::PgSink;
use crate::source::{Batch, Downstream};

/// The per-key Postgres writers: one queue of jobs (parts of read batches) per writer.
pub(crate) struct Writers {
    lanes: RwLock<Vec<mpsc::Sender<Batch>>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// the first failure retrying cannot fix: after it no writer stores anything more (their
    /// jobs are left pending for the next run); `finish` returns it
    failed: Arc<OnceLock<Fatal>>,
}

/// The writer that owns `key`.
pub(crate) fn lane_of(key: &str, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes.max(1) as u64) as usize
}

/// The writer of a record: its event's first key's (an undecodable record: the first).
fn lane_of_record(r: &Record, lanes: usize) -> usize {
    match &r.decoded {
        Ok(e) => lane_of(e.first_key(), lanes),
        Err(_) => 0,
    }
}

impl Writers {
    /// `n` writers, each with a queue of `queue_jobs` jobs (the read-ahead bound).
    pub(crate) fn start(
        n: usize,
        queue_jobs: usize,
        pg: PgSink,
        batch: BatchOpts,
        shutdown: CancellationToken,
    ) -> Writers {
        let failed = Arc::new(OnceLock::new());
        let mut lanes = Vec::with_capacity(n.max(1));
        let mut handles = Vec::with_capacity(n.max(1));
        for lane in 0..n.max(1) {
            let (tx, rx) = mpsc::channel(queue_jobs.max(1));
            lanes.push(tx);
            let writer = Writer {
                lane,
                pg: pg.clone(),
                batch: batch.clone(),
                shutdown: shutdown.clone(),
                failed: failed.clone(),
            };
            handles.push(tokio::spawn(writer.run(rx)));
        }
        Writers {
            lanes: RwLock::new(lanes),
            handles: Mutex::new(handles),
            failed,
        }
    }
}

impl Downstream for Writers {
    /// Splits the batch by owning writer and queues the parts (waits while a queue is full).
    /// A part whose writer is gone (shutting down) is dropped: its entries stay pending and
    /// are read again.
    async fn take(&self, batch: Batch) {
        let senders: Vec<mpsc::Sender<Batch>> =
            self.lanes.read().unwrap_or_else(|e| e.into_inner()).clone();
        let n = senders.len().max(1);
        for (lane, job) in batch
            .split(n, |r| lane_of_record(r, n))
            .into_iter()
            .enumerate()
        {
            if job.records.is_empty() {
                continue;
            }
            if let Some(tx) = senders.get(lane) {
                let _ = tx.send(job).await;
            }
        }
    }

    /// Closes the queues and waits until every queued job is committed and acknowledged (or
    /// left pending after a permanent failure).
    async fn finish(&self) -> Result<(), Fatal> {
        self.lanes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let handles: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.await;
        }
        match self.failed.get() {
            Some(fatal) => Err(fatal.clone()),
            None => Ok(()),
        }
    }
}

/// One writer: its lane of the keys, and what it needs to store and acknowledge.
struct Writer {
    lane: usize,
    pg: PgSink,
    batch: BatchOpts,
    shutdown: CancellationToken,
    failed: Arc<OnceLock<Fatal>>,
}

impl Writer {
    /// Merges the jobs queued for this writer into transactions of up to --batch-size
    /// records, each acknowledged once committed, until the queue is closed.
    async fn run(self, mut rx: mpsc::Receiver<Batch>) {
        let size = self.batch.batch_size.max(1);
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            let mut n = jobs[0].records.len();
            while n < size {
                match rx.try_recv() {
                    Ok(j) => {
                        n += j.records.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            if self.failed.get().is_some() {
                continue; // the jobs are dropped: left pending for the next run
            }
            self.store(jobs).await;
        }
    }

    /// One transaction for `jobs`, then every entry of them acknowledged. After a failure
    /// retrying cannot fix, nothing is acknowledged and the process stops.
    async fn store(&self, mut jobs: Vec<Batch>) {
        let records: Vec<Record> = jobs
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.records))
            .collect();
        match self.pg.store(&records, &self.batch).await {
            Ok(()) => {
                for j in jobs {
                    j.in_flight.ack(&self.batch, &self.shutdown).await;
                }
            }
            Err(fatal) => {
                tracing::debug!(
                    lane = self.lane,
                    "writer stops delivering after a permanent failure"
                );
                let _ = self.failed.set(fatal);
                self.shutdown.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashSet;

    #[test]
    fn a_key_always_has_the_same_writer() {
        for key in ["user:1", "acct:bank", "", "{shop}a"] {
            let l = lane_of(key, 4);
            assert!(l < 4);
            assert_eq!(l, lane_of(key, 4));
        }
        assert_eq!(lane_of("x", 1), 0);
        assert_eq!(lane_of("x", 0), 0, "no writers configured behaves as one");
        // keys spread over the writers
        let used: HashSet<usize> = (0..100).map(|i| lane_of(&format!("user:{i}"), 4)).collect();
        assert_eq!(used.len(), 4);
    }
}
