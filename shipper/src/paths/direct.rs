//! Parallel Postgres writers for the direct path (stream -> Postgres).
//!
//! Each writer owns a partition of the keys (a hash of the event's first key), so one key's
//! events are always committed by the same writer in the order they were read, and two
//! writers never wait for each other's row locks (a transfer whose second key belongs to
//! another writer is serialized by the per-key advisory locks of `seqs`). A writer merges
//! the jobs queued for it into one transaction of up to --batch-size events, then
//! acknowledges every stream entry of those jobs: the one ack path of the direct pipeline.

use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::BatchOpts;
use crate::event::Record;
use crate::retry::{self as pipeline, Sink};
use crate::sinks::postgres::PgSink;
use crate::source::{ack_with_retry, AckTarget};

struct Job {
    records: Vec<Record>,
    ids: Vec<String>,
    ack: AckTarget,
}

impl Job {
    fn release(&self) {
        self.ack.release(&self.ids);
    }
}

pub struct Writers {
    lanes: std::sync::RwLock<Vec<mpsc::Sender<Job>>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

/// The writer that owns `key`.
pub fn lane_of(key: &str, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes.max(1) as u64) as usize
}

impl Writers {
    /// `n` writers, each with a queue of `queue_jobs` jobs (the read-ahead bound).
    pub fn start(
        n: usize,
        queue_jobs: usize,
        pg: PgSink,
        batch: BatchOpts,
        shutdown: CancellationToken,
    ) -> Writers {
        let mut lanes = Vec::with_capacity(n.max(1));
        let mut handles = Vec::with_capacity(n.max(1));
        for lane in 0..n.max(1) {
            let (tx, rx) = mpsc::channel(queue_jobs.max(1));
            lanes.push(tx);
            handles.push(tokio::spawn(write_loop(
                lane,
                rx,
                pg.clone(),
                batch.clone(),
                shutdown.clone(),
            )));
        }
        Writers {
            lanes: std::sync::RwLock::new(lanes),
            handles: Mutex::new(handles),
        }
    }

    /// Split the records by owning writer and queue them (waits while a queue is full).
    pub async fn submit(&self, records: Vec<Record>, ack: &AckTarget) {
        let senders: Vec<mpsc::Sender<Job>> =
            self.lanes.read().unwrap_or_else(|e| e.into_inner()).clone();
        let n = senders.len().max(1);
        let mut parts: Vec<Job> = (0..n)
            .map(|_| Job {
                records: vec![],
                ids: vec![],
                ack: ack.clone(),
            })
            .collect();
        for r in records {
            let lane = match &r.decoded {
                Ok(e) => lane_of(e.first_key(), n),
                Err(_) => 0,
            };
            if let Some(job) = parts.get_mut(lane) {
                job.ids.extend(r.stream_id.clone());
                job.records.push(r);
            }
        }
        for (lane, job) in parts.into_iter().enumerate() {
            if job.records.is_empty() {
                continue;
            }
            match senders.get(lane) {
                Some(tx) => {
                    if let Err(e) = tx.send(job).await {
                        e.0.release(); // writer gone (shutting down): stays pending, re-read later
                    }
                }
                None => job.release(),
            }
        }
    }

    /// Close the queues and wait until every queued job is committed and acknowledged (or
    /// left pending after a permanent failure).
    pub async fn finish(&self) {
        self.lanes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let handles: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.await;
        }
    }
}

async fn write_loop(
    lane: usize,
    mut rx: mpsc::Receiver<Job>,
    pg: PgSink,
    batch: BatchOpts,
    shutdown: CancellationToken,
) {
    let sink = Sink::Pg(pg);
    let size = batch.batch_size.max(1);
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
        if pipeline::fatal_error().is_some() {
            jobs.iter().for_each(Job::release); // left pending for the next run
            continue;
        }
        let records: Vec<Record> = jobs
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.records))
            .collect();
        // no Kafka positions on the direct path, so never fenced
        match sink.deliver(&records, &[], &batch).await {
            Ok(_) => {
                for j in &jobs {
                    ack_with_retry(&j.ack, &batch, &shutdown, &j.ids).await;
                    j.release();
                }
            }
            Err(fatal) => {
                tracing::debug!(lane, "writer stops delivering after a permanent failure");
                pipeline::fail(fatal.0, &shutdown);
                jobs.iter().for_each(Job::release);
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
