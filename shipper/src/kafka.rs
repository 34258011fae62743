//! Kafka: idempotent producer (forward) and manually committed consumer (persist).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::{BatchOpts, KafkaOpts};
use crate::metrics;
use crate::pipeline;
use crate::record::Record;

pub const H_EVENT_ID: &str = "event_id";
pub const H_SOURCE: &str = "tally_source";
pub const H_STREAM: &str = "tally_stream";
pub const H_STREAM_ID: &str = "tally_stream_id";
pub const H_ERROR: &str = "tally_error";

fn base_config(k: &KafkaOpts) -> anyhow::Result<ClientConfig> {
    let brokers = k.brokers.as_deref().filter(|b| !b.trim().is_empty()).context("no Kafka brokers configured")?;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (key, v) in &k.opts {
        c.set(key, v);
    }
    Ok(c)
}

pub async fn ensure_topic(k: &KafkaOpts) -> anyhow::Result<()> {
    if !k.kafka_create_topic {
        return Ok(());
    }
    let admin: AdminClient<QuietContext> = base_config(k)?.create_with_context(QuietContext)?;
    let topic = NewTopic::new(&k.topic, k.kafka_topic_partitions.max(1), TopicReplication::Fixed(1));
    let res = admin.create_topics([&topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))).await?;
    for r in res {
        match r {
            Ok(t) => tracing::info!(topic = %t, "created Kafka topic"),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::debug!(topic = %t, "topic exists"),
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// Routes librdkafka's own logs to tracing at WARN at most: broker/transport trouble is
/// retried and is not data loss (ERROR is reserved for that).
#[derive(Clone, Default)]
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {msg}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(facility = fac, "librdkafka: {msg}"),
            RDKafkaLogLevel::Debug => tracing::debug!(facility = fac, "librdkafka: {msg}"),
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "librdkafka: {reason}");
    }
}

impl ConsumerContext for QuietContext {}

pub struct Forwarder {
    producer: std::sync::RwLock<FutureProducer<QuietContext>>,
    config: ClientConfig,
    topic: String,
}

impl Forwarder {
    /// Replace the producer (new producer id). Used after a failed batch: an idempotent
    /// producer can get stuck on sequence errors after a broker restart; the batch is re-sent
    /// in full and duplicates are removed downstream by event id.
    fn renew(&self) {
        match self.config.create_with_context::<_, FutureProducer<QuietContext>>(QuietContext) {
            Ok(p) => {
                let old = std::mem::replace(&mut *self.producer.write().unwrap(), p);
                // dropping purges and flushes for up to 500 ms: keep it off the async threads
                tokio::task::spawn_blocking(move || drop(old));
                tracing::info!("Kafka producer renewed");
            }
            Err(e) => tracing::warn!(error = %e, "could not renew Kafka producer"),
        }
    }

    pub fn new(k: &KafkaOpts) -> anyhow::Result<Forwarder> {
        let mut c = base_config(k)?;
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", k.kafka_message_timeout_ms.to_string())
            .set("linger.ms", "5")
            .set("compression.type", "none");
        // passthrough options win
        for (key, v) in &k.opts {
            c.set(key, v);
        }
        let producer: FutureProducer<QuietContext> =
            c.create_with_context(QuietContext).context("creating Kafka producer")?;
        Ok(Forwarder { producer: std::sync::RwLock::new(producer), config: c, topic: k.topic.clone() })
    }

    /// Produce the whole batch and wait for every delivery report (acks=all).
    pub async fn send_batch(&self, recs: &[Record]) -> anyhow::Result<()> {
        let r = self.send_batch_once(recs).await;
        if r.is_err() {
            self.renew();
        }
        r
    }

    async fn send_batch_once(&self, recs: &[Record]) -> anyhow::Result<()> {
        let producer = self.producer.read().unwrap().clone();
        let mut futures = Vec::with_capacity(recs.len());
        for r in recs {
            let key: &str = match &r.decoded {
                Ok(e) => e.first_key(),
                Err(_) => r.stream_id.as_deref().unwrap_or(r.source.as_str()),
            };
            let mut headers = OwnedHeaders::new()
                .insert(Header { key: H_SOURCE, value: Some(r.source.as_str()) });
            if let Ok(e) = &r.decoded {
                headers = headers.insert(Header { key: H_EVENT_ID, value: Some(e.id.as_str()) });
            }
            if let Some(s) = &r.stream {
                headers = headers.insert(Header { key: H_STREAM, value: Some(s.as_str()) });
            }
            if let Some(s) = &r.stream_id {
                headers = headers.insert(Header { key: H_STREAM_ID, value: Some(s.as_str()) });
            }
            // upstream problems that a decoder downstream could not see (e.g. missing `event` field)
            if let Err(e) = &r.decoded {
                headers = headers.insert(Header { key: H_ERROR, value: Some(e.as_str()) });
            }
            let mut rec = FutureRecord::to(&self.topic).key(key).payload(r.raw.as_str()).headers(headers);
            let started = Instant::now();
            loop {
                match producer.send_result(rec) {
                    Ok(f) => {
                        futures.push(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        if started.elapsed() > Duration::from_secs(60) {
                            anyhow::bail!("producer queue full for 60s");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => return Err(e).context("enqueue to Kafka"),
                }
            }
        }
        let mut first_err = None;
        for f in futures {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    first_err.get_or_insert(anyhow::anyhow!("Kafka delivery failed: {e}"));
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow::anyhow!("Kafka delivery canceled"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.read().unwrap().flush(timeout) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}

fn header<'a>(m: &'a BorrowedMessage<'a>, name: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Kafka message -> pipeline record (never fails: problems become the record's error).
pub fn message_to_record(m: &BorrowedMessage<'_>) -> Record {
    let coord = format!("kafka:{}/{}/{}", m.topic(), m.partition(), m.offset());
    let (source, via) = match header(m, H_SOURCE) {
        Some(s) => (s, Some(coord)),
        None => (coord, None),
    };
    let stream = header(m, H_STREAM);
    let stream_id = header(m, H_STREAM_ID);
    let (raw, err) = match m.payload() {
        None => (String::new(), Some("Kafka message without payload".to_string())),
        Some(p) => match std::str::from_utf8(p) {
            Ok(s) => (s.to_string(), header(m, H_ERROR)),
            Err(_) => (String::from_utf8_lossy(p).into_owned(), Some("Kafka payload is not UTF-8".to_string())),
        },
    };
    Record::new(source, via, stream, stream_id, raw, err)
}

/// Offsets to commit after a batch: per (topic, partition) the highest offset seen + 1.
pub fn commit_offsets(seen: impl IntoIterator<Item = (String, i32, i64)>) -> Vec<(String, i32, i64)> {
    let mut max: HashMap<(String, i32), i64> = HashMap::new();
    for (t, p, o) in seen {
        let e = max.entry((t, p)).or_insert(o);
        *e = (*e).max(o);
    }
    let mut out: Vec<(String, i32, i64)> = max.into_iter().map(|((t, p), o)| (t, p, o + 1)).collect();
    out.sort();
    out
}

fn persist_consumer(k: &KafkaOpts) -> anyhow::Result<StreamConsumer<QuietContext>> {
    let mut c = base_config(k)?;
    c.set("group.id", &k.kafka_group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "45000")
        .set("max.poll.interval.ms", "600000");
    for (key, v) in &k.opts {
        c.set(key, v);
    }
    let consumer: StreamConsumer<QuietContext> = c.create_with_context(QuietContext).context("creating Kafka consumer")?;
    consumer.subscribe(&[&k.topic]).context("subscribe")?;
    tracing::info!(topic = %k.topic, group = %k.kafka_group, "consuming");
    Ok(consumer)
}

/// Messages in the topic the group has not committed yet (None when the broker cannot tell).
fn group_lag(consumer: &StreamConsumer<QuietContext>, topic: &str) -> Option<i64> {
    let timeout = Duration::from_secs(5);
    let meta = consumer.fetch_metadata(Some(topic), timeout).ok()?;
    let partitions: Vec<i32> = meta.topics().first()?.partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout).ok()?;
    let mut lag = 0;
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout).ok()?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        lag += (high - done).max(0);
    }
    Some(lag)
}

/// Kafka -> Postgres. Offsets are committed only after the Postgres transaction commits.
pub async fn run_persist(k: KafkaOpts, batch: BatchOpts, pg: pipeline::PgSink, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut consumer = persist_consumer(&k)?;
    let stall = Duration::from_millis(k.kafka_stall_ms.max(1_000));
    let size = batch.batch_size.max(1);
    loop {
        // first message (or shutdown)
        let first = tokio::select! {
            m = tokio::time::timeout(stall, consumer.recv()) => match m {
                Ok(m) => m,
                Err(_) => {
                    // Idle: fine when there is nothing to consume; a stuck consumer otherwise.
                    let lag = tokio::task::block_in_place(|| group_lag(&consumer, &k.topic));
                    if lag.unwrap_or(1) > 0 {
                        tracing::warn!(stall_ms = stall.as_millis() as u64, lag = ?lag,
                            "no Kafka message while the group has unconsumed messages; recreating the consumer");
                        drop(consumer);
                        consumer = persist_consumer(&k)?;
                    }
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let mut recs = Vec::with_capacity(size);
        let mut offsets: Vec<(String, i32, i64)> = Vec::with_capacity(size);
        let mut take = |m: BorrowedMessage<'_>, recs: &mut Vec<Record>| {
            recs.push(message_to_record(&m));
            offsets.push((m.topic().to_string(), m.partition(), m.offset()));
        };
        match first {
            Ok(m) => take(m, &mut recs),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consume error");
                tokio::time::sleep(Duration::from_millis(batch.retry_backoff_ms.max(100))).await;
                continue;
            }
        }
        let deadline = Instant::now() + Duration::from_millis(batch.batch_wait_ms);
        while recs.len() < size {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, consumer.recv()).await {
                Ok(Ok(m)) => take(m, &mut recs),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consume error");
                    break;
                }
                Err(_) => break,
            }
        }
        metrics::KAFKA_CONSUMED.inc_by(recs.len() as u64);
        pipeline::Sink::Pg(pg.clone()).deliver(&recs, &batch).await;
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in commit_offsets(offsets) {
            tpl.add_partition_offset(&t, p, Offset::Offset(o))?;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            // harmless: the batch is in Postgres; a redelivery is deduped on event id
            tracing::warn!(error = %e, "offset commit failed (messages will be redelivered and deduped)");
        }
    }
    tracing::info!("persist stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_next_offset_per_partition() {
        let seen = vec![
            ("t".to_string(), 0, 5),
            ("t".to_string(), 1, 9),
            ("t".to_string(), 0, 7),
            ("t".to_string(), 0, 6),
            ("u".to_string(), 0, 0),
        ];
        assert_eq!(
            commit_offsets(seen),
            vec![("t".to_string(), 0, 8), ("t".to_string(), 1, 10), ("u".to_string(), 0, 1)]
        );
        assert!(commit_offsets(Vec::new()).is_empty());
    }
}
