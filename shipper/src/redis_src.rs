//! Reading the log streams with a consumer group, acking after the next stage holds the
//! entries durably, and trimming only acknowledged entries.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{backoff_ms, BatchOpts, RedisOpts};
use crate::metrics;
use crate::redis_io::{ack_with_retry, as_array, as_int, as_str, connect, parse_entries, Entry, NodeConns};
use crate::pipeline::Sink;
use crate::writers::{AckTarget, Writers};

/// Where a worker hands its batches: a sink delivered batch by batch (Kafka), or the
/// per-key Postgres writers (direct path).
#[derive(Clone)]
pub enum Downstream {
    Sink(Sink),
    Writers(Arc<Writers>),
}
use crate::record::Record;

type RResult<T> = Result<T, redis::RedisError>;

/// XREADGROUP reply: `[[stream, [entries]]]` (RESP2) or a map (RESP3); Nil on timeout.
fn parse_xread(v: &Value) -> Vec<Entry> {
    match v {
        Value::Nil => vec![],
        Value::Map(m) => m.iter().flat_map(|(_, e)| parse_entries(e)).collect(),
        other => as_array(other).iter().flat_map(|s| parse_entries(as_array(s).get(1).unwrap_or(&Value::Nil))).collect(),
    }
}

/// Convert an entry to a pipeline record (never fails: problems become the record's error).
pub fn entry_to_record(stream: &str, e: &Entry) -> Record {
    let source = format!("redis:{stream}/{}", e.id);
    let (raw, err) = match &e.fields {
        None => ("".to_string(), Some("stream entry was deleted before it could be shipped".to_string())),
        Some(fields) => match fields.iter().find(|(k, _)| k == "event") {
            Some((_, v)) => match std::str::from_utf8(v) {
                Ok(s) => (s.to_string(), None),
                Err(_) => (String::from_utf8_lossy(v).into_owned(), Some("`event` field is not UTF-8".to_string())),
            },
            None => {
                let obj: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(String::from_utf8_lossy(v).into_owned())))
                    .collect();
                (serde_json::Value::Object(obj).to_string(), Some("stream entry has no `event` field".to_string()))
            }
        },
    };
    Record::new(source, None, Some(stream.to_string()), Some(e.id.clone()), raw, err)
}

/// Where the log streams are, as (node URL, stream) pairs, for every URL given.
/// Standalone: the one stream `<prefix>:log` of that server, known without looking at the
/// keyspace. Cluster mode: the primaries and their slots from `CLUSTER SLOTS` (any node of
/// the cluster will do as a seed, so primaries added or promoted later are found at the next
/// discovery), and per slot the stream name computed from the slot's tag, kept when it exists
/// (one pipelined EXISTS per primary). A node that does not answer is skipped until the next
/// discovery; the others keep shipping.
pub async fn discover_all(urls: &[String], prefix: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for url in urls {
        match discover(url, prefix).await {
            Ok(pairs) => {
                for p in pairs {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
            Err(e) => tracing::warn!(url = %url, error = %e, "stream discovery failed; retrying at the next discovery"),
        }
    }
    out
}

async fn discover(url: &str, prefix: &str) -> RResult<Vec<(String, String)>> {
    let Some(primaries) = cluster_layout(url).await? else {
        return Ok(vec![(url.to_string(), format!("{prefix}:log"))]);
    };
    let mut out = Vec::new();
    for (node_url, ranges) in primaries {
        let streams: Vec<String> = ranges
            .iter()
            .flat_map(|&(lo, hi)| lo..=hi)
            .map(|slot| slot_stream(prefix, slot))
            .collect();
        let existing = match connect(&node_url, Duration::from_secs(10)).await {
            Ok(mut node) => existing_streams(&mut node, &streams).await,
            Err(e) => Err(e),
        };
        match existing {
            Ok(names) => out.extend(names.into_iter().map(|s| (node_url.clone(), s))),
            Err(e) => tracing::warn!(node = %node_url, error = %e, "primary did not answer discovery; retrying at the next discovery"),
        }
    }
    Ok(out)
}

/// The primaries of the cluster `seed` belongs to, each with its URL (the seed's credentials
/// and options) and slot ranges; None when `seed` is a standalone server.
pub async fn cluster_layout(seed: &str) -> RResult<Option<Vec<(String, Vec<(usize, usize)>)>>> {
    let mut conn = connect(seed, Duration::from_secs(10)).await?;
    let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut conn).await?;
    if !cluster_enabled(&info) {
        return Ok(None);
    }
    let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await?;
    Ok(Some(
        primaries(&slots)
            .into_iter()
            .filter_map(|((host, port), ranges)| node_url(seed, &host, port).map(|u| (u, ranges)))
            .collect(),
    ))
}

/// The stream of `slot`: `<prefix>:log:{<tag of the slot>}`, as the module names it.
pub fn slot_stream(prefix: &str, slot: usize) -> String {
    format!("{prefix}:log:{{{}}}", tally_slot::tag(slot))
}

/// `CLUSTER SLOTS` -> per primary (host, port), its slot ranges.
fn primaries(v: &Value) -> Vec<((String, u16), Vec<(usize, usize)>)> {
    let mut out: Vec<((String, u16), Vec<(usize, usize)>)> = Vec::new();
    for range in as_array(v) {
        let r = as_array(range);
        let (Some(lo), Some(hi), Some(node)) = (r.first().and_then(as_int), r.get(1).and_then(as_int), r.get(2)) else { continue };
        let n = as_array(node);
        let (Some(host), Some(port)) = (n.first().and_then(as_str), n.get(1).and_then(as_int)) else { continue };
        let (Ok(lo), Ok(hi), Ok(port)) = (usize::try_from(lo), usize::try_from(hi), u16::try_from(port)) else { continue };
        let addr = (host, port);
        match out.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, ranges)) => ranges.push((lo, hi.min(tally_slot::SLOTS - 1))),
            None => out.push((addr, vec![(lo, hi.min(tally_slot::SLOTS - 1))])),
        }
    }
    out
}

/// The seed URL with another host and port (same scheme, credentials and options).
fn node_url(seed: &str, host: &str, port: u16) -> Option<String> {
    let mut u = redis::parse_redis_url(seed)?;
    u.set_host(Some(host)).ok()?;
    u.set_port(Some(port)).ok()?;
    Some(u.to_string())
}

async fn existing_streams(conn: &mut MultiplexedConnection, names: &[String]) -> RResult<Vec<String>> {
    let mut out = Vec::new();
    for chunk in names.chunks(1000) {
        let mut pipe = redis::pipe();
        for n in chunk {
            pipe.cmd("EXISTS").arg(n);
        }
        let exists: Vec<i64> = pipe.query_async(conn).await?;
        out.extend(chunk.iter().zip(exists).filter(|(_, e)| *e > 0).map(|(n, _)| n.clone()));
    }
    Ok(out)
}

pub fn cluster_enabled(info: &str) -> bool {
    info.lines().any(|l| l.trim() == "cluster_enabled:1")
}

pub struct Worker {
    pub url: String,
    pub stream: String,
    pub redis: RedisOpts,
    pub batch: BatchOpts,
    pub downstream: Downstream,
    pub inflight: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// the node's shared connection, for acks
    pub conns: NodeConns,
}

enum Phase {
    /// re-reading own pending entries, from this id
    OwnPending(String),
    New,
}

impl Worker {
    fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.redis.block_ms + self.batch.batch_wait_ms + 10_000)
    }

    async fn ensure_group(&self, conn: &mut MultiplexedConnection) -> RResult<()> {
        let r: RResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.redis.redis_group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match r {
            Ok(_) => {
                tracing::info!(stream = %self.stream, group = %self.redis.redis_group, "created consumer group");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn xreadgroup(&self, conn: &mut MultiplexedConnection, id: &str, count: usize, block_ms: Option<u64>) -> RResult<Vec<Entry>> {
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP").arg(&self.redis.redis_group).arg(&self.redis.consumer).arg("COUNT").arg(count.max(1));
        if let Some(b) = block_ms {
            c.arg("BLOCK").arg(b.max(1));
        }
        c.arg("STREAMS").arg(&self.stream).arg(id);
        let v: Value = c.query_async(conn).await?;
        Ok(parse_xread(&v))
    }

    /// Read new entries: block for the first, then keep filling for up to batch_wait_ms.
    async fn read_new(&self, conn: &mut MultiplexedConnection) -> RResult<Vec<Entry>> {
        let size = self.batch.batch_size.max(1);
        let mut out = self.xreadgroup(conn, ">", size, Some(self.redis.block_ms)).await?;
        if out.is_empty() {
            return Ok(out);
        }
        let deadline = Instant::now() + Duration::from_millis(self.batch.batch_wait_ms);
        while out.len() < size && !self.shutdown.is_cancelled() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let more = self.xreadgroup(conn, ">", size - out.len(), Some(left.as_millis().max(1) as u64)).await?;
            if more.is_empty() {
                break;
            }
            out.extend(more);
        }
        Ok(out)
    }

    /// XAUTOCLAIM entries idle longer than claim_idle_ms (dead consumers), one batch at a time.
    async fn autoclaim(&self, conn: &mut MultiplexedConnection, cursor: &str) -> RResult<(String, Vec<Entry>)> {
        let v: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.redis.redis_group)
            .arg(&self.redis.consumer)
            .arg(self.redis.claim_idle_ms)
            .arg(cursor)
            .arg("COUNT")
            .arg(self.batch.batch_size.max(1))
            .query_async(conn)
            .await?;
        let parts = as_array(&v);
        let next = parts.first().and_then(as_str).unwrap_or_else(|| "0-0".into());
        let entries = parts.get(1).map(parse_entries).unwrap_or_default();
        let deleted = parts.get(2).map(as_array).map(|a| a.len()).unwrap_or(0);
        if deleted > 0 {
            tracing::error!(stream = %self.stream, count = deleted,
                "pending entries were deleted from the stream before being shipped (removed by someone else)");
        }
        Ok((next, entries))
    }

    pub async fn run(self) {
        let mut attempt = 0u32;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            match self.run_connected().await {
                Ok(()) => return,
                Err(e) => {
                    if e.code() == Some("MOVED") {
                        tracing::info!(stream = %self.stream, url = %self.url, "stream not served by this node, skipping");
                        return;
                    }
                    self.conns.renew_after(&self.url, &e).await;
                    let wait = backoff_ms(self.batch.retry_backoff_ms, self.batch.retry_backoff_cap_ms, attempt);
                    metrics::RETRIES.inc();
                    tracing::warn!(stream = %self.stream, url = %self.url, error = %e, retry_in_ms = wait, "redis error");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    async fn run_connected(&self) -> RResult<()> {
        let mut conn = connect(&self.url, self.response_timeout()).await?;
        // acks travel on the node's shared connection: a blocked XREADGROUP would hold them back
        let ack_conn = self.conns.get(&self.url).await?;
        self.ensure_group(&mut conn).await?;
        tracing::info!(stream = %self.stream, group = %self.redis.redis_group, consumer = %self.redis.consumer, "reading stream");
        let mut deliveries = Deliveries::new(ack_conn);
        let r = self.read_loop(&mut conn, &mut deliveries).await;
        // stop or error: every batch already handed over finishes (delivered and acked, or
        // left pending for the next run) before this returns
        deliveries.drain().await;
        r
    }

    async fn read_loop(&self, conn: &mut MultiplexedConnection, deliveries: &mut Deliveries) -> RResult<()> {
        let mut phase = Phase::OwnPending("0".into());
        let mut last_claim = Instant::now() - Duration::from_millis(self.redis.claim_interval_ms);
        let mut claim_cursor = "0-0".to_string();
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(());
            }
            let entries = match &phase {
                Phase::OwnPending(from) => {
                    let e = self.xreadgroup(conn, from, self.batch.batch_size, None).await?;
                    // entries with id > `from` that are pending for us
                    match e.last() {
                        Some(last) => phase = Phase::OwnPending(last.id.clone()),
                        None => {
                            phase = Phase::New;
                            continue;
                        }
                    }
                    tracing::info!(stream = %self.stream, count = e.len(), "re-reading own pending entries");
                    e
                }
                Phase::New if last_claim.elapsed() >= Duration::from_millis(self.redis.claim_interval_ms) => {
                    let (next, e) = self.autoclaim(conn, &claim_cursor).await?;
                    if next == "0-0" {
                        last_claim = Instant::now();
                        claim_cursor = "0-0".into();
                    } else {
                        claim_cursor = next;
                    }
                    // our own batches still being delivered go idle during an outage: not claims
                    let e = deliveries.not_in_flight(e);
                    if !e.is_empty() {
                        metrics::ENTRIES_CLAIMED.inc_by(e.len() as u64);
                        tracing::info!(stream = %self.stream, count = e.len(), "claimed idle pending entries");
                    }
                    e
                }
                Phase::New => self.read_new(conn).await?,
            };
            if !entries.is_empty() {
                metrics::EVENTS_READ.inc_by(entries.len() as u64);
                deliveries.start(self, entries).await;
            }
        }
    }
}

/// The batches of one stream being delivered: up to --max-in-flight at once (shared by all
/// streams), each acknowledged as soon as its own delivery completes, in any order.
struct Deliveries {
    tasks: tokio::task::JoinSet<()>,
    in_flight: Arc<std::sync::Mutex<HashSet<String>>>,
    ack_conn: MultiplexedConnection,
}

impl Deliveries {
    fn new(ack_conn: MultiplexedConnection) -> Deliveries {
        Deliveries { tasks: tokio::task::JoinSet::new(), in_flight: Default::default(), ack_conn }
    }

    fn not_in_flight(&self, entries: Vec<Entry>) -> Vec<Entry> {
        let held = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        entries.into_iter().filter(|e| !held.contains(&e.id)).collect()
    }

    /// Hands the batch on: to the writers, or (a sink) as a background delivery once a slot
    /// is free. Either acknowledges the entries when they are durable.
    async fn start(&mut self, w: &Worker, entries: Vec<Entry>) {
        let records: Vec<Record> = entries.iter().map(|e| entry_to_record(&w.stream, e)).collect();
        let sink = match &w.downstream {
            Downstream::Writers(writers) => {
                self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).extend(entries.iter().map(|e| e.id.clone()));
                let ack = AckTarget {
                    url: w.url.clone(),
                    stream: w.stream.clone(),
                    group: w.redis.redis_group.clone(),
                    conn: self.ack_conn.clone(),
                    held: self.in_flight.clone(),
                };
                writers.submit(records, &ack).await;
                return;
            }
            Downstream::Sink(s) => s.clone(),
        };
        while let Some(r) = self.tasks.try_join_next() {
            log_task_end(r);
        }
        let Ok(permit) = w.inflight.clone().acquire_owned().await else { return };
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).extend(ids.iter().cloned());
        let (batch, shutdown) = (w.batch.clone(), w.shutdown.clone());
        let (url, stream, group) = (w.url.clone(), w.stream.clone(), w.redis.redis_group.clone());
        let (mut conn, held) = (self.ack_conn.clone(), self.in_flight.clone());
        self.tasks.spawn(async move {
            let _permit = permit;
            match sink.deliver(&records, &[], &batch).await {
                Ok(()) => ack_with_retry(&url, &stream, &group, &batch, &shutdown, &mut conn, &ids).await,
                // not acknowledged: the entries stay pending for the next run
                Err(fatal) => crate::pipeline::fail(fatal.0, &shutdown),
            }
            let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                h.remove(id);
            }
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

/// Discover streams on every URL and run one worker per stream until shutdown.
pub async fn run_source(redis: RedisOpts, batch: BatchOpts, downstream: Downstream, shutdown: CancellationToken) {
    let inflight = Arc::new(Semaphore::new(batch.max_in_flight.max(1)));
    let mut workers: HashMap<(String, String), tokio::task::JoinHandle<()>> = HashMap::new();
    // trimming and stream metrics: stopped only after every worker acked its last batch
    let keep_token = CancellationToken::new();
    let mut keepers: HashMap<(String, String), tokio::task::JoinHandle<()>> = HashMap::new();
    let conns = NodeConns::default();
    loop {
        for (url, s) in discover_all(&redis.urls, &redis.prefix).await {
            let key = (url.clone(), s.clone());
            // a worker stops when its stream's slot moved away (MOVED); it is started again
            // if the slot comes back
            if workers.get(&key).is_some_and(|h| !h.is_finished()) {
                continue;
            }
            let w = Worker {
                url: url.clone(),
                stream: s.clone(),
                redis: redis.clone(),
                batch: batch.clone(),
                downstream: downstream.clone(),
                inflight: inflight.clone(),
                shutdown: shutdown.clone(),
                conns: conns.clone(),
            };
            workers.insert(key.clone(), tokio::spawn(w.run()));
            // a keeper stops when its slot moved away (MOVED); started again if it comes back
            if keepers.get(&key).is_none_or(|h| h.is_finished()) {
                let keeper = crate::stream_keeper::Keeper::new(&url, &s, &redis, &batch, keep_token.clone(), conns.clone());
                keepers.insert(key, tokio::spawn(keeper.run()));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(redis.discover_interval_ms.max(100))) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    for (_, h) in workers {
        let _ = h.await;
    }
    if let Downstream::Writers(w) = &downstream {
        w.finish().await;
    }
    keep_token.cancel();
    for (_, h) in keepers {
        let _ = h.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_give_each_primary_its_ranges() {
        let node = |port: i64| Value::Array(vec![bulk("10.0.0.1"), Value::Int(port), bulk("id")]);
        let range = |lo: i64, hi: i64, port: i64| Value::Array(vec![Value::Int(lo), Value::Int(hi), node(port), node(port + 1000)]);
        let v = Value::Array(vec![range(0, 5, 7000), range(10, 11, 7001), range(6, 9, 7000)]);
        assert_eq!(
            primaries(&v),
            vec![(("10.0.0.1".to_string(), 7000), vec![(0, 5), (6, 9)]), (("10.0.0.1".to_string(), 7001), vec![(10, 11)])]
        );
        assert!(primaries(&Value::Array(vec![bulk("junk")])).is_empty());
    }

    #[test]
    fn node_urls_keep_credentials_and_options() {
        assert_eq!(node_url("redis://u:p@seed:6379/0", "10.0.0.2", 7001).as_deref(), Some("redis://u:p@10.0.0.2:7001/0"));
        assert_eq!(node_url("rediss://seed:6380", "h", 1).as_deref(), Some("rediss://h:1"));
        assert_eq!(node_url("not a url", "h", 1), None);
    }

    #[test]
    fn slot_streams_are_named_as_the_module_names_them() {
        for slot in [0, 1, 8191, 16383] {
            let name = slot_stream("tally", slot);
            assert!(name.starts_with("tally:log:{") && name.ends_with('}'), "{name}");
            assert_eq!(tally_slot::key_slot(name.as_bytes()), slot);
        }
    }

    #[test]
    fn standalone_needs_no_scan() {
        assert!(!cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"));
        assert!(cluster_enabled("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!cluster_enabled(""));
    }

    #[test]
    fn parses_xreadgroup_reply_and_builds_records() {
        let good = r#"{"v":1,"id":"0193508e-7c4a-7b3e-9f1c-3d2a8e5b6c01","type":"asset.incr","ts":1,"op":null,"meta":null,"keys":[{"key":"a","seq":1}],"changes":[{"key":"a","field":"g","delta":"1","balance":"1"}]}"#;
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("tally:log"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("event"), bulk(good)])]),
                Value::Array(vec![bulk("1-1"), Value::Array(vec![bulk("junk"), bulk("x")])]),
                Value::Array(vec![bulk("1-2"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_xread(&reply);
        assert_eq!(entries.len(), 3);
        let recs: Vec<Record> = entries.iter().map(|e| entry_to_record("tally:log", e)).collect();
        assert!(recs[0].decoded.is_ok());
        assert_eq!(recs[0].source, "redis:tally:log/1-0");
        assert_eq!(recs[1].decoded.as_ref().unwrap_err(), "stream entry has no `event` field");
        assert_eq!(recs[1].raw, r#"{"junk":"x"}"#);
        assert!(recs[2].decoded.as_ref().unwrap_err().contains("deleted"));
        assert!(parse_xread(&Value::Nil).is_empty());
    }
}
