//! The forward stage's sink: an idempotent Kafka producer (acks=all). A batch counts as
//! delivered only when every message of it has its delivery report.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::client::{base_config, QuietContext, H_ERROR, H_EVENT_ID, H_SOURCE};
use crate::cli::{BatchOpts, KafkaOpts};
use crate::event::Record;
use crate::obs::health::{Step, Wait};
use crate::obs::metrics;
use crate::retry::{observe_batch, until_durable, Failure, Stage};

pub(crate) struct Forwarder {
    producer: std::sync::RwLock<FutureProducer<QuietContext>>,
    config: ClientConfig,
    topic: String,
    /// One batch's messages in the producer at a time (taken in `send_batch_once` until the
    /// batch's last delivery report). librdkafka's idempotent producer makes no new request
    /// for a partition while 5 or more of its messages are in flight, and messages of a
    /// second batch waiting behind them past linger.ms keep its broker thread polling with
    /// a zero timeout (measured: 6,900 poll() calls in 0.29 s, forward's CPU 210-300 ms per
    /// 5,100 events instead of 60 ms) on a core the broker, Redis and the readers need.
    /// Batches read meanwhile wait here (at most --max-in-flight), so reading, building
    /// the messages and the previous batch's XACK still overlap the produce.
    turn: tokio::sync::Mutex<()>,
}

impl Forwarder {
    /// Replace the producer (new producer id). Used after a failed batch: an idempotent
    /// producer can get stuck on sequence errors after a broker restart; the batch is re-sent
    /// in full and duplicates are removed downstream by event id.
    fn renew(&self) {
        match self
            .config
            .create_with_context::<_, FutureProducer<QuietContext>>(QuietContext)
        {
            Ok(p) => {
                let old = std::mem::replace(&mut *self.producer.write().unwrap(), p);
                // dropping purges and flushes for up to 500 ms: keep it off the async threads
                tokio::task::spawn_blocking(move || drop(old));
                tracing::info!("Kafka producer renewed");
            }
            Err(e) => tracing::warn!(error = %e, "could not renew Kafka producer"),
        }
    }

    pub(crate) fn new(k: &KafkaOpts) -> anyhow::Result<Forwarder> {
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
        let producer: FutureProducer<QuietContext> = c
            .create_with_context(QuietContext)
            .context("creating Kafka producer")?;
        Ok(Forwarder {
            producer: std::sync::RwLock::new(producer),
            config: c,
            topic: k.topic.clone(),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    /// Delivers the batch: produced until every message has its delivery report (acks=all),
    /// retried with backoff meanwhile. Kafka failures are all retried (the producer is
    /// renewed and the batch sent again in full), so this ends only once Kafka holds it.
    pub(crate) async fn deliver(&self, recs: &[Record], b: &BatchOpts) {
        let started = Instant::now();
        // /healthz: from the batch's first turn in the producer until Kafka holds it
        let wait = Wait::idle(Step::Forward);
        let delivered: Result<(), Infallible> =
            until_durable(Stage::Forward, recs.len(), b, || async {
                self.send_batch(recs, &wait).await.map_err(Failure::Retry)
            })
            .await;
        let Ok(()) = delivered;
        drop(wait);
        metrics::EVENTS_FORWARDED.inc_by(recs.len() as u64);
        metrics::record_lag(
            "forward",
            recs.iter()
                .filter_map(|r| r.decoded.as_ref().ok().map(|e| e.ts)),
        );
        observe_batch(Stage::Forward, recs.len(), started);
    }

    /// Produce the whole batch and wait for every delivery report (acks=all).
    async fn send_batch(&self, recs: &[Record], wait: &Wait) -> anyhow::Result<()> {
        let r = self.send_batch_once(recs, wait).await;
        if r.is_err() {
            self.renew();
        }
        r
    }

    async fn send_batch_once(&self, recs: &[Record], wait: &Wait) -> anyhow::Result<()> {
        let _turn = self.turn.lock().await;
        wait.begin(Duration::ZERO);
        let producer = self.producer.read().unwrap().clone();
        let mut futures = Vec::with_capacity(recs.len());
        for r in recs {
            let key: &str = match &r.decoded {
                Ok(e) => e.first_key(),
                Err(_) => r.stream_id.as_deref().unwrap_or(r.source.as_str()),
            };
            let mut headers = OwnedHeaders::new().insert(Header {
                key: H_SOURCE,
                value: Some(r.source.as_str()),
            });
            if let Ok(e) = &r.decoded {
                headers = headers.insert(Header {
                    key: H_EVENT_ID,
                    value: Some(e.id.as_str()),
                });
            }
            // stream and entry id travel inside `tally_source` (redis:<stream>/<id>): every
            // header costs the broker per message (measured on the test broker: four headers
            // instead of none cut a plain producer from ~7.5k to ~4.7k messages/s)
            // upstream problems that a decoder downstream could not see (e.g. missing `event`
            // field)
            if let Err(e) = &r.decoded {
                headers = headers.insert(Header {
                    key: H_ERROR,
                    value: Some(e.as_str()),
                });
            }
            let mut rec = FutureRecord::to(&self.topic)
                .key(key)
                .payload(r.raw.as_str())
                .headers(headers);
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

    pub(crate) fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.read().unwrap().flush(timeout) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}
