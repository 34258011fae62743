//! The persist stage: Kafka -> Postgres, with the Kafka positions kept in Postgres.
//!
//! By default every partition of the topic (or of this instance's shard, `--persist-shard
//! i/n`) is assigned to this one consumer (no group join, no rebalance, no heartbeats: nothing
//! on the critical path depends on the broker's group coordinator). With `--persist-group`
//! the instances of `--kafka-group` share the partitions through the broker's consumer group
//! (static membership with `--kafka-instance-id`); the rebalance callback loads the stored
//! positions of every partition it is given. Either way each partition starts at its
//! position stored in `kafka_offsets`, which each batch's transaction advances together with
//! the events, fenced: the batch is stored only if the position is still the one it
//! continued from (`sinks::postgres::Position`), so an instance that lost a partition writes
//! nothing of it and re-reads from the stored positions. Offsets are also committed to the
//! broker, asynchronously and only so that lag tools see them. A stored position below the
//! broker's earliest offset means retention deleted events that were never persisted: that
//! stops the process with the partitions and ranges named, never a silent skip.
//!
//! In: Kafka messages (`sinks::kafka` consumer). Out: batches stored in Postgres with their
//! positions (`PgSink::store_fenced`); offsets committed to the broker for lag tools.
//!
//! - `offsets`: start offsets, the owned part of a batch, the positions it leads to;
//! - `owned`: the partitions this instance owns; `group`: the rebalance callback.

mod group;
mod offsets;
mod owned;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::cli::{BatchOpts, KafkaOpts};
use crate::obs::metrics;
use crate::retry::{backoff_ms, Fatal};
use crate::sinks::kafka::{consumer_config, message_to_record, watermarks, BROKER_REQUEST_TIMEOUT};
use crate::sinks::postgres::{load_positions, PgSink, Position, Stored};
use group::{GroupLoader, PersistContext};
use offsets::{owned_part, start_offsets, Batch, Consumed};
use owned::{at_positions, Owned};

pub(crate) struct Persist {
    k: KafkaOpts,
    batch: BatchOpts,
    pg: PgSink,
    shutdown: CancellationToken,
    consumer: StreamConsumer<PersistContext>,
    /// the partitions this instance owns and the stored position each continues from
    owned: Arc<Mutex<Owned>>,
    /// --persist-group: a failure the rebalance callback met (returned by `run`)
    group_failed: Arc<OnceLock<Fatal>>,
}

/// What the assignment step concluded.
enum Assign {
    Done,
    /// retrying cannot help
    Fatal(String),
}

impl Persist {
    pub(crate) fn new(
        k: KafkaOpts,
        batch: BatchOpts,
        pg: PgSink,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Persist> {
        if k.persist_group && k.persist_shard.count > 1 {
            anyhow::bail!("--persist-group and --persist-shard exclude each other: the group shares the partitions itself");
        }
        let owned = Arc::new(Mutex::new(Owned::default()));
        let group_failed = Arc::new(OnceLock::new());
        let group = k.persist_group.then(|| {
            GroupLoader::new(
                pg.pool.clone(),
                k.topic.clone(),
                shutdown.clone(),
                group_failed.clone(),
            )
        });
        let ctx = PersistContext::new(owned.clone(), group);
        let consumer = consumer_config(&k)?
            .create_with_context(ctx)
            .context("creating Kafka consumer")?;
        Ok(Persist {
            k,
            batch,
            pg,
            shutdown,
            consumer,
            owned,
            group_failed,
        })
    }

    fn owned(&self) -> MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Assign every partition at its stored position (or, with --persist-group, join the
    /// group: the rebalance callback does it); retries while the broker or Postgres is
    /// unavailable. Returns false when shut down first.
    async fn assign(&mut self) -> anyhow::Result<bool> {
        if self.k.persist_group {
            self.consumer
                .subscribe(&[&self.k.topic])
                .context("subscribe")?;
            tracing::info!(topic = %self.k.topic, group = %self.k.kafka_group, "joining the consumer group; positions come from Postgres at every assignment");
            return Ok(true);
        }
        let mut attempt = 0u32;
        loop {
            match self.try_assign().await {
                Ok(Assign::Done) => return Ok(true),
                Ok(Assign::Fatal(msg)) => anyhow::bail!(msg),
                Err(e) => {
                    let wait = backoff_ms(
                        self.batch.retry_backoff_ms,
                        self.batch.retry_backoff_cap_ms,
                        attempt,
                    );
                    tracing::warn!(topic = %self.k.topic, error = %format!("{e:#}"), retry_in_ms = wait, "cannot assign partitions yet");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        _ = self.shutdown.cancelled() => return Ok(false),
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    async fn try_assign(&mut self) -> anyhow::Result<Assign> {
        let topic = self.k.topic.clone();
        let shard = self.k.persist_shard;
        // positions first: a position stored after the watermarks were read could be past them
        let stored = load_positions(&self.pg.pool, &topic)
            .await
            .context("loading positions from Postgres")?;
        let mut marks = tokio::task::block_in_place(|| watermarks(&self.consumer, &topic))?;
        marks.retain(|p, _| shard.owns(*p));
        let starts = match start_offsets(&topic, &marks, &stored) {
            Ok(s) => s,
            Err(msg) => return Ok(Assign::Fatal(msg)),
        };
        self.consumer
            .assign(&at_positions(&topic, &starts)?)
            .context("assign")?;
        self.owned().replace(starts.clone());
        tracing::info!(topic = %topic, partitions = starts.len(), shard = %shard, stored = stored.len(), "consuming from the positions stored in Postgres");
        Ok(Assign::Done)
    }

    /// Another instance moved a position this one continued from: read every owned partition
    /// again from its stored position. A seek, not a new assignment: librdkafka 2.12 aborts
    /// the process (assertion `rktp_started`) when partitions assigned again before they
    /// started are stopped by a shutdown.
    async fn reposition(&mut self) -> anyhow::Result<()> {
        let stored = load_positions(&self.pg.pool, &self.k.topic)
            .await
            .context("loading positions from Postgres")?;
        let from: BTreeMap<i32, Option<i64>> = self
            .owned()
            .from
            .keys()
            .map(|p| (*p, stored.get(p).copied()))
            .collect();
        let tpl = at_positions(&self.k.topic, &from)?;
        tokio::task::block_in_place(|| self.consumer.seek_partitions(tpl, BROKER_REQUEST_TIMEOUT))
            .context("seek to the stored positions")?;
        self.owned().replace(from);
        Ok(())
    }

    /// A partition added to the topic since the last assignment (the group finds those itself).
    fn topic_grew(&self) -> bool {
        if self.k.persist_group {
            return false;
        }
        let meta = tokio::task::block_in_place(|| {
            self.consumer
                .fetch_metadata(Some(&self.k.topic), BROKER_REQUEST_TIMEOUT)
        });
        let assigned = self.owned().from.len();
        meta.ok()
            .and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == self.k.topic)
                    .map(|t| {
                        t.partitions()
                            .iter()
                            .filter(|p| self.k.persist_shard.owns(p.id()))
                            .count()
                    })
            })
            .map(|n| n > assigned)
            .unwrap_or(false)
    }

    /// The partitions and ranges retention deleted before they were persisted, for the error.
    async fn lost_ranges(&self) -> String {
        let topic = self.k.topic.clone();
        let stored = load_positions(&self.pg.pool, &topic).await;
        let marks = tokio::task::block_in_place(|| watermarks(&self.consumer, &topic));
        match (marks, stored) {
            (Ok(mut m), Ok(s)) => {
                let owned = self.owned();
                m.retain(|p, _| owned.from.contains_key(p));
                start_offsets(&topic, &m, &s).err().unwrap_or_else(|| "a stored Kafka position is out of range".into())
            }
            _ => "a stored Kafka position is out of range: Kafka retention deleted events before they were persisted \
                  (compare kafka_offsets with the topic's earliest offsets)"
                .into(),
        }
    }

    /// Read one batch: wait up to `idle` for the first message, then fill for batch_wait_ms.
    /// Err only for errors that retrying cannot fix. A rebalance runs inside `recv`: the
    /// messages read before it are dropped (they belong to the previous assignment; the
    /// partitions restart at their stored positions, so nothing is skipped).
    async fn read_batch(&self, idle: Duration) -> anyhow::Result<Batch> {
        let size = self.batch.batch_size.max(1);
        let mut out = Vec::new();
        let mut generation = self.owned().generation;
        let first = tokio::select! {
            m = tokio::time::timeout(idle, self.consumer.recv()) => m,
            _ = self.shutdown.cancelled() => return Ok(out),
        };
        let deadline = Instant::now() + Duration::from_millis(self.batch.batch_wait_ms);
        let mut next = first;
        loop {
            let now = self.owned().generation;
            if now != generation {
                tracing::debug!(
                    dropped = out.len(),
                    "the assignment changed while reading a batch"
                );
                out.clear();
                generation = now;
            }
            match next {
                Ok(Ok(m)) => out.push(Consumed {
                    record: message_to_record(&m),
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                }),
                Ok(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => anyhow::bail!(self.lost_ranges().await),
                Ok(Err(e @ KafkaError::MessageConsumptionFatal(_))) => anyhow::bail!(
                    "the Kafka consumer failed for good: {e} (with --persist-group: is another instance using the same --kafka-instance-id?)"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consume error");
                    break;
                }
                Err(_) => break, // no message within the wait
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if out.len() >= size || left.is_zero() {
                break;
            }
            next = tokio::time::timeout(left, self.consumer.recv()).await;
        }
        if self.owned().generation != generation {
            out.clear();
        }
        Ok(out)
    }

    /// One batch read and stored (or, fenced, read again from the stored positions).
    async fn step(&mut self, idle: Duration) -> anyhow::Result<()> {
        let batch = self.read_batch(idle).await?;
        if batch.is_empty() {
            return Ok(());
        }
        metrics::KAFKA_CONSUMED.inc_by(batch.len() as u64);
        let (recs, positions, dropped) = owned_part(batch, &self.owned().from);
        if dropped > 0 {
            tracing::debug!(
                dropped,
                "messages of partitions or offsets this instance does not own"
            );
        }
        if recs.is_empty() {
            return Ok(());
        }
        match self.pg.store_fenced(&recs, &positions, &self.batch).await? {
            Stored::Done => {
                self.owned().advance(&positions);
                self.commit_to_broker(&positions);
                Ok(())
            }
            Stored::Fenced => {
                tracing::warn!(partitions = ?positions.iter().map(|p| p.partition).collect::<Vec<_>>(),
                    "another persist instance moved these partitions' stored positions; nothing of this batch was written, reading again from the stored positions");
                self.reposition().await
            }
        }
    }

    /// Reads and stores batches until shutdown. Err: a failure retrying cannot fix (Postgres
    /// refusing for good, events deleted by retention, an assignment the group gave that
    /// cannot be taken).
    pub(crate) async fn run(mut self) -> anyhow::Result<()> {
        if !self.assign().await? {
            return Ok(());
        }
        let metadata_every = Duration::from_millis(self.k.kafka_metadata_interval_ms.max(1_000));
        let mut last_metadata = Instant::now();
        while !self.shutdown.is_cancelled() {
            if last_metadata.elapsed() >= metadata_every {
                last_metadata = Instant::now();
                if self.topic_grew() && !self.assign().await? {
                    break;
                }
            }
            self.step(metadata_every).await?;
        }
        tracing::info!("persist stopped");
        match self.group_failed.get() {
            Some(fatal) => Err(fatal.clone().into()),
            None => Ok(()),
        }
    }

    /// For lag tools only; failures are harmless (positions live in Postgres).
    fn commit_to_broker(&self, positions: &[Position]) {
        let mut tpl = TopicPartitionList::new();
        for p in positions {
            if tpl
                .add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "offset commit to the broker failed (informational only)");
        }
    }
}
