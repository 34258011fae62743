//! The Kafka consumer side: its configuration, a message as a `Record`, and the topic's
//! watermarks (for persist's start positions and for `restore`'s drain check).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;

use super::client::{base_config, QuietContext, H_ERROR, H_SOURCE, H_STREAM, H_STREAM_ID};
use crate::cli::KafkaOpts;
use crate::event::{parse_stream_id, Origin, Record};

/// Timeout of one metadata / watermark request to the broker.
pub(crate) const BROKER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn header(m: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `redis:<stream>/<entry id>` -> (stream, entry id). Stream names (`<prefix>:log[:{tag}]`)
/// contain no `/`; the entry id is `<ms>-<n>`.
pub(crate) fn stream_coordinates(source: &str) -> Option<(&str, &str)> {
    let (stream, id) = source.strip_prefix("redis:")?.rsplit_once('/')?;
    parse_stream_id(id)?;
    Some((stream, id))
}

/// Kafka message -> pipeline record (never fails: problems become the record's error).
pub(crate) fn message_to_record(m: &BorrowedMessage<'_>) -> Record {
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
    let origin = Origin {
        source,
        via,
        stream,
        stream_id,
    };
    Record::new(origin, raw, err)
}

pub(crate) fn consumer_config(k: &KafkaOpts) -> anyhow::Result<rdkafka::ClientConfig> {
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
pub(crate) fn watermarks<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
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
/// `stored`: the positions of the topic stored in Postgres (partition -> next offset).
pub(crate) async fn unpersisted(k: &KafkaOpts, stored: &BTreeMap<i32, i64>) -> anyhow::Result<u64> {
    let (k2, topic) = (k.clone(), k.topic.clone());
    let marks = tokio::task::spawn_blocking(move || watermarks(&consumer(&k2)?, &topic))
        .await
        .context("watermark task")??;
    Ok(unpersisted_count(&marks, stored))
}

pub(crate) fn unpersisted_count(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
