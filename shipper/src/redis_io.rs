//! Redis replies and connections shared by the stages that talk to the log streams: the
//! source (readers), the stream keeper (housekeeping) and the ack path (writers). It depends
//! on no stage, so none of them imports another through it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{backoff_ms, BatchOpts};

type RResult<T> = Result<T, redis::RedisError>;

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// None when the entry was deleted while pending
    pub fields: Option<Vec<(String, Vec<u8>)>>,
}

pub(crate) fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

pub(crate) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => as_str(other)?.parse().ok(),
    }
}

pub(crate) fn as_array(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// Parse a list of stream entries `[[id, [f, v, ...]], ...]`.
pub fn parse_entries(v: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    for e in as_array(v) {
        let parts = as_array(e);
        let Some(id) = parts.first().and_then(as_str) else { continue };
        let fields = match parts.get(1) {
            Some(Value::Array(kv)) => {
                let mut f = Vec::new();
                for pair in kv.chunks(2) {
                    if let [k, v] = pair {
                        let val = match v {
                            Value::BulkString(b) => b.clone(),
                            other => as_str(other).unwrap_or_default().into_bytes(),
                        };
                        f.push((as_str(k).unwrap_or_default(), val));
                    }
                }
                Some(f)
            }
            Some(Value::Map(kv)) => Some(
                kv.iter()
                    .map(|(k, v)| (as_str(k).unwrap_or_default(), as_str(v).unwrap_or_default().into_bytes()))
                    .collect(),
            ),
            _ => None,
        };
        out.push(Entry { id, fields });
    }
    out
}

pub async fn connect(url: &str, response_timeout: Duration) -> RResult<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout));
    client.get_multiplexed_async_connection_with_config(&cfg).await
}

/// `INFO cluster` says `cluster_enabled:1` on a cluster node.
/// Timeout of a command on a node's shared connection (acks, housekeeping: never blocking).
const SHARED_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection per node for every non-blocking command of every stream the node holds
/// (XACK, housekeeping): a node with thousands of slot streams costs one blocking reader per
/// stream plus this one, not three connections per stream. A task that sees an error on it
/// calls `renew`; the next `get` opens a new one.
#[derive(Clone, Default)]
pub struct NodeConns(Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>>>>);

impl NodeConns {
    fn slot(&self, url: &str) -> Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(url.to_string()).or_default().clone()
    }

    /// The node's shared connection, opened on first use or after `renew` (one connect at a
    /// time per node; other nodes are not held up by a node that does not answer).
    pub async fn get(&self, url: &str) -> RResult<MultiplexedConnection> {
        let slot = self.slot(url);
        let mut conn = slot.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(url, SHARED_RESPONSE_TIMEOUT).await?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Forget the node's shared connection after a connection error on it (a reply error,
    /// such as MOVED, leaves it in use).
    pub async fn renew_after(&self, url: &str, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
            *self.slot(url).lock().await = None;
        }
    }
}

/// The batch is durable downstream; XACK must not be lost to a blip, so retry it (a
/// reconnect if needed). If we die first, the entries are re-shipped and deduped.
pub async fn ack_with_retry(
    url: &str,
    stream: &str,
    group: &str,
    batch: &BatchOpts,
    shutdown: &CancellationToken,
    conn: &mut MultiplexedConnection,
    ids: &[String],
) {
    let mut attempt = 0u32;
    loop {
        let r: RResult<Value> = redis::cmd("XACK").arg(stream).arg(group).arg(ids).query_async(conn).await;
        match r {
            Ok(_) => return,
            // The slot moved (resharding) with the stream and its group: the entries are
            // still pending there, re-read by the reader on the new owner and deduplicated.
            Err(e) if matches!(e.code(), Some("MOVED" | "ASK")) => {
                tracing::info!(stream = %stream, url = %url, count = ids.len(), "stream moved before its XACK; the new owner re-delivers these entries");
                return;
            }
            Err(e) => {
                let wait = backoff_ms(batch.retry_backoff_ms, batch.retry_backoff_cap_ms, attempt);
                tracing::warn!(stream = %stream, error = %e, retry_in_ms = wait, "XACK failed, retrying");
                tokio::time::sleep(Duration::from_millis(wait)).await;
                attempt = attempt.saturating_add(1);
                if let Ok(c) = connect(url, Duration::from_secs(10)).await {
                    *conn = c;
                }
                if attempt > 20 && shutdown.is_cancelled() {
                    tracing::warn!(stream = %stream, "giving up XACK at shutdown; entries will be re-shipped (deduped)");
                    return;
                }
            }
        }
    }
}
