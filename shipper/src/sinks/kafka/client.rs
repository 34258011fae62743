//! What both Kafka stages share: client configuration, topic creation, header names, and
//! librdkafka's logs routed to tracing.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::cli::KafkaOpts;

pub(crate) const H_EVENT_ID: &str = "event_id";
pub(crate) const H_SOURCE: &str = "tally_source";
pub(crate) const H_STREAM: &str = "tally_stream";
pub(crate) const H_STREAM_ID: &str = "tally_stream_id";
pub(crate) const H_ERROR: &str = "tally_error";

pub(crate) fn base_config(k: &KafkaOpts) -> anyhow::Result<ClientConfig> {
    let brokers = k
        .brokers
        .as_deref()
        .filter(|b| !b.trim().is_empty())
        .context("no Kafka brokers configured")?;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    // SO_KEEPALIVE on broker connections (librdkafka has no per-socket timers: the system's
    // net.ipv4.tcp_keepalive_* apply); a broker that stops answering shows in /healthz
    // sooner, through forward's wait for its delivery reports. `--kafka-opt` may override.
    c.set("socket.keepalive.enable", "true");
    for (key, v) in &k.opts {
        c.set(key, v);
    }
    // rdkafka takes librdkafka's log level from the `log` crate, which tally does not use
    // (tracing): without this only errors would reach QuietContext. `--kafka-opt debug=...`
    // asks librdkafka for its debug contexts; they are logged at DEBUG (TALLY_LOG=debug).
    let debug = k.opts.iter().any(|(key, _)| key == "debug");
    c.set_log_level(if debug {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Warning
    });
    Ok(c)
}

pub(crate) async fn ensure_topic(k: &KafkaOpts) -> anyhow::Result<()> {
    if !k.kafka_create_topic {
        return Ok(());
    }
    let admin: AdminClient<QuietContext> = base_config(k)?.create_with_context(QuietContext)?;
    let topic = NewTopic::new(
        &k.topic,
        k.kafka_topic_partitions.max(1),
        TopicReplication::Fixed(1),
    );
    let res = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in res {
        match r {
            Ok(t) => tracing::info!(topic = %t, "created Kafka topic"),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %t, "topic exists")
            }
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// Routes librdkafka's own logs to tracing at WARN at most: broker/transport trouble is
/// retried and is not data loss (ERROR is reserved for that).
#[derive(Clone, Default)]
pub(crate) struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {msg}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility = fac, "librdkafka: {msg}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility = fac, "librdkafka: {msg}"),
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "librdkafka: {reason}");
    }
}

impl ConsumerContext for QuietContext {}
