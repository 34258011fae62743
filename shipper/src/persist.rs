//! The persist stage: Kafka -> Postgres, with the Kafka positions kept in Postgres.
//!
//! By default every partition of the topic (or of this instance's shard, `--persist-shard
//! i/n`) is assigned to this one consumer (no group join, no rebalance, no heartbeats: nothing
//! on the critical path depends on the broker's group coordinator). With `--persist-group`
//! the instances of `--kafka-group` share the partitions through the broker's consumer group
//! (static membership with `--kafka-instance-id`); the rebalance callback loads the stored positions of every partition
//! it is given. Either way each partition starts at its position stored in `kafka_offsets`,
//! which each batch's transaction advances together with the events, fenced: the batch is
//! stored only if the position is still the one it continued from (`db::Position`), so an
//! instance that lost a partition writes nothing of it and re-reads from the stored
//! positions. Offsets are also committed to the broker, asynchronously and only so that lag
//! tools see them. A stored position below the broker's earliest offset means retention
//! deleted events that were never persisted: that stops the process with the partitions
//! and ranges named, never a silent skip.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::{backoff_ms, BatchOpts, KafkaOpts};
use crate::db::{self, Position};
use crate::kafka_client::{base_config, QuietContext, H_ERROR, H_SOURCE, H_STREAM, H_STREAM_ID};
use crate::metrics;
use crate::persist_group::{at_positions, GroupLoader, Owned, PersistContext};
use crate::pipeline::{Delivered, Sink};
use crate::record::Record;
use crate::sink_pg::PgSink;

/// Timeout of one metadata / watermark request to the broker.
const BROKER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn header(m: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `redis:<stream>/<entry id>` -> (stream, entry id). Stream names (`<prefix>:log[:{tag}]`)
/// contain no `/`; the entry id is `<ms>-<n>`.
pub fn stream_coordinates(source: &str) -> Option<(&str, &str)> {
    let (stream, id) = source.strip_prefix("redis:")?.rsplit_once('/')?;
    crate::record::parse_stream_id(id)?;
    Some((stream, id))
}

/// Kafka message -> pipeline record (never fails: problems become the record's error).
pub fn message_to_record(m: &BorrowedMessage<'_>) -> Record {
    let coord = format!("kafka:{}/{}/{}", m.topic(), m.partition(), m.offset());
    let (source, via) = match header(m, H_SOURCE) {
        Some(s) => (s, Some(coord)),
        None => (coord, None),
    };
    // messages from forward before 2026-11 carry the stream and entry id as headers too
    let (stream, stream_id) = match (header(m, H_STREAM), header(m, H_STREAM_ID)) {
        (Some(s), Some(id)) => (Some(s), Some(id)),
        _ => match stream_coordinates(&source) {
            Some((s, id)) => (Some(s.to_string()), Some(id.to_string())),
            None => (None, None),
        },
    };
    let (raw, err) = match m.payload() {
        None => (
            String::new(),
            Some("Kafka message without payload".to_string()),
        ),
        Some(p) => match std::str::from_utf8(p) {
            Ok(s) => (s.to_string(), header(m, H_ERROR)),
            Err(_) => (
                String::from_utf8_lossy(p).into_owned(),
                Some("Kafka payload is not UTF-8".to_string()),
            ),
        },
    };
    Record::new(source, via, stream, stream_id, raw, err)
}

/// Positions after a batch: per (topic, partition) the highest offset seen + 1, continuing
/// from the stored position `from` gives.
pub fn next_positions(
    seen: impl IntoIterator<Item = (String, i32, i64)>,
    from: impl Fn(i32) -> Option<i64>,
) -> Vec<Position> {
    let mut max: HashMap<(String, i32), i64> = HashMap::new();
    for (t, p, o) in seen {
        let e = max.entry((t, p)).or_insert(o);
        *e = (*e).max(o);
    }
    let mut out: Vec<Position> = max
        .into_iter()
        .map(|((topic, partition), o)| Position {
            topic,
            partition,
            from: from(partition),
            next_offset: o + 1,
        })
        .collect();
    out.sort();
    out
}

/// A batch read from Kafka: each record with its (topic, partition, offset).
pub type Batch = Vec<(Record, (String, i32, i64))>;

/// Keeps the messages of partitions this instance owns, at or past the position they
/// continue from (a message from before an assignment or a re-read is dropped); the
/// positions the kept ones lead to; and how many messages were dropped.
pub fn owned_part(
    batch: Batch,
    owned: &BTreeMap<i32, Option<i64>>,
) -> (Vec<Record>, Vec<Position>, usize) {
    let total = batch.len();
    let (recs, coords): (Vec<Record>, Vec<(String, i32, i64)>) = batch
        .into_iter()
        .filter(|(_, (_, p, o))| {
            owned
                .get(p)
                .is_some_and(|from| from.is_none_or(|f| *o >= f))
        })
        .unzip();
    let dropped = total - recs.len();
    let positions = next_positions(coords, |p| owned.get(&p).copied().flatten());
    (recs, positions, dropped)
}

/// Where to start each partition, given the stored positions and the broker's (low, high)
/// watermarks. Err names every partition whose unpersisted events the broker no longer has.
pub fn start_offsets(
    topic: &str,
    watermarks: &BTreeMap<i32, (i64, i64)>,
    stored: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, Option<i64>>, String> {
    let mut out = BTreeMap::new();
    let mut lost = Vec::new();
    for (&p, &(low, high)) in watermarks {
        match stored.get(&p) {
            Some(&next) if next < low => lost.push(format!("partition {p}: offsets {next}..{} (earliest now {low})", low - 1)),
            Some(&next) if next > high => lost.push(format!(
                "partition {p}: stored position {next} is past the end {high} (was the topic deleted and recreated?)"
            )),
            Some(&next) => {
                out.insert(p, Some(next));
            }
            None => {
                out.insert(p, None); // never persisted anything: from the beginning
            }
        }
    }
    if lost.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "topic {topic}: events were deleted by Kafka retention before they were persisted: {}. \
             They are not in Postgres; replay them from another copy, or delete the kafka_offsets rows to start over",
            lost.join("; ")
        ))
    }
}

fn consumer_config(k: &KafkaOpts) -> anyhow::Result<rdkafka::ClientConfig> {
    let mut c = base_config(k)?;
    // without --persist-group, group.id only names the offsets committed for lag tools
    c.set("group.id", &k.kafka_group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error");
    if let Some(id) = k.kafka_instance_id.as_deref().filter(|_| k.persist_group) {
        c.set("group.instance.id", id);
    }
    for (key, v) in &k.opts {
        c.set(key, v);
    }
    Ok(c)
}

fn consumer(k: &KafkaOpts) -> anyhow::Result<StreamConsumer<QuietContext>> {
    consumer_config(k)?
        .create_with_context(QuietContext)
        .context("creating Kafka consumer")
}

/// (low, high) watermarks of every partition of the topic.
fn watermarks<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    c: &C,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let meta = c
        .fetch_metadata(Some(topic), BROKER_REQUEST_TIMEOUT)
        .context("topic metadata")?;
    let t = meta
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("topic not in metadata")?;
    if let Some(e) = t.error() {
        anyhow::bail!("topic {topic}: {:?}", e);
    }
    let mut out = BTreeMap::new();
    for p in t.partitions() {
        let w = c
            .fetch_watermarks(topic, p.id(), BROKER_REQUEST_TIMEOUT)
            .with_context(|| format!("watermarks of partition {}", p.id()))?;
        out.insert(p.id(), w);
    }
    if out.is_empty() {
        anyhow::bail!("topic {topic} has no partitions yet");
    }
    Ok(out)
}

/// Messages of the topic that `persist` has not stored in Postgres yet: per partition the
/// broker's end minus the stored position (or minus the earliest offset when none is stored).
/// `restore` refuses to run while this is not zero.
pub async fn unpersisted(k: &KafkaOpts, pool: &sqlx::PgPool) -> anyhow::Result<u64> {
    let stored = crate::db::load_positions(pool, &k.topic)
        .await
        .context("reading kafka_offsets")?;
    let (k2, topic) = (k.clone(), k.topic.clone());
    let marks = tokio::task::spawn_blocking(move || watermarks(&consumer(&k2)?, &topic))
        .await
        .context("watermark task")??;
    Ok(unpersisted_count(&marks, &stored))
}

pub fn unpersisted_count(
    watermarks: &BTreeMap<i32, (i64, i64)>,
    stored: &BTreeMap<i32, i64>,
) -> u64 {
    watermarks
        .iter()
        .map(|(p, &(low, high))| {
            let from = stored.get(p).copied().unwrap_or(low).max(low);
            u64::try_from(high - from).unwrap_or(0)
        })
        .sum()
}

pub struct Persist {
    k: KafkaOpts,
    batch: BatchOpts,
    pg: PgSink,
    shutdown: CancellationToken,
    consumer: StreamConsumer<PersistContext>,
    /// the partitions this instance owns and the stored position each continues from
    owned: Arc<Mutex<Owned>>,
}

/// What the assignment step concluded.
enum Assign {
    Done,
    /// retrying cannot help
    Fatal(String),
}

impl Persist {
    pub fn new(
        k: KafkaOpts,
        batch: BatchOpts,
        pg: PgSink,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Persist> {
        if k.persist_group && k.persist_shard.count > 1 {
            anyhow::bail!("--persist-group and --persist-shard exclude each other: the group shares the partitions itself");
        }
        let owned = Arc::new(Mutex::new(Owned::default()));
        let group = k
            .persist_group
            .then(|| GroupLoader::new(pg.pool.clone(), k.topic.clone(), shutdown.clone()));
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
        let stored = db::load_positions(&self.pg.pool, &topic)
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
        let stored = db::load_positions(&self.pg.pool, &self.k.topic)
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
        let stored = db::load_positions(&self.pg.pool, &topic).await;
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
                Ok(Ok(m)) => out.push((message_to_record(&m), (m.topic().to_string(), m.partition(), m.offset()))),
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
    async fn step(&mut self, sink: &Sink, idle: Duration) -> anyhow::Result<()> {
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
        match sink
            .deliver(&recs, &positions, &self.batch)
            .await
            .map_err(|f| anyhow::anyhow!(f.0))?
        {
            Delivered::Done => {
                self.owned().advance(&positions);
                self.commit_to_broker(&positions);
                Ok(())
            }
            Delivered::Fenced => {
                tracing::warn!(partitions = ?positions.iter().map(|p| p.partition).collect::<Vec<_>>(),
                    "another persist instance moved these partitions' stored positions; nothing of this batch was written, reading again from the stored positions");
                self.reposition().await
            }
        }
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        if !self.assign().await? {
            return Ok(());
        }
        let sink = Sink::Pg(self.pg.clone());
        let metadata_every = Duration::from_millis(self.k.kafka_metadata_interval_ms.max(1_000));
        let mut last_metadata = Instant::now();
        while !self.shutdown.is_cancelled() {
            if last_metadata.elapsed() >= metadata_every {
                last_metadata = Instant::now();
                if self.topic_grew() && !self.assign().await? {
                    break;
                }
            }
            self.step(&sink, metadata_every).await?;
        }
        tracing::info!("persist stopped");
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_position_per_partition() {
        let seen = vec![
            ("t".to_string(), 0, 5),
            ("t".to_string(), 1, 9),
            ("t".to_string(), 0, 7),
            ("t".to_string(), 0, 6),
            ("u".to_string(), 0, 0),
        ];
        let pos = |t: &str, p, o| Position {
            topic: t.into(),
            partition: p,
            from: (p == 1).then_some(3),
            next_offset: o,
        };
        let from = |p| (p == 1).then_some(3);
        assert_eq!(
            next_positions(seen, from),
            vec![pos("t", 0, 8), pos("t", 1, 10), pos("u", 0, 1)]
        );
        assert!(next_positions(Vec::new(), from).is_empty());
    }

    #[test]
    fn only_owned_partitions_at_or_past_their_position_are_stored() {
        let rec = |p: i32, o: i64| {
            (
                Record::new(
                    format!("kafka:t/{p}/{o}"),
                    None,
                    None,
                    None,
                    "{}".into(),
                    None,
                ),
                ("t".to_string(), p, o),
            )
        };
        let owned = BTreeMap::from([(0, Some(10)), (1, None)]);
        let batch = vec![
            rec(0, 9),
            rec(0, 10),
            rec(0, 12),
            rec(1, 0),
            rec(1, 4),
            rec(2, 50),
        ];
        let (recs, positions, dropped) = owned_part(batch, &owned);
        assert_eq!(recs.len(), 4);
        assert_eq!(
            dropped, 2,
            "offset 9 is before partition 0's position; partition 2 is not owned"
        );
        let pos = |partition, from, next_offset| Position {
            topic: "t".into(),
            partition,
            from,
            next_offset,
        };
        assert_eq!(positions, vec![pos(0, Some(10), 13), pos(1, None, 5)]);
        let (recs, positions, dropped) = owned_part(vec![rec(2, 1)], &owned);
        assert!(recs.is_empty() && positions.is_empty());
        assert_eq!(dropped, 1);
    }

    #[test]
    fn start_from_stored_positions_or_the_beginning() {
        let marks = BTreeMap::from([(0, (0, 100)), (1, (10, 50)), (2, (0, 0))]);
        let stored = BTreeMap::from([(0, 40), (1, 10)]);
        let got = start_offsets("t", &marks, &stored).unwrap();
        assert_eq!(
            got,
            BTreeMap::from([(0, Some(40)), (1, Some(10)), (2, None)])
        );
        // a position at the end is fine (everything persisted)
        assert!(start_offsets("t", &marks, &BTreeMap::from([(0, 100)])).is_ok());
    }

    #[test]
    fn stream_coordinates_come_from_the_source() {
        assert_eq!(
            stream_coordinates("redis:tally:log/1732272000123-5"),
            Some(("tally:log", "1732272000123-5"))
        );
        assert_eq!(
            stream_coordinates("redis:tally:log:{t1}/1-0"),
            Some(("tally:log:{t1}", "1-0"))
        );
        assert_eq!(stream_coordinates("kafka:tally.events/0/5"), None);
        assert_eq!(stream_coordinates("redis:tally:log/not-an-id"), None);
    }

    #[test]
    fn unpersisted_messages_count_from_the_stored_position() {
        let marks: BTreeMap<i32, (i64, i64)> = [(0, (0, 10)), (1, (5, 8)), (2, (0, 0))].into();
        assert_eq!(unpersisted_count(&marks, &BTreeMap::new()), 13);
        assert_eq!(unpersisted_count(&marks, &[(0, 10), (1, 6)].into()), 2);
        // a position below the earliest offset counts only what the broker still has
        assert_eq!(unpersisted_count(&marks, &[(0, 10), (1, 2)].into()), 3);
    }

    #[test]
    fn retention_that_deleted_unpersisted_events_is_named() {
        let marks = BTreeMap::from([(0, (0, 100)), (1, (30, 50))]);
        let stored = BTreeMap::from([(0, 40), (1, 12)]);
        let e = start_offsets("t", &marks, &stored).unwrap_err();
        assert!(
            e.contains("partition 1: offsets 12..29 (earliest now 30)"),
            "{e}"
        );
        assert!(!e.contains("partition 0"), "{e}");
        let e = start_offsets("t", &marks, &BTreeMap::from([(0, 101)])).unwrap_err();
        assert!(e.contains("past the end"), "{e}");
    }
}
