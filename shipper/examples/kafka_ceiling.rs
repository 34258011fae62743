//! The broker's own ceiling, for `scripts/bench-shipper.sh`: a plain librdkafka producer
//! (idempotent, acks=all, linger 5 ms: the settings `forward` uses) sends N messages of SIZE
//! bytes to a new topic of P partitions, at most 10,000 outstanding; then a plain consumer
//! assigned to every partition from the beginning reads them all back. Then the producer
//! again, into a second topic, with the two headers `forward` puts on every message
//! (`tally_source`, `event_id`, values of their usual lengths), and the consumer reads that
//! topic back (the messages `persist` reads). Nothing else (no Redis, no Postgres), so these
//! are the rates tally's `forward` and `persist` are compared with.
//!
//! Each client is warm when its clock starts, as the stages are in the benchmark: the producer
//! first delivers WARMUP messages (its idempotent producer id, connections and metadata are
//! in place after them), the consumer's clock starts after it has received WARMUP messages.
//!
//! usage: kafka_ceiling BROKERS TOPIC N SIZE P
//! prints: produce_seconds consume_seconds produce_with_headers_seconds consume_with_headers_seconds
//!         (each for N messages)

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const MAX_OUTSTANDING: usize = 10_000;
const TIMEOUT: Duration = Duration::from_secs(120);
/// Messages sent (and received) before the clock starts.
const WARMUP: usize = 100;

/// Header values of the lengths `forward` sends: `redis:tally:log/<ms>-<n>` and a UUID.
const SOURCE: &str = "redis:tally:log/1764000000000-0";
const EVENT_ID: &str = "0193a5b2-6c1e-7d3f-8a4b-5c6d7e8f9a0b";

/// Sends `n` messages after `WARMUP` delivered ones; the seconds the `n` took.
async fn produce(
    brokers: &str,
    topic: &str,
    n: usize,
    size: usize,
    headers: bool,
) -> anyhow::Result<f64> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()?;
    let payload = vec![b'x'; size];
    let mut outstanding = VecDeque::with_capacity(MAX_OUTSTANDING);
    let mut t0 = Instant::now();
    for i in 0..n + WARMUP {
        if i == WARMUP {
            while let Some(f) = outstanding.pop_front() {
                delivered(f).await?;
            }
            t0 = Instant::now();
        }
        if outstanding.len() >= MAX_OUTSTANDING {
            if let Some(f) = outstanding.pop_front() {
                delivered(f).await?;
            }
        }
        let key = format!("acct:{}", i % 10_000);
        let mut rec = FutureRecord::to(topic).key(&key).payload(&payload);
        if headers {
            rec = rec.headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "tally_source",
                        value: Some(SOURCE),
                    })
                    .insert(Header {
                        key: "event_id",
                        value: Some(EVENT_ID),
                    }),
            );
        }
        match p.send_result(rec) {
            Ok(f) => outstanding.push_back(f),
            Err((e, _)) => bail!("enqueue: {e}"),
        }
    }
    while let Some(f) = outstanding.pop_front() {
        delivered(f).await?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

async fn delivered(f: rdkafka::producer::DeliveryFuture) -> anyhow::Result<()> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => bail!("delivery: {e}"),
        Err(_) => bail!("delivery future cancelled"),
    }
}

/// Reads the `WARMUP + n` messages of the topic; the seconds the last `n` took.
fn consume(brokers: &str, topic: &str, n: usize, partitions: i32) -> anyhow::Result<f64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "kafka-ceiling")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let started = Instant::now();
    let mut t0 = started;
    let mut got = 0usize;
    while got < n + WARMUP {
        if started.elapsed() > TIMEOUT {
            bail!("consumed {got} of {} in {TIMEOUT:?}", n + WARMUP);
        }
        if let Some(m) = c.poll(Duration::from_millis(500)) {
            m.context("consume")?;
            got += 1;
            if got == WARMUP {
                t0 = Instant::now();
            }
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        bail!("usage: kafka_ceiling BROKERS TOPIC N SIZE PARTITIONS");
    }
    let (brokers, topic) = (a[1].as_str(), a[2].as_str());
    let n: usize = a[3].parse().context("N")?;
    let size: usize = a[4].parse().context("SIZE")?;
    let partitions: i32 = a[5].parse().context("PARTITIONS")?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin
        .create_topics(
            [&t],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    let produce_s = tokio::time::timeout(TIMEOUT, produce(brokers, topic, n, size, false))
        .await
        .map_err(|_| anyhow::anyhow!("producing {n} messages took longer than {TIMEOUT:?}"))??;
    let (b, t) = (brokers.to_string(), topic.to_string());
    let consume_s = tokio::task::spawn_blocking(move || consume(&b, &t, n, partitions)).await??;
    let with_headers = format!("{topic}.h");
    let t = NewTopic::new(&with_headers, partitions, TopicReplication::Fixed(1));
    for r in admin
        .create_topics(
            [&t],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    let headers_s = tokio::time::timeout(TIMEOUT, produce(brokers, &with_headers, n, size, true))
        .await
        .map_err(|_| {
            anyhow::anyhow!("producing {n} messages with headers took longer than {TIMEOUT:?}")
        })??;
    let (b, t) = (brokers.to_string(), with_headers.clone());
    let consume_headers_s =
        tokio::task::spawn_blocking(move || consume(&b, &t, n, partitions)).await??;
    println!("{produce_s:.3} {consume_s:.3} {headers_s:.3} {consume_headers_s:.3}");
    Ok(())
}
