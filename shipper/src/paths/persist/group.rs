//! The consumer-group side of persist (`--persist-group`): the rebalance callback that starts
//! every partition it is given at the position stored in Postgres.
//!
//! librdkafka runs the callback inside the consumer's poll, on the task that reads batches,
//! so loading the positions blocks that task (`block_in_place`) and nothing else; the
//! broker's heartbeats run on librdkafka's own threads meanwhile. The load is retried for a
//! bounded time (`LOAD_ATTEMPTS`); if Postgres stays unreachable the process stops with a
//! clear error instead of consuming from positions it does not know.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::TopicPartitionList;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::owned::{at_positions, Owned};
use crate::retry::{backoff_ms, Fatal};
use crate::sinks::kafka::QuietContext;
use crate::sinks::postgres::load_positions;

/// Attempts to load the stored positions in one rebalance, and the pause after the first
/// failed one (doubling, at most `LOAD_BACKOFF_CAP_MS`, `retry::backoff_ms`): about a
/// minute in all.
const LOAD_ATTEMPTS: u32 = 12;
const LOAD_BACKOFF_MS: u64 = 250;
const LOAD_BACKOFF_CAP_MS: u64 = 8_000;

/// Loads the stored positions for the rebalance callback.
pub(crate) struct GroupLoader {
    pool: PgPool,
    topic: String,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Handle,
    /// why persist must stop, when an assignment cannot be taken (the callback has no caller
    /// to return it to: `Persist::run` does, once the shutdown it asked for ends its loop)
    failed: Arc<OnceLock<Fatal>>,
}

impl GroupLoader {
    /// Call from inside the tokio runtime that will poll the consumer. `failed` receives the
    /// first failure that stops persist.
    pub(crate) fn new(
        pool: PgPool,
        topic: String,
        shutdown: CancellationToken,
        failed: Arc<OnceLock<Fatal>>,
    ) -> GroupLoader {
        GroupLoader {
            pool,
            topic,
            shutdown,
            runtime: tokio::runtime::Handle::current(),
            failed,
        }
    }

    /// Persist cannot go on: keep the first reason and stop the process.
    fn stop(&self, why: String) {
        let _ = self.failed.set(Fatal(why));
        self.shutdown.cancel();
    }

    /// The stored positions of the topic, retried with backoff; Err once the attempts are spent.
    fn load_blocking(&self) -> Result<BTreeMap<i32, i64>, String> {
        let load = || {
            self.runtime.block_on(async {
                let mut last = String::new();
                for attempt in 0..LOAD_ATTEMPTS {
                    match load_positions(&self.pool, &self.topic).await {
                        Ok(s) => return Ok(s),
                        Err(e) => last = e.to_string(),
                    }
                    if self.shutdown.is_cancelled() {
                        break;
                    }
                    let wait_ms = backoff_ms(LOAD_BACKOFF_MS, LOAD_BACKOFF_CAP_MS, attempt);
                    tracing::warn!(attempt, retry_in_ms = wait_ms, error = %last, "cannot load the stored Kafka positions for an assignment yet");
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                }
                Err(format!(
                    "persist was assigned partitions of {} but could not load their stored positions from Postgres: {last}",
                    self.topic
                ))
            })
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => {
                Err("the rebalance callback ran on a single-threaded runtime".into())
            }
            Ok(_) => tokio::task::block_in_place(load),
            Err(_) => load(),
        }
    }
}

/// The consumer's context: librdkafka's logs (as `QuietContext`) and, in group mode, the
/// rebalance callback.
pub(crate) struct PersistContext {
    quiet: QuietContext,
    owned: Arc<Mutex<Owned>>,
    group: Option<GroupLoader>,
}

impl PersistContext {
    pub(crate) fn new(owned: Arc<Mutex<Owned>>, group: Option<GroupLoader>) -> PersistContext {
        PersistContext {
            quiet: QuietContext,
            owned,
            group,
        }
    }

    fn owned(&self) -> MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_assign(&self, g: &GroupLoader, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let cooperative = matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let parts: Vec<i32> = tpl
            .elements_for_topic(&g.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let stored = match g.load_blocking() {
            Ok(s) => s,
            Err(msg) => {
                g.stop(msg);
                return;
            }
        };
        let from: BTreeMap<i32, Option<i64>> =
            parts.iter().map(|p| (*p, stored.get(p).copied())).collect();
        let tpl = match at_positions(&g.topic, &from) {
            Ok(t) => t,
            Err(e) => {
                g.stop(format!(
                    "partitions {parts:?} of {}: cannot set their start offsets: {e}",
                    g.topic
                ));
                return;
            }
        };
        let assigned = if cooperative {
            base.incremental_assign(&tpl)
        } else {
            base.assign(&tpl)
        };
        if let Err(e) = assigned {
            tracing::warn!(error = %e, "assigning the partitions the group gave failed; the group will rebalance again");
            return;
        }
        let mut owned = self.owned();
        if cooperative {
            owned.change(from, &[]);
        } else {
            owned.replace(from);
        }
        tracing::info!(topic = %g.topic, partitions = ?parts, owned = owned.from.len(), "assigned by the group; consuming from the positions stored in Postgres");
    }

    fn on_revoke(&self, g: &GroupLoader, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let parts: Vec<i32> = tpl
            .elements_for_topic(&g.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let done = if matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative) {
            base.incremental_unassign(tpl)
        } else {
            base.unassign()
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "unassigning revoked partitions failed");
        }
        // whatever librdkafka says, nothing more of these partitions is stored by this instance
        self.owned().change(BTreeMap::new(), &parts);
        tracing::info!(topic = %g.topic, partitions = ?parts, "partitions revoked by the group");
    }
}

impl ClientContext for PersistContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        self.quiet.log(level, fac, msg);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(error, reason);
    }
}

impl ConsumerContext for PersistContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let Some(g) = &self.group else {
            tracing::warn!(?err, "rebalance event without --persist-group; ignored");
            return;
        };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(g, base, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(g, base, tpl),
            other => {
                tracing::warn!(error = ?other, "rebalance failed; this instance owns nothing until the next assignment");
                if let Err(e) = base.unassign() {
                    tracing::warn!(error = %e, "unassign after a failed rebalance");
                }
                self.owned().replace(BTreeMap::new());
            }
        }
    }
}
