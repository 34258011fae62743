//! The source stage: the log streams read with a consumer group and handed downstream.
//!
//! In: the Redis URLs (`--redis-url`); `discover` finds the streams each primary holds.
//! Out: `Batch`es of `Record`s, one stream's entries each, handed to a `Downstream` (the
//! direct writers or forward, in `paths/`); the entries stay pending in the group, held by
//! the batch's `InFlight` guard, until the downstream acknowledges them (`InFlight::ack`)
//! once the next stage holds them durably, or drops the guard.
//!
//! - `reader`: one per primary, one read connection for every stream it holds;
//! - `cursor`: where the reading of one stream stands (pending, claims, new entries);
//! - `batch`: the hand-off (`Batch`, `Downstream`), a stream entry as a record;
//! - `ack`: the ack path (`InFlight`; XACK, following the stream when its slot moves);
//! - `keeper`: beside the reader, per stream: trimming and the stream metrics;
//! - `discover`: the streams of each primary, at start and whenever a slot moves.

mod ack;
mod batch;
mod cursor;
mod discover;
mod keeper;
mod reader;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::cli::{BatchOpts, RedisOpts};
use crate::obs::health::{Step, Wait};
use crate::redis_io::NodeConns;
use crate::retry::Fatal;
use discover::discover_all;
use reader::NodeReader;

pub(crate) use batch::{Batch, Downstream};

/// Discovery runs at most once per this long, even when readers keep asking (MOVED storms).
const DISCOVERY_SPACING_MS: u64 = 1_000;

/// The source's tasks: one reader per primary, one keeper per stream.
struct Source<D> {
    redis: RedisOpts,
    batch: BatchOpts,
    downstream: Arc<D>,
    shutdown: CancellationToken,
    conns: NodeConns,
    rediscover: Arc<Notify>,
    readers: HashMap<String, (watch::Sender<Vec<String>>, tokio::task::JoinHandle<()>)>,
    /// each reader's wait for its node (/healthz)
    waits: HashMap<String, Arc<Wait>>,
    /// trimming and stream metrics: stopped only after every reader acked its last batch
    keep_token: CancellationToken,
    keepers: HashMap<(String, String), tokio::task::JoinHandle<()>>,
}

impl<D: Downstream> Source<D> {
    /// Give each node's reader the streams the node holds now (a reader is started for a
    /// node seen for the first time) and each stream a keeper. A keeper stops when its slot
    /// moved away (MOVED); it is started again if the slot comes back.
    fn apply(&mut self, node: String, streams: Vec<String>) {
        for s in &streams {
            let key = (node.clone(), s.clone());
            if self.keepers.get(&key).is_none_or(|h| h.is_finished()) {
                let k = keeper::Keeper::new(
                    &node,
                    s,
                    &self.redis,
                    &self.batch,
                    self.keep_token.clone(),
                    self.conns.clone(),
                );
                self.keepers.insert(key, tokio::spawn(k.run()));
            }
        }
        if let Some((tx, h)) = self.readers.get(&node) {
            if !h.is_finished() {
                tx.send_if_modified(|cur| {
                    let changed = *cur != streams;
                    *cur = streams;
                    changed
                });
                return;
            }
        }
        let (tx, rx) = watch::channel(streams);
        let wait = Arc::new(Wait::idle(Step::Read));
        self.waits.insert(node.clone(), wait.clone());
        let reader = NodeReader {
            url: node.clone(),
            redis: self.redis.clone(),
            batch: self.batch.clone(),
            downstream: self.downstream.clone(),
            shutdown: self.shutdown.clone(),
            conns: self.conns.clone(),
            streams: rx,
            rediscover: self.rediscover.clone(),
            wait,
        };
        self.readers.insert(node, (tx, tokio::spawn(reader.run())));
    }

    /// A reader's unanswered requests count for /healthz while its node is a primary: found
    /// by this discovery, or maybe still one when the discovery is incomplete (a node that
    /// does not answer is left out of it). After a complete discovery without the node (it
    /// failed over, its slots moved) its reader's retries no longer count.
    fn count_waits(&self, found: &BTreeMap<String, Vec<String>>, complete: bool) {
        for (node, wait) in &self.waits {
            if found.contains_key(node) {
                wait.counts(true);
            } else if complete {
                wait.counts(false);
            }
        }
    }

    /// Every reader stopped, every batch handed over delivered and acknowledged (or left
    /// pending), then the keepers' last trim.
    async fn finish(self) -> Result<(), Fatal> {
        for (_, (_, h)) in self.readers {
            let _ = h.await;
        }
        let delivered = self.downstream.finish().await;
        self.keep_token.cancel();
        for (_, h) in self.keepers {
            let _ = h.await;
        }
        delivered
    }
}

/// Discover the streams on every URL, run one reader per primary until shutdown, then let
/// every batch handed over finish and be acknowledged, and trim one last time. Err: the
/// downstream met a failure retrying cannot fix (its entries are left pending).
pub(crate) async fn run_source<D: Downstream>(
    redis: RedisOpts,
    batch: BatchOpts,
    downstream: Arc<D>,
    shutdown: CancellationToken,
) -> Result<(), Fatal> {
    let mut src = Source {
        redis,
        batch,
        downstream,
        shutdown: shutdown.clone(),
        conns: NodeConns::default(),
        rediscover: Arc::new(Notify::new()),
        readers: HashMap::new(),
        waits: HashMap::new(),
        keep_token: CancellationToken::new(),
        keepers: HashMap::new(),
    };
    loop {
        let started = Instant::now();
        let (found, complete) = discover_all(&src.redis.urls, &src.redis.prefix).await;
        let by_node: BTreeMap<String, Vec<String>> = found.into_iter().collect();
        src.count_waits(&by_node, complete);
        for (node, streams) in by_node {
            src.apply(node, streams);
        }
        // a node that did not answer is asked again soon; the others keep their streams
        let interval = src.redis.discover_interval_ms.max(100);
        let wait = if complete {
            interval
        } else {
            interval.min(DISCOVERY_SPACING_MS)
        };
        let spacing = Duration::from_millis(DISCOVERY_SPACING_MS);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = src.rediscover.notified() => tokio::time::sleep(spacing.saturating_sub(started.elapsed())).await,
            _ = shutdown.cancelled() => break,
        }
    }
    src.finish().await
}
