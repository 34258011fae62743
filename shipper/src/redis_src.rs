//! The source stage: reading the log streams with a consumer group, one reader (and one
//! read connection) per primary for every stream it holds, handing batches downstream, and
//! acknowledging entries only once the next stage holds them durably (`redis_io::AckTarget`).
//! Trimming and stream metrics run beside it (`stream_keeper`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{backoff_ms, BatchOpts, RedisOpts};
use crate::discover::discover_all;
use crate::metrics;
use crate::pipeline::Sink;
use crate::record::Record;
use crate::redis_io::{
    ack_with_retry, as_array, as_str, connect, parse_entries, query_asking, redirect_url,
    AckTarget, Entry, NodeConns,
};
use crate::writers::Writers;

/// Where a reader hands its batches: a sink delivered batch by batch (Kafka), or the
/// per-key Postgres writers (direct path).
#[derive(Clone)]
pub enum Downstream {
    Sink(Sink),
    Writers(Arc<Writers>),
}

type RResult<T> = Result<T, redis::RedisError>;

/// XREADGROUP reply: `[[stream, [entries]]]` (RESP2) or a map (RESP3); Nil on timeout.
fn parse_xread(v: &Value) -> Vec<Entry> {
    match v {
        Value::Nil => vec![],
        Value::Map(m) => m.iter().flat_map(|(_, e)| parse_entries(e)).collect(),
        other => as_array(other)
            .iter()
            .flat_map(|s| parse_entries(as_array(s).get(1).unwrap_or(&Value::Nil)))
            .collect(),
    }
}

/// Convert an entry to a pipeline record (never fails: problems become the record's error).
/// The entry is consumed: its `event` bytes become the record's text without a copy.
pub fn entry_to_record(stream: &str, e: Entry) -> Record {
    let source = format!("redis:{stream}/{}", e.id);
    let (raw, err) = match e.fields {
        None => (
            "".to_string(),
            Some("stream entry was deleted before it could be shipped".to_string()),
        ),
        Some(mut fields) => match fields.iter().position(|(k, _)| k == "event") {
            Some(i) => match String::from_utf8(fields.swap_remove(i).1) {
                Ok(s) => (s, None),
                Err(v) => (
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    Some("`event` field is not UTF-8".to_string()),
                ),
            },
            None => {
                let obj: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                        )
                    })
                    .collect();
                (
                    serde_json::Value::Object(obj).to_string(),
                    Some("stream entry has no `event` field".to_string()),
                )
            }
        },
    };
    Record::new(source, None, Some(stream.to_string()), Some(e.id), raw, err)
}

/// Most entries one sweep round trip may bring back: a round trip reads this many entries
/// divided by --batch-size streams (within the two bounds below).
const SWEEP_ENTRIES_MAX: usize = 50_000;
const SWEEP_STREAMS_MIN: usize = 16;
const SWEEP_STREAMS_MAX: usize = 512;
/// Discovery runs at most once per this long, even when readers keep asking (MOVED storms).
const DISCOVERY_SPACING_MS: u64 = 1_000;

/// Streams read in one pipelined round trip of a sweep.
fn sweep_streams(batch_size: usize) -> usize {
    (SWEEP_ENTRIES_MAX / batch_size.max(1)).clamp(SWEEP_STREAMS_MIN, SWEEP_STREAMS_MAX)
}

/// What the next read of a stream asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Read {
    /// own pending entries after this id (left by an earlier run or a reply lost on the way)
    Pending(String),
    /// XAUTOCLAIM of entries other consumers left idle, from this cursor
    Claim(String),
    /// entries never delivered to the group
    New,
}

/// Where the reading of one stream stands.
struct Cursor {
    stream: String,
    /// Some while re-reading own pending entries
    pending_from: Option<String>,
    group_ready: bool,
    claim_cursor: String,
    last_claim: Option<Instant>,
    /// the slot moved to another primary (MOVED): dropped here, read there
    moved: bool,
    /// the last read was redirected by ASK (slot being migrated): swept, never blocking,
    /// until a read is answered here again
    asked: bool,
    /// ids being delivered downstream: never re-read or claimed meanwhile
    held: Arc<Mutex<HashSet<String>>>,
}

impl Cursor {
    fn new(stream: &str) -> Cursor {
        Cursor {
            stream: stream.to_string(),
            pending_from: Some("0".into()),
            group_ready: false,
            claim_cursor: "0-0".into(),
            last_claim: None,
            moved: false,
            asked: false,
            held: Default::default(),
        }
    }

    /// After a new connection: re-read own pending entries from the start, check the group.
    fn reset(&mut self) {
        self.pending_from = Some("0".into());
        self.group_ready = false;
    }

    fn next_read(&self, claim_every: Duration) -> Read {
        if let Some(from) = &self.pending_from {
            return Read::Pending(from.clone());
        }
        let due = self.claim_cursor != "0-0"
            || self.last_claim.is_none_or(|t| t.elapsed() >= claim_every);
        if due {
            Read::Claim(self.claim_cursor.clone())
        } else {
            Read::New
        }
    }

    /// Take the reply of `read`: move the cursor on and return the entries to hand over.
    fn advance(&mut self, read: &Read, reply: &Value) -> Vec<Entry> {
        match read {
            Read::Pending(_) => {
                let entries = parse_xread(reply);
                self.pending_from = entries.last().map(|l| l.id.clone());
                if !entries.is_empty() {
                    tracing::info!(stream = %self.stream, count = entries.len(), "re-reading own pending entries");
                }
                self.not_in_flight(entries)
            }
            Read::Claim(_) => {
                let (next, entries, deleted) = parse_autoclaim(reply);
                if deleted > 0 {
                    tracing::error!(stream = %self.stream, count = deleted,
                        "pending entries were deleted from the stream before being shipped (removed by someone else)");
                }
                if next == "0-0" {
                    self.last_claim = Some(Instant::now());
                }
                self.claim_cursor = next;
                // our own batches still being delivered go idle during an outage: not claims
                let entries = self.not_in_flight(entries);
                if !entries.is_empty() {
                    metrics::ENTRIES_CLAIMED.inc_by(entries.len() as u64);
                    tracing::info!(stream = %self.stream, count = entries.len(), "claimed idle pending entries");
                }
                entries
            }
            Read::New => parse_xread(reply),
        }
    }

    fn not_in_flight(&self, entries: Vec<Entry>) -> Vec<Entry> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .into_iter()
            .filter(|e| !held.contains(&e.id))
            .collect()
    }
}

/// XAUTOCLAIM reply: (next cursor, claimed entries, how many ids were deleted meanwhile).
fn parse_autoclaim(v: &Value) -> (String, Vec<Entry>, usize) {
    let parts = as_array(v);
    let next = parts
        .first()
        .and_then(as_str)
        .unwrap_or_else(|| "0-0".into());
    let entries = parts.get(1).map(parse_entries).unwrap_or_default();
    let deleted = parts.get(2).map(as_array).map(|a| a.len()).unwrap_or(0);
    (next, entries, deleted)
}

/// Keep one cursor per stream the node holds now: new streams are added, gone ones dropped
/// (their batches in flight still finish and are acknowledged).
fn sync_cursors(cursors: &mut Vec<Cursor>, streams: &[String]) {
    cursors.retain(|c| streams.contains(&c.stream));
    for s in streams {
        if !cursors.iter().any(|c| &c.stream == s) {
            cursors.push(Cursor::new(s));
        }
    }
}

/// Send `cmds` in one round trip; each command's reply or error on its own.
async fn pipelined(
    conn: &mut MultiplexedConnection,
    cmds: &[redis::Cmd],
) -> RResult<Vec<RResult<Value>>> {
    let mut p = redis::pipe();
    p.ignore_errors();
    for c in cmds {
        p.add_command(c.clone());
    }
    p.query_async(conn).await
}

/// The reader of one primary: every log stream the node holds, on one connection. A node
/// with one stream (standalone) is read with blocking XREADGROUP; a node with several (a
/// cluster primary, one stream per written slot) is swept: one pipelined round of
/// non-blocking reads, then a pause of --poll-min-ms doubling up to --block-ms while every
/// stream stays empty. XREADGROUP cannot block on streams of different slots.
pub struct NodeReader {
    pub url: String,
    pub redis: RedisOpts,
    pub batch: BatchOpts,
    pub downstream: Downstream,
    pub inflight: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// the node's shared connection (acks, housekeeping, ASK targets)
    pub conns: NodeConns,
    /// the streams the node holds, as the last discovery found them
    pub streams: watch::Receiver<Vec<String>>,
    /// asks for a discovery now (a slot moved)
    pub rediscover: Arc<Notify>,
}

impl NodeReader {
    fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.redis.block_ms + self.batch.batch_wait_ms + 10_000)
    }

    fn claim_every(&self) -> Duration {
        Duration::from_millis(self.redis.claim_interval_ms)
    }

    fn read_cmd(
        &self,
        stream: &str,
        read: &Read,
        count: usize,
        block_ms: Option<u64>,
    ) -> redis::Cmd {
        let (group, consumer) = (&self.redis.redis_group, &self.redis.consumer);
        if let Read::Claim(cursor) = read {
            let mut c = redis::cmd("XAUTOCLAIM");
            c.arg(stream)
                .arg(group)
                .arg(consumer)
                .arg(self.redis.claim_idle_ms)
                .arg(cursor)
                .arg("COUNT")
                .arg(count.max(1));
            return c;
        }
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(b) = block_ms {
            c.arg("BLOCK").arg(b.max(1));
        }
        let from = match read {
            Read::Pending(from) => from.as_str(),
            _ => ">",
        };
        c.arg("STREAMS").arg(stream).arg(from);
        c
    }

    fn group_cmd(&self, stream: &str) -> redis::Cmd {
        let mut c = redis::cmd("XGROUP");
        c.arg("CREATE")
            .arg(stream)
            .arg(&self.redis.redis_group)
            .arg("0")
            .arg("MKSTREAM");
        c
    }

    /// One stream's reply, redirections followed. ASK: the stream's key already sits on the
    /// importing node of a slot being migrated; the command goes there after ASKING. MOVED:
    /// the slot has a new owner; the stream is dropped here and a discovery is asked for,
    /// which hands it to that node's reader.
    async fn follow(
        &self,
        c: &mut Cursor,
        cmd: &redis::Cmd,
        reply: RResult<Value>,
    ) -> RResult<Value> {
        let Err(e) = reply else {
            c.asked = false;
            return reply;
        };
        match redirect_url(&self.url, &e) {
            Some((target, true)) => {
                c.asked = true;
                let mut conn = self.conns.get(&target).await?;
                let r = query_asking(&mut conn, cmd, true).await;
                if let Err(e) = &r {
                    self.conns.renew_after(&target, e).await;
                }
                r
            }
            Some((target, false)) => {
                tracing::info!(stream = %c.stream, node = %self.url, to = %target, "stream's slot moved; reading it on its new owner");
                c.moved = true;
                self.rediscover.notify_one();
                Err(e)
            }
            None => Err(e),
        }
    }

    /// A read of one stream failed with a reply error: the other streams go on.
    fn stream_error(&self, c: &mut Cursor, e: &redis::RedisError) {
        if c.moved {
            return;
        }
        if e.code() == Some("NOGROUP") {
            c.group_ready = false; // stream or group deleted: created again at the next sweep
            return;
        }
        tracing::warn!(stream = %c.stream, node = %self.url, error = %e, "reading the stream failed; retrying at the next sweep");
    }

    /// Create the consumer group of every stream that may lack one (one round trip).
    async fn ensure_groups(
        &self,
        conn: &mut MultiplexedConnection,
        part: &mut [Cursor],
    ) -> RResult<()> {
        let idx: Vec<usize> = (0..part.len())
            .filter(|&i| !part[i].group_ready && !part[i].moved)
            .collect();
        if idx.is_empty() {
            return Ok(());
        }
        let cmds: Vec<redis::Cmd> = idx
            .iter()
            .map(|&i| self.group_cmd(&part[i].stream))
            .collect();
        let replies = pipelined(conn, &cmds).await?;
        for ((&i, cmd), reply) in idx.iter().zip(&cmds).zip(replies) {
            let c = &mut part[i];
            match self.follow(c, cmd, reply).await {
                Ok(_) => {
                    tracing::info!(stream = %c.stream, group = %self.redis.redis_group, "created consumer group");
                    c.group_ready = true;
                }
                Err(e) if e.code() == Some("BUSYGROUP") => c.group_ready = true,
                Err(e) => self.stream_error(c, &e),
            }
        }
        Ok(())
    }

    /// One pipelined round over the node's streams: one read each (own pending, a claim or
    /// new entries; never blocking), each stream's entries handed over as one batch. Returns
    /// how many entries were handed over.
    async fn sweep(
        &self,
        conn: &mut MultiplexedConnection,
        cursors: &mut [Cursor],
        out: &mut Deliveries,
    ) -> RResult<usize> {
        let mut total = 0;
        for part in cursors.chunks_mut(sweep_streams(self.batch.batch_size)) {
            self.ensure_groups(conn, part).await?;
            let reads: Vec<(usize, Read)> = (0..part.len())
                .filter(|&i| part[i].group_ready && !part[i].moved)
                .map(|i| (i, part[i].next_read(self.claim_every())))
                .collect();
            if reads.is_empty() {
                continue;
            }
            let cmds: Vec<redis::Cmd> = reads
                .iter()
                .map(|(i, r)| self.read_cmd(&part[*i].stream, r, self.batch.batch_size, None))
                .collect();
            let replies = pipelined(conn, &cmds).await?;
            for (((i, read), cmd), reply) in reads.iter().zip(&cmds).zip(replies) {
                let c = &mut part[*i];
                match self.follow(c, cmd, reply).await {
                    Ok(v) => {
                        let entries = c.advance(read, &v);
                        total += entries.len();
                        out.start(self, c, entries).await;
                    }
                    Err(e) => self.stream_error(c, &e),
                }
            }
        }
        Ok(total)
    }

    /// The one stream of a standalone server: block for the first new entry, then keep
    /// filling the batch for up to --batch-wait-ms.
    async fn read_blocking(
        &self,
        conn: &mut MultiplexedConnection,
        c: &mut Cursor,
    ) -> RResult<Vec<Entry>> {
        let size = self.batch.batch_size.max(1);
        let cmd = self.read_cmd(&c.stream, &Read::New, size, Some(self.redis.block_ms));
        let first = cmd.query_async(conn).await;
        if first.as_ref().is_err_and(|e| e.code() == Some("ASK")) {
            c.asked = true; // read by sweeps: a blocking read must not hold the target's shared connection
            return Ok(vec![]);
        }
        let mut out = match self.follow(c, &cmd, first).await {
            Ok(v) => parse_xread(&v),
            Err(e) if c.moved || e.code() == Some("NOGROUP") => {
                self.stream_error(c, &e);
                return Ok(vec![]);
            }
            Err(e) => return Err(e),
        };
        let deadline = Instant::now() + Duration::from_millis(self.batch.batch_wait_ms);
        while !out.is_empty() && out.len() < size && !self.shutdown.is_cancelled() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let more_cmd = self.read_cmd(
                &c.stream,
                &Read::New,
                size - out.len(),
                Some(left.as_millis().max(1) as u64),
            );
            // a failed read ends the batch; the next read meets the error again
            let Ok(more) = more_cmd.query_async(conn).await.map(|v| parse_xread(&v)) else {
                break;
            };
            if more.is_empty() {
                break;
            }
            out.extend(more);
        }
        Ok(out)
    }

    pub async fn run(self) {
        let (mut cursors, mut out, mut attempt) = (Vec::new(), Deliveries::default(), 0u32);
        while !self.shutdown.is_cancelled() {
            let Err(e) = self
                .run_connected(&mut cursors, &mut out, &mut attempt)
                .await
            else {
                break;
            };
            self.conns.renew_after(&self.url, &e).await;
            let wait = backoff_ms(
                self.batch.retry_backoff_ms,
                self.batch.retry_backoff_cap_ms,
                attempt,
            );
            metrics::RETRIES.inc();
            tracing::warn!(node = %self.url, streams = cursors.len(), error = %e, retry_in_ms = wait, "redis error");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = self.shutdown.cancelled() => break,
            }
            attempt = attempt.saturating_add(1);
        }
        // every batch already handed over finishes (delivered and acked, or left pending for
        // the next run) before the reader ends
        out.drain().await;
    }

    async fn run_connected(
        &self,
        cursors: &mut Vec<Cursor>,
        out: &mut Deliveries,
        attempt: &mut u32,
    ) -> RResult<()> {
        let mut conn = connect(&self.url, self.response_timeout()).await?;
        cursors.iter_mut().for_each(Cursor::reset);
        let mut streams = self.streams.clone();
        let idle_min_ms = self.redis.poll_min_ms.max(1);
        let mut idle_ms = idle_min_ms;
        sync_cursors(cursors, &streams.borrow_and_update());
        let mut changed = false;
        while !self.shutdown.is_cancelled() {
            // a stream dropped after MOVED comes back only if a discovery gives it back
            if std::mem::take(&mut changed) || streams.has_changed().unwrap_or(false) {
                sync_cursors(cursors, &streams.borrow_and_update());
            }
            let (got, waited) = match cursors.as_mut_slice() {
                [c] if c.group_ready
                    && !c.asked
                    && c.next_read(self.claim_every()) == Read::New =>
                {
                    let entries = self.read_blocking(&mut conn, c).await?;
                    let n = entries.len();
                    out.start(self, c, entries).await;
                    (n, !c.asked)
                }
                _ => (self.sweep(&mut conn, cursors, out).await?, false),
            };
            *attempt = 0;
            cursors.retain(|c| !c.moved);
            if got > 0 || waited {
                idle_ms = idle_min_ms;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(idle_ms)) => {}
                r = streams.changed() => match r {
                    Ok(()) => changed = true,
                    Err(_) => return Ok(()),
                },
                _ = self.shutdown.cancelled() => {}
            }
            idle_ms = (idle_ms * 2).min(self.redis.block_ms.max(idle_min_ms));
        }
        Ok(())
    }
}

/// The batches a reader handed over: to the writers (which acknowledge them), or to a sink
/// as background deliveries, up to --max-in-flight at once (shared by every reader), each
/// acknowledged as soon as its own delivery completes, in any order.
#[derive(Default)]
struct Deliveries {
    tasks: tokio::task::JoinSet<()>,
}

impl Deliveries {
    async fn start(&mut self, r: &NodeReader, c: &Cursor, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        metrics::EVENTS_READ.inc_by(entries.len() as u64);
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let records: Vec<Record> = entries
            .into_iter()
            .map(|e| entry_to_record(&c.stream, e))
            .collect();
        let ack = AckTarget {
            url: r.url.clone(),
            stream: c.stream.clone(),
            group: r.redis.redis_group.clone(),
            conns: r.conns.clone(),
            held: c.held.clone(),
        };
        let sink = match &r.downstream {
            Downstream::Writers(writers) => {
                ack.hold(&ids);
                writers.submit(records, &ack).await;
                return;
            }
            Downstream::Sink(s) => s.clone(),
        };
        while let Some(res) = self.tasks.try_join_next() {
            log_task_end(res);
        }
        let Ok(permit) = r.inflight.clone().acquire_owned().await else {
            return;
        };
        ack.hold(&ids);
        let (batch, shutdown) = (r.batch.clone(), r.shutdown.clone());
        self.tasks.spawn(async move {
            let _permit = permit;
            // no Kafka positions here, so never fenced
            match sink.deliver(&records, &[], &batch).await {
                Ok(_) => ack_with_retry(&ack, &batch, &shutdown, &ids).await,
                // not acknowledged: the entries stay pending for the next run
                Err(fatal) => crate::pipeline::fail(fatal.0, &shutdown),
            }
            ack.release(&ids);
        });
    }

    async fn drain(&mut self) {
        while let Some(r) = self.tasks.join_next().await {
            log_task_end(r);
        }
    }
}

fn log_task_end(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "a delivery task ended abnormally; its entries stay pending and are re-read");
    }
}

/// The source's tasks: one reader per primary, one keeper per stream.
struct Source {
    redis: RedisOpts,
    batch: BatchOpts,
    downstream: Downstream,
    shutdown: CancellationToken,
    inflight: Arc<Semaphore>,
    conns: NodeConns,
    rediscover: Arc<Notify>,
    readers: HashMap<String, (watch::Sender<Vec<String>>, tokio::task::JoinHandle<()>)>,
    /// trimming and stream metrics: stopped only after every reader acked its last batch
    keep_token: CancellationToken,
    keepers: HashMap<(String, String), tokio::task::JoinHandle<()>>,
}

impl Source {
    /// Give each node's reader the streams the node holds now (a reader is started for a
    /// node seen for the first time) and each stream a keeper. A keeper stops when its slot
    /// moved away (MOVED); it is started again if the slot comes back.
    fn apply(&mut self, node: String, streams: Vec<String>) {
        for s in &streams {
            let key = (node.clone(), s.clone());
            if self.keepers.get(&key).is_none_or(|h| h.is_finished()) {
                let k = crate::stream_keeper::Keeper::new(
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
        let reader = NodeReader {
            url: node.clone(),
            redis: self.redis.clone(),
            batch: self.batch.clone(),
            downstream: self.downstream.clone(),
            inflight: self.inflight.clone(),
            shutdown: self.shutdown.clone(),
            conns: self.conns.clone(),
            streams: rx,
            rediscover: self.rediscover.clone(),
        };
        self.readers.insert(node, (tx, tokio::spawn(reader.run())));
    }

    async fn finish(self) {
        for (_, (_, h)) in self.readers {
            let _ = h.await;
        }
        if let Downstream::Writers(w) = &self.downstream {
            w.finish().await;
        }
        self.keep_token.cancel();
        for (_, h) in self.keepers {
            let _ = h.await;
        }
    }
}

/// Discover the streams on every URL, run one reader per primary until shutdown, then let
/// every batch handed over finish and be acknowledged, and trim one last time.
pub async fn run_source(
    redis: RedisOpts,
    batch: BatchOpts,
    downstream: Downstream,
    shutdown: CancellationToken,
) {
    let mut src = Source {
        inflight: Arc::new(Semaphore::new(batch.max_in_flight.max(1))),
        redis,
        batch,
        downstream,
        shutdown: shutdown.clone(),
        conns: NodeConns::default(),
        rediscover: Arc::new(Notify::new()),
        readers: HashMap::new(),
        keep_token: CancellationToken::new(),
        keepers: HashMap::new(),
    };
    loop {
        let started = Instant::now();
        let (found, complete) = discover_all(&src.redis.urls, &src.redis.prefix).await;
        let by_node: BTreeMap<String, Vec<String>> = found.into_iter().collect();
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
    src.finish().await;
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_io::bulk;

    #[test]
    fn parses_xreadgroup_reply_and_builds_records() {
        let good = r#"{"v":1,"id":"0193508e-7c4a-7b3e-9f1c-3d2a8e5b6c01","type":"asset.incr","ts":1,"op":null,"meta":null,"keys":[{"key":"a","seq":1}],"changes":[{"key":"a","field":"g","delta":"1","balance":"1"}]}"#;
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("tally:log"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("event"), bulk(good)]),
                ]),
                Value::Array(vec![
                    bulk("1-1"),
                    Value::Array(vec![bulk("junk"), bulk("x")]),
                ]),
                Value::Array(vec![bulk("1-2"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_xread(&reply);
        assert_eq!(entries.len(), 3);
        let recs: Vec<Record> = entries
            .into_iter()
            .map(|e| entry_to_record("tally:log", e))
            .collect();
        assert!(recs[0].decoded.is_ok());
        assert_eq!(recs[0].source, "redis:tally:log/1-0");
        assert_eq!(
            recs[1].decoded.as_ref().unwrap_err(),
            "stream entry has no `event` field"
        );
        assert_eq!(recs[1].raw, r#"{"junk":"x"}"#);
        assert!(recs[2].decoded.as_ref().unwrap_err().contains("deleted"));
        assert!(parse_xread(&Value::Nil).is_empty());
    }

    fn entries(ids: &[&str]) -> Value {
        Value::Array(
            ids.iter()
                .map(|id| {
                    Value::Array(vec![
                        bulk(id),
                        Value::Array(vec![bulk("event"), bulk("{}")]),
                    ])
                })
                .collect(),
        )
    }

    fn entries_reply(stream: &str, ids: &[&str]) -> Value {
        Value::Array(vec![Value::Array(vec![bulk(stream), entries(ids)])])
    }

    #[test]
    fn a_cursor_rereads_own_pending_then_claims_then_reads_new() {
        let every = Duration::from_secs(60);
        let mut c = Cursor::new("s");
        assert_eq!(c.next_read(every), Read::Pending("0".into()));
        let got = c.advance(
            &Read::Pending("0".into()),
            &entries_reply("s", &["1-0", "2-0"]),
        );
        assert_eq!(got.len(), 2);
        assert_eq!(
            c.next_read(every),
            Read::Pending("2-0".into()),
            "pending entries are paged by the last id"
        );
        assert!(c
            .advance(&Read::Pending("2-0".into()), &entries_reply("s", &[]))
            .is_empty());
        assert_eq!(
            c.next_read(every),
            Read::Claim("0-0".into()),
            "a claim is due at the start"
        );
        let claim_page = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ]);
        c.advance(&Read::Claim("0-0".into()), &claim_page);
        assert_eq!(
            c.next_read(every),
            Read::Claim("7-0".into()),
            "an unfinished claim goes on"
        );
        let claim_done = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ]);
        c.advance(&Read::Claim("7-0".into()), &claim_done);
        assert_eq!(c.next_read(every), Read::New);
        assert_eq!(
            c.next_read(Duration::ZERO),
            Read::Claim("0-0".into()),
            "the next claim comes after the interval"
        );
        c.reset();
        assert_eq!(
            c.next_read(every),
            Read::Pending("0".into()),
            "a new connection re-reads own pending entries"
        );
        assert!(!c.group_ready);
    }

    #[test]
    fn entries_in_flight_are_never_reread_or_claimed() {
        let mut c = Cursor::new("s");
        c.held.lock().unwrap().insert("1-0".into());
        let got = c.advance(
            &Read::Pending("0".into()),
            &entries_reply("s", &["1-0", "2-0"]),
        );
        assert_eq!(
            got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec!["2-0"]
        );
        assert_eq!(
            c.next_read(Duration::ZERO),
            Read::Pending("2-0".into()),
            "paging still moves past held ids"
        );
        let claimed = Value::Array(vec![
            bulk("0-0"),
            entries(&["1-0", "3-0"]),
            Value::Array(vec![]),
        ]);
        let got = c.advance(&Read::Claim("0-0".into()), &claimed);
        assert_eq!(
            got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec!["3-0"]
        );
    }

    #[test]
    fn cursors_follow_the_streams_a_node_holds() {
        let mut cursors = vec![Cursor::new("a"), Cursor::new("b")];
        cursors[0].pending_from = None;
        sync_cursors(&mut cursors, &["a".to_string(), "c".to_string()]);
        let names: Vec<&str> = cursors.iter().map(|c| c.stream.as_str()).collect();
        assert_eq!(names, vec!["a", "c"]);
        assert_eq!(
            cursors[0].pending_from, None,
            "a kept stream keeps its position"
        );
        sync_cursors(&mut cursors, &[]);
        assert!(cursors.is_empty());
    }

    #[test]
    fn a_sweep_round_trip_is_bounded_in_entries_and_streams() {
        assert_eq!(sweep_streams(2_000), 25);
        assert_eq!(sweep_streams(1), SWEEP_STREAMS_MAX);
        assert_eq!(sweep_streams(1_000_000), SWEEP_STREAMS_MIN);
        assert_eq!(sweep_streams(0), SWEEP_STREAMS_MAX);
    }
}
