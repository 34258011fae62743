//! The persist stage: Kafka -> Postgres, with the Kafka positions kept in Postgres.
//!
//! Every partition of the topic (or of this instance's shard, `--persist-shard i/n`) is
//! assigned to this one consumer (no group join, no rebalance, no heartbeats: nothing on the
//! critical path depends on the broker's group coordinator). On start it seeks to the positions stored in `kafka_offsets`, which each
//! batch's transaction advances together with the events. Offsets are also committed to the
//! broker, asynchronously and only so that lag tools see them. A stored position below the
//! broker's earliest offset means retention deleted events that were never persisted: that
//! stops the process with the partitions and ranges named, never a silent skip.

use std::collections::{BTreeMap, HashMap};
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
use crate::pipeline::Sink;
use crate::record::Record;
use crate::sink_pg::PgSink;

/// Timeout of one metadata / watermark request to the broker.
const BROKER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn header(m: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
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
        None => (String::new(), Some("Kafka message without payload".to_string())),
        Some(p) => match std::str::from_utf8(p) {
            Ok(s) => (s.to_string(), header(m, H_ERROR)),
            Err(_) => (String::from_utf8_lossy(p).into_owned(), Some("Kafka payload is not UTF-8".to_string())),
        },
    };
    Record::new(source, via, stream, stream_id, raw, err)
}

/// Positions after a batch: per (topic, partition) the highest offset seen + 1.
pub fn next_positions(seen: impl IntoIterator<Item = (String, i32, i64)>) -> Vec<Position> {
    let mut max: HashMap<(String, i32), i64> = HashMap::new();
    for (t, p, o) in seen {
        let e = max.entry((t, p)).or_insert(o);
        *e = (*e).max(o);
    }
    let mut out: Vec<Position> =
        max.into_iter().map(|((topic, partition), o)| Position { topic, partition, next_offset: o + 1 }).collect();
    out.sort();
    out
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

fn consumer(k: &KafkaOpts) -> anyhow::Result<StreamConsumer<QuietContext>> {
    let mut c = base_config(k)?;
    // group.id only names the offsets committed for lag tools: the consumer never joins
    c.set("group.id", &k.kafka_group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error");
    for (key, v) in &k.opts {
        c.set(key, v);
    }
    c.create_with_context(QuietContext).context("creating Kafka consumer")
}

/// (low, high) watermarks of every partition of the topic.
fn watermarks(c: &StreamConsumer<QuietContext>, topic: &str) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let meta = c.fetch_metadata(Some(topic), BROKER_REQUEST_TIMEOUT).context("topic metadata")?;
    let t = meta.topics().iter().find(|t| t.name() == topic).context("topic not in metadata")?;
    if let Some(e) = t.error() {
        anyhow::bail!("topic {topic}: {:?}", e);
    }
    let mut out = BTreeMap::new();
    for p in t.partitions() {
        let w = c.fetch_watermarks(topic, p.id(), BROKER_REQUEST_TIMEOUT).with_context(|| format!("watermarks of partition {}", p.id()))?;
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
    let stored = crate::db::load_positions(pool, &k.topic).await.context("reading kafka_offsets")?;
    let (k2, topic) = (k.clone(), k.topic.clone());
    let marks = tokio::task::spawn_blocking(move || watermarks(&consumer(&k2)?, &topic))
        .await
        .context("watermark task")??;
    Ok(unpersisted_count(&marks, &stored))
}

pub fn unpersisted_count(watermarks: &BTreeMap<i32, (i64, i64)>, stored: &BTreeMap<i32, i64>) -> u64 {
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
    consumer: StreamConsumer<QuietContext>,
    /// partitions assigned
    partitions: usize,
}

/// What the assignment step concluded.
enum Assign {
    Done,
    /// retrying cannot help
    Fatal(String),
}

impl Persist {
    pub fn new(k: KafkaOpts, batch: BatchOpts, pg: PgSink, shutdown: CancellationToken) -> anyhow::Result<Persist> {
        let consumer = consumer(&k)?;
        Ok(Persist { k, batch, pg, shutdown, consumer, partitions: 0 })
    }

    /// Assign every partition at its stored position; retries while the broker or Postgres
    /// is unavailable. Returns false when shut down first.
    async fn assign(&mut self) -> anyhow::Result<bool> {
        let mut attempt = 0u32;
        loop {
            match self.try_assign().await {
                Ok(Assign::Done) => return Ok(true),
                Ok(Assign::Fatal(msg)) => anyhow::bail!(msg),
                Err(e) => {
                    let wait = backoff_ms(self.batch.retry_backoff_ms, self.batch.retry_backoff_cap_ms, attempt);
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
        let mut marks = tokio::task::block_in_place(|| watermarks(&self.consumer, &topic))?;
        marks.retain(|p, _| shard.owns(*p));
        let stored = db::load_positions(&self.pg.pool, &topic).await.context("loading positions from Postgres")?;
        let starts = match start_offsets(&topic, &marks, &stored) {
            Ok(s) => s,
            Err(msg) => return Ok(Assign::Fatal(msg)),
        };
        let mut tpl = TopicPartitionList::new();
        for (p, start) in &starts {
            let offset = start.map(Offset::Offset).unwrap_or(Offset::Beginning);
            tpl.add_partition_offset(&topic, *p, offset)?;
        }
        self.consumer.assign(&tpl).context("assign")?;
        self.partitions = starts.len();
        metrics::KAFKA_PARTITIONS.set(i64::try_from(starts.len()).unwrap_or(i64::MAX));
        tracing::info!(topic = %topic, partitions = starts.len(), shard = %shard, stored = stored.len(), "consuming from the positions stored in Postgres");
        Ok(Assign::Done)
    }

    /// A partition added to the topic since the last assignment.
    fn topic_grew(&self) -> bool {
        let meta = tokio::task::block_in_place(|| self.consumer.fetch_metadata(Some(&self.k.topic), BROKER_REQUEST_TIMEOUT));
        meta.ok()
            .and_then(|m| m.topics().iter().find(|t| t.name() == self.k.topic).map(|t| {
                t.partitions().iter().filter(|p| self.k.persist_shard.owns(p.id())).count()
            }))
            .map(|n| n > self.partitions)
            .unwrap_or(false)
    }

    /// Read one batch: wait up to `idle` for the first message, then fill for batch_wait_ms.
    /// Err only for errors that retrying cannot fix.
    async fn read_batch(&self, idle: Duration) -> anyhow::Result<Vec<(Record, (String, i32, i64))>> {
        let size = self.batch.batch_size.max(1);
        let mut out = Vec::new();
        let first = tokio::select! {
            m = tokio::time::timeout(idle, self.consumer.recv()) => m,
            _ = self.shutdown.cancelled() => return Ok(out),
        };
        let deadline = Instant::now() + Duration::from_millis(self.batch.batch_wait_ms);
        let mut next = first;
        loop {
            match next {
                Ok(Ok(m)) => out.push((message_to_record(&m), (m.topic().to_string(), m.partition(), m.offset()))),
                Ok(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => anyhow::bail!(
                    "a stored Kafka position is out of range: Kafka retention deleted events before they were persisted \
                     (compare kafka_offsets with the topic's earliest offsets)"
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
        Ok(out)
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
            let batch = self.read_batch(metadata_every).await?;
            if batch.is_empty() {
                continue;
            }
            let (recs, coords): (Vec<Record>, Vec<(String, i32, i64)>) = batch.into_iter().unzip();
            metrics::KAFKA_CONSUMED.inc_by(recs.len() as u64);
            let positions = next_positions(coords);
            sink.deliver(&recs, &positions, &self.batch).await.map_err(|f| anyhow::anyhow!(f.0))?;
            self.commit_to_broker(&positions);
        }
        tracing::info!("persist stopped");
        Ok(())
    }

    /// For lag tools only; failures are harmless (positions live in Postgres).
    fn commit_to_broker(&self, positions: &[Position]) {
        let mut tpl = TopicPartitionList::new();
        for p in positions {
            if tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset)).is_err() {
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
        let pos = |t: &str, p, o| Position { topic: t.into(), partition: p, next_offset: o };
        assert_eq!(next_positions(seen), vec![pos("t", 0, 8), pos("t", 1, 10), pos("u", 0, 1)]);
        assert!(next_positions(Vec::new()).is_empty());
    }

    #[test]
    fn start_from_stored_positions_or_the_beginning() {
        let marks = BTreeMap::from([(0, (0, 100)), (1, (10, 50)), (2, (0, 0))]);
        let stored = BTreeMap::from([(0, 40), (1, 10)]);
        let got = start_offsets("t", &marks, &stored).unwrap();
        assert_eq!(got, BTreeMap::from([(0, Some(40)), (1, Some(10)), (2, None)]));
        // a position at the end is fine (everything persisted)
        assert!(start_offsets("t", &marks, &BTreeMap::from([(0, 100)])).is_ok());
    }

    #[test]
    fn stream_coordinates_come_from_the_source() {
        assert_eq!(stream_coordinates("redis:tally:log/1732272000123-5"), Some(("tally:log", "1732272000123-5")));
        assert_eq!(stream_coordinates("redis:tally:log:{t1}/1-0"), Some(("tally:log:{t1}", "1-0")));
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
        assert!(e.contains("partition 1: offsets 12..29 (earliest now 30)"), "{e}");
        assert!(!e.contains("partition 0"), "{e}");
        let e = start_offsets("t", &marks, &BTreeMap::from([(0, 101)])).unwrap_err();
        assert!(e.contains("past the end"), "{e}");
    }
}
